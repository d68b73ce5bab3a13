"""The one contract every forecaster follows, so one training loop serves all models.

``forward(past_values (B, L, C), future_values (B, H, C) | None) -> ForecastOutput`` with the
prediction (B, H, C) on the scale of the inputs, and — when targets are given — the training loss and
its named parts. Model-specific multi-term losses live beside their model.

Channels are laid out ``[targets | past covariates | known-future covariates]``
(``ModelConfig.num_past_covariates``, ``num_future_covariates``; both 0 for a plain multivariate
series, where every channel is a target). A NaN in ``future_values`` is not a target: a covariate's
future, or a missing value of a target; :func:`regression_loss` and the metrics leave those points
out, so neither ever becomes a training target. ``past_values`` never holds NaN (gaps are filled
before windowing). Models with ``takes_future_covariates`` also take
``future_covariates (B, H, K)``: the horizon values of the last K channels, known when forecasting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ecalf.config import ModelConfig
from ecalf.errors import ConfigError
from ecalf.models.covariates import check_future_covariates

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
    takes_future_covariates: ClassVar[bool] = False
    """True for models whose ``forward`` takes ``future_covariates`` (the horizon values of the known-future
    covariate channels); other models refuse a config with ``num_future_covariates > 0``."""
    fits_in_closed_form: ClassVar[bool] = False
    """True for models whose weights are computed from the data (:meth:`fit_closed_form`) rather than
    trained by gradient steps: the training loop then calls that once instead of running epochs."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.num_future_covariates and not self.takes_future_covariates:
            name = type(config).model_name or type(self).__name__
            raise ConfigError(
                f"model {name!r} cannot use known-future covariates ({config.num_future_covariates} given); "
                f"models that can: {', '.join(future_covariate_models())}"
            )
        self.config = config

    @property
    def num_targets(self) -> int:
        """The target channels: the first ``num_channels - num_past_covariates - num_future_covariates``."""
        cfg = self.config
        return cfg.num_channels - cfg.num_past_covariates - cfg.num_future_covariates

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

    def check_input(
        self,
        past_values: Tensor,
        future_values: Tensor | None = None,
        future_covariates: Tensor | None = None,
    ) -> None:
        """Raise ValueError on inputs of the wrong shape (and, for a model that takes known-future
        covariates, on missing or misshapen ``future_covariates``)."""
        cfg = self.config
        if self.takes_future_covariates:
            check_future_covariates(cfg, past_values, future_covariates)
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
    """The mean loss over the points of ``target`` that are not NaN (a NaN is not a target).

    Without NaN it is exactly torch's mean-reduced loss (the same value and gradient, bit for bit);
    with NaN, the mean over the other points, and a NaN point gives no gradient. No host sync."""
    observed = ~torch.isnan(target)
    clean = torch.where(observed, target, prediction.detach())  # a NaN point: zero error, zero gradient
    full = _elementwise_loss(name, prediction, clean, "mean")
    masked = _elementwise_loss(name, prediction, clean, "sum") / observed.sum().clamp(min=1)
    return torch.where(observed.all(), full, masked)


def _elementwise_loss(name: LossName, prediction: Tensor, target: Tensor, reduction: str) -> Tensor:
    if name == "mse":
        return nn.functional.mse_loss(prediction, target, reduction=reduction)
    if name == "l1":
        return nn.functional.l1_loss(prediction, target, reduction=reduction)
    if name == "smooth_l1":
        return nn.functional.smooth_l1_loss(prediction, target, beta=1.0, reduction=reduction)
    raise ValueError(f"unknown loss {name!r}")


def future_covariate_models() -> list[str]:
    """Registered models that take known-future covariates."""
    from ecalf.registry import list_models

    return [e.name for e in list_models() if getattr(e.model_class, "takes_future_covariates", False)]


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
