"""The benchmark grid: cells, resumable runs, atomic result rows, parallel jobs, the report."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

import ecalf.benchmark as benchmark
from ecalf.benchmark import (
    KEY_COLUMNS,
    RESULT_COLUMNS,
    Grid,
    GridCase,
    GridModel,
    GridSetting,
    check_grid,
    grid_cells,
    load_grid,
    read_results,
    run_benchmark,
)
from ecalf.cli import main
from ecalf.config_files import load_run_config
from ecalf.errors import ConfigError, EcalfError
from ecalf.histories import write_histories
from ecalf.report import mse_by_model_bars, per_dataset, write_report

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "benchmarks" / "smoke.yaml"


@pytest.fixture()
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Grid files name configs relative to the repository root."""
    monkeypatch.chdir(ROOT)


def _small_grid(tmp_path: Path, **changes) -> Grid:
    fields = dict(
        name="small",
        models=[
            GridModel("naive", "configs/baselines/naive.yaml"),
            GridModel("dlinear", "configs/baselines/dlinear.yaml"),
        ],
        datasets=["ETTh1"],
        settings=[GridSetting("few_shot", 5)],
        horizons=[24],
        seeds=[1, 2],
        set=["training.progress=false", "training.epochs=1", "training.eval_batch_size=1024"],
        results=str(tmp_path / "small.csv"),
        runs_dir=str(tmp_path / "runs"),
    )
    fields.update(changes)
    return Grid(**fields)  # type: ignore[arg-type]


def test_every_grid_file_loads_and_its_configs_exist(in_repo):
    for path in sorted((ROOT / "benchmarks").glob("*.yaml")):
        grid = load_grid(path)
        benchmark.check_grid(grid)
        cells = grid_cells(grid)
        assert len({c.id for c in cells}) == len(cells), path


def test_cells_cover_the_product_with_zero_shot_targets(in_repo):
    grid = load_grid(SMOKE)
    cells = grid_cells(grid)
    # 2 settings (zero-shot with one target) x 1 dataset x 2 horizons x 2 seeds x 4 models
    assert len(cells) == 2 * 2 * 2 * 4
    zero = [c for c in cells if c.setting == "zero_shot"]
    assert {c.target for c in zero} == {"ETTh2"}
    assert all(c.target == "" for c in cells if c.setting == "few_shot")
    overrides = zero[0].overrides(grid.set, "/data")
    assert "data.zero_shot_target=ETTh2" in overrides and "data.data_dir=/data" in overrides
    assert overrides[: len(grid.set)] == grid.set  # grid overrides first, then the cell's own


def test_the_smoke_grid_runs_resumes_and_reports(in_repo, synthetic_csv_dir, tmp_path):
    # Its runs under tmp_path, not the repository's runs/: a killed test run must not leave a
    # directory that the next one would find (of another data directory) and refuse.
    grid = dataclasses.replace(load_grid(SMOKE), runs_dir=str(tmp_path / "runs"))
    results = tmp_path / "smoke.csv"
    first = run_benchmark(
        grid, results=results, data_dir=str(synthetic_csv_dir), limit=5, progress=False, echo=None
    )
    assert (first.finished, first.skipped, first.failed) == (5, 0, [])
    assert len(read_results(results)) == 5
    second = run_benchmark(grid, results=results, data_dir=str(synthetic_csv_dir), progress=False, echo=None)
    assert second.skipped == 5 and second.finished == second.total - 5 and not second.failed
    rows = read_results(results)
    assert len(rows) == len(grid_cells(grid))
    assert len({tuple(r[c] for c in KEY_COLUMNS) for r in rows}) == len(rows)
    with open(results, newline="") as handle:
        assert tuple(next(csv.reader(handle))) == RESULT_COLUMNS
    for row in rows:  # provenance (protocol.md) on every row
        assert float(row["mse"]) > 0 and float(row["mae"]) > 0
        assert row["torch"] and row["config_file"] and row["overrides"] and row["finished_at"]
        assert Path(row["run_dir"], "metrics.json").is_file()
    third = run_benchmark(grid, results=results, data_dir=str(synthetic_csv_dir), progress=False, echo=None)
    assert third.finished == 0 and third.skipped == third.total

    written = write_report(results, tmp_path / "report")
    names = {p.name for p in written}
    assert names == {"smoke.md", "smoke_mse_by_model.png", "smoke_per_horizon.png"}
    text = (tmp_path / "report" / "smoke.md").read_text()
    for model in ("naive", "dlinear", "calf", "ecalf"):
        assert f"| {model} |" in text
    assert "ETTh1→ETTh2" in text
    for png in (p for p in written if p.suffix == ".png"):
        image = mpimg.imread(png)[..., :3]
        assert (image < 0.9).any(axis=-1).mean() > 0.02  # not a blank canvas
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20

    histories_csv, left_out = write_histories(results)  # every trained epoch of every row, from run dirs
    assert histories_csv == tmp_path / "smoke_histories.csv" and left_out == []
    histories = pd.read_csv(histories_csv)
    assert len(histories) == sum(int(r["epochs"]) for r in rows) > 0
    assert "naive" not in set(histories["model"])  # nothing trained, nothing to list
    ecalf_epochs = histories[histories["model"] == "ecalf"]
    assert len(ecalf_epochs) and ecalf_epochs["values/alignment_score"].notna().all()


