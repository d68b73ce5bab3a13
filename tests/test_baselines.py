"""Baseline forecasters: naive, mean, DLinear, PatchTST, iTransformer (behaviour pinned on tiny shapes)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from ecalf.config import ModelConfig
from ecalf.config_files import run_config_from_dict
from ecalf.errors import ConfigError
from ecalf.models.base import ForecastModel, count_parameters
from ecalf.models.dlinear import DLinear, DLinearConfig, decompose, moving_average
from ecalf.models.itransformer import ITransformer, ITransformerConfig
from ecalf.models.naive import MeanConfig, MeanForecast, NaiveConfig, NaiveForecast
from ecalf.models.patchtst import PatchTST, PatchTSTConfig, make_patches
from ecalf.registry import create_model, get_entry, model_name_for_config

L, H, C = 32, 8, 3
NAMES = ["naive", "mean", "dlinear", "patchtst", "itransformer"]


def tiny_config(name: str, **extra: Any) -> ModelConfig:
    entry = get_entry(name)
    options = {"context_length": L, "prediction_length": H, "num_channels": C, **entry.tiny_options}
    options.update(extra)
    return entry.config_class(**options)


def build(name: str, seed: int = 0, **extra: Any) -> ForecastModel:
    torch.manual_seed(seed)
    model = create_model(tiny_config(name, **extra))
    assert isinstance(model, ForecastModel)
    return model


def batch(seed: int = 1, batch_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, L, C, generator=g), torch.randn(batch_size, H, C, generator=g)


# --------------------------------------------------------------------------------------------------
# Every baseline
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_shape_finite_and_loss(name: str) -> None:
    model = build(name).eval()
    past, future = batch()
    out = model(past)
    assert out.prediction.shape == (4, H, C)
    assert torch.isfinite(out.prediction).all()
    assert out.loss is None
    out = model(past, future)
    assert out.loss is not None and out.loss.ndim == 0 and torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, torch.mean((out.prediction - future) ** 2))


@pytest.mark.parametrize("name", NAMES)
def test_rejects_wrong_input_shape(name: str) -> None:
    model = build(name)
    with pytest.raises(ValueError, match="past_values"):
        model(torch.randn(2, L + 1, C))
    with pytest.raises(ValueError, match="future_values"):
        model(torch.randn(2, L, C), torch.randn(2, H - 1, C))


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_seed(name: str) -> None:
    past, _ = batch()
    a, b, other = build(name, seed=3).eval(), build(name, seed=3).eval(), build(name, seed=4).eval()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    with torch.no_grad():
        torch.testing.assert_close(a(past).prediction, b(past).prediction, rtol=0, atol=0)
        if count_parameters(a)["total"]:
            assert not torch.allclose(a(past).prediction, other(past).prediction)


@pytest.mark.parametrize("name", NAMES)
def test_registry_round_trip(name: str) -> None:
    config = tiny_config(name)
    assert model_name_for_config(type(config)) == name
    assert isinstance(create_model(config), get_entry(name).model_class)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_options_are_tiny_at_default_shapes(name: str) -> None:
    entry = get_entry(name)
    torch.manual_seed(0)
    model = create_model(entry.config_class(**entry.tiny_options))  # L = H = 96, C = 7
    assert count_parameters(model)["total"] < 50_000


@pytest.mark.parametrize("name", ["dlinear", "patchtst", "itransformer"])
def test_loss_option_selects_the_training_loss(name: str) -> None:
    past, future = batch()
    model = build(name, loss="l1").eval()
    out = model(past, future)
    assert out.loss is not None and set(out.loss_parts) == {"l1"}
    torch.testing.assert_close(out.loss, torch.mean(torch.abs(out.prediction - future)))
    with pytest.raises(ConfigError, match="loss"):
        run_config_from_dict({"model": {"name": name, "loss": "huber"}})


# --------------------------------------------------------------------------------------------------
# naive and mean
# --------------------------------------------------------------------------------------------------


def test_naive_repeats_the_last_value() -> None:
    model = NaiveForecast(NaiveConfig(context_length=L, prediction_length=H, num_channels=C))
    past, future = batch()
    out = model(past, future)
    assert torch.equal(out.prediction, past[:, -1:, :].expand(-1, H, -1))
    assert out.loss is not None and not out.loss.requires_grad
    assert list(model.parameters()) == [] and model.parameter_groups(1e-3) == []


def test_mean_is_the_window_mean() -> None:
    model = MeanForecast(MeanConfig(context_length=L, prediction_length=H, num_channels=C))
    past, _ = batch()
    expected = past.mean(dim=1, keepdim=True).expand(-1, H, -1)
    assert torch.equal(model(past).prediction, expected)
    assert list(model.parameters()) == []


def test_naive_and_mean_have_distinct_config_classes() -> None:
    assert NaiveConfig is not MeanConfig
    assert model_name_for_config(NaiveConfig) == "naive" and model_name_for_config(MeanConfig) == "mean"


# --------------------------------------------------------------------------------------------------
# DLinear
# --------------------------------------------------------------------------------------------------


def test_dlinear_decomposition_adds_up_and_matches_edge_padded_average() -> None:
    past, _ = batch()
    seasonal, trend = decompose(past, 25)
    torch.testing.assert_close(seasonal + trend, past, rtol=0, atol=1e-6)
    # Reference: numpy edge padding ("replicate") at both ends, then a box filter.
    x = past.numpy().astype(np.float64)
    padded = np.pad(x, ((0, 0), (12, 12), (0, 0)), mode="edge")
    reference = np.stack([padded[:, i : i + 25].mean(axis=1) for i in range(L)], axis=1)
    np.testing.assert_allclose(trend.numpy(), reference, atol=1e-6)


def test_dlinear_moving_average_is_exact_on_lines_away_from_the_edges() -> None:
    t = torch.arange(L, dtype=torch.float32)
    line = (2.0 * t - 5.0).view(1, L, 1)
    trend = moving_average(line, 5)
    torch.testing.assert_close(trend[:, 2:-2], line[:, 2:-2])
    assert trend[0, 0, 0] > line[0, 0, 0]  # replicated start pulls the left end up (rising line)


def test_dlinear_rejects_even_kernel() -> None:
    with pytest.raises(ConfigError, match="odd"):
        DLinearConfig(moving_average=24)


def test_dlinear_starts_from_the_window_mean_plus_bias() -> None:
    torch.manual_seed(0)
    model = DLinear(DLinearConfig(context_length=L, prediction_length=H, num_channels=C))
    past, _ = batch()
    bias = model.seasonal.bias + model.trend.bias  # (H,)
    expected = past.mean(dim=1, keepdim=True) + bias.view(1, H, 1)
    torch.testing.assert_close(model(past).prediction, expected, rtol=1e-5, atol=1e-5)


def test_dlinear_individual_has_per_channel_weights() -> None:
    shared = build("dlinear")
    individual = build("dlinear", individual=True)
    assert count_parameters(individual)["total"] == C * count_parameters(shared)["total"]
    # Changing channel 0's weights changes only channel 0's forecast.
    past, _ = batch()
    before = individual(past).prediction.detach()
    with torch.no_grad():
        individual.seasonal.weight[0] += 0.1
    after = individual(past).prediction.detach()
    assert not torch.allclose(before[..., 0], after[..., 0])
    torch.testing.assert_close(before[..., 1:], after[..., 1:])


@pytest.mark.parametrize("individual", [False, True])
def test_dlinear_learns_linear_series(individual: bool) -> None:
    """A linear trend continues linearly; DLinear is a linear map, so it must fit it near exactly."""
    g = torch.Generator().manual_seed(0)
    n = 64
    t = torch.arange(L + H, dtype=torch.float32) / (L + H)  # (L+H,)
    slope = torch.randn(n, 1, C, generator=g)
    level = torch.randn(n, 1, C, generator=g)
    series = level + slope * t.view(1, -1, 1)  # (n, L+H, C)
    past, future = series[:, :L], series[:, L:]
    torch.manual_seed(0)
    model = DLinear(
        DLinearConfig(context_length=L, prediction_length=H, num_channels=C, individual=individual)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    initial = model(past, future).loss
    assert initial is not None
    for _ in range(300):
        loss = model(past, future).loss
        assert loss is not None
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = model(past, future).loss
    assert final is not None
    assert final.item() < 1e-6 * initial.item() and final.item() < 1e-8


# --------------------------------------------------------------------------------------------------
# PatchTST
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("context", "patch", "stride"), [(96, 16, 8), (32, 16, 8), (30, 8, 4), (20, 6, 5)])
def test_patchtst_patch_count(context: int, patch: int, stride: int) -> None:
    config = PatchTSTConfig(context_length=context, patch_length=patch, patch_stride=stride)
    assert config.num_patches == math.floor((context - patch) / stride) + 2
    x = torch.randn(2, 3, context)
    patches = make_patches(x, patch, stride)
    assert patches.shape == (2, 3, config.num_patches, patch)
    # Reference: append `stride` copies of the last value, then patch i is padded[i*S : i*S + P].
    padded = torch.cat([x, x[..., -1:].expand(-1, -1, stride)], dim=-1)
    for i in range(config.num_patches):
        assert torch.equal(patches[:, :, i], padded[..., i * stride : i * stride + patch])
    assert torch.equal(patches[:, :, 0], x[..., :patch])
    if (context - patch) % stride == 0:  # then the last patch ends exactly with the padding
        assert torch.equal(patches[:, :, -1, -stride:], x[..., -1:].expand(-1, -1, stride))


def test_patchtst_default_shapes_follow_the_paper() -> None:
    config = PatchTSTConfig()
    assert (config.patch_length, config.patch_stride, config.num_patches) == (16, 8, 12)
    torch.manual_seed(0)
    model = PatchTST(config)
    assert model.head.in_features == config.d_model * 12
    assert model.position.shape == (12, config.d_model)


def test_patchtst_is_channel_independent() -> None:
    """Changing one channel's input changes only that channel's forecast (eval mode)."""
    model = build("patchtst").eval()
    past, _ = batch()
    changed = past.clone()
    changed[..., 1] += torch.randn(4, L)
    with torch.no_grad():
        a, b = model(past).prediction, model(changed).prediction
    torch.testing.assert_close(a[..., [0, 2]], b[..., [0, 2]])
    assert not torch.allclose(a[..., 1], b[..., 1])


@pytest.mark.parametrize("name", ["patchtst", "itransformer"])
def test_revin_models_are_scale_and_shift_equivariant(name: str) -> None:
    model = build(name).eval()
    past, _ = batch()
    with torch.no_grad():
        a = model(past).prediction
        b = model(past * 10.0 + 3.0).prediction
    torch.testing.assert_close(b, a * 10.0 + 3.0, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_patchtst_norm_option(norm: str) -> None:
    model = build("patchtst", norm=norm)
    kinds = {type(m).__name__ for m in model.modules()}
    assert ("BatchNorm1d" in kinds) == (norm == "batch")
    assert ("LayerNorm" in kinds) == (norm == "layer")
    past, future = batch()
    out = model.train()(past, future)
    assert out.loss is not None
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "options",
    [{"d_model": 10, "num_heads": 4}, {"patch_length": 50}, {"dropout": 1.0}, {"num_layers": 0}],
)
def test_patchtst_config_validation(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        PatchTSTConfig(context_length=L, **options)


# --------------------------------------------------------------------------------------------------
# iTransformer
# --------------------------------------------------------------------------------------------------


def test_itransformer_is_permutation_equivariant_over_channels() -> None:
    model = build("itransformer", num_layers=2).eval()
    past, _ = batch()
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        a = model(past).prediction
        b = model(past[..., perm]).prediction
    torch.testing.assert_close(b, a[..., perm], rtol=1e-5, atol=1e-5)


def test_itransformer_mixes_channels() -> None:
    """Unlike PatchTST, one channel's input reaches the other channels' forecasts."""
    model = build("itransformer").eval()
    past, _ = batch()
    changed = past.clone()
    changed[..., 1] += torch.randn(4, L)
    with torch.no_grad():
        a, b = model(past).prediction, model(changed).prediction
    assert not torch.allclose(a[..., 0], b[..., 0])


def test_itransformer_layers_are_initialised_independently() -> None:
    model = build("itransformer", num_layers=2)
    assert isinstance(model, ITransformer)
    w0 = model.layers[0].linear1.weight  # type: ignore[union-attr]
    w1 = model.layers[1].linear1.weight  # type: ignore[union-attr]
    assert not torch.equal(w0, w1)


def test_itransformer_without_norm_is_not_shift_equivariant() -> None:
    model = build("itransformer", use_norm=False).eval()
    past, _ = batch()
    with torch.no_grad():
        a, b = model(past).prediction, model(past + 3.0).prediction
    assert not torch.allclose(b, a + 3.0, atol=1e-3)


@pytest.mark.parametrize("options", [{"d_model": 10, "num_heads": 4}, {"dropout": -0.1}, {"ff_dim": 0}])
def test_itransformer_config_validation(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ITransformerConfig(**options)
