"""One experiment, end to end: data -> model -> training -> one test evaluation -> run directory.

What a run directory holds, and every file name in it, is :mod:`ecalf.run_dir`'s.

Under ``torchrun`` every process runs :func:`run_experiment` (ecalf.distributed): all train and evaluate
their shards, only rank 0 writes the run directory and prints; the others wait for it where it writes.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import torch

from ecalf import __version__
from ecalf.artifacts import read_yaml
from ecalf.config import RunConfig, missing_settings, to_dict
from ecalf.config_files import load_run_config, run_config_from_dict
from ecalf.conformal import adaptive_interval_sums, calibrate, interval_sums
from ecalf.data import ForecastSplits, prepare_splits
from ecalf.distributed import World, broadcast_from_main, current_world, on_main, process_group, rank_device
from ecalf.errors import CheckpointError, DataError, EcalfError
from ecalf.evaluation import Metrics, evaluate, predict
from ecalf.fitting import fit_model, load_trained
from ecalf.inference import quantized_int8
from ecalf.models.base import ForecastModel
from ecalf.models.naive import NaiveConfig, NaiveForecast
from ecalf.registry import model_name_for_config
from ecalf.run_dir import RunDirectory, RunMetrics
from ecalf.tracking import NullTracker, Tracker, open_tracker, require_tracking
from ecalf.training import resolve_device, snapshot

FINAL_TRACKED = (
    "test", "naive_test", "best_epoch", "best_val_mse", "epochs_run", "steps", "train_seconds",
    "wall_seconds", "train_windows_per_second", "peak_memory_mb",
)  # fmt: skip
"""Entries of ``metrics.json`` also sent to the tracker at the end of a run (``final/...`` tags)."""


def resolve_model_config(config: RunConfig, splits: ForecastSplits) -> RunConfig:
    """Fill the model's shape fields from the data."""
    return _with_shapes(config, splits.train.num_channels)