def test_a_failing_cell_loses_only_itself_and_runs_again_next_time(
    synthetic_csv_dir, tmp_path, in_repo, monkeypatch
):
    grid = _small_grid(tmp_path)
    real = benchmark.run_cell
    calls = {"n": 0}

    def flaky(cell, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real(cell, *args, **kwargs)

    monkeypatch.setattr(benchmark.execute, "run_cell", flaky)
    summary = run_benchmark(grid, data_dir=str(synthetic_csv_dir), progress=False, echo=None)
    assert summary.finished == 3 and len(summary.failed) == 1 and "killed" in summary.failed[0][1]
    assert len(read_results(grid.results_path)) == 3
    monkeypatch.setattr(benchmark.execute, "run_cell", real)
    again = run_benchmark(grid, data_dir=str(synthetic_csv_dir), progress=False, echo=None)
    assert (again.finished, again.skipped) == (1, 3)


def test_a_result_row_is_never_half_written(tmp_path, monkeypatch):
    path = tmp_path / "r.csv"
    row = {c: "1" for c in RESULT_COLUMNS}
    benchmark.append_result(path, row)
    before = path.read_bytes()

    def broken_write(text_path, text):
        raise KeyboardInterrupt  # a kill while the new file is being written

    monkeypatch.setattr(benchmark.results, "write_text", broken_write)
    with pytest.raises(KeyboardInterrupt):
        benchmark.append_result(path, {**row, "seed": "2"})
    assert path.read_bytes() == before


def test_a_cell_s_row_is_written_once(tmp_path):
    """Another benchmark process may have written the same cell's row: the second is not appended."""
    path = tmp_path / "r.csv"
    row = {c: "1" for c in RESULT_COLUMNS}
    assert benchmark.append_result(path, {**row, "horizon": 96, "target": None})
    before = path.read_bytes()
    assert not benchmark.append_result(path, {**row, "horizon": "96", "target": "", "mse": "2"})
    assert path.read_bytes() == before


def test_benchmark_processes_sharing_a_results_file_lose_no_row(tmp_path):
    """Two processes appending at once (two `ecalf benchmark` on one grid): every row arrives."""
    path = tmp_path / "r.csv"
    script = (
        "import os, sys, time\n"
        "from ecalf.benchmark import RESULT_COLUMNS, append_result\n"
        "open(sys.argv[1] + '.ready-' + sys.argv[2], 'w').close()\n"
        "while not os.path.exists(sys.argv[1] + '.go'):\n"
        "    time.sleep(0.01)\n"
        "row = {c: '1' for c in RESULT_COLUMNS}\n"
        "for i in range(100):\n"
        "    append_result(sys.argv[1], {**row, 'model': sys.argv[2], 'seed': i})\n"
    )
    workers = [subprocess.Popen([sys.executable, "-c", script, str(path), name]) for name in "ab"]
    deadline = time.monotonic() + 60
    while not all(Path(f"{path}.ready-{n}").exists() for n in "ab") and time.monotonic() < deadline:
        time.sleep(0.05)  # both imported, then both start at once
    Path(f"{path}.go").touch()
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    rows = read_results(path)
    assert len(rows) == 200 and len({(r["model"], r["seed"]) for r in rows}) == 200


def test_parallel_jobs_give_the_same_rows_as_one_process(synthetic_csv_dir, tmp_path, in_repo):
    one = _small_grid(tmp_path, results=str(tmp_path / "one.csv"), runs_dir=str(tmp_path / "r1"))
    two = _small_grid(
        tmp_path, results=str(tmp_path / "two.csv"), runs_dir=str(tmp_path / "r2"), reuse_runs=False
    )
    run_benchmark(one, data_dir=str(synthetic_csv_dir), progress=False, echo=None)
    summary = run_benchmark(two, data_dir=str(synthetic_csv_dir), jobs=2, progress=False, echo=None)
    assert summary.finished == 4 and not summary.failed

    def metrics(path):
        return {tuple(r[c] for c in KEY_COLUMNS): (r["mse"], r["mae"]) for r in read_results(path)}

    assert metrics(tmp_path / "one.csv") == metrics(tmp_path / "two.csv")


def test_a_cell_in_a_worker_is_timed_by_its_own_run_not_its_wait(monkeypatch):
    def slow_cell(*args, **kwargs):
        time.sleep(0.05)
        return {"args": args, "kwargs": kwargs}

    monkeypatch.setattr(benchmark.cells, "run_cell", slow_cell)
    row, seconds = benchmark.timed_cell("cell", reuse_runs=False)
    assert row == {"args": ("cell",), "kwargs": {"reuse_runs": False}}
    assert 0.05 <= seconds < 5


def _zero_shot_grid(tmp_path: Path, name: str, **changes) -> Grid:
    fields = dict(
        name=name,
        models=[
            GridModel("dlinear", "configs/baselines/dlinear.yaml"),
            GridModel("calf", "configs/tiny/calf.yaml"),
        ],
        settings=[GridSetting("zero_shot", 5, targets={"ETTh1": ["ETTh2", "ETTm1"]})],
        seeds=[1],
        results=str(tmp_path / f"{name}.csv"),
        runs_dir=str(tmp_path / "runs" / name),
    )
    fields.update(changes)
    return _small_grid(tmp_path, **fields)


@pytest.fixture()
def trainings(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None, Path]]:
    """Every run_experiment call (a training) of the test: (dataset, zero-shot target, run dir)."""
    import ecalf.run as run

    calls: list[tuple[str, str | None, Path]] = []
    real = run.run_experiment

    def counting(config, output_dir=None, **kwargs):
        calls.append((config.data.dataset, config.data.zero_shot_target, Path(output_dir)))
        return real(config, output_dir, **kwargs)

    monkeypatch.setattr(run, "run_experiment", counting)
    return calls


def test_zero_shot_targets_share_one_training_that_matches_a_zero_shot_run(
    synthetic_csv_dir, tmp_path, in_repo, trainings
):
    from ecalf.run import evaluate_run, run_experiment

    grid = _zero_shot_grid(tmp_path, "zeroshot")
    planned, done = benchmark.plan_benchmark(grid, data_dir=str(synthetic_csv_dir))
    source = tmp_path / "runs/zeroshot/calf/ETTh1/few_shot/H24/seed1"
    assert done == 0 and [
        (p.cell.model, p.cell.target, p.reuses) for p in planned if p.cell.model == "calf"
    ] == [
        ("calf", "ETTh2", None),  # trains the source
        ("calf", "ETTm1", source),  # evaluates it
    ]
    assert trainings == []  # planning runs nothing
    summary = run_benchmark(grid, data_dir=str(synthetic_csv_dir), progress=False, echo=None)
    assert summary.finished == 4 and not summary.failed
    # one training per model, on the source, in the source's own cell directory; none per target
    assert sorted((d, t, p.relative_to(tmp_path / "runs/zeroshot").as_posix()) for d, t, p in trainings) == [
        ("ETTh1", None, "calf/ETTh1/few_shot/H24/seed1"),
        ("ETTh1", None, "dlinear/ETTh1/few_shot/H24/seed1"),
    ]
    rows = {(r["model"], r["target"]): r for r in read_results(grid.results_path)}
    for (model, target), row in rows.items():
        metrics = json.loads(Path(row["run_dir"], "metrics.json").read_text())
        source = tmp_path / f"runs/zeroshot/{model}/ETTh1/few_shot/H24/seed1"
        assert metrics["trained_in"] == str(source) and metrics["zero_shot_target"] == target
        assert float(row["mse"]) == metrics["test"]["mse"]
        _, again = evaluate_run(source, target=target)
        assert again.mse == pytest.approx(metrics["test"]["mse"], rel=1e-6)
    assert rows["dlinear", "ETTh2"]["mse"] != rows["dlinear", "ETTm1"]["mse"]
    # what the shared training gives is what a zero-shot run trained on its own gives
    cell = next(c for c in grid_cells(grid) if c.model == "calf" and c.target == "ETTm1")
    alone = run_experiment(
        load_run_config(cell.config_file, cell.overrides(grid.set, str(synthetic_csv_dir))),
        tmp_path / "alone",
        echo=None,
    )
    assert alone.metrics.test.mse == pytest.approx(float(rows["calf", "ETTm1"]["mse"]), rel=1e-5)
    assert alone.metrics.epochs_run == int(rows["calf", "ETTm1"]["epochs"])


def test_threads_per_cell_leave_the_caller_s_setting(synthetic_csv_dir, tmp_path, in_repo, monkeypatch):
    """`--threads N`: each cell trains with N torch threads; in-process, the caller's own setting comes
    back afterwards. With Ray, threads follow --cpus-per-cell, so --threads is refused there."""
    import torch

    seen: list[int] = []
    real = benchmark.run_cell

    def watching(*args, **kwargs):
        result = real(*args, **kwargs)
        seen.append(torch.get_num_threads())
        return result

    monkeypatch.setattr(benchmark.execute, "run_cell", watching)
    grid = _small_grid(tmp_path, models=[GridModel("naive", "configs/baselines/naive.yaml")], seeds=[1])
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    summary = run_benchmark(grid, data_dir=str(synthetic_csv_dir), threads=wanted, progress=False, echo=None)
    assert summary.finished == len(seen) > 0 and set(seen) == {wanted}
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        run_benchmark(grid, data_dir=str(synthetic_csv_dir), threads=0, progress=False, echo=None)
    with pytest.raises(ConfigError, match="--jobs and --threads are for local processes"):
        run_benchmark(grid, threads=1, scheduler=benchmark.local_scheduler(1), progress=False, echo=None)


