#!/usr/bin/env bash
# The main job: prepare WN9-IMG, embed its text, train + evaluate MAP (structure + text) on local Ray, log to MLflow (./mlflow.db).
# Extra arguments go to `distmap train`, e.g. --set train.epochs=5.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
DATASET=datasets/wn9-img
[ -f "$DATASET/manifest.json" ] || .venv/bin/distmap prepare data/raw/wn9-img "$DATASET"
if ! .venv/bin/python -c "import json,sys; sys.exit('text' not in json.load(open('$DATASET/manifest.json'))['features'])"; then
  .venv/bin/distmap features text "$DATASET" --source data/raw/wn9-img/wordnet30_glosses.tsv.gz --columns lemmas,gloss
fi
# On a private local Ray (all sockets on 127.0.0.1): 2 Ray Train workers, each holding half the entity table
# and reading only its half of the text features.
.venv/bin/distmap train configs/wn9img/map.yaml --set scale.workers=2 "$@"
echo "MLflow UI: .venv/bin/mlflow server --backend-store-uri sqlite:///$PWD/mlflow.db --host 127.0.0.1 --port 5000 --workers 1"
