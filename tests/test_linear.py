"""``linear``: the closed-form ridge floor (fit, strength chosen on validation, run and saved)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ecalf.artifacts import load_tensors, save_tensors
from ecalf.config import DataConfig, RunConfig, TrainingConfig
from ecalf.data import WindowDataset
from ecalf.errors import ConfigError
from ecalf.models.linear import LinearConfig, LinearForecast, ridge_path
from ecalf.run import run_experiment
from ecalf.training import train

L, H, C = 24, 6, 3


def known_map(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A map (H, L) in float64 and a bias (H,)."""
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(H, L, generator=g, dtype=torch.float64), 0.5 * torch.randn(H, generator=g)


class Windows:
    """Windows given directly: what ``fit_closed_form`` reads of a dataset (length and batches)."""

    def __init__(self, past: torch.Tensor, future: torch.Tensor) -> None:
        self.past, self.future = past, future

    def __len__(self) -> int:
        return len(self.past)

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.past[indices], self.future[indices]


def windows(weight: torch.Tensor, bias: torch.Tensor, count: int, noise: float, seed: int) -> Windows:
    """Random windows (count, L, C) whose horizons are ``weight @ (x - mean) + bias + mean`` + noise."""
    g = torch.Generator().manual_seed(seed)
    past = torch.randn(count, L, C, generator=g, dtype=torch.float64) + 3 * torch.randn(
        count, 1, C, generator=g
    )
    mean = past.mean(dim=1, keepdim=True)  # (N, 1, C)
    future = torch.einsum("hl,nlc->nhc", weight, past - mean) + bias.double()[:, None] + mean
    future = future + noise * torch.randn(future.shape, generator=g, dtype=torch.float64)
    return Windows(past.float(), future.float())


def fresh() -> LinearForecast:
    return LinearForecast(LinearConfig(context_length=L, prediction_length=H, num_channels=C))


def test_recovers_a_known_linear_map_from_noisy_windows() -> None:
    weight, bias = known_map()
    model = fresh()
    model.fit_closed_form(windows(weight, bias, 3000, 0.1, seed=1), windows(weight, bias, 500, 0.1, seed=2))  # type: ignore[arg-type]
    # A centred window is orthogonal to the all-ones vector, so only W's action on centred windows is
    # identifiable: compare W P with P the projection that removes the mean.
    centring = torch.eye(L, dtype=torch.float64) - 1.0 / L
    assert ((model.weight.double() - weight) @ centring).abs().max() < 0.01
    assert (model.bias.double() - bias.double()).abs().max() < 0.01
    test = windows(weight, bias, 500, 0.1, seed=3)
    with torch.no_grad():
        mse = float(((model(test.past).prediction - test.future) ** 2).mean())
    assert mse < 0.1**2 * 1.05  # the noise floor, within sampling error


def test_strength_is_chosen_on_validation() -> None:
    """Few, noisy training windows: the weakest strength overfits, a stronger one wins on validation,
    and the kept strength is the one with the lowest validation score of those logged."""
    weight, bias = known_map(3)
    model = fresh()
    fit = model.fit_closed_form(
        windows(weight, bias, 12, 1.0, seed=4), windows(weight, bias, 2000, 1.0, seed=5)
    )  # type: ignore[arg-type]
    scores = {k: v for k, v in fit.values.items() if k.startswith("val_mse@")}
    best = min(scores, key=lambda k: scores[k])
    assert best == f"val_mse@ridge={fit.values['ridge']:g}"
    weakest = min(LinearConfig().ridge_grid)
    assert fit.values["ridge"] > weakest
    assert scores[f"val_mse@ridge={weakest:g}"] > 1.2 * scores[best]
    # The validation windows decide: with other validation windows (a map of the opposite sign), the
    # same training windows give another choice.
    other = fresh().fit_closed_form(
        windows(weight, bias, 12, 1.0, seed=4), windows(-weight, bias, 2000, 1.0, seed=5)
    )  # type: ignore[arg-type]
    assert other.values["ridge"] != fit.values["ridge"]


