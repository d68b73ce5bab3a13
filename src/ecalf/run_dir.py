"""The run directory: the one owner of its file names, its typed metrics record and its progress.

A run directory (``ecalf train``, one benchmark cell, a saved forecaster) holds:

- ``config.yaml``       the resolved config (every default written out)
- ``metrics.json``      :class:`RunMetrics`: test MSE/MAE, the naive forecast's beside it, window counts,
                        epochs, wall time, parameter counts, per-epoch history, provenance
- ``validation.json``   :class:`ValidationMetrics`, instead of ``metrics.json`` in a run that is
                        trained and validated but never tested (a trial of ``ecalf tune``)
- ``train.log``         the per-epoch log
- ``model.safetensors`` the best weights that training changed (trainable parameters and buffers);
                        frozen backbone weights are rebuilt from the config by the same seeded procedure
- ``state/``            the training checkpoint of an unfinished run
                        (:class:`ecalf.training.TrainingCheckpoint`); removed when the run finishes
- tracking files        ``metrics.jsonl`` / ``tensorboard/`` (:mod:`ecalf.tracking` names and writes them)

Every other module asks :class:`RunDirectory` for these paths; only JSON, YAML and safetensors are read.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from torch import Tensor

from ecalf.artifacts import load_tensors, read_json, save_tensors, write_json, write_yaml
from ecalf.config import RunConfig, to_dict
from ecalf.config_files import load_run_config
from ecalf.errors import CheckpointError
from ecalf.evaluation import Metrics
from ecalf.training import EpochLog, TrainingCheckpoint, TrainingProgress

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
WEIGHTS_FILE = "model.safetensors"
LOG_FILE = "train.log"
STATE_DIR = "state"
VALIDATION_FILE = "validation.json"


@dataclass
class RunMetrics:
    """What ``metrics.json`` holds: one finished run (or one zero-shot evaluation of one)."""

    model: str
    """The registered model name (``calf``, ``linear``, ...)."""
    dataset: str
    prediction_length: int
    few_shot_percent: float
    seed: int
    test: Metrics
    naive_test: Metrics
    """The last-value forecast on the same test windows."""
    windows: dict[str, int]
    """Windows per split: ``train``, ``val``, ``test``."""
    best_epoch: int
    best_val_mse: float
    epochs_run: int
    steps: int
    stopped: str
    """Why training ended (:attr:`ecalf.training.TrainingResult.stopped`)."""
    train_seconds: float
    wall_seconds: float
    train_windows_per_second: float
    peak_memory_mb: float
    parameters: dict[str, int]
    """``trainable`` and ``total`` parameter counts."""
    history: list[EpochLog] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    """Provenance: git commit, package versions, threads, device (:func:`ecalf.run.environment`)."""
    zero_shot_target: str | None = None
    """Zero-shot evaluations: the dataset whose test split ``test`` is on."""
    trained_in: str | None = None
    """Zero-shot evaluations: the run directory whose model was evaluated."""
    evaluation_seconds: float | None = None
    evaluation_environment: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["test"], data["naive_test"] = self.test.as_dict(), self.naive_test.as_dict()
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_json(cls, data: Any, source: str = METRICS_FILE) -> RunMetrics:
        """Read a ``metrics.json`` mapping; a missing entry or a wrong shape is a CheckpointError."""
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{source}: not a metrics mapping")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}  # entries of other versions are kept out
        try:
            values["test"] = _metrics(values["test"])
            values["naive_test"] = _metrics(values["naive_test"])
            values["history"] = [EpochLog(**record) for record in values.get("history", [])]
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{source}: not the metrics of a finished ecalf run ({exc})") from None


@dataclass
class ValidationMetrics:
    """What ``validation.json`` holds: a run trained and validated, whose test split was never read."""

    model: str
    dataset: str
    prediction_length: int
    few_shot_percent: float
    seed: int
    best_val_mse: float
    naive_val_mse: float
    """The last-value forecast's MSE on the same validation windows."""
    best_epoch: int
    best_step: int
    epochs_run: int
    steps: int
    stopped: str
    train_seconds: float
    history: list[EpochLog] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """The best validation MSE relative to the naive forecast's (below 1: better than naive)."""
        return self.best_val_mse / self.naive_val_mse

    @classmethod
    def from_json(cls, data: Any, source: str = VALIDATION_FILE) -> ValidationMetrics:
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{source}: not a validation mapping")
        try:
            values = dict(data)
            values["history"] = [EpochLog(**record) for record in values.get("history", [])]
            return cls(**values)
        except TypeError as exc:
            raise CheckpointError(f"{source}: not the validation of an ecalf run ({exc})") from None


