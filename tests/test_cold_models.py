"""Entities that structure cannot place: ranked from their features (``model.cold``).

The maths of the pieces is checked against direct computations (the dropout hash, the fused row
of an entity without a structural view); a tiny graph whose edges follow feature clusters checks
the behaviour: an entity with no train triple is ranked near the top from its features alone by
the multimodal default, and not by structure-only ComplEx.
"""

from __future__ import annotations

import pytest
import torch

from distmap.config import ColdConfig, ModelConfig
from distmap.data.batches import QueryGroups
from distmap.data.kg import add_reciprocals, entity_degrees
from distmap.errors import DistmapError
from distmap.models.modalities import Fusion
from distmap.models.model import dropped_rows, step_key
from distmap.models.multimodal import FeatureRows
from distmap.models.zoo import build_model
from distmap.train.evaluate import FilterIndex, evaluate
from distmap.train.loop import local_step, run_epoch
from distmap.train.objective import Objective


def test_dropped_rows_is_a_fair_partition_independent_coin() -> None:
    ids = torch.arange(200_000)
    for p in (0.1, 0.3, 0.7):
        share = dropped_rows(ids, key=12345, p=p).double().mean().item()
        assert share == pytest.approx(p, abs=0.005)
    whole = dropped_rows(ids, 7, 0.3)
    # any subset of rows, asked in any order, draws what the whole range draws: workers agree
    perm = torch.randperm(len(ids))[:5000]
    assert torch.equal(dropped_rows(ids[perm], 7, 0.3), whole[perm])
    # another step draws another set, about independently
    other = dropped_rows(ids, 8, 0.3)
    assert (whole & other).double().mean().item() == pytest.approx(0.09, abs=0.005)
    assert step_key(torch.tensor([3, 1, 2])) != step_key(torch.tensor([1, 2, 3]))


N, D = 9, 4


def tiny_model(cold: ColdConfig, seen: torch.Tensor, fusion: str = "auto") -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    present = torch.ones(N, dtype=torch.bool)
    present[8] = False  # no feature: keeps its structural row whatever else
    values = torch.randn(N, D, generator=g) * present[:, None]
    cfg = ModelConfig(name="map", rank=3, init_scale=0.5, cold=cold, fusion=fusion)
    return build_model(
        cfg,
        N,
        2,
        seed=1,
        modalities=["text"],
        read_features=lambda m, a, b: FeatureRows(values[a:b], present[a:b]),
        seen=seen,
    )


@pytest.mark.parametrize("fusion", ["learned", "weighted", "gate", "attention", "structure"])
def test_unseen_entities_are_their_projected_features(fusion: str) -> None:
    seen = torch.tensor([True] * 6 + [False] * 3)  # 6, 7 unseen with text; 8 unseen without
    model = tiny_model(ColdConfig(unseen="projection"), seen, fusion)
    views = model.views()
    assert views.structured.tolist() == [True] * 6 + [False, False, True]
    text, _ = model.feature_rows("text")
    # the fused row of an unseen entity is what a new entity with its text gets
    torch.testing.assert_close(views.fused[6:8], model.unseen_rows({"text": text[6:8]}))
    if fusion in ("learned", "weighted"):  # all the fusion's weight on the one view it has
        torch.testing.assert_close(views.fused[6:8], model.fusion.total * views.projected["text"][6:8])
    if fusion == "structure":  # the projection stands in where there is no structural row, nowhere else
        torch.testing.assert_close(views.fused[6:8], views.projected["text"][6:8])
        torch.testing.assert_close(views.fused[:6], views.structure[:6])
        torch.testing.assert_close(views.fused[8], views.structure[8])
    # seen rows and the featureless one are fused as before
    table = tiny_model(ColdConfig(unseen="table"), seen, fusion)
    torch.testing.assert_close(views.fused[:6], table.views().fused[:6])
    torch.testing.assert_close(views.fused[8], table.views().fused[8])


def test_dropout_fuses_the_drawn_rows_without_structure() -> None:
    seen = torch.ones(N, dtype=torch.bool)
    model = tiny_model(ColdConfig(unseen="projection", dropout=0.5), seen)
    full = model.views()
    dropped = model.twin_views(full, 99)
    gone = dropped_rows(torch.arange(N), 99, 0.5) & model.has_feature
    assert 0 < int(gone.sum()) < N
    text, _ = model.feature_rows("text")
    torch.testing.assert_close(dropped.fused[gone], model.unseen_rows({"text": text[gone]}))
    torch.testing.assert_close(dropped.fused[~gone], full.fused[~gone])
    assert model.structure_dropout == 0.5
    # the views of some rows (the sampled objective's touched rows) drop what the whole block drops
    local = torch.tensor([1, 4, 5, 8])
    some = model.twin_views(model.row_views(model.structure()[local], local), 99)
    torch.testing.assert_close(some.fused, dropped.fused[local])


