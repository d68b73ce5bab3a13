"""LoRA merged for inference: same predictions, the model bit-identical afterwards, branches intact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ecalf.artifacts import load_tensors, save_tensors
from ecalf.backbones import BackboneConfig
from ecalf.errors import EcalfError
from ecalf.inference import lora_layers, merged_lora, quantized_int8
from ecalf.models.calf import CALF, CALFConfig, ECALFConfig
from ecalf.training import snapshot

L, H, C = 24, 8, 3
PRESETS = ("tiny-gpt2", "tiny-llama")


def tiny_model(preset: str, enhanced: bool = False, seed: int = 0, adapted: bool = True) -> CALF:
    """A tiny CALF / ECALF; ``adapted``: LoRA's B drawn at random (it starts at zero, as if untrained)."""
    torch.manual_seed(seed)
    config_class = ECALFConfig if enhanced else CALFConfig
    config = config_class(
        context_length=L,
        prediction_length=H,
        num_channels=C,
        backbone=BackboneConfig(preset=preset, pretrained=False, num_layers=2, num_principal_embeddings=16),
        encoder_heads=4,
        encoder_ff_dim=64,
    )
    model = CALF(config)
    model.load_pretrained()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if adapted and "lora_B" in name:
                p.normal_(0.0, 0.2)
    return model.eval()


def windows(batch: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, L + H, C, generator=g).cumsum(1)
    return x[:, :L], x[:, L:]


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("enhanced", [False, True], ids=["calf", "ecalf"])
@pytest.mark.parametrize("preset", PRESETS)
def test_merged_predictions_equal_unmerged_and_weights_come_back_bit_identical(preset, enhanced):
    model = tiny_model(preset, enhanced)
    past, future = windows()
    before = state(model)
    params_before = {n: p for n, p in model.named_parameters()}
    with torch.no_grad():
        expected = model(past).prediction
        expected_loss = model(past, future).loss
    with merged_lora(model) as merged, torch.no_grad():
        assert merged is model
        assert all(layer.merged for layer in lora_layers(model))
        got = model(past).prediction
        # The text branch shares the frozen weights the time branch's adapters were merged over: it is
        # unaffected, so the two-branch loss is unchanged too.
        got_loss = model(past, future).loss
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_loss, expected_loss, rtol=1e-5, atol=1e-5)
    assert not any(layer.merged for layer in lora_layers(model))
    assert_bit_identical(state(model), before)
    assert {n: p for n, p in model.named_parameters()}.keys() == params_before.keys()
    assert all(p is params_before[n] for n, p in model.named_parameters())  # the same tensors, not copies


@pytest.mark.parametrize("preset", PRESETS)
def test_the_merge_really_changes_the_computation(preset):
    model = tiny_model(preset)
    past, _ = windows()
    with torch.no_grad():
        with_lora = model(past).prediction
        without = tiny_model(preset, adapted=False)(past).prediction  # same weights, B = 0
        with merged_lora(model):
            merged = model(past).prediction
    assert not torch.allclose(with_lora, without, atol=1e-4)  # the adapters matter...
    torch.testing.assert_close(merged, with_lora, rtol=1e-5, atol=1e-5)  # ...and the merge keeps them


def test_shared_frozen_weights_are_never_written():
    model = tiny_model("tiny-gpt2")
    time_layer = model.time_trunk.decoder.h[0].attn.c_attn
    text_layer = model.text_trunk.decoder.h[0].attn.c_attn
    shared = text_layer.weight
    assert shared is time_layer.base_layer.weight  # the branches share one copy (models/calf.py)
    original = shared.detach().clone()
    with merged_lora(model):
        assert time_layer.base_layer.weight is not shared  # copy-on-merge
        assert text_layer.weight is shared
        assert torch.equal(shared, original)
        assert not torch.equal(time_layer.base_layer.weight, original)
    assert time_layer.base_layer.weight is shared and torch.equal(shared, original)


def test_an_exception_inside_restores_the_model():
    model = tiny_model("tiny-llama")
    past, _ = windows()
    before = state(model)
    with torch.no_grad():
        expected = model(past).prediction
    with pytest.raises(ValueError, match="boom"), merged_lora(model):
        raise ValueError("boom")
    assert not any(layer.merged for layer in lora_layers(model))
    assert_bit_identical(state(model), before)
    with torch.no_grad():
        assert torch.equal(model(past).prediction, expected)
    with merged_lora(model):  # usable again
        pass


