"""Hyper-parameter search on the validation split (``ecalf tune``): Optuna, resumable, never tested.

One *trial* is one recipe (the base run config with the trial's values) trained on every pilot cell
(dataset x horizon, few-shot, one seed). Its score is the mean over the cells of the best validation
MSE divided by the naive forecast's validation MSE on that cell (docs/tuning-protocol.md). The sampler
is TPE (``sampler_seed``); a trial is pruned by the median rule on its running score, reported after
every epoch from ``prune_from_epoch`` on through the training loop's epoch callback. No test window
is ever read: each cell's run is fitted (:func:`ecalf.fitting.fit_model`) and validated only.

A search directory (this module names and writes it; ``runs/tune/<space>`` by default):

- ``study.db``        the Optuna study (SQLite): every trial's values, state and reported scores
- ``search.yaml``     what is searched (base config, space, cells, seed); a restart must match it
- ``trials/NNNN/<dataset>-H<horizon>/``  one run directory per trial and cell (:mod:`ecalf.run_dir`
                      names its files; ``validation.json`` in place of test metrics)
- ``trials.csv``      the summary table, one row per trial; ``best.yaml`` the best trial's run config
- ``search.png``      every trial's score in order and against each searched value
- ``locks/``          a lock per running trial, held by the process that runs it

Killed and started again with the same command, a search keeps its finished trials; the trial that
was running is tried again with the same values in the same directory (its finished cells are kept,
the cell in flight resumes from its last finished epoch). The same command started again while a
search runs (another core, another GPU) adds a worker: the processes share the study, never start
more trials than the budget between them, and the last to finish writes the best recipe. Trial k
samples from ``sampler_seed + k`` (TPE with constant liar, so a worker does not repeat a trial still
running in another). Optuna is optional: ``pip install 'ecalf[tune]'``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ecalf.artifacts import read_yaml, write_text, write_yaml, yaml_scalar
from ecalf.benchmark.grid import Cell
from ecalf.benchmark.results import CellId, exclusive
from ecalf.cell_costs import format_duration
from ecalf.config import RunConfig, apply_overrides
from ecalf.config_files import load_run_config, run_config_from_dict
from ecalf.data import ForecastSplits, prepare_splits
from ecalf.data.specs import find_spec
from ecalf.errors import ConfigError, EcalfError
from ecalf.evaluation import evaluate
from ecalf.fitting import fit_model
from ecalf.models.base import ForecastModel
from ecalf.models.naive import NaiveConfig, NaiveForecast
from ecalf.registry import model_name_for_config
from ecalf.run import resolve_model_config
from ecalf.run_dir import RunDirectory, ValidationMetrics
from ecalf.tracking import open_tracker
from ecalf.training import EpochLog, TrainingDiverged, resolve_device, snapshot

if TYPE_CHECKING:
    import optuna

PILOT_CELLS: tuple[tuple[str, int], ...] = (("ETTh1", 96), ("ETTh2", 336), ("ETTm1", 96), ("ETTm2", 192))
"""The protocol's pilot cells (docs/tuning-protocol.md): one horizon per dataset."""
STUDY_FILE = "study.db"
SEARCH_FILE = "search.yaml"
TRIALS_DIR = "trials"
SUMMARY_FILE = "trials.csv"
BEST_FILE = "best.yaml"
LEVERS_FILE = "levers.csv"
"""What each lever did alone (:mod:`ecalf.tune_levers`)."""
SEARCH_PLOT = "search.png"
LOCK_FILE = ".search.lock"
LOCKS_DIR = "locks"
SECONDS = "seconds"
"""A trial's user attribute: its wall time so far (a killed attempt's included)."""
SECONDS_BEFORE = "seconds before"
"""A retried trial's user attribute: the seconds its killed attempt had run."""
CELL_STEPS = 100_000
"""Cell i's epoch e is reported to the pruner as step ``i * CELL_STEPS + e``: trials compare like cells."""


# --------------------------------------------------------------------------------------------------
# The search space
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1
    log: bool = False


@dataclass(frozen=True)
class Choice:
    choices: tuple[str | int | float | bool | None, ...]


Distribution = FloatRange | IntRange | Choice


@dataclass(frozen=True)
class SearchSpace:
    """What a space file holds: ``params`` (dotted config key -> distribution) and ``set`` (overrides
    every trial shares)::

        set: [training.eval_every_steps=20]
        params:
          training.learning_rate: {float: [1.0e-5, 3.0e-3], log: true}
          training.warmup_steps: {int: [0, 200], step: 50}
          model.loss: {choice: [mse, l1, smooth_l1]}
    """

    params: dict[str, Distribution]
    set: tuple[str, ...] = ()


