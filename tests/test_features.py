"""embed_text (fake encoder, plus one run of the real offline encoder) and import_features."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distmap.data.features import embed_text, import_features
from distmap.data.manifest import read_manifest
from distmap.data.prepare import prepare_dataset
from distmap.data.shards import FeatureShards

REPO = Path(__file__).resolve().parents[1]
ENTITIES = ["a", "b", "c", "d"]


def prepared(folder: Path, entities: list[str]) -> Path:
    """A chain graph over `entities` (all in train), prepared under folder/out."""
    raw = folder / "raw"
    raw.mkdir()
    lines = [f"{h}\tnext\t{t}\n" for h, t in itertools.pairwise(entities)]
    (raw / "train.tsv").write_text("".join(lines))
    (raw / "valid.tsv").write_text(lines[0])
    (raw / "test.tsv").write_text(lines[-1])
    prepare_dataset(raw, folder / "out", log=lambda _: None)
    return folder / "out"


class FakeEncoder:
    """Records what it was asked to encode; vector = (length of text, 1)."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.texts.extend(texts)
        return np.array([[len(t), 1.0] for t in texts])


def test_embed_text_masks_missing_text_and_reports_unknown_rows(tmp_path: Path) -> None:
    dataset = prepared(tmp_path, ENTITIES)
    text = tmp_path / "text.tsv"
    text.write_text("entity\tname\tdescription\nc\tSea\t\nzz\tGhost\tnot here\na\tAy\tfirst letter\nb\t\t\n\n")
    encoder, lines = FakeEncoder(), []
    entry = embed_text(dataset, text, encoder=encoder, log=lines.append)
    assert encoder.texts == ["Ay. first letter", "Sea"]
    assert (entry["dim"], entry["present"], entry["unknown_rows"]) == (2, 2, 1)
    assert entry["columns"] == ["name", "description"]
    block = FeatureShards(dataset, "text").read(0, 4)
    np.testing.assert_array_equal(block.mask, [True, False, True, False])
    np.testing.assert_array_equal(block.values, [[16, 1], [0, 0], [3, 1], [0, 0]])
    assert any(line.startswith("WARNING") and "zz" in line for line in lines)
    assert any("1 without a row, 1 with empty text" in line for line in lines)
    assert any("skipped 1 blank line(s), e.g. line(s) [6]" in line for line in lines)


def test_embed_text_selected_columns_and_gzip(tmp_path: Path) -> None:
    dataset = prepared(tmp_path, ENTITIES)
    text = tmp_path / "text.tsv.gz"
    text.write_bytes(gzip.compress(b"entity\tname\tdescription\na\tAy\tx\nb\tBee\ty\nc\tSea\t\nd\tDee\tz\n"))
    encoder = FakeEncoder()
    entry = embed_text(dataset, text, columns=["description"], modality="desc", encoder=encoder, log=lambda _: None)
    assert encoder.texts == ["x", "y", "z"]
    assert entry["columns"] == ["description"]
    assert list(read_manifest(dataset)["features"]) == ["desc"]


def test_import_npy_in_sorted_entity_order(tmp_path: Path) -> None:
    dataset = prepared(tmp_path, ENTITIES)
    matrix = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.save(tmp_path / "m.npy", matrix)
    entry = import_features(dataset, "visual", tmp_path / "m.npy", log=lambda _: None)
    assert (entry["dim"], entry["present"], entry["original_dtype"]) == (3, 4, "float64")
    block = FeatureShards(dataset, "visual").read(0, 4)
    assert block.values.dtype == np.float32
    np.testing.assert_array_equal(block.values, matrix)
    assert block.mask.all()


@pytest.mark.parametrize("list_type", [pa.list_(pa.float64()), pa.list_(pa.float32(), 2)])
def test_import_parquet_without_ids(tmp_path: Path, list_type: pa.DataType) -> None:
    dataset = prepared(tmp_path, ENTITIES)
    rows = [[float(i), -float(i)] for i in range(4)]
    pq.write_table(pa.table({"vec": pa.array(rows, list_type)}), tmp_path / "f.parquet")
    import_features(dataset, "visual", tmp_path / "f.parquet", log=lambda _: None)
    np.testing.assert_array_equal(FeatureShards(dataset, "visual").read(0, 4).values, rows)


def test_import_parquet_with_ids_in_any_order(tmp_path: Path) -> None:
    dataset = prepared(tmp_path, ENTITIES)
    table = pa.table({"name": ["d", "a", "b"], "vec": [[4.0, 4.0], [1.0, 1.0], [2, 2]], "other": [1, 2, 3]})
    pq.write_table(table, tmp_path / "f.parquet")
    lines: list[str] = []
    entry = import_features(dataset, "visual", tmp_path / "f.parquet", id_column="name", log=lines.append)
    assert entry["present"] == 3
    block = FeatureShards(dataset, "visual").read(0, 4)
    np.testing.assert_array_equal(block.mask, [True, True, False, True])
    np.testing.assert_array_equal(block.values, [[1, 1], [2, 2], [0, 0], [4, 4]])
    assert any("1 of 4 entities have no row" in line for line in lines)


def test_real_offline_encoder_on_wn9_glosses(tmp_path: Path) -> None:
    """The default encoder (all-MiniLM-L6-v2 from the wheel, no network) on 10 glosses."""
    glosses = REPO / "data" / "raw" / "wn9-img" / "wordnet30_glosses.tsv.gz"
    with gzip.open(glosses, "rt", encoding="utf-8") as stream:
        head = [next(stream) for _ in range(11)]
    text = tmp_path / "glosses.tsv"
    text.write_text("".join(head))
    dataset = prepared(tmp_path, [line.split("\t")[0] for line in head[1:]])
    entry = embed_text(dataset, text, log=lambda _: None)
    block = FeatureShards(dataset, "text").read(0, 10)
    assert block.values.shape == (10, 384)
    assert block.mask.all()
    np.testing.assert_allclose(np.linalg.norm(block.values, axis=1), 1.0, atol=1e-5)
    assert "MiniLM" in entry["encoder"]
