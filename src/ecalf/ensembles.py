"""Seed ensembles: a cell's forecast averaged over its seeds, reported as its own results row.

For every (model, dataset, setting, target, horizon) of a results CSV with two or more seeds, the
finished runs of those seeds predict the test split again from their saved best checkpoints (the
same forecasts as when they were tested: the runs are deterministic), the forecasts are averaged,
and the average is scored like any model: a row labelled ``<model>+ens`` whose ``seed`` is 0 and
whose ``overrides`` column names the seeds. Nothing is chosen on test: every seed is averaged, with
equal weights. The MSE of the average is never above the mean MSE of the seeds (Jensen's inequality),
so an ensemble row shows how much of a model's spread over seeds is variance that averaging removes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ecalf.benchmark.results import CellId, append_result, read_results
from ecalf.errors import EcalfError
from ecalf.evaluation import predict
from ecalf.run import load_for_test

SUFFIX = "+ens"
"""The label suffix of an ensemble row."""


def ensemble_groups(
    rows: Sequence[dict[str, str]],
    models: Sequence[str] | None = None,
    *,
    datasets: Sequence[str] | None = None,
    horizons: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
) -> dict[CellId, list[dict[str, str]]]:
    """The results rows by their ensemble's cell (:func:`ensemble_cell`), for cells with two or more
    seeds (ensemble rows, and models, datasets and horizons not chosen, left out). With ``seeds``, only
    the cells that have every one of them, each with exactly those: a grid still running, or one that
    runs on several machines, gets its ensemble row only once a cell's seeds are all in."""
    if seeds is not None and len(set(seeds)) < 2:
        raise EcalfError(f"an ensemble averages two or more seeds; got seeds {list(seeds)}")
    groups: dict[CellId, list[dict[str, str]]] = {}
    for row in rows:
        cell = CellId.of_row(row)  # the key columns parsed once, with a clear error for a bad row
        if (
            cell.model.endswith(SUFFIX)
            or (models is not None and cell.model not in models)
            or (datasets is not None and cell.dataset not in datasets)
            or (horizons is not None and cell.horizon not in horizons)
            or (seeds is not None and cell.seed not in seeds)
        ):
            continue
        groups.setdefault(ensemble_cell(cell), []).append(row)
    need = 2 if seeds is None else len(set(seeds))
    return {k: sorted(v, key=lambda r: int(r["seed"])) for k, v in groups.items() if len(v) >= need}


def ensemble_cell(cell: CellId) -> CellId:
    """The cell of the ensemble row a seed's cell belongs to: the label with :data:`SUFFIX`, seed 0."""
    return dataclasses.replace(cell, model=cell.model + SUFFIX, seed=0)


def ensemble_row(rows: Sequence[dict[str, str]]) -> dict[str, Any]:
    """The ``<model>+ens`` row of one cell's seed rows: its runs' test forecasts averaged and scored."""
    total: torch.Tensor | None = None
    future: torch.Tensor | None = None
    for row in rows:
        run_dir = Path(row["run_dir"])
        if not run_dir.is_dir():
            raise EcalfError(
                f"{row['model']} {row['dataset']} H={row['horizon']} seed={row['seed']}: its run directory "
                f"{run_dir} is not on this machine; run the grid here first (finished cells are reused)"
            )
        config, model, splits, device = load_for_test(run_dir, target=row.get("target") or None)
        batch, precision = config.training.eval_batch_size, config.training.precision
        forecast = predict(model, splits.test, batch_size=batch, device=device, precision=precision).double()
        total = forecast if total is None else total + forecast
        if future is None:
            future = splits.test.get_batch(torch.arange(len(splits.test)))[1].double()
    assert total is not None and future is not None
    error = total / len(rows) - future
    observed = ~torch.isnan(error)
    first = rows[0]
    return {
        **ensemble_cell(CellId.of_row(first)).as_row(),
        "few_shot_percent": first.get("few_shot_percent", ""),
        "mse": float(error[observed].square().mean()),
        "mae": float(error[observed].abs().mean()),
        "naive_mse": first.get("naive_mse", ""),
        "naive_mae": first.get("naive_mae", ""),
        "model_name": first.get("model_name", ""),
        "backbone": first.get("backbone", ""),
        "config_file": first.get("config_file", ""),
        "overrides": "ensemble of seeds " + " ".join(r["seed"] for r in rows),
        "run_dir": " ".join(r["run_dir"] for r in rows),
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def add_ensembles(
    results: str | os.PathLike[str],
    *,
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    horizons: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    echo: Callable[[str], None] | None = print,
    skip_missing_runs: bool = False,
) -> int:
    """Append the ensemble row of every chosen cell of ``results`` (:func:`ensemble_groups`) that has
    none yet (one atomic append each); returns how many were added. A cell whose seeds' runs are not
    all on this machine is an error, or with ``skip_missing_runs`` left out (and said through ``echo``)."""
    rows = read_results(results)
    if not rows:
        raise EcalfError(f"{results} holds no results; run `ecalf benchmark GRID` first")
    done = {CellId.of_row(r) for r in rows if r["model"].endswith(SUFFIX)}
    added = 0
    chosen = ensemble_groups(rows, models, datasets=datasets, horizons=horizons, seeds=seeds)
    for cell, group in chosen.items():
        if cell in done:
            continue
        if skip_missing_runs and not all(Path(r["run_dir"]).is_dir() for r in group):
            if echo is not None:
                echo(
                    f"{cell.model} {cell.dataset} H={cell.horizon}: not added, its seeds' runs are not "
                    f"all on this machine (`ecalf ensemble {results}` where they are)"
                )
            continue
        row = ensemble_row(group)
        if append_result(results, row):
            added += 1
            if echo is not None:
                averaged = ", ".join(r["seed"] for r in group)
                mean = sum(float(r["mse"]) for r in group) / len(group)
                echo(
                    f"{row['model']} {row['dataset']} H={row['horizon']}: mse {row['mse']:.4f} "
                    f"(seeds {averaged}: mean mse {mean:.4f})"
                )
    return added
