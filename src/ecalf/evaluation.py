"""Metrics and the one evaluation pass: every window counted, the whole model in eval mode.

MSE and MAE are averaged over every window, horizon step and channel, on the scale of the data given
(the standardised scale in the benchmark protocol); a NaN target (a covariate channel, a missing value
of a user's series: :mod:`ecalf.models.base`) is left out of both. Sums are accumulated in float64 on
the device and read once per pass. In a data-parallel run each process evaluates its own contiguous
shard of the windows and the sums are added up over the processes, so every window is counted exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ecalf.data import WindowDataset
from ecalf.distributed import SINGLE, World, all_reduce_sum, shard
from ecalf.inference import merged_lora


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


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager[object]:
    """The forward pass's precision: ``bf16`` autocast (CUDA or CPU), or nothing for ``fp32``."""
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


def known_future(dataset: WindowDataset, indices: Tensor, device: torch.device | str) -> dict[str, Tensor]:
    """The keyword arguments that hand a model the known-future covariates of windows ``indices``
    (``future_covariates``, (B, H, K)); none when the dataset has no such channels."""
    if not dataset.num_future_covariates:
        return {}
    return {"future_covariates": dataset.future_covariates(indices).to(device)}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: WindowDataset,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = False,
    description: str = "evaluate",
    precision: str = "fp32",
    world: World = SINGLE,
) -> Metrics:
    """Mean squared and absolute error of ``model`` over every window of ``dataset``.

    With a ``world`` of several processes, every process must call this (it ends in a collective);
    each evaluates its shard and all return the metrics of the whole dataset.
    """
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on a dataset with no windows")
    was_training = model.training
    model.eval()
    indices = shard(torch.arange(len(dataset)), world)
    squared = torch.zeros((), dtype=torch.float64, device=device)
    absolute = torch.zeros((), dtype=torch.float64, device=device)
    points = torch.zeros((), dtype=torch.float64, device=device)
    windows = 0
    try:
        with merged_lora(model):  # one product per adapted matrix (src/ecalf/inference.py)
            for idx in tqdm(
                list(batches(len(indices), batch_size, indices)),
                desc=description,
                disable=not (progress and world.is_main),
                leave=False,
            ):
                past, future = dataset.get_batch(idx)
                with autocast(precision, device):
                    prediction = model(past.to(device), **known_future(dataset, idx, device)).prediction
                future = future.to(device)
                observed = ~torch.isnan(future)
                error = torch.where(observed, prediction.float() - future, 0.0)
                squared += error.square().sum(dtype=torch.float64)
                absolute += error.abs().sum(dtype=torch.float64)
                points += observed.sum(dtype=torch.float64)
                windows += len(idx)
    finally:
        model.train(was_training)
    sums = torch.stack([squared, absolute, points, squared.new_tensor(windows)])
    squared, absolute, count_all, windows_all = all_reduce_sum(sums, world).cpu()  # one host sync
    if count_all == 0:
        raise ValueError("no target values to evaluate: every future point is missing or a covariate")
    return Metrics(mse=float(squared / count_all), mae=float(absolute / count_all), windows=int(windows_all))


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: WindowDataset,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> Tensor:
    """Forecasts for every window of ``dataset``: (num_windows, H, C) on the CPU."""
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with merged_lora(model):
            for idx in batches(len(dataset), batch_size):
                with autocast(precision, device):
                    past = dataset.get_batch(idx)[0].to(device)
                    prediction = model(past, **known_future(dataset, idx, device)).prediction
                outputs.append(prediction.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs)
