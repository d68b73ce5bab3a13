"""Per-channel standardisation, fitted on training rows only (the benchmark protocol).

Statistics are float64 (population standard deviation, ``ddof=0``, as scikit-learn's StandardScaler
that TSLib uses). A constant channel (std below ``10 * eps``) gets std 1.0, so it maps to 0 instead of
dividing by zero — scikit-learn does the same. numpy in -> float32 numpy out; a torch tensor in -> a
tensor of its dtype and device out. The last axis is always the channel axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import overload

import numpy as np
import torch

from ecalf.errors import DataError


class StandardScaler:
    """``(x - mean) / std`` per channel; ``inverse_transform`` undoes it."""

    def __init__(self, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> None:
        self.mean = np.zeros(0) if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = np.ones(0) if std is None else np.asarray(std, dtype=np.float64)
        if self.mean.shape != self.std.shape or self.mean.ndim != 1:
            raise DataError(
                f"scaler mean and std must be 1-D of one length, got {self.mean.shape} and {self.std.shape}"
            )

    @property
    def fitted(self) -> bool:
        return self.mean.size > 0

    @property
    def num_channels(self) -> int:
        return int(self.mean.size)

    def fit(self, values: np.ndarray | torch.Tensor) -> StandardScaler:
        """Fit on (T, C) training rows (NaN, a missing value, is left out of the statistics)."""
        data = _as_float64(values)
        if data.ndim != 2 or data.shape[0] == 0:
            raise DataError(
                f"the scaler is fitted on (rows, channels) data with rows > 0, got shape {data.shape}"
            )
        if np.isnan(data).any():  # a user's series with gaps: the observed values only
            empty = np.isnan(data).all(axis=0)
            if empty.any():
                raise DataError(
                    f"channel {int(np.argmax(empty))} has no observed value in the training rows; it cannot "
                    "be scaled"
                )
            self.mean, std = np.nanmean(data, axis=0), np.nanstd(data, axis=0)
        else:
            self.mean = data.mean(axis=0)
            std = data.std(axis=0)
        self.std = np.where(std < 10 * np.finfo(np.float64).eps, 1.0, std)
        return self

    @overload
    def transform(self, values: np.ndarray) -> np.ndarray: ...
    @overload
    def transform(self, values: torch.Tensor) -> torch.Tensor: ...
    def transform(self, values: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        self._check(values)
        if isinstance(values, torch.Tensor):
            mean, std = self._torch_stats(values)
            return (values - mean) / std
        scaled = (np.asarray(values, dtype=np.float64) - self.mean) / self.std
        return scaled.astype(np.float32, order="C")

    @overload
    def inverse_transform(self, values: np.ndarray) -> np.ndarray: ...
    @overload
    def inverse_transform(self, values: torch.Tensor) -> torch.Tensor: ...
    def inverse_transform(self, values: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        self._check(values)
        if isinstance(values, torch.Tensor):
            mean, std = self._torch_stats(values)
            return values * std + mean
        restored = np.asarray(values, dtype=np.float64) * self.std + self.mean
        return restored.astype(np.float32, order="C")

    def state_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Sequence[float]]) -> StandardScaler:
        try:
            return cls(
                np.asarray(state["mean"], dtype=np.float64), np.asarray(state["std"], dtype=np.float64)
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"invalid scaler state (expected lists 'mean' and 'std'): {exc}") from None

    def _check(self, values: np.ndarray | torch.Tensor) -> None:
        if not self.fitted:
            raise DataError("the scaler is not fitted; call fit() on the training rows first")
        channels = values.shape[-1] if values.ndim else 0
        if channels != self.num_channels:
            raise DataError(
                f"the scaler was fitted on {self.num_channels} channels but got data of shape "
                f"{tuple(values.shape)} (channels are the last axis)"
            )

    def _torch_stats(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = values.dtype if values.is_floating_point() else torch.float32
        mean = torch.as_tensor(self.mean, dtype=dtype, device=values.device)
        std = torch.as_tensor(self.std, dtype=dtype, device=values.device)
        return mean, std

    def __repr__(self) -> str:
        return f"StandardScaler(num_channels={self.num_channels})"


def _as_float64(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().to(torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)
