"""Backtests (``Forecaster.cross_validation``, ``ecalf backtest``) and the honest floor beside every fit."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from tests.forecasters import H, L, tiny_forecaster
from tests.test_forecast import assert_not_blank

from ecalf.backtest import backtest_report, cutoff_positions, season_length
from ecalf.cli import main
from ecalf.config import VALIDATION_FRACTION
from ecalf.data import make_synthetic
from ecalf.data.series import wide_to_long
from ecalf.errors import ConfigError, DataError, EcalfError
from ecalf.evaluation import evaluate
from ecalf.floor import FloorComparison
from ecalf.forecast import Forecaster
from ecalf.forecast_data import prepare_training_data
from ecalf.models.naive import NaiveConfig, NaiveForecast
from ecalf.registry import get_entry


@pytest.fixture(scope="module")
def fitted() -> tuple[Forecaster, pd.DataFrame]:
    data = make_synthetic(400, 2, seed=5)
    return tiny_forecaster().fit(data, verbose=False), data


def test_cross_validation_equals_predicting_at_each_cutoff_by_hand(fitted):
    forecaster, data = fitted
    cv = forecaster.cross_validation(data, n_windows=3, step_size=4, level=[80])
    assert list(cv.columns) == ["unique_id", "ds", "cutoff", "y", "dlinear", "dlinear-lo-80", "dlinear-hi-80"]
    assert len(cv) == 3 * H * 2
    cutoffs = sorted(cv["cutoff"].unique())
    # the last cutoff leaves exactly one horizon; earlier ones are step_size rows apart
    assert pd.Timestamp(cutoffs[-1]) == data["date"].iloc[-1 - H]
    assert [pd.Timestamp(c) for c in cutoffs] == list(data["date"].iloc[[-1 - H - 8, -1 - H - 4, -1 - H]])
    for cutoff in cutoffs:
        history = data[data["date"] <= cutoff]
        by_hand = forecaster.predict(history, level=[80])
        window = cv[cv["cutoff"] == cutoff]
        for series in ("x0", "OT"):
            rows = window[window["unique_id"] == series]
            assert list(rows["ds"]) == list(by_hand["date"])
            np.testing.assert_array_equal(rows["dlinear"].to_numpy(), by_hand[series].to_numpy())
            np.testing.assert_array_equal(
                rows["dlinear-lo-80"].to_numpy(), by_hand[f"{series}-lo-80"].to_numpy()
            )
            actual = data.set_index("date").loc[rows["ds"], series].to_numpy()
            np.testing.assert_allclose(rows["y"].to_numpy(), actual, rtol=1e-6)


def test_cross_validation_default_step_is_the_horizon_and_long_input_keeps_its_ids(fitted):
    forecaster, data = fitted
    long = data.melt(id_vars="date", var_name="unique_id", value_name="y").rename(columns={"date": "ds"})
    cv = forecaster.cross_validation(long, n_windows=2)
    cutoffs = sorted(cv["cutoff"].unique())
    assert pd.Timestamp(cutoffs[1]) - pd.Timestamp(cutoffs[0]) == pd.Timedelta(hours=H)
    assert list(pd.unique(cv["unique_id"])) == ["x0", "OT"]


@pytest.mark.parametrize("model", ["linear", "dlinear"])
def test_refit_never_reads_a_row_after_its_cutoff(model):
    data = make_synthetic(300, 2, seed=7)
    forecaster = tiny_forecaster(model, epochs=1)
    clean = forecaster.cross_validation(data, n_windows=2, refit=True)
    first = clean["cutoff"].min()
    poisoned = data.copy()
    after = poisoned["date"] > first
    poisoned.loc[after, ["x0", "OT"]] = poisoned.loc[after, ["x0", "OT"]] * 1000 + 5000
    dirty = forecaster.cross_validation(poisoned, n_windows=2, refit=True)
    window = clean["cutoff"] == first
    np.testing.assert_array_equal(dirty.loc[window, model].to_numpy(), clean.loc[window, model].to_numpy())
    # the second window's model did see the poisoned rows (a check that poisoning reaches the fit)
    assert not np.allclose(dirty.loc[~window, model].to_numpy(), clean.loc[~window, model].to_numpy())


def test_bad_backtest_requests_get_one_clear_error(fitted):
    forecaster, data = fitted
    with pytest.raises(DataError, match="use at most"):
        forecaster.cross_validation(data, n_windows=200)
    with pytest.raises(ConfigError, match="step_size must be a positive"):
        forecaster.cross_validation(data, n_windows=2, step_size=0)
    with pytest.raises(ConfigError, match="n_windows must be a positive"):
        forecaster.cross_validation(data, n_windows=0)
    with pytest.raises(DataError, match="too short for one window"):
        forecaster.cross_validation(data.iloc[: L + H - 1], n_windows=1)
    with pytest.raises(ConfigError, match="outside"):
        forecaster.cross_validation(data, n_windows=1, level=[100])
    with pytest.raises(EcalfError, match="needs a fitted forecaster"):
        tiny_forecaster().cross_validation(data, n_windows=1)


def test_cutoffs_and_seasons():
    assert cutoff_positions(100, 10, 5, 3, 5) == [84, 89, 94]
    assert season_length("h") == 24 and season_length("15min") == 96 and season_length("D") == 7
    assert season_length("MS") == 12 and season_length("W-SUN") == 52 and season_length("7min") == 1


def test_backtest_report_scores_each_window_with_utilsforecast(fitted):
    forecaster, data = fitted
    cv = forecaster.cross_validation(data, n_windows=3, level=[90])
    report = backtest_report(cv, wide_to_long(data), "dlinear", 24, [90])
    assert list(report.windows.columns) == ["cutoff", "mse", "mae", "mase", "coverage_90", "winkler_90"]
    first = cv[cv["cutoff"] == cv["cutoff"].min()]
    assert report.windows["mse"].iloc[0] == pytest.approx(((first["y"] - first["dlinear"]) ** 2).mean())
    # MASE: MAE over the in-sample MAE of the seasonal naive forecast on the rows up to the cutoff
    history = data[data["date"] <= first["cutoff"].iloc[0]]
    scales = {
        c: np.abs(history[c].to_numpy()[24:] - history[c].to_numpy()[:-24]).mean() for c in ("x0", "OT")
    }
    per_series = [first[first["unique_id"] == c] for c in ("x0", "OT")]
    mase = np.mean(
        [(s["y"] - s["dlinear"]).abs().mean() / scales[c] for s, c in zip(per_series, ("x0", "OT"))]
    )
    assert report.windows["mase"].iloc[0] == pytest.approx(mase, rel=1e-5)
    assert report.overall["mse"] == pytest.approx(((cv["y"] - cv["dlinear"]) ** 2).mean())
    assert "all" in report.table().splitlines()[-1]


def test_ecalf_backtest_prints_the_table_writes_csv_and_plot(fitted, tmp_path, capsys):
    forecaster, data = fitted
    forecaster.save(tmp_path / "m")
    data.to_csv(tmp_path / "s.csv", index=False)
    out, png = tmp_path / "cv.csv", tmp_path / "cv.png"
    args = ["backtest", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "s.csv")]
    assert main([*args, "--windows", "3", "--level", "90", "--output", str(out), "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "coverage_90" in printed and "mase" in printed and "season 24" in printed
    assert "at fit time: validation mse" in printed and "naive" in printed and "linear" in printed
    written = pd.read_csv(out)
    assert (
        list(written.columns)[:5] == ["unique_id", "ds", "cutoff", "y", "dlinear"]
        and len(written) == 3 * H * 2
    )
    assert_not_blank(png)

    out.unlink()
    assert main([*args, "--windows", "500", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use at most" in err[0] and not out.exists()


def test_ecalf_backtest_and_forecast_read_their_input_file_once(fitted, tmp_path, monkeypatch):
    """The input CSV is parsed once, then backtested, scored and drawn (or forecast and drawn)."""
    from ecalf.forecast_commands import backtest_to_csv, forecast_to_csv

    forecaster, data = fitted
    forecaster.save(tmp_path / "m")
    data.to_csv(tmp_path / "s.csv", index=False)
    real, reads = pd.read_csv, []

    def counted(path, *args, **kwargs):
        if "nrows" not in kwargs:
            reads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pd, "read_csv", counted)
    backtest_to_csv(tmp_path / "m", tmp_path / "s.csv", n_windows=2, plot=tmp_path / "cv.png")
    assert reads == [str(tmp_path / "s.csv")]
    reads.clear()
    forecast_to_csv(tmp_path / "m", tmp_path / "s.csv", tmp_path / "f.csv", plot=tmp_path / "f.png")
    assert reads == [str(tmp_path / "s.csv")]


# --------------------------------------------------------------------------------------------------
# The honest floor
# --------------------------------------------------------------------------------------------------


def test_every_fit_scores_the_naive_and_linear_floors_on_its_validation_windows(fitted, tmp_path):
    forecaster, data = fitted
    floor = forecaster.floor
    assert floor is not None and floor.model == "dlinear"
    assert floor.model_mse == forecaster.summary["best_val_mse"]
    # linear's score is what fitting linear on the same data gives
    linear = tiny_forecaster("linear").fit(data, verbose=False)
    assert floor.linear_mse == pytest.approx(linear.summary["best_val_mse"], rel=1e-9)
    assert linear.floor is not None and linear.floor.linear_mse == linear.floor.model_mse
    forecaster.save(tmp_path / "m")
    assert Forecaster.load(tmp_path / "m").floor == floor


def test_with_a_validation_stride_the_floors_are_scored_on_the_models_windows():
    data = make_synthetic(400, 2, seed=5)
    forecasters = []
    for stride in (1, 3):
        forecaster = Forecaster(
            "dlinear", context_length=L, prediction_length=H, model_options=get_entry("dlinear").tiny_options,
            training_options={"epochs": 2, "progress": False, "batch_size": 32, "val_stride": stride},
        )  # fmt: skip
        forecasters.append(forecaster.fit(data, verbose=False))
    full, strided = (f.floor for f in forecasters)
    assert full is not None and strided is not None
    assert strided.windows == math.ceil(full.windows / 3)
    val_set = prepare_training_data(data, forecasters[1].inputs, L, H, VALIDATION_FRACTION, False).val_set
    naive = evaluate(NaiveForecast(NaiveConfig(L, H, 2)), val_set.strided(3))
    assert strided.naive_mse == pytest.approx(naive.mse)
    # the interval calibration still uses every validation window
    assert (
        forecasters[1].summary["interval_windows"]
        == forecasters[0].summary["interval_windows"]
        == full.windows
    )


def test_the_floor_says_plainly_when_it_wins():
    beaten = FloorComparison("ecalf", model_mse=0.5, naive_mse=0.9, linear_mse=0.4, windows=30)
    assert beaten.beaten_by_floor
    lines = beaten.lines("ecalf fit --model linear --input s.csv ...")
    assert "the linear floor beats ecalf on validation (0.4000 < 0.5000)" in lines[1]
    assert "ecalf fit --model linear --input s.csv" in lines[1]
    fine = FloorComparison("ecalf", model_mse=0.3, naive_mse=0.9, linear_mse=0.4, windows=30)
    assert not fine.beaten_by_floor and len(fine.lines()) == 1


def test_ecalf_fit_prints_the_floor_comparison(tmp_path, capsys):
    make_synthetic(300, 2, seed=5).to_csv(tmp_path / "s.csv", index=False)
    code = main(
        ["fit", "--input", str(tmp_path / "s.csv"), "--prediction-length", str(H), "--context-length", str(L),
         "--model", "dlinear", "--epochs", "1", "--output-dir", str(tmp_path / "m"), "--quiet"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert (
        "validation mse (" in printed and "dlinear" in printed and "naive" in printed and "linear" in printed
    )


def test_adaptive_intervals_widen_after_the_misses_of_earlier_windows():
    rng = np.random.default_rng(11)
    rows = 800
    noise = np.where(np.arange(rows) < 560, 0.1, 0.25)  # the errors grow after row 560
    t = np.arange(rows)
    data = pd.DataFrame(
        {"date": pd.date_range("2024-01-01", periods=rows, freq="h"),
         "y": np.sin(2 * np.pi * t / 24) + noise * rng.standard_normal(rows)}
    )  # fmt: skip
    forecaster = tiny_forecaster("linear").fit(data.iloc[:560], verbose=False)  # calibrated on calm rows
    split = forecaster.cross_validation(data, n_windows=20, level=80)
    adaptive = forecaster.cross_validation(data, n_windows=20, level=80, adaptive=True, gamma=0.2)
    np.testing.assert_array_equal(adaptive["linear"], split["linear"])  # the same point forecasts

    def coverage(cv):
        return ((cv["y"] >= cv["linear-lo-80"]) & (cv["y"] <= cv["linear-hi-80"])).mean()

    def width(cv):
        return (cv["linear-hi-80"] - cv["linear-lo-80"]).groupby(cv["cutoff"]).mean().to_numpy()

    assert coverage(split) < 0.5  # calibrated on calm rows, the bands miss the noisy ones
    assert width(adaptive)[0] == pytest.approx(width(split)[0])  # nothing known yet at the first cutoff
    # after the misses the level rose, up to the highest its 51 validation windows allow (98 %)
    assert forecaster.calibration.windows == 51
    assert width(adaptive)[-1] == pytest.approx(2 * forecaster.calibration.radius(98).mean(), rel=1e-5)
    assert width(adaptive)[-1] > 1.2 * width(split)[-1]
    assert coverage(adaptive) > coverage(split) + 0.05
