"""`ray job submit` entrypoint: evaluate a run's best checkpoint (arguments as `distmap evaluate`).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- $PWD/.venv/bin/python jobs/evaluate.py \
        runs/wn9-img-complex-seed0 --root $PWD

``--root $PWD``: relative paths resolve against the checkout, not Ray's temporary copy of the
working dir (see jobs/train.py).
"""

import sys

from distmap.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
