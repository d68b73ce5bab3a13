"""A tiny forecaster and its fitted fixture data, shared by the practitioner-API test files."""

from __future__ import annotations

from typing import Any

from ecalf.forecast import Forecaster
from ecalf.registry import get_entry

L, H = 24, 6
"""Context and horizon of the tiny forecasters."""


def tiny_forecaster(model: str = "dlinear", epochs: int = 2, **kwargs: Any) -> Forecaster:
    """``model`` with its registered tiny options, L 24, H 6, batch 32, no progress bars."""
    return Forecaster(
        model,
        context_length=L,
        prediction_length=H,
        model_options=get_entry(model).tiny_options,
        training_options={"epochs": epochs, "progress": False, "batch_size": 32},
        **kwargs,
    )
