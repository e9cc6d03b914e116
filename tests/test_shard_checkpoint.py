"""Sharded checkpoints: written by P workers, restored by any P' with the same rows and state."""

from pathlib import Path

import pytest
import torch

from distmap.distributed.partition import row_ranges
from distmap.distributed.shard_checkpoint import (
    entity_scalars,
    entity_state,
    load_rows,
    restore_entity_state,
    rows_file,
    save_rows,
)
from distmap.errors import DataError


def stepped(optimizer_cls: type) -> tuple[torch.nn.Parameter, torch.optim.Optimizer]:
    weight = torch.nn.Parameter(torch.randn(11, 4))
    optimizer = optimizer_cls([weight], lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        (weight**3).sum().backward()
        optimizer.step()
    return weight, optimizer


@pytest.mark.parametrize("optimizer_cls", [torch.optim.Adagrad, torch.optim.Adam])
@pytest.mark.parametrize(("saved_by", "restored_by"), [(2, 1), (2, 3), (3, 2), (1, 4)])
def test_resplit_on_load(tmp_path: Path, optimizer_cls: type, saved_by: int, restored_by: int) -> None:
    weight, optimizer = stepped(optimizer_cls)
    state = entity_state(optimizer, weight)
    for lo, hi in row_ranges(11, saved_by):
        save_rows(tmp_path, lo, hi, {"weight": weight.data[lo:hi], **{k: v[lo:hi] for k, v in state.items()}})
    for lo, hi in row_ranges(11, restored_by):
        rows, read = load_rows(tmp_path, lo, hi)
        assert torch.equal(rows["weight"], weight.data[lo:hi])
        local = torch.nn.Parameter(rows["weight"].clone())
        local_opt = optimizer_cls([local], lr=0.1)
        restore_entity_state(local_opt, local, rows, entity_scalars(optimizer, weight))
        for key, value in optimizer.state[weight].items():
            expected = value[lo:hi] if value.shape == weight.shape else value
            assert torch.equal(local_opt.state[local][key], expected), key
        overlapping = [r for r in row_ranges(11, saved_by) if r[0] < hi and r[1] > lo]
        assert sorted(p.name for p in read) == sorted(rows_file(a, b) for a, b in overlapping)


def test_gaps_and_missing_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a sharded checkpoint"):
        load_rows(tmp_path, 0, 5)
    save_rows(tmp_path, 0, 4, {"weight": torch.zeros(4, 2)})
    save_rows(tmp_path, 6, 9, {"weight": torch.zeros(3, 2)})
    with pytest.raises(DataError, match="gap or overlap at row 4"):
        load_rows(tmp_path, 0, 9)
    with pytest.raises(ValueError, match="expected 2"):
        save_rows(tmp_path, 0, 2, {"weight": torch.zeros(3, 2)})