def test_parallel_cells_of_one_source_train_it_once(synthetic_csv_dir, tmp_path, in_repo):
    # the few-shot cell and the zero-shot cell both need calf/ETTh1/few_shot/H24/seed1, at the same time
    grid = _small_grid(
        tmp_path,
        models=[GridModel("calf", "configs/tiny/calf.yaml")],
        settings=[GridSetting("few_shot", 5), GridSetting("zero_shot", 5, targets={"ETTh1": ["ETTm1"]})],
        seeds=[1],
    )
    summary = run_benchmark(grid, data_dir=str(synthetic_csv_dir), jobs=2, progress=False, echo=None)
    assert (summary.finished, summary.failed) == (2, [])
    log = (tmp_path / "runs/calf/ETTh1/few_shot/H24/seed1/train.log").read_text()
    assert log.count("data ETTh1:") == 1 and log.count("test mse") == 1  # trained once, not twice


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks")
def test_a_process_waiting_for_another_s_run_says_so(tmp_path):
    import fcntl
    import threading

    lock = tmp_path / ".seed1.lock"
    said: list[str] = []
    with benchmark.results.exclusive(lock, lambda: said.append("uncontended")):
        pass
    assert said == []  # a free lock: nothing to say
    with open(lock, "a") as held:  # another process's hold (flock: per open file, even in one process)
        fcntl.flock(held, fcntl.LOCK_EX)

        told = threading.Event()

        def take() -> None:
            with benchmark.results.exclusive(lock, lambda: (said.append("waiting"), told.set())):
                said.append("taken")

        taker = threading.Thread(target=take)
        taker.start()
        assert told.wait(timeout=10)
        assert said == ["waiting"]  # told before blocking, not through while the lock is held
        fcntl.flock(held, fcntl.LOCK_UN)
        taker.join(timeout=10)
    assert said == ["waiting", "taken"]


def test_grids_reuse_each_others_identical_runs_only(synthetic_csv_dir, tmp_path, in_repo, trainings, capsys):
    data = str(synthetic_csv_dir)
    first = _zero_shot_grid(tmp_path, "zeroshot")
    run_benchmark(first, data_dir=data, progress=False, echo=None)
    del trainings[:]
    # a few-shot grid of the same configs finds the zero-shot grid's source runs: nothing trains
    fewshot = _small_grid(tmp_path, models=first.models, seeds=[1], runs_dir=str(tmp_path / "runs/fewshot"))
    planned, _ = benchmark.plan_benchmark(fewshot, data_dir=data)
    assert all(p.reuses is not None and "zeroshot" in p.reuses.parts for p in planned)
    run_benchmark(fewshot, data_dir=data, progress=False, echo=None)
    assert trainings == []
    rows = read_results(fewshot.results_path)
    assert {Path(r["run_dir"]).parent.parent.parent.parent.parent.name for r in rows} == {"zeroshot"}
    # any difference in the config (here the epochs) trains anew; so does --no-reuse
    longer = _small_grid(
        tmp_path, name="longer", models=first.models, seeds=[1], runs_dir=str(tmp_path / "runs/longer"),
        set=[*fewshot.set, "training.epochs=2"], results=str(tmp_path / "longer.csv"),
    )  # fmt: skip
    run_benchmark(longer, data_dir=data, progress=False, echo=None)
    assert len(trainings) == 2
    del trainings[:]
    argv = ["benchmark", str(_write_grid(tmp_path, fewshot, "own")), "--quiet", "--data-dir", data,
            "--results", str(tmp_path / "own.csv"), "--models", "dlinear"]  # fmt: skip
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 to run: 0 train, 1 reuse another's run" in out and "(reuses " in out
    assert main([*argv, "--dry-run", "--no-reuse"]) == 0
    assert "1 to run: 1 train, 0 reuse" in capsys.readouterr().out
    assert trainings == [] and not (tmp_path / "own.csv").exists()
    assert main([*argv, "--no-reuse"]) == 0
    assert [p.relative_to(tmp_path).as_posix() for _, _, p in trainings] == [
        "runs/own/dlinear/ETTh1/few_shot/H24/seed1"
    ]


def test_a_run_written_before_a_setting_existed_is_not_reused(synthetic_csv_dir, tmp_path, in_repo):
    import yaml

    from ecalf.config_files import load_run_config
    from ecalf.run import same_training, source_config

    grid = _small_grid(tmp_path, models=[GridModel("dlinear", "configs/baselines/dlinear.yaml")], seeds=[1])
    run_benchmark(grid, data_dir=str(synthetic_csv_dir), progress=False, echo=None)
    run_dir = Path(read_results(grid.results_path)[0]["run_dir"])
    config = source_config(load_run_config(run_dir / "config.yaml"))
    assert benchmark.finished_run(config, run_dir.parent, run_dir.name) is not None
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["training"].pop("dropout_masks") == "fast"  # as code before the setting wrote it
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    # loaded, it is the same config again (the default fills the gap): only the file tells
    assert same_training(load_run_config(run_dir / "config.yaml"), config)
    assert benchmark.finished_run(config, run_dir.parent, run_dir.name) is None


def test_a_run_written_before_a_neutral_setting_existed_is_still_reused(synthetic_csv_dir, tmp_path, in_repo):
    import yaml

    from ecalf.config import NEUTRAL_DEFAULTS
    from ecalf.config_files import load_run_config
    from ecalf.run import source_config

    grid = _small_grid(tmp_path, models=[GridModel("dlinear", "configs/baselines/dlinear.yaml")], seeds=[1])
    run_benchmark(grid, data_dir=str(synthetic_csv_dir), progress=False, echo=None)
    run_dir = Path(read_results(grid.results_path)[0]["run_dir"])
    config = source_config(load_run_config(run_dir / "config.yaml"))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key in ("optimizer", "warmup_steps", "eval_every_steps"):  # settings added with their old behaviour
        assert saved["training"].pop(key) == NEUTRAL_DEFAULTS[f"training.{key}"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert benchmark.finished_run(config, run_dir.parent, run_dir.name) is not None
    # ... but not for a config that sets another value
    adamw = dataclasses.replace(config, training=dataclasses.replace(config.training, optimizer="adamw"))
    assert benchmark.finished_run(adamw, run_dir.parent, run_dir.name) is None


def test_a_cell_started_by_older_code_trains_again_from_the_start(
    synthetic_csv_dir, tmp_path, in_repo, monkeypatch
):
    import yaml

    import ecalf.training as training

    sets = ["training.progress=false", "training.epochs=2", "training.patience=2"]
    dlinear = GridModel("dlinear", "configs/baselines/dlinear.yaml")
    grid = _small_grid(tmp_path, models=[dlinear], seeds=[1], set=sets)
    original, calls = training.evaluate, {"n": 0}

    def failing_evaluate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch fails, after the first one's checkpoint
            raise RuntimeError("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", failing_evaluate)
    first = run_benchmark(grid, data_dir=str(synthetic_csv_dir), progress=False, echo=None)
    assert first.finished == 0 and len(first.failed) == 1
    monkeypatch.setattr(training, "evaluate", original)
    run_dir = tmp_path / "runs/dlinear/ETTh1/few_shot/H24/seed1"
    assert (run_dir / "state").is_dir() and not (run_dir / "metrics.json").exists()
    (planned,), _ = benchmark.plan_benchmark(grid, data_dir=str(synthetic_csv_dir))  # the dry run says so
    assert planned.progress.describe().startswith("started: 1 epochs done, best 1 (val MSE")
    pace = planned.progress.seconds_per_epoch
    assert pace > 0 and planned.seconds == pace  # what is left: its one epoch to go, at its own pace
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["training"].pop("dropout_masks")  # as code before that setting wrote it
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))

    second = run_benchmark(grid, data_dir=str(synthetic_csv_dir), progress=False, echo=None)
    assert second.finished == 1 and not second.failed
    assert "resumed" not in (run_dir / "train.log").read_text()  # both epochs trained by this code
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 2
    (older,) = run_dir.parent.glob("seed1.older-code-*")  # the older code's epochs are kept aside
    assert (older / "state").is_dir()


