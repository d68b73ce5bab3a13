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
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import csv
import dataclasses
import functools
import io
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tqdm.auto import tqdm

from ecalf.artifacts import read_yaml, write_text
from ecalf.cell_costs import CellCosts, CellKey, Remaining, estimate_from
from ecalf.config import RunConfig, apply_overrides, from_dict
from ecalf.errors import ConfigError, EcalfError

if TYPE_CHECKING:
    from ecalf.run import RunResult
    from ecalf.training import TrainingProgress

SettingName = Literal["full", "few_shot", "zero_shot"]

RESULT_COLUMNS: tuple[str, ...] = (
    "model",
    "dataset",
    "target",
    "setting",
    "few_shot_percent",
    "horizon",
    "seed",
    "mse",
    "mae",
    "naive_mse",
    "naive_mae",
    "epochs",
    "best_epoch",
    "steps",
    "stopped",
    "wall_seconds",
    "train_windows_per_second",
    "peak_memory_mb",
    "trainable_parameters",
    "total_parameters",
    "model_name",
    "backbone",
    "config_file",
    "overrides",
    "run_dir",
    "device",
    "git_commit",
    "ecalf",
    "torch",
    "transformers",
    "peft",
    "finished_at",
)
"""One results row: the cell's identity, test metrics and the provenance fields of protocol.md."""

KEY_COLUMNS = ("model", "dataset", "target", "setting", "horizon", "seed")


# --------------------------------------------------------------------------------------------------
# The grid file
# --------------------------------------------------------------------------------------------------


@dataclass
class GridCase:
    """Overrides for some of a model's cells: those of ``datasets`` (all when empty) at ``horizons``
    (all when empty), e.g. a published recipe's own learning rate at one horizon."""

    set: list[str]
    datasets: list[str] = field(default_factory=list)
    horizons: list[int] = field(default_factory=list)

    def applies(self, dataset: str, horizon: int) -> bool:
        return (not self.datasets or dataset in self.datasets) and (
            not self.horizons or horizon in self.horizons
        )


@dataclass
class GridModel:
    label: str
    """The model's name in results and tables (e.g. ``calf``, ``ecalf``, ``calf+dynamic_match``)."""
    config: str
    """A run-config YAML; ``{dataset}`` is replaced by the cell's dataset (per-dataset recipes)."""
    set: list[str] = field(default_factory=list)
    """Overrides for this model's cells (``key=value``, as ``ecalf train --set``)."""
    cases: list[GridCase] = field(default_factory=list)
    """Overrides for some of its cells only, applied after ``set`` in the order listed."""
    seeds: list[int] | None = None
    """This model's seeds when not the grid's (a deterministic model, such as ``linear``, needs one);
    each must be one of the grid's."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.+\-]+", self.label):
            raise ConfigError(f"model label {self.label!r}: use letters, digits and _ . + - only")
        if self.seeds is not None and not self.seeds:
            raise ConfigError(f"model {self.label!r}: seeds is empty; leave it out to use the grid's seeds")

    def overrides(self, dataset: str, horizon: int) -> tuple[str, ...]:
        """This model's overrides for a cell of ``dataset`` at ``horizon``."""
        cases = [o for case in self.cases if case.applies(dataset, horizon) for o in case.set]
        return (*self.set, *cases)


@dataclass
class GridSetting:
    name: SettingName = "full"
    few_shot_percent: float | None = None
    """Percent of training windows kept; default 10 for ``few_shot``, 100 otherwise."""
    targets: dict[str, list[str]] = field(default_factory=dict)
    """``zero_shot`` only: source dataset -> the datasets whose test split it is evaluated on."""

    def __post_init__(self) -> None:
        if self.few_shot_percent is None:
            self.few_shot_percent = 10.0 if self.name == "few_shot" else 100.0
        if not 0 < self.few_shot_percent <= 100:
            raise ConfigError(f"few_shot_percent must be in (0, 100], got {self.few_shot_percent}")
        if self.name == "zero_shot" and not self.targets:
            raise ConfigError("a zero_shot setting needs targets: {SOURCE: [TARGET, ...]}")
        if self.name != "zero_shot" and self.targets:
            raise ConfigError(f"targets belong to zero_shot settings, not {self.name!r}")


