"""The grid file (:class:`Grid`, strict YAML like a run config) and its cells (:class:`Cell`).

A cell is (model, dataset, setting, zero-shot target, horizon, seed); its config is the model's YAML
with the grid's ``set``, the model's ``set``, its matching ``cases`` and the cell's own values.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from ecalf.artifacts import read_yaml
from ecalf.benchmark.results import CellId
from ecalf.config import RunConfig, apply_overrides, from_dict
from ecalf.conformal import check_levels
from ecalf.errors import ConfigError

if TYPE_CHECKING:
    pass


SettingName = Literal["full", "few_shot", "zero_shot"]


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
    ensemble: bool = False
    """Its seed ensemble is part of the grid (:mod:`ecalf.ensembles`): a cell's ``<label>+ens`` row,
    the test forecast averaged over all of the model's seeds, is added as soon as the cell has a row
    for each of them (while their runs are on this machine). A run of only some of its seeds
    (``--seeds``) adds none."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.+\-]+", self.label):
            raise ConfigError(f"model label {self.label!r}: use letters, digits and _ . + - only")
        if self.seeds is not None and not self.seeds:
            raise ConfigError(f"model {self.label!r}: seeds is empty; leave it out to use the grid's seeds")

    def overrides(self, dataset: str, horizon: int) -> tuple[str, ...]:
        """This model's overrides for a cell of ``dataset`` at ``horizon``."""
        cases = [o for case in self.cases if case.applies(dataset, horizon) for o in case.set]
        return (*self.set, *cases)


@dataclass(frozen=True)
class GridPair:
    """One dataset at one horizon: a grid with ``pairs`` runs only these (e.g. a search's pilot cells)."""

    dataset: str
    horizon: int


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
    levels: list[float] = field(default_factory=list)
    """Prediction-interval levels (percent) scored on every cell's test split, calibrated on its
    validation split (:func:`ecalf.run.interval_scores`): the rows gain ``coverage_<level>``,
    ``width_<level>`` and ``winkler_<level>`` columns."""
    adaptive_intervals: bool = False
    """With ``levels``: also the adaptive-conformal scores (``aci_coverage_<level>``, ...)."""
    pairs: list[GridPair] = field(default_factory=list)
    """Only these dataset/horizon pairs of ``datasets`` x ``horizons`` (all of them when empty)."""
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
        for pair in self.pairs:
            if pair.dataset not in self.datasets or pair.horizon not in self.horizons:
                raise ConfigError(
                    f"pair {pair.dataset} H{pair.horizon} is not in the grid's datasets {self.datasets} "
                    f"x horizons {self.horizons}; add it there or remove the pair"
                )
        check_levels(self.levels)
        if self.adaptive_intervals and not self.levels:
            raise ConfigError("adaptive_intervals: true needs interval levels (levels: [80, 95])")
        for model in self.models:
            stray = sorted(set(model.seeds or []) - set(self.seeds))
            if stray:
                raise ConfigError(
                    f"model {model.label!r}: seeds {stray} are not among the grid's {self.seeds}"
                )
            if model.ensemble and len(set(self.seeds_of(model))) < 2:
                raise ConfigError(
                    f"model {model.label!r}: ensemble: true averages two or more seeds, it has "
                    f"{self.seeds_of(model)}; give the grid (or the model) more seeds or drop ensemble"
                )
            if model.ensemble and model.label + "+ens" in labels:
                raise ConfigError(f"model label {model.label}+ens is its seed ensemble's; rename that model")

    def seeds_of(self, model: GridModel) -> list[int]:
        """The seeds ``model`` runs in this grid: its own, or the grid's."""
        return model.seeds if model.seeds is not None else self.seeds

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
        full = grid.seeds_of(model)
        own = [s for s in full if s in kept_seeds]
        if not own:
            continue  # this model runs none of the chosen seeds
        if model.seeds is not None:
            model = dataclasses.replace(model, seeds=own)
        if model.ensemble and own != full:
            model = dataclasses.replace(model, ensemble=False)  # its ensemble needs all of its seeds
        chosen.append(model)
    if not chosen:
        raise ConfigError(f"models {labels} run none of seeds {kept_seeds} in grid {grid.name!r}")
    kept_datasets = keep("datasets", datasets, grid.datasets)
    kept_horizons = keep("horizons", horizons, grid.horizons)
    pairs = [p for p in grid.pairs if p.dataset in kept_datasets and p.horizon in kept_horizons]
    if grid.pairs and not pairs:
        raise ConfigError(
            f"grid {grid.name!r} runs only the pairs {[f'{p.dataset} H{p.horizon}' for p in grid.pairs]}: "
            "none of them is among the chosen datasets and horizons"
        )
    return dataclasses.replace(
        grid,
        models=chosen,
        datasets=kept_datasets,
        horizons=kept_horizons,
        seeds=kept_seeds,
        pairs=pairs,
    )


