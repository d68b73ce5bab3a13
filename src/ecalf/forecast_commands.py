"""The practitioner's commands (``ecalf fit``, ``ecalf forecast``, ``ecalf backtest``): a
:class:`~ecalf.forecast.Forecaster` fitted and saved, loaded and asked for a forecast or a backtest, the
results written as CSV (and PNG), nothing written unless the whole command succeeded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import pandas as pd

from ecalf.artifacts import write_text
from ecalf.backtest import BacktestReport, backtest_report, season_length
from ecalf.config import CONTEXT_LENGTH, FORECAST_LENGTH, VALIDATION_FRACTION
from ecalf.conformal import check_levels
from ecalf.data.series import SeriesInput
from ecalf.forecast import Forecaster
from ecalf.forecast_settings import options_from_overrides
from ecalf.saved_forecaster import check_output_dir, clear_tracking


def fit_and_save(
    data: SeriesInput,
    output_dir: str | os.PathLike[str],
    *,
    model: str = "ecalf",
    backbone: str | None = None,
    context_length: int = CONTEXT_LENGTH,
    prediction_length: int = FORECAST_LENGTH,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    validation_fraction: float = VALIDATION_FRACTION,
    overrides: Iterable[str] = (),
    verbose: bool = True,
    target: Sequence[str] | None = None,
    future_covariates: Sequence[str] = (),
    calendar: bool = False,
    fill: str | None = None,
    skip_short: bool = False,
) -> Forecaster:
    """``ecalf fit``: fit a Forecaster on ``data`` and save it to ``output_dir``.

    The output directory is checked before training; the per-epoch tracking (``training.tracking``,
    ``metrics.jsonl`` by default) is written into it while fitting, after the tracking of an earlier
    save there is removed (its curves would otherwise mix with this fit's).
    """
    clear_tracking(check_output_dir(output_dir))
    model_options, training_options, seed = options_from_overrides(overrides)
    for key, value in (("epochs", epochs), ("batch_size", batch_size), ("learning_rate", learning_rate)):
        if value is not None:
            training_options[key] = value
    if not verbose:
        training_options["progress"] = False
    forecaster = Forecaster(
        model,
        backbone,
        context_length,
        prediction_length,
        model_options=model_options,
        training_options=training_options,
        seed=2021 if seed is None else seed,
        target=target,
        future_covariates=future_covariates,
        calendar=calendar,
        fill=fill,
    )
    command = None
    if isinstance(data, (str, os.PathLike)):
        command = (
            f"ecalf fit --model linear --input {data} --context-length {context_length} "
            f"--prediction-length {prediction_length} --output-dir DIR"
        )
    forecaster.fit(
        data,
        validation_fraction=validation_fraction,
        verbose=verbose,
        tracking_dir=output_dir,
        linear_command=command,
        skip_short=skip_short,
    )
    forecaster.save(output_dir)
    return forecaster


def forecast_to_csv(
    model_dir: str | os.PathLike[str],
    data: SeriesInput,
    output: str | os.PathLike[str],
    *,
    plot: str | os.PathLike[str] | None = None,
    history_rows: int | None = None,
    level: Iterable[float] | None = None,
    future: SeriesInput | None = None,
) -> pd.DataFrame:
    """``ecalf forecast``: load a saved forecaster, forecast after ``data``, write the CSV (and PNG).

    The CSV has the layout of the input (wide: ``date`` + channels; long: ``unique_id, ds, y``), with
    interval columns for each ``level``.
    """
    forecaster = Forecaster.load(model_dir)
    data = forecaster.read(data)  # once: forecast and drawn
    written = forecaster.predict(data, level=level, future_df=future)  # in the input's layout
    write_text(output, written.to_csv(index=False, lineterminator="\n"))
    if plot is not None:
        forecaster.plot(data, written, plot, history_rows=history_rows)
    return written


def backtest_to_csv(
    model_dir: str | os.PathLike[str],
    data: SeriesInput,
    *,
    n_windows: int = 5,
    step_size: int | None = None,
    refit: bool = False,
    level: Iterable[float] = (),
    output: str | os.PathLike[str] | None = None,
    plot: str | os.PathLike[str] | None = None,
    verbose: bool = False,
    adaptive: bool = False,
) -> tuple[Forecaster, pd.DataFrame, BacktestReport]:
    """``ecalf backtest``: a saved forecaster's backtest on ``data``, scored (:func:`backtest_report`),
    written as CSV (``cross_validation``'s long frame, with the input's own ``unique_id`` values) and
    drawn as PNG when asked. Nothing is written unless the whole backtest succeeded."""
    levels = check_levels(level)
    forecaster = Forecaster.load(model_dir)
    data = forecaster.read(data)  # once: backtested, scored and drawn
    cv = forecaster.cross_validation(
        data, n_windows=n_windows, step_size=step_size, refit=refit, level=levels, adaptive=adaptive,
        verbose=verbose,
    )  # fmt: skip
    history = forecaster.actuals(data)
    assert forecaster.frequency is not None  # a loaded forecaster is fitted
    report = backtest_report(cv, history, forecaster.model_name, season_length(forecaster.frequency), levels)
    if plot is not None:
        from ecalf.plots import plot_backtest

        plot_backtest(history, cv, forecaster.model_name, plot)
    if output is not None:
        write_text(output, cv.to_csv(index=False, lineterminator="\n"))
    return forecaster, cv, report
