"""The sampled objective and touched-rows updates: the sharded loss and gradients equal a direct
single-process softmax over the same candidates (P = 1, 2, 3), P = 2 trains as P = 1 on the same
candidate set, untouched rows and their optimizer state stay bit-identical, row-wise Adagrad is
the hand-computed step, and a bfloat16 table trains and resumes."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distmap.config import ColdConfig, ModelConfig, config_from_dict
from distmap.data.batches import QueryGroups
from distmap.data.features import import_features
from distmap.data.kg import KnowledgeGraph, add_reciprocals
from distmap.distributed.collectives import free_port
from distmap.distributed.engine import ShardedEngine, move_into
from distmap.distributed.partition import row_ranges
from distmap.distributed.shard_checkpoint import load_rows, newest_checkpoint
from distmap.distributed.sharded import sampled_step, sync_replicated_grads
from distmap.errors import ConfigError
from distmap.models.model import step_key
from distmap.models.multimodal import FeatureRows
from distmap.models.zoo import build_model
from distmap.train.checkpoint import CHECKPOINT_NAME
from distmap.train.fit import fit, make_optimizer, run
from distmap.train.loop import run_epoch
from distmap.train.objective import Objective
from distmap.train.sampled import CandidateSampler, sampled_candidates
from distmap.train.sparse import SplitOptimizer, TableAdagrad

N, R, S, REG = 36, 3, 12, 0.01  # N even: two workers' corrections log(18 / 6) equal one's log(36 / 12)


def graph() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    heads, tails = torch.randint(0, N, (120,), generator=g), torch.randint(0, N, (120,), generator=g)
    return torch.stack([heads, torch.randint(0, R, (120,), generator=g), tails], dim=1)


class Recording(TableAdagrad):
    """Keeps every gathered leaf, so a test can read the gradient each row received."""

    def gather(self, table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        leaf = super().gather(table, rows)
        self.gathered = (rows, leaf)
        return leaf


def first_batch() -> tuple[QueryGroups, torch.Tensor]:
    groups = QueryGroups.build(add_reciprocals(graph(), R))
    return groups, torch.arange(0, groups.num_groups, 3)  # every third group: some queries with several tails


def text_rows() -> FeatureRows:
    """Synthetic 6-wide text rows of all N entities, a few marked missing."""
    present = torch.ones(N, dtype=torch.bool)
    present[[2, 9, 30]] = False
    values = torch.randn(N, 6, generator=torch.Generator().manual_seed(7)) * present[:, None]
    return FeatureRows(values, present)


COLD = {  # the cold variants: every 7th entity unseen
    "twin": ColdConfig(unseen="projection", dropout=0.3),
    # the structural row where there is one, unseen entities out of the softmax, a twin training projections only
    "head": ColdConfig(unseen="projection", dropout=0.3, negatives=False, twin_trains="projections"),
}
WARM = ColdConfig(unseen="table", dropout=0.0)  # the plain fused model: every row has its structural view
SEEN_7 = torch.arange(N) % 7 != 0  # the train-seen entities of the cold variants (all of them have text)


def model_for(
    lo: int, hi: int, dtype: torch.dtype = torch.float32, multimodal: bool = False, cold: str = ""
) -> torch.nn.Module:
    """ComplEx, or MAP's fused ComplEx over synthetic text rows (learned fusion weights); ``cold``: with
    unseen entities ranked from their text and the structural-view dropout's twin objective."""
    if not multimodal:
        return build_model(
            ModelConfig(name="complex", rank=4, init_scale=0.3), N, R, seed=3, entity_range=(lo, hi), table_dtype=dtype
        )
    rows = text_rows()
    return build_model(
        ModelConfig(
            name="map",
            rank=4,
            init_scale=0.3,
            fusion="structure" if cold == "head" else "learned",
            cold=COLD[cold] if cold else WARM,
        ),
        N,
        R,
        seed=3,
        entity_range=(lo, hi),
        modalities=["text"],
        read_features=lambda m, a, b: FeatureRows(rows.values[a:b], rows.present[a:b]),
        table_dtype=dtype,
        seen=SEEN_7,
    )


