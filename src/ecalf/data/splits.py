"""The benchmark protocol as one function: load -> split rows -> scale on training rows -> windows.

- The scaler is fitted on the whole training split (also in few-shot) and applied to every row.
- Few-shot p %: the training split ends at ``(border2 - L) * p // 100 + L`` (TSLib); val/test untouched.
- Zero-shot: train/val come from ``dataset``; the test split is ``zero_shot_target``'s test split,
  scaled with a scaler fitted on the target's own training split.

The three window datasets are views into one scaled (T, C) tensor per file.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ecalf.config import DataConfig
from ecalf.data.loading import TimeSeriesFrame, load_dataset
from ecalf.data.scaling import StandardScaler
from ecalf.data.specs import DatasetSpec, split_rows
from ecalf.data.windows import WindowDataset
from ecalf.errors import DataError


@dataclass
class ForecastSplits:
    train: WindowDataset
    val: WindowDataset
    test: WindowDataset
    scaler: StandardScaler
    """Fitted on the training split of ``spec``; scales train and val (and test unless zero-shot)."""
    columns: list[str]
    spec: DatasetSpec
    frame: TimeSeriesFrame
    """The unscaled source series."""
    test_timestamps: pd.DatetimeIndex | None = None
    """Timestamps of the test split's rows, aligned with ``test.series`` (look-back rows included)."""
    test_scaler: StandardScaler | None = None
    """The scaler of the test rows: the target's in zero-shot, else ``scaler`` (filled when None)."""
    test_spec: DatasetSpec | None = None
    """The dataset the test split comes from: the zero-shot target, else ``spec`` (filled when None)."""
    row_ranges: dict[str, tuple[int, int]] | None = None
    """Row ranges [start, end) of the splits in their files (few-shot applied to train)."""

    def __post_init__(self) -> None:
        if self.test_scaler is None:
            self.test_scaler = self.scaler
        if self.test_spec is None:
            self.test_spec = self.spec

    def window_counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


@dataclass
class _Scaled:
    frame: TimeSeriesFrame
    spec: DatasetSpec
    rows: dict[str, tuple[int, int]]
    scaler: StandardScaler
    series: torch.Tensor  # (T, C) float32, standardised


def _scaled(frame: TimeSeriesFrame, spec: DatasetSpec, config: DataConfig, few_shot: float) -> _Scaled:
    rows = split_rows(
        spec, frame.num_rows, config.context_length, config.prediction_length, few_shot, source=frame.source
    )
    full_train_rows = split_rows(
        spec, frame.num_rows, config.context_length, config.prediction_length, source=frame.source
    )["train"]
    start, end = full_train_rows
    scaler = StandardScaler().fit(frame.values[start:end])  # whole training split, also in few-shot
    series = torch.from_numpy(scaler.transform(frame.values))  # (T, C)
    return _Scaled(frame, spec, rows, scaler, series)


def _windows(scaled: _Scaled, split: str, config: DataConfig) -> WindowDataset:
    start, end = scaled.rows[split]
    return WindowDataset(scaled.series[start:end], config.context_length, config.prediction_length)


def prepare_splits(config: DataConfig) -> ForecastSplits:
    """Train/val/test window datasets of ``config.dataset`` under the benchmark protocol."""
    frame, spec = load_dataset(config.dataset, config.data_dir)
    source = _scaled(frame, spec, config, config.few_shot_percent)
    test_source = source
    if config.zero_shot_target is not None:
        target_frame, target_spec = load_dataset(config.zero_shot_target, config.data_dir)
        if target_frame.num_channels != frame.num_channels:
            raise DataError(
                f"zero-shot from {spec.name} ({frame.num_channels} variables) to {target_spec.name} "
                f"({target_frame.num_channels} variables): both datasets need the same number of variables"
            )
        test_source = _scaled(target_frame, target_spec, config, 100.0)
    test_start, test_end = test_source.rows["test"]
    return ForecastSplits(
        train=_windows(source, "train", config),
        val=_windows(source, "val", config),
        test=_windows(test_source, "test", config),
        scaler=source.scaler,
        columns=list(frame.columns),
        spec=spec,
        frame=frame,
        test_timestamps=test_source.frame.timestamps[test_start:test_end],
        test_scaler=test_source.scaler,
        test_spec=test_source.spec,
        row_ranges={
            "train": source.rows["train"],
            "val": source.rows["val"],
            "test": test_source.rows["test"],
        },
    )
