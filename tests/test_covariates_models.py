"""Covariates in the models (issue #26): ``linear`` as an ARX model, known-future covariate tokens in
(Enhanced) CALF, and every model training with past covariates whose futures are NaN."""

from __future__ import annotations

import itertools

import pytest
import torch

from ecalf.config import DataConfig, ModelConfig, RunConfig, TrainingConfig, from_dict
from ecalf.data import WindowDataset
from ecalf.errors import ConfigError
from ecalf.evaluation import evaluate
from ecalf.fitting import fit_model
from ecalf.models.base import ForecastModel, count_parameters
from ecalf.models.linear import LinearConfig, LinearForecast
from ecalf.registry import get_entry

L, H = 24, 6
NAN = float("nan")


def split(series: torch.Tensor, num_targets: int, num_future_covariates: int = 0) -> WindowDataset:
    """Windows over ``series`` (T, C) whose covariate channels (after ``num_targets``) are NaN as targets."""
    targets = series.clone()
    targets[:, num_targets:] = NAN
    return WindowDataset(series, L, H, targets=targets, num_future_covariates=num_future_covariates)


def splits(series: torch.Tensor, num_targets: int, num_future_covariates: int = 0) -> list[WindowDataset]:
    """Train, validation and test windows over the first 60 %, the next 20 % and the last 20 % of rows."""
    rows = series.shape[0]
    bounds = [0, int(0.6 * rows), int(0.8 * rows), rows]
    return [split(series[a:b], num_targets, num_future_covariates) for a, b in itertools.pairwise(bounds)]


def arx_series(rows: int = 2000, seed: int = 0) -> torch.Tensor:
    """[target, covariate]: the target is 1.5 u(t - H) - 0.5 u(t - H - 2) + noise of a white-noise covariate
    u, so a horizon is a linear function of the covariate's window (and of nothing in the target's)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(rows + H + 2, generator=g)
    y = 1.5 * u[2 : rows + 2] - 0.5 * u[:rows] + 0.1 * torch.randn(rows, generator=g)
    return torch.stack([y, u[H + 2 :]], dim=1)  # (T, 2): y(t) with u(t)


def known_future_series(rows: int = 2000, seed: int = 0) -> torch.Tensor:
    """[target, covariate]: the target is 2 x(t) + noise, x white noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, generator=g)
    return torch.stack([2 * x + 0.05 * torch.randn(rows, generator=g), x], dim=1)


def linear_fit(series: torch.Tensor, num_targets: int, past: int = 0, future: int = 0) -> float:
    """Test MSE of ``linear`` fitted on ``series`` with that many past and known-future covariates."""
    train_set, val_set, test_set = splits(series, num_targets, future)
    config = LinearConfig(L, H, series.shape[1], num_past_covariates=past, num_future_covariates=future)
    model = LinearForecast(config)
    model.fit_closed_form(train_set, val_set)
    return evaluate(model, test_set).mse


def tiny_config(name: str, num_channels: int, **fields: object) -> ModelConfig:
    options = dict(get_entry(name).tiny_options)
    options.update(context_length=L, prediction_length=H, num_channels=num_channels, **fields)
    return from_dict(get_entry(name).config_class, options, path="model")


def tiny_model(name: str, num_channels: int, seed: int = 0, **fields: object) -> ForecastModel:
    torch.manual_seed(seed)
    model = get_entry(name).model_class(tiny_config(name, num_channels, **fields))
    assert isinstance(model, ForecastModel)
    model.load_pretrained()
    return model


# -- linear as an ARX model ----------------------------------------------------------------------------


def test_linear_recovers_an_arx_relation_through_a_past_covariate() -> None:
    series = arx_series()
    with_covariate = linear_fit(series, num_targets=1, past=1)
    without = linear_fit(series[:, :1], num_targets=1)
    # The window mean of the target (removed and added back) is not quite known from the covariate's
    # window: a small error above the noise (0.01) remains.
    assert with_covariate < 0.02
    assert without > 1.0 > 20 * with_covariate


def test_linear_with_a_known_future_covariate_forecasts_its_same_time_relation() -> None:
    series = known_future_series()
    with_covariate = linear_fit(series, num_targets=1, future=1)
    as_past_only = linear_fit(series, num_targets=1, past=1)
    alone = linear_fit(series[:, :1], num_targets=1)
    assert with_covariate < 0.01  # the noise, 0.05 ** 2
    assert as_past_only > 1.0 and alone > 1.0


def test_linear_needs_the_future_covariates_it_was_built_for() -> None:
    model = LinearForecast(LinearConfig(L, H, 2, num_future_covariates=1))
    past = torch.randn(3, L, 2)
    with pytest.raises(ValueError, match="future_covariates"):
        model(past)
    with pytest.raises(ValueError, match="future_covariates must have shape"):
        model(past, future_covariates=torch.randn(3, H, 2))
    prediction = model(past, future_covariates=torch.randn(3, H, 1)).prediction
    assert prediction.shape == (3, H, 2) and torch.isfinite(prediction).all()