def parse_distribution(key: str, spec: Any) -> Distribution:
    """One ``params`` entry: ``{float: [low, high], log: bool}``, ``{int: [low, high], step: n, log:
    bool}`` or ``{choice: [v1, v2, ...]}``; anything else is a ConfigError naming ``key``."""
    where = f"params.{key}"
    if not isinstance(spec, Mapping) or len([k for k in ("float", "int", "choice") if k in spec]) != 1:
        raise ConfigError(
            f"{where}: give one of {{float: [low, high]}}, {{int: [low, high]}} or {{choice: [...]}}, "
            f"got {spec!r}"
        )
    kind = next(k for k in ("float", "int", "choice") if k in spec)
    allowed = {"float": {"float", "log"}, "int": {"int", "step", "log"}, "choice": {"choice"}}[kind]
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown entry {unknown[0]!r} for a {kind} (allowed: {sorted(allowed)})")
    values = spec[kind]
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: choice must be a non-empty list")
        if any(isinstance(v, (list, dict)) for v in values):
            raise ConfigError(f"{where}: choices must be single values (numbers, strings, true/false, null)")
        return Choice(tuple(values))
    log = spec.get("log", False)
    number = int if kind == "int" else (int, float)
    if (
        not isinstance(values, list)
        or len(values) != 2
        or any(isinstance(v, bool) or not isinstance(v, number) for v in values)
    ):
        raise ConfigError(f"{where}: {kind} must be [low, high] ({kind} numbers), got {values!r}")
    low, high = values
    if not low < high:
        raise ConfigError(f"{where}: low {low} must be below high {high}")
    if not isinstance(log, bool) or (log and low <= 0):
        raise ConfigError(f"{where}: log must be true or false, and a log range needs low > 0")
    if kind == "float":
        return FloatRange(float(low), float(high), log)
    step = spec.get("step", 1)
    if isinstance(step, bool) or not isinstance(step, int) or step <= 0 or (log and step != 1):
        raise ConfigError(f"{where}: step must be a positive integer (1 with log), got {step!r}")
    return IntRange(low, high, step, log)


