"""Bad inputs get clear errors, never a traceback; only safe formats are read; runs are reproducible.

Each test here is a row of the table in docs/reliability.md (rows covered elsewhere name their test
there). CLI rows go through ``ecalf.cli.main``: exit status 2 and one ``ecalf: error: ...`` line.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import pathlib
import pickle
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors import safe_open

from ecalf.cli import main
from ecalf.data import write_synthetic_csv
from ecalf.errors import EcalfError

ROOT = Path(__file__).resolve().parents[1]
TINY_CALF = str(ROOT / "configs/tiny/calf.yaml")
DLINEAR = str(ROOT / "configs/baselines/dlinear.yaml")
COMMON = [
    "data.context_length=24", "data.prediction_length=8", "data.few_shot_percent=100",
    "training.epochs=1", "training.progress=false", "training.num_threads=1",
]  # fmt: skip


def _train_args(config: str, csv: Path, output_dir: Path, *extra: str) -> list[str]:
    sets = [f"data.dataset={csv}", *COMMON, *extra]
    args = ["train", "--config", config, "--output-dir", str(output_dir), "--quiet"]
    return args + [arg for item in sets for arg in ("--set", item)]


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], *patterns: str) -> str:
    """Run the CLI; it must exit 2 with one `ecalf: error:` message matching every pattern."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("ecalf: error: ") and "Traceback" not in err, err
    for pattern in patterns:
        assert re.search(pattern, err), f"{pattern!r} not in {err!r}"
    return err


def _succeeds(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@pytest.fixture(scope="module")
def toy_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("reliability_data")
    return write_synthetic_csv(directory / "toy.csv", num_rows=200, num_channels=3, seed=3)


@pytest.fixture(scope="module")
def calf_run(tmp_path_factory: pytest.TempPathFactory, toy_csv: Path) -> Path:
    """A finished tiny CALF run (1 epoch); tests that damage it work on a copy."""
    run_dir = tmp_path_factory.mktemp("reliability_runs") / "calf"
    assert main(_train_args(TINY_CALF, toy_csv, run_dir)) == 0
    return run_dir


@pytest.fixture(scope="module")
def dlinear_run(tmp_path_factory: pytest.TempPathFactory, toy_csv: Path) -> Path:
    """A finished tiny DLinear run (2 epochs)."""
    run_dir = tmp_path_factory.mktemp("reliability_runs") / "dlinear"
    assert main(_train_args(DLINEAR, toy_csv, run_dir, "training.epochs=2")) == 0
    return run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def test_missing_data_file(tmp_path, capsys):
    missing = tmp_path / "missing.csv"
    _fails(capsys, _train_args(DLINEAR, missing, tmp_path / "run"), r"missing\.csv: file not found")
    assert not (tmp_path / "run").exists()  # data is checked before the run directory is created


def test_nan_in_the_data_is_an_error_naming_column_and_row(tmp_path, toy_csv, capsys):
    data = pd.read_csv(toy_csv)
    data.loc[50, "x1"] = float("nan")
    data.to_csv(tmp_path / "holes.csv", index=False)
    _fails(
        capsys,
        _train_args(DLINEAR, tmp_path / "holes.csv", tmp_path / "run"),
        r"holes\.csv: column 'x1', row 51 \(line 52\): missing value \(empty or NaN\); fill or drop",
    )
    assert not (tmp_path / "run").exists()


def test_irregular_timestamps_are_used_as_consecutive_rows_by_train(tmp_path, toy_csv, capsys):
    gappy = tmp_path / "gappy.csv"
    pd.read_csv(toy_csv).drop(index=[60, 61]).to_csv(gappy, index=False)
    argv = ["data", "info", str(gappy), "--context-length", "24", "--prediction-length", "8"]
    out = _succeeds(capsys, argv)
    assert re.search(r"rows\s+198\b", out) and re.search(r"frequency\s+h\b", out)  # the usual step


# --------------------------------------------------------------------------------------------------
# Config, model and backbone
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("data.prediction_length=0", r"prediction_length must be a positive integer, got 0"),
        ("training.epochs=abc", r"training\.epochs must be an integer, got str 'abc'"),
        ("training.learning_rate=[1]", r"training\.learning_rate must be a number"),
    ],
    ids=["horizon-0", "wrong-type-int", "wrong-type-float"],
)
def test_bad_config_values_via_set(override, pattern, tmp_path, toy_csv, capsys):
    _fails(capsys, _train_args(DLINEAR, toy_csv, tmp_path / "run", override), pattern)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (None, r"nope\.yaml does not exist"),
        ("data: [unclosed\n", r"bad\.yaml is not valid YAML"),
        ("model:\n  name: dlinear\n  moving_averag: 5\n", r"unknown key 'model\.moving_averag'"),
    ],
    ids=["missing-file", "yaml-syntax", "unknown-key-in-file"],
)
def test_bad_config_files(text, pattern, tmp_path, capsys):
    path = tmp_path / ("nope.yaml" if text is None else "bad.yaml")
    if text is not None:
        path.write_text(text)
    _fails(capsys, ["train", "--config", str(path), "--output-dir", str(tmp_path / "run")], pattern)


