"""Figures are written and show something: history + forecast, forecast vs actual, training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from ecalf.cli import main
from ecalf.config_files import run_config_from_dict
from ecalf.data import make_synthetic, write_synthetic_csv
from ecalf.errors import EcalfError
from ecalf.plots import (
    ACTUAL_COLOR,
    FORECAST_COLOR,
    HISTORY_COLOR,
    ForecastWindow,
    plot_forecast,
    plot_forecast_vs_actual,
    plot_run_training,
    plot_training_curves,
)
from ecalf.run import run_experiment


def _pixels(png: Path) -> np.ndarray:
    return imread(png)[..., :3]  # (height, width, RGB) floats in [0, 1]


def assert_not_blank(png: Path, *colors: str) -> None:
    """Mostly white paper with drawing on it: a fair share of non-white pixels, many distinct colours,
    and each line colour in ``colors`` present on enough pixels to be a drawn line."""
    pixels = _pixels(png)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    non_white = (pixels < 0.95).any(axis=-1).mean()
    assert 0.01 < non_white < 0.6, f"non-white fraction {non_white:.4f}"
    distinct = len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert distinct > 20, f"only {distinct} distinct colours"
    for color in colors:
        assert color_pixels(pixels, color) > 100, f"no line drawn in {color}"


def color_pixels(pixels: np.ndarray, color: str, tolerance: float = 0.06) -> int:
    return int((np.abs(pixels - np.array(to_rgb(color))) < tolerance).all(axis=-1).sum())


def test_the_blankness_check_rejects_blank_and_single_colour_images(tmp_path):
    from matplotlib.image import imsave

    white = tmp_path / "white.png"
    imsave(white, np.ones((300, 400, 3)))
    with pytest.raises(AssertionError, match="non-white fraction"):
        assert_not_blank(white)
    half = np.ones((300, 400, 3))
    half[:, :60] = 0.0
    imsave(tmp_path / "block.png", half)
    with pytest.raises(AssertionError, match="distinct colours"):
        assert_not_blank(tmp_path / "block.png")


def _history_and_forecast(channels: int = 5, horizon: int = 12) -> tuple[pd.DataFrame, pd.DataFrame]:
    data = make_synthetic(200 + horizon, channels, seed=1, frequency="h")
    return data.iloc[:200], data.iloc[200:].reset_index(drop=True)


def test_plot_forecast_draws_history_and_forecast_in_a_grid_of_panels(tmp_path):
    history, forecast = _history_and_forecast(channels=5)
    path = plot_forecast(history, forecast, tmp_path / "sub" / "forecast.png", title="toy")
    assert path == tmp_path / "sub" / "forecast.png"
    assert_not_blank(path, HISTORY_COLOR, FORECAST_COLOR)
    # five channels: a grid of 2 x 3 panels of 4.6 x 2.8 inches (+0.4 for the title) at 100 dpi
    assert _pixels(path).shape[:2] == (2 * 280 + 40, 3 * 460)
    assert not list(tmp_path.glob("sub/.*.tmp"))  # written atomically, no temporary left


def test_plot_forecast_refuses_frames_it_cannot_draw(tmp_path):
    history, forecast = _history_and_forecast(channels=2)
    with pytest.raises(EcalfError, match="lacks the forecast's channels"):
        plot_forecast(history[["date", "x0"]], forecast, tmp_path / "f.png")
    with pytest.raises(EcalfError, match="needs a `date` column"):
        plot_forecast(history.drop(columns="date"), forecast, tmp_path / "f.png")


def test_plot_forecast_vs_actual_shows_all_three_lines(tmp_path):
    rng = np.random.default_rng(0)
    stamps = pd.date_range("2024-01-01", periods=60, freq="15min")
    windows = [
        ForecastWindow(
            stamps[:48], rng.normal(size=(48, 3)), stamps[48:], rng.normal(size=(12, 3)),
            rng.normal(size=(12, 3)), f"window {i}",
        )
        for i in range(2)
    ]  # fmt: skip
    path = plot_forecast_vs_actual(windows, ["a", "b", "c"], tmp_path / "test.png")
    assert_not_blank(path, HISTORY_COLOR, ACTUAL_COLOR, FORECAST_COLOR)
    with pytest.raises(EcalfError, match="no windows"):
        plot_forecast_vs_actual([], ["a"], tmp_path / "none.png")


def _history(epochs: int = 4, values: bool = True) -> list[dict]:
    return [
        {
            "epoch": e, "train_loss": 2.0 / e, "loss_parts": {"task": 1.0 / e, "feature": 0.5 / e},
            "val_mse": 1.0 / e + 0.1, "val_mae": 0.8 / e, "learning_rate": 5e-4 * (1 - e / 10),
            "values": {"temperature": 0.1 + e / 100} if values else {},
        }
        for e in range(1, epochs + 1)
    ]  # fmt: skip


def test_plot_training_curves_has_a_panel_for_adapted_values_when_there_are_some(tmp_path):
    with_values = plot_training_curves(_history(), tmp_path / "curves.png")
    assert_not_blank(with_values, "#1f77b4", "#ff7f0e")
    assert _pixels(with_values).shape[:2] == (2 * 320 + 40, 2 * 480)  # 2 x 2 panels; 1 x 3 without values
    with pytest.raises(EcalfError, match="no training history"):
        plot_training_curves([], tmp_path / "empty.png")


# --------------------------------------------------------------------------------------------------
# From run directories and saved forecasters, through the CLI
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished dlinear run on a synthetic CSV, as `ecalf train` writes it."""
    root = tmp_path_factory.mktemp("plots_run")
    csv = write_synthetic_csv(root / "toy.csv", num_rows=240, num_channels=3, seed=4)
    config = run_config_from_dict(
        {
            "data": {"dataset": str(csv), "context_length": 24, "prediction_length": 8},
            "model": {"name": "dlinear", "moving_average": 5},
            "training": {"epochs": 3, "batch_size": 32, "progress": False},
        }
    )
    return run_experiment(config, root / "run", echo=None).run_dir


