"""MAP with its terms on (lambda_align, lambda_preserve > 0; sampling, augmentation and perturbed views on)
where it matters: through ``fit()`` (it learns, every term reaches the logged loss, resume is exact);
through ``ShardedEngine`` at P = 2 (each worker's draws come from the seed, the terms of the workers are
a one-process computation per worker's block, resume is exact); on 2 Ray workers; under the sampled
objective against a direct computation; and ``FullAlignment`` against hand-computed plans."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ot
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

import distmap.train.fit as fit_module
from distmap.align.terms import FullAlignment, MinibatchAlignment, alignment_terms
from distmap.config import AlignConfig, ColdConfig, Config, ModelConfig, config_from_dict
from distmap.data.batches import QueryGroups
from distmap.data.kg import KnowledgeGraph, add_reciprocals
from distmap.distributed.collectives import free_port
from distmap.distributed.engine import ShardedEngine, move_into
from distmap.distributed.partition import row_ranges
from distmap.distributed.shard_checkpoint import COMMON, load_rows, newest_checkpoint
from distmap.distributed.sharded import sampled_step, sync_replicated_grads
from distmap.models.model import EntityViews, step_key
from distmap.models.multimodal import FeatureRows
from distmap.models.zoo import build_model
from distmap.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from distmap.train.fit import LocalEngine, fit, run
from distmap.train.objective import LossTerm, Objective
from distmap.train.sampled import CandidateSampler
from distmap.train.sparse import TableAdagrad

# MAP's terms as the tests switch them on: sub-distributions of 4 of a worker's batch entities plus 3
# uniform extras, Gaussian-perturbed projected views (all three draw from torch's global RNG).
MAP_ALIGN = {"lambda_align": 0.1, "lambda_preserve": 0.05, "sample": 4, "extra": 3, "perturb": 0.1}
CPU = torch.device("cpu")


def quiet(_: str) -> None:
    pass


def map_config(dataset: Path, out: Path, epochs: int, **sections: dict[str, Any]) -> Config:
    """MAP over the ring's visual and text rows with its terms on; ``sections`` update the defaults."""
    base: dict[str, dict[str, Any]] = {
        "data": {"path": str(dataset), "modalities": ["visual", "text"]},
        "model": {"name": "map", "rank": 8, "init_scale": 0.1},
        "align": MAP_ALIGN,
        "train": {"epochs": epochs, "batch_size": 32, "lr": 0.1, "reg_weight": 0.0, "valid_every": 1},
        "track": {"enabled": False, "output_dir": str(out)},
    }
    return config_from_dict({k: {**base.get(k, {}), **sections.get(k, {})} for k in base.keys() | sections.keys()})


@dataclass
class Recorded:
    """A loss term that keeps the value of every call (and passes it on unchanged)."""

    term: LossTerm
    values: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.name = self.term.name

    def __call__(self, views: EntityViews, rows: Tensor) -> Tensor:
        value = self.term(views, rows)
        self.values.append(value.item())
        return value


@dataclass
class DrawRecording(MinibatchAlignment):
    """MAP's alignment that keeps every sub-distribution it draws (local rows of its block)."""

    draws: list[Tensor] = field(default_factory=list)

    def rows(self, rows: Tensor, block: int) -> Tensor:
        chosen = super().rows(rows, block)
        self.draws.append(chosen.clone())
        return chosen


def recording(terms: Sequence[LossTerm]) -> tuple[Recorded, ...]:
    """``terms`` with their values recorded, the alignment's draws too."""
    out = []
    for term in terms:
        if type(term) is MinibatchAlignment:
            term = DrawRecording(**{f.name: getattr(term, f.name) for f in dataclasses.fields(term)})
        out.append(Recorded(term))
    return tuple(out)


def record_of(terms: Sequence[Recorded]) -> dict[str, Any]:
    return {
        "values": {t.name: t.values for t in terms},
        "draws": next(t.term.draws for t in terms if isinstance(t.term, DrawRecording)),
    }


