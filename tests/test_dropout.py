"""ecalf.dropout: cheaper CPU dropout masks with torch's dropout distribution and semantics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ecalf.config import ConfigError, TrainingConfig
from ecalf.dropout import FastDropout, drop_levels, dropout_masks, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_masks_drop_each_element_independently_at_the_rate(p):
    torch.manual_seed(0)
    keep = keep_mask((1000, 1000), p)
    rate = drop_levels(p) / 65536
    assert abs(rate - p) < 1e-5
    dropped = (~keep).double()
    sigma = (rate * (1 - rate) / keep.numel()) ** 0.5
    assert abs(dropped.mean().item() - rate) < 5 * sigma
    # neighbours share a random word (four elements per word) yet are independent
    pairs = dropped[:, :-1] * dropped[:, 1:]
    assert abs(pairs.mean().item() - rate**2) < 5 * (rate**2 * (1 - rate**2) / pairs.numel()) ** 0.5
    # and the drop rate does not depend on the position within the word
    per_share = dropped.view(-1, 4).mean(0)
    assert (per_share - rate).abs().max().item() < 5 * 2 * sigma


def test_fast_dropout_is_unbiased_and_its_gradient_uses_the_same_mask():
    layer = FastDropout(0.1).train()
    x = torch.rand(300, 400, dtype=torch.float64) + 1.0
    x.requires_grad_(True)
    torch.manual_seed(3)
    out = layer(x)
    out.sum().backward()
    assert x.grad is not None
    kept = out != 0
    scale = 65536 / (65536 - drop_levels(0.1))
    torch.testing.assert_close(out[kept], x.detach()[kept] * scale)
    torch.testing.assert_close(x.grad, kept.double() * scale)
    assert abs(out.sum().item() / x.sum().item() - 1) < 0.01  # the expectation is the input


def test_masks_come_from_torchs_generator():
    layer = FastDropout(0.3).train()
    x = torch.ones(64, 64)
    torch.manual_seed(5)
    a = layer(x)
    torch.manual_seed(5)
    b = layer(x)
    c = layer(x)
    torch.testing.assert_close(a, b)
    assert not torch.equal(b, c)


def test_eval_mode_and_edge_rates_are_torchs():
    x = torch.randn(8, 16)
    torch.testing.assert_close(FastDropout(0.5).eval()(x), x)
    torch.testing.assert_close(FastDropout(0.0).train()(x), x)
    assert torch.count_nonzero(FastDropout(1.0).train()(x)) == 0
    assert FastDropout(0.2).train()(torch.empty(0, 3)).shape == (0, 3)


def test_dropout_masks_switches_plain_dropout_modules_and_restores_them():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), nn.Sequential(nn.Dropout(0.1)))
    with dropout_masks(model, "fast"):
        assert [type(m) for m in model.modules() if isinstance(m, nn.Dropout)] == [FastDropout] * 2
        assert model[1].p == 0.2
    assert [type(m) for m in model.modules() if isinstance(m, nn.Dropout)] == [nn.Dropout] * 2
    with dropout_masks(model, "torch"):
        assert all(type(m) is nn.Dropout for m in model.modules() if isinstance(m, nn.Dropout))
    with pytest.raises(ValueError, match="'fast' or 'torch'"), dropout_masks(model, "numpy"):
        pass


def test_training_config_checks_the_kind():
    assert TrainingConfig().dropout_masks == "fast"
    with pytest.raises(ConfigError, match="dropout_masks"):
        TrainingConfig(dropout_masks="bernoulli")  # type: ignore[arg-type]
