"""Metrics and the one evaluation pass: every window counted, the whole model in eval mode.

MSE and MAE are averaged over every window, horizon step and channel, on the scale of the data given
(the standardised scale in the benchmark protocol). Sums are accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ecalf.data import WindowDataset


@dataclass(frozen=True)
class Metrics:
    mse: float
    mae: float
    windows: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mse": self.mse, "mae": self.mae, "windows": self.windows}


def batches(num_windows: int, batch_size: int, order: Tensor | None = None) -> Iterator[Tensor]:
    """Index batches covering every window once; the last batch may be smaller, never dropped."""
    indices = order if order is not None else torch.arange(num_windows)
    for start in range(0, num_windows, batch_size):
        yield indices[start : start + batch_size]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: WindowDataset,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = False,
    description: str = "evaluate",
) -> Metrics:
    """Mean squared and absolute error of ``model`` over every window of ``dataset``."""
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on a dataset with no windows")
    was_training = model.training
    model.eval()
    squared = torch.zeros((), dtype=torch.float64)
    absolute = torch.zeros((), dtype=torch.float64)
    count = 0
    try:
        for idx in tqdm(
            list(batches(len(dataset), batch_size)), desc=description, disable=not progress, leave=False
        ):
            past, future = dataset.get_batch(idx)
            prediction = model(past.to(device)).prediction.float()
            error = prediction - future.to(device)
            squared += error.square().sum(dtype=torch.float64).cpu()
            absolute += error.abs().sum(dtype=torch.float64).cpu()
            count += error.numel()
    finally:
        model.train(was_training)
    return Metrics(mse=float(squared / count), mae=float(absolute / count), windows=len(dataset))


@torch.no_grad()
def predict(
    model: nn.Module, dataset: WindowDataset, *, batch_size: int = 256, device: torch.device | str = "cpu"
) -> Tensor:
    """Forecasts for every window of ``dataset``: (num_windows, H, C) on the CPU."""
    was_training = model.training
    model.eval()
    try:
        outputs = [
            model(dataset.get_batch(idx)[0].to(device)).prediction.float().cpu()
            for idx in batches(len(dataset), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(outputs)
