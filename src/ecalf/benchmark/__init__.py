"""The benchmark grid: models x datasets x settings x horizons x seeds, resumable, one CSV row per cell.

A grid file (``benchmarks/*.yaml``) mirrors :class:`Grid`::

    name: fewshot
    datasets: [ETTh1, ETTh2]
    horizons: [96, 192, 336, 720]
    seeds: [2021, 2022, 2023]
    settings: [{name: few_shot, few_shot_percent: 10}]
    set: [training.progress=false]            # overrides for every cell
    models:
      - {label: dlinear, config: configs/baselines/dlinear.yaml}
      - {label: calf, config: "configs/calf/{dataset}.yaml", set: [model.backbone.preset=smollm2-135m]}

Each cell is one :func:`ecalf.run.run_experiment` in its own run directory under ``runs_dir``; its
result row is appended to the results CSV atomically (the whole file is rewritten to a temporary
sibling and renamed), so a kill loses at most the cell in flight, and that cell itself resumes from
its last finished epoch. Cells whose row is already in the CSV are skipped.

One function runs a cell and builds its row (:func:`run_cell`); a *scheduler* decides where cells run:
in this process or in ``jobs`` processes (:func:`local_scheduler`), or as tasks on a Ray cluster
(:class:`ecalf.ray_runner.RayScheduler`). Whatever the scheduler, only this (the driver) process
selects the pending cells and writes the CSV.

The package, one module per thing it owns:

- :mod:`ecalf.benchmark.grid`     the grid file's schema, loading and narrowing it, its cells
- :mod:`ecalf.benchmark.results`  the results CSV: columns, reading, atomic appends, the lock
- :mod:`ecalf.benchmark.cells`    one cell: reusing a finished run or training it, and its row
- :mod:`ecalf.benchmark.plan`     pending cells, runs they reuse, time estimates (``--dry-run``)
- :mod:`ecalf.benchmark.execute`  schedulers and the driver (:func:`run_benchmark`)
"""

from __future__ import annotations

from ecalf.benchmark.cells import finished_run, run_cell, timed_cell, trained_run
from ecalf.benchmark.execute import BenchmarkSummary, CellOutcome, Scheduler, local_scheduler, run_benchmark
from ecalf.benchmark.grid import (
    Cell,
    Grid,
    GridCase,
    GridModel,
    GridPair,
    GridSetting,
    SettingName,
    check_grid,
    grid_cells,
    load_grid,
    select,
)
from ecalf.benchmark.plan import PlannedCell, cell_recipe, pending_cells, pending_ensembles, plan_benchmark
from ecalf.benchmark.results import KEY_COLUMNS, RESULT_COLUMNS, CellId, append_result, read_results

__all__ = [
    "KEY_COLUMNS",
    "RESULT_COLUMNS",
    "BenchmarkSummary",
    "Cell",
    "CellId",
    "CellOutcome",
    "Grid",
    "GridCase",
    "GridModel",
    "GridPair",
    "GridSetting",
    "PlannedCell",
    "Scheduler",
    "SettingName",
    "append_result",
    "cell_recipe",
    "check_grid",
    "finished_run",
    "grid_cells",
    "load_grid",
    "local_scheduler",
    "pending_cells",
    "pending_ensembles",
    "plan_benchmark",
    "read_results",
    "run_benchmark",
    "run_cell",
    "select",
    "timed_cell",
    "trained_run",
]
