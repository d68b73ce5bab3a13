"""The training loop: one plain PyTorch loop for every model.

Adam (or AdamW) over the model's parameter groups; an optional linear warm-up over the first
optimizer steps; cosine annealing stepped once per epoch (groups marked ``fixed_lr`` keep their rate);
early stopping on validation MSE with the best weights restored, validated once per epoch or, with
``eval_every_steps``, before the first step and every N steps (the best weights then those of a step).
Every window of an epoch is used: the last partial batch is kept, never dropped. The loop knows
nothing of any particular model: models bring their loss (``ForecastOutput.loss``) and groups. A model
whose weights are computed from the data (``ForecastModel.fits_in_closed_form``, e.g. ``linear``) is
fitted once by its ``fit_closed_form`` instead, logged and called back as one epoch of 0 steps.

The same loop runs in every process of a data-parallel run (ecalf.distributed, docs/scale-out.md):
each step takes ``batch_size`` windows per process, DistributedDataParallel averages the gradients,
and losses and metrics are summed over the processes, so all take the same decisions; only rank 0
logs, calls back and writes checkpoints. The loop never waits for the device inside an epoch: losses
are summed as device tensors and read at the finiteness checks (every ``FINITE_CHECK_STEPS`` steps
and at the end of the epoch) and, when a progress bar is shown, at its refresh interval.
"""

from __future__ import annotations

import math
import shutil
import sys
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
from ecalf.distributed import SINGLE, World, all_reduce_sum, data_parallel, shard
from ecalf.dropout import dropout_masks
from ecalf.errors import EcalfError
from ecalf.evaluation import Metrics, autocast, batches, evaluate, known_future
from ecalf.memory import release_freed_memory
from ecalf.models.base import ForecastModel

