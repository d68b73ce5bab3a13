"""Benchmark cells as Ray tasks: the cluster scheduler of :func:`ecalf.benchmark.run_benchmark`.

``ecalf benchmark GRID.yaml --ray [ADDRESS]`` runs the grid's pending cells as Ray tasks, on an
existing cluster (``ray://host:10001``, ``auto``) or on a local Ray instance started for the run. The
driver (the process running ``ecalf benchmark``) selects the pending cells exactly as the local runner
does, submits one task per cell with its CPU/GPU request, and appends each row to the results CSV as
its task finishes. A task only runs :func:`ecalf.benchmark.run_cell` and returns the row, so the rows
are the local runner's.

Workers get everything explicitly: the cell, each config file's parsed YAML (read by the driver), the
absolute data directory (``--data-dir``, else ``$ECALF_DATA_DIR``, else ``./datasets``, resolved by the
driver) and the absolute runs directory. Every node needs ecalf installed (or a Ray ``runtime_env``
that installs it) and the datasets at that path.

Ray is optional (``pip install 'ecalf[ray]'``) and imported here only, when a scheduler is built.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import time
import warnings
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ecalf.artifacts import read_yaml
from ecalf.benchmark import Cell, CellOutcome, Grid, run_cell
from ecalf.data import resolve_data_dir
from ecalf.errors import ConfigError, EcalfError

RAY_MISSING = "--ray needs Ray, an optional extra of ecalf: pip install 'ecalf[ray]'"


def import_ray() -> Any:
    """The ``ray`` module, or an error saying how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise EcalfError(RAY_MISSING) from None


