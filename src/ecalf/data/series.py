"""A user's series in and out: the wide and long formats, their regular frequency and spacing, and the
timestamps that continue them (what :mod:`ecalf.forecast` reads and writes).

Wide: a ``date`` column + one numeric column per series. Long: ``unique_id, ds, y`` rows. When every
series has the same timestamps and there is no other column, the long rows are pivoted to one column
per ``unique_id`` (in order of appearance); otherwise (series of different lengths or start dates, or
covariate columns beside ``y``) they are a *panel*: each series its own frame of ``y`` and its
covariates, on its own timestamps (:class:`Panel`). A forecast goes back in the layout it came in, with
the user's own ids.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeAlias

import numpy as np
import pandas as pd

from ecalf.data.loading import DATE_COLUMN, TimeSeriesFrame, frame_from_dataframe, parse_timestamps, read_csv
from ecalf.errors import DataError

Layout = Literal["wide", "long", "panel"]
SeriesInput: TypeAlias = "pd.DataFrame | TimeSeriesFrame | LoadedSeries | str | os.PathLike[str]"
LONG_COLUMNS = ("unique_id", "ds", "y")


@dataclass(frozen=True)
class Panel:
    """Long-format series that do not share one index: each its own frame (``y`` and any covariate
    columns), by the text of its ``unique_id``, in order of appearance."""

    series: dict[str, TimeSeriesFrame]
    source: str
    why: str = ""
    """Why the rows are a panel and not one multivariate series (for messages)."""


class LoadedSeries(NamedTuple):
    """What :func:`load_series` read: the wide series (for a panel, its first series), the input's
    layout and, for long input, its ``unique_id`` values by their text (what the wide columns are
    named), so that a forecast goes back with the user's own ids (integers stay integers); and the
    panel, when the layout is one."""

    frame: TimeSeriesFrame
    layout: Layout
    ids: dict[str, Any]
    panel: Panel | None = None


def load_series(data: SeriesInput, source: str | None = None, *, allow_missing: bool = False) -> LoadedSeries:
    """A validated wide series from a CSV path, a wide/long DataFrame or a frame; and its layout.
    ``allow_missing``: empty and NaN values stay NaN (to be filled) instead of being an error. A
    :class:`LoadedSeries` is returned as it is (input read once, used twice)."""
    if isinstance(data, LoadedSeries):
        return data
    if isinstance(data, TimeSeriesFrame):
        return LoadedSeries(data, "wide", {})
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            raise DataError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
        try:
            header = [str(c).strip() for c in pd.read_csv(path, nrows=0).columns]
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError):
            header = []  # read_csv below names the problem
        if DATE_COLUMN not in header and set(LONG_COLUMNS) <= set(header):
            return _from_long(pd.read_csv(path), str(path), allow_missing)
        return LoadedSeries(read_csv(path, allow_missing=allow_missing), "wide", {})
    if isinstance(data, pd.DataFrame):
        name = source or "DataFrame"
        columns = {str(c).strip() for c in data.columns}
        if DATE_COLUMN not in columns and set(LONG_COLUMNS) <= columns:
            return _from_long(data, name, allow_missing)
        if DATE_COLUMN not in columns and (
            isinstance(data.index, pd.DatetimeIndex) or data.index.name == DATE_COLUMN
        ):  # dates as the index (pd.read_csv(path, index_col="date") leaves them as strings)
            data = data.rename_axis(DATE_COLUMN).reset_index()
        return LoadedSeries(frame_from_dataframe(data, name, allow_missing=allow_missing), "wide", {})
    raise DataError(
        f"expected a CSV path or a pandas DataFrame (wide: `date` + one column per series; long: "
        f"unique_id, ds, y), got {type(data).__name__}"
    )


def _from_long(df: pd.DataFrame, source: str, allow_missing: bool = False) -> LoadedSeries:
    """Long-format rows, read once: the wide frame (or the panel) and the ``unique_id`` values by
    their text."""
    df = df.rename(columns=lambda c: str(c).strip())
    column = df["unique_id"]
    ids = {str(v): v.item() if isinstance(v, np.generic) else v for v in pd.unique(column)}
    if len(df) and not is_panel(df, source):
        frame = frame_from_dataframe(long_to_wide(df, source), source, allow_missing=allow_missing)
        return LoadedSeries(frame, "long", ids)
    panel = long_to_panel(df, source, allow_missing)
    extra = [c for c in df.columns if c not in LONG_COLUMNS]
    if extra:
        why = f"it has columns beside unique_id, ds, y ({', '.join(extra)})"
    else:
        try:
            long_to_wide(df, source)
            why = "its series have different timestamps"
        except DataError as exc:
            why = str(exc).split("; every series needs", 1)[0]
    panel = Panel(panel.series, panel.source, why)
    return LoadedSeries(next(iter(panel.series.values())), "panel", ids, panel)


def is_panel(df: pd.DataFrame, source: str) -> bool:
    """Whether long-format rows are a panel: covariate columns beside ``y``, or series whose
    timestamps differ (the long format of one multivariate series has the same ``ds`` for every id)."""
    if any(c not in LONG_COLUMNS for c in df.columns):
        return True
    ds = df["ds"] if pd.api.types.is_datetime64_any_dtype(df["ds"]) else df["ds"].astype(str)
    stamps = pd.DataFrame({"unique_id": df["unique_id"].astype(str), "ds": ds}).groupby("unique_id")["ds"]
    sets = [frozenset(v) for v in stamps.unique()]
    return any(s != sets[0] for s in sets[1:])


def long_to_panel(df: pd.DataFrame, source: str, allow_missing: bool = False) -> Panel:
    """Each series of long-format rows as its own validated frame (``y`` + covariate columns)."""
    missing = [c for c in LONG_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{source}: the long format needs the columns unique_id, ds, y; {missing[0]!r} is missing"
        )
    keys = df["unique_id"].astype(str)
    series = {}
    for key in pd.unique(keys):
        rows = df[keys == key].drop(columns="unique_id").rename(columns={"ds": DATE_COLUMN})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            order = np.argsort(pd.to_datetime(rows[DATE_COLUMN], errors="coerce").to_numpy(), kind="stable")
        rows = rows.iloc[order]  # long rows may come in any order
        series[str(key)] = frame_from_dataframe(
            rows, f"{source}: series {key!r}", allow_missing=allow_missing
        )
    return Panel(series, source)


def long_to_wide(df: pd.DataFrame, source: str = "DataFrame") -> pd.DataFrame:
    """``unique_id, ds, y`` rows -> ``date`` + one column per ``unique_id`` (in order of appearance)."""
    df = df.rename(columns=lambda c: str(c).strip())
    extra = [c for c in df.columns if c not in LONG_COLUMNS]
    if extra:
        raise DataError(
            f"{source}: the long format takes exactly the columns unique_id, ds, y; found also {extra}. "
            "Drop them (exogenous columns are not supported)"
        )
    if len(df) == 0:
        raise DataError(f"{source}: no rows")
    ids = df["unique_id"].astype(str)
    ds = df["ds"]
    try:
        if not pd.api.types.is_datetime64_any_dtype(ds):
            ds = parse_timestamps(ds, source)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{source}: column 'ds': cannot parse the timestamps ({exc})") from None
    bad = ds.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{source}: column 'ds', row {i + 1}: unparsable or missing timestamp {df['ds'].iloc[i]!r}"
        )
    duplicated = pd.DataFrame({"unique_id": ids, "ds": ds}).duplicated().to_numpy()
    if duplicated.any():
        i = int(np.argmax(duplicated))
        raise DataError(
            f"{source}: row {i + 1}: series {ids.iloc[i]!r} has two rows for ds={ds.iloc[i]}; "
            "keep one per timestamp"
        )
    order = list(pd.unique(ids))
    wide = pd.DataFrame({"unique_id": ids, "ds": ds, "y": df["y"]}).pivot(
        index="ds", columns="unique_id", values="y"
    )
    wide = wide[order]  # (T, C), rows sorted by time
    missing = wide.isna().to_numpy()
    if missing.any():
        row, col = (int(k) for k in np.argwhere(missing)[0])
        raise DataError(
            f"{source}: series {order[col]!r} has no value at ds={wide.index[row]}; every series needs a "
            "value at every timestamp (the long format is pivoted to one column per unique_id)"
        )
    wide.columns.name = None
    return wide.rename_axis(DATE_COLUMN).reset_index()


BAND = re.compile(r"^(lo|hi)-\d+(\.\d+)?$")
"""The suffix of an interval column: ``lo-80``, ``hi-99.5`` (``<series>-lo-80`` in the wide format)."""


def band_suffixes(df: pd.DataFrame, series: str) -> list[str]:
    """The interval suffixes (``lo-80``, ``hi-80``, ...) of ``df``'s ``<series>-<suffix>`` columns."""
    prefix = f"{series}-"
    return [
        str(c)[len(prefix) :]
        for c in df.columns
        if str(c).startswith(prefix) and BAND.match(str(c)[len(prefix) :])
    ]


