"""Speed benchmark: training and inference throughput, latency and peak memory of one model config.

    python benchmarks/speed.py --config configs/calf/ETTh1.yaml --random --output results/speed/calf_gpt2.json
    python benchmarks/speed.py --config configs/calf/ETTh1.yaml --set model.backbone.preset=smollm2-135m

Each measurement runs in its own child process, so its peak resident memory (ru_maxrss) is its own:

- ``matmul``   the machine's dense fp32 matmul rate (GFLOP/s, median of repeats, same thread count);
- ``train``    training windows/s at ``--batch-size`` (Adam steps on random windows of the config's
               shape, after warm-up, median of ``--repeats``);
- ``predict``  inference windows/s at ``--predict-batch-size`` (default 256; eval mode, inference_mode,
               LoRA merged as in ``ecalf.evaluation``, median of repeats; ``--no-merge-lora`` keeps the
               adapters apart);
- ``latency``  single-window latency (median of ``--latency-repeats``), same path.

Results are also given as ratios to the measured matmul rate, so runs on noisy machines compare, and
against the official CALF figures of issue #7 (measured with the same shapes on a 2-core CPU whose
matmul rate was about 300 GFLOP/s); ``--precision bf16`` autocasts the forward passes as
``training.precision: bf16`` does. Input values do not change the cost, so no dataset is read; the
shapes come from the config (``--channels`` overrides C). Uses CUDA when available (``--device``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

OFFICIAL = {
    "description": "official CALF (50e7270), random GPT-2, 6 layers, ETTh1, L = H = 96, 2-thread CPU, fp32",
    "matmul_gflops": 300.0,
    "train_windows_per_second": 25.7,
    "train_peak_rss_mb": 7.3 * 1024,
    "predict_windows_per_second": 82.8,
    "predict_peak_rss_mb": 3.6 * 1024,
    "latency_ms": 42.1,
}
PHASES = ("matmul", "train", "predict", "latency")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MatmulProbe:
    """One 2048 x 2048 fp32 matmul on ``device``, timed: the machine's dense matmul rate in GFLOP/s.
    With ``--paired-matmul`` it runs right before each timed call, in the same process, so each call's
    speed is scaled by the machine's speed at that moment (a shared VM's speed drifts by tens of
    percent within minutes); its three 2048 x 2048 buffers (48 MB) are allocated before the model and
    stay: they count in the phase's peak memory."""

    N = 2048

    def __init__(self, device: Any = "cpu") -> None:
        import torch

        self.device = torch.device(device)
        self.a = torch.randn(self.N, self.N, device=self.device)
        self.b = torch.randn(self.N, self.N, device=self.device)
        self.out = torch.empty(self.N, self.N, device=self.device)
        torch.mm(self.a, self.b, out=self.out)

    def __call__(self) -> float:
        import torch

        synchronize(self.device)
        start = time.perf_counter()
        torch.mm(self.a, self.b, out=self.out)
        synchronize(self.device)
        return 2 * self.N**3 / (time.perf_counter() - start) / 1e9


def measure_matmul(repeats: int, device: Any = "cpu") -> dict[str, float]:
    """The machine's dense fp32 matmul rate on ``device``: the median of ``repeats`` probes after one
    warm-up."""
    probe = MatmulProbe(device)
    return {"matmul_gflops": statistics.median([probe() for _ in range(repeats)])}


def paired(name: str, work: float, times: list[float], rates: list[float]) -> dict[str, float]:
    """``work`` per call (windows) over each call's seconds and its probe's GFLOP/s: the median of
    the calls' rates per GFLOP/s, and the probe's median."""
    per_gflops = [work / t / r for t, r in zip(times, rates, strict=True)]
    return {
        f"{name}_per_matmul_gflops": statistics.median(per_gflops),
        f"{name}_matmul_gflops": statistics.median(rates),
    }


