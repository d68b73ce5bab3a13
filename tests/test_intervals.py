"""Prediction intervals: split-conformal coverage, the forecaster's bands, and interval scores in the
benchmark (``ecalf evaluate --level``, a grid's ``levels``)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from tests.forecasters import H, tiny_forecaster
from tests.test_benchmark import _small_grid
from utilsforecast import losses

from ecalf.benchmark import GridModel, GridSetting, read_results, run_benchmark
from ecalf.cli import main
from ecalf.conformal import (
    CALIBRATED_LEVELS,
    AdaptiveLevel,
    IntervalCalibration,
    adaptive_interval_sums,
    calibrate,
    check_levels,
    interval_sums,
    windows_needed,
)
from ecalf.data import make_synthetic
from ecalf.errors import CheckpointError, ConfigError, EcalfError
from ecalf.forecast import Forecaster


@pytest.fixture(scope="module")
def fitted() -> tuple[Forecaster, pd.DataFrame]:
    data = make_synthetic(400, 2, seed=5)  # 40 validation rows: 35 windows, enough for 95 % intervals
    return tiny_forecaster().fit(data, verbose=False), data


# --------------------------------------------------------------------------------------------------
# Split-conformal calibration
# --------------------------------------------------------------------------------------------------


def _coverage_by_step(radius: np.ndarray, scale: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Coverage of +-radius around 0 on fresh N(0, scale^2) windows, per horizon step."""
    fresh = rng.standard_normal((400, *radius.shape)) * scale[None, :, None]
    return (np.abs(fresh) <= radius[None]).mean(axis=(0, 2))


def test_90_percent_intervals_cover_90_percent_of_exchangeable_noise_at_every_horizon_step():
    # Noise whose scale grows with the horizon step; 19 calibration windows, where the finite-sample
    # correction matters (rank ceil(20 * 0.9) = 18 of 19: coverage 18/20 = 0.90 exactly in expectation).
    rng = np.random.default_rng(0)
    n, steps, series = 19, 8, 300
    scale = np.linspace(0.5, 4.0, steps)
    actual = rng.standard_normal((n, steps, series)) * scale[None, :, None]
    calibration = calibrate(np.zeros_like(actual), actual)
    assert calibration.windows == n
    by_step = _coverage_by_step(calibration.radius(90), scale, rng)
    # each step averages 300 independent calibrations: sd of its coverage about 0.0038
    assert np.abs(by_step - 0.90).max() < 0.02, by_step

    # The same bound fails for a quantile without the correction, or over the wrong axis.
    uncorrected = np.quantile(np.abs(actual), 0.9, axis=0)
    assert np.abs(_coverage_by_step(uncorrected, scale, rng) - 0.90).max() > 0.02
    pooled = np.quantile(np.abs(actual).transpose(1, 0, 2).reshape(steps, -1), 0.9, axis=None)
    assert np.abs(_coverage_by_step(np.full(uncorrected.shape, pooled), scale, rng) - 0.90).max() > 0.02


def test_calibration_radius_is_the_corrected_order_statistic_and_refuses_too_few_windows():
    residuals = np.arange(1.0, 10.0)[:, None, None]  # 9 windows, |residual| = 1..9
    calibration = calibrate(np.zeros_like(residuals), residuals)
    assert calibration.radius(80).item() == 8.0  # ceil(10 * 0.8) = 8th smallest
    assert calibration.radius(50).item() == 5.0
    assert windows_needed(95) == 19 and windows_needed(90) == 9
    with pytest.raises(EcalfError, match="needs at least 19 calibration windows; this model has 9"):
        calibration.radius(95)


def test_calibration_survives_json_and_rejects_other_levels():
    rng = np.random.default_rng(1)
    actual = rng.standard_normal((30, 3, 2))
    calibration = calibrate(np.zeros_like(actual), actual)
    again = IntervalCalibration.from_dict(calibration.to_dict())
    assert again.windows == 30
    np.testing.assert_array_equal(again.radii, calibration.radii)  # inf (too few windows) included
    assert not np.isfinite(again.radii[CALIBRATED_LEVELS.index(99.5)]).all()


