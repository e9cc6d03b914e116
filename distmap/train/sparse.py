"""Adagrad that updates only the rows a step touched, with one accumulator per row or per element.

At 10^7+ entities a dense table-sized gradient and a table-sized optimizer pass per step cost more
than the step itself (the sampled objective scores B × S candidates, independent of N). So the
sampled step gathers the rows it needs into a float32 leaf (``TableAdagrad.gather``), backward
fills that leaf's gradient, and ``step`` applies it to exactly those rows: nothing else of the
table or its state is read or written.

``rowwise`` keeps one accumulator per row, the mean of the squared row gradient, as
PyTorch-BigGraph's ``RowAdagrad``: the state is N floats instead of N × d. The same class takes a
dense gradient too (the exact objective's path), so row-wise Adagrad is an option for both
objectives. The table may be bfloat16 (half the memory): the update is computed in float32 on the
gathered rows and rounded once when written back. Updates follow ``torch.optim.Adagrad``'s
(``std = sqrt(sum) + eps``, no learning-rate decay), so element-wise ``TableAdagrad`` on a dense
gradient is that optimizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

import torch
from torch import Tensor


class TableAdagrad(torch.optim.Optimizer):
    """Adagrad for entity tables: dense ``.grad`` or rows handed out by ``gather``."""

    def __init__(self, params: Iterable[Tensor], lr: float, *, rowwise: bool, eps: float = 1e-10) -> None:
        super().__init__(list(params), {"lr": lr, "eps": eps, "rowwise": rowwise})
        self._pending: list[tuple[Tensor, Tensor, Tensor]] = []  # (table, local rows, leaf)
        for group in self.param_groups:
            for p in group["params"]:
                shape = p.shape[:1] if rowwise else p.shape
                self.state[p] = {"step": torch.zeros(()), "sum": torch.zeros(shape, dtype=_math(p), device=p.device)}

    def gather(self, table: Tensor, rows: Tensor) -> Tensor:
        """A leaf (M, d) holding ``table[rows]`` in float32 or wider (rows: sorted distinct local
        indices); the next ``step`` applies its gradient to those rows only."""
        leaf = table.detach()[rows].to(_math(table)).requires_grad_()
        self._pending.append((table, rows, leaf))
        return leaf

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but the accumulators keep their float32 (or wider) dtype: torch casts saved
        state to the parameter's dtype, which for a bfloat16 table would round them and break exact
        resumption."""
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for index, saved in state_dict["state"].items():
            p = params[index]
            self.state[p]["sum"] = saved["sum"].to(device=p.device, dtype=_math(p), copy=True)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, slice(None), p.grad, group)
        for table, rows, leaf in self._pending:
            if leaf.grad is not None:
                self._update(table, rows, leaf.grad, self._group_of(table))
        self._pending.clear()

    def _group_of(self, table: Tensor) -> dict[str, Any]:
        return next(g for g in self.param_groups if any(p is table for p in g["params"]))

    def _update(self, table: Tensor, rows: Tensor | slice, grad: Tensor, group: dict[str, Any]) -> None:
        state = self.state[table]
        state["step"] += 1
        grad = grad.to(_math(table))  # (M, d)
        square = grad.pow(2).mean(dim=1) if group["rowwise"] else grad * grad  # (M,) or (M, d)
        total = state["sum"][rows] + square
        state["sum"][rows] = total
        std = total.sqrt().add_(group["eps"])
        if group["rowwise"]:
            std = std[:, None]
        table[rows] = table[rows].to(grad.dtype).addcdiv_(grad, std, value=-group["lr"]).to(table.dtype)


def _math(table: Tensor) -> torch.dtype:
    """The dtype updates are computed and state kept in: float32, or the table's if wider (float64)."""
    return torch.promote_types(table.dtype, torch.float32)


class SplitOptimizer:
    """The entity table's ``TableAdagrad`` and the optimizer of every other parameter, stepped as one.

    ``state[p]`` reads and writes the state of whichever optimizer holds ``p``, as checkpoints do.
    """

    def __init__(self, table: TableAdagrad, rest: torch.optim.Optimizer) -> None:
        self.table, self.rest = table, rest
        self.state = _StateView((table, rest))

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.table.zero_grad(set_to_none=set_to_none)
        self.rest.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.table.step()
        self.rest.step()

    def state_dict(self) -> dict[str, Any]:
        return {"table": self.table.state_dict(), "rest": self.rest.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.table.load_state_dict(state["table"])
        self.rest.load_state_dict(state["rest"])


class _StateView(MutableMapping[Tensor, dict[str, Any]]):
    def __init__(self, optimizers: tuple[torch.optim.Optimizer, ...]) -> None:
        self.optimizers = optimizers

    def _owner(self, p: Tensor) -> torch.optim.Optimizer:
        for o in self.optimizers:
            if any(q is p for g in o.param_groups for q in g["params"]):
                return o
        raise KeyError("parameter held by none of the optimizers")

    def __getitem__(self, p: Tensor) -> dict[str, Any]:
        return self._owner(p).state[p]

    def __setitem__(self, p: Tensor, value: dict[str, Any]) -> None:
        self._owner(p).state[p] = value

    def __delitem__(self, p: Tensor) -> None:
        del self._owner(p).state[p]

    def __iter__(self) -> Iterator[Tensor]:
        return (p for o in self.optimizers for p in o.state)

    def __len__(self) -> int:
        return sum(len(o.state) for o in self.optimizers)