def load_space(path: str | os.PathLike[str]) -> SearchSpace:
    """A space file (``configs/tune/*.yaml``), strictly: unknown top-level keys and bad specs are errors."""
    raw = read_yaml(path)
    if not isinstance(raw, Mapping) or not isinstance(raw.get("params"), Mapping) or not raw["params"]:
        raise ConfigError(f"{path}: a search space is a mapping with a non-empty `params` mapping")
    unknown = sorted(set(raw) - {"params", "set"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known keys here: params, set)")
    fixed = raw.get("set") or []
    if not isinstance(fixed, list) or not all(isinstance(s, str) for s in fixed):
        raise ConfigError(f"{path}: set must be a list of key=value strings")
    try:
        params = {str(k): parse_distribution(str(k), v) for k, v in raw["params"].items()}
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return SearchSpace(params, tuple(fixed))


def override(key: str, value: Any) -> str:
    """``key=value`` with ``value`` written so that YAML reads it back as the same value."""
    return f"{key}={yaml_scalar(value)}"


def trial_recipe(settings: SearchSettings, space: SearchSpace, values: Mapping[str, Any]) -> list[str]:
    """The overrides of the base config that a trial with ``values`` trains with: the search's own,
    the space's ``set``, then the values."""
    return [*settings.overrides, *space.set, *(override(k, v) for k, v in values.items())]


def check_space(
    config_file: str | os.PathLike[str], space: SearchSpace, overrides: Sequence[str] = ()
) -> None:
    """Every key of ``space`` is a setting of ``config_file``'s run config and every end of its range
    (every choice) a valid value there: a ConfigError names the first that is not. An override that
    names a key the space fixes (``set``) or searches (``params``) is refused: the space would win."""
    fixed = {item.split("=", 1)[0].strip() for item in space.set}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in fixed or key in space.params:
            how = "fixes it in its set:" if key in fixed else "searches it (params):"
            raise ConfigError(
                f"--set {item}: the search space {how} a trial would not use your value; change the "
                f"space file (a copy of it) instead"
            )
    base = [*overrides, *space.set]
    load_run_config(config_file, base)
    for key, dist in space.params.items():
        ends = dist.choices if isinstance(dist, Choice) else (dist.low, dist.high)
        for value in ends:
            try:
                load_run_config(config_file, [*base, override(key, value)])
            except ConfigError as exc:
                raise ConfigError(f"search space params.{key}={value!r}: {exc}") from None


# --------------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSettings:
    """One search: a base run config, a space, the pilot cells and the budget."""

    config: Path
    """The base run config (a preset, ``configs/ecalf/ETTh1.yaml``); each cell sets its data."""
    space: Path
    trials: int
    """Trials to have finished (completed, pruned or diverged) when the search ends."""
    cells: tuple[tuple[str, int], ...] = PILOT_CELLS
    """(dataset, horizon) pairs each trial trains on."""
    few_shot_percent: float = 10.0
    seed: int = 2021
    output_dir: Path | None = None
    """The search directory; default ``runs/tune/<space file stem>``."""
    data_dir: str | None = None
    overrides: tuple[str, ...] = ()
    """``key=value`` overrides of the base config for every trial (before the space's ``set``)."""
    sampler_seed: int = 0
    prune_from_epoch: int = 2
    """Scores are reported (and the median rule applied) from this epoch of each cell on."""
    startup_trials: int = 5
    """Finished trials before any trial is pruned."""
    first_trials: tuple[Mapping[str, Any], ...] = ()
    """Values tried first in a new search (e.g. the preset's own), before the sampler's."""
    snapshot: Path | None = None
    """A directory (e.g. one under version control) that gets a consistent copy of the study, the
    table and ``search.yaml`` after every trial; a search directory without a study continues from it.
    Not part of what a continued search must match."""

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {self.trials}")
        if not self.cells:
            raise ConfigError("a search needs at least one (dataset, horizon) cell")
        if any(h <= 0 for _, h in self.cells):
            raise ConfigError(f"horizons must be positive, got {[h for _, h in self.cells]}")
        if self.prune_from_epoch < 1 or self.startup_trials < 0:
            raise ConfigError("prune_from_epoch must be >= 1 and startup_trials >= 0")

    @property
    def directory(self) -> Path:
        return self.output_dir or Path("runs") / "tune" / self.space.stem

    def describe(self) -> dict[str, Any]:
        """What ``search.yaml`` holds: everything a continued search must share with the first start."""
        return {
            "config": str(self.config),
            "space": read_yaml(self.space),
            "cells": [[dataset, horizon] for dataset, horizon in self.cells],
            "few_shot_percent": self.few_shot_percent,
            "seed": self.seed,
            "data_dir": self.data_dir,
            "overrides": list(self.overrides),
            "sampler_seed": self.sampler_seed,
            "prune_from_epoch": self.prune_from_epoch,
            "startup_trials": self.startup_trials,
        }


def cells_from(datasets: Sequence[str] | None, horizons: Sequence[int] | None) -> tuple[tuple[str, int], ...]:
    """The cells of ``--datasets`` and ``--horizons``: one horizon for every dataset, or one per dataset
    (paired in order); neither: :data:`PILOT_CELLS`."""
    if not datasets and not horizons:
        return PILOT_CELLS
    if not datasets or not horizons:
        raise ConfigError("give --datasets and --horizons together (one horizon, or one per dataset)")
    if len(horizons) == 1:
        return tuple((d, horizons[0]) for d in datasets)
    if len(horizons) != len(datasets):
        raise ConfigError(
            f"{len(datasets)} datasets but {len(horizons)} horizons: give one horizon, or one per dataset"
        )
    return tuple(zip(datasets, horizons, strict=True))


@dataclass
class TrialOutcome:
    number: int
    state: str
    """``complete``, ``pruned`` or ``diverged``."""
    score: float | None
    """The mean ratio over every cell: completed trials only."""
    params: dict[str, Any]
    ratios: dict[str, float] = field(default_factory=dict)
    """Finished cells: best validation MSE / naive validation MSE."""
    running_score: float | None = None
    """A pruned trial's last running score (the cells it reached): never compared with ``score``."""
    seconds: float | None = None
    """Its wall time (with a killed attempt's before it); None for trials of earlier ecalf versions."""


@dataclass
class SearchSummary:
    directory: Path
    trials: list[TrialOutcome]
    best: TrialOutcome | None
    best_config: Path | None
    """The best trial's run config (``best.yaml``), None while no trial has completed."""


def _silent(line: str) -> None:
    pass


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise EcalfError("ecalf tune needs Optuna: pip install 'ecalf[tune]'") from None
    return optuna


def run_search(
    settings: SearchSettings,
    *,
    echo: Callable[[str], None] | None = print,
    best_config: str | os.PathLike[str] | None = None,
) -> SearchSummary:
    """Run (or continue) the search until ``settings.trials`` trials have finished; write the summary
    table and the best config (also to ``best_config`` when given). Prints one line per trial."""
    optuna = require_optuna()
    space = load_space(settings.space)
    check_space(settings.config, space, settings.overrides)
    check_cells(settings.cells)
    directory = settings.directory
    directory.mkdir(parents=True, exist_ok=True)
    show = echo or _silent
    with exclusive(directory / LOCK_FILE):  # one process at a time sets up, asks, or writes the table
        search = directory / SEARCH_FILE
        if search.is_file() and read_yaml(search) != settings.describe():
            raise EcalfError(
                f"{directory} holds another search (its {SEARCH_FILE} differs: config, space, cells or "
                "seed); continue it with the same arguments or choose another --output-dir"
            )
        restored = _restore_snapshot(settings)
        write_yaml(search, settings.describe())
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{(directory / STUDY_FILE).resolve()}",
            engine_kwargs={"connect_args": {"timeout": 120}},  # another worker may be writing
        )
        study = optuna.create_study(
            study_name="search", storage=storage, direction="minimize", load_if_exists=True
        )
        retried = _retry_killed_trials(optuna, study, storage, directory)
        if not study.trials:
            for values in settings.first_trials:
                study.enqueue_trial(dict(values))
        finished = len(_finished(optuna, study))
        others = len(_running(optuna, study))
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials)
    if restored:
        show(f"{directory}: continued from the snapshot in {settings.snapshot}")
    if finished or retried or others:
        again = f", {retried} killed trial(s) tried again" if retried else ""
        alongside = f", {others} running in other processes" if others else ""
        show(f"{directory}: {finished} trial(s) finished{again}{alongside}")
    distributions = {key: _optuna_distribution(optuna, d) for key, d in space.params.items()}
    spent: list[float] = []  # seconds of the trials this process ran
    while True:
        with exclusive(directory / LOCK_FILE):
            _retry_killed_trials(optuna, study, storage, directory)  # a worker killed meanwhile
            others = len(_running(optuna, study))
            started = len(_finished(optuna, study)) + others
            if started >= settings.trials:
                # the last process to finish writes the best recipe; the others, the table
                summary = write_summary(settings, study, best_config, table_only=others > 0)
                write_snapshot(settings)
                break
            # trial k samples from seed + k: the same values whether a search ran in one go or not
            study.sampler = optuna.samplers.TPESampler(seed=settings.sampler_seed + len(study.trials))
            trial = study.ask(distributions)
            if "directory" not in trial.user_attrs:
                trial.set_user_attr("directory", f"{trial.number:04d}")
            held = _trial_lock(directory, trial.number)
            held.acquire(timeout=0)  # held while this process runs it: the trial is alive
        start = time.perf_counter()
        show(f"trial {trial.number} ({started + 1}/{settings.trials}): " + " ".join(
            override(k, v) for k, v in trial.params.items()
        ))  # fmt: skip
        try:
            outcome = _run_trial(optuna, study, trial, settings, space, show)
        finally:
            held.release()
        with exclusive(directory / LOCK_FILE):
            finished = len(_finished(optuna, study))
            if finished < settings.trials:  # the table so far, to read while the search goes on
                write_summary(settings, study, table_only=True)
            write_snapshot(settings)
        score = "-" if outcome.score is None else f"{outcome.score:.4f}"
        best = (
            f" | best {study.best_value:.4f} (trial {study.best_trial.number})"
            if _completed(optuna, study)
            else ""
        )
        spent.append(time.perf_counter() - start)
        show(
            f"trial {trial.number} {outcome.state}: score {score}{best} | {spent[-1]:.0f}s"
            + _time_left(spent, settings.trials - finished)
        )
    if others:
        show(f"{directory}: {others} trial(s) still running in other processes; the last to finish "
             "writes the best recipe")  # fmt: skip
    return summary


