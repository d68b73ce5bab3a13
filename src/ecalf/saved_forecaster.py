"""A saved forecaster's directory: the one owner of its layout (``Forecaster.save`` / ``load``).

A saved forecaster is a run directory (:mod:`ecalf.run_dir` names those files: the resolved config,
the trained weights, the metrics file, here holding the fit's summary and per-epoch history) plus:

- ``forecaster.json``  format and version, ecalf version, model, columns (the model's channels), their
                       roles (targets, covariates, calendar features), what was asked (target,
                       covariates, fill), frequency, L, H, validation fraction
- ``scaler.json``      the columns and the standard scaler fitted on the training rows (a panel: pooled
                       over its series, and under ``series`` each series' own, which scales it)
- ``intervals.json``   the split-conformal interval radii (:mod:`ecalf.conformal`), when the fit held
                       out validation rows

and, while fitting, the tracking files (:mod:`ecalf.tracking`). Every file is written atomically and
``forecaster.json`` last (it is removed first), so an interrupted save is recognisably incomplete.
Only JSON, YAML and safetensors are read; a damaged or incomplete directory is a CheckpointError.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecalf import __version__
from ecalf.artifacts import read_json, read_yaml, save_tensors, write_json, write_yaml
from ecalf.config import RunConfig, to_dict
from ecalf.config_files import run_config_from_dict
from ecalf.conformal import IntervalCalibration
from ecalf.data import StandardScaler
from ecalf.errors import CheckpointError, ConfigError, DataError, EcalfError
from ecalf.fitting import load_trained
from ecalf.models.base import ForecastModel
from ecalf.registry import model_name_for_config
from ecalf.run_dir import CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE
from ecalf.tracking import JSONL_FILE, TENSORBOARD_DIR
from ecalf.training import resolve_device, snapshot

FORMAT = "ecalf-forecaster"
FORMAT_VERSION = 1
METADATA_FILE = "forecaster.json"
SCALER_FILE = "scaler.json"
INTERVALS_FILE = "intervals.json"
SAVED_FILES = (
    METADATA_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    SCALER_FILE,
    INTERVALS_FILE,
    METRICS_FILE,
    JSONL_FILE,
    TENSORBOARD_DIR,
)
"""What a forecaster directory may hold: the saved files and the tracking written while fitting."""


@dataclass
class SavedForecaster:
    """Everything a fitted forecaster needs to predict again, as saved."""

    config: RunConfig
    module: ForecastModel
    scaler: StandardScaler
    columns: list[str]
    frequency: str
    validation_fraction: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    """The fit's summary (rows, windows, best epoch, ...)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The fit's per-epoch records."""
    calibration: IntervalCalibration | None = None
    """The interval radii (None: fitted without validation rows)."""
    roles: dict[str, list[str]] = field(default_factory=dict)
    """The columns by role (``ecalf.data.roles.ColumnRoles.as_dict``); {} in a save from before roles:
    every column a target."""
    inputs: dict[str, Any] = field(default_factory=dict)
    """What the forecaster was asked to read (``ecalf.forecast_settings.InputSpec.as_dict``)."""
    series_scalers: dict[str, StandardScaler] | None = None
    """A panel's per-series scalers, by the text of its ``unique_id`` (None: one wide series)."""


def check_output_dir(directory: str | os.PathLike[str]) -> Path:
    """``directory`` if a forecaster may be saved there: absent, empty, or holding an earlier save.

    Anything else in it (a run directory, a source tree) is refused rather than overwritten.
    """
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise EcalfError(f"{path} exists and is not a directory; choose another output directory")
    if path.is_dir():
        foreign = sorted(
            entry.name
            for entry in path.iterdir()
            if entry.name not in SAVED_FILES and not _is_temporary(entry.name)
        )
        if foreign:
            raise EcalfError(
                f"{path} holds files that are not part of a saved forecaster ({', '.join(foreign[:5])}); "
                "save into a new or empty directory, or into one an earlier save wrote"
            )
    return path


def clear_tracking(directory: str | os.PathLike[str]) -> None:
    """Remove an earlier fit's tracking files from a forecaster directory (before a new fit tracks)."""
    path = Path(directory)
    (path / JSONL_FILE).unlink(missing_ok=True)
    if (path / TENSORBOARD_DIR).is_dir():
        shutil.rmtree(path / TENSORBOARD_DIR)


def write_forecaster(directory: str | os.PathLike[str], saved: SavedForecaster) -> Path:
    """Write ``saved`` to ``directory`` (created; files of an earlier save replaced); returns its path."""
    path = check_output_dir(directory)
    path.mkdir(parents=True, exist_ok=True)
    model = model_name_for_config(type(saved.config.model))
    (path / METADATA_FILE).unlink(missing_ok=True)  # an interrupted save stays recognisably incomplete
    save_tensors(path / WEIGHTS_FILE, snapshot(saved.module), {"format": FORMAT, "model": model})
    series = (
        {}
        if saved.series_scalers is None
        else {"series": {k: v.state_dict() for k, v in saved.series_scalers.items()}}
    )
    write_json(path / SCALER_FILE, {"columns": saved.columns, **saved.scaler.state_dict(), **series})
    write_yaml(path / CONFIG_FILE, to_dict(saved.config))
    write_json(path / METRICS_FILE, {**saved.summary, "history": saved.history})
    if saved.calibration is not None:
        write_json(path / INTERVALS_FILE, saved.calibration.to_dict())
    else:
        (path / INTERVALS_FILE).unlink(missing_ok=True)  # an earlier save's radii are not this model's
    write_json(
        path / METADATA_FILE,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "ecalf_version": __version__,
            "model": model,
            "columns": saved.columns,
            "frequency": saved.frequency,
            "context_length": saved.config.data.context_length,
            "prediction_length": saved.config.data.prediction_length,
            "validation_fraction": saved.validation_fraction,
            "roles": saved.roles,
            "inputs": saved.inputs,
        },
    )
    return path


