"""Feature shards: round trip, range reads that open only overlapping parts, masks, manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distmap.data.manifest import read_manifest
from distmap.data.prepare import prepare_dataset
from distmap.data.shards import FeatureShards, write_feature_shards
from distmap.errors import DataError

N = 10


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A prepared chain graph e0 -> e1 -> ... -> e9 (10 entity rows)."""
    raw = tmp_path / "chain"
    raw.mkdir()
    lines = [f"e{i}\tnext\te{i + 1}\n" for i in range(N - 1)]
    (raw / "train.tsv").write_text("".join(lines))
    (raw / "valid.tsv").write_text(lines[0])
    (raw / "test.tsv").write_text(lines[1])
    prepare_dataset(raw, tmp_path / "out", log=lambda _: None)
    return tmp_path / "out"


@pytest.fixture
def features() -> tuple[np.ndarray, np.ndarray]:
    values = np.random.default_rng(0).normal(size=(N, 4)).astype(np.float32)
    mask = np.ones(N, dtype=bool)
    mask[[2, 7]] = False
    return values, mask


def expected(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask[:, None], values, 0).astype(np.float32)


def test_round_trip_with_uneven_parts(dataset: Path, features: tuple[np.ndarray, np.ndarray]) -> None:
    values, mask = features
    entry = write_feature_shards(
        dataset, "visual", values, mask, rows_per_part=3, source="synthetic", extra={"note": "x"}
    )
    assert [(p["lo"], p["hi"]) for p in entry["parts"]] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert (entry["dim"], entry["rows"], entry["present"], entry["note"]) == (4, N, 8, "x")
    assert read_manifest(dataset)["features"]["visual"] == entry
    shards = FeatureShards(dataset, "visual")
    assert (shards.dim, shards.num_rows) == (4, N)
    block = shards.read(0, N)
    assert block.values.dtype == np.float32
    assert block.values.shape == (N, 4)
    np.testing.assert_array_equal(block.values, expected(values, mask))
    np.testing.assert_array_equal(block.mask, mask)
    assert len(block.parts_read) == 4


def test_parts_hold_fixed_size_lists_and_ids(dataset: Path, features: tuple[np.ndarray, np.ndarray]) -> None:
    write_feature_shards(dataset, "visual", *features, rows_per_part=4, source="synthetic")
    part = pq.read_table(dataset / "features" / "visual" / "part-00001.parquet")
    assert part.schema.field("value").type == pa.list_(pa.float32(), 4)
    assert part.schema.field("id").type == pa.int32()
    assert part.column("id").to_pylist() == [4, 5, 6, 7]
    assert part.column("present").to_pylist() == [True, True, True, False]
    assert part.column("value").to_pylist()[3] == [0.0] * 4


@pytest.mark.parametrize(
    ("lo", "hi", "parts"),
    [
        (3, 6, ["part-00001.parquet"]),
        (4, 5, ["part-00001.parquet"]),
        (2, 7, ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]),
        (5, 10, ["part-00001.parquet", "part-00002.parquet", "part-00003.parquet"]),
        (9, 10, ["part-00003.parquet"]),
        (6, 6, []),
    ],
)
def test_range_reads_open_only_overlapping_parts(
    dataset: Path, features: tuple[np.ndarray, np.ndarray], lo: int, hi: int, parts: list[str]
) -> None:
    values, mask = features
    write_feature_shards(dataset, "visual", values, mask, rows_per_part=3, source="synthetic")
    block = FeatureShards(dataset, "visual").read(lo, hi)
    assert list(block.parts_read) == parts
    assert (block.lo, block.hi) == (lo, hi)
    np.testing.assert_array_equal(block.values, expected(values, mask)[lo:hi])
    np.testing.assert_array_equal(block.mask, mask[lo:hi])


def test_rewrite_replaces_the_modality(dataset: Path, features: tuple[np.ndarray, np.ndarray]) -> None:
    values, mask = features
    write_feature_shards(dataset, "visual", values, mask, rows_per_part=3, source="first")
    write_feature_shards(dataset, "visual", values[:, :2], np.ones(N, bool), rows_per_part=8, source="second")
    files = sorted(p.name for p in (dataset / "features" / "visual").iterdir())
    assert files == ["part-00000.parquet", "part-00001.parquet"]
    shards = FeatureShards(dataset, "visual")
    assert shards.dim == 2
    assert shards.entry["source"] == "second"
    np.testing.assert_array_equal(shards.read(0, N).values, values[:, :2])


def test_caller_arrays_are_not_modified(dataset: Path, features: tuple[np.ndarray, np.ndarray]) -> None:
    values, mask = features
    before = values.copy()
    write_feature_shards(dataset, "visual", values, mask, source="synthetic")
    np.testing.assert_array_equal(values, before)


def test_missing_modality_lists_the_available_ones(dataset: Path, features: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(DataError, match="no feature modality 'text'; available: none"):
        FeatureShards(dataset, "text")
    write_feature_shards(dataset, "visual", *features, source="synthetic")
    with pytest.raises(DataError, match="available: visual"):
        FeatureShards(dataset, "text")


def test_changed_part_is_detected(dataset: Path, features: tuple[np.ndarray, np.ndarray]) -> None:
    write_feature_shards(dataset, "visual", *features, rows_per_part=5, source="synthetic")
    part = dataset / "features" / "visual" / "part-00001.parquet"
    part.write_bytes(part.read_bytes() + b"\0")
    shards = FeatureShards(dataset, "visual")
    assert shards.read(0, 5).parts_read == ("part-00000.parquet",)
    with pytest.raises(DataError, match=r"part-00001\.parquet: checksum mismatch"):
        shards.read(4, 6)


def test_bad_arguments_are_refused(dataset: Path, features: tuple[np.ndarray, np.ndarray]) -> None:
    values, mask = features
    with pytest.raises(ValueError, match=r"values must be \(10, D >= 1\)"):
        write_feature_shards(dataset, "visual", values[:5], mask, source="synthetic")
    with pytest.raises(ValueError, match="finite"):
        write_feature_shards(dataset, "visual", np.full((N, 4), np.nan, np.float32), mask, source="synthetic")
    write_feature_shards(dataset, "visual", values, mask, source="synthetic")
    with pytest.raises(IndexError):
        FeatureShards(dataset, "visual").read(5, N + 1)
