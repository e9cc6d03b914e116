"""1-vs-all softmax cross-entropy over entity shards (Megatron's vocab-parallel loss).

Worker p holds the scores of every query of the step against its own entity rows [lo, hi).
The softmax over all N entities needs only per-query all-reduces (max, sum of exp; a third for
label smoothing) and one per (query, tail) pair (the target logit, from the worker owning the
tail), never the full score matrix. The gradient with respect to the local scores is local:
softmax minus one-hot, as usual.

The maths is ``distmap.train.objective.pair_cross_entropy`` (plain PyTorch, tested in one
process); this module hands it the all-reduce (``worker_reduction``). Same value and gradient as the single-process
loss on the unsharded scores; tests/test_parallel_ce.py checks it on two and three workers.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

from distmap.distributed.collectives import all_reduce_, world
from distmap.train.objective import Reduce, no_reduction

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


def _all_reduce(tensor: Tensor, op: str) -> Tensor:
    return all_reduce_(tensor, _OPS[op])


def worker_reduction() -> Reduce:
    """The reduction that makes ``pair_cross_entropy`` (``Objective.cross_entropy``) the loss over all
    workers' candidate blocks: an all-reduce, or none for a single worker (torch's fused kernel then
    serves where it applies)."""
    return _all_reduce if world()[1] > 1 else no_reduction
