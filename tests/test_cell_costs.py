"""Estimating a benchmark cell's wall time from finished rows, and the time left in a running grid."""

import pytest

from ecalf.cell_costs import CellCosts, CellKey, Remaining, estimate_from, format_duration


def _row(model="calf", dataset="ETTh1", setting="few_shot", horizon=96, seconds=100.0, target=""):
    return {
        "model": model, "dataset": dataset, "setting": setting, "horizon": str(horizon),
        "wall_seconds": str(seconds), "target": target,
    }  # fmt: skip


def test_estimates_come_from_the_same_model_dataset_and_setting():
    costs = CellCosts.from_rows(
        [
            _row(seconds=100), _row(seconds=300), _row(seconds=200),  # median 200
            _row(horizon=720, seconds=40),
            _row(setting="full", seconds=4000),
            _row(setting="zero_shot", target="ETTm1", seconds=9999),  # its source's time: left out
            _row(seconds="nan"), {"model": "calf"},  # unreadable rows are skipped
        ]
    )  # fmt: skip
    assert costs.estimate(CellKey("calf", "ETTh1", "few_shot", 96)) == 200
    assert costs.estimate(CellKey("calf", "ETTh1", "few_shot", 720)) == 40
    # no row of that horizon: the setting's median over horizons
    assert costs.estimate(CellKey("calf", "ETTh1", "few_shot", 336)) == pytest.approx(150)
    assert costs.estimate(CellKey("calf", "ETTh1", "full", 336)) == 4000
    # never from another setting, model or dataset size: few-shot says nothing about full data
    assert costs.estimate(CellKey("calf", "ETTh1", "zero_shot", 96)) is None
    assert costs.estimate(CellKey("calf", "ETTm1", "few_shot", 96)) is None
    assert costs.estimate(CellKey("calf", "my_data", "few_shot", 96)) is None
    assert costs.estimate(CellKey("ecalf", "ETTh1", "few_shot", 96)) is None
    # ETTh2 has ETTh1's rows, channels and split: as costly to train
    assert costs.estimate(CellKey("calf", "ETTh2", "few_shot", 96)) == 200
    assert costs.estimate(CellKey("calf", "ETTh2", "full", 192)) == 4000


def test_a_dataset_s_own_rows_come_before_those_of_its_size():
    costs = CellCosts.from_rows([_row(seconds=100), _row(dataset="ETTh2", seconds=900), _row(horizon=192)])
    assert costs.estimate(CellKey("calf", "ETTh2", "few_shot", 96)) == 900
    assert costs.estimate(CellKey("calf", "ETTh2", "few_shot", 192)) == 900  # its own, any horizon
    assert costs.estimate(CellKey("calf", "ETTh1", "few_shot", 336)) == 100


def test_every_source_s_own_dataset_comes_before_any_dataset_of_its_size():
    grid = CellCosts.from_rows([_row(dataset="ETTh1", seconds=100)])
    others = CellCosts.from_rows([_row(dataset="ETTh2", seconds=900), _row(dataset="ETTm1", seconds=5)])
    assert estimate_from(CellKey("calf", "ETTh2", "few_shot", 96), grid, others) == 900
    assert estimate_from(CellKey("calf", "ETTh1", "few_shot", 96), grid, others) == 100
    assert estimate_from(CellKey("calf", "ETTm2", "few_shot", 96), grid, others) == 5
    assert estimate_from(CellKey("calf", "Weather", "few_shot", 96), grid, others) is None
    assert grid.estimate(CellKey("calf", "ETTh2", "few_shot", 96), by_size=False) is None


def test_the_time_left_is_calibrated_by_the_cells_done():
    left = Remaining({"a": 10.0, "b": 20.0, "c": None, "reused": 0.0, "e": 30.0})
    assert left.seconds() == 60 and left.unknown == 1
    left.finished("a", 20.0)  # this machine runs at half the estimated speed
    assert left.seconds() == 100
    left.finished("reused", 5.0)  # a cell without an estimate tells nothing about speed
    left.finished("c", 500.0)
    assert left.seconds() == 100 and left.unknown == 0
    left.dropped("e")  # failed: no longer pending
    assert left.seconds() == 40
    assert left.describe() == "~40 s left"
    assert Remaining({"x": None, "y": 5.0}).describe() == "~5 s left (+1 cells not estimated)"
    assert Remaining({"x": None}).describe().startswith("time left unknown")
    assert Remaining({}).describe() == "~0 s left"


def test_cells_running_side_by_side_share_the_time_left():
    assert Remaining({"a": 10.0, "b": 20.0, "c": 30.0, "d": None}, parallel=2).seconds() == 30
    assert Remaining({"a": 10.0, "b": 50.0}, parallel=2).seconds() == 50  # the longest cell bounds it
    assert Remaining({"a": 10.0, "b": 50.0}, parallel=4).describe() == "~50 s left"
    assert Remaining({}, parallel=2).seconds() == 0


@pytest.mark.parametrize(
    ("seconds", "text"), [(5, "5 s"), (89, "89 s"), (600, "10 min"), (5399, "90 min"), (9000, "2.5 h")]
)
def test_durations_read_in_their_natural_unit(seconds, text):
    assert format_duration(seconds) == text


def test_a_finished_cell_estimates_the_pending_cells_of_its_kind():
    calf96, calf192 = CellKey("calf", "ETTm1", "few_shot", 96), CellKey("calf", "ETTm1", "few_shot", 192)
    left = Remaining(
        {"a": None, "b": None, "c": None, "d": 30.0, "e": None},
        {
            "a": calf96, "b": calf192, "c": CellKey("calf", "Weather", "few_shot", 96), "d": calf96,
            "e": CellKey("calf", "ETTm2", "few_shot", 96),
        },
    )  # fmt: skip
    assert left.unknown == 4
    left.finished("a", 600.0)
    assert left.estimates["b"] == 600.0  # same model, dataset and setting
    assert left.estimates["c"] is None  # a dataset of another size says nothing
    assert left.estimates["e"] == 600.0  # ETTm2 is ETTm1's size
    assert left.estimates["d"] == 30.0  # an estimate it had stays
