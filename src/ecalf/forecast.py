"""The practitioner API: fit a forecaster on your own series, forecast the next H rows, save, load.

    forecaster = Forecaster(model="dlinear", context_length=96, prediction_length=24)
    forecaster.fit("my.csv")                # chronological train/validation split, early stopping
    future = forecaster.predict("my.csv")   # the 24 rows after the last row of my.csv, original units
    forecaster.save("model/")
    forecaster = Forecaster.load("model/")

Data comes as a CSV path or a DataFrame in the wide format (a ``date`` column + one numeric column per
series) or the long format (``unique_id``, ``ds``, ``y``: one multivariate series when the series share
their timestamps, else a panel, :mod:`ecalf.data.series`). ``predict`` answers in the format it was
given. Columns have roles (targets, past and known-future covariates, calendar features:
:mod:`ecalf.data.roles`); gaps are filled for the inputs when asked (:mod:`ecalf.data.gaps`) and a
missing target is never a training target.

Fitting: the last ``validation_fraction`` of the rows (at least H) is the validation part that early
stopping watches (its windows look back into the training rows, their targets never overlap them); a
StandardScaler is fitted on the observed training rows only; the model is trained by
:func:`ecalf.fitting.fit_model`; the validation windows then calibrate the prediction intervals
(:mod:`ecalf.conformal`) and score the naive and ``linear`` floors (:mod:`ecalf.floor`). The model sees
standardised values and forecasts are mapped back to the original units. Backtests:
:meth:`Forecaster.cross_validation` (:mod:`ecalf.backtest`). The settings before any data are
:mod:`ecalf.forecast_settings`'s; the rows and windows it trains on, :mod:`ecalf.forecast_data`'s; the
commands that write files, :mod:`ecalf.forecast_commands`'s.

A saved forecaster is a directory whose layout :mod:`ecalf.saved_forecaster` owns (every file written
atomically). Nothing is unpickled when loading: only safetensors, JSON and YAML are read.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from torch import nn

from ecalf.backtest import cross_validation
from ecalf.config import (
    CONTEXT_LENGTH,
    FORECAST_LENGTH,
    VALIDATION_FRACTION,
    RunConfig,
)
from ecalf.conformal import IntervalCalibration, check_levels, level_name
from ecalf.data import StandardScaler, TimeSeriesFrame
from ecalf.data.gaps import check_fill, on_regular_grid
from ecalf.data.loading import DATE_COLUMN, frame_from_dataframe
from ecalf.data.roles import ColumnRoles, future_inputs
from ecalf.data.series import (
    LoadedSeries,
    SeriesInput,
    check_spacing,
    forecast_to_wide,
    frame_to_wide,
    future_timestamps,
    load_series,
    panel_forecast_to_wide,
    regular_frequency,
    wide_to_long,
)
from ecalf.errors import ConfigError, DataError, EcalfError
from ecalf.fitting import fit_model
from ecalf.floor import FloorComparison, compare_with_floor
from ecalf.forecast_data import filled_model_inputs, prepare_training_data
from ecalf.forecast_settings import InputSpec, batch_size_for, forecaster_config
from ecalf.inference import merged_lora, quantized_int8
from ecalf.models.base import ForecastModel, future_covariate_models
from ecalf.registry import get_entry, model_name_for_config
from ecalf.saved_forecaster import SavedForecaster, read_forecaster, write_forecaster
from ecalf.tracking import open_tracker, require_tracking
from ecalf.training import resolve_device


class Forecaster:
    """Fit on your own series, forecast the next ``prediction_length`` rows, save and load.

    ``backbone`` is the LLM preset of ``calf``/``ecalf`` (``smollm2-135m`` when omitted; also any
    preset, hub id, local directory or .gguf path ``backbone.preset`` accepts); models without a
    backbone refuse it. ``model_options`` and ``training_options`` are fields of the model's config and
    of :class:`~ecalf.config.TrainingConfig`, validated strictly (a typo is a ConfigError).

    ``target``: the column(s) to forecast; the other columns are then past covariates (inputs, never
    forecast nor scored). ``future_covariates``: columns whose future values are known and passed to
    ``predict(df, future_df=...)``; ``calendar=True`` adds calendar features of the timestamps as
    known-future covariates. ``fill`` (``"ffill"``, ``"interpolate"``): fill missing values and
    timestamps for the inputs; a missing target is never a training target. See docs/forecasting.md.
    """

    def __init__(
        self,
        model: str = "ecalf",
        backbone: str | None = None,
        context_length: int = CONTEXT_LENGTH,
        prediction_length: int = FORECAST_LENGTH,
        *,
        model_options: Mapping[str, Any] | None = None,
        training_options: Mapping[str, Any] | None = None,
        seed: int = 2021,
        target: str | Sequence[str] | None = None,
        future_covariates: Sequence[str] = (),
        calendar: bool = False,
        fill: str | None = None,
    ) -> None:
        config = forecaster_config(
            model,
            backbone,
            context_length,
            prediction_length,
            model_options=model_options,
            training_options=training_options,
            seed=seed,
        )
        targets = [target] if isinstance(target, str) else None if target is None else list(target)
        if targets is not None and not targets:
            raise ConfigError("target is an empty list; name at least one column to forecast (or None: all)")
        future = [future_covariates] if isinstance(future_covariates, str) else list(future_covariates)
        inputs = InputSpec(targets, future, calendar, check_fill(fill))
        if (future or calendar) and not getattr(
            get_entry(model).model_class, "takes_future_covariates", False
        ):
            raise ConfigError(
                f"model {model!r} cannot use known-future covariates"
                + (f" ({', '.join(future)})" if future else " (calendar features)")
                + f"; models that can: {', '.join(future_covariate_models())}"
            )
        self._reset(config, inputs, batch_size_given="batch_size" in (training_options or {}))

    def _reset(self, config: RunConfig, inputs: InputSpec, *, batch_size_given: bool) -> None:
        """An unfitted forecaster of ``config`` (``batch_size_given``: keep its batch size as it is)."""
        self.config = config
        self.inputs = inputs
        self.module: ForecastModel | None = None
        """The trained network (None until ``fit`` or ``load``)."""
        self.scaler: StandardScaler | None = None
        self.roles: ColumnRoles | None = None
        """The columns by role, once fitted: targets, past and known-future covariates, calendar."""
        self.series_scalers: dict[str, StandardScaler] | None = None
        """A panel's per-series scalers (None for one wide series)."""
        self.frequency: str | None = None
        self.history: list[dict[str, Any]] = []
        """Per-epoch training log (loss parts, validation MSE/MAE, learning rate, adapted values)."""
        self.summary: dict[str, Any] = {}
        """What ``fit`` did: rows, windows, best epoch, why it stopped, seconds, the floor comparison."""
        self.validation_fraction: float | None = None
        self.calibration: IntervalCalibration | None = None
        """Split-conformal interval radii from the validation windows (None: fitted without them)."""
        self.floor: FloorComparison | None = None
        """Validation MSE of the model beside the naive forecast's and ``linear``'s (None: not scored)."""
        self._int8: tuple[ForecastModel, nn.Module] | None = None  # (module, its int8 copy)
        self._batch_size_given = batch_size_given
        """Whether the caller chose the batch size (else ``fit`` shrinks it for a short series)."""

    # -- properties ---------------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return model_name_for_config(type(self.config.model))

    @property
    def context_length(self) -> int:
        return self.config.model.context_length

    @property
    def prediction_length(self) -> int:
        return self.config.model.prediction_length

    @property
    def is_fitted(self) -> bool:
        return self.module is not None

    @property
    def columns(self) -> list[str]:
        """The model's channels once fitted (targets, covariates, calendar features), else []."""
        return self.roles.channels if self.roles is not None else []

    @property
    def targets(self) -> list[str]:
        """The forecast columns once fitted, else []."""
        return list(self.roles.targets) if self.roles is not None else []

    def __repr__(self) -> str:
        state = "not fitted"
        if self.roles is not None:
            covariates = len(self.roles.channels) - len(self.roles.targets)
            state = f"fitted on {len(self.roles.targets)} target(s)"
            state += f" and {covariates} covariate(s)" if covariates else ""
            state += f" at {self.frequency!r}"
        return (
            f"Forecaster(model={self.model_name!r}, context_length={self.context_length}, "
            f"prediction_length={self.prediction_length}, {state})"
        )

    # -- fit / predict ------------------------------------------------------------------------------

    def fit(
        self,
        data: SeriesInput,
        *,
        validation_fraction: float = VALIDATION_FRACTION,
        epochs: int | None = None,
        verbose: bool = True,
        tracking_dir: str | os.PathLike[str] | None = None,
        floor: bool = True,
        linear_command: str | None = None,
        skip_short: bool = False,
    ) -> Forecaster:
        """Train on ``data`` (the whole series; the last part is held out for early stopping).

        ``validation_fraction`` of the rows (at least H) validates; 0 trains on every row and keeps
        the epoch with the best training-window MSE (and gives no intervals). ``epochs`` overrides
        ``training.epochs``. ``verbose=False`` silences progress bars and epoch lines. With
        ``tracking_dir``, the per-epoch values go there as ``training.tracking`` says
        (``metrics.jsonl`` by default).

        After training, the validation windows calibrate the prediction intervals
        (:mod:`ecalf.conformal`) and, with ``floor``, the naive forecast and the closed-form ``linear``
        model is scored on them too (:mod:`ecalf.floor`; about a second): :attr:`floor`, printed with
        ``linear_command`` (how to fit ``linear`` instead) when a floor wins.

        A panel (long-format series of different lengths or start dates, or with covariate columns
        beside ``y``) trains one model on every series, each split and scaled on its own rows; a
        series too short for a training window and validation is an error naming it, or with
        ``skip_short`` left out with a warning.
        """
        require_tracking(self.config.training.tracking if tracking_dir is not None else "none")
        prepared = prepare_training_data(
            data, self.inputs, self.context_length, self.prediction_length, validation_fraction, skip_short
        )
        source, frequency, roles, parts = prepared.source, prepared.frequency, prepared.roles, prepared.parts
        train_set, val_set, scaler = prepared.train_set, prepared.val_set, prepared.scaler
        num_channels, known = parts[0].frame.num_channels, roles.num_known_future

        training = dataclasses.replace(
            self.config.training,
            epochs=epochs if epochs is not None else self.config.training.epochs,
            progress=self.config.training.progress and verbose,
        )
        log: Callable[[str], None] = print if verbose else _silent
        model = dataclasses.replace(
            self.config.model,
            num_channels=num_channels,
            num_past_covariates=len(roles.past_covariates),
            num_future_covariates=known,
        )
        config = dataclasses.replace(
            self.config,
            data=dataclasses.replace(self.config.data, dataset=source),
            model=model,
            training=training,
        )
        if training.num_threads:
            torch.set_num_threads(training.num_threads)
        device = resolve_device(training.device)
        log(f"fit {self.model_name} on {prepared.describe(self.inputs.fill)}")
        closed_form = getattr(get_entry(self.model_name).model_class, "fits_in_closed_form", False)
        if not self._batch_size_given and not closed_form:  # a closed-form fit takes no steps
            batch_size = batch_size_for(len(train_set), training.batch_size)
            if batch_size != training.batch_size:
                log(
                    f"batch size {batch_size}: the default {training.batch_size} would give "
                    f"{math.ceil(len(train_set) / training.batch_size)} optimizer step(s) per epoch on "
                    f"{len(train_set)} training windows (set batch_size to choose it)"
                )
                training = dataclasses.replace(training, batch_size=batch_size)
                config = dataclasses.replace(config, training=training)
        tracker = open_tracker(training.tracking, tracking_dir)
        try:
            fitted = fit_model(config, train_set, val_set, device=device, log=log, tracker=tracker)
            module, result = fitted.model, fitted.result
            tracker.log_final({"best_val_mse": result.best_val_mse, "best_epoch": result.best_epoch})
        finally:
            tracker.close()
        module.eval()
        calibration, comparison = None, None
        if val_set is not train_set:
            calibration = prepared.calibration(module, training, device)
            if floor:
                comparison = compare_with_floor(
                    config, self.model_name, result.best_val_mse, train_set, val_set, device=device
                )
                for line in comparison.lines(*([linear_command] if linear_command else [])):
                    log(line)

        self.config, self.module, self.scaler = config, module, scaler
        self.calibration, self.floor = calibration, comparison
        self.roles, self.frequency = roles, frequency
        self.series_scalers = {p.name: p.scaler for p in parts} if prepared.panel else None
        self.validation_fraction = validation_fraction
        self.history = [dataclasses.asdict(r) for r in result.history]
        self.summary = {
            "model": self.model_name,
            "source": source,
            "rows": prepared.rows,
            "train_rows": sum(p.num_train for p in parts),
            "missing_values": prepared.gaps,
            "series": len(parts) if prepared.panel else 0,
            "first_timestamp": str(min(p.frame.timestamps[0] for p in parts)),
            "last_timestamp": str(max(p.frame.timestamps[-1] for p in parts)),
            "windows": {"train": len(train_set), "val": len(val_set) if val_set is not train_set else 0},
            "best_epoch": result.best_epoch,
            "best_val_mse": result.best_val_mse,
            "epochs_run": result.epochs_run,
            "stopped": result.stopped,
            "train_seconds": result.train_seconds,
            "interval_windows": calibration.windows if calibration is not None else 0,
        }
        if comparison is not None:
            self.summary["floor"] = comparison.as_dict()
        return self

    def predict(
        self,
        data: SeriesInput,
        *,
        future_df: SeriesInput | None = None,
        level: Iterable[float] | float | None = None,
        int8: bool = False,
    ) -> pd.DataFrame:
        """The next ``prediction_length`` rows of the targets after the last row of ``data``, in the
        original units.

        Uses the last ``context_length`` rows (gaps filled as when fitting). Wide input gives a
        ``date`` + target columns frame, long input gives ``unique_id, ds, y`` rows. ``future_df``:
        the known-future covariates' values at the forecast timestamps (a ``date`` column + those
        columns; extra rows are ignored). ``level`` (percent, e.g. ``[80, 95]``) adds split-conformal
        prediction intervals: ``<series>-lo-80`` and ``<series>-hi-80`` columns (long: ``lo-80``,
        ``hi-80``). ``int8``: forecast with an int8 copy of the model (``ecalf.inference.quantized_int8``;
        CPU only), made on the first such call and kept, for low-latency serving; its accuracy cost is
        measured in docs/speed.md.
        """
        levels = check_levels(level)
        self._fitted()
        loaded = self.read(data)
        if self.series_scalers is not None:
            return self._predict_panel(loaded, future_df, levels, int8=int8)
        self._refuse_panel(loaded)
        radii = {lvl: self.interval_radius(lvl).astype(np.float32) for lvl in levels}  # errors first
        future = (
            load_series(future_df, "future_df", allow_missing=True).frame if future_df is not None else None
        )
        point, dates = self.forecast_after(loaded.frame, future, int8=int8)
        columns: dict[str, Any] = {DATE_COLUMN: dates}
        for c, name in enumerate(self.targets):
            columns[name] = point[:, c]
            for lvl, radius in radii.items():
                columns[f"{name}-lo-{level_name(lvl)}"] = point[:, c] - radius[:, c]
                columns[f"{name}-hi-{level_name(lvl)}"] = point[:, c] + radius[:, c]
        wide = pd.DataFrame(columns)
        return wide if loaded.layout == "wide" else wide_to_long(wide, loaded.ids)

    def _predict_panel(
        self, loaded: LoadedSeries, future_df: SeriesInput | None, levels: tuple[float, ...], *, int8: bool
    ) -> pd.DataFrame:
        """A panel's forecasts, each series from its own last timestamp, as ``unique_id, ds, y`` rows
        (+ ``lo-80``, ``hi-80``, ...)."""
        panel = self._as_panel(loaded)
        futures = self._future_panel(future_df)
        blocks = []
        for name, history in panel.items():
            scaler = self._series_scaler(name, history)
            point, dates = self.forecast_after(history, futures.get(name), int8=int8, scaler=scaler)
            block = pd.DataFrame({"unique_id": [loaded.ids.get(name, name)] * len(dates), "ds": dates,
                                  "y": point[:, 0]})  # fmt: skip
            for lvl in levels:
                radius = self.interval_radius(lvl, scaler=scaler)[:, 0].astype(np.float32)
                block[f"lo-{level_name(lvl)}"] = point[:, 0] - radius
                block[f"hi-{level_name(lvl)}"] = point[:, 0] + radius
            blocks.append(block)
        return pd.concat(blocks, ignore_index=True)

    def _refuse_panel(self, loaded: LoadedSeries) -> None:
        """A forecaster of one multivariate series cannot read a panel."""
        if loaded.panel is not None and self.is_fitted:
            raise DataError(
                f"{loaded.panel.source}: {loaded.panel.why}; this forecaster was fitted on one multivariate "
                f"series ({', '.join(self._roles().user_columns)})): it needs every series at every timestamp"
            )

    def _as_panel(self, loaded: LoadedSeries) -> dict[str, TimeSeriesFrame]:
        """The series of a panel forecaster's input (long rows that happen to share one index, too)."""
        if loaded.panel is not None:
            return dict(loaded.panel.series)
        if loaded.layout == "long":
            frame = loaded.frame
            return {c: frame.select([c]).renamed(["y"]) for c in frame.columns}
        raise DataError(
            f"{loaded.frame.source}: this forecaster was fitted on a panel (long format: unique_id, ds, y); "
            "pass the series in that format"
        )

    def _future_panel(self, future_df: SeriesInput | None) -> dict[str, TimeSeriesFrame]:
        """Known-future covariates per series from long rows ``unique_id, ds, <covariates>``."""
        if future_df is None:
            return {}
        df = pd.read_csv(future_df) if isinstance(future_df, (str, os.PathLike)) else future_df
        if not isinstance(df, pd.DataFrame) or not {"unique_id", "ds"} <= set(df.columns):
            raise DataError(
                "future_df of a panel forecaster: long rows unique_id, ds and the covariate columns"
            )
        keys = df["unique_id"].astype(str)
        return {
            str(key): frame_from_dataframe(
                df[keys == key].drop(columns="unique_id").rename(columns={"ds": DATE_COLUMN}),
                f"future_df: series {key!r}",
            )
            for key in pd.unique(keys)
        }

    def _series_scaler(self, name: str, history: TimeSeriesFrame) -> StandardScaler:
        """A panel series' scaler: its own from fitting, or for a series the panel did not have, one
        fitted on the history given (a global model forecasts new series from their own scale)."""
        assert self.series_scalers is not None
        if name in self.series_scalers:
            return self.series_scalers[name]
        inputs, observed = self._model_inputs(self._matching_channels(history), self._roles())
        return StandardScaler().fit(np.where(observed, inputs.values, np.nan))

    def forecast_after(
        self,
        history: TimeSeriesFrame,
        future: TimeSeriesFrame | None = None,
        *,
        int8: bool = False,
        scaler: StandardScaler | None = None,
    ) -> tuple[np.ndarray, pd.DatetimeIndex]:
        """The (H, targets) forecast after the last row of ``history`` (the data's own columns), in
        the original units, and its timestamps; ``future`` holds the known-future covariates' values
        at those timestamps; ``scaler``: a panel series' own."""
        _, _, frequency = self._fitted()
        roles = self._roles()
        frame = self._matching_channels(history)
        if self.inputs.fill is not None:
            frame = on_regular_grid(frame)
        inputs, _ = self._model_inputs(frame, roles)
        L = self.context_length
        if inputs.num_rows < L:
            raise DataError(
                f"{frame.source}: {inputs.num_rows} rows, but the forecaster reads the last {L} "
                "(its context_length); pass a longer history"
            )
        check_spacing(inputs.timestamps[-L:], frequency, frame.source)
        dates = future_timestamps(inputs.timestamps[-1], frequency, self.prediction_length)
        known = future_inputs(roles, dates, future, future.source if future is not None else "future_df")
        context = inputs.values[None, -L:]
        known_future = known[None] if roles.num_known_future else None
        point = self.forecast_windows(context, known_future, int8=int8, scaler=scaler)
        return point[0], dates

    def forecast_windows(
        self,
        contexts: np.ndarray,
        future_covariates: np.ndarray | None = None,
        *,
        int8: bool = False,
        scaler: StandardScaler | None = None,
    ) -> np.ndarray:
        """Forecasts from (n, L, C) context windows of the model's channels (and the (n, H, K)
        known-future covariates), original units in and out: (n, H, targets). ``scaler``: a panel
        series' own (default: the forecaster's)."""
        module, fitted_scaler, _ = self._fitted()
        scaler = scaler or fitted_scaler
        if int8:
            if self._int8 is None or self._int8[0] is not module:
                self._int8 = (module, quantized_int8(module))
            module = cast(ForecastModel, self._int8[1])
        past = torch.from_numpy(np.ascontiguousarray(scaler.transform(contexts.astype(np.float32))))
        known = None
        if future_covariates is not None:
            k = future_covariates.shape[-1]
            scaled = (future_covariates.astype(np.float64) - scaler.mean[-k:]) / scaler.std[-k:]
            known = torch.from_numpy(scaled.astype(np.float32))
        device = next(iter(module.parameters()), torch.empty(0)).device
        module.eval()
        outputs = []
        step = self.config.training.eval_batch_size
        with merged_lora(module), torch.no_grad():
            for start in range(0, len(past), step):
                extra = {} if known is None else {"future_covariates": known[start : start + step].to(device)}
                outputs.append(
                    module(past[start : start + step].to(device), **extra).prediction.float().cpu()
                )
        return scaler.inverse_transform(torch.cat(outputs).numpy())[..., : len(self.targets)]

    def interval_radius(self, level: float, *, scaler: StandardScaler | None = None) -> np.ndarray:
        """The (H, targets) half-width of the level-``level`` prediction interval, in the original units
        (a panel's radii are standardised: ``scaler``, the series' own, scales them back)."""
        if self.calibration is None:
            raise EcalfError(
                "this forecaster was fitted without validation rows (validation_fraction 0), so there are no "
                "held-out residuals to calibrate intervals on; fit it again with validation_fraction > 0 "
                "(the default 0.1) to get intervals"
            )
        radius = self.calibration.radius(level)
        if self.series_scalers is not None:
            if scaler is None:
                raise EcalfError("a panel forecaster's intervals are per series: give the series' scaler")
            radius = radius * scaler.std[: radius.shape[-1]]
        return radius

    def cross_validation(
        self,
        data: SeriesInput,
        *,
        n_windows: int = 5,
        step_size: int | None = None,
        refit: bool = False,
        level: Iterable[float] | float | None = None,
        verbose: bool = False,
        adaptive: bool = False,
        gamma: float = 0.05,
    ) -> pd.DataFrame:
        """A rolling-origin backtest over the end of ``data``: ``n_windows`` forecasts from cutoffs
        ``step_size`` rows apart (default: the horizon), the last one leaving one horizon of rows.

        Returns the long frame ``unique_id, ds, cutoff, y, <model>`` (plus ``<model>-lo-<level>``,
        ``<model>-hi-<level>`` with ``level``), neuralforecast's schema, for the target series.
        ``refit=True`` fits a model with these settings at every cutoff on the rows up to it;
        otherwise the fitted model forecasts from each cutoff, reading only the rows up to it (and
        the known-future covariates after it). ``adaptive``: the interval level adapts window by
        window to the misses of the earlier windows (adaptive conformal inference, step ``gamma``).
        See :mod:`ecalf.backtest`.
        """
        loaded = self.read(data)
        if self.series_scalers is not None:
            return self._cross_validate_panel(
                loaded, n_windows, step_size, refit, check_levels(level), adaptive, gamma
            )
        self._refuse_panel(loaded)
        frame = loaded.frame
        if self.is_fitted:
            frame = self._matching_channels(frame)
        if self.inputs.fill is not None:
            frame = on_regular_grid(frame)
        regular_frequency(frame.timestamps, frame.source)
        return cross_validation(
            self, frame, n_windows=n_windows, step_size=step_size, refit=refit, level=check_levels(level),
            ids=loaded.ids, log=print if verbose else None, adaptive=adaptive, gamma=gamma,
        )  # fmt: skip

    def _cross_validate_panel(
        self,
        loaded: LoadedSeries,
        n_windows: int,
        step_size: int | None,
        refit: bool,
        levels: tuple[float, ...],
        adaptive: bool = False,
        gamma: float = 0.05,
    ) -> pd.DataFrame:
        """A panel's backtest: every series from its own cutoffs (counted back from its own end)."""
        if refit:
            raise EcalfError(
                "refit=True refits at one set of cutoffs, but a panel's series end at different times, so a "
                "panel forecaster cannot be refitted per cutoff; use refit=False (the fitted model from each "
                "series' cutoffs), or fit on the rows before a cutoff yourself"
            )
        blocks = []
        for name, history in self._as_panel(loaded).items():
            view = _PanelSeries(self, self._series_scaler(name, history))
            frame = self._matching_channels(history)
            if self.inputs.fill is not None:
                frame = on_regular_grid(frame)
            cv = cross_validation(
                view,
                frame,
                n_windows=n_windows,
                step_size=step_size,
                level=levels,
                adaptive=adaptive,
                gamma=gamma,
            )
            cv["unique_id"] = [loaded.ids.get(name, name)] * len(cv)
            blocks.append(cv)
        return pd.concat(blocks, ignore_index=True)

    def read(self, data: SeriesInput) -> LoadedSeries:
        """``data`` read and checked as this forecaster reads its inputs (missing values allowed when
        it fills them), to pass to several of its methods without reading a file again."""
        return load_series(data, allow_missing=self.inputs.fill is not None)

    def actuals(self, data: SeriesInput) -> pd.DataFrame:
        """The target series of ``data`` in the long schema ``unique_id, ds, y``, under the ids that
        :meth:`cross_validation` gives them (long input: the input's own ``unique_id`` values; wide
        input: the column names): what a backtest is scored against and drawn over."""
        loaded = self.read(data)
        if self.series_scalers is not None:
            series = [
                wide_to_long(frame_to_wide(frame.select(["y"]).renamed(["series"]))).assign(
                    unique_id=loaded.ids.get(name, name)
                )
                for name, frame in self._as_panel(loaded).items()
            ]
            return pd.concat(series, ignore_index=True)
        self._refuse_panel(loaded)
        targets = self._matching_channels(loaded.frame).select(self.targets)
        return wide_to_long(frame_to_wide(targets), loaded.ids if loaded.layout == "long" else None)

    def refitted(self, frame: TimeSeriesFrame) -> Forecaster:
        """A new forecaster with these settings, fitted on ``frame`` alone (a backtest's refit)."""
        fresh = Forecaster.__new__(Forecaster)
        fresh._reset(self.config, self.inputs, batch_size_given=self._batch_size_given)
        fraction = VALIDATION_FRACTION if self.validation_fraction is None else self.validation_fraction
        return fresh.fit(frame, validation_fraction=fraction, verbose=False, floor=False)

    def plot(
        self,
        data: SeriesInput,
        forecast: pd.DataFrame | None = None,
        path: str | os.PathLike[str] = "forecast.png",
        *,
        history_rows: int | None = None,
        level: Iterable[float] | float | None = None,
        future_df: SeriesInput | None = None,
    ) -> Path:
        """PNG of the recent history and the forecast, one panel per target, with the forecast's
        interval bands (the forecast is made, with ``level`` and ``future_df``, when None)."""
        from ecalf.plots import plot_forecast

        loaded = self.read(data)
        if forecast is None:
            forecast = self.predict(data, level=level, future_df=future_df)
        if self.series_scalers is not None:  # a panel: each series on its own dates, NaN elsewhere
            named = {str(loaded.ids.get(n, n)): f for n, f in self._as_panel(loaded).items()}
            history = (
                pd.concat(
                    [
                        frame_to_wide(f.select(["y"])).set_index(DATE_COLUMN)["y"].rename(n)
                        for n, f in named.items()
                    ],
                    axis=1,
                )
                .rename_axis(DATE_COLUMN)
                .reset_index()
            )
            future = panel_forecast_to_wide(forecast)
        else:
            history = frame_to_wide(self._matching_channels(loaded.frame).select(self.targets))
            future = forecast_to_wide(forecast)
        return plot_forecast(
            history,
            future,
            path,
            history_rows=history_rows,
            title=f"{self.model_name}: next {self.prediction_length} steps (frequency {self.frequency!r})",
        )

    # -- save / load --------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the fitted forecaster to ``directory`` (created; files of an earlier save replaced).
        The layout is :mod:`ecalf.saved_forecaster`'s."""
        module, scaler, frequency = self._fitted()
        saved = SavedForecaster(
            self.config, module, scaler, self.columns, frequency, self.validation_fraction,
            self.summary, self.history, self.calibration, self._roles().as_dict(), self.inputs.as_dict(),
            self.series_scalers,
        )  # fmt: skip
        return write_forecaster(directory, saved)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, device: str | None = None) -> Forecaster:
        """A forecaster saved by :meth:`save` (or ``ecalf fit``); ``device`` overrides training.device."""
        saved = read_forecaster(directory, device=device)
        forecaster = cls.__new__(cls)
        # the saved config's batch size, as it was fitted
        forecaster._reset(saved.config, InputSpec.from_dict(saved.inputs), batch_size_given=True)
        forecaster.module, forecaster.scaler = saved.module, saved.scaler
        forecaster.roles = ColumnRoles.from_dict(saved.roles) if saved.roles else ColumnRoles(saved.columns)
        forecaster.frequency = saved.frequency
        forecaster.validation_fraction = saved.validation_fraction
        forecaster.history, forecaster.summary = saved.history, saved.summary
        forecaster.calibration = saved.calibration
        forecaster.series_scalers = saved.series_scalers
        forecaster.floor = FloorComparison.from_dict(saved.summary.get("floor") or {})
        return forecaster

    # -- helpers ------------------------------------------------------------------------------------

    def _fitted(self) -> tuple[ForecastModel, StandardScaler, str]:
        if self.module is None or self.scaler is None or self.frequency is None:
            raise EcalfError(
                "this Forecaster is not fitted; call fit(data) first or use Forecaster.load(dir)"
            )
        return self.module, self.scaler, self.frequency

    def _roles(self) -> ColumnRoles:
        if self.roles is None:
            raise EcalfError(
                "this Forecaster is not fitted; call fit(data) first or use Forecaster.load(dir)"
            )
        return self.roles

    def _model_inputs(self, frame: TimeSeriesFrame, roles: ColumnRoles) -> tuple[TimeSeriesFrame, np.ndarray]:
        """The model's channels of ``frame`` with the gaps filled, and the (T, C) mask of observed values."""
        return filled_model_inputs(frame, roles, self.inputs.fill)

    def _matching_channels(self, frame: TimeSeriesFrame) -> TimeSeriesFrame:
        """``frame`` with the fitted columns in the fitted order; other columns are refused."""
        expected = self._roles().user_columns
        if frame.columns == expected:
            return frame
        got = list(frame.columns)
        if sorted(got) == sorted(expected):
            return frame.select(expected)
        missing = [c for c in expected if c not in got]
        unexpected = [c for c in got if c not in expected]
        raise DataError(
            f"{frame.source}: the forecaster was fitted on {len(expected)} columns {expected}, but the data "
            f"has {len(got)} columns {got} (missing: {missing}, unexpected: {unexpected}). Pass data with "
            "the same columns (any order), or fit a new forecaster on this data"
        )


def _silent(line: str) -> None:
    pass


@dataclass
class _PanelSeries:
    """One series of a panel forecaster, as :func:`ecalf.backtest.cross_validation` sees a forecaster."""

    forecaster: Forecaster
    scaler: StandardScaler

    @property
    def model_name(self) -> str:
        return self.forecaster.model_name

    @property
    def context_length(self) -> int:
        return self.forecaster.context_length

    @property
    def prediction_length(self) -> int:
        return self.forecaster.prediction_length

    @property
    def is_fitted(self) -> bool:
        return self.forecaster.is_fitted

    @property
    def targets(self) -> list[str]:
        return self.forecaster.targets

    def forecast_after(
        self, history: TimeSeriesFrame, future: TimeSeriesFrame | None = None
    ) -> tuple[np.ndarray, pd.DatetimeIndex]:
        return self.forecaster.forecast_after(history, future, scaler=self.scaler)

    def interval_radius(self, level: float) -> np.ndarray:
        return self.forecaster.interval_radius(level, scaler=self.scaler)

    def refitted(self, frame: TimeSeriesFrame) -> _PanelSeries:
        raise EcalfError("a panel forecaster cannot be refitted per cutoff")
