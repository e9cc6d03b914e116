"""Fig. 2a's probe: how far apart a few semantically related entities are, epoch after epoch.

Alignment moves whole distributions; without instance preserving, entities that belong together
can drift apart. The probe measures that on named entities as the sum of their pairwise
Euclidean distances, on the fused rows the model scores.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distmap.data.kg import KnowledgeGraph
from distmap.errors import DistmapError

METRIC = "probe/spread"


def probe_ids(kg: KnowledgeGraph, names: list[str]) -> Tensor:
    """Ids of ``track.probe_entities``; an unknown name is an error naming the key, before training."""
    index = {name: i for i, name in enumerate(kg.entities)}
    missing = [n for n in names if n not in index]
    if missing:
        raise DistmapError(f"track.probe_entities: {', '.join(missing)} not an entity of {kg.root}")
    return torch.tensor([index[n] for n in names], dtype=torch.long)


def pairwise_spread(rows: Tensor) -> float:
    """``sum_{i<j} ||rows_i - rows_j||_2`` over the rows (n, d)."""
    return float(torch.pdist(rows.detach().double()).sum())
