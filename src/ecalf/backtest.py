"""Rolling-origin backtests: forecasts from several past cutoffs, scored against what happened.

:func:`cross_validation` (``Forecaster.cross_validation``) returns neuralforecast's schema, one row per
series, cutoff and forecast step: ``unique_id, ds, cutoff, y, <model>`` (and ``<model>-lo-<level>``,
``<model>-hi-<level>`` with intervals). The last cutoff leaves exactly one horizon of rows after it;
earlier ones are ``step_size`` rows apart (default: the horizon, so the windows tile the end of the
series). Without ``refit`` the fitted model forecasts from every cutoff, reading only the
``context_length`` rows up to it; with ``refit`` a model with the same settings is fitted at every
cutoff on the rows up to it (and its own validation part), so no row after a cutoff is ever read.

:func:`backtest_report` scores a backtest per window and overall with ``utilsforecast.losses``: MSE,
MAE, MASE (scaled by the in-sample MAE of the seasonal naive forecast on the rows up to each cutoff,
at the season :func:`season_length` infers from the frequency) and, with intervals, coverage and the
Winkler score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np
import pandas as pd
from utilsforecast import losses

from ecalf.conformal import CALIBRATED_LEVELS, AdaptiveLevel, check_levels, level_name
from ecalf.data import TimeSeriesFrame
from ecalf.errors import ConfigError, DataError, EcalfError


class Backtestable(Protocol):
    """What a backtest needs of a forecaster (:class:`ecalf.forecast.Forecaster` is one)."""

    @property
    def model_name(self) -> str: ...

    @property
    def context_length(self) -> int: ...

    @property
    def prediction_length(self) -> int: ...

    @property
    def is_fitted(self) -> bool: ...

    @property
    def targets(self) -> list[str]: ...

    def forecast_after(
        self, history: TimeSeriesFrame, future: TimeSeriesFrame | None = None
    ) -> tuple[np.ndarray, pd.DatetimeIndex]:
        """The (H, targets) forecast after ``history`` in original units (``future``: the rows after
        it, for known-future covariates), and its timestamps."""
        ...

    def interval_radius(self, level: float) -> np.ndarray:
        """The (H, C) half-width of the level-``level`` interval."""
        ...

    def refitted(self, frame: TimeSeriesFrame) -> Backtestable:
        """A forecaster with the same settings, fitted on ``frame`` alone."""
        ...


def cutoff_positions(
    rows: int, context_length: int, horizon: int, n_windows: int, step_size: int
) -> list[int]:
    """Row positions of the cutoffs (the last observed row of each window), oldest first."""
    if isinstance(n_windows, bool) or not isinstance(n_windows, int) or n_windows < 1:
        raise ConfigError(f"n_windows must be a positive integer, got {n_windows!r}")
    if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
        raise ConfigError(
            f"step_size must be a positive number of rows, got {step_size!r} (None: the horizon, {horizon})"
        )
    last = rows - 1 - horizon
    first = last - (n_windows - 1) * step_size
    if first < context_length - 1:
        fits = (last - (context_length - 1)) // step_size + 1 if last >= context_length - 1 else 0
        need = context_length + horizon + (n_windows - 1) * step_size
        raise DataError(
            f"{n_windows} backtest windows {step_size} rows apart need {need} rows (context {context_length} "
            f"+ horizon {horizon} + {n_windows - 1} steps of {step_size}); the series has {rows}"
            + (f": use at most {fits} windows or a smaller step_size" if fits else
               ": it is too short for one window; give a longer series or a shorter context_length")
        )  # fmt: skip
    return [first + i * step_size for i in range(n_windows)]


def cross_validation(
    forecaster: Backtestable,
    frame: TimeSeriesFrame,
    *,
    n_windows: int = 5,
    step_size: int | None = None,
    refit: bool = False,
    level: Sequence[float] | float | None = None,
    ids: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    adaptive: bool = False,
    gamma: float = 0.05,
) -> pd.DataFrame:
    """The backtest of ``forecaster`` on ``frame`` (wide, in the fitted columns), in the long schema
    ``unique_id, ds, cutoff, y, <model>[, <model>-lo-<level>, <model>-hi-<level>]`` for the target
    series (``y`` NaN where a value is missing); ``ids`` maps column names to the user's ``unique_id``
    values. ``adaptive``: the intervals' level adapts as the backtest moves forward (adaptive conformal
    inference, :class:`ecalf.conformal.AdaptiveLevel` with step ``gamma``): each window's band uses
    what the earlier windows whose horizon had ended by its cutoff missed; the columns keep the
    target level's name."""
    levels = check_levels(level)
    L, H = forecaster.context_length, forecaster.prediction_length
    try:
        positions = cutoff_positions(frame.num_rows, L, H, n_windows, H if step_size is None else step_size)
    except DataError as short:  # name the series (a panel's has its own rows)
        raise DataError(f"{frame.source}: {short}") from None
    if not refit and not forecaster.is_fitted:
        raise EcalfError(
            "cross_validation(refit=False) needs a fitted forecaster; fit it first or pass refit=True"
        )
    name = forecaster.model_name
    blocks = []
    trackers = {lvl: AdaptiveLevel(lvl, gamma) for lvl in levels} if adaptive else {}
    outcomes: list[tuple[int, float, float]] = []  # (last row of a window, level, fraction missed)
    targets = frame.select(forecaster.targets).values if levels and adaptive else None
    for number, cut in enumerate(positions, 1):
        model = forecaster
        if refit:
            if log is not None:
                log(
                    f"backtest window {number}/{len(positions)}: refitting on the {cut + 1} rows up to "
                    f"{frame.timestamps[cut]}"
                )
            model = forecaster.refitted(frame.rows(0, cut + 1))
        point, _ = model.forecast_after(frame.rows(0, cut + 1), frame.rows(cut + 1, cut + 1 + H))  # (H, T)
        columns: dict[str, np.ndarray] = {name: point}
        for _end, lvl, missed in [o for o in outcomes if o[0] <= cut]:  # known at this cutoff
            trackers[lvl].update(missed)
        outcomes = [o for o in outcomes if o[0] > cut]
        for lvl in levels:
            used = _reachable(model, trackers[lvl]) if adaptive else lvl
            radius = model.interval_radius(used).astype(point.dtype)
            lo, hi = point - radius, point + radius
            columns[f"{name}-lo-{level_name(lvl)}"], columns[f"{name}-hi-{level_name(lvl)}"] = lo, hi
            if targets is not None:
                actual = targets[cut + 1 : cut + 1 + H]
                seen = ~np.isnan(actual)
                missed = float(((actual < lo) | (actual > hi))[seen].mean()) if seen.any() else 0.0
                outcomes.append((cut + H, lvl, missed))
        blocks.append(_long_block(frame.select(model.targets), cut, H, columns))
    result = pd.concat(blocks, ignore_index=True)
    order = {c: i for i, c in enumerate(forecaster.targets or frame.columns)}
    result = result.sort_values(
        ["unique_id", "cutoff", "ds"], key=lambda s: s.map(order) if s.name == "unique_id" else s
    )
    if ids:
        result["unique_id"] = (
            pd.Series([ids.get(v, v) for v in result["unique_id"]], dtype=object).infer_objects().to_numpy()
        )
    return result.reset_index(drop=True)


