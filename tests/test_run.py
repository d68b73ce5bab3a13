"""End to end: train -> run directory -> evaluate, on synthetic data and tiny models."""

import json
import os
import subprocess
import time
from pathlib import Path

from ecalf.cli import main
from ecalf.run import evaluate_run, git_commit, run_experiment

TINY_CALF = "configs/tiny/calf.yaml"


def test_tiny_calf_learns_and_beats_the_naive_forecast(tmp_path, tiny_run_config):
    config = tiny_run_config(TINY_CALF, "training.epochs=6", "training.learning_rate=2e-3")
    result = run_experiment(config, tmp_path / "run", echo=None)
    metrics = result.metrics
    history = metrics.history
    assert history[-1].train_loss < history[0].train_loss
    assert metrics.test.mse < metrics.naive_test.mse
    for name in ("config.yaml", "metrics.json", "train.log", "model.safetensors"):
        assert (result.run_dir / name).is_file(), name
    assert metrics.windows["test"] == metrics.test.windows
    assert set(history[0].loss_parts) == {"task", "output", "feature"}


def test_evaluate_reproduces_logged_test_metrics_exactly(tmp_path, tiny_run_config, capsys):
    config = tiny_run_config(TINY_CALF, "training.epochs=2")
    result = run_experiment(config, tmp_path / "run", echo=None)
    _, metrics = evaluate_run(result.run_dir)
    logged = json.loads((result.run_dir / "metrics.json").read_text())["test"]
    assert metrics.mse == logged["mse"]
    assert metrics.mae == logged["mae"]
    assert main(["evaluate", str(result.run_dir)]) == 0
    assert f"{logged['mse']:.6f}" in capsys.readouterr().out
    # The int8 CPU copy: another number, close to the float one (docs/speed.md measures real runs).
    _, int8 = evaluate_run(result.run_dir, int8=True)
    assert int8.mse != logged["mse"] and abs(int8.mse - logged["mse"]) < 0.05 * logged["mse"]
    assert main(["evaluate", str(result.run_dir), "--int8", "--quiet"]) == 0
    assert f"test mse {int8.mse:.6f}" in capsys.readouterr().out