# -- a missing target is never a training target -------------------------------------------------------


def hidden_change(
    series: torch.Tensor, channel: int, num_targets: int
) -> tuple[WindowDataset, WindowDataset]:
    """Windows over ``series`` and over a copy whose ``channel`` differs in the last H rows, where the
    targets are NaN (a missing target, or a covariate): rows that are in no window's context."""
    changed = series.clone()
    changed[-H:, channel] += 100.0
    first, second = split(series, num_targets), split(changed, num_targets)
    for dataset in (first, second):
        dataset.targets[-H:, channel] = NAN
    return first, second


def test_a_missing_target_never_enters_the_linear_fit() -> None:
    series = arx_series(600)
    train = hidden_change(series[:400], channel=0, num_targets=1)
    val = hidden_change(series[400:], channel=0, num_targets=1)
    fits = []
    for train_set, val_set in zip(train, val):
        model = LinearForecast(LinearConfig(L, H, 2, num_past_covariates=1))
        fits.append((model, model.fit_closed_form(train_set, val_set)))
    (first, first_fit), (second, second_fit) = fits
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert first_fit == second_fit  # training loss and every validation score
    # The values would matter as targets: with them observed, the fit moves.
    observed = LinearForecast(LinearConfig(L, H, 2, num_past_covariates=1))
    observed.fit_closed_form(split(train[1].series, 1), split(val[1].series, 1))
    assert not torch.equal(observed.weight, first.weight)


def test_linear_scores_its_ridge_strengths_as_the_evaluation_scores_with_missing_targets() -> None:
    """With some validation targets missing, the chosen strength's validation MSE is the evaluation's
    (every observed horizon point), not that of the windows whose horizon is complete."""
    series = arx_series(800)
    train_set, val_set, _ = splits(series, num_targets=1)
    val_set.targets[::7, 0] = NAN  # a missing value in every horizon: no window's is complete
    model = LinearForecast(LinearConfig(L, H, 2, num_past_covariates=1))
    fit = model.fit_closed_form(train_set, val_set)
    chosen = fit.values[f"val_mse@ridge={fit.values['ridge']:g}"]
    assert chosen == pytest.approx(evaluate(model, val_set).mse, rel=1e-5)


def one_step(model: ForecastModel, dataset: WindowDataset, indices: torch.Tensor) -> ForecastModel:
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    past, future = dataset.get_batch(indices)
    torch.manual_seed(7)  # the same dropout masks
    output = model(past, future)
    assert output.loss is not None and torch.isfinite(output.loss)
    output.loss.backward()
    optimizer.step()
    return model


def test_a_missing_target_never_enters_an_ecalf_step() -> None:
    series = arx_series(200)
    first, second = hidden_change(series, channel=0, num_targets=1)
    last = torch.arange(len(first) - 4, len(first))  # their horizons hold the missing values
    a = one_step(tiny_model("ecalf", 2, num_past_covariates=1), first, last).state_dict()
    b = one_step(tiny_model("ecalf", 2, num_past_covariates=1), second, last).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = one_step(tiny_model("ecalf", 2, num_past_covariates=1), split(second.series, 1), last).state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


# -- covariate channels never enter the loss -----------------------------------------------------------


