"""The grouped 1-vs-all loop: one score row per unique (h, r), the per-triple objective term for term."""

from __future__ import annotations

import pytest
import torch

from distmap.config import ModelConfig
from distmap.data.batches import QueryGroups
from distmap.data.kg import add_reciprocals
from distmap.models.zoo import build_model
from distmap.train.loop import local_step
from distmap.train.objective import Objective
from tests.conftest import random_triples

N, R = 23, 3


def examples() -> torch.Tensor:
    """Reciprocal training examples of a toy graph with many queries that have several tails."""
    return add_reciprocals(random_triples(90, 6, R, N, seed=0), R)


def test_groups_hold_every_example_once() -> None:
    ex = examples()
    groups = QueryGroups.build(ex)
    assert groups.num_triples == len(ex)
    assert groups.num_groups == len(torch.unique(ex[:, :2], dim=0)) < len(ex)
    for unit, size in (("queries", 7), ("triples", 20)):
        plan = groups.epoch(torch.Generator().manual_seed(1), size, unit)
        ids = torch.cat(plan)
        assert sorted(ids.tolist()) == list(range(groups.num_groups))  # every group once
        batch = groups.select(ids)
        seen = torch.cat([batch.queries[batch.pair_query], batch.tails[:, None]], dim=1)
        # an epoch visits every training triple exactly once (as a multiset: duplicates kept)
        assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, ex.tolist()))
        if unit == "triples":
            starts = torch.cumsum(torch.tensor([0] + [int(groups.sizes(p).sum()) for p in plan]), 0)[:-1]
            assert all(int(s) // size == k for k, s in enumerate(starts))  # each step starts in its window


def test_per_triple_groups_keep_the_old_order() -> None:
    """One group per example, in input order: the per-triple epoch draws exactly kbc's batches."""
    ex = examples()
    groups = QueryGroups.build(ex, grouped=False)
    plan = groups.epoch(torch.Generator().manual_seed(3), 50)
    order = torch.randperm(len(ex), generator=torch.Generator().manual_seed(3))
    for ids, want in zip(plan, order.split(50), strict=True):
        batch = groups.select(ids)
        assert torch.equal(torch.cat([batch.queries, batch.tails[:, None]], 1), ex[want])


@pytest.mark.parametrize("name", ["complex", "transe", "rotate", "distmult"])
def test_grouped_loss_and_gradients_equal_per_triple(name: str) -> None:
    """Float64: the same triples as whole groups or one by one give the same loss and every gradient."""
    torch.set_default_dtype(torch.float64)
    try:
        ex = examples()
        weight = torch.linspace(0.2, 1.0, N)
        objective = Objective("n3", 0.05, label_smoothing=0.1, class_weight=weight)
        grouped, single = QueryGroups.build(ex), QueryGroups.build(ex, grouped=False)
        ids = torch.arange(0, grouped.num_groups, 2)  # a batch of whole groups
        batch = grouped.select(ids)
        # the same triples one per group: the examples whose (h, r) is a query of the batch
        key = ex[:, 0] * 2 * R + ex[:, 1]
        single_ids = torch.isin(key, batch.queries[:, 0] * 2 * R + batch.queries[:, 1]).nonzero().squeeze(1)
        assert len(single_ids) == len(batch.tails)
        results = []
        for groups, step_ids in ((grouped, ids), (single, single_ids)):
            model = build_model(ModelConfig(name=name, rank=5, init_scale=0.5), N, R, seed=2)
            loss, _, fit = local_step(model, groups, objective)(step_ids)
            loss.backward()
            results.append((loss.detach(), fit, {k: p.grad.clone() for k, p in model.named_parameters()}))
        (loss_g, fit_g, grads_g), (loss_t, fit_t, grads_t) = results
        assert len(ids) < len(single_ids)  # fewer score rows for the same triples
        torch.testing.assert_close(loss_g, loss_t, rtol=0, atol=1e-10)
        torch.testing.assert_close(fit_g, fit_t, rtol=0, atol=1e-10)
        for key in grads_t:
            torch.testing.assert_close(grads_g[key], grads_t[key], rtol=0, atol=1e-10)
    finally:
        torch.set_default_dtype(torch.float32)
