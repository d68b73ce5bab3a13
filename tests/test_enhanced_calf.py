"""Enhanced CALF: each mechanism's defining property, and 'all off' == CALF exactly."""

import dataclasses
import math

import pytest
import torch

import ecalf.models.calf as calf_module
from ecalf.backbones import BackboneConfig
from ecalf.models.alignment import (
    AlignmentScore,
    ContrastiveLoss,
    DynamicCrossModalMatch,
    LevelWeights,
    adaptive_weight,
    window_statistics,
)
from ecalf.models.calf import CALF, CALFConfig, ECALFConfig

L, H = 24, 8
TINY = dict(
    backbone=BackboneConfig(preset="tiny-gpt2", pretrained=False, num_layers=2, num_principal_embeddings=16),
    encoder_heads=4,
    encoder_ff_dim=64,
    context_length=L,
    prediction_length=H,
)
ALL_OFF = dict(dynamic_match=False, multilevel_distillation=False, adaptive_alignment=False)


def build(config_class=ECALFConfig, seed: int = 0, num_channels: int = 3, **kwargs) -> CALF:
    torch.manual_seed(seed)
    model = CALF(config_class(num_channels=num_channels, **{**TINY, **kwargs}))
    model.load_pretrained()
    return model


def windows(batch: int = 4, channels: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, L + H, channels, generator=g).cumsum(1)
    return x[:, :L], x[:, L:]


