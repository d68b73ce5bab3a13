"""CSV loading and validation: wide files with a ``date`` column and numeric variables -> float32.

Every problem is a :class:`~ecalf.errors.DataError` naming the file, the column and the row. Rows are
counted from 1 over the data rows (the header is line 1 of the file, so data row ``r`` is line ``r + 1``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ecalf.data.specs import DATA_DIR_ENV, DATASETS, DEFAULT_DATA_DIR, DatasetSpec, data_dir_origin, find_spec
from ecalf.errors import DataError

DATE_COLUMN = "date"


@dataclass
class TimeSeriesFrame:
    """A validated multivariate series: one row per timestamp, one column per variable."""

    values: np.ndarray
    """(T, C) float32, finite."""
    timestamps: pd.DatetimeIndex
    """(T,) strictly increasing."""
    columns: list[str]
    """C variable names (the ``date`` column excluded)."""
    source: str
    """File path or name, for error messages."""

    @property
    def num_rows(self) -> int:
        return int(self.values.shape[0])

    @property
    def num_channels(self) -> int:
        return int(self.values.shape[1])

    def select(self, columns: list[str]) -> TimeSeriesFrame:
        """The same series with its columns in the given order."""
        index = [self.columns.index(c) for c in columns]
        return TimeSeriesFrame(self.values[:, index], self.timestamps, list(columns), self.source)

    def renamed(self, columns: list[str]) -> TimeSeriesFrame:
        """The same series under other column names."""
        return TimeSeriesFrame(self.values, self.timestamps, list(columns), self.source)

    def rows(self, start: int, stop: int) -> TimeSeriesFrame:
        """Rows ``start`` to ``stop`` (a backtest's history up to a cutoff, or the horizon after it)."""
        return TimeSeriesFrame(
            self.values[start:stop], self.timestamps[start:stop], list(self.columns), self.source
        )


# --------------------------------------------------------------------------------------------------
# Reading and validating
# --------------------------------------------------------------------------------------------------


def read_csv(path: str | os.PathLike[str], *, allow_missing: bool = False) -> TimeSeriesFrame:
    """Read and validate a wide CSV (``date`` + numeric columns) as UTF-8 (bad bytes replaced);
    ``allow_missing``: keep empty or NaN values as NaN (to be filled, :mod:`ecalf.data.gaps`)."""
    source = Path(path)
    if not source.exists():
        raise DataError(f"{source}: file not found")
    if not source.is_file():
        raise DataError(f"{source}: not a file")
    try:
        df = pd.read_csv(source, encoding="utf-8", encoding_errors="replace", low_memory=False)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{source}: the file is empty; expected a header line `date,...` and data rows"
        ) from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{source}: not a valid CSV file: {exc}") from None
    except OSError as exc:
        raise DataError(f"{source}: cannot read the file: {exc.strerror or exc}") from None
    return _validate(df, str(source), file_lines=True, allow_missing=allow_missing)


def frame_from_dataframe(
    df: pd.DataFrame, source: str = "DataFrame", *, allow_missing: bool = False
) -> TimeSeriesFrame:
    """Validate a wide DataFrame (a ``date`` column + numeric columns) like :func:`read_csv`."""
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"{source}: expected a pandas DataFrame, got {type(df).__name__}")
    return _validate(df.reset_index(drop=True), source, file_lines=False, allow_missing=allow_missing)


def _row(i: int, file_lines: bool) -> str:
    """Human row number of 0-based data row ``i``."""
    return f"row {i + 1} (line {i + 2})" if file_lines else f"row {i + 1}"