def _yaml_payload(marker: Path) -> str:
    return f"model: !!python/object/apply:os.mknod ['{marker}']\n"


def test_yaml_with_a_python_tag_is_refused_without_executing(tmp_path, capsys):
    live = tmp_path / "live"
    yaml.unsafe_load(_yaml_payload(live))  # the payload is real: an unsafe loader runs it
    assert live.exists()
    marker, config = tmp_path / "marker", tmp_path / "evil.yaml"
    config.write_text(_yaml_payload(marker))
    _fails(capsys, ["train", "--config", str(config)], r"evil\.yaml is not valid YAML: could not determine")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["train"], r"give --config FILE \(or --resume RUN_DIR"),
        (["train", "--resume", "{tmp}"], r"is not a run directory \(no config\.yaml\); nothing to resume"),
        (
            ["train", "--resume", "{tmp}", "--set", "seed=1"],
            r"--resume continues a run with its own saved config",
        ),
    ],
    ids=["no-config", "resume-not-a-run", "resume-with-set"],
)
def test_bad_train_invocations(argv, pattern, tmp_path, capsys):
    _fails(capsys, [a.replace("{tmp}", str(tmp_path)) for a in argv], pattern)


def test_unknown_backbone_preset_path(tmp_path, toy_csv, capsys):
    argv = _train_args(TINY_CALF, toy_csv, tmp_path / "run", "model.backbone.preset=./nope")
    _fails(capsys, argv, r"backbone\.preset './nope' looks like a path but is no directory or \.gguf file")


@pytest.mark.timeout(120)
def test_unknown_backbone_name(tmp_path, toy_csv, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no retries, no network
    argv = _train_args(TINY_CALF, toy_csv, tmp_path / "run", "model.backbone.preset=no-such-model-xyz")
    _fails(
        capsys,
        argv,
        r"cannot read the config of Hugging Face hub id 'no-such-model-xyz'",
        r"is no preset \(gpt2, smollm2-135m, tiny-gpt2, tiny-llama\), existing directory or \.gguf file",
    )


def test_more_channels_than_backbone_positions(tmp_path, capsys):
    wide = write_synthetic_csv(tmp_path / "wide.csv", num_rows=200, num_channels=70, seed=1, decimals=0)
    _fails(
        capsys,
        _train_args(TINY_CALF, wide, tmp_path / "run"),
        r"the data has 70 channels but backbone 'tiny-gpt2' has only 64 learned positions",
        r"gpt2: 1024",
    )
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert "epoch" not in (tmp_path / "run" / "train.log").read_text()  # refused before training


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_requested_without_a_gpu(tmp_path, toy_csv, capsys):
    argv = _train_args(DLINEAR, toy_csv, tmp_path / "run", "training.device=cuda")
    _fails(capsys, argv, r"training\.device='cuda' but no CUDA device is available; use 'cpu' or 'auto'")


def test_evaluate_refuses_data_with_other_channels(tmp_path, capsys):
    csv = write_synthetic_csv(tmp_path / "changing.csv", num_rows=200, num_channels=3, seed=2)
    _succeeds(capsys, _train_args(DLINEAR, csv, tmp_path / "run"))
    write_synthetic_csv(csv, num_rows=200, num_channels=4, seed=2)  # the file changed since training
    _fails(
        capsys,
        ["evaluate", str(tmp_path / "run"), "--quiet"],
        r"changing\.csv: the run in .* was trained on 3 channels but the data now has 4 \(x0, x1, x2, OT\)",
    )
    # the test-window plot loads the run the same way: the same error, and no PNG
    from ecalf.errors import DataError
    from ecalf.plots import plot_run_test_windows

    with pytest.raises(DataError, match="was trained on 3 channels but the data now has 4"):
        plot_run_test_windows(tmp_path / "run", tmp_path / "windows.png")
    assert not (tmp_path / "windows.png").exists()


# --------------------------------------------------------------------------------------------------
# Checkpoints: only safetensors / JSON / YAML are read, never pickle
# --------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker``: proof that a loader executed the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _write_pickle(path: Path, marker: Path, kind: str) -> None:
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"head.weight": _Payload(marker)}))
    else:  # the zip archive torch.save writes, which torch.load(weights_only=False) unpickles
        torch.save({"head.weight": _Payload(marker)}, path)


