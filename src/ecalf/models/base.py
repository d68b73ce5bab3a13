"""The one contract every forecaster follows, so one training loop serves all models.

``forward(past_values (B, L, C), future_values (B, H, C) | None) -> ForecastOutput`` with the
prediction (B, H, C) on the scale of the inputs, and — when targets are given — the training loss and
its named parts. Model-specific multi-term losses live beside their model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ecalf.config import ModelConfig

if TYPE_CHECKING:
    from ecalf.data import WindowDataset

LossName = Literal["mse", "l1", "smooth_l1"]


@dataclass
class ForecastOutput:
    prediction: Tensor
    """(B, H, C) forecast."""
    loss: Tensor | None = None
    """Scalar training objective, present when ``future_values`` was given."""
    loss_parts: dict[str, Tensor] = field(default_factory=dict)
    """Named terms of the loss (unweighted), for logging."""


@dataclass(frozen=True)
class ClosedFormFit:
    """What a model fitted in closed form reports to the training loop."""

    train_loss: float
    """The fitted model's training objective (e.g. its MSE over every training window)."""
    values: dict[str, float] = field(default_factory=dict)
    """What the fit chose (e.g. a ridge strength and each candidate's validation score), logged."""


class ForecastModel(nn.Module):
    """Base class: holds the config, offers parameter groups and the pretrained-weights hook."""

    config: ModelConfig
    fits_in_closed_form: ClassVar[bool] = False
    """True for models whose weights are computed from the data (:meth:`fit_closed_form`) rather than
    trained by gradient steps: the training loop then calls that once instead of running epochs."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, past_values: Tensor, future_values: Tensor | None = None) -> ForecastOutput:
        raise NotImplementedError

    def load_pretrained(self) -> None:
        """Load pretrained weights (backbones). Called once, explicitly, by the run builder."""

    def parameter_groups(self, learning_rate: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups. A group with ``fixed_lr: True`` is not scheduled."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": learning_rate, "name": "model"}] if params else []

    def fit_closed_form(self, train_set: WindowDataset, val_set: WindowDataset) -> ClosedFormFit:
        """Set the weights from ``train_set``, choosing any setting on ``val_set`` (never a test split)."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form fit")

    def initialize_from_data(self, train_set: WindowDataset, val_set: WindowDataset) -> dict[str, float]:
        """Set weights that depend on the training data before the first optimizer step (a model whose
        part starts from a closed-form fit), choosing any setting on ``val_set`` (never a test split).
        Returns what it chose, for the log ({} when the model has nothing to set, the default)."""
        return {}

    def training_values(self) -> dict[str, float]:
        """Values a model adapts during training (temperatures, loss weights), logged per epoch."""
        return {}

    def check_input(self, past_values: Tensor, future_values: Tensor | None = None) -> None:
        cfg = self.config
        if past_values.ndim != 3 or past_values.shape[1:] != (cfg.context_length, cfg.num_channels):
            raise ValueError(
                f"past_values must have shape (B, {cfg.context_length}, {cfg.num_channels}), "
                f"got {tuple(past_values.shape)}"
            )
        if future_values is not None and future_values.shape != (
            past_values.shape[0],
            cfg.prediction_length,
            cfg.num_channels,
        ):
            raise ValueError(
                f"future_values must have shape (B, {cfg.prediction_length}, {cfg.num_channels}), "
                f"got {tuple(future_values.shape)}"
            )


def regression_loss(name: LossName, prediction: Tensor, target: Tensor) -> Tensor:
    if name == "mse":
        return nn.functional.mse_loss(prediction, target)
    if name == "l1":
        return nn.functional.l1_loss(prediction, target)
    if name == "smooth_l1":
        return nn.functional.smooth_l1_loss(prediction, target, beta=1.0)
    raise ValueError(f"unknown loss {name!r}")


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


class InstanceNorm(nn.Module):
    """RevIN without learnable affine: per sample and channel, statistics over the time axis.

    ``normalize`` returns the normalised input and the (detached) statistics that ``denormalize``
    needs; biased variance with eps 1e-5 inside the square root, as CALF does.
    """

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def normalize(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        # x: (B, L, C)
        mean = x.mean(dim=1, keepdim=True).detach()  # (B, 1, C)
        std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps).detach()  # (B, 1, C)
        return (x - mean) / std, (mean, std)

    @staticmethod
    def denormalize(y: Tensor, stats: tuple[Tensor, Tensor]) -> Tensor:
        mean, std = stats
        return y * std + mean
