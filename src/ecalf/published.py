"""Published reference numbers for ``ecalf report --published``: ``published.csv`` beside this module
(:data:`BUILTIN`), or a CSV of the same form (``--published FILE``).

A published row is a number someone else reported, never one this package ran: the report prints it
in italics beside the measured rows and never marks it best. One row per (model, setting, dataset,
target, horizon), where ``horizon`` is a horizon or ``mean`` (the paper's own mean over the protocol's
horizons 96, 192, 336 and 720, kept as printed rather than recomputed from rounded per-horizon
values; the report shows it only beside means over those same horizons), and ``source`` says where
it comes from.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import pandas as pd

from ecalf.errors import EcalfError

COLUMNS = ("model", "setting", "dataset", "target", "horizon", "mse", "mae", "source")
REQUIRED = tuple(c for c in COLUMNS if c != "target")
MEAN = "mean"
BUILTIN = Path(__file__).with_name("published.csv")
"""The CALF paper's tables and the long-term means of the usual baselines, each row with its source."""
MEAN_HORIZONS = (96, 192, 336, 720)
"""The horizons a published ``mean`` row averages (the protocol's)."""


def load_published(path: str | os.PathLike[str] = BUILTIN) -> pd.DataFrame:
    """The rows of a published-numbers CSV, checked: ``horizon`` is ``-1`` for a ``mean`` row."""
    source = Path(path)
    if not source.is_file():
        raise EcalfError(f"published numbers {source} do not exist (see {BUILTIN} for the format)")
    with open(source, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise EcalfError(
                f"{source} has no column {missing[0]!r}; a published-numbers CSV needs the columns "
                f"{', '.join(COLUMNS)} (target may be left out)"
            )
        rows = [_checked_row(source, line, row) for line, row in enumerate(reader, start=2)]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    duplicated = frame.duplicated(["model", "setting", "dataset", "target", "horizon"], keep=False)
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        raise EcalfError(
            f"{source}: {first.model!r} has two rows for {first.setting} {first.dataset} horizon "
            f"{_horizon_text(int(first.horizon))}; keep one"
        )
    return frame


def _checked_row(source: Path, line: int, row: dict[str, str | None]) -> dict[str, object]:
    def text(column: str) -> str:
        return (row.get(column) or "").strip()

    where = f"{source} line {line}"
    for column in ("model", "setting", "dataset", "source"):
        if not text(column):
            raise EcalfError(f"{where}: {column} is empty")
    horizon_text = text("horizon")
    horizon = -1 if horizon_text == MEAN else int(horizon_text) if horizon_text.isdigit() else 0
    if horizon == 0:
        raise EcalfError(f"{where}: horizon {horizon_text!r} is neither a positive integer nor {MEAN!r}")
    values: dict[str, float] = {}
    for column in ("mse", "mae"):
        try:
            values[column] = float(text(column))
        except ValueError:
            values[column] = math.nan
        if not (math.isfinite(values[column]) and values[column] >= 0):
            raise EcalfError(f"{where}: {column} {text(column)!r} is not a non-negative number")
    return {
        "model": text("model"), "setting": text("setting"), "dataset": text("dataset"),
        "target": text("target"), "horizon": horizon, **values, "source": text("source"),
    }  # fmt: skip


def _horizon_text(horizon: int) -> str:
    return MEAN if horizon < 0 else str(horizon)
