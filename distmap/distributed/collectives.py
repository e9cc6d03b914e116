"""Autograd-aware collectives for row-sharded 1-vs-all training.

Each worker computes a *different* loss term; what is replicated is the data, not the loss.
So the backward of an all-gather sums the partial gradients of every worker and keeps this
worker's slice, and the backward of a sum-all-reduce is again a sum-all-reduce. With one
worker every function here is the identity (no process group is needed).
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


def all_gather_rows(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate every worker's rows (worker order) without autograd; sizes may differ."""
    if len(sizes) == 1:
        return x
    longest = max(sizes)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int]) -> Tensor:
        ctx.sizes = sizes
        return all_gather_rows(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        rank = world()[0]
        lo = sum(ctx.sizes[:rank])
        return all_reduce_(grad.contiguous().clone())[lo : lo + ctx.sizes[rank]], None


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return all_reduce_(x.clone())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return all_reduce_(grad.contiguous().clone())


def all_gather_with_grad(x: Tensor, sizes: list[int]) -> Tensor:
    """Every worker's rows concatenated; gradients flow back to the worker that sent each row."""
    return x if len(sizes) == 1 else _AllGather.apply(x, sizes)


def all_reduce_sum_with_grad(x: Tensor) -> Tensor:
    """Sum over workers; the gradient of each worker's copy is the sum of all workers' gradients."""
    return x if world()[1] == 1 else _AllReduceSum.apply(x)
