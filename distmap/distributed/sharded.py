"""Training and evaluation with the entity table split by rows over the workers of a process group.

Worker p holds rows [lo, hi) of the entity table (and, through the optimizer, their state);
relations are replicated. One step over a global batch, each worker holding a slice of it:

1. the rows of the worker's heads and tails are fetched from their owners (one all-reduce);
2. queries are built locally and all-gathered, so every worker has every query of the step;
3. each worker scores all queries against its own rows (one GEMM) and the softmax
   cross-entropy over all N entities is assembled with per-query all-reduces;
4. backward: entity-row gradients stay with their owner, query gradients are summed and routed
   back to the worker (and rows) they came from, relation gradients are summed.

With one worker (or no process group) this is the single-process objective on the same batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from distmap.distributed.collectives import (
    all_gather_rows,
    all_gather_with_grad,
    all_reduce_,
    all_reduce_sum_with_grad,
    world,
)
from distmap.distributed.parallel_ce import vocab_parallel_cross_entropy
from distmap.models.model import EntityTable, KGEModel
from distmap.train.evaluate import (
    EvalResult,
    FilterIndex,
    RankCounts,
    TieBreak,
    both_directions,
    count_chunk,
)
from distmap.train.loop import Objective, StepLoss


def gather_entity_rows(table: EntityTable, ids: Tensor, sizes: list[int]) -> Tensor:
    """Rows of global ``ids`` from whichever worker owns them; gradients flow back to the owner.

    ``sizes``: every worker's number of ids, in worker order.
    """
    if len(sizes) == 1:
        return table.rows(ids)
    all_ids = all_gather_rows(ids, sizes)
    mine = ((all_ids >= table.lo) & (all_ids < table.hi)).nonzero().squeeze(1)
    local = table.weight.new_zeros(len(all_ids), table.weight.shape[1])
    local = local.index_copy(0, mine, table.rows(all_ids[mine]))
    offset = sum(sizes[: world()[0]])
    return all_reduce_sum_with_grad(local)[offset : offset + len(ids)]


def sharded_step(model: KGEModel, examples: Tensor, objective: Objective) -> StepLoss:
    """The step over a global batch: this worker takes its contiguous slice of the indices."""
    rank, size = world()
    device = model.relations.device

    def loss(index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # Every worker holds the same index, so every worker's slice size is known without a collective.
        slices = index.tensor_split(size)
        sizes = [len(part) for part in slices]
        batch = examples[slices[rank]].to(device)
        h, r, t = batch.unbind(1)
        h_emb, t_emb = gather_entity_rows(model.entities, torch.cat([h, t]), [2 * n for n in sizes]).tensor_split(2)
        r_emb = model.relations[r]
        queries = all_gather_with_grad(model.interaction.query(h_emb, r_emb), sizes)
        targets = all_gather_rows(t, sizes)
        scores = model.interaction.score(queries, model.entities.weight)
        fit = vocab_parallel_cross_entropy(
            scores, targets, model.entities.lo, model.num_entities, objective.class_weight, objective.label_smoothing
        )
        penalty = objective.penalty(model.interaction.factors(h_emb, r_emb, t_emb), sum(sizes))
        logged = fit.detach() + all_reduce_(penalty.detach().clone())
        return fit + penalty, logged, fit.detach()

    return loss


def sync_replicated_grads(model: KGEModel) -> Callable[[], None]:
    """Relations are replicated and each worker saw only its slice of the batch: sum their gradients."""

    def sync() -> None:
        if model.relations.grad is not None:
            all_reduce_(model.relations.grad)

    return sync


def replicated_rows(table: EntityTable, ids: Tensor) -> Tensor:
    """Rows of ``ids`` that every worker asked for alike (evaluation): owners fill, one all-reduce."""
    mine = (ids >= table.lo) & (ids < table.hi)
    rows = table.weight.new_zeros(len(ids), table.weight.shape[1])
    rows[mine] = table.rows(ids[mine])
    return all_reduce_(rows)


@torch.no_grad()
def rank_queries_sharded(
    model: KGEModel, queries: Tensor, filter_index: FilterIndex, batch_size: int = 1000
) -> RankCounts:
    """Filtered rank counts of tail queries (h, r, t), each worker counting over its own rows.

    Every worker passes the same queries. The target's score comes from the worker owning it
    (an all-reduce of a one-hot-by-owner vector), counts from all workers are summed.
    """
    lo, hi = model.entities.lo, model.entities.hi
    parts = []
    for begin in range(0, len(queries), batch_size):
        h, r, t = queries[begin : begin + batch_size].unbind(1)
        q = model.interaction.query(replicated_rows(model.entities, h), model.relations[r])
        scores = model.interaction.score(q, model.entities.weight)
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
