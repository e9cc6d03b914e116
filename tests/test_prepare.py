"""prepare_dataset and KnowledgeGraph on tiny synthetic folders, plus one real WN9-IMG check."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distmap.data.kg import KnowledgeGraph, add_reciprocals
from distmap.data.prepare import SPLITS, prepare_dataset
from distmap.errors import DataError, DistmapError

REPO = Path(__file__).resolve().parents[1]

TRAIN = "b\tlikes\ta\nc\tknows\tb\na\tlikes\tc\n"
VALID = "a\tknows\tc\n"
TEST = "c\tlikes\tb\n"


def write_raw(folder: Path, files: dict[str, str | bytes]) -> Path:
    """A raw folder from {file name: content}; `.gz` names are gzip-compressed."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        (folder / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return folder


def tiny(folder: Path, overrides: dict[str, str] | None = None) -> Path:
    """The toy graph (entities a, b, c; relations knows, likes), with files replaced or added."""
    return write_raw(folder, {"train.tsv": TRAIN, "valid.tsv": VALID, "test.tsv": TEST, **(overrides or {})})


def test_ids_follow_sorted_names_and_tables_are_int32(tmp_path: Path) -> None:
    raw = tiny(tmp_path / "toy")
    manifest = prepare_dataset(raw, tmp_path / "out", log=lambda _: None)
    out = tmp_path / "out"
    entities = pq.read_table(out / "entities.parquet")
    assert entities.schema.field("id").type == pa.int32()
    assert entities.schema.field("name").type == pa.string()
    assert entities.column("name").to_pylist() == ["a", "b", "c"]
    assert pq.read_table(out / "relations.parquet").column("name").to_pylist() == ["knows", "likes"]
    train = pq.read_table(out / "train.parquet")
    assert [train.schema.field(c).type for c in "hrt"] == [pa.int32()] * 3
    assert [list(row.values()) for row in train.to_pylist()] == [[1, 1, 0], [2, 0, 1], [0, 1, 2]]
    assert manifest["dataset"] == "toy"
    assert manifest["num_entities"] == 3
    assert manifest["num_relations"] == 2
    assert [manifest["splits"][s]["triples"] for s in ("train", "valid", "test")] == [3, 1, 1]
    assert manifest["features"] == {}
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_oddities_are_counted_reported_and_kept(tmp_path: Path) -> None:
    raw = tiny(
        tmp_path / "odd",
        {
            "train.tsv": TRAIN + "b\tlikes\ta\n",
            "valid.tsv": "a\tknows\tc\nb\tlikes\ta\nd\tknows\ta\na\thates\tb\n",
            "test.tsv": "a\tlikes\tc\nc\tlikes\tb\n",
        },
    )
    lines: list[str] = []
    manifest = prepare_dataset(raw, tmp_path / "out", log=lines.append)
    checks = manifest["checks"]
    hygiene = manifest["split_hygiene"]
    assert hygiene["duplicates"]["train"] == {"unique": 1, "lines": 1}
    assert hygiene["overlap"]["valid_in_train"] == {"unique": 1, "lines": 1}
    assert hygiene["overlap"]["test_in_train"] == {"unique": 1, "lines": 1}
    valid_unseen = checks["unseen_in_train"]["valid"]
    assert valid_unseen["triples_with_unseen_entity"] == 1
    assert valid_unseen["unseen_entities"] == {"count": 1, "examples": ["d"]}
    assert valid_unseen["triples_with_unseen_relation"] == 1
    assert manifest["splits"]["train"]["triples"] == 4
    assert manifest["splits"]["valid"]["triples"] == 4
    assert any(line.startswith("WARNING") and "train ∩ test" in line for line in lines)
    assert any("duplicates in train" in line for line in lines)


def test_listings_are_unioned_into_the_id_tables(tmp_path: Path) -> None:
    raw = tiny(
        tmp_path / "listed",
        {
            "entities.tsv": "entity\textra\nc\t1\nzz\t2\n\na\t3\nb\t4\n0first\t5\n",
            "relations.tsv": "relation\nlikes\nknows\nunused\n",
        },
    )
    manifest = prepare_dataset(raw, tmp_path / "out", log=lambda _: None)
    kg = KnowledgeGraph.load(tmp_path / "out")
    assert kg.entities == ("0first", "a", "b", "c", "zz")
    assert kg.relations == ("knows", "likes", "unused")
    unused = manifest["checks"]["listed_not_in_triples"]
    assert unused["entities"] == {"count": 2, "examples": ["0first", "zz"]}
    assert unused["relations"]["count"] == 1
    assert manifest["checks"]["blank_lines"] == {"entities.tsv": {"count": 1, "examples": [4]}}


def test_triples_not_in_the_listing_are_reported(tmp_path: Path) -> None:
    raw = tiny(tmp_path / "partial", {"entities.tsv": "entity\na\nb\n"})
    lines: list[str] = []
    manifest = prepare_dataset(raw, tmp_path / "out", log=lines.append)
    assert manifest["checks"]["in_triples_not_listed"]["entities"] == {"count": 1, "examples": ["c"]}
    assert manifest["num_entities"] == 3
    assert any(line.startswith("WARNING") and "listing" in line for line in lines)


def test_gzip_crlf_and_blank_lines(tmp_path: Path) -> None:
    raw = write_raw(
        tmp_path / "gz",
        {"train.tsv.gz": TRAIN.replace("\n", "\r\n") + "\r\n\n", "valid.tsv": "\n" + VALID, "test.tsv.gz": TEST},
    )
    lines: list[str] = []
    manifest = prepare_dataset(raw, tmp_path / "out", log=lines.append)
    assert manifest["splits"]["train"]["triples"] == 3
    assert manifest["checks"]["blank_lines"] == {
        "train.tsv.gz": {"count": 2, "examples": [4, 5]},
        "valid.tsv": {"count": 1, "examples": [1]},
    }
    assert sum("blank line" in line for line in lines) == 2
    kg = KnowledgeGraph.load(tmp_path / "out")
    assert kg.entities == ("a", "b", "c")


def test_existing_dataset_is_refused_unless_overwrite(tmp_path: Path) -> None:
    raw = tiny(tmp_path / "toy")
    out = tmp_path / "out"
    prepare_dataset(raw, out, log=lambda _: None)
    (out / "features").mkdir()
    with pytest.raises(DistmapError, match="--overwrite"):
        prepare_dataset(raw, out, log=lambda _: None)
    prepare_dataset(raw, out, overwrite=True, log=lambda _: None)
    assert not (out / "features").exists()


def test_knowledge_graph_round_trip(tmp_path: Path) -> None:
    prepare_dataset(tiny(tmp_path / "toy"), tmp_path / "out", log=lambda _: None)
    kg = KnowledgeGraph.load(tmp_path / "out")
    assert (kg.num_entities, kg.num_relations) == (3, 2)
    assert kg.train.dtype == torch.int64
    assert kg.train.shape == (3, 3)
    named = [(kg.entities[h], kg.relations[r], kg.entities[t]) for h, r, t in kg.train.tolist()]
    assert named == [tuple(line.split("\t")) for line in TRAIN.splitlines()]
    assert torch.equal(kg.all_triples(), torch.cat([kg.train, kg.valid, kg.test]))


def test_load_detects_a_changed_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_dataset(tiny(tmp_path / "toy"), out, log=lambda _: None)
    one = np.array([0], np.int32)
    pq.write_table(pa.table({"h": one, "r": one, "t": np.array([9], np.int32)}), out / "test.parquet")
    with pytest.raises(DataError, match=r"test\.parquet: checksum mismatch"):
        KnowledgeGraph.load(out)
    with pytest.raises(DataError, match=r"entity id out of range \[0, 3\)"):
        KnowledgeGraph.load(out, verify=False)


def test_load_names_a_missing_directory_and_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        KnowledgeGraph.load(tmp_path / "nowhere")
    out = tmp_path / "out"
    prepare_dataset(tiny(tmp_path / "toy"), out, log=lambda _: None)
    (out / "valid.parquet").unlink()
    with pytest.raises(DataError, match=r"valid\.parquet: file listed in the manifest is missing"):
        KnowledgeGraph.load(out)


def test_add_reciprocals() -> None:
    triples = torch.tensor([[0, 1, 2], [3, 0, 4]])
    both = add_reciprocals(triples, num_relations=5)
    assert both.tolist() == [[0, 1, 2], [3, 0, 4], [2, 6, 0], [4, 5, 3]]


def test_wn9_img_ids_match_the_published_sorted_order(tmp_path: Path) -> None:
    raw = REPO / "data" / "raw" / "wn9-img"
    manifest = prepare_dataset(raw, tmp_path / "wn9", log=lambda _: None)
    assert (manifest["num_entities"], manifest["num_relations"]) == (6555, 9)
    assert [manifest["splits"][s]["triples"] for s in ("train", "valid", "test")] == [11741, 1337, 1319]
    kg = KnowledgeGraph.load(tmp_path / "wn9")
    published = {}
    for line in (raw / "entities.tsv").read_text().splitlines()[1:]:
        name, _, sorted_idx = line.split("\t")
        published[name] = int(sorted_idx)
    assert {name: i for i, name in enumerate(kg.entities)} == published
    overlap = manifest["split_hygiene"]["overlap"]
    assert overlap == {name: {"unique": 0, "lines": 0} for name in ("valid_in_train", "test_in_train", "valid_in_test")}


# ---------------------------------------------------------------- split hygiene

# Every kind of problem, with lines != unique where that can differ (line numbers in comments).
DIRTY = {
    # 1-4 and 6 distinct; 5 repeats 2 and 7 repeats 1: 2 duplicate triples on 2 surplus lines
    "train.tsv": "a\tlikes\tb\nb\tlikes\tc\nc\tlikes\td\nd\tknows\ta\nb\tlikes\tc\na\tknows\tc\na\tlikes\tb\n",
    # train ∩ valid: a-likes-b on lines 1, 2 (2 lines, 1 triple) and d-knows-a on line 7;
    # duplicates: line 2 repeats 1, line 6 repeats 3, line 8 repeats 3 (2 triples, 3 surplus lines);
    # valid ∩ test: b-knows-d on line 4; unseen in train: e on line 5
    "valid.tsv": "a\tlikes\tb\na\tlikes\tb\nc\tknows\ta\nb\tknows\td\ne\tknows\tb\nc\tknows\ta\nd\tknows\ta\n"
    "c\tknows\ta\n",
    # train ∩ test: c-likes-d (line 3); unseen: e-likes-a twice (lines 4, 5), which is also a duplicate
    "test.tsv": "b\tknows\td\nd\tlikes\tb\nc\tlikes\td\ne\tlikes\ta\ne\tlikes\ta\n",
}
DIRTY_HYGIENE = {
    "lines": {"train": 7, "valid": 8, "test": 5},
    "duplicates": {
        "train": {"unique": 2, "lines": 2},
        "valid": {"unique": 2, "lines": 3},
        "test": {"unique": 1, "lines": 1},
    },
    "overlap": {
        "valid_in_train": {"unique": 2, "lines": 3},
        "test_in_train": {"unique": 1, "lines": 1},
        "valid_in_test": {"unique": 1, "lines": 1},
    },
    "unseen_in_train": {"valid": {"unique": 1, "lines": 1}, "test": {"unique": 1, "lines": 2}},
}