def test_the_time_left_shares_the_work_over_the_parallel_cells(tmp_path, in_repo, monkeypatch):
    seen = []

    class Recorded(benchmark.execute.Remaining):
        def describe(self) -> str:
            seen.append(self.parallel)
            return super().describe()

    monkeypatch.setattr(benchmark.execute, "Remaining", Recorded)
    grid = _small_grid(tmp_path, models=[GridModel("naive", "configs/baselines/naive.yaml")], seeds=[1])
    for jobs in (1, 2):
        run_benchmark(grid, jobs=jobs, limit=0, progress=False, echo=lambda line: None)
    assert seen == [1, 2]


def _write_grid(tmp_path: Path, grid: Grid, name: str) -> Path:
    import yaml

    path = tmp_path / f"{name}.yaml"
    data = {
        "name": name,
        "datasets": grid.datasets,
        "horizons": grid.horizons,
        "seeds": grid.seeds,
        "settings": [{"name": s.name, "few_shot_percent": s.few_shot_percent} for s in grid.settings],
        "set": grid.set,
        "models": [{"label": m.label, "config": m.config} for m in grid.models],
        "runs_dir": str(tmp_path / "runs" / name),
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_evaluate_on_a_zero_shot_target_from_the_cli(synthetic_csv_dir, tmp_path, in_repo, capsys):
    from ecalf.run import evaluate_run

    grid = _small_grid(tmp_path, models=[GridModel("dlinear", "configs/baselines/dlinear.yaml")], seeds=[1])
    run_benchmark(grid, data_dir=str(synthetic_csv_dir), progress=False, echo=None)
    run_dir = read_results(grid.results_path)[0]["run_dir"]
    config, metrics = evaluate_run(run_dir, target="ETTm1")
    assert config.data.zero_shot_target == "ETTm1" and metrics.windows > 10_000  # ETTm1's test split
    png = tmp_path / "ettm1.png"
    assert main(["evaluate", run_dir, "--target", "ETTm1", "--quiet", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert f"ETTm1 test (zero-shot) mse {metrics.mse:.6f}" in out and png.is_file()
    assert main(["evaluate", run_dir, "--target", "Weather", "--quiet"]) == 2  # 21 variables, not 7
    assert "same number of variables" in capsys.readouterr().err


def test_pending_cells_are_estimated_from_the_finished_ones(synthetic_csv_dir, tmp_path, in_repo):
    data = str(synthetic_csv_dir)
    run_benchmark(_small_grid(tmp_path, seeds=[1]), data_dir=data, progress=False, echo=None)
    done = {r["model"]: float(r["wall_seconds"]) for r in read_results(tmp_path / "small.csv")}
    models = [
        *_small_grid(tmp_path).models,
        GridModel("patchtst", "configs/baselines/mean.yaml"),
    ]  # cheap stand-in
    wider = _small_grid(tmp_path, seeds=[1, 2], datasets=["ETTh1", "ETTh2"], models=models)
    # another results file beside it informs too, after this grid's own rows, if its recipe is the same
    patchtst = next(c for c in grid_cells(wider) if c.model == "patchtst")
    recipe = {"config_file": patchtst.config_file, "overrides": " ".join(patchtst.overrides(wider.set, data))}
    other = {c: "" for c in RESULT_COLUMNS}
    other.update(recipe, model="patchtst", dataset="ETTh1", setting="few_shot", horizon="24", seed="1")
    other.update(mse="1", mae="1", wall_seconds="321")
    benchmark.append_result(tmp_path / "other.csv", other)
    # a cell of another recipe (more epochs) on ETTh2 says nothing of this grid's ETTh2 cells
    other.update(dataset="ETTh2", wall_seconds="9999", overrides=recipe["overrides"] + " training.epochs=99")
    benchmark.append_result(tmp_path / "other.csv", other)
    planned, skipped = benchmark.plan_benchmark(wider, data_dir=data)
    assert skipped == 2
    estimates = {(p.cell.model, p.cell.dataset, p.cell.seed): p.seconds for p in planned}
    assert estimates["dlinear", "ETTh1", 2] == done["dlinear"]
    assert estimates["naive", "ETTh1", 2] == done["naive"]
    assert estimates["patchtst", "ETTh1", 1] == 321.0
    assert estimates["patchtst", "ETTh2", 1] == 321.0  # by size from ETTh1's, not the 9999 s recipe
    assert estimates["dlinear", "ETTh2", 1] == done["dlinear"]  # none on ETTh2: ETTh1 is its size
    lines: list[str] = []
    run_benchmark(wider, data_dir=data, progress=False, echo=lines.append, limit=1)
    assert lines[0].endswith("running 1 (~5 min left)")  # the pending patchtst cell: 321 s
    assert lines[-1].startswith("patchtst ETTh1 few_shot H=24 seed=1: mse") and lines[-1].endswith(
        "~0 s left"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: g\nmodels: [{label: a, config: x.yaml}]\ndatasets: [ETTh1]\nhorizon: [96]\n", "horizon"),
        ("name: g\nmodels: []\ndatasets: [ETTh1]\n", "models list is empty"),
        ("name: g\nmodels: [{label: a, config: x}, {label: a, config: y}]\ndatasets: [E]", "unique"),
        ("name: g\nmodels: [{label: a, config: x}]\ndatasets: [E]\nsettings: [{name: zero_shot}]", "targets"),
        ("name: g\nmodels: [{label: a, config: x.yaml}]\ndatasets: [E]\nseeds: [one]\n", "seeds[0]"),
    ],
)  # fmt: skip
def test_bad_grid_files_are_config_errors(tmp_path, text, message):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_grid(path)


def test_a_missing_config_file_fails_before_any_cell_runs(tmp_path, in_repo):
    grid = _small_grid(tmp_path, models=[GridModel("x", "configs/calf/{dataset}-missing.yaml")])
    with pytest.raises(ConfigError, match=r"ETTh1-missing\.yaml does not exist"):
        run_benchmark(grid, progress=False, echo=None)
    assert not grid.results_path.exists()


def test_dataset_means_skip_models_with_missing_horizons():
    rows = []
    for model, horizons in (("a", (96, 192)), ("b", (96,))):
        for seed in (1, 2):
            for h in horizons:
                rows.append(dict(setting="few_shot", dataset="ETTh1", target="", model=model, seed=seed,
                                 horizon=h, mse=h / 100 + seed, mae=1.0))  # fmt: skip
    table = per_dataset(pd.DataFrame(rows))
    assert list(table["model"]) == ["a"]  # b lacks H 192: no dataset mean for it
    assert table.iloc[0]["mse"] == pytest.approx(((0.96 + 1.92) / 2 + 1 + (0.96 + 1.92) / 2 + 2) / 2)
    assert table.iloc[0]["seeds"] == 2


def test_bar_plots_show_the_table_s_means_in_one_model_order():
    rows = []
    for dataset, models in (("ETTh1", ("a", "b", "c")), ("ETTh2", ("c", "b", "a"))):
        for model in models:
            for seed in (1, 2) if model == "a" else (1,):
                for h in (96, 192) if (model, dataset) != ("b", "ETTh2") else (96,):
                    rows.append(dict(setting="few_shot", dataset=dataset, target="", model=model, seed=seed,
                                     horizon=h, mse=h / 100 + seed, mae=1.0))  # fmt: skip
    panels = dict(mse_by_model_bars(pd.DataFrame(rows)))
    etth1, etth2 = panels["few_shot", "ETTh1", ""], panels["few_shot", "ETTh2", ""]
    assert list(etth1["model"]) == ["a", "b", "c"]
    assert list(etth2["model"]) == ["a", "c"]  # the file's order; b lacks H 192 there, as in the table
    assert etth1["mse"].tolist() == pytest.approx([2.94, 2.44, 2.44])  # a: seeds 1 and 2
    assert etth1["err"].iloc[0] == pytest.approx(per_dataset(pd.DataFrame(rows))["mse_std"].iloc[0])
    assert etth1["err"].iloc[1:].isna().all()  # one seed: no error bar


def test_cli_benchmark_and_report(synthetic_csv_dir, tmp_path, in_repo, capsys):
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(
        "name: g\nmodels: [{label: naive, config: configs/baselines/naive.yaml}]\ndatasets: [ETTh2]\n"
        f"horizons: [24]\nsettings: [{{name: few_shot}}]\nruns_dir: {tmp_path / 'runs'}\n"
        "set: [training.progress=false]\n"
    )
    results = tmp_path / "out" / "g.csv"
    argv = ["benchmark", str(grid_file), "--results", str(results), "--data-dir", str(synthetic_csv_dir)]
    assert main([*argv, "--quiet"]) == 0
    assert "1 cells finished" in capsys.readouterr().out
    assert main([*argv, "--quiet"]) == 0
    assert "0 cells finished, 1 already done" in capsys.readouterr().out
    assert main(["report", str(results)]) == 0
    assert (tmp_path / "out" / "g.md").is_file()
    assert main(["report", str(tmp_path / "none.csv")]) == 2


def test_select_narrows_the_grid_and_keeps_cell_keys(in_repo):
    grid = load_grid(SMOKE)
    part = benchmark.select(grid, models=["calf"], horizons=[48], seeds=[2])
    cells = grid_cells(part)
    assert {c.model for c in cells} == {"calf"} and {c.horizon for c in cells} == {48}
    assert {c.id for c in cells} <= {c.id for c in grid_cells(grid)}
    assert len(cells) == 2  # two settings
    with pytest.raises(ConfigError, match="not in grid"):
        benchmark.select(grid, datasets=["Traffic"])


def test_model_cases_and_seeds_shape_the_cells(tmp_path, in_repo):
    """A case's overrides reach only its cells (after the model's own); a model's seeds limit its cells;
    select keeps both."""
    calf = GridModel(
        "calf",
        "configs/calf-fewshot/{dataset}.yaml",
        set=["model.backbone.preset=smollm2-135m"],
        cases=[GridCase(set=["training.learning_rate=1.0e-4"], datasets=["ETTm1"], horizons=[720])],
    )
    linear = GridModel("linear", "configs/baselines/linear.yaml", seeds=[1])
    grid = _small_grid(tmp_path, models=[linear, calf], datasets=["ETTh1", "ETTm1"], horizons=[96, 720])
    cells = grid_cells(grid)
    rate = [c for c in cells if "training.learning_rate=1.0e-4" in c.model_overrides]
    assert [(c.dataset, c.horizon) for c in rate] == [("ETTm1", 720)] * 2  # both seeds of that cell
    assert rate[0].model_overrides == ("model.backbone.preset=smollm2-135m", "training.learning_rate=1.0e-4")
    assert {c.seed for c in cells if c.model == "linear"} == {1}
    assert (
        len([c for c in cells if c.model == "linear"]) == 4
        and len([c for c in cells if c.model == "calf"]) == 8
    )
    check_grid(grid)  # the case's override is a valid key
    assert benchmark.select(grid, seeds=[2]).models == [calf]  # linear runs none of them
    with pytest.raises(ConfigError, match="run none of seeds"):
        benchmark.select(grid, models=["linear"], seeds=[2])
    with pytest.raises(ConfigError, match=r"seeds \[7\] are not among the grid's"):
        _small_grid(tmp_path, models=[GridModel("linear", "configs/baselines/linear.yaml", seeds=[7])])


def test_pairs_keep_only_their_dataset_horizon_cells(tmp_path, in_repo):
    """A grid with pairs (a search's pilot cells) runs those dataset/horizon pairs only; select keeps
    the pairs it still covers; a pair outside the grid, or a selection with none left, is an error."""
    from ecalf.benchmark import GridPair

    pairs = [GridPair("ETTh1", 96), GridPair("ETTm1", 720)]
    grid = _small_grid(tmp_path, datasets=["ETTh1", "ETTm1"], horizons=[96, 720], pairs=pairs)
    assert {(c.dataset, c.horizon) for c in grid_cells(grid)} == {("ETTh1", 96), ("ETTm1", 720)}
    assert len(grid_cells(grid)) == 2 * 2 * 2  # two pairs, two seeds, two models
    part = benchmark.select(grid, datasets=["ETTm1"])
    assert part.pairs == [GridPair("ETTm1", 720)]
    assert {(c.dataset, c.horizon) for c in grid_cells(part)} == {("ETTm1", 720)}
    with pytest.raises(ConfigError, match="none of them is among"):
        benchmark.select(grid, datasets=["ETTh1"], horizons=[720])
    with pytest.raises(ConfigError, match="pair ETTh2 H96 is not in the grid"):
        _small_grid(tmp_path, datasets=["ETTh1"], horizons=[96], pairs=[GridPair("ETTh2", 96)])
    raw = tmp_path / "pairs.yaml"
    raw.write_text(
        "name: p\ndatasets: [ETTh1, ETTm1]\nhorizons: [96, 720]\n"
        "pairs: [{dataset: ETTm1, horizon: 720}]\n"
        "models: [{label: naive, config: configs/baselines/naive.yaml}]\n"
    )
    assert [(c.dataset, c.horizon) for c in grid_cells(load_grid(raw))] == [("ETTm1", 720)]


def test_a_cell_has_one_identity():
    """Its results row's key, its run directory and its name all come from its CellId; a row read back
    from the CSV gives the same CellId."""
    from ecalf.benchmark import CellId

    cell_id = CellId("calf", "ETTh1", "ETTm1", "zero_shot", 96, 2021)
    row = cell_id.as_row()
    assert list(row) == list(KEY_COLUMNS) and row["horizon"] == "96"
    assert CellId.of_row({**row, "mse": "0.5"}) == cell_id
    assert cell_id.run_id == "calf/ETTh1-to-ETTm1/zero_shot/H96/seed2021"
    assert str(cell_id) == "calf ETTh1->ETTm1 zero_shot H=96 seed=2021"
    with pytest.raises(EcalfError, match="valid cell key"):
        CellId.of_row({**row, "horizon": "ninety-six"})


def test_a_cell_s_typed_config_is_its_provenance_overrides_applied(in_repo):
    """A cell's config is built on the typed config (dataclasses.replace); the override strings of its
    results row, applied to its YAML, give exactly the same config."""
    for path in (ROOT / "benchmarks" / "fewshot.yaml", ROOT / "benchmarks" / "zeroshot.yaml"):
        grid = load_grid(path)
        for cell in grid_cells(grid)[:: max(1, len(grid_cells(grid)) // 40)]:
            typed = cell.config(grid.set, "/data")
            assert typed == load_run_config(cell.config_file, cell.overrides(grid.set, "/data")), (
                cell.describe()
            )
            assert typed.data.data_dir == "/data" and typed.seed == cell.seed
            assert typed.model.prediction_length == cell.horizon == typed.data.prediction_length


def test_the_fewshot_grid_runs_calf_on_its_authors_recipe(in_repo):
    """CALF's few-shot cells: alignment off, the scripts' rates (ETTm1 H 720 its own), batch and patience."""
    grid = load_grid(ROOT / "benchmarks" / "fewshot.yaml")
    expected = {  # dataset: (learning rate, batch, patience, loss), scripts/few_shot_forecasting/*.sh
        "ETTh1": (5e-4, 256, 10, "l1"),
        "ETTh2": (1e-3, 256, 10, "l1"),
        "ETTm1": (5e-4, 256, 5, "l1"),
        "ETTm2": (1e-4, 256, 5, "l1"),
        "Weather": (1e-4, 64, 5, "smooth_l1"),
    }
    for cell in grid_cells(grid):
        if cell.model != "calf":
            continue
        config = load_run_config(cell.config_file, cell.overrides(grid.set, None))
        rate, batch, patience, loss = expected[cell.dataset]
        if (cell.dataset, cell.horizon) == ("ETTm1", 720):
            rate = 1e-4
        assert config.model.output_weight == 0 and config.model.feature_weight == 0
        assert not config.model.aligns
        assert (config.training.learning_rate, config.training.batch_size) == (rate, batch)
        assert (config.training.patience, config.model.loss) == (patience, loss)
        assert config.training.cosine_t_max == 20 and config.data.few_shot_percent == 10


# --------------------------------------------------------------------------------------------------
# The Ray scheduler's driver side, without Ray (tests/test_ray_benchmark.py runs it on a real Ray)
# --------------------------------------------------------------------------------------------------


def test_ray_is_imported_only_for_ray_runs():
    code = "import sys, ecalf.cli, ecalf.benchmark, ecalf.ray_runner; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_ray_without_the_extra_says_how_to_install_it(tmp_path, in_repo, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    results = tmp_path / "r.csv"
    assert main(["benchmark", str(SMOKE), "--results", str(results), "--ray"]) == 2
    assert "pip install 'ecalf[ray]'" in capsys.readouterr().err
    assert not results.exists()


class _FakeRay:
    """The part of the ``ray`` module the scheduler uses; tasks run when their result is fetched."""

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.initialized = False
        self.inits: list[dict] = []
        self.submitted: list[tuple[dict, tuple]] = []
        self.cancelled: list[int] = []
        self.shutdowns = 0
        self.waits = 0
        self.interrupt_after = interrupt_after

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs) -> None:
        self.inits.append(kwargs)
        self.initialized = True

    def shutdown(self) -> None:
        self.shutdowns += 1
        self.initialized = False

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 2.0, "GPU": 1.0}

    def remote(self, function):
        fake = self

        class Remote:
            def options(self, **options):
                class Submit:
                    def remote(self, *args):
                        fake.submitted.append((options, args))
                        return len(fake.submitted) - 1

                return Submit()

        self.function = function
        return Remote()

    def wait(self, refs, num_returns=1):
        self.waits += 1
        if self.interrupt_after is not None and self.waits > self.interrupt_after:
            raise KeyboardInterrupt  # Ctrl-C while the driver waits for the next cell
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return self.function(*self.submitted[ref][1])

    def cancel(self, ref, force=False) -> None:
        self.cancelled.append(ref)


def _fake_cell_task(cell, grid_overrides, runs_dir, data_dir, num_threads, gpus, config_data, reuse_runs):
    if cell.seed == 2:
        raise RuntimeError("worker lost")
    keys = cell.id.as_row()
    return {**keys, "mse": 1.0, "mae": 1.0, "naive_mse": 2.0, "run_dir": runs_dir}, 0.5


@pytest.fixture()
def fake_ray(monkeypatch):
    import ecalf.ray_runner as ray_runner

    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(ray_runner, "_cell_task", _fake_cell_task)
    return fake


def test_cli_ray_starts_a_local_instance_with_the_requested_resources(
    fake_ray, tmp_path, in_repo, monkeypatch, capsys
):
    monkeypatch.setenv("ECALF_DATA_DIR", "relative/data")  # resolved by the driver, passed explicitly
    grid_file = tmp_path / "smoke.yaml"
    grid_file.write_text(SMOKE.read_text() + "\nruns_dir: runs-here\n")  # relative: made absolute
    results = tmp_path / "r.csv"
    argv = ["benchmark", str(grid_file), "--models", "naive", "--horizons", "24", "--results", str(results)]
    assert main([*argv, "--quiet", "--ray", "--cpus-per-cell", "2", "--gpus-per-cell", "0.5"]) == 1
    assert [i["address"] for i in fake_ray.inits] == ["local"] and fake_ray.shutdowns == 1
    assert len(fake_ray.submitted) == 4  # 2 settings x 2 seeds
    for options, args in fake_ray.submitted:
        assert (options["num_cpus"], options["num_gpus"], options["max_retries"]) == (2.0, 0.5, 0)
        cell, grid_set, runs_dir, data_dir, threads, gpus, config_data, reuse_runs = args
        assert reuse_runs is True
        assert data_dir == str(ROOT / "relative" / "data") and runs_dir == str(ROOT / "runs-here")
        assert (threads, gpus, config_data["model"]["name"]) == (2, 0.5, "naive")
        assert cell.model == "naive" and grid_set == load_grid(SMOKE).set
    out, err = capsys.readouterr()
    assert "2 cells finished, 0 already done, 2 failed, of 4" in out
    assert err.count("failed: naive") == 2 and "RuntimeError: worker lost" in err  # reported, no row
    assert sorted(r["seed"] for r in read_results(results)) == ["1", "1"]

    assert main([*argv, "--quiet", "--ray", "ray://head:10001", "--seeds", "1"]) == 0  # nothing pending
    assert len(fake_ray.inits) == 1  # a finished grid never starts or reaches Ray
    assert main([*argv, "--quiet", "--ray", "ray://head:10001"]) == 1  # the failed cells run again
    assert fake_ray.inits[-1]["address"] == "ray://head:10001" and len(fake_ray.submitted) == 6
    assert len(read_results(results)) == 2


def test_ctrl_c_cancels_the_outstanding_ray_tasks(fake_ray, tmp_path, in_repo):
    from ecalf.ray_runner import RayScheduler

    fake_ray.interrupt_after = 1
    grid = benchmark.select(load_grid(SMOKE), models=["naive"], seeds=[1])  # 4 cells, none fails
    grid.runs_dir = str(tmp_path / "runs")
    results = tmp_path / "r.csv"
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(grid, results=results, progress=False, echo=None, scheduler=RayScheduler())
    assert len(read_results(results)) == 1  # the cell done before Ctrl-C keeps its row
    assert sorted(fake_ray.cancelled) == [1, 2, 3] and fake_ray.shutdowns == 1


def test_a_ray_request_no_local_machine_can_meet_is_refused(fake_ray, tmp_path, in_repo):
    from ecalf.ray_runner import RayScheduler

    grid = benchmark.select(load_grid(SMOKE), models=["naive"], seeds=[1])
    grid.runs_dir = str(tmp_path / "runs")
    with pytest.raises(EcalfError, match="1 GPU per cell but the cluster has 0"):
        fake_ray.cluster_resources = lambda: {"CPU": 2.0}  # type: ignore[method-assign]
        run_benchmark(grid, results=tmp_path / "r.csv", progress=False, echo=None,
                      scheduler=RayScheduler(gpus_per_cell=1))  # fmt: skip
    assert fake_ray.shutdowns == 1 and not fake_ray.submitted
    with pytest.raises(ConfigError, match="cpus per cell"):
        RayScheduler(cpus_per_cell=0)


def test_run_all_runs_every_published_grid_and_goes_on_after_a_failure(tmp_path):
    calls = tmp_path / "calls"
    fake = tmp_path / "ecalf"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\ncase "$2" in *full.yaml) exit 1;; esac\n')
    fake.chmod(0o755)
    env = {**os.environ, "ECALF": str(fake), "JOBS": "3"}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "run_all.sh"), "--seeds", "1"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1  # the failed grid is reported in the status, the others still ran
    runs = [line.split() for line in calls.read_text().splitlines() if line.startswith("benchmark")]
    published = {p.stem for p in (ROOT / "benchmarks").glob("*.yaml")} - {"smoke"}  # smoke: the tests'
    assert {Path(args[1]).stem for args in runs} == published
    assert runs[0][1] == "benchmarks/fewshot.yaml"  # the headline table first
    assert all(args[2:] == ["--jobs", "3", "--quiet", "--seeds", "1"] for args in runs)


