"""Alignment and instance preserving as loss terms beside the link-prediction objective.

A term sees one block of entity rows in all their views (``EntityViews``) and the local rows of
the step's entities; it returns a weighted scalar. On P workers each term runs on the worker's
own block over the batch's entities it owns (plus its own samples), so the sum over workers is
the objective and no collective is needed: each worker aligns its own sub-distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from distmap.align.ot import Solver, squared_distances, transport_cost, transport_plan
from distmap.align.preserve import instance_preserving
from distmap.config import AlignConfig
from distmap.models.model import EntityViews


@dataclass
class MinibatchAlignment:
    """MAP's (A): OT between the projected rows and the structural rows of a sub-distribution:
    ``sample`` of the batch's entities plus ``extra`` drawn uniformly from the block (the
    augmentation), optionally with Gaussian-perturbed projected views (``perturb`` x their std)."""

    weight: float
    sample: int
    extra: int
    solver: Solver
    reg: float
    perturb: float
    detach_structure: bool = True
    name: str = "align"

    def rows(self, rows: Tensor, block: int) -> Tensor:
        """The sub-distribution: the global torch RNG draws (saved in checkpoints, so resume is exact)."""
        if self.sample and len(rows) > self.sample:
            rows = rows[torch.randperm(len(rows), device=rows.device)[: self.sample]]
        extra = torch.randint(0, block, (self.extra,), device=rows.device)
        return torch.unique(torch.cat([rows, extra]))

    def __call__(self, views: EntityViews, rows: Tensor) -> Tensor:
        chosen = self.rows(rows, len(views.structure))
        total = views.structure.new_zeros(())
        for m in views.projected:
            r = views.with_structure(chosen[views.present[m][chosen]])  # the structural rows are the target
            if len(r) < 2:
                continue
            p = views.projected_rows(m, r)
            if self.perturb:
                p = p + self.perturb * p.detach().std() * torch.randn_like(p)
            s = views.structure[r].detach() if self.detach_structure else views.structure[r]
            total = total + transport_cost(p, s, self.solver, self.reg)
        return self.weight * total


@dataclass
class FullAlignment:
    """Entity-level full OT: the same transport cost over every entity of the block, with the
    plan re-solved every ``plan_every`` steps (the costly whole-distribution alignment MAP avoids).
    On one process the block is the whole table. The count restarts every epoch (``restart``), so
    the first step of an epoch always solves a fresh plan and a run resumed from an epoch's
    checkpoint prices every step with the plan the uninterrupted run uses."""

    weight: float
    solver: Solver
    reg: float
    plan_every: int
    detach_structure: bool = True
    name: str = "full_ot"
    _plans: dict[str, Tensor] = field(default_factory=dict, repr=False)
    _step: int = 0

    def restart(self) -> None:
        self._step = 0
        self._plans.clear()

    def __call__(self, views: EntityViews, rows: Tensor) -> Tensor:
        total = views.structure.new_zeros(())
        fresh = self._step % self.plan_every == 0
        self._step += 1
        for m, projected in views.projected.items():
            present = views.present[m] if views.structured is None else views.present[m] & views.structured
            structure = views.structure[present]
            cost = squared_distances(projected[present], structure.detach() if self.detach_structure else structure)
            if fresh or m not in self._plans:
                self._plans[m] = transport_plan(cost, self.solver, self.reg)
            total = total + (self._plans[m] * cost).sum()
        return self.weight * total


@dataclass
class InstancePreserving:
    """MAP's (R): the batch's neighbourhoods in the aligned rows kept as the raw features have them."""

    weight: float
    temperature: float
    view: str
    sample: int
    name: str = "preserve"

    def __call__(self, views: EntityViews, rows: Tensor) -> Tensor:
        if self.sample and len(rows) > self.sample:
            rows = rows[torch.randperm(len(rows), device=rows.device)[: self.sample]]
        total = views.structure.new_zeros(())
        for m, features in views.features.items():
            r = rows[views.present[m][rows]]
            aligned = views.fused[r] if self.view == "fused" else views.projected_rows(m, r)
            total = total + instance_preserving(features[r], aligned, self.temperature)
        return self.weight * total


def alignment_terms(cfg: AlignConfig) -> tuple:
    """The terms a config asks for (none when both weights are 0: ``MAP w/o R & A``)."""
    terms: list = []
    if cfg.lambda_align > 0:
        if cfg.scope == "minibatch":
            terms.append(
                MinibatchAlignment(
                    cfg.lambda_align, cfg.sample, cfg.extra, cfg.solver, cfg.reg, cfg.perturb, cfg.detach_structure
                )
            )
        else:
            terms.append(FullAlignment(cfg.lambda_align, cfg.solver, cfg.reg, cfg.plan_every, cfg.detach_structure))
    if cfg.lambda_preserve > 0:
        terms.append(InstancePreserving(cfg.lambda_preserve, cfg.temperature, cfg.preserve_view, cfg.sample))
    return tuple(terms)
