"""training.low_memory: freed activation memory goes back to the OS (glibc's fixed mmap threshold)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

import ecalf.training
from ecalf.config import ConfigError, TrainingConfig
from ecalf.config_files import load_run_config
from ecalf.data import write_synthetic_csv
from ecalf.memory import release_freed_memory
from ecalf.run import run_experiment

ROOT = Path(__file__).resolve().parents[1]
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Frees 40 blocks of 6 MiB, each allocated between two small tensors that stay alive, after one
# allocate-and-free of the same size (which, by default, lifts glibc's dynamic mmap threshold above
# 6 MiB so the blocks come from the heap, where the small survivors pin their space).
_FRAGMENT = """
import sys, torch
from ecalf.memory import release_freed_memory
def rss_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024
if sys.argv[1] == "fixed":
    assert release_freed_memory()
warm = torch.ones(6 * 2**20 // 4); del warm
keep, big = [], []
for _ in range(40):
    big.append(torch.ones(6 * 2**20 // 4)); keep.append(torch.ones(64))
before = rss_mb(); del big
print(before - rss_mb())
"""


def _released_mb(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", _FRAGMENT, mode], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the mmap threshold is a glibc malloc setting")
def test_freed_blocks_go_back_to_the_os_with_a_fixed_threshold() -> None:
    fixed = _released_mb("fixed")
    assert fixed > 0.8 * 240, f"only {fixed:.0f} of 240 MB freed went back to the OS"
    # The default dynamic threshold usually keeps them: that difference is what the setting is for.
    # On some machines glibc's default returns them as well (seen on this project's CI machine on
    # 2026-12-07: 216-228 of 240 MB); the setting must then still return them, as asserted above.
    default = _released_mb("default")
    if default < 0.5 * 240:
        assert fixed - default > 100


def test_threshold_is_checked() -> None:
    with pytest.raises(ValueError, match="threshold"):
        release_freed_memory(0)
    with pytest.raises(ValueError, match="threshold"):
        release_freed_memory(64 * 2**20)
    assert TrainingConfig().low_memory is False
    with pytest.raises(ConfigError, match="low_memory"):
        load_run_config(ROOT / "configs/tiny/calf.yaml", ["training.low_memory=maybe"])


def _train(tmp_path: Path, low_memory: bool) -> list[str]:
    csv = write_synthetic_csv(tmp_path / "data.csv", 400, 3, seed=1)
    config = load_run_config(
        ROOT / "configs/tiny/calf.yaml",
        [f"data.dataset={csv}", "data.context_length=24", "data.prediction_length=8", "training.epochs=1",
         "training.progress=false", "training.num_threads=1", f"training.low_memory={low_memory}"],
    )  # fmt: skip
    lines: list[str] = []
    run_experiment(config, tmp_path / f"run_{low_memory}", echo=lines.append)
    return lines


def test_training_applies_it_on_cpu_and_says_when_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(ecalf.training, "release_freed_memory", lambda: calls.append(1) or False)
    _train(tmp_path, low_memory=False)
    assert calls == []
    lines = _train(tmp_path, low_memory=True)
    assert calls == [1]
    assert any("training.low_memory has no effect here" in line for line in lines)


def test_run_provenance_records_a_preloaded_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    from ecalf.run import environment

    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert environment()["ld_preload"] is None
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    assert environment()["ld_preload"].endswith("libtcmalloc_minimal.so.4")
