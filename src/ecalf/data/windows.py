"""Sliding forecast windows over one (T, C) float32 tensor, without copying a window per sample.

Window ``i`` is ``past = series[i : i + L]`` (L, C) and ``future = series[i + L : i + L + H]`` (H, C);
there are ``T - L - H + 1`` windows. ``__getitem__`` returns views into ``series``; ``get_batch`` gathers
a whole batch with one indexed read per output, which is what the training loop uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ecalf.errors import DataError


class WindowDataset(Dataset[tuple[Tensor, Tensor]]):
    """(past (L, C), future (H, C)) pairs over a (T, C) series."""

    def __init__(self, series: Tensor, context_length: int, prediction_length: int) -> None:
        if not isinstance(series, Tensor) or series.ndim != 2:
            shape = tuple(series.shape) if isinstance(series, Tensor) else type(series).__name__
            raise DataError(f"a window dataset needs a (rows, channels) tensor, got {shape}")
        if context_length <= 0 or prediction_length <= 0:
            raise DataError(
                "context and prediction lengths must be positive, "
                f"got {context_length} and {prediction_length}"
            )
        rows = series.shape[0]
        if rows < context_length + prediction_length:
            raise DataError(
                f"{rows} rows hold no window of context {context_length} + prediction {prediction_length} "
                f"= {context_length + prediction_length} rows"
            )
        self.series = series.detach().to(torch.float32).contiguous()  # (T, C); no copy when already so
        self.context_length = context_length
        self.prediction_length = prediction_length
        self.num_channels = int(series.shape[1])
        self._length = rows - context_length - prediction_length + 1
        self._past_offsets = torch.arange(context_length)  # (L,)
        self._future_offsets = torch.arange(context_length, context_length + prediction_length)  # (H,)

    def __len__(self) -> int:
        return self._length

    @property
    def windows(self) -> Tensor:
        """All windows as one view: (N, C, L + H) via ``Tensor.unfold`` (no copy)."""
        return self.series.unfold(0, self.context_length + self.prediction_length, 1)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        index = int(i)
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"window {i} out of range for {self._length} windows")
        start, split = index, index + self.context_length
        past = self.series[start:split]  # (L, C) view
        future = self.series[split : split + self.prediction_length]  # (H, C) view
        return past, future

    def get_batch(self, indices: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
        """Windows ``indices`` stacked: past (B, L, C), future (B, H, C), both contiguous."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)  # (B,)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self._length):
            raise IndexError(
                f"window indices must be in [0, {self._length}), got [{int(idx.min())}, {int(idx.max())}]"
            )
        idx = idx.to(self.series.device)
        past = self.series[idx[:, None] + self._past_offsets.to(idx.device)]  # (B, L, C)
        future = self.series[idx[:, None] + self._future_offsets.to(idx.device)]  # (B, H, C)
        return past, future

    def __repr__(self) -> str:
        return (
            f"WindowDataset(windows={self._length}, context_length={self.context_length}, "
            f"prediction_length={self.prediction_length}, num_channels={self.num_channels})"
        )
