"""Training triples split over the workers (``scale.shard_triples``): each reads only its rows.

Worker p of P reads rows [a_p, b_p) of ``train.parquet`` (the row groups overlapping them), adds
their reciprocals and groups them by query. A step's global batch is the union of the workers'
local batches of about B / P groups, all-gathered as (query, h, r, t) ids, so that the step code
(``sharded_step``, ``sampled_step``) sees what it sees without shards: the same batch on every
worker. A query whose tails fell on two workers is two groups; the loss stays the per-triple sum.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from distmap.data.batches import Batch, BatchUnit, QueryGroups
from distmap.data.kg import KnowledgeGraph, add_reciprocals
from distmap.distributed.collectives import all_gather_rows, all_reduce_, world
from distmap.distributed.partition import row_ranges
from distmap.train.evaluate import FilterIndex


def read_train_shard(kg: KnowledgeGraph, rank: int, size: int) -> tuple[Tensor, list[int]]:
    """This worker's training triples (no reciprocals) and the train.parquet row groups it read."""
    lo, hi = row_ranges(kg.manifest["splits"]["train"]["triples"], size)[rank]
    return kg.read_triple_rows("train", lo, hi)


def range_filter(kg: KnowledgeGraph, lo: int, hi: int, device: torch.device) -> FilterIndex:
    """Known triples (train+valid+test, both directions) whose answer is one of rows [lo, hi): all
    that filtered ranking over those rows asks of the filter. Train is streamed one row group's
    worth at a time, so it is never whole in memory."""
    total = kg.manifest["splits"]["train"]["triples"]
    parts = [kg.splits["valid"], kg.splits["test"]]
    parts += [kg.read_triple_rows("train", a, min(a + CHUNK, total))[0] for a in range(0, total, CHUNK)]
    known = [add_reciprocals(p, kg.num_relations) for p in parts]
    mine = torch.cat([k[(k[:, 2] >= lo) & (k[:, 2] < hi)] for k in known])
    return FilterIndex.build(mine, kg.num_entities).to(device)


CHUNK = 1 << 20  # train rows read at once while building the filter


class ShardedGroups:
    """This worker's query groups, stepping in lockstep with the others: ``epoch`` hands out local
    batches (the same number on every worker), ``select`` turns a local batch into the global one.

    ``num_triples`` and ``sizes`` are local: an epoch's logged loss is this worker's
    triple-weighted mean of the global batches' losses.
    """

    def __init__(self, local: QueryGroups) -> None:
        self.local = local

    @property
    def num_groups(self) -> int:
        return self.local.num_groups

    @property
    def num_triples(self) -> int:
        return self.local.num_triples

    def sizes(self, ids: Tensor) -> Tensor:
        return self.local.sizes(ids)

    def epoch(self, generator: torch.Generator, batch_size: int, unit: BatchUnit = "queries") -> list[Tensor]:
        """Local batches of ``batch_size / P``, shuffled by a generator of this worker's own, seeded from
        one draw of the shared ``generator`` (which so stays the same everywhere, as checkpoints
        assume); padded with empty batches to the largest worker's count."""
        rank, size = world()
        seed = int(torch.randint(2**62, (1,), generator=generator)) + rank
        batches = self.local.epoch(torch.Generator().manual_seed(seed), -(-batch_size // size), unit)
        steps = int(all_reduce_(torch.tensor([len(batches)]), dist.ReduceOp.MAX))
        return batches + [torch.empty(0, dtype=torch.long)] * (steps - len(batches))

    def select(self, ids: Tensor) -> Batch:
        """The global batch: every worker's local batch, in worker order (one all-gather of ids)."""
        batch = self.local.select(ids)
        rank = torch.full_like(batch.tails, world()[0])
        pairs = torch.stack([rank, batch.pair_query, *batch.queries[batch.pair_query].unbind(1), batch.tails], dim=1)
        gathered = all_gather_rows(pairs)  # (T, 5): worker, its query index, h, r, t
        starts = torch.ones(len(gathered), dtype=torch.bool)
        starts[1:] = (gathered[1:, :2] != gathered[:-1, :2]).any(dim=1)  # first pair of each query
        return Batch(gathered[starts, 2:4], starts.cumsum(0) - 1, gathered[:, 4])
