"""What a grid would do, without running anything: pending cells, runs they reuse, time estimates."""

from __future__ import annotations

import csv
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ecalf.benchmark.cells import finished_run
from ecalf.benchmark.grid import Cell, Grid, check_grid, grid_cells
from ecalf.benchmark.results import CellId, read_results
from ecalf.cell_costs import CellCosts, CellKey, estimate_from
from ecalf.errors import EcalfError

if TYPE_CHECKING:
    from ecalf.training import TrainingProgress


def pending_cells(grid: Grid, results: Path, redo: Collection[CellId] = ()) -> tuple[list[Cell], int]:
    """The cells without a row in ``results`` (and those of ``redo``, whose rows would go), and how
    many have one."""
    cells = grid_cells(grid)
    done = {CellId.of_row(r) for r in read_results(results)} - set(redo)
    todo = [c for c in cells if c.id not in done]
    return todo, len(cells) - len(todo)


def pending_ensembles(grid: Grid, results: Path) -> list[CellId]:
    """The seed-ensemble rows the grid declares (models with ``ensemble: true``) that ``results`` does
    not hold yet, in grid order; :func:`run_benchmark` adds each as its cell's last seed finishes."""
    from ecalf.ensembles import ensemble_cell  # here: ecalf.ensembles imports this package

    declared = {m.label for m in grid.models if m.ensemble}
    done = {CellId.of_row(r) for r in read_results(results)}
    owed = dict.fromkeys(ensemble_cell(c.id) for c in grid_cells(grid) if c.model in declared)
    return [cell for cell in owed if cell not in done]


@dataclass(frozen=True)
class PlannedCell:
    cell: Cell
    reuses: Path | None
    """The run this cell would take instead of training: a finished one, or (zero-shot) the source run
    an earlier cell of the plan trains; None: the cell trains."""
    seconds: float | None = None
    """Estimated wall time (:mod:`ecalf.cell_costs`; 0 when it reuses a run, None when unknown)."""
    key: CellKey | None = None
    """What estimates it (None when it reuses a run)."""
    progress: TrainingProgress | None = None
    """How far a killed or running training of the cell got (:meth:`RunDirectory.progress`), if it started;
    ``seconds`` is then what is left of it."""


def plan_benchmark(
    grid: Grid,
    *,
    results: str | os.PathLike[str] | None = None,
    data_dir: str | None = None,
    redo: Collection[CellId] = (),
) -> tuple[list[PlannedCell], int]:
    """What :func:`run_benchmark` would do, without running anything: the pending cells, each with the
    finished run it would reuse, and how many cells are already in the results file. ``redo``: cells
    whose rows and runs would be set aside first (``--redo-dirty``): pending, and trained afresh."""
    from ecalf.run import source_config
    from ecalf.run_dir import RunDirectory

    check_grid(grid, data_dir)
    results_path = Path(results) if results is not None else grid.results_path
    todo, skipped = pending_cells(grid, results_path, redo)
    costs = CellCosts.from_rows(read_results(results_path))  # this grid's recipes first, then others'
    beside = _rows_beside(results_path)
    other_costs: dict[Recipe, CellCosts] = {}  # other grids' cells of the same recipe only
    runs_dir = grid.runs_path
    planned, training = [], set()
    for cell in todo:
        config = source_config(cell.config(grid.set, data_dir))
        run_id = cell.training_run_id
        found = None if cell.id in redo else finished_run(config, runs_dir, run_id, grid.reuse_runs)
        if found is not None:
            planned.append(PlannedCell(cell, found.run_dir, 0.0))
        elif run_id in training:  # trained by an earlier cell of this plan
            planned.append(PlannedCell(cell, runs_dir / run_id, 0.0))
        else:
            training.add(run_id)
            key = CellKey(cell.model, cell.dataset, cell.training_setting, cell.horizon)
            overrides = " ".join(cell.overrides(grid.set, data_dir))  # as its row will hold them
            recipe = cell_recipe(cell.dataset, cell.config_file, overrides)
            if recipe not in other_costs:
                alike = (row for row in beside if _row_recipe(row) == recipe)
                other_costs[recipe] = CellCosts.from_rows(alike)
            estimate = estimate_from(key, costs, other_costs[recipe])
            progress = RunDirectory(runs_dir / run_id).progress()
            if progress is not None:  # it resumes: only what is left of it
                estimate = progress.seconds_left(config.training.epochs, estimate)
            planned.append(PlannedCell(cell, None, estimate, key, progress))
    return planned, skipped


Recipe = tuple[str, tuple[str, ...]]


CELL_KEYS = (
    "data.dataset", "data.prediction_length", "data.few_shot_percent", "data.zero_shot_target", "seed",
    "data.data_dir", "training.progress",
)  # fmt: skip
"""Overrides a cell's place in its grid sets (and the progress bar), not how it trains."""


def cell_recipe(dataset: str, config_file: str, overrides: str) -> Recipe:
    """How a cell trains, apart from its dataset, horizon, setting and seed: its config file (with
    the dataset's name as a placeholder, so ``configs/calf/ETTh1.yaml`` and ``.../ETTh2.yaml`` are one
    recipe) and its other overrides (``overrides`` joined by spaces, as a results row holds them, so
    that a pending cell and a row split them alike). Another grid's finished cell estimates a pending
    one only when their recipes are equal: a 10-epoch budget run says little about the official
    100-epoch one."""
    kept = sorted(item for item in overrides.split() if item.split("=", 1)[0] not in CELL_KEYS)
    return (config_file.replace(dataset, "{dataset}") if dataset else config_file), tuple(kept)


def _row_recipe(row: Mapping[str, str]) -> Recipe:
    return cell_recipe(row.get("dataset", ""), row.get("config_file", ""), row.get("overrides", ""))


def _rows_beside(results: Path) -> list[dict[str, str]]:
    """The rows of the other ecalf results files beside ``results`` (their cells inform estimates)."""
    rows: list[dict[str, str]] = []
    for path in sorted(results.parent.glob("*.csv")) if results.parent.is_dir() else []:
        if path != results:
            try:
                rows += read_results(path)
            except (EcalfError, OSError, UnicodeDecodeError, csv.Error):  # not a results file
                continue
    return rows
