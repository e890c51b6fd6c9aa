"""What each node of a traced model does to the fields: modules, functions and tensor methods.

An operation known to act position by position (activations, normalization,
dropout, arithmetic) passes its inputs' fields on, combined where there are
several. The spatial layers are in :mod:`delve.verdicts.layers`; shape
operations in :mod:`delve.verdicts.spatial`. Any other operation on a tensor
whose fields differ by position stops the walk with a note naming it; on one
whose fields no longer do (after a global pooling) it passes them on, as
nothing it does can tie a result to a position.

Normalization layers count as position by position: their statistics (over
every position for instance, group and layer norm, and over the batch in
training) are left out, as receptive fields are usually counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..capture.observation import find_observer
from . import layers
from .calls import ATTENTION, Call, pointwise, untracked
from .spatial import Spatial, State, Unknown, combine, first_unknown, reshape
from .tensor_functions import function_rule

__all__ = ["node_state", "module_state"]

_POSITIONWISE_MODULES = (
    "torch.nn.modules.activation",
    "torch.nn.modules.dropout",
    "torch.nn.modules.normalization",
    "torch.nn.modules.batchnorm",
    "torch.nn.modules.instancenorm",
)
_SOFTMAX = (nn.Softmax, nn.Softmin, nn.LogSoftmax)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_POOL_DIMS: dict[type, int] = {
    **dict.fromkeys((nn.MaxPool1d, nn.AvgPool1d, nn.LPPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d), 1),
    **dict.fromkeys((nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d), 2),
    **dict.fromkeys((nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d), 3),
}
if hasattr(nn, "LPPool3d"):
    _POOL_DIMS[nn.LPPool3d] = 3
_ADAPTIVE = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)


def _pairs(states: Any, values: Any) -> Iterator[tuple[State, Any]]:
    """``(state, value)`` for every leaf of parallel argument structures."""
    if isinstance(values, (tuple, list)) and isinstance(states, (tuple, list)):
        for state, value in zip(states, values):
            yield from _pairs(state, value)
    elif isinstance(values, dict) and isinstance(states, dict):
        for key, value in values.items():
            yield from _pairs(states[key], value)
    else:
        yield states, values


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_holds_tensor(item) for item in value)
    return isinstance(value, dict) and any(_holds_tensor(item) for item in value.values())


def node_state(module: nn.Module | None, call: Call) -> State:
    """The state of a ``call_module``, ``call_function`` or ``call_method`` node's result."""
    if call.name == "getitem" and isinstance(call.states[0], tuple):
        return call.states[0][call.args[1]]  # one result of a layer with several (a split, a max with indices)
    pairs = list(_pairs((call.states, call.state_kwargs), (call.args, call.kwargs)))
    unknown = first_unknown(state for state, _ in pairs)
    if unknown is not None:
        return unknown
    if not _holds_tensor(call.result):
        return None
    call.tensors = [(s, tuple(v.shape)) for s, v in pairs if isinstance(s, Spatial) and isinstance(v, torch.Tensor)]
    if not call.tensors:
        return None  # computed from weights and constants only
    if module is not None:
        return module_state(module, call)
    rule = function_rule(call.name)
    if rule is None:
        return untracked(call, f"{call.name!r}")
    return rule(call)


def _softmax_dim(module: nn.Module, ndim: int) -> int:
    if module.dim is not None:  # type: ignore[union-attr]
        return int(module.dim)  # type: ignore[union-attr]
    return 0 if ndim in (0, 1, 3) else 1  # PyTorch's choice for an implicit dim


def _linear(call: Call) -> State:
    """``nn.Linear`` and ``nn.Bilinear``: every input's last dim is read whole."""
    results = []
    for state, shape in call.tensors:
        mixed = layers.last_dim_mixed(state, shape)
        if isinstance(mixed, Unknown):
            return mixed
        results.append((mixed, call.out_shape))
    return combine(results, call.out_shape)


def module_state(module: nn.Module, call: Call) -> State:
    """A leaf module's result: a known layer, a position-by-position module, or a note."""
    if any(isinstance(sub, nn.MultiheadAttention) for sub in module.modules()):
        return Unknown(ATTENTION)
    state, shape, name = call.state(0), call.shape, type(module).__name__
    m: Any = module
    if not isinstance(state, Spatial):
        return untracked(call, name)
    if isinstance(m, _CONVS):
        return layers.convolution(state, shape, m.kernel_size, m.stride, m.dilation, m.groups, name)
    if isinstance(m, _TRANSPOSED):
        return layers.transposed_convolution(state, shape, m.kernel_size, m.stride, m.dilation, m.padding, name)
    if isinstance(m, _ADAPTIVE):
        return layers.adaptive_pooling(state, shape, call.out_shape, _POOL_DIMS[type(m)], name)
    if type(m) in _POOL_DIMS:
        dilation = getattr(m, "dilation", 1)
        return layers.pooling(state, shape, _POOL_DIMS[type(m)], m.kernel_size, m.stride, dilation, name)
    if isinstance(m, nn.Upsample):
        recompute = getattr(m, "recompute_scale_factor", None)
        return layers.interpolation(
            state, shape, call.out_shape, m.mode, m.scale_factor, m.align_corners, recompute, False, name
        )
    if isinstance(m, nn.PixelShuffle):
        return layers.pixel_shuffle(state, shape, m.upscale_factor, name)
    if name.endswith(("Pad1d", "Pad2d", "Pad3d")) and hasattr(m, "padding"):
        return layers.padding(state, shape, m.padding)
    if isinstance(m, (nn.Flatten, nn.Unflatten)):
        return reshape(state, shape, call.out_shape, name)
    if isinstance(m, (nn.Linear, nn.Bilinear)) or getattr(find_observer(m), "kind", None) == "linear":
        return _linear(call)
    if isinstance(m, _SOFTMAX):
        return layers.normalized_along(state, shape, _softmax_dim(m, len(shape)))
    if isinstance(m, nn.Softmax2d):
        return layers.normalized_along(state, shape, -3)
    if type(m).__module__ in _POSITIONWISE_MODULES or isinstance(m, (nn.Identity, nn.ChannelShuffle)):
        return pointwise(call)
    return untracked(call, name)