def _reachable(model: Backtestable, tracker: AdaptiveLevel) -> float:
    """The adaptive level to use: the tracker's, lowered to the highest one the model's calibration
    windows allow (a finite radius)."""
    wanted = tracker.current()
    for level in sorted((lvl for lvl in CALIBRATED_LEVELS if lvl <= wanted), reverse=True):
        try:
            model.interval_radius(level)
            return level
        except EcalfError:
            continue
    return wanted  # none is reachable: its error says how many windows are needed


def _long_block(
    frame: TimeSeriesFrame, cut: int, horizon: int, columns: dict[str, np.ndarray]
) -> pd.DataFrame:
    """One cutoff's rows: every series' H steps after ``cut`` with its actual values and forecasts."""
    channels = len(frame.columns)
    ds = frame.timestamps[cut + 1 : cut + 1 + horizon]
    block = {
        "unique_id": np.repeat(np.array(frame.columns, dtype=object), horizon),
        "ds": np.tile(ds, channels),
        "cutoff": np.repeat(frame.timestamps[cut], horizon * channels),
        "y": frame.values[cut + 1 : cut + 1 + horizon].T.reshape(-1),
    }
    for column, values in columns.items():
        block[column] = values.T.reshape(-1)  # (H, C) -> series-major
    return pd.DataFrame(block)


