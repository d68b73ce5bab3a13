#!/usr/bin/env bash
# Issue #24's searches (docs/tuning-protocol.md): 40 trials each for Enhanced CALF, PatchTST and
# DLinear on the pilot cells (few-shot 10 %, seed 2021: ETTh1 H 96, ETTh2 H 336, ETTm1 H 96,
# ETTm2 H 192), validation only; each writes runs/tune/<model>/{trials.csv,best.yaml} and its best
# recipe to configs/tuned/<model>.yaml. Resumable: run it again after any stop and every search keeps
# its finished trials; after every trial a snapshot of the study goes to results/tune/<model>/ (commit
# it: on a fresh checkout the search continues from it). Extra arguments go to every `ecalf tune` call
# (e.g. --data-dir DIR).
#
#   benchmarks/tune_all.sh --data-dir path/to/datasets               # one search after another
#   MODELS="dlinear" benchmarks/tune_all.sh --data-dir path/to/datasets  # one of them
#
# THREADS (default 1) is each trial's torch threads: two searches side by side, one thread each, use
# a 2-core CPU best (start them with MODELS="ecalf" and MODELS="patchtst dlinear"). The same command
# started twice puts two workers on one search (e.g. MODELS=ecalf twice once the other searches are
# done): they share its study and its budget.
set -euo pipefail
cd "$(dirname "$0")/.."
ECALF=${ECALF:-ecalf}
THREADS=${THREADS:-1}
mkdir -p configs/tuned
for model in ${MODELS:-ecalf patchtst dlinear}; do
    case $model in
        ecalf) base=configs/ecalf/ETTh1.yaml ;;
        *) base=configs/baselines/$model.yaml ;;
    esac
    echo "== $model"
    "$ECALF" tune "$base" --space "configs/tune/$model.yaml" --trials 40 \
        --set "training.num_threads=$THREADS" --best-config "configs/tuned/$model.yaml" \
        --snapshot "results/tune/$model" --quiet "$@"
done
