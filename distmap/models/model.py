"""A link predictor = representations (entity rows, relation rows) + an interaction.

The entity table holds a row range [lo, hi) of the N entities. A single process holds all of
them; a sharded worker holds its block and scores every query against it. The model never
knows which: it only scores candidates by global row range.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from distmap.models.interactions import Interaction, RotatE


class EntityTable(nn.Module):
    """Entity embeddings for global rows [lo, hi) of ``num_total``."""

    def __init__(self, num_total: int, dim: int, init_scale: float, lo: int = 0, hi: int | None = None) -> None:
        super().__init__()
        self.num_total = num_total
        self.lo = lo
        self.hi = num_total if hi is None else hi
        self.weight = nn.Parameter(torch.randn(self.hi - self.lo, dim) * init_scale)

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

    def __init__(self, interaction: Interaction, num_entities: int, num_relations: int, rank: int,
                 init_scale: float) -> None:
        super().__init__()
        self.interaction = interaction
        self.entities = EntityTable(num_entities, interaction.entity_dim(rank), init_scale)
        rel_dim = interaction.relation_dim(rank)
        if isinstance(interaction, RotatE):
            relation = torch.empty(num_relations, rel_dim).uniform_(-math.pi, math.pi)
        else:
            relation = torch.randn(num_relations, rel_dim) * init_scale
        self.relations = nn.Parameter(relation)

    @property
    def num_entities(self) -> int:
        return self.entities.num_total

    def query(self, h: Tensor, r: Tensor) -> Tensor:
        return self.interaction.query(self.entities.rows(h), self.relations[r])

    def score(self, h: Tensor, r: Tensor, lo: int, hi: int) -> Tensor:
        """Scores (B, hi - lo) of each (h, r) against entities [lo, hi): the evaluator's scorer."""
        return self.interaction.score(self.query(h, r), self.entities.block(lo, hi))

    def forward(self, triples: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """kbc's forward: scores of every (h, r) against all local entities, plus N3 factors."""
        h, r, t = triples.unbind(1)
        # One gather for heads and tails: each gather's backward zero-fills a table-sized gradient.
        h_emb, t_emb = self.entities.rows(torch.cat([h, t])).chunk(2)
        r_emb = self.relations[r]
        q = self.interaction.query(h_emb, r_emb)
        scores = self.interaction.score(q, self.entities.block(self.entities.lo, self.entities.hi))
        return scores, self.interaction.factors(h_emb, r_emb, t_emb)