def test_evaluate_plot_draws_forecast_vs_actual_on_test_windows(tiny_run, tmp_path, capsys):
    png = tmp_path / "test.png"
    assert main(["evaluate", str(tiny_run), "--plot", str(png), "--windows", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "test mse" in out and str(png) in out
    assert_not_blank(png, HISTORY_COLOR, ACTUAL_COLOR, FORECAST_COLOR)
    assert _pixels(png).shape[:2] == (2 * 250 + 40, 3 * 420)  # a row per window, a column per channel


def test_plot_training_from_a_run_directory_and_from_its_jsonl_alone(tiny_run, tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert main(["plot-training", str(tiny_run), "--output", str(png)]) == 0
    assert_not_blank(png, "#1f77b4")
    assert _pixels(png).shape[:2] == (320 + 40, 3 * 480)  # dlinear adapts no values: 1 x 3 panels
    in_progress = tmp_path / "in_progress"  # a killed run: metrics.jsonl but no metrics.json yet
    in_progress.mkdir()
    (in_progress / "metrics.jsonl").write_text((tiny_run / "metrics.jsonl").read_text())
    assert_not_blank(plot_run_training(in_progress, tmp_path / "partial.png"), "#1f77b4")
    assert main(["plot-training", str(tmp_path / "in_progress" / "nothing"), "--output", str(png)]) == 2
    assert "has no metrics.json or metrics.jsonl" in capsys.readouterr().err


def test_plot_training_from_a_saved_forecaster(tmp_path):
    from ecalf.forecast import Forecaster

    data = make_synthetic(100, 2, seed=2, frequency="h")
    forecaster = Forecaster(
        "dlinear", context_length=24, prediction_length=6, model_options={"moving_average": 5},
        training_options={"epochs": 2, "progress": False},
    ).fit(data, verbose=False)  # fmt: skip
    saved = forecaster.save(tmp_path / "model")
    assert main(["plot-training", str(saved), "--output", str(tmp_path / "curves.png")]) == 0
    assert_not_blank(tmp_path / "curves.png", "#1f77b4")


def test_plot_search_draws_the_best_so_far_and_a_panel_per_value(tmp_path):
    """Completed trials' scores with the best so far (C3 line); pruned trials only as marks; a panel
    per searched value, categorical for choices; nothing finished is an error."""
    from ecalf.plots import SearchPoint, plot_search

    points = [
        SearchPoint(i, "complete" if i % 3 else "pruned", 0.6 + 0.05 * np.sin(i) if i % 3 else None,
                    {"training.learning_rate": 1e-4 * (i + 1), "model.loss": ["mse", "l1"][i % 2]})
        for i in range(12)
    ]  # fmt: skip
    png = plot_search(
        points, ["training.learning_rate", "model.loss"], tmp_path / "s.png",
        log_params=["training.learning_rate"], title="search",
    )  # fmt: skip
    assert_not_blank(png, "C3")
    with pytest.raises(EcalfError, match="no finished trial"):
        plot_search([], ["model.loss"], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
