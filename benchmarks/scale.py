"""Row-sharded 1-vs-all training at growing entity counts: what each worker holds, what it costs.

For each synthetic graph size N and worker count P, P fresh processes (gloo on 127.0.0.1 when
P > 1) build their rows [lo, hi) of a rank-``--rank`` table, take one warm-up step, then time
``--steps`` steps of the real training step (``local_step`` for P = 1, ``sharded_step`` for
P > 1) under ``run_epoch`` with Adagrad and N3. Each worker reports the bytes of its entity
rows and their optimizer state, its peak RSS, and the payload of every collective it called.
Prints one markdown table, checks the issue's targets, then prints the paper projection
(``--project``) from the same byte formulas that the measured P = 2 payloads are checked against.

    python benchmarks/scale.py [--sizes 100000,300000,1000000,2000000] [--workers 1,2] [--rank 200]
        [--batch-size 128] [--steps 5] [--cores 2] [--project 100000000] [--gpus 8,64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from record import cpu_name, recorded  # benchmarks/ is on the path when run as a script

from distmap.config import ModelConfig
from distmap.data.batches import QueryGroups
from distmap.distributed.collectives import free_port
from distmap.distributed.partition import row_ranges
from distmap.distributed.sharded import sampled_step, sharded_step, sync_replicated_grads
from distmap.models.interactions import make_interaction
from distmap.models.zoo import build_model
from distmap.train.fit import make_optimizer
from distmap.train.loop import local_step, run_epoch
from distmap.train.objective import Objective
from distmap.train.sampled import CandidateSampler

NUM_RELATIONS = 100  # before reciprocals
FLOAT = 4
TARGET_SHARE_TOLERANCE = 0.10
TARGET_P2_THROUGHPUT = 0.8


@dataclass(frozen=True)
class Case:
    num_entities: int
    workers: int
    threads: int
    rank: int
    batch_size: int
    steps: int
    model: str
    objective: str = "exact"
    candidates: int = 1000
    optimizer: str = "adagrad"
    table_dtype: str = "float32"
    repeats: int = 1  # timed epochs of ``steps`` steps; the median is reported (the VM is shared)
    seed: int = 0


@dataclass(frozen=True)
class WorkerReport:
    rows: int
    table_bytes: int
    optimizer_bytes: int
    start_rss_bytes: int
    peak_rss_bytes: int
    seconds: float
    all_reduce_bytes: int
    all_gather_bytes: int


def count_collectives(totals: dict[str, int]) -> None:
    """Wrap ``dist.all_reduce`` / ``dist.all_gather`` to add up their payloads (bytes per call:
    the reduced tensor; the gathered tensors). ``distmap.distributed`` looks them up at call time."""
    all_reduce, all_gather = dist.all_reduce, dist.all_gather

    def counted_reduce(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        totals["all_reduce"] += tensor.numel() * tensor.element_size()
        return all_reduce(tensor, *args, **kwargs)

    def counted_gather(outputs: list[torch.Tensor], tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        totals["all_gather"] += sum(t.numel() * t.element_size() for t in outputs)
        return all_gather(outputs, tensor, *args, **kwargs)

    dist.all_reduce, dist.all_gather = counted_reduce, counted_gather


def synthetic_examples(case: Case) -> torch.Tensor:
    """Uniform random (h, r, t) with reciprocal relation ids, the same on every worker (seeded)."""
    g = torch.Generator().manual_seed(case.seed)
    n = case.batch_size * (case.steps + 1)
    return torch.stack(
        [
            torch.randint(0, case.num_entities, (n,), generator=g),
            torch.randint(0, 2 * NUM_RELATIONS, (n,), generator=g),
            torch.randint(0, case.num_entities, (n,), generator=g),
        ],
        dim=1,
    )


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(rank: int, case: Case, port: int, out: str) -> None:
    torch.set_num_threads(case.threads)
    start_rss = peak_rss()
    if case.workers > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
        dist.init_process_group("gloo", rank=rank, world_size=case.workers)
    totals: dict[str, int] = defaultdict(int)
    count_collectives(totals)
    try:
        lo, hi = row_ranges(case.num_entities, case.workers)[rank]
        model = build_model(
            ModelConfig(name=case.model, rank=case.rank, init_scale=1e-3),
            case.num_entities,
            NUM_RELATIONS,
            seed=case.seed,
            entity_range=(lo, hi),
            table_dtype=getattr(torch, case.table_dtype),
        )
        sampled = case.objective == "sampled"
        optimizer = make_optimizer(case.optimizer, model, 0.1, sparse=sampled)
        sampler = CandidateSampler(case.seed)
        objective = Objective("n3", 0.05)
        examples = synthetic_examples(case)
        warmup, timed = examples[: case.batch_size], examples[case.batch_size :]
        generator = torch.Generator().manual_seed(case.seed)

        def epoch(rows: torch.Tensor) -> float:
            # One query per triple (random triples over 10^5+ entities hardly share a query), so a
            # step scores exactly ``batch_size`` rows and StepBytes.predict holds to the byte.
            groups = QueryGroups.build(rows, grouped=False)
            sync: Callable[[], None] | None = None if case.workers == 1 else sync_replicated_grads(model)
            if sampled:
                step = sampled_step(model, groups, objective, optimizer.table, sampler, case.candidates)
            elif case.workers == 1:
                step = local_step(model, groups, objective)
            else:
                step = sharded_step(model, groups, objective)
            stats = run_epoch(step, optimizer, groups, case.batch_size, generator, sync_grads=sync, show_progress=False)
            return stats.seconds

        epoch(warmup)  # allocates the optimizer state and warms the allocator and thread pool
        totals.clear()
        seconds = statistics.median(epoch(timed) for _ in range(case.repeats))
        weight = model.entities.weight
        state = optimizer.state[weight]
        report = WorkerReport(
            rows=hi - lo,
            table_bytes=weight.numel() * weight.element_size(),
            optimizer_bytes=sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v)),
            start_rss_bytes=start_rss,
            peak_rss_bytes=peak_rss(),
            seconds=seconds,
            all_reduce_bytes=totals["all_reduce"] // (case.steps * case.repeats),
            all_gather_bytes=totals["all_gather"] // (case.steps * case.repeats),
        )
        Path(out, f"rank{rank}.json").write_text(json.dumps(asdict(report)), encoding="utf-8")
    finally:
        if case.workers > 1:
            dist.destroy_process_group()


def measure(case: Case) -> list[WorkerReport]:
    """Run ``case`` in fresh processes (so peak RSS is this case's alone)."""
    with tempfile.TemporaryDirectory(prefix="distmap-scale-") as out:
        mp.start_processes(worker, args=(case, free_port(), out), nprocs=case.workers, join=True, start_method="spawn")
        return [
            WorkerReport(**json.loads(Path(out, f"rank{r}.json").read_text(encoding="utf-8")))
            for r in range(case.workers)
        ]


@dataclass(frozen=True)
class StepBytes:
    """Collective payload bytes per step and worker for a global batch of ``batch`` queries, one
    tail each, over P workers.

    The sharded step's collectives (``distmap.distributed.sharded``): the rows of heads and tails
    summed (2B·d floats), per-query max and sum of exp (2B), the target logit per pair (B), the
    penalty (1 float); backward: the gradients of those rows summed (2B·d), relation gradients
    summed (2R·d). Ids, queries and pairs are known on every worker: nothing is all-gathered.
    """

    all_reduce: int
    all_gather: int

    @classmethod
    def predict(cls, batch: int, workers: int, dim: int, relations: int) -> StepBytes:
        if workers == 1:
            return cls(0, 0)
        reduce_floats = 2 * batch * dim + 3 * batch + 1 + 2 * batch * dim + relations * dim
        return cls(reduce_floats * FLOAT, 0)

    def ring_traffic(self, workers: int) -> float:
        """Bytes each worker sends under ring algorithms: 2(P-1)/P of an all-reduce, (P-1)/P of a gather."""
        return (2 * self.all_reduce + self.all_gather) * (workers - 1) / workers


TABLE_COPIES = 4  # weight, Adagrad sum, gradient, one transient table-sized gradient in backward
GROUP_BYTES = 256 * 2**20  # a process group's own buffers (gloo, 2 workers: ~130 MiB measured at 10^5 rows)


def memory_estimate(rows: int, dim: int, batch: int, workers: int) -> int:
    """Upper estimate of what a worker's training step adds to its process, in bytes: four
    table-sized tensors, plus the score-sized (B × rows) buffers alive at once: two for the
    vocab-parallel loss (scores and its in-place buffer), three for ``F.cross_entropy`` (P = 1);
    plus the process group's buffers when there is one."""
    if workers == 1:
        return TABLE_COPIES * rows * dim * FLOAT + 3 * batch * rows * FLOAT
    return TABLE_COPIES * rows * dim * FLOAT + 2 * batch * rows * FLOAT + GROUP_BYTES


def sampled_memory_estimate(
    rows: int, dim: int, batch: int, candidates: int, workers: int, table_bytes: int, rowwise: bool
) -> int:
    """Upper estimate of what a worker's sampled training adds to its process: its rows (in the table's
    dtype), their Adagrad state (one float per row, or per element), and per step only B- and
    S-sized tensors: the gathered float32 rows of heads, tails and candidates with their gradients
    and update temporaries (6 copies of (2B + S/P) × d) and the score block of B queries against
    S/P + B candidates (4 copies); plus 256 MiB for the process group's buffers or, with one process,
    the allocator's and thread pools' own (0.2 GiB measured at 10^5 rows). Nothing grows with N per step."""
    state = rows * FLOAT * (1 if rowwise else dim)
    touched = 2 * batch + -(-candidates // workers)
    step = 6 * touched * dim * FLOAT + 4 * batch * (touched - batch) * FLOAT
    return rows * dim * table_bytes + state + step + GROUP_BYTES


TARGET_FLAT = 0.20
TARGET_SPEEDUP = 20.0


def run_sampled_table(args: argparse.Namespace) -> bool:
    """The sampled objective from 10^5 to 10^7 entities: memory against the formula, step time vs N,
    and triples/s against the exact objective at ``--exact-at`` entities."""
    rows, ok = [], True
    first_ms: dict[int, float] = {}
    rates: dict[tuple[int, int], float] = {}
    rowwise = args.optimizer == "rowwise_adagrad"
    for n in args.sizes:
        for p in args.workers:
            case = Case(
                n,
                p,
                args.threads or max(1, args.cores // p),
                args.rank,
                args.batch_size,
                args.steps,
                args.model,
                "sampled",
                args.candidates,
                args.optimizer,
                args.table_dtype,
                args.repeats,
            )
            reports = measure(case)
            seconds = max(r.seconds for r in reports)
            ms = 1000 * seconds / args.steps
            first_ms.setdefault(p, ms)
            flat = ms / first_ms[p] - 1
            ok &= abs(flat) <= TARGET_FLAT
            rates[n, p] = args.steps * args.batch_size / seconds
            dim = make_interaction(args.model).entity_dim(args.rank)
            table_bytes = torch.finfo(getattr(torch, args.table_dtype)).bits // 8
            estimates = [
                sampled_memory_estimate(r.rows, dim, args.batch_size, args.candidates, p, table_bytes, rowwise)
                for r in reports
            ]
            growth_ok = all(r.peak_rss_bytes - r.start_rss_bytes <= e for r, e in zip(reports, estimates, strict=True))
            ok &= growth_ok
            growth = " / ".join(
                f"{gib(r.peak_rss_bytes - r.start_rss_bytes)} ({gib(e)})"
                for r, e in zip(reports, estimates, strict=True)
            )
            predicted = StepBytes.predict(args.batch_size, p, dim, 2 * NUM_RELATIONS)
            measured = StepBytes(reports[0].all_reduce_bytes, reports[0].all_gather_bytes)
            held = " / ".join(gib(r.table_bytes + r.optimizer_bytes) for r in reports)
            rows.append(
                f"| {n:,} | {p} | {case.threads} | {held}"
                f" | {' / '.join(gib(r.peak_rss_bytes) for r in reports)} | {growth} {'✓' if growth_ok else '✗'}"
                f" | {ms:.0f} | {flat:+.0%}{' ✓' if abs(flat) <= TARGET_FLAT else ' ✗'} | {rates[n, p]:,.0f}"
                f" | {(measured.all_reduce + measured.all_gather) / 2**20:.2f}"
                f" ({(predicted.all_reduce + predicted.all_gather) / 2**20:.2f}) |"
            )
            print(f"  done sampled N={n:,} P={p}: {rates[n, p]:,.0f} triples/s, {ms:.0f} ms/step", flush=True)
    print(
        f"\nsampled objective: {args.model} rank {args.rank}, S = {args.candidates:,} candidates per step "
        f"(S/P per worker), batch {args.batch_size}, {args.optimizer}, {args.table_dtype} table, N3, "
        f"median of {args.repeats} × {args.steps} timed steps; {NUM_RELATIONS} relations (+ reciprocals)\n"
    )
    print(
        "| entities | P | threads/worker | table+optimizer GiB per worker | peak RSS GiB per worker "
        "| RSS growth GiB (estimate) | step ms | step vs smallest N | triples/s "
        "| collective MiB/step/worker (predicted) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.exact_at:
        print(
            f"\nexact objective at {args.exact_at:,} entities, same model, rank and workers, "
            f"batch {args.exact_batch}:\n"
        )
        print("| P | exact triples/s | sampled triples/s | sampled / exact |")
        print("|---|---|---|---|")
        for p in args.workers:
            threads = args.threads or max(1, args.cores // p)
            case = Case(args.exact_at, p, threads, args.rank, args.exact_batch, args.exact_steps, args.model)
            exact = args.exact_steps * args.exact_batch / max(r.seconds for r in measure(case))
            sampled = rates.get((args.exact_at, p), float("nan"))
            ok &= sampled / exact >= TARGET_SPEEDUP
            print(f"| {p} | {exact:,.1f} | {sampled:,.0f} | {sampled / exact:,.0f}× |", flush=True)
    print(
        f"\nchecks: step time within ±{TARGET_FLAT:.0%} of the smallest N; RSS growth ≤ its estimate; "
        f"sampled ≥ {TARGET_SPEEDUP:.0f}× the exact triples/s: {'all met' if ok else 'NOT all met'}"
    )
    return ok


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def run_table(args: argparse.Namespace) -> bool:
    rows, ok = [], True
    baseline: dict[int, float] = {}
    for n in args.sizes:
        for p in args.workers:
            case = Case(n, p, max(1, args.cores // p), args.rank, args.batch_size, args.steps, args.model)
            reports = measure(case)
            whole = sum(r.table_bytes + r.optimizer_bytes for r in reports)
            shares = [(r.table_bytes + r.optimizer_bytes) / whole for r in reports]
            share_ok = all(abs(s * p - 1) <= TARGET_SHARE_TOLERANCE for s in shares)
            seconds = max(r.seconds for r in reports)
            rate = args.steps * args.batch_size / seconds
            if p == 1:
                baseline[n] = rate
            ratio = rate / baseline[n] if n in baseline else float("nan")
            throughput_ok = p != 2 or ratio >= TARGET_P2_THROUGHPUT
            ok &= share_ok and throughput_ok
            measured = StepBytes(reports[0].all_reduce_bytes, reports[0].all_gather_bytes)
            dim = reports[0].table_bytes // reports[0].rows // FLOAT
            growth = " / ".join(
                f"{gib(r.peak_rss_bytes - r.start_rss_bytes)} ({gib(memory_estimate(r.rows, dim, args.batch_size, p))})"
                for r in reports
            )
            predicted = StepBytes.predict(args.batch_size, p, dim, 2 * NUM_RELATIONS)
            ok &= all(
                r.peak_rss_bytes - r.start_rss_bytes <= memory_estimate(r.rows, dim, args.batch_size, p)
                for r in reports
            )
            held = " / ".join(gib(r.table_bytes + r.optimizer_bytes) for r in reports)
            peaks = " / ".join(gib(r.peak_rss_bytes) for r in reports)
            rows.append(
                f"| {n:,} | {p} | {case.threads} | {held}"
                f" | {' / '.join(f'{s:.3f}' for s in shares)} {'✓' if share_ok else '✗'}"
                f" | {peaks} | {growth} | {1000 * seconds / args.steps:.0f}"
                f" | {rate:,.0f} | {ratio:.2f}{'' if p == 1 else (' ✓' if throughput_ok else ' ✗')}"
                f" | {(measured.all_reduce + measured.all_gather) / 2**20:.2f}"
                f" ({(predicted.all_reduce + predicted.all_gather) / 2**20:.2f}) |"
            )
            print(f"  done N={n:,} P={p}: {rate:,.0f} triples/s", flush=True)
    print(
        f"\n{args.model} rank {args.rank}, batch {args.batch_size}, Adagrad + N3, {args.steps} timed steps; "
        f"{NUM_RELATIONS} relations (+ reciprocals)\n"
    )
    print(
        "| entities | P | threads/worker | table+optimizer GiB per worker | share of whole | peak RSS GiB "
        "per worker | step growth of RSS GiB (upper estimate) | step ms | triples/s | vs P=1 "
        "| collective MiB/step/worker (predicted) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(
        f"\nchecks: share = 1/P ± {TARGET_SHARE_TOLERANCE:.0%}; P=2 (1 thread each) ≥ {TARGET_P2_THROUGHPUT}× "
        f"the triples/s of P=1 (2 threads); RSS growth ≤ its estimate: {'all met' if ok else 'NOT all met'}"
    )
    return ok


def project(args: argparse.Namespace) -> None:
    """Per-GPU memory and per-step bytes for ``--project`` entities: the formulas checked above, on paper."""
    n, dim = args.project, make_interaction(args.model).entity_dim(args.rank)
    budget = args.gpu_memory_gib * 2**30 - CUDA_RESERVE
    print(
        f"\nprojection: {n:,} entities, {args.model} rank {args.rank} ({dim} floats/row), float32, Adagrad, "
        f"{args.project_relations:,} relations, global batch B = {args.project_batch:,}, "
        f"{args.gpu_memory_gib} GiB per GPU ({gib(CUDA_RESERVE)} GiB kept for the CUDA context)\n"
    )
    print(
        "| GPUs | rows/GPU | table + Adagrad GiB | gradients GiB (2 tables) | score block GiB (B × rows) "
        "| est. peak GiB/GPU | fits? | largest B that fits | collective payload MiB/step/GPU "
        "| ring MiB sent/step/GPU | scoring GEMM TFLOP/step/GPU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for gpus in args.gpus:
        rows = -(-n // gpus)
        table, scores = rows * dim * FLOAT, args.project_batch * rows * FLOAT
        peak = memory_estimate(rows, dim, args.project_batch, gpus)
        largest = max(0, int((budget - TABLE_COPIES * table) // (2 * rows * FLOAT)))
        step = StepBytes.predict(args.project_batch, gpus, dim, 2 * args.project_relations)
        flops = 3 * 2 * args.project_batch * rows * dim
        print(
            f"| {gpus} | {rows:,} | {gib(2 * table)} | {gib(2 * table)} | {gib(scores)} | {gib(peak)} "
            f"| {'yes' if peak <= budget else 'no'} | {largest:,} | {(step.all_reduce + step.all_gather) / 2**20:.1f} "
            f"| {step.ring_traffic(gpus) / 2**20:.1f} | {flops / 1e12:.1f} |"
        )


CUDA_RESERVE = 2 * 2**30
GPU_FLOPS = 50e12  # assumed sustained float32 GEMM rate per GPU (an H100 SXM peaks at ~67 TFLOP/s)
LINK_BYTES = 50e9  # assumed per-GPU collective bandwidth (bytes/s; NVLink within a node, ~IB between)
COLLECTIVE_LATENCY = 50e-6  # per collective call
STEP_OVERHEAD = 1e-3  # kernel launches, gathers of touched rows, their row-wise update: memory-bound, small
SAMPLED_COLLECTIVES = 6  # rows of heads/tails (fwd, bwd), max, sum of exp, target logit, relation gradients


def project_sampled(args: argparse.Namespace) -> None:
    """The same 10^8-entity setting under ``train.objective: sampled`` with a bfloat16 table and row-wise
    Adagrad: memory from ``sampled_memory_estimate`` (checked against RSS above), bytes per step from
    ``StepBytes.predict`` (the same collectives as the exact step), and an epoch time from the
    assumptions named in the printout."""
    n, dim = args.project, make_interaction(args.model).entity_dim(args.rank)
    budget = args.gpu_memory_gib * 2**30 - CUDA_RESERVE
    examples = 2 * args.project_triples  # with reciprocals
    print(
        f"\nsampled projection: {n:,} entities, {args.project_triples:,.0f} triples ({examples:,.0f} examples with "
        f"reciprocals), {args.model} rank {args.rank}, bfloat16 table, row-wise Adagrad, S = B candidates per step; "
        f"assumed {GPU_FLOPS / 1e12:.0f} TFLOP/s GEMMs, {LINK_BYTES / 1e9:.0f} GB/s links, "
        f"{COLLECTIVE_LATENCY * 1e6:.0f} µs per collective, {STEP_OVERHEAD * 1e3:.0f} ms other work per step\n"
    )
    print(
        "| GPUs | B = S | table GiB/GPU | row-wise Adagrad GiB/GPU | step buffers GiB | est. peak GiB/GPU | fits? "
        "| largest B = S that fits | collective payload MiB/step/GPU | ring MiB sent/step/GPU "
        "| scoring GFLOP/step/GPU | est. step ms | steps/epoch | est. epoch min (DGL-KE: 100) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for gpus in args.gpus:
        rows = -(-n // gpus)
        for batch in args.project_sampled_batches:
            peak = sampled_memory_estimate(rows, dim, batch, batch, gpus, 2, True)
            table, state = rows * dim * 2, rows * FLOAT
            low, high = 0, 1 << 24  # largest B = S whose estimate fits, by bisection
            while high - low > 1:
                mid = (low + high) // 2
                fits = sampled_memory_estimate(rows, dim, mid, mid, gpus, 2, True) <= budget
                low, high = (mid, high) if fits else (low, mid)
            step = StepBytes.predict(batch, gpus, dim, 2 * args.project_relations)
            ring = step.ring_traffic(gpus)
            flops = 3 * 2 * batch * (batch + batch) / gpus * dim  # B queries × (S + B true tails) / P candidates
            seconds = flops / GPU_FLOPS + ring / LINK_BYTES + SAMPLED_COLLECTIVES * COLLECTIVE_LATENCY + STEP_OVERHEAD
            steps = -(-examples // batch)
            print(
                f"| {gpus} | {batch:,} | {gib(table)} | {gib(state)} | {gib(peak - table - state - GROUP_BYTES)} "
                f"| {gib(peak)} | {'yes' if peak <= budget else 'no'} | {low:,} "
                f"| {(step.all_reduce + step.all_gather) / 2**20:.1f} | {ring / 2**20:.1f} | {flops / 1e9:.1f} "
                f"| {seconds * 1e3:.2f} | {steps:,} | {steps * seconds / 60:.0f} |"
            )


def int_list(text: str) -> list[int]:
    """Comma-separated counts; "1e6" is easier to type than 1000000."""
    return [int(float(x)) for x in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int_list, default=[100_000, 300_000, 1_000_000, 2_000_000])
    parser.add_argument("--workers", type=int_list, default=[1, 2])
    parser.add_argument("--rank", type=int, default=200)
    parser.add_argument("--model", default="complex")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="threads split over the workers")
    parser.add_argument("--project", type=lambda s: int(float(s)), default=100_000_000)
    parser.add_argument("--project-relations", type=int, default=1000)
    parser.add_argument("--project-batch", type=int, default=1000)
    parser.add_argument("--gpus", type=int_list, default=[8, 64])
    parser.add_argument("--project-triples", type=lambda x: int(float(x)), default=340_000_000)
    parser.add_argument("--project-sampled-batches", type=int_list, default=[1000, 10000])
    parser.add_argument("--gpu-memory-gib", type=float, default=79.0, help="per GPU (an 80 GB H100 shows ~79)")
    parser.add_argument("--skip-measure", action="store_true", help="print only the projection")
    parser.add_argument("--objective", choices=["exact", "sampled"], default="exact")
    parser.add_argument("--candidates", type=int, default=1000, help="S, sampled candidates per step over all workers")
    parser.add_argument("--optimizer", choices=["adagrad", "rowwise_adagrad"], default="rowwise_adagrad")
    parser.add_argument("--table-dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--exact-at", type=lambda s: int(float(s)), default=0, help="compare with exact at N")
    parser.add_argument("--exact-batch", type=int, default=128)
    parser.add_argument("--exact-steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="sampled: timed epochs per case, median reported")
    parser.add_argument("--threads", type=int, default=0, help="threads per worker (default: --cores / P)")
    args = parser.parse_args()
    with recorded(f"scale_{args.objective}", args):
        print(
            f"# benchmarks/scale.py · {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {cpu_name()}"
            f" · {os.cpu_count()} CPUs · torch {torch.__version__}",
            flush=True,
        )
        measured = run_sampled_table if args.objective == "sampled" else run_table
        ok = True if args.skip_measure else measured(args)
        project(args)
        project_sampled(args)
        raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
