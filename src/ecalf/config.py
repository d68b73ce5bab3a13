"""Typed configuration: dataclasses validated on construction, strict YAML, typed overrides.

A YAML file mirrors :class:`RunConfig`. An unknown key is an error naming its dotted path
(``model.backbone.lora_rnak``); every value is type-checked; ``--set a.b=value`` overrides are parsed
as YAML scalars and checked the same way. The resolved config is saved with every run.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import yaml

from ecalf.errors import ConfigError

T = TypeVar("T")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


# --------------------------------------------------------------------------------------------------
# The configs
# --------------------------------------------------------------------------------------------------


CONTEXT_LENGTH = 96
"""The default context length L: the benchmark protocol's, and the practitioner API's."""
PREDICTION_LENGTH = 96
"""The default prediction length H of a run config (the protocol's first horizon)."""
FORECAST_LENGTH = 24
"""The default prediction length of the practitioner API (``Forecaster``, ``ecalf fit``)."""
VALIDATION_FRACTION = 0.1
"""The default share of a user's rows held out for early stopping (``Forecaster.fit``, ``ecalf fit``)."""
SHAPE_FIELDS = ("context_length", "prediction_length")
"""The window shape: set in ``data``, followed by ``model``."""


@dataclass
class ModelConfig:
    """Base of every model's config. The shape fields are filled from the data at build time.

    Each model's config class is named once (:func:`name_model_config`, which
    :func:`ecalf.registry.register_model` calls): a config file's ``model: {name: ...}`` picks it, and a
    dumped config carries it."""

    model_name: ClassVar[str] = ""
    """The registered model name of this config class (empty for the base)."""

    context_length: int = CONTEXT_LENGTH
    """L, as the model is built for it. In a run config it follows ``data.context_length`` (the one
    setting of the window shape): :class:`RunConfig` fills it, and a config file may not set another."""
    prediction_length: int = PREDICTION_LENGTH
    """H, likewise following ``data.prediction_length``."""
    num_channels: int = 7
    """C, filled from the data when the model is built: targets, then past, then known-future covariates."""
    num_past_covariates: int = 0
    """Channels after the targets that are inputs only (never forecast, never in the loss)."""
    num_future_covariates: int = 0
    """The last channels: inputs whose horizon values are known when forecasting (calendar features,
    planned inputs); only models with ``takes_future_covariates`` accept them."""

    def __post_init__(self) -> None:
        _check_positive(self, "context_length", "prediction_length", "num_channels")
        if min(self.num_past_covariates, self.num_future_covariates) < 0 or (
            self.num_past_covariates + self.num_future_covariates >= self.num_channels
        ):
            raise ConfigError(
                f"model covariates: {self.num_past_covariates} past + {self.num_future_covariates} "
                f"known-future of {self.num_channels} channels leave no target; at least one channel must be "
                "a target"
            )


_NAMED_CONFIGS: dict[str, type[ModelConfig]] = {}


def name_model_config(name: str, config_class: type[ModelConfig]) -> None:
    """Give ``config_class`` the model name ``name`` (once: a name and a class belong to one model)."""
    if name in _NAMED_CONFIGS:
        raise ValueError(f"model {name!r} is registered twice")
    if registered_name(config_class):
        raise ValueError(f"{config_class.__name__} already belongs to another model; subclass it")
    config_class.model_name = name
    _NAMED_CONFIGS[name] = config_class


def registered_name(config_class: type[ModelConfig]) -> str:
    """The model name given to exactly this class (not inherited); empty when it has none."""
    name = vars(config_class).get("model_name", "")
    return name if isinstance(name, str) else ""


def model_config_named(name: str) -> type[ModelConfig]:
    """The config class of model ``name``; a KeyError lists the names known (the models imported:
    ``import ecalf.models`` imports them all; :mod:`ecalf.config_files` does)."""
    try:
        return _NAMED_CONFIGS[name]
    except KeyError:
        known = ", ".join(sorted(_NAMED_CONFIGS)) or "none (import ecalf.models)"
        raise KeyError(f"unknown model {name!r}; available: {known}") from None


@dataclass
class DataConfig:
    dataset: str = "ETTh1"
    """A registered dataset name (``ecalf data list``) or the path of a CSV with a ``date`` column."""
    data_dir: str | None = None
    """Directory holding the benchmark CSVs; else ``$ECALF_DATA_DIR``, else ``./datasets``."""
    context_length: int = CONTEXT_LENGTH
    """L: rows of history each forecast reads. The window shape is set here only (the model's follows)."""
    prediction_length: int = PREDICTION_LENGTH
    """H: rows each forecast predicts."""
    few_shot_percent: float = 100.0
    """Keep the chronologically first p % of training windows (validation and test untouched)."""
    zero_shot_target: str | None = None
    """Test on this dataset's test split instead (scaled with its own training statistics)."""

    def __post_init__(self) -> None:
        _check_positive(self, "context_length", "prediction_length")
        if not 0 < self.few_shot_percent <= 100:
            raise ConfigError(f"data.few_shot_percent must be in (0, 100], got {self.few_shot_percent}")


@dataclass
class TrainingConfig:
    epochs: int = 20
    batch_size: int = 256
    """Windows per optimizer step in each process; under torchrun with N processes a step takes
    N * batch_size windows (the global batch; docs/scale-out.md)."""
    eval_batch_size: int = 256
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    """Weight decay of the optimizer: added to the gradient as L2 (``adam``) or decoupled (``adamw``)."""
    optimizer: Literal["adam", "adamw"] = "adam"
    """``adam`` (torch Adam, CALF's) or ``adamw`` (torch AdamW: ``weight_decay`` decoupled from the
    adaptive step)."""
    warmup_steps: int = 0
    """Linear warm-up: optimizer step s (1, 2, ...) takes ``min(1, s / warmup_steps)`` of the scheduled
    rate (groups with a fixed rate included); 0: none."""
    eval_every_steps: int | None = None
    """Validate before the first step and after every N optimizer steps (and at the end of every
    epoch): early stopping and the best weights are then chosen by step, and ``patience`` counts
    validations instead of epochs. Null: once per epoch."""
    val_stride: int = 1
    """Validate during training on every N-th validation window (the first, then N windows on); the
    windows still span the whole validation split, and adjacent ones share all but one row, so the
    MSE moves little while each validation costs 1/N. 1: every window. The test split is always scored
    on every window, and so are a forecaster's interval calibration and floor comparison."""
    scheduler: Literal["cosine", "constant"] = "cosine"
    cosine_t_max: int = 20
    """CosineAnnealingLR period in epochs (official CALF: 20, 10 for Electricity and Traffic)."""
    min_learning_rate: float = 1e-8
    patience: int = 10
    """Early stopping: epochs (validations, with ``eval_every_steps``) without a better validation MSE
    before stopping."""
    max_steps: int | None = None
    """Optional optimizer-step budget (few-shot recipe); training stops when it is spent."""
    grad_clip_norm: float | None = None
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    num_threads: int | None = None
    progress: bool = True
    tracking: Literal["none", "jsonl", "tensorboard"] = "jsonl"
    """Per-epoch tracking in the run directory: ``metrics.jsonl``; ``tensorboard`` adds event files
    under ``tensorboard/`` (needs ``pip install 'ecalf[tracking]'``); ``none`` (see ecalf.tracking)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """``bf16``: forward passes (training and evaluation) under bfloat16 autocast, on CUDA and CPU;
    weights, optimizer state, the loss sums and the metrics stay float32/float64."""
    low_memory: bool = False
    """CPU training: freed activation memory goes back to the operating system at once instead of
    staying in malloc's heap (``ecalf.memory``, glibc only; process-wide): less peak memory for less
    speed (docs/speed.md measures both); no effect on CUDA memory."""
    dropout_masks: Literal["fast", "torch"] = "fast"
    """How training draws dropout masks on the CPU: ``fast`` (ecalf.dropout: a fifth of the random
    draws, the same dropout distribution) or ``torch`` (``bernoulli_``, torch's own masks). CUDA always
    uses torch's fused dropout."""

    def __post_init__(self) -> None:
        _check_positive(self, "epochs", "batch_size", "eval_batch_size", "cosine_t_max", "patience")
        if self.learning_rate <= 0:
            raise ConfigError(f"training.learning_rate must be > 0, got {self.learning_rate}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"training.max_steps must be > 0 or null, got {self.max_steps}")
        if self.eval_every_steps is not None and self.eval_every_steps <= 0:
            raise ConfigError(f"training.eval_every_steps must be > 0 or null, got {self.eval_every_steps}")
        if self.val_stride < 1:
            raise ConfigError(
                f"training.val_stride must be >= 1 (1: every validation window), got {self.val_stride}"
            )
        if self.warmup_steps < 0:
            raise ConfigError(f"training.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0:
            raise ConfigError(f"training.weight_decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"training.optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"training.precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.dropout_masks not in ("fast", "torch"):
            raise ConfigError(f"training.dropout_masks must be 'fast' or 'torch', got {self.dropout_masks!r}")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    seed: int = 2021

    def __post_init__(self) -> None:
        if type(self.model) is ModelConfig:
            raise ConfigError("model.name is required (see `ecalf list-models`)")
        # The window shape is data's: the model is built for the windows the data gives.
        shape = {name: getattr(self.data, name) for name in SHAPE_FIELDS}
        if any(getattr(self.model, name) != value for name, value in shape.items()):
            self.model = dataclasses.replace(self.model, **shape)


# --------------------------------------------------------------------------------------------------
# Loading, dumping, overriding
# --------------------------------------------------------------------------------------------------


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``dotted.key=value`` set (values parsed as YAML)."""
    result: dict[str, Any] = _deep_copy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. training.epochs=5")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse the value: {exc}") from None
        node = result
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return result


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain YAML/JSON-able data. Model configs carry their registered ``name`` first."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        if isinstance(obj, ModelConfig):
            name = registered_name(type(obj))
            if not name:
                raise ValueError(f"{type(obj).__name__} belongs to no registered model")
            out["name"] = name
        for f in dataclasses.fields(obj):
            out[f.name] = to_dict(getattr(obj, f.name))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


NEUTRAL_DEFAULTS: dict[str, Any] = {
    "training.optimizer": "adam",
    "training.warmup_steps": 0,
    "training.eval_every_steps": None,
    "training.val_stride": 1,
    "model.backbone.block_dropout": 0.0,
    "model.skip_init": "random",
    "model.num_past_covariates": 0,
    "model.num_future_covariates": 0,
}
"""Settings added after runs were written whose default is exactly what the code before them did
(the same weights and losses, checked bit for bit when they were added): a run's config.yaml that
lacks one of them trained with that value, so it still counts as a run of a config holding it."""


def missing_settings(saved: Any, config: RunConfig) -> list[str]:
    """Dotted keys of ``config``'s full dump that the mapping ``saved`` (a run's config.yaml) lacks.

    A run's config.yaml holds every setting of the code that wrote it; a key it lacks is a setting
    added since, whose default may not be what the older code did. Such a run cannot be taken for,
    or resumed as, a run of ``config`` (unless the key is one of :data:`NEUTRAL_DEFAULTS` and
    ``config`` has that default)."""

    def missing(written: Any, current: Any, prefix: str) -> list[str]:
        if not isinstance(current, dict):
            return []
        if not isinstance(written, dict):
            return [prefix.rstrip(".")]
        found: list[str] = []
        for key, value in current.items():
            if key in written:
                found.extend(missing(written[key], value, f"{prefix}{key}."))
            elif not (prefix + key in NEUTRAL_DEFAULTS and NEUTRAL_DEFAULTS[prefix + key] == value):
                found.append(prefix + key)
        return found

    return missing(saved, to_dict(config), "")


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data`` strictly: unknown keys and wrong types are errors."""
    where = path or "the config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {_describe(data)}")
    data = dict(data)
    if cls is ModelConfig or (isinstance(cls, type) and issubclass(cls, ModelConfig) and "name" in data):
        name = data.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"{_join(path, 'name')} is required: a model name from `ecalf list-models`")
        try:
            cls = model_config_named(name)  # type: ignore[assignment]
        except KeyError as exc:
            raise ConfigError(f"{_join(path, 'name')}: {exc.args[0]}") from None
    if cls is RunConfig:
        _check_one_window_shape(data, path)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in fields]
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown key {_join(path, str(unknown[0]))!r} (known keys here: {known})")
    kwargs = {name: _convert(hints[name], value, _join(path, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{path} must not be null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{path}: {_describe(value)} fits no allowed type"
        )
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path} must be one of {list(allowed)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {_describe(value)}")
        (item_tp, *_rest) = get_args(tp) or (Any,)
        items = [_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path} must be a mapping, got {_describe(value)}")
        _, value_tp = get_args(tp) or (str, Any)
        return {str(k): _convert(value_tp, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        return from_dict(tp, value, path)  # type: ignore[arg-type, type-var]
    if value is None:
        raise ConfigError(f"{path} must not be null")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads `1e-3` (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {_describe(value)}")
        return value
    raise ConfigError(f"{path}: unsupported config type {tp!r}")  # pragma: no cover


def _check_one_window_shape(data: Mapping[str, Any], path: str) -> None:
    """A run config sets L and H in ``data``; ``model`` may repeat them (saved configs do) but not differ."""
    model, section = data.get("model"), data.get("data")
    if not isinstance(model, Mapping):
        return
    given = section if isinstance(section, Mapping) else {}
    for name in SHAPE_FIELDS:
        if name in model:
            expected = given.get(name, getattr(DataConfig, name))
            if model[name] != expected:
                raise ConfigError(
                    f"{_join(path, 'model.' + name)}={model[name]} differs from "
                    f"{_join(path, 'data.' + name)}={expected}: the window shape is set in data only "
                    f"(the model follows it); set data.{name}"
                )


def _check_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}
