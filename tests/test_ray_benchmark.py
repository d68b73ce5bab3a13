"""The benchmark grid on Ray: the same rows as the local runner, resumable, each row written once."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import ecalf.benchmark as benchmark  # noqa: E402
from ecalf.benchmark import KEY_COLUMNS, RESULT_COLUMNS, grid_cells, load_grid, read_results, run_benchmark  # noqa: E402
from ecalf.cli import main  # noqa: E402
from ecalf.data import DATASETS, write_synthetic_csv  # noqa: E402
from ecalf.ray_runner import RayScheduler  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "benchmarks" / "smoke.yaml"

VARYING = {"wall_seconds", "train_windows_per_second", "peak_memory_mb", "run_dir", "finished_at"}
"""Timing and where the run directory is: the only columns that may differ between two schedulers."""


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module (its start-up is most of the module's time)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ett_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ETTh1 and ETTh2 as conftest's ``ett_dir`` writes them (the only files these grids read)."""
    directory = tmp_path_factory.mktemp("ett")
    for name in ("ETTh1", "ETTh2"):
        spec = DATASETS[name]
        assert spec.num_rows is not None and spec.num_channels is not None
        write_synthetic_csv(
            directory / spec.file_name,
            spec.num_rows,
            spec.num_channels,
            seed=7,
            frequency=spec.frequency,
            decimals=2,
        )
    return directory


@pytest.fixture()
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def _smoke_part(tmp_path: Path, name: str) -> benchmark.Grid:
    """Both settings of the smoke grid (few-shot, zero-shot) for the naive floor, DLinear and tiny CALF."""
    part = benchmark.select(load_grid(SMOKE), models=["naive", "dlinear", "calf"], horizons=[24], seeds=[1])
    # reuse_runs off: each scheduler trains its own cells rather than finding the other's runs
    return dataclasses.replace(part, runs_dir=str(tmp_path / f"runs-{name}"), reuse_runs=False)


def _rows(path: Path) -> dict[tuple[str, ...], dict[str, str]]:
    rows = read_results(path)
    keys = [tuple(r[c] for c in KEY_COLUMNS) for r in rows]
    assert len(set(keys)) == len(keys), f"duplicate rows in {path}"
    return {key: {c: v for c, v in row.items() if c not in VARYING} for key, row in zip(keys, rows)}


def _driver_never_runs_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cells must run in Ray's worker processes: in this (the driver) process they would fail."""

    def not_here(*args, **kwargs):
        raise AssertionError("a cell ran in the driver process")

    monkeypatch.setattr(benchmark.execute, "run_cell", not_here)


def test_ray_gives_the_local_rows_and_a_finished_grid_resumes_to_nothing(
    ray_instance, ett_dir, tmp_path, in_repo, monkeypatch
):
    data_dir = str(ett_dir)
    local_csv, ray_csv = tmp_path / "local.csv", tmp_path / "ray.csv"
    local = run_benchmark(
        _smoke_part(tmp_path, "local"), results=local_csv, data_dir=data_dir, progress=False, echo=None
    )
    assert (local.finished, local.failed) == (6, [])

    _driver_never_runs_cells(monkeypatch)
    grid = _smoke_part(tmp_path, "ray")
    scheduler = RayScheduler(log_to_driver=False)
    first = run_benchmark(
        grid, results=ray_csv, data_dir=data_dir, progress=False, echo=None, scheduler=scheduler
    )
    assert (first.finished, first.skipped, first.failed) == (6, 0, [])
    assert scheduler.parallel == 2  # the instance's 2 CPUs, 1 per cell: the time left is shared by 2

    expected, got = _rows(local_csv), _rows(ray_csv)
    assert set(got) == {tuple(c.id.as_row().values()) for c in grid_cells(grid)}
    assert got == expected  # same keys, test metrics, epochs, parameters, config, overrides, provenance
    assert {row["model"] for row in got.values()} == {"naive", "dlinear", "calf"}
    for row in read_results(ray_csv):
        assert Path(row["run_dir"]).is_absolute() and Path(row["run_dir"], "metrics.json").is_file()
        assert Path(row["run_dir"]).is_relative_to(tmp_path / "runs-ray")

    before = ray_csv.read_bytes()
    again = run_benchmark(
        grid, results=ray_csv, data_dir=data_dir, progress=False, echo=None, scheduler=scheduler
    )
    assert (again.finished, again.skipped, again.failed) == (0, 6, [])
    assert ray_csv.read_bytes() == before