@dataclass(frozen=True)
class Cell:
    """One cell of a grid: its identity (:class:`CellId`) and how it trains (config file, the model's
    overrides, the setting's few-shot percent)."""

    id: CellId
    config_file: str
    model_overrides: tuple[str, ...]
    few_shot_percent: float
    levels: tuple[float, ...] = ()
    """Interval levels scored on its test split (the grid's ``levels``)."""
    adaptive_intervals: bool = False

    @property
    def model(self) -> str:
        return self.id.model

    @property
    def dataset(self) -> str:
        return self.id.dataset

    @property
    def target(self) -> str:
        """Zero-shot target dataset; empty otherwise."""
        return self.id.target

    @property
    def setting(self) -> SettingName:
        return cast(SettingName, self.id.setting)

    @property
    def horizon(self) -> int:
        return self.id.horizon

    @property
    def seed(self) -> int:
        return self.id.seed

    @property
    def run_id(self) -> str:
        return self.id.run_id

    def config(
        self,
        grid_overrides: Sequence[str],
        data_dir: str | None,
        config_data: Mapping[str, Any] | None = None,
    ) -> RunConfig:
        """This cell's typed run config: its model's YAML (``config_data``: that file already parsed, as a
        Ray worker gets it) with the grid's and the model's overrides (strings from the grid file), then
        the cell's own place in the grid (dataset, horizon, setting, seed, data directory) set on the
        typed config."""
        from ecalf.config_files import load_run_config, run_config_from_dict  # every model (torch)

        given = [*grid_overrides, *self.model_overrides]
        if config_data is None:
            config = load_run_config(self.config_file, given)
        else:
            config = run_config_from_dict(apply_overrides(config_data, given), source=self.config_file)
        data = dataclasses.replace(
            config.data,
            dataset=self.dataset,
            prediction_length=self.horizon,
            few_shot_percent=float(self.few_shot_percent),
            zero_shot_target=self.target or None,
            data_dir=data_dir if data_dir is not None else config.data.data_dir,
        )
        return dataclasses.replace(config, data=data, seed=self.seed)

    def overrides(self, grid_overrides: Sequence[str], data_dir: str | None) -> list[str]:
        """The cell's config as ``key=value`` overrides of its YAML, for the results CSV's provenance
        column (and the recipe that estimates compare); :meth:`config` builds the config itself."""
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
        return str(self.id)


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
                    if grid.pairs and GridPair(dataset, horizon) not in grid.pairs:
                        continue
                    for seed in grid.seeds:
                        for model in grid.models:
                            if seed not in grid.seeds_of(model):
                                continue
                            config_file = model.config.replace("{dataset}", dataset)
                            cells.append(
                                Cell(
                                    CellId(model.label, dataset, target, setting.name, horizon, seed),
                                    config_file,
                                    model.overrides(dataset, horizon),
                                    float(setting.few_shot_percent),
                                    tuple(grid.levels),
                                    grid.adaptive_intervals,
                                )
                            )
    return cells


def check_grid(grid: Grid, data_dir: str | None = None) -> None:
    """Load every distinct cell config once, so a typo fails before hours of running, not during."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for cell in grid_cells(grid):
        if (cell.config_file, cell.model_overrides) in seen:
            continue
        seen.add((cell.config_file, cell.model_overrides))
        if not Path(cell.config_file).is_file():
            raise ConfigError(f"grid model {cell.model!r}: config file {cell.config_file} does not exist")
        cell.config(grid.set, data_dir)
