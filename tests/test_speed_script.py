"""benchmarks/speed.py end to end on a tiny model (what it writes, not how fast anything is)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "speed.py"


def _speed_module():
    spec = importlib.util.spec_from_file_location("speed", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_scales_each_call_by_its_own_probe():
    speed = _speed_module()
    # 100 windows in 1 s at 50 GFLOP/s, then in 2 s at 25 GFLOP/s: the same speed for the machine
    result = speed.paired("w", 100, [1.0, 2.0, 1.0], [50.0, 25.0, 100.0])
    assert result["w_per_matmul_gflops"] == pytest.approx(2.0)
    assert result["w_matmul_gflops"] == 50.0


def test_count_gflop_counts_the_matrix_products_forward_and_backward():
    import torch

    speed = _speed_module()
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    assert speed.count_gflop(lambda: layer(x)) == pytest.approx(2 * 4 * 16 * 8 / 1e9)
    # backward: the input's and the weight's gradients, one product each
    assert speed.count_gflop(lambda: layer(x).sum().backward()) == pytest.approx(3 * 2 * 4 * 16 * 8 / 1e9)


def test_speed_script_writes_every_phase_with_paired_matmul(tmp_path):
    out = tmp_path / "speed.json"
    command = [
        sys.executable, str(SCRIPT), "--config", "configs/tiny/calf.yaml", "--random", "--threads", "1",
        "--batch-size", "4", "--predict-batch-size", "4", "--repeats", "2", "--warmup", "1",
        "--latency-repeats", "2", "--paired-matmul", "--output", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["paired_matmul"] is True
    for key in (
        "matmul_gflops", "train_windows_per_second", "train_windows_per_second_per_matmul_gflops",
        "train_windows_per_second_matmul_gflops", "predict_windows_per_second_per_matmul_gflops",
        "latency_ms", "latency_calls_per_second_per_matmul_gflops", "train_peak_rss_mb",
    ):  # fmt: skip
        assert result[key] > 0, key
    # training runs both trunks forward and backward; prediction the time branch's forward only
    assert result["train_gflop_per_window"] > 3 * result["predict_gflop_per_window"] > 0
    assert result["train_matmul_share"] > 0 and result["predict_matmul_share"] > 0
    assert "vs_official" not in result  # a tiny model is not the official figures' shape
