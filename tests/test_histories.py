"""Per-epoch histories of a results CSV in one table (``ecalf report --histories``); run dirs are made up."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from ecalf.benchmark import RESULT_COLUMNS
from ecalf.cli import main
from ecalf.errors import EcalfError
from ecalf.histories import collect_histories, flatten_epoch, write_histories


def _epoch(epoch: int, val_mse: float, values: dict[str, float] | None = None) -> dict:
    return {
        "epoch": epoch, "train_loss": 1.0 / epoch, "loss_parts": {"task": 0.5 / epoch, "output": 0.1},
        "val_mse": val_mse, "val_mae": val_mse / 2, "learning_rate": 1e-3, "windows_per_second": 50.0,
        "seconds": 3.0, "steps": 10, "values": values or {},
    }  # fmt: skip


def _run(root: Path, name: str, history: list[dict]) -> str:
    run_dir = root / "runs" / name
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"test": {"mse": 0.5}, "history": history}))
    return f"runs/{name}"  # relative, as the benchmark writes it


def _results(root: Path, rows: list[dict]) -> Path:
    path = root / "grid.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(RESULT_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _row(model: str, run_dir: str, epochs: int, seed: int = 2021) -> dict:
    return {"model": model, "dataset": "ETTh1", "target": "", "setting": "few_shot", "horizon": 96,
            "seed": seed, "mse": 0.5, "mae": 0.4, "epochs": epochs, "run_dir": run_dir}  # fmt: skip


def test_an_epoch_flattens_to_named_columns():
    row = flatten_epoch(_epoch(2, 0.7, {"alignment_score": 0.9}))
    assert row["epoch"] == 2 and row["val_mse"] == 0.7 and row["steps"] == 10
    assert row["loss/task"] == 0.25 and row["loss/output"] == 0.1 and row["values/alignment_score"] == 0.9
    assert "loss_parts" not in row and "values" not in row


def test_histories_list_every_epoch_of_every_matching_row(tmp_path):
    adapted = [_epoch(1, 0.8, {"alignment_score": 0.7}), _epoch(2, 0.6, {"alignment_score": 0.9})]
    ecalf = _run(tmp_path, "ecalf", adapted)
    calf = _run(tmp_path, "calf", [_epoch(1, 0.9), _epoch(2, 0.85), _epoch(3, 0.8)])
    stale = _run(tmp_path, "stale", [_epoch(1, 0.9)])  # overwritten by a shorter run after its row
    rows = [
        _row("ecalf", ecalf, 2), _row("calf", calf, 3), _row("calf", stale, 4, seed=2022),
        _row("calf", "runs/gone", 2, seed=2023), _row("naive", "runs/naive-elsewhere", 0),
        _row("calf", _run(tmp_path, "broken", []), 1, seed=2024),
    ]  # fmt: skip
    (tmp_path / "runs" / "broken" / "metrics.json").write_text("{not json")  # damaged: named, not fatal
    found = collect_histories([{k: str(v) for k, v in r.items()} for r in rows], root=tmp_path)
    table = found.table
    assert len(table) == 5 and list(table.columns[:8]) == [
        "model", "dataset", "target", "setting", "horizon", "seed", "run_dir", "epoch"
    ]  # fmt: skip
    assert list(table[table["model"] == "calf"]["val_mse"]) == [0.9, 0.85, 0.8]
    assert list(table[table["model"] == "ecalf"]["values/alignment_score"]) == [0.7, 0.9]
    assert table[table["model"] == "calf"]["values/alignment_score"].isna().all()
    assert found.left_out[:2] == [
        ("runs/stale", "1 epochs in metrics.json, 4 in the results row"),
        ("runs/gone", "run directory not found here"),
    ]
    assert len(found.left_out) == 3 and found.left_out[2][0] == "runs/broken"
    assert found.left_out[2][1].startswith("unreadable: ") and found.missing == {"runs/gone"}


def test_write_histories_beside_the_csv_and_from_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # run dirs are read relative to where the report runs
    results = _results(tmp_path, [_row("calf", _run(tmp_path, "calf", [_epoch(1, 0.9), _epoch(2, 0.8)]), 2)])
    path, left_out = write_histories(results)
    assert path == tmp_path / "grid_histories.csv" and left_out == []
    assert list(pd.read_csv(path)["val_mse"]) == [0.9, 0.8]
    path.unlink()
    assert main(["report", str(results), "--histories", "--output-dir", str(tmp_path / "out")]) == 0
    assert str(tmp_path / "out" / "grid_histories.csv") in capsys.readouterr().out
    assert not path.exists() and (tmp_path / "out" / "grid.md").is_file()


def test_no_history_at_all_says_where_the_run_dirs_were_looked_for(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    results = _results(tmp_path, [_row("calf", _run(tmp_path, "calf", [_epoch(1, 0.9)]), 1)])
    with pytest.raises(EcalfError, match=r"read relative to .*elsewhere; run the report from the directory"):
        write_histories(results)


def test_a_rewrite_keeps_the_epochs_of_runs_whose_directories_are_gone(tmp_path, monkeypatch):
    """A results file carried to another machine: its old rows' run dirs are not there, only the new
    runs'. Written again, the table keeps the old runs' epochs from the earlier file."""
    import shutil

    monkeypatch.chdir(tmp_path)
    old = _run(tmp_path, "old", [_epoch(1, 0.9), _epoch(2, 0.8)])
    results = _results(tmp_path, [_row("calf", old, 2)])
    write_histories(results)
    shutil.rmtree(tmp_path / old)  # the run directory stayed behind on the first machine
    new = _run(tmp_path, "new", [_epoch(1, 0.7)])
    results = _results(tmp_path, [_row("calf", old, 2), _row("ecalf", new, 1, seed=2022)])
    path, left_out = write_histories(results)
    table = pd.read_csv(path)
    assert left_out == [] and list(table["run_dir"]) == [old, old, new]  # in the results file's order
    assert list(table["val_mse"]) == [0.9, 0.8, 0.7]
    (tmp_path / "grid_histories.csv").unlink()  # without the earlier file the old run is named as gone
    assert write_histories(results)[1] == [(old, "run directory not found here")]
    (tmp_path / old).mkdir()  # a run that started but has not finished: its directory, no metrics.json
    assert write_histories(results)[1] == [
        (old, "no finished run's metrics in its run directory (the run has not finished)")
    ]
