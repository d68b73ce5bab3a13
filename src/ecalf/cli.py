"""Command line: parse arguments, load config, call the library. No logic lives here."""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecalf.config import CONTEXT_LENGTH, PREDICTION_LENGTH, VALIDATION_FRACTION
from ecalf.errors import ConfigError, EcalfError

if TYPE_CHECKING:
    from ecalf.run_dir import RunMetrics


def _cmd_list_models(args: argparse.Namespace) -> int:
    import ecalf.models  # noqa: F401  (imports, and so registers, every model)
    from ecalf.registry import list_models

    for entry in list_models():
        print(f"{entry.name:14s} {entry.description}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ecalf.config_files import load_run_config
    from ecalf.run import resume_run, run_experiment

    echo = None if args.quiet else print
    if args.resume:
        if args.config or args.set:
            raise EcalfError("--resume continues a run with its own saved config; drop --config/--set")
        result = resume_run(args.resume, echo=echo)
    else:
        if not args.config:
            raise EcalfError("give --config FILE (or --resume RUN_DIR to continue a killed run)")
        config = load_run_config(args.config, args.set or [])
        if args.quiet:
            config.training.progress = False
        result = run_experiment(config, args.output_dir, echo=echo)
    _print_run_result(result.run_dir, result.metrics, echoed=echo is not None)
    return 0


def _print_run_result(run_dir: object, metrics: RunMetrics, echoed: bool = False) -> None:
    """The run directory, and the test metrics unless the echoed log has just printed them."""
    from ecalf.distributed import is_main_process

    if not is_main_process():  # under torchrun, rank 0 alone reports
        return
    print(f"run directory: {run_dir}")
    if echoed:
        return
    test, naive = metrics.test, metrics.naive_test
    print(f"test mse {test.mse:.4f} mae {test.mae:.4f}", end=" | ")
    print(f"naive mse {naive.mse:.4f} mae {naive.mae:.4f}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ecalf.run import evaluate_run

    if args.adaptive and not args.level:
        raise ConfigError(
            "--adaptive scores adaptive intervals: give their levels with --level, e.g. --level 80 95"
        )
    if args.level:
        from ecalf.conformal import check_levels

        check_levels(args.level)  # before the test pass
    _, metrics = evaluate_run(args.run_dir, progress=not args.quiet, int8=args.int8, target=args.target)
    int8 = ", int8" if args.int8 else ""
    split = f"{args.target} test (zero-shot)" if args.target else "test"
    print(f"{split} mse {metrics.mse:.6f} mae {metrics.mae:.6f} ({metrics.windows} windows{int8})")
    if args.level:
        from ecalf.conformal import ADAPTIVE_PREFIX, level_name
        from ecalf.run import interval_scores

        scores = interval_scores(args.run_dir, args.level, adaptive=args.adaptive, target=args.target)
        for prefix, what in (("", "split conformal"), (ADAPTIVE_PREFIX, "adaptive conformal")):
            for level in sorted(set(args.level)):
                name = level_name(level)
                if f"{prefix}coverage_{name}" in scores:
                    cover, width, winkler = (
                        scores[f"{prefix}{k}_{name}"] for k in ("coverage", "width", "winkler")
                    )
                    print(
                        f"{name} % intervals ({what}): coverage {cover:.4f}, mean width {width:.4f}, "
                        f"Winkler score {winkler:.4f}"
                    )
    if args.plot:
        from ecalf.plots import plot_run_test_windows

        png = plot_run_test_windows(args.run_dir, args.plot, num_windows=args.windows, target=args.target)
        print(f"plot: {png}")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from ecalf.forecast_commands import fit_and_save

    forecaster = fit_and_save(
        args.input,
        args.output_dir,
        model=args.model,
        backbone=args.backbone,
        context_length=args.context_length,
        prediction_length=args.prediction_length,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        validation_fraction=args.validation_fraction,
        overrides=args.set or [],
        verbose=not args.quiet,
        target=args.target,
        future_covariates=args.future_covariates,
        calendar=args.calendar,
        fill=args.fill,
        skip_short=args.skip_short,
    )
    summary = forecaster.summary
    covariates = len(forecaster.columns) - len(forecaster.targets)
    channels = f"{len(forecaster.columns)} channels" if not covariates else (
        f"{len(forecaster.targets)} target(s), {covariates} covariate(s)")  # fmt: skip
    print(
        f"saved {forecaster.model_name} forecaster to {args.output_dir} ({channels} "
        f"at {forecaster.frequency!r}, best epoch {summary['best_epoch']} of {summary['epochs_run']}, "
        f"validation mse {summary['best_val_mse']:.4f})"
    )
    if args.quiet and forecaster.floor is not None:  # else fit printed it
        command = f"ecalf fit --model linear --input {args.input} ..."
        print("\n".join(forecaster.floor.lines(command)))
    future = " --future FUTURE.csv" if forecaster.inputs.future_covariates else ""
    print(
        f"next: ecalf forecast --model {args.output_dir} --input {args.input}{future} --output forecast.csv"
    )
    return 0


def _cmd_forecast(args: argparse.Namespace) -> int:
    from ecalf.forecast_commands import forecast_to_csv

    forecast = forecast_to_csv(
        args.model,
        args.input,
        args.output,
        plot=args.plot,
        history_rows=args.history_rows,
        level=args.level or (),
        future=args.future,
    )
    print(f"forecast: {args.output} ({len(forecast)} rows)")
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


def _cmd_backtest(args: argparse.Namespace) -> int:
    import pandas as pd

    from ecalf.forecast_commands import backtest_to_csv

    forecaster, cv, report = backtest_to_csv(
        args.model, args.input, n_windows=args.windows, step_size=args.step, refit=args.refit,
        level=args.level or (), output=args.output, plot=args.plot, verbose=not args.quiet,
        adaptive=args.adaptive,
    )  # fmt: skip
    cutoffs = len(report.windows)  # a panel's series have cutoffs of their own: window k is each one's k-th
    how = "refitted at every cutoff" if args.refit else "the saved model"
    print(
        f"backtest of {forecaster.model_name} ({how}): {cutoffs} windows of {forecaster.prediction_length} "
        f"steps, {cv['unique_id'].nunique()} series; MASE against the seasonal naive forecast "
        f"(season {report.season})"
    )
    print(report.table())
    fitted_until = forecaster.summary.get("last_timestamp")
    if not args.refit and fitted_until and pd.Timestamp(cv["cutoff"].min()) < pd.Timestamp(fitted_until):
        print(
            f"note: the saved model was fitted on rows up to {fitted_until}, so the windows before that are "
            "in-sample (optimistic); --refit fits a model at every cutoff on the rows before it"
        )
    if forecaster.floor is not None:
        print(
            "at fit time: "
            + "\n".join(forecaster.floor.lines(f"ecalf fit --model linear --input {args.input} ..."))
        )
    if args.output:
        print(f"backtest: {args.output} ({len(cv)} rows)")
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


def _cmd_plot_training(args: argparse.Namespace) -> int:
    from ecalf.plots import plot_run_training

    print(plot_run_training(args.directory, args.output))
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from ecalf.run import quickstart

    result = quickstart(args.output_dir, config_path=args.config, echo=None if args.quiet else print)
    _print_run_result(result.run_dir, result.metrics, echoed=not args.quiet)
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from ecalf.benchmark import load_grid, run_benchmark, select

    grid = select(
        load_grid(args.grid),
        models=args.models,
        datasets=args.datasets,
        horizons=args.horizons,
        seeds=args.seeds,
    )
    if args.no_reuse:
        grid = dataclasses.replace(grid, reuse_runs=False)
    redo: list[Any] = []
    if args.redo_dirty:
        redo = _redo_dirty(grid, Path(args.results) if args.results else grid.results_path, args.dry_run)
        grid = dataclasses.replace(grid, reuse_runs=False)  # a sibling's run may be dirty code's too
    if args.dry_run:
        return _print_plan(grid, args, redo)
    scheduler = None
    if args.ray is not None:
        from ecalf.ray_runner import RayScheduler

        scheduler = RayScheduler(
            args.ray,
            cpus_per_cell=1.0 if args.cpus_per_cell is None else args.cpus_per_cell,
            gpus_per_cell=0.0 if args.gpus_per_cell is None else args.gpus_per_cell,
        )
    elif args.cpus_per_cell is not None or args.gpus_per_cell is not None:
        raise EcalfError("--cpus-per-cell and --gpus-per-cell are requests to Ray: add --ray [ADDRESS]")
    summary = run_benchmark(
        grid,
        results=args.results,
        data_dir=args.data_dir,
        jobs=args.jobs,
        threads=args.threads,
        limit=args.limit,
        progress=not args.quiet,
        scheduler=scheduler,
    )
    print(
        f"{summary.results}: {summary.finished} cells finished, {summary.skipped} already done, "
        f"{len(summary.failed)} failed, of {summary.total}"
    )
    for cell, error in summary.failed:
        print(f"  failed: {cell}: {error}", file=sys.stderr)
    return 1 if summary.failed else 0


def _redo_dirty(grid: Any, results: Path, dry_run: bool) -> list[Any]:
    """``--redo-dirty``: the grid's rows that uncommitted code produced go, and their cells train again
    (``--dry-run``: only say which). Returns those cells."""
    from ecalf.benchmark.cells import dirty_rows, retire_dirty_cells
    from ecalf.benchmark.results import CellId

    if dry_run:
        cells = [CellId.of_row(row) for row in dirty_rows(grid, results)]
        print(f"--redo-dirty would retrain {len(cells)} cell(s) whose rows ran uncommitted code:")
        for cell in cells:
            print(f"  {cell}")
        return cells
    retired = retire_dirty_cells(grid, results)
    print(
        f"{len(retired)} row(s) of uncommitted code removed from {results}; their runs set aside as "
        "*.dirty-code-<time>; they train again below"
    )
    return retired


def _print_plan(grid: Any, args: argparse.Namespace, redo: Sequence[Any] = ()) -> int:
    from ecalf.benchmark import pending_ensembles, plan_benchmark
    from ecalf.cell_costs import Remaining, format_duration

    planned, skipped = plan_benchmark(grid, results=args.results, data_dir=args.data_dir, redo=redo)
    trains = sum(p.reuses is None for p in planned)
    results = Path(args.results or grid.results_path)
    print(
        f"grid {grid.name}: {len(planned) + skipped} cells, {skipped} already in {results}, "
        f"{len(planned)} to run: {trains} train, {len(planned) - trains} reuse another's run; "
        + Remaining({p.cell: p.seconds for p in planned}).describe()
    )
    owed = pending_ensembles(grid, results)
    if owed:
        labels = ", ".join(dict.fromkeys(c.model for c in owed))
        print(
            f"  and {len(owed)} seed-ensemble row(s) ({labels}), each added as its cell's last seed finishes"
        )
    for item in planned:
        if item.reuses is not None:
            note = f"reuses {item.reuses}"
        else:
            if item.seconds is None:
                note = "no estimate yet"
            else:
                note = f"~{format_duration(item.seconds)}" + (" left" if item.progress else "")
            note += f"; {item.progress.describe()}" if item.progress else ""
        print(f"  {item.cell.describe()}  ({note})")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from ecalf.tune import SearchSettings, cells_from, run_search, search_line

    settings = SearchSettings(
        config=Path(args.config),
        space=Path(args.space),
        trials=args.trials,
        cells=cells_from(args.datasets, args.horizons),
        few_shot_percent=args.few_shot,
        seed=args.seed,
        output_dir=Path(args.output_dir) if args.output_dir else None,
        data_dir=args.data_dir,
        overrides=tuple(args.set or []),
        sampler_seed=args.sampler_seed,
        snapshot=Path(args.snapshot) if args.snapshot else None,
    )
    if args.quiet:
        settings = dataclasses.replace(settings, overrides=(*settings.overrides, "training.progress=false"))
    if args.status:
        from ecalf.tune import search_status

        summary, running = search_status(settings)
        print(f"{search_line(summary)}; {running} running now, {settings.trials} wanted")
        return 0
    summary = run_search(settings, echo=print, best_config=args.best_config)
    print(search_line(summary))
    if args.levers or args.lever_set:
        from ecalf.tune_levers import LEVERS_FILE, run_levers

        run_levers(settings, [item.split() for item in args.lever_set or []], echo=print)
        print(f"levers: {settings.directory / LEVERS_FILE}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from ecalf.recipe_score import TABLE_FILE, default_output_dir, score_recipe
    from ecalf.tune import cells_from

    overrides = [*(args.set or []), *(["training.progress=false"] if args.quiet else [])]
    output = Path(args.output_dir) if args.output_dir else default_output_dir(args.config)
    result = score_recipe(
        args.config, cells=cells_from(args.datasets, args.horizons), overrides=overrides,
        few_shot_percent=args.few_shot, seed=args.seed, data_dir=args.data_dir, output_dir=output,
    )  # fmt: skip
    print(f"score {result.score:.4f} (mean over {len(result.cells)} cells); table {output / TABLE_FILE}")
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from ecalf.ensembles import add_ensembles

    added = add_ensembles(
        args.results, models=args.models, datasets=args.datasets, horizons=args.horizons, seeds=args.seeds,
        echo=None if args.quiet else print,
    )  # fmt: skip
    print(f"{args.results}: {added} ensemble row(s) added")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ecalf.published import BUILTIN
    from ecalf.report import write_report

    published = BUILTIN if args.published == "" else args.published  # `--published` alone: ecalf's list
    pairs = [(base, other) for base, other in args.pair or []]
    for path in write_report(
        args.results, args.output_dir, compare=args.compare, published=published, pairs=pairs,
        standings=args.standing or [],
    ):  # fmt: skip
        print(path)
    if args.histories:
        from ecalf.histories import write_histories

        path, left_out = write_histories(args.results, args.output_dir)
        print(path)
        for run_dir, why in left_out:
            print(f"  left out: {run_dir} ({why})", file=sys.stderr)
    return 0


def _cmd_backbone_info(args: argparse.Namespace) -> int:
    from ecalf.backbones import BackboneConfig, describe_backbone
    from ecalf.backbones.presets import full_config

    k = args.principal_embeddings
    if k is None:  # CALF's 500, or as many as a small backbone has
        probe = full_config(
            BackboneConfig(args.preset, pretrained=False, num_layers=1, num_principal_embeddings=1)
        )
        k = min(500, int(probe.hidden_size), int(probe.vocab_size))
    config = BackboneConfig(
        preset=args.preset,
        pretrained=not args.random,
        num_layers=args.layers,
        num_principal_embeddings=k,
    )
    for key, value in describe_backbone(config).items():
        print(f"{key:34s} {value}")
    return 0


def _cmd_data_list(args: argparse.Namespace) -> int:
    from ecalf.data import registry_table

    print("\n".join(registry_table()))
    return 0


def _cmd_data_info(args: argparse.Namespace) -> int:
    from ecalf.data import describe_dataset

    summary = describe_dataset(
        args.name,
        args.data_dir,
        context_length=args.context_length,
        prediction_length=args.prediction_length,
        few_shot_percent=args.few_shot,
    )
    print("\n".join(summary.lines()))
    return 0


def _cmd_data_download(args: argparse.Namespace) -> int:
    from ecalf.data import download_dataset

    print(download_dataset(args.name, args.data_dir))
    return 0


# --------------------------------------------------------------------------------------------------
# The command table: every command, its handler and its options. build_parser only reads it.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One argparse argument: its flags (or positional name) and ``add_argument``'s keywords."""

    flags: tuple[str, ...]
    kwargs: Mapping[str, Any]


def opt(*flags: str, **kwargs: Any) -> Option:
    return Option(flags, kwargs)


@dataclass(frozen=True)
class Command:
    """A subcommand: ``handler(args) -> exit status`` (every handler has this one shape), its options,
    or (a group such as ``data``) its own subcommands."""

    name: str
    help: str
    handler: Callable[[argparse.Namespace], int] | None = None
    options: tuple[Option, ...] = ()
    description: str | None = None
    subcommands: tuple[Command, ...] = ()


QUIET = opt("--quiet", action="store_true", help="no progress bars or per-epoch lines")
LEVEL = opt(
    "--level",
    type=float,
    nargs="+",
    metavar="PCT",
    help="prediction intervals at these levels in percent, e.g. 80 95 (split conformal, docs/forecasting.md)",
)
QUIET_BAR = opt("--quiet", action="store_true", help="no progress bar")
DATA_DIR = opt(
    "--data-dir", help="directory of the benchmark CSVs (default: $ECALF_DATA_DIR if set, else ./datasets)"
)
CONTEXT = opt(
    "--context-length",
    type=int,
    default=CONTEXT_LENGTH,
    metavar="L",
    help=f"context length (default {CONTEXT_LENGTH})",
)

COMMANDS: tuple[Command, ...] = (
    Command("list-models", "list the registered models", _cmd_list_models),
    Command(
        "train",
        "train a model from a YAML config and evaluate it on the test split",
        _cmd_train,
        (
            opt("--config", help="YAML run config (see configs/)"),
            opt("--resume", metavar="RUN_DIR", help="continue a killed run from its last finished epoch"),
            opt(
                "--set",
                action="append",
                metavar="KEY=VALUE",
                help="override a config value, e.g. training.epochs=5",
            ),
            opt("--output-dir", help="run directory (default: runs/<model>_<dataset>_<H>_<time>)"),
            QUIET,
        ),
    ),
    Command(
        "evaluate",
        "evaluate a run directory's best checkpoint on its test split",
        _cmd_evaluate,
        (
            opt("run_dir"),
            opt("--plot", metavar="PNG", help="also draw forecast vs actual on a few test windows"),
            opt("--windows", type=int, default=3, metavar="N", help="test windows in the plot (default 3)"),
            opt("--int8", action="store_true", help="evaluate the int8 CPU inference copy (docs/speed.md)"),
            opt(
                "--target",
                metavar="DATASET",
                help="zero-shot: evaluate on this dataset's test split instead (same number of variables), "
                "scaled with its own training statistics",
            ),
            opt(
                "--level",
                type=float,
                nargs="+",
                metavar="PCT",
                help="also score prediction intervals at these levels (percent), calibrated on the "
                "validation split: coverage, mean width, Winkler score",
            ),
            opt(
                "--adaptive",
                action="store_true",
                help="with --level: also adaptive conformal intervals (the level adapts window by window)",
            ),
            QUIET_BAR,
        ),
    ),
    Command(
        "fit",
        "fit a forecaster on your own CSV and save it (then: ecalf forecast)",
        _cmd_fit,
        (
            opt("--input", required=True, metavar="CSV", help="the series to fit on"),
            opt("--prediction-length", type=int, required=True, metavar="H", help="steps to forecast"),
            opt("--output-dir", required=True, metavar="DIR", help="where the forecaster is saved"),
            opt("--model", default="ecalf", help="a model of `ecalf list-models` (default ecalf)"),
            opt("--backbone", metavar="PRESET", help="LLM preset of calf/ecalf (default smollm2-135m)"),
            opt(
                "--context-length",
                type=int,
                default=CONTEXT_LENGTH,
                metavar="L",
                help=f"rows read (default {CONTEXT_LENGTH})",
            ),
            opt("--epochs", type=int, metavar="N", help="maximum epochs (default training.epochs, 20)"),
            opt(
                "--batch-size",
                type=int,
                metavar="B",
                help="training batch size (default 256, smaller for a short series: at least 10 steps "
                "per epoch)",
            ),
            opt("--learning-rate", type=float, metavar="LR", help="learning rate (default 5e-4)"),
            opt(
                "--validation-fraction",
                type=float,
                default=VALIDATION_FRACTION,
                metavar="F",
                help=f"last fraction of rows held out for early stopping (default {VALIDATION_FRACTION}; "
                "0: none)",
            ),
            opt(
                "--set",
                action="append",
                metavar="KEY=VALUE",
                help="override model.* / training.* / seed, e.g. training.patience=3",
            ),
            opt(
                "--target",
                nargs="+",
                metavar="COLUMN",
                help="the column(s) to forecast; the other columns become past covariates (default: all)",
            ),
            opt(
                "--future-covariates",
                nargs="+",
                default=[],
                metavar="COLUMN",
                help="columns whose future values are known (give them to `ecalf forecast --future`)",
            ),
            opt("--calendar", action="store_true", help="add calendar features of the timestamps as inputs"),
            opt(
                "--fill",
                choices=["ffill", "interpolate"],
                help="fill missing values and timestamps of the inputs (a missing target is not trained on)",
            ),
            opt(
                "--skip-short",
                action="store_true",
                help="long format: leave out (with a warning) series too short for a window",
            ),
            QUIET,
        ),
        "Fit a model on a CSV (wide: a `date` column + one numeric column per series; long: "
        "unique_id, ds, y), "
        "holding out the last rows for validation and early stopping, and save it to --output-dir. "
        "See docs/forecasting.md.",
    ),
    Command(
        "forecast",
        "forecast the rows after a CSV with a saved forecaster; write a CSV (and a PNG)",
        _cmd_forecast,
        (
            opt("--model", required=True, metavar="DIR", help="directory written by `ecalf fit`"),
            opt("--input", required=True, metavar="CSV", help="the recent history, same columns"),
            opt("--output", required=True, metavar="CSV", help="where the forecast is written"),
            opt("--plot", metavar="PNG", help="also draw history + forecast, one panel per channel"),
            opt(
                "--history-rows",
                type=int,
                metavar="N",
                help="history rows drawn (default 4 forecast lengths)",
            ),
            LEVEL,
            opt(
                "--future",
                metavar="CSV",
                help="the known-future covariates at the forecast timestamps (`date` + those columns)",
            ),
        ),
        "Load a forecaster saved by `ecalf fit`, forecast the prediction length after the last row of "
        "--input "
        "(its last context-length rows are read) and write the forecast in the input's format, with "
        "timestamps continuing the fitted frequency.",
    ),
    Command(
        "backtest",
        "backtest a saved forecaster over the end of a CSV: per-window MSE, MAE, MASE, coverage",
        _cmd_backtest,
        (
            opt("--model", required=True, metavar="DIR", help="directory written by `ecalf fit`"),
            opt("--input", required=True, metavar="CSV", help="the series, same columns as fitted"),
            opt("--windows", type=int, default=5, metavar="N", help="forecast windows (default 5)"),
            opt("--step", type=int, metavar="ROWS", help="rows between cutoffs (default: the horizon)"),
            opt(
                "--refit",
                action="store_true",
                help="refit the model at every cutoff on the rows up to it (default: the saved model)",
            ),
            LEVEL,
            opt(
                "--adaptive",
                action="store_true",
                help="with --level: adapt the level window by window to the earlier windows' misses",
            ),
            opt(
                "--output", metavar="CSV", help="write the backtest (unique_id, ds, cutoff, y, <model>, ...)"
            ),
            opt("--plot", metavar="PNG", help="draw the backtest forecasts over the actual series"),
            QUIET,
        ),
        "Forecast from --windows cutoffs over the end of --input (the last leaves one horizon of rows), "
        "score each window against the actual rows and print the table, with the saved floor comparison "
        "(naive and linear on the fit's validation windows).",
    ),
    Command(
        "plot-training",
        "training curves (loss parts, validation, learning rate, adapted values) as a PNG",
        _cmd_plot_training,
        (
            opt("directory", help="a run directory (`ecalf train`) or a saved forecaster (`ecalf fit`)"),
            opt("--output", required=True, metavar="PNG", help="the PNG to write"),
        ),
    ),
    Command(
        "quickstart",
        "train CALF (SmolLM2-135M) on ETTh1 few-shot 10 %%, H 96, and print test MSE/MAE vs naive",
        _cmd_quickstart,
        (
            opt("--config", default=None, help="run config (default: configs/quickstart.yaml)"),
            opt("--output-dir", default="runs/quickstart", help="run directory (default runs/quickstart)"),
            QUIET,
        ),
    ),
    Command(
        "benchmark",
        "run a benchmark grid (models x datasets x settings x horizons x seeds), resumable",
        _cmd_benchmark,
        (
            opt("grid", help="grid file, e.g. benchmarks/fewshot.yaml"),
            opt("--results", help="results CSV (default: the grid's `results`, else results/<name>.csv)"),
            opt("--data-dir", help="directory of the benchmark CSVs (else $ECALF_DATA_DIR, ./datasets)"),
            opt("--jobs", type=int, default=1, help="cells run in parallel processes (default 1)"),
            opt(
                "--threads",
                type=int,
                metavar="N",
                help="torch threads per cell (default: the cores shared out over --jobs; with one job, "
                "torch's "
                "default); e.g. --threads 1 for each of two benchmark commands side by side on 2 cores",
            ),
            opt(
                "--ray",
                nargs="?",
                const="local",
                metavar="ADDRESS",
                help="run cells as Ray tasks on the cluster at ADDRESS (ray://HOST:10001, auto) or, without "
                "ADDRESS, on a local Ray instance started for the run (put --ray after GRID); needs "
                "pip install 'ecalf[ray]'",
            ),
            opt("--cpus-per-cell", type=float, metavar="N", help="with --ray: CPUs per cell (default 1)"),
            opt(
                "--gpus-per-cell",
                type=float,
                metavar="N",
                help="with --ray: GPUs per cell (default 0); >0 trains on CUDA",
            ),
            opt("--limit", type=int, default=None, help="run at most this many pending cells"),
            opt(
                "--dry-run",
                action="store_true",
                help="list the cells still to run (and which reuse a finished run) without running any",
            ),
            opt(
                "--no-reuse",
                action="store_true",
                help="train every cell here, never taking a finished run of the same config from another "
                "grid's runs directory (runs/benchmark/*/)",
            ),
            opt(
                "--redo-dirty",
                action="store_true",
                help="first remove the rows (of the chosen cells) that uncommitted code produced (commit "
                "ending in -dirty), setting their runs aside, and train those cells again from this "
                "committed code (implies --no-reuse)",
            ),
            opt("--models", nargs="+", metavar="LABEL", help="only these models of the grid"),
            opt("--datasets", nargs="+", metavar="NAME", help="only these datasets of the grid"),
            opt("--horizons", nargs="+", type=int, metavar="H", help="only these horizons"),
            opt("--seeds", nargs="+", type=int, metavar="SEED", help="only these seeds"),
            QUIET_BAR,
        ),
        "Run every cell of GRID.yaml that has no row in the results CSV yet; each finished cell appends one "
        "row atomically. Killed? Run the same command again: finished cells are skipped and the cell in "
        "flight resumes from its last finished epoch. See docs/benchmark.md.",
    ),
    Command(
        "tune",
        "search a model's recipe on the validation split (Optuna TPE, median pruning), resumable",
        _cmd_tune,
        (
            opt(
                "config", help="the base run config, e.g. configs/ecalf/ETTh1.yaml (each cell sets its data)"
            ),
            opt(
                "--space",
                required=True,
                metavar="SPACE.yaml",
                help="search space, e.g. configs/tune/ecalf.yaml",
            ),
            opt(
                "--trials", type=int, required=True, metavar="N", help="trials finished when the search ends"
            ),
            opt(
                "--datasets",
                nargs="+",
                metavar="NAME",
                help="datasets of the pilot cells (default: the protocol's ETTh1 ETTh2 ETTm1 ETTm2)",
            ),
            opt(
                "--horizons",
                nargs="+",
                type=int,
                metavar="H",
                help="one horizon for every dataset, or one per dataset (default: 96 336 96 192)",
            ),
            opt("--few-shot", type=float, default=10.0, metavar="P", help="percent of training windows (10)"),
            opt("--seed", type=int, default=2021, help="the run seed of every trial (default 2021)"),
            opt("--sampler-seed", type=int, default=0, help="the TPE sampler's seed (default 0)"),
            opt(
                "--set", action="append", metavar="KEY=VALUE", help="override the base config for every trial"
            ),
            opt("--output-dir", help="search directory (default runs/tune/<space file name>)"),
            opt("--best-config", metavar="YAML", help="also write the best trial's run config here"),
            opt(
                "--snapshot",
                metavar="DIR",
                help="after every trial, a consistent copy of the study, trials.csv and search.yaml here "
                "(e.g. in version control); a search directory without a study continues from it",
            ),
            opt(
                "--status",
                action="store_true",
                help="only say where the search stands (trials by state, best so far, hours, running now); "
                "runs and writes nothing",
            ),
            opt(
                "--levers",
                action="store_true",
                help="after the search: each searched value of the best trial taken back to the untuned "
                "recipe's, one at a time, scored on the same cells (levers.csv; validation only)",
            ),
            opt(
                "--lever-set",
                action="append",
                metavar="'KEY=VALUE ...'",
                help="with --levers, also this variant of the best recipe (overrides applied together), "
                "e.g. 'training.eval_every_steps=null training.patience=3'; repeatable",
            ),
            DATA_DIR,
            QUIET,
        ),
        "Train each trial's recipe on every pilot cell and score it by the mean over cells of its best "
        "validation MSE / the naive forecast's validation MSE; the test split is never read. The study is "
        "SQLite in the search directory: run the same command again to continue a killed search. Writes "
        "trials.csv and best.yaml there. Needs pip install 'ecalf[tune]'. See docs/tuning-protocol.md.",
    ),
    Command(
        "validate",
        "score one recipe on a search's pilot cells, validation only (a reference for a search's table)",
        _cmd_validate,
        (
            opt(
                "config",
                help="a run config, e.g. configs/baselines/linear.yaml ({dataset} in its name: per dataset)",
            ),
            opt(
                "--datasets",
                nargs="+",
                metavar="NAME",
                help="datasets of the cells (default: the protocol's pilot cells, as ecalf tune)",
            ),
            opt("--horizons", nargs="+", type=int, metavar="H", help="one horizon, or one per dataset"),
            opt("--few-shot", type=float, default=10.0, metavar="P", help="percent of training windows (10)"),
            opt("--seed", type=int, default=2021, help="the run seed (default 2021)"),
            opt("--set", action="append", metavar="KEY=VALUE", help="override the config for every cell"),
            opt("--output-dir", help="where the cells' runs go (default runs/validate/<config name>)"),
            DATA_DIR,
            QUIET,
        ),
        "Fit the recipe on every cell and score it as ecalf tune scores a trial: the mean over cells of its "
        "best validation MSE / the naive forecast's validation MSE. The test split is never read. Writes "
        "validation.csv in the output directory; finished cells are reused. See docs/tuning-protocol.md.",
    ),
    Command(
        "ensemble",
        "add seed-ensemble rows (<model>+ens: the test forecast averaged over seeds) to a results CSV",
        _cmd_ensemble,
        (
            opt("results", help="a results CSV of `ecalf benchmark` (its runs on this machine)"),
            opt("--models", nargs="+", metavar="LABEL", help="only these model labels (default: every one)"),
            opt("--datasets", nargs="+", metavar="NAME", help="only these datasets"),
            opt("--horizons", nargs="+", type=int, metavar="H", help="only these horizons"),
            opt(
                "--seeds",
                nargs="+",
                type=int,
                metavar="SEED",
                help="only cells that have all of these seeds, averaged over exactly these (a grid still "
                "running gets a cell's row once its seeds are all in)",
            ),
            QUIET,
        ),
        "For every cell with two or more seeds, the seeds' saved best checkpoints forecast the test split "
        "again, the forecasts are averaged with equal weights (nothing chosen on test) and the average is "
        "scored: one row labelled <model>+ens, seed 0. Cells that have one already are skipped.",
    ),
    Command(
        "report",
        "markdown tables and PNG plots from a benchmark results CSV",
        _cmd_report,
        (
            opt("results", help="results CSV written by `ecalf benchmark`"),
            opt("--output-dir", help="where to write (default: beside the CSV)"),
            opt(
                "--compare",
                nargs="+",
                default=["calf", "ecalf"],
                metavar="MODEL",
                help="models drawn per horizon; of two, the second is compared with the first cell by cell "
                "(default: calf ecalf)",
            ),
            opt(
                "--pair",
                nargs=2,
                action="append",
                metavar=("BASE", "OTHER"),
                help="also compare OTHER with BASE cell by cell (repeatable), e.g. --pair linear ecalf; a "
                "model fitted without seed dependence (closed form) is paired with every seed of the other",
            ),
            opt(
                "--published",
                metavar="CSV",
                nargs="?",
                const="",
                help="published numbers in italics beside the measured ones: the CALF paper's and the "
                "baselines' (ecalf's own list) or, with CSV, those of that file (same columns)",
            ),
            opt(
                "--standing",
                action="append",
                metavar="MODEL",
                help="also say where MODEL stands among all models (repeatable): per dataset its mean MSE's "
                "rank, the models lower, the horizons where it is the lowest",
            ),
            opt(
                "--histories",
                action="store_true",
                help="also write <stem>_histories.csv: every run's per-epoch history (losses, validation, "
                "learning rate, adapted values), one row per run and epoch, read from the rows' run "
                "directories",
            ),
        ),
    ),
    Command(
        "data",
        "benchmark datasets: list, info, download",
        description="Datasets are looked up in the data directory: --data-dir DIR if given, else "
        "$ECALF_DATA_DIR if set, else ./datasets. See docs/data.md.",
        subcommands=(
            Command("list", "the registered datasets (file, frequency, split rule, target)", _cmd_data_list),
            Command(
                "info",
                "rows, channels, dates and window counts per split of a dataset",
                _cmd_data_info,
                (
                    opt(
                        "name",
                        help="a registered dataset (`ecalf data list`) or a CSV path with a date column",
                    ),
                    DATA_DIR,
                    CONTEXT,
                    opt(
                        "--prediction-length",
                        type=int,
                        default=PREDICTION_LENGTH,
                        metavar="H",
                        help=f"horizon (default {PREDICTION_LENGTH})",
                    ),
                    opt(
                        "--few-shot",
                        type=float,
                        default=100.0,
                        metavar="P",
                        help="keep P %% of training windows",
                    ),
                ),
                "Print a dataset's rows, channels, date range, frequency, split rows and windows per split. "
                "The data directory is --data-dir, else $ECALF_DATA_DIR, else ./datasets.",
            ),
            Command(
                "download",
                "download a dataset's public file into the data directory",
                _cmd_data_download,
                (opt("name", help="a registered dataset name (`ecalf data list`)"), DATA_DIR),
                "Download a registered dataset (ETT files from github.com/zhouhaoyi/ETDataset) into "
                "--data-dir, else $ECALF_DATA_DIR, else ./datasets. An existing file is kept.",
            ),
        ),
    ),
    Command(
        "backbone",
        "backbone LLMs",
        subcommands=(
            Command(
                "info",
                "load a backbone and print its shapes, parameter counts, load time",
                _cmd_backbone_info,
                (
                    opt(
                        "preset",
                        help="gpt2, smollm2-135m, tiny-gpt2, tiny-llama, a hub id, a directory or a .gguf",
                    ),
                    opt("--layers", type=int, default=6, help="number of blocks kept (default 6)"),
                    opt(
                        "--principal-embeddings",
                        type=int,
                        default=None,
                        metavar="K",
                        help="PCA size (default 500, or the backbone's width if smaller)",
                    ),
                    opt("--random", action="store_true", help="random weights instead of pretrained ones"),
                ),
            ),
        ),
    ),
)


def _add_commands(subparsers: Any, commands: Sequence[Command]) -> None:
    for command in commands:
        parser = subparsers.add_parser(command.name, help=command.help, description=command.description)
        for option in command.options:
            parser.add_argument(*option.flags, **option.kwargs)
        if command.handler is not None:
            parser.set_defaults(func=command.handler)
        if command.subcommands:
            inner = parser.add_subparsers(dest=f"{command.name}_command", required=True, metavar="COMMAND")
            _add_commands(inner, command.subcommands)


def build_parser() -> argparse.ArgumentParser:
    """The ``ecalf`` parser, read from :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="ecalf",
        description="Enhanced CALF: LLM time-series forecasting, its base CALF, baselines, benchmarks.",
    )
    _add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), COMMANDS)
    return parser


def _one_line_warnings(show: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints ecalf's own warnings as one line, ``ecalf: warning:
    ...``, and hands the others (torch's, pandas') to ``show``."""
    package = Path(__file__).resolve().parent

    def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     file: Any = None, line: str | None = None) -> None:  # fmt: skip
        if Path(filename).resolve().is_relative_to(package):
            print(f"ecalf: warning: {message}", file=sys.stderr if file is None else file)
        else:
            show(message, category, filename, lineno, file, line)

    return show_warning


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    saved = dict(os.environ)
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warnings(shown)
    # Each line as it is printed, also into a file or a pipe (`ecalf benchmark ... > log`, `tail -f
    # log`), where Python would otherwise hold a long job's lines back in an 8 KB buffer.
    stdout = sys.stdout
    buffered = isinstance(stdout, io.TextIOWrapper) and not stdout.line_buffering
    if isinstance(stdout, io.TextIOWrapper) and buffered:
        stdout.reconfigure(line_buffering=True)
    if getattr(args, "quiet", False):
        # The libraries' own bars (GGUF conversion, weight loading, downloads) go quiet too. Both are
        # read when tqdm / huggingface_hub are first imported, which happens inside the command.
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["TQDM_DISABLE"] = "1"
    try:
        return int(args.func(args) or 0)
    except EcalfError as exc:
        print(f"ecalf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ecalf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`ecalf ... | head`): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush does not fail again
        return 141
    finally:
        os.environ.clear()
        os.environ.update(saved)
        warnings.showwarning = shown
        if isinstance(stdout, io.TextIOWrapper) and buffered and not stdout.closed:
            stdout.reconfigure(line_buffering=False)


if __name__ == "__main__":
    raise SystemExit(main())
