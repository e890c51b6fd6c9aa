"""Receptive fields along one axis: the positions a layer reads, and fields carried through it.

A layer's output position ``o`` *reads* a set of positions of its input (a
convolution: ``o * s - p + d * t`` for ``t < k``). The reads repeat with a
period: an :class:`IndexMap` stores them for ``period`` consecutive outputs and
the ``shift`` in input positions after each period (a convolution: period 1,
shift ``s``; a nearest 2x upsampling: period 2, shift 1, both outputs reading
input 0).

A :class:`PathClass` is the field of every position of a map along one family
of paths from the model's input: position ``i`` covers input pixels
``lo(i) .. hi(i)``, again periodic (``lo(i + period) = lo(i) + shift``). For a
plain convolutional stack the period is 1, ``shift`` is the jump ``j`` and
``hi - lo + 1`` is the field ``rf``; :func:`apply_map` then is the standard
recurrence ``rf_out = rf_in + (d (k - 1)) j_in``, ``j_out = j_in s``. Periods
above 1 arise where positions differ: after an upsampling, two neighbours of
one input pixel read different pixels through a later layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from math import ceil, floor, gcd

__all__ = [
    "IndexMap",
    "PathClass",
    "EmptyReadError",
    "input_class",
    "window_map",
    "transposed_map",
    "adaptive_map",
    "resample_map",
    "apply_map",
    "collapse",
    "merge_classes",
    "field_range",
]

# Past this many distinct path families on one axis the walk stops with a note instead of slowing down.
MAX_CLASSES = 4096


class EmptyReadError(ValueError):
    """An output position reads no input position (a transposed convolution with holes)."""


@dataclass(frozen=True)
class IndexMap:
    """The input positions each output position reads, periodically.

    Output ``o = q * period + r`` reads ``{i + q * shift for i in reads[r]}``.
    """

    period: int
    shift: int
    reads: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class PathClass:
    """Fields of a map's positions along one family of paths, in input pixels (see the module docstring)."""

    period: int
    shift: int
    lo: tuple[int, ...]
    hi: tuple[int, ...]

    def bounds(self, position: int) -> tuple[int, int]:
        """First and last input pixel in the field of ``position``."""
        turns, phase = divmod(position, self.period)
        return self.lo[phase] + turns * self.shift, self.hi[phase] + turns * self.shift

    @property
    def constant(self) -> bool:
        """Every position has the same field (a globally pooled or broadcast map)."""
        return self.shift == 0 and self.period == 1

    def sizes(self) -> list[int]:
        return [high - low + 1 for low, high in zip(self.lo, self.hi)]


def input_class() -> PathClass:
    """The model's input: position ``i`` is pixel ``i``."""
    return PathClass(1, 1, (0,), (0,))


def window_map(kernel: int, stride: int = 1, dilation: int = 1, padding: int = 0) -> IndexMap:
    """A convolution's or a pooling's reads: ``o * stride - padding + dilation * t`` for ``t < kernel``.

    Examples
    --------
    >>> window_map(3, stride=2, padding=1)
    IndexMap(period=1, shift=2, reads=((-1, 0, 1),))
    """
    return IndexMap(1, stride, (tuple(dilation * t - padding for t in range(kernel)),))