@pytest.mark.parametrize("name", ["ecalf", "calf", "dlinear", "linear"])
def test_a_covariates_future_changes_neither_loss_nor_gradient(name: str) -> None:
    series = arx_series(200)
    first, second = hidden_change(series, channel=1, num_targets=1)  # the past covariate's horizon
    last = torch.arange(len(first) - 4, len(first))
    results = []
    for dataset in (first, second):
        model = tiny_model(name, 2, num_past_covariates=1)
        model.train()
        past, future = dataset.get_batch(last)
        torch.manual_seed(7)
        output = model(past, future)
        assert output.loss is not None
        grads = {}
        if output.loss.requires_grad:
            output.loss.backward()
            grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((output.loss, grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)


def test_ecalf_loss_has_no_gradient_at_covariate_forecasts() -> None:
    """Task loss, output consistency and the alignment terms: nothing pulls a covariate's forecast."""
    model = tiny_model("ecalf", 3, num_past_covariates=1, num_future_covariates=1)
    model.train()
    dataset = split(torch.randn(100, 3).cumsum(0), num_targets=1, num_future_covariates=1)
    idx = torch.arange(4)
    past, future = dataset.get_batch(idx)
    output = model(past, future, future_covariates=dataset.future_covariates(idx))
    output.prediction.retain_grad()
    assert output.loss is not None and torch.isfinite(output.loss)
    output.loss.backward()
    grad = output.prediction.grad
    assert grad is not None and grad[..., :1].abs().sum() > 0
    assert torch.equal(grad[..., 1:], torch.zeros_like(grad[..., 1:]))


# -- Enhanced CALF's known-future covariate token ------------------------------------------------------


def test_ecalf_with_a_known_future_covariate_trains_and_forecasts_from_it() -> None:
    train_set, val_set, test_set = splits(known_future_series(300), num_targets=1, num_future_covariates=1)
    model_config = tiny_config("ecalf", 2, num_future_covariates=1)
    config = RunConfig(
        data=DataConfig(context_length=L, prediction_length=H),
        model=model_config,
        training=TrainingConfig(
            epochs=1, max_steps=3, batch_size=16, learning_rate=1e-3, progress=False, tracking="none"
        ),
    )
    torch.manual_seed(config.seed)
    initial = get_entry("ecalf").model_class(config.model).state_dict()["future_embed.weight"].clone()
    fitted = fit_model(config, train_set, val_set, device=torch.device("cpu"), log=lambda _: None)
    model = fitted.model
    assert not torch.equal(model.state_dict()["future_embed.weight"], initial)  # it trained
    assert torch.isfinite(torch.tensor(fitted.result.best_val_mse))
    model.eval()
    idx = torch.arange(8)
    past, _ = test_set.get_batch(idx)
    known = test_set.future_covariates(idx)
    with torch.no_grad():
        forecast = model(past, future_covariates=known).prediction[..., 0]
        moved = model(past, future_covariates=known + 1.0).prediction[..., 0]
        again = model(past, future_covariates=known).prediction[..., 0]
    assert torch.equal(forecast, again)
    assert (forecast - moved).abs().max() > 1e-4
    with pytest.raises(ValueError, match="future_covariates"):
        model(past)


def test_without_known_future_covariates_ecalf_builds_what_it_did() -> None:
    """K = 0 creates no new module (so calf's and ecalf's weights and random draws stay as they were);
    K = 1 adds exactly one Linear(L + H -> D)."""
    plain = tiny_model("ecalf", 3)
    past_only = tiny_model("ecalf", 3, num_past_covariates=2)
    known = tiny_model("ecalf", 3, num_future_covariates=1)
    for model in (plain, past_only):
        assert not any("future_embed" in name for name in model.state_dict())
    assert count_parameters(past_only) == count_parameters(plain)
    a, b = plain.state_dict(), past_only.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    width = known.head.in_features
    extra = count_parameters(known)["total"] - count_parameters(plain)["total"]
    assert extra == (L + H) * width + width
    # Every module before it was built from the same random draws.
    c = known.state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)


# -- the other models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dlinear", "patchtst", "itransformer", "naive", "mean", "calf", "ecalf"])
def test_every_model_trains_with_past_covariates(name: str) -> None:
    dataset = split(torch.randn(80, 3).cumsum(0), num_targets=2)  # one past covariate, NaN as target
    model = tiny_model(name, 3, num_past_covariates=1)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3) if params else None
    before = [p.detach().clone() for p in params]
    for step in range(2):
        past, future = dataset.get_batch(torch.arange(8 * step, 8 * step + 8))
        output = model(past, future)
        assert output.loss is not None and torch.isfinite(output.loss)
        assert torch.isfinite(output.prediction).all()
        if optimizer is not None:
            optimizer.zero_grad()
            output.loss.backward()
            optimizer.step()
    assert all(torch.isfinite(p).all() for p in params)
    assert not params or any(not torch.equal(p, q) for p, q in zip(params, before, strict=True))


def test_linear_fits_with_past_covariates_and_calf_ridge_skip_ignores_their_futures() -> None:
    series = torch.randn(300, 3).cumsum(0)
    train_set, val_set = split(series[:200], 2), split(series[200:], 2)
    linear = LinearForecast(LinearConfig(L, H, 3, num_past_covariates=1))
    linear.fit_closed_form(train_set, val_set)
    assert torch.isfinite(linear.weight).all() and torch.isfinite(linear.bias).all()
    model = tiny_model("ecalf", 3, num_past_covariates=1, linear_skip=True, skip_init="ridge")
    chosen = model.initialize_from_data(train_set, val_set)
    assert model.skip is not None and torch.isfinite(model.skip.weight).all()
    assert all(torch.isfinite(torch.tensor(v)) for v in chosen.values())


@pytest.mark.parametrize("name", ["dlinear", "patchtst", "itransformer", "naive", "mean"])
def test_models_without_future_covariate_inputs_refuse_them(name: str) -> None:
    with pytest.raises(ConfigError, match="calf, ecalf, linear") as raised:
        tiny_model(name, 3, num_future_covariates=1)
    assert "\n" not in str(raised.value)
