"""The honest floor: every fitted model's validation score beside the naive forecast's and ``linear``'s.

An LLM forecaster is worth its cost only where it beats what costs nothing (Tan et al., NeurIPS 2024,
"Are Language Models Actually Useful for Time Series Forecasting?"). So :meth:`ecalf.forecast.Forecaster.fit`
also scores, on the same validation windows and the same scale, the naive forecast (each series'
last value) and the closed-form ``linear`` model fitted on the same training windows (about a second
on a CPU), and says plainly when one of them is better. The comparison is saved with the forecaster
(its ``metrics.json``) and printed again by ``ecalf backtest``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ecalf.config import RunConfig, TrainingConfig
from ecalf.data import WindowDataset
from ecalf.evaluation import evaluate
from ecalf.fitting import fit_model
from ecalf.models.linear import LinearConfig
from ecalf.models.naive import NaiveConfig, NaiveForecast

NAIVE, LINEAR = "naive", "linear"


@dataclass(frozen=True)
class FloorComparison:
    """Validation MSE (standardised scale) of the fitted model, the naive forecast and ``linear``."""

    model: str
    model_mse: float
    naive_mse: float
    linear_mse: float
    windows: int
    """Validation windows scored."""

    def best_floor(self) -> tuple[str, float]:
        """The better of the two floors: its name and validation MSE."""
        return min(((NAIVE, self.naive_mse), (LINEAR, self.linear_mse)), key=lambda item: item[1])

    @property
    def beaten_by_floor(self) -> bool:
        """Whether a floor has a lower validation MSE than the model (never for ``linear`` itself)."""
        return self.model != LINEAR and self.best_floor()[1] < self.model_mse

    def lines(self, linear_command: str = "Forecaster(model='linear', ...)") -> list[str]:
        """What to tell the user: the three scores and, when a floor wins, how to use it instead
        (``linear_command``: the command or call that fits ``linear`` on the same data)."""
        scored = [(self.model, self.model_mse), (NAIVE, self.naive_mse)]
        if self.model != LINEAR:
            scored.append((LINEAR, self.linear_mse))
        scores = ", ".join(f"{name} {mse:.4f}" for name, mse in scored)
        lines = [f"validation mse ({self.windows} windows, standardised): {scores}"]
        if self.beaten_by_floor:
            name, mse = self.best_floor()
            how = (
                f"fit it with {linear_command}" if name == LINEAR else "it forecasts each series' last value"
            )
            lines.append(
                f"the {name} floor beats {self.model} on validation ({mse:.4f} < {self.model_mse:.4f}); {how}"
            )
        return lines

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FloorComparison | None:
        """The comparison saved by :meth:`as_dict`, or None when ``data`` is not one."""
        try:
            return cls(
                str(data["model"]), float(data["model_mse"]), float(data["naive_mse"]),
                float(data["linear_mse"]), int(data["windows"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return None


def compare_with_floor(
    config: RunConfig,
    model: str,
    model_mse: float,
    train_set: WindowDataset,
    val_set: WindowDataset,
    *,
    device: torch.device,
    log: Callable[[str], None] | None = None,
) -> FloorComparison:
    """Score the naive forecast and fit ``linear`` on ``train_set`` (ridge strength chosen on
    ``val_set``, as always) for ``config``'s window shape; ``model_mse`` is the model's best validation
    MSE on ``val_set``. With ``training.val_stride`` N the model was validated on every N-th window,
    and so are the floors."""
    val_set = val_set.strided(config.training.val_stride)
    L, H, C = config.model.context_length, config.model.prediction_length, config.model.num_channels
    past, known = config.model.num_past_covariates, config.model.num_future_covariates
    naive_model = NaiveForecast(
        NaiveConfig(L, H, C, num_past_covariates=past + known)
    )  # a target's last value
    naive = evaluate(
        naive_model, val_set.without_future_covariates(), batch_size=config.training.eval_batch_size
    )
    if model == LINEAR:
        linear_mse = model_mse
    else:
        linear_config = RunConfig(
            data=config.data,
            model=LinearConfig(L, H, C, num_past_covariates=past, num_future_covariates=known),
            training=TrainingConfig(progress=False, tracking="none", device=str(device)),
            seed=config.seed,
        )
        fitted = fit_model(linear_config, train_set, val_set, device=device, log=log or _silent)
        linear_mse = fitted.result.best_val_mse
    return FloorComparison(model, model_mse, naive.mse, linear_mse, naive.windows)


def _silent(line: str) -> None:
    pass
