"""`ray job submit` entrypoint: top-k answers from a run's best checkpoint (arguments as `distmap predict`).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- $PWD/.venv/bin/python jobs/predict.py \
        runs/wn9-img-complex-seed0 --root $PWD --queries q.tsv --out top10.parquet

``--root $PWD``: relative paths resolve against the checkout, not Ray's temporary copy of the
working dir (see jobs/train.py). New entities (a multimodal run): add ``--new-entities new.tsv``
(header; columns name, text) and optionally ``--new-visual new.npy``, and name them in the queries;
or ask about one with ``--new-entity NAME --text "..." --relation R --head NAME``.
"""

import sys

from distmap.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