def _with_shapes(config: RunConfig, num_channels: int) -> RunConfig:
    """``config`` with the model's channel count (its window shape already follows ``config.data``)."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, num_channels=num_channels))


def with_target(config: RunConfig, target: str | None) -> RunConfig:
    """``config`` tested on ``target``'s test split (zero-shot); None: on its own dataset's."""
    return dataclasses.replace(config, data=dataclasses.replace(config.data, zero_shot_target=target))


@dataclass
class RunResult:
    run_dir: Path
    metrics: RunMetrics


def default_run_dir(config: RunConfig, started: datetime | None = None) -> Path:
    name = model_name_for_config(type(config.model))
    stamp = (started or datetime.now()).strftime("%Y%m%d-%H%M%S")
    dataset = Path(config.data.dataset).stem
    return Path("runs") / f"{name}_{dataset}_{config.data.prediction_length}_{stamp}"


def run_experiment(
    config: RunConfig,
    output_dir: str | os.PathLike[str] | None = None,
    *,
    echo: Callable[[str], None] | None = print,
    resume: bool = False,
) -> RunResult:
    """Train ``config``'s model on its data, evaluate the test split once, write the run directory.

    The training state is checkpointed after every epoch in ``RUN_DIR/state``; with ``resume`` a
    killed run continues from its last finished epoch and ends with the metrics an uninterrupted run
    would have. Without ``resume``, a directory that already holds a run is refused.

    Launched by torchrun, every process calls this and joins the process group for the run (the run
    directory must then be on a filesystem every process sees); all return the same metrics.
    """
    wall_start = time.perf_counter()
    if config.training.num_threads:
        torch.set_num_threads(config.training.num_threads)
    world = current_world()
    device = rank_device(resolve_device(config.training.device), world)
    with process_group(world, device):
        return _run(config, output_dir, echo, resume, world, device, wall_start)


def _run(
    config: RunConfig,
    output_dir: str | os.PathLike[str] | None,
    echo: Callable[[str], None] | None,
    resume: bool,
    world: World,
    device: torch.device,
    wall_start: float,
) -> RunResult:
    splits = prepare_splits(config.data)
    config = resolve_model_config(config, splits)
    if output_dir is None:  # every rank names rank 0's start time
        started = datetime.fromtimestamp(broadcast_from_main(int(time.time()), world, device))
        run_dir = default_run_dir(config, started)
    else:
        run_dir = Path(output_dir)
    directory = RunDirectory(run_dir)
    checkpoint = directory.checkpoint
    if resume:
        if directory.is_finished():
            return RunResult(run_dir, directory.read_metrics())
        if directory.has_config() and directory.read_config() != config:
            raise EcalfError(
                f"{directory.config_file} differs from the config given; resume with the run's own config"
            )
        stale = older_code_settings(run_dir, config)
        if stale and checkpoint.exists():
            raise EcalfError(
                f"{run_dir} was started by an older ecalf that had no setting {', '.join(stale)}: its "
                "finished epochs trained without it, so this version cannot continue them. Train it "
                "again from the start (remove the directory or choose another --output-dir)"
            )
    elif directory.is_finished() or checkpoint.exists():
        raise EcalfError(
            f"{run_dir} already holds a run; continue it with `ecalf train --resume {run_dir}` "
            "or choose another --output-dir"
        )
    require_tracking(config.training.tracking)  # a missing tracking package stops the run here

    def open_run_dir() -> tuple[IO[str], Tracker]:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EcalfError(
                f"cannot create the run directory {run_dir}: {exc.strerror or exc}. "
                "Choose a writable --output-dir"
            ) from exc
        directory.remove_temporary_files()
        directory.write_config(config)
        tracker = open_tracker(config.training.tracking, run_dir, append=resume)
        return directory.open_log(append=resume), tracker

    opened = on_main(world, device, open_run_dir)  # rank 0 only; the others get no files
    log_file, tracker = opened if opened is not None else (None, NullTracker())

    def log(line: str) -> None:
        if log_file is not None:
            log_file.write(line + "\n")
            if echo is not None:
                echo(line)

    try:
        counts = splits.window_counts()
        log(f"data {splits.spec.name}: {splits.train.num_channels} channels, windows {counts}")
        commit = git_commit()  # read once: the code this process imported, not a later edit
        log(f"code: ecalf {__version__}, commit {commit or 'unknown (not a git checkout)'}")

        fitted = fit_model(
            config, splits.train, splits.val, device=device, log=log, tracker=tracker, world=world,
            directory=directory,
        )  # fmt: skip
        model, result, params = fitted.model, fitted.result, fitted.parameters
        test = evaluate(
            model,
            splits.test,
            batch_size=config.training.eval_batch_size,
            device=device,
            precision=config.training.precision,
            world=world,
        )
        naive = naive_metrics(splits, config.training.eval_batch_size)
        log(f"test mse {test.mse:.4f} mae {test.mae:.4f} | naive mse {naive.mse:.4f} mae {naive.mae:.4f}")
        metrics = RunMetrics(
            model=model_name_for_config(type(config.model)),
            dataset=splits.spec.name,
            prediction_length=config.data.prediction_length,
            few_shot_percent=config.data.few_shot_percent,
            seed=config.seed,
            test=test,
            naive_test=naive,
            windows=counts,
            best_epoch=result.best_epoch,
            best_val_mse=result.best_val_mse,
            epochs_run=result.epochs_run,
            steps=result.steps,
            stopped=result.stopped,
            train_seconds=result.train_seconds,
            # this process, and the epochs of the processes before it when the run was resumed
            wall_seconds=time.perf_counter() - wall_start + result.resumed_seconds,
            train_windows_per_second=_mean([r.windows_per_second for r in result.history]),
            peak_memory_mb=peak_memory_mb(),
            parameters=params,
            history=list(result.history),
            environment=environment(world_size=world.size, commit=commit),
        )

        def finish() -> None:
            if result.stopped == "untrainable":
                directory.write_weights(snapshot(model), 0)
            summary = metrics.to_json()
            tracker.log_final({k: summary[k] for k in FINAL_TRACKED})
            directory.write_metrics(metrics)
            checkpoint.remove()

        on_main(world, device, finish)  # every rank returns once the run directory is complete
    finally:
        tracker.close()
        if log_file is not None:
            log_file.close()
    return RunResult(run_dir, metrics)


def resume_run(run_dir: str | os.PathLike[str], *, echo: Callable[[str], None] | None = print) -> RunResult:
    """Continue a killed run from its directory (its own config)."""
    directory = RunDirectory(run_dir)
    if not directory.has_config():
        raise CheckpointError(
            f"{directory.path} is not a run directory (no {directory.config_file.name}); nothing to resume"
        )
    return run_experiment(directory.read_config(), directory.path, echo=echo, resume=True)


QUICKSTART_CONFIG = Path("configs/quickstart.yaml")


def quickstart(
    output_dir: str | os.PathLike[str] = "runs/quickstart",
    *,
    config_path: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] | None = print,
) -> RunResult:
    """`make run`: the quickstart config trained into ``output_dir``.

    Idempotent: a finished run is reported again, a killed one resumes from its last finished epoch.
    """
    path = Path(config_path) if config_path is not None else QUICKSTART_CONFIG
    if not path.is_file():
        raise EcalfError(
            f"{path} not found; run `ecalf quickstart` from the repository root (where configs/ is) "
            "or pass --config FILE"
        )
    config = load_run_config(path)
    if echo is None:
        config.training.progress = False
    return run_experiment(config, output_dir, echo=echo, resume=True)


load_run = load_trained
"""A finished run's config and model (:func:`ecalf.fitting.load_trained`)."""