FINITE_CHECK_STEPS = 50
"""Steps between checks of the loss for NaN/inf (each check waits for the device once)."""
POSTFIX_SECONDS = 1.0
"""How often the progress bar's loss is read (only when the bar is shown)."""


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
        parts = f" ({parts})" if parts else ""
        values = " ".join(f"{k}={v:.4g}" for k, v in self.values.items())
        return (
            f"epoch {self.epoch:3d} | loss {self.train_loss:.4f}{parts} | val mse {self.val_mse:.4f} "
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
    """``early_stopping``, ``epochs``, ``max_steps``, ``untrainable`` (no trainable parameters) or
    ``closed_form`` (weights computed from the data, :meth:`ForecastModel.fit_closed_form`)."""
    train_seconds: float
    """Seconds in epochs (training and validation), over every process of a resumed run."""
    resumed_seconds: float = 0.0
    """The part of ``train_seconds`` spent by earlier processes (a resumed run); 0 for a fresh run."""
    best_step: int = 0
    """Optimizer steps taken when the best weights were validated (0: before the first step)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EcalfError(f"training.device={name!r} but no CUDA device is available; use 'cpu' or 'auto'")
    return device


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise EcalfError(
            f"training.precision=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16 support "
            "(it needs an Ampere or newer GPU); use training.precision=fp32"
        )


def build_optimizer(model: ForecastModel, config: TrainingConfig) -> torch.optim.Optimizer:
    groups = [g for g in model.parameter_groups(config.learning_rate) if g["params"]]
    optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return optimizer(groups, lr=config.learning_rate, weight_decay=config.weight_decay)


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
        group["epoch_lr"] = group["lr"]


def warmup_factor(config: TrainingConfig, step: int) -> float:
    """Multiplier of the scheduled rate for optimizer step ``step`` (1-based): linear warm-up."""
    return min(1.0, step / config.warmup_steps) if config.warmup_steps else 1.0


def set_step_learning_rates(optimizer: torch.optim.Optimizer, config: TrainingConfig, step: int) -> None:
    """The rates of optimizer step ``step`` (1-based): each group's epoch rate times the warm-up factor."""
    factor = warmup_factor(config, step)
    for group in optimizer.param_groups:
        group["lr"] = group["epoch_lr"] * factor


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
    best_step: int = 0
    """Optimizer steps taken when the best weights were validated (0: before the first step)."""
    bad_epochs: int = 0
    """Validations (epochs, or steps with ``eval_every_steps``) since the best one."""
    stopped: str | None = None
    """Set once training has ended (``early_stopping``, ``epochs`` or ``max_steps``)."""
    train_seconds: float = 0.0
    history: list[EpochLog] = field(default_factory=list)
    world_size: int = 1
    """Processes of the run (torchrun); a resumed run must have as many."""


@dataclass(frozen=True)
class TrainingProgress:
    """How far a started (killed or running) training got, from its last epoch checkpoint."""

    epochs_done: int
    best_epoch: int
    best_mse: float
    seconds_per_epoch: float | None
    """Mean over its finished epochs (None when the checkpoint has no history)."""

    def describe(self) -> str:
        best = f"best {self.best_epoch} (val MSE {self.best_mse:.4f})"
        pace = f", {self.seconds_per_epoch:.0f} s per epoch" if self.seconds_per_epoch is not None else ""
        return f"started: {self.epochs_done} epochs done, {best}{pace}"

    def seconds_left(self, max_epochs: int, whole_cell: float | None) -> float | None:
        """The time the run needs at most to end (its remaining epochs at its own pace), or less when the
        estimate of a whole such cell, minus the epochs already done, says so; at least one epoch."""
        if self.seconds_per_epoch is None:
            return None if whole_cell is None else max(whole_cell, 0.0)
        pace = self.seconds_per_epoch
        bound = max(max_epochs - self.epochs_done, 1) * pace
        if whole_cell is None:
            return bound
        return min(bound, max(whole_cell - self.epochs_done * pace, pace))


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

    def progress(self) -> TrainingProgress | None:
        """How far the checkpointed training got (epochs done, best epoch and its validation MSE, mean
        seconds per epoch), or None when there is no checkpoint or it cannot be read."""
        try:
            loop = read_json(self.pointer)["loop"] if self.pointer.is_file() else None
            if not isinstance(loop, dict):
                return None
            history = loop.get("history") or []
            seconds = sum(float(e["seconds"]) for e in history) / len(history) if history else None
            best = float(loop["best_mse"])
            return TrainingProgress(int(loop["epoch"]), int(loop["best_epoch"]), best, seconds)
        except (EcalfError, OSError, KeyError, TypeError, ValueError):
            return None

    def remove(self) -> None:
        """Delete the state directory (with any temporary file a kill left behind)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _with_prefix(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


class EpochLosses:
    """An epoch's training loss and loss parts as device sums weighted by windows, read once.

    Each step's loss is also kept until the next finiteness check, which reads them all at once.
    """

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.parts: dict[str, Tensor] = {}
        self.windows = 0
        self.unchecked: list[Tensor] = []

    def add(self, loss: Tensor, parts: dict[str, Tensor], windows: int) -> None:
        self.loss += loss.detach().double() * windows
        for name, part in parts.items():
            if name not in self.parts:
                self.parts[name] = torch.zeros_like(self.loss)
            self.parts[name] += part.detach().double() * windows
        self.windows += windows
        self.unchecked.append(loss.detach())

    def first_non_finite(self, world: World) -> tuple[int, float] | None:
        """Position among the unchecked steps and value of the first loss that is NaN or infinite
        on any rank (summed over the ranks, a NaN or infinity stays one), then forget them. None
        when no step is unchecked (every rank has taken the same steps, so all agree)."""
        if not self.unchecked:
            return None
        losses = all_reduce_sum(torch.stack(self.unchecked).double(), world).cpu()
        self.unchecked = []
        bad = (~torch.isfinite(losses)).nonzero()
        return (int(bad[0]), float(losses[bad[0]])) if len(bad) else None

    def means(self, world: World) -> tuple[float, dict[str, float], int]:
        """Mean loss and parts per window over every rank's windows, and the windows seen."""
        names = list(self.parts)
        sums = torch.stack([self.loss, *(self.parts[n] for n in names), self.loss.new_tensor(self.windows)])
        loss, *parts, windows = all_reduce_sum(sums, world).tolist()
        seen = max(int(windows), 1)
        return loss / seen, {n: v / seen for n, v in zip(names, parts, strict=True)}, int(windows)


def live_display() -> bool:
    """Whether progress bars redraw in place: stderr is a terminal, or tqdm draws notebook widgets.

    Elsewhere (``ecalf train ... 2> log``, a pipe, a CI log) a per-batch bar would add a line of
    cursor escapes at every update; there only the run's bar (one update per epoch) is drawn."""
    return sys.stderr.isatty() or tqdm.__module__.startswith("tqdm.notebook")


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
    world: World = SINGLE,
) -> TrainingResult:
    """Train ``model`` in place; on return it holds the weights of the best validation epoch.

    With ``checkpoint``, the loop state is saved after every epoch, and a checkpoint that already
    exists is resumed from: the run then ends exactly as an uninterrupted one would.

    With a ``world`` of several processes, every process calls this with the same arguments (its
    process group initialised, ``device`` its own). Each takes its shard of every global batch of
    ``config.batch_size * world.size`` windows; ``log``, the callbacks and ``checkpoint.save`` run on
    rank 0 only, while every rank loads a checkpoint to resume.
    """
    if len(train_set) == 0:
        raise EcalfError("the training split has no windows; use more data or a larger few-shot percent")
    device = torch.device(device)
    check_precision(config.precision, device)
    if not world.is_main:
        log, on_improvement, on_epoch_end = _silent, None, None
    if config.low_memory and device.type == "cpu" and not release_freed_memory():
        log("training.low_memory has no effect here: it needs glibc's malloc (Linux)")
    model.to(device)
    start = time.perf_counter()
    if config.val_stride > 1:
        full = len(val_set)
        val_set = val_set.strided(config.val_stride)
        log(f"validating on every {config.val_stride}th validation window: {len(val_set)} of {full}")
    if model.fits_in_closed_form:
        return _fit_closed_form(
            model, train_set, val_set, config, device, world, log, on_improvement, on_epoch_end
        )
    if not any(p.requires_grad for p in model.parameters()):
        metrics = _validate(model, val_set, config, device, world)
        log(f"no trainable parameters: validation mse {metrics.mse:.4f} mae {metrics.mae:.4f}")
        return TrainingResult([], 0, metrics.mse, 0, 0, "untrainable", time.perf_counter() - start)

    optimizer = build_optimizer(model, config)
    state = LoopState(world_size=world.size)
    best_state = snapshot(model)
    if checkpoint is not None and checkpoint.exists():
        state, best_state = checkpoint.load(model, optimizer)
        if state.world_size != world.size:
            raise EcalfError(
                f"{checkpoint.directory} holds a run of {state.world_size} process(es) (global batches of "
                f"{state.world_size} x batch_size); resume it with as many (torchrun --nproc-per-node ...)"
            )
        log(f"resumed after epoch {state.epoch} ({state.steps} steps, best epoch {state.best_epoch})")
    resumed_seconds = state.train_seconds
    every = config.eval_every_steps

    def judge(record: EpochLog, where: str) -> None:
        """Keep the weights if ``record``'s validation is the best yet; count it towards patience."""
        nonlocal best_state
        improved = record.val_mse < state.best_mse
        log(where + (" *" if improved else ""))
        if improved:
            state.best_mse, state.best_epoch, state.best_step = record.val_mse, record.epoch, state.steps
            state.bad_epochs = 0
            best_state = snapshot(model)
            if on_improvement is not None:
                on_improvement(model, record)
        else:
            state.bad_epochs += 1

    def out_of_patience() -> bool:
        if state.bad_epochs < config.patience:
            return False
        state.stopped = "early_stopping"
        log(f"early stopping: no better validation MSE for {config.patience} {unit}")
        return True

    unit = "validations" if every else "epochs"

    if every and state.epoch == 0 and state.steps == 0:  # the weights before any step are a candidate
        metrics = _validate(model, val_set, config, device, world)
        record = EpochLog(0, math.nan, {}, metrics.mse, metrics.mae, 0.0, 0.0, 0.0, 0)
        judge(record, _step_line(0, metrics))
    network = data_parallel(model, world, device)  # the model itself in one process
    show = config.progress and world.is_main
    show_batches = show and live_display()  # a log file gets the run's bar and the epoch lines only
    # The whole run's bar: its ETA assumes every epoch runs (early stopping can only end it sooner).
    run_bar = tqdm(total=config.epochs, initial=state.epoch, desc="training", unit="epoch", disable=not show)
    with run_bar, dropout_masks(model, config.dropout_masks):  # fast CPU masks (ecalf.dropout)
        while state.stopped is None:
            epoch = state.epoch + 1
            set_epoch_learning_rates(optimizer, config, epoch - 1)
            if config.warmup_steps:
                set_step_learning_rates(optimizer, config, state.steps + 1)
            learning_rate = optimizer.param_groups[0]["lr"]
            model.train()
            if world.is_distributed:  # each rank its own dropout masks, repeated exactly on resume
                torch.manual_seed((seed * 1000 + epoch) * 1024 + world.rank)
            # The same permutation on every rank; a step takes one global batch, each rank its shard.
            order = torch.randperm(
                len(train_set), generator=torch.Generator().manual_seed(seed * 1000 + epoch)
            )
            global_batches = list(batches(len(train_set), config.batch_size * world.size, order))
            if config.max_steps is not None:
                global_batches = global_batches[: config.max_steps - state.steps]
            losses = EpochLosses(device)
            epoch_start = shown = time.perf_counter()
            bar = tqdm(
                global_batches, desc=f"epoch {epoch}", disable=not show_batches, leave=False, position=1
            )
            for step, global_idx in enumerate(bar, start=1):
                if config.warmup_steps:
                    set_step_learning_rates(optimizer, config, state.steps + 1)
                idx = shard(global_idx, world)
                # A rank whose shard of the last, partial batch is empty still takes part in the
                # gradient reduction, with a real window and zero weight.
                batch_idx = idx if len(idx) else global_idx[:1]
                past, future = train_set.get_batch(batch_idx)
                with autocast(config.precision, device):
                    output = network(
                        past.to(device), future.to(device), **known_future(train_set, batch_idx, device)
                    )
                if output.loss is None:
                    raise RuntimeError(f"{type(model).__name__} returned no loss for a batch with targets")
                loss = output.loss.float()
                losses.add(loss, output.loss_parts, len(idx))
                # DDP averages the ranks' gradients; this weight makes it the mean over the global
                # batch when the last batch's shards differ in size (1.0 otherwise, and in one process).
                weight = len(idx) * world.size / len(global_idx)
                optimizer.zero_grad(set_to_none=True)
                (loss if weight == 1.0 else loss * weight).backward()
                if config.grad_clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
                optimizer.step()
                state.steps += 1
                if step % FINITE_CHECK_STEPS == 0 or step == len(global_batches):
                    _stop_if_diverged(losses, world, model, best_state, state, epoch)
                if show and time.perf_counter() - shown >= POSTFIX_SECONDS:
                    bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
                    shown = time.perf_counter()
                if every and state.steps % every == 0 and step < len(global_batches):
                    # A validation inside the epoch (the epoch's last step is validated below).
                    _stop_if_diverged(losses, world, model, best_state, state, epoch)
                    train_loss, loss_parts, seen = losses.means(world)
                    metrics = _validate(model, val_set, config, device, world)
                    model.train()
                    seconds = time.perf_counter() - epoch_start
                    record = EpochLog(
                        epoch, train_loss, loss_parts, metrics.mse, metrics.mae,
                        optimizer.param_groups[0]["lr"], seen / seconds if seconds > 0 else 0.0,
                        seconds, state.steps,
                    )  # fmt: skip
                    judge(record, _step_line(state.steps, metrics))
                    if out_of_patience():
                        break
            train_loss, loss_parts, seen = losses.means(world)
            train_seconds = time.perf_counter() - epoch_start
            stopped_inside = state.stopped is not None
            if not stopped_inside:
                metrics = _validate(model, val_set, config, device, world)
            record = EpochLog(
                epoch=epoch,
                train_loss=train_loss,
                loss_parts=loss_parts,
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
            if stopped_inside:  # early stopping at a validation inside the epoch: judged there
                log(record.line())
            else:
                judge(record, record.line())
                if config.max_steps is not None and state.steps >= config.max_steps:
                    state.stopped = "max_steps"
                elif not out_of_patience() and epoch >= config.epochs:
                    state.stopped = "epochs"
            if on_epoch_end is not None:
                on_epoch_end(record)
            if checkpoint is not None and world.is_main:
                checkpoint.save(model, optimizer, state, best_state)
            run_bar.update(1)
            run_bar.set_postfix(val_mse=f"{metrics.mse:.4f}", best_epoch=state.best_epoch)
    model.load_state_dict(best_state, strict=False)
    return TrainingResult(
        state.history, state.best_epoch, state.best_mse, state.epoch, state.steps, state.stopped,
        state.train_seconds, resumed_seconds, state.best_step,
    )  # fmt: skip


def _fit_closed_form(
    model: ForecastModel,
    train_set: WindowDataset,
    val_set: WindowDataset,
    config: TrainingConfig,
    device: torch.device,
    world: World,
    log: Callable[[str], None],
    on_improvement: Callable[[ForecastModel, EpochLog], None] | None,
    on_epoch_end: Callable[[EpochLog], None] | None,
) -> TrainingResult:
    """One closed-form fit in place of epochs: logged and called back as one epoch of 0 steps."""
    start = time.perf_counter()
    model.eval()
    fit = model.fit_closed_form(train_set, val_set)
    metrics = _validate(model, val_set, config, device, world)
    seconds = time.perf_counter() - start
    record = EpochLog(
        epoch=1,
        train_loss=fit.train_loss,
        loss_parts={},
        val_mse=metrics.mse,
        val_mae=metrics.mae,
        learning_rate=0.0,
        windows_per_second=len(train_set) / seconds if seconds > 0 else 0.0,
        seconds=seconds,
        steps=0,
        values=fit.values,
    )
    log(f"closed-form fit on {len(train_set)} windows: " + record.line())
    if on_improvement is not None:
        on_improvement(model, record)
    if on_epoch_end is not None:
        on_epoch_end(record)
    return TrainingResult([record], 1, metrics.mse, 1, 0, "closed_form", seconds)


def _validate(
    model: ForecastModel, val_set: WindowDataset, config: TrainingConfig, device: torch.device, world: World
) -> Metrics:
    batch_size, precision = config.eval_batch_size, config.precision
    return evaluate(model, val_set, batch_size=batch_size, device=device, precision=precision, world=world)


def _stop_if_diverged(
    losses: EpochLosses,
    world: World,
    model: ForecastModel,
    best_state: dict[str, Tensor],
    state: LoopState,
    epoch: int,
) -> None:
    """Raise TrainingDiverged (on every rank alike) if a loss since the last check was NaN or inf;
    the model gets its best weights back first."""
    unchecked = len(losses.unchecked)
    bad = losses.first_non_finite(world)
    if bad is None:
        return
    position, value = bad
    model.load_state_dict(best_state, strict=False)
    kept = (
        f"the best weights (epoch {state.best_epoch}) were kept"
        if state.best_epoch
        else "no epoch had finished, so no trained weights were kept"
    )
    raise TrainingDiverged(
        f"the training loss became {value} at epoch {epoch}, step {state.steps - unchecked + position + 1}; "
        f"{kept}. Lower training.learning_rate or set training.grad_clip_norm."
    )


def _step_line(steps: int, metrics: Metrics) -> str:
    return f"step {steps:6d} | val mse {metrics.mse:.4f} mae {metrics.mae:.4f}"


def _silent(line: str) -> None:
    pass