@dataclass
class RayScheduler:
    """Runs cells as Ray tasks; use as ``run_benchmark(grid, scheduler=RayScheduler(...))``.

    If this process is already connected to Ray (``ray.init`` was called), that connection is used and
    left open; otherwise the scheduler connects (or starts a local instance) when the first pending
    cell is submitted and disconnects when the last one is done. A grid with nothing pending never
    touches Ray.
    """

    address: str | None = None
    """``ray://host:10001``, ``auto`` or a GCS address; None or ``local``: a new local Ray instance."""
    cpus_per_cell: float = 1.0
    """CPUs each cell's task asks for; the cell uses ``max(1, floor(cpus))`` torch threads."""
    gpus_per_cell: float = 0.0
    """GPUs each cell's task asks for (fractions share a GPU). With 0 the cell sees no GPU and trains
    on the CPU; otherwise on the GPU Ray assigned (``training.device: auto``, the default)."""
    log_to_driver: bool = True
    """Show the workers' output in this process."""
    parallel: int | None = field(default=None, init=False)
    """How many cells the cluster runs at once (its CPUs, and GPUs, over each cell's share), known once
    connected; the grid's time left divides its work by it."""

    def __post_init__(self) -> None:
        if not self.cpus_per_cell > 0:
            raise ConfigError(f"cpus per cell must be > 0, got {self.cpus_per_cell}")
        if not self.gpus_per_cell >= 0:
            raise ConfigError(f"gpus per cell must be >= 0, got {self.gpus_per_cell}")
        import_ray()  # fail before any cell is selected, not after

    def __call__(
        self, grid: Grid, cells: list[Cell], data_dir: str | None
    ) -> Generator[CellOutcome, None, None]:
        if not cells:
            return
        # Absolute paths, resolved here: a worker's working directory and environment are not ours.
        node_data_dir = str(resolve_data_dir(data_dir).resolve())
        runs_dir = str(grid.runs_path.expanduser().resolve())
        configs = {c.config_file: read_yaml(c.config_file) or {} for c in cells}
        threads = max(1, math.floor(self.cpus_per_cell))
        ray = import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            self._connect(ray)
        submitted: dict[Any, tuple[Cell, float]] = {}
        try:
            self._check_resources(ray, can_grow=not (started_here and self.address in (None, "local")))
            task = ray.remote(_cell_task)
            for cell in cells:
                ref = task.options(
                    name=f"ecalf {grid.name} {cell.run_id}",
                    num_cpus=self.cpus_per_cell,
                    num_gpus=self.gpus_per_cell,
                    max_retries=0,  # a crashed cell is reported and runs again next time, as locally
                    retry_exceptions=False,
                ).remote(
                    cell,
                    grid.set,
                    runs_dir,
                    node_data_dir,
                    threads,
                    self.gpus_per_cell,
                    configs[cell.config_file],
                    grid.reuse_runs,
                )
                submitted[ref] = (cell, time.perf_counter())
            pending = list(submitted)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    cell, start = submitted.pop(ref)
                    outcome: dict[str, Any] | BaseException
                    try:
                        outcome, seconds = ray.get(ref)
                    except Exception as exc:  # reported; the grid goes on and the cell runs again next time
                        outcome, seconds = _cause(exc), time.perf_counter() - start
                    yield cell, outcome, seconds
        finally:  # Ctrl-C or an error in the driver: cancel what is still queued or running
            for ref in submitted:
                with contextlib.suppress(Exception):  # already finished, or the cluster is gone
                    ray.cancel(ref, force=True)
            if started_here:
                ray.shutdown()

    def _connect(self, ray: Any) -> None:
        kwargs: dict[str, Any] = {}
        if not self.log_to_driver:
            kwargs["log_to_driver"] = False
        local = self.address in (None, "local")
        try:
            if local:
                ray.init(address="local", include_dashboard=False, **kwargs)
            else:
                ray.init(address=self.address, **kwargs)
        except Exception as exc:  # no cluster there, version mismatch, ...
            where = "a local Ray instance" if local else f"the Ray cluster at {self.address}"
            raise EcalfError(f"cannot start or reach {where}: {type(exc).__name__}: {exc}") from exc

    def _check_resources(self, ray: Any, can_grow: bool) -> None:
        """A request no node can ever meet would leave every task pending forever: refuse it on a
        local instance, warn on a cluster (an autoscaler may still add such nodes). Sets
        :attr:`parallel` from the same resources."""
        total = ray.cluster_resources()
        needs = [
            (name, need, total.get(name, 0))
            for name, need in (("CPU", self.cpus_per_cell), ("GPU", self.gpus_per_cell))
            if need > 0
        ]
        self.parallel = max(1, int(min(have // need for _, need, have in needs)))
        short = [
            f"{need:g} {name} per cell but the cluster has {have:g}"
            for name, need, have in needs
            if need > have
        ]
        if not short:
            return
        message = "Ray cannot schedule the cells: " + "; ".join(short)
        if not can_grow:
            raise EcalfError(f"{message} (use --cpus-per-cell / --gpus-per-cell within the machine)")
        warnings.warn(f"{message}; the tasks wait until nodes with enough resources join", stacklevel=3)


def _cell_task(
    cell: Cell,
    grid_overrides: Sequence[str],
    runs_dir: str,
    data_dir: str,
    num_threads: int,
    gpus: float,
    config_data: Mapping[str, Any],
    reuse_runs: bool = True,
) -> tuple[dict[str, Any], float]:
    """One cell on a Ray worker: its result row and the seconds it ran."""
    start = time.perf_counter()
    if not gpus:
        # Ray leaves the node's GPUs visible to a task that asked for none; hide them so that
        # `training.device: auto` trains on the CPU and never on a GPU another task holds.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    else:
        import torch

        if not torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise EcalfError(
                f"the cell asked for {gpus} GPU but torch {torch.__version__} on this node sees none "
                f"(CUDA_VISIBLE_DEVICES={visible!r}): install a CUDA build of torch there"
            )
    row = run_cell(
        cell, grid_overrides, runs_dir, data_dir, num_threads, config_data=config_data, reuse_runs=reuse_runs
    )
    return row, time.perf_counter() - start


def _cause(error: Exception) -> BaseException:
    """The exception a task raised, without Ray's wrapper and remote traceback (Ray's own errors, such
    as a crashed worker or a cancelled task, as they are)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error
