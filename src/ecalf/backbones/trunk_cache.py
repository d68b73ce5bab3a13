"""The disk cache of a GGUF backbone's truncated trunk and dictionary: its key, its file, its checks.

Reading a GGUF file means parsing its metadata (the whole tokenizer vocabulary) and dequantizing
every tensor of every block, tens of seconds on a laptop CPU for SmolLM2-135M, although a model keeps
only its first N blocks. So the first load of a GGUF backbone writes what the model keeps, the N
blocks' float32 tensors under the :class:`ecalf.backbones.trunk.Trunk`'s names and the (K, D)
principal word embeddings, as one safetensors file (never pickle), atomically; every later load with
the same file, N and K reads that instead.

The key is a SHA-256 of the GGUF file's absolute path, size and modification time, N, K, the
versions of transformers and gguf (which do the dequantizing) and this cache's format, so a replaced
file or an upgraded reader is a miss, not a stale hit. A file that cannot be read or does not hold
exactly the tensors and shapes expected is ignored and written again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from ecalf.artifacts import load_tensors, save_cache_tensors
from ecalf.backbones.presets import BackboneSource
from ecalf.errors import CheckpointError

FORMAT = 1
"""Bumped when what the file holds changes."""
_DICTIONARY = "principal_embeddings"
_PREFIX = "trunk."


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def trunk_cache_path(
    cache_dir: str | os.PathLike[str], source: BackboneSource, num_layers: int, k: int
) -> Path | None:
    """Where the trunk of ``source`` with ``num_layers`` blocks and a K-entry dictionary is cached;
    None for a source that is not a GGUF file (others load fast as they are) or whose file is gone."""
    if source.kind != "gguf" or source.gguf_file is None:
        return None
    path = (Path(source.location) / source.gguf_file).resolve()
    try:
        stat = path.stat()
    except OSError:
        return None
    key = {
        "file": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "num_layers": num_layers,
        "k": k,
        "transformers": _version("transformers"),
        "gguf": _version("gguf"),
        "format": FORMAT,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / "trunks" / f"{path.stem}-{num_layers}l-k{k}-{digest[:24]}.safetensors"


def read_trunk_cache(
    path: Path, expected: dict[str, torch.Size], k: int
) -> tuple[dict[str, Tensor], Tensor] | None:
    """The cached (trunk state, dictionary), or None when ``path`` is missing, unreadable, or does not
    hold exactly the ``expected`` trunk tensors (names and shapes) and a (K, D) float32 dictionary."""
    if not path.is_file():
        return None
    try:
        tensors = load_tensors(path)
    except CheckpointError:
        return None
    dictionary = tensors.pop(_DICTIONARY, None)
    state = {name.removeprefix(_PREFIX): t for name, t in tensors.items() if name.startswith(_PREFIX)}
    if dictionary is None or len(state) != len(tensors) or state.keys() != expected.keys():
        return None
    if any(
        state[name].shape != shape or state[name].dtype != torch.float32 for name, shape in expected.items()
    ):
        return None
    if dictionary.ndim != 2 or dictionary.shape[0] != k or dictionary.dtype != torch.float32:
        return None
    return state, dictionary


def write_trunk_cache(path: Path, state: dict[str, Tensor], dictionary: Tensor, source: str) -> bool:
    """Write the trunk state and dictionary to ``path`` atomically; a cache that cannot be written (a
    read-only or full disk) is a warning, not a failure of the load: returns whether it was written."""
    tensors = {f"{_PREFIX}{name}": t.contiguous() for name, t in state.items()}
    tensors[_DICTIONARY] = dictionary.contiguous()
    metadata = {"source": source, "transformers": _version("transformers"), "gguf": _version("gguf")}
    return save_cache_tensors(
        path, tensors, metadata, what="the backbone's trunk cache",
        otherwise="the backbone loads from its file again next time",
    )  # fmt: skip