def evaluate_run(
    run_dir: str | os.PathLike[str],
    *,
    progress: bool = False,
    int8: bool = False,
    target: str | None = None,
) -> tuple[RunConfig, Metrics]:
    """Evaluate a finished run's best checkpoint on its test split again (``progress``: a tqdm bar;
    ``int8``: its int8 copy for CPU inference, ``ecalf.inference.quantized_int8``, on the CPU;
    ``target``: zero-shot, on that dataset's test split instead, scaled with its own training
    statistics; it needs the run's number of variables). Returns the config evaluated and the metrics."""
    config, model, splits, device = load_for_test(run_dir, target=target, int8=int8)
    return config, _test_metrics(config, model, splits, device, progress=progress, int8=int8)


def interval_scores(
    run_dir: str | os.PathLike[str],
    levels: Iterable[float],
    *,
    adaptive: bool = False,
    target: str | None = None,
) -> dict[str, float]:
    """Prediction intervals of a finished run, calibrated on its validation split and scored on its
    test split (standardised scale, like the MSE): ``coverage_<level>``, ``width_<level>``,
    ``winkler_<level>`` for every level, and with ``adaptive`` the same under adaptive conformal
    inference (``aci_coverage_<level>``, ...; :func:`ecalf.conformal.adaptive_interval_sums`)."""
    config, model, splits, device = load_for_test(run_dir, target=target)
    batch, precision = config.training.eval_batch_size, config.training.precision
    val_predicted = predict(model, splits.val, batch_size=batch, device=device, precision=precision)
    val_actual = splits.val.get_batch(torch.arange(len(splits.val)))[1]
    calibration = calibrate(val_predicted.numpy(), val_actual.numpy())
    test_predicted = predict(model, splits.test, batch_size=batch, device=device, precision=precision).numpy()
    test_actual = splits.test.get_batch(torch.arange(len(splits.test)))[1].numpy()
    scores = interval_sums(test_actual, test_predicted, calibration, levels)
    if adaptive:
        scores.update(
            adaptive_interval_sums(
                test_actual, test_predicted, calibration, levels, feedback_delay=config.data.prediction_length
            )
        )
    return scores


