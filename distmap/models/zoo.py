"""Model name -> assembled model. The config never reaches the model: explicit arguments do."""

from __future__ import annotations

from distmap.config import ModelConfig
from distmap.models.interactions import make_interaction
from distmap.models.model import KGEModel


def build_model(
    cfg: ModelConfig,
    num_entities: int,
    num_base_relations: int,
    seed: int = 0,
    entity_range: tuple[int, int] | None = None,
) -> KGEModel:
    """A model over ``num_entities`` and 2 x ``num_base_relations`` (reciprocals included).

    ``entity_range`` = the rows [lo, hi) this worker holds (default: all); initial values do
    not depend on it, so any partition starts from the same parameters.
    """
    return KGEModel(
        make_interaction(cfg.name, cfg.p_norm),
        num_entities,
        2 * num_base_relations,
        cfg.rank,
        cfg.init_scale,
        seed,
        entity_range,
    )
