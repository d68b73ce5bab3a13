"""Per-epoch training histories of a benchmark grid in one CSV (``ecalf report RESULTS.csv --histories``).

Each results row names its run directory; the run's ``metrics.json`` holds the per-epoch history
(:class:`ecalf.training.EpochLog`: loss and its parts, validation MSE/MAE, learning rate, speed,
and the values a model adapts, such as Enhanced CALF's alignment score and weights). This module
flattens those histories into one long table, one row per (results row, epoch), so that what a
report or a document says about training curves can be checked from a committed file instead of
from run directories that stay on the machine that ran them.

A run directory that is missing, or whose history no longer matches its results row (a different
number of epochs: the directory was overwritten by another run), is left out and named.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ecalf.artifacts import read_json, write_text
from ecalf.benchmark import read_results
from ecalf.errors import EcalfError

KEYS = ["model", "dataset", "target", "setting", "horizon", "seed"]
"""Columns that name a results row in the histories table (a cell and its seed)."""

SCALARS = ["train_loss", "val_mse", "val_mae", "learning_rate", "windows_per_second", "seconds", "steps"]
"""Per-epoch scalars of an ``EpochLog``, in the order they appear in the table."""


def flatten_epoch(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One ``EpochLog`` dict as flat columns: ``epoch``, the scalars, ``loss/<part>``, ``values/<name>``."""
    row: dict[str, Any] = {"epoch": int(entry["epoch"])}
    row.update({name: entry[name] for name in SCALARS if name in entry})
    row.update({f"loss/{k}": v for k, v in entry.get("loss_parts", {}).items()})
    row.update({f"values/{k}": v for k, v in entry.get("values", {}).items()})
    return row


@dataclass
class Histories:
    table: pd.DataFrame
    """One row per (results row, epoch): :data:`KEYS`, ``run_dir``, then the flattened epoch."""
    left_out: list[str]
    """``run_dir (why)`` of each results row whose history could not be read or did not match."""


def _history_of(row: Mapping[str, str], root: Path) -> tuple[list[dict[str, Any]], str | None]:
    """A results row's history, or the reason it is left out."""
    run_dir = Path(row.get("run_dir", ""))
    path = (run_dir if run_dir.is_absolute() else root / run_dir) / "metrics.json"
    if not row.get("run_dir") or not path.is_file():
        return [], "no metrics.json"
    try:
        metrics = read_json(path)
        epochs = int(row.get("epochs") or 0)
    except (EcalfError, OSError, ValueError) as exc:
        return [], f"unreadable: {exc}"
    history = metrics.get("history", []) if isinstance(metrics, dict) else []
    if len(history) != epochs:
        return [], f"{len(history)} epochs in metrics.json, {epochs} in the results row"
    return list(history), None


def collect_histories(rows: Sequence[Mapping[str, str]], root: str | os.PathLike[str] = ".") -> Histories:
    """The histories of ``rows`` (as :func:`ecalf.benchmark.read_results` returns them); relative run
    directories are read from ``root``. Rows of untrained models (no epochs) add nothing."""
    records: list[dict[str, Any]] = []
    left_out: list[str] = []
    for row in rows:
        history, why = _history_of(row, Path(root))
        if why is not None:
            left_out.append(f"{row.get('run_dir', '')} ({why})")
            continue
        key = {k: row.get(k, "") for k in KEYS}
        records.extend({**key, "run_dir": row["run_dir"], **flatten_epoch(e)} for e in history)
    table = pd.DataFrame.from_records(records)
    if not table.empty:  # fixed columns first, then the loss parts and adapted values by name
        fixed = [*KEYS, "run_dir", "epoch", *[c for c in SCALARS if c in table.columns]]
        table = table[fixed + sorted(c for c in table.columns if c not in fixed)]
    return Histories(table, left_out)


def write_histories(
    results: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] = ".",
) -> tuple[Path, list[str]]:
    """Write ``<stem>_histories.csv`` beside the results CSV (or at ``output``); return it and the
    rows left out."""
    source = Path(results)
    rows = read_results(source)
    if not rows:
        raise EcalfError(f"{source} holds no results (or does not exist); run `ecalf benchmark GRID` first")
    found = collect_histories(rows, root)
    if found.table.empty:
        raise EcalfError(
            f"no training history found for the {len(rows)} rows of {source}: their run directories "
            f"(e.g. {rows[0].get('run_dir', '')}) are read relative to {Path(root).resolve()}; run the "
            "report from the directory the benchmark ran in, or the models trained no epoch"
        )
    path = Path(output) if output is not None else source.with_name(f"{source.stem}_histories.csv")
    text = found.table.to_csv(index=False, float_format="%.6g")
    return write_text(path, text), found.left_out
