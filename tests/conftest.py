"""Shared fixtures: a small synthetic knowledge graph with learnable structure; short folders for Ray."""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from distmap.data.kg import KnowledgeGraph
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


def add_features(dataset: Path, modality: str, dim: int, seed: int, missing_every: int = 0) -> None:
    """Import synthetic N(0, 1) feature rows of ``dim`` as ``modality``; with ``missing_every`` k, every
    k-th entity (sorted-name order) has no row (masked), through a Parquet file with entity names."""
    # imported here: every test process (and every spawned worker) loads this module, few need these
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distmap.data.features import import_features

    names = KnowledgeGraph.load(dataset).entities
    values = np.random.default_rng(seed).normal(size=(len(names), dim)).astype(np.float32)
    keep = [i for i in range(len(names)) if not missing_every or i % missing_every]
    file = dataset.parent / f"{dataset.name}-{modality}.parquet"
    table = pa.table({"name": [names[i] for i in keep], "vec": pa.array([values[i].tolist() for i in keep])})
    pq.write_table(table, file)
    import_features(dataset, modality, file, id_column="name", log=lambda _: None)


@pytest.fixture(scope="session")
def ring_multimodal_dataset(ring_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ring graph with synthetic ``visual`` rows (8-d, every entity) and ``text`` rows (6-d, every
    7th entity without one), for MAP and its terms."""
    dataset = tmp_path_factory.mktemp("ring-mm") / "dataset"
    shutil.copytree(ring_dataset, dataset)
    add_features(dataset, "visual", 8, seed=0)
    add_features(dataset, "text", 6, seed=1, missing_every=7)
    return dataset


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Ray's socket paths must stay under 108 bytes: pytest's tmp_path is too deep."""
    path = Path(tempfile.mkdtemp(prefix="dm-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
