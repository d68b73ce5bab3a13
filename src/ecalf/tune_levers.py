"""What each lever of a tuned recipe does alone (``ecalf tune ... --levers``), on the validation split.

From the best trial of a search, one lever at a time goes back to the value the recipe has without
the search (the base config with the overrides and the space's ``set``) while every other searched
value stays tuned, then all of them at once (``untuned``: what the search bought on validation);
each such recipe is trained on the search's pilot cells and scored like a trial
(mean over the cells of best validation MSE / naive validation MSE). Extra variants (``variants``:
a few ``key=value`` overrides applied together on top of the best recipe, e.g. turning step
validation off) are scored the same way. Nothing here reads a test window.

Written into the search directory (:mod:`ecalf.tune` names it): ``levers/<variant>/<cell>/``, one
run directory per variant and cell (finished ones are kept, so a killed run continues), and
``levers.csv``: one row per variant with its values, score and change against the best trial,
rewritten (and copied to the search's snapshot) as each cell finishes, a variant's score blank until
all its cells have one. A cell whose run directory is gone (a fresh machine) but whose ratio a
``levers.csv`` of the same best trial holds (the search directory's, else the snapshot's) is taken
from it rather than trained again.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ecalf.artifacts import write_text
from ecalf.config_files import load_run_config
from ecalf.errors import ConfigError, EcalfError
from ecalf.run_dir import RunDirectory
from ecalf.tune import (
    LEVERS_FILE,
    SearchSettings,
    cell_config,
    cell_name,
    load_space,
    override,
    require_optuna,
    trial_recipe,
    validate_cell,
    write_snapshot,
)

LEVERS_DIR = "levers"
HEADER = ("variant", "tuned", "score", "change")
"""``levers.csv``'s first columns; one column per cell follows."""
UNTUNED = "untuned"
"""The variant with every searched value back at once: the untuned recipe, what the search bought."""


@dataclass(frozen=True)
class Lever:
    """One variant of the best recipe: ``changes`` (``key=value``) applied on top of it."""

    name: str
    changes: tuple[str, ...]
    tuned: str
    """The best trial's values of the changed keys (``key=value`` joined by spaces)."""

    @property
    def label(self) -> str:
        """How tables name it: ``untuned``, or its changes."""
        return UNTUNED if self.name == UNTUNED else " ".join(self.changes)


@dataclass
class LeverOutcome:
    lever: Lever
    ratios: dict[str, float] = field(default_factory=dict)
    """Validation ratio per cell name; the cells not scored yet are missing."""

    def score(self, cells: Sequence[str]) -> float | None:
        """The mean ratio over ``cells``, once every one of them has one."""
        if any(name not in self.ratios for name in cells):
            return None
        return sum(self.ratios[name] for name in cells) / len(cells)


@dataclass
class LeverTable:
    best_trial: int
    best_score: float
    outcomes: list[LeverOutcome]
    unchanged: list[str]
    """Searched keys whose tuned value is already the untuned one (nothing to take back)."""


def _setting(config: Any, key: str) -> Any:
    return functools.reduce(getattr, key.split("."), config)


def levers_of(
    settings: SearchSettings, best_params: dict[str, Any], variants: Sequence[Sequence[str]] = ()
) -> tuple[list[Lever], list[str]]:
    """One lever per searched key whose tuned value differs from the untuned recipe's, then (when
    there are several) all of them at once (:data:`UNTUNED`), then one per variant; and the searched
    keys whose tuned value is the untuned one."""
    space = load_space(settings.space)
    untuned = load_run_config(settings.config, trial_recipe(settings, space, {}))
    tuned = load_run_config(settings.config, trial_recipe(settings, space, best_params))
    levers, unchanged = [], []
    for key in space.params:
        before, after = _setting(untuned, key), _setting(tuned, key)
        if before == after:
            unchanged.append(key)
            continue
        levers.append(Lever(key, (override(key, before),), override(key, after)))
    if len(levers) > 1:  # the whole search's worth: every lever back at once
        levers.append(
            Lever(
                UNTUNED,
                tuple(c for lever in levers for c in lever.changes),
                " ".join(lv.tuned for lv in levers),
            )
        )
    for variant in variants:
        if not variant:
            raise ConfigError("a lever variant needs at least one key=value")
        keys = []
        for item in variant:
            if "=" not in item:
                raise ConfigError(f"lever variant {item!r}: give key=value")
            keys.append(item.split("=", 1)[0].strip())
        load_run_config(
            settings.config, [*trial_recipe(settings, space, {}), *variant]
        )  # a bad key or value: here
        now = " ".join(override(k, _setting(tuned, k)) for k in keys)
        levers.append(Lever(" ".join(variant), tuple(variant), now))
    return levers, unchanged


