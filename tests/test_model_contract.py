"""The contract every registered model follows, checked on its tiny config."""

import dataclasses

import pytest
import torch

from ecalf.artifacts import load_tensors, save_tensors
from ecalf.config import from_dict
from ecalf.models.base import ForecastModel
from ecalf.registry import list_models

L, H, C, B = 24, 8, 3, 4
MODEL_NAMES = [entry.name for entry in list_models()]


def tiny_model(name: str, seed: int = 0) -> ForecastModel:
    entry = next(e for e in list_models() if e.name == name)
    options = dict(entry.tiny_options)
    options.update(context_length=L, prediction_length=H, num_channels=C)
    config = from_dict(entry.config_class, options, path="model")
    torch.manual_seed(seed)
    model = entry.model_class(config)
    assert isinstance(model, ForecastModel)
    model.load_pretrained()
    return model


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(L + H, dtype=torch.float32)
    base = torch.sin(t / 3).view(1, -1, 1) + 0.1 * torch.randn(B, L + H, C, generator=g)
    return base[:, :L], base[:, L:]


def test_registry_lists_the_mission_models():
    assert {"calf", "naive", "mean", "dlinear", "patchtst", "itransformer"} <= set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shape_finite_and_loss(name):
    model = tiny_model(name)
    past, future = batch()
    out = model(past)
    assert out.prediction.shape == (B, H, C)
    assert torch.isfinite(out.prediction).all()
    assert out.loss is None
    out = model(past, future)
    assert out.loss is not None and out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert all(torch.isfinite(v) for v in out.loss_parts.values())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradients_reach_exactly_the_trainable_parameters(name):
    model = tiny_model(name)
    model.train()
    past, future = batch()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        pytest.skip(f"{name} has no trainable parameters")
    model(past, future).loss.backward()
    for n, p in model.named_parameters():
        if n in trainable:
            assert p.grad is not None, f"{n} is trainable but got no gradient"
        else:
            assert p.grad is None, f"{n} is frozen but got a gradient"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_eval_mode_is_batch_independent(name):
    model = tiny_model(name).eval()
    past, _ = batch()
    with torch.no_grad():
        together = model(past).prediction
        alone = torch.cat([model(past[i : i + 1]).prediction for i in range(B)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_save_load_round_trip(name, tmp_path):
    model = tiny_model(name, seed=0).eval()
    path = save_tensors(tmp_path / "model.safetensors", model.state_dict())
    other = tiny_model(name, seed=123).eval()
    other.load_state_dict(load_tensors(path))
    past, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(model(past).prediction, other(past).prediction, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_wrong_input_shape_is_rejected(name):
    model = tiny_model(name)
    past, _ = batch()
    with pytest.raises(ValueError, match="past_values must have shape"):
        model(past[:, :-1])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_round_trip(name):
    model = tiny_model(name)
    cfg = model.config
    again = from_dict(type(cfg), dataclasses.asdict(cfg))
    assert again == cfg
