"""Is the sampled step's time independent of N? Steps of several table sizes, interleaved.

On a shared VM the load changes from minute to minute, so cases measured one after another
(benchmarks/scale.py) compare load as much as N. Here each process holds a model per size and takes
their steps round-robin (one thread), so every size sees the same load; the median step per size
is compared with the smallest size's. With ``--workers P`` (gloo, 127.0.0.1) every worker holds its
row range of each size and the steps are the sharded ones (their collectives included); a step's
time is the slowest worker's.

    python benchmarks/sampled_flat.py [--sizes 1e5,1e6,1e7] [--workers 1] [--rank 100] [--batch-size 1000]
        [--candidates 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from record import recorded
from scale import NUM_RELATIONS, int_list  # benchmarks/ is on the path when run as a script

from distmap.config import ModelConfig
from distmap.data.batches import QueryGroups
from distmap.distributed.collectives import free_port
from distmap.distributed.partition import row_ranges
from distmap.distributed.sharded import sampled_step, sync_replicated_grads
from distmap.models.zoo import build_model
from distmap.train.fit import make_optimizer
from distmap.train.objective import Objective
from distmap.train.sampled import CandidateSampler


def worker(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    """This worker's step times per size (seconds, one per timed round)."""
    torch.set_num_threads(1)
    if args.workers > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
        dist.init_process_group("gloo", rank=rank, world_size=args.workers)
    try:
        steps, times = {}, {n: [] for n in args.sizes}
        for n in args.sizes:
            lo, hi = row_ranges(n, args.workers)[rank]
            model = build_model(
                ModelConfig(name="complex", rank=args.rank),
                n,
                NUM_RELATIONS,
                entity_range=(lo, hi),
                table_dtype=torch.bfloat16,
            )
            optimizer = make_optimizer("rowwise_adagrad", model, 0.1, sparse=True)
            g = torch.Generator().manual_seed(0)  # the same global batches on every worker
            count = args.batch_size * (args.rounds + 1)
            examples = torch.stack(
                [
                    torch.randint(0, n, (count,), generator=g),
                    torch.randint(0, 2 * NUM_RELATIONS, (count,), generator=g),
                    torch.randint(0, n, (count,), generator=g),
                ],
                dim=1,
            )
            groups = QueryGroups.build(examples, grouped=False)
            objective = Objective("n3", 0.05)
            step = sampled_step(model, groups, objective, optimizer.table, CandidateSampler(0), args.candidates)
            sync = sync_replicated_grads(model) if args.workers > 1 else None
            steps[n] = (step, optimizer, sync, torch.arange(count).split(args.batch_size))
        for i in range(args.rounds + 1):
            for n, (step, optimizer, sync, batches) in steps.items():
                start = time.perf_counter()
                loss, _, _ = step(batches[i])
                optimizer.zero_grad()
                loss.backward()
                if sync is not None:
                    sync()
                optimizer.step()
                if i:  # the first round warms up
                    times[n].append(time.perf_counter() - start)
        Path(out, f"rank{rank}.json").write_text(json.dumps({str(n): t for n, t in times.items()}), encoding="utf-8")
    finally:
        if args.workers > 1:
            dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int_list, default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--workers", type=int, default=1, help="P gloo workers, one thread each")
    parser.add_argument("--rank", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with recorded(f"sampled_flat_p{args.workers}", args) as record:
        measure(args, record.values)


def measure(args: argparse.Namespace, values: dict) -> None:
    with tempfile.TemporaryDirectory() as out:
        if args.workers == 1:
            worker(0, args, 0, out)
        else:
            mp.spawn(worker, args=(args, free_port(), out), nprocs=args.workers, join=True)
        per_worker = [json.loads(Path(out, f"rank{p}.json").read_text()) for p in range(args.workers)]
    # A sharded step ends when its slowest worker does (they meet in its collectives).
    times = {n: [max(ts) for ts in zip(*(w[str(n)] for w in per_worker), strict=True)] for n in args.sizes}
    smallest = statistics.median(times[args.sizes[0]])
    values.update(
        step_s={str(n): ts for n, ts in times.items()},
        median_step_s={str(n): statistics.median(ts) for n, ts in times.items()},
    )
    print(
        f"complex rank {args.rank}, batch {args.batch_size}, S = {args.candidates}, bfloat16, row-wise Adagrad, "
        f"P = {args.workers}, 1 thread per worker, median of {args.rounds} interleaved rounds after a warm-up"
    )
    print("\n| entities | P | median step ms | vs smallest N |\n|---|---|---|---|")
    for n in args.sizes:
        median = statistics.median(times[n])
        print(f"| {n:,} | {args.workers} | {1000 * median:.0f} | {median / smallest - 1:+.0%} |")


if __name__ == "__main__":
    main()
