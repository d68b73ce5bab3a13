#!/usr/bin/env bash
# Every published results table, one grid after another, each followed by its report
# (results/<grid>.csv, .md and PNGs). Resumable: run it again after any stop and finished cells are
# skipped, the cell in flight continues from its last epoch. Extra arguments go to every
# `ecalf benchmark` call (e.g. --data-dir DIR, --seeds 2021, --models calf ecalf).
#
#   JOBS=2 benchmarks/run_all.sh --data-dir path/to/datasets
#
# JOBS cells run at once (default 2: on a 2-core CPU two 1-thread cells train 1.2x faster in total than
# one 2-thread cell; docs/benchmark.md). The few-shot grid comes first (the headline table), then full
# data, then zero-shot (which evaluates the full grid's trainings instead of training again).
set -uo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}
ECALF=${ECALF:-ecalf}
status=0
for grid in fewshot full zeroshot ablations enhancements calf full_official reproduce dropout_masks intervals_fewshot intervals tuned_llm; do
    echo "== $grid"
    "$ECALF" benchmark "benchmarks/$grid.yaml" --jobs "$JOBS" --quiet "$@" || status=1  # failed cells: reported, rerun next time
    if [ -s "results/$grid.csv" ]; then
        "$ECALF" report "results/$grid.csv" --published --histories || status=1
    fi
done
exit $status
