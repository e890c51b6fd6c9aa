"""Receptive fields of a model's convolutions, derived from its graph without training.

The field of a unit is the span of input pixels it depends on, per spatial
axis, counted on an unbounded grid: padding, and the borders where
interpolation clamps its source, do not change it. With ``j`` the jump (the
input pixels between neighbouring positions of a map: the product of the
strides before it) and ``k_eff = d (k - 1) + 1`` a layer's dilated kernel,
the standard recurrence is::

    rf_out = rf_in + (k_eff - 1) * j_in        j_out = j_in * s

Convolutions and max, average and power-average pooling follow it. The walk
(:mod:`delve.verdicts.fields`) generalizes it to layers whose positions do not
all read alike, and stays exact there:

* **Transposed convolution** (stride ``s``): output ``o`` reads input ``i``
  where ``o = i s - p + d t``; the jump becomes ``j / s``.
* **Adaptive pooling** from ``n`` to ``m`` positions reads the bins
  ``floor(o n / m) .. ceil((o + 1) n / m) - 1``: where ``m`` divides ``n`` a
  pooling with ``k = s = n / m``. **Global pooling** (``m = 1``) reads the
  whole map: its field is ``rf_in + (n - 1) j_in``, which spans the whole
  input (more where padding widened the fields, a little less where a stride
  skipped the last pixels); so does a mean or a maximum over the spatial dims.
* **Upsampling** (``nn.Upsample``, ``F.interpolate``) by ``f`` (the scale
  factor, or the output's size over the input's): output ``o``
  has the source coordinate ``o / f`` (``nearest``; ``(o + 1/2) / f``
  for ``nearest-exact``; ``(o + 1/2) / f - 1/2`` for the linear modes and
  ``bicubic``, ``o (n - 1) / (m - 1)`` with ``align_corners``). ``nearest``
  reads the one pixel ``floor(source)``, the linear modes the two around
  the source (on the grid line: one), ``bicubic`` four (or one). The jump
  becomes ``j / f``, and the field of a later layer depends on where its
  window falls: after a 2x nearest upsampling a 2-tap kernel reads one input
  pixel or two. ``rf_min`` and ``rf_max`` then also range over positions.

Where paths from the input meet (a residual addition, a concatenation on
channels, a multiplication), ``rf_min`` follows the path with the smallest
field and ``rf_max`` the path with the largest, and both go on through the
later layers (each path family is carried on exactly, jumps included).

**Squeeze-and-excitation** multiplies the map by a gate computed from its
global average: the gate is one position broadcast over the map, its field
the whole input. From the product on, ``rf_max`` is the whole input (until
the main path's field outgrows it): the gate's field does not grow with
later kernels, as it is the same at every position. ``rf_min`` follows the
main path. A softmax along a spatial axis is
treated alike: each position has its own field and the whole axis's.

Activations, dropout and normalization count as position by position: the
statistics of batch, instance, group and layer norm (over many positions)
are left out, as receptive fields are usually counted.

Attention (``nn.MultiheadAttention``, ``F.scaled_dot_product_attention``, a
product of two tensors computed from the input) mixes every position: every
convolution after it has no field, only a note. So have the layers after an
operation the walk cannot follow through the spatial axes (a flatten that
merges them, ``torch.roll``...: named in the note), and every layer when the
model cannot be traced (data-dependent control flow) or run on the meta
device. The model is called with one input tensor.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence

import pandas as pd
from torch import fx, nn

from ..capture.discovery import TrackedLayer, discover_layers, unwrap_model
from .fields import field_range
from .spatial import Spatial, State, Unknown
from .walk import ROOT, states_of, trace

__all__ = ["COLUMNS", "receptive_field"]

COLUMNS = ("layer", "rf_min", "rf_max", "input_size", "beyond_input", "note")

_SHAPE_HELP = (
    "input_shape must be the model's input shape with batch and channel dims: (N, C, L), (N, C, H, W) "
    "or (N, C, D, H, W), positive ints, e.g. (1, 3, 32, 32)"
)


def _check_shape(input_shape: object) -> tuple[int, ...]:
    """The input shape as ints; a spatial-only shape is refused, as ``(3, 32, 32)`` could be either."""
    try:
        shape = tuple(input_shape)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{_SHAPE_HELP}; got {input_shape!r}") from None
    if not all(isinstance(size, numbers.Integral) and not isinstance(size, bool) for size in shape):
        raise ValueError(f"{_SHAPE_HELP}; got {input_shape!r}")
    if len(shape) not in (3, 4, 5):
        hint = " (a spatial-only shape is not accepted: add the batch and channel dims)" if len(shape) < 3 else ""
        raise ValueError(f"{_SHAPE_HELP}; got {len(shape)} dims {shape!r}{hint}")
    if any(size < 1 for size in shape):
        raise ValueError(f"{_SHAPE_HELP}; got {shape!r}")
    return tuple(int(size) for size in shape)


def _convolutions(model: nn.Module) -> list[TrackedLayer]:
    try:
        with warnings.catch_warnings():
            # Discovery warns about weight-holding modules the tracker cannot watch: a tracker's concern.
            warnings.simplefilter("ignore", UserWarning)
            layers = discover_layers(model)
    except ValueError:  # nothing the tracker would track
        return []
    return [layer for layer in layers if layer.kind == "conv"]


def _fields(states: list[State], axes: int) -> tuple[list[int], list[int]] | str:
    """Per axis, the smallest and the largest field over every call of a layer, or why there is none."""
    lows, highs = [None] * axes, [None] * axes
    for state in states:
        if isinstance(state, Unknown):
            return state.reason
        if not isinstance(state, Spatial):
            return "its output does not depend on the model's input"
        for axis, classes in enumerate(state.axes):
            low, high = field_range(classes)
            lows[axis] = low if lows[axis] is None else min(lows[axis], low)
            highs[axis] = high if highs[axis] is None else max(highs[axis], high)
    return lows, highs  # type: ignore[return-value]


def _form(values: Sequence[int]) -> int | tuple[int, ...]:
    return int(values[0]) if len(values) == 1 else tuple(int(value) for value in values)


def receptive_field(model: nn.Module, input_shape: Sequence[int]) -> pd.DataFrame:
    """The receptive field of every convolution the tracker would track in ``model``.

    Parameters
    ----------
    model : nn.Module
        Traced with ``torch.fx`` and run on the ``meta`` device for its
        shapes; nothing is computed, its weights and buffers are untouched.
    input_shape : sequence of int
        The model's input shape with batch and channel dims: ``(N, C, L)``,
        ``(N, C, H, W)`` or ``(N, C, D, H, W)``.

    Returns
    -------
    pandas.DataFrame
        One row per convolution, in module order, named as the tracker names
        layers, with the columns ``layer``, ``rf_min`` and ``rf_max`` (input
        pixels per spatial axis: an int for 1-D inputs, a tuple for 2-D and
        3-D), ``input_size`` (the input's spatial size, in the same form),
        ``beyond_input`` (the minimum field exceeds the input on some axis) and
        ``note``. Where a field cannot be derived, ``rf_min``, ``rf_max`` and
        ``beyond_input`` are missing and ``note`` says why; otherwise ``note``
        is empty. The formulas are in :mod:`delve.verdicts.receptive_field`.

    Raises
    ------
    ValueError
        If ``model`` is not a module or ``input_shape`` is not a full input shape.

    Examples
    --------
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3))
    >>> receptive_field(model, (1, 3, 8, 8))
      layer  rf_min  rf_max input_size  beyond_input note
    0     0  (3, 3)  (3, 3)     (8, 8)         False
    1     3  (8, 8)  (8, 8)     (8, 8)         False
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    shape = _check_shape(input_shape)
    model = unwrap_model(model)
    sizes = shape[2:]
    convolutions = _convolutions(model)
    states: dict[fx.Node, State] | str = "no convolutions"
    calls: dict[str, list[fx.Node]] = {}
    if convolutions:
        graph = trace(model)
        states = graph if isinstance(graph, str) else states_of(graph, shape)
        if not isinstance(graph, str):
            for node in graph.graph.nodes:
                if node.op == "call_module":
                    calls.setdefault(str(node.target), []).append(node)
    rows = []
    for layer in convolutions:
        target = f"{ROOT}.{layer.qualified_name}" if layer.qualified_name else ROOT
        if isinstance(states, str):
            fields: tuple[list[int], list[int]] | str = states
        elif target not in calls:
            fields = "the model's forward does not call it"
        else:
            fields = _fields([states[node] for node in calls[target]], len(sizes))
        if isinstance(fields, str):
            rows.append((layer.name, None, None, _form(sizes), pd.NA, fields))
            continue
        lows, highs = fields
        beyond = any(low > size for low, size in zip(lows, sizes))
        rows.append((layer.name, _form(lows), _form(highs), _form(sizes), beyond, ""))
    frame = pd.DataFrame(rows, columns=list(COLUMNS), dtype=object)
    return frame.astype({"layer": str, "beyond_input": "boolean", "note": str})
