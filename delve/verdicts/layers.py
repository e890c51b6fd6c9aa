"""The spatial layers, whether modules or functions: convolutions, poolings, interpolations, paddings.

Each function takes a layer's parameters as PyTorch spells them (an int or a
tuple per spatial dim), the state and shape of its input and the shape of its
output, and returns the output's state. The last ``n`` dims of a tensor are a
layer's ``n`` spatial dims (batched or not), the one before them its channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from .fields import IndexMap, adaptive_map, merge_classes, resample_map, transposed_map, window_map
from .spatial import Spatial, Unknown, map_dims, reduce_dims

__all__ = [
    "INTERPOLATION_MODES",
    "convolution",
    "transposed_convolution",
    "pooling",
    "adaptive_pooling",
    "interpolation",
    "pixel_shuffle",
    "padding",
    "last_dim_mixed",
    "normalized_along",
]

INTERPOLATION_MODES = ("nearest", "nearest-exact", "linear", "bilinear", "trilinear", "bicubic", "area")
_LINEAR_MODES = ("linear", "bilinear", "trilinear", "bicubic")


def _per_dim(value: object, count: int) -> tuple:
    """PyTorch's int-or-tuple parameters as one value per spatial dim."""
    if isinstance(value, (tuple, list)):
        return tuple(value) if len(value) == count else tuple(value[:1]) * count
    return (value,) * count


def _spatial_dims(shape: Sequence[int], count: int, what: str) -> list[int] | Unknown:
    if len(shape) not in (count + 1, count + 2):
        return Unknown(f"{what} gets a {len(shape)}-d tensor, not one with {count} spatial dims")
    return list(range(len(shape) - count, len(shape)))


def convolution(
    state: Spatial, shape: Sequence[int], kernel: object, stride: object, dilation: object, groups: int, what: str
) -> Spatial | Unknown:
    """A convolution: ``k_eff = d (k - 1) + 1`` positions read, ``s`` apart per output position.

    Padding only shifts the window; it does not change a field's size.
    """
    count = len(kernel) if isinstance(kernel, (tuple, list)) else 1
    dims = _spatial_dims(shape, count, what)
    if isinstance(dims, Unknown):
        return dims
    channel = dims[0] - 1
    if groups != 1 and state.layout[channel] is not None and state.moving(state.layout[channel]):  # type: ignore[arg-type]
        return Unknown(f"{what} is a grouped convolution over channels that hold a spatial axis")
    kernels, strides, dilations = (_per_dim(v, count) for v in (kernel, stride, dilation))
    maps = {dim: window_map(k, s, d) for dim, k, s, d in zip(dims, kernels, strides, dilations)}
    return map_dims(state, shape, maps, mixed=[channel])


def transposed_convolution(
    state: Spatial, shape: Sequence[int], kernel: object, stride: object, dilation: object, pad: object, what: str
) -> Spatial | Unknown:
    """A transposed convolution: output ``o`` reads input ``i`` where ``o = i s - p + d t``, ``t < k``."""
    count = len(kernel) if isinstance(kernel, (tuple, list)) else 1
    dims = _spatial_dims(shape, count, what)
    if isinstance(dims, Unknown):
        return dims
    values = [_per_dim(v, count) for v in (kernel, stride, dilation, pad)]
    maps = {dim: transposed_map(k, s, d, p) for dim, k, s, d, p in zip(dims, *values)}
    return map_dims(state, shape, maps, mixed=[dims[0] - 1])


def pooling(
    state: Spatial, shape: Sequence[int], count: int, kernel: object, stride: object, dilation: object, what: str
) -> Spatial | Unknown:
    """Max, average or power-average pooling: a convolution that keeps its channels apart.

    A missing stride is the kernel size, as in PyTorch.
    """
    dims = _spatial_dims(shape, count, what)
    if isinstance(dims, Unknown):
        return dims
    stride = kernel if stride is None or stride == () or stride == [] else stride
    kernels, strides, dilations = (_per_dim(v, count) for v in (kernel, stride, dilation))
    return map_dims(state, shape, {dim: window_map(k, s, d) for dim, k, s, d in zip(dims, kernels, strides, dilations)})


def adaptive_pooling(
    state: Spatial, shape: Sequence[int], out_shape: Sequence[int], count: int, what: str
) -> Spatial | Unknown:
    """Adaptive pooling from ``n`` to ``m`` positions: uneven bins where ``m`` does not divide ``n``.

    To one position (global pooling) the bin is the whole map: the result's
    field spans the fields of every position, the whole input.
    """
    dims = _spatial_dims(shape, count, what)
    if isinstance(dims, Unknown):
        return dims
    return map_dims(state, shape, {dim: adaptive_map(shape[dim], out_shape[dim]) for dim in dims})


