"""Real series in the practitioner API: targets and covariates, known-future inputs, calendar features,
missing values and timestamps, and panels of series of different lengths."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from tests.forecasters import H, L, tiny_forecaster

import ecalf.forecast as forecast_module
from ecalf.backtest import backtest_report
from ecalf.cli import main
from ecalf.data import make_synthetic
from ecalf.errors import ConfigError, DataError
from ecalf.forecast import Forecaster


def _forecaster(model: str = "linear", epochs: int = 1, **kwargs) -> Forecaster:
    return tiny_forecaster(model, epochs, **kwargs)


@pytest.fixture()
def spy_fit(monkeypatch):
    """The training and validation windows every fit hands to the training loop."""
    seen = []
    original = forecast_module.fit_model

    def spy(config, train_set, val_set, **kwargs):
        seen.append((config, train_set, val_set))
        return original(config, train_set, val_set, **kwargs)

    monkeypatch.setattr(forecast_module, "fit_model", spy)
    return seen


def _driven(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """``load`` follows a planned input ``plan`` at the same step (a known-future driver) plus noise."""
    rng = np.random.default_rng(seed)
    plan = rng.standard_normal(rows).round(3)
    return pd.DataFrame(
        {
            "date": pd.date_range("2024-01-01", periods=rows, freq="h"),
            "plan": plan,
            "load": (3 * plan + 0.1 * rng.standard_normal(rows)).round(4),
        }
    )


# --------------------------------------------------------------------------------------------------
# Targets and covariates
# --------------------------------------------------------------------------------------------------


def test_covariates_are_inputs_never_forecast_nor_targets(spy_fit):
    data = make_synthetic(300, 3, seed=1)  # x0, x1, OT
    forecaster = _forecaster("dlinear", target="OT").fit(data, verbose=False)
    assert forecaster.roles.targets == ["OT"] and forecaster.roles.past_covariates == ["x0", "x1"]
    assert list(forecaster.predict(data).columns) == ["date", "OT"]
    config, train_set, val_set = spy_fit[0]
    assert config.model.num_channels == 3 and config.model.num_past_covariates == 2
    for windows in (train_set, val_set):
        assert torch.isnan(windows.targets[:, 1:]).all()  # the covariates' futures: never a target
        assert not torch.isnan(windows.targets[:, 0]).any()
    assert forecaster.calibration.radii.shape[-1] == 1  # intervals of the target only


def test_a_known_future_covariate_is_used_and_its_future_values_are_required():
    data = _driven()
    history, future = data.iloc[:-H], data.iloc[-H:][["date", "plan"]]
    with_plan = _forecaster(future_covariates=["plan"]).fit(history, verbose=False)
    without = _forecaster(target="load").fit(history, verbose=False)  # plan: a past covariate only
    actual = data["load"].iloc[-H:].to_numpy()
    error_with = np.mean((with_plan.predict(history, future_df=future)["load"].to_numpy() - actual) ** 2)
    error_without = np.mean((without.predict(history)["load"].to_numpy() - actual) ** 2)
    assert error_with < 0.1 < error_without  # the same-step driver is what makes load predictable
    changed = future.assign(plan=future["plan"] + 1.0)
    shift = (
        with_plan.predict(history, future_df=changed)["load"]
        - with_plan.predict(history, future_df=future)["load"]
    )
    assert np.allclose(shift, 3.0, atol=0.3)  # the fitted relation: 3 per unit of plan
    with pytest.raises(DataError, match=r"known-future covariates \['plan'\].*future_df"):
        with_plan.predict(history)
    with pytest.raises(DataError, match="no row at 2 of the 6 forecast timestamps"):
        with_plan.predict(history, future_df=future.iloc[:4])
    with pytest.raises(DataError, match=r"lack the known-future covariate column\(s\) \['plan'\]"):
        with_plan.predict(history, future_df=future.rename(columns={"plan": "other"}))


def test_calendar_features_need_no_future_values_and_are_saved(tmp_path):
    data = make_synthetic(400, 1, seed=2)
    forecaster = _forecaster(calendar=True).fit(data, verbose=False)
    assert forecaster.roles.calendar == [
        "calendar:day_sin", "calendar:day_cos", "calendar:week_sin", "calendar:week_cos",
    ]  # fmt: skip
    before = forecaster.predict(data)
    assert list(before.columns) == ["date", "OT"]
    forecaster.save(tmp_path / "m")
    pd.testing.assert_frame_equal(Forecaster.load(tmp_path / "m").predict(data), before)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"target": "nope"}, DataError, "target column 'nope' is not in the data"),
        ({"target": "OT", "future_covariates": ["OT"]}, ConfigError, "both a target and a covariate"),
        ({"future_covariates": ["nope"]}, DataError, "future covariate column 'nope' is not in the data"),
    ],
)
def test_bad_roles_get_one_line_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        _forecaster(**kwargs).fit(make_synthetic(200, 2, seed=3), verbose=False)


def test_a_model_without_future_inputs_refuses_them_when_built():
    with pytest.raises(ConfigError, match=r"cannot use known-future covariates.*calf, ecalf, linear"):
        Forecaster("dlinear", future_covariates=["x0"])
    with pytest.raises(ConfigError, match=r"calendar features"):
        Forecaster("patchtst", calendar=True)


# --------------------------------------------------------------------------------------------------
# Missing values
# --------------------------------------------------------------------------------------------------


def _with_gaps(data: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    gappy = data.copy()
    hidden = np.zeros(len(gappy), dtype=bool)
    hidden[[30, 31, 32, 100, 150, 151]] = True
    gappy.loc[hidden, "OT"] = np.nan
    return gappy, hidden


def test_a_missing_target_is_never_a_training_target(spy_fit):
    data = make_synthetic(300, 2, seed=4)
    gappy, hidden = _with_gaps(data)
    with pytest.raises(DataError, match=r"missing value.*fill='ffill'"):
        _forecaster().fit(gappy, verbose=False)
    forecaster = _forecaster(fill="ffill").fit(gappy, verbose=False)
    _, train_set, _ = spy_fit[-1]
    ot = train_set.targets[:, 1]
    rows = len(ot)
    assert torch.equal(torch.isnan(ot), torch.from_numpy(hidden[:rows]))  # exactly the missing values
    assert not torch.isnan(train_set.series).any()  # the inputs are filled
    assert forecaster.summary["missing_values"] == hidden.sum()

    # what the gaps hid does not matter: other values behind them give the same model
    other = gappy.copy()
    other.loc[hidden, "OT"] = np.nan
    again = _forecaster(fill="ffill").fit(other, verbose=False)
    pd.testing.assert_frame_equal(again.predict(gappy), forecaster.predict(gappy))


def test_missing_timestamps_are_put_back_and_filled_at_predict_too(tmp_path):
    data = make_synthetic(300, 2, seed=5)
    holes = data.drop(index=[50, 51, 52, 290])  # rows missing, the last one inside the context
    forecaster = _forecaster(fill="interpolate").fit(holes, verbose=False)
    assert forecaster.summary["rows"] == 300 and forecaster.summary["missing_values"] == 8
    forecast = forecaster.predict(holes)
    assert forecast["date"].iloc[0] == data["date"].iloc[-1] + pd.Timedelta(hours=1)
    forecaster.save(tmp_path / "m")
    assert Forecaster.load(tmp_path / "m").inputs.fill == "interpolate"
    pd.testing.assert_frame_equal(Forecaster.load(tmp_path / "m").predict(holes), forecast)


def test_an_all_missing_column_with_a_fill_is_one_clear_error():
    data = make_synthetic(200, 2, seed=6)
    data["x0"] = np.nan
    with pytest.raises(DataError, match="column 'x0' has no value at all"):
        _forecaster(fill="ffill").fit(data, verbose=False)
    with pytest.raises(ConfigError, match="fill must be one of ffill, interpolate"):
        _forecaster(fill="mean")


# --------------------------------------------------------------------------------------------------
# Panels
# --------------------------------------------------------------------------------------------------


def _panel() -> pd.DataFrame:
    rng = np.random.default_rng(7)

    def one(uid, start, rows, scale):
        t = np.arange(rows)
        y = scale * (3 + np.sin(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(rows))
        return pd.DataFrame({"unique_id": uid, "ds": pd.date_range(start, periods=rows, freq="h"), "y": y})

    return pd.concat([one(1, "2024-01-01", 300, 1.0), one(2, "2024-01-05", 200, 50.0)], ignore_index=True)


def test_each_panel_series_is_forecast_from_its_own_end_on_its_own_scale(spy_fit, tmp_path):
    panel = _panel()
    forecaster = _forecaster().fit(panel, verbose=False)
    _, train_set, _ = spy_fit[-1]
    assert len(train_set.segments) == 2  # no window crosses from one series into the next
    forecast = forecaster.predict(panel, level=80)
    for uid, rows in panel.groupby("unique_id"):
        mine = forecast[forecast["unique_id"] == uid]
        assert mine["ds"].iloc[0] == rows["ds"].iloc[-1] + pd.Timedelta(hours=1) and len(mine) == H
        scale = 1.0 if uid == 1 else 50.0  # each series on its own level: 3 x its scale, +-1 x its scale
        assert (abs(mine["y"] - 3 * scale) < 1.3 * scale).all()
    width = forecast.assign(w=forecast["hi-80"] - forecast["lo-80"]).groupby("unique_id")["w"].mean()
    assert 20 < width[2] / width[1] < 80  # the bands follow each series' scale (50x)
    assert forecast["unique_id"].dtype.kind == "i"  # the user's ids, integers kept
    forecaster.save(tmp_path / "m")
    pd.testing.assert_frame_equal(Forecaster.load(tmp_path / "m").predict(panel, level=80), forecast)


def test_a_series_too_short_is_named_or_skipped_when_asked():
    panel = pd.concat(
        [
            _panel(),
            pd.DataFrame({"unique_id": 3, "ds": pd.date_range("2024-02-01", periods=20, freq="h"), "y": 1.0}),
        ]
    )
    with pytest.raises(DataError, match=r"series '3': 20 rows are too few.*skip_short=True"):
        _forecaster().fit(panel, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        forecaster = _forecaster().fit(panel, verbose=False, skip_short=True)
    assert any("series '3'" in str(w.message) for w in caught)
    assert forecaster.summary["series"] == 2


def test_a_panel_backtest_cannot_refit_and_says_so():
    forecaster = _forecaster().fit(_panel(), verbose=False)
    cv = forecaster.cross_validation(_panel(), n_windows=2)
    assert set(cv["unique_id"]) == {1, 2} and len(cv) == 2 * 2 * H
    with pytest.raises(Exception, match="cannot be refitted per cutoff"):
        forecaster.cross_validation(_panel(), n_windows=2, refit=True)
    with pytest.raises(DataError, match=r"series '2': 40 backtest windows .* the series has 200"):
        forecaster.cross_validation(_panel(), n_windows=40)  # the shorter series names itself


def test_a_panel_backtest_scores_window_k_over_every_series_kth_cutoff():
    panel = _panel()  # the two series end 96 hours apart, so no cutoff is shared
    forecaster = _forecaster().fit(panel, verbose=False)
    cv = forecaster.cross_validation(panel, n_windows=2)
    model = forecaster.model_name
    report = backtest_report(cv, panel, model, 24)
    assert len(report.windows) == 2
    squared = (cv["y"] - cv[model]) ** 2
    rank = cv.groupby("unique_id")["cutoff"].rank(method="dense")
    for k, row in enumerate(report.windows.itertuples(index=False)):
        kth = cv["cutoff"].where(rank == k + 1).groupby(cv["unique_id"]).transform("max")
        part = squared[cv["cutoff"] == kth]
        assert part.groupby(cv["unique_id"]).size().tolist() == [H, H]  # both series in every window
        assert row.mse == pytest.approx(part.groupby(cv["unique_id"]).mean().mean())
        assert row.cutoff == kth.max()
    assert report.overall["mse"] == pytest.approx(squared.groupby(cv["unique_id"]).mean().mean())


def _as_time(x) -> pd.Timestamp:
    """A matplotlib x value (a date number, or the timestamp it was given) as a timestamp."""
    import matplotlib.dates as mdates

    if isinstance(x, (int, float, np.number)):
        return pd.Timestamp(mdates.num2date(float(x)).replace(tzinfo=None))
    return pd.Timestamp(x)


def test_a_panel_backtest_plot_draws_each_series_over_its_own_cutoffs(tmp_path, monkeypatch):
    import ecalf.plots as plots

    panel = _panel()
    forecaster = _forecaster().fit(panel, verbose=False)
    cv = forecaster.cross_validation(panel, n_windows=2)
    drawn = {}
    finish = plots._finish_panels

    def keep(fig, axes, shown, total, noun, title, path):
        drawn.update(title=title, axes=list(axes.flat))
        return finish(fig, axes, shown, total, noun, title, path)

    monkeypatch.setattr(plots, "_finish_panels", keep)
    plots.plot_backtest(panel, cv, forecaster.model_name, tmp_path / "bt.png")
    assert "backtest of 2 windows" in drawn["title"]
    for ax, (_, rows) in zip(drawn["axes"], cv.groupby("unique_id", sort=False)):
        left, right = (_as_time(x) for x in ax.get_xlim())
        first_cutoff = rows["cutoff"].min()
        assert left > first_cutoff - pd.Timedelta(hours=3 * H)  # from one horizon before its first cutoff
        assert right < rows["ds"].max() + pd.Timedelta(hours=H)  # to its own last forecast
        lines = {_as_time(line.get_xdata()[0]) for line in ax.get_lines() if line.get_linestyle() == ":"}
        assert lines == set(rows["cutoff"])


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------


def test_ecalf_fit_and_forecast_with_a_target_a_known_future_input_and_gaps(tmp_path, capsys):
    data = _driven()
    data.loc[[40, 41], "load"] = np.nan
    data.iloc[:-H].to_csv(tmp_path / "history.csv", index=False)
    data.iloc[-H:][["date", "plan"]].to_csv(tmp_path / "future.csv", index=False)
    fit = ["fit", "--input", str(tmp_path / "history.csv"), "--prediction-length", str(H), "--context-length",
           str(L), "--model", "linear", "--output-dir", str(tmp_path / "m"), "--quiet"]  # fmt: skip
    assert main([*fit, "--target", "load", "--future-covariates", "plan"]) == 2  # gaps without --fill
    assert "--fill ffill" in capsys.readouterr().err
    assert main([*fit, "--target", "load", "--future-covariates", "plan", "--fill", "ffill"]) == 0
    forecast = ["forecast", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "history.csv"),
                "--output", str(tmp_path / "f.csv")]  # fmt: skip
    assert main(forecast) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--future CSV" in err[0] and not (tmp_path / "f.csv").exists()
    assert main([*forecast, "--future", str(tmp_path / "future.csv")]) == 0
    written = pd.read_csv(tmp_path / "f.csv")
    assert list(written.columns) == ["date", "load"] and len(written) == H
    assert np.mean((written["load"].to_numpy() - data["load"].iloc[-H:].to_numpy()) ** 2) < 0.1


def test_ecalf_backtest_of_a_panel_scores_every_series(tmp_path, capsys):
    panel = _panel()
    panel.to_csv(tmp_path / "panel.csv", index=False)
    _forecaster().fit(panel, verbose=False).save(tmp_path / "m")
    out = tmp_path / "cv.csv"
    args = [
        "backtest",
        "--model",
        str(tmp_path / "m"),
        "--input",
        str(tmp_path / "panel.csv"),
        "--windows",
        "2",
    ]
    assert (
        main([*args, "--level", "80", "--output", str(out), "--plot", str(tmp_path / "cv.png"), "--quiet"])
        == 0
    )
    written = pd.read_csv(out)
    assert sorted(written["unique_id"].unique()) == [1, 2] and len(written) == 2 * 2 * H
    assert "coverage_80" in capsys.readouterr().out and (tmp_path / "cv.png").is_file()