@pytest.mark.parametrize(
    ("level", "message"),
    [
        (0.9, "in percent"),
        (100, "outside"),
        (-5, "outside"),
        (80.5, "not one of the calibrated"),
        ("80", "number"),
    ],
)
def test_bad_levels_get_one_clear_error(level, message):
    with pytest.raises(ConfigError, match=message):
        check_levels([level])


def test_interval_scores_agree_with_utilsforecast():
    rng = np.random.default_rng(2)
    actual = rng.standard_normal((40, 5, 3))
    predicted = actual + rng.standard_normal(actual.shape) * 0.8
    calibration = calibrate(predicted[:20], actual[:20])
    scores = interval_sums(actual[20:], predicted[20:], calibration, [80])
    radius = calibration.radius(80)
    frame = pd.DataFrame(
        {
            "unique_id": np.zeros(actual[20:].size, dtype=int),  # one series: the mean over every point
            "y": actual[20:].ravel(),
            "m": predicted[20:].ravel(),
            "m-lo-80": (predicted[20:] - radius).ravel(),
            "m-hi-80": (predicted[20:] + radius).ravel(),
        }
    )
    assert scores["coverage_80"] == pytest.approx(losses.coverage(frame, ["m"], level=80)["m"].item())
    assert scores["winkler_80"] == pytest.approx(losses.winkler_score(frame, ["m"], level=80)["m"].item())
    assert scores["width_80"] == pytest.approx(2 * radius.mean())


def test_adaptive_level_widens_after_misses_and_tracks_the_target_under_drift():
    level = AdaptiveLevel(80, gamma=0.05)
    level.update(1.0)  # missed everything: aim wider
    assert level.current() > 80
    level = AdaptiveLevel(80, gamma=0.05)
    level.update(0.0)
    assert level.current() < 80

    rng = np.random.default_rng(3)
    calibration_errors = rng.standard_normal((200, 4, 3))
    calibration = calibrate(np.zeros_like(calibration_errors), calibration_errors)
    drifted = rng.standard_normal((3000, 4, 3)) * 1.8  # the test errors are larger than validation's
    fixed = interval_sums(drifted, np.zeros_like(drifted), calibration, [80])["coverage_80"]
    adaptive = adaptive_interval_sums(drifted, np.zeros_like(drifted), calibration, [80], feedback_delay=4)
    assert fixed < 0.6  # split conformal under-covers once the errors grow
    assert abs(adaptive["aci_coverage_80"] - 0.80) < 0.03


# --------------------------------------------------------------------------------------------------
# The forecaster's intervals
# --------------------------------------------------------------------------------------------------


def test_predict_with_levels_gives_nested_bands_around_the_point_forecast(fitted):
    forecaster, data = fitted
    plain = forecaster.predict(data)
    banded = forecaster.predict(data, level=[95, 80])
    bands = ["lo-80", "hi-80", "lo-95", "hi-95"]
    assert list(banded.columns) == [
        "date",
        "x0",
        *[f"x0-{b}" for b in bands],
        "OT",
        *[f"OT-{b}" for b in bands],
    ]
    for series in ("x0", "OT"):
        np.testing.assert_array_equal(banded[series], plain[series])
        lo80, hi80, lo95, hi95 = (banded[f"{series}-{s}"] for s in ("lo-80", "hi-80", "lo-95", "hi-95"))
        assert (lo95 <= lo80).all() and (lo80 <= banded[series]).all()
        assert (banded[series] <= hi80).all() and (hi80 <= hi95).all() and (hi95 > lo95).all()
    # the radius is the calibration's, in the original units
    radius = forecaster.calibration.radius(80)
    np.testing.assert_allclose(banded["OT-hi-80"] - banded["OT"], radius[:, 1], rtol=1e-5)


def test_long_input_gets_lo_and_hi_columns(fitted):
    forecaster, data = fitted
    long = data.melt(id_vars="date", var_name="unique_id", value_name="y").rename(columns={"date": "ds"})
    forecast = forecaster.predict(long, level=90)
    assert list(forecast.columns) == ["unique_id", "ds", "y", "lo-90", "hi-90"]
    assert (forecast["lo-90"] <= forecast["y"]).all() and (forecast["y"] <= forecast["hi-90"]).all()


