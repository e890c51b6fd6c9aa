"""Functions and tensor methods by name: ``torch.cat``, ``F.max_pool2d``, ``x.view``, ``x.mean``...

A traced node calls a function (``call_function``, named by its
``__name__``) or a tensor method (``call_method``, named by the method);
both spellings share one rule, found by :func:`function_rule`. Arguments are
read as PyTorch binds them: by position or by keyword.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from . import layers
from .calls import ATTENTION, Call, pointwise, untracked
from .fields import IndexMap, apply_map, collapse
from .spatial import (
    Spatial,
    State,
    Unknown,
    combine,
    insert_dim,
    map_dims,
    merge_axes,
    permute,
    reduce_dims,
    reshape,
    settle,
)

__all__ = ["function_rule"]


def _words(text: str) -> set[str]:
    return set(text.split())


_POINTWISE = _words(
    "add sub rsub mul truediv div true_divide floordiv mod remainder pow neg pos abs iadd isub imul "
    "itruediv and or xor invert not eq ne lt le gt ge multiply subtract divide maximum minimum fmax fmin "
    "where lerp addcmul addcdiv relu relu6 gelu silu mish sigmoid tanh hardtanh hardswish hardsigmoid "
    "leaky_relu elu selu celu softplus softsign prelu rrelu logsigmoid tanhshrink hardshrink softshrink "
    "threshold dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout batch_norm "
    "instance_norm layer_norm group_norm local_response_norm rms_norm exp exp2 log log2 log10 log1p expm1 "
    "sqrt rsqrt sin cos square reciprocal sign clamp clip clamp_min clamp_max masked_fill nan_to_num "
    "floor ceil round trunc frac erf logical_not logical_and logical_or float double half bfloat16 bool "
    "int long contiguous clone detach cpu cuda requires_grad channel_shuffle"
)
_FIRST_ONLY = {"to", "type", "type_as", "expand_as", "expand", "broadcast_to"}
_NO_DEPENDENCE = _words(
    "zeros_like ones_like empty_like full_like rand_like randn_like randint_like new_zeros new_ones "
    "new_empty new_full new_tensor"
)
_RESHAPES = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel"}
_REDUCTIONS = _words(
    "sum mean nansum nanmean amax amin max min std var prod logsumexp norm median nanmedian all any "
    "argmax argmin count_nonzero"
)
_SPLITS = {"chunk", "split", "tensor_split", "split_with_sizes", "unbind"}


def _name(raw: str) -> str:
    return raw.strip("_")


def _first_only(call: Call) -> State:
    first = call.state(0)
    if not isinstance(first, Spatial):
        return None
    return combine([(first, call.shape)], call.out_shape)


def _dims(value: Any, ndim: int) -> list[int]:
    if value is None:
        return list(range(ndim))
    values = value if isinstance(value, (tuple, list)) else [value]
    return [int(dim) % max(ndim, 1) for dim in values]


def _reduction(call: Call) -> State:
    other = call.value(1, "other")
    if call.name in ("max", "min") and isinstance(other, torch.Tensor):
        return pointwise(call)
    state = call.state(0)
    if not isinstance(state, Spatial):
        return _first_only(call)
    position = 2 if call.name == "norm" else 1
    dim = call.value(position, "dim", call.kwargs.get("axis"))
    shape = call.shape
    result = reduce_dims(state, shape, _dims(dim, len(shape)), keepdim=len(call.out_shape) == len(shape))
    if isinstance(call.result, (tuple, list)):
        return tuple(result for _ in call.result)
    return result


def _reshape(call: Call) -> State:
    state = call.state(0)
    return reshape(state, call.shape, call.out_shape, call.name) if isinstance(state, Spatial) else None


def _permute(call: Call) -> State:
    state, ndim = call.state(0), len(call.shape)
    if not isinstance(state, Spatial):
        return None
    if call.name == "permute":
        dims = call.value(1, "dims")
        order = list(dims) if isinstance(dims, (tuple, list)) else [int(d) for d in call.args[1:]]
    elif call.name == "t":
        order = list(range(ndim))[::-1]
    elif call.name in ("movedim", "moveaxis"):
        sources, targets = (_dims(call.value(i, key), ndim) for i, key in ((1, "source"), (2, "destination")))
        order = [None] * ndim  # type: ignore[list-item]
        for source, target in zip(sources, targets):
            order[target] = source
        rest = iter(dim for dim in range(ndim) if dim not in sources)
        order = [next(rest) if dim is None else dim for dim in order]
    else:  # transpose, swapaxes, swapdims
        first, second = _dims([call.value(1, "dim0"), call.value(2, "dim1")], ndim)
        order = list(range(ndim))
        order[first], order[second] = second, first
    return permute(state, [dim % ndim for dim in order])


def _getattr(call: Call) -> State:
    state = call.state(0)
    if not isinstance(state, Spatial):
        return None
    ndim = len(call.shape)
    attribute = call.args[1]
    if attribute in ("T", "mT", "H", "mH"):
        order = list(range(ndim))[::-1] if attribute in ("T", "H") else [*range(ndim - 2), ndim - 1, ndim - 2]
        return permute(state, order)
    if attribute in ("data", "real", "imag"):
        return state
    return Unknown(f"cannot follow the tensor attribute {attribute!r}")


def _getitem(call: Call) -> State:
    """Indexing: ints pick a position, slices keep every ``step``-th from ``start``, ``None`` adds a dim."""
    state, shape = call.state(0), call.shape
    if not isinstance(state, Spatial):
        return None
    items = list(call.args[1]) if isinstance(call.args[1], tuple) else [call.args[1]]
    if any(isinstance(item, torch.Tensor) for item in items):
        return Unknown("indexing with tensors is not followed") if state.local else _first_only(call)
    used = sum(item is not None and item is not Ellipsis for item in items)
    ellipsis = [i for i, item in enumerate(items) if item is Ellipsis]
    if ellipsis:
        items[ellipsis[0] : ellipsis[0] + 1] = [slice(None)] * (len(shape) - used)
    else:
        items += [slice(None)] * (len(shape) - used)
    layout: list[int | None] = []
    axes = list(state.axes)
    dim = 0
    for item in items:
        if item is None:
            layout.append(None)
            continue
        if dim >= len(shape):
            break
        axis = state.layout[dim]
        if isinstance(item, slice):
            start, _, step = item.indices(shape[dim])
            if axis is not None and (start, step) != (0, 1):
                axes[axis] = tuple(apply_map(path, IndexMap(1, step, ((start,),))) for path in axes[axis])
            layout.append(axis)
        elif axis is not None:
            axes[axis] = tuple(collapse(path, 1, int(item) % shape[dim]) for path in axes[axis])
        dim += 1
    if len(layout) != len(call.out_shape):
        return Unknown("this indexing is not followed")
    return Spatial(tuple(layout), tuple(axes))


def _cat(call: Call) -> State:
    dim = call.value(1, "dim", call.kwargs.get("axis", 0))
    for state, shape in call.tensors:
        axis = state.layout[int(dim) % len(shape)]
        if axis is not None and state.moving(axis):
            return Unknown("a concatenation along a spatial axis is not followed")
    if call.name == "stack":
        return combine([(insert_dim(state, int(dim)), call.out_shape) for state, _ in call.tensors], call.out_shape)
    return pointwise(call)


def _split(call: Call) -> State:
    state = call.state(0)
    if not isinstance(state, Spatial):
        return None
    dim = call.value(1 if call.name == "unbind" else 2, "dim", 0)
    axis = state.layout[int(dim) % len(call.shape)]
    if axis is not None and state.moving(axis):
        return Unknown(f"{call.name} along a spatial axis is not followed")
    if call.name == "unbind":
        state = reduce_dims(state, call.shape, [int(dim)], keepdim=False)  # type: ignore[assignment]
    return tuple(state for _ in call.result)


def _matmul(call: Call) -> State:
    """A matrix product: the contracted dim is read whole; two factors with local fields are attention."""
    first = call.state(0)
    settled = [(settle(state, shape), shape, state is first) for state, shape in call.tensors]
    local = [item for item in settled if item[0].local]
    if not local:
        return untracked(call, call.name)
    if len(local) > 1:
        return Unknown(ATTENTION + " (a product of two tensors computed from the input)")
    state, shape, is_first = local[0]
    if len(shape) != len(call.out_shape):
        return Unknown(f"cannot follow {call.name} through the spatial axes")
    # ``x @ w`` reads every feature of x's last dim; ``w @ x`` every position of x's next-to-last.
    contracted = len(shape) - 1 if is_first or len(shape) == 1 else len(shape) - 2
    mixed = map_dims(state, shape, {}, mixed=[contracted])
    if isinstance(mixed, Unknown):
        return mixed
    axes = merge_axes([mixed, *(other for other, _, _ in settled if other is not state)])
    return axes if isinstance(axes, Unknown) else Spatial(mixed.layout, axes)


def _linear(call: Call) -> State:
    state = call.state(0)
    return layers.last_dim_mixed(state, call.shape) if isinstance(state, Spatial) else None


def _normalize(call: Call) -> State:
    state = call.state(0)
    if not isinstance(state, Spatial):
        return None
    default = 1 if call.name == "normalize" else None
    dim = call.value(2 if call.name == "normalize" else 1, "dim", default)
    if dim is None:
        dim = 0 if len(call.shape) in (0, 1, 3) else 1
    return layers.normalized_along(state, call.shape, int(dim))


def _spatial_layer(call: Call) -> State:
    state, shape, name = call.state(0), call.shape, call.name
    if not isinstance(state, Spatial):
        return None
    count = int(name[-2]) if re.search(r"[123]d$", name) else len(shape) - 2
    if name.startswith("conv_transpose"):
        kernel = tuple(call.value(1, "weight").shape[2:])
        stride, padding, dilation = (
            call.value(3, "stride", 1),
            call.value(4, "padding", 0),
            call.value(7, "dilation", 1),
        )
        return layers.transposed_convolution(state, shape, kernel, stride, dilation, padding, name)
    if name.startswith("conv"):
        kernel = tuple(call.value(1, "weight").shape[2:])
        stride, dilation, groups = (call.value(i, key, 1) for i, key in ((3, "stride"), (5, "dilation"), (6, "groups")))
        return layers.convolution(state, shape, kernel, stride, dilation, groups, name)
    if name.startswith("adaptive"):
        return layers.adaptive_pooling(state, shape, call.out_shape, count, name)
    if name.startswith("lp_pool"):
        return layers.pooling(state, shape, count, call.value(2, "kernel_size"), call.value(3, "stride"), 1, name)
    dilation = call.value(4, "dilation", 1) if name.startswith("max") else 1
    return layers.pooling(state, shape, count, call.value(1, "kernel_size"), call.value(2, "stride"), dilation, name)


def _interpolate(call: Call) -> State:
    state = call.state(0)
    if not isinstance(state, Spatial):
        return None
    # The deprecated spellings fix the mode (and bilinear's corners).
    aliases = {"upsample_nearest": ("nearest", None), "upsample_bilinear": ("bilinear", True)}
    mode, corners = aliases.get(call.name, (call.value(3, "mode", "nearest"), call.value(4, "align_corners")))
    return layers.interpolation(
        state,
        call.shape,
        call.out_shape,
        mode,
        call.value(2, "scale_factor"),
        corners,
        call.value(5, "recompute_scale_factor"),
        bool(call.value(6, "antialias", False)),
        call.name,
    )


def _pad(call: Call) -> State:
    state = call.state(0)
    return layers.padding(state, call.shape, call.value(1, "pad")) if isinstance(state, Spatial) else None


def _pixel_shuffle(call: Call) -> State:
    state = call.state(0)
    if not isinstance(state, Spatial):
        return None
    return layers.pixel_shuffle(state, call.shape, int(call.value(1, "upscale_factor")), call.name)


_RULES: dict[str, Callable[[Call], State]] = {
    **dict.fromkeys(_POINTWISE, pointwise),
    **dict.fromkeys(_FIRST_ONLY, _first_only),
    **dict.fromkeys(_NO_DEPENDENCE, lambda call: None),
    **dict.fromkeys(_RESHAPES, _reshape),
    **dict.fromkeys(_REDUCTIONS, _reduction),
    **dict.fromkeys(_SPLITS, _split),
    **dict.fromkeys(("permute", "transpose", "swapaxes", "swapdims", "t", "movedim", "moveaxis"), _permute),
    **dict.fromkeys(("cat", "concat", "concatenate", "stack"), _cat),
    **dict.fromkeys(("matmul", "mm", "bmm"), _matmul),
    **dict.fromkeys(("softmax", "log_softmax", "softmin", "normalize"), _normalize),
    **dict.fromkeys(("interpolate", "upsample", "upsample_nearest", "upsample_bilinear"), _interpolate),
    **dict.fromkeys(("scaled_dot_product_attention", "multi_head_attention_forward"), lambda call: Unknown(ATTENTION)),
    "getattr": _getattr,
    "getitem": _getitem,
    "linear": _linear,
    "pad": _pad,
    "pixel_shuffle": _pixel_shuffle,
}


def function_rule(raw_name: str) -> Callable[[Call], State] | None:
    """The rule for a function or method name, ``None`` for one the walk does not know.

    Examples
    --------
    >>> function_rule("relu_") is function_rule("relu")
    True
    >>> function_rule("einsum") is None
    True
    """
    name = _name(raw_name)
    if name in _RULES:
        return _RULES[name]
    if re.fullmatch(r"(conv[123]d|conv_transpose[123]d|(max|avg|lp)_pool[123]d|adaptive_(avg|max)_pool[123]d)", name):
        return _spatial_layer
    return None
