"""Registry, data directory resolution, TSLib split borders and the few-shot rule."""

from pathlib import Path

import pytest

from ecalf.data import (
    DATASETS,
    few_shot_end,
    get_spec,
    minimum_rows,
    resolve_data_dir,
    split_borders,
    split_rows,
    window_count,
)
from ecalf.errors import ConfigError, DataError


def test_registry_holds_the_seven_benchmarks():
    assert list(DATASETS) == ["ETTh1", "ETTh2", "ETTm1", "ETTm2", "Weather", "Electricity", "Traffic"]
    assert {s.file_name for s in DATASETS.values()} >= {"weather.csv", "electricity.csv", "traffic.csv"}
    assert get_spec("ETTm1").frequency == "15min" and get_spec("Weather").frequency == "10min"
    assert [s.split for s in DATASETS.values()] == ["ett_hour"] * 2 + ["ett_minute"] * 2 + ["ratio"] * 3
    assert all(s.target == "OT" for s in DATASETS.values())
    for spec in DATASETS.values():
        if spec.name.startswith("ETT"):
            assert (
                spec.url
                == f"https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/{spec.name}.csv"
            )
        else:
            assert spec.url is None and "Time-Series-Library" in spec.source_hint


def test_get_spec_is_case_insensitive_and_lists_names_when_unknown():
    assert get_spec("etth1") is DATASETS["ETTh1"]
    assert get_spec("WEATHER") is DATASETS["Weather"]
    assert get_spec("ECL") is DATASETS["Electricity"]
    with pytest.raises(DataError, match=r"unknown dataset 'ETTh3'.*ETTh1, ETTh2, ETTm1"):
        get_spec("ETTh3")


def test_data_dir_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv("ECALF_DATA_DIR", raising=False)
    assert resolve_data_dir(None) == Path("datasets")
    monkeypatch.setenv("ECALF_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv("ECALF_DATA_DIR", "")
    assert resolve_data_dir(None) == Path("datasets")


def test_ett_borders_are_the_tslib_ones():
    assert split_borders("ett_hour", 17420, 96) == {
        "train": (0, 8640),
        "val": (8640 - 96, 11520),
        "test": (11520 - 96, 14400),
    }
    assert split_borders(get_spec("ETTm2"), 69680, 96) == {
        "train": (0, 34560),
        "val": (34560 - 96, 46080),
        "test": (46080 - 96, 57600),
    }


def test_ratio_borders_follow_int_of_fractions():
    # Weather: n_train = int(0.7 * 52696) = 36887, n_test = int(0.2 * 52696) = 10539, val 5270
    assert split_borders("ratio", 52696, 96) == {
        "train": (0, 36887),
        "val": (36887 - 96, 36887 + 5270),
        "test": (52696 - 10539 - 96, 52696),
    }


def test_ett_rule_rejects_a_short_file():
    with pytest.raises(DataError, match=r"ETTh1 needs at least 14400 rows .* the file has 9000"):
        split_borders(get_spec("ETTh1"), 9000, 96)
    with pytest.raises(DataError, match=r"val split would start at row -360 with context length 9000"):
        split_borders("ett_hour", 17420, 9000)


def test_few_shot_end_is_tslib_floor_rule():
    # (border2 - L) * p // 100 + L with border2 = 8640, L = 96
    assert few_shot_end(8640, 96, 10) == 8544 * 10 // 100 + 96 == 950
    assert few_shot_end(8640, 96, 10.0) == 950
    assert few_shot_end(8640, 96, 5) == 427 + 96
    assert few_shot_end(8640, 96, 2.5) == 213 + 96  # 213.6 rounded down
    assert few_shot_end(8640, 96, 100) == 8640
    with pytest.raises(ConfigError, match=r"\(0, 100\]"):
        few_shot_end(8640, 96, 0)


def test_split_rows_few_shot_window_counts_on_etth1_shape():
    rows = split_rows(get_spec("ETTh1"), 17420, 96, 96, few_shot_percent=10)
    counts = {k: window_count(b - a, 96, 96) for k, (a, b) in rows.items()}
    assert counts == {"train": 759, "val": 2785, "test": 2785}


def test_split_rows_errors_name_the_numbers():
    with pytest.raises(DataError, match=r"few-shot 1% keeps training rows \[0, 181\) .* 0 windows"):
        split_rows(get_spec("ETTh1"), 17420, 96, 720, few_shot_percent=1)
    with pytest.raises(DataError, match=r"val split has 2976 rows .* 96 \+ prediction 2900"):
        split_rows(get_spec("ETTh1"), 17420, 96, 2900)


def test_minimum_rows_is_tight_for_the_ratio_rule():
    n = minimum_rows("ratio", 96, 96)
    split_rows(get_spec("Weather"), n, 96, 96)  # enough
    with pytest.raises(DataError, match="needs at least"):
        split_rows(get_spec("Weather"), n - 1, 96, 96)
    assert minimum_rows("ett_minute", 96, 96) == 57600
