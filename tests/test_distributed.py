"""Data-parallel training (torch.distributed, Gloo on the CPU) and the bf16 switch.

The end-to-end test launches `torchrun --nproc-per-node 2 -m ecalf train` on a tiny CALF and compares
it with one process taking the same global batch. The others fork worker processes from this one
(they inherit its imports, so they start in milliseconds) that join a Gloo group through a file.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from ecalf import training
from ecalf.config import TrainingConfig
from ecalf.config_files import load_run_config
from ecalf.data import WindowDataset, write_synthetic_csv
from ecalf.distributed import SINGLE, World, all_reduce_sum, current_world, shard
from ecalf.errors import ConfigError, EcalfError
from ecalf.evaluation import autocast, evaluate
from ecalf.models.dlinear import DLinear, DLinearConfig
from ecalf.models.patchtst import PatchTST, PatchTSTConfig
from ecalf.run import run_experiment
from ecalf.training import TrainingCheckpoint, TrainingDiverged, train

ROOT = Path(__file__).resolve().parents[1]
TINY_CALF = ROOT / "configs/tiny/calf.yaml"

pytestmark = [
    pytest.mark.skipif(not dist.is_gloo_available(), reason="torch built without Gloo"),
    pytest.mark.skipif(sys.platform == "win32", reason="the ranks are forked processes"),
]


# --------------------------------------------------------------------------------------------------
# Forked ranks
# --------------------------------------------------------------------------------------------------


def _rank_main(rank: int, size: int, directory: str, fn: Callable[[World, Path], Any]) -> None:
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=rank, world_size=size)
    try:
        result = fn(current_world(), Path(directory))
    finally:
        dist.destroy_process_group()
    (Path(directory) / f"rank{rank}.json").write_text(json.dumps(result))


@functools.cache
def _warm_up() -> None:
    """One optimizer step here, so that forked ranks inherit what its first call imports (seconds)."""
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(layer.parameters())
    layer(torch.ones(1, 2)).sum().backward()
    optimizer.step()


def _on_ranks(size: int, directory: Path, fn: Callable[[World, Path], Any]) -> list[Any]:
    """Run ``fn(world, directory)`` in ``size`` forked processes of one Gloo group; their JSON results."""
    _warm_up()
    directory.mkdir(parents=True, exist_ok=True)
    torch.multiprocessing.start_processes(
        _rank_main, args=(size, str(directory), fn), nprocs=size, start_method="fork"
    )
    return [json.loads((directory / f"rank{r}.json").read_text()) for r in range(size)]


def _series(rows: int, channels: int = 2, seed: int = 0) -> torch.Tensor:
    t = torch.arange(rows, dtype=torch.float32)[:, None]  # (T, 1)
    noise = torch.randn(rows, channels, generator=torch.Generator().manual_seed(seed))
    return torch.sin(t / 5 + torch.arange(channels)) + 0.3 * noise  # (T, C)


# --------------------------------------------------------------------------------------------------
# Sharding and metric reduction
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("num_windows", [0, 1, 2, 5, 7, 64])
def test_shards_partition_the_windows_without_padding(num_windows, size):
    indices = torch.randperm(num_windows)
    parts = [shard(indices, World(rank, size)) for rank in range(size)]
    assert torch.equal(torch.cat(parts), indices)  # every window once, in order, nothing padded
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


# (rows, windows): L 6 and H 3 give rows - 8 windows; on 3 ranks, shards of 3 / 3 / 2 windows (with
# batch 2, batches of 2 and 1) and of 1 / 1 / 0 (the third rank evaluates nothing).
EVAL_CASES = ((16, 8), (10, 2))


def _tiny_dlinear() -> DLinear:
    torch.manual_seed(0)
    return DLinear(DLinearConfig(context_length=6, prediction_length=3, num_channels=2))


def _evaluate_uneven(world: World, directory: Path) -> dict[str, Any]:
    model = _tiny_dlinear()
    out: dict[str, Any] = {
        str(rows): evaluate(
            model, WindowDataset(_series(rows, seed=rows), 6, 3), batch_size=2, world=world
        ).as_dict()
        for rows, _ in EVAL_CASES
    }
    out["sum"] = all_reduce_sum(torch.tensor([float(world.rank + 1)], dtype=torch.float64), world).item()
    return out


def test_metrics_reduced_over_uneven_shards_equal_one_process(tmp_path):
    """3 ranks with shards of different sizes (one empty) give the one-process metrics and counts."""
    results = _on_ranks(3, tmp_path, _evaluate_uneven)
    assert results[0] == results[1] == results[2]  # every rank returns the whole dataset's metrics
    assert results[0]["sum"] == 1.0 + 2.0 + 3.0
    model = _tiny_dlinear()
    for rows, windows in EVAL_CASES:
        dataset = WindowDataset(_series(rows, seed=rows), 6, 3)
        one = evaluate(model, dataset, batch_size=len(dataset))
        reduced = results[0][str(rows)]
        assert reduced["windows"] == one.windows == windows
        # float64 sums of float32 errors, added in another order; the ranks' batches differ from the one
        # process's, and on some CPUs a batch's size changes the last bits of a float32 forward pass. A
        # wrong reduction (a mean of the shards' means: 3 / 3 / 2 windows) is off by far more than 1e-6.
        assert reduced["mse"] == pytest.approx(one.mse, rel=1e-6)
        assert reduced["mae"] == pytest.approx(one.mae, rel=1e-6)


# --------------------------------------------------------------------------------------------------
# The training loop on two ranks
# --------------------------------------------------------------------------------------------------

TRAIN_ROWS, VAL_ROWS, L, H = 40, 20, 6, 3  # 32 training windows, 12 validation windows


def _toy_training(train_rows: int, world: World, directory: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model = DLinear(DLinearConfig(context_length=L, prediction_length=H, num_channels=2))
    config = TrainingConfig(epochs=3, batch_size=5, eval_batch_size=4, learning_rate=1e-2, progress=False)
    calls: list[str] = []
    result = train(
        model,
        WindowDataset(_series(train_rows), L, H),
        WindowDataset(_series(VAL_ROWS, seed=1), L, H),
        config,
        seed=3,
        log=lambda line: calls.append("log"),
        on_improvement=lambda m, r: calls.append("improvement"),
        on_epoch_end=lambda r: calls.append("epoch_end"),
        checkpoint=TrainingCheckpoint(directory / f"state{world.rank}"),
        world=world,
    )
    return {
        "history": [(r.train_loss, r.val_mse, r.steps) for r in result.history],
        "weights": [p.detach().flatten().tolist() for p in model.parameters()],
        "calls": calls,
        "saved": sorted(p.name for p in (directory / f"state{world.rank}").glob("*")),
    }


@pytest.mark.parametrize(
    ("size", "train_rows"),
    [
        (2, 41),  # 33 windows, global batch 10: the last batch of 3 is split 2 / 1 (weights 4/3, 2/3)
        (3, 40),  # 32 windows, global batch 15: the last batch of 2 is split 1 / 1 / 0 (zero weight)
    ],
)
def test_training_on_ranks_matches_one_process_with_the_same_global_batch(tmp_path, size, train_rows):
    ranks = _on_ranks(size, tmp_path / "ranks", functools.partial(_toy_training, train_rows))
    torch.manual_seed(0)
    model = DLinear(DLinearConfig(context_length=L, prediction_length=H, num_channels=2))
    one = train(
        model,
        WindowDataset(_series(train_rows), L, H),
        WindowDataset(_series(VAL_ROWS, seed=1), L, H),
        TrainingConfig(epochs=3, batch_size=5 * size, eval_batch_size=4, learning_rate=1e-2, progress=False),
        seed=3,
        log=lambda line: None,
    )
    main = ranks[0]
    for rank in ranks[1:]:  # identical weights and history on every rank
        assert rank["weights"] == main["weights"] and rank["history"] == main["history"]
    # DLinear has no dropout: the runs differ only in float summation order (float32 gradients
    # averaged over ranks instead of over one batch), ~1e-7 relative per step.
    for (loss, val, steps), record in zip(main["history"], one.history, strict=True):
        assert steps == record.steps
        assert loss == pytest.approx(record.train_loss, rel=1e-5)
        assert val == pytest.approx(record.val_mse, rel=1e-5)
    flat = [w for p in model.parameters() for w in p.detach().flatten().tolist()]
    assert [w for p in main["weights"] for w in p] == pytest.approx(flat, rel=1e-4, abs=1e-6)
    # Only rank 0 logs, calls back and writes checkpoints.
    assert main["calls"].count("epoch_end") == 3 and "log" in main["calls"]
    assert main["saved"] == ["epoch-0003.safetensors", "latest.json"]
    assert all(rank["calls"] == [] and rank["saved"] == [] for rank in ranks[1:])


def _diverging_training(world: World, directory: Path) -> str:
    torch.manual_seed(0)
    model = DLinear(DLinearConfig(context_length=L, prediction_length=H, num_channels=2))
    forward, steps = model.forward, []

    def poisoned(past: torch.Tensor, future: torch.Tensor | None = None) -> Any:
        output = forward(past, future)
        if future is not None:  # a training step (4 per epoch)
            steps.append(1)
        if world.rank == 1 and len(steps) == 6 and future is not None:  # only rank 1: epoch 2, step 6
            output.loss = output.loss * float("nan")
        return output

    model.forward = poisoned  # type: ignore[method-assign]
    config = TrainingConfig(epochs=3, batch_size=5, eval_batch_size=4, progress=False)
    train_set, val_set = WindowDataset(_series(TRAIN_ROWS), L, H), WindowDataset(_series(VAL_ROWS), L, H)
    try:
        train(model, train_set, val_set, config, seed=3, log=lambda line: None, world=world)
    except TrainingDiverged as exc:
        return str(exc)
    return "no error"


def test_a_nan_on_one_rank_stops_every_rank_alike(tmp_path):
    messages = _on_ranks(2, tmp_path, _diverging_training)
    assert messages[0] == messages[1]
    assert messages[0].startswith(
        "the training loss became nan at epoch 2, step 6; the best weights (epoch 1)"
    )


def _resumable_training(state: Path, interrupt: bool, world: World, directory: Path) -> Any:
    """A PatchTST with dropout and BatchNorm on 2 ranks, checkpointed in ``state``; with ``interrupt``,
    every rank is stopped during the third epoch's validation (as a kill would stop them)."""
    if interrupt:  # this forked process's own module
        original, calls = training.evaluate, []

        def failing(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        training.evaluate = failing
    torch.manual_seed(0)
    config = PatchTSTConfig(
        context_length=8, prediction_length=3, num_channels=2, patch_length=4, patch_stride=2,
        d_model=8, num_heads=2, num_layers=1, ff_dim=16, dropout=0.3,
    )  # fmt: skip
    model = PatchTST(config)
    train_set, val_set = WindowDataset(_series(60), 8, 3), WindowDataset(_series(30, seed=1), 8, 3)
    settings = TrainingConfig(epochs=4, batch_size=8, eval_batch_size=8, progress=False)
    try:
        result = train(
            model, train_set, val_set, settings, seed=5, log=lambda line: None,
            checkpoint=TrainingCheckpoint(state), world=world,
        )  # fmt: skip
    except KeyboardInterrupt:
        return "interrupted"
    return {
        "history": [(r.train_loss, r.val_mse) for r in result.history],
        "weights": [p.detach().flatten().tolist() for p in model.parameters()],
    }


def test_resume_on_ranks_matches_an_uninterrupted_run(tmp_path):
    """All ranks resume from rank 0's checkpoint; dropout masks (seeded per epoch and rank) repeat."""
    whole = _on_ranks(2, tmp_path / "a", functools.partial(_resumable_training, tmp_path / "s1", False))
    cut = _on_ranks(2, tmp_path / "b", functools.partial(_resumable_training, tmp_path / "s2", True))
    assert cut == ["interrupted", "interrupted"]
    assert json.loads((tmp_path / "s2" / "latest.json").read_text())["loop"]["epoch"] == 2
    with pytest.raises(EcalfError, match=r"holds a run of 2 process\(es\).*resume it with as many"):
        _resumable_training(tmp_path / "s2", False, SINGLE, tmp_path)  # one process cannot continue it
    resumed = _on_ranks(2, tmp_path / "c", functools.partial(_resumable_training, tmp_path / "s2", False))
    assert resumed[0] == resumed[1] == whole[0] == whole[1]  # exact: same ranks, same reduction order


# --------------------------------------------------------------------------------------------------
# torchrun, end to end
# --------------------------------------------------------------------------------------------------


def _overrides(csv: Path, batch_size: int) -> list[str]:
    # tiny-llama has no dropout inside its blocks; with CALF's dropout and LoRA dropout off too, the
    # runs are deterministic up to the float summation order.
    return [
        f"data.dataset={csv}", "data.context_length=24", "data.prediction_length=8",
        "data.few_shot_percent=100", "training.epochs=2", "training.patience=2",
        "training.num_threads=1", "training.progress=false", f"training.batch_size={batch_size}",
        "model.backbone.preset=tiny-llama", "model.dropout=0", "model.backbone.lora_dropout=0",
    ]  # fmt: skip


def _summary(metrics: dict[str, Any]) -> list[float]:
    test = metrics["test"]
    history = [v for r in metrics["history"] for v in (r["train_loss"], r["val_mse"], r["val_mae"])]
    return [test["mse"], test["mae"], *history]


@pytest.mark.timeout(240)
def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    # 400 rows, L 24, H 8: 249 training windows (global batch 32: 7 full batches and one of 25, split
    # 13 / 12), 33 validation and 73 test windows (shards 37 / 36).
    csv = write_synthetic_csv(tmp_path / "toy.csv", num_rows=400, num_channels=3, seed=3)
    run_dir = tmp_path / "ddp"
    sets = [arg for item in _overrides(csv, 16) for arg in ("--set", item)]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "ecalf", "train", "--config", str(TINY_CALF), "--output-dir", str(run_dir), *sets,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    # Meanwhile, in this process: the same global batch (32), and a different one (16).
    one = run_experiment(
        load_run_config(TINY_CALF, _overrides(csv, 32)), tmp_path / "one", echo=None
    ).metrics.to_json()
    other = run_experiment(
        load_run_config(TINY_CALF, _overrides(csv, 16)), tmp_path / "b16", echo=None
    ).metrics.to_json()
    output = process.communicate(timeout=200)[0].decode()
    assert process.returncode == 0, output
    ddp = json.loads((run_dir / "metrics.json").read_text())

    # Float32 summation order is the only difference: observed ~1e-7 relative after 16 Adam steps.
    assert _summary(ddp) == pytest.approx(_summary(one), rel=1e-5)
    assert ddp["steps"] == one["steps"] == 16
    # ... while another global batch changes the result by far more than the tolerance.
    assert _summary(other)[:2] != pytest.approx(_summary(one)[:2], rel=1e-3)
    # Every test window counted exactly once.
    assert ddp["test"]["windows"] == one["test"]["windows"] == ddp["windows"]["test"] == 73
    assert ddp["environment"]["world_size"] == 2 and one["environment"]["world_size"] == 1

    # Only rank 0 wrote and logged: one run directory, each epoch tracked and logged once.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b16", "ddp", "one", "toy.csv"]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.yaml", "metrics.json", "metrics.jsonl", "model.safetensors", "train.log",
    ]  # fmt: skip
    tracked = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row.get("epoch", "final") for row in tracked] == [1, 2, "final"]
    log = (run_dir / "train.log").read_text()
    assert log.count("epoch   1 |") == log.count("epoch   2 |") == 1
    assert output.count("epoch   1 |") == 1 and output.count("2 processes") == 1