def block_views(views: EntityViews, rows: Tensor | slice) -> EntityViews:
    """``views`` of some rows of the block, as a worker holding just those rows has them."""
    return EntityViews(
        0,
        views.structure[rows],
        views.fused[rows],
        {m: v[rows] for m, v in views.projected.items()},
        {m: v[rows] for m, v in views.present.items()},
        {m: v[rows] for m, v in views.features.items()},
        structured=None if views.structured is None else views.structured[rows],
    )


class PerWorker:
    """The P = 1 reference of MAP's terms on P workers: worker p applies them to its own block [a, b)
    and the batch's entities in it, drawing from its own torch RNG, which starts at the run's seed on
    every worker; the objective takes the mean over the workers. One stream per range, swapped in
    around the range's terms."""

    name = "per-worker"

    def __init__(self, align: AlignConfig, ranges: list[tuple[int, int]], seed: int) -> None:
        self.ranges = ranges
        self.parts = [recording(alignment_terms(align)) for _ in ranges]
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.streams = [torch.get_rng_state() for _ in ranges]
        self.sizes: list[list[int]] = [[] for _ in ranges]  # batch entities in each range, per step
        self.totals: list[float] = []

    def __call__(self, views: EntityViews, rows: Tensor) -> Tensor:
        total = views.structure.new_zeros(())
        outside = torch.get_rng_state()
        for p, (a, b) in enumerate(self.ranges):
            mine = rows[(rows >= a) & (rows < b)] - a
            self.sizes[p].append(len(mine))
            torch.set_rng_state(self.streams[p])
            total = total + sum(term(block_views(views, slice(a, b)), mine) for term in self.parts[p])
            self.streams[p] = torch.get_rng_state()
        torch.set_rng_state(outside)
        total = total / len(self.ranges)
        self.totals.append(total.item())
        return total


# ---------------------------------------------------------------- fit() on one process


