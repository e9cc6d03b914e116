"""Row-sharded training over a gloo process group equals single-process training.

Workers are plain processes (torch.multiprocessing) on 127.0.0.1: the maths of sharding is
tested here without Ray; the Ray wiring has its own tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distmap.align.terms import alignment_terms
from distmap.config import AlignConfig, ColdConfig, ModelConfig, OTKGEConfig
from distmap.data.batches import QueryGroups
from distmap.data.kg import add_reciprocals
from distmap.distributed.collectives import free_port
from distmap.distributed.partition import owners, row_ranges
from distmap.distributed.sharded import evaluate_sharded, sharded_step, sync_replicated_grads
from distmap.models.model import EntityViews
from distmap.models.multimodal import FeatureRows
from distmap.models.zoo import build_model
from distmap.train.evaluate import FilterIndex, evaluate
from distmap.train.loop import StepLoss, local_step, run_epoch
from distmap.train.objective import LossTerm, Objective
from tests.conftest import random_triples

N, R, STEPS_BATCH = 37, 3, 48


def graph() -> tuple[torch.Tensor, torch.Tensor]:
    triples = random_triples(160, N, R, N, seed=0)
    return triples[:120], triples[120:]


def recording(step: StepLoss, losses: list[float]) -> StepLoss:
    def wrapped(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, logged, fit = step(index)
        losses.append(logged.item())
        return loss, logged, fit

    return wrapped


FEATURES = {"text": 6, "visual": 5}


def features() -> dict[str, FeatureRows]:
    """Synthetic feature rows for every entity, a few marked "no feature"."""
    g = torch.Generator().manual_seed(11)
    out = {}
    for i, (m, dim) in enumerate(FEATURES.items()):
        present = torch.rand(N, generator=g) > 0.15 + 0.1 * i
        out[m] = FeatureRows(torch.randn(N, dim, generator=g) * present[:, None], present)
    return out


class PerRange:
    """A loss term applied to each worker range's own rows, as P workers apply it: the P = 1 reference
    for terms over sub-distributions (deterministic ones: no sampling)."""

    name = "per-range"

    def __init__(self, term: LossTerm, ranges: list[tuple[int, int]]) -> None:
        self.term, self.ranges = term, ranges

    def __call__(self, views: EntityViews, rows: torch.Tensor) -> torch.Tensor:
        total = views.structure.new_zeros(())
        for a, b in self.ranges:
            part = EntityViews(
                a,
                views.structure[a:b],
                views.fused[a:b],
                {m: v[a:b] for m, v in views.projected.items()},
                {m: v[a:b] for m, v in views.present.items()},
                {m: v[a:b] for m, v in views.features.items()},
                structured=None if views.structured is None else views.structured[a:b],
            )
            total = total + self.term(part, rows[(rows >= a) & (rows < b)] - a)
        return total / len(self.ranges)  # P workers average their terms


VARIANTS = {  # name -> (model config, modalities, alignment)
    "complex": (ModelConfig(name="complex", rank=4, init_scale=0.3), [], None),
    "transe": (ModelConfig(name="transe", rank=4, init_scale=0.3), [], None),
    "map-base": (ModelConfig(name="map", rank=4, init_scale=0.3), ["text", "visual"], None),
    "otkge": (
        ModelConfig(name="otkge", rank=4, init_scale=0.3, otkge=OTKGEConfig(anchors=3, scale=1.0)),
        ["text"],
        None,
    ),
    "map-aligned": (
        ModelConfig(name="map", rank=4, init_scale=0.3),
        ["text", "visual"],
        AlignConfig(lambda_align=0.5, lambda_preserve=0.5, sample=0, extra=0),
    ),
    "map-cold-twin": (
        ModelConfig(
            name="map", rank=4, init_scale=0.3, cold=ColdConfig(unseen="projection", dropout=0.3, negatives=False)
        ),
        ["text", "visual"],
        None,
    ),
    "map-cold-head": (  # the structural row where there is one; the twin trains the stand-in projections only
        ModelConfig(
            name="map",
            rank=4,
            init_scale=0.3,
            fusion="structure",
            cold=ColdConfig(unseen="projection", dropout=0.3, negatives=False, twin_trains="projections"),
        ),
        ["text", "visual"],
        None,
    ),
    "map-cold-replace": (
        ModelConfig(
            name="map", rank=4, init_scale=0.3, cold=ColdConfig(unseen="projection", dropout=0.3, loss="replace")
        ),
        ["text", "visual"],
        None,
    ),
}
SEEN = torch.arange(N) % 5 != 0  # the entities with a structural row under ``cold.unseen: projection``


def train(
    name: str, rank: int, world_size: int, epochs: int = 2, grouped: bool = True, reference_for: int = 1
) -> dict[str, object]:
    """Two epochs of Adagrad on the toy graph, sharded when ``world_size`` > 1; then evaluation.

    ``reference_for``: with one worker, apply alignment terms per row range of that many workers.
    """
    train_triples, test_triples = graph()
    groups = QueryGroups.build(add_reciprocals(train_triples, R), grouped=grouped)
    lo, hi = row_ranges(N, world_size)[rank]
    cfg, modalities, align = VARIANTS[name]
    rows = features()
    model = build_model(
        cfg,
        N,
        R,
        seed=3,
        entity_range=(lo, hi),
        modalities=modalities,
        read_features=lambda m, a, b: FeatureRows(rows[m].values[a:b], rows[m].present[a:b]),
        seen=SEEN,
    )
    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.1)
    weight = torch.linspace(0.2, 1.0, N)
    terms = alignment_terms(align) if align else ()
    if world_size == 1 and reference_for > 1:
        terms = tuple(PerRange(t, row_ranges(N, reference_for)) for t in terms)
    objective = Objective(
        "n3",
        0.01,
        label_smoothing=0.1 if cfg.cold.negatives else 0.0,  # smoothing spreads mass over every entity
        class_weight=weight,
        terms=terms,
        dropout_loss=cfg.cold.loss,
        twin_weight=0.5,
    )
    generator = torch.Generator().manual_seed(7)
    losses: list[float] = []
    for _ in range(epochs):
        if world_size == 1:
            step = local_step(model, groups, objective)
            run_epoch(recording(step, losses), optimizer, groups, STEPS_BATCH, generator)
        else:
            step = sharded_step(model, groups, objective)
            run_epoch(
                recording(step, losses),
                optimizer,
                groups,
                STEPS_BATCH,
                generator,
                sync_grads=sync_replicated_grads(model),
                show_progress=False,
            )
    known = add_reciprocals(torch.cat([train_triples, test_triples]), R)
    result = evaluate_sharded(model, test_triples, num_relations=R, filter_index=FilterIndex.build(known, N))
    state = optimizer.state[model.entities.weight]["sum"]
    return {
        "losses": losses,
        "rows": model.entities.weight.detach().clone(),
        "relations": model.relations.detach(),
        "replicated": {n: p.detach() for n, p in model.named_parameters() if p is not model.entities.weight},
        "optimizer_rows": state.shape[0],
        "range": (lo, hi),
        "gt": result.counts["tail"].gt,
        "metrics": result.metrics,
    }


def _worker(rank: int, world_size: int, port: int, name: str, out: str, grouped: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.save(train(name, rank, world_size, grouped=grouped), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def flat(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{d}/{k}": v for d, values in metrics.items() for k, v in values.items()}


def run_sharded(name: str, world_size: int, tmp_path: Path, grouped: bool = True) -> list[dict[str, object]]:
    mp.spawn(_worker, args=(world_size, free_port(), name, str(tmp_path), grouped), nprocs=world_size, join=True)
    return [torch.load(tmp_path / f"rank{p}.pt", weights_only=False) for p in range(world_size)]


@pytest.mark.parametrize(
    ("name", "world_size", "grouped"),
    [
        ("complex", 2, True),
        ("complex", 3, True),
        ("transe", 2, True),
        ("complex", 2, False),
        ("map-base", 2, True),
        ("otkge", 3, True),
        ("map-aligned", 2, True),
        ("map-cold-twin", 2, True),
        ("map-cold-head", 2, True),
        ("map-cold-replace", 3, True),
    ],
)
def test_sharded_workers_match_one(name: str, world_size: int, grouped: bool, tmp_path: Path) -> None:
    """Grouped (default) and per-triple loops, structural and multimodal models, MAP's terms with each
    worker's sub-distribution fixed (its own rows of the batch): P workers give the losses, rows,
    replicated weights and metrics of one process."""
    single = train(name, 0, 1, grouped=grouped, reference_for=world_size)
    workers = run_sharded(name, world_size, tmp_path, grouped)
    for w in workers:
        torch.testing.assert_close(torch.tensor(w["losses"]), torch.tensor(single["losses"]), rtol=1e-5, atol=1e-5)
        for key, value in single["replicated"].items():
            torch.testing.assert_close(w["replicated"][key], value, rtol=1e-5, atol=1e-5)
        assert flat(w["metrics"]) == pytest.approx(flat(single["metrics"]), abs=1e-6)
    rows = torch.cat([w["rows"] for w in workers])
    torch.testing.assert_close(rows, single["rows"], rtol=1e-5, atol=1e-5)
    # each worker holds its share of the rows and of their optimizer state
    assert [w["range"] for w in workers] == row_ranges(N, world_size)
    for w in workers:
        lo, hi = w["range"]
        assert w["rows"].shape[0] == hi - lo == w["optimizer_rows"]
        assert abs((hi - lo) - N / world_size) <= 1
    groups = QueryGroups.build(add_reciprocals(graph()[0], R), grouped=grouped)
    assert len(single["losses"]) == 2 * -(-groups.num_groups // STEPS_BATCH)
    assert (groups.num_groups < 240) == grouped  # the toy graph has queries with several tails


def test_row_ranges_and_owners() -> None:
    assert row_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert row_ranges(2, 3) == [(0, 1), (1, 2), (2, 2)]
    ids = torch.arange(10)
    assert owners(ids, row_ranges(10, 3)).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_sharded_evaluation_equals_evaluator_without_a_group() -> None:
    train_triples, test_triples = graph()
    model = build_model(ModelConfig(name="complex", rank=4, init_scale=0.3), N, R, seed=1)
    known = FilterIndex.build(add_reciprocals(torch.cat([train_triples, test_triples]), R), N)
    a = evaluate_sharded(model, test_triples, num_relations=R, filter_index=known)
    b = evaluate(model.score, test_triples, num_relations=R, filter_index=known, num_entities=N)
    assert torch.equal(a.counts["tail"].gt, b.counts["tail"].gt)
    assert a.metrics == b.metrics
