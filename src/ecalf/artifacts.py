"""Atomic artifact writing and safe reading: a kill never leaves a half-written file.

Every file is written to a temporary sibling, flushed, fsynced and renamed over the target.
Only JSON, YAML (safe_load) and safetensors are ever read back; no pickle is loaded.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ecalf.errors import CheckpointError, EcalfError


def _new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the process umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    target = Path(path)
    if target.is_dir():
        raise EcalfError(f"cannot write {target}: it is a directory; give the path of a file instead")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise EcalfError(
            f"cannot write {target}: {exc.strerror or exc}. Choose a writable output directory."
        ) from exc
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), _new_file_mode())  # mkstemp's 0600 -> what open() would give
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise EcalfError(
            f"cannot write {target}: {exc.strerror or exc}. Check free space and permissions."
        ) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    return _atomic_write(path, write)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    return _atomic_write(path, write)


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_yaml(path: str | os.PathLike[str], data: Any, *, header: str = "") -> Path:
    """``data`` as YAML (keys in their order), after ``header`` (comment lines), atomically."""
    return write_text(path, header + yaml.safe_dump(data, sort_keys=False))


def yaml_scalar(value: Any) -> str:
    """``value`` as YAML writes it on one line (so that a ``key=value`` override reads it back)."""
    return str(yaml.safe_dump(value, default_flow_style=True).splitlines()[0])


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save tensors as safetensors, atomically (tensors are made contiguous, shared storage split)."""
    flat = {name: t.detach().contiguous().clone() for name, t in tensors.items()}
    return _atomic_write(
        path, lambda tmp: save_file(flat, tmp, metadata=dict(metadata) if metadata else None)
    )


def save_cache_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    *,
    what: str,
    otherwise: str,
) -> bool:
    """:func:`save_tensors` for a cache: a file that cannot be written (a read-only or full disk) is a
    warning naming ``what`` it was, what happens ``otherwise``, and the fix, not an error. Returns
    whether it was written."""
    try:
        save_tensors(path, tensors, metadata)
    except (OSError, EcalfError) as exc:  # _atomic_write reports a failed write as EcalfError
        warnings.warn(
            f"could not write {what} {path} ({exc}); {otherwise}. Set backbone.cache_dir or "
            "$ECALF_CACHE_DIR to a writable directory",
            stacklevel=3,
        )
        return False
    return True


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or foreign file raises CheckpointError."""
    source = Path(path)
    if not source.is_file():
        raise CheckpointError(f"checkpoint {source} does not exist")
    try:
        return load_file(str(source))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{source} is not a readable safetensors file ({exc}); it may be truncated or corrupted. "
            "Re-create it (train again) or restore it from a copy."
        ) from exc


def read_json(path: str | os.PathLike[str]) -> Any:
    source = Path(path)
    try:
        return json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EcalfError(f"{source} does not exist") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EcalfError(f"{source} is not valid JSON ({exc}); it may be truncated or corrupted") from exc


def read_yaml(path: str | os.PathLike[str]) -> Any:
    source = Path(path)
    try:
        return yaml.safe_load(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EcalfError(f"{source} does not exist") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise EcalfError(f"{source} is not valid YAML: {exc}") from exc


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")
