"""Filtered link-prediction ranking over entity row ranges, tie-aware, in both directions.

Head queries (?, r, t) are asked as tail queries (t, r + R, ?) on reciprocal relations, so the
evaluator only ever ranks tails. Ranking works on entity row ranges [lo, hi): for each query it
counts the unfiltered candidates that score above (``gt``) and equal to (``eq``) the target.
Counts from disjoint ranges add up, which is what lets a sharded entity table rank with one
all-reduce of two integers per query.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor
from tqdm.auto import tqdm

from distmap.errors import DistmapError

__all__ = [
    "EvalResult",
    "FilterIndex",
    "RankCounts",
    "Scorer",
    "TieBreak",
    "count_chunk",
    "evaluate",
    "rank_metrics",
    "rank_queries",
]

#: How a target that ties with other candidates is ranked: "optimistic" puts it before all of
#: them, "pessimistic" after all of them (kbc, OTKGE), "realistic" halfway (the expected rank
#: under a random order of the tied candidates, PyKEEN's default).
TieBreak = Literal["realistic", "optimistic", "pessimistic"]

#: ``scorer(h, r, lo, hi)``: scores (B, hi - lo) of (h[i], r[i], e) for entities e in [lo, hi),
#: higher is better. The returned tensor is read, never written.
Scorer = Callable[[Tensor, Tensor, int, int], Tensor]

HITS_AT = (1, 3, 10)
METRIC_NAMES = ("mrr", "mr", *(f"hits@{k}" for k in HITS_AT))
DIRECTIONS = ("tail", "head", "both")


@dataclass(frozen=True)
class FilterIndex:
    """Known true tails of every (h, r) query, stored CSR-style in tensors.

    ``keys`` are the sorted unique query keys ``h * num_relations_total + r``; the true tails of
    ``keys[i]`` are ``tails[offsets[i]:offsets[i + 1]]``, sorted and without duplicates. Build it
    once from train + valid + test with reciprocal relations already added; lookups never write
    to it, so evaluating twice filters exactly the same set (unlike kbc's ``+=`` on its lists).
    """

    keys: Tensor
    offsets: Tensor
    tails: Tensor
    num_entities: int
    num_relations_total: int

    @classmethod
    def build(cls, triples: Tensor, num_entities: int) -> FilterIndex:
        """Index all known (h, r, t) triples; duplicates are dropped so each answer masks once."""
        if triples.ndim != 2 or triples.shape[1] != 3:
            raise DistmapError(f"filter triples must have shape (n, 3), got {tuple(triples.shape)}")
        triples = triples.long()
        h, r, t = triples.unbind(dim=1)
        bad = (h < 0) | (h >= num_entities) | (t < 0) | (t >= num_entities) | (r < 0)
        if bad.any():
            raise DistmapError(
                f"{int(bad.sum())} filter triples have an entity id outside [0, {num_entities}) "
                "or a negative relation id"
            )
        num_relations_total = int(r.max()) + 1 if r.numel() else 0
        query = h * num_relations_total + r
        entries = torch.unique(query * num_entities + t)
        query, tails = entries.div(num_entities, rounding_mode="floor"), entries % num_entities
        keys, sizes = torch.unique_consecutive(query, return_counts=True)
        offsets = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)])
        return cls(keys, offsets, tails, num_entities, num_relations_total)

    def to(self, device: torch.device | str) -> FilterIndex:
        """A copy on ``device``, so lookups run where the scores are."""
        return FilterIndex(
            self.keys.to(device),
            self.offsets.to(device),
            self.tails.to(device),
            self.num_entities,
            self.num_relations_total,
        )

    def answers(self, h: Tensor, r: Tensor, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        """Known true tails in [lo, hi) of the queries (h[i], r[i], ?).

        Returns ``(rows, cols)``: the query's index in the batch and the tail's column in the
        range (entity id - lo), ready to index a (B, hi - lo) score chunk.
        """
        h, r = h.to(self.keys.device).long(), r.to(self.keys.device).long()
        in_range = (r >= 0) & (r < self.num_relations_total)
        query = torch.where(in_range, h * self.num_relations_total + r, -1)
        first = torch.searchsorted(self.keys, query)
        past = torch.searchsorted(self.keys, query, right=True)
        start, sizes = self.offsets[first], self.offsets[past] - self.offsets[first]
        rows = torch.repeat_interleave(torch.arange(len(h), device=h.device), sizes)
        # output slot j of query q is storage slot start[q] + (j - first slot of q in the output)
        shift = torch.repeat_interleave(start - (sizes.cumsum(0) - sizes), sizes)
        tails = self.tails[shift + torch.arange(len(rows), device=h.device)]
        keep = (tails >= lo) & (tails < hi)
        return rows[keep], tails[keep] - lo


@dataclass(frozen=True)
class RankCounts:
    """Per query: how many unfiltered candidates score above (gt) and equal to (eq) the target.

    ``a + b`` adds counts of the same queries over disjoint entity ranges; ``RankCounts.cat``
    joins counts of different queries.
    """

    gt: Tensor
    eq: Tensor

    def __add__(self, other: RankCounts) -> RankCounts:
        return RankCounts(self.gt + other.gt, self.eq + other.eq)

    def __len__(self) -> int:
        return len(self.gt)

    def __getitem__(self, index: slice | Tensor) -> RankCounts:
        return RankCounts(self.gt[index], self.eq[index])

    @classmethod
    def cat(cls, parts: Sequence[RankCounts]) -> RankCounts:
        """Counts of all queries of ``parts``, in order."""
        return cls(torch.cat([p.gt for p in parts]), torch.cat([p.eq for p in parts]))

    def ranks(self, tie: TieBreak = "realistic") -> Tensor:
        """1-based filtered ranks (float64): ties ahead of the target count 0, all, or half."""
        _check_tie(tie)
        gt, eq = self.gt.double(), self.eq.double()
        tied_ahead = {"optimistic": 0.0, "pessimistic": 1.0, "realistic": 0.5}[tie]
        return 1.0 + gt + tied_ahead * eq


def count_chunk(scores: Tensor, target: Tensor, rows: Tensor, cols: Tensor) -> RankCounts:
    """Count one chunk's candidates above and equal to each query's target, filtered answers excluded.

    ``scores`` (B, hi - lo) are left untouched: the filtered pairs ``(rows, cols)`` (unique, and
    including the target itself when it lies in this chunk) are counted on their own and
    subtracted. So a scorer may return a view of cached scores without having it overwritten,
    and the target never ties with itself.
    """
    rows, cols, target = rows.to(scores.device), cols.to(scores.device), target.to(scores.device)
    known, known_target = scores[rows, cols], target[rows]
    batch = scores.shape[0]
    gt = (scores > target[:, None]).sum(dim=1) - torch.bincount(rows[known > known_target], minlength=batch)
    eq = (scores == target[:, None]).sum(dim=1) - torch.bincount(rows[known == known_target], minlength=batch)
    return RankCounts(gt, eq)


@torch.no_grad()
def rank_queries(
    scorer: Scorer,
    queries: Tensor,
    filter_index: FilterIndex,
    num_entities: int,
    *,
    batch_size: int = 1000,
    chunk_size: int | None = None,
    progress: bool = False,
) -> RankCounts:
    """Filtered rank counts of the tail queries (h, r, t), scored chunk by chunk.

    A batch's chunk scores are all kept until counting: the target's score is read from the
    chunk that holds t, so it is the very number the candidates are compared with and genuine
    ties stay exact (a separate 1-candidate call could differ in the last bit). Chunking
    therefore bounds the scorer's working memory, not the (B, N) scores of a batch.
    """
    if num_entities < 1 or batch_size < 1 or (chunk_size is not None and chunk_size < 1):
        raise DistmapError(
            "num_entities, batch_size and chunk_size must be positive, "
            f"got {num_entities}, {batch_size} and {chunk_size}"
        )
    step = num_entities if chunk_size is None else chunk_size
    ranges = [(lo, min(lo + step, num_entities)) for lo in range(0, num_entities, step)]
    parts = []
    for batch in tqdm(queries.long().split(batch_size), desc="ranking", unit="batch", disable=not progress):
        h, r, t = batch.unbind(dim=1)
        chunks = [_score_chunk(scorer, h, r, lo, hi) for lo, hi in ranges]
        _check_no_nan(chunks)
        t = t.to(chunks[0].device)
        target = torch.zeros(len(batch), dtype=chunks[0].dtype, device=t.device)
        for chunk, (lo, hi) in zip(chunks, ranges, strict=True):
            column = (t - lo).clamp(0, hi - lo - 1).unsqueeze(1)
            target = torch.where((t >= lo) & (t < hi), chunk.gather(1, column).squeeze(1), target)
        counts = RankCounts(torch.zeros_like(t), torch.zeros_like(t))
        targets_filtered = torch.zeros((), dtype=torch.long, device=t.device)
        for chunk, (lo, hi) in zip(chunks, ranges, strict=True):
            rows, cols = (x.to(t.device) for x in filter_index.answers(h, r, lo, hi))
            counts = counts + count_chunk(chunk, target, rows, cols)
            targets_filtered += (cols == t[rows] - lo).sum()
        missing = len(batch) - int(targets_filtered)
        if missing:
            raise DistmapError(
                f"{missing} of {len(batch)} evaluated triples are not in the filter index; "
                "build it from train + valid + test with reciprocal relations"
            )
        parts.append(counts)
    if not parts:
        empty = torch.zeros(0, dtype=torch.long, device=queries.device)
        return RankCounts(empty, empty)
    return RankCounts.cat(parts)


def _score_chunk(scorer: Scorer, h: Tensor, r: Tensor, lo: int, hi: int) -> Tensor:
    scores = scorer(h, r, lo, hi)
    if scores.shape != (len(h), hi - lo):
        raise ValueError(
            f"scorer returned shape {tuple(scores.shape)} for entities [{lo}, {hi}), expected {(len(h), hi - lo)}"
        )
    return scores


def _check_no_nan(chunks: Sequence[Tensor]) -> None:
    """NaN compares false with everything, so it would silently rank a query first; refuse it."""
    nan_rows = torch.stack([c.isnan().any(dim=1) for c in chunks]).any(dim=0)
    if nan_rows.any():
        raise DistmapError(
            f"the model produced NaN scores for {int(nan_rows.sum())} of {len(nan_rows)} queries in a batch"
        )


def _check_tie(tie: str) -> None:
    if tie not in get_args(TieBreak):
        raise DistmapError(f"unknown tie policy {tie!r}; expected one of {', '.join(get_args(TieBreak))}")


def rank_metrics(ranks: Tensor) -> dict[str, float]:
    """MRR, MR and Hits@{1,3,10} of 1-based ranks (fractional realistic ranks allowed)."""
    ranks = ranks.double()
    metrics = {"mrr": float(ranks.reciprocal().mean()), "mr": float(ranks.mean())}
    metrics.update({f"hits@{k}": float((ranks <= k).double().mean()) for k in HITS_AT})
    return metrics


@dataclass(frozen=True)
class EvalResult:
    """Filtered metrics per direction ("tail", "head", "both"), the tie policy that made them, and the raw counts."""

    tie: TieBreak
    metrics: Mapping[str, Mapping[str, float]]
    counts: Mapping[str, RankCounts]

    @classmethod
    def from_counts(cls, counts: Mapping[str, RankCounts], tie: TieBreak) -> EvalResult:
        """Metrics of the tail and head counts under ``tie``; "both" pools all queries."""
        _check_tie(tie)
        metrics = {d: rank_metrics(counts[d].ranks(tie)) for d in ("tail", "head")}
        metrics["both"] = rank_metrics(RankCounts.cat([counts["tail"], counts["head"]]).ranks(tie))
        return cls(tie=tie, metrics=metrics, counts=counts)

    def with_tie(self, tie: TieBreak) -> EvalResult:
        """The same ranking under another tie policy (no re-scoring: the counts hold all three)."""
        return EvalResult.from_counts(self.counts, tie)

    def flat(self) -> dict[str, float]:
        """``{"tail/mrr": ..., "both/hits@10": ...}``, the shape metric loggers want."""
        return {f"{d}/{m}": v for d, values in self.metrics.items() for m, v in values.items()}

    def table(self) -> str:
        """A small text table; it names the tie policy because ranks depend on it."""
        n = len(self.counts["tail"])
        header = f"{'':<6}{'MRR':>8}{'MR':>10}" + "".join(f"{f'Hits@{k}':>9}" for k in HITS_AT)
        lines = [f"filtered ranking of {n} triples, ties: {self.tie}", header]
        for direction in DIRECTIONS:
            m = self.metrics[direction]
            hits = "".join(f"{m[f'hits@{k}']:>9.4f}" for k in HITS_AT)
            lines.append(f"{direction:<6}{m['mrr']:>8.4f}{m['mr']:>10.2f}{hits}")
        return "\n".join(lines)


def both_directions(triples: Tensor, num_relations: int) -> Tensor:
    """Tail queries (h, r, t) followed by head queries asked as (t, r + R, h)."""
    h, r, t = triples.unbind(dim=1)
    return torch.cat([triples, torch.stack([t, r + num_relations, h], dim=1)])


@torch.no_grad()
def evaluate(
    scorer: Scorer,
    triples: Tensor,
    *,
    num_relations: int,
    filter_index: FilterIndex,
    num_entities: int,
    tie: TieBreak = "realistic",
    batch_size: int = 1000,
    chunk_size: int | None = None,
    progress: bool = False,
) -> EvalResult:
    """Rank a raw split (no reciprocals) in both directions: tails of (h, r, ?) and heads via (t, r + R, ?).

    "both" averages over all 2n queries, as PyKEEN and kbc report it.
    """
    _check_tie(tie)
    if triples.ndim != 2 or triples.shape[1] != 3 or len(triples) == 0:
        raise DistmapError(f"evaluation triples must have shape (n, 3) with n > 0, got {tuple(triples.shape)}")
    triples = triples.long()
    h, r, t = triples.unbind(dim=1)
    if ((r < 0) | (r >= num_relations)).any():
        raise DistmapError(f"evaluation triples have relation ids outside [0, {num_relations})")
    if ((h < 0) | (h >= num_entities) | (t < 0) | (t >= num_entities)).any():
        raise DistmapError(f"evaluation triples have entity ids outside [0, {num_entities})")
    queries = both_directions(triples, num_relations)
    both = rank_queries(
        scorer, queries, filter_index, num_entities, batch_size=batch_size, chunk_size=chunk_size, progress=progress
    )
    n = len(triples)
    return EvalResult.from_counts({"tail": both[:n], "head": both[n:]}, tie)