def transposed_map(kernel: int, stride: int = 1, dilation: int = 1, padding: int = 0) -> IndexMap:
    """A transposed convolution's reads: output ``o`` reads input ``i`` if ``o = i * stride - padding + dilation * t``.

    Examples
    --------
    >>> transposed_map(2, stride=2)  # each input pixel becomes two outputs
    IndexMap(period=2, shift=1, reads=((0,), (0,)))
    """
    reads = []
    for phase in range(stride):
        offsets = (phase + padding - dilation * t for t in range(kernel))
        reads.append(tuple(sorted(offset // stride for offset in offsets if offset % stride == 0)))
    return IndexMap(stride, 1, tuple(reads))


def adaptive_map(size_in: int, size_out: int) -> IndexMap:
    """Adaptive pooling's bins: output ``o`` reads ``floor(o n / m) .. ceil((o + 1) n / m) - 1``.

    Examples
    --------
    >>> adaptive_map(8, 1).reads  # global pooling reads the whole map
    ((0, 1, 2, 3, 4, 5, 6, 7),)
    >>> adaptive_map(5, 3)  # uneven bins: 2, 3 and 2 positions
    IndexMap(period=3, shift=5, reads=((0, 1), (1, 2, 3), (3, 4)))
    """
    ratio = Fraction(size_in, size_out)
    reads = []
    for phase in range(ratio.denominator):
        start = floor(phase * ratio)
        reads.append(tuple(range(start, ceil((phase + 1) * ratio))))
    return IndexMap(ratio.denominator, ratio.numerator, tuple(reads))


def resample_map(mode: str, ratio: Fraction, align_corners: bool = False) -> IndexMap:
    """An interpolation's reads, ``ratio`` being input pixels per output pixel (``1/2`` for a 2x upsampling).

    The source coordinate is PyTorch's: ``o * ratio`` (``nearest``, or with
    ``align_corners``), ``(o + 1/2) * ratio`` (``nearest-exact``) or
    ``(o + 1/2) * ratio - 1/2`` (the linear modes and ``bicubic``). Nearest
    modes read the pixel ``floor(source)``; linear modes the two pixels around
    the source, ``bicubic`` the four; where the source falls on a pixel, only
    that pixel has a nonzero weight and only it is read.

    Examples
    --------
    >>> resample_map("nearest", Fraction(1, 2)).reads
    ((0,), (0,))
    >>> resample_map("bilinear", Fraction(1, 2)).reads  # sources -1/4 and 1/4
    ((-1, 0), (0, 1))
    """
    reads = []
    for phase in range(ratio.denominator):
        if mode == "nearest" or (align_corners and mode != "nearest-exact"):
            source = phase * ratio
        elif mode == "nearest-exact":
            source = (phase + Fraction(1, 2)) * ratio
        else:
            source = (phase + Fraction(1, 2)) * ratio - Fraction(1, 2)
        base = floor(source)
        if mode.startswith("nearest") or source == base:
            reads.append((base,))
        elif mode == "bicubic":
            reads.append((base - 1, base, base + 1, base + 2))
        else:
            reads.append((base, base + 1))
    return IndexMap(ratio.denominator, ratio.numerator, tuple(reads))


def _normalized(period: int, shift: int, lo: list[int], hi: list[int]) -> PathClass:
    """The class moved to start at pixel 0 and reduced to its shortest period.

    A field's size does not depend on where it starts, so classes that differ
    by a translation are one.
    """
    origin = lo[0]
    lo = [value - origin for value in lo]
    hi = [value - origin for value in hi]
    for candidate in range(1, period):
        if period % candidate or (shift * candidate) % period:
            continue
        step = shift * candidate // period
        if all(
            lo[i + candidate] - lo[i] == step and hi[i + candidate] - hi[i] == step for i in range(period - candidate)
        ):
            return PathClass(candidate, step, tuple(lo[:candidate]), tuple(hi[:candidate]))
    return PathClass(period, shift, tuple(lo), tuple(hi))


def apply_map(path: PathClass, index_map: IndexMap) -> PathClass:
    """The fields after a layer: each output position covers the union of the fields it reads.

    Raises
    ------
    EmptyReadError
        If some output position reads nothing.

    Examples
    --------
    >>> field = input_class()
    >>> for _ in range(2):  # two 3x3 convolutions: 1 + 2 + 2
    ...     field = apply_map(field, window_map(3, padding=1))
    >>> field.sizes(), field.shift
    ([5], 1)
    >>> field = apply_map(field, window_map(2, stride=2))  # a 2x2 pool: + 1, jump 2
    >>> field.sizes(), field.shift
    ([6], 2)
    """
    # The output repeats once the map's periods have moved the input by whole periods of ``path``.
    turns = path.period // gcd(index_map.shift, path.period)
    period = index_map.period * turns
    shift = path.shift * (index_map.shift * turns // path.period)
    lo, hi = [], []
    for position in range(period):
        turn, phase = divmod(position, index_map.period)
        reads = [i + turn * index_map.shift for i in index_map.reads[phase]]
        if not reads:
            raise EmptyReadError("some output positions read no input position")
        bounds = [path.bounds(i) for i in reads]
        lo.append(min(low for low, _ in bounds))
        hi.append(max(high for _, high in bounds))
    return _normalized(period, shift, lo, hi)


def collapse(path: PathClass, size: int, start: int = 0) -> PathClass:
    """One field for every position: the union over positions ``start .. start + size - 1``.

    Reducing an axis of ``size`` positions (a global pooling, a mean over the
    axis) gives every later position this field; so does broadcasting a map of
    one position (``start``) over many.

    Examples
    --------
    >>> collapse(input_class(), 8).sizes()
    [8]
    """
    bounds = [path.bounds(i) for i in range(start, start + size)]
    return _normalized(1, 0, [min(low for low, _ in bounds)], [max(high for _, high in bounds)])


def merge_classes(classes: Iterable[PathClass]) -> tuple[PathClass, ...]:
    """The classes of several paths meeting (an addition, a concatenation), without redundant ones.

    Two classes whose fields differ by a constant number of pixels at every
    position keep that difference through every later layer (each layer adds
    the same reads to both), so of such a family only the smallest and the
    largest can decide a minimum or a maximum; the others are dropped.

    Raises
    ------
    OverflowError
        If more than ``MAX_CLASSES`` families remain.

    Examples
    --------
    >>> a = apply_map(input_class(), window_map(3))
    >>> b = apply_map(a, window_map(3))
    >>> c = apply_map(b, window_map(3))
    >>> [path.sizes() for path in merge_classes([a, b, c])]
    [[3], [7]]
    """
    families: dict[tuple, tuple[int, int]] = {}
    for path in classes:
        key = (path.period, path.shift, path.lo, tuple(high - path.hi[0] for high in path.hi))
        gap = path.hi[0] - path.lo[0]
        low, high = families.get(key, (gap, gap))
        families[key] = (min(low, gap), max(high, gap))
    if len(families) > MAX_CLASSES:
        raise OverflowError(f"more than {MAX_CLASSES} distinct families of paths")
    merged = []
    for (period, shift, lo, pattern), gaps in families.items():
        for gap in sorted(set(gaps)):
            merged.append(PathClass(period, shift, lo, tuple(gap + offset for offset in pattern)))
    return tuple(merged)


def field_range(classes: Iterable[PathClass]) -> tuple[int, int]:
    """Smallest and largest field over the classes and their positions.

    Examples
    --------
    >>> up = apply_map(input_class(), resample_map("nearest", Fraction(1, 2)))
    >>> field_range([apply_map(up, window_map(2))])  # a 2-tap kernel after 2x nearest: 1 or 2 pixels
    (1, 2)
    """
    sizes = [size for path in classes for size in path.sizes()]
    return min(sizes), max(sizes)
