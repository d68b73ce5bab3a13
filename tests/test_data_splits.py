"""The benchmark protocol end to end: window counts per dataset, few-shot, zero-shot, no leakage, CLI."""

import dataclasses
import io
import shutil
import urllib.error

import numpy as np
import pandas as pd
import pytest

from ecalf.cli import main
from ecalf.config import DataConfig
from ecalf.data import DATASETS, download_dataset, get_spec, load_dataset, prepare_splits, write_synthetic_csv
from ecalf.errors import DataError

# Time-Series-Library's logged window counts for L = H = 96.
EXPECTED_COUNTS = {
    "ETTh1": (8449, 2785, 2785),
    "ETTh2": (8449, 2785, 2785),
    "ETTm1": (34369, 11425, 11425),
    "ETTm2": (34369, 11425, 11425),
    "Weather": (36696, 5175, 10444),
    "Electricity": (18221, 2537, 5165),
    "Traffic": (12089, 1661, 3413),
}


def _config(dataset, data_dir, **kw):
    return DataConfig(dataset=dataset, data_dir=str(data_dir), **kw)


@pytest.mark.parametrize("name", list(DATASETS))
def test_window_counts_for_every_registered_dataset(synthetic_csv_dir, name):
    splits = prepare_splits(_config(name, synthetic_csv_dir))
    train, val, test = EXPECTED_COUNTS[name]
    assert splits.window_counts() == {"train": train, "val": val, "test": test}
    spec = get_spec(name)
    assert splits.train.num_channels == spec.num_channels and splits.columns[-1] == "OT"
    assert splits.spec is spec and splits.test_spec is spec and splits.test_scaler is splits.scaler
    # The three splits are views into one scaled tensor.
    storages = {s.series.untyped_storage().data_ptr() for s in (splits.train, splits.val, splits.test)}
    assert len(storages) == 1, "train/val/test must share one tensor"
    assert len(splits.test_timestamps) == splits.test.series.shape[0]


@pytest.mark.parametrize("name", ["ETTh1", "ETTm1", "Weather"])
def test_few_shot_ten_percent_follows_the_tslib_formula(synthetic_csv_dir, name):
    full = prepare_splits(_config(name, synthetic_csv_dir))
    few = prepare_splits(_config(name, synthetic_csv_dir, few_shot_percent=10))
    train_end = full.row_ranges["train"][1]
    kept_end = (train_end - 96) * 10 // 100 + 96
    assert len(few.train) == kept_end - 96 - 96 + 1
    assert (len(few.val), len(few.test)) == (len(full.val), len(full.test))
    # the first p % of the training windows, scaled with the whole training split's statistics
    np.testing.assert_array_equal(few.scaler.mean, full.scaler.mean)
    assert few.train.get_batch([len(few.train) - 1])[1].equal(full.train.get_batch([len(few.train) - 1])[1])


def test_few_shot_ten_percent_on_etth1_is_759_windows(synthetic_csv_dir):
    # (8640 - 96) * 10 // 100 + 96 = 950 rows -> 950 - 96 - 96 + 1 = 759 windows
    assert len(prepare_splits(_config("ETTh1", synthetic_csv_dir, few_shot_percent=10)).train) == 759
    assert len(prepare_splits(_config("ETTh1", synthetic_csv_dir, few_shot_percent=2.5)).train) == 118