def _time_left(spent: Sequence[float], left: int) -> str:
    """`` | ~2.5 h left (12 trials at 750 s, the mean so far)``; '' when none is left. Pruned trials
    make the mean fall as a search goes on, so this errs long."""
    if left <= 0 or not spent:
        return ""
    mean = sum(spent) / len(spent)
    return f" | ~{format_duration(mean * left)} left ({left} trials at {mean:.0f} s, the mean so far)"


def _restore_snapshot(settings: SearchSettings) -> bool:
    """A search directory without a study takes the snapshot's (a fresh machine continuing a search
    from its committed snapshot); a snapshot of another search is refused. True when it did."""
    snapshot = settings.snapshot
    if (
        snapshot is None
        or (settings.directory / STUDY_FILE).is_file()
        or not (snapshot / STUDY_FILE).is_file()
    ):
        return False
    if (snapshot / SEARCH_FILE).is_file() and read_yaml(snapshot / SEARCH_FILE) != settings.describe():
        raise EcalfError(
            f"the snapshot in {snapshot} is of another search (its {SEARCH_FILE} differs): give the "
            "arguments it was started with, or another --snapshot"
        )
    settings.directory.mkdir(parents=True, exist_ok=True)
    _copy_study(snapshot / STUDY_FILE, settings.directory / STUDY_FILE)
    return True


