"""`prepare --cold-entities`: cold-start splits (DKRL's zero-shot protocol) on tiny synthetic graphs."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from distmap.cli import main
from distmap.data.cold import select
from distmap.data.kg import KnowledgeGraph
from distmap.data.prepare import SPLITS, prepare_dataset
from distmap.errors import DistmapError


def quiet(_: str) -> None:
    """A log that swallows notes."""


def graph(folder: Path, seed: int = 1, entities: int = 40, relations: int = 3, lines: int = 160) -> Path:
    """A random raw folder: every entity in train (a ring keeps each one there), valid/test published
    beside it, a duplicate train line and a self-loop, plus `text.tsv` naming features for most entities."""
    rng = random.Random(seed)
    names = [f"e{i:02d}" for i in range(entities)]
    rels = [f"r{i}" for i in range(relations)]
    train = [(names[i], rels[i % relations], names[(i + 1) % entities]) for i in range(entities)]
    train += [(rng.choice(names), rng.choice(rels), rng.choice(names)) for _ in range(lines - entities)]
    train += [train[5], (names[3], rels[0], names[3])]
    valid = [(rng.choice(names), rng.choice(rels), rng.choice(names)) for _ in range(12)]
    test = [(rng.choice(names), rng.choice(rels), rng.choice(names)) for _ in range(12)]
    folder.mkdir(parents=True, exist_ok=True)
    for split, triples in zip(SPLITS, (train, valid, test), strict=True):
        (folder / f"{split}.tsv").write_text("".join("\t".join(t) + "\n" for t in triples))
    # e00-e04 have no text: not eligible; e05 has a row with empty columns: not eligible either
    text = "entity\tname\tdescription\n" + "e05\t\t\n" + "".join(f"{n}\tname {n}\t\n" for n in names[6:])
    (folder / "text.tsv").write_text(text + "stranger\tnot in the graph\t\n")
    return folder


def input_lines(raw: Path) -> dict[str, list[tuple[str, str, str]]]:
    return {s: [tuple(line.split("\t")) for line in (raw / f"{s}.tsv").read_text().splitlines()] for s in SPLITS}


def named(dataset: Path) -> dict[str, list[tuple[str, str, str]]]:
    kg = KnowledgeGraph.load(dataset)
    return {
        split: [(kg.entities[h], kg.relations[r], kg.entities[t]) for h, r, t in triples.tolist()]
        for split, triples in kg.splits.items()
    }


def picked(dataset: Path) -> list[str]:
    rows = (dataset / "cold_entities.tsv").read_text().splitlines()
    assert rows[0] == "entity\tid\tmoved_train_lines"
    return [row.split("\t")[0] for row in rows[1:]]


def moved(dataset: Path) -> list[list[str]]:
    rows = [row.split("\t") for row in (dataset / "moved.tsv").read_text().splitlines()]
    assert rows[0] == ["split", "line", "head", "relation", "tail", "reason"]
    return rows[1:]


def cold(raw: Path, out: Path, fraction: float = 0.25, seed: int = 0, **kwargs: object) -> dict:
    return prepare_dataset(
        raw, out, cold_entities=fraction, seed=seed, cold_eligible=raw / "text.tsv", log=quiet, **kwargs
    )


def test_cold_entities_lose_every_train_triple_and_nothing_else_does(tmp_path: Path) -> None:
    raw = graph(tmp_path / "raw")
    manifest = cold(raw, tmp_path / "out")
    chosen = picked(tmp_path / "out")
    eligible = 40 - 6
    assert len(chosen) == round(0.25 * eligible) == manifest["cold_start"]["picked"]
    assert not set(chosen) & {"e00", "e01", "e02", "e03", "e04", "e05"}  # only entities with features
    after = named(tmp_path / "out")
    in_train = Counter(e for h, _, t in after["train"] for e in {h, t})
    assert not set(chosen) & set(in_train)  # no train triple touches a cold entity
    kg = KnowledgeGraph.load(tmp_path / "out")
    assert set(kg.entities) - set(in_train) == set(chosen)  # ...and every other entity keeps one
    before = input_lines(raw)
    assert {r for _, r, _ in after["train"]} == {r for _, r, _ in before["train"]}  # every relation keeps one
    assert kg.entities == tuple(sorted({e for lines in before.values() for h, _, t in lines for e in (h, t)}))
    block = manifest["cold_start"]
    assert (block["fraction"], block["seed"], block["target"]) == (0.25, 0, len(chosen))
    assert block["eligible"] == {
        "source": str(raw / "text.tsv"),
        "entities": eligible,
        "unknown_names": 1,
        "rows_without_features": 1,
    }
    assert sum(block["moved_lines"].values()) == len(moved(tmp_path / "out"))
    assert abs(block["moved_lines"]["valid"] - block["moved_lines"]["test"]) <= 3  # half each (copies go together)


@pytest.mark.parametrize("clean", [False, True])
def test_dataset_plus_moved_and_removed_hold_every_input_line_once(tmp_path: Path, clean: bool) -> None:
    raw = graph(tmp_path / "raw")
    manifest = cold(raw, tmp_path / "out", clean=clean)
    before, after = input_lines(raw), named(tmp_path / "out")
    rows = moved(tmp_path / "out")
    chosen = set(picked(tmp_path / "out"))
    removed: dict[str, set[int]] = {s: set() for s in SPLITS}
    if clean:
        for split, line, *_ in (r.split("\t") for r in (tmp_path / "out" / "removed.tsv").read_text().splitlines()[1:]):
            removed[split].add(int(line))
        assert removed["train"]  # the duplicate train line
    else:
        assert not (tmp_path / "out" / "removed.tsv").exists()
    to: dict[str, list[int]] = {"valid": [], "test": []}
    for split, line, h, r, t, reason in rows:
        assert split == "train"
        assert before["train"][int(line) - 1] == (h, r, t)
        entity, dest = reason.removeprefix("cold entity ").split(" -> ")
        assert entity in chosen
        assert entity in (h, t)
        to[dest].append(int(line))
    gone = set(to["valid"]) | set(to["test"])
    kept_train = [t for i, t in enumerate(before["train"], 1) if i not in gone and i not in removed["train"]]
    assert after["train"] == kept_train
    for split in ("valid", "test"):
        published = [t for i, t in enumerate(before[split], 1) if i not in removed[split]]
        assert after[split] == published + [before["train"][i - 1] for i in sorted(to[split])]
    total = sum(len(v) for v in after.values()) + sum(len(v) for v in removed.values())
    assert total == sum(len(v) for v in before.values())
    assert manifest["split_hygiene"]["cold_start"]["valid"]["moved_lines"] == len(to["valid"])


def test_same_seed_same_split_other_seed_other_split(tmp_path: Path) -> None:
    raw = graph(tmp_path / "raw")
    cold(raw, tmp_path / "a", seed=3)
    cold(raw, tmp_path / "b", seed=3)
    cold(raw, tmp_path / "c", seed=4)
    assert picked(tmp_path / "a") == picked(tmp_path / "b")
    assert named(tmp_path / "a") == named(tmp_path / "b")
    assert (tmp_path / "a" / "moved.tsv").read_text() == (tmp_path / "b" / "moved.tsv").read_text()
    assert picked(tmp_path / "a") != picked(tmp_path / "c")


# h-l1, h-l2 (leaves), triangle a-b-c, and x -rare-> y: the only triple of relation rare
RULES = [("h", "r", "l1"), ("h", "r", "l2"), ("a", "r", "b"), ("b", "r", "c"), ("c", "r", "a")]
RULES += [("x", "rare", "y"), ("x", "r", "a"), ("y", "r", "b")]


@pytest.mark.parametrize("seed", range(8))
def test_rules_a_and_b_hold_in_every_order(seed: int) -> None:
    entities = sorted({e for h, _, t in RULES for e in (h, t)})
    relations = ["r", "rare"]
    train = np.array([[entities.index(h), relations.index(r), entities.index(t)] for h, r, t in RULES], np.int32)
    everyone = np.ones(len(entities), dtype=bool)
    sel = select(train, len(entities), 2, everyone, len(entities), np.random.default_rng(seed))
    name = entities.__getitem__
    assert sel.tried == len(entities)  # the target (everyone) is out of reach: every entity was tried
    assert {"x", "y"} <= {name(e) for e in sel.empties_relation}  # either would take rare's only triple
    assert "rare" in {relations[r] for r in sel.protected_relations}
    assert "h" not in {name(e) for e in sel.picked}  # h would strand a leaf (or take r's last triples)
    picked = {name(e) for e in sel.picked}
    assert len(picked & {"l1", "l2"}) == 1  # the first leaf strands h for the second
    assert set(map(name, sel.picked + sel.empties_relation + sel.orphans_entity)) == set(entities)
    alive = sel.removed_by < 0
    left = {e for row in train[alive] for e in (row[0], row[2])}
    assert left == set(range(len(entities))) - set(sel.picked)  # cold = exactly the picked entities
    assert set(train[alive][:, 1]) == {0, 1}
    for row, by in zip(train, sel.removed_by, strict=True):
        assert (by >= 0) == bool({row[0], row[2]} & set(sel.picked)), row


def test_an_unreachable_share_is_an_error_naming_the_flag(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.tsv").write_text("".join("\t".join(t) + "\n" for t in RULES))
    (raw / "valid.tsv").write_text("h\tr\tx\n")
    (raw / "test.tsv").write_text("l1\tr\th\n")
    with pytest.raises(
        DistmapError, match=r"^--cold-entities 0.9: only [1-4] of the 7 entities asked for \(8 eligible"
    ):
        prepare_dataset(raw, tmp_path / "out", cold_entities=0.9, seed=0, log=quiet)
    assert not (tmp_path / "out").exists()
    lines: list[str] = []
    manifest = prepare_dataset(raw, tmp_path / "out", cold_entities=0.2, seed=0, log=lines.append)
    assert manifest["cold_start"]["picked"] == 2
    assert manifest["cold_start"]["eligible"]["source"] is None
    assert any("no --cold-eligible file: every entity counts as eligible" in line for line in lines)


def test_a_moved_triple_already_in_test_or_valid_joins_it_there(tmp_path: Path) -> None:
    # every triple of the leaves l1, l2 is also published in test or valid (train ∩ test, train ∩ valid)
    train = [*RULES, ("h", "r", "l1"), ("l1", "r", "h"), ("l2", "r", "h")]
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.tsv").write_text("".join("\t".join(t) + "\n" for t in train))
    (raw / "valid.tsv").write_text("l2\tr\th\nh\tr\tl2\n")
    (raw / "test.tsv").write_text("h\tr\tl1\nl1\tr\th\n")
    (raw / "leaves.tsv").write_text("entity\nl1\nl2\n")
    for seed in range(4):
        out = tmp_path / f"out{seed}"
        prepare_dataset(raw, out, cold_entities=0.5, seed=seed, cold_eligible=raw / "leaves.tsv", log=quiet)
        (leaf,) = picked(out)
        dest = {row[5].split(" -> ")[1] for row in moved(out)}
        assert dest == {"test" if leaf == "l1" else "valid"}
        after = named(out)
        assert not set(after["valid"]) & set(after["test"])


def test_hygiene_calls_the_cold_lines_by_design(tmp_path: Path) -> None:
    # a clean graph (tails at +1 and +3 in train, +5 in valid, +6 in test): the cold lines are all it reports
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, offsets, span in (("train", (1, 3), range(12)), ("valid", (5,), range(6)), ("test", (6,), range(6, 12))):
        triples = [f"e{i}\tr{i % 2}\te{(i + k) % 12}\n" for i in span for k in offsets]
        (raw / f"{split}.tsv").write_text("".join(triples))
    lines: list[str] = []
    manifest = prepare_dataset(raw, tmp_path / "out", cold_entities=0.25, seed=0, log=lines.append)
    hygiene = manifest["split_hygiene"]
    for split in ("valid", "test"):
        assert hygiene["unseen_in_train"][split]["lines"] == hygiene["cold_start"][split]["lines"] > 0
    after = [line for line in lines if "after --cold-entities" in line]
    assert after[0].startswith("split hygiene (raw after --cold-entities): no duplicates")
    assert not any(line.startswith("WARNING") and "unseen" in line for line in lines)
    assert sum("cold start (by design)" in line and "moved from train" in line for line in lines) == 2


def test_a_later_plain_prepare_leaves_no_cold_listing(tmp_path: Path) -> None:
    raw = graph(tmp_path / "raw")
    cold(raw, tmp_path / "out")
    manifest = prepare_dataset(raw, tmp_path / "out", overwrite=True, log=quiet)
    assert "cold_start" not in manifest
    assert "cold_start" not in manifest["split_hygiene"]
    assert not (tmp_path / "out" / "moved.tsv").exists()
    assert not (tmp_path / "out" / "cold_entities.tsv").exists()


def test_the_cli_makes_a_cold_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = graph(tmp_path / "raw")
    argv = ["prepare", str(raw), str(tmp_path / "out"), "--cold-entities", "0.25", "--seed", "2"]
    assert main([*argv, "--cold-eligible", str(raw / "text.tsv")]) == 0
    assert "picked 8 of 34 eligible entities" in capsys.readouterr().out
    assert len(picked(tmp_path / "out")) == 8


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--cold-entities", "0"], "--cold-entities: expected a fraction strictly between 0 and 1"),
        (["--cold-entities", "1"], "--cold-entities: expected a fraction"),
        (["--cold-entities", "-0.1"], "--cold-entities: expected a fraction"),
        (
            ["--cold-entities", "ten"],
            "--cold-entities: expected a fraction strictly between 0 and 1 (e.g. 0.1), got 'ten'",
        ),
        (["--cold-entities", "nan"], "--cold-entities: expected a fraction"),
        (["--cold-entities", "0.001"], "--cold-entities 0.001: picks round(0.001 x 34 eligible entities) = 0"),
        (["--seed", "1"], "--seed picks the cold entities of --cold-entities"),
        (["--cold-eligible", "text.tsv"], "--cold-eligible names the entities --cold-entities may pick"),
        (["--cold-entities", "0.1", "--seed", "-1"], "--seed: expected a non-negative integer, got '-1'"),
        (["--cold-entities", "0.1", "--seed", "x"], "--seed: expected a non-negative integer"),
        (["--cold-entities", "0.1", "--cold-eligible", "missing.tsv"], "missing.tsv: --cold-eligible: file not found"),
        (["--cold-entities", "0.1", "--cold-eligible", "headless.tsv"], "headless.tsv:1: --cold-eligible: no header"),
        (["--cold-entities", "0.1", "--cold-eligible", "empty.tsv"], "empty.tsv: file is empty; expected a header"),
        (["--cold-entities", "0.1", "--cold-eligible", "strangers.tsv"], "strangers.tsv: --cold-eligible: names no"),
    ],
)
def test_bad_cold_input_is_one_line_naming_the_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], phrase: str
) -> None:
    raw = graph(tmp_path / "raw")
    (raw / "headless.tsv").write_text("e07\tname\n")
    (raw / "empty.tsv").write_text("")
    (raw / "strangers.tsv").write_text("entity\tname\nnobody\tx\n")
    extra = [str(raw / a) if a.endswith(".tsv") else a for a in extra]
    if "--cold-eligible" not in extra and "--cold-entities" in extra:
        extra += ["--cold-eligible", str(raw / "text.tsv")]
    assert main(["prepare", str(raw), str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("distmap prepare: error: ")
    assert phrase in err
    assert not (tmp_path / "out").exists()
