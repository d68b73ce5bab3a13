"""Shared fixtures: synthetic benchmark-shaped files and the (optional) real benchmark CSVs."""

from __future__ import annotations

import os

# Tests use tiny models: one thread is fastest for them, and keeps them fast on a loaded machine
# (set before torch is imported, so child processes of the fault-injection tests inherit it too).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from ecalf.config import RunConfig  # noqa: E402
from ecalf.config_files import load_run_config  # noqa: E402
from ecalf.data import DATASETS, write_synthetic_csv  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_csv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with a synthetic file for every registered dataset, at the real shape.

    Rows and channels are the public files' (``spec.num_rows`` x ``spec.num_channels``); wide files are
    written with integer values, which write and parse fastest. Same-shaped files are copies.
    """
    directory = tmp_path_factory.mktemp("synthetic_datasets")
    written: dict[tuple[int | None, int | None, str], Path] = {}
    for spec in DATASETS.values():
        assert spec.num_rows is not None and spec.num_channels is not None
        key = (spec.num_rows, spec.num_channels, spec.frequency)
        target = directory / spec.file_name
        if key in written:
            shutil.copyfile(written[key], target)
            continue
        decimals = 0 if spec.num_channels > 50 else 2
        written[key] = write_synthetic_csv(
            target, spec.num_rows, spec.num_channels, seed=7, frequency=spec.frequency, decimals=decimals
        )
    return directory


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """``$ECALF_DATA_DIR`` when it is set and exists; the test is skipped otherwise."""
    value = os.environ.get("ECALF_DATA_DIR", "")
    if not value or not Path(value).is_dir():
        pytest.skip("real benchmark data: set ECALF_DATA_DIR to the directory of the benchmark CSVs")
    return Path(value)


@pytest.fixture()
def no_data_dir_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset ``$ECALF_DATA_DIR`` so that data-directory resolution starts from a known state."""
    monkeypatch.delenv("ECALF_DATA_DIR", raising=False)


@pytest.fixture()
def synthetic_csv(tmp_path: Path) -> Path:
    """A small synthetic CSV (1200 hourly rows, 3 channels) for end-to-end runs of tiny models."""
    return write_synthetic_csv(tmp_path / "toy.csv", num_rows=1200, num_channels=3, seed=3)


@pytest.fixture()
def tiny_run_config(synthetic_csv: Path):
    """``make(config_file, *overrides)``: that config on ``synthetic_csv``, L 48, H 12, every training
    window, no progress bars."""

    def make(path: str, *extra: str) -> RunConfig:
        return load_run_config(
            path,
            [
                f"data.dataset={synthetic_csv}",
                "data.context_length=48",
                "data.prediction_length=12",
                "data.few_shot_percent=100",
                "training.progress=false",
                *extra,
            ],
        )

    return make