def test_a_started_cell_is_estimated_by_what_is_left_of_it():
    from ecalf.training import TrainingProgress

    started = TrainingProgress(epochs_done=2, best_epoch=1, best_mse=0.2, seconds_per_epoch=200.0)
    assert started.seconds_left(10, None) == 8 * 200.0  # at most its remaining epochs
    assert started.seconds_left(10, 1000.0) == 1000.0 - 2 * 200.0  # a whole cell's estimate less what's done
    assert started.seconds_left(10, 9000.0) == 8 * 200.0  # never more than its remaining epochs
    assert started.seconds_left(10, 100.0) == 200.0  # at least the epoch under way
    assert started.seconds_left(2, None) == 200.0
    unknown = TrainingProgress(epochs_done=2, best_epoch=1, best_mse=0.2, seconds_per_epoch=None)
    assert unknown.seconds_left(10, None) is None and unknown.seconds_left(10, 900.0) == 900.0
    assert started.describe() == "started: 2 epochs done, best 1 (val MSE 0.2000), 200 s per epoch"


def test_a_seed_ensemble_row_averages_the_seeds_forecasts(synthetic_csv_dir, tmp_path, in_repo, capsys):
    from ecalf.ensembles import add_ensembles

    grid = _small_grid(
        tmp_path, models=[GridModel("dlinear", "configs/baselines/dlinear.yaml")], seeds=[1, 2]
    )
    results = tmp_path / "small.csv"
    run_benchmark(grid, results=results, data_dir=str(synthetic_csv_dir), progress=False, echo=None)
    assert add_ensembles(results, echo=None) == 1
    rows = {(r["model"], r["seed"]): r for r in read_results(results)}
    ensemble = rows[("dlinear+ens", "0")]
    seeds = [float(rows[("dlinear", s)]["mse"]) for s in ("1", "2")]
    # the MSE of the mean forecast is at most the seeds' mean MSE (Jensen), and not simply one of them
    assert float(ensemble["mse"]) <= sum(seeds) / 2 + 1e-9
    assert all(abs(float(ensemble["mse"]) - s) > 1e-6 for s in seeds)
    assert ensemble["overrides"] == "ensemble of seeds 1 2"
    assert add_ensembles(results, echo=None) == 0  # once per cell
    assert main(["ensemble", str(results)]) == 0
    assert "0 ensemble row(s) added" in capsys.readouterr().out


