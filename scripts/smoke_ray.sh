#!/usr/bin/env bash
# Every WN9-IMG config, one epoch, on 2 local Ray Train workers (half the entity table and half the
# feature rows each), then the usual test evaluation: the "every model trains and evaluates on P = 2"
# check of the model zoo. Runs go to experiment `smoke` as runs/smoke-<config>; a summary table at the end.
#   bash scripts/smoke_ray.sh [configs...]        (default: configs/wn9img/*.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
mkdir -p logs
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(configs/wn9img/*.yaml)
echo "| config | result | test MRR after 1 epoch | wall s |"
echo "|---|---|---|---|"
for config in "${configs[@]}"; do
  name=smoke-$(basename "$config" .yaml)
  start=$(date +%s)
  if .venv/bin/distmap train "$config" --set scale.workers=2 --set train.epochs=1 --set train.valid_every=1 \
      --set track.experiment=smoke --set track.run_name="$name" > "logs/$name.log" 2>&1; then
    mrr=$(.venv/bin/python -c "import json; print(round(json.load(open('runs/$name/metrics.json'))['test']['both']['mrr'], 4))")
    echo "| $config | ok | $mrr | $(( $(date +%s) - start )) |"
  else
    echo "| $config | FAILED (logs/$name.log) | — | $(( $(date +%s) - start )) |"
  fi
done
