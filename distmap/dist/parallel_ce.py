"""1-vs-all softmax cross-entropy over entity shards (Megatron's vocab-parallel loss).

Worker p holds the scores of every query of the step against its own entity rows [lo, hi).
The softmax over all N entities needs only three all-reduces of per-query numbers (max,
sum of exp, target logit; a fourth for label smoothing), never the full score matrix. The
gradient with respect to the local scores is local: softmax minus one-hot, as usual.

Same value as ``F.cross_entropy(scores, targets, weight, label_smoothing=eps)`` (mean
reduction) on the unsharded scores; a test checks it with one and with two workers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from distmap.dist.collectives import all_reduce_


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, scores: Tensor, targets: Tensor, lo: int, num_classes: int, weight: Tensor | None,
                smoothing: float) -> Tensor:
        num_queries, local = scores.shape
        row_max = all_reduce_(scores.detach().max(dim=1).values, dist.ReduceOp.MAX)
        shifted = scores - row_max[:, None]
        exp = shifted.exp()
        sum_exp = all_reduce_(exp.sum(dim=1))
        lse = sum_exp.log()

        mine = (targets >= lo) & (targets < lo + local)
        rows = torch.arange(num_queries, device=scores.device)
        target_logit = torch.zeros_like(lse)
        target_logit[mine] = shifted[rows[mine], targets[mine] - lo]
        nll = lse - all_reduce_(target_logit)

        w_local = weight[lo : lo + local] if weight is not None else None
        w_target = weight[targets] if weight is not None else torch.ones_like(nll)
        denominator = w_target.sum()
        loss = ((1 - smoothing) * w_target * nll).sum()
        w_sum = weight.sum() if weight is not None else float(num_classes)
        if smoothing:
            weighted_scores = shifted @ w_local if w_local is not None else shifted.sum(dim=1)
            smooth = (w_sum * lse - all_reduce_(weighted_scores)) / num_classes
            loss = loss + smoothing * smooth.sum()

        ctx.save_for_backward(exp / sum_exp[:, None], targets, w_target, w_local)
        ctx.lo, ctx.smoothing, ctx.num_classes, ctx.denominator = lo, smoothing, num_classes, denominator
        ctx.w_sum = w_sum
        return loss / denominator

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        probs, targets, w_target, w_local = ctx.saved_tensors
        local = probs.shape[1]
        mine = (targets >= ctx.lo) & (targets < ctx.lo + local)
        rows = torch.arange(probs.shape[0], device=probs.device)
        one_hot = torch.zeros_like(probs)
        one_hot[rows[mine], targets[mine] - ctx.lo] = 1.0
        g = (1 - ctx.smoothing) * w_target[:, None] * (probs - one_hot)
        if ctx.smoothing:
            w = w_local if w_local is not None else torch.ones(local, device=probs.device)
            g = g + ctx.smoothing / ctx.num_classes * (ctx.w_sum * probs - w[None, :])
        return g * (grad / ctx.denominator), None, None, None, None, None


def vocab_parallel_cross_entropy(scores: Tensor, targets: Tensor, lo: int, num_classes: int,
                                 weight: Tensor | None = None, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of ``targets`` (global entity ids) given this worker's score block.

    ``scores`` is (queries, local entities) for the rows [lo, lo + local) of ``num_classes``
    entities; every worker passes the same queries and targets and gets the same loss. ``weight`` is the full (N,) class
    weight vector (replicated: N floats), as in ``F.cross_entropy``.
    """
    return _VocabParallelCrossEntropy.apply(scores, targets, lo, num_classes, weight, label_smoothing)
