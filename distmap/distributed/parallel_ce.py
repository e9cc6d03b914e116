"""1-vs-all softmax cross-entropy over entity shards (Megatron's vocab-parallel loss).

Worker p holds the scores of every query of the step against its own entity rows [lo, hi).
The softmax over all N entities needs only three all-reduces of per-query numbers (max,
sum of exp, target logit; a fourth for label smoothing), never the full score matrix. The
gradient with respect to the local scores is local: softmax minus one-hot, as usual.

Same value and gradient as ``F.cross_entropy(scores, targets, weight, label_smoothing=eps)``
(mean reduction) on the unsharded scores; tests/test_parallel_ce.py checks it on two and three workers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from distmap.distributed.collectives import all_reduce_, world


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Works in place on one score-sized buffer: shifted scores become exp, then probabilities
    (saved), and backward turns those into the gradient. So the loss holds one (B, N/P) tensor
    beyond the scores, which dominate memory at large N (benchmarks/scale.py). A second
    backward through the same graph is refused by autograd's in-place check."""

    @staticmethod
    def forward(
        ctx: Any, scores: Tensor, targets: Tensor, lo: int, num_classes: int, weight: Tensor | None, smoothing: float
    ) -> Tensor:
        num_queries, local = scores.shape
        row_max = all_reduce_(scores.detach().max(dim=1).values, dist.ReduceOp.MAX)
        buffer = scores - row_max[:, None]

        mine = (targets >= lo) & (targets < lo + local)
        rows = torch.arange(num_queries, device=scores.device)
        target_logit = torch.zeros(num_queries, dtype=scores.dtype, device=scores.device)
        target_logit[mine] = buffer[rows[mine], targets[mine] - lo]
        w_local = weight[lo : lo + local] if weight is not None else None
        w_sum = weight.sum() if weight is not None else float(num_classes)
        weighted_scores = None
        if smoothing:
            weighted_scores = all_reduce_(buffer @ w_local if w_local is not None else buffer.sum(dim=1))

        probs = buffer.exp_()
        sum_exp = all_reduce_(probs.sum(dim=1))
        lse = sum_exp.log()
        nll = lse - all_reduce_(target_logit)
        w_target = weight[targets] if weight is not None else torch.ones_like(nll)
        denominator = w_target.sum()
        loss = ((1 - smoothing) * w_target * nll).sum()
        if weighted_scores is not None:
            loss = loss + smoothing * ((w_sum * lse - weighted_scores) / num_classes).sum()
        probs.div_(sum_exp[:, None])

        ctx.save_for_backward(probs, targets, w_target, w_local)
        ctx.lo, ctx.smoothing, ctx.num_classes, ctx.denominator, ctx.w_sum = (
            lo,
            smoothing,
            num_classes,
            denominator,
            w_sum,
        )
        return loss / denominator

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        # d loss / d score_j = (1-s) w_t (p_j - [j = t]) + s/N (w_sum p_j - w_j), built in the saved buffer.
        g, targets, w_target, w_local = ctx.saved_tensors
        s, n = ctx.smoothing, ctx.num_classes
        local = g.shape[1]
        mine = (targets >= ctx.lo) & (targets < ctx.lo + local)
        rows = torch.arange(g.shape[0], device=g.device)
        g.mul_(((1 - s) * w_target + s * ctx.w_sum / n)[:, None])
        g[rows[mine], targets[mine] - ctx.lo] -= (1 - s) * w_target[mine]
        if s:
            g.sub_((s / n) * (w_local[None, :] if w_local is not None else g.new_ones(1, local)))
        return g.mul_(grad / ctx.denominator), None, None, None, None, None


def vocab_parallel_cross_entropy(
    scores: Tensor,
    targets: Tensor,
    lo: int,
    num_classes: int,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Mean cross-entropy of ``targets`` (global entity ids) given this worker's score block.

    ``scores`` is (queries, local entities) for the rows [lo, lo + local) of ``num_classes``
    entities; every worker passes the same queries and targets and gets the same loss. ``weight`` is the full (N,) class
    weight vector (replicated: N floats), as in ``F.cross_entropy``.
    """
    if world()[1] == 1:  # the whole table is here: torch's fused kernel is the same loss
        return F.cross_entropy(scores, targets, weight=weight, label_smoothing=label_smoothing)
    return _VocabParallelCrossEntropy.apply(scores, targets, lo, num_classes, weight, label_smoothing)
