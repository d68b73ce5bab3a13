"""Tracking: every loss part, validation metric and adapted value per epoch, in JSON lines and TensorBoard."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import ecalf.run
from ecalf.config import RunConfig
from ecalf.config_files import run_config_from_dict
from ecalf.data import write_synthetic_csv
from ecalf.errors import EcalfError
from ecalf.registry import get_entry
from ecalf.run import resume_run, run_experiment
from ecalf.tracking import epoch_scalars, open_tracker, read_jsonl


@pytest.fixture(scope="module")
def csv(tmp_path_factory) -> Path:
    return write_synthetic_csv(tmp_path_factory.mktemp("tracking") / "toy.csv", 200, 2, seed=6)


def _config(csv: Path, model: str, tracking: str, epochs: int = 2) -> RunConfig:
    return run_config_from_dict(
        {
            "data": {"dataset": str(csv), "context_length": 24, "prediction_length": 8},
            "model": {"name": model, **get_entry(model).tiny_options},
            "training": {"epochs": epochs, "patience": epochs, "batch_size": 64, "progress": False,
                         "tracking": tracking},
        }
    )  # fmt: skip


def _events(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every scalar event TensorBoard shows, per tag, in order."""
    accumulator = EventAccumulator(str(directory))
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def _scalars(directory: Path) -> dict[str, dict[int, float]]:
    return {tag: dict(events) for tag, events in _events(directory).items()}


@pytest.fixture(scope="module")
def ecalf_run(csv, tmp_path_factory) -> Path:
    """Tiny Enhanced CALF, 2 epochs, TensorBoard tracking: loss parts and adapted values to track."""
    run_dir = tmp_path_factory.mktemp("ecalf_run") / "run"
    return run_experiment(_config(csv, "ecalf", "tensorboard"), run_dir, echo=None).run_dir


def test_tensorboard_event_files_hold_every_loss_part_metric_and_adapted_value_per_epoch(ecalf_run):
    history = json.loads((ecalf_run / "metrics.json").read_text())["history"]
    assert len(history) == 2
    expected_tags = {"train/loss", "val/mse", "val/mae", "lr", "throughput/windows_per_second"}
    expected_tags |= {f"train/{name}" for name in ("task", "output", "feature", "contrastive")}
    expected_tags |= {f"values/{name}" for name in history[0]["values"]}
    assert {"values/temperature", "values/alignment_score"} <= expected_tags

    events = _events(ecalf_run / "tensorboard")
    assert expected_tags <= set(events)
    assert all([step for step, _ in events[tag]] == [1, 2] for tag in expected_tags)  # once per epoch
    scalars = _scalars(ecalf_run / "tensorboard")
    for record in history:
        for tag, value in epoch_scalars(record).items():
            assert scalars[tag][record["epoch"]] == pytest.approx(value, rel=1e-6), tag
    metrics = json.loads((ecalf_run / "metrics.json").read_text())
    assert scalars["final/test/mse"][2] == pytest.approx(metrics["test"]["mse"], rel=1e-6)
    assert scalars["final/naive_test/mae"][2] == pytest.approx(metrics["naive_test"]["mae"], rel=1e-6)


def test_jsonl_has_one_row_per_epoch_and_a_final_row(ecalf_run):
    rows = read_jsonl(ecalf_run / "metrics.jsonl")
    history = json.loads((ecalf_run / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in rows[:-1]] == [1, 2]
    for row, record in zip(rows[:-1], history, strict=True):
        assert {k: row[k] for k in epoch_scalars(record)} == pytest.approx(epoch_scalars(record))
    assert rows[-1]["final"] is True and "test/mse" in rows[-1]


def test_missing_tensorboard_package_stops_the_run_before_it_starts(csv, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now raises ImportError
    with pytest.raises(EcalfError, match=r"pip install 'ecalf\[tracking\]'"):
        run_experiment(_config(csv, "dlinear", "tensorboard"), tmp_path / "run", echo=None)
    assert not (tmp_path / "run").exists()
    with pytest.raises(EcalfError, match="unknown tracking 'wandb'"):
        open_tracker("wandb", tmp_path)


def test_tracking_none_writes_nothing_and_jsonl_writes_no_event_files(csv, tmp_path):
    none = run_experiment(_config(csv, "dlinear", "none", epochs=1), tmp_path / "none", echo=None).run_dir
    assert not (none / "metrics.jsonl").exists() and not (none / "tensorboard").exists()
    jsonl = run_experiment(_config(csv, "dlinear", "jsonl", epochs=1), tmp_path / "jsonl", echo=None).run_dir
    assert len(read_jsonl(jsonl / "metrics.jsonl")) == 2 and not (jsonl / "tensorboard").exists()


def test_a_resumed_run_appends_to_its_tracking(csv, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after training, before the test evaluation

    with monkeypatch.context() as patch:
        patch.setattr(ecalf.run, "evaluate", killed)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(_config(csv, "dlinear", "tensorboard"), run_dir, echo=None)
    assert [row["epoch"] for row in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]
    resume_run(run_dir, echo=None)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [row.get("epoch") for row in rows] == [1, 2, None] and rows[-1]["final"] is True
    events = _events(run_dir / "tensorboard")
    assert [step for step, _ in events["val/mse"]] == [1, 2]
    assert [step for step, _ in events["final/test/mse"]] == [2]


def test_tensorboard_hides_epochs_that_a_resumed_run_writes_again(tmp_path):
    record = {"epoch": 1, "train_loss": 1.0, "val_mse": 0.5, "val_mae": 0.4, "learning_rate": 1e-3}
    first = open_tracker("tensorboard", tmp_path)
    for epoch in (1, 2, 3):
        first.log_epoch({**record, "epoch": epoch})
    first.close()  # killed after epoch 3 was tracked but before its checkpoint: resume redoes epoch 3
    second = open_tracker("tensorboard", tmp_path, append=True)
    second.log_epoch({**record, "epoch": 3, "val_mse": 0.25})
    second.close()
    assert _events(tmp_path / "tensorboard")["val/mse"] == [(1, 0.5), (2, 0.5), (3, 0.25)]
    assert [row["epoch"] for row in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 3]
