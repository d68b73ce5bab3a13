"""The practitioner API and its CLI: fit -> save -> load -> predict, formats, frequencies, bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from safetensors import safe_open

from ecalf.cli import main
from ecalf.data import make_synthetic
from ecalf.data.series import load_series
from ecalf.errors import CheckpointError, ConfigError, DataError, EcalfError
from ecalf.forecast import Forecaster
from ecalf.forecast_settings import batch_size_for
from ecalf.registry import get_entry

L, H = 24, 6


def _series(rows: int = 120, frequency: str = "h", start: str = "2021-01-01") -> pd.DataFrame:
    return make_synthetic(rows, 2, seed=5, frequency=frequency, start=start)  # columns x0, OT


def _forecaster(model: str = "dlinear", epochs: int = 2, **kwargs) -> Forecaster:
    return Forecaster(
        model,
        context_length=kwargs.pop("context_length", L),
        prediction_length=kwargs.pop("prediction_length", H),
        model_options=get_entry(model).tiny_options,
        training_options={"epochs": epochs, "progress": False, "batch_size": 32},
        **kwargs,
    )


def assert_not_blank(png: Path) -> None:
    """A real figure: mostly white paper, but lines in several colours (tests/test_plots.py has more)."""
    pixels = imread(png)[..., :3]  # (height, width, RGB) floats in [0, 1]
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    non_white = (pixels < 0.95).any(axis=-1).mean()
    assert 0.01 < non_white < 0.6
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 20


def _values(forecast: pd.DataFrame) -> np.ndarray:
    return forecast.drop(columns="date").to_numpy()


@pytest.fixture(scope="module")
def fitted() -> tuple[Forecaster, pd.DataFrame]:
    data = _series()
    return _forecaster().fit(data, verbose=False), data


# --------------------------------------------------------------------------------------------------
# fit -> save -> load -> predict
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["dlinear", "ecalf"])
def test_fit_save_load_predict_gives_bit_identical_forecasts(tmp_path, model):
    data = _series(rows=100)
    forecaster = _forecaster(model, epochs=1).fit(data, verbose=False)
    before = forecaster.predict(data)
    forecaster.save(tmp_path / "model")
    for name in ("forecaster.json", "config.yaml", "model.safetensors", "scaler.json", "metrics.json"):
        assert (tmp_path / "model" / name).is_file(), name

    loaded = Forecaster.load(tmp_path / "model")
    after = loaded.predict(data)
    assert after["date"].equals(before["date"])
    assert list(after.columns) == list(before.columns) == ["date", "x0", "OT"]
    np.testing.assert_array_equal(_values(after), _values(before))  # bit for bit
    assert np.isfinite(_values(after)).all()
    assert loaded.columns == forecaster.columns and loaded.frequency == "h"
    assert loaded.history == forecaster.history and len(loaded.history) == 1
    if model == "ecalf":
        with safe_open(str(tmp_path / "model" / "model.safetensors"), "pt") as handle:
            names = list(handle.keys())
        assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)  # the LoRA adapter
        assert loaded.config.model.backbone.preset == "tiny-gpt2"


def test_int8_forecasts_stay_close_to_the_float_ones(tmp_path):
    data = _series(rows=100)
    forecaster = _forecaster("ecalf", epochs=1).fit(data, verbose=False)
    float_forecast = _values(forecaster.predict(data))
    int8_forecast = _values(forecaster.predict(data, int8=True))
    scale = data[["x0", "OT"]].to_numpy().std(axis=0)
    error = np.abs(int8_forecast - float_forecast)
    assert (error > 0).any() and (error < 0.05 * scale).all()
    first = forecaster._int8
    np.testing.assert_array_equal(_values(forecaster.predict(data, int8=True)), int8_forecast)
    assert forecaster._int8 is first  # made once, kept
    np.testing.assert_array_equal(_values(forecaster.predict(data)), float_forecast)  # float untouched


def test_forecasts_are_in_original_units_and_follow_the_input(fitted):
    forecaster, data = fitted
    forecast = _values(forecaster.predict(data))  # (H, C)
    recent = data[["x0", "OT"]].to_numpy()[-L:]
    # standardised forecasts mapped back: within the range the series lives in, not around 0
    assert (np.abs(forecast - recent.mean(axis=0)) < 4 * recent.std(axis=0) + 1).all()
    shifted = data.assign(x0=data["x0"] + 1000.0)
    assert (_values(forecaster.predict(shifted))[:, 0] > forecast[:, 0] + 500).all()


def test_fit_holds_out_a_validation_part_and_records_history(fitted):
    forecaster, data = fitted
    summary = forecaster.summary
    assert summary["rows"] == 120 and summary["train_rows"] == 120 - 12  # validation_fraction 0.1
    assert summary["windows"] == {"train": 108 - L - H + 1, "val": 12 - H + 1}
    assert summary["stopped"] in ("epochs", "early_stopping")
    assert [r["epoch"] for r in forecaster.history] == [1, 2]
    assert forecaster.scaler is not None
    np.testing.assert_allclose(forecaster.scaler.mean, data[["x0", "OT"]].to_numpy()[:108].mean(axis=0))


def test_batch_size_shrinks_so_a_short_series_gets_several_steps_per_epoch():
    assert batch_size_for(240, 256) == 24  # 10 steps per epoch instead of 1
    assert batch_size_for(30, 256) == 8  # never below 8
    assert batch_size_for(50_000, 256) == 256  # a long series keeps the default
    assert batch_size_for(240, 16) == 16  # never larger than asked


def test_fit_picks_a_smaller_batch_unless_one_is_given(capsys):
    options = {"epochs": 1, "progress": False}
    tiny = get_entry("dlinear").tiny_options
    default = Forecaster("dlinear", None, L, H, model_options=tiny, training_options=options)
    default.fit(_series(), verbose=True)  # 108 training rows: 79 windows
    assert default.config.training.batch_size == 8 and default.history[0]["steps"] == 10
    assert (
        "batch size 8: the default 256 would give 1 optimizer step(s) per epoch on 79"
        in capsys.readouterr().out
    )
    chosen = Forecaster(
        "dlinear", None, L, H, model_options=tiny, training_options={**options, "batch_size": 256}
    ).fit(_series(), verbose=False)
    assert chosen.config.training.batch_size == 256 and chosen.history[0]["steps"] == 1


# --------------------------------------------------------------------------------------------------
# Timestamps and formats
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frequency", "start", "rows", "expected_frequency", "expected"),
    [
        ("h", "2021-01-01 00:00", 70, "h",
         ["2021-01-03 22:00", "2021-01-03 23:00", "2021-01-04 00:00", "2021-01-04 01:00"]),
        ("15min", "2021-01-01 00:00", 94, "15min",
         ["2021-01-01 23:30", "2021-01-01 23:45", "2021-01-02 00:00", "2021-01-02 00:15"]),
        ("D", "2021-02-20", 40, "D", ["2021-04-01", "2021-04-02", "2021-04-03", "2021-04-04"]),
    ],
)  # fmt: skip
def test_forecast_timestamps_continue_the_inferred_frequency(
    frequency, start, rows, expected_frequency, expected
):
    data = _series(rows=rows, frequency=frequency, start=start)
    forecaster = _forecaster(epochs=1, context_length=16, prediction_length=4).fit(data, verbose=False)
    assert forecaster.frequency == expected_frequency
    forecast = forecaster.predict(data)
    assert list(forecast["date"]) == [pd.Timestamp(t) for t in expected]


def _to_long(wide: pd.DataFrame) -> pd.DataFrame:
    parts = [
        pd.DataFrame({"unique_id": name, "ds": wide["date"].astype(str), "y": wide[name]})
        for name in ("x0", "OT")
    ]
    return pd.concat(parts).sample(frac=1.0, random_state=0)  # rows in any order


def test_wide_and_long_formats_give_the_same_forecast(fitted, tmp_path):
    forecaster, wide = fitted
    long = _to_long(wide)
    from_wide = forecaster.predict(wide)
    from_long = forecaster.predict(long)
    assert list(from_long.columns) == ["unique_id", "ds", "y"]  # answers in the format it was given
    pivot = from_long.pivot(index="ds", columns="unique_id", values="y")[["x0", "OT"]]
    np.testing.assert_array_equal(pivot.to_numpy(), _values(from_wide))
    assert list(pivot.index) == list(from_wide["date"])

    fitted_on_long = _forecaster().fit(long, verbose=False)  # same seed, same data, other format
    assert fitted_on_long.columns == ["x0", "OT"]
    np.testing.assert_array_equal(_values(fitted_on_long.predict(wide)), _values(from_wide))

    csv = tmp_path / "long.csv"
    long.to_csv(csv, index=False)
    frame, layout, ids, _ = load_series(csv)
    assert layout == "long" and frame.columns == ["x0", "OT"] and ids == {"x0": "x0", "OT": "OT"}
    np.testing.assert_array_equal(frame.values, wide[["x0", "OT"]].to_numpy(dtype=np.float32))


def test_channels_in_another_order_are_matched_by_name(fitted):
    forecaster, data = fitted
    reordered = data[["date", "OT", "x0"]]
    np.testing.assert_array_equal(_values(forecaster.predict(reordered)), _values(forecaster.predict(data)))


# --------------------------------------------------------------------------------------------------
# Clear errors
# --------------------------------------------------------------------------------------------------


def test_a_saved_model_refuses_data_with_other_channels(fitted, tmp_path):
    forecaster, data = fitted
    forecaster.save(tmp_path / "model")
    loaded = Forecaster.load(tmp_path / "model")
    other = data.rename(columns={"OT": "load"})
    with pytest.raises(DataError, match=r"fitted on 2 columns \['x0', 'OT'\].*missing: \['OT'\]"):
        loaded.predict(other)
    with pytest.raises(DataError, match="unexpected: \\['x1'\\]"):
        loaded.predict(data.assign(x1=1.0))


def test_bad_model_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="unknown model 'prophet'"):
        Forecaster("prophet")
    with pytest.raises(ConfigError, match=r"model 'dlinear' has no LLM backbone.*calf, ecalf"):
        Forecaster("dlinear", backbone="smollm2-135m")
    with pytest.raises(ConfigError, match=r"training\.epohcs"):
        Forecaster("dlinear", training_options={"epohcs": 3})
    with pytest.raises(ConfigError, match="cannot be set"):
        Forecaster("dlinear", model_options={"num_channels": 3})


def test_bad_data_gets_clear_errors(fitted):
    forecaster, data = fitted
    with pytest.raises(DataError, match="120 rows are too few for context_length 96"):
        _forecaster(context_length=96, prediction_length=24).fit(data, verbose=False)
    gappy = data.drop(index=[50, 51]).reset_index(drop=True)
    with pytest.raises(DataError, match=r"not evenly spaced.*2021-01-03 01:00:00 -> 2021-01-03 04:00:00"):
        _forecaster().fit(gappy, verbose=False)
    with pytest.raises(DataError, match="must be evenly spaced"):
        forecaster.predict(gappy.iloc[:60])  # the gap lies in the last L rows
    near_end = data.drop(index=[len(data) - 5]).reset_index(drop=True)  # the gap is named, not the oldest row
    gap = r"rows 5 -> 4 from the end \(2021-01-05 18:00:00 -> 2021-01-05 20:00:00\)"
    with pytest.raises(DataError, match=gap):
        forecaster.predict(near_end)
    daily = _series(frequency="D").drop(index=[30]).reset_index(drop=True)
    with pytest.raises(DataError, match=r"pd.to_datetime\(df\['date'\]\).*asfreq\('D'\)"):  # its own step
        _forecaster().fit(daily, verbose=False)
    repeated = pd.concat([data.iloc[:40], data.iloc[39:]]).reset_index(drop=True)  # row 40 twice
    same = r"rows 40 and 41 have the same timestamp.*drop_duplicates\('date'\)"
    with pytest.warns(UserWarning, match="repeat the previous row"), pytest.raises(DataError, match=same):
        _forecaster().fit(repeated, verbose=False)
    with pytest.raises(DataError, match=f"reads the last {L}"):
        forecaster.predict(data.iloc[-10:])
    long = _to_long(data)
    with pytest.raises(DataError, match="series 'OT' has no value at ds=2021-01-01 05:00:00"):
        forecaster.predict(long[~((long["unique_id"] == "OT") & (long["ds"] == "2021-01-01 05:00:00"))])
    with pytest.raises(EcalfError, match="not fitted"):
        _forecaster().predict(data)


def test_what_users_export_is_read_or_refused_with_a_fix(fitted, tmp_path):
    forecaster, data = fitted
    indexed = tmp_path / "indexed.csv"
    data.to_csv(indexed)  # pandas' default writes the row index as an unnamed first column
    with pytest.raises(DataError, match=r"'Unnamed: 0' has no name.*index=False"):
        forecaster.predict(indexed)
    semicolons = tmp_path / "semicolons.csv"
    data.to_csv(semicolons, sep=";", decimal=",", index=False)
    with pytest.raises(DataError, match=r"separated by ';'.*sep=';'.*decimal=','"):
        forecaster.predict(semicolons)
    with pytest.raises(DataError, match=r"\['OT'\] appear more than once"):
        forecaster.predict(data.rename(columns={"x0": "OT "}))  # equal once the space is stripped
    by_index = pd.read_csv(indexed, index_col=0).set_index("date")  # dates as a string index
    np.testing.assert_array_equal(_values(forecaster.predict(by_index)), _values(forecaster.predict(data)))


def test_a_local_clock_across_daylight_saving_is_read_in_utc(fitted):
    forecaster, _ = fitted
    berlin = pd.date_range("2021-03-26", periods=120, freq="h", tz="Europe/Berlin")  # DST on 2021-03-28
    local = _series().assign(date=[t.isoformat() for t in berlin])  # +01:00 then +02:00
    with pytest.warns(UserWarning, match="different UTC offsets.*converted to UTC"):
        forecast = forecaster.predict(local)
    assert forecast["date"].iloc[0] == berlin[-1].tz_convert("UTC") + pd.Timedelta(hours=1)
    long = _to_long(local.assign(date=local["date"]))
    with pytest.warns(UserWarning, match="converted to UTC"):
        from_long = forecaster.predict(long)
    assert len(from_long) == 2 * H


def test_long_format_ids_come_back_as_given(fitted, tmp_path):
    _, data = fitted
    numbered = data.rename(columns={"x0": "1", "OT": "2"})
    model = _forecaster().fit(numbered, verbose=False)
    long = _to_long(data).replace({"unique_id": {"x0": 1, "OT": 2}})  # integer ids, as read_csv gives
    forecast = model.predict(long)
    assert forecast["unique_id"].tolist() == [1] * H + [2] * H
    assert len(long.merge(forecast, on="unique_id")) > 0  # merges back onto the user's frame
    long.to_csv(tmp_path / "long.csv", index=False)  # and from a file, read once
    from_file = model.predict(tmp_path / "long.csv")
    assert from_file["unique_id"].tolist() == [1] * H + [2] * H
    np.testing.assert_array_equal(from_file["y"].to_numpy(), forecast["y"].to_numpy())


def test_loading_what_is_not_a_saved_forecaster_is_a_checkpoint_error(fitted, tmp_path):
    forecaster, _ = fitted
    with pytest.raises(CheckpointError, match="no such directory"):
        Forecaster.load(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no saved forecaster"):
        Forecaster.load(tmp_path / "empty")

    saved = forecaster.save(tmp_path / "model")
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        Forecaster.load(saved)


def test_a_second_fit_into_a_directory_replaces_the_first_fit_s_curves(tmp_path):
    from ecalf.forecast_commands import fit_and_save
    from ecalf.tracking import read_jsonl

    kwargs = {"model": "dlinear", "context_length": L, "prediction_length": H, "batch_size": 32}
    kwargs["verbose"] = False
    fit_and_save(_series(), tmp_path / "m", epochs=2, overrides=["training.tracking=tensorboard"], **kwargs)
    assert (tmp_path / "m" / "tensorboard").is_dir()
    fit_and_save(_series(), tmp_path / "m", epochs=1, **kwargs)  # default tracking: metrics.jsonl
    assert not (tmp_path / "m" / "tensorboard").exists()  # no curves of the earlier fit left to mix in
    assert [row.get("epoch") for row in read_jsonl(tmp_path / "m" / "metrics.jsonl") if "epoch" in row] == [1]


def test_save_refuses_a_directory_holding_other_files(fitted, tmp_path):
    forecaster, _ = fitted
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(EcalfError, match=r"not part of a saved forecaster \(notes.txt\)"):
        forecaster.save(tmp_path)
    forecaster.save(tmp_path / "model")
    forecaster.save(tmp_path / "model")  # over an earlier save: fine


# --------------------------------------------------------------------------------------------------
# CLI: ecalf fit -> ecalf forecast
# --------------------------------------------------------------------------------------------------


def _write_csv(path: Path, data: pd.DataFrame) -> Path:
    data.assign(date=data["date"].dt.strftime("%Y-%m-%d %H:%M:%S")).to_csv(path, index=False)
    return path


def test_cli_fit_then_forecast_writes_csv_with_the_right_dates_and_a_plot(tmp_path, capsys):
    csv = _write_csv(tmp_path / "my.csv", _series(rows=150, frequency="15min", start="2022-06-30 20:00"))
    model_dir = tmp_path / "model"
    code = main([
        "fit", "--input", str(csv), "--prediction-length", "4", "--output-dir", str(model_dir),
        "--model", "dlinear", "--context-length", str(L), "--epochs", "2", "--batch-size", "16",
        "--set", "training.patience=1", "--set", "model.moving_average=5", "--quiet",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "saved dlinear forecaster" in out and "ecalf forecast --model" in out
    saved = Forecaster.load(model_dir)
    assert saved.config.training.patience == 1 and saved.config.training.batch_size == 16
    assert saved.config.model.moving_average == 5  # type: ignore[attr-defined]
    assert (model_dir / "metrics.jsonl").is_file()  # tracking written while fitting

    output, png = tmp_path / "forecast.csv", tmp_path / "forecast.png"
    code = main([
        "forecast", "--model", str(model_dir), "--input", str(csv), "--output", str(output),
        "--plot", str(png), "--history-rows", "48",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    forecast = pd.read_csv(output)
    # 150 rows every 15 minutes from 2022-06-30 20:00 end at 2022-07-02 09:15
    assert list(forecast["date"]) == [
        "2022-07-02 09:30:00", "2022-07-02 09:45:00", "2022-07-02 10:00:00", "2022-07-02 10:15:00"
    ]  # fmt: skip
    assert list(forecast.columns) == ["date", "x0", "OT"]
    np.testing.assert_allclose(forecast[["x0", "OT"]].to_numpy(), _values(saved.predict(csv)), rtol=1e-6)
    assert_not_blank(png)


def test_cli_reports_bad_inputs_without_traceback(fitted, tmp_path, capsys):
    forecaster, data = fitted
    csv = _write_csv(tmp_path / "my.csv", data)
    args = ["fit", "--input", str(csv), "--prediction-length", "6", "--output-dir", str(tmp_path / "m")]
    assert main([*args, "--model", "dlinear", "--backbone", "gpt2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has no LLM backbone" in err and "Traceback" not in err
    assert main([*args, "--model", "dlinear", "--set", "data.dataset=x", "--quiet"]) == 2
    assert "model.*, training.* and seed" in capsys.readouterr().err

    forecaster.save(tmp_path / "model")
    other = _write_csv(tmp_path / "other.csv", data.rename(columns={"x0": "price"}))
    output = tmp_path / "f.csv"
    code = main(
        ["forecast", "--model", str(tmp_path / "model"), "--input", str(other), "--output", str(output)]
    )
    assert code == 2
    assert "missing: ['x0'], unexpected: ['price']" in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama", "smollm2-135m"])
def test_a_backbone_preset_brings_the_settings_its_shape_needs(preset):
    """Choosing a preset is enough: pretrained weights only where it has them, layers within its depth,
    K within its width and vocabulary, encoder heads that divide its width; explicit values stay."""
    from ecalf.backbones.presets import PRESETS

    hf = PRESETS[preset].build_config()
    model = Forecaster(model="calf", backbone=preset).config.model
    assert model.backbone.pretrained == PRESETS[preset].has_weights
    assert model.backbone.num_layers <= hf.num_hidden_layers
    assert model.backbone.num_principal_embeddings <= min(hf.hidden_size, hf.vocab_size)
    assert hf.hidden_size % model.encoder_heads == 0
    kept = Forecaster(
        model="calf", backbone=preset, model_options={"backbone": {"num_layers": 1}, "encoder_heads": 1}
    ).config.model
    assert kept.backbone.num_layers == 1 and kept.encoder_heads == 1


def test_the_default_backbone_keeps_the_paper_shapes():
    model = Forecaster(model="ecalf").config.model
    assert (model.backbone.num_layers, model.backbone.num_principal_embeddings, model.encoder_heads) == (
        6,
        500,
        12,
    )
    assert model.backbone.pretrained