def one_step(rank: int, size: int, multimodal: bool = False, cold: str = "") -> dict[str, object]:
    """Loss, entity-row gradients (this worker's rows, dense) and the replicated parameters' gradients
    (relations; MAP's projection and fusion weights) of one sampled step."""
    lo, hi = row_ranges(N, size)[rank]
    model = model_for(lo, hi, multimodal=multimodal, cold=cold)
    table = Recording([model.entities.weight], 0.1, rowwise=False)
    groups, ids = first_batch()
    step = sampled_step(model, groups, Objective("n3", REG), table, CandidateSampler(5), S)
    loss, logged, _ = step(ids)
    loss.backward()
    sync_replicated_grads(model)()
    rows, leaf = table.gathered
    grad = torch.zeros(hi - lo, leaf.shape[1]).index_add_(0, rows, leaf.grad)
    return {"loss": logged.item(), "grad": grad, **replicated_grads(model)}


def replicated_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if n != "entities.weight" and p.grad is not None}


def direct(size: int, multimodal: bool = False, cold: str = "") -> dict[str, object]:
    """The same step written out in one process: every worker's candidates scored at once, the
    corrected softmax by ``log_softmax``, gradients by autograd on the whole table (through MAP's
    projection and fusion of all rows); ``cold``: plus the same loss on the rows with the step's
    structural views dropped (the twin, weight 1; ``head``: its relations without gradient, the
    unseen entities out of both softmaxes)."""
    model = model_for(0, N, multimodal=multimodal, cold=cold)
    groups, ids = first_batch()
    batch = groups.select(ids)
    ranges, draws = row_ranges(N, size), [b - a for a, b in row_ranges(S, size)]
    true = torch.unique(batch.tails)
    columns, correction, is_true = [], [], []
    for (lo, hi), count in zip(ranges, draws, strict=True):
        sampler = CandidateSampler(5)  # each worker's sampler is at its first step
        drawn = sampler.draw(lo, hi, count)
        mine = true[(true >= lo) & (true < hi)]
        columns += [mine, drawn]
        hit = torch.isin(drawn, true)
        correction += [torch.zeros(len(mine)), torch.where(hit, -math.inf, math.log((hi - lo) / count))]
        is_true += [torch.ones(len(mine), dtype=torch.bool), torch.zeros(count, dtype=torch.bool)]
    union, correction, is_true = torch.cat(columns), torch.cat(correction), torch.cat(is_true)
    target = torch.stack([((union == t) & is_true).nonzero().squeeze() for t in batch.tails])
    h, r = batch.queries.unbind(1)
    pq = batch.pair_query

    def objective(fused: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
        q = model.interaction.query(fused[h], relations[r])
        logits = model.interaction.score(q, fused[union]) + correction
        if cold == "head":
            logits = logits.masked_fill(~SEEN_7[union][None, :], -math.inf)
        nll = -torch.log_softmax(logits, dim=1)[pq, target]
        factors = model.interaction.factors(fused[h][pq], relations[r][pq], fused[batch.tails])
        return nll.mean() + Objective("n3", REG).penalty(factors, len(nll))

    loss = objective(model.views().fused, model.relations)
    if cold:
        twin = model.twin_views(model.views(), step_key(ids)).fused
        loss = loss + objective(twin, model.relations.detach() if cold == "head" else model.relations)
    loss.backward()
    return {"loss": loss.item(), "grad": model.entities.weight.grad, **replicated_grads(model)}


def _worker(rank: int, size: int, port: int, job: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        if job.endswith("step"):
            cold = job.removeprefix("cold-").removesuffix("-step") if job.startswith("cold-") else ""
            result = one_step(rank, size, multimodal=job != "step", cold=cold)
        else:
            result = train(rank, size, rowwise=job == "rowwise")
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn(job: str, size: int, tmp_path: Path) -> list[dict[str, object]]:
    mp.spawn(_worker, args=(size, free_port(), job, str(tmp_path)), nprocs=size, join=True)
    return [torch.load(tmp_path / f"rank{p}.pt", weights_only=False) for p in range(size)]


@pytest.mark.parametrize(
    ("size", "multimodal", "cold"),
    [
        (1, False, ""),
        (2, False, ""),
        (3, False, ""),
        (1, True, ""),
        (2, True, ""),
        (2, True, "twin"),
        (1, True, "head"),
        (2, True, "head"),
    ],
    ids=lambda v: str(v),
)
def test_sampled_loss_and_gradients_equal_direct_softmax(
    size: int, multimodal: bool, cold: str, tmp_path: Path
) -> None:
    """Structural ComplEx, and MAP (text rows projected and fused from the touched rows only), also
    with unseen entities and the structural-view dropout's twin objective, plain or training the
    projections only beside structural rows (``head``)."""
    reference = direct(size, multimodal, cold)
    job = f"cold-{cold}-step" if cold else ("map-step" if multimodal else "step")
    workers = [one_step(0, 1, multimodal, cold)] if size == 1 else spawn(job, size, tmp_path)
    replicated = [k for k in reference if k not in ("loss", "grad")]
    assert any(k.startswith("projections.") for k in replicated) == multimodal
    for w in workers:
        assert w["loss"] == pytest.approx(reference["loss"], rel=1e-5)
        assert sorted(k for k in w if k not in ("loss", "grad")) == sorted(replicated)
        for k in replicated:
            torch.testing.assert_close(w[k], reference[k], rtol=1e-4, atol=1e-6, msg=k)
    grad = torch.cat([w["grad"] for w in workers])
    torch.testing.assert_close(grad, reference["grad"], rtol=1e-4, atol=1e-6)


def test_candidates_number_columns_worker_by_worker() -> None:
    ranges = row_ranges(10, 2)  # [0, 5), [5, 10)
    tails = torch.tensor([7, 1, 7, 3])
    first = sampled_candidates(tails, torch.tensor([0, 3]), ranges, 0, [2, 2])
    second = sampled_candidates(tails, torch.tensor([9, 9]), ranges, 1, [2, 2])
    assert first.ids.tolist() == [1, 3, 0, 3]
    assert second.ids.tolist() == [7, 9, 9]
    assert (first.offset, second.offset, first.total) == (0, 4, 7)
    assert first.pair_column.tolist() == second.pair_column.tolist() == [4, 0, 4, 1]
    assert first.correction.tolist() == pytest.approx(
        [0, 0, math.log(5 / 2), -math.inf]
    )  # 3 is a true tail: no double count


class Fixed:
    """The same candidate set each step, whatever the partition: each worker gets its part of it."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def draw(self, lo: int, hi: int, count: int) -> torch.Tensor:
        mine = self.ids[(self.ids >= lo) & (self.ids < hi)]
        assert len(mine) == count
        return mine


def train(rank: int, size: int, rowwise: bool) -> dict[str, object]:
    lo, hi = row_ranges(N, size)[rank]
    model = model_for(lo, hi)
    optimizer = make_optimizer("rowwise_adagrad" if rowwise else "adagrad", model, 0.1, sparse=True)
    groups = QueryGroups.build(add_reciprocals(graph(), R))
    candidates = Fixed(torch.tensor([1, 4, 8, 11, 15, 17, 20, 22, 27, 30, 33, 35]))  # 6 in each half
    step = sampled_step(model, groups, Objective("n3", REG), optimizer.table, candidates, S)
    generator = torch.Generator().manual_seed(7)
    epochs = [
        run_epoch(step, optimizer, groups, 16, generator, sync_grads=sync_replicated_grads(model), show_progress=False)
        for _ in range(2)
    ]
    return {"losses": [e.loss for e in epochs], "rows": model.entities.weight.detach(), "relations": model.relations}


@pytest.mark.parametrize("rowwise", [False, True])
def test_two_workers_train_as_one_on_the_same_candidates(rowwise: bool, tmp_path: Path) -> None:
    single = train(0, 1, rowwise)
    workers = spawn("rowwise" if rowwise else "elementwise", 2, tmp_path)
    for w in workers:
        assert w["losses"] == pytest.approx(single["losses"], rel=1e-5)
        torch.testing.assert_close(w["relations"], single["relations"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([w["rows"] for w in workers]), single["rows"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rowwise", [False, True])
def test_untouched_rows_and_their_state_stay_bit_identical(rowwise: bool) -> None:
    model = model_for(0, N)
    weight = model.entities.weight
    table = Recording([weight], 0.1, rowwise=rowwise)
    optimizer = SplitOptimizer(table, torch.optim.Adagrad([model.relations], lr=0.1))
    groups, _ = first_batch()
    step = sampled_step(model, groups, Objective("n3", REG), table, CandidateSampler(5), 4)
    for ids in (torch.arange(3), torch.arange(2, 5)):  # the second step starts from non-zero state
        before, state_before = weight.detach().clone(), optimizer.state[weight]["sum"].clone()
        loss, _, _ = step(ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert weight.grad is None  # no dense gradient anywhere
        untouched = torch.ones(N, dtype=torch.bool)
        untouched[table.gathered[0]] = False
        assert 0 < untouched.sum() < N
        assert torch.equal(weight.detach()[untouched], before[untouched])
        assert torch.equal(optimizer.state[weight]["sum"][untouched], state_before[untouched])
        assert not torch.equal(weight.detach()[~untouched], before[~untouched])


def test_rowwise_adagrad_is_the_hand_computed_step() -> None:
    table = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    optimizer = TableAdagrad([table], lr=0.5, rowwise=True)
    table.grad = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, -1.0]])
    optimizer.step()
    # sum_i = mean_j g_ij^2: 12.5, 0, 1; row i moves by -lr * g_i / (sqrt(sum_i) + 1e-10)
    expected = [[1 - 0.5 * 3 / 12.5**0.5, 2 - 0.5 * 4 / 12.5**0.5], [3.0, 4.0], [5 - 0.5, 6 + 0.5]]
    torch.testing.assert_close(table.detach(), torch.tensor(expected))
    torch.testing.assert_close(optimizer.state[table]["sum"], torch.tensor([12.5, 0.0, 1.0]))
    # a second step through gather touches row 2 only, in float32, written back to the table
    leaf = optimizer.gather(table, torch.tensor([2]))
    (leaf * torch.tensor([[2.0, 0.0]])).sum().backward()  # gradient (2, 0): sum 1 + 2 = 3
    table.grad = None
    optimizer.step()
    torch.testing.assert_close(optimizer.state[table]["sum"], torch.tensor([12.5, 0.0, 3.0]))
    torch.testing.assert_close(table.detach()[2], torch.tensor([4.5 - 0.5 * 2 / 3**0.5, 6.5]))
    torch.testing.assert_close(table.detach()[:2], torch.tensor(expected[:2]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_elementwise_table_adagrad_is_torch_adagrad(dtype: torch.dtype) -> None:
    """Same updates as torch's Adagrad, in the table's precision when it is wider than float32."""
    a = torch.nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=dtype))
    b = torch.nn.Parameter(a.detach().clone())
    mine, torch_adagrad = TableAdagrad([a], lr=0.1, rowwise=False), torch.optim.Adagrad([b], lr=0.1)
    for seed in range(3):
        grad = torch.randn(5, 3, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
        a.grad, b.grad = grad.clone(), grad.clone()
        mine.step()
        torch_adagrad.step()
    assert mine.state[a]["sum"].dtype == dtype
    torch.testing.assert_close(a, b, rtol=0, atol=1e-7 if dtype == torch.float32 else 1e-15)


def sampled_config(dataset: Path, out: Path, epochs: int, **train: object) -> object:
    return config_from_dict(
        {
            "data": {"path": str(dataset)},
            "model": {"name": "complex", "rank": 16, "init_scale": 0.1},
            "train": {
                "epochs": epochs,
                "batch_size": 32,
                "lr": 0.1,
                "reg_weight": 1e-3,
                "valid_every": 2,
                "objective": "sampled",
                "candidates": 8,
                **train,
            },
            "track": {"enabled": False, "output_dir": str(out)},
        }
    )


def test_bfloat16_table_trains_and_resumes(ring_dataset: Path, tmp_path: Path) -> None:
    settings = {"table_dtype": "bfloat16", "optimizer": "rowwise_adagrad"}
    straight = fit(sampled_config(ring_dataset, tmp_path / "a", 12, **settings), log=lambda _: None)
    assert straight.test.metrics["both"]["mrr"] > 0.3, straight.test.table()
    assert straight.history[-1]["loss"] < straight.history[0]["loss"]
    fit(sampled_config(ring_dataset, tmp_path / "b", 6, **settings), log=lambda _: None)
    saved = torch.load(tmp_path / "b" / next((tmp_path / "b").iterdir()).name / CHECKPOINT_NAME, weights_only=True)
    assert saved["model"]["entities.weight"].dtype == torch.bfloat16
    resumed = fit(sampled_config(ring_dataset, tmp_path / "b", 12, **settings), log=lambda _: None)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    assert resumed.test.metrics == straight.test.metrics


@pytest.mark.parametrize(
    ("train", "key"),
    [
        ({"optimizer": "adam"}, "train.optimizer"),
        ({"label_smoothing": 0.1}, "train.label_smoothing"),
        ({"objective": "exact", "table_dtype": "bfloat16"}, "train.table_dtype"),
        ({"candidates": 0}, "train.candidates"),
    ],
)
def test_sampled_config_errors_name_the_key(train: dict[str, object], key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=key):
        sampled_config(tmp_path, tmp_path, 1, **train)


@pytest.mark.parametrize(
    ("model", "align", "key"),
    [
        ({"name": "transae"}, {}, r"train\.objective: sampled supports the structural models"),
        ({"name": "map"}, {"lambda_align": 0.1, "scope": "full"}, r"align\.scope: full aligns every row"),
    ],
)
def test_sampled_refuses_models_it_cannot_build_from_touched_rows(
    model: dict[str, object], align: dict[str, object], key: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=key):
        config_from_dict(
            {
                "data": {"path": str(tmp_path), "modalities": ["text"]},
                "model": model,
                "align": align,
                "train": {"objective": "sampled"},
            }
        )


def sharded_sampled_run(rank: int, size: int, port: int, dataset: str, out: str, epochs: int, restore: bool) -> None:
    if size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
        dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        cfg = sampled_config(Path(dataset), Path(out), epochs, table_dtype="bfloat16", optimizer="rowwise_adagrad")
        root = Path(out) / "ckpt"
        engine = ShardedEngine(
            cfg,
            KnowledgeGraph.load(dataset),
            torch.device("cpu"),
            newest_checkpoint(root) if restore else None,
            move_into(root),
        )
        result = run(engine, cfg, log=lambda _: None, chief=rank == 0)
        if rank == 0:
            torch.save({"history": result.history, "metrics": result.test.metrics}, Path(out) / "result.pt")
    finally:
        if size > 1:
            dist.destroy_process_group()


def launch_sampled(size: int, dataset: Path, out: Path, epochs: int, restore: bool = False) -> dict[str, object]:
    args = (size, free_port(), str(dataset), str(out), epochs, restore)
    if size == 1:
        sharded_sampled_run(0, *args)
    else:
        mp.spawn(sharded_sampled_run, args=args, nprocs=size, join=True)
    return torch.load(out / "result.pt", weights_only=False)


def test_sampled_checkpoint_restores_on_another_worker_count(ring_dataset: Path, tmp_path: Path) -> None:
    """A bfloat16, row-wise Adagrad run on 2 workers: its checkpoint resumes exactly on 2, and on 1 and 3
    workers each restores its rows and their one-per-row accumulators from the 2-worker files."""
    straight = launch_sampled(2, ring_dataset, tmp_path / "a", 6)
    launch_sampled(2, ring_dataset, tmp_path / "b", 4)
    saved = newest_checkpoint(tmp_path / "b" / "ckpt")
    rows, _ = load_rows(saved, 0, 30)
    assert rows["weight"].dtype == torch.bfloat16
    assert rows["opt.sum"].shape == (30,)  # row-wise: one accumulator per row
    cfg = sampled_config(ring_dataset, tmp_path / "one", 6, table_dtype="bfloat16", optimizer="rowwise_adagrad")
    engine = ShardedEngine(cfg, KnowledgeGraph.load(ring_dataset), torch.device("cpu"), saved, move_into(tmp_path))
    engine.load()
    weight = engine.model.entities.weight
    assert torch.equal(weight.detach(), rows["weight"])
    assert torch.equal(engine.optimizer.state[weight]["sum"], rows["opt.sum"])
    for size in (2, 1, 3):
        out = tmp_path / f"resume{size}"
        (out / "ckpt").mkdir(parents=True)
        (out / "ckpt" / saved.name).symlink_to(saved)
        resumed = launch_sampled(size, ring_dataset, out, 6, restore=True)
        assert [h["epoch"] for h in resumed["history"]] == list(range(1, 7))
        assert [h["loss"] for h in resumed["history"][:4]] == [h["loss"] for h in straight["history"][:4]]
        if size == 2:  # same partition, same draws: the uninterrupted run
            assert resumed["metrics"] == straight["metrics"]


def test_rowwise_adagrad_trains_and_resumes_the_exact_objective(ring_dataset: Path, tmp_path: Path) -> None:
    settings = {"objective": "exact", "optimizer": "rowwise_adagrad"}
    straight = fit(sampled_config(ring_dataset, tmp_path / "a", 8, **settings), log=lambda _: None)
    assert straight.test.metrics["both"]["mrr"] > 0.3, straight.test.table()
    fit(sampled_config(ring_dataset, tmp_path / "b", 4, **settings), log=lambda _: None)
    resumed = fit(sampled_config(ring_dataset, tmp_path / "b", 8, **settings), log=lambda _: None)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]


def test_map_with_its_terms_trains_and_resumes_under_sampled(ring_dataset: Path, tmp_path: Path) -> None:
    """MAP (alignment + instance preserving) on imported synthetic visual rows, sampled objective with a
    bfloat16 table and row-wise Adagrad: it trains, and a run stopped half-way resumes to the same history."""
    dataset = tmp_path / "data"
    shutil.copytree(ring_dataset, dataset)
    entities = KnowledgeGraph.load(dataset).num_entities
    np.save(tmp_path / "visual.npy", np.random.default_rng(0).normal(size=(entities, 8)).astype(np.float32))
    import_features(dataset, "visual", tmp_path / "visual.npy", log=lambda _: None)

    def config(out: Path, epochs: int) -> object:
        cfg = sampled_config(dataset, out, epochs, table_dtype="bfloat16", optimizer="rowwise_adagrad")
        cfg.data.modalities = ["visual"]
        cfg.model.name = "map"
        cfg.align.lambda_align, cfg.align.lambda_preserve, cfg.align.extra = 0.1, 0.01, 4
        cfg.check()
        return cfg

    straight = fit(config(tmp_path / "a", 8), log=lambda _: None)
    assert straight.history[-1]["loss"] < straight.history[0]["loss"]
    assert straight.test.metrics["both"]["mrr"] > 0.2, straight.test.table()
    fit(config(tmp_path / "b", 4), log=lambda _: None)
    resumed = fit(config(tmp_path / "b", 8), log=lambda _: None)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    assert resumed.test.metrics == straight.test.metrics