def load_for_test(
    run_dir: str | os.PathLike[str], *, target: str | None = None, int8: bool = False
) -> tuple[RunConfig, ForecastModel, ForecastSplits, torch.device]:
    """A finished run's model on the device it is tested on, with the splits of its test data
    (``target``: another dataset's, zero-shot; ``int8``: the CPU, where the int8 copy runs)."""
    config, model = load_run(run_dir)
    if target is not None:
        config = with_target(config, target)
    splits, device = _placed_for_test(config, model, run_dir, int8=int8)
    return config, model, splits, device


def _placed_for_test(
    config: RunConfig, model: ForecastModel, run_dir: str | os.PathLike[str], *, int8: bool = False
) -> tuple[ForecastSplits, torch.device]:
    """The splits of ``config.data``, checked against the channels ``model`` (from ``run_dir``) was
    trained on, and ``model`` moved to its test device."""
    splits = prepare_splits(config.data)
    if splits.test.num_channels != config.model.num_channels:
        raise DataError(
            f"{config.data.dataset}: the run in {run_dir} was trained on {config.model.num_channels} "
            f"channels but the data now has {splits.test.num_channels} ({', '.join(splits.columns[:8])}); "
            "evaluate on the data the run was trained on, or train a new run on this data"
        )
    device = torch.device("cpu") if int8 else resolve_device(config.training.device)
    model.to(device)
    return splits, device


def _test_metrics(
    config: RunConfig,
    model: ForecastModel,
    splits: ForecastSplits,
    device: torch.device,
    *,
    progress: bool = False,
    int8: bool = False,
) -> Metrics:
    """One pass of ``model`` over the test split, as configured (batch size, precision)."""
    return evaluate(
        quantized_int8(model) if int8 else model,
        splits.test,
        batch_size=config.training.eval_batch_size,
        device=device,
        progress=progress,
        precision=config.training.precision,
    )


def source_config(config: RunConfig) -> RunConfig:
    """The config that trains ``config``'s model: a zero-shot run trains exactly as a run on its source
    dataset does (train/validation windows, scaling, model selection), so only the target is dropped."""
    return with_target(config, None)


