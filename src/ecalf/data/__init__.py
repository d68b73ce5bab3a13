"""The data layer: dataset registry, CSV loading + validation, scaling, windows, the benchmark splits.

See docs/data.md for the registry, split rules, few-shot / zero-shot rules and validation errors.
"""

from ecalf.data.download import download_dataset
from ecalf.data.loading import TimeSeriesFrame, frame_from_dataframe, infer_frequency, load_dataset, read_csv
from ecalf.data.scaling import StandardScaler
from ecalf.data.specs import (
    DATASETS,
    DatasetSpec,
    few_shot_end,
    get_spec,
    minimum_rows,
    resolve_data_dir,
    split_borders,
    split_rows,
    window_count,
)
from ecalf.data.splits import ForecastSplits, prepare_splits
from ecalf.data.summary import DatasetSummary, describe_dataset, registry_table
from ecalf.data.synthetic import make_synthetic, write_synthetic_csv
from ecalf.data.windows import WindowDataset

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "DatasetSummary",
    "ForecastSplits",
    "StandardScaler",
    "TimeSeriesFrame",
    "WindowDataset",
    "describe_dataset",
    "download_dataset",
    "few_shot_end",
    "frame_from_dataframe",
    "get_spec",
    "infer_frequency",
    "load_dataset",
    "make_synthetic",
    "minimum_rows",
    "prepare_splits",
    "read_csv",
    "registry_table",
    "resolve_data_dir",
    "split_borders",
    "split_rows",
    "window_count",
    "write_synthetic_csv",
]
