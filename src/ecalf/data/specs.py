"""The dataset registry (data, not code), the data directory, and the split rules as row borders.

Split rules follow Time-Series-Library (TSLib), which CALF inherits:

- ``ett_hour``: train [0, 8640), val [8640 - L, 11520), test [11520 - L, 14400); later rows unused.
- ``ett_minute``: the same borders times 4.
- ``ratio`` (Weather, Electricity, Traffic, any user CSV): ``n_train = int(0.7 n)``,
  ``n_test = int(0.2 n)``, the rest validation; val starts at ``n_train - L``, test at ``n - n_test - L``.

Validation and test ranges include the L look-back rows before their first forecast, so every split
has ``rows - L - H + 1`` windows.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

from ecalf.errors import ConfigError, DataError

SplitRule = Literal["ett_hour", "ett_minute", "ratio"]
SPLIT_NAMES = ("train", "val", "test")
DATA_DIR_ENV = "ECALF_DATA_DIR"
DEFAULT_DATA_DIR = "datasets"

_ETT_URL = "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/{}"
_TSLIB_HINT = (
    "it has no stable direct download; get it from the long-term forecasting dataset bundle linked in "
    "the README of github.com/thuml/Time-Series-Library (also distributed with github.com/thuml/Autoformer) "
    "and copy {} into the data directory"
)


@dataclass(frozen=True)
class DatasetSpec:
    """One registered benchmark dataset: where its file is and how it is split."""

    name: str
    file_name: str
    frequency: str
    """pandas offset alias of the sampling interval (``h``, ``15min``, ``10min``)."""
    split: SplitRule
    target: str = "OT"
    num_channels: int | None = None
    """Variables in the public file (``None``: any, for user CSVs)."""
    url: str | None = None
    """Public direct download URL (``ecalf data download``); ``None`` when there is none."""
    num_rows: int | None = None
    """Data rows in the public file (documentation; tests build synthetic files of this size)."""
    sha256: str | None = None
    """Checksum of the public file; a download that does not match it is rejected."""
    source_hint: str = ""
    """Where to get the file by hand."""


def _ett(name: str, split: SplitRule, frequency: str, rows: int, sha256: str) -> DatasetSpec:
    file_name = f"{name}.csv"
    return DatasetSpec(
        name=name,
        file_name=file_name,
        frequency=frequency,
        split=split,
        num_channels=7,
        url=_ETT_URL.format(file_name),
        num_rows=rows,
        sha256=sha256,
        source_hint=f"github.com/zhouhaoyi/ETDataset, file ETT-small/{file_name} (CC BY-ND 4.0)",
    )


def _custom(name: str, file_name: str, frequency: str, channels: int, rows: int) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        file_name=file_name,
        frequency=frequency,
        split="ratio",
        num_channels=channels,
        num_rows=rows,
        source_hint=_TSLIB_HINT.format(file_name),
    )


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        _ett(
            "ETTh1",
            "ett_hour",
            "h",
            17420,
            "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
        ),
        _ett(
            "ETTh2",
            "ett_hour",
            "h",
            17420,
            "a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b",
        ),
        _ett(
            "ETTm1",
            "ett_minute",
            "15min",
            69680,
            "6ce1759b1a18e3328421d5d75fadcb316c449fcd7cec32820c8dafda71986c9e",
        ),
        _ett(
            "ETTm2",
            "ett_minute",
            "15min",
            69680,
            "db973ca252c6410a30d0469b13d696cf919648d0f3fd588c60f03fdbdbadd1fd",
        ),
        _custom("Weather", "weather.csv", "10min", 21, 52696),
        _custom("Electricity", "electricity.csv", "h", 321, 26304),
        _custom("Traffic", "traffic.csv", "h", 862, 17544),
    )
}

_ALIASES = {"ecl": "Electricity"}


def find_spec(name: str) -> DatasetSpec | None:
    """The registered spec called ``name`` (case-insensitive, ``ECL`` = Electricity), else ``None``."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key).lower()
    for spec_name, spec in DATASETS.items():
        if spec_name.lower() == key:
            return spec
    return None


def get_spec(name: str) -> DatasetSpec:
    """The registered spec called ``name`` (case-insensitive); unknown names raise DataError."""
    spec = find_spec(name)
    if spec is None:
        raise DataError(
            f"unknown dataset {name!r}; registered datasets: {', '.join(DATASETS)} "
            "(or give the path of a CSV file with a `date` column)"
        )
    return spec


# --------------------------------------------------------------------------------------------------
# Data directory
# --------------------------------------------------------------------------------------------------


