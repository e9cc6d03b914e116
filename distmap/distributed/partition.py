"""Which worker owns which entity rows: contiguous ranges, sizes differing by at most one."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor


def row_ranges(num_rows: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) of each of ``parts`` workers; the first ``num_rows % parts`` get one row more."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    base, extra = divmod(num_rows, parts)
    bounds = [0]
    for p in range(parts):
        bounds.append(bounds[-1] + base + (p < extra))
    return list(itertools.pairwise(bounds))


def owners(ids: Tensor, ranges: list[tuple[int, int]]) -> Tensor:
    """The worker index owning each global row id."""
    starts = torch.tensor([lo for lo, _ in ranges[1:]], dtype=ids.dtype, device=ids.device)
    return torch.bucketize(ids, starts, right=True)
