"""Model name -> assembled model. The config never reaches the model: explicit arguments do.

Structural models (transe, distmult, complex, rotate) are a table plus an interaction; given
feature modalities they become multimodal over the same interaction (``map`` without its terms
is ComplEx of that kind). The multimodal baselines are each a small variation over the shared
pieces (``distmap.models.multimodal``); ``docs/method.md`` says what each computes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from distmap.config import ModelConfig
from distmap.models.interactions import Interaction, MultiViewTransE, make_interaction
from distmap.models.model import KGEModel
from distmap.models.multimodal import (
    FeatureRows,
    MMKRLModel,
    MultimodalModel,
    OTKGEModel,
    TBKGEModel,
    TransAEModel,
)

FeatureReader = Callable[[str, int, int], FeatureRows]
"""``read(modality, lo, hi)``: the feature rows [lo, hi) of a modality (``FeatureShards.read``)."""

_INTERACTION = {"transae": "transe", "mmkrl": "complex", "otkge": "complex", "map": "complex"}


def interaction_for(cfg: ModelConfig, num_modalities: int) -> Interaction:
    if cfg.name == "ikrl":  # structure plus one image-based view per modality (the paper has one)
        return MultiViewTransE(views=1 + num_modalities, relation_per_view=False, p=cfg.p_norm)
    if cfg.name == "tbkge":
        return MultiViewTransE(views=2, relation_per_view=True, p=cfg.p_norm)
    return make_interaction(_INTERACTION.get(cfg.name, cfg.name), cfg.p_norm)


def fusion_weights(cfg: ModelConfig, modalities: list[str]) -> list[float]:
    """One weight per view (structure first): the config's, OTKGE's alpha/gamma, or equal."""
    if cfg.fusion_weights:
        if len(cfg.fusion_weights) != 1 + len(modalities):
            raise ValueError(
                f"model.fusion_weights: {len(cfg.fusion_weights)} given, need {1 + len(modalities)} "
                f"(structure, {', '.join(modalities)})"
            )
        return list(cfg.fusion_weights)
    if cfg.name == "otkge":
        o = cfg.otkge
        by_name = {"visual": o.alpha, "image": o.alpha, "text": o.gamma}
        return [1 - o.alpha - o.gamma] + [by_name.get(m, o.gamma) for m in modalities]
    views = 2 if cfg.name == "tbkge" else 1 + len(modalities)
    return [1.0 / views] * views


def build_model(
    cfg: ModelConfig,
    num_entities: int,
    num_base_relations: int,
    seed: int = 0,
    entity_range: tuple[int, int] | None = None,
    modalities: list[str] | None = None,
    read_features: FeatureReader | None = None,
    table_dtype: torch.dtype | None = None,
    seen: torch.Tensor | None = None,
) -> KGEModel:
    """A model over ``num_entities`` and 2 x ``num_base_relations`` (reciprocals included).

    ``entity_range`` = the rows [lo, hi) this worker holds (default: all); initial values do
    not depend on it, so any partition starts from the same parameters. ``modalities`` are read
    for those rows only, through ``read_features``. ``table_dtype`` stores the structural entity
    table (bfloat16: half the memory, for the sampled objective's row updates; structural models and MAP).
    ``seen`` (N,) bool: the entities of some train triple (``cfg.cold``: the others are ranked from
    their features; None: every entity is taken as seen); only a multimodal model reads it, and only
    its rows [lo, hi).
    """
    modalities = list(modalities or [])
    interaction = interaction_for(cfg, len(modalities))
    base = (interaction, num_entities, 2 * num_base_relations, cfg.rank, cfg.init_scale, seed)
    if not modalities:
        return KGEModel(*base, entity_range, table_dtype)
    if read_features is None:
        raise ValueError("modalities given without a feature reader")
    lo, hi = entity_range or (0, num_entities)
    features = {m: read_features(m, lo, hi) for m in modalities}
    kind = "concat" if cfg.name in ("ikrl", "tbkge") else ("weighted" if cfg.name == "otkge" else cfg.fusion)
    kind = "learned" if kind == "auto" else kind
    common = {
        "features": features,
        "fusion": kind,
        "fusion_weights": fusion_weights(cfg, modalities),
        "seen": seen[lo:hi] if seen is not None else None,
        "unseen": cfg.cold.unseen,
        "dropout": cfg.cold.dropout,
        "negatives": cfg.cold.negatives,
        "twin_grad": "projections"
        if cfg.cold.twin_trains == "projections"
        else ("all" if cfg.cold.structure_grad else "no_structure"),
    }
    if cfg.name == "otkge":
        anchors = {m: first_present(read_features, m, num_entities, cfg.otkge.anchors) for m in modalities}
        return OTKGEModel(*base, entity_range, anchors=anchors, scale=cfg.otkge.scale, reg=cfg.otkge.reg, **common)
    common["projection"] = cfg.projection
    if cfg.name == "transae":
        return TransAEModel(*base, entity_range, reconstruction_weight=cfg.aux_weight, **common)
    if cfg.name == "mmkrl":
        return MMKRLModel(
            *base, entity_range, reconstruction_weight=cfg.aux_weight, epsilon=cfg.adversarial_eps, **common
        )
    if cfg.name == "tbkge":
        return TBKGEModel(*base, entity_range, **common)
    return MultimodalModel(*base, entity_range, **common, table_dtype=table_dtype)


def first_present(read: FeatureReader, modality: str, num_entities: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, rows) of the first ``n`` entities that have the modality: OTKGE's anchors."""
    ids, rows, lo = [], [], 0
    while len(ids) < n and lo < num_entities:
        block = read(modality, lo, min(lo + 4 * n, num_entities))
        for i in block.present.nonzero().squeeze(1).tolist()[: n - len(ids)]:
            ids.append(lo + i)
            rows.append(block.values[i])
        lo += 4 * n
    if len(ids) < n:
        raise ValueError(f"{modality}: only {len(ids)} entities have features; OTKGE needs {n} anchors")
    return torch.tensor(ids), torch.stack(rows)
