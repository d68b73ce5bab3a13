"""``linear``: one channel-shared linear map from the context window to the horizon, fitted in closed form.

The floor an LLM forecaster has to clear to be worth its cost (Toner & Darlow, ICML 2024, "An Analysis
of Linear Time Series Forecasting Models"; Tan et al., NeurIPS 2024). Each channel's window has its
mean subtracted; the centred window x (L) maps to the centred horizon by ``y = W x + b`` (W: (H, L),
b: (H,), the same for every channel); the mean is added back to the forecast.

With covariates (channels ``[targets | P past | K known-future]``, :mod:`ecalf.models.base`) it is an
ARX model: a row is one (window, target channel), and its features are the target's centred window
(L), then every past covariate's window (L each), then every known-future covariate's window and
horizon values (L + H each), the covariates on the scale they are given (not centred), the same for
every target of a window: ``y = W [x, z] + b`` with W: (H, L + P L + K (L + H)). Only targets are
forecast; a covariate channel's forecast is its window mean (nothing reads it). Without covariates
(P = K = 0) the features are the window alone, as above.

Fitting (:meth:`LinearForecast.fit_closed_form`, called by the training loop instead of epochs of SGD)
is ridge regression in float64 over every training window and target channel: the normal equations are
summed batch by batch and ``W(lambda) = (X'X + lambda I)^-1 X'Y`` is computed for each strength of a
logarithmic grid (relative to the mean eigenvalue of X'X, so the grid does not depend on the number of
windows; every feature has the same penalty) from one eigendecomposition (:func:`ridge_path`); the
strength with the lowest MSE on the *validation* windows is kept. The intercept is not penalised. A
row whose horizon has a missing value (NaN) is left out of the fit; validation scores every observed
point. No test window is read.
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
from ecalf.models.covariates import check_future_covariates, future_covariate_series
from ecalf.registry import register_model

FIT_BATCH = 2048
"""Windows per batch while summing the normal equations and scoring validation (bounded memory); with
covariates, scaled down by L / (features per row) so that a batch holds as many numbers."""


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

    @property
    def num_features(self) -> int:
        """Features per row: L for the target's window, L per past and L + H per known-future covariate."""
        L, H = self.context_length, self.prediction_length
        return L + self.num_past_covariates * L + self.num_future_covariates * (L + H)


def centred(past_values: Tensor) -> tuple[Tensor, Tensor]:
    """Each channel's window minus its mean: (B, C, L) rows and the (B, C, 1) means."""
    tokens = past_values.transpose(1, 2)  # (B, C, L)
    mean = tokens.mean(dim=-1, keepdim=True)  # (B, C, 1)
    return tokens - mean, mean


def covariate_features(
    past_values: Tensor, future_covariates: Tensor | None, num_targets: int, num_past_covariates: int
) -> Tensor:
    """Every covariate's features of a window, as given: (B, P L + K (L + H)), past covariates' windows
    then known-future covariates' windows and horizons (channel by channel)."""
    batch = past_values.shape[0]
    past = past_values[..., num_targets : num_targets + num_past_covariates]  # (B, L, P)
    parts = [past.transpose(1, 2).reshape(batch, -1)]  # (B, P L)
    if future_covariates is not None and future_covariates.shape[-1]:
        known = future_covariate_series(past_values, future_covariates)  # (B, K, L + H)
        parts.append(known.reshape(batch, -1))  # (B, K (L + H))
    return torch.cat(parts, dim=1)


