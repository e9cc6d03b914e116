"""Raw TSV triples -> a validated dataset directory (Parquet tables + manifest.json).

Ids are positions in the sorted name lists: that is the row order of published feature
matrices, so a user's matrix drops in without a remap. Nothing is dropped unless asked: oddities
(duplicates, triples shared between splits, unseen entities, blank lines) are counted and
reported, and split hygiene problems loudly (see `distmap.data.hygiene`). `clean=True` writes a
copy without duplicates and leaked valid triples, and lists every line it removed, with the
reason, in `removed.tsv`; the ids stay those of the uncleaned dataset.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distmap.data import hygiene
from distmap.data.cold import (
    COLD_ENTITIES,
    MOVED,
    ColdOptions,
    ColdSplit,
    cold_lines,
    cold_options,
    cold_split,
    manifest_entry,
    read_eligible,
)
from distmap.data.hygiene import COLD_KEY, SPLITS, seen_in_train, split_hygiene
from distmap.data.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    sha256_file,
    write_manifest,
    write_parquet,
)
from distmap.data.tsv import TsvReader, find_tsv, read_header
from distmap.errors import DataError, DistmapError

TRIPLE_COLUMNS = ("head", "relation", "tail")
# a first line with these fields (lower-cased) is a header row, not a triple
HEADER_ROWS = {("head", "relation", "tail"), ("h", "r", "t"), ("subject", "predicate", "object")}
REMOVED = "removed.tsv"
ID_ORDER = "id = position of the name in Python sorted() order (Unicode code points)"
LARGE_FILE_BYTES = 1 << 20  # show a progress bar from this size on disk
EXAMPLES = 5

Log = Callable[[str], None]


@dataclass
class RawSplit:
    """One split's triples as names with their line numbers, plus the blank lines seen while reading it."""

    path: Path
    heads: list[str] = field(default_factory=list)
    relations: list[str] = field(default_factory=list)
    tails: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # 1-based line in the file, per triple
    blank_lines: list[int] = field(default_factory=list)
    skipped_first_line: str | None = None


@dataclass
class Listing:
    """Names from an optional `entities.tsv`/`relations.tsv` (empty when the file is absent)."""

    path: Path | None = None
    names: list[str] = field(default_factory=list)
    blank_lines: list[int] = field(default_factory=list)