def test_saving_inside_the_block_writes_the_unmerged_weights(tmp_path):
    model = tiny_model("tiny-gpt2")
    outside = state(model)
    with merged_lora(model):
        inside = state(model)
        trainable = snapshot(model)  # what checkpoints and Forecaster.save write
        save_tensors(tmp_path / "inside.safetensors", trainable)
        with pytest.raises(RuntimeError, match="load_state_dict inside merged_lora"):
            model.load_state_dict(outside)
    assert_bit_identical(inside, outside)
    assert_bit_identical(load_tensors(tmp_path / "inside.safetensors"), snapshot(model))
    assert any("lora_B" in k for k in trainable)


def test_training_inside_the_block_is_refused_but_eval_with_grad_works():
    model = tiny_model("tiny-gpt2")
    past, future = windows()
    with merged_lora(model):
        model.train()
        with pytest.raises(RuntimeError, match="for inference"):
            model(past, future)
        model.eval()
        assert model(past).prediction.requires_grad  # eval mode with autograd on is allowed
    model.train()
    model(past, future).loss.backward()  # outside: trains as before
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n)


def test_nested_blocks_and_models_without_lora_are_no_ops():
    model = tiny_model("tiny-gpt2")
    past, _ = windows()
    before = state(model)
    with merged_lora(model), merged_lora(model), torch.no_grad():
        inner = model(past).prediction
    assert_bit_identical(state(model), before)
    with torch.no_grad():
        torch.testing.assert_close(inner, model(past).prediction, rtol=1e-5, atol=1e-5)
    plain = nn.Linear(3, 2)
    with merged_lora(plain) as same:
        assert same is plain


def test_evaluation_and_prediction_run_with_the_adapters_merged():
    from ecalf.data import WindowDataset
    from ecalf.evaluation import evaluate, predict

    model = tiny_model("tiny-gpt2")
    seen: list[bool] = []
    model.register_forward_pre_hook(
        lambda module, args: seen.append(getattr(module, "_ecalf_lora_merged", False))
    )
    series = torch.randn(L + H + 6, C).cumsum(0)
    dataset = WindowDataset(series, L, H)
    evaluate(model, dataset, batch_size=4)
    predict(model, dataset, batch_size=4)
    assert seen and all(seen)
    assert not getattr(model, "_ecalf_lora_merged", False)  # left as it was


# --------------------------------------------------------------------------------------------------
# int8 copy for CPU inference
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("enhanced", [False, True], ids=["calf", "ecalf"])
@pytest.mark.parametrize("preset", PRESETS)
def test_int8_copy_forecasts_like_the_float_model_with_its_adapters(preset, enhanced):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
    from transformers.pytorch_utils import Conv1D

    model = tiny_model(preset, enhanced)
    past, _ = windows()
    before = state(model)
    with torch.no_grad():
        reference = model(past).prediction
        unadapted = tiny_model(preset, enhanced, adapted=False)(past).prediction
    quantized = quantized_int8(model)
    with torch.no_grad():
        prediction = quantized(past).prediction
    assert_bit_identical(before, state(model))  # the float model is untouched
    assert any(p.requires_grad for p in model.parameters())
    modules = list(quantized.modules())
    assert not lora_layers(quantized) and not any(isinstance(m, Conv1D) for m in modules)
    trunk_layers = [m for m in quantized.time_trunk.modules() if isinstance(m, DynamicInt8Linear)]
    assert len(trunk_layers) >= 2 * 4  # tiny trunks: 2 blocks, >= 4 matrices each
    error = (prediction - reference).abs().max()
    assert 0 < error < 0.05 * reference.abs().max()
    # The merged adapters are in: the int8 forecast is much nearer the adapted model than the bare one.
    assert (prediction - reference).abs().mean() < 0.5 * (prediction - unadapted).abs().mean()


def test_int8_copy_is_cpu_only():
    model = tiny_model("tiny-gpt2").to("meta")
    with pytest.raises(EcalfError, match="int8 inference runs on the CPU"):
        quantized_int8(model)
