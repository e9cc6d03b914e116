"""The training objective: 1-vs-all cross-entropy over (query, true tail) pairs plus N3 / L2.

A query (h, r) with several true tails is scored once; its loss is the sum over its tails of
kbc's per-triple cross-entropy. Summed over a batch of whole groups and divided by the number
of triples (or, with class weights, by the tails' summed weights, as ``F.cross_entropy`` does),
it is term for term the per-triple objective of the same triples, label smoothing and class
weights included: only the score rows are shared.

The cross-entropy takes an optional reduction, so the same maths serves one process (no
reduction) and a worker holding a block of the candidates (an all-reduce over workers, as
Megatron's vocab-parallel loss): ``distmap.distributed.parallel_ce`` passes it in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from distmap.models.model import EntityViews, KGEModel, step_key

Reduce = Callable[[Tensor, str], Tensor]
"""In-place reduction of a per-query tensor over the workers holding the candidates; ``"sum"`` or ``"max"``."""


def no_reduction(tensor: Tensor, op: str) -> Tensor:
    """One process holds every candidate: nothing to combine."""
    return tensor


def frequency_class_weights(examples: Tensor, num_entities: int) -> Tensor:
    """OTKGE's ``-weight`` flag: count of each entity as a training target, ``count/max*0.9+0.1``."""
    counts = torch.bincount(examples[:, 2], minlength=num_entities).float()
    return counts / counts.max() * 0.9 + 0.1


class _PairCrossEntropy(torch.autograd.Function):
    """Cross-entropy of (query, tail) pairs given one block of each query's candidate scores.

    Works in place on one score-sized buffer: shifted scores become exp, then probabilities
    (saved), and backward turns those into the gradient, so the loss holds one (Q, M) tensor
    beyond the scores, which dominate memory at large N (benchmarks/scale.py). A second
    backward through the same graph is refused by autograd's in-place check.
    """

    @staticmethod
    def forward(
        ctx: Any,
        scores: Tensor,  # (Q, M): every query against candidates [lo, lo + M) of num_classes
        pair_query: Tensor,  # (T,) query row of each pair
        tails: Tensor,  # (T,) global candidate id of each pair
        lo: int,
        num_classes: int,
        weight: Tensor | None,  # (num_classes,) class weights, replicated
        smoothing: float,
        reduce: Reduce,
    ) -> Tensor:
        num_queries, local = scores.shape
        row_max = reduce(scores.detach().amax(dim=1), "max")  # amax: no argmax, 4x faster
        buffer = scores - row_max[:, None]

        mine = (tails >= lo) & (tails < lo + local)
        pair_logit = torch.zeros(len(tails), dtype=scores.dtype, device=scores.device)
        pair_logit[mine] = buffer[pair_query[mine], tails[mine] - lo]
        w_local = weight[lo : lo + local] if weight is not None else None
        w_sum = weight.sum() if weight is not None else float(num_classes)
        multiplicity = torch.bincount(pair_query, minlength=num_queries).to(scores.dtype)  # (Q,) tails per query
        weighted_scores = None
        if smoothing:
            weighted_scores = reduce(buffer @ w_local if w_local is not None else buffer.sum(dim=1), "sum")

        probs = buffer.exp_()
        sum_exp = reduce(probs.sum(dim=1), "sum")
        lse = sum_exp.log()  # (Q,) log-sum-exp of the shifted scores over all num_classes candidates
        nll = lse[pair_query] - reduce(pair_logit, "sum")  # (T,)
        w_pair = weight[tails] if weight is not None else torch.ones_like(nll)
        denominator = w_pair.sum()
        loss = ((1 - smoothing) * w_pair * nll).sum()
        if weighted_scores is not None:
            loss = loss + smoothing * (multiplicity * (w_sum * lse - weighted_scores) / num_classes).sum()
        probs.div_(sum_exp[:, None])

        ctx.save_for_backward(probs, pair_query, tails, w_pair, w_local, multiplicity)
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
        # d loss / d score_qj = sum over q's pairs (q, t) of (1-s) w_t (p_qj - [j = t]) + s/N (w_sum p_qj - w_j),
        # built in the saved buffer.
        g, pair_query, tails, w_pair, w_local, multiplicity = ctx.saved_tensors
        s, n = ctx.smoothing, ctx.num_classes
        local = g.shape[1]
        w_query = torch.zeros_like(multiplicity).index_add_(0, pair_query, w_pair)  # (Q,) summed tail weights
        g.mul_(((1 - s) * w_query + s * multiplicity * ctx.w_sum / n)[:, None])
        mine = (tails >= ctx.lo) & (tails < ctx.lo + local)
        g.index_put_((pair_query[mine], tails[mine] - ctx.lo), -(1 - s) * w_pair[mine], accumulate=True)
        if s:
            w_row = w_local[None, :] if w_local is not None else g.new_ones(1, local)
            g.sub_((s / n) * multiplicity[:, None] * w_row)
        return g.mul_(grad / ctx.denominator), None, None, None, None, None, None, None


