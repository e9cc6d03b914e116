"""Raw TSV triples -> a validated dataset directory (Parquet tables + manifest.json).

Ids are positions in the sorted name lists: that is the row order of published feature
matrices, so a user's matrix drops in without a remap. Nothing is dropped: oddities
(duplicates, unseen entities, train/test overlap, blank lines) are counted and reported.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distmap.data.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    write_manifest,
    write_parquet,
)
from distmap.data.tsv import TsvReader, find_tsv, read_header
from distmap.errors import DataError, DistmapError

SPLITS = ("train", "valid", "test")
TRIPLE_COLUMNS = ("head", "relation", "tail")
ID_ORDER = "id = position of the name in Python sorted() order (Unicode code points)"
LARGE_FILE_BYTES = 1 << 20  # show a progress bar from this size on disk
EXAMPLES = 5

Log = Callable[[str], None]


@dataclass
class RawSplit:
    """One split's triples as names, plus the blank lines seen while reading it."""

    path: Path
    heads: list[str] = field(default_factory=list)
    relations: list[str] = field(default_factory=list)
    tails: list[str] = field(default_factory=list)
    blank_lines: list[int] = field(default_factory=list)


@dataclass
class Listing:
    """Names from an optional `entities.tsv`/`relations.tsv` (empty when the file is absent)."""

    path: Path | None = None
    names: list[str] = field(default_factory=list)
    blank_lines: list[int] = field(default_factory=list)


def prepare_dataset(
    raw_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False, log: Log = print
) -> dict[str, Any]:
    """Turn `raw_dir/{train,valid,test}.tsv[.gz]` into a dataset directory; return its manifest."""
    raw_dir, out_dir = Path(raw_dir).resolve(), Path(out_dir)
    if not raw_dir.is_dir():
        raise DataError(raw_dir, "not a directory; expected a folder holding train, valid and test triples")
    if (out_dir / MANIFEST).exists() and not overwrite:
        raise DistmapError(f"{out_dir} already holds a prepared dataset; use --overwrite to replace it")
    raw = {split: _read_split(raw_dir, split) for split in SPLITS}
    listed_entities = _read_listing(raw_dir, "entities", "entity")
    listed_relations = _read_listing(raw_dir, "relations", "relation")
    entities = _id_table([s.heads for s in raw.values()] + [s.tails for s in raw.values()], listed_entities.names)
    relations = _id_table([s.relations for s in raw.values()], listed_relations.names)
    ids = {split: _to_ids(s, entities, relations) for split, s in raw.items()}
    checks = _checks(raw, ids, entities, relations, listed_entities, listed_relations)
    _report(checks, log)
    _clear_output(out_dir)
    manifest = _write_dataset(out_dir, raw_dir, entities, relations, ids, checks)
    log(
        f"prepared {raw_dir.name}: {len(entities):,} entities, {len(relations):,} relations, "
        + ", ".join(f"{split} {len(t):,}" for split, t in ids.items())
        + f" -> {out_dir}"
    )
    return manifest


# ---------------------------------------------------------------- reading


