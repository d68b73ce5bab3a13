"""CALF does what calf-reference.md says, with the official code's defects fixed."""

import pytest
import torch
from torch import nn

from ecalf.backbones import BackboneConfig
from ecalf.config_files import run_config_from_dict
from ecalf.fitting import build_model
from ecalf.models.alignment import DynamicCrossModalMatch
from ecalf.models.base import regression_loss
from ecalf.models.calf import CALF, CALFConfig
from ecalf.registry import get_entry

L, H, C = 24, 8, 3


def tiny_calf(seed: int = 0, **kwargs) -> CALF:
    torch.manual_seed(seed)
    options = dict(
        context_length=L,
        prediction_length=H,
        num_channels=C,
        backbone=BackboneConfig(
            preset="tiny-gpt2", pretrained=False, num_layers=2, num_principal_embeddings=16
        ),
        encoder_heads=4,
        encoder_ff_dim=64,
    )
    options.update(kwargs)
    model = CALF(CALFConfig(**options))
    model.load_pretrained()
    return model


def windows(batch: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, L + H, C, generator=g).cumsum(1)
    return x[:, :L], x[:, L:]


def test_text_branch_never_runs_at_inference():
    model = tiny_calf().eval()

    def boom(*args, **kwargs):
        raise AssertionError("text branch ran at inference")

    model.text_trunk.forward = boom  # type: ignore[method-assign]
    model.match.forward = boom  # type: ignore[method-assign]
    past, _ = windows()
    assert model(past).prediction.shape == (5, H, C)


def test_loss_is_the_three_term_objective_with_layer_decay():
    model = tiny_calf(feature_weight=0.5, output_weight=2.0).eval()
    past, future = windows()
    out = model(past, future)
    # Recompute the feature term from the branches' hidden states.
    x, stats = model.norm.normalize(past)
    x_time = model.encoder(x.transpose(1, 2))
    x_text, _ = model.match(x_time, model.principal_embeddings)
    h_time, h_text = model.time_trunk(x_time), model.text_trunk(x_text)
    n = len(h_time) - 1
    assert n == 2  # two blocks kept -> three levels
    expected_feature = sum(
        0.8 ** (n - k) * regression_loss("l1", model.time_projections[k](a), model.text_projections[k](b))
        for k, (a, b) in enumerate(zip(h_time, h_text, strict=True))
    )
    y_text = model.norm.denormalize(model.head(h_text[-1] + x_text).transpose(1, 2), stats)
    torch.testing.assert_close(out.loss_parts["feature"], expected_feature.detach())
    torch.testing.assert_close(
        out.loss_parts["output"], regression_loss("l1", out.prediction, y_text).detach()
    )
    torch.testing.assert_close(out.loss_parts["task"], regression_loss("l1", out.prediction, future))
    expected = out.loss_parts["task"] + 2.0 * out.loss_parts["output"] + 0.5 * out.loss_parts["feature"]
    torch.testing.assert_close(out.loss.detach(), expected)


def test_cross_modal_match_equals_the_official_repeated_dictionary():
    torch.manual_seed(0)
    match = DynamicCrossModalMatch(32, 4, adaptive_weights=False, alignment_degree=False).eval()
    x_time, dictionary = torch.randn(3, 5, 32), torch.randn(16, 32)
    # Official: dictionary repeated per window, sequence-first MultiheadAttention.
    repeated = dictionary.repeat(3, 1, 1).transpose(0, 1)  # (K, B, D)
    reference = nn.MultiheadAttention(32, 4)
    reference.load_state_dict(match.attention.state_dict())
    expected, _ = reference(x_time.transpose(0, 1), repeated, repeated)
    torch.testing.assert_close(match(x_time, dictionary)[0], expected.transpose(0, 1), rtol=1e-5, atol=1e-6)


def test_instance_normalisation_makes_forecasts_affine_equivariant():
    model = tiny_calf().eval()
    past, _ = windows()
    with torch.no_grad():
        base = model(past).prediction
        moved = model(3.0 * past + 10.0).prediction
    torch.testing.assert_close(moved, 3.0 * base + 10.0, rtol=1e-4, atol=1e-3)


def test_projections_have_their_own_fixed_learning_rate():
    model = tiny_calf()
    groups = {g["name"]: g for g in model.parameter_groups(5e-4)}
    assert groups["model"]["lr"] == 5e-4 and not groups["model"].get("fixed_lr", False)
    assert groups["projections"]["lr"] == 1e-4 and groups["projections"]["fixed_lr"]
    n_proj = sum(p.numel() for m in (model.time_projections, model.text_projections) for p in m.parameters())
    assert sum(p.numel() for p in groups["projections"]["params"]) == n_proj


def test_lora_is_active_in_the_time_branch():
    model = tiny_calf().eval()
    past, _ = windows()
    lora = [p for n, p in model.time_trunk.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for p in lora)
    with torch.no_grad():
        before = model(past).prediction
        for p in lora:
            p.add_(0.5)
        after = model(past).prediction
    assert not torch.allclose(before, after)


