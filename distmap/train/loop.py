"""One training epoch of 1-vs-all cross-entropy with reciprocal relations (kbc's loop).

Shuffle, slice, score every (h, r) against all entities, cross-entropy against the true tail,
add the regularizer over the factors actually used, step. Checkpointing, validation and
logging live around this loop (``distmap.train.fit``), not inside it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from distmap.models.model import KGEModel


def frequency_class_weights(examples: Tensor, num_entities: int) -> Tensor:
    """OTKGE's ``-weight`` flag: count of each entity as a training target, ``count/max*0.9+0.1``."""
    counts = torch.bincount(examples[:, 2], minlength=num_entities).float()
    return counts / counts.max() * 0.9 + 0.1


@dataclass(frozen=True)
class Objective:
    """Cross-entropy over all entities (optionally smoothed / class-weighted) plus N3 or L2."""

    regularizer: str = "n3"
    reg_weight: float = 0.0
    label_smoothing: float = 0.0
    class_weight: Tensor | None = None

    def penalty(self, factors: tuple[Tensor, ...], batch_size: int) -> Tensor:
        """kbc's N3: ``weight * sum |f|^3 / batch``; L2 the same with squares."""
        if self.regularizer == "none" or self.reg_weight == 0:
            return factors[0].new_zeros(())
        power = 3 if self.regularizer == "n3" else 2
        return self.reg_weight * sum(f.abs().pow(power).sum() for f in factors) / batch_size

    def __call__(self, scores: Tensor, targets: Tensor, factors: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """Returns (total loss to minimise, the cross-entropy part for logging)."""
        fit = F.cross_entropy(scores, targets, weight=self.class_weight, label_smoothing=self.label_smoothing)
        return fit + self.penalty(factors, targets.shape[0]), fit


@dataclass(frozen=True)
class EpochStats:
    loss: float
    fit_loss: float
    seconds: float

    def examples_per_second(self, n: int) -> float:
        return n / self.seconds if self.seconds > 0 else float("inf")


StepLoss = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
"""Given the example indices of one step: (loss to backpropagate, total loss to log, cross-entropy to log)."""


def local_step(model: KGEModel, examples: Tensor, objective: Objective) -> StepLoss:
    """The single-process step: score the batch against every entity row of the model."""
    device = model.relations.device

    def loss(index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch = examples[index].to(device)
        scores, factors = model(batch)
        total, fit = objective(scores, batch[:, 2], factors)
        return total, total.detach(), fit.detach()

    return loss


def run_epoch(
    step: StepLoss,
    optimizer: torch.optim.Optimizer,
    num_examples: int,
    batch_size: int,
    generator: torch.Generator,
    desc: str = "train",
    sync_grads: Callable[[], None] | None = None,
    show_progress: bool = True,
) -> EpochStats:
    """One pass in a generator-seeded order: every worker draws the same order from the same state."""
    start = time.perf_counter()
    order = torch.randperm(num_examples, generator=generator)
    total = fit_total = 0.0
    # In a log file (no TTY) a bar update every minute is progress enough and keeps the log short.
    interval = 1.0 if sys.stderr.isatty() else 60.0
    with tqdm(
        total=num_examples, desc=desc, unit="ex", leave=False, mininterval=interval, disable=not show_progress
    ) as bar:
        for begin in range(0, num_examples, batch_size):
            index = order[begin : begin + batch_size]
            loss, logged, fit = step(index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if sync_grads is not None:
                sync_grads()
            optimizer.step()
            total += logged.item() * len(index)
            fit_total += fit.item() * len(index)
            bar.update(len(index))
            bar.set_postfix(loss=f"{logged.item():.4f}", refresh=False)
    return EpochStats(total / num_examples, fit_total / num_examples, time.perf_counter() - start)


def train_epoch(
    model: KGEModel,
    examples: Tensor,
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    batch_size: int,
    generator: torch.Generator,
    desc: str = "train",
) -> EpochStats:
    """One single-process pass over ``examples`` (train triples with reciprocals)."""
    model.train()
    return run_epoch(local_step(model, examples, objective), optimizer, examples.shape[0], batch_size, generator, desc)