def test_scaler_is_fit_on_training_rows_only(synthetic_csv_dir, tmp_path):
    """Changing val/test rows leaves the scaler and training windows unchanged; a train row does not."""
    original = pd.read_csv(synthetic_csv_dir / "ETTh1.csv")
    base = prepare_splits(_config("ETTh1", synthetic_csv_dir))
    values = original.drop(columns="date").to_numpy(np.float64)
    np.testing.assert_allclose(base.scaler.mean, values[:8640].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(base.scaler.std, values[:8640].std(axis=0), rtol=1e-6)

    changed = original.copy()
    changed.iloc[8640:, 1:] = changed.iloc[8640:, 1:] * 100 + 1000  # every val/test/unused row
    changed.to_csv(tmp_path / "ETTh1.csv", index=False)
    other = prepare_splits(_config("ETTh1", tmp_path))
    np.testing.assert_array_equal(other.scaler.mean, base.scaler.mean)
    np.testing.assert_array_equal(other.scaler.std, base.scaler.std)
    assert other.train.series.equal(base.train.series)
    assert not other.test.series.equal(base.test.series)

    changed.iloc[100, 1] += 500.0  # one training row
    changed.to_csv(tmp_path / "ETTh1.csv", index=False)
    assert prepare_splits(_config("ETTh1", tmp_path)).scaler.mean[0] != base.scaler.mean[0]


def test_zero_shot_tests_on_the_target_scaled_by_its_own_training_split(synthetic_csv_dir):
    splits = prepare_splits(_config("ETTh1", synthetic_csv_dir, zero_shot_target="ETTm1"))
    assert splits.window_counts() == {"train": 8449, "val": 2785, "test": 11425}
    assert splits.spec.name == "ETTh1" and splits.test_spec.name == "ETTm1"
    target, _ = load_dataset("ETTm1", synthetic_csv_dir)
    train_rows = target.values[:34560].astype(np.float64)
    np.testing.assert_allclose(splits.test_scaler.mean, train_rows.mean(axis=0), rtol=1e-6)
    start, end = splits.row_ranges["test"]
    assert (start, end) == (46080 - 96, 57600)
    expected = (target.values[start:end] - train_rows.mean(axis=0)) / train_rows.std(axis=0)
    np.testing.assert_allclose(splits.test.series.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert splits.test_timestamps[0] == target.timestamps[start]
    assert not np.allclose(splits.test_scaler.mean, splits.scaler.mean)


def test_zero_shot_needs_the_same_number_of_variables(synthetic_csv_dir):
    with pytest.raises(DataError, match=r"ETTh1 \(7 variables\) to Weather \(21 variables\)"):
        prepare_splits(_config("ETTh1", synthetic_csv_dir, zero_shot_target="Weather"))


def test_custom_csv_gets_the_70_10_20_split(tmp_path):
    path = write_synthetic_csv(tmp_path / "toy.csv", 1000, 3, seed=1)
    splits = prepare_splits(DataConfig(dataset=str(path), context_length=24, prediction_length=12))
    # n_train 700, n_test 200, n_val 100 -> windows 700-35, 100+24-35, 200+24-35
    assert splits.window_counts() == {"train": 665, "val": 89, "test": 189}
    assert splits.spec.name == "toy" and splits.spec.split == "ratio"


def test_too_few_rows_for_the_windows(tmp_path):
    path = write_synthetic_csv(tmp_path / "short.csv", 300, 2)
    with pytest.raises(
        DataError, match=r"short \(.*short\.csv\): the val split has 126 rows .* needs at least"
    ):
        prepare_splits(DataConfig(dataset=str(path), context_length=96, prediction_length=96))


def test_few_shot_leaving_no_training_window(synthetic_csv_dir):
    with pytest.raises(DataError, match=r"few-shot 1% keeps training rows \[0, 181\) of \[0, 8640\)"):
        prepare_splits(_config("ETTh1", synthetic_csv_dir, prediction_length=720, few_shot_percent=1))


@pytest.mark.realdata
def test_real_etth1_counts(real_data_dir):
    if not (real_data_dir / "ETTh1.csv").is_file():
        pytest.skip("ETTh1.csv not in the data directory")
    splits = prepare_splits(_config("ETTh1", real_data_dir))
    assert splits.window_counts() == {"train": 8449, "val": 2785, "test": 2785}
    assert splits.columns == ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
    few = prepare_splits(_config("ETTh1", real_data_dir, few_shot_percent=10))
    assert len(few.train) == 759


# --------------------------------------------------------------------------------------------------
# Download (never touches the network: urlopen is replaced)
# --------------------------------------------------------------------------------------------------


def test_download_keeps_an_existing_file(synthetic_csv_dir, monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", _forbidden)
    assert download_dataset("etth1", synthetic_csv_dir) == synthetic_csv_dir / "ETTh1.csv"


def test_download_without_public_url_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", _forbidden)
    with pytest.raises(DataError, match=r"Traffic: .*Time-Series-Library.*traffic\.csv"):
        download_dataset("Traffic", tmp_path)


def test_download_is_checked_and_atomic(tmp_path, monkeypatch):
    good = b"date,a,OT\n2020-01-01 00:00:00,1,2\n2020-01-01 01:00:00,3,4\n"
    spec = dataclasses.replace(get_spec("ETTh1"), url="https://example.invalid/ETTh1.csv", sha256=None)
    monkeypatch.setattr("ecalf.data.download.get_spec", lambda name: spec)

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: io.BytesIO(b"<html>not found</html>"))
    with pytest.raises(DataError, match="no `date` column"):
        download_dataset("ETTh1", tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind

    monkeypatch.setattr("urllib.request.urlopen", _offline)
    with pytest.raises(DataError, match=r"cannot download https://example\.invalid/ETTh1\.csv .*offline"):
        download_dataset("ETTh1", tmp_path)
    assert list(tmp_path.iterdir()) == []

    sha_spec = dataclasses.replace(spec, sha256="0" * 64)
    monkeypatch.setattr("ecalf.data.download.get_spec", lambda name: sha_spec)
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: io.BytesIO(good))
    with pytest.raises(DataError, match="SHA-256"):
        download_dataset("ETTh1", tmp_path)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr("ecalf.data.download.get_spec", lambda name: spec)
    path = download_dataset("ETTh1", tmp_path)
    assert path == tmp_path / "ETTh1.csv" and path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["ETTh1.csv"]


def _forbidden(*args, **kwargs):
    raise AssertionError("the network must not be touched")


def _offline(*args, **kwargs):
    raise urllib.error.URLError("Name or service not known")


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def test_cli_data_info_prints_one_line_per_split(synthetic_csv_dir, capsys):
    assert main(["data", "info", "ETTh1", "--data-dir", str(synthetic_csv_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3:] == ["train 8449", "val 2785", "test 2785"]
    text = "\n".join(lines)
    assert "rows       17420" in text and "channels   7" in text and "frequency  h" in text
    assert "2016-07-01 00:00:00 .. 2018-06-26 19:00:00" in text


def test_cli_data_info_few_shot_and_lengths(synthetic_csv_dir, capsys):
    args = ["data", "info", "ETTh1", "--data-dir", str(synthetic_csv_dir), "--few-shot", "10"]
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[-3:] == ["train 759", "val 2785", "test 2785"]
    args = ["data", "info", "ETTh1", "--data-dir", str(synthetic_csv_dir), "--prediction-length", "720"]
    assert main([*args, "--context-length", "96"]) == 0
    assert capsys.readouterr().out.splitlines()[-3:] == ["train 7825", "val 2161", "test 2161"]


@pytest.mark.realdata
def test_cli_data_info_on_real_etth1(real_data_dir, capsys):
    if not (real_data_dir / "ETTh1.csv").is_file():
        pytest.skip("ETTh1.csv not in the data directory")
    assert main(["data", "info", "ETTh1", "--data-dir", str(real_data_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[-3:] == ["train 8449", "val 2785", "test 2785"]


def test_cli_data_errors_exit_2_with_a_message(tmp_path, capsys, no_data_dir_env):
    assert main(["data", "info", "ETTh1", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ETTh1.csv not found" in err and "ecalf data download ETTh1" in err
    assert main(["data", "download", "Electricity", "--data-dir", str(tmp_path)]) == 2
    assert "Time-Series-Library" in capsys.readouterr().err


def test_cli_data_list_shows_the_registry(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for spec in DATASETS.values():
        assert spec.name in out and spec.file_name in out
    assert "862" in out and "ett_minute" in out


def test_cli_data_download_existing(synthetic_csv_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", _forbidden)
    shutil.copyfile(synthetic_csv_dir / "ETTm2.csv", tmp_path / "ETTm2.csv")
    assert main(["data", "download", "ETTm2", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "ETTm2.csv")
