"""One worker of a row-sharded run: the ``Engine`` that ``distmap.train.fit.run`` drives.

Worker p of P holds entity rows [lo, hi) and their optimizer state; relations (and a multimodal
model's projection and fusion weights) are replicated.
Checkpoints are written as per-range row files plus ``common.pt`` (``shard_checkpoint``) into
a fresh folder that ``publish`` hands on (Ray Train's ``report``, or a copy into a shared
folder), so a run restores on any number of workers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from distmap.config import Config
from distmap.data.batches import QueryGroups
from distmap.data.kg import KnowledgeGraph
from distmap.distributed.collectives import all_reduce_, barrier, world
from distmap.distributed.partition import row_ranges
from distmap.distributed.shard_checkpoint import (
    COMMON,
    entity_scalars,
    entity_state,
    load_rows,
    restore_entity_state,
    save_rows,
)
from distmap.distributed.sharded import (
    evaluate_sharded,
    replicated_rows,
    sharded_step,
    sharded_views,
    sync_replicated_grads,
)
from distmap.distributed.triple_shards import ShardedGroups, range_filter, read_train_shard
from distmap.models.multimodal import FeatureRows
from distmap.models.zoo import build_model
from distmap.train.checkpoint import load_checkpoint, save_checkpoint
from distmap.train.evaluate import EvalResult
from distmap.train.fit import (
    Progress,
    check_resumable,
    feature_reader,
    make_optimizer,
    train_seen,
    training_groups,
    training_parts,
    training_step,
)
from distmap.train.loop import EpochStats, StepLoss, run_epoch
from distmap.train.objective import seed_loss_terms
from distmap.train.sampled import CandidateSampler

Publish = Callable[[Path, dict[str, Any]], None]


class ShardedEngine:
    """This worker's rows of the model, its optimizer state, and the collective train/eval steps."""

    def __init__(
        self,
        cfg: Config,
        kg: KnowledgeGraph,
        device: torch.device,
        restore_from: Path | None,
        publish: Publish,
        fault_marker: Path | None = None,
    ) -> None:
        self.cfg, self.kg, self.restore_from, self.publish = cfg, kg, restore_from, publish
        self.rank, size = world()
        at = cfg.scale.fail_at_step
        self.fault = FailOnce(at, fault_marker) if at and fault_marker and self.rank == size - 1 else None
        self.lo, self.hi = row_ranges(kg.num_entities, size)[self.rank]
        # Each worker reads only the Parquet parts overlapping its rows (recorded in feature_parts).
        self.feature_parts: dict[str, list[str]] = {m: [] for m in cfg.data.modalities}
        read = feature_reader(kg.root, cfg.data.modalities)

        def read_and_record(modality: str, lo: int, hi: int) -> FeatureRows:
            rows = read(modality, lo, hi)
            self.feature_parts[modality].extend(rows.parts)
            return rows

        self.train_row_groups: list[int] = []  # of train.parquet, read by this worker under scale.shard_triples
        if cfg.scale.shard_triples:
            triples, self.train_row_groups = read_train_shard(kg, self.rank, size)
            seen = train_seen(cfg, triples, kg.num_entities)
            seen = all_reduce_(seen.long()) > 0 if seen is not None else None  # seen in any worker's share
        else:
            seen = train_seen(cfg, kg.train, kg.num_entities)
        self.model = build_model(
            cfg.model,
            kg.num_entities,
            kg.num_relations,
            cfg.train.seed,
            entity_range=(self.lo, self.hi),
            modalities=cfg.data.modalities,
            read_features=read_and_record,
            table_dtype=getattr(torch, cfg.train.table_dtype),
            seen=seen,
        ).to(device)
        self.optimizer = make_optimizer(cfg.train.optimizer, self.model, cfg.train.lr, cfg.train.objective == "sampled")
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.sampler = CandidateSampler(cfg.train.seed)
        seed_loss_terms(cfg.train.seed)
        self.groups: QueryGroups | ShardedGroups
        if cfg.scale.shard_triples:
            local, self.objective = training_groups(cfg, triples, kg.num_entities, kg.num_relations, device)
            self.groups, self.filter_index = ShardedGroups(local), range_filter(kg, self.lo, self.hi, device)
            self.num_examples = int(all_reduce_(torch.tensor([local.num_triples])))
        else:
            self.groups, self.objective, self.filter_index = training_parts(cfg, kg, device)
            self.num_examples = self.groups.num_triples
        # Everything but the entity rows (relations, projections, fusion) is replicated on every worker.
        self.replicated = {n: p for n, p in self.model.named_parameters() if p is not self.model.entities.weight}
        self.keep_best()
        self.rows_read: list[Path] = []

    def train_epoch(self, desc: str) -> EpochStats:
        self.model.train()
        step = training_step(
            self.cfg, self.model, self.groups, self.objective, self.optimizer, self.sampler, exact=sharded_step
        )
        if self.fault is not None:
            step = self.fault.wrap(step)
        return run_epoch(
            step,
            self.optimizer,
            self.groups,
            self.cfg.train.batch_size,
            self.generator,
            desc,
            sync_grads=sync_replicated_grads(self.model),
            show_progress=self.rank == 0,
            unit=self.cfg.train.batch_unit,
        )

    def evaluate(self, split: str) -> EvalResult:
        return evaluate_sharded(
            self.model,
            self.kg.splits[split],
            num_relations=self.kg.num_relations,
            filter_index=self.filter_index,
            tie=self.cfg.train.tie,
            batch_size=self.cfg.train.eval_batch_size,
        )

    def fused_rows(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return replicated_rows(sharded_views(self.model).fused, self.lo, ids.to(self.model.relations.device))

    def keep_best(self) -> None:
        self.best_rows = self.model.entities.weight.detach().clone()
        self.best_replicated = {n: p.detach().clone() for n, p in self.replicated.items()}

    def use_best(self) -> None:
        with torch.no_grad():
            self.model.entities.weight.copy_(self.best_rows)
            for name, p in self.replicated.items():
                p.copy_(self.best_replicated[name])

    def save(self, progress: Progress) -> None:
        weight = self.model.entities.weight
        rng = worker_rng_states(weight.device)  # collective: every worker's own, for common.pt
        with tempfile.TemporaryDirectory(prefix="distmap-ckpt-") as tmp:
            folder = Path(tmp)
            save_rows(
                folder,
                self.lo,
                self.hi,
                {"weight": weight.detach(), "best": self.best_rows, **entity_state(self.optimizer, weight)},
            )
            if self.rank == 0:
                save_checkpoint(
                    folder / COMMON,
                    {
                        **asdict(progress),
                        "replicated": {n: p.detach().cpu() for n, p in self.replicated.items()},
                        "best_replicated": {n: p.cpu() for n, p in self.best_replicated.items()},
                        "replicated_state": {n: dict(self.optimizer.state[p]) for n, p in self.replicated.items()},
                        "entity_scalars": entity_scalars(self.optimizer, weight),
                        "generator": self.generator.get_state(),
                        "sampler_steps": self.sampler.steps,
                        "torch_rng": torch.get_rng_state(),
                        "worker_rng": rng,
                        "config": self.cfg.to_dict(),
                        "num_entities": self.kg.num_entities,
                    },
                )
            self.publish(folder, progress.validation())

    def load(self) -> Progress | None:
        if self.restore_from is None:
            return None
        common = load_checkpoint(self.restore_from / COMMON)
        check_resumable(common["config"], self.cfg, self.restore_from)
        rows, self.rows_read = load_rows(self.restore_from, self.lo, self.hi)
        device = self.model.relations.device
        with torch.no_grad():
            self.model.entities.weight.copy_(rows["weight"])
            for name, p in self.replicated.items():
                p.copy_(common["replicated"][name])
        self.best_rows = rows["best"].to(device)
        self.best_replicated = {n: t.to(device) for n, t in common["best_replicated"].items()}
        restore_entity_state(self.optimizer, self.model.entities.weight, rows, common["entity_scalars"])
        for name, p in self.replicated.items():
            state = common["replicated_state"][name]
            self.optimizer.state[p] = {k: v.to(device) if torch.is_tensor(v) else v for k, v in state.items()}
        self.generator.set_state(common["generator"])
        self.sampler.steps = common["sampler_steps"]
        # Each worker's loss terms drew from its own RNG: back to its own state on as many workers; on
        # another count (other blocks, other draws anyway) every worker starts from worker 0's, as a run does.
        rng = common.get("worker_rng")
        same_workers = rng is not None and len(rng) == world()[1]
        torch.set_rng_state(rng[self.rank].clone() if same_workers else common["torch_rng"])
        return Progress.from_saved(common)


def worker_rng_states(device: torch.device) -> torch.Tensor:
    """(P, L) every worker's torch RNG state (MAP's terms draw from it, differently on each worker),
    on every worker: one all-reduce."""
    rank, size = world()
    state = torch.get_rng_state()
    states = torch.zeros(size, len(state), dtype=torch.long, device=device)
    states[rank] = state.to(device)
    return all_reduce_(states).to("cpu", torch.uint8)


class FailOnce:
    """Fault injection: kill this worker process at its ``at``-th step (counted over epochs),
    once per marker file, so the restarted run goes through."""

    def __init__(self, at: int, marker: Path) -> None:
        self.at, self.marker, self.steps = at, marker, 0

    def wrap(self, step: StepLoss) -> StepLoss:
        def wrapped(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            self.steps += 1
            if self.steps == self.at and not self.marker.exists():
                self.marker.parent.mkdir(parents=True, exist_ok=True)
                self.marker.touch()
                os._exit(1)
            return step(index)

        return wrapped


def epoch_folder(root: Path, epoch: int) -> Path:
    return root / f"epoch-{epoch:06d}"


def move_into(root: Path) -> Publish:
    """A ``publish`` for a shared filesystem without Ray: every worker moves its files into
    ``root/epoch-<n>``, one folder per checkpoint so runs with different worker counts never mix."""

    def publish(files: Path, metrics: dict[str, Any]) -> None:
        target = epoch_folder(root, metrics["epoch"])
        target.mkdir(parents=True, exist_ok=True)
        for path in files.glob("rows-*.pt"):
            shutil.move(path, target / path.name)
        barrier()  # common.pt marks the folder complete: only after every worker's rows are in
        if (files / COMMON).exists():
            shutil.move(files / COMMON, target / COMMON)

    return publish
