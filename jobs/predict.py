"""`ray job submit` entrypoint: top-k answers from a run's best checkpoint (arguments as `distmap predict`).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        /abs/path/.venv/bin/python jobs/predict.py runs/wn9-img-complex-seed0 --queries q.tsv --out top10.parquet
"""

import sys

from distmap.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
