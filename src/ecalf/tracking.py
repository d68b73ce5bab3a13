"""Experiment tracking: every loss part, metric and adapted value, once per epoch, on disk.

Three kinds (``training.tracking``):

- ``none``         nothing is written.
- ``jsonl``        ``metrics.jsonl`` in the run directory: one JSON object per epoch, flushed as soon
                   as the epoch ends (``tail -f`` it during a long run), then one ``final`` line.
- ``tensorboard``  the same ``metrics.jsonl`` plus TensorBoard event files under ``tensorboard/``
                   (``tensorboard --logdir RUN_DIR``), written by ``torch.utils.tensorboard``'s
                   ``SummaryWriter``. It needs the ``tensorboard`` package: ``pip install 'ecalf[tracking]'``;
                   without it the run stops before it starts, saying so.

Tags are ``train/loss``, ``train/<loss part>``, ``val/mse``, ``val/mae``, ``lr``,
``throughput/windows_per_second``, ``values/<adapted value>`` (temperatures, level weights, ...) and,
at the end, ``final/<metric>`` (e.g. ``final/test/mse``). The step is the epoch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from ecalf.errors import EcalfError

TrackingKind = Literal["none", "jsonl", "tensorboard"]
TRACKING_KINDS: tuple[str, ...] = ("none", "jsonl", "tensorboard")
JSONL_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


# --------------------------------------------------------------------------------------------------
# What is tracked
# --------------------------------------------------------------------------------------------------


def epoch_scalars(record: Any) -> dict[str, float]:
    """Flat ``tag -> value`` of one epoch (an ``EpochLog`` or its ``asdict`` form)."""
    data: Mapping[str, Any] = record if isinstance(record, Mapping) else vars(record)
    scalars: dict[str, float] = {"train/loss": float(data["train_loss"])}
    for name, value in data.get("loss_parts", {}).items():
        scalars[f"train/{name}"] = float(value)
    scalars["val/mse"] = float(data["val_mse"])
    scalars["val/mae"] = float(data["val_mae"])
    scalars["lr"] = float(data["learning_rate"])
    scalars["throughput/windows_per_second"] = float(data.get("windows_per_second", 0.0))
    for name, value in data.get("values", {}).items():
        scalars[f"values/{name}"] = float(value)
    return scalars


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested metrics as ``a/b/c`` tags (strings, lists and booleans are skipped)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        tag = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, tag + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[tag] = float(value)
    return out


# --------------------------------------------------------------------------------------------------
# Trackers
# --------------------------------------------------------------------------------------------------


class Tracker(Protocol):
    def log_epoch(self, record: Any) -> None: ...
    def log_final(self, metrics: Mapping[str, Any]) -> None: ...
    def close(self) -> None: ...


class NullTracker:
    """``tracking: none``."""

    def log_epoch(self, record: Any) -> None:
        pass

    def log_final(self, metrics: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlTracker:
    """``metrics.jsonl``: ``{"epoch": 3, "train/loss": ..., ...}`` per line, flushed per epoch."""

    def __init__(self, directory: str | os.PathLike[str], *, append: bool = False) -> None:
        self.path = Path(directory) / JSONL_FILE
        self._file: IO[str] | None = _open(self.path, "a" if append else "w")

    def _write(self, row: Mapping[str, Any]) -> None:
        if self._file is None:
            raise EcalfError(f"{self.path} is closed")
        self._file.write(json.dumps(row, allow_nan=True) + "\n")
        self._file.flush()

    def log_epoch(self, record: Any) -> None:
        data: Mapping[str, Any] = record if isinstance(record, Mapping) else vars(record)
        self._write({"epoch": int(data["epoch"]), "time": time.time(), **epoch_scalars(data)})

    def log_final(self, metrics: Mapping[str, Any]) -> None:
        self._write({"final": True, "time": time.time(), **flatten_metrics(metrics)})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoardTracker:
    """TensorBoard scalars through ``SummaryWriter`` (and the JSON-lines log beside them).

    The writer is opened at the first epoch logged. In ``append`` mode (a resumed run) it is opened
    with ``purge_step`` at that epoch, so TensorBoard hides what an earlier, killed process wrote for
    this epoch and later ones: an epoch interrupted after its tracking is shown once. The final
    metrics are logged at the last epoch's step.
    """

    def __init__(self, directory: str | os.PathLike[str], *, append: bool = False) -> None:
        self._writer_class = summary_writer_class()
        self.directory = Path(directory) / TENSORBOARD_DIR
        self.jsonl = JsonlTracker(directory, append=append)
        self._append = append
        self._writer: Any = None
        self._last_step = 0

    def _open_writer(self, purge_step: int | None) -> Any:
        if self._writer is None:
            try:
                self._writer = self._writer_class(log_dir=str(self.directory), purge_step=purge_step)
            except OSError as exc:
                raise EcalfError(
                    f"cannot write TensorBoard files in {self.directory}: {exc.strerror or exc}"
                ) from exc
        return self._writer

    def _add_scalars(self, scalars: Mapping[str, float], step: int, *, purge: bool) -> None:
        writer = self._open_writer(step if purge and self._append else None)
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, global_step=step)
        writer.flush()

    def log_epoch(self, record: Any) -> None:
        self.jsonl.log_epoch(record)
        data: Mapping[str, Any] = record if isinstance(record, Mapping) else vars(record)
        self._last_step = int(data["epoch"])
        self._add_scalars(epoch_scalars(data), self._last_step, purge=True)

    def log_final(self, metrics: Mapping[str, Any]) -> None:
        self.jsonl.log_final(metrics)
        final = {f"final/{tag}": value for tag, value in flatten_metrics(metrics).items()}
        # at the last epoch; a resumed run that had no epoch left to train knows it from the metrics
        step = max(self._last_step, int(final.get("final/epochs_run", 0)))
        self._add_scalars(final, step, purge=False)

    def close(self) -> None:
        self.jsonl.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``; an EcalfError saying what to install when it is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise EcalfError(
            "training.tracking is 'tensorboard' but the tensorboard package is not installed "
            f"({exc}); install it with `pip install 'ecalf[tracking]'` (or `pip install tensorboard`), "
            "or set training.tracking to 'jsonl' or 'none'"
        ) from None
    return SummaryWriter


def require_tracking(kind: str) -> None:
    """Fail early (before a run starts) when ``kind`` is unknown or its package is missing."""
    if kind not in TRACKING_KINDS:
        raise EcalfError(f"unknown tracking {kind!r}; choose one of {', '.join(TRACKING_KINDS)}")
    if kind == "tensorboard":
        summary_writer_class()


def open_tracker(kind: str, directory: str | os.PathLike[str] | None, *, append: bool = False) -> Tracker:
    """The tracker of ``kind`` writing into ``directory`` (``None``: nothing is tracked).

    ``append`` (a resumed run) keeps the earlier epochs' lines; TensorBoard gets a second event file
    in the same directory, which it merges. An epoch interrupted between its tracking and its
    checkpoint is written twice to ``metrics.jsonl``; readers keep the last row of an epoch.
    """
    require_tracking(kind)
    if kind == "none" or directory is None:
        return NullTracker()
    Path(directory).mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        return JsonlTracker(directory, append=append)
    return TensorBoardTracker(directory, append=append)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (a torn last line, from a killed run, is skipped)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _open(path: Path, mode: str) -> IO[Any]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, mode, buffering=1 if "b" not in mode else -1)
    except OSError as exc:
        raise EcalfError(f"cannot write {path}: {exc.strerror or exc}; choose a writable directory") from exc