def test_intervals_are_saved_with_thetiny_forecaster(fitted, tmp_path):
    forecaster, data = fitted
    forecaster.save(tmp_path / "m")
    assert (tmp_path / "m" / "intervals.json").is_file()
    loaded = Forecaster.load(tmp_path / "m")
    pd.testing.assert_frame_equal(
        loaded.predict(data, level=[80, 95]), forecaster.predict(data, level=[80, 95])
    )
    (tmp_path / "m" / "intervals.json").write_text('{"levels": [1, 2]}')
    with pytest.raises(CheckpointError, match=r"intervals\.json"):
        Forecaster.load(tmp_path / "m")


def test_a_forecaster_fitted_without_validation_rows_says_how_to_get_intervals(tmp_path):
    data = make_synthetic(120, 2, seed=5)
    forecaster = tiny_forecaster(epochs=1).fit(data, validation_fraction=0.0, verbose=False)
    assert forecaster.predict(data).shape == (H, 3)  # point forecasts still work
    with pytest.raises(EcalfError, match=r"fitted without validation rows.*validation_fraction > 0"):
        forecaster.predict(data, level=80)
    forecaster.save(tmp_path / "m")
    assert not (tmp_path / "m" / "intervals.json").exists()


def test_ecalf_forecast_level_writes_bands_and_refuses_a_bad_level(fitted, tmp_path, capsys):
    forecaster, data = fitted
    forecaster.save(tmp_path / "m")
    data.to_csv(tmp_path / "s.csv", index=False)
    out = tmp_path / "f.csv"
    args = [
        "forecast",
        "--model",
        str(tmp_path / "m"),
        "--input",
        str(tmp_path / "s.csv"),
        "--output",
        str(out),
    ]
    assert main([*args, "--level", "80", "95", "--plot", str(tmp_path / "f.png")]) == 0
    written = pd.read_csv(out)
    assert {"OT-lo-80", "OT-hi-95"} <= set(written.columns) and (tmp_path / "f.png").is_file()
    out.unlink()
    assert main([*args, "--level", "0.9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in percent" in err[0] and not out.exists()


# --------------------------------------------------------------------------------------------------
# The benchmark: ecalf evaluate --level and a grid's levels
# --------------------------------------------------------------------------------------------------


def test_a_grid_with_levels_adds_interval_columns_and_evaluate_prints_them(
    tmp_path, synthetic_csv_dir, monkeypatch, capsys
):
    from tests.test_benchmark import ROOT

    monkeypatch.chdir(ROOT)
    grid = _small_grid(
        tmp_path,
        models=[GridModel("dlinear", "configs/baselines/dlinear.yaml")],
        settings=[GridSetting("full")],
        seeds=[1],
        levels=[80, 95],
        adaptive_intervals=True,
    )
    results = tmp_path / "small.csv"
    run = run_benchmark(grid, results=results, data_dir=str(synthetic_csv_dir), progress=False, echo=None)
    assert run.finished == 1 and not run.failed
    (row,) = read_results(results)
    for name in ("coverage_80", "width_95", "winkler_80", "aci_coverage_95"):
        assert 0 < float(row[name]) < math.inf, name
    assert float(row["coverage_80"]) <= float(row["coverage_95"]) <= 1
    assert float(row["width_80"]) < float(row["width_95"])

    assert main(["evaluate", row["run_dir"], "--level", "80", "--adaptive", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"coverage {float(row['coverage_80']):.4f}" in out and "adaptive conformal" in out

    assert main(["evaluate", row["run_dir"], "--adaptive", "--quiet"]) == 2
    assert "--level" in capsys.readouterr().err


def test_a_grid_with_a_bad_level_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="outside"):
        _small_grid(tmp_path, levels=[120])
    with pytest.raises(ConfigError, match="needs interval levels"):
        _small_grid(tmp_path, adaptive_intervals=True)
