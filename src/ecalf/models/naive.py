"""Parameter-free floors every forecaster must beat: repeat the last value, or the window mean.

``naive`` forecasts every future step as the last observed value of its channel; ``mean`` forecasts
the mean of the context window. Neither has trainable parameters; with ``future_values`` both return
the MSE (a tensor without grad) so that evaluation code treats them like every other model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ecalf.config import ModelConfig
from ecalf.models.base import ForecastModel, ForecastOutput, regression_loss
from ecalf.registry import register_model


@dataclass
class NaiveConfig(ModelConfig):
    """Only the shape fields: the last-value forecast has nothing to configure."""


@dataclass
class MeanConfig(ModelConfig):
    """Only the shape fields: the window-mean forecast has nothing to configure."""


class _StatisticForecast(ForecastModel):
    """A forecast that is one statistic of each channel's window, repeated over the horizon."""

    def statistic(self, past_values: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, past_values: Tensor, future_values: Tensor | None = None) -> ForecastOutput:
        self.check_input(past_values, future_values)
        level = self.statistic(past_values)  # (B, 1, C)
        prediction = level.repeat(1, self.config.prediction_length, 1)  # (B, H, C)
        if future_values is None:
            return ForecastOutput(prediction)
        loss = regression_loss("mse", prediction, future_values).detach()
        return ForecastOutput(prediction, loss, {"mse": loss})


@register_model(
    "naive",
    NaiveConfig,
    "Repeat each channel's last observed value over the horizon (no parameters).",
    tiny_options={},
)
class NaiveForecast(_StatisticForecast):
    def statistic(self, past_values: Tensor) -> Tensor:
        # past_values: (B, L, C)
        return past_values[:, -1:, :]  # (B, 1, C)


@register_model(
    "mean",
    MeanConfig,
    "Forecast each channel's context-window mean over the horizon (no parameters).",
    tiny_options={},
)
class MeanForecast(_StatisticForecast):
    def statistic(self, past_values: Tensor) -> Tensor:
        # past_values: (B, L, C)
        return past_values.mean(dim=1, keepdim=True)  # (B, 1, C)