def test_a_failed_ray_cell_is_reported_once_gets_no_row_and_runs_next_time(
    ray_instance, ett_dir, tmp_path, in_repo, monkeypatch
):
    # The data directory reaches the workers from the driver: they were started without this variable.
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(ett_dir / DATASETS["ETTh1"].file_name, data)
    monkeypatch.setenv("ECALF_DATA_DIR", str(data))
    _driver_never_runs_cells(monkeypatch)
    grid = benchmark.Grid(
        name="flaky",
        models=[benchmark.GridModel("naive", "configs/baselines/naive.yaml")],
        datasets=["ETTh1", "ETTh2"],  # no ETTh2 file yet: that cell fails on its worker
        settings=[benchmark.GridSetting("few_shot", 5)],
        horizons=[24],
        seeds=[1],
        set=["training.progress=false", "training.eval_batch_size=1024"],
        results=str(tmp_path / "flaky.csv"),
        runs_dir=str(tmp_path / "runs"),
    )
    scheduler = RayScheduler(log_to_driver=False)
    first = run_benchmark(grid, progress=False, echo=None, scheduler=scheduler)
    assert (first.finished, first.skipped) == (1, 0)
    assert len(first.failed) == 1
    cell, error = first.failed[0]
    assert (
        "ETTh2" in cell and error.startswith("DataError:") and "ETTh2.csv" in error
    )  # the worker's own error
    assert [r["dataset"] for r in read_results(grid.results_path)] == ["ETTh1"]

    shutil.copy(ett_dir / DATASETS["ETTh2"].file_name, data)
    second = run_benchmark(grid, progress=False, echo=None, scheduler=scheduler)
    assert (second.finished, second.skipped, second.failed) == (1, 1, [])
    assert sorted(_rows(grid.results_path)) == sorted(tuple(c.id.as_row().values()) for c in grid_cells(grid))


def test_cli_benchmark_on_ray(ray_instance, ett_dir, tmp_path, in_repo, capsys):
    grid_file = tmp_path / "smoke.yaml"  # the smoke grid, its run directories under tmp_path
    grid_file.write_text(SMOKE.read_text() + f"\nruns_dir: {tmp_path / 'runs'}\n")
    results = tmp_path / "smoke.csv"
    argv = [
        "benchmark", str(grid_file), "--models", "naive", "--horizons", "48", "--seeds", "2",
        "--results", str(results), "--data-dir", str(ett_dir), "--quiet",
    ]  # fmt: skip
    assert main([*argv, "--ray", "--cpus-per-cell", "1"]) == 0
    assert "2 cells finished, 0 already done, 0 failed, of 2" in capsys.readouterr().out
    with open(results, encoding="utf-8") as handle:
        assert handle.readline().strip() == ",".join(RESULT_COLUMNS)
    assert main([*argv, "--ray"]) == 0
    assert "0 cells finished, 2 already done" in capsys.readouterr().out
    assert len(read_results(results)) == 2
    assert all(Path(r["run_dir"]).is_relative_to(tmp_path / "runs") for r in read_results(results))

    assert main([*argv, "--ray", "--jobs", "2"]) == 2
    assert "--jobs and --threads are for local processes" in capsys.readouterr().err
    assert main([*argv, "--gpus-per-cell", "1"]) == 2
    assert "add --ray" in capsys.readouterr().err
