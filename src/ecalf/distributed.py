"""Data-parallel runs with torch.distributed: which process this is, the process group, and the few
collectives that training and evaluation need.

``ecalf train`` runs unchanged under ``torchrun --nproc-per-node N -m ecalf train ...``: torchrun sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous address) for every process, and
:func:`current_world` reads them. One process (no ``WORLD_SIZE``) is the world :data:`SINGLE`, for
which every helper here is a no-op, so the training loop reads the same either way.

What is reduced, and how (docs/scale-out.md):
- the training windows of an epoch are permuted identically on every rank (seeded by seed and epoch),
  cut into global batches of ``batch_size * world.size`` and each global batch into ``world.size``
  contiguous shards (:func:`shard`);
- metrics are sums (of squared and absolute errors, of values and windows counted) added up over the
  ranks (:func:`all_reduce_sum`), each rank evaluating its own contiguous shard of the windows with no
  padding or repetition, so every window is counted exactly once;
- the model is wrapped in DistributedDataParallel, which averages the gradients.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ecalf.errors import EcalfError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one data-parallel run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    """Rank among the processes of this machine: the index of this process's GPU."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs and shows progress bars."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1


SINGLE = World()
"""One process: nothing is sharded or reduced."""


def current_world(environ: Mapping[str, str] | None = None) -> World:
    """The initialised process group if there is one, else the torchrun variables, else :data:`SINGLE`."""
    env = os.environ if environ is None else environ
    local_rank = _env_int(env, "LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), local_rank)
    if "WORLD_SIZE" not in env:
        return SINGLE
    size = _env_int(env, "WORLD_SIZE", 1)
    if "RANK" not in env:
        raise EcalfError("WORLD_SIZE is set but RANK is not; launch data-parallel runs with torchrun")
    rank = _env_int(env, "RANK", 0)
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise EcalfError(
            f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={size}, LOCAL_RANK={local_rank}"
        )
    return World(rank, size, local_rank)


def is_main_process() -> bool:
    """Whether this process is rank 0 (or the only one): for callers that print results."""
    return current_world().is_main


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise EcalfError(f"environment variable {name}={value!r} must be an integer") from None


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` for a CUDA run (one GPU per process)."""
    if device.type != "cuda" or not world.is_distributed:
        return device
    if device.index is not None and device.index != world.local_rank:
        raise EcalfError(
            f"training.device={device} would put every process on one GPU; under torchrun use "
            f"training.device=auto (or cuda): local rank {world.local_rank} takes cuda:{world.local_rank}"
        )
    device = torch.device("cuda", world.local_rank)
    torch.cuda.set_device(device)
    return device


@contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join the process group of ``world`` (NCCL on CUDA, Gloo on CPU) for the block, then leave it.

    The rendezvous address comes from the environment torchrun sets (``MASTER_ADDR``/``MASTER_PORT``).
    A group that is already initialised (by the caller) is used and left alone.
    """
    if not world.is_distributed or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, rank=world.rank, world_size=world.size)
    except (ValueError, RuntimeError) as exc:
        raise EcalfError(
            f"cannot join the {backend} process group as rank {world.rank} of {world.size}: {exc}. "
            "Launch data-parallel runs with torchrun (docs/scale-out.md)"
        ) from exc
    try:
        yield
    finally:
        dist.destroy_process_group()


def data_parallel(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel (``model`` itself in one process).

    ``find_unused_parameters`` stays off: every trainable parameter of every registered model gets a
    gradient from the training loss (tests/test_model_contract.py pins it), so DDP need not search
    the graph for unused ones each step. Buffers are broadcast from rank 0 before each forward (the
    default), so a buffer a model adapts in training (Enhanced CALF's alignment score) is rank 0's.
    """
    if not world.is_distributed:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def shard(indices: Tensor, world: World) -> Tensor:
    """This process's contiguous part of ``indices``.

    The parts of all ranks partition ``indices`` exactly: sizes differ by at most one (lower ranks
    get the extra ones), a part may be empty, nothing is padded or repeated.
    """
    if not world.is_distributed:
        return indices
    return torch.tensor_split(indices, world.size)[world.rank]


def all_reduce_sum(values: Tensor, world: World) -> Tensor:
    """``values`` summed over every process of ``world``, in place (unchanged in one process).

    ``values`` must be on the run's device (CUDA for NCCL); sums of metrics are float64.
    """
    if world.is_distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_from_main(value: int, world: World, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank."""
    if not world.is_distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def all_succeeded(ok: bool, world: World, device: torch.device) -> bool:
    """Whether ``ok`` holds on every process; a collective, so also a barrier."""
    if not world.is_distributed:
        return ok
    flag = torch.tensor([1.0 if ok else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def on_main(world: World, device: torch.device, action: Callable[[], T]) -> T | None:
    """Run ``action`` on rank 0 only (returning its result there, ``None`` elsewhere).

    Every rank waits for rank 0 to finish, and if ``action`` failed, every rank raises: rank 0 its
    own error, the others an EcalfError pointing at it, so no rank is left waiting in a collective.
    """
    error: BaseException | None = None
    result: T | None = None
    if world.is_main:
        try:
            result = action()
        except BaseException as exc:
            error = exc
    if not all_succeeded(error is None, world, device) and error is None:
        raise EcalfError("rank 0 failed (its error message says why); this process stops too")
    if error is not None:
        raise error
    return result