def config_differences(a: RunConfig, b: RunConfig) -> list[str]:
    """The dotted keys whose values differ between two configs (``a=...`` against ``b=...``)."""

    def flat(data: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(data, dict):
            return {prefix.rstrip("."): data}
        return {k: v for key, value in data.items() for k, v in flat(value, f"{prefix}{key}.").items()}

    left, right = flat(to_dict(a)), flat(to_dict(b))
    return [f"{k}: {left.get(k)!r} against {right.get(k)!r}" for k in sorted(left.keys() | right.keys())
            if left.get(k) != right.get(k)]  # fmt: skip


def same_training(saved: RunConfig, config: RunConfig) -> bool:
    """Whether a run directory's resolved ``saved`` config trains what ``config`` (as loaded from a file,
    shape fields not yet filled from the data) would train."""
    return saved == _with_shapes(config, saved.model.num_channels)


def transfer_run(
    trained_dir: str | os.PathLike[str],
    config: RunConfig,
    output_dir: str | os.PathLike[str],
) -> RunResult:
    """Zero-shot without training again: evaluate the finished run in ``trained_dir`` on the test split
    of ``config.data.zero_shot_target`` and write ``output_dir`` (config.yaml, metrics.json).

    ``config`` must be the trained run's config with a zero-shot target (:func:`source_config` of it
    trains the same model), so one training on ETTh1 serves ETTh1 -> ETTm1 and ETTh1 -> ETTm2 and the
    full-data ETTh1 cell alike. The metrics are the trained run's (epochs, wall time, provenance) with
    the test and naive metrics on the target, ``trained_in`` naming the run that was evaluated.
    Idempotent: a finished ``output_dir`` is returned as it is.
    """
    source, out = RunDirectory(trained_dir), RunDirectory(output_dir)
    if out.is_finished():
        return RunResult(out.path, out.read_metrics())
    if config.data.zero_shot_target is None:
        raise EcalfError("transfer_run evaluates on a zero-shot target; set data.zero_shot_target")
    trained_metrics = source.read_metrics()
    start = time.perf_counter()
    trained, model = load_run(source.path)
    if not same_training(trained, source_config(config)):
        wanted = _with_shapes(source_config(config), trained.model.num_channels)
        raise EcalfError(
            f"{source.config_file} does not train the model of the zero-shot config given "
            f"(they differ beyond data.zero_shot_target: {', '.join(config_differences(trained, wanted))})"
        )
    config = dataclasses.replace(trained, data=config.data)
    splits, device = _placed_for_test(config, model, source.path)
    test = _test_metrics(config, model, splits, device)
    naive = naive_metrics(splits, config.training.eval_batch_size)
    metrics = dataclasses.replace(
        trained_metrics,
        zero_shot_target=config.data.zero_shot_target,
        test=test,
        naive_test=naive,
        windows=splits.window_counts(),
        trained_in=str(source.path),
        evaluation_seconds=time.perf_counter() - start,
        evaluation_environment=environment(),
    )
    out.path.mkdir(parents=True, exist_ok=True)
    out.write_config(config)
    out.write_metrics(metrics)
    return RunResult(out.path, metrics)


def naive_metrics(splits: ForecastSplits, batch_size: int) -> Metrics:
    """The floor every model must beat: repeat the last observed value."""
    test = splits.test
    naive = NaiveForecast(NaiveConfig(test.context_length, test.prediction_length, test.num_channels))
    return evaluate(naive, test, batch_size=batch_size)


def peak_memory_mb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except ImportError:  # pragma: no cover (Windows)
        return float("nan")


def environment(world_size: int = 1, commit: str | None = None) -> dict[str, Any]:
    """Provenance of a run; ``world_size``: processes of a data-parallel run (1: one process);
    ``commit``: :func:`git_commit` when the caller has read it already (else it is read now)."""
    import peft
    import transformers

    return {
        "ecalf": __version__,
        "git_commit": commit if commit is not None else git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "world_size": world_size,
        "ld_preload": os.environ.get("LD_PRELOAD") or None,  # e.g. tcmalloc (docs/speed.md)
    }


def saved_settings_gap(run_dir: str | os.PathLike[str], config: RunConfig) -> list[str] | None:
    """How ``run_dir``'s config.yaml stands to ``config``: None when it is absent, unreadable or
    trains something else; otherwise the settings of ``config`` it lacks (older code, which had no
    such setting, wrote it), an empty list when it is a run of ``config`` by this code."""
    saved = RunDirectory(run_dir).config_file
    try:
        written = read_yaml(saved) if saved.is_file() else None
        if not isinstance(written, dict):
            return None
        if not same_training(run_config_from_dict(written, str(saved)), config):
            return None
    except (EcalfError, OSError, ValueError):  # another version's or a damaged run: not ours
        return None
    return missing_settings(written, config)


def older_code_settings(run_dir: str | os.PathLike[str], config: RunConfig) -> list[str]:
    """The settings of ``config`` that ``run_dir``'s config.yaml lacks when that file is otherwise a
    run of ``config`` (:func:`saved_settings_gap`); none in every other case."""
    return saved_settings_gap(run_dir, config) or []


def git_commit(directory: str | os.PathLike[str] | None = None) -> str | None:
    """The commit checked out where ecalf's code lies (or ``directory``), with ``-dirty`` appended when
    tracked files below that directory differ from it, so that a number produced by uncommitted code
    says so; None when git does not track that code (an installed wheel, even one in a virtual
    environment inside some checkout)."""
    where = Path(directory) if directory is not None else Path(__file__).resolve().parent
    head = _git(where, "rev-parse", "HEAD")
    if not head or not _git(where, "ls-files", "--", "."):
        return None
    changed = _git(where, "status", "--porcelain", "--untracked-files=no", "--", ".")
    return f"{head}-dirty" if changed else head


def _git(where: Path, *args: str) -> str | None:
    """``git ARGS`` run in ``where``: its stripped output, or None when git fails or is missing."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=where)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