def _metrics(data: Mapping[str, Any]) -> Metrics:
    return Metrics(mse=float(data["mse"]), mae=float(data["mae"]), windows=int(data["windows"]))


@dataclass(frozen=True)
class RunDirectory:
    """One run's directory: where each of its files is, and reading and writing them."""

    path: Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "path", Path(path))

    # -- where --------------------------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def weights_file(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def log_file(self) -> Path:
        return self.path / LOG_FILE

    @property
    def validation_file(self) -> Path:
        return self.path / VALIDATION_FILE

    @property
    def checkpoint(self) -> TrainingCheckpoint:
        """The training state of an unfinished run (epoch checkpoints, resumable)."""
        return TrainingCheckpoint(self.path / STATE_DIR)

    # -- state --------------------------------------------------------------------------------------

    def has_config(self) -> bool:
        return self.config_file.is_file()

    def is_finished(self) -> bool:
        """A finished run has its metrics written (the last file a run writes)."""
        return self.metrics_file.is_file()

    def progress(self) -> TrainingProgress | None:
        """How far an unfinished training got (None: not started, finished, or unreadable)."""
        return self.checkpoint.progress()

    # -- reading and writing ------------------------------------------------------------------------

    def read_config(self) -> RunConfig:
        if not self.has_config():
            raise CheckpointError(
                f"{self.path} is not a run directory (no {CONFIG_FILE}); "
                "pass the directory `ecalf train` wrote"
            )
        return load_run_config(self.config_file)

    def write_config(self, config: RunConfig) -> None:
        write_yaml(self.config_file, to_dict(config))

    def read_metrics(self) -> RunMetrics:
        if not self.is_finished():
            raise CheckpointError(f"{self.path} holds no finished run (no {METRICS_FILE}); train it first")
        return RunMetrics.from_json(read_json(self.metrics_file), str(self.metrics_file))

    def read_history(self) -> list[EpochLog]:
        """The per-epoch history of a finished run (or of a saved forecaster's fit) alone."""
        data = read_json(self.metrics_file)
        history = data.get("history", []) if isinstance(data, Mapping) else None
        if not isinstance(history, list):
            raise CheckpointError(f"{self.metrics_file}: no per-epoch history")
        try:
            return [EpochLog(**record) for record in history]
        except TypeError as exc:
            raise CheckpointError(f"{self.metrics_file}: an epoch record is not ecalf's ({exc})") from None

    def write_metrics(self, metrics: RunMetrics) -> None:
        write_json(self.metrics_file, metrics.to_json())

    def has_validation(self) -> bool:
        """Whether a validation-only run (a search trial's) has finished: its last file is written."""
        return self.validation_file.is_file()

    def read_validation(self) -> ValidationMetrics:
        return ValidationMetrics.from_json(read_json(self.validation_file), str(self.validation_file))

    def write_validation(self, metrics: ValidationMetrics) -> None:
        write_json(self.validation_file, dataclasses.asdict(metrics))

    def read_weights(self) -> dict[str, Tensor]:
        return load_tensors(self.weights_file)

    def write_weights(self, tensors: dict[str, Tensor], epoch: int) -> None:
        save_tensors(self.weights_file, tensors, {"epoch": str(epoch)})

    def open_log(self, append: bool) -> IO[str]:
        """The run's log, line-buffered (each epoch's line reaches the file as it is written)."""
        return open(self.log_file, "a" if append else "w", encoding="utf-8", buffering=1)

    def remove_temporary_files(self) -> None:
        """Temporary files of writes that a kill interrupted (``.*.tmp``)."""
        for stale in self.path.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
