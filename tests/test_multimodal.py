"""Multimodal models on synthetic features: shapes and finite losses, masks honoured, OTKGE's fused
table against a hand computation, and the alignment / instance-preserving terms doing their job."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from distmap.align.ot import transport_cost, wasserstein_exact
from distmap.align.preserve import instance_preserving
from distmap.align.terms import alignment_terms
from distmap.config import AlignConfig, ModelConfig, OTKGEConfig
from distmap.data.batches import QueryGroups
from distmap.data.kg import add_reciprocals
from distmap.models.multimodal import FeatureRows
from distmap.models.zoo import build_model
from distmap.train.loop import local_step
from distmap.train.objective import Objective
from tests.conftest import random_triples

N, R = 30, 3
DIMS = {"text": 12, "visual": 8}
MISSING = {"text": [3, 7, 20], "visual": [0, 5]}  # entities without that feature


def features(seed: int = 0) -> dict[str, FeatureRows]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, dim in DIMS.items():
        present = torch.ones(N, dtype=torch.bool)
        present[MISSING[m]] = False
        values = torch.randn(N, dim, generator=g) * present[:, None]
        out[m] = FeatureRows(values, present)
    return out


def reader(rows: dict[str, FeatureRows]):
    return lambda m, lo, hi: FeatureRows(rows[m].values[lo:hi], rows[m].present[lo:hi])


def groups() -> QueryGroups:
    return QueryGroups.build(add_reciprocals(random_triples(80, N, R, N, seed=1), R))


MODELS = {
    "complex": ModelConfig(name="complex", rank=4),
    "map": ModelConfig(name="map", rank=4),
    "otkge": ModelConfig(name="otkge", rank=4, otkge=OTKGEConfig(anchors=3, scale=1.0)),
    "ikrl": ModelConfig(name="ikrl", rank=4),
    "tbkge": ModelConfig(name="tbkge", rank=4),
    "transae": ModelConfig(name="transae", rank=4),
    "mmkrl": ModelConfig(name="mmkrl", rank=4, adversarial_eps=0.1),
    "map-mlp-gate": ModelConfig(name="map", rank=4, projection="mlp", fusion="gate"),
    "map-attention": ModelConfig(name="map", rank=4, fusion="attention"),
}
MAP_TERMS = AlignConfig(lambda_align=0.5, lambda_preserve=0.5, sample=16, extra=4)


def make(key: str, modalities: list[str], rows: dict[str, FeatureRows] | None = None):
    cfg = MODELS[key].__class__(**{**MODELS[key].__dict__, "init_scale": 0.3})
    return build_model(cfg, N, R, seed=2, modalities=modalities, read_features=reader(rows or features()))


@pytest.mark.parametrize("key", list(MODELS))
@pytest.mark.parametrize("modalities", [["text"], ["text", "visual"]])
def test_forward_backward_shapes_and_finite_loss(key: str, modalities: list[str]) -> None:
    model = make(key, modalities)
    g = groups()
    ids = torch.arange(0, g.num_groups, 3)
    batch = g.select(ids)
    scores, factors, views = model(batch)
    assert scores.shape == (len(ids), N)
    assert all(f.shape[0] == len(batch.tails) for f in factors)
    assert set(views.projected) == set(modalities)
    objective = Objective("n3", 0.01, terms=alignment_terms(MAP_TERMS) if key.startswith("map") else ())
    loss, _, fit = local_step(model, g, objective)(ids)
    assert torch.isfinite(loss)
    assert torch.isfinite(fit)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads.values()), [
        n for n, gr in grads.items() if gr is None
    ]


@pytest.mark.parametrize("key", list(MODELS))
def test_a_masked_entity_does_not_depend_on_its_feature_row(key: str) -> None:
    before, after = features(), features()
    for m, rows in MISSING.items():
        after[m].values[rows] = 1000.0  # garbage in the rows marked "no feature"
    modalities = ["text", "visual"]
    a, b = make(key, modalities, before), make(key, modalities, after)
    h, r = torch.arange(N), torch.arange(N) % (2 * R)
    torch.testing.assert_close(a.score(h, r, 0, N), b.score(h, r, 0, N))
    batch = groups().select(torch.arange(5))
    assert torch.equal(a.auxiliary_loss(a.views(), batch.entities()), b.auxiliary_loss(b.views(), batch.entities()))


def sinkhorn_by_hand(cost: torch.Tensor, reg: float, iterations: int = 1000) -> torch.Tensor:
    """Plain Sinkhorn-Knopp for uniform marginals, as OTKGE's sinkhorn_cal1.py writes it."""
    a, b = torch.full((cost.shape[0],), 1 / cost.shape[0]), torch.full((cost.shape[1],), 1 / cost.shape[1])
    K = torch.exp(-cost / reg)
    u = torch.ones_like(a)
    for _ in range(iterations):
        v = b / (K.T @ u)
        u = a / (K @ v)
    return u[:, None] * K * v[None, :]


