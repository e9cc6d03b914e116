#!/usr/bin/env bash
# Runs `distmap train` for every (config, seed) given, two at a time with one thread each (the
# RESULTS.md protocol on a 2-core machine); each run logs to logs/<config>-seed<s>.log.
#   bash scripts/runs.sh "0 1 2" configs/wn9img/map.yaml configs/wn9img/map_wo_r.yaml ...
# Extra training arguments go in $TRAIN_ARGS, e.g. TRAIN_ARGS="--set train.epochs=10".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
seeds=$1; shift
mkdir -p logs
for config in "$@"; do for seed in $seeds; do
  echo "$config $seed"
done; done | xargs -P "${LANES:-2}" -L 1 bash -c '
  name=$(basename "$(dirname "$0")")-$(basename "$0" .yaml)-seed$1
  .venv/bin/distmap train "$0" --set train.seed="$1" --set train.threads=1 ${TRAIN_ARGS:-} > "logs/$name.log" 2>&1 \
    && echo "done $name" || echo "FAILED $name (logs/$name.log)"'
