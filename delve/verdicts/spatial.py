"""A tensor's fields: which of its dims are the input's spatial axes, and how shape operations move them.

Every value of a traced model gets a state: a :class:`Spatial` for a tensor
computed from the input, :class:`Unknown` where the walk cannot follow (with
the reason), ``None`` for what does not depend on the input (weights, shapes,
constants) and a tuple for a tuple of values.

A :class:`Spatial` records, per dim of the tensor, the input axis it holds
(``None`` for batch, channels, features) and, per input axis, the path classes
of :mod:`delve.verdicts.fields`. An axis whose fields no longer depend on the
position (reduced by a global pooling, or broadcast from one position) is
*constant* and need not sit in any dim.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .fields import EmptyReadError, IndexMap, PathClass, apply_map, collapse, input_class, merge_classes

__all__ = [
    "Spatial",
    "Unknown",
    "State",
    "input_state",
    "first_unknown",
    "combine",
    "map_dims",
    "reduce_dims",
    "reshape",
    "permute",
    "insert_dim",
    "settle",
    "merge_axes",
]

MISALIGNED = "tensors whose spatial axes do not line up are combined"


@dataclass(frozen=True)
class Unknown:
    """A value whose fields cannot be derived, and why."""

    reason: str


@dataclass(frozen=True)
class Spatial:
    """The input axis each dim of a tensor holds (``None``: not spatial) and each axis's path classes."""

    layout: tuple[int | None, ...]
    axes: tuple[tuple[PathClass, ...], ...]

    def moving(self, axis: int) -> bool:
        """The fields along ``axis`` differ from one position to the next."""
        return any(not path.constant for path in self.axes[axis])

    @property
    def local(self) -> bool:
        """Some axis still has position-dependent fields."""
        return any(self.moving(axis) for axis in range(len(self.axes)))


State = Spatial | Unknown | tuple | None


def input_state(spatial_dims: int) -> Spatial:
    """The model's input, ``(N, C, *spatial)``: dim ``2 + a`` holds axis ``a``.

    Examples
    --------
    >>> input_state(2).layout
    (None, None, 0, 1)
    """
    return Spatial((None, None, *range(spatial_dims)), tuple((input_class(),) for _ in range(spatial_dims)))


def first_unknown(states: Iterable[State]) -> Unknown | None:
    """The first :class:`Unknown` among ``states`` (tuples searched too)."""
    for state in states:
        if isinstance(state, Unknown):
            return state
        if isinstance(state, tuple):
            found = first_unknown(state)
            if found is not None:
                return found
    return None


def _merged(per_axis: Sequence[Iterable[PathClass]]) -> tuple[tuple[PathClass, ...], ...] | Unknown:
    try:
        return tuple(merge_classes(classes) for classes in per_axis)
    except OverflowError as error:
        return Unknown(f"too many paths to follow: {error}")


def _collapsed(classes: Iterable[PathClass], size: int, start: int = 0) -> list[PathClass]:
    return [collapse(path, size, start) for path in classes]


def combine(inputs: Sequence[tuple[Spatial, Sequence[int]]], out_shape: Sequence[int]) -> State:
    """An elementwise result of several tensors (``+``, ``*``, ``torch.cat`` on channels), broadcasting.

    Each axis gets the classes of every input: the minimum over paths and the
    maximum over paths are then taken together. An input of one position
    broadcast over many (a squeeze-and-excitation gate) gives every position
    that one position's field.
    """
    ndim = len(out_shape)
    layout: list[int | None] = [None] * ndim
    per_axis: list[list[PathClass]] = [[] for _ in inputs[0][0].axes]
    for state, shape in inputs:
        offset = ndim - len(shape)
        placed = set()
        for dim, axis in enumerate(state.layout):
            if axis is None:
                continue
            placed.add(axis)
            if shape[dim] == 1 and out_shape[dim + offset] != 1:
                per_axis[axis].extend(_collapsed(state.axes[axis], 1))
                continue
            per_axis[axis].extend(state.axes[axis])
            if not state.moving(axis):
                continue
            if layout[dim + offset] not in (None, axis) or (axis in layout and layout.index(axis) != dim + offset):
                return Unknown(MISALIGNED)
            layout[dim + offset] = axis
        for axis, classes in enumerate(state.axes):
            if axis not in placed:
                per_axis[axis].extend(classes)
    axes = _merged(per_axis)
    return axes if isinstance(axes, Unknown) else Spatial(tuple(layout), axes)


def _read_whole(
    state: Spatial, shape: Sequence[int], dims: Iterable[int]
) -> tuple[list[int | None], list[Iterable[PathClass]]]:
    """The layout and per-axis paths after every position of ``dims`` is read: those dims leave the layout."""
    layout = list(state.layout)
    per_axis: list[Iterable[PathClass]] = list(state.axes)
    for dim in dims:
        axis = layout[dim]
        if axis is not None:
            per_axis[axis] = _collapsed(per_axis[axis], shape[dim])
            layout[dim] = None
    return layout, per_axis


