"""The training loop: one plain PyTorch loop for every model.

Adam over the model's parameter groups; cosine annealing stepped once per epoch (groups marked
``fixed_lr`` keep their rate); early stopping on validation MSE with the best weights restored.
Every window of an epoch is used: the last partial batch is kept, never dropped. The loop knows
nothing of any particular model: models bring their loss (``ForecastOutput.loss``) and groups.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ecalf.artifacts import load_tensors, read_json, save_tensors, write_json
from ecalf.config import TrainingConfig
from ecalf.data import WindowDataset
from ecalf.errors import EcalfError
from ecalf.evaluation import batches, evaluate
from ecalf.models.base import ForecastModel


class TrainingDiverged(EcalfError):
    """The loss became NaN or infinite; the last good (best) weights are kept."""


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    loss_parts: dict[str, float]
    val_mse: float
    val_mae: float
    learning_rate: float
    windows_per_second: float
    seconds: float
    steps: int
    values: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        parts = " ".join(f"{k}={v:.4f}" for k, v in self.loss_parts.items())
        values = " ".join(f"{k}={v:.4g}" for k, v in self.values.items())
        return (
            f"epoch {self.epoch:3d} | loss {self.train_loss:.4f} ({parts}) | val mse {self.val_mse:.4f} "
            f"mae {self.val_mae:.4f} | lr {self.learning_rate:.2e} | {self.windows_per_second:.1f} win/s "
            f"| {self.seconds:.1f}s" + (f" | {values}" if values else "")
        )


@dataclass
class TrainingResult:
    history: list[EpochLog]
    best_epoch: int
    best_val_mse: float
    epochs_run: int
    steps: int
    stopped: str
    """``early_stopping``, ``epochs``, ``max_steps`` or ``untrainable`` (no trainable parameters)."""
    train_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EcalfError(f"training.device={name!r} but no CUDA device is available; use 'cpu' or 'auto'")
    return device


def build_optimizer(model: ForecastModel, config: TrainingConfig) -> torch.optim.Optimizer:
    groups = [g for g in model.parameter_groups(config.learning_rate) if g["params"]]
    return torch.optim.Adam(groups, lr=config.learning_rate, weight_decay=config.weight_decay)


def epoch_lr_factor(config: TrainingConfig, epoch: int, base_lr: float) -> float:
    """Multiplier of the base rate after ``epoch`` completed epochs (CosineAnnealingLR's closed form)."""
    if config.scheduler == "constant":
        return 1.0
    eta_min = config.min_learning_rate
    lr = eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * epoch / config.cosine_t_max)) / 2
    return lr / base_lr


def set_epoch_learning_rates(optimizer: torch.optim.Optimizer, config: TrainingConfig, epoch: int) -> None:
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        if not group.get("fixed_lr", False):
            group["lr"] = group["initial_lr"] * epoch_lr_factor(config, epoch, group["initial_lr"])


