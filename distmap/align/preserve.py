"""MAP's instance-preserving term: keep a batch's neighbourhoods as the raw features have them.

Alignment moves whole distributions and can tear semantically related entities apart (the
paper's Fig. 2a). Working definition (PAPER.md): for the batch's entities that have the
modality, the row-softmax of negative pairwise distances among their raw feature rows is a
neighbourhood distribution per entity; the term is the mean KL divergence from it to the same
distribution over the entities' aligned (fused) rows. Distances are divided by their mean first,
so the term compares neighbourhood *structure*, not scale, and ``temperature`` sets how local
the neighbourhoods are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def neighbourhoods(rows: Tensor, temperature: float) -> Tensor:
    """(n, n) log-probabilities: softmax over j != i of ``-dist(i, j) / mean dist / temperature``."""
    dist = torch.cdist(rows, rows)
    dist = dist / dist.detach().sum().div(max(len(rows) * (len(rows) - 1), 1)).clamp_min(1e-12)
    logits = (-dist / temperature).masked_fill(torch.eye(len(rows), dtype=torch.bool, device=rows.device), -1e9)
    return logits.log_softmax(dim=1)


def instance_preserving(raw: Tensor, aligned: Tensor, temperature: float = 0.1) -> Tensor:
    """Mean over entities of KL(neighbourhoods of ``raw`` || neighbourhoods of ``aligned``); (n, D), (n, d)."""
    if len(raw) < 3:
        return aligned.new_zeros(())
    target = neighbourhoods(raw.detach(), temperature)
    return F.kl_div(neighbourhoods(aligned, temperature), target, log_target=True, reduction="batchmean")