def prepare_dataset(
    raw_dir: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    clean: bool = False,
    skip_header: bool = False,
    cold_entities: float | str | None = None,
    seed: int | str | None = None,
    cold_eligible: str | Path | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Turn `raw_dir/{train,valid,test}.tsv[.gz]` into a dataset directory; return its manifest.

    `skip_header` skips exactly the first line of each split file; `clean` drops duplicates and
    valid triples also in train or test, writing each dropped line and its reason to `removed.tsv`.
    `cold_entities` (a fraction in (0, 1)) makes a cold-start split after any cleaning: it picks
    that share of the entities with features (`cold_eligible`: a TSV whose first column names them;
    default all) with `seed` and moves their train triples to valid/test (`distmap.data.cold`),
    listing them in `cold_entities.tsv` and every moved line in `moved.tsv`.
    """
    options = cold_options(cold_entities, seed, cold_eligible)
    raw_dir, out_dir = Path(raw_dir).resolve(), Path(out_dir)
    if not raw_dir.is_dir():
        what = "a file, not a folder" if raw_dir.exists() else "folder not found"
        raise DataError(raw_dir, f"{what}; expected a folder holding train, valid and test triples (.tsv or .tsv.gz)")
    if (out_dir / MANIFEST).exists() and not overwrite:
        raise DistmapError(f"{out_dir} already holds a prepared dataset; use --overwrite to replace it")
    raw = {split: _read_split(raw_dir, split, skip_header) for split in SPLITS}
    listed_entities = _read_listing(raw_dir, "entities", "entity")
    listed_relations = _read_listing(raw_dir, "relations", "relation")
    entities = _id_table([s.heads for s in raw.values()] + [s.tails for s in raw.values()], listed_entities.names)
    relations = _id_table([s.relations for s in raw.values()], listed_relations.names)
    ids = {split: _to_ids(s, entities, relations) for split, s in raw.items()}
    checks = _checks(raw, ids, entities, relations, listed_entities, listed_relations)
    _report(checks, log)
    eligible = None
    if options is not None:
        eligible = read_eligible(options.eligible, entities)
        if options.eligible is None:
            log(
                "note: no --cold-eligible file: every entity counts as eligible for --cold-entities "
                "(a cold entity without features cannot be ranked from them)"
            )
    found = split_hygiene(ids, len(entities), len(relations))
    rows = {split: np.arange(len(triples)) for split, triples in ids.items()}  # row in `raw` of each id row
    title = raw_dir.name if options is None else f"{raw_dir.name} as published"
    cleaned, dropped = None, None
    if clean:
        hygiene.report(found, log, f"{raw_dir.name} as published", "--clean drops duplicates and leaked valid triples")
        dropped = hygiene.removals(ids, {s: np.array(r.lines) for s, r in raw.items()}, len(entities), len(relations))
        ids, rows = _drop_rows(ids, dropped)
        log(
            f"--clean: removing {sum(len(d) for d in dropped.values()):,} line(s) ("
            + ", ".join(f"{split} {len(d):,}" for split, d in dropped.items())
            + f"), each listed with its reason in {out_dir / REMOVED}"
        )
        kept = split_hygiene(ids, len(entities), len(relations))
        title = f"{raw_dir.name} after --clean"
        if options is None:
            hygiene.report(kept, log, title, "--clean keeps train ∩ test and unseen triples")
    else:
        kept = found
        advice = CLEAN_ADVICE if hygiene.cleanable(found) else "--clean would keep these (train ∩ test, unseen)"
        hygiene.report(found, log, title, f"kept as published; {advice}")
    cold = None
    if options is not None:
        assert eligible is not None
        cold = cold_split(ids, len(entities), len(relations), options, eligible)
        ids = cold.ids
        kept = _report_cold(cold, options, raw_dir, out_dir, len(entities), len(relations), clean, log)
    _clear_output(out_dir)
    if clean:
        assert dropped is not None
        cleaned = _write_removed(out_dir / REMOVED, raw, dropped, found)
    extra = {}
    if cold is not None:
        assert options is not None
        extra["cold_start"] = _write_cold(out_dir, cold, options, raw, rows, entities, relations)
    manifest = _write_dataset(out_dir, raw_dir, entities, relations, ids, checks, {**kept, "cleaned": cleaned}, extra)
    log(
        f"prepared {raw_dir.name}: {len(entities):,} entities, {len(relations):,} relations, "
        + ", ".join(f"{split} {entry['triples']:,}" for split, entry in manifest["splits"].items())
        + f" -> {out_dir}"
    )
    return manifest


def _report_cold(
    cold: ColdSplit,
    options: ColdOptions,
    raw_dir: Path,
    out_dir: Path,
    num_entities: int,
    num_relations: int,
    clean: bool,
    log: Log,
) -> dict[str, Any]:
    """Say what `--cold-entities` picked and moved, then the hygiene of the split (the cold-start lines
    as by design); return that hygiene, with its `cold_start` counts, for the manifest."""
    kept = split_hygiene(cold.ids, num_entities, num_relations)
    kept[COLD_KEY] = cold_lines(cold, num_entities, num_relations)
    to = Counter(dest for _, dest, _ in cold.moved)
    log(
        f"--cold-entities {options.fraction:g} --seed {options.seed}: picked {len(cold.selection.picked):,} of "
        f"{int(cold.eligible.mask.sum()):,} eligible entities, moved {len(cold.moved):,} train line(s) "
        f"(valid {to['valid']:,}, test {to['test']:,}), listed in {out_dir / MOVED}"
    )
    if clean:
        advice = "--clean keeps train ∩ test and unseen triples"
    else:
        advice = CLEAN_ADVICE if hygiene.cleanable(kept) else "--clean would keep these (train ∩ test, unseen)"
        advice = f"kept as published; {advice}"
    after = "--clean and --cold-entities" if clean else "--cold-entities"
    hygiene.report(kept, log, f"{raw_dir.name} after {after}", advice)
    return kept


# ---------------------------------------------------------------- reading


def _clear_output(out_dir: Path) -> None:
    """Retire an old manifest before any file changes, its features (their ids may shift) and an
    old `removed.tsv`, `cold_entities.tsv` or `moved.tsv` (they would describe another preparation).

    Runs only once the raw input has passed every check, so a bad input leaves the old dataset intact.
    """
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for name in (REMOVED, COLD_ENTITIES, MOVED):
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "features", ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def _read_split(raw_dir: Path, split: str, skip_header: bool) -> RawSplit:
    path = find_tsv(raw_dir, split)
    if path is None:
        raise DataError(raw_dir, f"missing split '{split}': expected {split}.tsv or {split}.tsv.gz")
    raw = RawSplit(path)
    reader = TsvReader(path, TRIPLE_COLUMNS, skip_header=skip_header, progress=path.stat().st_size >= LARGE_FILE_BYTES)
    for number, (head, relation, tail) in reader:
        if number == 1 and tuple(f.lower() for f in (head, relation, tail)) in HEADER_ROWS:
            problem = f"looks like a header row ({head}, {relation}, {tail}), not a triple; use --skip-header to skip"
            raise DataError(path, problem + " the first line of each split file", number)
        raw.heads.append(head)
        raw.relations.append(relation)
        raw.tails.append(tail)
        raw.lines.append(number)
    raw.blank_lines = reader.blank_lines
    raw.skipped_first_line = reader.skipped_first_line
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


# ---------------------------------------------------------------- checks


def _checks(
    raw: dict[str, RawSplit],
    ids: dict[str, np.ndarray],
    entities: list[str],
    relations: list[str],
    listed_entities: Listing,
    listed_relations: Listing,
) -> dict[str, Any]:
    """Counts and examples of everything suspicious but split hygiene (`distmap.data.hygiene`)."""
    files: list[RawSplit | Listing] = [*raw.values(), listed_entities, listed_relations]
    return {
        "blank_lines": {f.path.name: _examples_and_count(f.blank_lines) for f in files if f.path and f.blank_lines},
        "skipped_first_lines": {s.path.name: s.skipped_first_line for s in raw.values() if s.skipped_first_line},
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
    """Valid/test triples using an entity or relation that never occurs in train, by kind, with examples."""
    seen_entity, seen_relation = seen_in_train(ids["train"], len(entities), len(relations))
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
    """One short line per finding; split hygiene has its own block (`hygiene.report`)."""
    for name, blank in checks["blank_lines"].items():
        log(f"note: {name}: skipped {blank['count']} blank line(s), e.g. line(s) {blank['examples']}")
    for name, line in checks["skipped_first_lines"].items():
        log(f"note: {name}: skipped line 1 (--skip-header): {line!r}")
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


TRIPLES_PER_ROW_GROUP = 65_536
"""Rows per Parquet row group of a split (1.5 MiB of ids): the unit in which a worker of a run with
``scale.shard_triples`` reads its share of the training triples."""


def _write_dataset(
    out_dir: Path,
    raw_dir: Path,
    entities: list[str],
    relations: list[str],
    ids: dict[str, np.ndarray],
    checks: dict[str, Any],
    counts: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Tables first, manifest last: a crash never leaves a manifest pointing at missing files."""
    splits = {}
    for split, triples in ids.items():
        table = pa.table({"h": triples[:, 0], "r": triples[:, 1], "t": triples[:, 2]})
        sha256 = write_parquet(table, out_dir / f"{split}.parquet", TRIPLES_PER_ROW_GROUP)
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
        hygiene.KEY: counts,
        **(extra or {}),
        "features": {},
    }
    write_manifest(out_dir, manifest)
    return manifest