def test_a_grid_still_running_gets_a_cells_ensemble_only_once_its_seeds_are_all_in(
    synthetic_csv_dir, tmp_path, in_repo, capsys
):
    from ecalf.benchmark.grid import select
    from ecalf.ensembles import add_ensembles

    grid = _small_grid(
        tmp_path, models=[GridModel("dlinear", "configs/baselines/dlinear.yaml")], seeds=[1, 2, 3]
    )
    results = tmp_path / "small.csv"
    data = str(synthetic_csv_dir)
    run_benchmark(select(grid, seeds=[1, 2]), results=results, data_dir=data, progress=False, echo=None)
    assert add_ensembles(results, seeds=[1, 2, 3], echo=None) == 0  # seed 3 has not run yet
    assert add_ensembles(results, datasets=["ETTh2"], echo=None) == 0
    assert add_ensembles(results, horizons=[48], echo=None) == 0
    run_benchmark(grid, results=results, data_dir=data, progress=False, echo=None)
    chosen = ["--datasets", "ETTh1", "--horizons", "24", "--seeds", "1", "2", "3"]
    assert main(["ensemble", str(results), *chosen]) == 0
    assert "1 ensemble row(s) added" in capsys.readouterr().out
    (ensemble,) = [r for r in read_results(results) if r["model"] == "dlinear+ens"]
    assert ensemble["overrides"] == "ensemble of seeds 1 2 3"
    with pytest.raises(EcalfError, match="two or more seeds"):
        add_ensembles(results, seeds=[1], echo=None)