def _validate(
    df: pd.DataFrame, source: str, *, file_lines: bool, allow_missing: bool = False
) -> TimeSeriesFrame:
    df = df.rename(columns=lambda c: str(c).strip())
    if df.shape[1] == 0 and df.shape[0] == 0:
        raise DataError(f"{source}: the file is empty; expected a header line `date,...` and data rows")
    if DATE_COLUMN not in df.columns:
        found = ", ".join(repr(c) for c in list(df.columns)[:10])
        hint = ""
        close = [c for c in df.columns if c.lower() in ("date", "datetime", "time", "timestamp")]
        if close:
            hint = f"; rename column {close[0]!r} to 'date'"
        elif len(df.columns) == 1 and (sep := next((s for s in ";\t|" if s in df.columns[0]), None)):
            hint = (
                f"; the file seems to be separated by {sep!r}, not commas: convert it with "
                f"pd.read_csv(path, sep={sep!r}).to_csv(new_path, index=False) (add decimal=',' if "
                "its numbers use decimal commas)"
            )
        raise DataError(f"{source}: no `date` column (columns found: {found}){hint}")
    repeated = sorted(set(df.columns[df.columns.duplicated()]))
    if repeated:
        raise DataError(
            f"{source}: column name(s) {repeated} appear more than once (names are compared without "
            "leading and trailing spaces); give every column its own name"
        )
    unnamed = [c for c in df.columns if c.startswith("Unnamed: ")]
    if unnamed:
        raise DataError(
            f"{source}: column {unnamed[0]!r} has no name in the header; it is usually a row index that "
            "df.to_csv(path) wrote: save with df.to_csv(path, index=False), or drop the column"
        )
    if len(df) == 0:
        raise DataError(f"{source}: the file has a header but no data rows")
    columns = [c for c in df.columns if c != DATE_COLUMN]
    if not columns:
        raise DataError(f"{source}: only a `date` column; at least one numeric column is needed")
    timestamps = _parse_dates(df[DATE_COLUMN], source, file_lines)
    values = _numeric_values(df, columns, source, file_lines, allow_missing)
    _check_order(timestamps, values, source, file_lines)
    return TimeSeriesFrame(values=values, timestamps=timestamps, columns=columns, source=source)


def _parse_dates(column: pd.Series, source: str, file_lines: bool) -> pd.DatetimeIndex:
    missing = column.isna().to_numpy()
    if missing.any():
        i = int(np.argmax(missing))
        raise DataError(f"{source}: column 'date', {_row(i, file_lines)}: missing date")
    if pd.api.types.is_datetime64_any_dtype(column):
        return pd.DatetimeIndex(column)
    text = column if pd.api.types.is_string_dtype(column) else column.astype(str)
    try:
        parsed = parse_timestamps(text, source)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{source}: column 'date': cannot parse the dates ({exc})") from None
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        example = f"; the first row reads {text.iloc[0]!r}" if i > 0 else ""
        raise DataError(
            f"{source}: column 'date', {_row(i, file_lines)}: unparsable date {text.iloc[i]!r}{example}. "
            "Use one format for every row, e.g. 2016-07-01 00:00:00"
        )
    return pd.DatetimeIndex(parsed)


