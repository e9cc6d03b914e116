"""`ray job submit` entrypoint: evaluate a run's best checkpoint (arguments as `distmap evaluate`)."""

import sys

from distmap.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
