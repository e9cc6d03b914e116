"""The vocab-parallel cross-entropy equals ``F.cross_entropy`` on the unsharded scores: the loss
on every worker, and each worker's slice of the gradient, with and without class weights and
label smoothing (the in-place backward included)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from distmap.distributed.collectives import free_port
from distmap.distributed.parallel_ce import vocab_parallel_cross_entropy
from distmap.distributed.partition import row_ranges

B, N = 6, 11
CASES = list(itertools.product([False, True], [0.0, 0.1]))


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(B, N, generator=g) * 3
    targets = torch.tensor([0, 5, 6, 10, 3, 7])  # answers on both sides of the split
    weight = torch.rand(N, generator=g) + 0.1
    return scores, targets, weight


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        scores, targets, weight = inputs()
        lo, hi = row_ranges(N, world_size)[rank]
        results = {}
        for use_weight, smoothing in CASES:
            local = scores[:, lo:hi].clone().requires_grad_()
            loss = vocab_parallel_cross_entropy(local, targets, lo, N, weight if use_weight else None, smoothing)
            loss.backward()
            results[f"{use_weight}-{smoothing}"] = (loss.detach(), local.grad, (lo, hi))
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_and_three_workers_equal_cross_entropy(tmp_path: Path) -> None:
    scores, targets, weight = inputs()
    for world_size in (2, 3):
        mp.spawn(_worker, args=(world_size, free_port(), str(tmp_path)), nprocs=world_size, join=True)
        for rank in range(world_size):
            results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
            for use_weight, smoothing in CASES:
                full = scores.clone().requires_grad_()
                expected = F.cross_entropy(
                    full, targets, weight=weight if use_weight else None, label_smoothing=smoothing
                )
                expected.backward()
                loss, grad, (lo, hi) = results[f"{use_weight}-{smoothing}"]
                assert torch.allclose(loss, expected.detach(), atol=1e-6), (world_size, use_weight, smoothing)
                assert torch.allclose(grad, full.grad[:, lo:hi], atol=1e-6), (world_size, use_weight, smoothing)


def test_one_worker_is_cross_entropy() -> None:
    scores, targets, weight = inputs()
    loss = vocab_parallel_cross_entropy(scores, targets, 0, N, weight, 0.1)
    assert torch.equal(loss, F.cross_entropy(scores, targets, weight=weight, label_smoothing=0.1))
