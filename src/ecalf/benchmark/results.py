"""The results CSV: its columns, reading it, and appending one row atomically under a lock.

A row is written whole or not at all (the file is rewritten to a temporary sibling and renamed) and
once per cell, whichever benchmark processes share the file (a ``filelock`` beside it).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecalf.artifacts import write_text
from ecalf.errors import EcalfError

if TYPE_CHECKING:
    pass


RESULT_COLUMNS: tuple[str, ...] = (
    "model",
    "dataset",
    "target",
    "setting",
    "few_shot_percent",
    "horizon",
    "seed",
    "mse",
    "mae",
    "naive_mse",
    "naive_mae",
    "epochs",
    "best_epoch",
    "steps",
    "stopped",
    "wall_seconds",
    "train_windows_per_second",
    "peak_memory_mb",
    "trainable_parameters",
    "total_parameters",
    "model_name",
    "backbone",
    "config_file",
    "overrides",
    "run_dir",
    "device",
    "git_commit",
    "ecalf",
    "torch",
    "transformers",
    "peft",
    "finished_at",
)
"""One results row: the cell's identity, test metrics and the provenance fields of protocol.md."""


KEY_COLUMNS = ("model", "dataset", "target", "setting", "horizon", "seed")
INTERVAL_COLUMN = re.compile(r"^(aci_)?(coverage|width|winkler)_\d+(\.\d+)?$")
"""Interval scores a grid with ``levels`` adds after :data:`RESULT_COLUMNS` (``coverage_80``, ...)."""


def result_columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """:data:`RESULT_COLUMNS` and the interval columns any of ``rows`` has, in order of appearance."""
    extra: dict[str, None] = {}
    for row in rows:
        extra.update((k, None) for k in row if k not in RESULT_COLUMNS and INTERVAL_COLUMN.match(k))
    return [*RESULT_COLUMNS, *extra]


def read_results(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a results CSV ([] when it does not exist)."""
    source = Path(path)
    if not source.is_file():
        return []
    with open(source, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in (*KEY_COLUMNS, "mse", "mae") if c not in (reader.fieldnames or [])]
        if missing:
            raise EcalfError(f"{source} is not an ecalf results file (no column {missing[0]!r})")
        return list(reader)


def append_result(path: str | os.PathLike[str], row: dict[str, Any]) -> bool:
    """Append one row atomically (the file is rewritten to a temporary sibling and renamed), under a
    lock, so that benchmark processes sharing one results file neither lose each other's rows nor write
    one cell twice: False, and nothing written, when a row of the same cell is already there."""
    target = Path(path)
    with exclusive(target.with_name(f".{target.name}.lock")):
        rows = read_results(target)
        key = CellId.of_row(row)
        if any(CellId.of_row(existing) == key for existing in rows):
            return False
        buffer = io.StringIO()
        columns = result_columns([*rows, row])
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", restval="")
        writer.writeheader()
        for existing in rows:
            writer.writerow(existing)
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
        write_text(target, buffer.getvalue())
    return True


def drop_results(path: str | os.PathLike[str], cells: Iterable[CellId]) -> list[dict[str, str]]:
    """Remove the rows of ``cells`` from the results CSV, atomically and under the same lock as
    :func:`append_result`; returns the rows removed (their cells are pending again)."""
    target = Path(path)
    gone = set(cells)
    with exclusive(target.with_name(f".{target.name}.lock")):
        rows = read_results(target)
        kept = [row for row in rows if CellId.of_row(row) not in gone]
        if len(kept) == len(rows):
            return []
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=result_columns(rows), extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(kept)
        write_text(target, buffer.getvalue())
    return [row for row in rows if CellId.of_row(row) in gone]


@dataclass(frozen=True)
class CellId:
    """A cell's one identity: its results row's key (:data:`KEY_COLUMNS`), its run directory and its
    name in messages all come from these six values."""

    model: str
    """The grid's label of the model (``calf``, ``calf-longterm-recipe``, ...)."""
    dataset: str
    target: str
    """Zero-shot target dataset; empty otherwise."""
    setting: str
    horizon: int
    seed: int

    @classmethod
    def of_row(cls, row: Mapping[str, Any]) -> CellId:
        """The cell a results row (or a row about to be written) belongs to."""
        try:
            return cls(
                str(row["model"]), str(row["dataset"]), str(row.get("target") or ""), str(row["setting"]),
                int(str(row["horizon"])), int(str(row["seed"])),
            )  # fmt: skip
        except (KeyError, ValueError) as exc:
            raise EcalfError(f"a results row without a valid cell key ({exc}): {dict(row)}") from None

    def as_row(self) -> dict[str, str]:
        """The key columns of its results row, as the CSV holds them."""
        return {column: _csv_value(getattr(self, column)) for column in KEY_COLUMNS}

    @property
    def run_id(self) -> str:
        """Its run directory below the grid's runs directory."""
        data = f"{self.dataset}-to-{self.target}" if self.target else self.dataset
        return f"{self.model}/{data}/{self.setting}/H{self.horizon}/seed{self.seed}"

    def __str__(self) -> str:
        data = f"{self.dataset}->{self.target}" if self.target else self.dataset
        return f"{self.model} {data} {self.setting} H={self.horizon} seed={self.seed}"


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


@contextlib.contextmanager
def exclusive(lock_path: Path, waiting: Callable[[], None] | None = None) -> Generator[None, None, None]:
    """Hold an exclusive lock on ``lock_path`` across processes (``filelock``: flock on POSIX, msvcrt
    on Windows); ``waiting`` is called once if another process holds it, before waiting for it."""
    from filelock import FileLock, Timeout

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    # The file stays after release: a process waiting on it keeps locking the same file.
    lock = FileLock(lock_path, is_singleton=False, preserve_lock_file=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if waiting is not None:
            waiting()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
