"""Checkpoints of a row-sharded model that restore on any number of workers.

Each worker writes one file for its rows, named by the row range it holds
(``rows-<lo>-<hi>.pt``): entity rows, the optimizer state of those rows, and (in the same
file) anything row-shaped it tracks, e.g. the best-on-valid rows. Worker 0 also writes
``common.pt``: relations, their optimizer state, epoch, RNG state, history. A worker
restoring rows [lo, hi) with P' workers reads only the files whose ranges overlap its own and
cuts its rows out of them. Files are plain tensors + containers, read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from distmap.errors import DataError
from distmap.train.checkpoint import load_checkpoint

COMMON = "common.pt"
_ROWS = re.compile(r"rows-(\d+)-(\d+)\.pt$")


def rows_file(lo: int, hi: int) -> str:
    return f"rows-{lo:012d}-{hi:012d}.pt"


def row_files(folder: Path) -> list[tuple[int, int, Path]]:
    """(lo, hi, path) of every rows file, sorted by lo."""
    found = []
    for path in folder.iterdir():
        match = _ROWS.search(path.name)
        if match:
            found.append((int(match[1]), int(match[2]), path))
    return sorted(found)


def newest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint folder (one with ``common.pt``) under ``root`` with the highest
    epoch: Ray Train's ``checkpoint_*`` folders or ``move_into``'s ``epoch-*`` alike."""
    found = [path.parent for path in root.glob(f"*/{COMMON}")] if root.is_dir() else []
    return max(found, key=lambda folder: load_checkpoint(folder / COMMON)["epoch"], default=None)


def save_rows(folder: Path, lo: int, hi: int, tensors: dict[str, Tensor]) -> Path:
    """Write this worker's row-shaped tensors (each with hi - lo rows), atomically."""
    for name, tensor in tensors.items():
        if tensor.shape[0] != hi - lo:
            raise ValueError(f"{name}: {tensor.shape[0]} rows, expected {hi - lo} for rows [{lo}, {hi})")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / rows_file(lo, hi)
    tmp = path.with_suffix(".tmp")
    torch.save({name: t.detach().cpu() for name, t in tensors.items()}, tmp)
    os.replace(tmp, path)
    return path


def load_rows(
    folder: Path, lo: int, hi: int, keys: Collection[str] | None = None
) -> tuple[dict[str, Tensor], list[Path]]:
    """Rows [lo, hi) of the saved row-shaped tensors named in ``keys`` (default: all), cut from the
    overlapping files.

    Returns the tensors and the files read (only those overlapping [lo, hi)). Files are memory-mapped,
    so only the asked rows of the asked tensors are read from disk and copied.
    """
    files = row_files(folder)
    if not files:
        raise DataError(folder, "no rows-*.pt files: not a sharded checkpoint")
    covered = [0]
    for a, b, path in files:
        if a != covered[-1]:
            raise DataError(path, f"rows files leave a gap or overlap at row {covered[-1]} (this file starts at {a})")
        covered.append(b)
    if hi > covered[-1]:
        raise DataError(folder, f"rows files cover [0, {covered[-1]}), asked for rows up to {hi}")
    pieces: dict[str, list[Tensor]] = {}
    read = []
    for a, b, path in files:
        if b <= lo or a >= hi or a == b:
            continue
        saved = load_checkpoint(path, mmap=True)
        read.append(path)
        for name, tensor in saved.items():
            if keys is not None and name not in keys:
                continue
            pieces.setdefault(name, []).append(tensor[max(lo, a) - a : min(hi, b) - a])
    # cat copies even a single piece, so no tensor keeps its mapped file open
    return {name: torch.cat(parts) for name, parts in pieces.items()}, read


def entity_state(optimizer: Any, weight: Tensor) -> dict[str, Tensor]:
    """The optimizer's per-row state tensors of the entity table (Adagrad ``sum``, Adam moments,
    row-wise Adagrad's one value per row)."""
    return {f"opt.{k}": v for k, v in optimizer.state[weight].items() if _per_row(v, weight)}


def _per_row(value: Any, weight: Tensor) -> bool:
    return torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == weight.shape[0]


def restore_entity_state(optimizer: Any, weight: Tensor, rows: dict[str, Tensor], scalars: dict[str, Any]) -> None:
    """Put per-row state back for this worker's rows, plus the shared scalars (e.g. Adam's step)."""
    state = {k.removeprefix("opt."): v.to(weight.device) for k, v in rows.items() if k.startswith("opt.")}
    state.update({k: v.clone() if torch.is_tensor(v) else v for k, v in scalars.items()})
    optimizer.state[weight] = state


def entity_scalars(optimizer: Any, weight: Tensor) -> dict[str, Any]:
    """The non-row state of the entity table's optimizer (equal on every worker: the step count)."""
    return {k: v for k, v in optimizer.state[weight].items() if not _per_row(v, weight)}
