"""Split hygiene: duplicate lines within a split, triples shared between splits, and valid/test
triples whose entity or relation never occurs in train.

Published benchmarks do leak: a valid split that repeats train triples rewards memorising train,
so a model selected on it is the wrong model (valid MRR 0.93 beside a test MRR of 0.38). These
counts are what `prepare` shouts about, what the manifest keeps under `split_hygiene`, what
`train` reads to refuse model selection on a leaked valid split, and what `prepare --clean` removes.

Counts come in pairs: `unique` distinct triples and the `lines` they occupy in the split file
(blank lines aside). A triple written three times is 1 unique duplicate on 2 surplus lines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from distmap.errors import DistmapError

SPLITS = ("train", "valid", "test")
# name -> (split whose lines are counted, split they also occur in)
OVERLAPS = {
    "valid_in_train": ("valid", "train"),
    "test_in_train": ("test", "train"),
    "valid_in_test": ("valid", "test"),
}
CONSEQUENCE = {
    "valid_in_train": "valid metrics are inflated and model selection rewards memorising train",
    "test_in_train": "test metrics are inflated",
    "valid_in_test": "selecting on valid peeks at test",
}
LEAKY_VALID_SHARE = 0.05  # more than this share of valid lines also in train: valid is unfit for model selection
KEY = "split_hygiene"  # the manifest key
COLD_KEY = "cold_start"  # under KEY: valid/test lines unseen in train by design (`prepare --cold-entities`)

Log = Callable[[str], None]


def triple_keys(triples: np.ndarray, num_entities: int, num_relations: int) -> np.ndarray:
    """One int64 per (n, 3) id triple, so set operations on triples are numpy set operations."""
    if num_entities * num_entities * num_relations >= 2**63:
        raise DistmapError("graph too large for the int64 triple keys used by the checks")
    t = triples.astype(np.int64)
    return (t[:, 0] * num_relations + t[:, 1]) * num_entities + t[:, 2]


def seen_in_train(train: np.ndarray, num_entities: int, num_relations: int) -> tuple[np.ndarray, np.ndarray]:
    """(num_entities,) and (num_relations,) bool masks: which ids occur in a train triple."""
    entity = np.zeros(num_entities, dtype=bool)
    entity[train[:, 0]] = True
    entity[train[:, 2]] = True
    relation = np.zeros(num_relations, dtype=bool)
    relation[train[:, 1]] = True
    return entity, relation


def split_hygiene(ids: dict[str, np.ndarray], num_entities: int, num_relations: int) -> dict[str, Any]:
    """Every hygiene count of (n, 3) id triples per split: what the manifest stores under `KEY`."""
    keys = {split: triple_keys(ids[split], num_entities, num_relations) for split in SPLITS}
    seen_entity, seen_relation = seen_in_train(ids["train"], num_entities, num_relations)
    unseen = {
        split: ~seen_entity[ids[split][:, 0]] | ~seen_entity[ids[split][:, 2]] | ~seen_relation[ids[split][:, 1]]
        for split in SPLITS[1:]
    }
    return {
        "lines": {split: len(k) for split, k in keys.items()},
        "duplicates": {split: _duplicates(k) for split, k in keys.items()},
        "overlap": {name: _count(keys[a][np.isin(keys[a], keys[b])]) for name, (a, b) in OVERLAPS.items()},
        "unseen_in_train": {split: _count(keys[split][mask]) for split, mask in unseen.items()},
    }


def _count(hits: np.ndarray) -> dict[str, int]:
    """Keys of the lines that have a problem -> distinct triples and lines."""
    return {"unique": len(np.unique(hits)), "lines": len(hits)}


def _duplicates(keys: np.ndarray) -> dict[str, int]:
    """Triples written more than once, and the surplus lines beyond each one's first."""
    _, counts = np.unique(keys, return_counts=True)
    return {"unique": int((counts > 1).sum()), "lines": int((counts - 1).sum())}


def valid_in_train_share(hygiene: dict[str, Any]) -> float:
    """Share of valid lines whose triple also occurs in train."""
    return hygiene["overlap"]["valid_in_train"]["lines"] / hygiene["lines"]["valid"]


def cleanable(hygiene: dict[str, Any]) -> bool:
    """Whether `prepare --clean` would remove anything: it keeps train ∩ test and unseen triples."""
    duplicates = any(c["lines"] for c in hygiene["duplicates"].values())
    return duplicates or any(hygiene["overlap"][name]["lines"] for name in ("valid_in_train", "valid_in_test"))


# ---------------------------------------------------------------- report


