"""Dropout with cheaper random masks on the CPU (``training.dropout_masks: fast``, the default).

torch's CPU dropout draws one Bernoulli sample per element (``bernoulli_``), a visible share of a CALF
training step on a CPU (docs/speed.md measures it). :class:`FastDropout` draws one 64-bit random word
per four elements from the same generator (``random_``) and keeps an element when
its 16-bit share is at or above ``round(p * 65536)``: every element is dropped independently with
probability ``p' = round(p * 65536) / 65536`` (within 8e-6 of ``p``), and the kept ones are scaled by
``1 / (1 - p')`` so that the expectation is exactly the input, as in torch's dropout. The mask is
kept as one byte per element for the backward pass.

It is a drop-in for ``nn.Dropout`` (a subclass, same ``p``): eval mode is the identity, and it
defers to torch's dropout on other devices (CUDA's is a fused kernel already), and for ``p`` of 0
or 1. The masks come from torch's
default generator, so ``torch.manual_seed`` reproduces them, and gradient checkpointing, which
replays the generator's state, recomputes the same masks. A different draw than torch's: the same
seed gives other masks than ``training.dropout_masks: torch`` (which reproduces rows produced before
this option existed), with the same distribution.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

_LEVELS = 65536  # 16-bit shares of the random words


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> Tensor:
    """A boolean mask of ``shape``, each element False (dropped) with probability ``round(p * 65536)
    / 65536``, drawn from torch's default generator."""
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    shares = words.view(torch.int16)[:count].view(shape)  # uniform on [-32768, 32767]
    return shares >= drop_levels(p) - _LEVELS // 2


def drop_levels(p: float) -> int:
    """How many of the 65536 equally likely shares drop an element: the effective rate is this / 65536."""
    return round(p * _LEVELS)


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0.0).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None, None


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with masks drawn four elements per random word (module docstring)."""

    def forward(self, input: Tensor) -> Tensor:
        levels = drop_levels(self.p)
        if not self.training or input.device.type != "cpu" or levels == 0 or levels >= _LEVELS:
            return super().forward(input)
        keep = keep_mask(input.shape, self.p, input.device)
        out: Tensor = _MaskedScale.apply(input, keep, _LEVELS / (_LEVELS - levels))
        return out


@contextlib.contextmanager
def dropout_masks(model: nn.Module, kind: str) -> Iterator[None]:
    """Within the block, every ``nn.Dropout`` of ``model`` draws ``kind`` masks: ``fast``
    (:class:`FastDropout`) or ``torch``; the modules are restored on exit. Only plain ``nn.Dropout``
    modules are switched (their parameters and state are untouched: the class is all that changes)."""
    if kind not in ("fast", "torch"):
        raise ValueError(f"dropout masks must be 'fast' or 'torch', got {kind!r}")
    switched = [m for m in model.modules() if type(m) is nn.Dropout] if kind == "fast" else []
    for module in switched:
        module.__class__ = FastDropout
    try:
        yield
    finally:
        for module in switched:
            module.__class__ = nn.Dropout
