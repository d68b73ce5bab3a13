"""DLinear: a moving-average decomposition and two linear maps from context to horizon.

Zeng et al., "Are Transformers Effective for Time Series Forecasting?", AAAI 2023
(official code: github.com/cure-lab/LTSF-Linear). The window is split into a trend (centred moving
average, kernel 25, the ends padded by repeating the first/last value) and a seasonal remainder; one
Linear(L -> H) maps each, applied to every channel separately (shared weights by default, one pair
per channel with ``individual``); the forecast is their sum. No normalisation, as in the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ecalf.config import ModelConfig
from ecalf.errors import ConfigError
from ecalf.models.base import ForecastModel, ForecastOutput, LossName, regression_loss
from ecalf.registry import register_model


@dataclass
class DLinearConfig(ModelConfig):
    moving_average: int = 25
    """Kernel of the centred moving average that extracts the trend (odd; 25 in the paper)."""
    individual: bool = False
    """One pair of linear maps per channel instead of one pair shared by all channels."""
    loss: LossName = "mse"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.moving_average <= 0 or self.moving_average % 2 == 0:
            raise ConfigError(
                f"model.moving_average must be a positive odd integer (a centred window), "
                f"got {self.moving_average}; the paper uses 25"
            )


def moving_average(x: Tensor, kernel: int) -> Tensor:
    """Centred moving average over time; both ends padded by repeating the edge value (odd kernel)."""
    # x: (B, L, C)
    half = (kernel - 1) // 2
    front = x[:, :1, :].expand(-1, half, -1)  # (B, half, C)
    back = x[:, -1:, :].expand(-1, half, -1)  # (B, half, C)
    padded = torch.cat([front, x, back], dim=1)  # (B, L + kernel - 1, C)
    windows = padded.unfold(1, kernel, 1)  # (B, L, C, kernel)
    return windows.mean(dim=-1)  # (B, L, C)


def decompose(x: Tensor, kernel: int) -> tuple[Tensor, Tensor]:
    """Split a window into (seasonal, trend) with ``seasonal + trend == x``."""
    # x: (B, L, C)
    trend = moving_average(x, kernel)  # (B, L, C)
    return x - trend, trend


class ChannelLinear(nn.Module):
    """Linear(L -> H) with its own weights per channel: ``y[b, c] = W[c] @ x[b, c] + b[c]``."""

    def __init__(self, num_channels: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_channels, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_channels, out_features))
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default bias init
        nn.init.uniform_(self.bias, -bound, bound)
        nn.init.constant_(self.weight, 1.0 / in_features)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, C, L)
        return torch.einsum("bcl,chl->bch", x, self.weight) + self.bias  # (B, C, H)


def _linear_map(config: DLinearConfig) -> nn.Module:
    L, H = config.context_length, config.prediction_length
    if config.individual:
        return ChannelLinear(config.num_channels, L, H)
    layer = nn.Linear(L, H)
    nn.init.constant_(layer.weight, 1.0 / L)  # start from the window mean, as Time-Series-Library does
    return layer


@register_model(
    "dlinear",
    DLinearConfig,
    "DLinear (Zeng et al., AAAI 2023): moving-average decomposition + linear maps L -> H.",
    tiny_options={"moving_average": 5},
)
class DLinear(ForecastModel):
    config: DLinearConfig

    def __init__(self, config: DLinearConfig) -> None:
        super().__init__(config)
        self.seasonal = _linear_map(config)
        self.trend = _linear_map(config)

    def forward(self, past_values: Tensor, future_values: Tensor | None = None) -> ForecastOutput:
        self.check_input(past_values, future_values)
        seasonal, trend = decompose(past_values, self.config.moving_average)  # (B, L, C) each
        seasonal = seasonal.transpose(1, 2)  # (B, C, L)
        trend = trend.transpose(1, 2)  # (B, C, L)
        out = self.seasonal(seasonal) + self.trend(trend)  # (B, C, H)
        prediction = out.transpose(1, 2)  # (B, H, C)
        if future_values is None:
            return ForecastOutput(prediction)
        loss = regression_loss(self.config.loss, prediction, future_values)
        return ForecastOutput(prediction, loss, {self.config.loss: loss})
