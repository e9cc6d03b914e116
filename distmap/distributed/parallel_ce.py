"""1-vs-all softmax cross-entropy over entity shards (Megatron's vocab-parallel loss).

Worker p holds the scores of every query of the step against its own entity rows [lo, hi).
The softmax over all N entities needs only per-query all-reduces (max, sum of exp; a third for
label smoothing) and one per (query, tail) pair (the target logit, from the worker owning the
tail), never the full score matrix. The gradient with respect to the local scores is local:
softmax minus one-hot, as usual.

The maths is ``distmap.train.objective.pair_cross_entropy`` (plain PyTorch, tested in one
process); this module hands it the all-reduce. Same value and gradient as the single-process
loss on the unsharded scores; tests/test_parallel_ce.py checks it on two and three workers.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

from distmap.distributed.collectives import all_reduce_, world
from distmap.train.objective import no_reduction, pair_cross_entropy

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


def _all_reduce(tensor: Tensor, op: str) -> Tensor:
    return all_reduce_(tensor, _OPS[op])


def vocab_parallel_cross_entropy(
    scores: Tensor,
    pair_query: Tensor,
    tails: Tensor,
    lo: int,
    num_classes: int,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Mean cross-entropy of the (query, tail) pairs given this worker's score block.

    ``scores`` is (Q, local entities) for the rows [lo, lo + local) of ``num_classes`` entities;
    ``pair_query`` (T,) and ``tails`` (T,, global ids) are the same on every worker, and so is the
    loss. ``weight`` is the full (N,) class weight vector (replicated: N floats).
    """
    reduce = _all_reduce if world()[1] > 1 else no_reduction  # one worker: torch's fused kernel where it applies
    return pair_cross_entropy(
        scores,
        pair_query,
        tails,
        lo=lo,
        num_classes=num_classes,
        weight=weight,
        label_smoothing=label_smoothing,
        reduce=reduce,
    )
