"""Missing values in a user's series: missing timestamps put back on the regular grid, and the gaps
filled for the model's inputs (``fill="ffill"`` or ``"interpolate"``), with a mask of what was observed.

The filled values are inputs only: :mod:`ecalf.forecast` keeps the mask and hands the models NaN
wherever a *target* was missing (:mod:`ecalf.models.base`), so a filled value is never a training
target nor counted in a validation score. The same fill is applied again to the history given to
``predict`` (it is saved with the forecaster).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import pandas as pd

from ecalf.data.loading import TimeSeriesFrame
from ecalf.errors import ConfigError, DataError

FillMethod = Literal["ffill", "interpolate"]
FILL_METHODS: tuple[str, ...] = get_args(FillMethod)


def check_fill(fill: str | None) -> FillMethod | None:
    """``fill`` if it is a known method (or None); a ConfigError naming the choices otherwise."""
    if fill is None or fill in FILL_METHODS:
        return fill  # type: ignore[return-value]
    raise ConfigError(f"fill must be one of {', '.join(FILL_METHODS)} (or None to refuse gaps), got {fill!r}")


def on_regular_grid(frame: TimeSeriesFrame) -> TimeSeriesFrame:
    """``frame`` with rows of NaN at the timestamps missing from its regular grid (the most common
    step); unchanged when it has none. Timestamps off that grid are a DataError."""
    stamps = frame.timestamps
    if len(stamps) < 3:
        return frame
    steps = pd.TimedeltaIndex(stamps[1:] - stamps[:-1])
    usual = steps.value_counts().idxmax()
    if (steps == usual).all():
        return frame
    if usual <= pd.Timedelta(0) or ((steps % usual) != pd.Timedelta(0)).any():
        i = int(np.argmax(np.asarray((steps % usual) != pd.Timedelta(0))))
        raise DataError(
            f"{frame.source}: rows {i + 1} -> {i + 2} ({stamps[i]} -> {stamps[i + 1]}) are {steps[i]} apart, "
            f"not a multiple of the usual step {usual}; gaps can be filled only on a regular grid: resample "
            "first, e.g. df.set_index('date').resample('1h').mean().reset_index()"
        )
    grid = pd.date_range(stamps[0], stamps[-1], freq=usual)
    values = pd.DataFrame(frame.values, index=stamps).reindex(grid).to_numpy(dtype=np.float32)
    return TimeSeriesFrame(values, pd.DatetimeIndex(grid), list(frame.columns), frame.source)


def fill_gaps(frame: TimeSeriesFrame, method: FillMethod) -> tuple[TimeSeriesFrame, np.ndarray]:
    """The frame with every NaN filled (``ffill``: the last observed value; ``interpolate``: linear
    in time between the observed neighbours; leading gaps take the first observed value) and the
    (T, C) mask of observed values. A column with no observed value is a DataError."""
    observed = ~np.isnan(frame.values)
    empty = [c for c, seen in zip(frame.columns, observed.any(axis=0)) if not seen]
    if empty:
        raise DataError(
            f"{frame.source}: column {empty[0]!r} has no value at all, so there is nothing to fill its gaps "
            "from; drop the column or give it values"
        )
    if observed.all():
        return frame, observed
    df = pd.DataFrame(frame.values, index=frame.timestamps, columns=range(frame.num_channels))
    filled = df.ffill() if method == "ffill" else df.interpolate(method="time", limit_area="inside").ffill()
    filled = filled.bfill()  # a leading gap: the first observed value
    values = filled.to_numpy(dtype=np.float32)
    return TimeSeriesFrame(values, frame.timestamps, list(frame.columns), frame.source), observed