def test_a_model_declared_ensemble_gets_each_cells_row_as_its_last_seed_finishes(
    synthetic_csv_dir, tmp_path, in_repo
):
    from ecalf.benchmark.grid import select
    from ecalf.ensembles import add_ensembles

    model = GridModel("dlinear", "configs/baselines/dlinear.yaml", ensemble=True)
    grid = _small_grid(tmp_path, models=[model], seeds=[1, 2], horizons=[24, 48])
    results, data = tmp_path / "small.csv", str(synthetic_csv_dir)
    lines: list[str] = []

    def ensembles() -> dict[tuple[str, str], dict[str, str]]:
        rows = read_results(results)
        return {(r["horizon"], r["overrides"]): r for r in rows if r["model"] == "dlinear+ens"}

    owed = [benchmark.CellId("dlinear+ens", "ETTh1", "", "few_shot", h, 0) for h in (24, 48)]
    assert benchmark.pending_ensembles(grid, results) == owed  # what --dry-run reports
    # a run of some of its seeds adds none (a 1-seed "ensemble" would be that seed)
    run_benchmark(select(grid, seeds=[1]), results=results, data_dir=data, progress=False, echo=lines.append)
    assert ensembles() == {}
    # H 24 seed 2 finishes: its cell's row, before the H 48 cell has its seeds (cells are seeds-outer)
    run_benchmark(grid, results=results, data_dir=data, progress=False, echo=lines.append, limit=1)
    assert list(ensembles()) == [("24", "ensemble of seeds 1 2")]
    assert any(line.startswith("dlinear+ens ETTh1 H=24: mse") for line in lines)
    run_benchmark(grid, results=results, data_dir=data, progress=False, echo=None)
    assert sorted(ensembles()) == [("24", "ensemble of seeds 1 2"), ("48", "ensemble of seeds 1 2")]
    assert benchmark.pending_ensembles(grid, results) == []
    # the same row `ecalf ensemble` writes
    copy = tmp_path / "copy.csv"
    copy.write_text("".join(line for line in results.read_text().splitlines(True) if "+ens" not in line))
    assert add_ensembles(copy, echo=None) == 2
    again = {r["horizon"]: r["mse"] for r in read_results(copy) if r["model"] == "dlinear+ens"}
    assert again == {h: r["mse"] for (h, _), r in ensembles().items()}
    # a finished grid run again adds nothing; one whose runs are gone says so instead of failing
    run_benchmark(grid, results=results, data_dir=data, progress=False, echo=None)
    assert len(ensembles()) == 2
    copy.write_text("".join(line for line in results.read_text().splitlines(True) if "+ens" not in line))
    lines.clear()
    moved = tmp_path / "elsewhere"
    (tmp_path / "runs").rename(moved)
    summary = run_benchmark(grid, results=copy, data_dir=data, progress=False, echo=lines.append)
    assert summary.finished == 0 and not [r for r in read_results(copy) if r["model"] == "dlinear+ens"]
    assert sum("not added, its seeds' runs are not all on this machine" in line for line in lines) == 2