def test_the_test_split_is_never_read(tmp_path, monkeypatch) -> None:
    """A run of ``linear`` gives the same fit whatever the test rows hold: poisoned test rows change
    the test metrics only."""
    rng = np.random.default_rng(0)
    t = np.arange(1200)
    frame = pd.DataFrame({
        "date": pd.date_range("2024-01-01", periods=t.size, freq="h"),
        "a": np.sin(2 * np.pi * t / 24) + 0.1 * rng.normal(size=t.size),
        "b": np.cos(2 * np.pi * t / 24) + 0.1 * rng.normal(size=t.size),
    })  # fmt: skip
    clean = tmp_path / "clean.csv"
    frame.to_csv(clean, index=False)
    poisoned = frame.copy()
    poisoned.loc[int(0.8 * len(frame)) + 10 :, ["a", "b"]] = 1e3  # deep in the test split (last 20 %)
    dirty = tmp_path / "dirty.csv"
    poisoned.to_csv(dirty, index=False)

    def fit(path) -> tuple[dict, dict]:
        config = RunConfig(
            data=DataConfig(dataset=str(path), context_length=L, prediction_length=H),
            model=LinearConfig(),
            training=TrainingConfig(progress=False, tracking="none"),
        )
        result = run_experiment(config, tmp_path / path.stem, echo=None)
        return result.metrics.to_json(), load_tensors(result.run_dir / "model.safetensors")

    clean_metrics, clean_weights = fit(clean)
    dirty_metrics, dirty_weights = fit(dirty)
    # Equal up to the last bits of float summation order (the poison is 1e3 times the signal).
    assert clean_metrics["history"][0]["values"] == pytest.approx(
        dirty_metrics["history"][0]["values"], rel=1e-9
    )
    assert clean_metrics["best_val_mse"] == pytest.approx(dirty_metrics["best_val_mse"], rel=1e-9)
    for name, tensor in clean_weights.items():
        torch.testing.assert_close(tensor, dirty_weights[name], rtol=1e-6, atol=1e-7)
    assert dirty_metrics["test"]["mse"] > 100 * clean_metrics["test"]["mse"]
    assert clean_metrics["stopped"] == "closed_form" and clean_metrics["steps"] == 0


def test_training_loop_fits_once_and_calls_back(tmp_path) -> None:
    t = torch.arange(900, dtype=torch.float32)
    series = torch.stack([torch.sin(t / 4), torch.cos(t / 7), torch.sin(t / 3) + 0.01 * t], dim=1)  # (T, C)
    model = fresh()
    improved, ended = [], []
    result = train(
        model,
        WindowDataset(series[:600], L, H),
        WindowDataset(series[600 - L :], L, H),
        TrainingConfig(progress=False),
        seed=0,
        log=lambda line: None,
        on_improvement=lambda m, r: improved.append(r.epoch),
        on_epoch_end=lambda r: ended.append(r.epoch),
    )
    assert result.stopped == "closed_form" and result.epochs_run == 1 and result.steps == 0
    assert improved == [1] and ended == [1]
    assert result.history[0].train_loss < 1e-3 and result.best_val_mse < 1e-3  # sines are linear maps
    assert "ridge" in result.history[0].values
    path = save_tensors(tmp_path / "model.safetensors", model.state_dict())
    other = fresh()
    other.load_state_dict(load_tensors(path))
    past = series[:L].unsqueeze(0)
    assert torch.equal(model(past).prediction, other(past).prediction)


def test_forecast_adds_the_window_mean_back() -> None:
    model = fresh()
    past = torch.randn(2, L, C) + 5.0
    # Unfitted (W = 0, b = 0): the window mean over the horizon.
    expected = past.mean(dim=1, keepdim=True).expand(-1, H, -1)
    torch.testing.assert_close(model(past).prediction, expected)


@pytest.mark.parametrize("grid", [[], [-1.0], [0.1, float("nan")]])
def test_bad_ridge_grid_is_rejected(grid) -> None:
    with pytest.raises(ConfigError, match="ridge_grid"):
        LinearConfig(ridge_grid=grid)


def test_every_ridge_strength_from_one_eigendecomposition_equals_its_own_solve() -> None:
    """``ridge_path`` (one eigendecomposition, the intercept centred out) gives what solving the
    penalised normal equations with the intercept unpenalised gives, strength by strength, also
    with features far from zero mean."""
    g = torch.Generator().manual_seed(0)
    f, h, n, f64 = 40, 12, 500, torch.float64
    x = torch.randn(n, f, generator=g, dtype=f64) + torch.linspace(-2, 3, f, dtype=f64)
    y = x @ torch.randn(f, h, generator=g, dtype=f64) + 5 + 0.3 * torch.randn(n, h, generator=g, dtype=f64)
    x1 = torch.cat([x, torch.ones(n, 1, dtype=f64)], dim=1)
    gram, cross = x1.T @ x1, x1.T @ y
    strengths = [0.0, 1e-3, 1.0, 100.0]
    path = ridge_path(gram, cross, strengths, f)
    for strength, solution in zip(strengths, path, strict=True):
        penalty = torch.diag(torch.tensor([strength] * f + [0.0], dtype=f64))
        expected = torch.linalg.solve(gram + penalty, cross)
        torch.testing.assert_close(solution, expected, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(path[0], path[-1])  # the strengths do differ