def _write_names(path: Path, names: list[str]) -> dict[str, Any]:
    table = pa.table({"id": np.arange(len(names), dtype=np.int32), "name": pa.array(names, pa.string())})
    return {"file": path.name, "sha256": write_parquet(table, path)}


# ---------------------------------------------------------------- clean


CLEAN_ADVICE = "`distmap prepare --clean` drops duplicates and valid triples also in train or test (into removed.tsv)"


def _drop_rows(
    ids: dict[str, np.ndarray], dropped: dict[str, dict[int, str]]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Each split's (n, 3) ids without the dropped rows, and the kept rows' positions in the input;
    a split left empty is an error (nothing to evaluate)."""
    kept, rows = {}, {}
    for split, triples in ids.items():
        keep = np.ones(len(triples), dtype=bool)
        keep[list(dropped[split])] = False
        if not keep.any():
            raise DistmapError(f"--clean would leave split '{split}' empty: every line is a duplicate or leaked")
        kept[split] = triples[keep]
        rows[split] = np.flatnonzero(keep)
    return kept, rows


def _write_removed(
    path: Path, raw: dict[str, RawSplit], dropped: dict[str, dict[int, str]], found: dict[str, Any]
) -> dict[str, Any]:
    """`removed.tsv`: one line per removed input line (split, line number, triple, reason), so the
    cleaned dataset plus this file hold every input line exactly once. Returns the manifest entry."""
    rows = ["split\tline\thead\trelation\ttail\treason"]
    for split, reasons in dropped.items():
        r = raw[split]
        rows += [
            f"{split}\t{r.lines[i]}\t{r.heads[i]}\t{r.relations[i]}\t{r.tails[i]}\t{why}" for i, why in reasons.items()
        ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "removed_lines": {split: len(reasons) for split, reasons in dropped.items()},
        "as_published": found,
    }


# ---------------------------------------------------------------- cold start


def _write_cold(
    out_dir: Path,
    cold: ColdSplit,
    options: ColdOptions,
    raw: dict[str, RawSplit],
    rows: dict[str, np.ndarray],
    entities: list[str],
    relations: list[str],
) -> dict[str, Any]:
    """`cold_entities.tsv` (the picked entities: name, id, train lines moved) and `moved.tsv` (each moved
    input line, as `removed.tsv` lists removed ones), so the dataset plus the listings hold each input
    line exactly once. Returns the manifest's `cold_start` block."""
    per_entity: dict[int, int] = dict.fromkeys(cold.selection.picked, 0)
    lines = ["split\tline\thead\trelation\ttail\treason"]
    r = raw["train"]
    for row, dest, entity in cold.moved:
        i = int(rows["train"][row])
        per_entity[entity] += 1
        triple = f"{r.heads[i]}\t{r.relations[i]}\t{r.tails[i]}"
        lines.append(f"train\t{r.lines[i]}\t{triple}\tcold entity {entities[entity]} -> {dest}")
    moved_path = out_dir / MOVED
    moved_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cold_path = out_dir / COLD_ENTITIES
    picked = sorted(per_entity)
    cold_path.write_text(
        "entity\tid\tmoved_train_lines\n" + "".join(f"{entities[e]}\t{e}\t{per_entity[e]}\n" for e in picked),
        encoding="utf-8",
    )
    entry = manifest_entry(cold, options, entities, relations)
    entry["cold_entities"] = {"file": cold_path.name, "sha256": sha256_file(cold_path)}
    entry["moved"] = {"file": moved_path.name, "sha256": sha256_file(moved_path)}
    return entry