def _clear_output(out_dir: Path) -> None:
    """Retire an old manifest before any file changes, and its features (their ids may shift).

    Runs only once the raw input has passed every check, so a bad input leaves the old dataset intact.
    """
    (out_dir / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "features", ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def _read_split(raw_dir: Path, split: str) -> RawSplit:
    path = find_tsv(raw_dir, split)
    if path is None:
        raise DataError(raw_dir, f"missing split '{split}': expected {split}.tsv or {split}.tsv.gz")
    raw = RawSplit(path)
    reader = TsvReader(path, TRIPLE_COLUMNS, progress=path.stat().st_size >= LARGE_FILE_BYTES)
    for _, (head, relation, tail) in reader:
        raw.heads.append(head)
        raw.relations.append(relation)
        raw.tails.append(tail)
    raw.blank_lines = reader.blank_lines
    if not raw.heads:
        raise DataError(path, f"split '{split}' is empty: no triples")
    return raw


def _read_listing(raw_dir: Path, stem: str, first_column: str) -> Listing:
    """Names from an optional `entities.tsv`/`relations.tsv` (first column; others ignored)."""
    path = find_tsv(raw_dir, stem)
    if path is None:
        return Listing()
    header = read_header(path)
    if header[0] != first_column:
        raise DataError(path, f"bad header: the first column must be '{first_column}', found '{header[0]}'", 1)
    listing = Listing(path)
    first_line: dict[str, int] = {}
    reader = TsvReader(path, header, skip_header=True)
    for number, fields in reader:
        name = fields[0]
        if name in first_line:
            raise DataError(path, f"duplicate {first_column} '{name}' (first on line {first_line[name]})", number)
        first_line[name] = number
        listing.names.append(name)
    listing.blank_lines = reader.blank_lines
    return listing


# ---------------------------------------------------------------- ids


def _id_table(name_lists: Sequence[list[str]], listed: list[str]) -> list[str]:
    """All names, sorted: the position in this list is the id."""
    names: set[str] = set(listed)
    for part in name_lists:
        names.update(part)
    return sorted(names)


def _to_ids(raw: RawSplit, entities: list[str], relations: list[str]) -> np.ndarray:
    """(n, 3) int32 ids in file order; pyarrow does the name lookup (hundreds of thousands of rows)."""
    entity_set, relation_set = pa.array(entities), pa.array(relations)
    columns = [
        pc.index_in(pa.array(raw.heads), value_set=entity_set),
        pc.index_in(pa.array(raw.relations), value_set=relation_set),
        pc.index_in(pa.array(raw.tails), value_set=entity_set),
    ]
    return np.stack([c.to_numpy() for c in columns], axis=1).astype(np.int32)


def _triple_keys(triples: np.ndarray, num_entities: int, num_relations: int) -> np.ndarray:
    """One int64 per triple, so set operations on triples are numpy set operations."""
    if num_entities * num_entities * num_relations >= 2**63:
        raise DistmapError("graph too large for the int64 triple keys used by the checks")
    t = triples.astype(np.int64)
    return (t[:, 0] * num_relations + t[:, 1]) * num_entities + t[:, 2]


# ---------------------------------------------------------------- checks


def _checks(
    raw: dict[str, RawSplit],
    ids: dict[str, np.ndarray],
    entities: list[str],
    relations: list[str],
    listed_entities: Listing,
    listed_relations: Listing,
) -> dict[str, Any]:
    """Counts of everything suspicious; every triple is kept whatever these say."""
    keys = {split: _triple_keys(t, len(entities), len(relations)) for split, t in ids.items()}
    files: list[RawSplit | Listing] = [*raw.values(), listed_entities, listed_relations]
    return {
        "blank_lines": {f.path.name: _examples_and_count(f.blank_lines) for f in files if f.path and f.blank_lines},
        "duplicate_triples": {split: int(len(k) - len(np.unique(k))) for split, k in keys.items()},
        "overlap_with_train": {
            split: int(np.isin(keys[split], keys["train"]).sum()) for split in SPLITS if split != "train"
        },
        "unseen_in_train": _unseen(ids, entities, relations),
        "listed_not_in_triples": {
            "entities": _examples_and_count(_unused(listed_entities.names, ids, entities, (0, 2))),
            "relations": _examples_and_count(_unused(listed_relations.names, ids, relations, (1,))),
        },
        "in_triples_not_listed": {
            "entities": _examples_and_count(_not_listed(listed_entities.names, entities)),
            "relations": _examples_and_count(_not_listed(listed_relations.names, relations)),
        },
    }


def _unseen(ids: dict[str, np.ndarray], entities: list[str], relations: list[str]) -> dict[str, Any]:
    """Valid/test triples using an entity or relation that never occurs in train."""
    train = ids["train"]
    seen_entity = np.zeros(len(entities), dtype=bool)
    seen_entity[train[:, 0]] = True
    seen_entity[train[:, 2]] = True
    seen_relation = np.zeros(len(relations), dtype=bool)
    seen_relation[train[:, 1]] = True
    report = {}
    for split in SPLITS[1:]:
        t = ids[split]
        bad_entity = ~seen_entity[t[:, 0]] | ~seen_entity[t[:, 2]]
        bad_relation = ~seen_relation[t[:, 1]]
        unseen_entities = np.setdiff1d(t[:, [0, 2]], np.flatnonzero(seen_entity))
        unseen_relations = np.setdiff1d(t[:, 1], np.flatnonzero(seen_relation))
        report[split] = {
            "triples_with_unseen_entity": int(bad_entity.sum()),
            "triples_with_unseen_relation": int(bad_relation.sum()),
            "unseen_entities": _examples_and_count([entities[i] for i in unseen_entities]),
            "unseen_relations": _examples_and_count([relations[i] for i in unseen_relations]),
        }
    return report


def _unused(listed: list[str], ids: dict[str, np.ndarray], names: list[str], columns: tuple[int, ...]) -> list[str]:
    """Listed names that no triple of any split uses."""
    if not listed:
        return []
    used = np.zeros(len(names), dtype=bool)
    for triples in ids.values():
        for column in columns:
            used[triples[:, column]] = True
    return [names[i] for i in np.flatnonzero(~used)]


def _not_listed(listed: list[str], names: list[str]) -> list[str]:
    """Names used by triples but absent from a given listing (a typo is the usual cause)."""
    if not listed:
        return []
    return sorted(set(names).difference(listed))


def _examples_and_count(items: Sequence[Any]) -> dict[str, Any]:
    return {"count": len(items), "examples": list(items[:EXAMPLES])}


def _report(checks: dict[str, Any], log: Log) -> None:
    """One short line per finding; test/train overlap is shouted because it inflates metrics."""
    for name, blank in checks["blank_lines"].items():
        log(f"note: {name}: skipped {blank['count']} blank line(s), e.g. line(s) {blank['examples']}")
    for split, count in checks["duplicate_triples"].items():
        if count:
            log(f"note: {split}: {count:,} duplicate triple(s) (kept)")
    for split, count in checks["overlap_with_train"].items():
        if count and split == "test":
            log(f"WARNING: {count:,} test triple(s) also occur in train: test metrics will be inflated")
        elif count:
            log(f"note: {count:,} {split} triple(s) also occur in train (kept)")
    for split, unseen in checks["unseen_in_train"].items():
        if unseen["triples_with_unseen_entity"] or unseen["triples_with_unseen_relation"]:
            log(
                f"note: {split}: {unseen['triples_with_unseen_entity']:,} triple(s) with an entity unseen in train "
                f"({unseen['unseen_entities']['count']:,} entities), "
                f"{unseen['triples_with_unseen_relation']:,} with a relation unseen in train (kept, evaluated)"
            )
    for kind in ("entities", "relations"):
        unused = checks["listed_not_in_triples"][kind]
        if unused["count"]:
            log(f"note: {unused['count']:,} listed {kind} occur in no triple (kept as ids), e.g. {unused['examples']}")
        missing = checks["in_triples_not_listed"][kind]
        if missing["count"]:
            log(
                f"WARNING: {missing['count']:,} {kind} in triples are not in the {kind} listing, "
                f"e.g. {missing['examples']}"
            )


# ---------------------------------------------------------------- writing


def _write_dataset(
    out_dir: Path,
    raw_dir: Path,
    entities: list[str],
    relations: list[str],
    ids: dict[str, np.ndarray],
    checks: dict[str, Any],
) -> dict[str, Any]:
    """Tables first, manifest last: a crash never leaves a manifest pointing at missing files."""
    splits = {}
    for split, triples in ids.items():
        table = pa.table({"h": triples[:, 0], "r": triples[:, 1], "t": triples[:, 2]})
        sha256 = write_parquet(table, out_dir / f"{split}.parquet")
        splits[split] = {"file": f"{split}.parquet", "triples": len(triples), "sha256": sha256}
    manifest = {
        "format": FORMAT_VERSION,
        "dataset": raw_dir.name,
        "source": str(raw_dir),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "num_entities": len(entities),
        "num_relations": len(relations),
        "id_order": ID_ORDER,
        "entities": _write_names(out_dir / "entities.parquet", entities),
        "relations": _write_names(out_dir / "relations.parquet", relations),
        "splits": splits,
        "checks": checks,
        "features": {},
    }
    write_manifest(out_dir, manifest)
    return manifest


def _write_names(path: Path, names: list[str]) -> dict[str, Any]:
    table = pa.table({"id": np.arange(len(names), dtype=np.int32), "name": pa.array(names, pa.string())})
    return {"file": path.name, "sha256": write_parquet(table, path)}
