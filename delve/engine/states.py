"""State kinds: how a declared piece of an accumulator's state merges, within a process and across ranks.

An :class:`~delve.engine.accumulator.Accumulator` declares each piece of its
state with one of these kinds; everything generic (reset, merge, the merge
across ``torch.distributed`` ranks, ``state_dict``) asks the kind. A value
is ``None`` while the piece is empty.

* :class:`Sum`: a tensor that adds up (counts, sums of ``|x|``).
* :class:`Comoments`: a row count, mean and centred co-moment
  (:class:`delve.engine.moments.Moments`), merged by the pairwise update of
  Chan, Golub and LeVeque within a process and by the shift to the global
  mean across ranks (below).
* :class:`BottomK`: rows with random keys, of which the ``size`` smallest are
  kept: a uniform sample without replacement of every row offered.
* :class:`Fact`: an integer every holder agrees on (a width, a kind of
  target), exchanged with the shapes.

Across ranks, a kind's :meth:`StateKind.sync` is a generator: it yields the
tensors whose sum over ranks it needs, receives the sums, and returns the
merged value. :mod:`delve.engine.sync` drives every piece of every layer in
lockstep, so each round is one all-reduce whatever the number of layers, and
nothing is ever gathered per rank. The co-moments of all rows follow exactly
from two rounds::

    N = sum_r n_r,   m = sum_r n_r m_r / N                     (round 1)
    M = sum_r [M_r + n_r (m_r - m)(m_r - m)^T]                   (round 2)

each rank shifting its own co-moment to the global mean before the sum, so a
large mean cannot cancel the spread; round 2 carries the upper triangle only.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import torch

from .moments import Moments, upper_indices
from .products import feature_blocks

__all__ = ["StateKind", "Sum", "Comoments", "Fact", "BottomK", "Ranks", "SyncSteps", "DESCRIPTION_WIDTH"]

#: Integers a kind uses to describe a value's shape to the other ranks (unused places are 0).
DESCRIPTION_WIDTH = 5

#: What a kind's ``sync`` is: it yields lists of float64 tensors to sum over ranks, receives their
#: sums, and returns the merged value.
SyncSteps = Generator[list[torch.Tensor], list[torch.Tensor], Any]


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the merge: its rank, the number of ranks, the device collectives take."""

    rank: int
    world: int
    device: torch.device


class StateKind(ABC):
    """How one piece of state merges and is saved (see the module docstring).

    Attributes
    ----------
    described : int
        How many integers :meth:`describe` gives (at most :data:`DESCRIPTION_WIDTH`).
    """

    described: int = 1

    @abstractmethod
    def merge(self, mine: Any, theirs: Any) -> Any:
        """The value holding both accumulations (``mine`` may be updated in place)."""

    @abstractmethod
    def describe(self, value: Any) -> tuple[int, ...] | None:
        """The shape facts the ranks must agree on, ``None`` for an empty value (at most
        :data:`DESCRIPTION_WIDTH` non-negative integers)."""

    def agree(self, largest: tuple[int, ...], smallest: tuple[int, ...], where: str) -> tuple[int, ...]:
        """The description every rank uses, from the largest and smallest over the ranks that hold a value."""
        if largest != smallest:
            raise ValueError(
                f"{where}: the ranks hold different shapes ({smallest} and {largest}); "
                "every rank must run the same model"
            )
        return largest

    @abstractmethod
    def sync(self, value: Any, agreed: tuple[int, ...], ranks: Ranks) -> SyncSteps:
        """Merge across ranks (a generator; see the module docstring)."""

    @abstractmethod
    def pack(self, value: Any) -> Any:
        """Tensors for a ``state_dict`` (a tensor or a dict of tensors)."""

    @abstractmethod
    def unpack(self, packed: Any, device: torch.device | None) -> Any:
        """Inverse of :meth:`pack`, on ``device`` when given."""

    @abstractmethod
    def to(self, value: Any, device: torch.device) -> Any:
        """``value`` on ``device``."""

    @abstractmethod
    def device_of(self, value: Any) -> torch.device:
        """Where a (non-empty) value lives."""

    def start(self, value: torch.Tensor) -> torch.Tensor:
        """The first value of a piece that adds up (:meth:`Accumulator.add_to`)."""
        raise TypeError(f"{type(self).__name__} state does not add up elementwise")


