"""Shared fixtures: a small synthetic knowledge graph with learnable structure; short folders for Ray."""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from distmap.data.prepare import prepare_dataset

REPO = Path(__file__).resolve().parents[1]


def write_triples(folder: Path, splits: dict[str, list[tuple[str, str, str]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, triples in splits.items():
        (folder / f"{split}.tsv").write_text("".join(f"{h}\t{r}\t{t}\n" for h, r, t in triples), encoding="utf-8")
    return folder


def random_triples(count: int, num_heads: int, num_relations: int, num_tails: int, seed: int) -> torch.Tensor:
    """(count, 3) uniform random id triples; few heads make queries with several tails."""
    g = torch.Generator().manual_seed(seed)
    columns = [torch.randint(0, n, (count,), generator=g) for n in (num_heads, num_relations, num_tails)]
    return torch.stack(columns, dim=1)


def ring_graph(n: int = 30, seed: int = 0) -> dict[str, list[tuple[str, str, str]]]:
    """Entities on a ring: `next` (i -> i+1), `skip` (i -> i+2), `opposite` (i -> i+n/2).

    Deterministic relations, so a model that learns anything ranks test answers near the top.
    """
    names = [f"e{i:03d}" for i in range(n)]
    triples = [
        (names[i], rel, names[(i + step) % n])
        for i in range(n)
        for rel, step in (("next", 1), ("skip", 2), ("opposite", n // 2))
    ]
    random.Random(seed).shuffle(triples)
    k = len(triples) // 10
    return {"train": triples[2 * k :], "valid": triples[:k], "test": triples[k : 2 * k]}


@pytest.fixture(scope="session")
def ring_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("ring")
    raw = write_triples(base / "raw", ring_graph())
    prepare_dataset(raw, base / "dataset", log=lambda _: None)
    return base / "dataset"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Ray's socket paths must stay under 108 bytes: pytest's tmp_path is too deep."""
    path = Path(tempfile.mkdtemp(prefix="dm-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
