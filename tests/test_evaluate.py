"""The ruler: hand-computed ranks, chunking invariance, agreement with PyKEEN, filter-index hygiene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from distmap.errors import DistmapError
from distmap.train.evaluate import (
    FilterIndex,
    RankCounts,
    count_chunk,
    evaluate,
    rank_metrics,
    rank_queries,
)

TIES = ("optimistic", "pessimistic", "realistic")


def with_reciprocals(triples: Tensor, num_relations: int) -> Tensor:
    h, r, t = triples.unbind(dim=1)
    return torch.cat([triples, torch.stack([t, r + num_relations, h], dim=1)])


def table_scorer(table: Tensor):
    """Scores looked up in a fixed (N, 2R, N) table: table[h, r] is the row of all tails."""

    def scorer(h: Tensor, r: Tensor, lo: int, hi: int) -> Tensor:
        return table[h, r, lo:hi]

    return scorer


def random_graph(seed: int, num_entities: int, num_relations: int, n: int) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    triples = torch.stack(
        [
            torch.randint(0, num_entities, (n,), generator=g),
            torch.randint(0, num_relations, (n,), generator=g),
            torch.randint(0, num_entities, (n,), generator=g),
        ],
        dim=1,
    ).unique(dim=0)
    triples = triples[torch.randperm(len(triples), generator=g)]
    a, b = len(triples) // 2, 3 * len(triples) // 4
    return triples[:a], triples[a:b], triples[b:]


def random_table(seed: int, num_entities: int, num_relations: int, decimals: int | None) -> Tensor:
    """Scores in [0, 1); rounding them to one decimal makes many exact ties."""
    g = torch.Generator().manual_seed(seed)
    table = torch.rand(num_entities, 2 * num_relations, num_entities, generator=g)
    return table if decimals is None else table.mul(10**decimals).round().div(10**decimals)


# --- 1. hand-computed ranks ------------------------------------------------------------------

N, R = 5, 2
TRAIN = torch.tensor([[0, 0, 1], [0, 0, 2], [1, 1, 3]])
VALID = torch.tensor([[2, 1, 3]])
# Entity 4 appears only in the test split.
TEST = torch.tensor([[0, 0, 3], [4, 1, 3]])


def hand_table() -> Tensor:
    table = torch.full((N, 2 * R, N), 100.0)  # rows no query reads; 100 would dominate any rank
    # tail (0, 0, ?), target 3 at 0.5. Known tails 1 (train, 0.9 > 0.5) and 2 (train) are
    # filtered; 0 and unseen 4 tie with the target: gt = 0, eq = 2.
    table[0, 0] = torch.tensor([0.5, 0.9, 0.1, 0.5, 0.5])
    # head (?, 0, 3) = (3, 0 + R, ?), target 0 at 0.2. Nothing else known: 1, 2, 3 above, 4 ties.
    table[3, 0 + R] = torch.tensor([0.2, 0.7, 0.7, 0.3, 0.2])
    # tail (4, 1, ?), target 3 at 1.0: 0 above, 1 and 2 tie, 4 below: gt = 1, eq = 2.
    table[4, 1] = torch.tensor([2.0, 1.0, 1.0, 1.0, 0.5])
    # head (?, 1, 3) = (3, 1 + R, ?), target 4 at 0.3. Known heads 1 (train, 0.8) and 2 (valid,
    # 0.9) outscore it but are filtered; only 3 (0.4) is above: gt = 1, eq = 0.
    table[3, 1 + R] = torch.tensor([0.1, 0.8, 0.9, 0.4, 0.3])
    return table


EXPECTED_RANKS = {
    # (tail ranks, head ranks) of the two test triples
    "optimistic": ([1.0, 2.0], [4.0, 2.0]),
    "pessimistic": ([3.0, 4.0], [5.0, 2.0]),
    "realistic": ([2.0, 3.0], [4.5, 2.0]),
}

EXPECTED_METRICS = {
    "realistic": {
        "tail": {"mrr": (1 / 2 + 1 / 3) / 2, "mr": 2.5, "hits@1": 0.0, "hits@3": 1.0, "hits@10": 1.0},
        "head": {"mrr": (1 / 4.5 + 1 / 2) / 2, "mr": 3.25, "hits@1": 0.0, "hits@3": 0.5, "hits@10": 1.0},
        "both": {
            "mrr": (1 / 2 + 1 / 3 + 1 / 4.5 + 1 / 2) / 4,
            "mr": 11.5 / 4,
            "hits@1": 0.0,
            "hits@3": 0.75,
            "hits@10": 1.0,
        },
    },
    "optimistic": {
        "both": {"mrr": (1 + 1 / 2 + 1 / 4 + 1 / 2) / 4, "mr": 9 / 4, "hits@1": 0.25, "hits@3": 0.75, "hits@10": 1.0},
    },
    "pessimistic": {
        "both": {
            "mrr": (1 / 3 + 1 / 4 + 1 / 5 + 1 / 2) / 4,
            "mr": 14 / 4,
            "hits@1": 0.0,
            "hits@3": 0.5,
            "hits@10": 1.0,
        },
    },
}


def hand_filter() -> FilterIndex:
    return FilterIndex.build(with_reciprocals(torch.cat([TRAIN, VALID, TEST]), R), N)


@pytest.mark.parametrize("tie", TIES)
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_hand_computed_ranks_and_metrics(tie: str, chunk_size: int | None) -> None:
    result = evaluate(
        table_scorer(hand_table()),
        TEST,
        num_relations=R,
        filter_index=hand_filter(),
        num_entities=N,
        tie=tie,
        chunk_size=chunk_size,
    )
    tail, head = EXPECTED_RANKS[tie]
    assert result.counts["tail"].ranks(tie).tolist() == tail
    assert result.counts["head"].ranks(tie).tolist() == head
    assert result.counts["tail"].gt.tolist() == [0, 1]
    assert result.counts["tail"].eq.tolist() == [2, 2]
    assert result.counts["head"].gt.tolist() == [3, 1]
    assert result.counts["head"].eq.tolist() == [1, 0]
    for direction, expected in EXPECTED_METRICS[tie].items():
        assert result.metrics[direction] == pytest.approx(expected, rel=1e-12)
    assert result.tie == tie
    assert result.flat()["both/mrr"] == pytest.approx(EXPECTED_METRICS[tie]["both"]["mrr"])
    assert set(result.flat()) == {f"{d}/{m}" for d in ("tail", "head", "both") for m in result.metrics["tail"]}
    assert f"ties: {tie}" in result.table()


def test_rank_metrics_by_hand() -> None:
    metrics = rank_metrics(torch.tensor([1.0, 2.0, 4.0, 10.0, 11.0]))
    assert metrics == pytest.approx(
        {"mrr": (1 + 1 / 2 + 1 / 4 + 1 / 10 + 1 / 11) / 5, "mr": 28 / 5, "hits@1": 0.2, "hits@3": 0.4, "hits@10": 0.8}
    )


def test_count_chunk_leaves_scores_untouched() -> None:
    scores = torch.tensor([[0.5, 0.9, 0.1, 0.5, 0.5]])
    before = scores.clone()
    counts = count_chunk(scores, torch.tensor([0.5]), torch.tensor([0, 0, 0]), torch.tensor([1, 2, 3]))
    assert (counts.gt.tolist(), counts.eq.tolist()) == ([0], [2])
    assert torch.equal(scores, before)


# --- 2. chunked == unchunked -----------------------------------------------------------------


def test_chunked_equals_unchunked() -> None:
    """Scores rounded to one decimal: ties that straddle chunk borders must count the same."""
    num_entities, num_relations = 23, 3
    train, valid, test = random_graph(1, num_entities, num_relations, 80)
    index = FilterIndex.build(with_reciprocals(torch.cat([train, valid, test]), num_relations), num_entities)
    scorer = table_scorer(random_table(2, num_entities, num_relations, decimals=1))
    queries = with_reciprocals(test, num_relations)
    reference = rank_queries(scorer, queries, index, num_entities, batch_size=len(queries))
    assert reference.eq.sum() > 0, "rounded scores should tie"
    for chunk_size in (1, 3, 7, num_entities, num_entities + 5):
        for batch_size in (1, 4):
            counts = rank_queries(scorer, queries, index, num_entities, batch_size=batch_size, chunk_size=chunk_size)
            assert torch.equal(counts.gt, reference.gt), (chunk_size, batch_size)
            assert torch.equal(counts.eq, reference.eq), (chunk_size, batch_size)


def test_counts_of_disjoint_ranges_add_up() -> None:
    """What a sharded table relies on: per-range counts summed equal the whole-range counts."""
    num_entities, num_relations = 23, 3
    train, valid, test = random_graph(3, num_entities, num_relations, 80)
    index = FilterIndex.build(with_reciprocals(torch.cat([train, valid, test]), num_relations), num_entities)
    table = random_table(4, num_entities, num_relations, 1)
    h, r, t = test.unbind(dim=1)
    target = table[h, r, t]
    whole = count_chunk(table[h, r], target, *index.answers(h, r, 0, num_entities))
    parts = [count_chunk(table[h, r, lo:hi], target, *index.answers(h, r, lo, hi)) for lo, hi in [(0, 9), (9, 23)]]
    summed = parts[0] + parts[1]
    assert torch.equal(summed.gt, whole.gt)
    assert torch.equal(summed.eq, whole.eq)
    joined = RankCounts.cat([whole[:2], whole[2:]])
    assert torch.equal(joined.gt, whole.gt)
    assert torch.equal(joined.eq, whole.eq)


# --- 3. agreement with PyKEEN ----------------------------------------------------------------


class TableModel:
    """Just enough of a PyKEEN model for ``Evaluator.evaluate``: ``predict`` returns table rows.

    Head prediction answers (?, r, t) with the reciprocal row table[t, r + R], the same number
    our scorer gives for the query (t, r + R, ?), so both rankers see identical scores.
    """

    device = torch.device("cpu")

    def __init__(self, table: Tensor, num_relations: int) -> None:
        self.table, self.num_relations, self.num_entities = table, num_relations, table.shape[0]

    def eval(self) -> TableModel:
        return self

    def to(self, device: torch.device) -> TableModel:
        return self

    def predict(self, hrt_batch: Tensor, target: str, **kwargs: object) -> Tensor:
        h, r, t = hrt_batch.unbind(dim=1)
        rows = self.table[h, r] if target == "tail" else self.table[t, r + self.num_relations]
        return rows.clone()


@pytest.mark.filterwarnings("ignore:Encountered tensors on device_types")
@pytest.mark.parametrize(("seed", "decimals"), [(5, None), (6, 1), (7, 1)])
def test_agrees_with_pykeen(seed: int, decimals: int | None) -> None:
    # PyKEEN's full ``RankBasedEvaluator.evaluate`` (filtered=True) does its own filtering:
    # create_sparse_positive_filter_ on test + additional_filter_triples=[train, valid] (no
    # reciprocals), filter_scores_ sets known answers to NaN, the target score is written
    # back, and Ranks.from_scores counts > and >= the target.
    from pykeen.evaluation import RankBasedEvaluator

    num_entities, num_relations = 31, 3
    train, valid, test = random_graph(seed, num_entities, num_relations, 200)
    table = random_table(seed + 100, num_entities, num_relations, decimals)
    evaluator = RankBasedEvaluator(filtered=True, clear_on_finalize=False)
    theirs = evaluator.evaluate(
        TableModel(table, num_relations), test, batch_size=16, additional_filter_triples=[train, valid], use_tqdm=False
    )
    index = FilterIndex.build(with_reciprocals(torch.cat([train, valid, test]), num_relations), num_entities)
    for tie in TIES:
        ours = evaluate(
            table_scorer(table),
            test,
            num_relations=num_relations,
            filter_index=index,
            num_entities=num_entities,
            tie=tie,
            batch_size=16,
            chunk_size=8,
        )
        for side in ("tail", "head"):
            expected = np.concatenate(evaluator.ranks[side, tie])
            np.testing.assert_array_equal(ours.counts[side].ranks(tie).numpy(), expected)
        for side in ("tail", "head", "both"):
            assert ours.metrics[side]["mrr"] == pytest.approx(
                theirs.get_metric(f"{side}.{tie}.inverse_harmonic_mean_rank"), rel=1e-6
            )
            assert ours.metrics[side]["mr"] == pytest.approx(
                theirs.get_metric(f"{side}.{tie}.arithmetic_mean_rank"), rel=1e-6
            )
            for k in (1, 3, 10):
                assert ours.metrics[side][f"hits@{k}"] == pytest.approx(
                    theirs.get_metric(f"{side}.{tie}.hits_at_{k}"), rel=1e-6
                )
        if decimals is not None:
            assert ours.counts["tail"].eq.sum() + ours.counts["head"].eq.sum() > 0, "rounded scores should tie"


# --- 4. FilterIndex --------------------------------------------------------------------------


def test_filter_index_answers_and_storage_unchanged() -> None:
    known = torch.tensor([[0, 0, 1], [0, 0, 4], [0, 0, 2], [0, 0, 4], [3, 1, 0], [3, 1, 3], [2, 0, 4], [0, 1, 2]])
    index = FilterIndex.build(known, num_entities=5)
    storage = [index.keys.clone(), index.offsets.clone(), index.tails.clone()]
    h, r = torch.tensor([0, 3, 1, 0, 2, 1]), torch.tensor([0, 1, 0, 0, 0, 2])
    for _ in range(50):
        rows, cols = index.answers(h, r, 1, 4)
        pairs = sorted(zip(rows.tolist(), cols.tolist(), strict=True))
        # entity 4 is outside [1, 4); (1, 0) is unknown; duplicates are dropped. Relation 2 is out of
        # range: its key 1 * 2 + 2 would collide with (2, 0)'s without the range guard.
        assert pairs == [(0, 0), (0, 1), (1, 2), (3, 0), (3, 1)]
        cols += 100  # results are fresh tensors: scribbling on them must not reach the index
    rows, cols = index.answers(h, r, 0, 5)
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [
        (0, 1),
        (0, 2),
        (0, 4),
        (1, 0),
        (1, 3),
        (3, 1),
        (3, 2),
        (3, 4),
        (4, 4),
    ]
    for before, after in zip(storage, (index.keys, index.offsets, index.tails), strict=True):
        assert torch.equal(before, after)


def test_filter_index_rejects_bad_ids() -> None:
    with pytest.raises(DistmapError, match="outside"):
        FilterIndex.build(torch.tensor([[0, 0, 5]]), num_entities=5)


def test_evaluating_twice_gives_the_same_result() -> None:
    index, scorer = hand_filter(), table_scorer(hand_table())
    first = evaluate(scorer, TEST, num_relations=R, filter_index=index, num_entities=N)
    second = evaluate(scorer, TEST, num_relations=R, filter_index=index, num_entities=N)
    assert first.metrics == second.metrics


# --- 5. errors ---------------------------------------------------------------------------------


def test_nan_scores_raise() -> None:
    table = hand_table()
    table[4, 1, 2] = float("nan")
    with pytest.raises(DistmapError, match="NaN scores for 1 of"):
        evaluate(table_scorer(table), TEST, num_relations=R, filter_index=hand_filter(), num_entities=N)


def test_triples_missing_from_filter_raise() -> None:
    index = FilterIndex.build(with_reciprocals(torch.cat([TRAIN, VALID]), R), N)
    with pytest.raises(DistmapError, match="not in the filter index"):
        evaluate(table_scorer(hand_table()), TEST, num_relations=R, filter_index=index, num_entities=N)


def test_unknown_tie_policy_raises() -> None:
    with pytest.raises(DistmapError, match="tie policy"):
        evaluate(
            table_scorer(hand_table()), TEST, num_relations=R, filter_index=hand_filter(), num_entities=N, tie="mean"
        )
