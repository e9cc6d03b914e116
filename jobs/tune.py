"""`ray job submit` entrypoint: run (or resume) one study on the cluster the job runs in.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- $PWD/.venv/bin/python jobs/tune.py \
        configs/tune/wn9img_map_params.yaml --root $PWD --set train.threads=1

Set ``address: auto`` in the study (or keep ``local`` outside a cluster). ``--root $PWD``: relative
paths resolve against the checkout, not Ray's temporary copy of the working dir (see jobs/train.py).
Thin on purpose: arguments go straight to `distmap tune`.
"""

import sys

from distmap.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