@dataclass
class Grid:
    name: str
    models: list[GridModel]
    datasets: list[str]
    settings: list[GridSetting] = field(default_factory=lambda: [GridSetting()])
    horizons: list[int] = field(default_factory=lambda: [96, 192, 336, 720])
    seeds: list[int] = field(default_factory=lambda: [2021])
    set: list[str] = field(default_factory=list)
    """Overrides applied to every cell (before the model's own)."""
    results: str | None = None
    """Results CSV; default ``results/<name>.csv``."""
    runs_dir: str | None = None
    """Where each cell's run directory goes; default ``runs/benchmark/<name>``."""
    reuse_runs: bool = True
    """Take a finished run of exactly a cell's config from a sibling grid's runs directory instead of
    training it again (:func:`finished_run`); false: this grid trains every model it reports itself
    (its zero-shot targets still share one training per source)."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.name):
            raise ConfigError(f"grid name {self.name!r}: use letters, digits and _ . - only")
        for what in ("models", "datasets", "settings", "horizons", "seeds"):
            if not getattr(self, what):
                raise ConfigError(f"the grid's {what} list is empty")
        labels = [m.label for m in self.models]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"model labels must be unique, got {labels}")
        if any(h <= 0 for h in self.horizons):
            raise ConfigError(f"horizons must be positive, got {self.horizons}")
        for model in self.models:
            stray = sorted(set(model.seeds or []) - set(self.seeds))
            if stray:
                raise ConfigError(
                    f"model {model.label!r}: seeds {stray} are not among the grid's {self.seeds}"
                )

    @property
    def results_path(self) -> Path:
        return Path(self.results or f"results/{self.name}.csv")

    @property
    def runs_path(self) -> Path:
        return Path(self.runs_dir or f"runs/benchmark/{self.name}")


def load_grid(path: str | os.PathLike[str]) -> Grid:
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a grid file is a mapping (name, models, datasets, ...)")
    try:
        return from_dict(Grid, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def select(
    grid: Grid,
    *,
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    horizons: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
) -> Grid:
    """The part of ``grid`` with only the given models / datasets / horizons / seeds (same cell keys,
    so its rows fill the same results file as the whole grid's)."""

    def keep(name: str, chosen: Sequence[Any] | None, present: list[Any]) -> list[Any]:
        if chosen is None:
            return present
        unknown = [c for c in chosen if c not in present]
        if unknown:
            raise ConfigError(f"{name} {unknown} not in grid {grid.name!r} (it has {present})")
        return [p for p in present if p in chosen]

    labels = keep("models", models, [m.label for m in grid.models])
    kept_seeds = keep("seeds", seeds, grid.seeds)
    chosen = []
    for model in grid.models:
        if model.label not in labels:
            continue
        if model.seeds is not None:
            own = [s for s in model.seeds if s in kept_seeds]
            if not own:
                continue  # this model runs none of the chosen seeds
            model = dataclasses.replace(model, seeds=own)
        chosen.append(model)
    if not chosen:
        raise ConfigError(f"models {labels} run none of seeds {kept_seeds} in grid {grid.name!r}")
    return dataclasses.replace(
        grid,
        models=chosen,
        datasets=keep("datasets", datasets, grid.datasets),
        horizons=keep("horizons", horizons, grid.horizons),
        seeds=kept_seeds,
    )


# --------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    model: str
    config_file: str
    model_overrides: tuple[str, ...]
    dataset: str
    setting: SettingName
    few_shot_percent: float
    target: str
    """Zero-shot target dataset; empty otherwise."""
    horizon: int
    seed: int

    @property
    def key(self) -> tuple[str, ...]:
        return (self.model, self.dataset, self.target, self.setting, str(self.horizon), str(self.seed))

    @property
    def run_id(self) -> str:
        data = f"{self.dataset}-to-{self.target}" if self.target else self.dataset
        return f"{self.model}/{data}/{self.setting}/H{self.horizon}/seed{self.seed}"

    def overrides(self, grid_overrides: Sequence[str], data_dir: str | None) -> list[str]:
        cell = [
            f"data.dataset={self.dataset}",
            f"data.prediction_length={self.horizon}",
            f"data.few_shot_percent={self.few_shot_percent}",
            f"data.zero_shot_target={self.target or 'null'}",
            f"seed={self.seed}",
        ]
        if data_dir is not None:
            cell.append(f"data.data_dir={data_dir}")
        return [*grid_overrides, *self.model_overrides, *cell]

    @property
    def training_setting(self) -> str:
        """The setting of the run that trains this cell's model: its own, or a zero-shot cell's source's."""
        if not self.target:
            return self.setting
        return "full" if self.few_shot_percent >= 100 else "few_shot"

    @property
    def training_run_id(self) -> str:
        """Where this cell's model is trained: its own run id, or (zero-shot) its source cell's."""
        return f"{self.model}/{self.dataset}/{self.training_setting}/H{self.horizon}/seed{self.seed}"

    def describe(self) -> str:
        data = f"{self.dataset}->{self.target}" if self.target else self.dataset
        return f"{self.model} {data} {self.setting} H={self.horizon} seed={self.seed}"


def grid_cells(grid: Grid) -> list[Cell]:
    """Every cell, in a stable order: settings, datasets, horizons, seeds, models (models innermost,
    so an interrupted grid has compared models on the same cells)."""
    cells = []
    for setting in grid.settings:
        assert setting.few_shot_percent is not None
        for dataset in grid.datasets:
            targets = setting.targets.get(dataset, []) if setting.name == "zero_shot" else [""]
            for target in targets:
                for horizon in grid.horizons:
                    for seed in grid.seeds:
                        for model in grid.models:
                            if model.seeds is not None and seed not in model.seeds:
                                continue
                            config_file = model.config.replace("{dataset}", dataset)
                            cells.append(
                                Cell(
                                    model.label,
                                    config_file,
                                    model.overrides(dataset, horizon),
                                    dataset,
                                    setting.name,
                                    float(setting.few_shot_percent),
                                    target,
                                    horizon,
                                    seed,
                                )
                            )
    return cells


def check_grid(grid: Grid, data_dir: str | None = None) -> None:
    """Load every distinct cell config once, so a typo fails before hours of running, not during."""
    from ecalf.config_files import load_run_config  # imports every model (torch): not for the CSV helpers

    seen: set[tuple[str, tuple[str, ...]]] = set()
    for cell in grid_cells(grid):
        if (cell.config_file, cell.model_overrides) in seen:
            continue
        seen.add((cell.config_file, cell.model_overrides))
        if not Path(cell.config_file).is_file():
            raise ConfigError(f"grid model {cell.model!r}: config file {cell.config_file} does not exist")
        load_run_config(cell.config_file, cell.overrides(grid.set, data_dir))


# --------------------------------------------------------------------------------------------------
# The results file
# --------------------------------------------------------------------------------------------------


def read_results(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a results CSV ([] when it does not exist)."""
    source = Path(path)
    if not source.is_file():
        return []
    with open(source, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in (*KEY_COLUMNS, "mse", "mae") if c not in (reader.fieldnames or [])]
        if missing:
            raise EcalfError(f"{source} is not an ecalf results file (no column {missing[0]!r})")
        return list(reader)


def append_result(path: str | os.PathLike[str], row: dict[str, Any]) -> bool:
    """Append one row atomically (the file is rewritten to a temporary sibling and renamed), under a
    lock, so that benchmark processes sharing one results file neither lose each other's rows nor write
    one cell twice: False, and nothing written, when a row of the same cell is already there."""
    target = Path(path)
    with _exclusive(target.with_name(f".{target.name}.lock")):
        rows = read_results(target)
        key = row_key({k: _csv_value(row.get(k)) for k in KEY_COLUMNS})
        if any(row_key(existing) == key for existing in rows):
            return False
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(RESULT_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for existing in rows:
            writer.writerow(existing)
        writer.writerow({k: _csv_value(row.get(k)) for k in RESULT_COLUMNS})
        write_text(target, buffer.getvalue())
    return True


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row[c]) for c in KEY_COLUMNS)


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


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

    from ecalf.config_files import load_run_config, run_config_from_dict
    from ecalf.run import source_config, transfer_run

    if num_threads:
        torch.set_num_threads(num_threads)
    overrides = cell.overrides(grid_overrides, data_dir)
    if config_data is None:
        config = load_run_config(cell.config_file, overrides)
    else:
        config = run_config_from_dict(apply_overrides(config_data, overrides), source=cell.config_file)
    # every training under one lock: a zero-shot cell and its source's cell may run side by side
    trained = trained_run(source_config(config), Path(runs_dir), cell.training_run_id, reuse_runs)
    if cell.target:  # zero-shot: the source's training, evaluated on the target
        trained = transfer_run(trained.run_dir, config, Path(runs_dir) / cell.run_id)
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

    with _exclusive(run_dir.parent / f".{run_dir.name}.lock", waiting):
        found = finished_run(config, runs_dir, run_id, siblings)  # a parallel cell may have trained it
        if found is not None:
            return found
        if older_code_settings(run_dir, config):  # its epochs trained without a setting this code has
            run_dir.rename(run_dir.with_name(f"{run_dir.name}.older-code-{time.strftime('%Y%m%d-%H%M%S')}"))
        return run_experiment(config, run_dir, echo=None, resume=True)


@contextlib.contextmanager
def _exclusive(lock_path: Path, waiting: Callable[[], None] | None = None) -> Generator[None, None, None]:
    """Hold an exclusive lock on ``lock_path`` across processes (``filelock``: flock on POSIX, msvcrt
    on Windows); ``waiting`` is called once if another process holds it, before waiting for it."""
    from filelock import FileLock, Timeout

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    # The file stays after release: a process waiting on it keeps locking the same file.
    lock = FileLock(lock_path, is_singleton=False, preserve_lock_file=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if waiting is not None:
            waiting()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@dataclass
class BenchmarkSummary:
    results: Path
    total: int
    skipped: int
    finished: int
    failed: list[tuple[str, str]]
    """(cell, error) of the cells that raised; they have no row and run again next time."""


CellOutcome = tuple[Cell, dict[str, Any] | BaseException, float]
"""A finished cell: its result row (or the error it raised) and the seconds it took."""

Scheduler = Callable[[Grid, list[Cell], str | None], Generator[CellOutcome, None, None]]
"""Runs ``cells`` of a grid (each with :func:`run_cell`, given the data directory) and yields each one's
outcome as it finishes. Closing the iterator (Ctrl-C in the driver) cancels the cells not yet done."""


def local_scheduler(jobs: int = 1, threads: int | None = None) -> Scheduler:
    """Cells in this process (``jobs == 1``) or in ``jobs`` separate processes, each with ``threads``
    torch threads (default: the cores shared out over the jobs; with one job, torch's own default)."""
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    return functools.partial(_execute, jobs=jobs, threads=threads)


def pending_cells(grid: Grid, results: Path) -> tuple[list[Cell], int]:
    cells = grid_cells(grid)
    done = {row_key(r) for r in read_results(results)}
    todo = [c for c in cells if c.key not in done]
    return todo, len(cells) - len(todo)


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
    grid: Grid, *, results: str | os.PathLike[str] | None = None, data_dir: str | None = None
) -> tuple[list[PlannedCell], int]:
    """What :func:`run_benchmark` would do, without running anything: the pending cells, each with the
    finished run it would reuse, and how many cells are already in the results file."""
    from ecalf.config_files import load_run_config
    from ecalf.run import source_config
    from ecalf.run_dir import RunDirectory

    check_grid(grid, data_dir)
    results_path = Path(results) if results is not None else grid.results_path
    todo, skipped = pending_cells(grid, results_path)
    costs = CellCosts.from_rows(read_results(results_path))  # this grid's recipes first, then others'
    beside = _rows_beside(results_path)
    other_costs: dict[Recipe, CellCosts] = {}  # other grids' cells of the same recipe only
    runs_dir = grid.runs_path
    planned, training = [], set()
    for cell in todo:
        config = source_config(load_run_config(cell.config_file, cell.overrides(grid.set, data_dir)))
        run_id = cell.training_run_id
        found = finished_run(config, runs_dir, run_id, grid.reuse_runs)
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


def run_benchmark(
    grid: Grid,
    *,
    results: str | os.PathLike[str] | None = None,
    data_dir: str | None = None,
    jobs: int = 1,
    threads: int | None = None,
    limit: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = print,
    scheduler: Scheduler | None = None,
) -> BenchmarkSummary:
    """Run the grid's cells that have no row in the results CSV yet (at most ``limit`` of them).

    ``scheduler`` says where the cells run (default: :func:`local_scheduler` with ``jobs``); rows are
    appended here, by the driver, as cells finish.
    """
    parallel = jobs  # cells at once, for the time left; a scheduler may know better (Ray: once connected)
    if scheduler is None:
        scheduler = local_scheduler(jobs, threads)
    elif jobs != 1 or threads is not None:
        raise ConfigError(
            "--jobs and --threads are for local processes; on Ray the cluster's size and --cpus-per-cell "
            "(--gpus-per-cell) set how many cells run at once and their threads"
        )
    results_path = Path(results) if results is not None else grid.results_path
    planned, skipped = plan_benchmark(grid, results=results_path, data_dir=data_dir)
    if limit is not None:
        planned = planned[:limit]
    todo = [p.cell for p in planned]
    remaining = Remaining(
        {p.cell: p.seconds for p in planned},
        {p.cell: p.key for p in planned if p.key},
        parallel=getattr(scheduler, "parallel", None) or parallel,
    )
    say = echo or (lambda line: None)
    say(
        f"grid {grid.name}: {len(todo) + skipped} cells, {skipped} already in {results_path}, "
        f"running {len(todo)} ({remaining.describe()})"
    )
    failed: list[tuple[str, str]] = []
    finished = 0
    bar = tqdm(total=len(todo), desc=grid.name, unit="cell", disable=not progress, dynamic_ncols=True)

    def record(cell: Cell, outcome: dict[str, Any] | BaseException, seconds: float) -> None:
        nonlocal finished
        remaining.parallel = getattr(scheduler, "parallel", None) or remaining.parallel
        if isinstance(outcome, BaseException):
            failed.append((cell.describe(), f"{type(outcome).__name__}: {outcome}"))
            remaining.dropped(cell)
            bar.write(f"FAILED {cell.describe()}: {type(outcome).__name__}: {outcome}")
        else:
            written = append_result(results_path, outcome)
            finished += 1
            remaining.finished(cell, seconds)
            line = (
                f"{cell.describe()}: mse {outcome['mse']:.4f} mae {outcome['mae']:.4f} "
                f"(naive {outcome['naive_mse']:.4f}) in {seconds:.0f}s; {remaining.describe()}"
            )
            if not written:
                line += f" (not written: another benchmark process wrote this cell's row to {results_path})"
            bar.write(line) if progress else say(line)
        bar.set_postfix_str(remaining.describe(), refresh=False)
        bar.update(1)

    try:
        # closing(): on Ctrl-C (or any error here) the scheduler cancels the cells still outstanding
        with contextlib.closing(scheduler(grid, todo, data_dir)) as outcomes:
            for cell, outcome, seconds in outcomes:
                record(cell, outcome, seconds)
    finally:
        bar.close()
    return BenchmarkSummary(results_path, len(todo) + skipped, skipped, finished, failed)


def timed_cell(*args: Any, **kwargs: Any) -> tuple[dict[str, Any], float]:
    """:func:`run_cell` in a worker process, with the seconds it ran: all cells are submitted at once,
    so the time since submission would count a cell's wait in the pool's queue too."""
    start = time.perf_counter()
    return run_cell(*args, **kwargs), time.perf_counter() - start


def _execute(
    grid: Grid, cells: list[Cell], data_dir: str | None, jobs: int, threads: int | None = None
) -> Generator[CellOutcome, None, None]:
    runs_dir = str(grid.runs_path)
    if not cells:
        return
    if jobs == 1:
        import torch

        previous = torch.get_num_threads()
        try:
            for cell in cells:
                start = time.perf_counter()
                try:
                    outcome: dict[str, Any] | BaseException = run_cell(
                        cell, grid.set, runs_dir, data_dir, threads, reuse_runs=grid.reuse_runs
                    )
                except Exception as exc:  # reported; the grid goes on and the cell runs again next time
                    outcome = exc
                yield cell, outcome, time.perf_counter() - start
        finally:
            torch.set_num_threads(previous)  # the caller's setting (a notebook's) is left as it was
        return
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        started = {}
        for cell in cells:
            future = pool.submit(
                timed_cell, cell, grid.set, runs_dir, data_dir, threads, reuse_runs=grid.reuse_runs
            )
            started[future] = (cell, time.perf_counter())
        try:
            for future in futures.as_completed(started):
                cell, start = started[future]
                try:
                    outcome, seconds = future.result()
                except Exception as exc:  # a worker's error is reported, the other cells go on
                    outcome, seconds = exc, time.perf_counter() - start
                yield cell, outcome, seconds
        finally:  # interrupted: queued cells never start (those running end with their processes)
            pool.shutdown(wait=False, cancel_futures=True)
