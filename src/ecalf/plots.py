"""Figures a person would rather look at than a table: forecasts, forecast vs actuals, training curves.

Everything draws on ``matplotlib.figure.Figure`` with the Agg canvas: no display, no pyplot state, the
caller's backend untouched. PNGs are written atomically (rendered in memory, written to a temporary
sibling, renamed over the target). Channels are a grid of panels, one per channel.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from ecalf.artifacts import write_bytes
from ecalf.data.series import band_suffixes, is_band_column
from ecalf.errors import EcalfError
from ecalf.inference import merged_lora

HISTORY_COLOR = "#1f77b4"
FORECAST_COLOR = "#ff7f0e"
ACTUAL_COLOR = "#2ca02c"
DATE_COLUMN = "date"


# --------------------------------------------------------------------------------------------------
# Figure plumbing
# --------------------------------------------------------------------------------------------------


def new_figure(
    rows: int, cols: int, panel_size: tuple[float, float] = (4.6, 2.8)
) -> tuple[Figure, np.ndarray]:
    """An Agg figure with a (rows, cols) array of axes."""
    fig = Figure(figsize=(cols * panel_size[0], rows * panel_size[1] + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Render ``fig`` as PNG and write it atomically to ``path``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return write_bytes(path, buffer.getvalue())


def grid_shape(panels: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(panels, max_cols)
    return math.ceil(panels / cols), cols


def pick_channels(num_channels: int, max_channels: int) -> list[int]:
    """At most ``max_channels`` evenly spread channel indices, always including the last (the target)."""
    if num_channels <= max_channels:
        return list(range(num_channels))
    return sorted({round(x) for x in np.linspace(0, num_channels - 1, max_channels)})


def hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def _date_axis(ax: Axes) -> None:
    locator = AutoDateLocator(minticks=3, maxticks=7)  # 6 finds no interval for e.g. 60 hours
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def _titled_date_panel(ax: Axes, title: str) -> None:
    """A panel's title, grid and date axis."""
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _date_axis(ax)


def _finish_panels(
    fig: Figure, axes: np.ndarray, shown: int, total: int, noun: str, title: str, path: str | os.PathLike[str]
) -> Path:
    """Hide the unused panels, add the legend and the title (saying how many of ``total`` are shown)
    and write the PNG."""
    hide_unused(axes, shown)
    axes.flat[0].legend(loc="best", fontsize=8)
    fig.suptitle(title + (f" ({shown} of {total} {noun})" if shown < total else ""))
    return save_figure(fig, path)


def _channels(df: pd.DataFrame) -> list[str]:
    return [str(c) for c in df.columns if c != DATE_COLUMN]


# --------------------------------------------------------------------------------------------------
# History + forecast (the practitioner's plot)
# --------------------------------------------------------------------------------------------------


