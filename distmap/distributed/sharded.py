"""Training and evaluation with the entity table split by rows over the workers of a process group.

Worker p holds rows [lo, hi) of the entity table (and, through the optimizer, their state);
relations are replicated. Every worker draws the same global batch of query groups (the same
generator state), so ids, queries and (query, tail) pairs are known everywhere without a
collective. One step:

1. the rows of the batch's heads and tails are filled in by their owners and summed (one
   all-reduce), so every worker holds them;
2. every worker builds all queries of the step and scores them against its own rows (one
   GEMM); the softmax cross-entropy over all N entities is assembled with per-query and
   per-pair all-reduces (``parallel_ce``);
3. backward: entity-row gradients of the score block stay with their owner; each worker's
   partial gradients of the gathered rows are summed by the backward all-reduce and land on
   the owning rows; relation gradients are summed (``sync_replicated_grads``). The penalty is
   split over the workers by pairs, so its terms are counted once.

With one worker (or no process group) this is the single-process objective on the same batch.

``sampled_step`` is the same step for ``train.objective: sampled``: each worker scores the queries
against its sampled candidate rows instead of all of its rows (``distmap.train.sampled``), with
the same collectives, and only the rows it touched get a gradient and an update.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from distmap.data.batches import Batch, QueryGroups
from distmap.distributed.collectives import all_reduce_, all_reduce_sum_with_grad, world
from distmap.distributed.parallel_ce import worker_reduction
from distmap.distributed.partition import row_ranges
from distmap.models.model import EntityViews, KGEModel
from distmap.train.evaluate import (
    EvalResult,
    FilterIndex,
    RankCounts,
    TieBreak,
    both_directions,
    count_chunk,
)
from distmap.train.loop import StepLoss
from distmap.train.objective import Objective
from distmap.train.sampled import Sampler, sampled_candidates
from distmap.train.sparse import TableAdagrad


def replicated_rows(block: Tensor, lo: int, ids: Tensor) -> Tensor:
    """Rows of global ``ids`` that every worker asked for alike, out of each worker's ``block`` of
    rows [lo, lo + len(block)): owners fill them in, one all-reduce.

    Gradients flow back to the owner: the backward all-reduce sums every worker's partial gradient.
    """
    if world()[1] == 1:
        return block[ids - lo]
    owned = ((ids >= lo) & (ids < lo + len(block))).nonzero().squeeze(1)
    return shared_rows(block[ids[owned] - lo], owned, len(ids))


def shared_rows(mine: Tensor, owned: Tensor, count: int) -> Tensor:
    """The (count, d) rows every worker asked for alike, of which this worker holds ``mine`` (the
    rows at positions ``owned``): one all-reduce, whose backward routes each gradient to the owner.
    With one worker ``mine`` is all of them, in order."""
    if world()[1] == 1:
        return mine
    local = mine.new_zeros(count, mine.shape[1]).index_copy(0, owned, mine)
    return all_reduce_sum_with_grad(local)


def sharded_views(model: KGEModel) -> EntityViews:
    """This worker's block in every view; structural rows a model needs from elsewhere (OTKGE's
    anchors) come from their owners, without gradient."""
    table = model.entities

    def fetch(ids: Tensor) -> Tensor:
        return replicated_rows(table.weight.detach(), table.lo, ids)

    return model.views(fetch)


def sharded_step(model: KGEModel, groups: QueryGroups, objective: Objective) -> StepLoss:
    """The step over a global batch of query groups, this worker scoring against its own rows."""
    rank, size = world()
    device = model.relations.device
    lo, hi = model.entities.lo, model.entities.hi
    reduction = worker_reduction()

    def fit_on(views: EntityViews, batch: Batch) -> tuple[Tensor, Tensor]:
        """(the cross-entropy over all N, this worker's share of the penalty) of the batch on ``views``."""
        h, r = batch.queries.unbind(1)
        num_queries, num_pairs = len(h), len(batch.tails)
        h_emb, t_emb = replicated_rows(views.fused, lo, torch.cat([h, batch.tails])).split([num_queries, num_pairs])
        r_emb = model.relation_rows(r, views)
        scores = model.training_scores(model.interaction.score(model.interaction.query(h_emb, r_emb), views.fused))
        fit = objective.cross_entropy(scores, batch.pair_query, batch.tails, lo, model.num_entities, reduction)
        share = torch.arange(num_pairs, device=device).tensor_split(size)[rank]  # this worker's penalty terms
        pair_query = batch.pair_query[share]
        factors = model.interaction.factors(h_emb[pair_query], r_emb[pair_query], t_emb[share])
        return fit, objective.penalty(factors, num_pairs)

    def loss(ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch = groups.select(ids).to(device)
        drop, replace = objective.dropout_key(model, ids)
        views = sharded_views(model)
        twin = model.twin_views(views, drop) if drop is not None else None
        views = twin if replace else views
        fit, penalty = fit_on(views, batch)
        entities = batch.entities()
        mine = entities[(entities >= lo) & (entities < hi)] - lo  # alignment etc. on this worker's own rows
        # Each worker's terms are one sample of the same expectation (its own sub-distribution): their
        # mean over the workers is the objective's term, so its weight does not grow with P.
        local = penalty + objective.extra(model, views, mine) / size
        shared = fit
        if twin is not None and not replace:  # the twin: the same step with some structural views dropped
            twin_fit, twin_penalty = fit_on(twin, batch)
            shared = shared + objective.twin_weight * twin_fit
            local = local + objective.twin_weight * twin_penalty
        logged = shared.detach() + all_reduce_(local.detach().clone())
        return shared + local, logged, fit.detach()

    return loss


def sampled_step(
    model: KGEModel, groups: QueryGroups, objective: Objective, table: TableAdagrad, sampler: Sampler, candidates: int
) -> StepLoss:
    """The step of ``train.objective: sampled`` (``distmap.train.sampled``), touching only the rows it uses.

    This worker's rows that the step reads (its heads and tails of the batch, its true tails and
    drawn candidates) are gathered once into a float32 leaf by ``table``, the optimizer that then
    updates exactly those rows: no table-sized gradient, no table-sized optimizer pass. The
    collectives are the exact step's: the rows of heads and tails (one all-reduce, routed back to
    the owners in backward) and the vocab-parallel reductions over the union of candidates.
    A multimodal model's rows are built from the gathered ones (``row_views``: projections and
    fusion of the touched rows only), and its loss terms see those rows: MAP's augmentation draws
    its ``extra`` entities from the step's touched rows, i.e. mostly the uniform candidates, not
    from the whole block (which would touch rows outside the step).
    """
    rank, size = world()
    device = model.relations.device
    weight, lo, hi = model.entities.weight, model.entities.lo, model.entities.hi
    ranges = row_ranges(model.num_entities, size)
    draws = [b - a for a, b in row_ranges(candidates, size)]  # S_p of every worker
    reduction = worker_reduction()

    def loss(ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch = groups.select(ids).to(device)
        h, r = batch.queries.unbind(1)
        num_queries, num_pairs = len(h), len(batch.tails)
        cand = sampled_candidates(batch.tails, sampler.draw(lo, hi, draws[rank]).to(device), ranges, rank, draws)
        ends = torch.cat([h, batch.tails])
        owned = ((ends >= lo) & (ends < hi)).nonzero().squeeze(1)
        touched = torch.unique(torch.cat([ends[owned], cand.ids]))  # (M,) sorted global ids, all in [lo, hi)
        leaf = table.gather(weight, touched - lo)  # (M, d) float32
        drop, replace = objective.dropout_key(model, ids)

        def fit_on(views: EntityViews) -> tuple[Tensor, Tensor]:
            """(the sampled cross-entropy, this worker's share of the penalty) on the touched rows' ``views``."""

            def rows(global_ids: Tensor) -> Tensor:
                return views.fused[torch.searchsorted(touched, global_ids)]

            h_emb, t_emb = shared_rows(rows(ends[owned]), owned, len(ends)).split([num_queries, num_pairs])
            r_emb = model.relation_rows(r, views)
            q = model.interaction.query(h_emb, r_emb)
            scores = model.interaction.score(q, rows(cand.ids)) + cand.correction  # (Q, C_p)
            scores = model.training_scores(scores, cand.ids - lo)
            fit = objective.cross_entropy(
                scores, batch.pair_query, cand.pair_column, cand.offset, cand.total, reduction
            )
            share = torch.arange(num_pairs, device=device).tensor_split(size)[rank]  # this worker's penalty terms
            pair_query = batch.pair_query[share]
            factors = model.interaction.factors(h_emb[pair_query], r_emb[pair_query], t_emb[share])
            return fit, objective.penalty(factors, num_pairs)

        views = model.row_views(leaf, touched - lo)  # (M, d') fused rows of the touched entities
        twin = model.twin_views(views, drop) if drop is not None else None
        views = twin if replace else views
        fit, penalty = fit_on(views)
        entities = batch.entities()
        mine = torch.searchsorted(touched, entities[(entities >= lo) & (entities < hi)])  # rows of ``views``
        local = penalty + objective.extra(model, views, mine) / size
        shared = fit
        if twin is not None and not replace:  # the twin: the same step with some structural views dropped
            twin_fit, twin_penalty = fit_on(twin)
            shared = shared + objective.twin_weight * twin_fit
            local = local + objective.twin_weight * twin_penalty
        logged = shared.detach() + all_reduce_(local.detach().clone())
        return shared + local, logged, fit.detach()

    return loss


def sync_replicated_grads(model: KGEModel) -> Callable[[], None]:
    """Every parameter but the entity rows (relations, projections, fusion) is replicated and each
    worker's gradient is partial: sum them."""
    replicated = [p for p in model.parameters() if p is not model.entities.weight]

    def sync() -> None:
        # One all-reduce of all of them; a parameter this worker's step did not reach (a decoder with
        # none of its rows in the batch) takes part with zeros, so every worker sends the same layout.
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in replicated]
        flat = all_reduce_(torch.cat([g.reshape(-1) for g in grads]))
        for p, chunk in zip(replicated, flat.split([g.numel() for g in grads]), strict=True):
            p.grad = chunk.view_as(p)

    return sync


@torch.no_grad()
def rank_queries_sharded(
    model: KGEModel, queries: Tensor, filter_index: FilterIndex, batch_size: int = 1000
) -> RankCounts:
    """Filtered rank counts of tail queries (h, r, t), each worker counting over its own rows.

    Every worker passes the same queries. The target's score comes from the worker owning it
    (an all-reduce of a one-hot-by-owner vector), counts from all workers are summed.
    """
    lo, hi = model.entities.lo, model.entities.hi
    block = sharded_views(model).fused
    parts = []
    for begin in range(0, len(queries), batch_size):
        h, r, t = queries[begin : begin + batch_size].unbind(1)
        q = model.interaction.query(replicated_rows(block, lo, h), model.relations[r])
        scores = model.interaction.score(q, block)
        mine = (t >= lo) & (t < hi)
        target = torch.zeros(len(t), dtype=scores.dtype, device=scores.device)
        target[mine] = scores[mine.nonzero().squeeze(1), t[mine] - lo]
        all_reduce_(target)
        rows, cols = filter_index.answers(h, r, lo, hi)
        counts = count_chunk(scores, target, rows, cols)
        parts.append(RankCounts(all_reduce_(counts.gt), all_reduce_(counts.eq)))
    return RankCounts.cat(parts)


@torch.no_grad()
def evaluate_sharded(
    model: KGEModel,
    triples: Tensor,
    *,
    num_relations: int,
    filter_index: FilterIndex,
    tie: TieBreak = "realistic",
    batch_size: int = 1000,
) -> EvalResult:
    """``distmap.train.evaluate.evaluate`` over row shards: same queries, same counts, same metrics."""
    model.eval()
    queries = both_directions(triples.long(), num_relations)
    counts = rank_queries_sharded(model, queries.to(model.relations.device), filter_index, batch_size)
    n = len(triples)
    return EvalResult.from_counts({"tail": counts[:n], "head": counts[n:]}, tie)