def test_fit_with_map_terms_learns_and_logs_every_term(
    ring_multimodal_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without N3 and the structural-view dropout, the logged loss minus the logged cross-entropy is
    exactly the terms: per step (the step's logged loss) and per epoch (history and MLflow, per-triple
    means over the epoch's steps). Both terms are nonzero, and the training loss falls."""
    terms: list[Recorded] = []
    steps: list[tuple[int, float]] = []  # (triples, logged loss - cross-entropy) of every step
    run_epoch = fit_module.run_epoch

    def recorded_terms(cfg: AlignConfig) -> tuple[Recorded, ...]:
        terms.extend(recording(alignment_terms(cfg)))
        return tuple(terms)

    def recorded_epoch(step: Any, optimizer: Any, groups: QueryGroups, *args: Any, **kwargs: Any) -> Any:
        def wrapped(ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            loss, logged, fit_loss = step(ids)
            steps.append((int(groups.sizes(ids).sum()), (logged - fit_loss).item()))
            return loss, logged, fit_loss

        return run_epoch(wrapped, optimizer, groups, *args, **kwargs)

    monkeypatch.setattr(fit_module, "alignment_terms", recorded_terms)
    monkeypatch.setattr(fit_module, "run_epoch", recorded_epoch)
    cfg = map_config(
        ring_multimodal_dataset,
        tmp_path / "runs",
        4,
        model={"cold": {"dropout": 0.0}},
        track={"enabled": True, "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "map"},
    )
    result = fit(cfg, log=quiet)

    history = result.history
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < history[0]["loss"]
    assert [t.name for t in terms] == ["align", "preserve"]
    align, preserve = (torch.tensor(t.values) for t in terms)
    assert len(align) == len(preserve) == len(steps) > 0
    assert len(steps) % 4 == 0
    assert (align > 0).all(), align
    assert (preserve > 0).all(), preserve
    assert history[0]["loss"] - history[0]["fit_loss"] > 0.01  # the terms are a visible part of the loss
    # every step's logged loss holds its terms
    torch.testing.assert_close(torch.tensor([s[1] for s in steps]), align + preserve, rtol=0, atol=1e-5)
    # every epoch's logged loss holds the per-triple mean of its steps' terms
    per_epoch = len(steps) // 4
    for epoch, h in enumerate(history):
        chunk = steps[epoch * per_epoch : (epoch + 1) * per_epoch]
        terms_sum = (
            align[epoch * per_epoch : (epoch + 1) * per_epoch] + preserve[epoch * per_epoch : (epoch + 1) * per_epoch]
        )
        triples = torch.tensor([float(n) for n, _ in chunk])
        assert triples.sum() == 144  # the ring's 72 train triples with reciprocals
        expected = float((triples * terms_sum.double()).sum() / triples.sum())
        assert h["loss"] - h["fit_loss"] == pytest.approx(expected, abs=1e-5), epoch

    import mlflow  # here, not at the top: the spawned workers import this module and need neither it nor Ray

    client = mlflow.MlflowClient(tracking_uri=cfg.track.tracking_uri)
    (logged,) = client.search_runs([client.get_experiment_by_name("map").experiment_id])
    for key in ("loss", "fit_loss"):
        metric = sorted(client.get_metric_history(logged.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in metric] == [1, 2, 3, 4]
        assert [m.value for m in metric] == pytest.approx([h[key] for h in history], rel=1e-12)


def test_fit_with_map_terms_resumes_exactly(ring_multimodal_dataset: Path, tmp_path: Path) -> None:
    """2 epochs, a checkpoint, resumed to 4 = 4 epochs straight, bit for bit (the structural-view
    dropout's twin objective on too, as the cold-start configs train)."""
    twin = {"name": "map", "rank": 8, "init_scale": 0.1, "cold": {"dropout": 0.3}}
    straight = fit(map_config(ring_multimodal_dataset, tmp_path / "a", 4, model=twin), log=quiet)
    fit(map_config(ring_multimodal_dataset, tmp_path / "b", 2, model=twin), log=quiet)
    messages: list[str] = []
    resumed = fit(map_config(ring_multimodal_dataset, tmp_path / "b", 4, model=twin), log=messages.append)
    assert any("resuming" in m and "epoch 2" in m for m in messages)

    a = load_checkpoint(straight.run_dir / CHECKPOINT_NAME)
    b = load_checkpoint(resumed.run_dir / CHECKPOINT_NAME)
    assert a["model"].keys() == b["model"].keys()
    assert any(k.startswith("projections.") for k in a["model"])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in ("loss", "fit_loss"):
        assert [h[key] for h in resumed.history] == [h[key] for h in straight.history], key
    assert resumed.test.metrics == straight.test.metrics


# ---------------------------------------------------------------- ShardedEngine, P = 2


def sharded_run(rank: int, size: int, port: int, dataset: str, out: str, epochs: int, restore: bool) -> None:
    """One worker of a P-worker run through ``ShardedEngine`` and ``run`` (validation and a checkpoint
    every epoch), its terms recorded; restores from the newest checkpoint under ``out``/ckpt."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        torch.set_num_threads(1)
        cfg = map_config(Path(dataset), Path(out), epochs)
        root = Path(out) / "ckpt"
        restore_from = newest_checkpoint(root) if restore else None
        engine = ShardedEngine(cfg, KnowledgeGraph.load(dataset), CPU, restore_from, move_into(root))
        terms = recording(engine.objective.terms)
        engine.objective = dataclasses.replace(engine.objective, terms=terms)
        result = run(engine, cfg, log=quiet, chief=rank == 0)
        last = newest_checkpoint(root)
        torch.save(
            {
                **record_of(terms),
                "history": result.history,
                "metrics": result.test.metrics,
                "range": (engine.lo, engine.hi),
                "rows": load_rows(last, engine.lo, engine.hi)[0]["weight"],  # the last epoch's rows
                "replicated": load_checkpoint(last / COMMON)["replicated"],
            },
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def launch(dataset: Path, out: Path, epochs: int, restore: bool = False, size: int = 2) -> list[dict[str, Any]]:
    args = (size, free_port(), str(dataset), str(out), epochs, restore)
    mp.spawn(sharded_run, args=args, nprocs=size, join=True)
    return [torch.load(out / f"rank{p}.pt", weights_only=False) for p in range(size)]


@pytest.fixture(scope="module")
def straight_p2(ring_multimodal_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """2 epochs of MAP with its terms on 2 workers."""
    return launch(ring_multimodal_dataset, tmp_path_factory.mktemp("p2-straight"), 2)


def test_sharded_map_terms_equal_a_per_worker_reference_in_one_process(
    straight_p2: list[dict[str, Any]], ring_multimodal_dataset: Path, tmp_path: Path
) -> None:
    """P = 2 with sampling, augmentation and perturbed views against one process that applies the terms
    to each worker's block from that worker's own RNG stream (``PerWorker``): every step, each worker
    drew the same sub-distribution and got the same term values, their mean is the reference's term,
    and two epochs end at the same losses, rows and replicated weights."""
    cfg = map_config(ring_multimodal_dataset, tmp_path / "one", 2)
    kg = KnowledgeGraph.load(ring_multimodal_dataset)
    engine = LocalEngine(cfg, kg, CPU, tmp_path / "one" / CHECKPOINT_NAME)
    ranges = row_ranges(kg.num_entities, 2)
    reference = PerWorker(cfg.align, ranges, cfg.train.seed)
    engine.objective = dataclasses.replace(engine.objective, terms=(reference,))
    losses = [engine.train_epoch(f"reference {e}").loss for e in range(2)]

    assert [w["range"] for w in straight_p2] == ranges
    assert max(max(s) for s in reference.sizes) > MAP_ALIGN["sample"]  # sampling is on: a strict subset
    for worker, part in zip(straight_p2, reference.parts, strict=True):
        expected = record_of(part)
        assert len(worker["draws"]) == len(expected["draws"])
        for step, (x, y) in enumerate(zip(worker["draws"], expected["draws"], strict=True)):
            assert torch.equal(x, y), step
            assert len(x) <= MAP_ALIGN["sample"] + MAP_ALIGN["extra"]
        assert len({tuple(d.tolist()) for d in worker["draws"]}) > 1
        for name, values in expected["values"].items():
            torch.testing.assert_close(
                torch.tensor(worker["values"][name]), torch.tensor(values), rtol=1e-5, atol=1e-6, msg=name
            )
    # the objective's term of every step: the mean over the workers of their terms
    summed = sum(
        torch.tensor(worker["values"]["align"]) + torch.tensor(worker["values"]["preserve"]) for worker in straight_p2
    )
    torch.testing.assert_close(summed / 2, torch.tensor(reference.totals), rtol=1e-5, atol=1e-6)

    assert [h["loss"] for h in straight_p2[0]["history"]] == pytest.approx(losses, rel=1e-5)
    rows = torch.cat([w["rows"] for w in straight_p2])
    torch.testing.assert_close(rows, engine.model.entities.weight.detach(), rtol=1e-5, atol=1e-5)
    for name, value in straight_p2[0]["replicated"].items():
        torch.testing.assert_close(value, dict(engine.model.named_parameters())[name].detach(), rtol=1e-5, atol=1e-5)


def test_sharded_map_terms_draw_again_from_the_seed_and_resume_exactly(
    straight_p2: list[dict[str, Any]], ring_multimodal_dataset: Path, tmp_path: Path
) -> None:
    """A second run on 2 workers draws every worker's sub-distributions of epoch 1 again, with the same
    term values and loss, bit for bit; checkpointed there and resumed on 2 workers to 2 epochs, each
    worker draws what the uninterrupted run drew, and losses, rows and metrics match it bit for bit."""
    first = launch(ring_multimodal_dataset, tmp_path, 1)
    for worker, straight in zip(first, straight_p2, strict=True):
        steps = len(worker["draws"])
        assert 0 < steps == len(straight["draws"]) // 2
        assert all(torch.equal(x, y) for x, y in zip(worker["draws"], straight["draws"][:steps], strict=True))
        for name, values in worker["values"].items():
            assert values == straight["values"][name][:steps], name
        assert worker["history"][0]["loss"] == straight["history"][0]["loss"]

    resumed = launch(ring_multimodal_dataset, tmp_path, 2, restore=True)
    for worker, straight in zip(resumed, straight_p2, strict=True):
        steps = len(worker["draws"])  # the resumed run's draws: epoch 2 only
        assert 0 < steps == len(straight["draws"]) // 2
        assert all(torch.equal(x, y) for x, y in zip(worker["draws"], straight["draws"][steps:], strict=True))
        for name, values in worker["values"].items():
            assert values == straight["values"][name][steps:], name
        assert [h["loss"] for h in worker["history"]] == [h["loss"] for h in straight["history"]]
        assert torch.equal(worker["rows"], straight["rows"])
        assert worker["metrics"] == straight["metrics"]


# ---------------------------------------------------------------- 2 Ray workers


def flat(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{d}/{k}": v for d, values in metrics.items() for k, v in values.items()}


def test_map_terms_train_one_epoch_on_two_ray_workers_and_the_checkpoint_restores(
    ring_multimodal_dataset: Path, short_dir: Path
) -> None:
    from distmap.distributed.trainer import absolute_paths, fit_distributed

    cfg = map_config(
        ring_multimodal_dataset, short_dir / "runs", 1, track={"run_name": "ray-map"}, scale={"workers": 2}
    )
    summary = fit_distributed(cfg, log=quiet)
    assert summary["epochs_run"] == 1
    metrics = flat(summary["test"])
    assert all(math.isfinite(v) for v in metrics.values())
    assert all(0 < metrics[f"{d}/mrr"] <= 1 for d in ("head", "tail", "both"))

    saved = newest_checkpoint(short_dir / "runs" / "ray_results" / "ray-map")
    assert saved is not None
    common = load_checkpoint(saved / COMMON)
    (record,) = common["history"]
    assert all(math.isfinite(v) for v in record.values())
    assert record["loss"] > record["fit_loss"] > 0
    rng = common["worker_rng"]  # each worker's own RNG state: their terms drew differently
    assert rng.shape[0] == 2
    assert not torch.equal(rng[0], rng[1])

    # The sharded checkpoint restores in one process: same rows, same epoch, the same test metrics.
    engine = ShardedEngine(absolute_paths(cfg), KnowledgeGraph.load(cfg.data.path), CPU, saved, move_into(short_dir))
    progress = engine.load()
    assert progress is not None
    assert progress.epoch == 1
    rows, _ = load_rows(saved, 0, engine.kg.num_entities)
    assert torch.equal(engine.model.entities.weight.detach(), rows["weight"])
    engine.use_best()
    assert flat(engine.evaluate("test").metrics) == pytest.approx(flat(summary["test"]), abs=1e-5)


# ---------------------------------------------------------------- the sampled objective

N, R, S, REG, TERM_SEED = 36, 3, 12, 0.01, 17
# The structural rows not a fixed target, and neighbourhoods kept on the fused rows: both terms reach the
# entity rows the step gathers, as well as the projections and fusion weights.
SAMPLED_TERMS = AlignConfig(
    lambda_align=0.5,
    lambda_preserve=0.5,
    sample=6,
    extra=4,
    perturb=0.1,
    detach_structure=False,
    preserve_view="fused",
)


def sampled_triples() -> Tensor:
    g = torch.Generator().manual_seed(0)
    heads, tails = torch.randint(0, N, (120,), generator=g), torch.randint(0, N, (120,), generator=g)
    return torch.stack([heads, torch.randint(0, R, (120,), generator=g), tails], dim=1)


def sampled_batch() -> tuple[QueryGroups, Tensor]:
    groups = QueryGroups.build(add_reciprocals(sampled_triples(), R))
    return groups, torch.arange(0, groups.num_groups, 3)


def sampled_model(lo: int, hi: int, cold: bool) -> torch.nn.Module:
    """MAP (learned fusion) over synthetic text (6-d, 3 entities without) and visual (5-d) rows; ``cold``:
    every 7th entity unseen and the structural-view dropout's twin objective."""
    g = torch.Generator().manual_seed(7)
    present = torch.ones(N, dtype=torch.bool)
    present[[2, 9, 30]] = False
    rows = {
        "text": FeatureRows(torch.randn(N, 6, generator=g) * present[:, None], present),
        "visual": FeatureRows(torch.randn(N, 5, generator=g), torch.ones(N, dtype=torch.bool)),
    }
    cold_cfg = ColdConfig(unseen="projection", dropout=0.3) if cold else ColdConfig(unseen="table", dropout=0.0)
    return build_model(
        ModelConfig(name="map", rank=4, init_scale=0.3, fusion="learned", cold=cold_cfg),
        N,
        R,
        seed=3,
        entity_range=(lo, hi),
        modalities=["text", "visual"],
        read_features=lambda m, a, b: FeatureRows(rows[m].values[a:b], rows[m].present[a:b]),
        seen=torch.arange(N) % 7 != 0,
    )


class Gathered(TableAdagrad):
    """Keeps the step's gathered leaf, so the test reads the gradient each touched row received."""

    def gather(self, table: Tensor, rows: Tensor) -> Tensor:
        leaf = super().gather(table, rows)
        self.gathered = (rows, leaf)
        return leaf


def grads_of(model: torch.nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if n != "entities.weight" and p.grad is not None}


def sampled_map_step(rank: int, size: int, cold: bool) -> dict[str, Any]:
    """Loss and gradients of one sampled step with MAP's terms, this worker's torch RNG at ``TERM_SEED``."""
    lo, hi = row_ranges(N, size)[rank]
    model = sampled_model(lo, hi, cold)
    table = Gathered([model.entities.weight], 0.1, rowwise=False)
    groups, ids = sampled_batch()
    objective = Objective("n3", REG, terms=alignment_terms(SAMPLED_TERMS))
    step = sampled_step(model, groups, objective, table, CandidateSampler(5), S)
    torch.manual_seed(TERM_SEED)
    loss, logged, _ = step(ids)
    loss.backward()
    sync_replicated_grads(model)()
    rows, leaf = table.gathered
    grad = torch.zeros(hi - lo, leaf.shape[1]).index_add_(0, rows, leaf.grad)
    return {"loss": logged.item(), "grad": grad, **grads_of(model)}


def sampled_direct(size: int, cold: bool, align: AlignConfig = SAMPLED_TERMS) -> dict[str, Any]:
    """The same step written out in one process: every worker's candidates scored at once, the corrected
    softmax by ``log_softmax`` (``cold``: plus the twin on the rows with the step's structural views
    dropped), plus, for each worker, the terms on the rows it touches (its batch entities and drawn
    candidates) from its RNG at ``TERM_SEED``, averaged over the workers; gradients by autograd through
    the whole table, projections and fusion."""
    model = sampled_model(0, N, cold)
    groups, ids = sampled_batch()
    batch = groups.select(ids)
    h, r = batch.queries.unbind(1)
    ends, entities, true = torch.cat([h, batch.tails]), batch.entities(), torch.unique(batch.tails)
    ranges, draws = row_ranges(N, size), [b - a for a, b in row_ranges(S, size)]
    columns, correction, is_true, touched = [], [], [], []
    for (lo, hi), count in zip(ranges, draws, strict=True):
        drawn = CandidateSampler(5).draw(lo, hi, count)  # each worker's sampler is at its first step
        mine = true[(true >= lo) & (true < hi)]
        columns += [mine, drawn]
        hit = torch.isin(drawn, true)
        correction += [torch.zeros(len(mine)), torch.where(hit, -math.inf, math.log((hi - lo) / count))]
        is_true += [torch.ones(len(mine), dtype=torch.bool), torch.zeros(count, dtype=torch.bool)]
        touched.append(torch.unique(torch.cat([ends[(ends >= lo) & (ends < hi)], drawn])))
    union, shift, is_true_ = torch.cat(columns), torch.cat(correction), torch.cat(is_true)
    target = torch.stack([((union == t) & is_true_).nonzero().squeeze() for t in batch.tails])
    pq = batch.pair_query

    def fit_on(fused: Tensor) -> Tensor:
        q = model.interaction.query(fused[h], model.relations[r])
        nll = -torch.log_softmax(model.interaction.score(q, fused[union]) + shift, dim=1)[pq, target]
        factors = model.interaction.factors(fused[h][pq], model.relations[r][pq], fused[batch.tails])
        return nll.mean() + Objective("n3", REG).penalty(factors, len(nll))

    views = model.views()
    loss = fit_on(views.fused)
    if cold:
        loss = loss + fit_on(model.twin_views(views, step_key(ids)).fused)
    terms = views.structure.new_zeros(())
    for (lo, hi), rows in zip(ranges, touched, strict=True):
        torch.manual_seed(TERM_SEED)
        mine = torch.searchsorted(rows, entities[(entities >= lo) & (entities < hi)])
        terms = terms + sum(term(block_views(views, rows), mine) for term in alignment_terms(align))
    loss = loss + terms / size
    loss.backward()
    return {"loss": loss.item(), "terms": terms.item() / size, "grad": model.entities.weight.grad, **grads_of(model)}


def sampled_worker(rank: int, size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        torch.set_num_threads(1)
        steps = {cold: sampled_map_step(rank, size, cold) for cold in (False, True)}
        torch.save(steps, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def sampled_p2(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, list[dict[str, Any]]]:
    """Both variants' sampled step on 2 workers (one spawn): cold -> the workers' results."""
    out = tmp_path_factory.mktemp("sampled-p2")
    mp.spawn(sampled_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    workers = [torch.load(out / f"rank{p}.pt", weights_only=False) for p in range(2)]
    return {cold: [w[cold] for w in workers] for cold in (False, True)}


@pytest.mark.parametrize(("size", "cold"), [(1, False), (2, False), (2, True)], ids=["P1", "P2", "P2-cold-twin"])
def test_sampled_step_with_map_terms_equals_a_direct_computation(
    size: int, cold: bool, request: pytest.FixtureRequest
) -> None:
    """The sampled step with alignment (sample, extras from the touched rows, perturbed views) and
    instance preserving: loss and the gradients of the touched rows, relations, projections and fusion
    weights equal the direct computation; the terms move those gradients well beyond the tolerance."""
    reference = sampled_direct(size, cold)
    without = sampled_direct(size, cold, AlignConfig())
    assert reference["terms"] > 0.05
    assert reference["loss"] == pytest.approx(without["loss"] + reference["terms"], rel=1e-6)
    assert (reference["grad"] - without["grad"]).abs().max() > 1e-3
    workers = [sampled_map_step(0, 1, cold)] if size == 1 else request.getfixturevalue("sampled_p2")[cold]
    replicated = sorted(k for k in reference if k not in ("loss", "terms", "grad"))
    assert {k.split(".")[0] for k in replicated} >= {"relations", "projections", "fusion"}
    for k in replicated:
        if k.startswith("projections."):
            assert (reference[k] - without[k]).abs().max() > 1e-3, k
    for w in workers:
        assert w["loss"] == pytest.approx(reference["loss"], rel=1e-5)
        assert sorted(k for k in w if k not in ("loss", "grad")) == replicated
        for k in replicated:
            torch.testing.assert_close(w[k], reference[k], rtol=1e-4, atol=1e-6, msg=k)
    torch.testing.assert_close(torch.cat([w["grad"] for w in workers]), reference["grad"], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- FullAlignment by hand

# Three entities: projected p_i, structural s_j. The plan sends p0 -> s1, p1 -> s0, p2 -> s2 (mass 1/3
# each; squared costs 0.5, 0.5, 1.0); every other matching costs at least 8 more.
S_ROWS = [[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]
P_ROWS = [[3.5, 0.5], [0.5, 0.5], [0.0, 3.0]]
MATCH = [1, 0, 2]


def full_views(projected: Tensor, structure: Tensor, present: Tensor, structured: Tensor | None = None) -> EntityViews:
    return EntityViews(0, structure, structure, {"text": projected}, {"text": present}, {}, structured=structured)


@pytest.mark.parametrize("detach_structure", [True, False])
@pytest.mark.parametrize("left_out", ["no text", "no structural row"])
def test_full_alignment_is_the_hand_computed_transport_cost(detach_structure: bool, left_out: str) -> None:
    """``weight * <P, C>`` over the entities with both views (a 4th entity, far away, has no text or no
    structural row and stays out); gradients ``2 w P_ij (p_i - s_j)`` on the projected rows, and the
    opposite on the structural rows when they are not the fixed target."""
    weight = 0.7
    structure = torch.tensor([*S_ROWS, [9.0, 9.0]], dtype=torch.float64, requires_grad=True)
    projected = torch.tensor([*P_ROWS, [-20.0, 7.0]], dtype=torch.float64, requires_grad=True)
    both = torch.tensor([True, True, True, False])
    everyone = torch.ones(4, dtype=torch.bool)
    views = (
        full_views(projected, structure, both, everyone)
        if left_out == "no text"
        else full_views(projected, structure, everyone, both)
    )
    cost = torch.cdist(projected[:3], structure[:3]).detach() ** 2
    plan = torch.zeros(3, 3, dtype=torch.float64)
    plan[torch.arange(3), MATCH] = 1 / 3
    uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
    torch.testing.assert_close(torch.as_tensor(ot.emd(uniform, uniform, cost)), plan)  # POT agrees

    term = FullAlignment(weight, "exact", 0.05, plan_every=1, detach_structure=detach_structure)
    value = term(views, torch.arange(4))
    assert value.item() == pytest.approx(weight * (0.5 + 0.5 + 1.0) / 3, rel=1e-12)
    value.backward()
    moved = torch.zeros(4, 2, dtype=torch.float64)
    moved[:3] = 2 * weight / 3 * (projected[:3] - structure[MATCH]).detach()
    torch.testing.assert_close(projected.grad, moved, rtol=1e-12, atol=1e-12)
    if detach_structure:
        assert structure.grad is None
    else:
        pulled = torch.zeros(4, 2, dtype=torch.float64)
        pulled[MATCH] = -moved[:3]
        torch.testing.assert_close(structure.grad, pulled, rtol=1e-12, atol=1e-12)


def test_full_alignment_of_random_points_is_the_best_matching() -> None:
    """With uniform weights on n = n points the optimal plan is a matching (Birkhoff): the term is the
    weight times the cheapest matching's mean squared distance, which is also POT's ``emd2``."""
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        projected = torch.randn(3, 4, generator=g, dtype=torch.float64)
        structure = torch.randn(3, 4, generator=g, dtype=torch.float64)
        value = FullAlignment(2.0, "exact", 0.05, plan_every=1)(
            full_views(projected, structure, torch.ones(3, dtype=torch.bool)), torch.arange(3)
        )
        cost = torch.cdist(projected, structure) ** 2
        best = min(sum(cost[i, j] for i, j in enumerate(match)) / 3 for match in itertools.permutations(range(3)))
        assert value.item() == pytest.approx(2.0 * float(best), rel=1e-10)
        uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
        assert value.item() == pytest.approx(2.0 * float(ot.emd2(uniform, uniform, ot.dist(projected, structure))))


def test_full_alignment_holds_its_plan_for_plan_every_steps() -> None:
    """``plan_every: 2``: step 0 solves the plan, step 1 prices the moved rows with it, step 2 re-solves."""
    structure = torch.tensor(S_ROWS, dtype=torch.float64)
    before = torch.tensor(P_ROWS, dtype=torch.float64)
    after = before[[1, 0, 2]]  # rows 0 and 1 swap places: the best matching is now the identity
    present = torch.ones(3, dtype=torch.bool)
    term = FullAlignment(1.0, "exact", 0.05, plan_every=2)
    values = [term(full_views(p, structure, present), torch.arange(3)).item() for p in (before, after, after, before)]
    stale = (12.5 + 12.5 + 1.0) / 3  # the other matching's plan on the swapped rows
    assert values == pytest.approx([2.0 / 3, stale, 2.0 / 3, stale], rel=1e-12)
    term.restart()  # a new epoch: the held plan is dropped and the next step solves afresh
    assert term(full_views(after, structure, present), torch.arange(3)).item() == pytest.approx(2.0 / 3, rel=1e-12)


@pytest.mark.parametrize("plan_every", [1, 3])
def test_full_alignment_through_fit_resumes_exactly(
    ring_multimodal_dataset: Path, tmp_path: Path, plan_every: int
) -> None:
    """``align.scope: full`` through ``fit()``: 2 epochs, a checkpoint, resumed to 3 = 3 epochs straight."""

    def config(out: Path, epochs: int) -> Config:
        align = {"scope": "full", "lambda_align": 1.0, "plan_every": plan_every}
        return map_config(ring_multimodal_dataset, out, epochs, align=align)

    straight = fit(config(tmp_path / "a", 3), log=quiet)
    fit(config(tmp_path / "b", 2), log=quiet)
    resumed = fit(config(tmp_path / "b", 3), log=quiet)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    a = load_checkpoint(straight.run_dir / CHECKPOINT_NAME)["model"]
    b = load_checkpoint(resumed.run_dir / CHECKPOINT_NAME)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
