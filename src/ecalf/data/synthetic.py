"""Seeded synthetic series for tests, demos and benchmark-shaped files (e.g. 321 or 862 channels).

Each channel is ``level + trend * t + daily + weekly + AR(1) noise`` with its own random level, slope,
amplitudes and phases, so models have something learnable and the naive forecast is beatable.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ecalf.artifacts import write_text
from ecalf.errors import DataError


def _steps_per(period: str, frequency: str) -> float:
    step = pd.Timedelta(pd.tseries.frequencies.to_offset(frequency))  # type: ignore[arg-type]
    if step <= pd.Timedelta(0):
        raise DataError(f"frequency {frequency!r} must be a positive fixed interval such as 'h' or '15min'")
    return pd.Timedelta(period) / step


def channel_names(num_channels: int) -> list[str]:
    """``x0, x1, ..., OT``: the last channel is the target, as in the benchmark files."""
    return [f"x{i}" for i in range(num_channels - 1)] + ["OT"]


def make_synthetic(
    num_rows: int,
    num_channels: int,
    *,
    seed: int = 0,
    frequency: str = "h",
    start: str = "2016-07-01",
    decimals: int | None = 3,
) -> pd.DataFrame:
    """A ``date`` column plus ``num_channels`` seeded series (the last one named ``OT``).

    ``decimals`` rounds the values (``0`` gives integer columns, which write and parse fastest;
    ``None`` keeps float32 precision).
    """
    if num_rows <= 0 or num_channels <= 0:
        raise DataError(f"num_rows and num_channels must be positive, got {num_rows} and {num_channels}")
    try:
        dates = pd.date_range(start=start, periods=num_rows, freq=frequency)
        day, week = _steps_per("1D", frequency), _steps_per("7D", frequency)
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"cannot build timestamps from start {start!r} and frequency {frequency!r}: {exc}"
        ) from None
    rng = np.random.default_rng(seed)
    t = np.arange(num_rows, dtype=np.float32)[:, None]  # (T, 1)

    def per_channel(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, size=(1, num_channels)).astype(np.float32)  # (1, C)

    level, slope = per_channel(20.0, 80.0), per_channel(-2.0, 2.0) / num_rows * 10
    daily_amp, daily_phase = per_channel(3.0, 15.0), per_channel(0.0, 2 * np.pi)
    weekly_amp, weekly_phase = per_channel(1.0, 6.0), per_channel(0.0, 2 * np.pi)
    values = level + slope * t  # (T, C)
    values += daily_amp * np.sin(np.float32(2 * np.pi / day) * t + daily_phase)
    values += weekly_amp * np.sin(np.float32(2 * np.pi / week) * t + weekly_phase)
    shocks = rng.standard_normal((num_rows, num_channels), dtype=np.float32)
    noise = np.empty_like(shocks)
    noise[0] = shocks[0]
    for i in range(1, num_rows):  # AR(1) noise, phi = 0.6 (vectorised over channels)
        noise[i] = 0.6 * noise[i - 1] + shocks[i]
    values += noise
    columns = channel_names(num_channels)
    if decimals == 0:
        data: np.ndarray = np.rint(values).astype(np.int32)
    elif decimals is not None:
        data = np.round(values.astype(np.float64), decimals)
    else:
        data = values
    frame = pd.DataFrame(data, columns=columns)
    frame.insert(0, "date", dates)
    return frame


def write_synthetic_csv(
    path: str | os.PathLike[str],
    num_rows: int,
    num_channels: int,
    *,
    seed: int = 0,
    frequency: str = "h",
    start: str = "2016-07-01",
    decimals: int | None = 3,
) -> Path:
    """Write :func:`make_synthetic` as a benchmark-style CSV, atomically; returns the path."""
    frame = make_synthetic(
        num_rows, num_channels, seed=seed, frequency=frequency, start=start, decimals=decimals
    )
    frame["date"] = frame["date"].dt.strftime("%Y-%m-%d %H:%M:%S")
    float_format = f"%.{decimals}f" if decimals else None
    return write_text(path, frame.to_csv(index=False, float_format=float_format, lineterminator="\n"))
