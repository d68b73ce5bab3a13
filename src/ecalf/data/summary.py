"""What ``ecalf data info`` and ``ecalf data list`` print: a dataset's shape, dates and window counts."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ecalf.data.loading import load_dataset
from ecalf.data.specs import DATASETS, SPLIT_NAMES, DatasetSpec, split_rows, window_count


@dataclass(frozen=True)
class DatasetSummary:
    spec: DatasetSpec
    source: str
    rows: int
    columns: list[str]
    start: str
    end: str
    context_length: int
    prediction_length: int
    few_shot_percent: float
    row_ranges: dict[str, tuple[int, int]]
    """[start, end) rows per split, val/test including their look-back, few-shot applied."""

    @property
    def window_counts(self) -> dict[str, int]:
        return {
            split: window_count(end - start, self.context_length, self.prediction_length)
            for split, (start, end) in self.row_ranges.items()
        }

    def lines(self) -> list[str]:
        shown = ", ".join(self.columns[:8]) + (", ..." if len(self.columns) > 8 else "")
        ranges = "  ".join(f"{split} [{a}, {b})" for split, (a, b) in self.row_ranges.items())
        out = [
            f"dataset    {self.spec.name} ({self.source})",
            f"rows       {self.rows}",
            f"channels   {len(self.columns)} ({shown}; target {self.spec.target})",
            f"dates      {self.start} .. {self.end}",
            f"frequency  {self.spec.frequency}",
            f"split      {self.spec.split}: rows {ranges}",
            f"windows    context {self.context_length}, prediction {self.prediction_length}"
            + (f", few-shot {self.few_shot_percent:g}% of training" if self.few_shot_percent < 100 else ""),
        ]
        out += [f"{split} {self.window_counts[split]}" for split in SPLIT_NAMES]
        return out


def describe_dataset(
    dataset: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    context_length: int = 96,
    prediction_length: int = 96,
    few_shot_percent: float = 100.0,
) -> DatasetSummary:
    """Load ``dataset`` (name or CSV path) and compute its split rows and window counts."""
    frame, spec = load_dataset(dataset, data_dir)
    rows = split_rows(
        spec, frame.num_rows, context_length, prediction_length, few_shot_percent, source=frame.source
    )
    return DatasetSummary(
        spec=spec,
        source=frame.source,
        rows=frame.num_rows,
        columns=list(frame.columns),
        start=str(frame.timestamps[0]),
        end=str(frame.timestamps[-1]),
        context_length=context_length,
        prediction_length=prediction_length,
        few_shot_percent=few_shot_percent,
        row_ranges=rows,
    )


def registry_table() -> list[str]:
    """The registry as aligned text lines (``ecalf data list``)."""
    header = ("name", "file", "freq", "split", "target", "channels", "rows", "download")
    rows = [header] + [
        (
            s.name,
            s.file_name,
            s.frequency,
            s.split,
            s.target,
            str(s.num_channels or "any"),
            str(s.num_rows or "-"),
            "ecalf data download" if s.url else "by hand (see docs/data.md)",
        )
        for s in DATASETS.values()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
