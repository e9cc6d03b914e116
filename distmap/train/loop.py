"""One training epoch of 1-vs-all cross-entropy with reciprocal relations (kbc's loop).

Shuffle, slice, score every (h, r) against all entities, cross-entropy against the true tail,
add the regularizer over the factors actually used, step. Checkpointing, validation and
logging live around this loop (``distmap.train.fit``), not inside it.
"""

from __future__ import annotations

import sys
import time
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


def train_epoch(model: KGEModel, examples: Tensor, optimizer: torch.optim.Optimizer, objective: Objective,
                batch_size: int, generator: torch.Generator, desc: str = "train") -> EpochStats:
    """One pass over ``examples`` (train triples with reciprocals) in a generator-seeded order."""
    model.train()
    start = time.perf_counter()
    order = torch.randperm(examples.shape[0], generator=generator)
    total = fit_total = 0.0
    device = model.relations.device
    # In a log file (no TTY) a bar update every minute is progress enough and keeps the log short.
    interval = 1.0 if sys.stderr.isatty() else 60.0
    with tqdm(total=examples.shape[0], desc=desc, unit="ex", leave=False, mininterval=interval) as bar:
        for begin in range(0, examples.shape[0], batch_size):
            batch = examples[order[begin : begin + batch_size]].to(device)
            scores, factors = model(batch)
            loss, fit = objective(scores, batch[:, 2], factors)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = batch.shape[0]
            total += loss.item() * n
            fit_total += fit.item() * n
            bar.update(n)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    n = examples.shape[0]
    return EpochStats(total / n, fit_total / n, time.perf_counter() - start)
