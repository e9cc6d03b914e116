"""Modality pieces: projections of per-entity feature rows into the entity space, and fusions.

Every piece works on a block of entity rows (a worker's [lo, hi), or all of them) and honours
the explicit "no feature" mask: a row without a feature of some modality takes no part in the
fusion (its weight is given to the modalities it has), so a stored zero vector is never read
as data. Shapes: features (M, D_m), masks (M,) bool, entity-space views (M, d).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

ProjectionKind = Literal["linear", "mlp"]
FusionKind = Literal["weighted", "learned", "gate", "attention", "concat", "structure"]


class Projection(nn.Module):
    """Feature rows (M, D) -> entity space (M, d): a linear map or a one-hidden-layer MLP.

    Initialised small (like the structural rows, ``init_scale``) so that at the start of training
    the fused rows are on the structural table's scale.
    """

    def __init__(self, in_dim: int, out_dim: int, kind: ProjectionKind, init_scale: float, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        if kind == "linear":
            self.net: nn.Module = nn.Linear(in_dim, out_dim, bias=False)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.Tanh(), nn.Linear(out_dim, out_dim, bias=False))
        with torch.no_grad():  # replicated weights: the same draw on every worker
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * (init_scale if p.dim() > 1 else 0.0))
            if kind == "mlp":  # the hidden layer needs a unit-scale input map to be non-linear at all
                first = self.net[0].weight
                first.copy_(torch.randn(first.shape, generator=generator) / first.shape[1] ** 0.5)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


class Fusion(nn.Module):
    """Views (structure first, then each modality) -> one fused row per entity.

    - ``weighted``: fixed weights ``w_k``, renormalised over the views an entity has, so the
      weights sum to the same total for every entity (OTKGE's ``(1-a-g)E + a V + g L`` when all
      are present);
    - ``learned``: the same with weights ``softmax(theta)`` learned;
    - ``gate``: ``s + sum_m g_m * v_m`` with ``g_m = sigmoid(W_m [s; v_m])`` per coordinate;
    - ``attention``: softmax over the present views of ``a . tanh(W v_k)``, weighted sum;
    - ``concat``: the views side by side (M, K*d), for models that score each view (IKRL, TBKGE);
      an absent view is the structural row in its place, so it adds no information of its own;
    - ``structure``: the structural row where an entity has one, else the mean of its projected
      views: the features only stand in for a missing structural row (``ColdConfig``), so the warm
      entities are ranked exactly as the structural model ranks them.
    """

    def __init__(self, kind: FusionKind, num_views: int, dim: int, weights: list[float], seed: int) -> None:
        super().__init__()
        self.kind = kind
        generator = torch.Generator().manual_seed(seed)
        if kind in ("weighted", "learned"):
            if len(weights) != num_views:
                raise ValueError(f"fusion weights: {len(weights)} given for {num_views} views")
            w = torch.tensor(weights, dtype=torch.float32)
            self.register_buffer("total", w.sum(), persistent=False)
            if kind == "weighted":
                self.register_buffer("fixed", w, persistent=False)
            else:
                self.theta = nn.Parameter(w.clamp_min(1e-6).log())
        elif kind == "gate":
            self.gates = nn.Parameter(torch.randn(num_views - 1, 2 * dim, dim, generator=generator) * dim**-0.5)
        elif kind == "attention":
            self.proj = nn.Parameter(torch.randn(dim, dim, generator=generator) * dim**-0.5)
            self.query = nn.Parameter(torch.randn(dim, generator=generator) * dim**-0.5)

    def weights(self) -> Tensor:
        """(K,) view weights of the weighted fusions."""
        return self.fixed if self.kind == "weighted" else self.theta.softmax(0) * self.total

    def forward(self, views: list[Tensor], present: list[Tensor]) -> Tensor:
        """``views[k]`` (M, d), ``present[k]`` (M,) bool; every row has at least one view. View 0
        (structure) is absent only for entities represented by their features alone (``ColdConfig``);
        ``concat`` needs it everywhere."""
        if self.kind == "concat":
            return torch.cat(
                [views[0]]
                + [torch.where(p[:, None], v, views[0]) for v, p in zip(views[1:], present[1:], strict=True)],
                dim=1,
            )
        mask = torch.stack(present, dim=1).to(views[0].dtype)  # (M, K)
        stacked = torch.stack(views, dim=1)  # (M, K, d)
        if self.kind == "structure":
            others = mask[:, 1:, None]  # (M, K-1, 1)
            stand_in = (stacked[:, 1:] * others).sum(1) / others.sum(1).clamp_min(1)
            return torch.where(present[0][:, None], views[0], stand_in)
        if self.kind in ("weighted", "learned"):
            w = self.weights()[None, :] * mask  # (M, K)
            w = w * (self.total / w.sum(1, keepdim=True))
            return (w[:, :, None] * stacked).sum(1)
        if self.kind == "gate":
            s = views[0] * mask[:, :1]  # an absent structural view gates and adds nothing
            out = s
            for k, (v, p) in enumerate(zip(views[1:], present[1:], strict=True)):
                g = torch.sigmoid(torch.cat([s, v], dim=1) @ self.gates[k])
                out = out + p[:, None].to(v.dtype) * g * v
            return out
        logits = torch.tanh(stacked @ self.proj) @ self.query  # (M, K)
        alpha = logits.masked_fill(mask == 0, float("-inf")).softmax(dim=1)
        return (alpha[:, :, None] * stacked).sum(1)
