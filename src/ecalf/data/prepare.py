"""A user's series made ready for training: each series' inputs (gaps filled), what was observed, its
training/validation split and its scaler, and the window datasets over all of them.

One wide frame is one series; a panel (:class:`ecalf.data.series.Panel`) is several, each split and
scaled on its own rows and windowed without crossing into the next (``WindowDataset`` segments), so
one global model learns from every series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ecalf.data.loading import TimeSeriesFrame
from ecalf.data.scaling import StandardScaler
from ecalf.data.windows import WindowDataset


@dataclass
class PreparedSeries:
    """One series: the model's input channels (gaps filled), the (T, C) mask of observed values, the
    number of training rows (the rest validates) and the scaler fitted on its observed training rows."""

    name: str
    frame: TimeSeriesFrame
    observed: np.ndarray
    num_train: int
    scaler: StandardScaler

    @classmethod
    def split(cls, name: str, frame: TimeSeriesFrame, observed: np.ndarray, num_train: int) -> PreparedSeries:
        scaler = StandardScaler().fit(np.where(observed, frame.values, np.nan)[:num_train])
        return cls(name, frame, observed, num_train, scaler)

    def scaled(self, num_targets: int) -> tuple[Tensor, Tensor | None]:
        """The standardised inputs (T, C) and the futures to train on: NaN where a point is not a target
        (a covariate channel, a missing value); None when every point is one."""
        series = torch.from_numpy(self.scaler.transform(self.frame.values))
        if num_targets == self.frame.num_channels and self.observed.all():
            return series, None
        targets = series.clone()
        targets[torch.from_numpy(~self.observed)] = float("nan")  # a missing value is never a target
        targets[:, num_targets:] = float("nan")  # nor is a covariate
        return series, targets


def window_sets(
    parts: Sequence[PreparedSeries], num_targets: int, context_length: int, prediction_length: int, known: int
) -> tuple[WindowDataset, WindowDataset | None]:
    """Training windows over every series' training rows and validation windows over the rest (their
    context looks back into the training rows; None when no series holds validation rows)."""
    L, H = context_length, prediction_length
    scaled = [part.scaled(num_targets) for part in parts]

    def dataset(pieces: list[tuple[Tensor, Tensor | None]]) -> WindowDataset:
        series = torch.cat([p[0] for p in pieces])
        has_targets = any(p[1] is not None for p in pieces)
        targets = torch.cat([p[0] if p[1] is None else p[1] for p in pieces]) if has_targets else None
        segments = [len(p[0]) for p in pieces] if len(pieces) > 1 else None
        return WindowDataset(series, L, H, targets=targets, segments=segments, num_future_covariates=known)

    def rows(piece: tuple[Tensor, Tensor | None], start: int, stop: int) -> tuple[Tensor, Tensor | None]:
        series, targets = piece
        return series[start:stop], None if targets is None else targets[start:stop]

    train = dataset([rows(s, 0, p.num_train) for s, p in zip(scaled, parts)])
    validating = [(s, p) for s, p in zip(scaled, parts) if p.num_train < p.frame.num_rows]
    if not validating:
        return train, None
    val = dataset([rows(s, p.num_train - L, p.frame.num_rows) for s, p in validating])
    return train, val
