"""`distmap export`: the Parquet tables read back equal the checkpoint's best rows, for a single run,
a sharded checkpoint read one row range at a time, and a 2-worker Ray run (through jobs/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import distmap.restore
from distmap.cli import main
from distmap.config import Config
from distmap.data.kg import KnowledgeGraph
from distmap.distributed.partition import row_ranges
from distmap.distributed.shard_checkpoint import COMMON, load_rows, newest_checkpoint, save_rows
from distmap.distributed.trainer import fit_distributed
from distmap.export import export_run, relations_path
from distmap.predict import Predictor
from distmap.restore import load_best_model
from distmap.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from distmap.train.fit import fit
from tests.conftest import REPO
from tests.test_fit import make_config, quiet
from tests.test_ray_train import make_config as ray_config


def read_back(out: Path, names: tuple[str, ...], relation_names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(entity vectors, relation vectors) of an export, after checking ids, names and types."""
    entities = pq.read_table(out)
    assert str(entities.schema.field("vector").type) == f"fixed_size_list<element: float>[{len(entities[2][0])}]"
    assert entities.column("id").to_pylist() == list(range(len(names)))
    assert tuple(entities.column("name").to_pylist()) == names
    relations = pq.read_table(relations_path(out))
    r = len(relation_names)
    assert relations.column("name").to_pylist() == [*relation_names, *relation_names]
    assert relations.column("reciprocal").to_pylist() == [False] * r + [True] * r
    as_tensor = lambda table: torch.tensor(table.column("vector").to_pylist())  # noqa: E731
    return as_tensor(entities), as_tensor(relations)


def test_single_run_round_trips(ring_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = make_config(ring_dataset, tmp_path, epochs=2)
    cfg.track.enabled = False
    run_dir = fit(cfg, log=quiet).run_dir
    best = load_checkpoint(run_dir / CHECKPOINT_NAME)["best_state"]
    kg = KnowledgeGraph.load(ring_dataset)
    done = export_run(run_dir, cfg, tmp_path / "emb.parquet", chunk_rows=7)
    assert done.row_groups == pq.ParquetFile(tmp_path / "emb.parquet").metadata.num_row_groups == 5  # 30 rows by 7
    entities, relations = read_back(tmp_path / "emb.parquet", kg.entities, kg.relations)
    assert torch.equal(entities, best["entities.weight"])
    assert torch.equal(relations, best["relations"])
    assert pq.read_schema(tmp_path / "emb.parquet").metadata[b"distmap.best_epoch"] == b"2"

    assert main(["export", str(run_dir), "--out", str(tmp_path / "cli.parquet")]) == 0
    assert "30 entity rows (vector width 32, Parquet row groups: 1)" in capsys.readouterr().out
    assert main(["export", str(run_dir), "--out", str(tmp_path / "cli.csv")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    (run_dir / CHECKPOINT_NAME).unlink()
    assert main(["export", str(run_dir), "--out", str(tmp_path / "none.parquet")]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint.pt here and no sharded checkpoint" in err
    assert err.count("\n") == 1


def sharded_checkpoint(cfg: Config, run_dir: Path, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A sharded checkpoint of ``workers`` row files as a sharded run leaves it; returns (best rows, best relations)."""
    best, relations = torch.randn(30, 32), torch.randn(6, 32)
    folder = run_dir.parent / "ray_results" / run_dir.name / "checkpoint_000001"
    for lo, hi in row_ranges(30, workers):
        rows = {"weight": torch.randn(hi - lo, 32), "best": best[lo:hi], "opt.sum": torch.rand(hi - lo, 32)}
        save_rows(folder, lo, hi, rows)
    save_checkpoint(folder / COMMON, {"epoch": 4, "best_epoch": 2, "num_entities": 30, "best_relations": relations})
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    return best, relations


def test_sharded_export_reads_one_row_file_range_at_a_time(
    ring_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(ring_dataset, tmp_path, epochs=2)
    best, relations = sharded_checkpoint(cfg, tmp_path / "runs" / "sharded", workers=3)  # files of rows 10, 10, 10
    reads: list[tuple[int, int, list[Path]]] = []

    def spy(folder: Path, lo: int, hi: int, keys: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], list[Path]]:
        rows, files = load_rows(folder, lo, hi, keys)
        reads.append((lo, hi, files))
        assert set(rows) == {"best"}  # the weights and optimizer state of the file stay on disk
        return rows, files

    monkeypatch.setattr(distmap.restore, "load_rows", spy)
    kg = KnowledgeGraph.load(ring_dataset)
    done = export_run(tmp_path / "runs" / "sharded", cfg, tmp_path / "emb.parquet", chunk_rows=4)
    entities, exported_relations = read_back(tmp_path / "emb.parquet", kg.entities, kg.relations)
    assert torch.equal(entities, best)
    assert torch.equal(exported_relations, relations)
    assert done.epoch == 2
    # after one row to learn the width: ranges of at most 4 rows that never cross a row file
    expected = [(lo, min(lo + 4, hi)) for a, hi in row_ranges(30, 3) for lo in range(a, hi, 4)]
    assert expected[:4] == [(0, 4), (4, 8), (8, 10), (10, 14)]
    assert [(lo, hi) for lo, hi, _ in reads[1:]] == expected
    assert all(len(files) == 1 for _, _, files in reads)


def test_two_worker_ray_run_exports_and_predicts_through_jobs(ring_dataset: Path, short_dir: Path) -> None:
    cfg = ray_config(ring_dataset, short_dir, workers=2)
    cfg.train.epochs = 2
    fit_distributed(cfg, log=quiet)
    run_dir = short_dir / "runs" / "ray"
    folder = newest_checkpoint(short_dir / "runs" / "ray_results" / "ray")
    assert folder is not None
    assert len(list(folder.glob("rows-*.pt"))) == 2
    rows, _ = load_rows(folder, 0, 30)
    kg = KnowledgeGraph.load(ring_dataset)

    def job(script: str, *args: str) -> None:
        done = subprocess.run([sys.executable, str(REPO / "jobs" / script), str(run_dir), *args], capture_output=True)
        assert done.returncode == 0, done.stderr.decode()[-2000:]

    job("export.py", "--out", str(short_dir / "emb.parquet"))
    entities, relations = read_back(short_dir / "emb.parquet", kg.entities, kg.relations)
    assert torch.equal(entities, rows["best"])
    assert torch.equal(relations, load_checkpoint(folder / COMMON)["best_replicated"]["relations"])

    queries = short_dir / "queries.tsv"
    queries.write_text("e000\tnext\t?\n?\tskip\te007\n")
    job("predict.py", "--queries", str(queries), "--out", str(short_dir / "top.parquet"), "--k", "5")
    model, _ = load_best_model(run_dir, cfg, kg, torch.device("cpu"))
    predictor = Predictor(model, kg, cfg.train.tie)
    asked = [
        predictor.query(head="e000", relation="next", tail=None),
        predictor.query(head=None, relation="skip", tail="e007"),
    ]
    expected = predictor.rows(0, asked, predictor.top_k(asked, 5)).to_pylist()
    found = pq.read_table(short_dir / "top.parquet").to_pylist()
    assert [row.pop("score") for row in found] == pytest.approx([row.pop("score") for row in expected], rel=1e-6)
    assert found == expected