def test_a_declared_ensemble_needs_two_seeds_and_its_own_label(tmp_path):
    model = GridModel("dlinear", "configs/baselines/dlinear.yaml", ensemble=True)
    with pytest.raises(ConfigError, match="averages two or more seeds, it has \\[1\\]"):
        _small_grid(tmp_path, models=[model], seeds=[1])
    with pytest.raises(ConfigError, match="averages two or more seeds"):
        _small_grid(tmp_path, models=[dataclasses.replace(model, seeds=[2])])
    taken = GridModel("dlinear+ens", "configs/baselines/dlinear.yaml")
    with pytest.raises(ConfigError, match="dlinear\\+ens is its seed ensemble's"):
        _small_grid(tmp_path, models=[model, taken])


def test_redo_dirty_retrains_only_the_rows_of_uncommitted_code(
    synthetic_csv_dir, tmp_path, in_repo, monkeypatch, capsys
):
    import ecalf.run as run_module

    grid_file = tmp_path / "small.yaml"
    grid_file.write_text(
        "name: small\ndatasets: [ETTh1]\nhorizons: [24]\nseeds: [1, 2]\n"
        "settings: [{name: few_shot, few_shot_percent: 5}]\n"
        "set: [training.progress=false, training.epochs=1, training.eval_batch_size=1024]\n"
        f"results: {tmp_path / 'small.csv'}\nruns_dir: {tmp_path / 'runs'}\n"
        "models:\n  - {label: naive, config: configs/baselines/naive.yaml}\n"
        "  - {label: dlinear, config: configs/baselines/dlinear.yaml}\n"
    )
    data = ["--data-dir", str(synthetic_csv_dir), "--quiet"]
    commit = {"now": "c" * 40}
    monkeypatch.setattr(run_module, "git_commit", lambda *a, **k: commit["now"])
    assert main(["benchmark", str(grid_file), "--models", "naive", *data]) == 0
    commit["now"] = "d" * 40 + "-dirty"  # the dlinear cells run on uncommitted code
    assert main(["benchmark", str(grid_file), *data]) == 0
    before = {(r["model"], r["seed"]): r for r in read_results(tmp_path / "small.csv")}
    assert [k for k, r in before.items() if r["git_commit"].endswith("-dirty")] == [
        ("dlinear", "1"),
        ("dlinear", "2"),
    ]

    # still uncommitted: refused, nothing changed
    assert main(["benchmark", str(grid_file), "--redo-dirty", *data]) == 2
    assert "commit it (or run from a clean checkout) first" in capsys.readouterr().err
    assert len(read_results(tmp_path / "small.csv")) == 4

    commit["now"] = "e" * 40
    assert main(["benchmark", str(grid_file), "--redo-dirty", "--dry-run", *data]) == 0
    out = capsys.readouterr().out
    assert "would retrain 2 cell(s)" in out and "dlinear ETTh1 few_shot H=24 seed=1" in out
    assert "4 cells, 2 already in" in out and "2 to run: 2 train, 0 reuse" in out  # the plan counts them
    assert {(r["model"], r["seed"]): r for r in read_results(tmp_path / "small.csv")} == before

    assert main(["benchmark", str(grid_file), "--redo-dirty", *data]) == 0
    after = {(r["model"], r["seed"]): r for r in read_results(tmp_path / "small.csv")}
    assert len(after) == 4
    assert after[("naive", "1")] == before[("naive", "1")]  # a committed row is left as it was
    assert (
        after[("dlinear", "1")]["git_commit"] == "e" * 40
        and after[("dlinear", "2")]["git_commit"] == "e" * 40
    )
    assert after[("dlinear", "1")]["mse"] == before[("dlinear", "1")]["mse"]  # same code, same seed
    (aside,) = (tmp_path / "runs/dlinear/ETTh1/few_shot/H24").glob("seed1.dirty-code-*")
    assert (aside / "metrics.json").is_file()  # the dirty run is kept aside, not deleted
    assert (
        json.loads((tmp_path / "runs/dlinear/ETTh1/few_shot/H24/seed1/metrics.json").read_text())[
            "environment"
        ]["git_commit"]
        == "e" * 40
    )
