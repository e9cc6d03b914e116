#!/usr/bin/env bash
# The cold-start datasets of issue 19 (DKRL's zero-shot protocol, Xie et al., AAAI 2016): 10 % of the
# entities with text (seed 0) lose every train triple to valid/test, half each; then their text features.
# Writes datasets/wn9-img-cold and datasets/fb-img-cold (configs: configs/wn9img_cold, configs/fbimg_cold).
# Idempotent: a dataset that is already prepared, or already has its text features, is left as it is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/venv.sh

# cold RAW OUT TEXT_SOURCE TEXT_COLUMNS
cold() {
  local raw=$1 out=$2 source=$3 columns=$4
  [ -f "$out/manifest.json" ] \
    || .venv/bin/distmap prepare "$raw" "$out" --cold-entities 0.1 --seed 0 --cold-eligible "$source"
  if ! .venv/bin/python -c "import json,sys; sys.exit('text' not in json.load(open('$out/manifest.json'))['features'])"; then
    .venv/bin/distmap features text "$out" --source "$source" --columns "$columns"
  fi
}

cold data/raw/wn9-img datasets/wn9-img-cold data/raw/wn9-img/wordnet30_glosses.tsv.gz lemmas,gloss
cold data/raw/fb-img datasets/fb-img-cold data/raw/fb-img/entity_text.tsv.gz name,description
