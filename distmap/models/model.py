"""A link predictor = representations (entity rows, relation rows) + an interaction.

The entity table holds a row range [lo, hi) of the N entities. A single process holds all of
them; a sharded worker holds its block and scores every query against it. The model never
knows which: it only scores candidates by global row range.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from distmap.data.batches import Batch
from distmap.models.interactions import Interaction, RotatE

INIT_BLOCK_ROWS = 4096


def init_rows(lo: int, hi: int, dim: int, scale: float, seed: int) -> Tensor:
    """N(0, scale^2) rows [lo, hi) of a table, identical whichever worker makes which range.

    Rows come in fixed blocks, each from its own generator seeded by (seed, block), so a worker
    draws only its blocks: no full table anywhere, and any partition gives the same rows.
    """
    out = torch.empty(hi - lo, dim)
    for block in range(lo // INIT_BLOCK_ROWS, -(-hi // INIT_BLOCK_ROWS)):
        start = block * INIT_BLOCK_ROWS
        generator = torch.Generator().manual_seed(seed * 1_000_003 + block)
        rows = torch.randn(INIT_BLOCK_ROWS, dim, generator=generator)
        a, b = max(lo, start), min(hi, start + INIT_BLOCK_ROWS)
        out[a - lo : b - lo] = rows[a - start : b - start]
    return out * scale


class EntityTable(nn.Module):
    """Entity embeddings for global rows [lo, hi) of ``num_total``."""

    def __init__(
        self, num_total: int, dim: int, init_scale: float, seed: int, lo: int = 0, hi: int | None = None
    ) -> None:
        super().__init__()
        self.num_total = num_total
        self.lo = lo
        self.hi = num_total if hi is None else hi
        self.weight = nn.Parameter(init_rows(self.lo, self.hi, dim, init_scale, seed))

    def rows(self, ids: Tensor) -> Tensor:
        """Embeddings of global entity ids, which must lie in this table's range."""
        return self.weight[ids - self.lo]

    def block(self, lo: int, hi: int) -> Tensor:
        """Embeddings of the global row range [lo, hi), a view (no copy)."""
        if not self.lo <= lo <= hi <= self.hi:
            raise IndexError(f"rows [{lo}, {hi}) are outside this table's rows [{self.lo}, {self.hi})")
        if (lo, hi) == (self.lo, self.hi):
            return self.weight  # a full slice would cost a zero-filled gradient copy in backward
        return self.weight[lo - self.lo : hi - self.lo]


class KGEModel(nn.Module):
    """Scores (h, r, ?) against entity blocks; relations include the reciprocal ones (2R)."""

    def __init__(
        self,
        interaction: Interaction,
        num_entities: int,
        num_relations: int,
        rank: int,
        init_scale: float,
        seed: int = 0,
        entity_range: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.interaction = interaction
        lo, hi = entity_range or (0, num_entities)
        self.entities = EntityTable(num_entities, interaction.entity_dim(rank), init_scale, seed, lo, hi)
        rel_dim = interaction.relation_dim(rank)
        generator = torch.Generator().manual_seed(seed)  # relations are replicated: same draw everywhere
        if isinstance(interaction, RotatE):
            relation = torch.empty(num_relations, rel_dim).uniform_(-math.pi, math.pi, generator=generator)
        else:
            relation = torch.randn(num_relations, rel_dim, generator=generator) * init_scale
        self.relations = nn.Parameter(relation)

    @property
    def num_entities(self) -> int:
        return self.entities.num_total

    def query(self, h: Tensor, r: Tensor) -> Tensor:
        return self.interaction.query(self.entities.rows(h), self.relations[r])

    def score(self, h: Tensor, r: Tensor, lo: int, hi: int) -> Tensor:
        """Scores (B, hi - lo) of each (h, r) against entities [lo, hi): the evaluator's scorer."""
        return self.interaction.score(self.query(h, r), self.entities.block(lo, hi))

    def forward(self, batch: Batch) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """kbc's forward: scores (Q, N) of every query against all local entities, plus the N3
        factors of every (query, tail) pair, so the penalty counts a query once per triple."""
        h, r = batch.queries.unbind(1)
        # One gather for heads and tails: each gather's backward zero-fills a table-sized gradient.
        h_emb, t_emb = self.entities.rows(torch.cat([h, batch.tails])).split([len(h), len(batch.tails)])
        r_emb = self.relations[r]
        q = self.interaction.query(h_emb, r_emb)
        scores = self.interaction.score(q, self.entities.block(self.entities.lo, self.entities.hi))
        return scores, self.interaction.factors(*per_pair(batch.pair_query, h_emb, r_emb), t_emb)


def per_pair(pair_query: Tensor, *query_rows: Tensor) -> tuple[Tensor, ...]:
    """Rows of each (query, tail) pair's query; with one tail per query they are the rows themselves."""
    if len(pair_query) == len(query_rows[0]):
        return query_rows
    return tuple(rows[pair_query] for rows in query_rows)