def wide_to_long(df: pd.DataFrame, ids: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """``date`` + channel columns -> ``unique_id, ds, y`` rows (grouped by series, then time).

    Interval columns ``<series>-lo-80``, ``<series>-hi-80`` become ``lo-80``, ``hi-80`` columns beside
    ``y``. ``ids`` maps the column names back to the input's own ``unique_id`` values (integers stay
    integers, so the forecast merges back onto the user's frame)."""
    channels = [c for c in df.columns if c != DATE_COLUMN and not is_band_column(c, df)]
    suffixes = band_suffixes(df, str(channels[0])) if channels else []
    long = df[[DATE_COLUMN, *channels]].melt(id_vars=DATE_COLUMN, var_name="unique_id", value_name="y")
    for suffix in suffixes:
        band = df[[DATE_COLUMN, *[f"{c}-{suffix}" for c in channels]]]
        long[suffix] = band.melt(id_vars=DATE_COLUMN)["value"].to_numpy()
    if ids:
        long["unique_id"] = pd.Series([ids.get(str(v), v) for v in long["unique_id"]], dtype=object)
        long["unique_id"] = long["unique_id"].infer_objects()
    return long.rename(columns={DATE_COLUMN: "ds"})[[*LONG_COLUMNS, *suffixes]].reset_index(drop=True)


def forecast_to_wide(df: pd.DataFrame) -> pd.DataFrame:
    """A forecast as :meth:`ecalf.forecast.Forecaster.predict` returns it, wide or long (with its
    ``lo-*``/``hi-*`` columns), as a wide ``date`` + ``<series>`` (+ ``<series>-lo-80`` ...) frame."""
    columns = [str(c) for c in df.columns]
    if DATE_COLUMN in columns or not set(LONG_COLUMNS) <= set(columns):
        return df
    suffixes = [c for c in columns if BAND.match(c)]
    wide = long_to_wide(df[list(LONG_COLUMNS)])
    for suffix in suffixes:
        band = long_to_wide(df[["unique_id", "ds", suffix]].rename(columns={suffix: "y"}))
        for series in band.columns[1:]:
            wide[f"{series}-{suffix}"] = band[series].to_numpy()
    return wide


def panel_forecast_to_wide(df: pd.DataFrame) -> pd.DataFrame:
    """A panel's long forecast (each series on its own dates) as a wide frame: ``date`` + one column
    per series (and ``<series>-lo-80`` ...), NaN where a series has no forecast at a date."""
    values = [c for c in df.columns if c == "y" or BAND.match(str(c))]
    wide = df.assign(unique_id=df["unique_id"].astype(str)).pivot(
        index="ds", columns="unique_id", values=values
    )
    wide.columns = [series if value == "y" else f"{series}-{value}" for value, series in wide.columns]
    return wide.rename_axis(DATE_COLUMN).reset_index()


def is_band_column(column: Any, df: pd.DataFrame) -> bool:
    """Whether ``column`` is ``<series>-lo-80``-like for another column ``<series>`` of ``df``."""
    name = str(column)
    return any(
        name.startswith(f"{other}-") and BAND.match(name[len(str(other)) + 1 :])
        for other in df.columns
        if other != column
    )


def regular_frequency(timestamps: pd.DatetimeIndex, source: str = "data") -> str:
    """The pandas frequency alias of evenly spaced timestamps; a DataError when there is none."""
    if len(timestamps) < 3:
        raise DataError(
            f"{source}: at least 3 rows are needed to infer the sampling frequency, got {len(timestamps)}"
        )
    with pd.option_context("future.infer_freq_returns_offset", True):
        offset = pd.infer_freq(timestamps)
    if offset is not None:
        return str(pd.tseries.frequencies.to_offset(offset).freqstr)
    steps = pd.TimedeltaIndex(timestamps[1:] - timestamps[:-1])  # unit-safe (ns, us or s resolution)
    repeated = np.flatnonzero(np.asarray(steps == pd.Timedelta(0)))
    if repeated.size:
        i = int(repeated[0])
        raise DataError(
            f"{source}: rows {i + 1} and {i + 2} have the same timestamp {timestamps[i]}; a forecast needs "
            "one row per timestamp: drop the repeats, e.g. df = df.drop_duplicates('date')"
        )
    usual = steps.value_counts().idxmax()
    i = int(np.argmax(np.asarray(steps != usual)))
    alias = _step_alias(usual)
    raise DataError(
        f"{source}: the timestamps are not evenly spaced, so the dates of the forecast cannot be "
        f"inferred: the usual step is {usual} but rows {i + 1} -> {i + 2} "
        f"({timestamps[i]} -> {timestamps[i + 1]}) are {steps[i]} apart. Fill the gaps first, e.g. "
        f"df['date'] = pd.to_datetime(df['date']); "
        f"df = df.set_index('date').asfreq({alias!r}).interpolate().reset_index()"
    )


def _step_alias(step: pd.Timedelta) -> str:
    """A pandas frequency alias for a fixed step, in the largest whole unit (``D``, ``3h``, ``15min``)."""
    for unit, alias in (("1D", "D"), ("1h", "h"), ("1min", "min"), ("1s", "s")):
        if step % pd.Timedelta(unit) == pd.Timedelta(0):
            count = int(step // pd.Timedelta(unit))
            return alias if count == 1 else f"{count}{alias}"
    return str(pd.tseries.frequencies.to_offset(step).freqstr)


def check_spacing(timestamps: pd.DatetimeIndex, frequency: str, source: str = "data") -> None:
    """Raise unless ``timestamps`` are consecutive steps of ``frequency`` ending at the last one."""
    expected = pd.date_range(end=timestamps[-1], periods=len(timestamps), freq=frequency)
    if expected.equals(pd.DatetimeIndex(timestamps, freq=None)) and expected[-1] == timestamps[-1]:
        return
    if expected[-1] != timestamps[-1]:
        raise DataError(
            f"{source}: the last timestamp {timestamps[-1]} is not on the model's frequency {frequency!r}"
        )
    # the gap is after the last row that is off the grid counted back from the final timestamp
    i = int(np.flatnonzero(np.asarray(expected != pd.DatetimeIndex(timestamps)))[-1])
    n = len(timestamps)
    raise DataError(
        f"{source}: the last {n} rows (the model's context) must be evenly spaced at the frequency the "
        f"model was fitted on ({frequency!r}); rows {n - i} -> {n - i - 1} from the end "
        f"({timestamps[i]} -> {timestamps[i + 1]}) are not one step apart. Fill gaps or resample to "
        f"{frequency!r}"
    )


def future_timestamps(last: pd.Timestamp, frequency: str, periods: int) -> pd.DatetimeIndex:
    """The ``periods`` timestamps after ``last`` at ``frequency``."""
    return pd.date_range(start=last, periods=periods + 1, freq=frequency)[1:]


def frame_to_wide(frame: TimeSeriesFrame) -> pd.DataFrame:
    """A frame as a ``date`` + channel columns DataFrame."""
    wide = pd.DataFrame(frame.values, columns=frame.columns)
    wide.insert(0, DATE_COLUMN, frame.timestamps)
    return wide
