"""Running a grid: schedulers (this process, local processes; Ray in :mod:`ecalf.ray_runner`) and the
driver that appends each finished cell's row."""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import functools
import multiprocessing
import os
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ecalf.benchmark.cells import run_cell, timed_cell
from ecalf.benchmark.grid import Cell, Grid
from ecalf.benchmark.plan import plan_benchmark
from ecalf.benchmark.results import append_result, read_results
from ecalf.cell_costs import Remaining
from ecalf.errors import ConfigError

if TYPE_CHECKING:
    pass


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
    write = bar.write if progress else say
    ensembled = {m.label: grid.seeds_of(m) for m in grid.models if m.ensemble}
    _add_ensembles(results_path, ensembled, grid.datasets, grid.horizons, write)  # cells complete already

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
            write(line)
            if cell.model in ensembled:  # its ensemble row, if this was the cell's last seed
                _add_ensembles(
                    results_path, {cell.model: ensembled[cell.model]}, [cell.dataset], [cell.horizon], write
                )
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


def _add_ensembles(
    results: Path,
    seeds: dict[str, list[int]],
    datasets: list[str],
    horizons: list[int],
    echo: Callable[[str], None],
) -> None:
    """The seed-ensemble rows of the models of ``seeds`` (label -> all its seeds) for every chosen cell
    that has all of them and no ensemble row yet; cells whose runs are elsewhere are left (and said)."""
    from ecalf.ensembles import add_ensembles  # here: ecalf.ensembles imports this package

    if not seeds or not read_results(results):
        return
    for label, own in seeds.items():
        add_ensembles(
            results, models=[label], datasets=datasets, horizons=horizons, seeds=own, echo=echo,
            skip_missing_runs=True,
        )  # fmt: skip


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
