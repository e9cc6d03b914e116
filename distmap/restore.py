"""A finished run's best model, from whichever checkpoint layout the run wrote.

A single-process run keeps ``<run>/checkpoint.pt``; a sharded run keeps per-range row files
under ``<output>/ray_results/<run>/checkpoint_*`` (Ray Train). ``find_best`` locates the
best-on-valid parameters without loading the entity table; ``entity_rows`` reads any row range
of it, so a consumer that goes range by range (``distmap export``) never holds the whole table.
``scored_rows`` gives the vectors the model scores: the structural rows, or for a multimodal
model the fused rows of the range, computed from its feature rows and the replicated weights.
``load_best_model`` puts the whole table in one model here: predicting and re-evaluating need
every candidate in one process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from distmap.config import Config
from distmap.data.kg import KnowledgeGraph, entity_degrees
from distmap.distributed.shard_checkpoint import COMMON, load_rows, newest_checkpoint, row_files
from distmap.errors import DataError
from distmap.models.model import KGEModel
from distmap.models.zoo import build_model
from distmap.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from distmap.train.fit import feature_reader, train_seen

ENTITY_KEY = "entities.weight"  # the entity table in a model's state dict


@dataclass(frozen=True)
class BestCheckpoint:
    """Where a run's best-on-valid parameters are: the replicated ones (relations, projections,
    fusion) in memory, entity rows left on disk."""

    path: Path  # checkpoint.pt, or a sharded checkpoint folder (row files + common.pt)
    epoch: int
    num_entities: int
    replicated: dict[str, Tensor]  # parameter name -> value; "relations" is (2R, relation_dim), reciprocals included
    parts: tuple[tuple[int, int], ...]  # entity row ranges as stored: one per row file; ((0, N),) for checkpoint.pt

    @property
    def sharded(self) -> bool:
        return self.path.is_dir()

    @property
    def relations(self) -> Tensor:
        return self.replicated["relations"]


def find_best(run_dir: Path, num_entities: int) -> BestCheckpoint:
    """The run's best checkpoint: ``checkpoint.pt`` if there is one, else the newest sharded one."""
    single = run_dir / CHECKPOINT_NAME
    if single.exists():
        saved = load_checkpoint(single, mmap=True)
        rows = saved["best_state"][ENTITY_KEY].shape[0]
        if rows != num_entities:
            raise DataError(single, f"checkpoint has {rows} entities, the dataset {num_entities}")
        replicated = {k: v.clone() for k, v in saved["best_state"].items() if k != ENTITY_KEY}
        return BestCheckpoint(single, saved["best_epoch"], num_entities, replicated, ((0, rows),))
    sharded_root = run_dir.parent / "ray_results" / run_dir.name
    folder = newest_checkpoint(sharded_root)
    if folder is None:
        raise DataError(run_dir, f"no {CHECKPOINT_NAME} here and no sharded checkpoint under {sharded_root}")
    common = load_checkpoint(folder / COMMON)
    if common["num_entities"] != num_entities:
        raise DataError(folder, f"checkpoint has {common['num_entities']} entities, the dataset {num_entities}")
    parts = tuple((lo, hi) for lo, hi, _ in row_files(folder))
    # Checkpoints written before multimodal models kept only the relations replicated.
    replicated = common.get("best_replicated") or {"relations": common["best_relations"]}
    return BestCheckpoint(folder, common["best_epoch"], num_entities, replicated, parts)


def entity_rows(best: BestCheckpoint, lo: int, hi: int) -> Tensor:
    """Best-on-valid structural rows [lo, hi), (hi - lo, entity_dim) on the CPU.

    The one place a run's entity rows are read: reads only the row files overlapping [lo, hi),
    and only their best rows (memory-mapped).
    """
    if not 0 <= lo <= hi <= best.num_entities:
        raise IndexError(f"rows [{lo}, {hi}) outside [0, {best.num_entities})")
    if not best.sharded:
        return load_checkpoint(best.path, mmap=True)["best_state"][ENTITY_KEY][lo:hi].clone()
    rows, _ = load_rows(best.path, lo, hi, keys=("best",))
    return rows["best"]


def _load(model: KGEModel, best: BestCheckpoint, rows: Tensor) -> KGEModel:
    """Put the best structural ``rows`` (the model's block) and replicated weights into ``model``."""
    with torch.no_grad():
        model.entities.weight.copy_(rows)
        for name, p in model.named_parameters():
            if p is not model.entities.weight:
                p.copy_(best.replicated[name])
    return model


def scored_rows(best: BestCheckpoint, cfg: Config, lo: int, hi: int) -> Tensor:
    """The vectors the model scores for entities [lo, hi): the structural rows, or a multimodal
    model's fused rows, computed from the range's own feature rows only (range by range, as export reads)."""
    rows = entity_rows(best, lo, hi)
    if not cfg.data.modalities:
        return rows
    root = Path(cfg.data.path)
    # The train triples say which rows have a structural view (``model.cold.unseen: projection``).
    needs_seen = cfg.model.cold.unseen == "projection"
    model = build_model(
        cfg.model,
        best.num_entities,
        best.relations.shape[0] // 2,
        entity_range=(lo, hi),
        modalities=cfg.data.modalities,
        read_features=feature_reader(root, cfg.data.modalities),
        seen=_train_seen(root) if needs_seen else None,
    )
    with torch.no_grad():  # structural rows outside the range (OTKGE's anchors) come from the checkpoint
        fused = _load(model, best, rows).views(
            lambda ids: torch.cat([entity_rows(best, i, i + 1) for i in ids.tolist()])
        )
        return fused.fused


@functools.lru_cache(maxsize=2)
def _train_seen(root: Path) -> Tensor:
    """(N,) bool: the entities of some train triple of the dataset at ``root`` (``train_seen``), read
    once for all the ranges an export goes through."""
    kg = KnowledgeGraph.load(root)
    return entity_degrees(kg.train, kg.num_entities) > 0


def load_best_model(run_dir: Path, cfg: Config, kg: KnowledgeGraph, device: torch.device) -> tuple[KGEModel, int]:
    """(model holding the run's best-on-valid parameters, the epoch they come from)."""
    best = find_best(run_dir, kg.num_entities)
    model = build_model(
        cfg.model,
        kg.num_entities,
        kg.num_relations,
        modalities=cfg.data.modalities,
        read_features=feature_reader(kg.root, cfg.data.modalities),
        seen=train_seen(cfg, kg.train, kg.num_entities),
    )
    return _load(model, best, entity_rows(best, 0, kg.num_entities)).to(device), best.epoch


def replicated_model(best: BestCheckpoint, cfg: Config) -> KGEModel:
    """A model holding the run's replicated best weights (relations, projections, fusion) over its
    first structural row only (OTKGE: all of them): enough for what reads no entity table, such as
    ``unseen_rows`` (the fused rows of new entities, ``distmap export --new-entities``)."""
    # OTKGE's projection is re-solved from its anchor entities' structural rows: it needs the table.
    rows = (0, best.num_entities if cfg.model.name == "otkge" else min(1, best.num_entities))
    model = build_model(
        cfg.model,
        best.num_entities,
        best.relations.shape[0] // 2,
        entity_range=rows,
        modalities=cfg.data.modalities,
        read_features=feature_reader(Path(cfg.data.path), cfg.data.modalities) if cfg.data.modalities else None,
    )
    return _load(model, best, entity_rows(best, *rows)).eval()