def map_dims(
    state: Spatial, shape: Sequence[int], maps: Mapping[int, IndexMap], mixed: Iterable[int] = ()
) -> Spatial | Unknown:
    """A layer that reads positions ``maps[dim]`` along each dim and every position of the ``mixed`` dims.

    A convolution mixes its channels: were they an input axis, every position
    of that axis would be read.
    """
    layout, per_axis = _read_whole(state, shape, mixed)
    try:
        for dim, index_map in maps.items():
            axis = layout[dim]
            if axis is not None:
                per_axis[axis] = [apply_map(path, index_map) for path in per_axis[axis]]
    except EmptyReadError as error:
        return Unknown(f"{error} (a transposed convolution whose stride leaves holes)")
    axes = _merged(per_axis)
    return axes if isinstance(axes, Unknown) else Spatial(tuple(layout), axes)


def reduce_dims(state: Spatial, shape: Sequence[int], dims: Iterable[int], keepdim: bool) -> Spatial | Unknown:
    """A reduction over ``dims`` (a mean, a sum, a maximum): each result reads every position of them.

    Examples
    --------
    >>> reduced = reduce_dims(input_state(2), (1, 3, 8, 8), [2, 3], keepdim=False)
    >>> reduced.layout, [path.sizes() for path in reduced.axes[0]]
    ((None, None), [[8]])
    """
    dims = {dim % len(shape) for dim in dims}
    layout, per_axis = _read_whole(state, shape, dims)
    if not keepdim:
        layout = [axis for dim, axis in enumerate(layout) if dim not in dims]
    axes = _merged(per_axis)
    return axes if isinstance(axes, Unknown) else Spatial(tuple(layout), axes)


def _groups(before: Sequence[int], after: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Dims of a reshape's input and output that hold the same elements; a dim of size 1 is a group alone."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(before) or j < len(after):
        one_before = i < len(before) and before[i] == 1
        one_after = j < len(after) and after[j] == 1
        if one_before or one_after or i == len(before) or j == len(after):
            groups.append(([i] if one_before or j == len(after) else [], [j] if one_after or i == len(before) else []))
            i += bool(groups[-1][0])
            j += bool(groups[-1][1])
            continue
        mine, theirs = [i], [j]
        size_before, size_after = before[i], after[j]
        i, j = i + 1, j + 1
        while size_before != size_after:
            if size_before < size_after:
                mine.append(i)
                size_before *= before[i]
                i += 1
            else:
                theirs.append(j)
                size_after *= after[j]
                j += 1
        groups.append((mine, theirs))
    return groups


def reshape(state: Spatial, before: Sequence[int], after: Sequence[int], what: str) -> Spatial | Unknown:
    """``view``, ``reshape``, ``flatten``, ``unsqueeze``...: a spatial axis may gain or lose dims of size 1 only.

    Examples
    --------
    >>> reshape(input_state(2), (1, 3, 1, 1), (1, 3), "flatten").layout
    (None, None)
    >>> reshape(input_state(2), (1, 3, 4, 4), (1, 48), "flatten").reason
    'flatten merges a spatial axis with other dims'
    """
    layout: list[int | None] = [None] * len(after)
    per_axis: list[Iterable[PathClass]] = list(state.axes)
    for mine, theirs in _groups(before, after):
        if len(mine) == 1 and len(theirs) == 1 and before[mine[0]] == after[theirs[0]]:
            layout[theirs[0]] = state.layout[mine[0]]
            continue
        for dim in mine:
            axis = state.layout[dim]
            if axis is None:
                continue
            if before[dim] == 1:
                per_axis[axis] = _collapsed(per_axis[axis], 1)
            elif state.moving(axis):
                return Unknown(f"{what} merges a spatial axis with other dims")
    axes = _merged(per_axis)
    return axes if isinstance(axes, Unknown) else Spatial(tuple(layout), axes)


def permute(state: Spatial, order: Sequence[int]) -> Spatial:
    """Dims reordered: result dim ``i`` is input dim ``order[i]``."""
    return Spatial(tuple(state.layout[dim] for dim in order), state.axes)


def insert_dim(state: Spatial, dim: int) -> Spatial:
    """A new non-spatial dim at ``dim`` (``torch.stack``)."""
    layout = list(state.layout)
    layout.insert(dim % (len(layout) + 1), None)
    return Spatial(tuple(layout), state.axes)


def settle(state: Spatial, shape: Sequence[int]) -> Spatial:
    """A map of one position along a dim has one field there: such axes become constant.

    Examples
    --------
    >>> input_state(2).local, settle(input_state(2), (1, 3, 1, 1)).local
    (True, False)
    """
    layout = list(state.layout)
    per_axis = list(state.axes)
    for dim, axis in enumerate(state.layout):
        if axis is not None and shape[dim] == 1:
            per_axis[axis] = tuple(collapse(path, 1) for path in per_axis[axis])
            layout[dim] = None
    return Spatial(tuple(layout), tuple(per_axis))


def merge_axes(states: Iterable[Spatial]) -> tuple[tuple[PathClass, ...], ...] | Unknown:
    """Every state's classes, axis by axis, as where several paths meet."""
    per_axis: list[list[PathClass]] = []
    for state in states:
        per_axis += [[] for _ in range(len(state.axes) - len(per_axis))]
        for axis, classes in enumerate(state.axes):
            per_axis[axis].extend(classes)
    return _merged(per_axis)
