"""Recipe levers (issue #24): warm-up, AdamW, validation by step, trunk dropout, ridge-initialised skip."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ecalf.backbones import BackboneConfig
from ecalf.config import ConfigError, DataConfig, RunConfig, TrainingConfig
from ecalf.data import WindowDataset
from ecalf.fitting import build_model, fit_model
from ecalf.models.calf import CALFConfig
from ecalf.models.linear import LinearConfig, LinearForecast
from ecalf.training import FINITE_CHECK_STEPS, EpochLog, build_optimizer, snapshot, train, warmup_factor

L, H, C = 24, 6, 3
TINY_BACKBONE = BackboneConfig("tiny-gpt2", pretrained=False, num_layers=2, num_principal_embeddings=16)


def series(rows: int, seed: int) -> torch.Tensor:
    """A (rows, C) noisy sum of sines: something a linear map forecasts well, but not perfectly."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(rows, dtype=torch.float32)[:, None]
    phase = torch.rand(1, C, generator=g) * 6.28
    return torch.sin(t / 5 + phase) + 0.5 * torch.sin(t / 13) + 0.2 * torch.randn(rows, C, generator=g)


def splits() -> tuple[WindowDataset, WindowDataset]:
    return WindowDataset(series(300, 0), L, H), WindowDataset(series(120, 1), L, H)


def calf_config(**model: object) -> CALFConfig:
    return CALFConfig(
        context_length=L,
        prediction_length=H,
        num_channels=C,
        backbone=TINY_BACKBONE,
        encoder_heads=4,
        encoder_ff_dim=32,
        output_weight=0.0,
        feature_weight=0.0,
        **model,  # type: ignore[arg-type]
    )


def run_config(model: CALFConfig, **training: object) -> RunConfig:
    base = TrainingConfig(epochs=2, batch_size=32, learning_rate=1e-3, progress=False, tracking="none")
    data = DataConfig(context_length=L, prediction_length=H)
    return RunConfig(data=data, model=model, training=dataclasses.replace(base, **training))  # type: ignore[arg-type]


def test_new_training_settings_are_checked() -> None:
    for bad in ({"eval_every_steps": 0}, {"warmup_steps": -1}, {"weight_decay": -0.1}, {"val_stride": 0}):
        with pytest.raises(ConfigError):
            TrainingConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="linear_skip"):
        calf_config(skip_init="ridge")
    with pytest.raises(ConfigError, match="block_dropout"):
        BackboneConfig(preset="tiny-gpt2", pretrained=False, block_dropout=1.0)


def test_linear_warmup_scales_the_first_steps() -> None:
    config = TrainingConfig(warmup_steps=4)
    assert [warmup_factor(config, s) for s in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert warmup_factor(TrainingConfig(), 1) == 1.0
    seen: list[float] = []
    model = build_model(run_config(calf_config()))
    original = torch.optim.Adam.step

    def spy(self: torch.optim.Optimizer, *args: object, **kwargs: object) -> object:
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    train_set, val_set = splits()
    cfg = dataclasses.replace(TrainingConfig(), epochs=1, batch_size=64, learning_rate=1e-3, warmup_steps=3,
                              scheduler="constant", progress=False)  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.Adam, "step", spy)
        train(model, train_set, val_set, cfg, seed=0, log=lambda _: None)
    assert seen[:4] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3])


def test_adamw_decouples_weight_decay() -> None:
    model = build_model(run_config(calf_config()))
    adamw = build_optimizer(model, TrainingConfig(optimizer="adamw", weight_decay=0.1))
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["weight_decay"] == 0.1
    assert type(build_optimizer(model, TrainingConfig())) is torch.optim.Adam


def test_step_validation_restores_the_best_steps_weights_exactly() -> None:
    """Validation every 2 steps (and before the first): the weights returned are those of the best
    validation, bit for bit, whichever step inside an epoch it was, and the patience counts validations."""
    train_set, val_set = splits()
    config = run_config(calf_config(), epochs=3, eval_every_steps=2, learning_rate=3e-3, patience=100)
    kept: dict[int, dict[str, torch.Tensor]] = {}
    validations: list[EpochLog] = []

    def on_improvement(model: object, record: EpochLog) -> None:
        validations.append(record)
        kept[record.steps] = snapshot(model)  # type: ignore[arg-type]

    fitted = fit_model(config, train_set, val_set, device=torch.device("cpu"), log=lambda _: None,
                       on_improvement=on_improvement)  # fmt: skip
    result = fitted.result
    assert validations[0].steps == 0  # the weights before any step were validated first
    assert result.best_step == validations[-1].steps
    assert result.best_val_mse == validations[-1].val_mse
    final = snapshot(fitted.model)
    best = kept[result.best_step]
    assert final.keys() == best.keys()
    assert all(torch.equal(final[k], best[k]) for k in final)
    steps_per_epoch = math.ceil(len(train_set) / 32)
    assert result.steps == 3 * steps_per_epoch
    assert any(r.steps % steps_per_epoch for r in validations[1:]), "no validation inside an epoch improved"

    # Patience in validations: with patience 1 training stops at the first validation that is no better.
    records: list[str] = []
    stopped = fit_model(
        run_config(calf_config(), epochs=5, eval_every_steps=1, learning_rate=5e-2, patience=1),
        train_set, val_set, device=torch.device("cpu"), log=records.append,
    ).result  # fmt: skip
    assert stopped.stopped == "early_stopping"
    assert stopped.steps < 5 * steps_per_epoch
    assert any("1 validations" in line for line in records)


