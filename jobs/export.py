"""`ray job submit` entrypoint: a run's best vectors to Parquet (arguments as `distmap export`).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- $PWD/.venv/bin/python jobs/export.py \
        runs/wn9-img-complex-seed0 --root $PWD --out wn9-complex.parquet

``--root $PWD``: relative paths resolve against the checkout, not Ray's temporary copy of the
working dir (see jobs/train.py). ``--new-entities new.tsv`` (header; columns name, text)
[``--new-visual new.npy``] appends the fused rows of entities not in the dataset (a multimodal run),
marked by the column ``new``.
"""

import sys

from distmap.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