def write_snapshot(settings: SearchSettings) -> None:
    """The study (a consistent SQLite copy), ``trials.csv``, ``search.yaml`` and (once written)
    ``best.yaml`` and ``levers.csv`` into the snapshot directory, each file replaced atomically."""
    if settings.snapshot is None:
        return
    settings.snapshot.mkdir(parents=True, exist_ok=True)
    _copy_study(settings.directory / STUDY_FILE, settings.snapshot / STUDY_FILE)
    for name in (SUMMARY_FILE, SEARCH_FILE, BEST_FILE, LEVERS_FILE):
        if (settings.directory / name).is_file():
            write_text(settings.snapshot / name, (settings.directory / name).read_text())


def _copy_study(source: Path, target: Path) -> None:
    """``source`` SQLite database copied by SQLite's backup (consistent while another connection
    writes it) to a temporary sibling of ``target``, then renamed over it."""
    import sqlite3

    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    reading = sqlite3.connect(f"file:{source.resolve()}?mode=ro", uri=True)
    with contextlib.closing(reading) as src, contextlib.closing(sqlite3.connect(temporary)) as dst:
        src.backup(dst)
    os.replace(temporary, target)


def _run_trial(
    optuna: Any,
    study: optuna.Study,
    trial: optuna.Trial,
    settings: SearchSettings,
    space: SearchSpace,
    show: Callable[[str], None],
) -> TrialOutcome:
    """Train the trial's recipe on every cell; tell the study how it ended. The trial's ``seconds``
    (this attempt's, after every epoch, plus those of a killed attempt it retries) go with it."""
    params = dict(trial.params)
    ratios: dict[str, float] = {}
    trial_dir = settings.directory / TRIALS_DIR / str(trial.user_attrs["directory"])
    recipe = trial_recipe(settings, space, params)
    start, before = time.perf_counter(), float(trial.user_attrs.get(SECONDS_BEFORE, 0.0))

    def clock() -> None:
        trial.set_user_attr(SECONDS, round(before + time.perf_counter() - start, 1))

    try:
        for index, (dataset, horizon) in enumerate(settings.cells):
            config = cell_config(settings, dataset, horizon, recipe)
            name = cell_name(dataset, horizon)

            report = _reporter(optuna, trial, settings, list(ratios.values()), index, name, clock)
            metrics = validate_cell(config, trial_dir / name, report)
            ratios[name] = metrics.ratio
            trial.set_user_attr(f"ratio {name}", ratios[name])
            show(cell_line(name, metrics))
    except optuna.TrialPruned:
        clock()
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return TrialOutcome(trial.number, "pruned", None, params, ratios)
    except TrainingDiverged as exc:
        trial.set_user_attr("diverged", str(exc))
        clock()
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return TrialOutcome(trial.number, "diverged", None, params, ratios)
    score = sum(ratios.values()) / len(ratios)
    clock()
    study.tell(trial, score)
    return TrialOutcome(trial.number, "complete", score, params, ratios)


def _reporter(
    optuna: Any,
    trial: optuna.Trial,
    settings: SearchSettings,
    done: list[float],
    index: int,
    name: str,
    clock: Callable[[], None] = lambda: None,
) -> Callable[[float, int], None]:
    """The epoch report of cell ``index`` (``done``: the ratios of the cells before it): the running
    score (the cells so far, this one at its best yet) at step ``index * CELL_STEPS + epoch``, from
    ``settings.prune_from_epoch`` on; raises TrialPruned when the median rule says so. ``clock()``
    records the trial's time so far after every epoch (so a killed trial keeps it)."""

    def report(best_ratio: float, epoch: int) -> None:
        clock()
        if epoch < settings.prune_from_epoch:
            return
        running = (sum(done) + best_ratio) / (index + 1)
        trial.report(running, index * CELL_STEPS + epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"running score {running:.4f} at {name}, epoch {epoch}")

    return report


def cell_config(settings: SearchSettings, dataset: str, horizon: int, recipe: Sequence[str]) -> RunConfig:
    """A cell's run config as the benchmark grid builds it (:meth:`ecalf.benchmark.Cell.config`): the
    base config with the recipe's overrides, then the cell's dataset, horizon, few-shot share and seed."""
    return recipe_cell_config(
        settings.config, dataset, horizon, recipe, settings.few_shot_percent, settings.seed, settings.data_dir
    )