class Sum(StateKind):
    """A tensor that adds up within a process and across ranks.

    Parameters
    ----------
    dtype : torch.dtype
        The value's dtype (float64 sums, int64 counts).

    Examples
    --------
    >>> Sum().merge(torch.ones(2), torch.ones(2))
    tensor([2., 2.])
    """

    described = DESCRIPTION_WIDTH

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        self.dtype = dtype

    def start(self, value: torch.Tensor) -> torch.Tensor:
        return value.to(self.dtype).clone()

    def merge(self, mine: torch.Tensor | None, theirs: torch.Tensor | None) -> torch.Tensor | None:
        if theirs is None:
            return mine
        if mine is None:
            return theirs.clone()
        return mine.add_(theirs.to(mine.device))

    def describe(self, value: torch.Tensor | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        if value.ndim >= DESCRIPTION_WIDTH:
            raise ValueError(f"a Sum state has at most {DESCRIPTION_WIDTH - 1} dimensions, got {value.ndim}")
        return (value.ndim, *value.shape, *(0,) * (DESCRIPTION_WIDTH - 1 - value.ndim))

    def sync(self, value: torch.Tensor | None, agreed: tuple[int, ...], ranks: Ranks) -> SyncSteps:
        shape = agreed[1 : 1 + agreed[0]]
        local = torch.zeros(shape, dtype=torch.float64, device=ranks.device)
        if value is not None:
            local.copy_(value)
        (total,) = yield [local]
        if not self.dtype.is_floating_point:
            total = total.round()
        return total.to(self.dtype)

    def to(self, value: torch.Tensor, device: torch.device) -> torch.Tensor:
        return value.to(device)

    def device_of(self, value: torch.Tensor) -> torch.device:
        return value.device

    def pack(self, value: torch.Tensor) -> torch.Tensor:
        return value.clone()

    def unpack(self, packed: torch.Tensor, device: torch.device | None) -> torch.Tensor:
        return packed.to(device=device, dtype=self.dtype) if device is not None else packed.to(self.dtype).clone()


class Comoments(StateKind):
    """Count, mean and centred co-moment of rows (:class:`~delve.engine.moments.Moments`).

    Parameters
    ----------
    growable : bool
        The trailing features may be fewer on some ranks or in some batches
        (one-hot targets of classes not seen yet): a narrower value is padded
        with zero features, which is exact for features that were zero in
        every row it holds. ``False`` (a layer's outputs): widths must agree.
    """

    def __init__(self, growable: bool = False) -> None:
        self.growable = growable

    def merge(self, mine: Moments | None, theirs: Moments | None) -> Moments | None:
        if theirs is None or theirs.count == 0:
            return mine
        if mine is None:
            return theirs.clone()
        width = max(mine.mean.shape[0], theirs.mean.shape[0])
        if not self.growable and mine.mean.shape[0] != theirs.mean.shape[0]:
            raise ValueError(f"cannot merge co-moments of {theirs.mean.shape[0]} and {mine.mean.shape[0]} features")
        mine = mine.widened(width)
        other = theirs.widened(width)
        mine.absorb(other.mean, other.full_comoment(), other.count)
        return mine

    def describe(self, value: Moments | None) -> tuple[int, ...] | None:
        return None if value is None else (value.mean.shape[0],)

    def agree(self, largest: tuple[int, ...], smallest: tuple[int, ...], where: str) -> tuple[int, ...]:
        if self.growable:
            return largest
        if largest != smallest:
            raise ValueError(
                f"{where}: the ranks recorded different feature sizes ({smallest[0]} and {largest[0]}); "
                "every rank must run the same model"
            )
        return largest

    def sync(self, value: Moments | None, agreed: tuple[int, ...], ranks: Ranks) -> SyncSteps:
        (d,) = agreed
        if value is not None:
            value = value.widened(d)
        count = value.count if value is not None else 0
        first = torch.zeros(d + 1, dtype=torch.float64, device=ranks.device)
        if count:
            first[:d] = value.mean.to(first) * count  # type: ignore[union-attr]
            first[d] = count
        (first,) = yield [first]
        total = round(float(first[d]))
        if total == 0:
            return None
        mean = first[:d] / total
        rows, columns = upper_indices(d, ranks.device)
        upper = torch.zeros(rows.shape[0], dtype=torch.float64, device=ranks.device)
        if count:
            upper.copy_(value.packed()["comoment_upper"])  # type: ignore[union-attr]
            shift = value.mean.to(mean) - mean  # type: ignore[union-attr]
            upper.add_(shift[rows] * shift[columns], alpha=float(count))
        (upper,) = yield [upper]
        return Moments.from_packed(mean, upper, total, feature_blocks(d))

    def to(self, value: Moments, device: torch.device) -> Moments:
        if value.mean.device == device:
            return value
        return Moments(value.mean.to(device), value.comoment.to(device), value.blocks, value.count)

    def device_of(self, value: Moments) -> torch.device:
        return value.mean.device

    def pack(self, value: Moments) -> dict[str, torch.Tensor]:
        return {"count": torch.tensor(value.count, dtype=torch.int64), **value.packed()}

    def unpack(self, packed: dict[str, torch.Tensor], device: torch.device | None) -> Moments:
        mean = packed["mean"].to(device=device) if device is not None else packed["mean"]
        upper = packed["comoment_upper"].to(mean.device)
        return Moments.from_packed(mean, upper, int(packed["count"]), feature_blocks(mean.shape[0]))


class Fact(StateKind):
    """A non-negative integer every holder agrees on, such as a width (``None`` until known).

    Merged within a process and across ranks by the maximum (``growable``) or
    by requiring equality; across ranks it travels with the shapes, so it
    costs no round of its own.

    Examples
    --------
    >>> Fact(growable=True).merge(3, 5), Fact().merge(None, 4)
    (5, 4)
    """

    def __init__(self, growable: bool = False) -> None:
        self.growable = growable

    def merge(self, mine: int | None, theirs: int | None) -> int | None:
        if mine is None or theirs is None:
            return theirs if mine is None else mine
        if mine != theirs and not self.growable:
            raise ValueError(f"cannot merge states that disagree on a fixed value ({mine} and {theirs})")
        return max(mine, theirs)

    def describe(self, value: int | None) -> tuple[int, ...] | None:
        return None if value is None else (int(value),)

    def agree(self, largest: tuple[int, ...], smallest: tuple[int, ...], where: str) -> tuple[int, ...]:
        if self.growable:
            return largest
        return super().agree(largest, smallest, where)

    def sync(self, value: int | None, agreed: tuple[int, ...], ranks: Ranks) -> SyncSteps:
        return agreed[0]
        yield []  # a generator that needs no round: the value came with the shapes

    def to(self, value: int, device: torch.device) -> int:
        return value

    def device_of(self, value: int) -> torch.device:
        return torch.device("cpu")

    def pack(self, value: int) -> torch.Tensor:
        return torch.tensor(int(value), dtype=torch.int64)

    def unpack(self, packed: torch.Tensor, device: torch.device | None) -> int:
        return int(packed)


class BottomK(StateKind):
    """Rows with uniform random keys; the ``size`` smallest keys are kept.

    A value is ``(keys, rows)``: ``(m,)`` float64 keys and ``(m, d)`` float64
    rows, ``m <= size``; with ``max_bytes`` instead of ``size``, as many rows
    as that many bytes of float64 rows hold. Infinite keys mark rows of rejected batches, never
    part of the sample. The smallest keys of a union are a uniform sample of
    the union, so merging (and merging across ranks) gives the sample one
    process would have drawn from all the rows.

    Examples
    --------
    >>> kind = BottomK(2)
    >>> mine = (torch.tensor([0.5, 0.1], dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64))
    >>> theirs = (torch.tensor([0.25], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))
    >>> keys, rows = kind.merge(mine, theirs)
    >>> keys.tolist(), rows.flatten().tolist()
    ([0.1, 0.25], [0.0, 1.0])
    """

    def __init__(self, size: int | None = None, max_bytes: int | None = None) -> None:
        if (size is None) == (max_bytes is None):
            raise ValueError("give BottomK either size or max_bytes")
        self.size = size
        self.max_bytes = max_bytes

    def capacity(self, width: int) -> int:
        """Rows kept when each is ``width`` float64 values wide."""
        if self.size is not None:
            return self.size
        return max(1, self.max_bytes // (8 * max(width, 1)))  # type: ignore[operator]

    def merge(
        self, mine: tuple[torch.Tensor, torch.Tensor] | None, theirs: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if theirs is None:
            return mine
        if mine is None:
            return theirs[0].clone(), theirs[1].clone()
        keys = torch.cat([mine[0], theirs[0].to(mine[0].device)])
        rows = torch.cat([mine[1], theirs[1].to(mine[1].device)])
        return self.smallest(keys, rows)

    def smallest(self, keys: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of the :meth:`capacity` smallest keys."""
        size = self.capacity(rows.shape[-1])
        if keys.shape[0] <= size:
            return keys, rows
        keys, index = torch.topk(keys, size, largest=False)
        return keys, rows[index]

    def describe(self, value: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[int, ...] | None:
        return None if value is None else (value[1].shape[1],)

    def sync(self, value: tuple[torch.Tensor, torch.Tensor] | None, agreed: tuple[int, ...], ranks: Ranks) -> SyncSteps:
        # Each rank fills only its own slot of a (world, size) buffer: one sum assembles them all.
        (d,) = agreed
        size = self.capacity(d)
        shape = (ranks.world, size)
        keys = torch.zeros(shape, dtype=torch.float64, device=ranks.device)
        rows = torch.zeros((*shape, d), dtype=torch.float64, device=ranks.device)
        present = torch.zeros(shape, dtype=torch.float64, device=ranks.device)
        if value is not None:
            own = value[0].to(ranks.device)
            valid = torch.isfinite(own)
            kept = own.shape[0]
            keys[ranks.rank, :kept] = torch.where(valid, own, torch.zeros_like(own))
            rows[ranks.rank, :kept] = value[1].to(ranks.device)
            present[ranks.rank, :kept] = valid.to(torch.float64)
        keys, rows, present = yield [keys, rows, present]
        available = int((present > 0).sum())
        if not available:
            return None
        keys = torch.where(present > 0, keys, torch.full_like(keys, math.inf)).flatten()
        keys, index = torch.topk(keys, min(size, available), largest=False)
        return keys, rows.flatten(0, 1)[index]

    def to(self, value: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return value[0].to(device), value[1].to(device)

    def device_of(self, value: tuple[torch.Tensor, torch.Tensor]) -> torch.device:
        return value[0].device

    def pack(self, value: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"keys": value[0].clone(), "rows": value[1].clone()}

    def unpack(self, packed: dict[str, torch.Tensor], device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
        keys, rows = packed["keys"], packed["rows"]
        if device is not None:
            return keys.to(device), rows.to(device)
        return keys.clone(), rows.clone()
