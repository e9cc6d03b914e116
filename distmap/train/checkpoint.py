"""Checkpoints that resume exactly: parameters, optimizer state, epoch, RNG states, best model.

Saved with ``torch.save`` of tensors and plain containers only, and read back with
``torch.load(weights_only=True)``, so loading a checkpoint never runs pickled code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from distmap.errors import DataError

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a crash mid-write leaves the last good checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """The saved state on the CPU. ``mmap`` maps the file instead of reading it: a tensor's pages
    are read only when touched, so taking a few rows of one tensor never loads the whole file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise DataError(path, "checkpoint not found") from None
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise DataError(path, f"not a distmap checkpoint or corrupt: {type(err).__name__}: {err}") from None