@register_model(
    "linear",
    LinearConfig,
    "Closed-form ridge map L -> H on mean-removed windows (ARX with covariates); ridge strength chosen "
    "on validation.",
    tiny_options={},
)
class LinearForecast(ForecastModel):
    """``y = W [x - mean(x), z] + b + mean(x)`` per target; W, b are buffers fitted in closed form."""

    config: LinearConfig
    weight: Tensor
    bias: Tensor
    fits_in_closed_form = True
    takes_future_covariates = True

    def __init__(self, config: LinearConfig) -> None:
        super().__init__(config)
        H = config.prediction_length
        # Before fitting: the window mean over the horizon (W = 0, b = 0).
        self.register_buffer("weight", torch.zeros(H, config.num_features))
        self.register_buffer("bias", torch.zeros(H))

    @property
    def has_covariates(self) -> bool:
        return bool(self.config.num_past_covariates or self.config.num_future_covariates)

    def forward(
        self,
        past_values: Tensor,
        future_values: Tensor | None = None,
        future_covariates: Tensor | None = None,
    ) -> ForecastOutput:
        self.check_input(past_values, future_values, future_covariates)
        if not self.has_covariates:
            rows, mean = centred(past_values)  # (B, C, L), (B, C, 1)
            y = rows @ self.weight.T + self.bias + mean  # (B, C, H)
            prediction = y.transpose(1, 2)  # (B, H, C)
        else:
            prediction = self._forecast_with_covariates(past_values, future_covariates)
        if future_values is None:
            return ForecastOutput(prediction)
        loss = regression_loss("mse", prediction, future_values).detach()
        return ForecastOutput(prediction, loss, {"mse": loss})

    def _forecast_with_covariates(self, past_values: Tensor, future_covariates: Tensor | None) -> Tensor:
        L, T = self.config.context_length, self.num_targets
        rows, mean = centred(past_values[..., :T])  # (B, T, L), (B, T, 1)
        shared = covariate_features(past_values, future_covariates, T, self.config.num_past_covariates)
        y = rows @ self.weight[:, :L].T + (shared @ self.weight[:, L:].T)[:, None, :]  # (B, T, H)
        y = y + self.bias + mean
        others = past_values[..., T:].mean(dim=1, keepdim=True)  # (B, 1, P + K): covariates' window means
        horizon = others.expand(-1, self.config.prediction_length, -1)  # (B, H, P + K)
        return torch.cat([y.transpose(1, 2), horizon], dim=2)  # (B, H, C)

    @torch.no_grad()
    def fit_closed_form(self, train_set: WindowDataset, val_set: WindowDataset) -> ClosedFormFit:
        """Fit W, b on every training window and target channel; choose the strength on ``val_set``.

        Rows (window, target) with a NaN in the horizon are left out of the fit; validation scores
        every observed horizon point, as :func:`ecalf.evaluation.evaluate` does. Logged values:
        ``ridge`` (the chosen multiple of the mean eigenvalue of X'X) and ``val_mse@ridge=R`` for every
        candidate R. Raises ValueError when training has no row without a missing value, or
        validation no observed target."""
        F, H = self.config.num_features, self.config.prediction_length
        device = self.weight.device
        gram = torch.zeros(F + 1, F + 1, dtype=torch.float64, device=device)  # [x, 1]' [x, 1]
        cross = torch.zeros(F + 1, H, dtype=torch.float64, device=device)  # [x, 1]' y
        energy = torch.zeros((), dtype=torch.float64, device=device)  # y' y
        entries = 0
        for x, y in self._rows(train_set, device):
            x1 = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # (N, F + 1)
            gram += x1.T @ x1
            cross += x1.T @ y
            energy += y.square().sum()
            entries += y.numel()
        if not entries:
            raise ValueError("no training window has a target horizon without missing values")
        scale = float(torch.diagonal(gram)[:F].mean())
        candidates = sorted(set(self.config.ridge_grid))
        # Solved on the CPU (the sums are only (F + 1) x (F + 1)), every strength from one eigendecomposition.
        solutions = ridge_path(gram.cpu(), cross.cpu(), [r * scale for r in candidates], F).to(device)

        # Scored as the evaluation scores (ecalf.evaluation): every observed horizon point, so that the
        # chosen strength's validation MSE is the one the training log and early stopping report.
        squared = torch.zeros(len(candidates), dtype=torch.float64, device=device)
        count = 0
        for x, y in self._rows(val_set, device, drop_missing=False):
            x1 = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # (N, F + 1)
            observed = ~torch.isnan(y)
            error = torch.einsum("nl,rlh->rnh", x1, solutions) - torch.nan_to_num(y)  # (R, N, H)
            squared += (error.square() * observed).sum(dim=(1, 2))
            count += int(observed.sum())
        if not count:
            raise ValueError("no validation window has an observed target value")
        mse = squared / count
        best = int(torch.argmin(mse))
        chosen = solutions[best]  # (F + 1, H)
        self.weight.copy_(chosen[:F].T.to(self.weight.dtype))
        self.bias.copy_(chosen[F].to(self.bias.dtype))
        # ||X w - y||^2 = y'y - 2 <w, X'y> + <w, X'X w>, from the sums already held.
        train_sse = energy - 2 * (chosen * cross).sum() + (chosen * (gram @ chosen)).sum()
        values = {"ridge": candidates[best]}
        values.update(
            {f"val_mse@ridge={r:g}": float(m) for r, m in zip(candidates, mse.tolist(), strict=True)}
        )
        return ClosedFormFit(train_loss=float(train_sse) / entries, values=values)

    def _rows(
        self, dataset: WindowDataset, device: torch.device, *, drop_missing: bool = True
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of (features (N, F), centred horizon (N, H)) in float64, N = windows x targets, less
        the rows whose horizon has a NaN (with ``drop_missing``; else they stay, NaN where missing)."""
        cfg = self.config
        T, F = self.num_targets, cfg.num_features
        per_batch = max(1, FIT_BATCH * cfg.context_length // F)
        for start in range(0, len(dataset), per_batch):
            idx = torch.arange(start, min(start + per_batch, len(dataset)))
            past, future = dataset.get_batch(idx)
            past = past.to(device, torch.float64)
            rows, mean = centred(past[..., :T])  # (B, T, L), (B, T, 1)
            target = future[..., :T].to(device, torch.float64).transpose(1, 2) - mean  # (B, T, H)
            if self.has_covariates:
                known = dataset.future_covariates(idx).to(device) if cfg.num_future_covariates else None
                check_future_covariates(cfg, past, known)
                shared = covariate_features(past, known, T, cfg.num_past_covariates)  # (B, F - L)
                rows = torch.cat([rows, shared[:, None, :].expand(-1, T, -1)], dim=2)  # (B, T, F)
            x, y = rows.reshape(-1, F), target.reshape(-1, target.shape[-1])
            observed = ~torch.isnan(y).any(dim=1)  # (N,)
            if drop_missing and not bool(observed.all()):
                x, y = x[observed], y[observed]
            yield x, y


def ridge_path(gram: Tensor, cross: Tensor, strengths: list[float], num_features: int) -> Tensor:
    """``(X'X + s diag(1, ..., 1, 0))^-1 X'Y`` for every strength s: (S, F + 1, H), the intercept in the
    last row and not penalised. ``gram`` is ``[X, 1]' [X, 1]`` and ``cross`` ``[X, 1]' Y``.

    The intercept is eliminated by centring (``b = mean(y) - mean(x) W``), and the centred X'X is
    diagonalised once, so each strength costs a matrix product instead of a solve: F^3 once rather
    than per strength, which matters with many covariate features. Directions whose eigenvalue (plus
    the strength) is below 1e-12 of the largest are dropped, the minimum-norm solution, as a
    least-squares solver's ``rcond`` would."""
    F = num_features
    n = gram[F, F]
    mean_x, mean_y = gram[:F, F] / n, cross[F] / n  # (F,), (H,)
    centred_gram = gram[:F, :F] - n * torch.outer(mean_x, mean_x)
    centred_cross = cross[:F] - n * torch.outer(mean_x, mean_y)  # (F, H)
    eigenvalues, vectors = torch.linalg.eigh(centred_gram)
    projected = vectors.T @ centred_cross  # (F, H)
    largest = float(eigenvalues.abs().max()) if F else 0.0
    solutions = []
    for strength in strengths:
        shifted = eigenvalues + strength
        inverse = torch.where(
            shifted > 1e-12 * (largest + strength), 1.0 / shifted, torch.zeros_like(shifted)
        )
        weight = vectors @ (inverse[:, None] * projected)  # (F, H)
        bias = mean_y - mean_x @ weight  # (H,)
        solutions.append(torch.cat([weight, bias[None]], dim=0))
    return torch.stack(solutions)