# --------------------------------------------------------------------------------------------------
# World detection, precision
# --------------------------------------------------------------------------------------------------


def test_world_from_the_torchrun_environment():
    assert current_world({}) == SINGLE
    assert current_world({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == World(1, 4, 1)
    assert World(1, 4).is_distributed and not World(1, 4).is_main and SINGLE.is_main
    with pytest.raises(EcalfError, match="RANK is not"):
        current_world({"WORLD_SIZE": "2"})
    with pytest.raises(EcalfError, match="WORLD_SIZE='two' must be an integer"):
        current_world({"RANK": "0", "WORLD_SIZE": "two"})
    with pytest.raises(EcalfError, match="invalid torchrun environment"):
        current_world({"RANK": "2", "WORLD_SIZE": "2"})


def test_precision_is_a_strict_config_switch():
    assert TrainingConfig().precision == "fp32"
    with pytest.raises(ConfigError, match=r"training\.precision"):
        load_run_config(TINY_CALF, ["training.precision=fp16"])
    with pytest.raises(ConfigError, match=r"training\.precision"):
        TrainingConfig(precision="half")  # type: ignore[arg-type]
    with autocast("bf16", "cpu"):
        assert torch.nn.Linear(4, 2)(torch.randn(3, 4)).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert torch.nn.Linear(4, 2)(torch.randn(3, 4)).dtype == torch.float32


def test_bf16_trains_a_tiny_calf_on_the_cpu_close_to_fp32(tmp_path):
    csv = write_synthetic_csv(tmp_path / "toy.csv", num_rows=400, num_channels=3, seed=3)
    results = {}
    for precision in ("fp32", "bf16"):
        overrides = [*_overrides(csv, 32), f"training.precision={precision}"]
        config = load_run_config(TINY_CALF, overrides)
        results[precision] = run_experiment(config, tmp_path / precision, echo=None).metrics.to_json()
    fp32, bf16 = _summary(results["fp32"]), _summary(results["bf16"])
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert bf16 != fp32  # autocast was on: bf16 rounding changed the numbers ...
    assert bf16 == pytest.approx(fp32, rel=0.05)  # ... by little (bf16 keeps 8 significant bits)
    assert results["bf16"]["test"]["mse"] < 0.8 * results["bf16"]["naive_test"]["mse"]  # it learned
