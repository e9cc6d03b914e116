"""Cold-start splits: DKRL's zero-shot protocol (Xie et al., AAAI 2016) on any dataset.

`prepare --cold-entities FRACTION --seed S` picks round(FRACTION x eligible) entities and moves every
train triple touching them into valid/test, half each. Eligible are the entities with features
(`--cold-eligible FILE`: a TSV with a header whose first column names entities; a row whose other
columns are all empty does not count), so a cold entity can be ranked from its features at all.

Selection walks a seeded random order over the eligible entities and accepts one unless removing
its train triples (with those of the entities already picked) would leave a relation without a
train triple (rule a) or leave another, not picked entity without a train triple (rule b); an
entity already absent from train is skipped (it is cold already). So after the split the entities
without a train triple are exactly the picked ones plus those already unseen in the raw data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distmap.data.hygiene import SPLITS, seen_in_train, triple_keys
from distmap.data.tsv import TsvReader, read_header
from distmap.errors import DataError, DistmapError

COLD_ENTITIES = "cold_entities.tsv"
MOVED = "moved.tsv"
EXAMPLES = 5


@dataclass(frozen=True)
class ColdOptions:
    """Checked `--cold-entities`, `--seed` and `--cold-eligible` values."""

    fraction: float
    seed: int
    eligible: Path | None


def cold_options(
    fraction: float | str | None, seed: int | str | None, eligible: str | Path | None
) -> ColdOptions | None:
    """Check the flags before any file is read; None when no cold split is asked for."""
    if fraction is None:
        if seed is not None:
            raise DistmapError("--seed picks the cold entities of --cold-entities; give --cold-entities FRACTION too")
        if eligible is not None:
            raise DistmapError("--cold-eligible names the entities --cold-entities may pick; give --cold-entities too")
        return None
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(fraction, bool) or not 0.0 < value < 1.0:
        raise DistmapError(
            f"--cold-entities: expected a fraction strictly between 0 and 1 (e.g. 0.1), got {str(fraction)!r}"
        )
    if seed is None:
        seed_value = 0
    else:
        try:
            seed_value = int(str(seed), 10)
        except ValueError:
            seed_value = -1
        if isinstance(seed, bool) or seed_value < 0:
            raise DistmapError(f"--seed: expected a non-negative integer, got {str(seed)!r}")
    path = None
    if eligible is not None:
        path = Path(eligible)
        if not path.is_file():
            raise DataError(path, "--cold-eligible: file not found")
    return ColdOptions(value, seed_value, path)


# ---------------------------------------------------------------- eligible entities


@dataclass
class Eligible:
    """Which entity ids may be picked, and what the listing said."""

    mask: np.ndarray
    source: str | None
    unknown_names: int = 0
    rows_without_features: int = 0


def read_eligible(path: Path | None, entities: list[str]) -> Eligible:
    """Entities with features: all of them without a file, else the file's rows with a non-empty column."""
    if path is None:
        return Eligible(np.ones(len(entities), dtype=bool), None)
    header = read_header(path)
    index = {name: i for i, name in enumerate(entities)}
    if header[0] in index:
        raise DataError(
            path,
            f"--cold-eligible: no header: line 1 starts with the entity '{header[0]}'; expected a header line "
            "whose first column names the entity column (e.g. entity<TAB>name<TAB>description)",
            1,
        )
    mask = np.zeros(len(entities), dtype=bool)
    info = Eligible(mask, str(path))
    for _, fields in TsvReader(path, header, skip_header=True, optional=header[1:]):
        i = index.get(fields[0])
        if i is None:
            info.unknown_names += 1
        elif len(fields) == 1 or any(fields[1:]):
            mask[i] = True
        else:
            info.rows_without_features += 1
    if not mask.any():
        raise DataError(path, "--cold-eligible: names no entity of the dataset with a non-empty feature column")
    return info


# ---------------------------------------------------------------- selection


@dataclass
class Selection:
    """The picked entities (in picking order) and why others were passed over."""

    picked: list[int]
    removed_by: np.ndarray  # (train rows,) entity id whose pick moved the row, -1 where it stays
    tried: int = 0
    already_unseen: list[int] = field(default_factory=list)
    empties_relation: list[int] = field(default_factory=list)
    orphans_entity: list[int] = field(default_factory=list)
    protected_relations: set[int] = field(default_factory=set)
    protected_entities: set[int] = field(default_factory=set)


def select(
    train: np.ndarray,
    num_entities: int,
    num_relations: int,
    eligible: np.ndarray,
    target: int,
    rng: np.random.Generator,
) -> Selection:
    """Greedy pick in a seeded random order over `eligible`, under rules (a) and (b) (module docstring)."""
    heads, relations, tails = (train[:, c].astype(np.int64) for c in range(3))
    loop = heads == tails
    degree = np.bincount(heads, minlength=num_entities) + np.bincount(tails[~loop], minlength=num_entities)
    relation_count = np.bincount(relations, minlength=num_relations)
    # rows touching each entity (a self-loop once), grouped by entity: a CSR incidence list
    owner = np.concatenate([heads, tails[~loop]])
    rows = np.concatenate([np.arange(len(train)), np.flatnonzero(~loop)])
    order = np.argsort(owner, kind="stable")
    rows, starts = rows[order], np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=num_entities))])
    alive = np.ones(len(train), dtype=bool)
    sel = Selection([], np.full(len(train), -1, dtype=np.int64))
    for e in rng.permutation(np.flatnonzero(eligible)).tolist():
        if len(sel.picked) >= target:
            break
        sel.tried += 1
        if degree[e] == 0:
            sel.already_unseen.append(e)
            continue
        mine = rows[starts[e] : starts[e + 1]]
        mine = mine[alive[mine]]
        rel, rel_n = np.unique(relations[mine], return_counts=True)
        emptied = rel[relation_count[rel] == rel_n]
        if len(emptied):
            sel.empties_relation.append(e)
            sel.protected_relations.update(emptied.tolist())
            continue
        other = np.where(heads[mine] == e, tails[mine], heads[mine])
        other, other_n = np.unique(other[other != e], return_counts=True)
        orphaned = other[degree[other] == other_n]
        if len(orphaned):
            sel.orphans_entity.append(e)
            sel.protected_entities.update(orphaned.tolist())
            continue
        alive[mine] = False
        sel.removed_by[mine] = e
        relation_count[rel] -= rel_n
        degree[other] -= other_n
        degree[e] = 0
        sel.picked.append(e)
    return sel


# ---------------------------------------------------------------- the split


@dataclass
class ColdSplit:
    """The split ids, each row's origin, and what goes into the manifest and the two listings."""

    ids: dict[str, np.ndarray]
    origin: dict[str, np.ndarray]  # per split row: (source split index into SPLITS, row in that source's ids)
    moved: list[tuple[int, str, int]]  # (train row in the input ids, destination split, entity whose pick moved it)
    selection: Selection
    eligible: Eligible
    target: int


