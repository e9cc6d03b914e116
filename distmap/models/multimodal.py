"""Multimodal link predictors: a structural table plus projected feature rows, fused per entity.

The model holds the feature rows of its own entity block only (a sharded worker reads just the
Parquet parts overlapping its rows), projects each modality into the entity space and fuses the
views; the interaction then scores the fused rows exactly as a structural model scores its table,
so the sharded step, the evaluator and checkpoints stay the same. Projection and fusion weights
are replicated like the relations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import ot
import torch
from torch import Tensor, nn

from distmap.errors import DistmapError
from distmap.models.interactions import Interaction
from distmap.models.modalities import Fusion, FusionKind, Projection, ProjectionKind
from distmap.models.model import EntityViews, KGEModel, RowFetch, dropped_rows


@dataclass(frozen=True)
class FeatureRows:
    """One modality's feature rows of the model's entity block; ``values[i]`` means something only
    where ``present[i]``."""

    values: Tensor  # (M, D) float32
    present: Tensor  # (M,) bool
    parts: tuple[str, ...] = ()  # the feature files they were read from


class MultimodalModel(KGEModel):
    """Structure + any subset of feature modalities, fused by ``fusion`` (see ``Fusion``)."""

    rowwise_projection = True  # ``project`` maps each feature row on its own (``EntityViews.project_rows``)

    def __init__(
        self,
        interaction: Interaction,
        num_entities: int,
        num_relations: int,
        rank: int,
        init_scale: float,
        seed: int,
        entity_range: tuple[int, int] | None,
        features: dict[str, FeatureRows],
        projection: ProjectionKind | None,
        fusion: FusionKind,
        fusion_weights: list[float],
        table_dtype: torch.dtype | None = None,
        seen: Tensor | None = None,
        unseen: Literal["projection", "table"] = "table",
        dropout: float = 0.0,
        negatives: bool = True,
        twin_grad: Literal["all", "no_structure", "projections"] = "all",
    ) -> None:
        """``seen`` (M,) bool: the block's entities that occur in a train triple (None: all); with ``unseen:
        projection`` the others that have a feature are represented by their features alone, and
        ``dropout`` is the share of rows a training step represents so; ``negatives: False`` leaves the
        former out of the training softmax; ``twin_grad`` is what the twin views carry gradient into:
        everything, all but the structural rows, or only the dropped rows' projections (``ColdConfig``). Views side by
        side (``concat``) score the structural view on its own: such a model keeps it everywhere."""
        super().__init__(interaction, num_entities, num_relations, rank, init_scale, seed, entity_range, table_dtype)
        self.seed = seed  # replicated weights are drawn from it, the same on every worker
        dim = self.entities.weight.shape[1]
        self.modalities = list(features)
        size = self.entities.hi - self.entities.lo
        for name, rows in features.items():
            if rows.values.shape[0] != size:
                raise ValueError(f"{name}: {rows.values.shape[0]} feature rows for {size}")
            # Data, not parameters: rebuilt from the dataset's shards, so not saved in checkpoints.
            self.register_buffer(f"features_{name}", rows.values.to(torch.get_default_dtype()), persistent=False)
            self.register_buffer(f"present_{name}", rows.present.bool(), persistent=False)
        has_feature = torch.stack([rows.present.bool() for rows in features.values()]).any(0)  # (M,)
        structured = torch.ones(size, dtype=torch.bool)
        if unseen == "projection" and fusion != "concat" and seen is not None:
            if len(seen) != size:
                raise ValueError(f"{len(seen)} train-seen flags for {size} rows")
            structured = seen.bool() | ~has_feature  # an entity with neither keeps its row: it has nothing else
        self.register_buffer("has_feature", has_feature, persistent=False)
        self.register_buffer("structured", structured, persistent=False)
        self.dropout = dropout if fusion != "concat" else 0.0
        self.twin_grad = twin_grad
        # Rows left out of the training softmax: those ranked from their features alone, if asked.
        self.register_buffer("excluded", None if negatives or bool(structured.all()) else ~structured, persistent=False)
        if projection is not None:  # else a subclass brings its own ``project``
            self.projections = nn.ModuleDict(
                {
                    name: Projection(rows.values.shape[1], dim, projection, init_scale, seed + 101 + i)
                    for i, (name, rows) in enumerate(features.items())
                }
            )
        self.fusion = Fusion(fusion, 1 + len(features), dim, fusion_weights, seed + 211)

    def feature_rows(self, name: str) -> tuple[Tensor, Tensor]:
        return getattr(self, f"features_{name}"), getattr(self, f"present_{name}")

    def project(self, name: str, values: Tensor, fetch: RowFetch | None) -> Tensor:
        """Feature rows of modality ``name`` in the entity space."""
        return self.projections[name](values)

    def views(self, fetch: RowFetch | None = None) -> EntityViews:
        return self._views(self.structure(), slice(None), fetch)

    def row_views(self, structure: Tensor, local: Tensor) -> EntityViews:
        return self._views(structure, local, None)

    def twin_views(self, views: EntityViews, drop: int) -> EntityViews:
        if not self.dropout:
            return views
        local = slice(None) if views.rows is None else views.rows
        rows = torch.arange(len(views.structure), device=views.structure.device) if views.rows is None else views.rows
        ids = self.entities.lo + rows  # global ids: the draw must not depend on which rows are asked
        dropped = views.structured & dropped_rows(ids, drop, self.dropout) & self.has_feature[local]
        if self.twin_grad == "projections":
            # Only the dropped rows, projected alone, carry gradient; the rest are the full views' rows.
            picked = dropped.nonzero().squeeze(1)
            alone = self.fusion(
                [views.structure.new_zeros(len(picked), views.structure.shape[1])]
                + [p[picked] for p in views.projected.values()],
                [torch.zeros_like(picked, dtype=torch.bool)] + [p[picked] for p in views.present.values()],
            )
            fused = views.fused.detach().index_put((picked,), alone)
            return dataclasses.replace(views, fused=fused, trains_relations=False)
        structure = views.structure if self.twin_grad == "all" else views.structure.detach()
        fused = self.fusion(
            [structure, *views.projected.values()], [views.structured & ~dropped, *views.present.values()]
        )
        return dataclasses.replace(views, fused=fused)

    @property
    def structure_dropout(self) -> float:
        return self.dropout

    def training_scores(self, scores: Tensor, local: Tensor | slice = slice(None)) -> Tensor:
        if self.excluded is None:
            return scores
        return scores.masked_fill(self.excluded[local][None, :], float("-inf"))

    def _views(self, structure: Tensor, local: Tensor | slice, fetch: RowFetch | None) -> EntityViews:
        """The views of the rows ``local`` of the block (all of them: ``slice(None)``, no copy).

        Only the whole block's views re-project the rows a loss term uses (``project_rows``): a term
        indexing the block's projected view would back-propagate a dense block-sized gradient. Views
        of selected rows are already that small, so terms index them and nothing is projected twice.
        """
        features, present, projected = {}, {}, {}
        for name in self.modalities:
            values, mask = self.feature_rows(name)
            features[name], present[name] = values[local], mask[local]
            projected[name] = self.project(name, features[name], fetch)
        structured = self.structured[local]
        fused = self.fusion([structure, *projected.values()], [structured, *present.values()])

        def project_rows(name: str, rows: Tensor) -> Tensor:
            return self.project(name, features[name][rows], fetch)

        rowwise = project_rows if self.rowwise_projection and isinstance(local, slice) else None
        rows = None if isinstance(local, slice) else local
        return EntityViews(self.entities.lo, structure, fused, projected, present, features, rowwise, structured, rows)

    def unseen_rows(self, features: dict[str, Tensor]) -> Tensor:
        """Fused rows (k, d') of k entities that have no structural row (new after training, or never
        in a train triple), from their feature rows (k, D_m) of the modalities they have."""
        if self.fusion.kind == "concat":
            raise DistmapError(
                "this model scores the structural view on its own (views side by side): it cannot rank an "
                "entity without one; use map, mmkrl, transae or otkge"
            )
        unknown = sorted(set(features) - set(self.modalities))
        if unknown or not features:
            raise DistmapError(
                f"features given for {', '.join(unknown) or 'no modality'}; the model reads "
                f"{', '.join(self.modalities)}"
            )
        count = len(next(iter(features.values())))
        structure = self.entities.weight.new_zeros(count, self.entities.weight.shape[1], dtype=torch.float32)
        views, present = [structure], [torch.zeros(count, dtype=torch.bool, device=structure.device)]
        for name in self.modalities:
            given = name in features
            width = self.feature_rows(name)[0].shape[1]
            values = features[name] if given else structure.new_zeros(count, width)
            if values.shape != (count, width):
                raise DistmapError(
                    f"{name}: feature rows of shape {tuple(values.shape)}, the model reads ({count}, {width})"
                )
            views.append(self.project(name, values.to(structure), None))
            present.append(torch.full((count,), given, dtype=torch.bool, device=structure.device))
        return self.fusion(views, present)


class OTKGEModel(MultimodalModel):
    """OTKGE as its reference code computes it (Lion-ZS/OTKGE ``code/models.py``).

    Each modality's projection is ``W = mean_i(P_i) * d * scale + delta``: ``P_i`` is an entropic
    transport plan (its own Sinkhorn, ``K = exp(-C / reg)``, uniform marginals) between the
    *coordinates* of anchor entity i's feature row (D of them) and of its structural row (d), for
    the fixed anchors 0..n-1, recomputed every forward without gradient; only ``delta`` (D, d)
    is learned. The fusion is the code's fixed weighted sum ``(1-a-g) E + a X_img W_img + g X_ling W_ling``.
    """

    rowwise_projection = False  # its projection is re-solved from the anchors on every call

    def __init__(
        self,
        *args: object,
        anchors: dict[str, tuple[Tensor, Tensor]],
        scale: float,
        reg: float,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, projection=None, **kwargs)
        self.scale, self.reg = scale, reg
        dim = self.entities.weight.shape[1]
        for name, (ids, rows) in anchors.items():  # (n,) ids and (n, D) feature rows, whoever holds them
            self.register_buffer(f"anchor_ids_{name}", ids.long(), persistent=False)
            self.register_buffer(f"anchors_{name}", rows.to(torch.get_default_dtype()), persistent=False)
        self.deltas = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros(rows.shape[1], dim)) for name, (_, rows) in anchors.items()}
        )

    def project(self, name: str, values: Tensor, fetch: RowFetch | None) -> Tensor:
        anchors, ids = getattr(self, f"anchors_{name}"), getattr(self, f"anchor_ids_{name}")
        with torch.no_grad():
            structure = fetch(ids) if fetch is not None else self.entities.rows(ids)
            plans = torch.stack([coordinate_plan(x, e, self.reg) for x, e in zip(anchors, structure, strict=True)])
        weight = plans.mean(0) * structure.shape[1] * self.scale + self.deltas[name]  # (D, d)
        return values @ weight


def coordinate_plan(x: Tensor, e: Tensor, reg: float, iterations: int = 1000) -> Tensor:
    """OTKGE's plan between the coordinates of a feature row x (D,) and a structural row e (d,):
    cost ``|x_a - e_b|^2``, uniform marginals, Sinkhorn with ``K = exp(-C / reg)``."""
    cost = (x[:, None] - e[None, :]) ** 2
    a = torch.full((len(x),), 1.0 / len(x), dtype=cost.dtype, device=cost.device)
    b = torch.full((len(e),), 1.0 / len(e), dtype=cost.dtype, device=cost.device)
    # The code stops at its iteration cap whether converged or not; so does this, without a warning.
    return ot.sinkhorn(a, b, cost, reg, numItermax=iterations, warn=False)


class TBKGEModel(MultimodalModel):
    """TBKGE's two views: the structural row and one multimodal row, the sum of every modality's
    projection into the common space (a linear projection of the concatenated features, with an
    absent modality dropped), side by side for ``MultiViewTransE`` with a relation per view."""

    def views(self, fetch: RowFetch | None = None) -> EntityViews:
        views = super().views(fetch)
        combined = sum(views.projected[m] * views.present[m][:, None] for m in self.modalities)
        any_present = torch.stack(list(views.present.values())).any(0)
        views.fused = self.fusion([views.structure, combined], [any_present.new_ones(len(combined)), any_present])
        return views


class TransAEModel(MultimodalModel):
    """TransAE: each modality's projection is the encoder of an autoencoder whose code is fused
    into the entity row; a decoder per modality reconstructs the feature rows, and the
    reconstruction error of the batch's entities is the model's own loss beside TransE's."""

    def __init__(self, *args: object, reconstruction_weight: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        dim = self.entities.weight.shape[1]
        self.reconstruction_weight = reconstruction_weight
        self.decoders = nn.ModuleDict(
            {m: nn.Linear(dim, self.feature_rows(m)[0].shape[1], bias=False) for m in self.modalities}
        )
        generator = torch.Generator().manual_seed(self.seed + 307)
        with torch.no_grad():
            for decoder in self.decoders.values():
                decoder.weight.copy_(torch.randn(decoder.weight.shape, generator=generator) / dim**0.5)

    def auxiliary_loss(self, views: EntityViews, rows: Tensor) -> Tensor:
        total = views.structure.new_zeros(())
        for m in self.modalities:
            r = rows[views.present[m][rows]]
            if len(r):
                total = total + (self.decoders[m](views.projected[m][r]) - views.features[m][r]).pow(2).sum(1).mean()
        return self.reconstruction_weight * total


class MMKRLModel(MultimodalModel):
    """MMKRL: every modality reconstructs the structural knowledge (its projected row should stand
    in for the structural row), modalities are aligned with each other, and the reconstruction is
    trained against an adversarial perturbation of the projected rows (FGSM, radius ``epsilon``
    relative to the rows' scale)."""

    def __init__(self, *args: object, reconstruction_weight: float, epsilon: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.reconstruction_weight, self.epsilon = reconstruction_weight, epsilon

    def auxiliary_loss(self, views: EntityViews, rows: Tensor) -> Tensor:
        total = views.structure.new_zeros(())
        aligned = []
        for m in self.modalities:
            r = views.with_structure(rows[views.present[m][rows]])  # the structural rows are the target
            if not len(r):
                continue
            projected, target = views.projected[m][r], views.structure[r]
            if self.epsilon and self.training:
                probe = projected.detach().requires_grad_()
                (grad,) = torch.autograd.grad((probe - target.detach()).pow(2).sum(), probe)
                projected = projected + self.epsilon * projected.detach().abs().mean() * grad.sign()
            total = total + (projected - target).pow(2).sum(1).mean()
            aligned.append((r, views.projected[m][r]))
        for i, (ra, pa) in enumerate(aligned):  # modality-to-modality alignment on entities having both
            for rb, pb in aligned[i + 1 :]:
                both, ia, ib = _common(ra, rb)
                if len(both):
                    total = total + (pa[ia] - pb[ib]).pow(2).sum(1).mean()
        return self.reconstruction_weight * total


def _common(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Values in both sorted-unique ``a`` and ``b``, and their positions in each."""
    both = a[torch.isin(a, b)]
    return both, torch.searchsorted(a, both), torch.searchsorted(b, both)
