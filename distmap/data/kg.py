"""A prepared dataset directory loaded into memory: names, id triples and the manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from distmap.data.manifest import read_manifest, sha256_file
from distmap.data.prepare import SPLITS
from distmap.errors import DataError


@dataclass(frozen=True)
class KnowledgeGraph:
    """Entity/relation names (index = id) and the train/valid/test triples as (n, 3) int64."""

    root: Path
    entities: tuple[str, ...]
    relations: tuple[str, ...]
    splits: dict[str, torch.Tensor]
    manifest: dict[str, Any]

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    @property
    def num_relations(self) -> int:
        return len(self.relations)

    @property
    def train(self) -> torch.Tensor:
        return self.splits["train"]

    @property
    def valid(self) -> torch.Tensor:
        return self.splits["valid"]

    @property
    def test(self) -> torch.Tensor:
        return self.splits["test"]

    @classmethod
    def load(cls, root: str | Path, *, verify: bool = True, train: bool = True) -> KnowledgeGraph:
        """Load a dataset directory; `verify` checks every file read against the manifest's sha256.

        ``train=False`` leaves the train split unread (an empty tensor): a worker of a run with
        ``scale.shard_triples`` reads only its rows of it (``read_triple_rows``).
        """
        root = Path(root)
        manifest = read_manifest(root)
        entities = read_names(root, manifest, "entities", verify=verify)
        relations = read_names(root, manifest, "relations", verify=verify)
        splits = {
            split: _read_triples(root, manifest, split, len(entities), len(relations), verify=verify)
            if train or split != "train"
            else torch.empty(0, 3, dtype=torch.long)
            for split in SPLITS
        }
        return cls(root, entities, relations, splits, manifest)

    def read_triple_rows(self, split: str, lo: int, hi: int) -> tuple[torch.Tensor, list[int]]:
        """Rows [lo, hi) of a split's triples, reading only the Parquet row groups that overlap them.

        Returns the (hi - lo, 3) int64 triples and the indices of the row groups read.
        """
        path = self.root / self.manifest["splits"][split]["file"]
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(path, f"unreadable Parquet file ({str(exc).splitlines()[0]})") from None
        sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
        starts = np.cumsum([0, *sizes])
        groups = [g for g in range(len(sizes)) if starts[g] < hi and starts[g + 1] > lo and lo < hi]
        if not groups:
            return torch.empty(0, 3, dtype=torch.long), []
        data = parquet.read_row_groups(groups, columns=["h", "r", "t"])
        first = lo - int(starts[groups[0]])
        triples = np.stack([data.column(c).to_numpy() for c in ("h", "r", "t")], axis=1).astype(np.int64)
        triples = triples[first : first + hi - lo]
        _check_range(path, triples[:, [0, 2]], self.num_entities, "entity")
        _check_range(path, triples[:, 1], self.num_relations, "relation")
        return torch.from_numpy(triples), groups

    def all_triples(self) -> torch.Tensor:
        """train, valid and test stacked: the set of known true triples for filtered ranking."""
        return torch.cat([self.splits[split] for split in SPLITS])


def entity_degrees(triples: torch.Tensor, num_entities: int) -> torch.Tensor:
    """(N,) int64: the number of lines of ``triples`` each entity occurs in, as head or tail (a
    self-loop counts once). Degree 0 in train is a cold entity: structure cannot place it."""
    h, t = triples[:, 0], triples[:, 2]
    return torch.bincount(h, minlength=num_entities) + torch.bincount(t[t != h], minlength=num_entities)


def add_reciprocals(triples: torch.Tensor, num_relations: int) -> torch.Tensor:
    """(h, r, t) rows followed by (t, r + R, h): head prediction becomes tail prediction."""
    inverse = torch.stack([triples[:, 2], triples[:, 1] + num_relations, triples[:, 0]], dim=1)
    return torch.cat([triples, inverse])


def read_names(root: Path, manifest: dict[str, Any], table: str, *, verify: bool = True) -> tuple[str, ...]:
    """Names of `entities` or `relations`, whose row i must hold id i."""
    return tuple(name_column(root, manifest, table, verify=verify).to_pylist())


def name_column(root: Path, manifest: dict[str, Any], table: str, *, verify: bool = True) -> pa.ChunkedArray:
    """`read_names` as an Arrow column: row i = id i, about a byte per character (no Python strings),
    for readers that go over a large table range by range."""
    path = checked_file(root, manifest[table], verify)
    data = _read_parquet(path, ["id", "name"])
    ids = data.column("id").to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise DataError(path, "ids are not 0..n-1 in row order")
    expected = manifest[f"num_{table}"]
    if len(ids) != expected:
        raise DataError(path, f"{len(ids):,} rows but the manifest says {expected:,}")
    return data.column("name")


def _read_triples(
    root: Path, manifest: dict[str, Any], split: str, num_entities: int, num_relations: int, *, verify: bool
) -> torch.Tensor:
    entry = manifest["splits"][split]
    path = checked_file(root, entry, verify)
    data = _read_parquet(path, ["h", "r", "t"])
    triples = np.stack([data.column(c).to_numpy() for c in ("h", "r", "t")], axis=1).astype(np.int64)
    if len(triples) != entry["triples"]:
        raise DataError(path, f"{len(triples):,} triples but the manifest says {entry['triples']:,}")
    _check_range(path, triples[:, [0, 2]], num_entities, "entity")
    _check_range(path, triples[:, 1], num_relations, "relation")
    return torch.from_numpy(triples)


def _check_range(path: Path, ids: np.ndarray, size: int, kind: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= size):
        raise DataError(path, f"{kind} id out of range [0, {size}): min {ids.min()}, max {ids.max()}")


def checked_file(root: Path, entry: dict[str, Any], verify: bool = True) -> Path:
    """The file a manifest entry lists, there and (``verify``) with the checksum the manifest records."""
    path = root / entry["file"]
    if not path.is_file():
        raise DataError(path, "file listed in the manifest is missing")
    if verify and sha256_file(path) != entry["sha256"]:
        raise DataError(path, "checksum mismatch with manifest.json: the file changed after it was written")
    return path


def _read_parquet(path: Path, columns: list[str]) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(path, f"unreadable Parquet file ({str(exc).splitlines()[0]})") from None
