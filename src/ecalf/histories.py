"""Per-epoch training histories of a benchmark grid in one CSV (``ecalf report RESULTS.csv --histories``).

Each results row names its run directory; the run's ``metrics.json`` holds the per-epoch history
(:class:`ecalf.training.EpochLog`: loss and its parts, validation MSE/MAE, learning rate, speed,
and the values a model adapts, such as Enhanced CALF's alignment score and weights). This module
flattens those histories into one long table, one row per (results row, epoch), so that what a
report or a document says about training curves can be checked from a committed file instead of
from run directories that stay on the machine that ran them.

A run directory that is missing, or whose history no longer matches its results row (a different
number of epochs: the directory was overwritten by another run), is left out and named. Written
again, the table keeps the earlier file's epochs of runs whose directories are gone (a results file
carried to another machine, where only the new runs have directories), as the results CSV keeps
their rows.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ecalf.artifacts import write_text
from ecalf.benchmark import read_results
from ecalf.errors import EcalfError

GONE = "run directory not found here"
"""Why a row is left out whose run directory is not on this machine (trained elsewhere, or deleted)."""
NO_METRICS = "no finished run's metrics in its run directory (the run has not finished)"
"""Why a row is left out whose run directory holds no finished run's metrics."""

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
    left_out: list[tuple[str, str]]
    """``(run_dir, why)`` of each results row whose history could not be read or did not match."""

    @property
    def missing(self) -> set[str]:
        """The run directories among ``left_out`` that hold no metrics.json (gone, or never here)."""
        return {run_dir for run_dir, why in self.left_out if why in (GONE, NO_METRICS)}


def _history_of(row: Mapping[str, str], root: Path) -> tuple[list[dict[str, Any]], str | None]:
    """A results row's history, or the reason it is left out."""
    run_dir = Path(row.get("run_dir", ""))
    directory = run_dir if run_dir.is_absolute() else root / run_dir
    if not row.get("run_dir") or not directory.is_dir():
        return [], GONE
    from ecalf.run_dir import RunDirectory  # torch, only when there are runs to read

    run = RunDirectory(directory)
    if not run.is_finished():
        return [], NO_METRICS
    try:
        history = [dataclasses.asdict(record) for record in run.read_history()]
        epochs = int(row.get("epochs") or 0)
    except (EcalfError, OSError, ValueError) as exc:
        return [], f"unreadable: {exc}"
    if len(history) != epochs:
        return [], f"{len(history)} epochs in {run.metrics_file.name}, {epochs} in the results row"
    return history, None


def _untrained(row: Mapping[str, str]) -> bool:
    """Whether a results row is of a model with no training (the naive forecast, the window mean)."""
    try:
        return int(row.get("epochs") or 0) == 0
    except ValueError:
        return False  # a damaged row: _history_of names it


def collect_histories(rows: Sequence[Mapping[str, str]], root: str | os.PathLike[str] = ".") -> Histories:
    """The histories of ``rows`` (as :func:`ecalf.benchmark.read_results` returns them); relative run
    directories are read from ``root``. Rows of untrained models (no epochs) add nothing."""
    records: list[dict[str, Any]] = []
    left_out: list[tuple[str, str]] = []
    for row in rows:
        if _untrained(row):
            continue  # nothing to read, wherever its run directory is
        history, why = _history_of(row, Path(root))
        if why is not None:
            left_out.append((row.get("run_dir", ""), why))
            continue
        key = {k: row.get(k, "") for k in KEYS}
        records.extend({**key, "run_dir": row["run_dir"], **flatten_epoch(e)} for e in history)
    table = pd.DataFrame.from_records(records)
    if not table.empty:
        table = _order(table)
    return Histories(table, left_out)


def _order(table: pd.DataFrame) -> pd.DataFrame:
    """Fixed columns first, then the loss parts and adapted values by name."""
    fixed = [*KEYS, "run_dir", "epoch", *[c for c in SCALARS if c in table.columns]]
    return table[fixed + sorted(c for c in table.columns if c not in fixed)]


def _kept_from(path: Path, found: Histories, rows: Sequence[Mapping[str, str]]) -> Histories:
    """``found`` with the epochs that the earlier table at ``path`` holds for runs whose directories
    are gone, in the results file's order; those runs are no longer left out."""
    if not found.missing or not path.is_file():
        return found
    try:
        earlier = pd.read_csv(path, keep_default_na=True)
    except (OSError, ValueError, pd.errors.ParserError):
        return found  # not a table we wrote: nothing to keep
    if "run_dir" not in earlier.columns:
        return found
    kept = earlier[earlier["run_dir"].isin(found.missing)]
    if kept.empty:
        return found
    recovered = set(kept["run_dir"])
    rank = {run_dir: i for i, run_dir in enumerate(row.get("run_dir", "") for row in rows)}
    table = pd.concat([found.table, kept], ignore_index=True)
    table = table.assign(_rank=table["run_dir"].map(rank)).sort_values("_rank", kind="stable")
    table = _order(table.drop(columns="_rank").reset_index(drop=True))
    return Histories(table, [item for item in found.left_out if item[0] not in recovered])


def write_histories(
    results: str | os.PathLike[str],
    output_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] = ".",
) -> tuple[Path, list[tuple[str, str]]]:
    """Write ``<stem>_histories.csv`` beside the results CSV (or in ``output_dir``, as
    :func:`ecalf.report.write_report`); return it and the ``(run_dir, why)`` of the rows left out."""
    source = Path(results)
    rows = read_results(source)
    if not rows:
        raise EcalfError(f"{source} holds no results (or does not exist); run `ecalf benchmark GRID` first")
    path = (Path(output_dir) if output_dir is not None else source.parent) / f"{source.stem}_histories.csv"
    found = _kept_from(path, collect_histories(rows, root), rows)
    if found.table.empty:
        raise EcalfError(
            f"no training history found for the {len(rows)} rows of {source}: their run directories "
            f"(e.g. {rows[0].get('run_dir', '')}) are read relative to {Path(root).resolve()}; run the "
            "report from the directory the benchmark ran in, or the models trained no epoch"
        )
    text = found.table.to_csv(index=False, float_format="%.6g")
    return write_text(path, text), found.left_out
