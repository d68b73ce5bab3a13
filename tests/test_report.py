"""Published reference numbers beside measured ones in ``ecalf report`` (no training: rows are made up)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest

from ecalf.benchmark import RESULT_COLUMNS
from ecalf.cli import main
from ecalf.errors import EcalfError
from ecalf.published import COLUMNS, MEAN_HORIZONS, load_published
from ecalf.report import (
    markdown_tables,
    paired_comparison,
    paired_comparison_lines,
    provenance_lines,
    published_means,
    sign_test_p,
    write_report,
)

HEADER = ",".join(COLUMNS)


def _results(horizons=MEAN_HORIZONS, datasets=("ETTh1", "ETTh2"), setting="few_shot") -> pd.DataFrame:
    rows = [
        {"setting": setting, "dataset": d, "target": "", "model": m, "horizon": h, "seed": 2021,
         "mse": base + h / 1000, "mae": base / 2 + h / 2000}
        for d in datasets for m, base in (("calf", 0.5), ("dlinear", 0.4)) for h in horizons
    ]  # fmt: skip
    return pd.DataFrame(rows)


def _write_results(path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(RESULT_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(_results().to_dict("records"))
    return path


def _published(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "published.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    return path


def _table_rows(text: str, first_cell: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]


def test_the_committed_published_numbers_load_and_cover_the_protocol():
    frame = load_published()  # ecalf's own list, installed with the package
    calf = frame[frame["model"] == "CALF (paper)"]
    etth1 = calf[(calf["setting"] == "full") & (calf["dataset"] == "ETTh1")]
    assert sorted(etth1["horizon"]) == [-1, *MEAN_HORIZONS]  # the paper's mean and its four horizons
    assert set(calf[calf["setting"] == "few_shot"]["dataset"]) == {"ETTh1", "ETTh2", "ETTm1", "ETTm2"}
    assert (frame["source"].str.len() > 0).all()


def test_published_rows_appear_in_italics_and_are_never_best(tmp_path):
    path = _published(
        tmp_path,
        "Paper,few_shot,ETTh1,,mean,0.100,0.200,Someone 2025",  # better than every measured row
        "Paper,few_shot,ETTh1,,96,0.050,0.150,Someone 2025",
        "Paper,full,ETTh2,,mean,0.300,0.300,Other setting",  # another setting: not shown
        "Paper,few_shot,Weather,,mean,0.300,0.300,Not in these results",
    )
    text = markdown_tables(_results(), load_published(path))
    assert _table_rows(text, "*Paper*") == ["| *Paper* | *0.100 / 0.200* | — |"]
    assert _table_rows(text, "dlinear")[0].startswith("| dlinear | **0.")  # the measured best stays bold
    header = next(line for line in text.splitlines() if line.startswith("| dataset | H |"))
    assert header == "| dataset | H | dlinear | calf | *Paper* |"  # baselines first (model_order)
    assert _table_rows(text, "ETTh1")[0].endswith("| *0.050 / 0.150* |")
    assert _table_rows(text, "ETTh2")[0].endswith("| — |")
    assert "- *Paper*: Someone 2025" in text
    assert "Other setting" not in text and "Not in these results" not in text


def test_a_published_mean_is_shown_only_beside_means_over_the_same_horizons(tmp_path):
    path = _published(tmp_path, "Paper,few_shot,ETTh1,,mean,0.100,0.200,Someone 2025")
    text = markdown_tables(_results(horizons=(96, 192)), load_published(path))
    assert _table_rows(text, "*Paper*") == []
    assert "Someone 2025" not in text
    assert markdown_tables(_results()) == markdown_tables(_results(), None)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("Paper,few_shot,ETTh1,,longest,0.1,0.2,S", "horizon 'longest' is neither"),
        ("Paper,few_shot,ETTh1,,-96,0.1,0.2,S", "horizon '-96' is neither"),
        ("Paper,few_shot,ETTh1,,96,n/a,0.2,S", "mse 'n/a' is not a non-negative number"),
        ("Paper,few_shot,ETTh1,,96,0.1,-0.2,S", "mae '-0.2' is not a non-negative number"),
        ("Paper,few_shot,ETTh1,,96,0.1,0.2,", "line 2: source is empty"),
    ],
)
def test_bad_published_rows_are_named_with_their_line(tmp_path, line, message):
    with pytest.raises(EcalfError, match=message):
        load_published(_published(tmp_path, line))


def test_bad_published_files_say_what_is_wrong(tmp_path):
    with pytest.raises(EcalfError, match="do not exist"):
        load_published(tmp_path / "missing.csv")
    (tmp_path / "p.csv").write_text("model,setting,dataset,horizon,mse\nA,full,ETTh1,96,0.1\n")
    with pytest.raises(EcalfError, match="no column 'mae'"):
        load_published(tmp_path / "p.csv")
    twice = _published(tmp_path, "A,full,ETTh1,,96,0.1,0.2,S", "A,full,ETTh1,,96,0.3,0.4,T")
    with pytest.raises(EcalfError, match="two rows for full ETTh1 horizon 96"):
        load_published(twice)


def test_cli_report_with_published_numbers(tmp_path, capsys):
    results = _write_results(tmp_path / "r.csv")
    path = _published(tmp_path, "calf (paper),few_shot,ETTh1,,96,0.4,0.3,Someone 2025")
    assert main(["report", str(results), "--published", str(path)]) == 0
    text = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert f"--published {path.as_posix()}`" in text and "*calf (paper)*" in text
    assert main(["report", str(results), "--published"]) == 0  # alone: ecalf's list
    text = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert "--published`" in text and "*CALF (paper)*" in text and "Liu et al." in text
    assert mpimg.imread(tmp_path / "r_per_horizon.png").shape[-1] in (3, 4)
    assert main(["report", str(results), "--published", str(tmp_path / "none.csv")]) == 2
    assert "do not exist" in capsys.readouterr().err


def test_write_report_without_published_numbers_is_unchanged(tmp_path):
    write_report(_write_results(tmp_path / "r.csv"))
    text = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert "--published" not in text and "In italics" not in text and "*" not in text.replace("**", "")


def test_provenance_counts_runs_per_commit_and_flags_uncommitted_code():
    df = _results().assign(
        git_commit=["a" * 40] * 10 + ["b" * 40 + "-dirty"] * 6, wall_seconds=900.0, device="cpu",
        ecalf="0.1.0", torch="2.13.0+cpu", transformers="5.23.0", peft="0.21.2",
    )  # fmt: skip
    text = "\n".join(provenance_lines(df))
    assert "16 runs, 4.0 h of wall time in all" in text
    assert "- code (git commit): aaaaaaa (10), bbbbbbb-dirty (6)" in text
    assert "- packages: ecalf 0.1.0, torch 2.13.0+cpu, transformers 5.23.0, peft 0.21.2 (16)" in text
    assert "**6 runs ran uncommitted code**" in text
    clean = "\n".join(provenance_lines(df.assign(git_commit="c" * 40)))
    assert "uncommitted" not in clean and "ccccccc (16)" in clean
    assert "unknown (16)" in "\n".join(provenance_lines(_results()))  # rows without provenance columns


def test_paired_comparison_counts_only_the_cells_both_models_ran():
    df = _results()
    extra = df[df["model"] == "dlinear"].assign(seed=2022)  # a seed calf did not run: no pair
    table = paired_comparison(pd.concat([df, extra]), "calf", "dlinear")
    assert list(table["dataset"]) == ["ETTh1", "ETTh2"] and list(table["cells"]) == [4, 4]
    assert list(table["better"]) == [4, 4]
    changes = [(0.4 - 0.5) / (0.5 + h / 1000) for h in MEAN_HORIZONS]
    assert table["mean_change"].iloc[0] == pytest.approx(sum(changes) / 4)
    assert table["median_change"].iloc[0] == pytest.approx(sorted(changes)[1] / 2 + sorted(changes)[2] / 2)
    worse = paired_comparison(df, "dlinear", "calf")
    assert list(worse["better"]) == [0, 0] and (worse["mean_change"] > 0).all()
    text = "\n".join(paired_comparison_lines(df, "calf", "dlinear"))
    assert "dlinear has the lower test MSE in 8 of 8" in text
    assert paired_comparison_lines(df, "calf", "patchtst") == []  # no shared cell: no section
    same = pd.concat([df, df[df["model"] == "calf"].assign(model="copy")])
    tied = paired_comparison(same, "calf", "copy")
    assert list(tied["tied"]) == [4, 4] and list(tied["sign_test_p"]) == [1.0, 1.0]
    assert "copy has the lower test MSE in 0 of 8 (8 tied)" in "\n".join(
        paired_comparison_lines(same, "calf", "copy")
    )


def test_sign_test_p_is_the_exact_two_sided_binomial_tail():
    assert sign_test_p(4, 4) == pytest.approx(2 / 16)  # 4 of 4 or 0 of 4
    assert sign_test_p(0, 4) == sign_test_p(4, 4)
    assert sign_test_p(2, 4) == 1.0
    assert sign_test_p(21, 33) == pytest.approx(
        0.163, abs=5e-4
    )  # normal approximation with continuity correction: 0.164
    assert sign_test_p(0, 0) == 1.0


def test_published_means_are_drawn_only_over_the_same_horizons():
    builtin = load_published()
    means = published_means(_results(), builtin, "few_shot", "ETTh1", "")
    assert list(means["model"]) == ["CALF (paper)"] and means["mse"].iloc[0] == pytest.approx(0.644)
    assert published_means(_results(horizons=(96,)), builtin, "few_shot", "ETTh1", "").empty
    assert published_means(_results(), None, "few_shot", "ETTh1", "").empty


def test_a_published_mean_stands_only_beside_a_column_over_its_horizons(tmp_path):
    """A setting where one dataset has the four horizons and another only H 96 (a grid half done)."""
    df = pd.concat([_results(datasets=("ETTh1",)), _results(horizons=(96,), datasets=("ETTh2",))])
    path = _published(
        tmp_path, "Paper,few_shot,ETTh1,,mean,0.100,0.200,S", "Paper,few_shot,ETTh2,,mean,0.300,0.400,S"
    )
    text = markdown_tables(df, load_published(path))
    assert _table_rows(text, "*Paper*") == ["| *Paper* | *0.100 / 0.200* | — |"]
    assert list(published_means(df, load_published(path), "few_shot", "ETTh2", "")["model"]) == []


def test_tables_list_models_in_one_order_whatever_finished_first():
    """Baselines first, the LLM models last, an ablation label beside the model it runs."""
    rows = [
        {"setting": "full", "dataset": "ETTh1", "target": "", "model": label, "model_name": runs,
         "horizon": h, "seed": 2021, "mse": 0.5, "mae": 0.4}
        for label, runs in (("ecalf", "ecalf"), ("calf-random", "calf"), ("patchtst", "patchtst"),
                            ("calf", "calf"), ("naive", "naive"), ("mine", "mine"))
        for h in MEAN_HORIZONS
    ]  # fmt: skip
    text = markdown_tables(pd.DataFrame(rows))
    first_table = text.split("Per horizon")[0]
    order = ["naive", "patchtst", "calf-random", "calf", "ecalf", "mine"]
    listed = [line.split(" | ")[0][2:] for line in first_table.splitlines() if line.startswith("| ")]
    assert listed == ["model", *order]
    header = next(line for line in text.splitlines() if line.startswith("| dataset | H |"))
    assert header.strip("| ").split(" | ")[2:] == order


def test_a_seed_free_model_is_paired_with_every_seed_of_the_other():
    """``linear`` (closed form, one row per cell) meets each seed of a trained model; two trained
    models still pair seed by seed."""
    rows = [
        {"setting": "few_shot", "dataset": "ETTh1", "target": "", "model": "linear", "horizon": 96,
         "seed": 2021, "mse": 0.40, "stopped": "closed_form"},
    ] + [
        {"setting": "few_shot", "dataset": "ETTh1", "target": "", "model": m, "horizon": 96, "seed": seed,
         "mse": mse, "stopped": "early_stopping"}
        for m, seed, mse in (
            ("ecalf", 2021, 0.39), ("ecalf", 2022, 0.41), ("ecalf", 2023, 0.42), ("calf", 2021, 0.5)
        )
    ]  # fmt: skip
    df = pd.DataFrame(rows)
    table = paired_comparison(df, "linear", "ecalf")
    assert (int(table["cells"].sum()), int(table["better"].sum())) == (3, 1)
    assert "does not depend on the seed" in "\n".join(paired_comparison_lines(df, "linear", "ecalf"))
    assert int(paired_comparison(df, "calf", "ecalf")["cells"].sum()) == 1  # seed 2021 only


def test_report_names_its_pairs_and_the_command_that_regenerates_them(tmp_path):
    results = _write_results(tmp_path / "r.csv")
    written = write_report(results, compare=("calf", "dlinear"), pairs=[("dlinear", "calf")])
    text = written[0].read_text()
    assert "## dlinear against calf" in text and "## calf against dlinear" in text
    assert "--compare calf dlinear --pair dlinear calf" in text


def test_a_setting_shows_only_the_models_that_have_rows_in_it():
    few_shot = _results(datasets=("ETTh1",))
    full = _results(datasets=("ETTh1",), setting="full")
    full = full[full["model"] == "dlinear"]  # calf was run few-shot only
    text = markdown_tables(pd.concat([few_shot, full], ignore_index=True))
    few_shot_part, full_part = text.split("## full")
    assert _table_rows(few_shot_part, "calf") and _table_rows(few_shot_part, "dlinear")
    assert not _table_rows(full_part, "calf") and _table_rows(full_part, "dlinear")
    assert "| dataset | H | dlinear |" in full_part


def test_standing_ranks_a_model_per_dataset_and_names_the_models_below_it(tmp_path):
    """Per dataset: the model's mean MSE over horizons, its rank among all models, the ones lower,
    and the horizons where it is the lowest; the report carries it with its command."""
    from ecalf.report import standing, standing_lines

    df = _results(datasets=("ETTh1", "ETTh2"))  # calf 0.5 + h/1000, dlinear 0.4 + h/1000
    better_at_96 = (df["model"] == "calf") & (df["dataset"] == "ETTh2") & (df["horizon"] == 96)
    df.loc[better_at_96, "mse"] = 0.45  # calf lowest at ETTh2 H 96 only; its ETTh2 mean still above dlinear's
    table = standing(df, "calf").set_index("dataset")
    assert table.loc["ETTh1", "rank"] == 2 and table.loc["ETTh1", "lower"] == ["dlinear 0.736"]
    assert table.loc["ETTh1", "lowest_at"] == [] and table.loc["ETTh2", "lowest_at"] == [96]
    expected = (0.45 + sum(0.5 + h / 1000 for h in MEAN_HORIZONS[1:])) / 4
    assert table.loc["ETTh2", "mse"] == pytest.approx(expected)
    assert standing(df, "dlinear").set_index("dataset").loc["ETTh1", "rank"] == 1
    assert standing(df, "nonexistent").empty and standing_lines(df, "nonexistent") == []
    lines = "\n".join(standing_lines(df, "dlinear"))
    assert (
        "the lowest on 2 of 2 datasets" in lines
        and "| few_shot | ETTh2 | 0.736 | 1 of 2 | — | 192, 336, 720 (3 of 4) |" in lines
    )

    ens = df[df["model"] == "dlinear"].assign(model="dlinear+ens", seed=0, mse=lambda d: d["mse"] - 0.01)
    with_ens = pd.concat([df, ens], ignore_index=True)
    assert (
        standing(with_ens, "dlinear").set_index("dataset").loc["ETTh1", "rank"] == 1
    )  # its own ensemble: left out
    assert (
        standing(with_ens, "dlinear+ens").set_index("dataset").loc["ETTh1", "models"] == 2
    )  # and the other way
    assert (
        standing(with_ens, "calf").set_index("dataset").loc["ETTh1", "rank"] == 3
    )  # another's ensemble counts

    path = _write_results(tmp_path / "r.csv")
    assert main(["report", str(path), "--standing", "dlinear"]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "## Where dlinear stands" in text and "--standing dlinear`" in text


def test_the_mean_table_names_each_datasets_horizons_when_they_differ():
    """A grid of dataset-horizon pairs (one pilot horizon per dataset) does not claim a mean over
    horizons no dataset has."""
    pairs = pd.concat(
        [_results(horizons=(96,), datasets=("ETTh1",)), _results(horizons=(336,), datasets=("ETTh2",))]
    )
    text = markdown_tables(pairs)
    assert "Mean over each dataset's horizons (ETTh1 96; ETTh2 336)" in text
    assert "Mean over horizons" not in text
    assert "Mean over horizons 96, 192 (" in markdown_tables(_results(horizons=(96, 192)))
