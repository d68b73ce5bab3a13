"""``linear``: one channel-shared linear map from the context window to the horizon, fitted in closed form.

The floor an LLM forecaster has to clear to be worth its cost (Toner & Darlow, ICML 2024, "An Analysis
of Linear Time Series Forecasting Models"; Tan et al., NeurIPS 2024). Each channel's window has its
mean subtracted; the centred window x (L) maps to the centred horizon by ``y = W x + b`` (W: (H, L),
b: (H,), the same for every channel); the mean is added back to the forecast.

Fitting (:meth:`LinearForecast.fit_closed_form`, called by the training loop instead of epochs of SGD)
is ridge regression in float64 over every training window and channel: the normal equations are summed
batch by batch, ``W(lambda) = (X'X + lambda I)^-1 X'Y`` is solved for each strength of a logarithmic
grid (relative to the mean eigenvalue of X'X, so the grid does not depend on the number of windows),
and the strength with the lowest MSE on the *validation* windows is kept. The intercept is not
penalised. No test window is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ecalf.config import ModelConfig
from ecalf.data import WindowDataset
from ecalf.errors import ConfigError
from ecalf.models.base import ClosedFormFit, ForecastModel, ForecastOutput, regression_loss
from ecalf.registry import register_model

FIT_BATCH = 2048
"""Windows per batch while summing the normal equations and scoring validation (bounded memory)."""


@dataclass
class LinearConfig(ModelConfig):
    ridge_grid: list[float] = field(default_factory=lambda: [10.0**k for k in range(-7, 3)])
    """Candidate ridge strengths, as multiples of the mean eigenvalue of X'X; the one with the lowest
    validation MSE is kept. 0 is allowed (least squares, the minimum-norm solution: a centred window
    is orthogonal to the all-ones direction, so X'X is singular there) but is not a stable choice."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.ridge_grid or any(not (v >= 0.0) for v in self.ridge_grid):
            raise ConfigError(
                f"model.ridge_grid must be a non-empty list of values >= 0, got {self.ridge_grid}"
            )


def centred(past_values: Tensor) -> tuple[Tensor, Tensor]:
    """Each channel's window minus its mean: (B, C, L) rows and the (B, C, 1) means."""
    tokens = past_values.transpose(1, 2)  # (B, C, L)
    mean = tokens.mean(dim=-1, keepdim=True)  # (B, C, 1)
    return tokens - mean, mean


@register_model(
    "linear",
    LinearConfig,
    "Closed-form ridge map L -> H on mean-removed windows; ridge strength chosen on validation.",
    tiny_options={},
)
class LinearForecast(ForecastModel):
    """``y = W (x - mean(x)) + b + mean(x)`` per channel; W, b are buffers fitted in closed form."""

    config: LinearConfig
    weight: Tensor
    bias: Tensor
    fits_in_closed_form = True

    def __init__(self, config: LinearConfig) -> None:
        super().__init__(config)
        L, H = config.context_length, config.prediction_length
        # Before fitting: the window mean over the horizon (W = 0, b = 0).
        self.register_buffer("weight", torch.zeros(H, L))
        self.register_buffer("bias", torch.zeros(H))

    def forward(self, past_values: Tensor, future_values: Tensor | None = None) -> ForecastOutput:
        self.check_input(past_values, future_values)
        rows, mean = centred(past_values)  # (B, C, L), (B, C, 1)
        y = rows @ self.weight.T + self.bias + mean  # (B, C, H)
        prediction = y.transpose(1, 2)  # (B, H, C)
        if future_values is None:
            return ForecastOutput(prediction)
        loss = regression_loss("mse", prediction, future_values).detach()
        return ForecastOutput(prediction, loss, {"mse": loss})

    @torch.no_grad()
    def fit_closed_form(self, train_set: WindowDataset, val_set: WindowDataset) -> ClosedFormFit:
        """Fit W, b on every training window and channel; choose the strength on ``val_set``.

        Logged values: ``ridge`` (the chosen multiple of the mean eigenvalue of X'X) and
        ``val_mse@ridge=R`` for every candidate R."""
        L, H = self.config.context_length, self.config.prediction_length
        device = self.weight.device
        gram = torch.zeros(L + 1, L + 1, dtype=torch.float64, device=device)  # [x, 1]' [x, 1]
        cross = torch.zeros(L + 1, H, dtype=torch.float64, device=device)  # [x, 1]' y
        energy = torch.zeros((), dtype=torch.float64, device=device)  # y' y
        entries = 0
        for x, y in _centred_rows(train_set, device):
            x1 = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # (N, L + 1)
            gram += x1.T @ x1
            cross += x1.T @ y
            energy += y.square().sum()
            entries += y.numel()
        scale = float(torch.diagonal(gram)[:L].mean())
        candidates = sorted(set(self.config.ridge_grid))
        # Solved on the CPU (LAPACK's SVD-based least squares; the sums are only (L + 1) x (L + 1)).
        solutions = torch.stack([_solve(gram.cpu(), cross.cpu(), r * scale, L) for r in candidates]).to(
            device
        )

        squared = torch.zeros(len(candidates), dtype=torch.float64, device=device)
        count = 0
        for x, y in _centred_rows(val_set, device):
            x1 = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # (N, L + 1)
            error = torch.einsum("nl,rlh->rnh", x1, solutions) - y  # (R, N, H)
            squared += error.square().sum(dim=(1, 2))
            count += y.numel()
        mse = squared / count
        best = int(torch.argmin(mse))
        chosen = solutions[best]  # (L + 1, H)
        self.weight.copy_(chosen[:L].T.to(self.weight.dtype))
        self.bias.copy_(chosen[L].to(self.bias.dtype))
        # ||X w - y||^2 = y'y - 2 <w, X'y> + <w, X'X w>, from the sums already held.
        train_sse = energy - 2 * (chosen * cross).sum() + (chosen * (gram @ chosen)).sum()
        values = {"ridge": candidates[best]}
        values.update(
            {f"val_mse@ridge={r:g}": float(m) for r, m in zip(candidates, mse.tolist(), strict=True)}
        )
        return ClosedFormFit(train_loss=float(train_sse) / entries, values=values)


def _centred_rows(dataset: WindowDataset, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches of (centred window (N, L), centred horizon (N, H)) in float64, N = windows x channels."""
    for start in range(0, len(dataset), FIT_BATCH):
        past, future = dataset.get_batch(torch.arange(start, min(start + FIT_BATCH, len(dataset))))
        rows, mean = centred(past.to(device, torch.float64))  # (B, C, L), (B, C, 1)
        target = future.to(device, torch.float64).transpose(1, 2) - mean  # (B, C, H)
        yield rows.reshape(-1, rows.shape[-1]), target.reshape(-1, target.shape[-1])


def _solve(gram: Tensor, cross: Tensor, strength: float, context_length: int) -> Tensor:
    """(X'X + strength * diag(1, ..., 1, 0))^-1 X'Y: the intercept (last row) is not penalised."""
    penalty = torch.zeros_like(gram)
    penalty.diagonal()[:context_length] = strength
    return torch.linalg.lstsq(gram + penalty, cross, rcond=1e-12, driver="gelsd").solution  # (L + 1, H)
