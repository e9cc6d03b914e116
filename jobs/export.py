"""`ray job submit` entrypoint: a run's best vectors to Parquet (arguments as `distmap export`).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        /abs/path/.venv/bin/python jobs/export.py runs/wn9-img-complex-seed0 --out /abs/path/wn9-complex.parquet

``--new-entities /abs/path/new.tsv`` (header; columns name, text) [``--new-visual /abs/path/new.npy``] appends
the fused rows of entities not in the dataset (a multimodal run), marked by the column ``new``.
"""

import sys

from distmap.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