def test_twin_without_structure_gradient_trains_the_features_only() -> None:
    """``structure_grad: false``: the twin's fused rows are the same values, but its loss leaves the
    structural rows untouched (they learn from the full objective alone)."""
    seen = torch.ones(N, dtype=torch.bool)
    grads = {}
    for flag in (True, False):
        model = tiny_model(ColdConfig(unseen="projection", dropout=0.5, structure_grad=flag), seen)
        twin = model.twin_views(model.views(), 99)
        twin.fused.square().sum().backward()
        grads[flag] = (twin.fused.detach(), model.entities.weight.grad, model.projections["text"].net.weight.grad)
    torch.testing.assert_close(grads[True][0], grads[False][0])
    assert grads[True][1].abs().sum() > 0
    assert grads[False][1] is None
    torch.testing.assert_close(grads[True][2], grads[False][2])


def test_structure_fusion_stands_in_with_the_mean_of_the_projections() -> None:
    """``fusion: structure`` with two modalities: a row without a structural view is the mean of the
    projected views it has (one, if it has one); a row with one is its structural row alone."""
    views = [torch.randn(3, 2), torch.randn(3, 2), torch.randn(3, 2)]
    present = [torch.tensor([True, False, False]), torch.tensor([True, True, False]), torch.tensor([True, True, True])]
    fused = Fusion("structure", 3, 2, [1.0, 1.0, 1.0], 0)(views, present)
    torch.testing.assert_close(fused[0], views[0][0])
    torch.testing.assert_close(fused[1], (views[1][1] + views[2][1]) / 2)
    torch.testing.assert_close(fused[2], views[2][2])


@pytest.mark.parametrize("fusion", ["learned", "structure"])
def test_twin_training_projections_only_leaves_the_full_objective_alone(fusion: str) -> None:
    """``twin_trains: projections``: the twin's fused rows have the values of the plain twin, but its
    loss reaches nothing but the projections: the structural rows, the relations and the fusion get
    exactly the full objective's gradient, as without the twin; the projections get more."""
    seen = torch.tensor([True] * 7 + [False, True])
    train = torch.tensor([[0, 0, 1], [1, 1, 2], [2, 0, 3], [3, 1, 4], [4, 0, 5], [5, 1, 6], [6, 0, 8], [8, 1, 0]])
    groups = QueryGroups.build(add_reciprocals(train, 2), grouped=True)
    ids = torch.arange(groups.num_groups)
    objective = Objective("n3", 0.01)

    def grads(cold: ColdConfig) -> dict[str, torch.Tensor]:
        model = tiny_model(cold, seen, fusion)
        total, _, _ = local_step(model, groups, objective)(ids)
        total.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = grads(ColdConfig(unseen="projection", dropout=0.0))
    head = grads(ColdConfig(unseen="projection", dropout=0.5, twin_trains="projections"))
    twin = grads(ColdConfig(unseen="projection", dropout=0.5))
    assert set(head) == set(twin)
    for name, grad in head.items():
        if name.startswith("projections."):
            assert not torch.allclose(grad, plain.get(name, torch.zeros_like(grad))), name
        else:
            torch.testing.assert_close(grad, plain.get(name, torch.zeros_like(grad)), msg=name)
            if name in ("entities.weight", "relations"):
                assert not torch.allclose(grad, twin[name]), name  # the plain twin does reach them
    model = tiny_model(ColdConfig(unseen="projection", dropout=0.5, twin_trains="projections"), seen, fusion)
    same = tiny_model(ColdConfig(unseen="projection", dropout=0.5), seen, fusion)
    torch.testing.assert_close(model.twin_views(model.views(), 99).fused, same.twin_views(same.views(), 99).fused)


def test_unseen_rows_errors() -> None:
    model = tiny_model(ColdConfig(unseen="projection"), torch.ones(N, dtype=torch.bool))
    with pytest.raises(DistmapError, match="visual"):
        model.unseen_rows({"visual": torch.zeros(1, D)})
    with pytest.raises(DistmapError, match=r"\(1, 4\)"):
        model.unseen_rows({"text": torch.zeros(1, D + 1)})
    structural = build_model(ModelConfig(name="complex", rank=3), N, 2)
    with pytest.raises(DistmapError, match="no feature projection"):
        structural.unseen_rows({"text": torch.zeros(1, D)})


