"""Sliding forecast windows over one (T, C) float32 tensor, without copying a window per sample.

Window ``i`` is ``past = series[i : i + L]`` (L, C) and ``future = series[i + L : i + L + H]`` (H, C);
there are ``T - L - H + 1`` windows. ``__getitem__`` returns views into ``series``; ``get_batch`` gathers
a whole batch with one indexed read per output, which is what the training loop uses.

Three options serve a user's series (:mod:`ecalf.forecast`): ``targets``, a (T, C) tensor that the
futures are read from instead, with NaN where a point is not a target (a covariate, a missing value);
``segments``, the lengths of consecutive independent series stacked in ``series`` (a panel), so that
no window crosses from one into the next; and ``num_future_covariates``, the last channels' horizon
values that :meth:`WindowDataset.future_covariates` hands to models that take them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ecalf.errors import DataError


class WindowDataset(Dataset[tuple[Tensor, Tensor]]):
    """(past (L, C), future (H, C)) pairs over a (T, C) series."""

    def __init__(
        self,
        series: Tensor,
        context_length: int,
        prediction_length: int,
        *,
        targets: Tensor | None = None,
        segments: Sequence[int] | None = None,
        num_future_covariates: int = 0,
    ) -> None:
        if not isinstance(series, Tensor) or series.ndim != 2:
            shape = tuple(series.shape) if isinstance(series, Tensor) else type(series).__name__
            raise DataError(f"a window dataset needs a (rows, channels) tensor, got {shape}")
        if context_length <= 0 or prediction_length <= 0:
            raise DataError(
                "context and prediction lengths must be positive, "
                f"got {context_length} and {prediction_length}"
            )
        rows = series.shape[0]
        span = context_length + prediction_length
        lengths = [rows] if segments is None else [int(n) for n in segments]
        if sum(lengths) != rows or any(n < 0 for n in lengths):
            raise DataError(f"segments {lengths} do not add up to the {rows} rows of the series")
        if not any(n >= span for n in lengths):
            raise DataError(
                f"{rows} rows hold no window of context {context_length} + prediction {prediction_length} "
                f"= {span} rows"
                + (f" within one segment (segment lengths {lengths})" if segments is not None else "")
            )
        if targets is not None and targets.shape != series.shape:
            raise DataError(
                f"targets of shape {tuple(targets.shape)} do not match the series {tuple(series.shape)}"
            )
        self.series = series.detach().to(torch.float32).contiguous()  # (T, C); no copy when already so
        self.targets = self.series if targets is None else targets.detach().to(torch.float32).contiguous()
        self.context_length = context_length
        self.prediction_length = prediction_length
        self.num_channels = int(series.shape[1])
        self.num_future_covariates = num_future_covariates
        self.segments = lengths
        if segments is None:
            self._starts = None  # window i starts at row i
            self._length = rows - span + 1
        else:
            offsets = torch.cumsum(torch.tensor([0, *lengths]), 0)
            self._starts = torch.cat(
                [torch.arange(int(o), int(o) + n - span + 1) for o, n in zip(offsets, lengths) if n >= span]
            )
            self._length = len(self._starts)
        self._past_offsets = torch.arange(context_length)  # (L,)
        self._future_offsets = torch.arange(context_length, context_length + prediction_length)  # (H,)

    def __len__(self) -> int:
        return self._length

    @property
    def windows(self) -> Tensor:
        """All windows as one view: (N, C, L + H) via ``Tensor.unfold`` (no copy; one segment only)."""
        if self._starts is not None or self.targets is not self.series:
            raise DataError("windows is a view of a plain series; use get_batch for segments or targets")
        return self.series.unfold(0, self.context_length + self.prediction_length, 1)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        index = int(i)
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"window {i} out of range for {self._length} windows")
        start = index if self._starts is None else int(self._starts[index])
        split = start + self.context_length
        past = self.series[start:split]  # (L, C) view
        future = self.targets[split : split + self.prediction_length]  # (H, C) view
        return past, future

    def get_batch(self, indices: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
        """Windows ``indices`` stacked: past (B, L, C), future (B, H, C), both contiguous."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)  # (B,)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self._length):
            raise IndexError(
                f"window indices must be in [0, {self._length}), got [{int(idx.min())}, {int(idx.max())}]"
            )
        idx = self._start_rows(idx)
        past = self.series[idx[:, None] + self._past_offsets.to(idx.device)]  # (B, L, C)
        future = self.targets[idx[:, None] + self._future_offsets.to(idx.device)]  # (B, H, C)
        return past, future

    def future_covariates(self, indices: Tensor | Sequence[int]) -> Tensor:
        """The horizon values of the last ``num_future_covariates`` channels of windows ``indices``:
        (B, H, K), read from the (filled) input series."""
        idx = self._start_rows(torch.as_tensor(indices, dtype=torch.long).reshape(-1))
        future = self.series[idx[:, None] + self._future_offsets.to(idx.device)]  # (B, H, C)
        return future[..., self.num_channels - self.num_future_covariates :]

    def without_future_covariates(self) -> WindowDataset:
        """The same windows for a model that takes no known-future covariates (they stay past inputs)."""
        plain = copy.copy(self)
        plain.num_future_covariates = 0
        return plain

    def strided(self, stride: int) -> WindowDataset:
        """Every ``stride``-th window (the first, then ``stride`` windows on), the same series: a
        cheaper validation set whose windows still span the whole split (adjacent windows share all
        but one row, so their errors are nearly the same). ``stride`` 1: this dataset itself."""
        if stride < 1:
            raise DataError(f"a window stride must be >= 1, got {stride}")
        if stride == 1:
            return self
        strided = copy.copy(self)
        strided._starts = self._start_rows(torch.arange(0, self._length, stride))
        strided._length = len(strided._starts)
        return strided

    def _start_rows(self, idx: Tensor) -> Tensor:
        idx = idx.to(self.series.device)
        return idx if self._starts is None else self._starts.to(idx.device)[idx]

    def __repr__(self) -> str:
        return (
            f"WindowDataset(windows={self._length}, context_length={self.context_length}, "
            f"prediction_length={self.prediction_length}, num_channels={self.num_channels})"
        )
