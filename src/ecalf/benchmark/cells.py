"""One cell: its training (a finished identical run reused, or trained now under a lock) and its row."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecalf.benchmark.grid import Cell, Grid, grid_cells
from ecalf.benchmark.results import CellId, drop_results, exclusive, read_results
from ecalf.config import RunConfig
from ecalf.errors import EcalfError

if TYPE_CHECKING:
    from ecalf.run import RunResult


def run_cell(
    cell: Cell,
    grid_overrides: Sequence[str],
    runs_dir: str,
    data_dir: str | None = None,
    num_threads: int | None = None,
    config_data: Mapping[str, Any] | None = None,
    reuse_runs: bool = True,
) -> dict[str, Any]:
    """Run one cell (resuming its run directory) and return its result row.

    A zero-shot cell trains on its source data once (in the source's own cell directory, which the
    other targets and a full-data cell of the same config share) and evaluates on its target;
    ``reuse_runs``: a finished identical run in a sibling grid's directory counts (:func:`finished_run`).

    ``config_data``: the parsed YAML of ``cell.config_file``, read by the driver, so that a worker on
    another machine needs no copy of the file; when None the file is read here.
    """
    import torch

    from ecalf.run import interval_scores, source_config, transfer_run

    if num_threads:
        torch.set_num_threads(num_threads)
    config = cell.config(grid_overrides, data_dir, config_data)
    overrides = cell.overrides(grid_overrides, data_dir)  # the provenance column only
    # every training under one lock: a zero-shot cell and its source's cell may run side by side
    training = trained = trained_run(source_config(config), Path(runs_dir), cell.training_run_id, reuse_runs)
    if cell.target:  # zero-shot: the source's training, evaluated on the target
        trained = transfer_run(trained.run_dir, config, Path(runs_dir) / cell.run_id)
    intervals = (
        interval_scores(
            training.run_dir, cell.levels, adaptive=cell.adaptive_intervals, target=cell.target or None
        )
        if cell.levels
        else {}
    )
    run_dir, metrics = trained.run_dir, trained.metrics
    env = metrics.environment
    backbone = getattr(config.model, "backbone", None)
    return {
        "model": cell.model,
        "dataset": cell.dataset,
        "target": cell.target,
        "setting": cell.setting,
        "few_shot_percent": cell.few_shot_percent,
        "horizon": cell.horizon,
        "seed": cell.seed,
        "mse": metrics.test.mse,
        "mae": metrics.test.mae,
        "naive_mse": metrics.naive_test.mse,
        "naive_mae": metrics.naive_test.mae,
        "epochs": metrics.epochs_run,
        "best_epoch": metrics.best_epoch,
        "steps": metrics.steps,
        "stopped": metrics.stopped,
        "wall_seconds": round(float(metrics.wall_seconds), 2),
        "train_windows_per_second": round(float(metrics.train_windows_per_second), 2),
        "peak_memory_mb": round(float(metrics.peak_memory_mb), 1),
        "trainable_parameters": metrics.parameters["trainable"],
        "total_parameters": metrics.parameters["total"],
        "model_name": metrics.model,
        "backbone": backbone.preset if backbone is not None else "",
        "config_file": cell.config_file,
        "overrides": " ".join(overrides),
        "run_dir": str(run_dir),
        "device": env.get("cuda") or "cpu",
        "git_commit": env.get("git_commit") or "",
        "ecalf": env.get("ecalf", ""),
        "torch": env.get("torch", ""),
        "transformers": env.get("transformers", ""),
        "peft": env.get("peft", ""),
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **intervals,
    }


def finished_run(config: RunConfig, runs_dir: Path, run_id: str, siblings: bool = True) -> RunResult | None:
    """A finished run of exactly ``config`` (same seed and resolved config) at ``run_id`` in
    ``runs_dir`` or (``siblings``) in a sibling grid's runs directory (``runs/benchmark/*/RUN_ID``).

    Grids share their trainings this way: the zero-shot grid evaluates the full grid's ETTh1 models on
    ETTm1/ETTm2 rather than training them again, and the other way round. A run whose config differs in
    anything (a grid's own overrides, the data directory, the code's defaults) is never taken, nor one
    whose config.yaml lacks a setting this code has (older code wrote it; which value it trained with
    is unknown, e.g. ``training.dropout_masks``, whose default is not what earlier code did).
    """
    from ecalf.run import RunResult, saved_settings_gap
    from ecalf.run_dir import RunDirectory

    own = runs_dir / run_id
    others = sorted(runs_dir.parent.glob(f"*/{run_id}")) if siblings else []
    candidates = [own, *(p for p in others if p != own)]
    for path in candidates:
        directory = RunDirectory(path)
        if not directory.is_finished() or saved_settings_gap(path, config) != []:
            continue
        try:
            return RunResult(path, directory.read_metrics())
        except (EcalfError, OSError, ValueError):  # a damaged run: not ours
            continue
    return None


def trained_run(config: RunConfig, runs_dir: Path, run_id: str, siblings: bool = True) -> RunResult:
    """A finished run of ``config``: one found by :func:`finished_run`, or one trained now into
    ``runs_dir / run_id`` (resuming it; a lock keeps parallel cells from training it twice)."""
    from ecalf.run import older_code_settings, run_experiment

    found = finished_run(config, runs_dir, run_id, siblings)
    if found is not None:
        return found
    run_dir = runs_dir / run_id

    def waiting() -> None:
        print(f"{run_dir}: another process is training this run; waiting to take its result", file=sys.stderr)

    with exclusive(run_dir.parent / f".{run_dir.name}.lock", waiting):
        found = finished_run(config, runs_dir, run_id, siblings)  # a parallel cell may have trained it
        if found is not None:
            return found
        if older_code_settings(run_dir, config):  # its epochs trained without a setting this code has
            run_dir.rename(run_dir.with_name(f"{run_dir.name}.older-code-{time.strftime('%Y%m%d-%H%M%S')}"))
        return run_experiment(config, run_dir, echo=None, resume=True)


def dirty_rows(grid: Grid, results: Path) -> list[dict[str, str]]:
    """The rows of ``grid``'s cells in ``results`` that uncommitted code produced (their ``git_commit``
    ends in ``-dirty``): numbers no commit reproduces."""
    cells = {cell.id for cell in grid_cells(grid)}
    return [
        row
        for row in read_results(results)
        if CellId.of_row(row) in cells and str(row.get("git_commit", "")).endswith("-dirty")
    ]


def retire_dirty_cells(grid: Grid, results: Path) -> list[CellId]:
    """Make ``grid``'s cells whose rows uncommitted code produced pending again (``ecalf benchmark
    --redo-dirty``): each one's run directory (and the training it took, when that is another directory
    of this grid that uncommitted code trained too) is set aside as ``<name>.dirty-code-<time>``, then
    the rows are removed from ``results``. Refused when this code is itself uncommitted (the cells
    would only be made dirty again) or is not a git checkout (its commit cannot be recorded)."""
    from ecalf.run import git_commit

    commit = git_commit()
    if commit is None or commit.endswith("-dirty"):
        why = "has uncommitted changes" if commit else "is not a git checkout, so its commit is unknown"
        raise EcalfError(
            f"--redo-dirty retrains cells so that their rows name a commit, but this ecalf's code {why}: "
            "commit it (or run from a clean checkout) first"
        )
    rows = dirty_rows(grid, results)
    cells = {cell.id: cell for cell in grid_cells(grid)}
    own = grid.runs_path.resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for row in rows:
        cell = cells[CellId.of_row(row)]
        made = Path(row.get("run_dir") or grid.runs_path / cell.run_id)
        training = grid.runs_path / cell.training_run_id
        for place in dict.fromkeys([made, training]):
            if not place.is_dir() or own not in place.resolve().parents:
                continue  # gone already, or another grid's run (not reused: --redo-dirty trains here)
            if place == made or _commit_of(place).endswith("-dirty"):
                place.rename(place.with_name(f"{place.name}.dirty-code-{stamp}"))
    return [CellId.of_row(row) for row in drop_results(results, (CellId.of_row(row) for row in rows))]


def _commit_of(run_dir: Path) -> str:
    """The commit a finished run recorded ('' when unfinished, unreadable or unknown)."""
    from ecalf.run_dir import RunDirectory

    directory = RunDirectory(run_dir)
    try:
        return (
            str(directory.read_metrics().environment.get("git_commit") or "")
            if directory.is_finished()
            else ""
        )
    except (EcalfError, OSError, ValueError):
        return ""


def timed_cell(*args: Any, **kwargs: Any) -> tuple[dict[str, Any], float]:
    """:func:`run_cell` in a worker process, with the seconds it ran: all cells are submitted at once,
    so the time since submission would count a cell's wait in the pool's queue too."""
    start = time.perf_counter()
    return run_cell(*args, **kwargs), time.perf_counter() - start
