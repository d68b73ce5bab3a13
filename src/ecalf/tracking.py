"""Experiment tracking: every loss part, metric and adapted value, once per epoch, on disk.

Three kinds (``training.tracking``):

- ``none``         nothing is written.
- ``jsonl``        ``metrics.jsonl`` in the run directory: one JSON object per epoch, flushed as soon
                   as the epoch ends (``tail -f`` it during a long run), then one ``final`` line.
- ``tensorboard``  the same ``metrics.jsonl`` plus TensorBoard event files under ``tensorboard/``
                   (``tensorboard --logdir RUN_DIR``). The event files are written by the small
                   writer below (TFRecord framing of ``Event`` protocol buffers with scalar summaries),
                   so the ``tensorboard`` package is needed only to *view* them, never to train.

Tags are ``train/loss``, ``train/<loss part>``, ``val/mse``, ``val/mae``, ``lr``,
``throughput/windows_per_second``, ``values/<adapted value>`` (temperatures, level weights, ...) and,
at the end, ``final/<metric>`` (e.g. ``final/test/mse``). The step is the epoch.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from ecalf.errors import EcalfError

TrackingKind = Literal["none", "jsonl", "tensorboard"]
TRACKING_KINDS: tuple[str, ...] = ("none", "jsonl", "tensorboard")
JSONL_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


# --------------------------------------------------------------------------------------------------
# What is tracked
# --------------------------------------------------------------------------------------------------


def epoch_scalars(record: Any) -> dict[str, float]:
    """Flat ``tag -> value`` of one epoch (an ``EpochLog`` or its ``asdict`` form)."""
    data: Mapping[str, Any] = record if isinstance(record, Mapping) else vars(record)
    scalars: dict[str, float] = {"train/loss": float(data["train_loss"])}
    for name, value in data.get("loss_parts", {}).items():
        scalars[f"train/{name}"] = float(value)
    scalars["val/mse"] = float(data["val_mse"])
    scalars["val/mae"] = float(data["val_mae"])
    scalars["lr"] = float(data["learning_rate"])
    scalars["throughput/windows_per_second"] = float(data.get("windows_per_second", 0.0))
    for name, value in data.get("values", {}).items():
        scalars[f"values/{name}"] = float(value)
    return scalars


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested metrics as ``a/b/c`` tags (strings, lists and booleans are skipped)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        tag = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, tag + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[tag] = float(value)
    return out


# --------------------------------------------------------------------------------------------------
# Trackers
# --------------------------------------------------------------------------------------------------


class Tracker(Protocol):
    def log_epoch(self, record: Any) -> None: ...
    def log_final(self, metrics: Mapping[str, Any]) -> None: ...
    def close(self) -> None: ...


class NullTracker:
    """``tracking: none``."""

    def log_epoch(self, record: Any) -> None:
        pass

    def log_final(self, metrics: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlTracker:
    """``metrics.jsonl``: ``{"epoch": 3, "train/loss": ..., ...}`` per line, flushed per epoch."""

    def __init__(self, directory: str | os.PathLike[str], *, append: bool = False) -> None:
        self.path = Path(directory) / JSONL_FILE
        self._file: IO[str] | None = _open(self.path, "a" if append else "w")

    def _write(self, row: Mapping[str, Any]) -> None:
        if self._file is None:
            raise EcalfError(f"{self.path} is closed")
        self._file.write(json.dumps(row, allow_nan=True) + "\n")
        self._file.flush()

    def log_epoch(self, record: Any) -> None:
        data: Mapping[str, Any] = record if isinstance(record, Mapping) else vars(record)
        self._write({"epoch": int(data["epoch"]), "time": time.time(), **epoch_scalars(data)})

    def log_final(self, metrics: Mapping[str, Any]) -> None:
        self._write({"final": True, "time": time.time(), **flatten_metrics(metrics)})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoardTracker:
    """TensorBoard scalars (and the JSON-lines log beside them)."""

    def __init__(self, directory: str | os.PathLike[str], *, append: bool = False) -> None:
        self.jsonl = JsonlTracker(directory, append=append)
        self.events = EventFileWriter(Path(directory) / TENSORBOARD_DIR)
        self._last_step = 0

    def log_epoch(self, record: Any) -> None:
        self.jsonl.log_epoch(record)
        data: Mapping[str, Any] = record if isinstance(record, Mapping) else vars(record)
        self._last_step = int(data["epoch"])
        self.events.add_scalars(epoch_scalars(data), self._last_step)

    def log_final(self, metrics: Mapping[str, Any]) -> None:
        self.jsonl.log_final(metrics)
        final = {f"final/{tag}": value for tag, value in flatten_metrics(metrics).items()}
        self.events.add_scalars(final, self._last_step)

    def close(self) -> None:
        self.jsonl.close()
        self.events.close()


def open_tracker(kind: str, directory: str | os.PathLike[str] | None, *, append: bool = False) -> Tracker:
    """The tracker of ``kind`` writing into ``directory`` (``None``: nothing is tracked).

    ``append`` (a resumed run) keeps the earlier epochs' lines; TensorBoard gets a second event file
    in the same directory, which it merges. An epoch interrupted between its tracking and its
    checkpoint is tracked twice; readers keep the last row of a step.
    """
    if kind not in TRACKING_KINDS:
        raise EcalfError(f"unknown tracking {kind!r}; choose one of {', '.join(TRACKING_KINDS)}")
    if kind == "none" or directory is None:
        return NullTracker()
    Path(directory).mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        return JsonlTracker(directory, append=append)
    return TensorBoardTracker(directory, append=append)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (a torn last line, from a killed run, is skipped)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _open(path: Path, mode: str) -> IO[Any]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, mode, buffering=1 if "b" not in mode else -1)
    except OSError as exc:
        raise EcalfError(f"cannot write {path}: {exc.strerror or exc}; choose a writable directory") from exc


# --------------------------------------------------------------------------------------------------
# TensorBoard event files without TensorFlow or tensorboard
# --------------------------------------------------------------------------------------------------
# An event file is a sequence of TFRecords: uint64 length, uint32 masked CRC32C of the length bytes,
# the payload, uint32 masked CRC32C of the payload (all little-endian). Each payload is a serialised
# ``tensorflow.Event`` protocol buffer: wall_time (1, double), step (2, int64), file_version (3,
# string) or summary (5, message); a Summary holds repeated Value (1) messages of tag (1, string) and
# simple_value (2, float).


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 as two's complement
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(
    wall_time: float, step: int, *, file_version: str | None = None, summary: bytes | None = None
) -> bytes:
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        out += _field_bytes(3, file_version.encode())
    if summary is not None:
        out += _field_bytes(5, summary)
    return out


def _scalar_summary(scalars: Mapping[str, float]) -> bytes:
    values = b""
    for tag, value in scalars.items():
        value_msg = _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)
        values += _field_bytes(1, value_msg)
    return values


def tf_record(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", _masked_crc(header)) + payload + struct.pack("<I", _masked_crc(payload))


class EventFileWriter:
    """Appends scalar summaries to one ``events.out.tfevents.*`` file, flushed after every write."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        now = time.time()
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.0"
        self.path = Path(directory) / name
        self._file: IO[bytes] | None = _open(self.path, "wb")
        self._write(_event(now, 0, file_version="brain.Event:2"))

    def _write(self, event: bytes) -> None:
        if self._file is None:
            raise EcalfError(f"{self.path} is closed")
        self._file.write(tf_record(event))
        self._file.flush()

    def add_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        finite = {tag: value for tag, value in scalars.items() if math.isfinite(value)}
        if finite:
            self._write(_event(time.time(), step, summary=_scalar_summary(finite)))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_event_scalars(path: str | os.PathLike[str]) -> list[tuple[int, str, float]]:
    """``(step, tag, value)`` of every scalar in an event file written by :class:`EventFileWriter`.

    A reader of just what the writer emits (used by the tests and to check a file without tensorboard);
    the CRCs are verified.
    """
    data = Path(path).read_bytes()
    out: list[tuple[int, str, float]] = []
    pos = 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        payload = data[pos + 12 : pos + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        if header_crc != _masked_crc(header) or payload_crc != _masked_crc(payload):
            raise EcalfError(f"{path}: corrupted record at byte {pos}")
        pos += 16 + length
        fields = dict(_parse_fields(payload, repeated={5}))
        step = fields.get(2, 0)
        for summary in fields.get(5, []):
            for value_msg in (v for k, v in _parse_fields(summary) if k == 1):
                value_fields = dict(_parse_fields(value_msg))
                tag = value_fields[1].decode()
                out.append((int(step), tag, struct.unpack("<f", value_fields[2])[0]))
    return out


def _parse_fields(data: bytes, repeated: set[int] = frozenset()) -> list[tuple[int, Any]]:  # type: ignore[assignment]
    fields: list[tuple[int, Any]] = []
    collected: dict[int, list[bytes]] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        else:
            raise EcalfError(f"unsupported protocol buffer wire type {wire}")
        if number in repeated:
            collected.setdefault(number, []).append(value)
        else:
            fields.append((number, value))
    fields.extend(collected.items())
    return fields


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos
