"""The ruler by bucket: degree / category / relation buckets pool to the overall metrics, per-query
ranks equal a brute-force ranking, Bordes et al.'s categories, P = 2 equals P = 1, the CLI."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distmap.cli import main
from distmap.config import Config, config_from_dict
from distmap.data.kg import KnowledgeGraph, add_reciprocals
from distmap.data.prepare import prepare_dataset
from distmap.distributed.collectives import free_port
from distmap.errors import DistmapError
from distmap.train.breakdown import (
    BREAKDOWN_JSON,
    BREAKDOWN_MD,
    Breakdown,
    breakdown_of,
    degree_buckets,
    parse_edges,
    query_ranks,
    read_breakdown,
    relation_categories,
    run_breakdown,
    train_degrees,
    weighted_mrr,
)
from distmap.train.evaluate import EvalResult, FilterIndex, RankCounts, evaluate
from distmap.train.fit import fit, run, run_name
from tests.conftest import random_triples, ring_graph, write_triples

N, R = 12, 3


def synthetic() -> tuple[KnowledgeGraph, torch.Tensor]:
    """Entities 0-2 dense in train (degree > 10), 3-7 sparse, 8-11 only in test (cold); relation 0
    N-N, 1 1-N, 2 never in train ("unseen"); integer scores in [0, 4), so many candidates tie."""
    sparse = [[3, 0, 4], [3, 0, 5], [4, 0, 5], [3, 0, 0], [4, 0, 1], [6, 1, 7], [6, 1, 3], [6, 1, 4]]
    train = torch.cat([random_triples(30, 3, 1, 3, seed=1), torch.tensor(sparse)])
    g = torch.Generator().manual_seed(2)
    test = torch.stack(
        [
            torch.randint(0, N, (30,), generator=g),
            torch.randint(0, R, (30,), generator=g),
            torch.randint(0, N, (30,), generator=g),
        ],
        dim=1,
    )
    kg = KnowledgeGraph(
        root=Path("."),
        entities=tuple(f"e{i:02d}" for i in range(N)),
        relations=("next", "skip", "rare"),
        splits={"train": train, "valid": test[:0], "test": test},
        manifest={"splits": {"train": {"triples": len(train)}}},
    )
    scores = torch.randint(0, 4, (N, 2 * R, N), generator=g).double()
    return kg, scores


def ranked(kg: KnowledgeGraph, scores: torch.Tensor, tie: str = "realistic") -> EvalResult:
    known = FilterIndex.build(add_reciprocals(kg.all_triples(), R), N)
    return evaluate(
        lambda h, r, lo, hi: scores[h, r, lo:hi],
        kg.test,
        num_relations=R,
        filter_index=known,
        num_entities=N,
        tie=tie,
        batch_size=7,
    )


def brute_force(kg: KnowledgeGraph, scores: torch.Tensor) -> list[tuple[int, int, float]]:
    """(optimistic, pessimistic, realistic) rank of every query, tail queries first, by hand."""
    n_rel = kg.num_relations
    known = {(h, r, t) for h, r, t in kg.all_triples().tolist()}
    known |= {(t, r + n_rel, h) for h, r, t in list(known)}
    out = []
    for direction in ("tail", "head"):
        for h, r, t in kg.test.tolist():
            q, rel, answer = (h, r, t) if direction == "tail" else (t, r + n_rel, h)
            row = scores[q, rel].tolist()
            others = [e for e in range(len(row)) if e != answer and (q, rel, e) not in known]
            gt = sum(row[e] > row[answer] for e in others)
            eq = sum(row[e] == row[answer] for e in others)
            out.append((gt + 1, gt + eq + 1, gt + eq / 2 + 1))
    return out


@pytest.mark.parametrize("tie", ["realistic", "pessimistic"])
def test_buckets_pool_to_the_overall_metrics(tie: str) -> None:
    kg, scores = synthetic()
    result = ranked(kg, scores, tie)
    b = breakdown_of(kg, result, "test", edges=(0, 3, 10))
    both = result.metrics["both"]
    assert b.queries == 2 * len(kg.test)
    assert b.tie == tie
    assert b.overall.mrr == pytest.approx(both["mrr"], abs=1e-12)
    for group in ("answer_deg", "query_deg", "category", "relation"):
        buckets = b.groups[group]
        assert sum(x.queries for x in buckets) == b.queries
        assert sum(x.share for x in buckets) == pytest.approx(1.0)
        assert weighted_mrr(buckets) == pytest.approx(both["mrr"], abs=1e-12), group
        hits = sum(x.hits_at_10 * x.queries for x in buckets if x.queries) / b.queries
        assert hits == pytest.approx(both["hits@10"], abs=1e-12)
    assert [x.label for x in b.groups["answer_deg"]] == ["0", "1-3", "4-10", ">10"]
    assert b.group("answer_deg")["0"].queries > 0  # the cold test entities
    assert "unseen" in b.group("category")  # relation 2 has no train triple
    assert b.group("relation")["rare"].queries == 2 * int((kg.test[:, 1] == 2).sum())


def test_bucket_membership_by_hand() -> None:
    kg, scores = synthetic()
    result = ranked(kg, scores)
    b = breakdown_of(kg, result, "test")
    deg = train_degrees(kg.train, N)
    h, t = kg.test[:, 0].numpy(), kg.test[:, 2].numpy()
    answers, queries = np.concatenate([t, h]), np.concatenate([h, t])
    ranks = np.concatenate([result.counts[d].ranks("realistic").numpy() for d in ("tail", "head")])
    cold = deg[answers] == 0
    assert b.group("answer_deg")["0"].queries == cold.sum()
    assert b.group("answer_deg")["0"].mrr == pytest.approx(np.mean(1 / ranks[cold]))
    warm = deg[queries] > 10
    bucket = b.group("query_deg")[">10"]
    assert bucket.queries == warm.sum()
    if warm.any():
        assert bucket.hits_at_1 == pytest.approx(np.mean(ranks[warm] <= 1))


def test_query_ranks_equal_brute_force() -> None:
    kg, scores = synthetic()
    result = ranked(kg, scores)
    table = query_ranks(kg, result, "test").to_pydict()
    expected = brute_force(kg, scores)
    got = list(zip(table["rank_optimistic"], table["rank_pessimistic"], table["rank_realistic"], strict=True))
    assert got == expected
    assert any(o != p for o, p, _ in got)  # the integer scores do tie
    n = len(kg.test)
    assert table["direction"] == ["tail"] * n + ["head"] * n
    deg = train_degrees(kg.train, N)
    for i, (h, r, t) in enumerate(kg.test.tolist()):
        assert (table["head"][i], table["relation"][i], table["tail"][i]) == (
            kg.entities[h],
            kg.relations[r],
            kg.entities[t],
        )
        assert (table["answer_degree"][i], table["query_degree"][i]) == (deg[t], deg[h])
        assert (table["answer_degree"][n + i], table["query_degree"][n + i]) == (deg[h], deg[t])
        assert table["head"][n + i] == kg.entities[h]  # head queries keep the triple as listed


def test_degrees_and_categories_by_hand() -> None:
    triples = torch.tensor(
        [
            [0, 0, 1], [2, 0, 3],  # r0: one tail per head, one head per tail -> 1-1
            [0, 1, 1], [0, 1, 2], [0, 1, 3],  # r1: 3 tails per head -> 1-N
            [1, 2, 0], [2, 2, 0], [3, 2, 0], [3, 2, 0],  # r2: 3 heads per tail (duplicate line ignored) -> N-1
            [0, 3, 2], [0, 3, 3], [1, 3, 2], [1, 3, 3],  # r3: 2 x 2 -> N-N
            [4, 4, 5], [4, 4, 6], [7, 4, 7],  # r4: 3 triples, 2 heads: 1.5 tails per head -> 1-N
        ]
    )  # fmt: skip
    assert relation_categories(triples, 6) == ("1-1", "1-N", "N-1", "N-N", "1-N", "unseen")
    deg = train_degrees(triples, 9)
    # entity 3: in 6 lines (the duplicate counts: it is a line); 7: one self-loop line; 8: none
    assert deg.tolist() == [10, 5, 5, 6, 2, 1, 1, 1, 0]


def test_edges_and_labels() -> None:
    assert [(b.label, b.key) for b in degree_buckets((0, 3, 10))] == [
        ("0", "0"),
        ("1-3", "1-3"),
        ("4-10", "4-10"),
        (">10", "gt10"),
    ]
    assert [b.label for b in degree_buckets((2, 3))] == ["0-2", "3", ">3"]
    assert parse_edges(" 0, 5 ") == (0, 5)
    for bad, why in [
        ("3,1", "increasing"),
        ("0,3,3", "increasing"),
        ("-1,3", ">= 0"),
        ("a", "integers"),
        ("", "integers"),
    ]:
        with pytest.raises(DistmapError, match=f"--degree-edges: .*{why}"):
            parse_edges(bad)


def test_flat_names_are_mlflow_safe_and_json_round_trips(tmp_path: Path) -> None:
    kg, scores = synthetic()
    b = breakdown_of(kg, ranked(kg, scores), "test")
    flat = b.flat("test")
    assert {"test/answer_deg_0/mrr", "test/answer_deg_1-3/hits@10", "test/category_1-N/mrr"} <= set(flat)
    assert "test/query_deg_gt10/queries" in flat or b.group("query_deg")[">10"].queries == 0
    assert not any("next" in k or "rare" in k for k in flat)  # relations stay out of the metrics
    for key in flat:  # MLflow's rule, after the tracker's "@" -> "_at_"
        assert re.fullmatch(r"[/\w.\- :]*", key.replace("@", "_at_")), key
    assert Breakdown.from_dict(json.loads(b.to_json())) == b
    b.write(tmp_path)
    assert read_breakdown(tmp_path) == b
    md = (tmp_path / BREAKDOWN_MD).read_text()
    assert "| relation | rare |" in md
    assert "| answer degree | >10 |" in md
    text = b.table(relations=1)
    assert "answer degree" in text
    assert "(+2 more relations" in text


def test_reads_train_when_the_graph_was_loaded_without_it(ring_dataset: Path) -> None:
    full = KnowledgeGraph.load(ring_dataset)
    lean = KnowledgeGraph.load(ring_dataset, train=False)  # a scale.shard_triples worker's view
    n = len(full.test)
    result = EvalResult.from_counts(
        {
            "tail": _counts(torch.arange(n) % 3, torch.arange(n) % 2),
            "head": _counts(torch.arange(n) % 5, torch.zeros(n, dtype=torch.long)),
        },
        "realistic",
    )
    assert breakdown_of(lean, result) == breakdown_of(full, result)


def _counts(gt: torch.Tensor, eq: torch.Tensor) -> RankCounts:
    return RankCounts(gt, eq)


# ---------------------------------------------------------------------------------------------
# runs: fit writes it, `distmap evaluate --breakdown --ranks` re-computes it, P = 2 equals P = 1


def make_config(dataset: Path, out: Path, track: bool = True) -> Config:
    return config_from_dict(
        {
            "data": {"path": str(dataset)},
            "model": {"name": "complex", "rank": 8, "init_scale": 0.1},
            "train": {"epochs": 2, "batch_size": 40, "lr": 0.1, "reg_weight": 1e-3, "valid_every": 2},
            "track": {
                "enabled": track,
                "tracking_uri": f"sqlite:///{out}/mlflow.db",
                "output_dir": str(out / "runs"),
                "experiment": "breakdown",
            },
        }
    )


@pytest.fixture(scope="module")
def uneven_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ring graph with a few extra entities seen only in test, so every degree bucket is used."""
    base = tmp_path_factory.mktemp("uneven")
    splits = ring_graph()
    splits["test"] = [*splits["test"], ("new1", "next", "e000"), ("e005", "skip", "new2")]
    prepare_dataset(write_triples(base / "raw", splits), base / "dataset", log=lambda _: None)
    return base / "dataset"


