"""Is the sampled step's time independent of N? Steps of several table sizes, interleaved in one process.

On a shared VM the load changes from minute to minute, so cases measured one after another
(benchmarks/scale.py) compare load as much as N. Here one process holds a model per size and takes
their steps round-robin (one thread), so every size sees the same load; the median step per size
is compared with the smallest size's.

    python benchmarks/sampled_flat.py [--sizes 1e5,1e6,1e7] [--rank 100] [--batch-size 1000] [--candidates 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from scale import NUM_RELATIONS, int_list  # benchmarks/ is on the path when run as a script

from distmap.config import ModelConfig
from distmap.data.batches import QueryGroups
from distmap.distributed.sharded import sampled_step
from distmap.models.zoo import build_model
from distmap.train.fit import make_optimizer
from distmap.train.objective import Objective
from distmap.train.sampled import CandidateSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int_list, default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--rank", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps, times = {}, {n: [] for n in args.sizes}
    for n in args.sizes:
        model = build_model(ModelConfig(name="complex", rank=args.rank), n, NUM_RELATIONS, table_dtype=torch.bfloat16)
        optimizer = make_optimizer("rowwise_adagrad", model, 0.1, sparse=True)
        g = torch.Generator().manual_seed(0)
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
        step = sampled_step(model, groups, Objective("n3", 0.05), optimizer.table, CandidateSampler(0), args.candidates)
        steps[n] = (step, optimizer, torch.arange(count).split(args.batch_size))
    for i in range(args.rounds + 1):
        for n, (step, optimizer, batches) in steps.items():
            start = time.perf_counter()
            loss, _, _ = step(batches[i])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i:  # the first round warms up
                times[n].append(time.perf_counter() - start)
    smallest = statistics.median(times[args.sizes[0]])
    print(
        f"complex rank {args.rank}, batch {args.batch_size}, S = {args.candidates}, bfloat16, row-wise Adagrad, "
        "1 thread"
    )
    print("\n| entities | median step ms | vs smallest N |\n|---|---|---|")
    for n in args.sizes:
        median = statistics.median(times[n])
        print(f"| {n:,} | {1000 * median:.0f} | {median / smallest - 1:+.0%} |")


if __name__ == "__main__":
    main()
