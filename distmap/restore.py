"""A finished run's best model, from whichever checkpoint layout the run wrote.

A single-process run keeps ``<run>/checkpoint.pt``; a sharded run keeps per-range row files
under ``<output>/ray_results/<run>/checkpoint_*`` (Ray Train). Either way the best-on-valid
parameters come back as one model in this process, so the whole table must fit here:
evaluation of tables beyond one machine happens inside the run itself.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distmap.config import Config
from distmap.data.kg import KnowledgeGraph
from distmap.distributed.shard_checkpoint import COMMON, load_rows, newest_checkpoint
from distmap.errors import DataError
from distmap.models.model import KGEModel
from distmap.models.zoo import build_model
from distmap.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from distmap.train.fit import feature_reader


def load_best_model(run_dir: Path, cfg: Config, kg: KnowledgeGraph, device: torch.device) -> tuple[KGEModel, int]:
    """(model holding the run's best-on-valid parameters, the epoch they come from)."""
    model = build_model(
        cfg.model,
        kg.num_entities,
        kg.num_relations,
        modalities=cfg.data.modalities,
        read_features=feature_reader(kg, cfg.data.modalities),
    ).to(device)
    single = run_dir / CHECKPOINT_NAME
    if single.exists():
        saved = load_checkpoint(single)
        model.load_state_dict(saved["best_state"])
        return model, saved["best_epoch"]
    sharded_root = run_dir.parent / "ray_results" / run_dir.name
    folder = newest_checkpoint(sharded_root)
    if folder is None:
        raise DataError(run_dir, f"no {CHECKPOINT_NAME} here and no sharded checkpoint under {sharded_root}")
    rows, _ = load_rows(folder, 0, kg.num_entities)
    common = load_checkpoint(folder / COMMON)
    if common["num_entities"] != kg.num_entities:
        raise DataError(folder, f"checkpoint has {common['num_entities']} entities, the dataset {kg.num_entities}")
    # Checkpoints before multimodal models kept only the relations replicated.
    replicated = common.get("best_replicated") or {"relations": common["best_relations"]}
    with torch.no_grad():
        model.entities.weight.copy_(rows["best"])
        for name, p in model.named_parameters():
            if p is not model.entities.weight:
                p.copy_(replicated[name])
    return model, common["best_epoch"]