def test_fit_writes_it_and_evaluate_recomputes_it(
    uneven_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import mlflow  # here, not at the top: the spawned workers of the P = 2 test import this module

    from distmap.restore import load_best_model

    cfg = make_config(uneven_dataset, tmp_path)
    result = fit(cfg, log=print)
    run_dir = result.run_dir
    printed = capsys.readouterr().out
    assert "answer degree" in printed
    assert "query degree" in printed
    written = read_breakdown(run_dir)
    assert written == result.breakdown
    assert written.overall.mrr == pytest.approx(result.test.metrics["both"]["mrr"])
    assert written.group("answer_deg")["0"].queries == 2  # new1 and new2 asked for
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["breakdown"]["groups"]["answer_deg"][0]["bucket"] == "0"
    assert "relation" not in metrics["breakdown"]["groups"]  # only in breakdown.json
    assert (run_dir / BREAKDOWN_MD).exists()

    client = mlflow.MlflowClient(tracking_uri=cfg.track.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("breakdown").experiment_id])
    assert run.data.metrics["test/answer_deg_0/mrr"] == pytest.approx(written.group("answer_deg")["0"].mrr)
    assert run.data.metrics["test/answer_deg_4-10/queries"] == written.group("answer_deg")["4-10"].queries
    assert "test/category_1-1/hits_at_10" in run.data.metrics
    assert {BREAKDOWN_JSON, BREAKDOWN_MD} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    ranks, out = tmp_path / "ranks.parquet", tmp_path / "b.json"
    argv = ["evaluate", str(run_dir), "--breakdown", "--ranks", str(ranks), "--json", str(out), "--relations", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "answer degree" in printed
    assert "(+2 more relations" in printed
    again = Breakdown.from_dict(json.loads(out.read_text()))
    assert _close(again, written)
    from_python, evaluated = run_breakdown(run_dir)
    assert _close(from_python, written)
    assert evaluated.metrics["both"]["mrr"] == pytest.approx(result.test.metrics["both"]["mrr"])

    # the --ranks file against a brute-force ranking of the run's own score matrix
    kg = KnowledgeGraph.load(uneven_dataset)
    model, _ = load_best_model(run_dir, cfg, kg, torch.device("cpu"))
    with torch.no_grad():
        rows = torch.arange(kg.num_entities).repeat_interleave(2 * kg.num_relations)
        rels = torch.arange(2 * kg.num_relations).repeat(kg.num_entities)
        scores = model.scorer()(rows, rels, 0, kg.num_entities).reshape(kg.num_entities, 2 * kg.num_relations, -1)
    table = pq.read_table(ranks).to_pydict()
    got = list(zip(table["rank_optimistic"], table["rank_pessimistic"], table["rank_realistic"], strict=True))
    assert got == brute_force(kg, scores.double())
    assert len(got) == 2 * len(kg.test)


def _close(a: Breakdown, b: Breakdown) -> bool:
    assert (a.split, a.tie, a.edges) == (b.split, b.tie, b.edges)
    for name in b.groups:
        for x, y in zip(a.groups[name], b.groups[name], strict=True):
            assert (x.label, x.queries) == (y.label, y.queries)
            assert x.mrr == pytest.approx(y.mrr, abs=1e-9)
    return True


def test_bad_edges_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for edges, why in [("3,1", "strictly increasing"), ("-1,3", ">= 0"), ("0,x", "integers")]:
        assert main(["evaluate", str(tmp_path), "--breakdown", f"--degree-edges={edges}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("distmap evaluate: error: --degree-edges:")
        assert why in err
        assert "\n" not in err
    assert main(["evaluate", str(tmp_path), "--degree-edges", "0,3"]) == 2
    assert "go with --breakdown" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "--ranks", "r.csv"]) == 2
    assert "--ranks: expected a .parquet" in capsys.readouterr().err


def _sharded_run(cfg: Config, ckpt_root: Path) -> None:
    from distmap.distributed.engine import ShardedEngine, move_into

    engine = ShardedEngine(cfg, KnowledgeGraph.load(cfg.data.path), torch.device("cpu"), None, move_into(ckpt_root))
    run(engine, cfg, log=lambda _: None, chief=engine.rank == 0)


def _worker(rank: int, size: int, port: int, cfg: Config, ckpt_root: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        _sharded_run(cfg, ckpt_root)
    finally:
        dist.destroy_process_group()


def test_two_workers_give_the_breakdown_of_one(uneven_dataset: Path, tmp_path: Path) -> None:
    """Whole sharded runs (gloo on 127.0.0.1, no Ray), as tests/test_dist_run.py runs them: the chief's
    breakdown of the all-reduced counts is the one of P = 1."""
    written = []
    for size in (1, 2):
        cfg = make_config(uneven_dataset, tmp_path / str(size), track=False)
        if size == 1:
            _sharded_run(cfg, tmp_path / "1" / "ckpt")
        else:
            mp.spawn(_worker, args=(size, free_port(), cfg, tmp_path / "2" / "ckpt"), nprocs=size, join=True)
        written.append(read_breakdown(Path(cfg.track.output_dir) / run_name(cfg)))
    single, sharded = written
    assert _close(sharded, single)
    assert single.group("answer_deg")["0"].queries == 2


def test_report_prints_the_answer_degree_buckets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tests.test_report import run_summary

    kg, scores = synthetic()
    b = breakdown_of(kg, ranked(kg, scores), "test")
    for seed in (0, 1):
        summary = {**run_summary(seed, 0.9), "run": f"r{seed}"}
        if seed == 0:
            summary["breakdown"] = b.to_dict(relations=False)
        (tmp_path / f"r{seed}").mkdir()
        (tmp_path / f"r{seed}" / "metrics.json").write_text(json.dumps(summary))
    assert main(["report", str(tmp_path)]) == 0
    plain = capsys.readouterr().out
    assert "answer" not in plain  # unchanged without --breakdown
    assert main(["report", str(tmp_path), "--breakdown"]) == 0
    out = capsys.readouterr().out
    cold = b.group("answer_deg")["0"]
    assert f"| r0 | wn9-img | complex | 0 | 0.900 | {cold.mrr:.3f} ({cold.share:.1%}) |" in out
    assert "| r1 | wn9-img | complex | 1 | 0.900 | no breakdown" in out
    assert "by the answer entity's train degree" in out
    assert "by the query entity's train degree" in out
    assert "| MRR | deg 0 | deg 1-3 | deg 4-10 | deg >10 |" in out
