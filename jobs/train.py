"""`ray job submit` entrypoint: train + evaluate one config.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        /abs/path/.venv/bin/python jobs/train.py configs/wn9img/complex.yaml --set train.epochs=5

Thin on purpose: arguments go straight to `distmap train`.
"""

import sys

from distmap.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
