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
from distmap.data.prepare import prepare_dataset
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
    assert checks["duplicate_triples"] == {"train": 1, "valid": 0, "test": 0}
    assert checks["overlap_with_train"] == {"valid": 1, "test": 1}
    valid_unseen = checks["unseen_in_train"]["valid"]
    assert valid_unseen["triples_with_unseen_entity"] == 1
    assert valid_unseen["unseen_entities"] == {"count": 1, "examples": ["d"]}
    assert valid_unseen["triples_with_unseen_relation"] == 1
    assert manifest["splits"]["train"]["triples"] == 4
    assert manifest["splits"]["valid"]["triples"] == 4
    assert any(line.startswith("WARNING") and "test" in line and "train" in line for line in lines)
    assert any("duplicate" in line for line in lines)


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
    assert manifest["checks"]["overlap_with_train"] == {"valid": 0, "test": 0}
