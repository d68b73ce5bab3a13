"""Run configs from YAML files and mappings, with every registered model known.

A YAML file mirrors :class:`ecalf.config.RunConfig`; its ``model: {name: ...}`` names a registered
model (``ecalf list-models``), so this module imports :mod:`ecalf.models` (which imports every model)
before reading one. An unknown key is an error naming its dotted path; ``key=value`` overrides are
applied first and type-checked like the file (:func:`ecalf.config.apply_overrides`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import ecalf.models  # noqa: F401  (every model registered: config files name them)
from ecalf.artifacts import read_yaml
from ecalf.config import RunConfig, apply_overrides, from_dict
from ecalf.errors import ConfigError


def load_run_config(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> RunConfig:
    """Read a YAML run config, apply ``key=value`` overrides, and validate everything."""
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    return run_config_from_dict(apply_overrides(raw, overrides), source=str(path))


def run_config_from_dict(data: Mapping[str, Any], source: str = "config") -> RunConfig:
    """A validated RunConfig from a mapping as a YAML file holds it; errors name ``source``."""
    try:
        return from_dict(RunConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