def plot_forecast(
    history: pd.DataFrame,
    forecast: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    history_rows: int | None = None,
    title: str | None = None,
    max_channels: int = 12,
) -> Path:
    """Recent history and the forecast after it, one panel per channel (wide frames: ``date`` + channels).

    Interval columns of the forecast (``<channel>-lo-80``, ``<channel>-hi-80``) are drawn as bands.
    ``history_rows`` defaults to four forecast lengths (capped by the history's length).
    """
    for name, df in (("history", history), ("forecast", forecast)):
        if DATE_COLUMN not in df.columns:
            raise EcalfError(f"plot_forecast: the {name} frame needs a `date` column")
    columns = [c for c in _channels(forecast) if not is_band_column(c, forecast)]
    missing = [c for c in columns if c not in history.columns]
    if missing:
        raise EcalfError(f"plot_forecast: the history lacks the forecast's channels {missing}")
    if len(forecast) == 0 or len(history) == 0:
        raise EcalfError("plot_forecast: the history and the forecast need at least one row each")
    rows = max(history_rows if history_rows is not None else 4 * len(forecast), 1)
    shown = [columns[i] for i in pick_channels(len(columns), max_channels)]
    grid_rows, grid_cols = grid_shape(len(shown))
    fig, axes = new_figure(grid_rows, grid_cols)
    for ax, column in zip(axes.flat, shown):
        # a panel's series each have their own dates: the others' rows are NaN and left out
        own_past = history[column].notna().to_numpy()
        past = history[column].to_numpy(dtype=np.float64)[own_past][-rows:]
        past_time = pd.to_datetime(history[DATE_COLUMN])[own_past].iloc[-rows:]
        own = forecast[column].notna().to_numpy()
        future = forecast[column].to_numpy(dtype=np.float64)[own]
        future_time = pd.to_datetime(forecast[DATE_COLUMN])[own]
        ax.plot(past_time, past, color=HISTORY_COLOR, linewidth=1.2, label="history")
        # the forecast line starts at the last observation so the two read as one series
        ax.plot(
            [past_time.iloc[-1], *future_time],
            [past[-1], *future],
            color=FORECAST_COLOR,
            linewidth=1.8,
            label="forecast",
        )
        levels = sorted({s[3:] for s in band_suffixes(forecast, column)}, key=float, reverse=True)
        for rank, level in enumerate(levels):  # widest first, each band darker than the one around it
            lo, hi = forecast[f"{column}-lo-{level}"][own], forecast[f"{column}-hi-{level}"][own]
            ax.fill_between(
                future_time, lo.to_numpy(dtype=np.float64), hi.to_numpy(dtype=np.float64),
                color=FORECAST_COLOR, alpha=0.15 + 0.1 * rank, linewidth=0, label=f"{level} % interval",
            )  # fmt: skip
        if not levels:
            ax.axvspan(future_time.iloc[0], future_time.iloc[-1], color=FORECAST_COLOR, alpha=0.08)
        _titled_date_panel(ax, column)
    title = title or f"forecast of the next {len(forecast)} steps"
    return _finish_panels(fig, axes, len(shown), len(columns), "channels", title, path)


def plot_backtest(
    history: pd.DataFrame,
    cv: pd.DataFrame,
    model: str,
    path: str | os.PathLike[str],
    *,
    history_rows: int | None = None,
    title: str | None = None,
    max_channels: int = 12,
) -> Path:
    """A backtest (``cross_validation``'s long frame) over the actual series (``unique_id, ds, y``):
    one panel per series, each window's forecast from its cutoff (a dotted line), and the widest
    interval as a band. ``history_rows`` before the series' first cutoff are shown too (default: one
    horizon)."""
    series = list(pd.unique(cv["unique_id"]))
    shown = [series[i] for i in pick_channels(len(series), max_channels)]
    levels = sorted(
        {str(c).rsplit("-", 1)[1] for c in cv.columns if str(c).startswith(f"{model}-lo-")}, key=float
    )
    grid_rows, grid_cols = grid_shape(len(shown))
    fig, axes = new_figure(grid_rows, grid_cols)
    for ax, uid in zip(axes.flat, shown):
        mine = cv[cv["unique_id"] == uid]
        cutoffs = sorted(pd.unique(mine["cutoff"]))  # a panel's series each have their own
        actual = history[history["unique_id"] == uid].sort_values("ds")
        horizon = int((mine["cutoff"] == cutoffs[0]).sum())
        before = actual[actual["ds"] <= cutoffs[0]].iloc[
            -(history_rows if history_rows is not None else horizon) :
        ]
        span = pd.concat([before, actual[(actual["ds"] > cutoffs[0]) & (actual["ds"] <= mine["ds"].max())]])
        ax.plot(pd.to_datetime(span["ds"]), span["y"].to_numpy(dtype=np.float64), color=HISTORY_COLOR,
                linewidth=1.2, label="actual")  # fmt: skip
        for k, cutoff in enumerate(cutoffs):
            window = mine[mine["cutoff"] == cutoff]
            time = pd.to_datetime(window["ds"])
            if levels:
                ax.fill_between(
                    time, window[f"{model}-lo-{levels[-1]}"].to_numpy(dtype=np.float64),
                    window[f"{model}-hi-{levels[-1]}"].to_numpy(dtype=np.float64), color=FORECAST_COLOR,
                    alpha=0.2, linewidth=0, label=f"{levels[-1]} % interval" if k == 0 else None,
                )  # fmt: skip
            ax.plot(time, window[model].to_numpy(dtype=np.float64), color=FORECAST_COLOR, linewidth=1.6,
                    label=model if k == 0 else None)  # fmt: skip
            ax.axvline(pd.Timestamp(cutoff), color="0.6", linewidth=0.8, linestyle=":")
        _titled_date_panel(ax, str(uid))
    windows = int(cv.groupby("unique_id")["cutoff"].nunique().max())
    title = title or f"{model}: backtest of {windows} windows (dotted: cutoffs)"
    return _finish_panels(fig, axes, len(shown), len(series), "series", title, path)


