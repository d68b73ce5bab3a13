"""The one fit path: build a model from its config, load its weights, train it.

Every caller that fits a model goes through here — the experiment runner (:mod:`ecalf.run`, one
benchmark cell), the practitioner API (:class:`ecalf.forecast.Forecaster`) — so building (seeded,
pretrained weights loaded explicitly), training (:func:`ecalf.training.train`) and reloading a trained
model from its run directory are done one way.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ecalf.config import RunConfig
from ecalf.data import WindowDataset
from ecalf.distributed import SINGLE, World
from ecalf.errors import CheckpointError
from ecalf.models.base import ForecastModel, count_parameters
from ecalf.registry import create_model, model_name_for_config
from ecalf.run_dir import RunDirectory
from ecalf.tracking import NullTracker, Tracker
from ecalf.training import EpochLog, TrainingCheckpoint, TrainingResult, snapshot, train


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(config: RunConfig, *, pretrained: bool = True) -> ForecastModel:
    """``config.model``'s model, constructed under ``config.seed``, then (``pretrained``) its explicit
    pretrained-weights load. The same config gives the same initial weights."""
    seed_everything(config.seed)
    model = create_model(config.model)
    if not isinstance(model, ForecastModel):
        raise TypeError(f"{type(model).__name__} does not follow the ForecastModel contract")
    if pretrained:
        model.load_pretrained()
    return model


@dataclass
class FittedModel:
    model: ForecastModel
    """The model with the weights of its best validation epoch, in training mode's device placement."""
    result: TrainingResult
    parameters: dict[str, int]
    """``trainable`` and ``total`` parameter counts."""


def fit_model(
    config: RunConfig,
    train_set: WindowDataset,
    val_set: WindowDataset,
    *,
    device: torch.device,
    log: Callable[[str], None] = print,
    tracker: Tracker | None = None,
    on_improvement: Callable[[ForecastModel, EpochLog], None] | None = None,
    on_epoch_end: Callable[[EpochLog], None] | None = None,
    checkpoint: TrainingCheckpoint | None = None,
    world: World = SINGLE,
    directory: RunDirectory | None = None,
) -> FittedModel:
    """Build ``config``'s model and train it on ``train_set``, selecting on ``val_set``.

    Logs one line on the model's size, then the training loop's. Weights the model sets from the data
    before its first step (:meth:`ForecastModel.initialize_from_data`, e.g. a ridge-initialised skip)
    are set here, from ``train_set`` and ``val_set`` only. ``tracker`` receives every epoch, then
    ``on_epoch_end``; ``on_improvement`` and ``checkpoint`` are the training loop's
    (ecalf.training.train). ``directory``: fit in that run directory (a trained run, a search's cell):
    resumable from its checkpoint, the best weights written there at every improvement (then
    ``on_improvement``)."""
    if directory is not None:
        checkpoint, then = directory.checkpoint, on_improvement

        def on_improvement(model: ForecastModel, record: EpochLog) -> None:
            directory.write_weights(snapshot(model), record.epoch)
            if then is not None:
                then(model, record)

    start = time.perf_counter()
    model = build_model(config)
    parameters = count_parameters(model)
    log(
        f"model {model_name_for_config(type(config.model))}: {parameters['trainable']:,} trainable of "
        f"{parameters['total']:,} parameters (built in {time.perf_counter() - start:.1f}s)"
        + (f", {world.size} processes" if world.is_distributed else "")
    )
    initialized = model.initialize_from_data(train_set, val_set)
    if initialized:
        log("initialised from the training data: " + " ".join(f"{k}={v:.4g}" for k, v in initialized.items()))
    tracker = tracker or NullTracker()
    log_epoch = tracker.log_epoch
    if on_epoch_end is not None:
        tracked, extra = tracker.log_epoch, on_epoch_end

        def log_epoch(record: EpochLog) -> None:
            tracked(record)
            extra(record)

    result = train(
        model,
        train_set,
        val_set,
        config.training,
        seed=config.seed,
        device=device,
        log=log,
        on_improvement=on_improvement,
        checkpoint=checkpoint,
        on_epoch_end=log_epoch,
        world=world,
    )
    return FittedModel(model, result, parameters)


def load_trained(run_dir: str | os.PathLike[str]) -> tuple[RunConfig, ForecastModel]:
    """Rebuild a trained model from its run directory: config, seeded backbone, best trained weights
    (strictly: every tensor the model trains, with its shape, and nothing else)."""
    directory = RunDirectory(run_dir)
    config = directory.read_config()
    model = build_model(config)
    state = directory.read_weights()
    weights = directory.weights_file
    expected = snapshot(model)
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    if unknown or missing:
        raise CheckpointError(
            f"{weights} does not match the model in {directory.config_file} "
            f"(unexpected: {unknown[:3]}, missing: {missing[:3]}); it belongs to another model or config"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{weights}: {name} has shape {tuple(tensor.shape)}, the config needs "
                f"{tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=False)
    return config, model
