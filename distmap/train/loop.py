"""One training epoch of 1-vs-all cross-entropy with reciprocal relations (kbc's loop).

Shuffle the query groups, slice, score every (h, r) once against all entities, cross-entropy
against each of its true tails, add the regularizer over the factors actually used, step.
Checkpointing, validation and logging live around this loop (``distmap.train.fit``), not inside it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from distmap.data.batches import BatchUnit, QueryGroups
from distmap.models.model import KGEModel
from distmap.train.objective import Objective


@dataclass(frozen=True)
class EpochStats:
    loss: float
    fit_loss: float
    seconds: float

    def examples_per_second(self, n: int) -> float:
        return n / self.seconds if self.seconds > 0 else float("inf")


StepLoss = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
"""Given the group ids of one step: (loss to backpropagate, total loss to log, cross-entropy to log)."""


def local_step(model: KGEModel, groups: QueryGroups, objective: Objective) -> StepLoss:
    """The single-process step: score the batch's queries against every entity row of the model."""
    device = model.relations.device

    def loss(ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch = groups.select(ids).to(device)
        drop, replace = objective.dropout_key(model, ids)
        views = model.views()
        twin = model.twin_views(views, drop) if drop is not None else None
        scores, factors, views = model(batch, twin if replace else views)
        total, fit = objective(scores, batch.pair_query, batch.tails, factors)
        total = total + objective.extra(model, views, batch.entities() - views.lo)
        if twin is not None and not replace:  # the twin: the same step with some structural views dropped
            scores, factors, _ = model(batch, twin)
            total = total + objective.twin_weight * objective(scores, batch.pair_query, batch.tails, factors)[0]
        return total, total.detach(), fit.detach()

    return loss


def run_epoch(
    step: StepLoss,
    optimizer: torch.optim.Optimizer,
    groups: QueryGroups,
    batch_size: int,
    generator: torch.Generator,
    desc: str = "train",
    sync_grads: Callable[[], None] | None = None,
    show_progress: bool = True,
    unit: BatchUnit = "queries",
) -> EpochStats:
    """One pass in a generator-seeded order: every worker draws the same order from the same state.

    Losses are averaged per triple, so grouped and per-triple epochs log comparable numbers.
    """
    start = time.perf_counter()
    total = fit_total = 0.0
    # In a log file (no TTY) a bar update every minute is progress enough and keeps the log short.
    interval = 1.0 if sys.stderr.isatty() else 60.0
    with tqdm(
        total=groups.num_triples,
        desc=desc,
        unit="triple",
        leave=False,
        mininterval=interval,
        disable=not show_progress,
    ) as bar:
        for ids in groups.epoch(generator, batch_size, unit):
            loss, logged, fit = step(ids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if sync_grads is not None:
                sync_grads()
            optimizer.step()
            triples = int(groups.sizes(ids).sum())
            total += logged.item() * triples
            fit_total += fit.item() * triples
            bar.update(triples)
            bar.set_postfix(loss=f"{logged.item():.4f}", refresh=False)
    return EpochStats(total / groups.num_triples, fit_total / groups.num_triples, time.perf_counter() - start)


def train_epoch(
    model: KGEModel,
    groups: QueryGroups,
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    batch_size: int,
    generator: torch.Generator,
    desc: str = "train",
    unit: BatchUnit = "queries",
) -> EpochStats:
    """One single-process pass over the training groups (train triples with reciprocals)."""
    model.train()
    return run_epoch(local_step(model, groups, objective), optimizer, groups, batch_size, generator, desc, unit=unit)