def problem_lines(hygiene: dict[str, Any]) -> list[str]:
    """One line per non-zero problem, with unique triples, lines and the share of the split."""
    total = hygiene["lines"]

    def share(lines: int, split: str) -> str:
        return f"{lines / total[split]:.2%} of {split}'s {total[split]:,} lines"

    rows = []
    for split, c in hygiene["duplicates"].items():
        if c["lines"]:
            rows.append(
                f"duplicates in {split}: {c['unique']:,} triple(s) repeated on {c['lines']:,} surplus line(s) = "
                f"{share(c['lines'], split)}"
            )
    consequence = dict(CONSEQUENCE)
    if valid_in_train_share(hygiene) > LEAKY_VALID_SHARE:
        consequence["valid_in_train"] += f" (over {LEAKY_VALID_SHARE:.0%}: `distmap train` refuses to select on it)"
    for name, (split, other) in OVERLAPS.items():
        c = hygiene["overlap"][name]
        both = " ∩ ".join(s for s in SPLITS if s in (split, other))
        if c["lines"]:
            rows.append(
                f"{both}: {c['unique']:,} triple(s) on {c['lines']:,} {split} line(s) also occur in {other} = "
                f"{share(c['lines'], split)}: {consequence[name]}"
            )
    cold = hygiene.get(COLD_KEY, {})
    for split, c in hygiene["unseen_in_train"].items():
        by_design = cold.get(split, {"unique": 0, "lines": 0})
        unique, lines = c["unique"] - by_design["unique"], c["lines"] - by_design["lines"]
        if lines:
            rows.append(
                f"unseen in train: {unique:,} {split} triple(s) on {lines:,} line(s) have an entity "
                f"or relation that no train triple has = {share(lines, split)}"
                + (" (besides the cold-start lines)" if by_design["lines"] else "")
            )
    return rows


def cold_lines(hygiene: dict[str, Any]) -> list[str]:
    """What a cold-start split does on purpose: valid/test lines whose only train-unseen names are
    the picked cold entities (`prepare --cold-entities`); not a problem of the data."""
    total = hygiene["lines"]
    rows = []
    for split, c in hygiene.get(COLD_KEY, {}).items():
        if c["lines"]:
            rows.append(
                f"cold start (by design): {c['lines']:,} {split} line(s) ({c['moved_lines']:,} moved from train, "
                f"{c['lines'] - c['moved_lines']:,} as published) touch a cold entity, which no train triple has = "
                f"{c['lines'] / total[split]:.2%} of {split}'s {total[split]:,} lines"
            )
    return rows


def report(hygiene: dict[str, Any], log: Log, title: str, advice: str) -> None:
    """A block nobody scrolls past: a WARNING header, one indented line per problem, then `advice`."""
    rows = problem_lines(hygiene)
    by_design = cold_lines(hygiene)
    if not rows:
        besides = " besides the cold-start lines" if by_design else ""
        log(f"split hygiene ({title}): no duplicates, no triples shared between splits, none unseen in train{besides}")
        for row in by_design:
            log(f"  - {row}")
        return
    log(f"WARNING: split hygiene ({title}): {len(rows)} problem(s)")
    for row in rows:
        log(f"WARNING:   - {row}")
    for row in by_design:
        log(f"note:      - {row}")
    log(f"WARNING: {advice}")


# ---------------------------------------------------------------- clean


def removals(
    ids: dict[str, np.ndarray], lines: dict[str, np.ndarray], num_entities: int, num_relations: int
) -> dict[str, dict[int, str]]:
    """What `prepare --clean` drops: split -> {row: reason}; every reason that applies is named.

    Duplicates lose every line after the first; valid loses every line whose triple is in train
    or test. `lines` holds each row's 1-based line number in its file, for "duplicate of line N".
    """
    keys = {split: triple_keys(ids[split], num_entities, num_relations) for split in SPLITS}
    dropped: dict[str, dict[int, str]] = {}
    for split, k in keys.items():
        reasons: list[list[str]] = [[] for _ in range(len(k))]
        if split == "valid":
            for other in ("train", "test"):
                for row in np.flatnonzero(np.isin(k, keys[other])):
                    reasons[row].append(f"also in {other}")
        _, first, inverse = np.unique(k, return_index=True, return_inverse=True)
        first_row = first[inverse]  # (n,) row of each line's first occurrence
        for row in np.flatnonzero(first_row != np.arange(len(k))):
            reasons[row].append(f"duplicate of line {lines[split][first_row[row]]}")
        dropped[split] = {row: "; ".join(why) for row, why in enumerate(reasons) if why}
    return dropped