def read_forecaster(directory: str | os.PathLike[str], *, device: str | None = None) -> SavedForecaster:
    """The forecaster saved in ``directory``, its model in eval mode on its device (``device``
    overrides the saved ``training.device``)."""
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: no such directory; pass the directory that Forecaster.save or `ecalf fit` wrote"
        )
    if not (path / METADATA_FILE).is_file():
        partial = any((path / name).exists() for name in (WEIGHTS_FILE, CONFIG_FILE, SCALER_FILE))
        raise CheckpointError(
            f"{path} holds no saved forecaster ({METADATA_FILE} is missing"
            + ("; the save was interrupted" if partial else "")
            + "); fit and save it again"
        )
    meta = _checkpoint_read(read_json, path / METADATA_FILE)
    columns = meta.get("columns") if isinstance(meta, dict) else None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != FORMAT
        or not isinstance(columns, list)
        or not all(isinstance(c, str) for c in columns)
        or not isinstance(meta.get("frequency"), str)
    ):
        raise CheckpointError(f"{path / METADATA_FILE} is not the metadata of a saved ecalf forecaster")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was saved by a newer ecalf ({meta.get('ecalf_version')}); upgrade ecalf to load it"
        )
    for name in (CONFIG_FILE, WEIGHTS_FILE, SCALER_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name} is missing; the saved forecaster is incomplete")
    raw_config = _checkpoint_read(read_yaml, path / CONFIG_FILE)
    try:
        config = run_config_from_dict(
            raw_config if isinstance(raw_config, dict) else {}, str(path / CONFIG_FILE)
        )
    except ConfigError as exc:
        raise CheckpointError(f"{exc}; the saved config is damaged or from another ecalf version") from None
    scaler_state = _checkpoint_read(read_json, path / SCALER_FILE)
    try:
        scaler = StandardScaler.from_state_dict(scaler_state)
        series = scaler_state.get("series") if isinstance(scaler_state, dict) else None
        series_scalers = (
            None if series is None else {str(k): StandardScaler.from_state_dict(v) for k, v in series.items()}
        )
    except (DataError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path / SCALER_FILE}: {exc}") from None
    if not (scaler.num_channels == len(columns) == config.model.num_channels):
        raise CheckpointError(
            f"{path}: the files disagree on the number of channels (metadata {len(columns)}, scaler "
            f"{scaler.num_channels}, config {config.model.num_channels}); save the forecaster again"
        )
    if device is not None:
        config = dataclasses.replace(config, training=dataclasses.replace(config.training, device=device))
    _, module = load_trained(path)  # the seeded model and, strictly, its saved weights
    module.to(resolve_device(config.training.device))
    module.eval()
    metrics = _checkpoint_read(read_json, path / METRICS_FILE) if (path / METRICS_FILE).is_file() else {}
    history = list(metrics.pop("history", [])) if isinstance(metrics, dict) else []
    calibration = None
    if (path / INTERVALS_FILE).is_file():
        try:
            calibration = IntervalCalibration.from_dict(_checkpoint_read(read_json, path / INTERVALS_FILE))
        except DataError as exc:
            raise CheckpointError(f"{path / INTERVALS_FILE}: {exc}; save the forecaster again") from None
        targets = len((meta.get("roles") or {}).get("targets") or columns)
        if calibration.radii.shape[1:] != (config.data.prediction_length, targets):
            raise CheckpointError(
                f"{path / INTERVALS_FILE}: radii of shape {calibration.radii.shape[1:]} do not match the "
                f"horizon {config.data.prediction_length} and {targets} targets; save the forecaster "
                "again"
            )
    roles, inputs = meta.get("roles") or {}, meta.get("inputs") or {}
    if not isinstance(roles, dict) or not isinstance(inputs, dict):
        raise CheckpointError(
            f"{path / METADATA_FILE}: roles and inputs must be mappings; save the forecaster again"
        )
    return SavedForecaster(
        config, module, scaler, list(columns), meta["frequency"], meta.get("validation_fraction"),
        metrics if isinstance(metrics, dict) else {}, history, calibration, roles, inputs, series_scalers,
    )  # fmt: skip


def _checkpoint_read(reader: Callable[[Path], Any], path: Path) -> Any:
    try:
        return reader(path)
    except CheckpointError:
        raise
    except EcalfError as exc:
        raise CheckpointError(f"{exc}; save the forecaster again") from None


def _is_temporary(name: str) -> bool:
    """A temporary file of an atomic write (``.NAME.XXXX.tmp``) that a kill left behind."""
    return name.startswith(".") and name.endswith(".tmp")
