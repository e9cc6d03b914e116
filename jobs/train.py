"""`ray job submit` entrypoint: train + evaluate one config (arguments as `distmap train`).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- $PWD/.venv/bin/python jobs/train.py \
        configs/wn9img/complex.yaml --root $PWD --set scale.workers=2 --set scale.address=auto

Ray runs the job in a temporary copy of the working dir without its git-ignored files (datasets/,
runs/, mlflow.db): ``--root $PWD`` resolves every relative path against the checkout, so the dataset
is found and the run, its checkpoints and the MLflow store land there (without it, a job that would
use a relative path stops and says so). Thin on purpose: arguments go straight to `distmap train`.
"""

import sys

from distmap.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