def test_split_hygiene_counts_each_kind_exactly(tmp_path: Path) -> None:
    lines: list[str] = []
    manifest = prepare_dataset(write_raw(tmp_path / "dirty", DIRTY), tmp_path / "out", log=lines.append)
    assert manifest["split_hygiene"] == {**DIRTY_HYGIENE, "cleaned": None}
    block = [line for line in lines if line.startswith("WARNING")]
    assert block[0] == "WARNING: split hygiene (dirty): 8 problem(s)"
    assert block[1:-1] == [
        "WARNING:   - duplicates in train: 2 triple(s) repeated on 2 surplus line(s) = 28.57% of train's 7 lines",
        "WARNING:   - duplicates in valid: 2 triple(s) repeated on 3 surplus line(s) = 37.50% of valid's 8 lines",
        "WARNING:   - duplicates in test: 1 triple(s) repeated on 1 surplus line(s) = 20.00% of test's 5 lines",
        "WARNING:   - train ∩ valid: 2 triple(s) on 3 valid line(s) also occur in train = 37.50% of valid's 8 lines: "
        "valid metrics are inflated and model selection rewards memorising train "
        "(over 5%: `distmap train` refuses to select on it)",
        "WARNING:   - train ∩ test: 1 triple(s) on 1 test line(s) also occur in train = 20.00% of test's 5 lines: "
        "test metrics are inflated",
        "WARNING:   - valid ∩ test: 1 triple(s) on 1 valid line(s) also occur in test = 12.50% of valid's 8 lines: "
        "selecting on valid peeks at test",
        "WARNING:   - unseen in train: 1 valid triple(s) on 1 line(s) have an entity or relation that no train triple "
        "has = 12.50% of valid's 8 lines",
        "WARNING:   - unseen in train: 1 test triple(s) on 2 line(s) have an entity or relation that no train triple "
        "has = 40.00% of test's 5 lines",
    ]
    assert "--clean" in block[-1]
    # Without --clean the data is as published: every line kept, nothing else written.
    assert [manifest["splits"][s]["triples"] for s in ("train", "valid", "test")] == [7, 8, 5]
    assert not (tmp_path / "out" / "removed.tsv").exists()


def test_a_clean_split_says_so_in_one_line(tmp_path: Path) -> None:
    lines: list[str] = []
    manifest = prepare_dataset(tiny(tmp_path / "toy"), tmp_path / "out", log=lines.append)
    assert manifest["split_hygiene"]["overlap"]["valid_in_train"] == {"unique": 0, "lines": 0}
    assert not any(line.startswith("WARNING") for line in lines)
    assert sum(line.startswith("split hygiene (toy): no duplicates") for line in lines) == 1


def named_triples(dataset: Path, split: str) -> list[tuple[str, str, str]]:
    kg = KnowledgeGraph.load(dataset)
    return [(kg.entities[h], kg.relations[r], kg.entities[t]) for h, r, t in kg.splits[split].tolist()]


def test_clean_plus_removed_tsv_hold_every_input_line_once(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "dirty", DIRTY)
    lines: list[str] = []
    manifest = prepare_dataset(raw, tmp_path / "out", clean=True, log=lines.append)
    removed = [row.split("\t") for row in (tmp_path / "out" / "removed.tsv").read_text().splitlines()]
    assert removed[0] == ["split", "line", "head", "relation", "tail", "reason"]
    by_split: dict[str, list[list[str]]] = {"train": [], "valid": [], "test": []}
    for split, *row in removed[1:]:
        by_split[split].append(row)
    for split, content in DIRTY.items():
        split = split.removesuffix(".tsv")
        numbered = {i: tuple(line.split("\t")) for i, line in enumerate(content.splitlines(), start=1)}
        gone = {int(line): (h, r, t) for line, h, r, t, _ in by_split[split]}
        assert all(numbered[line] == triple for line, triple in gone.items()), split  # names and line agree
        kept = [triple for line, triple in numbered.items() if line not in gone]
        assert named_triples(tmp_path / "out", split) == kept, split  # the rest, in file order
        assert len(gone) + len(kept) == len(numbered)
    reasons = {(split, int(line)): why for split, line, *_, why in removed[1:]}
    assert reasons == {
        ("train", 5): "duplicate of line 2",
        ("train", 7): "duplicate of line 1",
        ("valid", 1): "also in train",
        ("valid", 2): "also in train; duplicate of line 1",
        ("valid", 4): "also in test",
        ("valid", 6): "duplicate of line 3",
        ("valid", 7): "also in train",
        ("valid", 8): "duplicate of line 3",
        ("test", 5): "duplicate of line 4",
    }
    hygiene = manifest["split_hygiene"]
    assert hygiene["cleaned"]["as_published"] == DIRTY_HYGIENE
    assert hygiene["cleaned"]["removed_lines"] == {"train": 2, "valid": 6, "test": 1}
    assert hygiene["lines"] == {"train": 5, "valid": 2, "test": 4}
    assert all(c == {"unique": 0, "lines": 0} for c in hygiene["duplicates"].values())
    assert hygiene["overlap"]["valid_in_train"] == hygiene["overlap"]["valid_in_test"] == {"unique": 0, "lines": 0}
    assert hygiene["overlap"]["test_in_train"] == {"unique": 1, "lines": 1}  # test stays as published
    # ids are those of the uncleaned dataset: feature matrices fit both
    assert manifest["num_entities"] == 5
    assert any("removing 9 line(s) (train 2, valid 6, test 1)" in line for line in lines)
    # A later preparation without --clean leaves no stale removed.tsv behind.
    prepare_dataset(raw, tmp_path / "out", overwrite=True, log=lambda _: None)
    assert not (tmp_path / "out" / "removed.tsv").exists()