def test_cli_train_with_overrides(tmp_path, synthetic_csv, capsys):
    code = main(
        [
            "train", "--config", TINY_CALF, "--output-dir", str(tmp_path / "cli"), "--quiet",
            "--set", f"data.dataset={synthetic_csv}", "--set", "data.context_length=48",
            "--set", "data.prediction_length=12", "--set", "training.epochs=1",
        ]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "test mse" in out and "naive mse" in out


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    code = main(["train", "--config", TINY_CALF, "--set", "training.epohcs=1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "training.epohcs" in err and "Traceback" not in err


def test_evaluate_rejects_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_quickstart_is_idempotent_and_resumes(tmp_path, synthetic_csv, capsys, monkeypatch):
    config = tmp_path / "quick.yaml"
    text = Path(TINY_CALF).read_text().replace("dataset: ETTh1", f"dataset: {synthetic_csv}")
    config.write_text(text.replace("few_shot_percent: 10", "few_shot_percent: 100"))
    out = tmp_path / "quick"
    assert main(["quickstart", "--config", str(config), "--output-dir", str(out), "--quiet"]) == 0
    first = capsys.readouterr().out
    assert "test mse" in first and "naive mse" in first
    mtime = (out / "metrics.json").stat().st_mtime_ns
    assert main(["quickstart", "--config", str(config), "--output-dir", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == first.splitlines()[-1]  # reported, not retrained
    assert (out / "metrics.json").stat().st_mtime_ns == mtime
    monkeypatch.chdir(tmp_path)
    assert main(["quickstart", "--output-dir", str(out)]) == 2  # no configs/quickstart.yaml here
    assert "repository root" in capsys.readouterr().err


def test_quiet_silences_the_libraries_bars_for_the_command_only(tmp_path, monkeypatch, capsys):
    import os

    import ecalf.run
    from ecalf.evaluation import Metrics

    seen = {}

    def fake_evaluate_run(run_dir, progress, int8=False, target=None):
        seen.update(
            progress=progress,
            **{k: os.environ.get(k) for k in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")},
        )
        return None, Metrics(mse=1.0, mae=1.0, windows=1)

    monkeypatch.setattr(ecalf.run, "evaluate_run", fake_evaluate_run)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert main(["evaluate", str(tmp_path), "--quiet"]) == 0
    assert seen == {"progress": False, "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    assert "TQDM_DISABLE" not in os.environ  # restored after the command
    assert main(["evaluate", str(tmp_path)]) == 0
    assert seen["progress"] is True and seen["TQDM_DISABLE"] is None


def test_git_commit_names_the_checkout_and_says_when_its_code_is_uncommitted(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(tmp_path)]
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "code.py").write_text("x = 1\n")
    (tmp_path / "results.csv").write_text("a\n")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert git_commit(package) == head
    (package / "new.py").write_text("")  # untracked: not the code that ran
    (tmp_path / "results.csv").write_text("a\nb\n")  # outside the package (a benchmark appending rows)
    assert git_commit(package) == head
    (package / "code.py").write_text("x = 2\n")
    assert git_commit(package) == f"{head}-dirty"
    assert git_commit(tmp_path / "pkg" / "..") == f"{head}-dirty"
    assert git_commit(tmp_path.parent / "not-a-checkout-at-all") is None
    (tmp_path / "venv" / "ecalf").mkdir(parents=True)  # installed inside a checkout, not tracked
    (tmp_path / "venv" / "ecalf" / "run.py").write_text("")
    assert git_commit(tmp_path / "venv" / "ecalf") is None


def test_a_run_reads_its_commit_once_and_logs_and_records_the_same(tmp_path, tiny_run_config, monkeypatch):
    """The commit is read when the run starts (the code this process imported): an edit during a long run
    must not make train.log and metrics.json disagree, nor cost a second ``git status``."""
    import ecalf.run

    answers = iter(["a" * 40, "b" * 40 + "-dirty"])
    monkeypatch.setattr(ecalf.run, "git_commit", lambda directory=None: next(answers))
    result = run_experiment(tiny_run_config(TINY_CALF, "training.epochs=1"), tmp_path / "run", echo=None)
    assert f"commit {'a' * 40}" in (result.run_dir / "train.log").read_text()
    assert result.metrics.environment["git_commit"] == "a" * 40
    assert next(answers) == "b" * 40 + "-dirty"  # not consumed: one reading for both


def test_progress_bars_train_without_torch_warnings(tmp_path, tiny_run_config, monkeypatch):
    """The bar's loss postfix reads a detached value: a user watching `ecalf train` sees no torch
    warning about converting a tensor that requires grad."""
    import warnings

    import ecalf.training

    monkeypatch.setattr(ecalf.training, "POSTFIX_SECONDS", 0.0)  # a postfix at every step
    monkeypatch.setattr(ecalf.training, "live_display", lambda: True)  # pytest's stderr is no terminal
    config = tiny_run_config(TINY_CALF, "training.epochs=1", "training.progress=true")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_experiment(config, tmp_path / "run", echo=None)
    assert [str(w.message) for w in caught if "requires_grad" in str(w.message)] == []


def test_batch_bars_only_where_they_redraw_in_place(tmp_path, tiny_run_config, monkeypatch, capsys):
    """Into a log file or pipe a per-batch bar writes a line of escapes per update: there only the
    run's bar (one update per epoch) is drawn; a terminal or notebook gets both."""
    import ecalf.training

    config = tiny_run_config(TINY_CALF, "training.epochs=1", "training.progress=true")
    run_experiment(config, tmp_path / "log", echo=None)
    err = capsys.readouterr().err
    assert "training:" in err and "epoch 1:" not in err
    monkeypatch.setattr(ecalf.training, "live_display", lambda: True)
    run_experiment(config, tmp_path / "terminal", echo=None)
    err = capsys.readouterr().err
    assert "training:" in err and "epoch 1:" in err


def test_cli_train_prints_the_test_metrics_once(tmp_path, synthetic_csv, capsys):
    args = [
        "train", "--config", TINY_CALF, "--output-dir", str(tmp_path / "run"),
        "--set", f"data.dataset={synthetic_csv}", "--set", "data.context_length=48",
        "--set", "data.prediction_length=12", "--set", "training.epochs=1",
        "--set", "training.progress=false",
    ]  # fmt: skip
    assert main(args) == 0  # the echoed log has the test line; the summary adds the directory
    out = capsys.readouterr().out
    assert out.count("test mse") == 1 and "naive mse" in out and f"run directory: {tmp_path / 'run'}" in out
    assert main([*args[:3], "--output-dir", str(tmp_path / "quiet"), *args[5:], "--quiet"]) == 0
    quiet = capsys.readouterr().out
    assert quiet.count("test mse") == 1 and "naive mse" in quiet and "epoch" not in quiet


def test_cli_output_into_a_file_or_pipe_comes_line_by_line(tmp_path):
    """`ecalf benchmark ... > log` with `tail -f log`: each line is written when printed, not held back
    in Python's block buffer until the job ends."""
    import sys

    script = (
        "import sys, time\n"
        "from ecalf.cli import main\n"
        "code = main(['list-models'])\n"
        "time.sleep(30)\n"  # still running: what the file holds now was written line by line
    )
    log = tmp_path / "log.txt"
    with open(log, "w") as out:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        worker = subprocess.Popen([sys.executable, "-c", script], stdout=out, env=env)
        try:
            deadline = time.monotonic() + 25
            while "naive" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "naive" in log.read_text()
        finally:
            worker.kill()
            worker.wait()


def test_run_metrics_read_what_earlier_versions_wrote(tmp_path):
    """metrics.json as ecalf wrote it before RunMetrics (same keys, plus any a later version adds) reads
    into the typed record; one that lacks a finished run's entries is a clear CheckpointError."""
    import json

    import pytest

    from ecalf.errors import CheckpointError
    from ecalf.run_dir import RunDirectory

    written = {
        "model": "dlinear", "dataset": "ETTh1", "prediction_length": 96, "few_shot_percent": 10.0,
        "seed": 2021, "test": {"mse": 0.46, "mae": 0.47, "windows": 2785},
        "naive_test": {"mse": 1.29, "mae": 0.71, "windows": 2785},
        "windows": {"train": 759, "val": 2785, "test": 2785}, "best_epoch": 3, "best_val_mse": 0.8,
        "epochs_run": 6, "steps": 144, "stopped": "early_stopping", "train_seconds": 4.0,
        "wall_seconds": 4.6, "train_windows_per_second": 3184.4, "peak_memory_mb": 428.3,
        "parameters": {"trainable": 18624, "total": 18624},
        "history": [{"epoch": 1, "train_loss": 0.5, "loss_parts": {"mse": 0.5}, "val_mse": 0.9,
                     "val_mae": 0.6, "learning_rate": 5e-3, "windows_per_second": 3000.0,
                     "seconds": 0.7, "steps": 24, "values": {}}],
        "environment": {"git_commit": "bc572df"}, "a_key_of_a_later_version": 1,
    }  # fmt: skip
    (tmp_path / "metrics.json").write_text(json.dumps(written))
    metrics = RunDirectory(tmp_path).read_metrics()
    assert (
        metrics.test.mse == 0.46 and metrics.history[0].val_mse == 0.9 and metrics.stopped == "early_stopping"
    )
    assert metrics.to_json()["test"] == written["test"]
    del written["naive_test"]
    (tmp_path / "metrics.json").write_text(json.dumps(written))
    with pytest.raises(CheckpointError, match="not the metrics of a finished ecalf run"):
        RunDirectory(tmp_path).read_metrics()
