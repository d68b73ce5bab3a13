"""Training survives SIGKILL at random moments: resumed runs end with an uninterrupted run's metrics."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecalf.cli import main
from ecalf.config_files import load_run_config
from ecalf.data import write_synthetic_csv
from ecalf.run import run_experiment

ROOT = Path(__file__).resolve().parents[1]


def _overrides(csv: Path, epochs: int) -> list[str]:
    return [
        f"data.dataset={csv}", "data.context_length=48", "data.prediction_length=12",
        "data.few_shot_percent=100", f"training.epochs={epochs}", f"training.patience={epochs}",
        "training.num_threads=1", "training.progress=false",
    ]  # fmt: skip


def _command(run_dir: Path, csv: Path, epochs: int, resume: bool) -> list[str]:
    base = [sys.executable, "-m", "ecalf", "train", "--quiet"]
    if resume:
        return [*base, "--resume", str(run_dir)]
    sets = [arg for item in _overrides(csv, epochs) for arg in ("--set", item)]
    return [*base, "--config", "configs/tiny/ecalf.yaml", "--output-dir", str(run_dir), *sets]


def _killed_in_epoch(monkeypatch, config, run_dir: Path, epoch: int) -> None:
    """Train ``config`` into ``run_dir`` and interrupt it in ``epoch``'s validation, as a kill would."""
    import ecalf.training as training

    original = training.evaluate
    calls = {"n": 0}

    def failing_evaluate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == epoch:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", failing_evaluate)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, run_dir, echo=None)
    monkeypatch.setattr(training, "evaluate", original)


def _test_metrics(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"test": metrics["test"], "best_epoch": metrics["best_epoch"], "epochs": metrics["epochs_run"],
            "val": [round(r["val_mse"], 12) for r in metrics["history"]]}  # fmt: skip


@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    ("epochs", "later_kills", "seed"),
    [(8, 4, 2021), pytest.param(16, 12, 7, marks=pytest.mark.slow, id="long")],
)
def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(tmp_path, epochs, later_kills, seed):
    """Default run: 5 kills; the marked long run (`-m slow`): 13 kills over 16 epochs."""
    csv = write_synthetic_csv(tmp_path / "toy.csv", num_rows=1000, num_channels=3, seed=11)
    reference = tmp_path / "reference"
    started = time.perf_counter()
    subprocess.run(_command(reference, csv, epochs, resume=False), cwd=ROOT, check=True, timeout=300)
    duration = time.perf_counter() - started

    rng = random.Random(seed)
    killed = tmp_path / "killed"
    pointer = killed / "state" / "latest.json"
    epoch_seconds = duration / epochs
    kills = 0
    # Kill once during start-up, then after random epochs, a random moment later
    # (mid-epoch, during validation, or while a checkpoint is being written).
    for target in [0, *sorted(rng.sample(range(1, epochs - 1), later_kills))]:
        resume = (killed / "config.yaml").is_file()
        process = subprocess.Popen(_command(killed, csv, epochs, resume), cwd=ROOT)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            done = json.loads(pointer.read_text())["loop"]["epoch"] if pointer.is_file() else 0
            if done >= target:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, epoch_seconds))
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    while not (killed / "metrics.json").is_file():
        subprocess.run(_command(killed, csv, epochs, resume=True), cwd=ROOT, check=True, timeout=300)
    assert kills == 1 + later_kills >= 5
    assert _test_metrics(killed) == _test_metrics(reference)
    assert not (killed / "state").exists()  # training state is removed once the run is complete


def test_resume_in_process_after_interrupted_epoch(tmp_path, monkeypatch):
    """An exception mid-epoch (like a kill) loses only that epoch; resuming gives identical results."""
    csv = write_synthetic_csv(tmp_path / "toy.csv", num_rows=800, num_channels=2, seed=5)
    config = load_run_config(ROOT / "configs/tiny/calf.yaml", _overrides(csv, 4))
    reference = run_experiment(config, tmp_path / "reference", echo=None).metrics.to_json()

    _killed_in_epoch(monkeypatch, config, tmp_path / "run", 3)
    latest = tmp_path / "run" / "state" / "latest.json"
    state = json.loads(latest.read_text())
    assert state["loop"]["epoch"] == 2
    state["loop"]["train_seconds"] += 3600.0  # as if the first process had taken an hour longer
    latest.write_text(json.dumps(state))
    with pytest.raises(Exception, match="already holds a run"):
        run_experiment(config, tmp_path / "run", echo=None)
    assert main(["train", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    resumed = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # wall time covers the whole run, the epochs of the process before the resume included
    assert resumed["train_seconds"] > 3600.0 and resumed["wall_seconds"] > resumed["train_seconds"]
    assert resumed["test"] == reference["test"]
    assert [r["val_mse"] for r in resumed["history"]] == [r["val_mse"] for r in reference["history"]]


def test_a_run_started_by_older_code_is_not_continued(tmp_path, monkeypatch):
    """A checkpoint whose config.yaml lacks a setting this code has (older code wrote it) trained without
    that setting: continuing it would mix two versions' epochs in one result, so resume refuses."""
    import yaml

    csv = write_synthetic_csv(tmp_path / "toy.csv", num_rows=800, num_channels=2, seed=5)
    config = load_run_config(ROOT / "configs/tiny/calf.yaml", _overrides(csv, 3))
    _killed_in_epoch(monkeypatch, config, tmp_path / "run", 2)  # after the first epoch's checkpoint
    saved_path = tmp_path / "run" / "config.yaml"
    saved = yaml.safe_load(saved_path.read_text())
    saved["model"].pop("degree_min")  # as the code before the bound on the alignment degree wrote it
    saved_path.write_text(yaml.safe_dump(saved))
    with pytest.raises(Exception, match=r"older ecalf that had no setting model\.degree_min"):
        run_experiment(config, tmp_path / "run", echo=None, resume=True)
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert "code: ecalf" in (tmp_path / "run" / "train.log").read_text()  # each process names its commit
