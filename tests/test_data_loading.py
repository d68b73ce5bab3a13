"""CSV loading: validation errors name file, column and row; registered and custom datasets."""

import time
import warnings
from contextlib import nullcontext

import numpy as np
import pandas as pd
import pytest

from ecalf.data import frame_from_dataframe, infer_frequency, load_dataset, make_synthetic, read_csv
from ecalf.errors import DataError

HEADER = "date,a,OT\n"
GOOD_ROWS = [
    "2020-01-01 00:00:00,1.0,10.0",
    "2020-01-01 01:00:00,2.0,11.0",
    "2020-01-01 02:00:00,3.0,12.0",
    "2020-01-01 03:00:00,4.0,13.0",
]


def _csv(tmp_path, rows, header=HEADER, name="toy.csv"):
    path = tmp_path / name
    path.write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def _replace(row_index, text):
    rows = list(GOOD_ROWS)
    rows[row_index] = text
    return rows


def test_reads_a_valid_file(tmp_path):
    frame = read_csv(_csv(tmp_path, GOOD_ROWS))
    assert frame.values.dtype == np.float32 and frame.values.shape == (4, 2)
    assert frame.columns == ["a", "OT"]
    assert frame.timestamps[1] == pd.Timestamp("2020-01-01 01:00:00")
    np.testing.assert_array_equal(frame.values[:, 1], [10, 11, 12, 13])
    assert infer_frequency(frame.timestamps) == "h"


@pytest.mark.parametrize(
    ("rows", "header", "match"),
    [
        (
            _replace(2, "yesterday,3.0,12.0"),
            HEADER,
            r"toy\.csv: column 'date', row 3 \(line 4\): unparsable date 'yesterday'",
        ),
        (
            _replace(2, "2020-01-01 01:00:00,3.0,12.0"),
            HEADER,
            r"toy\.csv: column 'date', row 3 \(line 4\): "
            r"duplicated timestamp 2020-01-01 01:00:00 \(already at row 2",
        ),
        (
            _replace(2, "2019-12-31 00:00:00,3.0,12.0"),
            HEADER,
            r"toy\.csv: column 'date', row 3 \(line 4\): timestamps are not sorted",
        ),
        (
            _replace(1, "2020-01-01 01:00:00,abc,11.0"),
            HEADER,
            r"toy\.csv: column 'a', row 2 \(line 3\): non-numeric value 'abc'",
        ),
        (
            _replace(3, "2020-01-01 03:00:00,4.0,"),
            HEADER,
            r"toy\.csv: column 'OT', row 4 \(line 5\): missing value",
        ),
        (_replace(3, "2020-01-01 03:00:00,nan,13"), HEADER, r"column 'a', row 4 \(line 5\): missing value"),
        (
            _replace(0, "2020-01-01 00:00:00,inf,10.0"),
            HEADER,
            r"column 'a', row 1 \(line 2\): infinite value inf",
        ),
        (
            _replace(0, "2020-01-01 00:00:00,1e300,10.0"),
            HEADER,
            r"column 'a', row 1 \(line 2\): .*exceeds the float32 range",
        ),
        (_replace(1, ",2.0,11.0"), HEADER, r"column 'date', row 2 \(line 3\): missing date"),
        (
            GOOD_ROWS,
            "time,a,OT\n",
            r"toy\.csv: no `date` column \(columns found: 'time', 'a', 'OT'\); rename column 'time'",
        ),
        ([], HEADER, r"toy\.csv: the file has a header but no data rows"),
        ([r.split(",")[0] for r in GOOD_ROWS], "date\n", r"only a `date` column"),
        (_replace(1, "2020-01-01 01:00:00,2.0,11.0,99,100"), HEADER, r"toy\.csv: not a valid CSV file"),
    ],
    ids=[
        "unparsable-date",
        "duplicated-timestamp",
        "unsorted",
        "non-numeric",
        "empty-cell",
        "nan",
        "inf",
        "float32-overflow",
        "missing-date",
        "no-date-column",
        "header-only",
        "date-only",
        "ragged-row",
    ],
)
def test_bad_files_get_their_specific_error(tmp_path, rows, header, match):
    with pytest.raises(DataError, match=match):
        read_csv(_csv(tmp_path, rows, header))


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty"):
        read_csv(tmp_path / "empty.csv")
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_csv(tmp_path / "nope.csv")