# --------------------------------------------------------------------------------------------------
# Forecast vs actuals on test windows
# --------------------------------------------------------------------------------------------------


@dataclass
class ForecastWindow:
    """One forecast window in original units: look-back, actual and predicted future."""

    past_time: pd.DatetimeIndex | np.ndarray
    """(L,) timestamps (or step numbers)."""
    past: np.ndarray
    """(L, C)"""
    future_time: pd.DatetimeIndex | np.ndarray
    """(H,)"""
    actual: np.ndarray
    """(H, C)"""
    predicted: np.ndarray
    """(H, C)"""
    label: str = ""


def plot_forecast_vs_actual(
    windows: Sequence[ForecastWindow],
    columns: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    max_channels: int = 4,
) -> Path:
    """A grid: one row per window, one column per channel; actuals vs forecast after the look-back."""
    if not windows:
        raise EcalfError("plot_forecast_vs_actual: no windows to plot")
    shown = pick_channels(len(columns), max_channels)
    fig, axes = new_figure(len(windows), len(shown), panel_size=(4.2, 2.5))
    for r, window in enumerate(windows):
        dates = isinstance(window.future_time, pd.DatetimeIndex)
        for c, channel in enumerate(shown):
            ax = axes[r, c]
            ax.plot(
                window.past_time,
                window.past[:, channel],
                color=HISTORY_COLOR,
                linewidth=1.0,
                label="look-back",
            )
            ax.plot(
                window.future_time,
                window.actual[:, channel],
                color=ACTUAL_COLOR,
                linewidth=1.4,
                label="actual",
            )
            ax.plot(
                window.future_time,
                window.predicted[:, channel],
                color=FORECAST_COLOR,
                linewidth=1.6,
                label="forecast",
            )
            ax.axvline(window.future_time[0], color="0.5", linewidth=0.8, linestyle="--")
            ax.grid(alpha=0.3)
            ax.set_title(f"{columns[channel]}" + (f" | {window.label}" if window.label else ""), fontsize=9)
            if dates:
                _date_axis(ax)
    axes[0, 0].legend(loc="best", fontsize=7)
    fig.suptitle(title or "forecast vs actual")
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------------