def test_otkge_fused_table_matches_a_hand_computation() -> None:
    torch.set_default_dtype(torch.float64)
    try:
        rows = {m: FeatureRows(f.values.double(), f.present) for m, f in features().items()}
        cfg = ModelConfig(
            name="otkge",
            rank=2,
            init_scale=0.5,
            otkge=OTKGEConfig(alpha=0.1, gamma=0.7, anchors=2, scale=3.0, reg=10.0),
        )
        model = build_model(cfg, N, R, seed=4, modalities=["visual", "text"], read_features=reader(rows))
        with torch.no_grad():
            for d in model.deltas.values():
                d.normal_(0, 0.1)
        E = model.entities.weight.detach()
        expected = (1 - 0.1 - 0.7) * E
        for m, weight in (("visual", 0.1), ("text", 0.7)):
            anchors = [i for i in range(N) if rows[m].present[i]][:2]  # first entities having the modality
            plans = [sinkhorn_by_hand((rows[m].values[i][:, None] - E[i][None, :]) ** 2, 10.0) for i in anchors]
            W = torch.stack(plans).mean(0) * E.shape[1] * 3.0 + model.deltas[m].detach()
            expected = expected + weight * (rows[m].values @ W)
        # rows with every modality (the rest renormalise the weights over the views they have)
        present = [i for i in range(N) if rows["visual"].present[i] and rows["text"].present[i]]
        fused = model.views().fused.detach()
        torch.testing.assert_close(fused[present], expected[present], rtol=1e-6, atol=1e-8)
    finally:
        torch.set_default_dtype(torch.float32)


def test_minibatch_alignment_lowers_the_exact_wasserstein_distance() -> None:
    g = torch.Generator().manual_seed(0)
    structure = torch.randn(64, 2, generator=g) + torch.tensor([3.0, -2.0])
    features_ = torch.randn(64, 5, generator=g)
    projection = torch.nn.Linear(5, 2)
    before = wasserstein_exact(projection(features_), structure)
    optimizer = torch.optim.Adam(projection.parameters(), lr=0.05)
    for _ in range(200):
        batch = torch.randperm(64, generator=g)[:16]  # minibatch sub-distributions, as MAP
        loss = transport_cost(projection(features_[batch]), structure[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = wasserstein_exact(projection(features_), structure)
    assert after < 0.5 * before, (before, after)


def neighbourhood_agreement(raw: torch.Tensor, rows: torch.Tensor) -> float:
    """Correlation of the two pairwise-distance matrices (1 = same local structure)."""
    a, b = torch.pdist(raw), torch.pdist(rows)
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_instance_preserving_keeps_neighbourhoods_that_alignment_alone_scrambles() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 6, generator=g) * 4
    raw = (centres[:, None, :] + 0.3 * torch.randn(4, 8, 6, generator=g)).reshape(32, 6)  # 4 neighbourhoods
    structure = torch.randn(32, 6, generator=g)  # unrelated to the raw neighbourhoods
    results = {}
    for preserve in (0.0, 1.0):
        rows = raw.clone().requires_grad_()
        optimizer = torch.optim.Adam([rows], lr=0.05)
        for _ in range(300):
            loss = transport_cost(rows, structure) + preserve * 10 * instance_preserving(raw, rows, temperature=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        results[preserve] = (neighbourhood_agreement(raw, rows.detach()), wasserstein_exact(rows, structure))
    (scrambled, _), (kept, w_both) = results[0.0], results[1.0]
    assert scrambled < 0.5 < 0.7 < kept, results
    assert w_both < wasserstein_exact(raw, structure)  # it still aligns


def test_exact_plan_matches_pot() -> None:
    """Our ``wasserstein_exact`` is POT's exact LP (uniform weights), square-rooted."""
    x, y = np.random.default_rng(0).normal(size=(7, 3)), np.random.default_rng(1).normal(size=(9, 3))
    expected = ot.emd2(np.full(7, 1 / 7), np.full(9, 1 / 9), ot.dist(x, y)) ** 0.5
    assert wasserstein_exact(torch.tensor(x), torch.tensor(y)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("key", ["map", "map-mlp-gate"])
def test_terms_on_rows_projected_alone_equal_the_terms_on_the_whole_block(key: str) -> None:
    """MAP's terms project just the rows they use (``EntityViews.project_rows``: O(k) backward, not a
    dense block gradient); value and every parameter's gradient equal indexing the whole projected view."""
    terms = alignment_terms(MAP_TERMS)
    rows = torch.arange(0, N, 2)
    results = []
    for rowwise in (True, False):
        with torch.random.fork_rng():
            torch.manual_seed(5)  # the same sub-distribution draws both times
            model = make(key, ["text", "visual"]).double()
            views = model.views()
            assert views.project_rows is not None
            if not rowwise:
                views.project_rows = None
            loss = sum(term(views, rows) for term in terms)
            loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert grads_a.keys() == grads_b.keys()
    assert any(n.startswith("projections") for n in grads_a)
    for n in grads_a:
        torch.testing.assert_close(grads_a[n], grads_b[n], rtol=1e-9, atol=1e-12, msg=n)
