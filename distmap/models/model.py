"""A link predictor = representations (entity rows, relation rows) + an interaction.

The entity table holds a row range [lo, hi) of the N entities. A single process holds all of
them; a sharded worker holds its block and scores every query against it. The model never
knows which: it only scores candidates by global row range.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from distmap.data.batches import Batch
from distmap.errors import DistmapError
from distmap.models.interactions import Interaction, RotatE

INIT_BLOCK_ROWS = 4096


def init_rows(lo: int, hi: int, dim: int, scale: float, seed: int, dtype: torch.dtype | None = None) -> Tensor:
    """N(0, scale^2) rows [lo, hi) of a table, identical whichever worker makes which range.

    Rows come in fixed blocks, each from its own generator seeded by (seed, block), so a worker
    draws only its blocks: no full table anywhere, and any partition gives the same rows. Each
    block is scaled and cast as it is written, so a bfloat16 table never exists in float32.
    """
    out = torch.empty(hi - lo, dim, dtype=dtype or torch.get_default_dtype())
    for block in range(lo // INIT_BLOCK_ROWS, -(-hi // INIT_BLOCK_ROWS)):
        start = block * INIT_BLOCK_ROWS
        generator = torch.Generator().manual_seed(seed * 1_000_003 + block)
        rows = torch.randn(INIT_BLOCK_ROWS, dim, generator=generator)
        a, b = max(lo, start), min(hi, start + INIT_BLOCK_ROWS)
        out[a - lo : b - lo] = rows[a - start : b - start] * scale
    return out


class EntityTable(nn.Module):
    """Entity embeddings for global rows [lo, hi) of ``num_total``."""

    def __init__(
        self,
        num_total: int,
        dim: int,
        init_scale: float,
        seed: int,
        lo: int = 0,
        hi: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_total = num_total
        self.lo = lo
        self.hi = num_total if hi is None else hi
        self.weight = nn.Parameter(init_rows(self.lo, self.hi, dim, init_scale, seed, dtype))

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


@dataclass
class EntityViews:
    """A block of entity rows [lo, lo + M) in every representation the model and its loss terms use.

    ``fused`` is what the interaction scores (for a structural model, the table itself); loss
    terms (alignment, instance preserving, reconstruction) read the other views of the same rows.
    """

    lo: int
    structure: Tensor  # (M, d) the structural rows
    fused: Tensor  # (M, d') the rows queries are built from and scored against
    projected: dict[str, Tensor] = field(default_factory=dict)  # modality -> (M, d)
    present: dict[str, Tensor] = field(default_factory=dict)  # modality -> (M,) bool
    features: dict[str, Tensor] = field(default_factory=dict)  # modality -> (M, D_m) raw rows
    # (modality, local row indices (k,)) -> (k, d): the projection recomputed on just those rows, where
    # the model's projection is row-wise. A loss term on k rows then back-propagates O(k) work into the
    # projection weights instead of a dense (M, d) gradient through ``projected`` (benchmarks/align_cost.py).
    project_rows: Callable[[str, Tensor], Tensor] | None = None
    # (M,) bool: rows with a trained structural row (``ColdConfig.unseen: projection`` leaves an entity
    # with no train triple without one); terms that use the structural rows as a target skip the others.
    structured: Tensor | None = None
    # (M,) local rows of the block these views hold (the sampled objective's touched rows); None: all of it
    rows: Tensor | None = None
    # False: views scored only to train some rows' projections (``ColdConfig.twin_trains``), so the
    # relations are read without gradient
    trains_relations: bool = True

    def with_structure(self, rows: Tensor) -> Tensor:
        """The rows of ``rows`` whose structural row is real (all of them by default)."""
        return rows if self.structured is None else rows[self.structured[rows]]

    def projected_rows(self, modality: str, rows: Tensor) -> Tensor:
        """Rows ``rows`` of ``projected[modality]`` (the same values), cheapest way the model allows."""
        if self.project_rows is None:
            return self.projected[modality][rows]
        return self.project_rows(modality, rows)


def dropped_rows(ids: Tensor, key: int, p: float) -> Tensor:
    """(k,) bool: which entities ``ids`` (global) lose their structural view in the step ``key``.

    A hash of (id, key) to [0, 1), compared with ``p``: the same for an entity whichever worker holds
    it and whatever rows are asked together, O(k), and with no generator state to checkpoint (the key
    is derived from the step's batch, which every worker and a resumed run draw alike).
    """
    salt = torch.tensor(key, dtype=torch.long, device=ids.device) * -4658895280553007687  # int64 wraps
    x = ids.long() * -7046029254386353131 + salt  # splitmix64's odd constants
    x = (x ^ (x >> 31)) * -4265267296055464877
    x = x ^ (x >> 29)
    return ((x >> 11) & 0xFFFFFF).double() < p * (1 << 24)


def step_key(ids: Tensor) -> int:
    """A number that identifies a step's batch of group ids (``dropped_rows``' key)."""
    ids = ids.long().cpu()
    return int((ids * torch.arange(1, len(ids) + 1)).sum() % (1 << 61))


RowFetch = Callable[[Tensor], Tensor]
"""Structural rows of global ids, wherever they live (the sharded step fetches them from their owners)."""


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
        table_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.interaction = interaction
        lo, hi = entity_range or (0, num_entities)
        self.entities = EntityTable(num_entities, interaction.entity_dim(rank), init_scale, seed, lo, hi, table_dtype)
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

    def views(self, fetch: RowFetch | None = None) -> EntityViews:
        """This model's rows in every view; a structural model's fused rows are its table (no copy).

        ``fetch`` gives structural rows outside this block (a model that needs some, e.g. OTKGE's
        anchor entities, uses it; the default reads the local table). A bfloat16 table is read as
        float32 (a copy: evaluation and the exact objective compute in float32).
        """
        weight = self.structure()
        return EntityViews(self.entities.lo, weight, weight)

    @property
    def structure_dropout(self) -> float:
        """The share of rows whose structural view a training step drops (``ColdConfig.dropout``)."""
        return 0.0

    def twin_views(self, views: EntityViews, drop: int) -> EntityViews:
        """``views`` with the rows the step ``drop`` picks fused without their structural view
        (``ColdConfig.dropout``), from the same structural and projected rows: nothing is projected twice.
        A model without features drops nothing."""
        return views

    def training_scores(self, scores: Tensor, local: Tensor | slice = slice(None)) -> Tensor:
        """Scores (Q, k) against the block's rows ``local`` as the training softmax sees them: all of
        them, or without the entities a multimodal model leaves out (``ColdConfig.negatives``)."""
        return scores

    def unseen_rows(self, features: dict[str, Tensor]) -> Tensor:
        """Fused rows (k, d') of entities that have no structural row, from their feature rows."""
        raise DistmapError(
            "this model has no feature projection: it can only rank entities it was trained with "
            "(train a multimodal model, e.g. configs/wn9img/map.yaml, to rank new entities from features)"
        )

    def relation_rows(self, r: Tensor, views: EntityViews) -> Tensor:
        """Relation rows of ``r`` (B,) for scoring ``views``: without gradient where the views say so."""
        rows = self.relations[r]
        return rows if views.trains_relations else rows.detach()

    def structure(self) -> Tensor:
        """The block's structural rows as the math reads them: a bfloat16 table as a float32 copy."""
        weight = self.entities.weight
        return weight.float() if weight.dtype == torch.bfloat16 else weight

    def row_views(self, structure: Tensor, local: Tensor) -> EntityViews:
        """Some rows in every view, built from their structural rows ``structure`` (k, d) (gathered by
        the caller, e.g. the sampled objective's touched rows) and their local indices ``local`` (k,):
        work in k, not in the block. A structural model scores its structural rows."""
        return EntityViews(self.entities.lo, structure, structure)

    def auxiliary_loss(self, views: EntityViews, rows: Tensor) -> Tensor:
        """The model's own loss beside the objective (e.g. TransAE's reconstruction) over the local
        rows ``rows`` of the batch's entities; none for a structural model."""
        return views.structure.new_zeros(())

    def scorer(self) -> Callable[[Tensor, Tensor, int, int], Tensor]:
        """``score(h, r, lo, hi)`` over the fused rows as they are now, computed once (evaluation)."""
        rows, lo = self.views().fused, self.entities.lo

        def score(h: Tensor, r: Tensor, a: int, b: int) -> Tensor:
            return self.interaction.score(
                self.interaction.query(rows[h - lo], self.relations[r]), rows[a - lo : b - lo]
            )

        return score

    def query(self, h: Tensor, r: Tensor) -> Tensor:
        """Query vectors of (h, r) from the fused rows (h: global ids in this block)."""
        return self.interaction.query(self.views().fused[h - self.entities.lo], self.relations[r])

    def score(self, h: Tensor, r: Tensor, lo: int, hi: int) -> Tensor:
        """Scores (B, hi - lo) of each (h, r) against entities [lo, hi)."""
        return self.scorer()(h, r, lo, hi)

    def forward(
        self, batch: Batch, views: EntityViews | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor], EntityViews]:
        """kbc's forward: scores (Q, N) of every query against all local entities, the N3 factors
        of every (query, tail) pair (so the penalty counts a query once per triple), and the views
        the loss terms read (``views``: the block's views to score, default ``self.views()``)."""
        views = self.views() if views is None else views
        h, r = batch.queries.unbind(1)
        # One gather for heads and tails: each gather's backward zero-fills a block-sized gradient.
        rows = views.fused[torch.cat([h, batch.tails]) - views.lo]
        h_emb, t_emb = rows.split([len(h), len(batch.tails)])
        r_emb = self.relation_rows(r, views)
        scores = self.training_scores(self.interaction.score(self.interaction.query(h_emb, r_emb), views.fused))
        return scores, self.interaction.factors(*per_pair(batch.pair_query, h_emb, r_emb), t_emb), views


def per_pair(pair_query: Tensor, *query_rows: Tensor) -> tuple[Tensor, ...]:
    """Rows of each (query, tail) pair's query; with one tail per query they are the rows themselves."""
    if len(pair_query) == len(query_rows[0]):
        return query_rows
    return tuple(rows[pair_query] for rows in query_rows)
