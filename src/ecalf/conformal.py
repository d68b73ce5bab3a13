"""Prediction intervals by split conformal prediction, and how good intervals are.

Calibration (:func:`calibrate`) takes a model's forecasts of held-out windows and their actual values
(the validation windows that fitting already holds out), and keeps, for every horizon step h and series
c, the absolute residuals ``|y - y_hat|`` over the windows. The radius of a level-``a`` interval at
(h, c) is their ``ceil((n + 1) a)``-th smallest value (n windows): the finite-sample correction of split
conformal prediction (Vovk et al. 2005; Lei et al. 2018), which covers a new exchangeable window with
probability at least ``a``. When ``ceil((n + 1) a) > n`` the radius is infinite: too few windows for
that level, which :meth:`IntervalCalibration.radius` refuses with the number of windows it would need.

The radii are kept for every level of :data:`CALIBRATED_LEVELS` (integers 1-99 and 99.5), so a saved
model answers any of them without its residuals. Windows of a time series overlap and follow the
model's selection on the same validation windows, so exchangeability holds only approximately; the
measured coverage on test splits is in docs/intervals.md.

Adaptive conformal inference (Gibbs & Candes, NeurIPS 2021; :class:`AdaptiveLevel`) moves the level
used as forecasts are checked against actuals one after another: after a miss it widens, after a hit it
narrows a little, so that the long-run miss rate tracks ``1 - a`` even when the errors drift.

:func:`interval_sums` scores intervals (coverage, width and the Winkler interval score, Winkler 1972) as
sums over large tensors of test windows; it matches ``utilsforecast.losses.coverage`` and
``winkler_score`` (a test compares them), which cannot take millions of points at once in a DataFrame.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ecalf.errors import ConfigError, DataError, EcalfError

CALIBRATED_LEVELS: tuple[float, ...] = (*[float(k) for k in range(1, 100)], 99.5)
"""The levels (in percent) whose radii a calibration keeps."""


def check_levels(levels: Iterable[float] | float | None) -> tuple[float, ...]:
    """The requested interval levels (percent), sorted without repeats; each one of
    :data:`CALIBRATED_LEVELS`. A level outside (0, 100) or between those is a ConfigError."""
    if levels is None:
        return ()
    values = [levels] if isinstance(levels, (int, float)) else list(levels)
    checked = []
    for level in values:
        if isinstance(level, bool) or not isinstance(level, (int, float, np.integer, np.floating)):
            raise ConfigError(f"an interval level is a number in percent such as 80 or 95, got {level!r}")
        if not 0 < level < 100:
            raise ConfigError(
                f"interval level {level:g} is outside (0, 100); give it in percent, e.g. 80 or 95"
            )
        if level < 1:
            raise ConfigError(
                f"interval level {level:g}: give levels in percent, e.g. 80 or 95 (not 0.8 or 0.95 as a "
                "fraction)"
            )
        if float(level) not in CALIBRATED_LEVELS:
            raise ConfigError(
                f"interval level {level:g} is not one of the calibrated levels (whole percents 1-99, and "
                "99.5); round it, e.g. 90"
            )
        checked.append(float(level))
    return tuple(sorted(set(checked)))


def level_name(level: float) -> str:
    """A level as column names spell it: ``80``, ``99.5``."""
    return f"{level:g}"


@dataclass(frozen=True)
class IntervalCalibration:
    """Split-conformal radii: ``radii[i]`` is the (H, C) radius of level :data:`CALIBRATED_LEVELS`\\ [i]
    (``inf`` where the windows are too few for that level), from ``windows`` calibration windows."""

    windows: int
    radii: np.ndarray
    """(len(CALIBRATED_LEVELS), H, C), float64, in the units of the values calibrated."""

    def radius(self, level: float) -> np.ndarray:
        """The (H, C) half-width of the level-``level`` interval around a point forecast."""
        (level,) = check_levels([level])
        radius = self.radii[CALIBRATED_LEVELS.index(level)]
        if not np.isfinite(radius).all():
            raise EcalfError(
                f"a {level:g} % interval needs at least {windows_needed(level)} calibration windows; this "
                f"model has {self.windows}. Ask for a lower level, or fit with more validation rows "
                "(a larger validation_fraction or a longer series)"
            )
        return radius

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: levels, windows and the radii (``null`` for an infinite radius)."""
        return {
            "method": "split conformal, absolute residual per (horizon step, series)",
            "windows": self.windows,
            "levels": list(CALIBRATED_LEVELS),
            "radii": [
                [[v if math.isfinite(v) else None for v in row] for row in r] for r in self.radii.tolist()
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntervalCalibration:
        """The calibration :meth:`to_dict` wrote; a DataError when it is not one."""
        try:
            levels = [float(v) for v in data["levels"]]
            windows = int(data["windows"])
            radii = np.array(
                [[[math.inf if v is None else float(v) for v in row] for row in r] for r in data["radii"]],
                dtype=np.float64,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"not an interval calibration ({exc})") from None
        if tuple(levels) != CALIBRATED_LEVELS or radii.ndim != 3 or radii.shape[0] != len(levels):
            raise DataError("not an interval calibration of this ecalf version (its levels differ)")
        return cls(windows, radii)


def windows_needed(level: float) -> int:
    """The fewest calibration windows that give a finite level-``level`` radius: n with
    ``ceil((n + 1) a) <= n``."""
    alpha = 1.0 - level / 100.0
    return math.ceil(1.0 / alpha - 1.0 - 1e-9)


def calibrate(predictions: np.ndarray, actuals: np.ndarray) -> IntervalCalibration:
    """Split-conformal radii from (n, H, C) forecasts of held-out windows and their actual values.

    A NaN actual value (missing) is left out: each (h, c) uses its own observed windows, and
    ``windows`` is the fewest of them."""
    if predictions.shape != actuals.shape or predictions.ndim != 3:
        raise ValueError(
            f"calibrate: shapes {predictions.shape} and {actuals.shape} differ or are not (n, H, C)"
        )
    if predictions.shape[0] == 0:
        raise DataError("no calibration windows: intervals need validation windows held out of training")
    scores = np.sort(np.abs(actuals.astype(np.float64) - predictions.astype(np.float64)), axis=0)  # NaN last
    counts = (~np.isnan(scores)).sum(axis=0)  # (H, C) observed windows
    radii = np.full((len(CALIBRATED_LEVELS), *scores.shape[1:]), np.inf)
    for i, level in enumerate(CALIBRATED_LEVELS):
        ranks = np.ceil((counts + 1) * level / 100.0 - 1e-9).astype(int)  # the corrected order statistic
        reachable = ranks <= counts
        taken = np.take_along_axis(scores, np.clip(ranks - 1, 0, scores.shape[0] - 1)[None], axis=0)[0]
        radii[i] = np.where(reachable, taken, np.inf)
    return IntervalCalibration(int(counts.min()), radii)


@dataclass
class IntervalSums:
    """Running sums that score level-``level`` intervals: coverage, mean width, Winkler score."""

    level: float
    points: int = 0
    covered: float = 0.0
    width: float = 0.0
    winkler: float = 0.0

    def add(self, actual: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        alpha = 1.0 - self.level / 100.0
        y, lo64, hi64 = (np.asarray(a, dtype=np.float64) for a in (actual, lo, hi))
        width = hi64 - lo64
        below = np.clip(lo64 - y, 0.0, None)
        above = np.clip(y - hi64, 0.0, None)
        self.points += y.size
        self.covered += float(((y >= lo64) & (y <= hi64)).sum())
        self.width += float(width.sum())
        self.winkler += float((width + 2.0 / alpha * (below + above)).sum())

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """``coverage_<level>`` (fraction of points inside), ``width_<level>``, ``winkler_<level>``
        (each name after ``prefix``)."""
        if self.points == 0:
            raise ValueError("no points scored")
        name = level_name(self.level)
        return {
            f"{prefix}coverage_{name}": self.covered / self.points,
            f"{prefix}width_{name}": self.width / self.points,
            f"{prefix}winkler_{name}": self.winkler / self.points,
        }


def interval_sums(
    actual: np.ndarray, predicted: np.ndarray, calibration: IntervalCalibration, levels: Iterable[float]
) -> dict[str, float]:
    """Coverage, mean width and Winkler score of every level's interval over (n, H, C) windows."""
    scores = {}
    for level in check_levels(levels):
        radius = calibration.radius(level)
        sums = IntervalSums(level)
        sums.add(actual, predicted - radius, predicted + radius)
        scores.update(sums.as_dict())
    return scores


@dataclass
class AdaptiveLevel:
    """Adaptive conformal inference (Gibbs & Candes 2021): the miss rate aimed at, ``alpha_t``, moves
    by ``gamma * (alpha - miss_t)`` after each checked forecast; the level used is ``1 - alpha_t``,
    clipped to the calibrated levels."""

    level: float
    gamma: float = 0.005
    alpha_t: float | None = None

    def __post_init__(self) -> None:
        (self.level,) = check_levels([self.level])
        if not 0 < self.gamma < 1:
            raise ConfigError(f"the adaptive step gamma must be in (0, 1), got {self.gamma}")
        if self.alpha_t is None:
            self.alpha_t = 1.0 - self.level / 100.0

    def current(self, highest: float = CALIBRATED_LEVELS[-1]) -> float:
        """The calibrated level closest to ``1 - alpha_t``, at most ``highest``."""
        assert self.alpha_t is not None
        wanted = 100.0 * (1.0 - self.alpha_t)
        return min((lvl for lvl in CALIBRATED_LEVELS if lvl <= highest), key=lambda lvl: abs(lvl - wanted))

    def update(self, missed_fraction: float) -> None:
        """After checking a forecast: ``missed_fraction`` of its points fell outside the interval."""
        assert self.alpha_t is not None
        self.alpha_t += self.gamma * ((1.0 - self.level / 100.0) - missed_fraction)


ADAPTIVE_PREFIX = "aci_"
"""Result columns of adaptive intervals: ``aci_coverage_80``, ..."""


def adaptive_interval_sums(
    actual: np.ndarray,
    predicted: np.ndarray,
    calibration: IntervalCalibration,
    levels: Iterable[float],
    *,
    feedback_delay: int,
    gamma: float = 0.005,
) -> dict[str, float]:
    """Like :func:`interval_sums`, with the level adapted window by window in time order
    (:class:`AdaptiveLevel`). Window t learns whether window ``t - feedback_delay`` was covered (the
    windows of a test split start one row apart, so with the horizon as delay only outcomes already
    observed at t's cutoff are used). Levels beyond the largest with a finite radius are clipped to it."""
    finite = [lvl for i, lvl in enumerate(CALIBRATED_LEVELS) if np.isfinite(calibration.radii[i]).all()]
    if not finite:
        raise EcalfError("no interval level has a finite radius: too few calibration windows")
    scores = {}
    for level in check_levels(levels):
        calibration.radius(level)  # a clear error when the level itself is out of reach
        adaptive, sums = AdaptiveLevel(level, gamma), IntervalSums(level)
        missed: list[float] = []
        for t in range(len(predicted)):
            if t >= feedback_delay:
                adaptive.update(missed[t - feedback_delay])
            radius = calibration.radii[CALIBRATED_LEVELS.index(adaptive.current(highest=finite[-1]))]
            lo, hi = predicted[t] - radius, predicted[t] + radius
            sums.add(actual[t], lo, hi)
            missed.append(float(((actual[t] < lo) | (actual[t] > hi)).mean()))
        scores.update(sums.as_dict(ADAPTIVE_PREFIX))
    return scores
