"""Training triples sharded over workers (``scale.shard_triples``): each worker opens only the row
groups of train.parquet that hold its rows, the global batch is the union of the local ones, the
range-limited filter ranks exactly as the full one, and the run learns."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import distmap.data.prepare
from distmap.config import config_from_dict
from distmap.data.kg import KnowledgeGraph
from distmap.data.prepare import prepare_dataset
from distmap.distributed.collectives import free_port
from distmap.distributed.engine import ShardedEngine, move_into
from distmap.distributed.partition import row_ranges
from distmap.distributed.sharded import evaluate_sharded
from distmap.train.fit import build_filter, run
from tests.conftest import ring_graph, write_triples

ROWS_PER_GROUP = 16


@pytest.fixture
def small_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(distmap.data.prepare, "TRIPLES_PER_ROW_GROUP", ROWS_PER_GROUP)
    prepare_dataset(write_triples(tmp_path / "raw", ring_graph()), tmp_path / "dataset", log=lambda _: None)
    return tmp_path / "dataset"


def _worker(rank: int, size: int, port: int, dataset: str, objective: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        cfg = config_from_dict(
            {
                "data": {"path": dataset},
                "model": {"name": "complex", "rank": 8, "init_scale": 0.1},
                "train": {"epochs": 20, "batch_size": 16, "valid_every": 10, "reg_weight": 1e-3},
                "track": {"enabled": False, "output_dir": f"{out}/runs"},
                "scale": {"shard_triples": True},
            }
        )
        cfg.train.objective, cfg.train.candidates = objective, 10
        kg = KnowledgeGraph.load(dataset, train=False)
        engine = ShardedEngine(cfg, kg, torch.device("cpu"), None, move_into(Path(out) / "ckpt"))
        local = engine.groups.local
        batch = engine.groups.select(torch.arange(min(3, local.num_groups)))
        result = run(engine, cfg, log=lambda _: None, chief=rank == 0)
        full = build_filter(KnowledgeGraph.load(dataset), torch.device("cpu"))
        test = kg.splits["test"]
        with_full = evaluate_sharded(engine.model, test, num_relations=kg.num_relations, filter_index=full)
        report = {
            "row_groups": engine.train_row_groups,
            "train_rows_loaded": len(kg.train),
            "local_triples": local.num_triples,
            "batch_pairs": len(batch.tails),
            "local_pairs": int(local.sizes(torch.arange(min(3, local.num_groups))).sum()),
            "num_examples": engine.num_examples,
            "mrr": result.test.metrics["both"]["mrr"],
            "same_as_full_filter": with_full.metrics == result.test.metrics,
        }
        torch.save(report, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("objective", ["exact", "sampled"])
def test_each_worker_reads_only_its_triple_shard(small_groups: Path, tmp_path: Path, objective: str) -> None:
    size = 2
    mp.spawn(_worker, args=(size, free_port(), str(small_groups), objective, str(tmp_path)), nprocs=size, join=True)
    reports = [torch.load(tmp_path / f"rank{p}.pt", weights_only=False) for p in range(size)]
    num_train = KnowledgeGraph.load(small_groups).manifest["splits"]["train"]["triples"]
    groups = -(-num_train // ROWS_PER_GROUP)
    for (lo, hi), report in zip(row_ranges(num_train, size), reports, strict=True):
        expected = [g for g in range(groups) if g * ROWS_PER_GROUP < hi and (g + 1) * ROWS_PER_GROUP > lo]
        assert report["row_groups"] == expected  # what it opened: only the groups overlapping its rows
        assert report["train_rows_loaded"] == 0  # the whole split was never loaded
        assert report["local_triples"] == 2 * (hi - lo)  # with reciprocals
        assert report["num_examples"] == 2 * num_train
        assert report["same_as_full_filter"]
        assert report["mrr"] > 0.3
    assert reports[0]["row_groups"] != reports[1]["row_groups"]
    # the global batch is the union of both workers' local batches
    assert reports[0]["batch_pairs"] == reports[1]["batch_pairs"] == sum(r["local_pairs"] for r in reports)