def test_strided_windows_are_every_nth_window_of_the_split() -> None:
    _, val_set = splits()
    strided = val_set.strided(4)
    assert len(strided) == math.ceil(len(val_set) / 4)
    every = torch.arange(0, len(val_set), 4)
    for got, expected in zip(
        strided.get_batch(torch.arange(len(strided))), val_set.get_batch(every), strict=True
    ):
        assert torch.equal(got, expected)
    assert val_set.strided(1) is val_set
    assert len(val_set.strided(len(val_set) + 5)) == 1  # the first window, always


def test_val_stride_validates_on_every_nth_window(monkeypatch) -> None:
    """With ``training.val_stride`` N, each validation during training scores exactly the strided
    windows (the reported validation MSE is theirs), and training is otherwise the same loop."""
    import ecalf.training as training

    train_set, val_set = splits()
    seen: list[int] = []
    evaluate = training.evaluate

    def spy(model, dataset, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(len(dataset))
        return evaluate(model, dataset, **kwargs)

    monkeypatch.setattr(training, "evaluate", spy)
    config = run_config(calf_config(), epochs=2, val_stride=3)
    fitted = fit_model(config, train_set, val_set, device=torch.device("cpu"), log=lambda _: None)
    assert seen and set(seen) == {len(val_set.strided(3))}
    result, model = fitted.result, fitted.model
    assert result.best_val_mse == pytest.approx(evaluate(model, val_set.strided(3)).mse)


def test_ridge_initialised_skip_gives_the_linear_forecast_at_step_zero() -> None:
    train_set, val_set = splits()
    config = run_config(calf_config(linear_skip=True, skip_init="ridge"))
    model = build_model(config)
    assert set(model.initialize_from_data(train_set, val_set)) == {"skip_ridge", "skip_train_mse"}
    linear = LinearForecast(LinearConfig(L, H, C))
    linear.fit_closed_form(train_set, val_set)
    past, _ = val_set.get_batch(torch.arange(len(val_set)))
    model.eval()
    with torch.no_grad():
        expected = linear(past).prediction
        assert torch.allclose(model(past).prediction, expected, atol=1e-5)
        model.train()  # dropout on, still the linear forecast: the correction starts at zero
        assert torch.allclose(model(past).prediction, expected, atol=1e-5)


def test_ridge_skip_with_step_validation_never_ends_above_the_linear_floor() -> None:
    train_set, val_set = splits()
    model = calf_config(linear_skip=True, skip_init="ridge")
    config = run_config(model, eval_every_steps=3, learning_rate=0.5)
    fitted = fit_model(config, train_set, val_set, device=torch.device("cpu"), log=lambda _: None)
    linear = LinearForecast(LinearConfig(L, H, C))
    linear.fit_closed_form(train_set, val_set)
    past, future = val_set.get_batch(torch.arange(len(val_set)))
    with torch.no_grad():
        floor = torch.mean((linear(past).prediction - future) ** 2).item()
    assert fitted.result.best_val_mse <= floor + 1e-5


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
def test_block_dropout_acts_in_training_only_and_keeps_the_weights(preset: str) -> None:
    backbone = dataclasses.replace(TINY_BACKBONE, preset=preset)
    plain = build_model(run_config(dataclasses.replace(calf_config(), backbone=backbone)))
    dropped_config = dataclasses.replace(backbone, block_dropout=0.5)
    dropped = build_model(run_config(dataclasses.replace(calf_config(), backbone=dropped_config)))
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    dropped.load_state_dict(plain.state_dict())
    past, _ = splits()[1].get_batch(torch.arange(8))
    plain.eval(), dropped.eval()
    with torch.no_grad():
        assert torch.equal(plain(past).prediction, dropped(past).prediction)
        dropped.train()
        torch.manual_seed(0)
        first = dropped(past).prediction
        torch.manual_seed(1)
        assert not torch.allclose(first, dropped(past).prediction)


def test_step_validation_on_a_finiteness_check_step_trains_on() -> None:
    """Validation every 10 steps meets the loss check of every 50th step of an epoch (step 50): the
    check before the validation then has no unchecked loss left, which is no divergence (it crashed)."""
    train_set, val_set = splits()
    assert len(train_set) >= FINITE_CHECK_STEPS + 1  # batch 1: more than 50 steps in the epoch
    config = run_config(calf_config(), epochs=1, batch_size=1, eval_every_steps=10, patience=100)
    result = fit_model(config, train_set, val_set, device=torch.device("cpu"), log=lambda _: None).result
    assert result.steps == len(train_set) and result.stopped == "epochs"
