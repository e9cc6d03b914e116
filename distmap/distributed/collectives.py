"""Autograd-aware collectives for row-sharded 1-vs-all training.

Each worker computes a *different* part of the loss's gradient; what is replicated is the
data, not the gradient. So the backward of a sum-all-reduce is again a sum-all-reduce: every
worker's copy receives the sum of all workers' partial gradients. With one worker every
function here is the identity (no process group is needed).
"""

from __future__ import annotations

import socket
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on ``address`` now, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def world() -> tuple[int, int]:
    """(rank, world size), or (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_(tensor: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    """In-place all-reduce that is a no-op for a single worker."""
    if world()[1] > 1:
        dist.all_reduce(tensor, op=op)
    return tensor


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return all_reduce_(x.clone())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return all_reduce_(grad.contiguous().clone())


def all_reduce_sum_with_grad(x: Tensor) -> Tensor:
    """Sum over workers; the gradient of each worker's copy is the sum of all workers' gradients."""
    return x if world()[1] == 1 else _AllReduceSum.apply(x)


def all_gather_rows(rows: Tensor) -> Tensor:
    """Every worker's (n_p, k) rows, stacked in worker order (n_p may differ: padded to the largest)."""
    if world()[1] == 1:
        return rows
    size = world()[1]
    counts = [torch.zeros(1, dtype=torch.long) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([len(rows)]))
    longest = int(max(counts))
    padded = rows.new_zeros(longest, rows.shape[1])
    padded[: len(rows)] = rows
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(n)] for part, n in zip(parts, counts, strict=True)])