def test_clean_refuses_to_empty_a_split(tmp_path: Path) -> None:
    raw = tiny(tmp_path / "leak", {"valid.tsv": "b\tlikes\ta\n"})
    with pytest.raises(DistmapError, match="leave split 'valid' empty"):
        prepare_dataset(raw, tmp_path / "out", clean=True, log=lambda _: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("header", ["head\trelation\ttail", "H\tR\tT", "Subject\tPredicate\tObject"])
def test_a_header_row_is_an_error_naming_skip_header(tmp_path: Path, header: str) -> None:
    raw = tiny(tmp_path / "headed", {"valid.tsv": f"{header}\n{VALID}"})
    with pytest.raises(DataError, match=r"valid\.tsv:1: looks like a header row .*--skip-header"):
        prepare_dataset(raw, tmp_path / "out", log=lambda _: None)


def test_skip_header_prepares_the_headerless_dataset(tmp_path: Path) -> None:
    plain = prepare_dataset(tiny(tmp_path / "plain"), tmp_path / "a", log=lambda _: None)
    headed = tiny(
        tmp_path / "headed",
        {
            f"{split}.tsv": f"head\trelation\ttail\n{content}"
            for split, content in zip(SPLITS, (TRAIN, VALID, TEST), strict=True)
        },
    )
    lines: list[str] = []
    skipped = prepare_dataset(headed, tmp_path / "b", skip_header=True, log=lines.append)
    for key in ("entities", "relations", "splits", "split_hygiene", "num_entities", "num_relations"):
        assert skipped[key] == plain[key], key
    assert skipped["checks"]["skipped_first_lines"] == {f"{s}.tsv": "head\trelation\ttail" for s in SPLITS}
    assert sum("skipped line 1 (--skip-header)" in line for line in lines) == 3


def test_a_header_like_line_after_the_first_is_data(tmp_path: Path) -> None:
    raw = tiny(tmp_path / "toy", {"train.tsv": TRAIN + "head\trelation\ttail\n"})
    manifest = prepare_dataset(raw, tmp_path / "o", log=lambda _: None)
    assert manifest["splits"]["train"]["triples"] == 4
    assert "relation" in KnowledgeGraph.load(tmp_path / "o").relations


def test_unseen_triples_alone_do_not_suggest_clean(tmp_path: Path) -> None:
    lines: list[str] = []
    prepare_dataset(tiny(tmp_path / "toy", {"test.tsv": "c\tlikes\tz\n"}), tmp_path / "o", log=lines.append)
    assert lines[-2] == "WARNING: kept as published; --clean would keep these (train ∩ test, unseen)"


def test_every_dataset_file_has_the_same_mode(tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_dataset(write_raw(tmp_path / "dirty", DIRTY), out, clean=True, log=lambda _: None)
    modes = {path.name: path.stat().st_mode & 0o777 for path in out.iterdir()}
    assert "manifest.json" in modes
    assert len(set(modes.values())) == 1, modes
