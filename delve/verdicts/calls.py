"""One traced call: its arguments' values and states, and the rules shared by every kind of call.

:func:`pointwise` is the rule of everything that acts position by position;
:func:`untracked` the rule of what the walk does not know.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .spatial import Spatial, State, Unknown, combine, merge_axes, settle

__all__ = ["ATTENTION", "Call", "pointwise", "untracked"]

ATTENTION = "attention mixes every position"


@dataclass
class Call:
    """One node's call: its arguments' values (tensors on the meta device) and states, and its result."""

    name: str
    args: tuple
    kwargs: dict
    states: tuple
    state_kwargs: dict
    result: Any
    tensors: list[tuple[Spatial, tuple[int, ...]]] = field(default_factory=list)

    def value(self, position: int, key: str, default: Any = None) -> Any:
        if key in self.kwargs:
            return self.kwargs[key]
        return self.args[position] if position < len(self.args) else default

    def state(self, position: int = 0, key: str = "input") -> State:
        if key in self.state_kwargs:
            return self.state_kwargs[key]
        return self.states[position] if position < len(self.states) else None

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the first argument."""
        return tuple(self.value(0, "input").shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        result = self.result[0] if isinstance(self.result, (tuple, list)) else self.result
        return tuple(result.shape)


def _like(result: Any, axes: tuple) -> State:
    """Position-independent fields ``axes`` on every tensor of ``result``."""
    if isinstance(result, torch.Tensor):
        return Spatial((None,) * result.ndim, axes)
    if isinstance(result, (tuple, list)):
        return tuple(_like(item, axes) for item in result)
    return None


def untracked(call: Call, what: str) -> State:
    """An operation the walk does not know: fine on position-independent fields, a note otherwise.

    Whatever it does, it cannot tie a result to a position when its inputs'
    fields are the same at every position (a map of one position included).
    """
    settled = [settle(state, shape) for state, shape in call.tensors]
    if any(state.local for state in settled):
        return Unknown(f"cannot follow {what} through the spatial axes")
    merged = merge_axes(settled)
    return merged if isinstance(merged, Unknown) else _like(call.result, merged)


def pointwise(call: Call) -> State:
    """Position by position: every input's fields, broadcast to the result."""
    return combine(call.tensors, call.out_shape)