def plot_training_curves(
    history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Loss and its parts, validation MSE/MAE, learning rate and adapted values, per epoch.

    ``history`` rows are ``EpochLog`` dicts (``metrics.json``'s ``history``).
    """
    if not history:
        raise EcalfError(
            "no training history to plot (the run trained no epoch, or the model has no trainable parameters)"
        )
    epochs = [int(r["epoch"]) for r in history]
    values_names = sorted({k for r in history for k in r.get("values", {})})
    grid = (2, 2) if values_names else (1, 3)
    fig, axes = new_figure(*grid, panel_size=(4.8, 3.2))
    ax = axes.flat[0]
    ax.plot(epochs, [r["train_loss"] for r in history], marker="o", markersize=3, linewidth=2, label="loss")
    for name in sorted({k for r in history for k in r.get("loss_parts", {})}):
        ax.plot(epochs, [r.get("loss_parts", {}).get(name, np.nan) for r in history], linewidth=1, label=name)
    _log_if_positive(ax, [r["train_loss"] for r in history])
    ax.set_title("training loss and its parts", fontsize=10)
    ax.legend(fontsize=7)

    ax = axes.flat[1]
    ax.plot(epochs, [r["val_mse"] for r in history], marker="o", markersize=3, label="val mse")
    ax.plot(epochs, [r["val_mae"] for r in history], marker="s", markersize=3, label="val mae")
    best = int(np.nanargmin([r["val_mse"] for r in history]))
    ax.axvline(epochs[best], color="0.5", linestyle="--", linewidth=0.8, label=f"best epoch {epochs[best]}")
    ax.set_title("validation", fontsize=10)
    ax.legend(fontsize=7)

    ax = axes.flat[2]
    ax.plot(epochs, [r["learning_rate"] for r in history], marker="o", markersize=3, color="0.3")
    _log_if_positive(ax, [r["learning_rate"] for r in history])
    ax.set_title("learning rate", fontsize=10)

    if values_names:
        ax = axes.flat[3]
        for name in values_names:
            ax.plot(epochs, [r.get("values", {}).get(name, np.nan) for r in history], label=name)
        ax.set_title("adapted values", fontsize=10)
        ax.legend(fontsize=7)
    for ax in axes.flat:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(title or "training curves")
    return save_figure(fig, path)


@dataclass(frozen=True)
class SearchPoint:
    """One finished trial of a search, as :func:`plot_search` draws it."""

    number: int
    state: str
    """``complete``, ``pruned`` or ``diverged``."""
    score: float | None
    """A completed trial's score (None for the others: a pruned trial's running score covers only
    the cells it reached, so it is not comparable)."""
    params: Mapping[str, Any]


def plot_search(
    points: Sequence[SearchPoint],
    params: Sequence[str],
    path: str | os.PathLike[str],
    *,
    log_params: Sequence[str] = (),
    title: str | None = None,
) -> Path:
    """A hyper-parameter search at a glance: the completed trials' scores in order with the best so
    far (pruned and diverged trials as marks on the trial axis), then the completed trials' score
    against each searched value (``log_params`` on a log axis, choices as categories). Lower is better."""
    if not points:
        raise EcalfError("no finished trial to plot yet")
    rows, cols = grid_shape(1 + len(params), max_cols=4)
    fig, axes = new_figure(rows, cols, panel_size=(3.6, 2.7))
    done = sorted(
        (p for p in points if p.state == "complete" and p.score is not None), key=lambda p: p.number
    )
    ax = axes.flat[0]
    for state, color in (("pruned", "0.75"), ("diverged", "C3")):
        stopped = [p.number for p in points if p.state == state]
        for i, number in enumerate(stopped):
            ax.axvline(number, color=color, linewidth=0.8, linestyle=":", label=state if i == 0 else None)
    if done:
        scores = [float(p.score or 0.0) for p in done]
        ax.scatter([p.number for p in done], scores, s=16, color="C0", zorder=3, label="completed")
        ax.step(
            [p.number for p in done], np.minimum.accumulate(scores), where="post", color="C3",
            linewidth=2, label="best so far",
        )  # fmt: skip
    ax.set_title("score by trial (lower is better)", fontsize=9)
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=6)
    for ax, name in zip(axes.flat[1:], params):
        shown = [p for p in done if name in p.params]
        values = [p.params[name] for p in shown]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        ax.scatter(
            values if numeric else [str(v) for v in values], [p.score for p in shown], s=14, color="C0"
        )
        if name in log_params and numeric and values:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # decades only: minor labels overlap
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes.flat[0].grid(alpha=0.3)
    hide_unused(axes, 1 + len(params))
    fig.suptitle(title or "search", fontsize=10)
    return save_figure(fig, path)


def _log_if_positive(ax: Axes, values: Sequence[float]) -> None:
    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 20:
        ax.set_yscale("log")


def history_from_jsonl(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``metrics.jsonl`` rows (flat tags) back to history dicts; the last row of an epoch wins."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for row in rows:
        if "epoch" not in row:
            continue
        by_epoch[int(row["epoch"])] = {
            "epoch": int(row["epoch"]),
            "train_loss": row.get("train/loss", np.nan),
            "loss_parts": {k[6:]: v for k, v in row.items() if k.startswith("train/") and k != "train/loss"},
            "val_mse": row.get("val/mse", np.nan),
            "val_mae": row.get("val/mae", np.nan),
            "learning_rate": row.get("lr", np.nan),
            "values": {k[7:]: v for k, v in row.items() if k.startswith("values/")},
        }
    return [by_epoch[e] for e in sorted(by_epoch)]


# --------------------------------------------------------------------------------------------------
# From run directories
# --------------------------------------------------------------------------------------------------


def plot_run_training(run_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Training curves of a run or saved-forecaster directory.

    Reads ``metrics.json``'s history, or ``metrics.jsonl`` while a run is still training (or was killed).
    """
    from ecalf.artifacts import read_json
    from ecalf.run_dir import RunDirectory
    from ecalf.tracking import JSONL_FILE, read_jsonl

    directory = Path(run_dir)
    metrics_file = RunDirectory(directory).metrics_file
    if metrics_file.is_file():  # a run's RunMetrics, or a saved forecaster's fit summary: both have history
        metrics = read_json(metrics_file)
        history = metrics.get("history", []) if isinstance(metrics, dict) else []
        name = ""
        if isinstance(metrics, dict):  # a run names its dataset, a saved forecaster its source
            data = metrics.get("dataset") or Path(str(metrics.get("source", ""))).name
            name = f"{metrics.get('model', '')} {data}".strip()
    elif (directory / JSONL_FILE).is_file():
        history, name = history_from_jsonl(read_jsonl(directory / JSONL_FILE)), "(in progress)"
    else:
        raise EcalfError(
            f"{directory} has no {metrics_file.name} or {JSONL_FILE}; pass a run directory "
            "(`ecalf train`) or a saved forecaster (`ecalf fit`)"
        )
    return plot_training_curves(history, path, title=f"training curves {name} ({directory.name})")


def plot_run_test_windows(
    run_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    num_windows: int = 3,
    max_channels: int = 4,
    target: str | None = None,
) -> Path:
    """Forecast vs actuals on ``num_windows`` evenly spread test windows of a run, in original units
    (``target``: of that dataset's test split, zero-shot, as ``ecalf.run.evaluate_run`` does)."""
    import torch

    from ecalf.run import load_for_test

    config, model, splits, device = load_for_test(run_dir, target=target)
    test = splits.test
    model.eval()
    count = max(1, min(num_windows, len(test)))
    chosen = sorted({round(x) for x in np.linspace(0, len(test) - 1, count)})
    past, future = test.get_batch(chosen)  # (N, L, C), (N, H, C)
    with merged_lora(model), torch.no_grad():
        predicted = model(past.to(device)).prediction.float().cpu()  # (N, H, C)
    scaler = splits.test_scaler or splits.scaler
    past_np, future_np, predicted_np = (
        scaler.inverse_transform(t.numpy()) for t in (past, future, predicted)
    )
    L, H = test.context_length, test.prediction_length
    stamps = splits.test_timestamps
    windows = []
    for n, i in enumerate(chosen):
        if stamps is not None:
            past_time: pd.DatetimeIndex | np.ndarray = stamps[i : i + L]
            future_time: pd.DatetimeIndex | np.ndarray = stamps[i + L : i + L + H]
        else:
            past_time, future_time = np.arange(i, i + L), np.arange(i + L, i + L + H)
        windows.append(
            ForecastWindow(past_time, past_np[n], future_time, future_np[n], predicted_np[n], f"window {i}")
        )
    from ecalf.registry import model_name_for_config

    name = model_name_for_config(type(config.model))
    test_spec = splits.test_spec or splits.spec
    return plot_forecast_vs_actual(
        windows,
        splits.columns,
        path,
        title=f"{name} on {test_spec.name} test windows, horizon {H} (original units)",
        max_channels=max_channels,
    )
