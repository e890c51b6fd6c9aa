"""Trace a model with ``torch.fx`` and run its graph on the meta device, giving every node a state.

The graph runs on ``meta`` tensors: shapes are computed, nothing is, and the
model's own parameters and buffers are never touched (they are swapped for
meta copies for the run, so batch norm statistics do not move). Every node
gets its :data:`~delve.verdicts.spatial.State` from the values of its
arguments (for shapes and sizes) and their states
(:mod:`delve.verdicts.operations`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import fx, nn

from ..capture.observation import find_observer
from .calls import Call
from .operations import node_state
from .spatial import State, Unknown, input_state

__all__ = ["ROOT", "trace", "states_of"]

# The model is traced as this attribute of a wrapper, so a model that is itself one layer is still a module call.
ROOT = "model"


def call_without_forward_hooks(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
    """``module(*args, **kwargs)`` with its forward pre-hooks but none of its forward hooks.

    The walk is an analysis, not a forward pass: a forward hook observes a
    model's outputs (a tracker's, the user's own capture) and must not see
    proxies or meta tensors. Forward pre-hooks run, since some compute what
    ``forward`` reads (pruning's masked weight, the old ``weight_norm``).
    """
    with_kwargs = getattr(module, "_forward_pre_hooks_with_kwargs", {})
    for hook_id, hook in list(module._forward_pre_hooks.items()):
        if hook_id in with_kwargs:
            result = hook(module, args, kwargs)
            if result is not None:
                args, kwargs = result
        else:
            result = hook(module, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
    return module.forward(*args, **kwargs)


class _Tracer(fx.Tracer):
    """Keeps every layer delve tracks a single call, even a subclass defined outside ``torch.nn``."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return find_observer(module) is not None or super().is_leaf_module(module, qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        # Traced through without the module's forward hooks: they would see proxies.
        return super().call_module(m, lambda *a, **k: call_without_forward_hooks(m, a, k), args, kwargs)


class _Root(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        setattr(self, ROOT, model)

    def forward(self, x: torch.Tensor) -> Any:
        return getattr(self, ROOT)(x)


def _short(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= 160 else text[:157] + "..."


def trace(model: nn.Module) -> fx.GraphModule | str:
    """The model's graph, or why it could not be traced."""
    root = _Root(model)
    try:
        with warnings.catch_warnings():
            # Tracing is an analysis here: what it warns about concerns fx, not the user's training.
            warnings.simplefilter("ignore")
            return fx.GraphModule(root, _Tracer().trace(root))
    except Exception as error:  # user code: anything can be raised while tracing it
        return f"torch.fx cannot trace the model: {_short(error)}"


class _Walker(fx.Interpreter):
    """Runs the graph and gives each node a state after it runs."""

    def __init__(self, module: fx.GraphModule, spatial_dims: int) -> None:
        super().__init__(module)
        self.spatial_dims = spatial_dims
        self.states: dict[fx.Node, State] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.states[n] = self._state(n, result)
        return result

    def call_module(self, target: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        return call_without_forward_hooks(self.fetch_attr(target), args, dict(kwargs))

    def _state(self, n: fx.Node, result: Any) -> State:
        if n.op == "placeholder":  # the wrapper's one input
            return input_state(self.spatial_dims)
        if n.op in ("get_attr", "output"):
            return None
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        states = fx.node.map_arg(n.args, lambda node: self.states[node])
        state_kwargs = fx.node.map_arg(n.kwargs, lambda node: self.states[node])
        module = self.fetch_attr(n.target) if n.op == "call_module" else None
        if n.op == "call_module":
            name = type(module).__name__
        elif n.op == "call_method":
            name = str(n.target)
        else:
            name = getattr(n.target, "__name__", str(n.target))
        call = Call(name.strip("_"), tuple(args), dict(kwargs), tuple(states), dict(state_kwargs), result)
        try:
            return node_state(module, call)
        except Exception as error:  # arguments spelled in a way no rule expects: a note, not a failed call
            return Unknown(f"cannot follow {call.name!r}: {_short(error)}")


class _Runner(nn.Module):
    """Holds the graph so that ``torch.func.functional_call`` swaps its parameters for meta ones."""

    def __init__(self, module: fx.GraphModule, spatial_dims: int) -> None:
        super().__init__()
        self.graph_module = module
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> dict[fx.Node, State]:
        walker = _Walker(self.graph_module, self.spatial_dims)
        walker.run(x)
        return walker.states


def _input_dtype(model: nn.Module) -> torch.dtype:
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def states_of(module: fx.GraphModule, input_shape: tuple[int, ...]) -> dict[fx.Node, State] | str:
    """Every node's state, or why the graph could not be run on the meta device."""
    runner = _Runner(module, len(input_shape) - 2)
    try:
        meta = {
            name: torch.empty_like(tensor, device="meta")
            for named in (runner.named_parameters(remove_duplicate=False), runner.named_buffers(remove_duplicate=False))
            for name, tensor in named
        }
        x = torch.zeros(input_shape, dtype=_input_dtype(module), device="meta")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # as for tracing: the meta run is an analysis
            return torch.func.functional_call(runner, meta, (x,))
    except Exception as error:  # user code (lazy modules included), run on meta tensors: anything can be raised
        return f"the traced model does not run on the meta device with input shape {input_shape}: {_short(error)}"
