"""``ecalf tune``: a resumable Optuna search on the validation split that never reads a test window."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

import ecalf.tune
from ecalf.cli import main
from ecalf.config_files import load_run_config
from ecalf.data import WindowDataset
from ecalf.errors import ConfigError, EcalfError
from ecalf.run_dir import RunDirectory
from ecalf.tune import SearchSettings, check_space, load_space, run_search

optuna = pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny" / "calf.yaml"
SPACE = """\
set: [training.eval_every_steps=8]
params:
  training.learning_rate: {float: [1.0e-4, 3.0e-3], log: true}
  model.loss: {choice: [mse, l1]}
"""
SMALL = (
    "data.context_length=48",
    "training.epochs=2",
    "training.batch_size=64",
    "training.progress=false",
    "training.tracking=none",
)


def settings(tmp_path: Path, csv: Path, trials: int, **extra: object) -> SearchSettings:
    space = tmp_path / "space.yaml"
    if not space.exists():
        space.write_text(SPACE)
    base = SearchSettings(
        config=TINY,
        space=space,
        trials=trials,
        cells=((str(csv), 12),),
        few_shot_percent=40.0,
        output_dir=tmp_path / "search",
        overrides=SMALL,
    )
    return dataclasses.replace(base, **extra)  # type: ignore[arg-type]


def trial_dirs(directory: Path) -> list[Path]:
    return sorted(p for p in (directory / "trials").glob("*/*") if p.is_dir())


def test_tune_on_the_tiny_config_with_three_trials_finishes(tmp_path, synthetic_csv, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    out = tmp_path / "search"
    best = tmp_path / "tuned" / "calf.yaml"
    args = ["tune", str(TINY), "--space", str(space), "--trials", "3", "--datasets", str(synthetic_csv)]
    args += ["--horizons", "12", "--few-shot", "40", "--output-dir", str(out), "--best-config", str(best)]
    args += [f"--set={o}" for o in (*SMALL, "training.epochs=1")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "trial 2 complete" in printed and "best trial" in printed
    ends = [line for line in printed.splitlines() if line.startswith("trial 0 complete")]
    assert len(ends) == 1 and " left (2 trials at " in ends[0] and ends[0].endswith(" s, the mean so far)")
    assert "left" not in next(line for line in printed.splitlines() if line.startswith("trial 2 complete"))
    rows = (out / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("trial,state,score,toy-H12,training.learning_rate,model.loss")
    assert (out / "search.png").stat().st_size > 10_000  # the search drawn (tests/test_plots.py)
    assert len(rows) == 4
    runs = trial_dirs(out)
    assert len(runs) == 3
    for run in runs:  # every trial a run directory, validated and never tested
        directory = RunDirectory(run)
        assert directory.has_config() and directory.has_validation() and directory.weights_file.is_file()
        assert not directory.is_finished() and not directory.checkpoint.exists()
        assert directory.read_validation().ratio > 0
    # The best config is a preset the grid runs: the base config with the best trial's values.
    tuned = load_run_config(best)
    scores = {int(r.split(",")[0]): float(r.split(",")[2]) for r in rows[1:]}
    winner = min(scores, key=lambda n: scores[n])
    assert f"trial {winner} " in best.read_text().splitlines()[0]
    assert tuned.training.eval_every_steps == 8
    assert load_run_config(out / "best.yaml") == tuned


def test_a_killed_search_keeps_its_finished_trials(tmp_path, synthetic_csv, monkeypatch):
    first = run_search(settings(tmp_path, synthetic_csv, 2), echo=None)
    assert [t.state for t in first.trials] == ["complete", "complete"]
    kept = {t.number: (t.score, t.params) for t in first.trials}
    real_fit = ecalf.tune.fit_model

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ecalf.tune, "fit_model", killed)
    with pytest.raises(KeyboardInterrupt):
        run_search(settings(tmp_path, synthetic_csv, 3), echo=None)
    fits = []

    def counted(*args, **kwargs):
        fits.append(args[0])
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(ecalf.tune, "fit_model", counted)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'search' / 'study.db'}")
    (running,) = [
        t
        for t in storage.get_all_trials(storage.get_study_id_from_name("search"))
        if t.state == optuna.trial.TrialState.RUNNING
    ]
    storage.set_trial_user_attr(running._trial_id, "seconds", 1000.0)  # its epochs ran 1000 s before the kill
    lines: list[str] = []
    again = run_search(settings(tmp_path, synthetic_csv, 3), echo=lines.append)
    assert "2 trial(s) finished, 1 killed trial(s) tried again" in lines[0]
    retried = again.trials[-1]
    assert retried.seconds is not None and 1000.0 < retried.seconds < 1000.0 + 600  # its own time added
    assert all(t.seconds is not None and 0 < t.seconds < 600 for t in again.trials[:2])
    assert (tmp_path / "search" / "trials.csv").read_text().splitlines()[0].endswith(",seconds")
    assert "h of trials" in ecalf.tune.search_line(again)
    status, running = ecalf.tune.search_status(settings(tmp_path, synthetic_csv, 3))  # reads, runs nothing
    assert running == 0 and [t.number for t in status.trials] == [t.number for t in again.trials]
    assert status.best is not None and again.best is not None and status.best.number == again.best.number
    with pytest.raises(EcalfError, match="holds another search"):
        ecalf.tune.search_status(settings(tmp_path, synthetic_csv, 3, seed=7))
    with pytest.raises(EcalfError, match="holds no search yet"):
        ecalf.tune.search_status(settings(tmp_path, synthetic_csv, 3, output_dir=tmp_path / "none"))
    assert len(fits) == 1  # only the killed trial trained again; the finished two were kept
    assert {t.number: (t.score, t.params) for t in again.trials if t.number in kept} == kept
    assert len(again.trials) == 3 and all(t.state == "complete" for t in again.trials)
    killed_trial = next(t for t in optuna.load_study(
        study_name="search", storage=f"sqlite:///{tmp_path / 'search' / 'study.db'}"
    ).trials if t.state == optuna.trial.TrialState.FAIL)  # fmt: skip
    assert again.trials[-1].params == killed_trial.params  # tried again with the same values ...
    assert len(trial_dirs(tmp_path / "search")) == 3  # ... in the same directory


def spy_on_test_reads(monkeypatch) -> tuple[set[int], list[int]]:
    """The ids of every test split the tune module prepares, and of every dataset a batch is read from:
    a run read no test window when the two do not meet."""
    tests: set[int] = set()
    read: list[int] = []
    real_prepare, real_get_batch = ecalf.tune.prepare_splits, WindowDataset.get_batch

    def prepare(config):
        splits = real_prepare(config)
        tests.add(id(splits.test))
        return splits

    def spy(self, indices):
        read.append(id(self))
        return real_get_batch(self, indices)

    monkeypatch.setattr(ecalf.tune, "prepare_splits", prepare)
    monkeypatch.setattr(WindowDataset, "get_batch", spy)
    return tests, read


def test_a_search_never_reads_the_test_split(tmp_path, synthetic_csv, monkeypatch):
    tests, read = spy_on_test_reads(monkeypatch)
    run_search(settings(tmp_path, synthetic_csv, 1), echo=None)
    assert tests and read
    assert not tests & set(read), "a search read test windows"


def test_a_worse_trial_is_pruned(tmp_path, synthetic_csv):
    """A recipe that cannot learn (learning rate 1e-12) is pruned at its second epoch, against one that
    learns, and its second cell is never trained."""
    csv2 = synthetic_csv.with_name("toy2.csv")
    csv2.write_bytes(synthetic_csv.read_bytes())
    search = settings(
        tmp_path,
        synthetic_csv,
        2,
        cells=((str(synthetic_csv), 12), (str(csv2), 12)),
        overrides=(*SMALL, "training.epochs=3"),
        startup_trials=1,
        first_trials=(
            {"training.learning_rate": 3e-3, "model.loss": "mse"},
            {"training.learning_rate": 1e-12, "model.loss": "mse"},
        ),
    )
    (tmp_path / "space.yaml").write_text(SPACE.replace("1.0e-4, 3.0e-3", "1.0e-12, 3.0e-3"))
    summary = run_search(search, echo=None)
    assert [t.state for t in summary.trials] == ["complete", "pruned"]
    pruned = summary.trials[1]
    assert pruned.ratios == {}  # stopped inside its first cell
    assert [p.name for p in trial_dirs(tmp_path / "search") if p.parent.name == "0001"] == ["toy-H12"]
    progress = RunDirectory(tmp_path / "search" / "trials" / "0001" / "toy-H12").progress()
    assert progress is not None and progress.epochs_done == 1  # pruned at the end of its epoch 2 of 3


def test_a_pruned_trials_running_score_never_makes_it_the_best(tmp_path, synthetic_csv):
    """Optuna gives a pruned trial its last running score as its value, over the cells it reached only
    (a search once wrote such a trial as its best recipe): the best is the lowest completed score."""
    search = settings(tmp_path, synthetic_csv, 2)
    search.directory.mkdir(parents=True)
    study = optuna.create_study(study_name="search", storage=f"sqlite:///{search.directory / 'study.db'}")
    distributions = {
        "training.learning_rate": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True),
        "model.loss": optuna.distributions.CategoricalDistribution(["mse", "l1"]),
    }
    study.enqueue_trial({"training.learning_rate": 1e-3, "model.loss": "mse"})
    study.enqueue_trial({"training.learning_rate": 2e-3, "model.loss": "l1"})
    complete = study.ask(distributions)
    study.tell(complete, 0.9)
    pruned = study.ask(distributions)
    pruned.report(0.1, 2)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    assert study.trials[1].value == pytest.approx(0.1)  # what Optuna does, and what this guards against
    summary = ecalf.tune.write_summary(search, study)
    assert summary.best is not None and summary.best.number == 0 and summary.best.score == pytest.approx(0.9)
    assert "trial 0 " in (search.directory / "best.yaml").read_text().splitlines()[0]
    rows = (search.directory / "trials.csv").read_text().splitlines()
    assert rows[0].endswith(",pruned_running_score,seconds")
    assert rows[2].startswith("1,pruned,,") and rows[2].endswith(",0.100000,")  # no time: not run here


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("params: {training.learning_rat: {float: [0.1, 0.2]}}", "learning_rat"),
        ("params: {training.learning_rate: {float: [0.2, 0.1]}}", "low 0.2 must be below high 0.1"),
        ("params: {training.learning_rate: {uniform: [0.1, 0.2]}}", "give one of"),
        ("params: {training.learning_rate: {float: [0.0, 0.2], log: true}}", "log range needs low > 0"),
        ("params: {model.loss: {choice: [mse, hinge]}}", "model.loss"),
        ("params: {}", "non-empty `params`"),
    ],
)
def test_a_bad_space_is_one_clear_error(tmp_path, space, message):
    path = tmp_path / "space.yaml"
    path.write_text(space + "\n")
    with pytest.raises(ConfigError, match=message):
        check_space(TINY, load_space(path))


def test_bad_arguments_are_one_clear_error(tmp_path, synthetic_csv, capsys, monkeypatch):
    with pytest.raises(ConfigError, match="at least 1"):
        settings(tmp_path, synthetic_csv, 0)
    with pytest.raises(ConfigError, match="unknown dataset 'ETTh9'"):
        run_search(settings(tmp_path, synthetic_csv, 1, cells=(("ETTh9", 96),)), echo=None)
    (tmp_path / "space.yaml").write_text(SPACE)
    args = ["tune", str(TINY), "--space", str(tmp_path / "space.yaml"), "--trials", "2"]
    assert main([*args, "--datasets", "ETTh1", "ETTh2", "--horizons", "96", "192", "336"]) == 2
    assert "2 datasets but 3 horizons" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(EcalfError, match=r"pip install 'ecalf\[tune\]'"):
        run_search(settings(tmp_path, synthetic_csv, 1), echo=None)


@pytest.mark.parametrize(
    ("space", "config"),
    [
        ("ecalf", "configs/ecalf/ETTh1.yaml"),
        ("calf", "configs/calf-fewshot/ETTh1.yaml"),
        ("patchtst", "configs/baselines/patchtst.yaml"),
        ("dlinear", "configs/baselines/dlinear.yaml"),
    ],
)
def test_every_shipped_space_fits_its_models_config(space, config):
    check_space(ROOT / config, load_space(ROOT / "configs" / "tune" / f"{space}.yaml"))


def test_an_override_the_space_would_overrule_is_refused(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "set: [training.epochs=3]\nparams: {training.learning_rate: {float: [1.0e-4, 1.0e-2], log: true}}\n"
    )
    space = load_space(path)
    with pytest.raises(ConfigError, match=r"--set training.epochs=1: the search space fixes it"):
        check_space(TINY, space, ["training.epochs=1"])
    with pytest.raises(ConfigError, match=r"searches it \(params\)"):
        check_space(TINY, space, ["training.learning_rate=0.1"])
    check_space(TINY, space, ["training.num_threads=1"])  # a key the space leaves alone is taken


def away_changes(values: dict[str, object]) -> list[str]:
    return [ecalf.tune.override(k, v) for k, v in values.items()]


def test_levers_take_back_one_tuned_value_at_a_time(tmp_path, synthetic_csv, capsys):
    from ecalf.tune_levers import levers_of

    search = settings(tmp_path, synthetic_csv, 2)
    summary = run_search(search, echo=None)
    best = summary.best
    assert best is not None
    levers, unchanged = levers_of(
        search, best.params, [["training.eval_every_steps=null", "training.patience=1"]]
    )
    untuned = load_run_config(TINY, [*SMALL, "training.eval_every_steps=8"])
    searched = {lever.name: lever for lever in levers}
    # every searched key whose tuned value differs from the untuned recipe's is one lever, back to that value
    for key, value in best.params.items():
        section, name = key.split(".")
        before = getattr(getattr(untuned, section), name)
        if before == value:
            assert key in unchanged
        else:
            assert searched[key].changes == (ecalf.tune.override(key, before),)
    # two tuned values away from the untuned recipe: each back alone, then both at once (`untuned`)
    away = {"training.learning_rate": untuned.training.learning_rate * 3, "model.loss": "mse"}
    assert untuned.model.loss != "mse"
    two, _ = levers_of(search, away)
    assert [lever.name for lever in two] == ["training.learning_rate", "model.loss", "untuned"]
    assert two[2].changes == two[0].changes + two[1].changes and two[2].label == "untuned"
    assert load_run_config(
        TINY, [*SMALL, "training.eval_every_steps=8", *away_changes(away), *two[2].changes]
    ) == (untuned)
    one, _ = levers_of(
        search, {"training.learning_rate": away["training.learning_rate"], "model.loss": untuned.model.loss}
    )
    assert [lever.name for lever in one] == ["training.learning_rate"]  # one lever: nothing to add
    variant = searched["training.eval_every_steps=null training.patience=1"]
    assert variant.tuned == "training.eval_every_steps=8 training.patience=" + str(untuned.training.patience)

    with pytest.raises(ConfigError, match="nonexistent"):  # a bad variant fails before anything trains
        levers_of(search, best.params, [["model.nonexistent=1"]])
    from ecalf.tune_levers import run_levers

    with pytest.raises(EcalfError, match="no search yet"):
        run_levers(dataclasses.replace(search, output_dir=tmp_path / "elsewhere"), echo=None)

    space = tmp_path / "space.yaml"
    args = ["tune", str(TINY), "--space", str(space), "--trials", "2", "--datasets", str(synthetic_csv)]
    args += ["--horizons", "12", "--few-shot", "40", "--output-dir", str(tmp_path / "search")]
    args += [f"--set={o}" for o in SMALL]
    args += ["--levers", "--lever-set", "training.eval_every_steps=null training.patience=1"]
    assert main([*args, "--snapshot", str(tmp_path / "snapshot")]) == 0
    rows = (tmp_path / "search" / "levers.csv").read_text().splitlines()
    assert (tmp_path / "snapshot" / "levers.csv").read_text().splitlines() == rows  # kept with the study
    assert rows[0] == "variant,tuned,score,change,toy-H12"
    assert rows[1].startswith(f"best trial {best.number},,{best.score:.6f}")
    assert len(rows) == 2 + len(levers)
    assert rows[-1].startswith(
        "training.eval_every_steps=null training.patience=1,training.eval_every_steps=8"
    )
    runs = sorted(p for p in (tmp_path / "search" / "levers").glob("*/*") if p.is_dir())
    assert len(runs) == len(levers)
    for run in runs:  # each variant trained on the cell, validated and never tested
        directory = RunDirectory(run)
        assert directory.has_validation() and not directory.is_finished()
    # the variant's score is its cell's validation ratio: the lever really ran with step validation off
    variant_run = next(r for r in runs if "eval_every_steps=null" in str(r))
    validation = RunDirectory(variant_run).read_validation()
    assert float(rows[-1].split(",")[2]) == pytest.approx(validation.ratio, abs=1e-6)
    ran = RunDirectory(variant_run).read_config()
    assert ran.training.eval_every_steps is None and ran.training.patience == 1
    assert ran.model.loss == best.params["model.loss"]  # every other searched value stays tuned
    assert "levers of trial" in capsys.readouterr().out


def test_the_table_grows_trial_by_trial_and_the_best_recipe_waits_for_the_budget(
    tmp_path, synthetic_csv, monkeypatch
):
    real_fit, calls = ecalf.tune.fit_model, {"n": 0}

    def killed_in_the_third_trial(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(ecalf.tune, "fit_model", killed_in_the_third_trial)
    with pytest.raises(KeyboardInterrupt):
        run_search(settings(tmp_path, synthetic_csv, 4), echo=None)
    rows = (tmp_path / "search" / "trials.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows[1:]] == [["0", "complete"], ["1", "complete"]]
    assert not (tmp_path / "search" / "best.yaml").exists()  # the search has not had its 4 trials
    monkeypatch.setattr(ecalf.tune, "fit_model", real_fit)
    summary = run_search(settings(tmp_path, synthetic_csv, 4), echo=None)
    assert len((tmp_path / "search" / "trials.csv").read_text().splitlines()) == 1 + 4
    assert summary.best_config == tmp_path / "search" / "best.yaml" and summary.best_config.is_file()


def test_a_search_continues_on_a_fresh_machine_from_its_snapshot(tmp_path, synthetic_csv, monkeypatch):
    snapshot = tmp_path / "committed" / "search"
    first = run_search(settings(tmp_path, synthetic_csv, 2, snapshot=snapshot), echo=None)
    assert sorted(p.name for p in snapshot.iterdir()) == [
        "best.yaml",
        "search.yaml",
        "study.db",
        "trials.csv",
    ]
    kept = {t.number: (t.score, t.params) for t in first.trials}
    # the machine is lost: no search directory, only the snapshot
    import shutil

    shutil.rmtree(tmp_path / "search")
    fits = []
    real_fit = ecalf.tune.fit_model

    def counted(*args, **kwargs):
        fits.append(args[0])
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(ecalf.tune, "fit_model", counted)
    lines: list[str] = []
    again = run_search(settings(tmp_path, synthetic_csv, 3, snapshot=snapshot), echo=lines.append)
    assert "continued from the snapshot" in lines[0]
    assert len(fits) == 1  # the two finished trials came from the snapshot; only the third trained
    assert {t.number: (t.score, t.params) for t in again.trials if t.number in kept} == kept
    assert len((snapshot / "trials.csv").read_text().splitlines()) == 1 + 3  # the snapshot follows
    # a snapshot of another search is refused, not mixed in
    shutil.rmtree(tmp_path / "search")
    other = settings(tmp_path, synthetic_csv, 3, snapshot=snapshot, seed=7)
    with pytest.raises(EcalfError, match=r"snapshot .* is of another search"):
        run_search(other, echo=None)


def test_a_trial_another_worker_runs_is_left_to_it_and_counts_towards_the_budget(tmp_path, synthetic_csv):
    """A second process on the same search (another core): a trial RUNNING in the study whose worker
    is alive (holds its lock) is not tried again and counts towards the budget; only the last worker
    to finish writes the best recipe. Once that worker is gone, its trial is tried again."""
    from filelock import FileLock

    run_search(settings(tmp_path, synthetic_csv, 1), echo=None)
    directory = tmp_path / "search"
    first_best = (directory / "best.yaml").read_text()  # the 1-trial search's
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{directory / 'study.db'}")
    other = study.ask(
        {"training.learning_rate": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)}
    )
    lock = FileLock(directory / "locks" / f"trial{other.number:04d}.lock", is_singleton=False)
    lock.acquire()  # the other worker, alive
    lines: list[str] = []
    summary = run_search(settings(tmp_path, synthetic_csv, 3), echo=lines.append)
    assert "1 trial(s) finished, 1 running in other processes" in lines[0]
    assert [t.number for t in summary.trials] == [0, 2]  # one new trial: 1 finished + 1 running + 1 = 3
    assert "still running in other processes" in lines[-1]
    assert summary.best_config is None and (directory / "best.yaml").read_text() == first_best
    lock.release()  # the other worker dies without finishing its trial
    lines.clear()
    again = run_search(settings(tmp_path, synthetic_csv, 3), echo=lines.append)
    assert "2 trial(s) finished, 1 killed trial(s) tried again" in lines[0]
    assert (
        len(again.trials) == 3
        and again.trials[-1].params["training.learning_rate"] == (other.params["training.learning_rate"])
    )
    assert again.best_config is not None and again.best_config.is_file()


def test_two_worker_processes_share_one_search(tmp_path, synthetic_csv):
    """Two `ecalf tune` processes started on one search directory run its budget between them: every
    trial once, none beyond the budget, one best recipe."""
    import subprocess

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    out = tmp_path / "search"
    args = [sys.executable, "-m", "ecalf", "tune", str(TINY), "--space", str(space), "--trials", "4"]
    args += ["--datasets", str(synthetic_csv), "--horizons", "12", "--few-shot", "40"]
    args += ["--output-dir", str(out), *(f"--set={o}" for o in (*SMALL, "training.epochs=1"))]
    workers = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert len({t.params["training.learning_rate"] for t in study.trials}) == 4
    started = [
        line
        for text in outputs
        for line in text.splitlines()
        if line.startswith("trial ") and ": " in line and "(" in line.split(":")[0]
    ]
    assert sorted(int(line.split()[1]) for line in started) == [0, 1, 2, 3]  # each trial run by one worker
    assert (out / "best.yaml").is_file() and len((out / "trials.csv").read_text().splitlines()) == 1 + 4


def test_validate_scores_one_recipe_as_a_trial_and_never_reads_the_test_split(
    tmp_path, synthetic_csv, monkeypatch, capsys
):
    """`ecalf validate`: the recipe fitted on every cell and scored like a trial (the mean of its cells'
    validation ratios, written to validation.csv); a finished cell is reused; no test window is read."""
    from ecalf.recipe_score import score_recipe

    csv2 = synthetic_csv.with_name("toy2.csv")
    csv2.write_bytes(synthetic_csv.read_bytes())
    tests, read = spy_on_test_reads(monkeypatch)
    out = tmp_path / "reference"
    args = ["validate", str(TINY), "--datasets", str(synthetic_csv), str(csv2), "--horizons", "12", "24"]
    args += [
        "--few-shot",
        "40",
        "--output-dir",
        str(out),
        *(f"--set={o}" for o in (*SMALL, "training.epochs=1")),
    ]
    assert main(args) == 0
    assert tests and read and not tests & set(read), "validate read test windows"
    rows = (out / "validation.csv").read_text().splitlines()
    assert rows[0] == "cell,ratio,best_val_mse,naive_val_mse,best_epoch,best_step"
    ratios = {r.split(",")[0]: float(r.split(",")[1]) for r in rows[1:3]}
    assert set(ratios) == {"toy-H12", "toy2-H24"}
    for name, ratio in ratios.items():
        validation = RunDirectory(out / name).read_validation()
        assert ratio == pytest.approx(validation.ratio, abs=1e-6) and validation.prediction_length in (12, 24)
    assert float(rows[3].split(",")[1]) == pytest.approx(sum(ratios.values()) / 2, abs=1e-6)
    assert f"score {sum(ratios.values()) / 2:.4f} (mean over 2 cells)" in capsys.readouterr().out
    fits, real_fit = [], ecalf.tune.fit_model
    monkeypatch.setattr(ecalf.tune, "fit_model", lambda *a, **k: fits.append(a))
    again = score_recipe(
        TINY, cells=((str(synthetic_csv), 12),), overrides=(*SMALL, "training.epochs=1"),
        few_shot_percent=40.0, output_dir=out, echo=None,
    )  # fmt: skip
    assert not fits and again.score == pytest.approx(ratios["toy-H12"])  # the finished cell, reused
    with pytest.raises(ConfigError, match="unknown dataset"):
        score_recipe(TINY, cells=(("Nowhere", 12),), output_dir=out, echo=None)

    monkeypatch.setattr(ecalf.tune, "fit_model", real_fit)
    # {dataset} in the config's name: each cell its own file, as in a grid
    from ecalf.recipe_score import default_output_dir

    recipes = tmp_path / "per-dataset"
    recipes.mkdir()
    import yaml

    (recipes / "toy.yaml").write_text(TINY.read_text())
    own = yaml.safe_load(TINY.read_text())
    own["training"]["learning_rate"] = 0.00123
    (recipes / "toy2.yaml").write_text(yaml.safe_dump(own))
    template = recipes / "{dataset}.yaml"
    assert default_output_dir(template) == Path("runs/validate/per-dataset")
    per_dataset = score_recipe(
        template, cells=((str(synthetic_csv), 12), (str(csv2), 24)), overrides=(*SMALL, "training.epochs=1"),
        few_shot_percent=40.0, output_dir=tmp_path / "per", echo=None,
    )  # fmt: skip
    assert per_dataset.cells["toy-H12"].ratio == pytest.approx(ratios["toy-H12"])  # the same recipe and run
    assert RunDirectory(tmp_path / "per" / "toy2-H24").read_config().training.learning_rate == 0.00123


def test_levers_write_their_table_cell_by_cell_and_a_fresh_machine_continues_from_the_snapshot(
    tmp_path, synthetic_csv, monkeypatch
):
    """levers.csv (and its snapshot copy) grows as each cell finishes, a variant's score blank until
    its cells are all scored; a run killed half-way and continued where its run directories are gone
    trains only what the table does not hold, and ends with the table a run without a stop writes."""
    import shutil

    import ecalf.tune_levers
    from ecalf.tune_levers import run_levers

    cells = ((str(synthetic_csv), 12), (str(synthetic_csv), 16))
    snapshot = tmp_path / "snapshot"
    search = settings(tmp_path, synthetic_csv, 2, cells=cells, snapshot=snapshot)
    run_search(search, echo=None)
    variants = [["training.patience=1"], ["training.eval_every_steps=null"]]
    whole = run_levers(search, variants, echo=None)
    expected = (search.directory / "levers.csv").read_text()
    assert (snapshot / "levers.csv").read_text() == expected
    shutil.rmtree(search.directory / "levers")
    for folder in (search.directory, snapshot):  # as before the levers ran
        (folder / "levers.csv").unlink()

    real, trained = ecalf.tune_levers.validate_cell, []

    def killed_after_three(config, run_dir, report=None):
        if len(trained) == 3:
            raise KeyboardInterrupt
        trained.append(run_dir)
        return real(config, run_dir, report)

    monkeypatch.setattr(ecalf.tune_levers, "validate_cell", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_levers(search, variants, echo=None)
    rows = [line.split(",") for line in (snapshot / "levers.csv").read_text().splitlines()]
    first, second = rows[2], rows[3]
    assert first[2] and first[4] and first[5]  # two cells scored: the variant's score
    assert second[2] == "" and second[3] == "" and second[4] and second[5] == ""  # one of two: no score yet

    shutil.rmtree(search.directory)  # a fresh machine: only the committed snapshot is left
    run_search(search, echo=None)  # as `ecalf tune ... --levers` does: the study back, no trial run
    trained.clear()
    monkeypatch.setattr(
        ecalf.tune_levers, "validate_cell", lambda *a, **k: trained.append(a[1]) or real(*a, **k)
    )
    again = run_levers(search, variants, echo=None)
    assert len(trained) == 2 * len(whole.outcomes) - 3  # only what the snapshot's table did not hold
    assert (search.directory / "levers.csv").read_text() == expected
    for now, before in zip(again.outcomes, whole.outcomes, strict=True):
        assert now.ratios == pytest.approx(before.ratios, abs=1e-6)

    other = dataclasses.replace(search, seed=7, output_dir=tmp_path / "other")  # another search's table
    assert ecalf.tune_levers._earlier_ratios(other, whole.best_trial + 1, ["toy-H12", "toy-H16"]) == {}