def pair_cross_entropy(
    scores: Tensor,
    pair_query: Tensor,
    tails: Tensor,
    *,
    lo: int = 0,
    num_classes: int | None = None,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    reduce: Reduce = no_reduction,
) -> Tensor:
    """Mean cross-entropy of the pairs (``pair_query[i]``, ``tails[i]``) given the score block.

    ``scores`` is (Q, M) for candidates [lo, lo + M) of ``num_classes`` (default: M, all of them);
    every worker passes the same queries and pairs and gets the same loss. With one tail per
    query and all candidates here this is ``F.cross_entropy(scores, tails, weight, label_smoothing)``,
    which is then used as is (torch's fused kernel).
    """
    num_classes = scores.shape[1] if num_classes is None else num_classes
    if reduce is no_reduction and len(tails) == scores.shape[0] and scores.shape[1] == num_classes:
        # Every query has at least one tail, so T == Q means exactly one each, in query order.
        return F.cross_entropy(scores, tails, weight=weight, label_smoothing=label_smoothing)
    return _PairCrossEntropy.apply(scores, pair_query, tails, lo, num_classes, weight, label_smoothing, reduce)


class LossTerm(Protocol):
    """A weighted loss beside the objective (alignment, instance preserving) over one block of
    entity rows in all their views and the local rows of the step's entities in it."""

    name: str

    def __call__(self, views: EntityViews, rows: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Objective:
    """Cross-entropy over all entities (optionally smoothed / class-weighted) plus N3 or L2, plus
    the model's own loss and any alignment terms (``extra``)."""

    regularizer: str = "n3"
    reg_weight: float = 0.0
    label_smoothing: float = 0.0
    class_weight: Tensor | None = None
    terms: tuple[LossTerm, ...] = ()
    # Structural-view dropout (``ColdConfig``, on where the model's ``structure_dropout`` > 0): "twin"
    # adds this objective over the step's rows with some structural views dropped, times
    # ``twin_weight``, to the full one; "replace" trains on the dropped rows alone.
    dropout_loss: str = "twin"
    twin_weight: float = 1.0

    def dropout_key(self, model: KGEModel, ids: Tensor) -> tuple[int | None, bool]:
        """(the step's dropout key or None, whether the dropped rows replace the full ones)."""
        if not model.structure_dropout:
            return None, False
        return step_key(ids), self.dropout_loss == "replace"

    def start_epoch(self) -> None:
        """Terms that carry state from step to step (``FullAlignment``'s held plan) start it again."""
        for term in self.terms:
            restart = getattr(term, "restart", None)
            if restart is not None:
                restart()

    def extra(self, model: KGEModel, views: EntityViews, rows: Tensor) -> Tensor:
        """The model's auxiliary loss and every term over ``rows`` (local rows of the step's entities)."""
        total = model.auxiliary_loss(views, rows)
        for term in self.terms:
            total = total + term(views, rows)
        return total

    def penalty(self, factors: tuple[Tensor, ...], batch_size: int) -> Tensor:
        """kbc's N3: ``weight * sum |f|^3 / batch``; L2 the same with squares. One factor row per triple."""
        if self.regularizer == "none" or self.reg_weight == 0:
            return factors[0].new_zeros(())
        power = 3 if self.regularizer == "n3" else 2
        return self.reg_weight * sum(f.abs().pow(power).sum() for f in factors) / batch_size

    def cross_entropy(
        self,
        scores: Tensor,
        pair_query: Tensor,
        tails: Tensor,
        lo: int = 0,
        num_classes: int | None = None,
        reduce: Reduce = no_reduction,
    ) -> Tensor:
        return pair_cross_entropy(
            scores,
            pair_query,
            tails,
            lo=lo,
            num_classes=num_classes,
            weight=self.class_weight,
            label_smoothing=self.label_smoothing,
            reduce=reduce,
        )

    def __call__(
        self, scores: Tensor, pair_query: Tensor, tails: Tensor, factors: tuple[Tensor, ...]
    ) -> tuple[Tensor, Tensor]:
        """Single process: (total loss to minimise, the cross-entropy part for logging).

        ``factors`` hold one row per (query, tail) pair, so the penalty is the per-triple one.
        """
        fit = self.cross_entropy(scores, pair_query, tails)
        return fit + self.penalty(factors, len(tails)), fit


def seed_loss_terms(seed: int) -> None:
    """Loss terms (MAP's sub-distributions and perturbed views) draw from torch's global RNG: a run
    starts it from its seed (a resumed run then restores it from the checkpoint), so two runs in one
    process (tests, Tune trials) are the same run, and runs of different seeds draw differently."""
    torch.manual_seed(seed)