def cold_split(
    ids: dict[str, np.ndarray], num_entities: int, num_relations: int, options: ColdOptions, eligible: Eligible
) -> ColdSplit:
    """Pick the cold entities and move their train rows to valid/test (the valid/test rows already
    there stay first, in order; moved rows follow in train order). Raises if the target is out of reach."""
    n_eligible = int(eligible.mask.sum())
    target = round(options.fraction * n_eligible)
    if target < 1:
        raise DistmapError(
            f"--cold-entities {options.fraction:g}: picks round({options.fraction:g} x {n_eligible:,} eligible "
            "entities) = 0 entities; use a larger fraction"
        )
    rng = np.random.default_rng(options.seed)
    train = ids["train"]
    sel = select(train, num_entities, num_relations, eligible.mask, target, rng)
    if len(sel.picked) < target:
        most = math.floor(len(sel.picked) / n_eligible * 10_000) / 10_000  # the same order picks that many again
        raise DistmapError(
            f"--cold-entities {options.fraction:g}: only {len(sel.picked):,} of the {target:,} entities asked for "
            f"({n_eligible:,} eligible) could be picked: {len(sel.empties_relation):,} would have left a relation "
            f"and {len(sel.orphans_entity):,} another entity without a train triple, "
            f"{len(sel.already_unseen):,} had none already; use a fraction of at most {most:g}"
        )
    moved_rows = np.flatnonzero(sel.removed_by >= 0)
    # half of the moved distinct triples to valid, the rest to test; copies of a triple go together, and a
    # triple that test (or valid) already holds joins it there rather than leak between valid and test
    keys = triple_keys(train[moved_rows], num_entities, num_relations)
    in_test = np.isin(keys, triple_keys(ids["test"], num_entities, num_relations))
    in_valid = ~in_test & np.isin(keys, triple_keys(ids["valid"], num_entities, num_relations))
    distinct = rng.permutation(np.unique(keys[~in_test & ~in_valid]))
    to_valid = in_valid | np.isin(keys, distinct[: len(distinct) // 2])
    out = {"train": train[sel.removed_by < 0]}
    origin = {"train": np.stack([np.zeros(len(out["train"]), np.int64), np.flatnonzero(sel.removed_by < 0)], 1)}
    moved: list[tuple[int, str, int]] = []
    for index, split, chosen in ((1, "valid", to_valid), (2, "test", ~to_valid)):
        rows = moved_rows[chosen]
        out[split] = np.concatenate([ids[split], train[rows]]).astype(np.int32)
        origin[split] = np.concatenate(
            [
                np.stack([np.full(len(ids[split]), index, np.int64), np.arange(len(ids[split]))], 1),
                np.stack([np.zeros(len(rows), np.int64), rows], 1),
            ]
        )
        moved += [(int(r), split, int(sel.removed_by[r])) for r in rows]
    moved.sort()
    return ColdSplit(out, origin, moved, sel, eligible, target)


def cold_lines(split: ColdSplit, num_entities: int, num_relations: int) -> dict[str, dict[str, int]]:
    """Per valid/test: the lines whose only train-unseen names are cold entities (by design), how many of
    them were moved from train, and their distinct triples. Goes into the manifest's split hygiene."""
    seen_entity, seen_relation = seen_in_train(split.ids["train"], num_entities, num_relations)
    cold = np.zeros(num_entities, dtype=bool)
    cold[split.selection.picked] = True
    found = {}
    for split_name in SPLITS[1:]:
        t = split.ids[split_name]
        touches = cold[t[:, 0]] | cold[t[:, 2]]
        explained = (seen_entity[t[:, 0]] | cold[t[:, 0]]) & (seen_entity[t[:, 2]] | cold[t[:, 2]])
        mask = touches & explained & seen_relation[t[:, 1]]
        keys = triple_keys(t[mask], num_entities, num_relations)
        found[split_name] = {
            "unique": len(np.unique(keys)),
            "lines": int(mask.sum()),
            "moved_lines": int((mask & (split.origin[split_name][:, 0] == 0)).sum()),
        }
    return found


def manifest_entry(split: ColdSplit, options: ColdOptions, entities: list[str], relations: list[str]) -> dict[str, Any]:
    """The manifest's `cold_start` block (the listing files' checksums are added by the writer)."""
    sel = split.selection

    def named(ids: Any, names: list[str]) -> dict[str, Any]:
        ordered = list(ids)
        return {"count": len(ordered), "examples": [names[i] for i in ordered[:EXAMPLES]]}

    moved_lines = {s: sum(1 for _, dest, _ in split.moved if dest == s) for s in SPLITS[1:]}
    return {
        "protocol": "DKRL zero-shot (Xie et al., AAAI 2016): every train triple of a picked entity moved to valid/test",
        "fraction": options.fraction,
        "seed": options.seed,
        "eligible": {
            "source": split.eligible.source,
            "entities": int(split.eligible.mask.sum()),
            "unknown_names": split.eligible.unknown_names,
            "rows_without_features": split.eligible.rows_without_features,
        },
        "target": split.target,
        "picked": len(sel.picked),
        "candidates_tried": sel.tried,
        "moved_lines": moved_lines,
        "skipped": {
            "already_unseen_in_train": named(sel.already_unseen, entities),
            "would_empty_a_relation": named(sel.empties_relation, entities),
            "would_leave_an_entity_without_train": named(sel.orphans_entity, entities),
        },
        "protected": {
            "relations": named(sorted(sel.protected_relations), relations),
            "entities": named(sorted(sel.protected_entities), entities),
        },
    }
