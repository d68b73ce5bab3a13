"""What a :class:`ecalf.forecast.Forecaster` trains on: the user's series read, their columns given
roles, each series filled, split and scaled, and the training and validation windows over all of them.

:func:`prepare_training_data` turns the data a user passes to ``fit`` into a :class:`TrainingData`;
:func:`filled_model_inputs` and :func:`with_columns` are the per-frame steps that ``predict`` and the
backtests repeat on new rows, so that training and forecasting read a frame the same way.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ecalf.config import TrainingConfig
from ecalf.conformal import IntervalCalibration, calibrate
from ecalf.data import StandardScaler, TimeSeriesFrame, WindowDataset
from ecalf.data.gaps import FillMethod, fill_gaps, on_regular_grid
from ecalf.data.prepare import PreparedSeries, window_sets
from ecalf.data.roles import ColumnRoles, calendar_names, model_inputs, resolve_roles
from ecalf.data.series import SeriesInput, load_series, regular_frequency
from ecalf.errors import ConfigError, DataError
from ecalf.evaluation import predict as predict_windows
from ecalf.forecast_settings import InputSpec, training_rows
from ecalf.models.base import ForecastModel


@dataclass
class TrainingData:
    """What :meth:`ecalf.forecast.Forecaster.fit` trains on: the series by role, split and scaled,
    and their windows."""

    source: str
    frequency: str
    roles: ColumnRoles
    parts: list[PreparedSeries]
    train_set: WindowDataset
    val_set: WindowDataset
    """The validation windows; ``train_set`` itself when no series holds validation rows."""
    scaler: StandardScaler
    panel: bool

    @property
    def rows(self) -> int:
        return sum(p.frame.num_rows for p in self.parts)

    @property
    def gaps(self) -> int:
        """Missing values filled for the inputs."""
        return sum(int((~p.observed).sum()) for p in self.parts)

    def describe(self, fill: str | None) -> str:
        """One line: the data, its channels and roles, gaps and windows."""
        channels = self.parts[0].frame.num_channels
        targets = len(self.roles.targets)
        covariates = (
            f" ({targets} target(s), {channels - targets} covariate(s))" if self.roles.has_covariates else ""
        )
        panel = f"a panel of {len(self.parts)} series, " if self.panel else ""
        gaps = f", {self.gaps} missing value(s) filled by {fill}" if self.gaps else ""
        val = len(self.val_set) if self.val_set is not self.train_set else "none (training windows)"
        return (
            f"{self.source}: {panel}{self.rows} rows x {channels} channels{covariates} at "
            f"{self.frequency!r}{gaps}; windows train {len(self.train_set)}, validation {val}"
        )

    def calibration(
        self, module: ForecastModel, training: TrainingConfig, device: torch.device
    ) -> IntervalCalibration:
        """Split-conformal radii from the validation windows' forecasts, in the original units (a
        panel's stay standardised: its series differ in scale and each scales them by its own)."""
        predicted = predict_windows(
            module,
            self.val_set,
            batch_size=training.eval_batch_size,
            device=device,
            precision=training.precision,
        ).numpy()
        actual = self.val_set.get_batch(torch.arange(len(self.val_set)))[1].numpy()
        if not self.panel:
            predicted, actual = (
                self.scaler.inverse_transform(predicted),
                self.scaler.inverse_transform(actual),
            )
        n = len(self.roles.targets)
        return calibrate(predicted[..., :n], actual[..., :n])


def prepare_training_data(
    data: SeriesInput,
    inputs: InputSpec,
    context_length: int,
    prediction_length: int,
    validation_fraction: float,
    skip_short: bool,
) -> TrainingData:
    """``data`` read, its columns given their roles (``inputs``), each series filled, split and
    scaled, and the training and validation windows over all of them.

    A panel series too short for a training window and validation is an error naming it, or with
    ``skip_short`` left out with a warning."""
    loaded = load_series(data, allow_missing=inputs.fill is not None)
    source = loaded.panel.source if loaded.panel is not None else loaded.frame.source
    raws = dict(loaded.panel.series) if loaded.panel is not None else {"": loaded.frame}
    if inputs.fill is not None:
        raws = {name: on_regular_grid(raw) for name, raw in raws.items()}
    frequency = common_frequency(raws)
    target = panel_target(inputs.target) if loaded.panel is not None else inputs.target
    roles = resolve_roles(
        next(iter(raws.values())).columns,
        target,
        inputs.future_covariates,
        calendar_names(frequency) if inputs.calendar else [],
        source,
    )
    L, H = context_length, prediction_length
    parts = []
    for name, raw in raws.items():
        frame, observed = filled_model_inputs(with_columns(raw, roles), roles, inputs.fill)
        try:
            num_train = training_rows(frame.num_rows, L, H, validation_fraction, frame.source)
        except DataError as short:
            if loaded.panel is None or not skip_short:
                hint = "; or pass skip_short=True (--skip-short) to leave such series out"
                raise DataError(f"{short}{hint if loaded.panel else ''}") from None
            warnings.warn(f"{frame.source}: too short for a window; left out ({short})", stacklevel=3)
            continue
        parts.append(PreparedSeries.split(name, frame, observed, num_train))
    if not parts:
        raise DataError(f"{source}: no series is long enough for one training window and validation")
    train_set, validation = window_sets(parts, len(roles.targets), L, H, roles.num_known_future)
    scaler = parts[0].scaler
    if loaded.panel is not None:  # each series has its own; the pooled one is kept for reference
        scaler = StandardScaler().fit(np.concatenate([p.frame.values[: p.num_train] for p in parts]))
    val_set = validation if validation is not None else train_set
    return TrainingData(source, frequency, roles, parts, train_set, val_set, scaler, loaded.panel is not None)


def common_frequency(frames: Mapping[str, TimeSeriesFrame]) -> str:
    """The one sampling frequency of every series (a panel's series must share it)."""
    found = {name: regular_frequency(frame.timestamps, frame.source) for name, frame in frames.items()}
    distinct = sorted(set(found.values()))
    if len(distinct) > 1:
        example = ", ".join(f"{f!r} ({next(n for n, g in found.items() if g == f)!r})" for f in distinct)
        raise DataError(f"the series are sampled at different frequencies: {example}; resample them to one")
    return distinct[0]


def panel_target(target: list[str] | None) -> list[str]:
    """A panel forecasts its ``y`` column; the other columns are covariates."""
    if target not in (None, ["y"]):
        raise ConfigError(
            f"in the long format the forecast column is y; target={target} cannot be chosen there (the "
            "other columns beside unique_id, ds, y are covariates)"
        )
    return ["y"]


def with_columns(frame: TimeSeriesFrame, roles: ColumnRoles) -> TimeSeriesFrame:
    """``frame`` holding the fitted columns, in channel order."""
    if frame.columns == roles.user_columns:
        return frame
    missing = [c for c in roles.user_columns if c not in frame.columns]
    if missing:
        raise DataError(f"{frame.source}: column(s) {missing} are missing (columns: {frame.columns})")
    return frame.select(roles.user_columns)


def filled_model_inputs(
    frame: TimeSeriesFrame, roles: ColumnRoles, fill: FillMethod | None
) -> tuple[TimeSeriesFrame, np.ndarray]:
    """The model's channels of ``frame`` with the gaps filled by ``fill``, and the (T, C) mask of
    observed values (all True without ``fill``)."""
    inputs = model_inputs(frame, roles)
    if fill is None:
        return inputs, np.ones(inputs.values.shape, dtype=bool)
    return fill_gaps(inputs, fill)