def _unpickle(path: Path, kind: str) -> None:
    if kind == "pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_pickle_payload_named_safetensors_is_refused_without_executing(kind, calf_run, tmp_path, capsys):
    live, live_marker = tmp_path / "live.bin", tmp_path / "live-marker"
    _write_pickle(live, live_marker, kind)
    _unpickle(live, kind)  # the payload is real: unpickling it runs it
    assert live_marker.exists()

    run_dir, marker = _copy(calf_run, tmp_path), tmp_path / "marker"
    _write_pickle(run_dir / "model.safetensors", marker, kind)
    _fails(
        capsys,
        ["evaluate", str(run_dir), "--quiet"],
        r"model\.safetensors is not a readable safetensors file .*truncated or corrupted",
    )
    assert not marker.exists()


def test_truncated_checkpoint(calf_run, tmp_path, capsys):
    run_dir = _copy(calf_run, tmp_path)
    weights = run_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _fails(capsys, ["evaluate", str(run_dir)], r"model\.safetensors is not a readable safetensors file")


def test_missing_checkpoint(calf_run, tmp_path, capsys):
    run_dir = _copy(calf_run, tmp_path)
    (run_dir / "model.safetensors").unlink()
    _fails(capsys, ["evaluate", str(run_dir)], r"checkpoint .*model\.safetensors does not exist")


def test_checkpoint_of_another_model(calf_run, dlinear_run, tmp_path, capsys):
    run_dir = _copy(calf_run, tmp_path)
    shutil.copyfile(dlinear_run / "model.safetensors", run_dir / "model.safetensors")
    _fails(
        capsys,
        ["evaluate", str(run_dir)],
        r"model\.safetensors does not match the model in .*config\.yaml \(unexpected: \['seasonal",
        r"it belongs to another model or config",
    )


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


UNSAFE_CALLS = {"torch.load", "pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load"}
UNSAFE_CALLS |= {"yaml.full_load", "numpy.load", "np.load"}
UNSAFE_MODULES = {"pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def test_no_unpickling_call_anywhere_in_the_package():
    found = []
    for path in sorted((ROOT / "src" / "ecalf").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                name = _dotted(node.func)
                keywords = {k.arg: k.value for k in node.keywords}
                allow = keywords.get("allow_pickle")
                if name in UNSAFE_CALLS:
                    found.append(f"{where} {name}")
                elif isinstance(allow, ast.Constant) and allow.value is True:
                    found.append(f"{where} allow_pickle=True")
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                found += [f"{where} import {m}" for m in names if (m or "").split(".")[0] in UNSAFE_MODULES]
    assert found == []


# --------------------------------------------------------------------------------------------------
# Output directory
# --------------------------------------------------------------------------------------------------


def test_read_only_output_directory(tmp_path, toy_csv, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("permissions are not enforced for this user (root); see test_disk_full_*")
        _fails(
            capsys,
            _train_args(DLINEAR, toy_csv, locked / "run"),
            r"cannot create the run directory .*locked/run: Permission denied\. Choose a writable",
        )
    finally:
        locked.chmod(0o700)


def test_output_directory_under_a_file(tmp_path, toy_csv, capsys):
    (tmp_path / "notes.txt").write_text("not a directory")
    argv = _train_args(DLINEAR, toy_csv, tmp_path / "notes.txt" / "run")
    _fails(capsys, argv, r"cannot create the run directory .*notes\.txt/run: Not a directory")


def test_disk_full_while_writing_the_checkpoint(tmp_path, toy_csv, capsys, monkeypatch):
    real_replace = os.replace

    def full_disk(src, dst, *args, **kwargs):
        if Path(dst).name == "model.safetensors":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk)
    run_dir = tmp_path / "run"
    _fails(
        capsys,
        _train_args(DLINEAR, toy_csv, run_dir),
        r"cannot write .*model\.safetensors: No space left on device\. Check free space and permissions",
    )
    assert [p.name for p in run_dir.rglob("*.tmp")] == []  # the temporary file was removed
    assert not (run_dir / "model.safetensors").exists()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["name"] == "dlinear"


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomically_written_files_get_the_mode_of_a_plain_open(umask, tmp_path):
    """Not mkstemp's 0600: results and models stay readable by the group when the umask says so."""
    from ecalf.artifacts import save_tensors, write_json, write_text

    old = os.umask(umask)
    try:
        paths = [
            write_text(tmp_path / "a.txt", "x"),
            write_json(tmp_path / "b.json", {"a": 1}),
            save_tensors(tmp_path / "c.safetensors", {"w": torch.zeros(2)}),
        ]
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    expected = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert expected == 0o666 & ~umask
    for path in paths:
        assert Path(path).stat().st_mode & 0o777 == expected, path


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path, toy_csv, capsys, monkeypatch):
    from ecalf.models.dlinear import DLinear

    run_dir = tmp_path / "run"
    original = DLinear.forward

    def forward(self, past_values, future_values=None):
        output = original(self, past_values, future_values)
        if self.training and (run_dir / "model.safetensors").is_file():  # after the first good epoch
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(DLinear, "forward", forward)
    _fails(
        capsys,
        _train_args(DLINEAR, toy_csv, run_dir, "training.epochs=3"),
        r"the training loss became nan at epoch 2, step \d+; the best weights \(epoch 1\) were kept\. "
        r"Lower training\.learning_rate",
    )
    monkeypatch.undo()
    assert not (run_dir / "metrics.json").exists()
    with safe_open(str(run_dir / "model.safetensors"), "pt") as weights:
        assert weights.metadata() == {"epoch": "1"}
    assert json.loads((run_dir / "state" / "latest.json").read_text())["loop"]["epoch"] == 1
    out = _succeeds(capsys, ["evaluate", str(run_dir), "--quiet"])  # the kept checkpoint is usable
    assert out.startswith("test mse ")


def test_loss_overflow_in_the_first_epoch(tmp_path, toy_csv, capsys):
    run_dir = tmp_path / "run"
    _fails(
        capsys,
        _train_args(DLINEAR, toy_csv, run_dir, "training.learning_rate=1e30"),
        r"the training loss became (inf|nan) at epoch 1, step \d+; no epoch had finished",
    )
    assert not (run_dir / "model.safetensors").exists() and not (run_dir / "metrics.json").exists()


@pytest.mark.parametrize("model", ["dlinear", "calf"])
def test_same_seed_same_cpu_same_metrics(model, calf_run, dlinear_run, tmp_path, toy_csv):
    first = calf_run if model == "calf" else dlinear_run
    config, extra = (TINY_CALF, []) if model == "calf" else (DLINEAR, ["training.epochs=2"])
    assert main(_train_args(config, toy_csv, tmp_path / "again", *extra)) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (first, tmp_path / "again"))
    assert a["test"] == b["test"]  # exact float equality
    assert [r["val_mse"] for r in a["history"]] == [r["val_mse"] for r in b["history"]]
    weights = [(d / "model.safetensors").read_bytes() for d in (first, tmp_path / "again")]
    assert weights[0] == weights[1]