def recipe_cell_config(
    config_file: str | os.PathLike[str],
    dataset: str,
    horizon: int,
    recipe: Sequence[str],
    few_shot_percent: float,
    seed: int,
    data_dir: str | None = None,
) -> RunConfig:
    """:func:`cell_config` for any config file; ``{dataset}`` in its name is the cell's dataset (a
    per-dataset recipe, as in a grid)."""
    path = str(config_file).replace("{dataset}", Path(dataset).stem)
    label = model_name_for_config(type(load_run_config(path).model))
    cell = Cell(CellId(label, dataset, "", "few_shot", horizon, seed), path, tuple(recipe), few_shot_percent)
    return cell.config((), data_dir)


def check_cells(cells: Sequence[tuple[str, int]]) -> None:
    """Every cell's dataset is a registered name or a CSV file: a ConfigError names the first that is not."""
    for dataset, _ in cells:
        if find_spec(dataset) is None and not Path(dataset).is_file():
            raise ConfigError(f"unknown dataset {dataset!r}: a name of `ecalf data list` or a CSV path")


def cell_line(name: str, metrics: ValidationMetrics) -> str:
    """A validated cell's progress line: validation MSE, the naive forecast's, their ratio, best step."""
    return (
        f"  {name}: validation mse {metrics.best_val_mse:.4f} / naive {metrics.naive_val_mse:.4f} = "
        f"{metrics.ratio:.4f} (best epoch {metrics.best_epoch}, step {metrics.best_step})"
    )


def cell_name(dataset: str, horizon: int) -> str:
    return f"{Path(dataset).stem}-H{horizon}"


def validate_cell(
    config: RunConfig, run_dir: Path, report: Callable[[float, int], None] | None = None
) -> ValidationMetrics:
    """Fit ``config`` into the run directory ``run_dir`` and validate it; the test split is never read.

    ``report(best_ratio, epoch)`` is called after every epoch with the best validation MSE so far
    relative to the naive forecast's (it may raise to stop the run: a pruned trial). A finished run of
    the same config is returned as it is; an unfinished one continues from its last finished epoch."""
    directory = RunDirectory(run_dir)
    if config.training.num_threads:
        torch.set_num_threads(config.training.num_threads)
    splits = prepare_splits(config.data)
    config = resolve_model_config(config, splits)
    if directory.has_config() and directory.read_config() != config:
        raise EcalfError(f"{run_dir} holds a run of another config; remove it or choose another --output-dir")
    if directory.has_validation():
        return directory.read_validation()
    device = resolve_device(config.training.device)
    naive = naive_validation_mse(splits, config.training.eval_batch_size, config.training.val_stride)
    progress = directory.progress()
    best = [progress.best_mse if progress is not None else math.inf]
    run_dir.mkdir(parents=True, exist_ok=True)
    directory.remove_temporary_files()
    directory.write_config(config)
    tracker = open_tracker(config.training.tracking, run_dir, append=True)

    def note_best(model: ForecastModel, record: EpochLog) -> None:
        best[0] = record.val_mse

    def on_epoch_end(record: EpochLog) -> None:
        if report is not None:
            report(best[0] / naive, record.epoch)

    try:
        with directory.open_log(append=True) as log_file:

            def log(line: str) -> None:
                log_file.write(line + "\n")

            log(f"validation only (a search trial): naive validation mse {naive:.4f}")
            fitted = fit_model(
                config, splits.train, splits.val, device=device, log=log, tracker=tracker,
                on_improvement=note_best, on_epoch_end=on_epoch_end, directory=directory,
            )  # fmt: skip
    finally:
        tracker.close()
    result = fitted.result
    metrics = ValidationMetrics(
        model=model_name_for_config(type(config.model)),
        dataset=splits.spec.name,
        prediction_length=config.data.prediction_length,
        few_shot_percent=config.data.few_shot_percent,
        seed=config.seed,
        best_val_mse=result.best_val_mse,
        naive_val_mse=naive,
        best_epoch=result.best_epoch,
        best_step=result.best_step,
        epochs_run=result.epochs_run,
        steps=result.steps,
        stopped=result.stopped,
        train_seconds=result.train_seconds,
        history=list(result.history),
    )
    if result.stopped in ("untrainable", "closed_form"):
        directory.write_weights(snapshot(fitted.model), result.best_epoch)
    directory.write_validation(metrics)
    directory.checkpoint.remove()
    return metrics


def naive_validation_mse(splits: ForecastSplits, batch_size: int, stride: int = 1) -> float:
    """The last-value forecast's MSE on the validation windows that training scores (every
    ``stride``-th, ``training.val_stride``): the denominator of a cell's ratio."""
    val = splits.val.strided(stride)
    naive = NaiveForecast(NaiveConfig(val.context_length, val.prediction_length, val.num_channels))
    return evaluate(naive, val, batch_size=batch_size).mse


