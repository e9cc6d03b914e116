"""WN9-IMG training epochs through the Ray path (one Ray Train worker) against the plain loop.

The same config (ComplEx, Adagrad lr 0.1, N3 5e-3, as ``train_speed.py``) runs through
``distmap.train.fit.fit`` (one process, ``local_step``) and through
``distmap.distributed.trainer.fit_distributed`` with ``scale.workers = 1`` (a Ray Train worker with
the whole table: ``ShardedEngine``, ``sharded_step``, the vocab-parallel loss), alternately,
``--rounds`` times each. Epoch times come from each run's ``metrics.json``; the first epoch
of every run is a warm-up and is left out. Ray's start-up and teardown are reported apart:
they are paid once per run, not per epoch.

    python benchmarks/ray_path.py [--rank 500] [--batch-size 1000] [--epochs 4] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from record import recorded  # benchmarks/ is on the path when run as a script

from distmap.config import Config, config_from_dict
from distmap.data.kg import KnowledgeGraph
from distmap.data.prepare import prepare_dataset
from distmap.distributed.trainer import fit_distributed
from distmap.train.fit import fit

ROOT = Path(__file__).resolve().parents[1]
TARGET_SLOWDOWN = 1.10


def make_config(dataset: Path, out: Path, args: argparse.Namespace, workers: int) -> Config:
    return config_from_dict(
        {
            "data": {"path": str(dataset)},
            "model": {"name": "complex", "rank": args.rank},
            "train": {
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "lr": 0.1,
                "reg_weight": 5e-3,
                "valid_every": args.epochs,
                "threads": args.threads,
            },
            "track": {"enabled": False, "output_dir": str(out), "run_name": f"{'ray' if workers else 'plain'}"},
            "scale": {"workers": workers, "cpus_per_worker": args.threads},
        }
    )


def timed_run(cfg: Config) -> tuple[list[float], float]:
    """(epoch seconds after the first, wall seconds of the whole run)."""
    start = time.perf_counter()
    if cfg.scale.workers:
        fit_distributed(cfg, log=lambda _: None)
    else:
        fit(cfg, log=lambda _: None)
    wall = time.perf_counter() - start
    summary = json.loads((Path(cfg.track.output_dir) / cfg.track.run_name / "metrics.json").read_text())
    return summary["epoch_seconds"][1:], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=4, help="per run; the first is a warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="plain and Ray runs, alternately")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    logging.getLogger("ray").setLevel(logging.ERROR)
    with recorded("ray_path", args) as record:
        measure(args, record.values)


def measure(args: argparse.Namespace, values: dict) -> None:
    epochs: dict[str, list[float]] = {"plain": [], "ray": []}
    walls: dict[str, list[float]] = {"plain": [], "ray": []}
    # Ray's socket paths must stay short: keep the work folder directly under /tmp.
    work = Path(tempfile.mkdtemp(prefix="dmbench-", dir="/tmp"))
    try:
        dataset = work / "wn9-img"
        prepare_dataset(ROOT / "data" / "raw" / "wn9-img", dataset, log=lambda _: None)
        kg = KnowledgeGraph.load(dataset)
        for round_ in range(args.rounds):
            for path, workers in (("plain", 0), ("ray", 1)):
                out = work / f"runs-{path}-{round_}"
                seconds, wall = timed_run(make_config(dataset, out, args, workers))
                epochs[path] += seconds
                walls[path].append(wall)
                print(
                    f"  round {round_ + 1} {path}: epochs {', '.join(f'{s:.2f}' for s in seconds)} s, run {wall:.1f} s",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    plain, ray = statistics.median(epochs["plain"]), statistics.median(epochs["ray"])
    examples = 2 * len(kg.train)
    print(
        f"\n**ray_path** {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · torch {torch.__version__} · "
        f"{args.threads} threads · WN9-IMG {kg.num_entities:,} entities, {examples:,} examples/epoch · "
        f"ComplEx rank {args.rank}, batch {args.batch_size} · median of {len(epochs['plain'])} epochs per path\n"
    )
    print("| path | epoch s (median) | examples/s | whole run s (median, incl. start-up and evaluation) |")
    print("|---|---|---|---|")
    for key, name, value in (
        ("plain", "plain loop (`fit`)", plain),
        ("ray", "Ray Train, 1 worker (`fit_distributed`)", ray),
    ):
        print(f"| {name} | {value:.2f} | {examples / value:,.0f} | {statistics.median(walls[key]):.1f} |")
    ratio = ray / plain
    values.update(epochs=epochs, walls=walls, plain_epoch_s=plain, ray_epoch_s=ray, ratio=ratio)
    print(
        f"\nRay epoch / plain epoch = {ratio:.3f}; target ≤ {TARGET_SLOWDOWN:.2f}: "
        f"{'met' if ratio <= TARGET_SLOWDOWN else 'NOT met'}"
    )
    raise SystemExit(0 if ratio <= TARGET_SLOWDOWN else 1)


if __name__ == "__main__":
    main()