def cluster_graph() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """4 clusters of 8 members and a hub each; members link to their hub (``member_of``) and to two
    cluster mates (``near``). Features: the cluster's centre plus noise, hubs included. One member
    of each cluster is held out: all its triples go to test, so it has no train triple.
    Returns (train, test, features, held-out ids)."""
    g = torch.Generator().manual_seed(5)
    clusters, size, dim = 4, 8, 16
    centres = torch.randn(clusters, dim, generator=g)
    hubs = torch.arange(clusters) * (size + 1)  # entity ids: hub, then its members
    features, triples = [], []
    for c in range(clusters):
        features.append(centres[c] + 0.1 * torch.randn(dim, generator=g))
        members = hubs[c] + 1 + torch.arange(size)
        for i, m in enumerate(members.tolist()):
            features.append(centres[c] + 0.3 * torch.randn(dim, generator=g))
            triples.append((m, 0, int(hubs[c])))
            for step in (1, 2):
                triples.append((m, 1, int(members[(i + step) % size])))
    triples_t = torch.tensor(triples)
    held = hubs + 1  # the first member of each cluster
    cold = torch.isin(triples_t[:, 0], held) | torch.isin(triples_t[:, 2], held)
    return triples_t[~cold], triples_t[cold], torch.stack(features), held


def cold_ranks(cfg: ModelConfig, epochs: int = 60) -> torch.Tensor:
    """Filtered ranks of the held-out entities' test queries (they are query or answer of each)."""
    torch.manual_seed(0)
    train, test, values, _ = cluster_graph()
    num = len(values)
    present = torch.ones(num, dtype=torch.bool)
    model = build_model(
        cfg,
        num,
        2,
        seed=0,
        modalities=[] if cfg.name == "complex" else ["text"],
        read_features=lambda m, a, b: FeatureRows(values[a:b], present[a:b]),
        seen=entity_degrees(train, num) > 0,
    )
    groups = QueryGroups.build(add_reciprocals(train, 2), grouped=True)
    objective = Objective("n3", 0.01, dropout_loss=cfg.cold.loss, twin_weight=cfg.cold.weight)
    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        run_epoch(local_step(model, groups, objective), optimizer, groups, 32, generator, show_progress=False)
    model.eval()
    known = FilterIndex.build(add_reciprocals(torch.cat([train, test]), 2), num)
    result = evaluate(model.scorer(), test, num_relations=2, filter_index=known, num_entities=num)
    return torch.cat([result.counts["tail"].ranks(), result.counts["head"].ranks()])


def test_a_held_out_cluster_member_is_ranked_from_its_features() -> None:
    """36 entities, 40 test queries of the 4 held-out members: a chance ranking puts a quarter of
    the answers in the top 10 (mean rank ~17). ComplEx cannot place an entity it never saw, nor can
    the multimodal model that keeps its free structural row; the default ranks it from its features.
    (Which cluster mate a ``near`` query asks for, no feature tells: those stay ranked among the mates.)"""
    structural = cold_ranks(ModelConfig(name="complex", rank=8, init_scale=0.1))
    free_row = cold_ranks(ModelConfig(name="map", rank=8, init_scale=0.1, cold=ColdConfig(unseen="table", dropout=0)))
    default = cold_ranks(ModelConfig(name="map", rank=8, init_scale=0.1))
    top10 = {
        name: (ranks <= 10).double().mean().item()
        for name, ranks in (("complex", structural), ("table", free_row), ("default", default))
    }
    assert top10["complex"] < 0.4, top10
    assert top10["table"] < 0.55, top10
    assert top10["default"] > 0.7, top10
    assert default.mean() < 0.5 * structural.mean()


def test_a_held_out_member_is_ranked_by_projections_trained_beside_a_structural_model() -> None:
    """``fusion: structure`` with a twin that trains the projections only: the warm entities are
    ComplEx's structural rows, and the held-out members, never in a softmax, are ranked from the
    projections the twin taught to stand in for a structural row."""
    cold = ColdConfig(unseen="projection", dropout=0.3, negatives=False, twin_trains="projections")
    head = cold_ranks(ModelConfig(name="map", rank=8, init_scale=0.1, fusion="structure", cold=cold))
    assert (head <= 10).double().mean().item() > 0.7, head