def parse_timestamps(values: pd.Series, source: str) -> pd.Series:
    """``pd.to_datetime`` of date strings (unparsable ones NaT). Timestamps whose UTC offsets differ
    (a local clock across daylight saving: +01:00 in winter, +02:00 in summer) are converted to UTC,
    where the steps are even again, with a warning that says so."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "could not infer format" on a bad first row
        try:
            return pd.to_datetime(values, errors="coerce")
        except ValueError as mixed:  # with errors="coerce", pandas raises for mixed UTC offsets ...
            try:
                parsed = pd.to_datetime(values, errors="coerce", utc=True)  # ... which UTC resolves
            except ValueError:
                raise mixed from None  # something else: the first parse's error says what
    warnings.warn(
        f"{source}: the timestamps carry different UTC offsets (daylight saving?); converted to UTC, "
        "so the forecast's timestamps are in UTC too",
        UserWarning,
        stacklevel=3,
    )
    return parsed


def _check_order(timestamps: pd.DatetimeIndex, values: np.ndarray, source: str, file_lines: bool) -> None:
    """Strictly increasing timestamps; an exact repeat of the previous row is kept with a warning.

    The public weather.csv repeats one row (2020-05-12 06:00:00); TSLib keeps it, and dropping it
    would shift every split border, so identical repeated rows are tolerated. A repeated timestamp
    with different values is an error.
    """
    ns = timestamps.asi8
    step = np.diff(ns)
    backwards = step < 0
    if backwards.any():
        i = int(np.argmax(backwards)) + 1
        raise DataError(
            f"{source}: column 'date', {_row(i, file_lines)}: timestamps are not sorted "
            f"({timestamps[i]} comes after {timestamps[i - 1]}); sort the rows by date"
        )
    repeats = np.flatnonzero(step == 0) + 1  # rows whose timestamp equals the previous row's
    if repeats.size == 0:
        return
    same = (values[repeats] == values[repeats - 1]).all(axis=1)
    if not same.all():
        i = int(repeats[np.argmin(same)])
        raise DataError(
            f"{source}: column 'date', {_row(i, file_lines)}: duplicated timestamp {timestamps[i]} "
            f"(already at {_row(i - 1, file_lines)}) with different values; keep one row per timestamp"
        )
    rows = ", ".join(_row(int(i), file_lines) for i in repeats[:3])
    warnings.warn(
        f"{source}: {repeats.size} row(s) repeat the previous row exactly ({rows}); kept (a benchmark "
        "file must keep them so that its split borders stay where they are published); if they are "
        "mistakes, drop them with df.drop_duplicates('date')",
        UserWarning,
        stacklevel=4,
    )


def _numeric_values(
    df: pd.DataFrame, columns: list[str], source: str, file_lines: bool, allow_missing: bool = False
) -> np.ndarray:
    converted: dict[str, pd.Series] = {}
    for name in columns:
        column = df[name]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            continue
        numeric = pd.to_numeric(column, errors="coerce")
        bad = (numeric.isna() & column.notna()).to_numpy()
        if pd.api.types.is_bool_dtype(column):
            bad[:] = True
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"{source}: column {name!r}, {_row(i, file_lines)}: non-numeric value "
                f"{column.iloc[i]!r}; every column except `date` must hold numbers"
            )
        converted[name] = numeric
    if converted:
        df = df.assign(**converted)
    values64 = df[columns].to_numpy(dtype=np.float64)  # (T, C)
    finite = np.isfinite(values64) | (np.isnan(values64) if allow_missing else False)
    if not finite.all():
        i, j = (int(k) for k in np.argwhere(~finite)[0])
        value = values64[i, j]
        missing = bool(np.isnan(value))
        what = "missing value (empty or NaN)" if missing else f"infinite value {value}"
        how = (
            "fill or drop such rows before loading, or let the forecaster fill gaps: fill='ffill' or "
            "'interpolate' (ecalf fit --fill ffill)"
            if missing
            else "fix or drop such rows before loading"
        )
        raise DataError(f"{source}: column {columns[j]!r}, {_row(i, file_lines)}: {what}; {how}")
    with np.errstate(over="ignore"):
        values = values64.astype(np.float32, order="C")  # row-major: a window is one block
    overflow = ~np.isfinite(values) & ~np.isnan(values64)
    if overflow.any():
        i, j = (int(k) for k in np.argwhere(overflow)[0])
        raise DataError(
            f"{source}: column {columns[j]!r}, {_row(i, file_lines)}: value {values64[i, j]} exceeds "
            "the float32 range; rescale the column"
        )
    return values


# --------------------------------------------------------------------------------------------------
# Registered and custom datasets
# --------------------------------------------------------------------------------------------------


def infer_frequency(timestamps: pd.DatetimeIndex) -> str:
    """pandas offset alias of the sampling interval: the common step, or the median step if irregular."""
    if len(timestamps) < 2:
        return "unknown"
    steps = timestamps[1:] - timestamps[:-1]
    step = steps[0] if (steps == steps[0]).all() else steps.median()
    day = pd.Timedelta(days=1)
    if step >= day and step % day == pd.Timedelta(0):
        return f"{step // day}D" if step != day else "D"
    return pd.tseries.frequencies.to_offset(step).freqstr


def _shorten(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _looks_like_path(dataset: str) -> bool:
    return dataset.lower().endswith(".csv") or "/" in dataset or os.sep in dataset or Path(dataset).is_file()


BUNDLED_DIR = Path(__file__).parent / "bundled"
"""Benchmark files shipped inside the package, unmodified (``bundled/README.md``: licence, checksum)."""
BUNDLED = {"ETTh1": "ETTh1.csv"}
"""Registered datasets with a shipped copy, used only when no data directory is given."""


def _no_data_dir_given(data_dir: str | os.PathLike[str] | None) -> bool:
    return (data_dir is None or str(data_dir) == "") and not os.environ.get(DATA_DIR_ENV, "")


def _missing_file_error(spec: DatasetSpec, path: Path, origin: str) -> DataError:
    if spec.url:
        how = f"download it with `ecalf data download {spec.name}` (from {spec.url})"
    else:
        how = spec.source_hint
    return DataError(
        f"{spec.name}: {spec.file_name} not found in {path.parent.resolve()} (data directory from {origin}). "
        f"To get it: {how}. If you have it elsewhere, pass --data-dir DIR or set $ECALF_DATA_DIR=DIR"
    )


def load_dataset(
    dataset: str, data_dir: str | os.PathLike[str] | None = None
) -> tuple[TimeSeriesFrame, DatasetSpec]:
    """Load a registered dataset by name, or a user CSV by path (70/10/20 ``ratio`` split).

    Registered files are looked up in the data directory (``data_dir`` > ``$ECALF_DATA_DIR`` >
    ``./datasets``). For ``ratio`` datasets the columns are reordered as TSLib does, the target
    (``OT``) last; a user CSV without an ``OT`` column keeps its order and its last column is the target.
    """
    spec = find_spec(dataset)
    directory, origin = data_dir_origin(data_dir)
    if spec is not None:
        path = directory / spec.file_name
        if not path.is_file() and _no_data_dir_given(data_dir) and spec.name in BUNDLED:
            path = BUNDLED_DIR / BUNDLED[spec.name]
            warnings.warn(
                f"{spec.name}: no data directory given and no ./{DEFAULT_DATA_DIR}/{spec.file_name}; using "
                f"the copy shipped with ecalf ({path.name}, CC BY-ND 4.0, Zhou et al., Informer, AAAI 2021)",
                UserWarning,
                stacklevel=2,
            )
        if not path.is_file():
            raise _missing_file_error(spec, path, origin)
        frame = read_csv(path)
        if spec.num_channels is not None and frame.num_channels != spec.num_channels:
            raise DataError(
                f"{path}: {spec.name} has {spec.num_channels} variables but the file has "
                f"{frame.num_channels} ({_shorten(frame.columns)}); is it the right file? "
                "To use a different file, pass its path as a custom dataset"
            )
    else:
        if not _looks_like_path(dataset):
            raise DataError(
                f"unknown dataset {dataset!r}; registered datasets: {', '.join(DATASETS)}, "
                "or give the path of a CSV file with a `date` column"
            )
        path = Path(dataset).expanduser()
        if not path.is_file() and not path.is_absolute() and (directory / path).is_file():
            path = directory / path
        if not path.is_file():
            raise DataError(f"{dataset}: file not found (looked in the current directory and in {directory})")
        frame = read_csv(path)
        target = "OT" if "OT" in frame.columns else frame.columns[-1]
        spec = DatasetSpec(
            name=path.stem,
            file_name=path.name,
            frequency=infer_frequency(frame.timestamps),
            split="ratio",
            target=target,
            num_channels=frame.num_channels,
            num_rows=frame.num_rows,
        )
    if spec.split == "ratio":
        if spec.target not in frame.columns:
            raise DataError(f"{path}: no target column {spec.target!r} (columns: {', '.join(frame.columns)})")
        if frame.columns[-1] != spec.target:
            frame = frame.select([c for c in frame.columns if c != spec.target] + [spec.target])
    return frame, spec