def _directory_name(lever: Lever) -> str:
    if lever.name == UNTUNED:
        return UNTUNED
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", "+".join(lever.changes))[:120]


def run_levers(
    settings: SearchSettings,
    variants: Sequence[Sequence[str]] = (),
    *,
    echo: Callable[[str], None] | None = print,
) -> LeverTable:
    """Score every lever of the search's best trial (:func:`levers_of`) on the search's cells; write
    ``levers.csv``. The search must have a completed trial."""
    optuna = require_optuna()
    directory = settings.directory
    study_file = directory / "study.db"
    if not study_file.is_file():
        raise EcalfError(f"{directory} holds no search yet: run `ecalf tune` with these arguments first")
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{study_file.resolve()}")
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        raise EcalfError(f"{directory}: no trial has completed yet, so there is no best recipe to take apart")
    best = min(completed, key=lambda t: (t.value, t.number))
    space = load_space(settings.space)
    levers, unchanged = levers_of(settings, dict(best.params), variants)
    show = echo or (lambda line: None)
    show(
        f"levers of trial {best.number} (score {best.value:.4f}), one at a time, "
        f"on {len(settings.cells)} cell(s)"
    )
    recipe = trial_recipe(settings, space, best.params)
    names = [cell_name(d, h) for d, h in settings.cells]
    earlier = _earlier_ratios(settings, best.number, names)
    outcomes = [LeverOutcome(lever) for lever in levers]
    table = LeverTable(best.number, float(best.value), outcomes, unchanged)
    for outcome in outcomes:
        lever = outcome.lever
        known = earlier.get((lever.label, lever.tuned), {})
        for (dataset, horizon), name in zip(settings.cells, names, strict=True):
            run_dir = directory / LEVERS_DIR / _directory_name(lever) / name
            if name in known and not RunDirectory(run_dir).has_validation():
                outcome.ratios[name] = known[name]  # scored before, its run is not on this machine
                continue
            config = cell_config(settings, dataset, horizon, [*recipe, *lever.changes])
            outcome.ratios[name] = validate_cell(config, run_dir).ratio
            write_levers(settings, table)
            write_snapshot(settings)  # levers.csv beside the study's snapshot, when the search keeps one
        score = sum(outcome.ratios.values()) / len(names)  # every cell has its ratio now
        change = (score - best.value) / best.value
        show(f"  {lever.label} (tuned: {lever.tuned}): score {score:.4f} ({change:+.1%})")
    write_levers(settings, table)
    write_snapshot(settings)
    return table


def _earlier_ratios(
    settings: SearchSettings, best_trial: int, names: list[str]
) -> dict[tuple[str, str], dict[str, float]]:
    """The cell ratios of an earlier (possibly killed) run of these levers: (label, tuned values) ->
    {cell: ratio}, from the search directory's ``levers.csv``, else the snapshot's; nothing when that
    table is of another best trial or other cells."""
    for folder in (settings.directory, settings.snapshot):
        if folder is None or not (folder / LEVERS_FILE).is_file():
            continue
        rows = list(csv.reader(io.StringIO((folder / LEVERS_FILE).read_text(encoding="utf-8"))))
        if len(rows) < 2 or rows[0] != [*HEADER, *names] or rows[1][0] != f"best trial {best_trial}":
            return {}
        return {
            (row[0], row[1]): {n: float(v) for n, v in zip(names, row[len(HEADER) :], strict=True) if v}
            for row in rows[2:]
        }
    return {}


def write_levers(settings: SearchSettings, table: LeverTable) -> None:
    """``levers.csv``: the best trial's row, then one row per lever (its change, tuned values, score,
    relative change of the score, every cell's ratio; blank where not scored yet)."""
    names = [cell_name(d, h) for d, h in settings.cells]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*HEADER, *names])
    writer.writerow(
        [f"best trial {table.best_trial}", "", f"{table.best_score:.6f}", "", *([""] * len(names))]
    )
    for o in table.outcomes:
        score = o.score(names)
        scored = (
            ["", ""]
            if score is None
            else [f"{score:.6f}", f"{(score - table.best_score) / table.best_score:+.4f}"]
        )
        cells = [f"{o.ratios[n]:.6f}" if n in o.ratios else "" for n in names]
        writer.writerow([o.lever.label, o.lever.tuned, *scored, *cells])
    write_text(settings.directory / LEVERS_FILE, out.getvalue())


__all__ = ["Lever", "LeverOutcome", "LeverTable", "levers_of", "run_levers", "write_levers"]