def test_exact_repeated_row_is_kept_with_a_warning(tmp_path):
    # The public weather.csv repeats one row; TSLib keeps it and the split borders depend on it.
    rows = [*GOOD_ROWS[:2], GOOD_ROWS[1], *GOOD_ROWS[2:]]
    with pytest.warns(UserWarning, match=r"1 row\(s\) repeat the previous row exactly \(row 3 \(line 4\)\)"):
        frame = read_csv(_csv(tmp_path, rows))
    assert frame.num_rows == 5


def test_weather_style_file_crlf_and_replacement_characters(tmp_path):
    path = tmp_path / "weather.csv"
    header = "date,SWDR (W/m\ufffd),PAR (\xb5mol),OT"
    body = ["2020-01-01 00:10:00,0.0,1.5,428.1", "2020-01-01 00:20:00,0.5,1.25,428.0"]
    raw = header.encode("utf-8").replace("\xb5".encode(), b"\xb5")  # one invalid UTF-8 byte
    path.write_bytes(raw + b"\r\n" + "\r\n".join(body).encode() + b"\r\n")
    frame = read_csv(path)
    assert frame.columns == ["SWDR (W/m\ufffd)", "PAR (\ufffdmol)", "OT"]
    np.testing.assert_allclose(frame.values, [[0.0, 1.5, 428.1], [0.5, 1.25, 428.0]], rtol=1e-6)


def test_frame_from_dataframe_validates_the_same_way():
    df = make_synthetic(50, 3, seed=1)
    frame = frame_from_dataframe(df)
    assert frame.values.shape == (50, 3) and frame.columns == ["x0", "x1", "OT"]
    np.testing.assert_allclose(frame.values, df[["x0", "x1", "OT"]].to_numpy(), rtol=1e-6)
    bad = df.copy()
    bad.loc[7, "x1"] = np.nan
    with pytest.raises(DataError, match=r"mine: column 'x1', row 8: missing value"):
        frame_from_dataframe(bad, source="mine")
    with pytest.raises(DataError, match="no `date` column"):
        frame_from_dataframe(df.drop(columns="date"))


def test_custom_csv_moves_ot_last_and_gets_ratio_split(tmp_path):
    path = _csv(tmp_path, GOOD_ROWS, header="date,OT,a\n", name="mine.csv")
    frame, spec = load_dataset(str(path))
    assert frame.columns == ["a", "OT"]
    np.testing.assert_array_equal(frame.values[:, 1], [1, 2, 3, 4])  # the old first column, now last
    assert (spec.name, spec.split, spec.target, spec.frequency, spec.num_channels) == (
        "mine",
        "ratio",
        "OT",
        "h",
        2,
    )


def test_custom_csv_without_ot_keeps_its_order_and_last_column_is_target(tmp_path):
    path = _csv(tmp_path, GOOD_ROWS, header="date,a,b\n")
    frame, spec = load_dataset(str(path))
    assert frame.columns == ["a", "b"] and spec.target == "b"


def test_custom_csv_found_relative_to_data_dir(tmp_path, monkeypatch):
    _csv(tmp_path, GOOD_ROWS, name="mine.csv")
    monkeypatch.chdir(tmp_path.parent)
    _, spec = load_dataset("mine.csv", data_dir=tmp_path)
    assert spec.name == "mine"