# --------------------------------------------------------------------------------------------------
# Study bookkeeping, the summary and the best config
# --------------------------------------------------------------------------------------------------


def _optuna_distribution(optuna: Any, dist: Distribution) -> Any:
    if isinstance(dist, FloatRange):
        return optuna.distributions.FloatDistribution(dist.low, dist.high, log=dist.log)
    if isinstance(dist, IntRange):
        return optuna.distributions.IntDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
    return optuna.distributions.CategoricalDistribution(list(dist.choices))


def _finished(optuna: Any, study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count towards the budget: completed, pruned, or failed by divergence (not killed)."""
    states = optuna.trial.TrialState
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (states.COMPLETE, states.PRUNED)
        or (t.state == states.FAIL and "diverged" in t.user_attrs)
    ]


def _completed(optuna: Any, study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def _running(optuna: Any, study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))


def _trial_lock(directory: Path, number: int) -> Any:
    """The lock a worker holds while it runs trial ``number`` (flock: freed when the process dies)."""
    from filelock import FileLock

    path = directory / LOCKS_DIR / f"trial{number:04d}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path, is_singleton=False, preserve_lock_file=True)


def _alive(directory: Path, number: int) -> bool:
    """Whether a process runs trial ``number`` now (it holds the trial's lock)."""
    from filelock import Timeout

    lock = _trial_lock(directory, number)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def _retry_killed_trials(optuna: Any, study: optuna.Study, storage: Any, directory: Path) -> int:
    """A trial RUNNING in the study that no process runs (nobody holds its lock) was killed: mark it
    failed and queue its values again, in its own directory. Returns how many. Called under the
    search's lock."""
    states = optuna.trial.TrialState
    killed = [t for t in _running(optuna, study) if not _alive(directory, t.number)]
    for trial in killed:
        study_id = storage.get_study_id_from_name(study.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "killed", True)
        storage.set_trial_state_values(trial_id, states.FAIL)
        study.enqueue_trial(
            dict(trial.params),
            user_attrs={
                "directory": trial.user_attrs.get("directory"),
                SECONDS_BEFORE: float(trial.user_attrs.get(SECONDS, 0.0)),  # its epochs so far
            },
        )
    return len(killed)


def _outcomes(optuna: Any, study: optuna.Study, names: Sequence[str]) -> list[TrialOutcome]:
    """The finished trials of ``study`` as :class:`TrialOutcome` (``names``: the cells)."""
    outcomes = []
    for t in _finished(optuna, study):
        state = {"COMPLETE": "complete", "PRUNED": "pruned"}.get(t.state.name, "diverged")
        ratios = {n: float(t.user_attrs[f"ratio {n}"]) for n in names if f"ratio {n}" in t.user_attrs}
        # Optuna gives a pruned trial its last reported (running) score as its value: over the cells
        # it reached only, so it is kept apart and never competes with a completed trial's score
        score = t.value if state == "complete" else None
        running = t.value if state == "pruned" else None
        seconds = t.user_attrs.get(SECONDS)
        outcomes.append(
            TrialOutcome(t.number, state, score, dict(t.params), ratios, running, _float_or_none(seconds))
        )
    return outcomes


def search_status(settings: SearchSettings) -> tuple[SearchSummary, int]:
    """Where a search stands, read without running or writing anything (``ecalf tune --status``): its
    finished trials (the best completed one) and how many run now. From the search directory's study,
    else from its snapshot's."""
    optuna = require_optuna()
    for directory in (settings.directory, settings.snapshot):
        if directory is not None and (directory / STUDY_FILE).is_file():
            break
    else:
        raise EcalfError(
            f"{settings.directory} holds no search yet: run `ecalf tune` with these arguments first"
        )
    if (directory / SEARCH_FILE).is_file() and read_yaml(directory / SEARCH_FILE) != settings.describe():
        raise EcalfError(
            f"{directory} holds another search (its {SEARCH_FILE} differs): give the arguments it was "
            "started with"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{(directory / STUDY_FILE).resolve()}")
    outcomes = _outcomes(optuna, study, [cell_name(d, h) for d, h in settings.cells])
    completed = [o for o in outcomes if o.state == "complete" and o.score is not None]
    best = min(completed, key=lambda o: (o.score, o.number)) if completed else None
    best_file = settings.directory / BEST_FILE
    summary = SearchSummary(settings.directory, outcomes, best, best_file if best_file.is_file() else None)
    return summary, len(_running(optuna, study))


def write_summary(
    settings: SearchSettings,
    study: optuna.Study,
    best_config: str | os.PathLike[str] | None = None,
    *,
    table_only: bool = False,
) -> SearchSummary:
    """``trials.csv`` (one row per finished trial: number, state, score, each cell's ratio, values) and
    ``best.yaml`` (also written to ``best_config``): the base config with the best trial's values.
    ``table_only``: ``trials.csv`` alone (after each trial of a search still running: a best recipe is
    written only when the search has its trials)."""
    optuna = require_optuna()
    space = load_space(settings.space)
    names = [cell_name(d, h) for d, h in settings.cells]
    outcomes = _outcomes(optuna, study, names)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["trial", "state", "score", *names, *space.params, "pruned_running_score", "seconds"])
    for o in outcomes:
        cells = [f"{o.ratios[n]:.6f}" if n in o.ratios else "" for n in names]
        values = (o.params.get(k, "") for k in space.params)
        seconds = "" if o.seconds is None else f"{o.seconds:.0f}"
        writer.writerow(
            [o.number, o.state, _number(o.score), *cells, *values, _number(o.running_score), seconds]
        )
    directory = settings.directory
    write_text(directory / SUMMARY_FILE, out.getvalue())
    completed = [o for o in outcomes if o.state == "complete" and o.score is not None]
    best = min(completed, key=lambda o: (o.score, o.number)) if completed else None
    if outcomes:
        _plot_search(settings, space, outcomes, best)
    written = None
    if best is not None and not table_only:
        recipe = trial_recipe(settings, space, best.params)
        written = write_best_config(settings, best, recipe, directory / BEST_FILE)
        if best_config is not None:
            write_best_config(settings, best, recipe, Path(best_config))
    return SearchSummary(directory, outcomes, best, written)


def _plot_search(
    settings: SearchSettings, space: SearchSpace, outcomes: Sequence[TrialOutcome], best: TrialOutcome | None
) -> None:
    """``search.png``: every trial's score in order with the best so far, and against each value."""
    from ecalf.plots import SearchPoint, plot_search

    points = [SearchPoint(o.number, o.state, o.score, o.params) for o in outcomes]
    logs = [k for k, d in space.params.items() if isinstance(d, (FloatRange, IntRange)) and d.log]
    lead = (
        f"best trial {best.number}, score {best.score:.4f}"
        if best and best.score is not None
        else "none completed"
    )
    title = f"{settings.directory.name}: {len(outcomes)} trials ({lead})"
    plot_search(points, list(space.params), settings.directory / SEARCH_PLOT, log_params=logs, title=title)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def write_best_config(
    settings: SearchSettings, best: TrialOutcome, recipe: Sequence[str], path: Path
) -> Path:
    """The base config file with the best recipe applied, as a run config YAML (checked by loading it)."""
    raw = read_yaml(settings.config) or {}
    data = apply_overrides(raw, recipe)
    run_config_from_dict(data, source=str(path))  # every value type-checked before it is written
    header = (
        f"# Tuned by `ecalf tune` (docs/tuning-protocol.md): trial {best.number} of {settings.directory}, "
        f"score {best.score:.4f}\n# (mean validation MSE / naive validation MSE over "
        + ", ".join(cell_name(d, h) for d, h in settings.cells)
        + f"; few-shot {settings.few_shot_percent:g} %, seed {settings.seed}).\n"
        f"# Base: {settings.config}; searched: {settings.space}.\n"
    )
    return write_yaml(path, data, header=header)


def search_line(summary: SearchSummary) -> str:
    """One line on a search's state: trials by state and the best score."""
    counts: dict[str, int] = {}
    for t in summary.trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    states = ", ".join(f"{n} {s}" for s, n in counts.items())
    timed = [t.seconds for t in summary.trials if t.seconds is not None]
    if timed:
        untimed = len(summary.trials) - len(timed)
        states += f"; {sum(timed) / 3600:.1f} h of trials" + (f" ({untimed} untimed)" if untimed else "")
    if summary.best is None or summary.best.score is None:
        return f"{summary.directory}: {len(summary.trials)} trials ({states}); none completed"
    return (
        f"{summary.directory}: {len(summary.trials)} trials ({states}); best trial {summary.best.number}, "
        f"score {summary.best.score:.4f}; table {summary.directory / SUMMARY_FILE}, "
        + (
            f"best config {summary.best_config}"
            if summary.best_config
            else "no best config until the last trial"
        )
    )


__all__ = [
    "PILOT_CELLS",
    "Choice",
    "FloatRange",
    "IntRange",
    "SearchSettings",
    "SearchSpace",
    "SearchSummary",
    "TrialOutcome",
    "cells_from",
    "check_space",
    "load_space",
    "naive_validation_mse",
    "run_search",
    "search_status",
    "validate_cell",
    "write_snapshot",
    "write_summary",
]
