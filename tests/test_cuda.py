"""The GPU paths, end to end on tiny models: training in fp32 and bf16, evaluation, the merged-LoRA
inference, the forecaster and the speed benchmark on a CUDA device.

Skipped where torch sees no CUDA device (this project's CI and development machine have none): run
``python -m pytest tests/test_cuda.py`` on a machine with a GPU.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ecalf.errors import EcalfError
from ecalf.forecast import Forecaster
from ecalf.inference import merged_lora, quantized_int8
from ecalf.run import evaluate_run, run_experiment

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["configs/tiny/calf.yaml", "configs/tiny/ecalf.yaml", "configs/baselines/dlinear.yaml"]
CUDA = "training.device=cuda"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("config_file", CONFIGS)
def test_trains_and_evaluates_on_the_gpu(tmp_path, tiny_run_config, config_file, precision):
    config = tiny_run_config(config_file, CUDA, "training.epochs=2", f"training.precision={precision}")
    result = run_experiment(config, tmp_path / "run", echo=None)
    metrics = result.metrics
    assert metrics.environment["cuda"]  # the device's name, in the provenance
    assert math.isfinite(metrics.test.mse) and metrics.test.windows > 0
    assert all(math.isfinite(epoch.train_loss) for epoch in metrics.history)
    _, again = evaluate_run(result.run_dir)  # reloaded on the GPU from the saved weights
    assert again.mse == pytest.approx(metrics.test.mse, rel=1e-3)


def test_tiny_calf_learns_on_the_gpu_in_bf16(tmp_path, tiny_run_config):
    config = tiny_run_config(
        "configs/tiny/calf.yaml", CUDA, "training.epochs=6", "training.learning_rate=2e-3",
        "training.precision=bf16",
    )  # fmt: skip
    metrics = run_experiment(config, tmp_path / "run", echo=None).metrics
    assert metrics.history[-1].train_loss < metrics.history[0].train_loss
    assert metrics.test.mse < metrics.naive_test.mse


def test_merged_lora_predicts_like_the_unmerged_model_on_the_gpu(tmp_path, tiny_run_config):
    config = tiny_run_config("configs/tiny/ecalf.yaml", CUDA, "training.epochs=1")
    run_dir = run_experiment(config, tmp_path / "run", echo=None).run_dir
    from ecalf.run import load_run

    _, model = load_run(run_dir)
    model = model.to("cuda").eval()
    past = torch.randn(4, 48, 3, device="cuda")
    with torch.no_grad():
        expected = model(past).prediction
        with merged_lora(model):
            merged = model(past).prediction
    assert merged.device.type == "cuda"
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(EcalfError, match="CPU"):
        quantized_int8(model)


def test_forecaster_fits_and_forecasts_on_the_gpu(tmp_path):
    t = np.arange(24 * 40)
    frame = pd.DataFrame(
        {
            "date": pd.date_range("2024-01-01", periods=t.size, freq="h"),
            "load": 50 + 10 * np.sin(2 * np.pi * t / 24),
            "temperature": 12 + 6 * np.sin(2 * np.pi * (t - 6) / 24),
        }
    )
    forecaster = Forecaster(
        model="dlinear", context_length=48, prediction_length=12, training_options={"device": "cuda"}
    ).fit(frame, epochs=2, verbose=False)
    future = forecaster.predict(frame)
    assert list(future.columns) == ["date", "load", "temperature"] and len(future) == 12
    forecaster.save(tmp_path / "model")
    on_cpu = Forecaster.load(tmp_path / "model", device="cpu").predict(frame)
    np.testing.assert_allclose(
        on_cpu[["load", "temperature"]].to_numpy(), future[["load", "temperature"]].to_numpy(), rtol=1e-4
    )


def test_speed_script_measures_the_gpu(tmp_path):
    out = tmp_path / "speed.json"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--config", "configs/tiny/calf.yaml",
        "--random", "--device", "cuda", "--precision", "bf16", "--batch-size", "8",
        "--predict-batch-size", "8", "--repeats", "2", "--latency-repeats", "3", "--paired-matmul",
        "--output", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    for key in ("matmul_gflops", "train_windows_per_second", "predict_windows_per_second", "latency_ms"):
        assert result[key] > 0, key
    assert result["train_peak_gpu_mb"] > 0 and result["predict_peak_gpu_mb"] > 0
    assert "vs_official" not in result  # the official figures are a CPU's
