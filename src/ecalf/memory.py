"""Host memory: hand freed activation memory back to the operating system (``training.low_memory``).

A CPU training step allocates and frees the same few hundred activation tensors every step. glibc's
malloc serves a large block from a private mapping (returned to the OS on ``free``) only while it is
above its *dynamic* mmap threshold, and raises that threshold to the size of every mapped block it
frees, up to 32 MiB. After the first step, the 2-20 MiB activations of a batch therefore come from the
heap, which keeps their freed space and fragments: the step's peak resident memory ends up well
above the memory actually live at its peak. Fixing the threshold (``mallopt(M_MMAP_THRESHOLD, ...)``,
which also turns the dynamic adjustment off) maps every block of ``threshold`` bytes or more on its
own, so peak RSS is the live peak; the price is a page fault per fresh page (docs/speed.md measures
both).

The setting is process-wide and stays for the life of the process; it only exists with glibc
(Linux). Elsewhere :func:`release_freed_memory` does nothing and says so. CUDA memory is not affected
(PyTorch's caching allocator manages it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

__all__ = ["DEFAULT_MMAP_THRESHOLD", "release_freed_memory"]

DEFAULT_MMAP_THRESHOLD = 4 * 1024 * 1024
"""Blocks of 4 MiB or more get their own mapping: a batch-256 activation of GPT-2 width is 5.5 MiB."""

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024  # HEAP_MAX_SIZE / 2 on 64-bit glibc; larger values are refused


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def release_freed_memory(threshold: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Map every allocation of ``threshold`` bytes or more on its own, so freeing it returns it to the OS.

    Returns whether the setting took effect (``False`` off glibc). Process-wide and not undone.
    """
    if not 0 < threshold <= _MAX_MMAP_THRESHOLD:
        raise ValueError(f"threshold must be in (0, {_MAX_MMAP_THRESHOLD}] bytes, got {threshold}")
    libc = _glibc()
    return libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, threshold) == 1