def test_torch_dropout_masks_are_another_draw(calf_run, tmp_path, toy_csv):
    """``training.dropout_masks`` decides the masks (the default ``fast`` is what the test above
    reproduces); ``torch`` trains with torch's own and so ends elsewhere from the same seed."""
    run_dir = tmp_path / "torch_masks"
    assert main(_train_args(TINY_CALF, toy_csv, run_dir, "training.dropout_masks=torch")) == 0
    assert (run_dir / "model.safetensors").read_bytes() != (calf_run / "model.safetensors").read_bytes()
    assert "dropout_masks: torch" in (run_dir / "config.yaml").read_text()


# --------------------------------------------------------------------------------------------------
# The table itself
# --------------------------------------------------------------------------------------------------


def test_every_row_of_the_table_names_an_existing_test():
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "::" in line]
    assert len(rows) >= 22
    for row in rows:
        for file, name in re.findall(r"`(tests/test_\w+\.py)::(\w+)(?:\[[^\]]*\])?`", row) or [("", "")]:
            assert file, f"row names no test: {row}"
            source = (ROOT / file).read_text(encoding="utf-8")
            assert re.search(rf"^def {name}\(", source, re.M), f"{file}::{name} does not exist"


def test_a_backbone_directory_with_only_a_pickled_checkpoint_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from ecalf.backbones import BackboneConfig, load_pretrained_weights
    from ecalf.errors import BackboneError

    config = GPT2Config(
        vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config)
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(BackboneError, match=r"no file named model\.safetensors"):
        load_pretrained_weights(
            BackboneConfig(preset=str(tmp_path), num_layers=1, num_principal_embeddings=8)
        )


def test_output_into_a_closed_pipe_stops_quietly():
    """`ecalf ... | head`: when the reader has gone, the command stops with 141 and no traceback."""
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-m", "ecalf", "list-models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # long before the child's imports are done and it writes
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141 and "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_writing_onto_a_directory_says_so(tmp_path):
    from ecalf.artifacts import write_text

    with pytest.raises(EcalfError, match="it is a directory; give the path of a file instead"):
        write_text(tmp_path, "forecast")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_ecalf_warnings_print_as_one_line_on_the_command_line(tmp_path, capsys):
    import warnings

    path = write_synthetic_csv(tmp_path / "toy.csv", num_rows=300, num_channels=2, seed=1)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:50], lines[49], *lines[50:]]) + "\n")  # one row repeated exactly
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["data", "info", str(path), "--context-length", "24", "--prediction-length", "12"]) == 0
    err = capsys.readouterr().err
    assert "ecalf: warning: " in err and "repeat the previous row exactly" in err and "UserWarning" not in err
    assert warnings.showwarning is before  # the command leaves Python's warning display as it found it
