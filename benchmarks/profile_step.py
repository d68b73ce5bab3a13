"""Where one training step's time goes: a torch.profiler table of a batch-256 step (docs/speed.md).

With ``--predict``, one batch-256 prediction instead (eval mode, inference_mode, LoRA merged), as
``benchmarks/speed.py``'s predict phase times it.

python benchmarks/profile_step.py --config configs/calf/ETTh1.yaml --random
python benchmarks/profile_step.py --config configs/calf/ETTh1.yaml --random --predict
python benchmarks/profile_step.py --config configs/calf/ETTh1.yaml --set model.backbone.preset=smollm2-135m
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from speed import build  # benchmarks/speed.py, beside this file
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    parser.add_argument("--random", action="store_true", help="random backbone weights (no download)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=30, help="operators shown")
    parser.add_argument("--predict", action="store_true", help="profile a prediction, not a step")
    args = parser.parse_args()
    args.channels, args.device, args.compile = None, "cpu", False
    torch.set_num_threads(args.threads)

    from ecalf.dropout import dropout_masks
    from ecalf.inference import merged_lora
    from ecalf.training import build_optimizer

    config, model, _ = build(args)
    m = config.model
    past = torch.randn(args.batch_size, m.context_length, m.num_channels)
    future = torch.randn(args.batch_size, m.prediction_length, m.num_channels)
    if args.predict:
        model.eval()

        def step() -> None:
            model(past)

        context: contextlib.AbstractContextManager[object] = merged_lora(model)
    else:
        optimizer = build_optimizer(model, config.training)
        model.train()

        def step() -> None:
            output = model(past, future)
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            optimizer.step()

        context = dropout_masks(model, config.training.dropout_masks)  # as ecalf.training does
    with context, torch.inference_mode(args.predict):
        step()  # warm-up
        start = time.perf_counter()
        step()
        print(f"one call: {time.perf_counter() - start:.3f} s (unprofiled)")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
