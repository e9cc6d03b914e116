"""`distmap predict`: top-k = a stable argsort of the model's scores, known marks = the filter index,
a candidate's rank = the evaluator's, batch mode = single queries, one-line errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from distmap.cli import main
from distmap.data.kg import KnowledgeGraph
from distmap.data.prepare import SPLITS
from distmap.models.model import KGEModel
from distmap.predict import Predictor, Query, predict_file
from distmap.restore import load_best_model
from distmap.train.evaluate import both_directions, rank_queries
from distmap.train.fit import build_filter, fit
from tests.test_fit import make_config, quiet


@pytest.fixture(scope="module")
def trained(ring_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Predictor]:
    """A ComplEx run on the ring graph (30 entities) and a predictor that scores 7 entities at a time."""
    cfg = make_config(ring_dataset, tmp_path_factory.mktemp("predict"), epochs=4)
    cfg.track.enabled = False
    run_dir = fit(cfg, log=quiet).run_dir
    kg = KnowledgeGraph.load(ring_dataset)
    model, _ = load_best_model(run_dir, cfg, kg, torch.device("cpu"))
    return run_dir, Predictor(model, kg, "realistic", chunk_size=7)


def tied_copy(model: KGEModel, groups: list[range]) -> KGEModel:
    """A copy of ``model`` in which the entities of each group share one row, so their scores tie exactly.

    All parameters are rounded to multiples of 1/64 first, so every product and sum in a score is
    exact in float32: equal rows then score equal in any GEMM blocking, whatever chunk holds them.
    """
    tied = copy.deepcopy(model)
    with torch.no_grad():
        for p in tied.parameters():
            p.copy_((p * 64).round() / 64)
        for group in groups:
            tied.entities.weight[list(group)] = tied.entities.weight[group[0]].clone()
    return tied


def every_query(predictor: Predictor) -> list[Query]:
    n, relations = predictor.kg.num_entities, 2 * predictor.kg.num_relations
    return [Query(e, r) for e in range(n) for r in range(relations)]


def test_top_k_is_a_stable_argsort_of_the_model_scores(trained: tuple[Path, Predictor]) -> None:
    _, predictor = trained
    queries = every_query(predictor)
    h = torch.tensor([q.entity for q in queries])
    r = torch.tensor([q.relation for q in queries])
    with torch.no_grad():
        scores = predictor.model.score(h, r, 0, predictor.kg.num_entities)
    expected = scores.argsort(dim=1, descending=True, stable=True)[:, :10]
    found = predictor.top_k(queries, 10)
    assert torch.equal(found.ids, expected)
    assert torch.allclose(found.scores, scores.gather(1, expected))
    assert predictor.top_k(queries[:2], 100).ids.shape == (2, 30)  # k beyond N lists every entity


def test_ties_keep_entity_id_order_across_chunks(trained: tuple[Path, Predictor]) -> None:
    _, trained_predictor = trained
    model = tied_copy(trained_predictor.model, groups=[range(0, 30, 2), range(1, 30, 2)])  # two scores per query
    predictor = Predictor(model, trained_predictor.kg, "realistic", chunk_size=4)
    found = predictor.top_k([Query(3, 1)], 20)
    first = found.ids[0, 0].item() % 2
    assert found.ids[0].tolist() == [*range(first, 30, 2), *range(1 - first, 10, 2)]


def test_known_marks_equal_the_filter_index(trained: tuple[Path, Predictor]) -> None:
    _, predictor = trained
    kg, n = predictor.kg, predictor.kg.num_entities
    queries = every_query(predictor)
    found = predictor.top_k(queries, n)
    h = torch.tensor([q.entity for q in queries])
    r = torch.tensor([q.relation for q in queries])
    rows, cols = build_filter(kg, torch.device("cpu")).answers(h, r, 0, n)
    known = torch.zeros(len(queries), n, dtype=torch.bool)
    known[rows, cols] = True
    assert torch.equal(found.known >= 0, known.gather(1, found.ids))
    first_split = {}
    for index, split in reversed(list(enumerate(SPLITS))):
        for a, b, c in both_directions(kg.splits[split], kg.num_relations).tolist():
            first_split[(a, b, c)] = index
    marks = {
        (q.entity, q.relation, e): m
        for q, es, ms in zip(queries, found.ids.tolist(), found.known.tolist(), strict=True)
        for e, m in zip(es, ms, strict=True)
        if m >= 0
    }
    assert marks == first_split


@pytest.mark.parametrize("tie", ["realistic", "optimistic", "pessimistic"])
def test_candidate_rank_is_the_evaluators_rank(trained: tuple[Path, Predictor], tie: str) -> None:
    _, trained_predictor = trained
    kg, n = trained_predictor.kg, trained_predictor.kg.num_entities
    model = tied_copy(trained_predictor.model, groups=[range(0, 4), range(5, 8)])  # exact ties
    predictor = Predictor(model, kg, tie, chunk_size=7)
    queries = both_directions(kg.test, kg.num_relations)
    counts = rank_queries(model.score, queries, predictor.filter_index, n, batch_size=1, chunk_size=7)
    ranks = [predictor.candidate(Query(h, r), t)[1] for h, r, t in queries.tolist()]
    assert ranks == counts.ranks(tie).tolist()
    assert any(rank != int(rank) for rank in ranks) == (tie == "realistic")

    # an answer that is no known triple: ranked among the entities that are neither known nor itself
    h, r = 0, 0
    with torch.no_grad():  # scored in the predictor's chunks: a GEMM of another shape may differ in the last bit
        scores = torch.cat(
            [model.score(torch.tensor([h]), torch.tensor([r]), lo, min(lo + 7, n)) for lo in range(0, n, 7)], 1
        )[0]
    _, cols = predictor.filter_index.answers(torch.tensor([h]), torch.tensor([r]), 0, n)
    other = torch.ones(n, dtype=torch.bool)
    other[cols] = False
    unknown = int(other.nonzero()[3])
    other[unknown] = False
    score, rank = predictor.candidate(Query(h, r), unknown)
    assert score == pytest.approx(float(scores[unknown]))
    gt, eq = int((scores[other] > scores[unknown]).sum()), int((scores[other] == scores[unknown]).sum())
    assert rank == 1 + gt + {"optimistic": 0, "realistic": 0.5, "pessimistic": 1}[tie] * eq


def test_batch_mode_equals_single_queries(trained: tuple[Path, Predictor], tmp_path: Path) -> None:
    _, predictor = trained
    lines = [("e000", "next", "?"), ("?", "next", "e005"), ("e013", "opposite", "?"), ("?", "skip", "e029")] * 2
    queries_file = tmp_path / "queries.tsv"
    queries_file.write_text("".join("\t".join(line) + "\n" for line in lines) + "\n")  # a blank line is skipped
    for out in (tmp_path / "top.parquet", tmp_path / "top.tsv"):
        assert predict_file(predictor, queries_file, out, k=4, batch_size=3) == len(lines)
    rows = pq.read_table(tmp_path / "top.parquet").to_pylist()
    tsv = [line.split("\t") for line in (tmp_path / "top.tsv").read_text().splitlines()]
    assert tsv[0] == ["query", "rank", "entity", "score", "known"]
    assert len(rows) == len(tsv) - 1 == 4 * len(lines)
    for number, (head, relation, tail) in enumerate(lines):
        query = predictor.query(
            head=None if head == "?" else head, relation=relation, tail=None if tail == "?" else tail
        )
        single = predictor.rows(number, [query], predictor.top_k([query], 4)).to_pylist()
        batched = rows[4 * number : 4 * number + 4]
        # a batch of 3 is another GEMM shape than a batch of 1: scores may differ in the last bit
        assert [row.pop("score") for row in batched] == pytest.approx([row["score"] for row in single], rel=1e-6)
        assert batched == [{k: v for k, v in row.items() if k != "score"} for row in single]
        for row, line in zip(single, tsv[1 + 4 * number : 5 + 4 * number], strict=True):
            assert line[:3] == [str(row["query"]), str(row["rank"]), row["entity"]]
            assert float(line[3]) == pytest.approx(row["score"], rel=1e-6)
            assert line[4] == (row["known"] or "")


def test_cli_single_query_and_one_line_errors(
    trained: tuple[Path, Predictor], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir, predictor = trained
    run = str(run_dir)
    assert main(["predict", run, "--head", "e000", "--relation", "next", "--k", "3", "--candidate", "e001"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("(e000, next, ?): top 3 of 30 entities")
    found = predictor.top_k([predictor.query(head="e000", relation="next", tail=None)], 3)
    assert [line.split()[1] for line in out[2:5]] == [predictor.kg.entities[i] for i in found.ids[0]]
    assert out[5].startswith("candidate e001: score ")
    assert "known: " in out[5]
    assert (
        main(["predict", run, "--tail", "e001", "--relation", "next", "--tie", "pessimistic", "--candidate", "e000"])
        == 0
    )
    assert "(?, next, e001)" in capsys.readouterr().out

    def error(*argv: str) -> str:
        assert main(["predict", *argv]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.count("\n") == 1, captured.err
        assert "Traceback" not in captured.err
        return captured.err

    assert "unknown entity 'e0001' (closest: e001, e000, e021)" in error(run, "--head", "e0001", "--relation", "next")
    assert "unknown relation 'nxt' (closest: next)" in error(run, "--head", "e001", "--relation", "nxt")
    assert "unknown entity 'zzz' (no close names)" in error(
        run, "--head", "e001", "--relation", "next", "--candidate", "zzz"
    )
    assert "exactly one of --head and --tail" in error(run, "--head", "e001", "--tail", "e002", "--relation", "next")
    bad = tmp_path / "bad.tsv"
    bad.write_text("e000\tnext\t?\ne000\tnext\te001\n")
    assert f"{bad}:2: exactly one of head and tail" in error(
        run, "--queries", str(bad), "--out", str(tmp_path / "o.tsv")
    )
    bad.write_text("e000\tnext\t?\ne000\tnexd\t?\n")
    assert f"{bad}:2: unknown relation 'nexd'" in error(run, "--queries", str(bad), "--out", str(tmp_path / "o.tsv"))
    assert not list(tmp_path.glob("*o.tsv*"))  # neither the output nor its temporary file
    empty = tmp_path / "runs" / "empty"
    empty.mkdir(parents=True)
    (empty / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    assert "no checkpoint.pt here and no sharded checkpoint" in error(
        str(empty), "--head", "e001", "--relation", "next"
    )
    assert "config file not found" in error(str(tmp_path), "--head", "e001", "--relation", "next")