def test_missing_registered_file_says_where_it_looked_and_how_to_get_it(tmp_path, no_data_dir_env):
    with pytest.raises(DataError) as info:
        load_dataset("ETTh1", data_dir=tmp_path)
    message = str(info.value)
    assert "ETTh1.csv not found in" in message and str(tmp_path) in message
    assert "ecalf data download ETTh1" in message
    assert "--data-dir" in message and "ECALF_DATA_DIR" in message
    with pytest.raises(DataError, match=r"traffic\.csv not found .*Time-Series-Library"):
        load_dataset("Traffic", data_dir=tmp_path)


def test_missing_file_in_default_dir_names_the_default(tmp_path, monkeypatch, no_data_dir_env):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"data directory from the default \./datasets"):
        load_dataset("ETTm1")


def test_registered_file_with_wrong_channel_count(tmp_path):
    _csv(tmp_path, GOOD_ROWS, name="ETTh1.csv")
    with pytest.raises(DataError, match=r"ETTh1 has 7 variables but the file has 2 \(a, OT\)"):
        load_dataset("ETTh1", data_dir=tmp_path)


def test_unknown_name_that_is_not_a_path():
    with pytest.raises(DataError, match=r"unknown dataset 'ETTh3'; registered datasets: ETTh1"):
        load_dataset("ETTh3")


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["ETTh1", "ETTm1", "Weather"])
def test_real_files_load_quickly(real_data_dir, name):
    from ecalf.data import get_spec

    spec = get_spec(name)
    if not (real_data_dir / spec.file_name).is_file():
        pytest.skip(f"{spec.file_name} not in {real_data_dir}")
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="repeat") if name == "Weather" else nullcontext():
        frame, _ = load_dataset(name, real_data_dir)
    elapsed = time.perf_counter() - start
    assert frame.values.shape == (spec.num_rows, spec.num_channels)
    assert frame.columns[-1] == "OT"
    assert elapsed < 2.0, f"loading {name} took {elapsed:.2f}s"


# --------------------------------------------------------------------------------------------------
# The ETTh1 copy shipped with the package
# --------------------------------------------------------------------------------------------------

ETTH1_SHA256 = "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066"
"""The published file's checksum (ETDataset commit 1d16c8f, as in the shared datasets' SHA256SUMS)."""


def test_the_shipped_etth1_is_the_published_file_unmodified():
    import hashlib

    from ecalf.data.loading import BUNDLED_DIR

    data = (BUNDLED_DIR / "ETTh1.csv").read_bytes()
    assert hashlib.sha256(data).hexdigest() == ETTH1_SHA256
    assert "CC BY-ND 4.0" in (BUNDLED_DIR / "README.md").read_text()


def test_the_shipped_etth1_is_used_only_when_no_data_directory_is_given(tmp_path, monkeypatch):
    from ecalf.data.loading import BUNDLED_DIR

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ECALF_DATA_DIR", raising=False)
    with pytest.warns(UserWarning, match="using the copy shipped with ecalf"):
        frame, _ = load_dataset("ETTh1")
    assert frame.num_rows == 17420 and frame.source == str(BUNDLED_DIR / "ETTh1.csv")
    # A data directory that lacks the file is an error naming it, not a silent fallback.
    with pytest.raises(DataError, match=r"ETTh1\.csv not found"):
        load_dataset("ETTh1", data_dir=tmp_path / "elsewhere")
    monkeypatch.setenv("ECALF_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match=r"ETTh1\.csv not found"):
        load_dataset("ETTh1")
    # Other datasets are not shipped.
    monkeypatch.delenv("ECALF_DATA_DIR")
    with pytest.raises(DataError, match=r"ETTh2\.csv not found"):
        load_dataset("ETTh2")
    # A ./datasets/ETTh1.csv of the user's comes first.
    (tmp_path / "datasets").mkdir()
    own = (BUNDLED_DIR / "ETTh1.csv").read_text().splitlines()[:300]
    (tmp_path / "datasets" / "ETTh1.csv").write_text("\n".join(own) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame, _ = load_dataset("ETTh1")
    assert frame.num_rows == 299
