"""Mean and standard deviation of test metrics over the seeds of each variant in a runs tree.

Usage: python benchmarks/summarize_runs.py RUNS_DIR   (expects RUNS_DIR/<variant>/<seed>/metrics.json)
"""

import json
import statistics
import sys
from pathlib import Path


def main(root: str) -> None:
    rows = []
    for variant in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        metrics = [json.loads(m.read_text()) for m in sorted(variant.glob("*/metrics.json"))]
        if not metrics:
            continue
        mse = [m["test"]["mse"] for m in metrics]
        mae = [m["test"]["mae"] for m in metrics]
        epochs = [m["epochs_run"] for m in metrics]
        wall = [m["wall_seconds"] for m in metrics]
        sd = statistics.stdev if len(mse) > 1 else (lambda _: 0.0)
        rows.append(
            f"| {variant.name} | {len(mse)} | {statistics.mean(mse):.4f} ± {sd(mse):.4f} "
            f"| {statistics.mean(mae):.4f} ± {sd(mae):.4f} | {statistics.mean(epochs):.1f} "
            f"| {statistics.mean(wall):.0f} |"
        )
    print("| variant | seeds | test MSE | test MAE | epochs | wall s |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1])