def test_all_switches_off_equals_calf_exactly():
    calf = build(CALFConfig)
    enhanced_off = build(ECALFConfig, **ALL_OFF)
    for (k1, v1), (k2, v2) in zip(calf.state_dict().items(), enhanced_off.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    past, future = windows()
    for model in (calf, enhanced_off):
        model.train()
    torch.manual_seed(5)
    a = calf(past, future)
    torch.manual_seed(5)
    b = enhanced_off(past, future)
    assert torch.equal(a.prediction, b.prediction)
    assert torch.equal(a.loss, b.loss)
    assert a.loss_parts.keys() == b.loss_parts.keys()


def test_enhancements_leave_calf_weights_unchanged_at_the_same_seed():
    calf, enhanced = build(CALFConfig).state_dict(), build(ECALFConfig).state_dict()
    for key, value in calf.items():
        assert torch.equal(value, enhanced[key]), key
    assert set(enhanced) - set(calf)  # the enhancements add parameters of their own


def test_dynamic_match_starts_as_calf_cross_attention():
    torch.manual_seed(0)
    dynamic = DynamicCrossModalMatch(32, 4, adaptive_weights=True, alignment_degree=False).eval()
    plain = DynamicCrossModalMatch(32, 4, adaptive_weights=False, alignment_degree=False).eval()
    plain.attention.load_state_dict(dynamic.attention.state_dict())
    x_time, dictionary = torch.randn(2, 5, 32), torch.randn(16, 32)
    stats = window_statistics(torch.randn(2, L, 5))
    torch.testing.assert_close(dynamic(x_time, dictionary, stats)[0], plain(x_time, dictionary)[0])
    # Once the generator's last layer moves, the temperatures and mixing weights change the result.
    with torch.no_grad():
        dynamic.generator[-1].bias.normal_()
    assert not torch.allclose(dynamic(x_time, dictionary, stats)[0], plain(x_time, dictionary)[0])


def test_alignment_degree_is_in_unit_interval_and_depends_on_input():
    torch.manual_seed(0)
    match = DynamicCrossModalMatch(32, 4, adaptive_weights=True, alignment_degree=True)
    dictionary = torch.randn(16, 32)
    d1 = match(torch.randn(2, 5, 32), dictionary, torch.randn(2, 5, 5))[1]
    d2 = match(10 * torch.randn(2, 5, 32), dictionary, torch.randn(2, 5, 5))[1]
    assert d1.shape == (2, 5)
    for d in (d1, d2):
        assert ((d > 0) & (d < 1)).all()
    assert not torch.allclose(d1, d2)


def test_alignment_degree_cannot_close_below_its_bound():
    """A gate driven fully shut (the collapse seen on ETTh1) still keeps degree_min of x_att."""
    torch.manual_seed(0)
    x_time, dictionary, stats = torch.randn(2, 5, 32), torch.randn(16, 32), torch.randn(2, 5, 5)
    bounded = DynamicCrossModalMatch(32, 4, adaptive_weights=True, alignment_degree=True, degree_min=0.5)
    unbounded = DynamicCrossModalMatch(32, 4, adaptive_weights=True, alignment_degree=True)
    unbounded.load_state_dict(bounded.state_dict())
    for match in (bounded, unbounded):
        gate = match.degree[-1]
        torch.nn.init.constant_(gate.bias, -100.0)
    x_text, degree = bounded(x_time, dictionary, stats)
    x_text_closed, degree_closed = unbounded(x_time, dictionary, stats)
    assert torch.allclose(degree, torch.full_like(degree, 0.5))
    assert torch.allclose(x_text_closed, x_time) and (degree_closed < 1e-6).all()
    assert not torch.allclose(x_text, x_time, atol=1e-3)
    with pytest.raises(ValueError, match="degree_min"):
        DynamicCrossModalMatch(32, 4, adaptive_weights=False, alignment_degree=True, degree_min=1.0)


def test_window_statistics_mean_what_they_say():
    t = torch.arange(L, dtype=torch.float32)
    ramp = t.view(1, L, 1)
    sine = torch.sin(2 * math.pi * t / 8).view(1, L, 1)
    noise = torch.randn(1, L, 1, generator=torch.Generator().manual_seed(0))
    stats = window_statistics(torch.cat([ramp, sine, noise], dim=2))[0]  # (C, 5)
    assert stats[0, 3] == pytest.approx(1.0, abs=1e-4)  # a ramp is pure trend
    assert stats[0, 0] == pytest.approx(float(t.mean()))
    assert stats[1, 4] < stats[2, 4]  # a sine has lower spectral entropy than noise
    assert stats[0, 2] > 0.8  # a ramp is strongly autocorrelated


def test_temperature_is_learned_and_stays_in_its_clamp():
    loss_fn = ContrastiveLoss(init=0.1, minimum=0.01, maximum=1.0)
    a = torch.randn(4, 3, 8)
    before = float(loss_fn.temperature.detach())
    opt = torch.optim.SGD(loss_fn.parameters(), lr=1.0)
    loss_fn(a, a + 0.1 * torch.randn_like(a)).backward()
    opt.step()
    assert float(loss_fn.temperature.detach()) != before
    for raw in (-100.0, 100.0):
        loss_fn.raw.data.fill_(raw)
        assert 0.01 - 1e-7 <= float(loss_fn.temperature.detach()) <= 1.0 + 1e-7


def test_contrastive_loss_prefers_matched_pairs():
    torch.manual_seed(0)
    loss_fn = ContrastiveLoss()
    time = torch.randn(8, 4, 16)
    text = time + 0.05 * torch.randn_like(time)
    shuffled = text.reshape(-1, 16)[torch.randperm(32)].reshape(8, 4, 16)
    assert loss_fn(time, text) < loss_fn(time, shuffled)


def test_contrastive_loss_is_zero_not_nan_for_one_token():
    loss = ContrastiveLoss()(torch.randn(1, 1, 8), torch.randn(1, 1, 8))
    assert float(loss.detach()) == 0.0


def test_adaptive_weights_move_in_the_documented_direction():
    weights = [
        adaptive_weight(1.0, s, beta=1.0, minimum=0.0, maximum=2.0) for s in (0.0, 0.25, 0.5, 0.75, 1.0)
    ]
    assert weights == sorted(weights, reverse=True)  # better alignment -> smaller weight
    assert weights[2] == 1.0 and weights[0] == 2.0 and weights[-1] == 0.0
    assert adaptive_weight(0.01, 0.0, beta=3.0, minimum=0.0, maximum=2.0) == pytest.approx(0.02)  # clamped


def test_alignment_score_is_an_ema_of_cosine_similarity():
    score = AlignmentScore(momentum=0.5, initial=0.5)
    x = torch.randn(2, 3, 8)
    score.update(x, x)  # cosine 1
    assert float(score.value) == pytest.approx(0.75)
    score.update(x, -x)  # cosine -1 -> clamped to 0
    assert float(score.value) == pytest.approx(0.375)


def test_learned_level_weights_start_at_calf_decay():
    fixed, learned = LevelWeights(4, 0.8, learned=False), LevelWeights(4, 0.8, learned=True)
    torch.testing.assert_close(learned(), fixed())
    torch.testing.assert_close(fixed(), torch.tensor([0.8**3, 0.8**2, 0.8, 1.0]))


@pytest.mark.parametrize(("batch", "channels"), [(1, 1), (1, 3), (2, 1)])
def test_no_nan_with_one_channel_or_a_batch_of_one(batch, channels):
    model = build(num_channels=channels, level_weights="learned", degree_aux_weight=0.1).train()
    past, future = windows(batch, channels)
    out = model(past, future)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


def test_adapted_values_are_reported_per_epoch():
    model = build(level_weights="learned").train()
    past, future = windows()
    for _ in range(2):
        model(past, future)
    values = model.training_values()
    for key in ("alignment_score", "weight_output", "weight_feature", "weight_contrastive", "temperature",
                "alignment_degree", "level_weight_0"):  # fmt: skip
        assert key in values, key
    assert 0.0 <= values["alignment_score"] <= 1.0
    assert "alignment_score" not in model.training_values()  # reset after each report


@pytest.mark.parametrize("mode", ["none", "attention", "random"])
def test_ablation_backbone_modes(mode, monkeypatch):
    seen = []
    original = calf_module.load_pretrained_weights

    def spy(config):
        seen.append(config)
        return original(config)

    monkeypatch.setattr(calf_module, "load_pretrained_weights", spy)
    model = build(CALFConfig, backbone_mode=mode).train()
    past, future = windows()
    out = model(past, future)
    out.loss.backward()
    assert out.prediction.shape == (4, H, 3)
    if mode == "none":
        assert model.time_trunk is None and len(model.time_projections) == 1
    if mode == "attention":
        assert all(p.requires_grad for p in model.time_trunk.parameters())
        assert len(model.time_projections) == 2
    if mode == "random":
        assert seen[-1].pretrained is False


def test_ecalf_preset_turns_every_enhancement_on():
    config = ECALFConfig(**TINY)
    assert config.dynamic_match and config.multilevel_distillation and config.adaptive_alignment
    off = dataclasses.replace(config, **ALL_OFF)
    assert not (off.dynamic_match or off.multilevel_distillation or off.adaptive_alignment)


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_degree_min_outside_unit_interval_is_a_config_error(value):
    from ecalf.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model\.degree_min"):
        ECALFConfig(degree_min=value)