def count_gflop(call: Any) -> float:
    """The GFLOP of the matrix products (mm, addmm, bmm, attention, convolutions) of one ``call()``,
    forward and any backward it runs, by ``torch.utils.flop_counter``; elementwise work is not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops() / 1e9


def build(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The model of ``args.config`` at the requested shape, and the device."""
    import dataclasses

    import torch

    from ecalf.config_files import load_run_config
    from ecalf.data import get_spec
    from ecalf.fitting import build_model
    from ecalf.training import resolve_device

    overrides = list(args.set or [])
    if args.random:
        overrides.append("model.backbone.pretrained=false")
    config = load_run_config(args.config, overrides)
    spec = get_spec(config.data.dataset)
    channels = args.channels or spec.num_channels
    model_config = dataclasses.replace(
        config.model,
        context_length=config.data.context_length,
        prediction_length=config.data.prediction_length,
        num_channels=channels,
    )
    config = dataclasses.replace(config, model=model_config)
    device = resolve_device(args.device)
    model = build_model(config).to(device)
    torch.manual_seed(0)
    if getattr(args, "compile", False):
        model = torch.compile(model)  # compiled on the first (warm-up) call, not timed
    return config, model, device


def measure_train(args: argparse.Namespace) -> dict[str, float]:
    import torch

    from ecalf.dropout import dropout_masks
    from ecalf.evaluation import autocast
    from ecalf.memory import release_freed_memory
    from ecalf.training import build_optimizer

    probe = MatmulProbe(probe_device(args)) if args.paired_matmul else None
    config, model, device = build(args)
    low_memory = config.training.low_memory and device.type == "cpu" and release_freed_memory()
    m = config.model
    optimizer = build_optimizer(model, config.training)
    past = torch.randn(args.batch_size, m.context_length, m.num_channels, device=device)
    future = torch.randn(args.batch_size, m.prediction_length, m.num_channels, device=device)
    model.train()

    def step() -> None:
        with autocast(args.precision, device):
            output = model(past, future)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()

    masks = config.training.dropout_masks  # as ecalf.training draws them
    times = []
    rates = []
    with dropout_masks(model, masks):
        gflop = count_gflop(step)  # one untimed step, counted
        for i in range(args.warmup + args.repeats):
            if probe is not None and i >= args.warmup:
                rates.append(probe())
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "train_step_seconds": seconds,
        "train_windows_per_second": args.batch_size / seconds,
        "train_dropout_masks": masks,
        "train_low_memory": bool(low_memory),
        "train_gflop_per_window": gflop / args.batch_size,
        **(paired("train_windows_per_second", args.batch_size, times, rates) if probe is not None else {}),
    }


