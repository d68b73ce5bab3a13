"""Fetch a registered dataset's public file into the data directory (for users who are online).

The file is streamed to a temporary sibling, checked (SHA-256 where the registry has it, then parsed
and validated), and only then renamed into place, so an interrupted download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ecalf.data.loading import read_csv
from ecalf.data.specs import data_dir_origin, get_spec
from ecalf.errors import DataError

_CHUNK = 1 << 20


def download_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Download registered dataset ``name`` into the data directory; returns the file's path.

    An existing file is kept unless ``overwrite``. Datasets without a public URL raise DataError
    saying where to get them.
    """
    spec = get_spec(name)
    directory, _ = data_dir_origin(data_dir)
    target = directory / spec.file_name
    if target.is_file() and not overwrite:
        return target
    if spec.url is None:
        raise DataError(f"{spec.name}: {spec.source_hint} ({target})")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.file_name}.", suffix=".part", dir=directory)
    except OSError as exc:
        raise DataError(
            f"cannot write into {directory}: {exc.strerror or exc}; choose another --data-dir"
        ) from None
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(spec.url, timeout=timeout) as response:
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DataError(
                    f"{spec.name}: cannot download {spec.url} ({reason}). Are you offline? Download the file "
                    f"by hand and put it at {target.resolve()}, or pass --data-dir to where it already is"
                ) from None
            out.flush()
            os.fsync(out.fileno())
        if spec.sha256 is not None and digest.hexdigest() != spec.sha256:
            raise DataError(
                f"{spec.name}: the file downloaded from {spec.url} has SHA-256 {digest.hexdigest()}, "
                f"expected {spec.sha256}; it was not saved. The upstream file may have changed"
            )
        read_csv(tmp)  # rejects an HTML error page or a truncated file
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
