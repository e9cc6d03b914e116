"""Sampled softmax over row ranges: which candidates a worker scores, and the columns they take.

Exact 1-vs-all costs N·d per query. Under ``train.objective: sampled`` worker p, owning rows
[lo_p, hi_p) (N_p of them), scores every query of the step against its candidates C_p: the step's
distinct true tails that it owns, then S_p rows drawn uniformly with replacement from its range
(S_p is its share of ``train.candidates`` = S). The softmax of a query q runs over the union of all
workers' candidates, with this correction (the sampling correction of Jean et al. 2015 for a
uniform proposal, with accidental hits removed):

- a true tail of the step enters with its own score s_qj;
- a drawn row j enters with s_qj + log(N_p / S_p): each of the S_p draws stands for N_p / S_p rows;
- a drawn row that is also a true tail of the step enters with -inf (it is already counted).

So the denominator sum_j exp(corrected score) is an unbiased estimate of the full
Z_q = sum over all N entities of exp(s_qj): the true tails exactly, and each draw contributes
exp(s_qj) N_p / S_p [j not a true tail], whose expectation summed over the S_p draws is the sum
over the other rows of the range. Cost per step: B queries × (S + true tails) candidates × d,
independent of N.

The union's columns are numbered worker by worker: worker p's block is [offset_p, offset_p + |C_p|).
Every worker knows the step's tails and every S_q, so it computes every offset and the column of
every pair's tail without a collective; the loss is then ``pair_cross_entropy`` with the block at
``lo = offset_p``, reduced over workers exactly as the exact objective's vocab-parallel loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class Candidates:
    """One worker's candidate block of one step, and where every pair's tail sits in the union."""

    ids: Tensor  # (C_p,) global entity ids: owned true tails (sorted), then the drawn rows
    correction: Tensor  # (C_p,) added to each candidate's score: 0, log(N_p / S_p) or -inf
    offset: int  # first column of this block in the union
    total: int  # columns of the union, over all workers
    pair_column: Tensor  # (T,) column of each pair's tail in the union


def sampled_candidates(
    tails: Tensor, drawn: Tensor, ranges: list[tuple[int, int]], rank: int, draws: list[int]
) -> Candidates:
    """Worker ``rank``'s candidates given the step's pair ``tails`` (T,), its ``drawn`` rows (S_p,) and
    the ranges and draw counts of all workers (the same everywhere)."""
    true = torch.unique(tails)  # (U,) sorted
    starts = torch.tensor([lo for lo, _ in ranges[1:]], dtype=true.dtype, device=true.device)
    owner = torch.bucketize(true, starts, right=True)  # (U,)
    per_owner = torch.bincount(owner, minlength=len(ranges))  # (P,) true tails of each worker
    sizes = per_owner + torch.tensor(draws, device=true.device)
    offsets = sizes.cumsum(0) - sizes  # (P,) first column of each worker's block
    first_true = per_owner.cumsum(0) - per_owner  # (P,) each worker's first entry in ``true``
    index = torch.searchsorted(true, tails)  # (T,)
    pair_owner = owner[index]
    pair_column = offsets[pair_owner] + index - first_true[pair_owner]

    lo, hi = ranges[rank]
    mine = true[owner == rank]
    correction = torch.zeros(len(mine) + len(drawn), device=true.device)
    if len(drawn):
        weight = correction[len(mine) :]
        weight.fill_(math.log((hi - lo) / len(drawn)))
        weight[torch.isin(drawn, mine)] = -math.inf
    return Candidates(torch.cat([mine, drawn]), correction, int(offsets[rank]), int(sizes.sum()), pair_column)


class Sampler(Protocol):
    def draw(self, lo: int, hi: int, count: int) -> Tensor:
        """``count`` global row ids in [lo, hi) for this step."""
        ...


@dataclass
class CandidateSampler:
    """Uniform draws from a row range, a fresh generator per step seeded by (seed, step, lo).

    The only state is the step count (same on every worker, saved in checkpoints), so a resumed
    run draws what the uninterrupted one would have, and no generator state has to be resharded.
    """

    seed: int
    steps: int = 0

    def draw(self, lo: int, hi: int, count: int) -> Tensor:
        self.steps += 1
        if hi == lo or count == 0:
            return torch.empty(0, dtype=torch.long)
        key = (self.seed * 1_000_003 + self.steps) * 1_000_033 + lo
        generator = torch.Generator().manual_seed(key % 2**63)
        return torch.randint(lo, hi, (count,), generator=generator)
