#!/usr/bin/env bash
# Enhanced CALF vs CALF vs each single enhancement: real ETTh1, few-shot 10 %, horizon 96,
# backbone smollm2-135m, 3 seeds. Resumable: a run whose metrics.json exists is skipped.
# Usage: bash benchmarks/enhancements_etth1.sh [OUTPUT_DIR]   (then: python benchmarks/summarize_runs.py OUTPUT_DIR)
set -euo pipefail
out=${1:-runs/enhancements_etth1}
ecalf=${ECALF:-ecalf}
common=(
  --set model.backbone.preset=smollm2-135m --set data.few_shot_percent=10
  --set data.prediction_length=96 --set training.batch_size=32 --set training.epochs=10
  --set training.cosine_t_max=10 --set training.patience=3 --set training.progress=false
)
declare -A variants=(
  [calf]="configs/calf/ETTh1.yaml|"
  [ecalf]="configs/ecalf/ETTh1.yaml|"
  [calf+dynamic_match]="configs/calf/ETTh1.yaml|model.dynamic_match=true"
  [calf+multilevel_distillation]="configs/calf/ETTh1.yaml|model.multilevel_distillation=true"
  [calf+adaptive_alignment]="configs/calf/ETTh1.yaml|model.adaptive_alignment=true"
)
for seed in 2021 2022 2023; do
  for name in calf ecalf calf+dynamic_match calf+multilevel_distillation calf+adaptive_alignment; do
    IFS='|' read -r config extra <<< "${variants[$name]}"
    dir="$out/$name/seed$seed"
    [ -f "$dir/metrics.json" ] && { echo "skip $dir"; continue; }
    echo "run $dir"
    args=("${common[@]}" --set "seed=$seed")
    [ -n "$extra" ] && args+=(--set "$extra")
    "$ecalf" train --config "$config" --output-dir "$dir" --quiet "${args[@]}"
  done
done