def data_dir_origin(data_dir: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """The data directory and where it came from (for error messages)."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser(), "--data-dir"
    env = os.environ.get(DATA_DIR_ENV, "")
    if env:
        return Path(env).expanduser(), f"${DATA_DIR_ENV}"
    return Path(
        DEFAULT_DATA_DIR
    ), f"the default ./{DEFAULT_DATA_DIR}, as neither --data-dir nor ${DATA_DIR_ENV} is set"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """``data_dir`` if given, else ``$ECALF_DATA_DIR`` if set and non-empty, else ``./datasets``."""
    return data_dir_origin(data_dir)[0]


# --------------------------------------------------------------------------------------------------
# Split borders
# --------------------------------------------------------------------------------------------------

_ETT_HOUR_BORDERS = (12 * 30 * 24, (12 + 4) * 30 * 24, (12 + 8) * 30 * 24)  # 8640, 11520, 14400


def _rule_of(spec_or_split_rule: DatasetSpec | str) -> tuple[str, str]:
    if isinstance(spec_or_split_rule, DatasetSpec):
        return spec_or_split_rule.split, spec_or_split_rule.name
    if spec_or_split_rule not in ("ett_hour", "ett_minute", "ratio"):
        raise DataError(f"unknown split rule {spec_or_split_rule!r}; use ett_hour, ett_minute or ratio")
    return spec_or_split_rule, f"the {spec_or_split_rule} split"


def split_borders(
    spec_or_split_rule: DatasetSpec | SplitRule | str, num_rows: int, context_length: int
) -> dict[str, tuple[int, int]]:
    """Row ranges ``[start, end)`` of train, val and test, the TSLib borders.

    Val and test start ``context_length`` rows early (the look-back of their first window).
    Raises DataError when the file is too short for the rule or the look-back reaches before row 0.
    """
    rule, what = _rule_of(spec_or_split_rule)
    n, lookback = num_rows, context_length
    if rule == "ratio":
        num_train = int(n * 0.7)
        num_test = int(n * 0.2)
        num_val = n - num_train - num_test
        ends = (num_train, num_train + num_val, n)
    else:
        scale = 1 if rule == "ett_hour" else 4
        ends = tuple(b * scale for b in _ETT_HOUR_BORDERS)  # type: ignore[assignment]
        if n < ends[2]:
            raise DataError(
                f"{what} needs at least {ends[2]} rows ({rule} borders train [0, {ends[0]}), "
                f"val to {ends[1]}, test to {ends[2]}), but the file has {n}. Use the complete file, "
                "or pass the CSV's path as a custom dataset (70/10/20 split)"
            )
    starts = (0, ends[0] - lookback, ends[1] - lookback)
    borders = dict(zip(SPLIT_NAMES, zip(starts, ends, strict=True), strict=True))
    for split, (start, end) in borders.items():
        if start < 0:
            raise DataError(
                f"{what}: the {split} split would start at row {start} with context length {lookback} "
                f"({num_rows} rows); use a shorter context length or a longer file"
            )
        if end <= start:
            raise DataError(f"{what}: the {split} split is empty ({num_rows} rows); use a longer file")
    return borders


def few_shot_end(train_end: int, context_length: int, percent: float) -> int:
    """End row of the few-shot training split, TSLib's ``(border2 - L) * p // 100 + L``.

    ``percent`` in (0, 100]; a fractional percent is taken exactly as written in decimal
    (``Fraction(str(p))``) and the product is rounded down, so integer percents match TSLib exactly.
    """
    if not 0 < percent <= 100:
        raise ConfigError(f"the few-shot percent must be in (0, 100], got {percent}")
    if percent == 100:
        return train_end
    exact = Fraction(str(percent)) if isinstance(percent, float) else Fraction(percent)
    return math.floor((train_end - context_length) * exact / 100) + context_length


def minimum_rows(
    spec_or_split_rule: DatasetSpec | SplitRule | str, context_length: int, prediction_length: int
) -> int:
    """Fewest rows a file needs so that every split of the rule has at least one window."""
    rule, _ = _rule_of(spec_or_split_rule)
    if rule != "ratio":
        scale = 1 if rule == "ett_hour" else 4
        return _ETT_HOUR_BORDERS[2] * scale
    need = context_length + prediction_length
    n = need
    while True:
        num_train, num_test = int(n * 0.7), int(n * 0.2)
        num_val = n - num_train - num_test
        if num_train >= need and num_val >= prediction_length and num_test >= prediction_length:
            return n
        n += 1


def split_rows(
    spec: DatasetSpec,
    num_rows: int,
    context_length: int,
    prediction_length: int,
    few_shot_percent: float = 100.0,
    *,
    source: str = "",
) -> dict[str, tuple[int, int]]:
    """Validated row ranges of the three splits, few-shot applied to the training split.

    Every split must hold at least one window (``rows >= L + H``); otherwise DataError with the numbers.
    """
    lookback, horizon = context_length, prediction_length
    if lookback <= 0 or horizon <= 0:
        raise ConfigError(f"context and prediction lengths must be positive, got {lookback} and {horizon}")
    need = lookback + horizon
    where = f"{spec.name} ({source})" if source else spec.name
    borders = split_borders(spec, num_rows, lookback)
    for split, (start, end) in borders.items():
        if end - start < need:
            raise DataError(
                f"{where}: the {split} split has {end - start} rows (rows [{start}, {end}) of {num_rows}, "
                f"{spec.split} rule) but one window needs context {lookback} + prediction {horizon} = {need} "
                f"rows; the {spec.split} rule needs at least {minimum_rows(spec, lookback, horizon)} rows "
                "for these lengths. Use a longer file or shorter context/prediction lengths"
            )
    train_start, train_end = borders["train"]
    kept_end = few_shot_end(train_end, lookback, few_shot_percent)
    if kept_end - train_start < need:
        windows = max(kept_end - train_start - need + 1, 0)
        lowest = math.ceil(10000 * horizon / (train_end - lookback)) / 100
        raise DataError(
            f"{where}: few-shot {few_shot_percent:g}% keeps training rows [{train_start}, {kept_end}) "
            f"of [{train_start}, {train_end}), which gives {windows} windows with context {lookback} + "
            f"prediction {horizon}; use a few-shot percent >= {lowest:g} (data.few_shot_percent, --few-shot) "
            "or a shorter prediction length"
        )
    borders["train"] = (train_start, kept_end)
    return borders


def window_count(rows: int, context_length: int, prediction_length: int) -> int:
    """Windows in ``rows`` consecutive rows: ``rows - L - H + 1`` (never negative)."""
    return max(rows - context_length - prediction_length + 1, 0)
