"""What the covariate-aware models share: the known-future covariates' check and their context + horizon.

Channels are ``[targets | past covariates | known-future covariates]`` (:mod:`ecalf.models.base`);
a model that takes known-future covariates gets their horizon values as ``future_covariates``
(B, H, K) beside ``past_values`` (B, L, C).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ecalf.config import ModelConfig


def check_future_covariates(
    config: ModelConfig, past_values: Tensor, future_covariates: Tensor | None
) -> None:
    """Raise ValueError unless ``future_covariates`` is (B, H, K) for K = ``num_future_covariates`` > 0,
    or absent (or (B, H, 0)) when K = 0."""
    k = config.num_future_covariates
    if future_covariates is None:
        if k:
            raise ValueError(
                f"this model has {k} known-future covariate channels and needs their horizon values: "
                f"future_covariates of shape (B, {config.prediction_length}, {k})"
            )
        return
    expected = (past_values.shape[0], config.prediction_length, k)
    if tuple(future_covariates.shape) != expected:
        raise ValueError(
            f"future_covariates must have shape {expected}, got {tuple(future_covariates.shape)}"
        )


def future_covariate_series(past_values: Tensor, future_covariates: Tensor) -> Tensor:
    """Each known-future covariate's context then horizon: (B, K, L + H), from ``past_values`` (B, L, C)
    and ``future_covariates`` (B, H, K)."""
    k = future_covariates.shape[-1]
    context = past_values[..., past_values.shape[-1] - k :]  # (B, L, K)
    return torch.cat([context, future_covariates.to(past_values.dtype)], dim=1).transpose(
        1, 2
    )  # (B, K, L + H)
