"""One recipe scored on a search's pilot cells as a trial is scored (``ecalf validate``), on the
validation split alone: the reference points of a search's table (the `linear` floor, an untuned
recipe, a published baseline's recipe) on the same cells and the same scale.

Each cell is fitted and validated like a trial's cell (:func:`ecalf.tune.validate_cell`: its run
directory under ``output_dir``, no test window read); the score is the mean over the cells of best
validation MSE / the naive forecast's validation MSE. ``validation.csv`` in ``output_dir`` holds one
row per cell. A finished cell is reused and a killed one continues, as in a search.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ecalf.artifacts import write_text
from ecalf.errors import ConfigError
from ecalf.run_dir import ValidationMetrics
from ecalf.tune import PILOT_CELLS, cell_line, cell_name, check_cells, recipe_cell_config, validate_cell

TABLE_FILE = "validation.csv"


@dataclass(frozen=True)
class RecipeScore:
    cells: dict[str, ValidationMetrics]
    """By cell name (``ETTh1-H96``)."""

    @property
    def score(self) -> float:
        return sum(m.ratio for m in self.cells.values()) / len(self.cells)


def default_output_dir(config_file: str | os.PathLike[str]) -> Path:
    """``runs/validate/<config stem>`` (a per-dataset ``{dataset}.yaml``: its folder's name)."""
    path = Path(config_file)
    name = path.parent.name if "{dataset}" in path.name else path.stem
    return Path("runs") / "validate" / name


def score_recipe(
    config_file: str | os.PathLike[str],
    *,
    cells: Sequence[tuple[str, int]] = PILOT_CELLS,
    overrides: Sequence[str] = (),
    few_shot_percent: float = 10.0,
    seed: int = 2021,
    data_dir: str | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] | None = print,
) -> RecipeScore:
    """Fit and validate ``config_file`` with ``overrides`` on every cell; write ``validation.csv``."""
    if not cells:
        raise ConfigError("give at least one (dataset, horizon) cell")
    check_cells(cells)
    configs = {  # every cell's config loaded before anything trains: a typo fails here
        cell_name(d, h): recipe_cell_config(config_file, d, h, overrides, few_shot_percent, seed, data_dir)
        for d, h in cells
    }
    directory = Path(output_dir) if output_dir is not None else default_output_dir(config_file)
    show = echo or (lambda line: None)
    done: dict[str, ValidationMetrics] = {}
    for name, config in configs.items():
        metrics = validate_cell(config, directory / name)
        done[name] = metrics
        show(cell_line(name, metrics))
    result = RecipeScore(done)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["cell", "ratio", "best_val_mse", "naive_val_mse", "best_epoch", "best_step"])
    for name, m in done.items():
        writer.writerow(
            [
                name,
                f"{m.ratio:.6f}",
                f"{m.best_val_mse:.6f}",
                f"{m.naive_val_mse:.6f}",
                m.best_epoch,
                m.best_step,
            ]
        )
    writer.writerow(["score", f"{result.score:.6f}", "", "", "", ""])
    write_text(directory / TABLE_FILE, out.getvalue())
    return result


__all__ = ["RecipeScore", "default_output_dir", "score_recipe"]
