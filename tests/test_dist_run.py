"""Whole sharded runs (gloo, 127.0.0.1, no Ray): P workers give P=1's metrics, and a checkpoint
written by 2 workers resumes on 1, 2 or 3 with the same result."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distmap.config import Config, config_from_dict
from distmap.data.kg import KnowledgeGraph
from distmap.data.prepare import prepare_dataset
from distmap.data.shards import write_feature_shards
from distmap.distributed.collectives import free_port
from distmap.distributed.engine import ShardedEngine, move_into
from distmap.distributed.shard_checkpoint import newest_checkpoint
from distmap.train.fit import run
from tests.conftest import ring_graph, write_triples
from tests.test_dist import flat


def make_config(dataset: Path, out: Path, epochs: int) -> Config:
    return config_from_dict(
        {
            "data": {"path": str(dataset), "modalities": ["visual"]},
            "model": {"name": "complex", "rank": 8, "init_scale": 0.1},
            "train": {"epochs": epochs, "batch_size": 40, "lr": 0.1, "reg_weight": 1e-3, "valid_every": 2},
            "track": {"enabled": False, "output_dir": str(out / "runs")},
        }
    )


def sharded_run(cfg: Config, ckpt_root: Path, restore: bool, result_file: Path) -> None:
    engine = ShardedEngine(
        cfg,
        KnowledgeGraph.load(cfg.data.path),
        torch.device("cpu"),
        newest_checkpoint(ckpt_root) if restore else None,
        move_into(ckpt_root),
    )
    result = run(engine, cfg, log=lambda _: None, chief=engine.rank == 0)
    if engine.rank == 0:
        torch.save(
            {
                "metrics": result.test.metrics,
                "history": result.history,
                "rows_read": [p.name for p in engine.rows_read],
                "feature_parts": tuple(engine.feature_parts["visual"]),
                "features": engine.model.feature_rows("visual")[0],
            },
            result_file,
        )


def _worker(rank: int, size: int, port: int, cfg: Config, ckpt_root: Path, restore: bool, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        sharded_run(cfg, ckpt_root, restore, out)
    finally:
        dist.destroy_process_group()


def launch(size: int, cfg: Config, ckpt_root: Path, restore: bool, out: Path) -> dict:
    if size == 1:
        sharded_run(cfg, ckpt_root, restore, out)
    else:
        mp.spawn(_worker, args=(size, free_port(), cfg, ckpt_root, restore, out), nprocs=size, join=True)
    return torch.load(out, weights_only=False)


@pytest.fixture
def dataset_with_features(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """The ring graph with a synthetic 'visual' modality stored in parts of 4 rows."""
    raw = write_triples(tmp_path / "raw", ring_graph())
    prepare_dataset(raw, tmp_path / "dataset", log=lambda _: None)
    values = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
    write_feature_shards(tmp_path / "dataset", "visual", values, np.ones(30, bool), rows_per_part=4, source="test")
    return tmp_path / "dataset", values


def test_checkpoint_resumes_on_any_worker_count(dataset_with_features: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    ring_dataset, features = dataset_with_features
    straight = launch(
        2, make_config(ring_dataset, tmp_path / "a", 6), tmp_path / "a" / "ckpt", False, tmp_path / "a.pt"
    )
    single = launch(1, make_config(ring_dataset, tmp_path / "b", 6), tmp_path / "b" / "ckpt", False, tmp_path / "b.pt")
    assert flat(single["metrics"]) == pytest.approx(flat(straight["metrics"]), abs=1e-4)

    launch(2, make_config(ring_dataset, tmp_path / "c", 4), tmp_path / "c" / "ckpt", False, tmp_path / "c.pt")
    for size in (1, 3):
        root = tmp_path / f"resume{size}" / "ckpt"
        root.mkdir(parents=True)
        (root / "epoch-000004").symlink_to(tmp_path / "c" / "ckpt" / "epoch-000004")
        resumed = launch(
            size, make_config(ring_dataset, tmp_path / f"resume{size}", 6), root, True, tmp_path / f"r{size}.pt"
        )
        assert [h["epoch"] for h in resumed["history"]] == list(range(1, 7))
        assert resumed["history"][4]["loss"] == pytest.approx(straight["history"][4]["loss"], abs=1e-5)
        assert flat(resumed["metrics"]) == pytest.approx(flat(straight["metrics"]), abs=1e-4)
    # rank 0 of 3 owns rows [0, 10) of 30: it reads only the file of the 2-worker range [0, 15),
    # and of the feature parts of 4 rows only those overlapping [0, 10)
    assert resumed["rows_read"] == ["rows-000000000000-000000000015.pt"]
    assert resumed["feature_parts"] == ("part-00000.parquet", "part-00001.parquet", "part-00002.parquet")
    assert torch.equal(resumed["features"], torch.from_numpy(features[:10]))


def test_probe_spread_is_the_same_on_one_and_two_workers(
    dataset_with_features: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    """Fig. 2a's probe reads rows owned by different workers (e000, e014 on rank 0, e020, e029 on rank 1 of 2)."""
    ring_dataset, _ = dataset_with_features
    names = ["e000", "e014", "e020", "e029"]
    histories = []
    for size in (1, 2):
        cfg = make_config(ring_dataset, tmp_path / str(size), 4)
        cfg.track.probe_entities = names
        histories.append(launch(size, cfg, tmp_path / str(size) / "ckpt", False, tmp_path / f"{size}.pt")["history"])
    single, sharded = ([h["probe/spread"] for h in history] for history in histories)
    assert len(single) == 4
    assert all(s > 0 for s in single)
    assert sharded == pytest.approx(single, rel=1e-4)