def measure_predict(
    args: argparse.Namespace, batch: int, repeats: int, warmup: int
) -> tuple[list[float], float, list[float], float]:
    """Seconds per call after ``warmup`` calls, the first call's (with --compile: compiling), the
    probe's GFLOP/s before each timed call (``--paired-matmul``; else empty), and the GFLOP of one
    call's matrix products (counted on an extra call after the timed ones)."""
    import torch

    from ecalf.evaluation import autocast
    from ecalf.inference import merged_lora, quantized_int8

    probe = MatmulProbe(probe_device(args)) if args.paired_matmul else None
    config, model, device = build(args)
    m = config.model
    past = torch.randn(batch, m.context_length, m.num_channels, device=device)
    model.eval()
    if args.int8:
        model = quantized_int8(model)  # LoRA merged into it; the float model is dropped
    times, first, rates = [], 0.0, []
    merge = merged_lora(model) if args.merge_lora else contextlib.nullcontext()
    with merge, torch.inference_mode(), autocast(args.precision, device):
        for i in range(warmup + repeats):
            if probe is not None and i >= warmup:
                rates.append(probe())
            synchronize(device)
            start = time.perf_counter()
            model(past)
            synchronize(device)
            if i == 0:
                first = time.perf_counter() - start
            if i >= warmup:
                times.append(time.perf_counter() - start)
        gflop = 0.0 if args.int8 else count_gflop(lambda: model(past))  # int8 products: not counted
    return times, first, rates, gflop


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    if args.phase == "matmul":
        result: dict[str, Any] = measure_matmul(max(args.repeats, 5), probe_device(args))
    elif args.phase == "train":
        result = measure_train(args)
    elif args.phase == "predict":
        batch = args.predict_batch_size
        times, first, rates, gflop = measure_predict(args, batch, args.repeats, max(args.warmup, 1))
        step = statistics.median(times)
        result = {
            "predict_windows_per_second": args.predict_batch_size / step,
            "predict_first_call_seconds": first,
        }
        if gflop:
            result["predict_gflop_per_window"] = gflop / batch
        if rates:
            result.update(paired("predict_windows_per_second", args.predict_batch_size, times, rates))
    else:
        times, _, rates, _ = measure_predict(args, 1, args.latency_repeats, 3)
        result = {"latency_ms": statistics.median(times) * 1000}
        if rates:  # calls per second per GFLOP/s; the ratio below inverts it back to a latency
            result.update(paired("latency_calls_per_second", 1, times, rates))
    result[f"{args.phase}_peak_rss_mb"] = peak_rss_mb()
    device = probe_device(args)
    if device.type == "cuda":  # the accelerator's own peak (the host's RSS says little there)
        result[f"{args.phase}_peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def probe_device(args: argparse.Namespace) -> Any:
    """Where the measured model runs (``--device``, ``auto`` resolved), so the matmul rate the phases
    are scaled by is that device's."""
    from ecalf.training import resolve_device

    return resolve_device(args.device)


def official_shapes(args: argparse.Namespace) -> bool:
    """Whether this run has the shapes of the official figures (GPT-2, 6 layers, ETTh1, L = H = 96)."""
    from ecalf.config_files import load_run_config

    config = load_run_config(args.config, list(args.set or []))
    backbone = getattr(config.model, "backbone", None)
    return (
        backbone is not None
        and backbone.preset == "gpt2"
        and backbone.num_layers == 6
        and config.data.dataset == "ETTh1"
        and config.data.context_length == config.data.prediction_length == 96
        and args.channels in (None, 7)
        and args.batch_size == 256
        and args.predict_batch_size == 256
        and args.precision == "fp32"
        and not args.compile
        and probe_device(args).type == "cpu"  # the official figures are a CPU's
    )


ALLOCATORS = {"tcmalloc": "tcmalloc_minimal", "jemalloc": "jemalloc"}


def allocator_library(name: str) -> str:
    """The shared library of ``name`` (Debian/Ubuntu: libtcmalloc-minimal4, libjemalloc2)."""
    import ctypes.util
    import glob

    stem = ALLOCATORS[name]
    found = ctypes.util.find_library(stem)
    candidates = ([found] if found and os.path.isabs(found) else []) + sorted(
        glob.glob(f"/usr/lib/*/lib{stem}.so*") + glob.glob(f"/usr/lib/lib{stem}.so*")
    )
    if not candidates and found:
        candidates = [found]  # a bare soname the dynamic loader resolves
    if not candidates:
        raise SystemExit(
            f"--allocator {name}: lib{stem}.so not found; install it (Debian/Ubuntu: apt install "
            f"{'libtcmalloc-minimal4' if name == 'tcmalloc' else 'libjemalloc2'})"
        )
    return candidates[0]


def parent(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ecalf.run import environment

    results: dict[str, Any] = {
        "config": args.config,
        "overrides": list(args.set or []) + (["model.backbone.pretrained=false"] if args.random else []),
        "channels": args.channels,
        "batch_size": args.batch_size,
        "predict_batch_size": args.predict_batch_size,
        "precision": args.precision,
        "threads": args.threads,
        "device": args.device,
        "merge_lora": args.merge_lora,
        "compile": args.compile,
        "int8": args.int8,
        "paired_matmul": args.paired_matmul,
        "allocator": args.allocator,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "environment": environment(),
        "torch_cuda": torch.cuda.is_available(),
    }
    base = [sys.executable, __file__, "--config", args.config, "--threads", str(args.threads)]
    base += ["--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
    base += ["--predict-batch-size", str(args.predict_batch_size), "--precision", args.precision]
    base += ["--warmup", str(args.warmup), "--latency-repeats", str(args.latency_repeats)]
    base += ["--device", args.device] + (["--random"] if args.random else [])
    base += [] if args.merge_lora else ["--no-merge-lora"]
    base += ["--compile"] if args.compile else []
    base += ["--int8"] if args.int8 else []
    base += ["--paired-matmul"] if args.paired_matmul else []
    base += ["--channels", str(args.channels)] if args.channels else []
    for item in args.set or []:
        base += ["--set", item]
    env = dict(os.environ)
    if args.allocator != "glibc":
        library = allocator_library(args.allocator)
        env["LD_PRELOAD"] = " ".join(filter(None, [library, env.get("LD_PRELOAD")]))
        results["allocator_library"] = library
    for phase in args.phases:
        print(f"measuring {phase} ...", file=sys.stderr, flush=True)
        done = subprocess.run([*base, "--phase", phase], capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{phase} failed:\n{done.stderr[-3000:]}")
        results.update(json.loads(done.stdout.strip().splitlines()[-1]))
    for phase in ("train", "predict"):  # the share of the matmul rate the model's products reach
        key, flop = f"{phase}_windows_per_second", results.get(f"{phase}_gflop_per_window")
        if flop and f"{key}_per_matmul_gflops" in results:
            results[f"{phase}_matmul_share"] = results[f"{key}_per_matmul_gflops"] * flop
        elif flop and key in results and "matmul_gflops" in results:
            results[f"{phase}_matmul_share"] = results[key] * flop / results["matmul_gflops"]
    if "matmul_gflops" in results and official_shapes(args):
        rate = results["matmul_gflops"]
        official_rate = OFFICIAL["matmul_gflops"]
        ratios: dict[str, float] = {}
        for key in ("train_windows_per_second", "predict_windows_per_second"):
            if f"{key}_per_matmul_gflops" in results:  # --paired-matmul: each call by its own probe
                ratios[key] = results[f"{key}_per_matmul_gflops"] / (OFFICIAL[key] / official_rate)
            elif key in results:
                ratios[key] = (results[key] / rate) / (OFFICIAL[key] / official_rate)
        if "latency_calls_per_second_per_matmul_gflops" in results:  # lower is better: ours / official
            per_gflops = results["latency_calls_per_second_per_matmul_gflops"]
            ratios["latency_ms"] = (1000 / per_gflops) / (OFFICIAL["latency_ms"] * official_rate)
        elif "latency_ms" in results:  # lower is better: ours / official, machine-normalised
            ratios["latency_ms"] = (results["latency_ms"] * rate) / (OFFICIAL["latency_ms"] * official_rate)
        for key in ("train_peak_rss_mb", "predict_peak_rss_mb"):
            if key in results:
                ratios[key] = results[key] / OFFICIAL[key]
        results["vs_official"] = ratios
        # the ratio this model would reach if its matrix products ran at the matmul rate and nothing
        # else took time: the ceiling of ``vs_official`` for its FLOPs per window
        results["vs_official_ceiling"] = {
            key: (1 / results[f"{phase}_gflop_per_window"]) / (OFFICIAL[key] / official_rate)
            for phase, key in (
                ("train", "train_windows_per_second"),
                ("predict", "predict_windows_per_second"),
            )
            if f"{phase}_gflop_per_window" in results
        }
        results["official"] = OFFICIAL
    return results


def table(paths: list[str]) -> str:
    """A markdown table of result JSON files (the docs' tables are this output)."""
    rows = [
        "| file | precision | C | H | train batch | matmul GFLOP/s | train win/s | predict win/s (batch) "
        "| latency ms | peak RSS train / predict MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(value: Any, digits: int | None = None) -> str:
        """Rates and latencies to 3 significant digits (0.161, 29.5, 152); ``digits`` fixed decimals."""
        if value is None:
            return "-"
        return f"{value:.{digits}f}" if digits is not None else f"{value:#.3g}".rstrip(".")

    for path in paths:
        r = json.loads(Path(path).read_text())
        horizon = next(
            (o.split("=", 1)[1] for o in r.get("overrides", []) if o.startswith("data.prediction_length=")),
            "96",
        )
        predict = cell(r.get("predict_windows_per_second"))
        if "predict_windows_per_second" in r:
            predict += f" ({r.get('predict_batch_size', 256)})"
        precision = "int8" if r.get("int8") else r.get("precision", "fp32")
        precision += " compiled" if r.get("compile") else ""
        precision += f" {r['allocator']}" if r.get("allocator", "glibc") != "glibc" else ""
        precision += " low-memory" if r.get("train_low_memory") else ""
        precision += " fast-dropout" if r.get("train_dropout_masks") == "fast" else ""
        memory = f"{cell(r.get('train_peak_rss_mb'), 0)} / {cell(r.get('predict_peak_rss_mb'), 0)}"
        if "train_peak_gpu_mb" in r or "predict_peak_gpu_mb" in r:
            memory += (
                f" (GPU {cell(r.get('train_peak_gpu_mb'), 0)} / {cell(r.get('predict_peak_gpu_mb'), 0)})"
            )
        rows.append(
            f"| {Path(path).name} | {precision} | {r.get('channels') or 7} | {horizon} "
            f"| {r['batch_size']} | {cell(r.get('matmul_gflops'), 0)} "
            f"| {cell(r.get('train_windows_per_second'))} | {predict} | {cell(r.get('latency_ms'))} "
            f"| {memory} |"
        )
    return "\n".join(rows)


def ratio_table(paths: list[str]) -> str:
    """A markdown table of the ratios to the official figures (``vs_official``) of result JSON files."""
    rows = [
        "| file | scaled by | training win/s | prediction win/s | batch-1 latency | peak memory, training |",
        "|---|---|---|---|---|---|",
    ]
    columns = (
        ("train_windows_per_second", "x"),
        ("predict_windows_per_second", "x"),
        ("latency_ms", ""),
        ("train_peak_rss_mb", ""),
    )
    for path in paths:
        r = json.loads(Path(path).read_text())
        ratios = r.get("vs_official")
        if not ratios:
            continue
        basis = "each call's matmul probe" if r.get("paired_matmul") else "the run's matmul phase"
        shown = [f"{ratios[key]:.2f}{suffix}" if key in ratios else "-" for key, suffix in columns]
        rows.append(f"| {Path(path).name} | {basis} | " + " | ".join(shown) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config")
    parser.add_argument("--table", nargs="+", metavar="JSON", help="print a markdown table of result files")
    parser.add_argument(
        "--ratios", nargs="+", metavar="JSON", help="print their ratios to the official figures as a table"
    )
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    parser.add_argument("--random", action="store_true", help="random backbone weights (no download)")
    parser.add_argument("--channels", type=int, default=None, help="override C (default: the dataset's)")
    parser.add_argument("--batch-size", type=int, default=256, help="training batch (default 256)")
    parser.add_argument("--predict-batch-size", type=int, default=256, help="inference batch (default 256)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: autocast the forward passes, as training.precision=bf16 does (default fp32)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--latency-repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument(
        "--no-merge-lora",
        dest="merge_lora",
        action="store_false",
        help="predict and latency with the LoRA adapters unmerged (default: merged, as ecalf predicts)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model (compiled during warm-up)"
    )
    parser.add_argument(
        "--allocator",
        choices=("glibc", *ALLOCATORS),
        default="glibc",
        help="malloc of the measuring processes: glibc's, or tcmalloc/jemalloc by LD_PRELOAD",
    )
    parser.add_argument(
        "--int8", action="store_true", help="predict and latency with the int8 copy (ecalf.inference)"
    )
    parser.add_argument(
        "--paired-matmul",
        action="store_true",
        help="time a 2048^2 matmul before each timed call and scale each call by it (noisy machines); "
        "the ratios to the official figures then use these pairs",
    )
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--output", help="write the results JSON here (atomically)")
    args = parser.parse_args()
    if args.table or args.ratios:
        print(
            "\n\n".join(
                t for t in (args.table and table(args.table), args.ratios and ratio_table(args.ratios)) if t
            )
        )
        return
    if not args.config:
        parser.error("--config is required (or --table JSON ...)")
    if args.phase:
        print(json.dumps(child(args)))
        return
    results = parent(args)
    text = json.dumps(results, indent=2)
    if args.output:
        from ecalf.artifacts import write_text

        write_text(Path(args.output), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