def _ratio(
    size_in: int, size_out: int, scale: object, mode: str, align_corners: bool | None, recompute: bool
) -> Fraction:
    """Input pixels per output pixel, as PyTorch computes the source coordinate."""
    if align_corners and mode in _LINEAR_MODES:
        return Fraction(size_in - 1, size_out - 1) if size_out > 1 else Fraction(0)
    if scale is not None and not recompute:
        factor = Fraction(float(scale)).limit_denominator(1 << 12)  # type: ignore[arg-type]
        if abs(float(factor) - float(scale)) > 1e-12 or factor <= 0:  # type: ignore[arg-type]
            raise ValueError(f"scale factor {scale} is not a ratio of small integers")
        return 1 / factor
    return Fraction(size_in, size_out)


def interpolation(
    state: Spatial,
    shape: Sequence[int],
    out_shape: Sequence[int],
    mode: str,
    scale_factor: object,
    align_corners: bool | None,
    recompute_scale_factor: bool | None,
    antialias: bool,
    what: str,
) -> Spatial | Unknown:
    """``F.interpolate``, ``nn.Upsample``: each output reads the pixels it interpolates (see :func:`resample_map`).

    ``area`` is adaptive average pooling.
    """
    if mode not in INTERPOLATION_MODES:
        return Unknown(f"{what} uses the interpolation mode {mode!r}, which is not followed")
    count = len(shape) - 2
    dims = list(range(2, len(shape)))
    if mode == "area":
        return adaptive_pooling(state, shape, out_shape, count, what)
    scales = _per_dim(scale_factor, count)
    maps: dict[int, IndexMap] = {}
    for dim, scale in zip(dims, scales):
        try:
            ratio = _ratio(shape[dim], out_shape[dim], scale, mode, align_corners, bool(recompute_scale_factor))
        except ValueError as error:
            return Unknown(f"{what}: {error}")
        if antialias and ratio > 1:
            return Unknown(f"{what} downsamples with antialiasing, whose filter width is not followed")
        maps[dim] = resample_map(mode, ratio, bool(align_corners))
    return map_dims(state, shape, maps)


def pixel_shuffle(state: Spatial, shape: Sequence[int], factor: int, what: str) -> Spatial | Unknown:
    """``PixelShuffle(r)``: output ``o`` reads input ``floor(o / r)`` (in one of ``r^2`` channels)."""
    if len(shape) < 3:
        return Unknown(f"{what} gets a tensor with fewer than 3 dims")
    channel = len(shape) - 3
    if state.layout[channel] is not None and state.moving(state.layout[channel]):  # type: ignore[arg-type]
        return Unknown(f"{what} rearranges channels that hold a spatial axis")
    upsampling = resample_map("nearest", Fraction(1, factor))
    return map_dims(state, shape, {len(shape) - 2: upsampling, len(shape) - 1: upsampling})


def padding(state: Spatial, shape: Sequence[int], pad: Sequence[int]) -> Spatial | Unknown:
    """``F.pad`` and the padding modules: output ``o`` reads input ``o - before`` (borders are not counted)."""
    maps = {}
    for pair in range(len(pad) // 2):
        maps[len(shape) - 1 - pair] = window_map(1, 1, 1, int(pad[2 * pair]))
    return map_dims(state, shape, maps)


def last_dim_mixed(state: Spatial, shape: Sequence[int]) -> Spatial | Unknown:
    """A linear layer: every feature of the last dim is read (a spatial axis there: every position)."""
    return map_dims(state, shape, {}, mixed=[len(shape) - 1])


def normalized_along(state: Spatial, shape: Sequence[int], dim: int) -> Spatial | Unknown:
    """Softmax or normalization along ``dim``: each position reads itself and, through the sum, all of them.

    Along a spatial axis the result has both fields: its own (the minimum)
    and the whole axis's (the maximum).
    """
    axis = state.layout[dim % len(shape)]
    if axis is None or not state.moving(axis):
        return state
    reduced = reduce_dims(state, shape, [dim], keepdim=True)
    if isinstance(reduced, Unknown):
        return reduced
    axes = list(state.axes)
    axes[axis] = merge_classes(state.axes[axis] + reduced.axes[axis])
    return Spatial(state.layout, tuple(axes))
