"""Scoring functions, split into a query step and a candidate step.

Every interaction turns (head, relation) embeddings into a query vector, then scores queries
against a block of candidate tail embeddings in one batched op. That split is what 1-vs-all
training and sharding need: a worker owning entity rows [lo, hi) scores every query against
just its block. Embedding layouts: real models use ``(d,)``; complex ones store ``[re | im]``
halves in one real row of width ``2 * rank`` so the complex product is a single real GEMM.

Shapes: ``h, r`` are (B, entity_dim) / (B, relation_dim), ``candidates`` is (M, entity_dim),
scores are (B, M). Higher scores are better.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _halves(x: Tensor) -> tuple[Tensor, Tensor]:
    re, im = x.chunk(2, dim=-1)
    return re, im


def _modulus(x: Tensor) -> Tensor:
    """|z| per complex coordinate of an [re | im] row, as kbc's N3 factors.

    Written out rather than ``vector_norm(stack(...))`` (about 100x slower on CPU at rank 500);
    the clamp keeps the gradient finite at z = 0, where sqrt's derivative is infinite.
    """
    re, im = _halves(x)
    return (re * re + im * im).clamp_min(1e-30).sqrt()


def _complex_product(h: Tensor, r: Tensor) -> Tensor:
    h_re, h_im = _halves(h)
    r_re, r_im = _halves(r)
    return torch.cat([h_re * r_re - h_im * r_im, h_re * r_im + h_im * r_re], dim=-1)


def _dot_scores(q: Tensor, candidates: Tensor) -> Tensor:
    # (E @ Q^T)^T: with few queries and many candidates this orientation is the faster GEMM on CPU
    # (measured in benchmarks/train_speed.py), and softmax over the transposed view is fine.
    return (candidates @ q.T).T


def _neg_distance(q: Tensor, candidates: Tensor, p: int) -> Tensor:
    if p == 1:
        return -torch.cdist(q, candidates, p=1)
    # ||q - c||^2 = ||q||^2 - 2 q.c + ||c||^2: a GEMM forward and backward (cdist's own backward is not).
    sq = (q * q).sum(-1, keepdim=True) - 2 * _dot_scores(q, candidates) + (candidates * candidates).sum(-1)
    return -sq.clamp_min(1e-12).sqrt()


class Interaction:
    """Base: a scoring function with a query step, a candidate step and its N3 factors."""

    complex_valued = False

    def entity_dim(self, rank: int) -> int:
        return 2 * rank if self.complex_valued else rank

    def relation_dim(self, rank: int) -> int:
        return self.entity_dim(rank)

    def query(self, h: Tensor, r: Tensor) -> Tensor:
        raise NotImplementedError

    def score(self, q: Tensor, candidates: Tensor) -> Tensor:
        raise NotImplementedError

    def score_pairs(self, q: Tensor, t: Tensor) -> Tensor:
        """One score per (query, tail) row, computed elementwise: the reference for ``score``."""
        raise NotImplementedError

    def factors(self, h: Tensor, r: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-coordinate magnitudes the N3 / L2 regularizers act on (kbc's ``factors``)."""
        if self.complex_valued:
            return _modulus(h), _modulus(r), _modulus(t)
        return h.abs(), r.abs(), t.abs()


class _DotProduct(Interaction):
    """Scores are dot products of query and candidate: one GEMM per candidate block."""

    def score(self, q: Tensor, candidates: Tensor) -> Tensor:
        return _dot_scores(q, candidates)

    def score_pairs(self, q: Tensor, t: Tensor) -> Tensor:
        return (q * t).sum(-1)


class _Distance(Interaction):
    """Scores are negative p-norm distances between query and candidate."""

    def __init__(self, p: int = 2) -> None:
        self.p = p

    def score(self, q: Tensor, candidates: Tensor) -> Tensor:
        return _neg_distance(q, candidates, self.p)

    def score_pairs(self, q: Tensor, t: Tensor) -> Tensor:
        return -torch.linalg.vector_norm(q - t, ord=self.p, dim=-1)


class DistMult(_DotProduct):
    """<h, r, t> (Yang et al., 2015)."""

    def query(self, h: Tensor, r: Tensor) -> Tensor:
        return h * r


class ComplEx(_DotProduct):
    """Re<h, r, conj(t)> (Trouillon et al., 2016) as one real GEMM over [re | im]."""

    complex_valued = True

    def query(self, h: Tensor, r: Tensor) -> Tensor:
        return _complex_product(h, r)


class TransE(_Distance):
    """-||h + r - t||_p (Bordes et al., 2013)."""

    def query(self, h: Tensor, r: Tensor) -> Tensor:
        return h + r


class RotatE(_Distance):
    """-||h o r - t|| with |r_i| = 1 (Sun et al., 2019).

    The relation is stored as ``rank`` phases, so the unit modulus holds by construction. The
    distance is the L2 norm of the complex difference (as PyKEEN), which expands into a GEMM.
    """

    complex_valued = True

    def __init__(self) -> None:
        super().__init__(p=2)

    def relation_dim(self, rank: int) -> int:
        return rank

    def query(self, h: Tensor, r: Tensor) -> Tensor:
        return _complex_product(h, torch.cat([torch.cos(r), torch.sin(r)], dim=-1))

    def factors(self, h: Tensor, r: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h_mod, _, t_mod = super().factors(h, torch.cat([r, r], dim=-1), t)
        return h_mod, torch.ones_like(r), t_mod


class MultiViewTransE(Interaction):
    """Sum of TransE energies between every pair of entity views: ``-sum_{a,b} ||h_a + r_a - t_b||``.

    IKRL (Xie et al., 2017): views structure and image, one relation: SS + SI + IS + II. TBKGE
    (Mousselly-Sergieh et al., 2018): views structure and the multimodal projection, a relation
    per view (``relation_per_view``). Entity rows are the views side by side, ``[v_1 | ... | v_V]``
    of ``rank`` each (``Fusion("concat")``); the structural table holds one view of ``rank``.
    """

    def __init__(self, views: int, relation_per_view: bool, p: int = 2) -> None:
        self.views, self.relation_per_view, self.p = views, relation_per_view, p

    def relation_dim(self, rank: int) -> int:
        return rank * self.views if self.relation_per_view else rank

    def query(self, h: Tensor, r: Tensor) -> Tensor:
        r = r if self.relation_per_view else r.repeat(1, self.views)
        return h + r

    def score(self, q: Tensor, candidates: Tensor) -> Tensor:
        qs, cs = q.chunk(self.views, dim=-1), candidates.chunk(self.views, dim=-1)
        return sum(_neg_distance(qa, cb, self.p) for qa in qs for cb in cs)

    def score_pairs(self, q: Tensor, t: Tensor) -> Tensor:
        qs, ts = q.chunk(self.views, dim=-1), t.chunk(self.views, dim=-1)
        return sum(-torch.linalg.vector_norm(qa - tb, ord=self.p, dim=-1) for qa in qs for tb in ts)


def make_interaction(name: str, p_norm: int = 2) -> Interaction:
    if name == "transe":
        return TransE(p_norm)
    return {"distmult": DistMult, "complex": ComplEx, "rotate": RotatE}[name]()
