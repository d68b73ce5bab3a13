"""The model registry: ``register_model`` / ``create_model`` / ``list_models``.

Models register themselves when their module is imported; :mod:`ecalf.models` imports every model
explicitly (importing any model module imports that package, hence all of them); nothing scans
directories. This module imports no model: the registry is below the models, not beside them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from ecalf.config import ModelConfig, name_model_config, registered_name

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
        name_model_config(name, config_class)  # raises for a second use of the name or the class
        _REGISTRY[name] = ModelEntry(name, model_class, config_class, description, dict(tiny_options or {}))
        return model_class

    return decorate


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def model_config_class(name: str) -> type[ModelConfig]:
    return get_entry(name).config_class


def model_name_for_config(config_class: type[ModelConfig]) -> str:
    name = registered_name(config_class)
    if not name:
        raise KeyError(f"{config_class.__name__} belongs to no registered model")
    return name


def create_model(config: ModelConfig) -> nn.Module:
    """Build the registered model whose config class is ``type(config)`` (random/initial weights)."""
    return get_entry(model_name_for_config(type(config))).model_class(config)


def list_models() -> list[ModelEntry]:
    """Every registered model, by name: all of ecalf's once :mod:`ecalf.models` is imported (importing
    any model module does; this module cannot, as the models import it)."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]