def season_length(frequency: str) -> int:
    """The seasonal period a frequency suggests: a day of sub-daily steps (``h``: 24, ``15min``: 96),
    a week of days (7; 5 for business days), a year of weeks, months or quarters (52, 12, 4), else 1."""
    offset = pd.tseries.frequencies.to_offset(frequency)
    name = offset.rule_code
    try:
        step = pd.Timedelta(offset)
    except (ValueError, TypeError):
        step = None
    if step is not None and step < pd.Timedelta("1D"):
        day = pd.Timedelta("1D")
        return int(day // step) if day % step == pd.Timedelta(0) else 1
    if name == "B":
        return 5
    if name == "D" and offset.n == 1:
        return 7
    if name.startswith("W"):
        return 52 if offset.n == 1 else 1
    if name.startswith(("M", "ME", "MS", "BM", "BME", "BMS", "SM")):
        return 12 // offset.n if 12 % offset.n == 0 else 1
    if name.startswith(("Q", "BQ")):
        return 4 if offset.n == 1 else 1
    return 1


@dataclass
class BacktestReport:
    """Per-window and overall scores of a backtest."""

    model: str
    season: int
    levels: tuple[float, ...]
    windows: pd.DataFrame
    """One row per window: ``cutoff`` (a panel's latest), ``mse``, ``mae``, ``mase`` and
    ``coverage_<level>``, ``winkler_<level>`` per level (coverage as a fraction)."""
    overall: dict[str, float] = field(default_factory=dict)
    """The same scores over every window: every scored point pooled per series (MASE: the windows'
    mean, each window scaled by its own history)."""

    def table(self) -> str:
        """The printed table: one line per window, then ``all``."""
        columns = [c for c in self.windows.columns if c != "cutoff"]
        header = f"{'window':>6}  {'cutoff':<19}  " + "  ".join(f"{c:>12}" for c in columns)
        lines = [header]
        for number, row in enumerate(self.windows.itertuples(index=False), 1):
            values = dict(zip(self.windows.columns, row))
            lines.append(
                f"{number:>6}  {values['cutoff']!s:<19}  " + "  ".join(f"{values[c]:>12.4f}" for c in columns)
            )
        lines.append(f"{'all':>6}  {'':<19}  " + "  ".join(f"{self.overall[c]:>12.4f}" for c in columns))
        return "\n".join(lines)


def backtest_report(
    cv: pd.DataFrame, history: pd.DataFrame, model: str, season: int, levels: Sequence[float] = ()
) -> BacktestReport:
    """Scores of ``cv`` (:func:`cross_validation`'s frame); ``history`` holds the series in the long
    schema ``unique_id, ds, y`` (each series' rows up to its cutoff scale its MASE).

    Window k holds every series' k-th cutoff (a panel's series end, and so cut, at different times);
    its ``cutoff`` is the latest of them. The overall MSE, MAE, coverage and Winkler score pool every
    scored point of a series (then average over series); the overall MASE is the windows' mean."""
    levels = check_levels(levels)
    cv = cv.assign(window=cv.groupby("unique_id")["cutoff"].rank(method="dense").astype(int))
    cv = cv.dropna(subset=["y"])  # a missing actual value is not scored
    rows = []
    for _, window in cv.groupby("window", sort=True):
        cutoffs = window[["unique_id", "cutoff"]].drop_duplicates()
        train = history.merge(cutoffs, on="unique_id")
        train = train[train["ds"] <= train["cutoff"]].drop(columns="cutoff")
        frame = window.drop(columns=["cutoff", "window"])
        mase = _mase(frame, train, model, season)
        rows.append({"cutoff": window["cutoff"].max(), **_scores(frame, model, levels, mase)})
    windows = pd.DataFrame(rows)
    everything = cv.drop(columns=["cutoff", "window"])
    overall = _scores(everything, model, levels, float(windows["mase"].mean()))
    return BacktestReport(model, season, tuple(levels), windows, overall)


def _scores(frame: pd.DataFrame, model: str, levels: Sequence[float], mase: float) -> dict[str, float]:
    """MSE, MAE, the given MASE and each level's coverage and Winkler score of ``frame``'s points, per
    series by utilsforecast, then averaged over series."""
    scores = {
        "mse": float(losses.mse(frame, [model])[model].mean()),
        "mae": float(losses.mae(frame, [model])[model].mean()),
        "mase": mase,
    }
    for level in levels:
        name, given = level_name(level), cast(int, _int_level(level))
        scores[f"coverage_{name}"] = float(losses.coverage(frame, [model], level=given)[model].mean())
        scores[f"winkler_{name}"] = float(losses.winkler_score(frame, [model], level=given)[model].mean())
    return scores


def _mase(window: pd.DataFrame, train: pd.DataFrame, model: str, season: int) -> float:
    """MASE of one window, averaged over series; NaN where a series' seasonal-naive scale is 0 or the
    rows before the cutoff are fewer than one season."""
    scores = losses.mase(window, [model], seasonality=season, train_df=train)[model]
    finite = scores[np.isfinite(scores)]
    return float(finite.mean()) if len(finite) else math.nan


def _int_level(level: float) -> int | float:
    """utilsforecast names interval columns by the level as given: 80, or 99.5."""
    return int(level) if float(level).is_integer() else level
