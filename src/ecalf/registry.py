"""The model registry: ``register_model`` / ``create_model`` / ``list_models``.

Models are imported explicitly in :mod:`ecalf.models`; nothing scans directories.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from ecalf.config import ModelConfig

M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    model_class: type[nn.Module]
    config_class: type[ModelConfig]
    description: str
    tiny_options: Mapping[str, Any] = field(default_factory=dict)
    """Config fields for a tiny instance that trains in milliseconds on a CPU (used by the tests)."""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    config_class: type[ModelConfig],
    description: str = "",
    tiny_options: Mapping[str, Any] | None = None,
) -> Callable[[type[M]], type[M]]:
    """Class decorator: ``@register_model("dlinear", DLinearConfig, "...", tiny_options={...})``.

    Each model has its own config class (the class identifies the model in saved configs).
    """

    def decorate(model_class: type[M]) -> type[M]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        if any(e.config_class is config_class for e in _REGISTRY.values()):
            raise ValueError(f"{config_class.__name__} already belongs to another model; subclass it")
        _REGISTRY[name] = ModelEntry(name, model_class, config_class, description, dict(tiny_options or {}))
        return model_class

    return decorate


def _ensure_loaded() -> None:
    import ecalf.models  # noqa: F401  (explicit imports register every model)


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def model_config_class(name: str) -> type[ModelConfig]:
    return get_entry(name).config_class


def model_name_for_config(config_class: type[ModelConfig]) -> str:
    _ensure_loaded()
    for entry in _REGISTRY.values():
        if entry.config_class is config_class:
            return entry.name
    raise KeyError(f"{config_class.__name__} belongs to no registered model")


def create_model(config: ModelConfig) -> nn.Module:
    """Build the registered model whose config class is ``type(config)`` (random/initial weights)."""
    return get_entry(model_name_for_config(type(config))).model_class(config)


def list_models() -> list[ModelEntry]:
    _ensure_loaded()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]