def snapshot(model: ForecastModel) -> dict[str, Tensor]:
    """Copies of the trainable parameters and buffers: all that training can change."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name for name, _ in model.named_buffers()}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in trainable | buffers}


@dataclass
class LoopState:
    """Everything the loop needs to continue after a kill, besides tensors."""

    epoch: int = 0
    """Completed epochs."""
    steps: int = 0
    best_mse: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: str | None = None
    """Set once training has ended (``early_stopping``, ``epochs`` or ``max_steps``)."""
    train_seconds: float = 0.0
    history: list[EpochLog] = field(default_factory=list)


class TrainingCheckpoint:
    """Epoch-boundary training state in a directory, written so a kill at any moment loses at most
    the epoch in flight: ``epoch-NNNN.safetensors`` (current and best weights, optimizer tensors, RNG
    state) is written first, then ``latest.json`` (loop state, optimizer hyper-parameters) is
    atomically replaced to point at it; older epoch files are deleted afterwards. Only safetensors
    and JSON are read back.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @property
    def pointer(self) -> Path:
        return self.directory / "latest.json"

    def exists(self) -> bool:
        return self.pointer.is_file()

    def save(
        self,
        model: ForecastModel,
        optimizer: torch.optim.Optimizer,
        state: LoopState,
        best: dict[str, Tensor],
    ) -> None:
        tensors: dict[str, Tensor] = {f"model.{k}": v for k, v in snapshot(model).items()}
        tensors.update({f"best.{k}": v for k, v in best.items()})
        optim = optimizer.state_dict()
        for index, values in optim["state"].items():
            for key, value in values.items():
                tensors[f"optim.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, rng in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = rng
        name = f"epoch-{state.epoch:04d}.safetensors"
        save_tensors(self.directory / name, tensors)
        groups = [
            {k: v for k, v in g.items() if k != "params"} | {"params": g["params"]}
            for g in optim["param_groups"]
        ]
        write_json(self.pointer, {"file": name, "loop": asdict(state), "param_groups": groups})
        for old in self.directory.glob("epoch-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def load(
        self, model: ForecastModel, optimizer: torch.optim.Optimizer
    ) -> tuple[LoopState, dict[str, Tensor]]:
        meta = read_json(self.pointer)
        tensors = load_tensors(self.directory / meta["file"])
        model.load_state_dict(_with_prefix(tensors, "model."), strict=False)
        best = _with_prefix(tensors, "best.")
        optim_state: dict[int, dict[str, Tensor]] = {}
        for key, value in _with_prefix(tensors, "optim.").items():
            index, name = key.split(".", 1)
            optim_state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": optim_state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        loop = dict(meta["loop"])
        loop["history"] = [EpochLog(**record) for record in loop["history"]]
        return LoopState(**loop), best

    def remove(self) -> None:
        """Delete the state directory (with any temporary file a kill left behind)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _with_prefix(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def train(
    model: ForecastModel,
    train_set: WindowDataset,
    val_set: WindowDataset,
    config: TrainingConfig,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
    on_improvement: Callable[[ForecastModel, EpochLog], None] | None = None,
    on_epoch_end: Callable[[EpochLog], None] | None = None,
    checkpoint: TrainingCheckpoint | None = None,
) -> TrainingResult:
    """Train ``model`` in place; on return it holds the weights of the best validation epoch.

    With ``checkpoint``, the loop state is saved after every epoch, and a checkpoint that already
    exists is resumed from: the run then ends exactly as an uninterrupted one would.
    """
    if len(train_set) == 0:
        raise EcalfError("the training split has no windows; use more data or a larger few-shot percent")
    model.to(device)
    start = time.perf_counter()
    if not any(p.requires_grad for p in model.parameters()):
        metrics = evaluate(model, val_set, batch_size=config.eval_batch_size, device=device)
        log(f"no trainable parameters: validation mse {metrics.mse:.4f} mae {metrics.mae:.4f}")
        return TrainingResult([], 0, metrics.mse, 0, 0, "untrainable", time.perf_counter() - start)

    optimizer = build_optimizer(model, config)
    state = LoopState()
    best_state = snapshot(model)
    if checkpoint is not None and checkpoint.exists():
        state, best_state = checkpoint.load(model, optimizer)
        log(f"resumed after epoch {state.epoch} ({state.steps} steps, best epoch {state.best_epoch})")
    # The whole run's bar: its ETA assumes every epoch runs (early stopping can only end it sooner).
    run_bar = tqdm(
        total=config.epochs, initial=state.epoch, desc="training", unit="epoch", disable=not config.progress
    )
    while state.stopped is None:
        epoch = state.epoch + 1
        set_epoch_learning_rates(optimizer, config, epoch - 1)
        learning_rate = optimizer.param_groups[0]["lr"]
        model.train()
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        index_batches = list(batches(len(train_set), config.batch_size, order))
        if config.max_steps is not None:
            index_batches = index_batches[: config.max_steps - state.steps]
        sums: dict[str, float] = {}
        loss_sum, seen = 0.0, 0
        epoch_start = time.perf_counter()
        bar = tqdm(index_batches, desc=f"epoch {epoch}", disable=not config.progress, leave=False, position=1)
        for idx in bar:
            past, future = train_set.get_batch(idx)
            output = model(past.to(device), future.to(device))
            if output.loss is None:
                raise RuntimeError(f"{type(model).__name__} returned no loss for a batch with targets")
            loss_value = float(output.loss.detach())
            if not math.isfinite(loss_value):
                model.load_state_dict(best_state, strict=False)
                kept = (
                    f"the best weights (epoch {state.best_epoch}) were kept"
                    if state.best_epoch
                    else "no epoch had finished, so no trained weights were kept"
                )
                raise TrainingDiverged(
                    f"the training loss became {loss_value} at epoch {epoch}, step {state.steps + 1}; "
                    f"{kept}. Lower training.learning_rate or set training.grad_clip_norm."
                )
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            if config.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
            optimizer.step()
            state.steps += 1
            n = len(idx)
            seen += n
            loss_sum += loss_value * n
            for name, part in output.loss_parts.items():
                sums[name] = sums.get(name, 0.0) + float(part.detach()) * n
            bar.set_postfix(loss=f"{loss_value:.4f}")
        train_seconds = time.perf_counter() - epoch_start
        metrics = evaluate(model, val_set, batch_size=config.eval_batch_size, device=device)
        record = EpochLog(
            epoch=epoch,
            train_loss=loss_sum / max(seen, 1),
            loss_parts={k: v / max(seen, 1) for k, v in sums.items()},
            val_mse=metrics.mse,
            val_mae=metrics.mae,
            learning_rate=learning_rate,
            windows_per_second=seen / train_seconds if train_seconds > 0 else 0.0,
            seconds=time.perf_counter() - epoch_start,
            steps=state.steps,
            values=model.training_values(),
        )
        state.history.append(record)
        state.epoch = epoch
        state.train_seconds += record.seconds
        improved = metrics.mse < state.best_mse
        log(record.line() + (" *" if improved else ""))
        if improved:
            state.best_mse, state.best_epoch, state.bad_epochs = metrics.mse, epoch, 0
            best_state = snapshot(model)
            if on_improvement is not None:
                on_improvement(model, record)
        else:
            state.bad_epochs += 1
        if config.max_steps is not None and state.steps >= config.max_steps:
            state.stopped = "max_steps"
        elif state.bad_epochs >= config.patience:
            state.stopped = "early_stopping"
            log(f"early stopping: no better validation MSE for {config.patience} epochs")
        elif epoch >= config.epochs:
            state.stopped = "epochs"
        if on_epoch_end is not None:
            on_epoch_end(record)
        if checkpoint is not None:
            checkpoint.save(model, optimizer, state, best_state)
        run_bar.update(1)
        run_bar.set_postfix(val_mse=f"{metrics.mse:.4f}", best_epoch=state.best_epoch)
    run_bar.close()
    model.load_state_dict(best_state, strict=False)
    return TrainingResult(
        state.history, state.best_epoch, state.best_mse, state.epoch, state.steps, state.stopped,
        state.train_seconds,
    )  # fmt: skip
