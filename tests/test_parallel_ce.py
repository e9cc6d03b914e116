"""The vocab-parallel cross-entropy equals ``F.cross_entropy`` on the unsharded scores: the loss
on every worker, and each worker's slice of the gradient, with and without class weights and
label smoothing (the in-place backward included), for one tail per query and for queries with
several tails (the grouped loop: one score row per query, the per-triple loss term for term)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from distmap.distributed.collectives import free_port
from distmap.distributed.parallel_ce import worker_reduction
from distmap.distributed.partition import row_ranges
from distmap.train.objective import pair_cross_entropy

B, N = 6, 11
CASES = list(itertools.product(["single", "grouped"], [False, True], [0.0, 0.1]))


# (query, tail) pairs: one per query, and grouped (queries 0 and 3 have several tails, across the split)
PAIRS = {
    "single": (torch.arange(B), torch.tensor([0, 5, 6, 10, 3, 7])),
    "grouped": (torch.tensor([0, 0, 0, 1, 2, 3, 3, 4, 5]), torch.tensor([0, 5, 10, 6, 10, 3, 4, 7, 1])),
}


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(B, N, generator=g) * 3
    weight = torch.rand(N, generator=g) + 0.1
    return scores, weight


def expected(scores: torch.Tensor, pairs: str, weight: torch.Tensor | None, smoothing: float) -> tuple:
    """``F.cross_entropy`` over one score row per pair (the per-triple loss), and its gradient."""
    pair_query, tails = PAIRS[pairs]
    full = scores.clone().requires_grad_()
    loss = F.cross_entropy(full[pair_query], tails, weight=weight, label_smoothing=smoothing)
    loss.backward()
    return loss.detach(), full.grad


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        scores, weight = inputs()
        lo, hi = row_ranges(N, world_size)[rank]
        results = {}
        for pairs, use_weight, smoothing in CASES:
            local = scores[:, lo:hi].clone().requires_grad_()
            pair_query, tails = PAIRS[pairs]
            w = weight if use_weight else None
            loss = pair_cross_entropy(
                local,
                pair_query,
                tails,
                lo=lo,
                num_classes=N,
                weight=w,
                label_smoothing=smoothing,
                reduce=worker_reduction(),
            )
            loss.backward()
            results[f"{pairs}-{use_weight}-{smoothing}"] = (loss.detach(), local.grad, (lo, hi))
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_and_three_workers_equal_cross_entropy(tmp_path: Path) -> None:
    scores, weight = inputs()
    for world_size in (2, 3):
        mp.spawn(_worker, args=(world_size, free_port(), str(tmp_path)), nprocs=world_size, join=True)
        for rank in range(world_size):
            results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
            for case in CASES:
                pairs, use_weight, smoothing = case
                want, want_grad = expected(scores, pairs, weight if use_weight else None, smoothing)
                loss, grad, (lo, hi) = results["-".join(map(str, case))]
                assert torch.allclose(loss, want, atol=1e-6), (world_size, case)
                assert torch.allclose(grad, want_grad[:, lo:hi], atol=1e-6), (world_size, case)


def test_one_process_equals_cross_entropy() -> None:
    """Without a process group: torch's kernel for one tail per query, the pair loss for groups."""
    scores, weight = inputs()
    for pairs, use_weight, smoothing in CASES:
        w = weight if use_weight else None
        want, want_grad = expected(scores, pairs, w, smoothing)
        full = scores.clone().requires_grad_()
        loss = pair_cross_entropy(full, *PAIRS[pairs], weight=w, label_smoothing=smoothing, reduce=worker_reduction())
        loss.backward()
        assert torch.allclose(loss, want, atol=1e-6), (pairs, use_weight, smoothing)
        assert torch.allclose(full.grad, want_grad, atol=1e-6), (pairs, use_weight, smoothing)