def test_dictionary_is_a_fixed_buffer_loaded_from_the_backbone():
    model = tiny_calf()
    assert "principal_embeddings" in dict(model.named_buffers())
    assert model.principal_embeddings.abs().sum() > 0
    assert not any(p is model.principal_embeddings for p in model.parameters())


def test_paper_parameter_count_with_random_gpt2():
    """calf-reference.md: 18,022,496 trainable parameters at H = 96, GPT-2 shapes, 6 layers, LoRA r 8."""
    torch.manual_seed(0)
    config = CALFConfig(
        context_length=96,
        prediction_length=96,
        num_channels=7,
        backbone=BackboneConfig(preset="gpt2", pretrained=False, num_layers=6),
    )
    model = CALF(config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 18_022_496


def test_encoder_heads_must_divide_width():
    with pytest.raises(Exception, match="encoder_heads"):
        tiny_calf(encoder_heads=5)


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
def test_branches_share_one_copy_of_the_frozen_backbone(preset):
    """Frozen pretrained matrices are held once; what a branch trains (norms, positions, LoRA) is its own."""
    options = dict(get_entry("calf").tiny_options)
    options["backbone"] = {**options["backbone"], "preset": preset}
    config = run_config_from_dict(
        {
            "data": {"context_length": 24, "prediction_length": 8},
            "model": {"name": "calf", "num_channels": 3, **options},
        }
    )
    model = build_model(config)
    time_params = {id(p) for p in model.time_trunk.parameters()}
    text = dict(model.text_trunk.named_parameters(remove_duplicate=False))
    shared = {k for k, p in text.items() if id(p) in time_params}
    assert shared and all(not text[k].requires_grad for k in shared)
    assert all(id(p) not in time_params for p in model.text_trunk.parameters() if p.requires_grad)
    assert not any("norm" in k or "ln_" in k or "wpe" in k for k in shared)
    past = torch.randn(2, 24, 3)
    out = model(past, torch.randn(2, 8, 3))
    out.loss.backward()  # trains as before: only trainable parameters get gradients
    assert all(p.grad is None for k, p in text.items() if k in shared)


@pytest.mark.parametrize("name", ["calf", "ecalf"])
def test_no_alignment_weight_means_the_time_branch_alone(name):
    """CALF's few-shot recipe (both alignment weights 0): nothing of the text branch is built, nothing
    of it reaches the optimizer, and the loss is the task loss of the full model on the same weights."""
    entry = get_entry(name)
    off = {"output_weight": 0.0, "feature_weight": 0.0, "contrastive_weight": 0.0}
    time_only = tiny_calf(seed=0, **{**_enhancements(entry.config_class), **off})
    full = tiny_calf(seed=0, **_enhancements(entry.config_class))
    assert not time_only.config.aligns and full.config.aligns
    assert time_only.text_trunk is None and time_only.match is None
    assert len(time_only.time_projections) == 0 and len(time_only.text_projections) == 0
    assert time_only.contrastive is None and time_only.alignment is None
    assert not hasattr(time_only, "principal_embeddings")
    optimized = {id(p) for g in time_only.parameter_groups(1e-3) for p in g["params"]}
    names = {n for n, p in time_only.named_parameters() if id(p) in optimized}
    assert names and not any(n.startswith(("text_", "match", "level_weights", "contrastive")) for n in names)
    assert not any(n.startswith(("text_", "match", "time_projections")) for n in time_only.state_dict())
    # The same weights in both: every tensor of the time-only model is one of the full model's.
    missing, unexpected = full.load_state_dict(time_only.state_dict(), strict=False)
    assert not unexpected
    assert all(k.startswith(("text_", "match", "time_projections", "level_weights", "contrastive",
                             "alignment", "principal_embeddings")) for k in missing)  # fmt: skip
    past, future = windows()
    time_only.eval(), full.eval()
    out_time, out_full = time_only(past, future), full(past, future)
    assert set(out_time.loss_parts) == {"task"}
    torch.testing.assert_close(out_time.loss, out_full.loss_parts["task"], rtol=0, atol=0)
    torch.testing.assert_close(out_time.prediction, out_full.prediction, rtol=0, atol=0)
    assert time_only.training_values() == {}


def _enhancements(config_class):
    """The switches that make a CALFConfig an Enhanced CALF one (none for CALF itself)."""
    if config_class is CALFConfig:
        return {}
    return {"dynamic_match": True, "multilevel_distillation": True, "adaptive_alignment": True}


def test_one_remaining_alignment_weight_builds_the_text_branch():
    for weights in (
        {"output_weight": 1.0, "feature_weight": 0.0},
        {"output_weight": 0.0, "feature_weight": 0.01},
    ):
        model = tiny_calf(**weights)
        assert model.config.aligns and model.text_trunk is not None and model.match is not None
    contrastive_only = CALFConfig(output_weight=0.0, feature_weight=0.0, multilevel_distillation=True)
    assert contrastive_only.aligns  # its contrastive weight (0.1) still needs the text branch
