"""The accumulator protocol: what a layer keeps per mode, with its state declared once.

Every statistic rests on accumulators fed, batch by batch, from the forward
hooks: the covariance that every layer has, and those a statistic asks for
(the ``embed`` sample, the dormant units' activity, a user's own). An
accumulator subclasses :class:`Accumulator`, declares each piece of its state
with :meth:`Accumulator.add_state` and a *state kind* from
:mod:`delve.engine.states` (how the piece merges within a process and across
ranks), and implements :meth:`Accumulator.accumulate`. Resetting, copying,
merging, merging across ``torch.distributed`` ranks and ``state_dict`` are
generic over that declaration, so a new accumulator plugs in without touching
the tracker, the cross-rank merge or the checkpoint code.

Examples
--------
A user accumulator that counts the rows of accepted batches:

>>> import torch
>>> from delve.engine.accumulator import Accumulator, Batch
>>> from delve.engine.states import Sum
>>> class RowCount(Accumulator):
...     def __init__(self):
...         super().__init__()
...         self.add_state("rows", Sum(torch.int64))
...     def accumulate(self, batch):
...         self.add_to("rows", batch.masked(torch.tensor(batch.n)))
>>> counter = RowCount()
>>> counter.accumulate(Batch(torch.ones(5, 3)))
>>> counter.accumulate(Batch(torch.ones(2, 3), accepted=False))
>>> int(counter.rows)
5
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch

from .states import StateKind

__all__ = ["Accumulator", "AccumulatorContext", "Batch", "StateTable", "check_accumulator_class"]

A = TypeVar("A", bound="Accumulator")


@dataclass(frozen=True)
class AccumulatorContext:
    """What an accumulator may need to know when it is made: where, for whom, how.

    Attributes
    ----------
    layer, mode : str
        The layer's name and ``"train"`` or ``"eval"``.
    seed : int
        Seed of the tracker's random streams on this rank (random accumulators
        derive their own from it, the layer and the mode).
    device : torch.device or None
        Where state lives; ``None``: where the first batch arrives.
    precision : str
        The product precision asked for (:mod:`delve.engine.precision`).
    sample_size : int
        Rows kept by accumulators that keep a bounded sample of rows.
    """

    layer: str = ""
    mode: str = "train"
    seed: int = 0
    device: torch.device | None = None
    precision: str = "auto"
    sample_size: int = 500


@dataclass
class Batch:
    """One forward pass of a layer, as its accumulators receive it.

    Attributes
    ----------
    rows : torch.Tensor
        ``(..., d)`` observation rows kept for this layer (leading dimensions
        are samples), on the state's device.
    accepted : bool or torch.Tensor
        The covariance's verdict, given before any other accumulator sees the
        batch: ``False`` when it held NaN or Inf. A Python bool on a CPU, a
        0-d bool tensor on accelerators (reading it would synchronise).
    n : int
        Number of rows (counted once, when the batch is made; given when ``rows`` holds none).
    samples : torch.Tensor or None
        ``(N, d)``: the output averaged per sample over positions and tokens
        (for live probes), when targets were set for this forward pass.
    targets : torch.Tensor or None
        ``(N, c)`` float64 target rows (one-hot for class indices).
    labels : torch.Tensor or None
        ``(N,)`` float64 class indices, for class targets.
    mapped : MappedInput or None
        On the input route (:mod:`delve.engine.input_route`): the input rows
        that produced the kept output rows, and the layer's weights; the
        covariance merges them instead of ``rows``, which other accumulators
        read (it may then hold no rows at all while ``n`` says how many).
    """

    rows: torch.Tensor
    accepted: bool | torch.Tensor = True
    n: int = -1
    samples: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    mapped: Any = None

    def __post_init__(self) -> None:
        if self.n < 0:
            d = self.rows.shape[-1] if self.rows.ndim else 0
            self.n = self.rows.numel() // d if d else 0

    @property
    def features(self) -> int:
        """``d``, the width of a row."""
        return self.rows.shape[-1]

    def masked(self, value: torch.Tensor) -> torch.Tensor:
        """``value``, or zeros like it when the batch was rejected, without reading the verdict back.

        Examples
        --------
        >>> Batch(torch.ones(2, 2), accepted=False).masked(torch.tensor([1.0, 2.0]))
        tensor([0., 0.])
        """
        accepted = self.accepted
        if accepted is True:
            return value
        if accepted is False:
            return torch.zeros_like(value)
        return torch.where(accepted, value, torch.zeros_like(value))


class StateTable:
    """The declared state of one accumulator: name -> kind, and whether it persists."""

    def __init__(self) -> None:
        self.kinds: dict[str, StateKind] = {}
        self.persistent: dict[str, bool] = {}


class Accumulator(ABC):
    """Per layer and mode state fed with every recorded batch; the base of every accumulator.

    Subclasses declare their state in ``__init__`` with :meth:`add_state`
    and implement :meth:`accumulate`. Everything else works from the
    declaration: :meth:`reset`, :meth:`merge`, :meth:`copy`,
    :meth:`state_dict`, :meth:`load_state_dict` and the merge across ranks
    (:func:`delve.engine.sync.merge_across_ranks`). A subclass
    that needs settings (a device, a sample size, a seed) overrides
    :meth:`create`, which the tracker calls with the layer's
    :class:`AccumulatorContext`.

    ``accumulate`` runs inside the forward hook: it must not synchronise with
    the device (no ``.item()``, no ``bool(tensor)``) and must honour
    ``batch.accepted`` (:meth:`Batch.masked` helps), so that every statistic
    of a layer rests on the same rows.

    Attributes
    ----------
    state_version : int
        Version of :meth:`state_dict`'s layout; :attr:`migrations` bring an
        older saved state up to it, step by step.
    """

    state_version: ClassVar[int] = 1
    migrations: ClassVar[dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {}

    def __init__(self) -> None:
        self.states = StateTable()
        self.context = AccumulatorContext()

    # ------------------------------------------------------------ declaration
    def add_state(self, name: str, kind: StateKind, persistent: bool = True) -> None:
        """Declare a piece of state: its name (an attribute, empty until first set) and its kind.

        Parameters
        ----------
        name : str
            The attribute holding the state; ``None`` while it is empty.
        kind : StateKind
            How it merges across batches and ranks and how it is saved
            (:class:`~delve.engine.states.Sum`, :class:`~delve.engine.states.Moments`,
            :class:`~delve.engine.states.BottomK`).
        persistent : bool
            Part of :meth:`state_dict` (default).
        """
        if not isinstance(kind, StateKind):
            raise ValueError(f"state {name!r}: the kind must be a delve.engine.states.StateKind, got {kind!r}")
        if not name.isidentifier() or name in ("states", "context") or name in self.states.kinds:
            raise ValueError(f"state names must be new identifiers other than 'states' and 'context', got {name!r}")
        self.states.kinds[name] = kind
        self.states.persistent[name] = persistent
        setattr(self, name, None)

    @classmethod
    def create(cls: type[A], context: AccumulatorContext) -> A:
        """A new, empty accumulator for ``context`` (a layer and mode); ``cls()`` unless overridden."""
        accumulator = cls()
        accumulator.context = context
        return accumulator

    # ---------------------------------------------------------------- update
    def add_to(self, name: str, value: torch.Tensor) -> None:
        """Add ``value`` to a summed state in place; an empty state starts from it (in the kind's dtype)."""
        current = getattr(self, name)
        if current is None:
            setattr(self, name, self.states.kinds[name].start(value))
        else:
            current.add_(value)

    @abstractmethod
    def accumulate(self, batch: Batch) -> None:
        """Merge one batch into the state (inside the forward hook: no host synchronisation)."""

    # --------------------------------------------------- hooks for subclasses
    def settle(self) -> None:
        """Bring the declared state up to date before it is read (e.g. merge rows held back)."""
        return None

    def restored(self) -> None:
        """Re-derive anything kept beside the declared state after it was replaced."""
        return None

    # ------------------------------------------------------ generic operations
    def values(self) -> dict[str, Any]:
        """The declared state, name -> value (settled first)."""
        self.settle()
        return {name: getattr(self, name) for name in self.states.kinds}

    def assign(self, values: dict[str, Any]) -> None:
        """Replace the declared state with ``values`` (name -> value), then :meth:`restored`."""
        for name in self.states.kinds:
            setattr(self, name, values.get(name))
        self.restored()

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.assign({})

    def empty_like(self: A) -> A:
        """A new, empty accumulator with the same settings (random streams continue, where there are any)."""
        return type(self).create(self.context)

    def merge(self: A, other: A) -> A:
        """Add ``other``'s accumulation to this one, in place; returns ``self``."""
        mine, theirs = self.values(), other.values()
        self.assign({name: kind.merge(mine[name], theirs[name]) for name, kind in self.states.kinds.items()})
        return self

    def copy(self: A) -> A:
        """An independent accumulator holding the same state."""
        copy = self.empty_like()
        copy.load_state_dict(self.state_dict())
        return copy

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """The persistent state, tensors and plain values only (loads with ``weights_only=True``).

        An empty accumulator saves no declared state and no version.
        """
        state: dict[str, Any] = {}
        for name, value in self.values().items():
            if self.states.persistent[name] and value is not None:
                state[name] = self.states.kinds[name].pack(value)
        if state:
            state["version"] = torch.tensor(self.state_version, dtype=torch.int64)
        state.update(self.extra_state())
        return state

    def load_state_dict(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        """Restore what :meth:`state_dict` produced, of this layout or an older one.

        The declared state goes to ``device`` (else the context's device,
        else where it was saved).
        """
        state = migrate(type(self), state)
        device = device or self.context.device
        values = {name: kind.unpack(state[name], device) for name, kind in self.states.kinds.items() if name in state}
        self.assign(values)
        self.load_extra_state(state)

    def extra_state(self) -> dict[str, Any]:
        """Saved beside the declared state (generator states, rows held back); empty by default."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""
        return None

    def __repr__(self) -> str:
        declared = ", ".join(f"{name}: {type(kind).__name__}" for name, kind in self.states.kinds.items())
        return f"{type(self).__name__}({declared})"


def migrate(cls: type[Accumulator], state: dict[str, Any]) -> dict[str, Any]:
    """``state`` brought to ``cls.state_version`` through ``cls.migrations``.

    A state without a version entry is version 0.
    """
    version = int(state.get("version", 0))
    if version > cls.state_version:
        raise ValueError(
            f"the {cls.__name__} state has layout version {version}, newer than this delve's "
            f"{cls.state_version}; upgrade delve to load it"
        )
    while version < cls.state_version:
        step = cls.migrations.get(version)
        if step is None:
            raise ValueError(f"no migration of a {cls.__name__} state from layout version {version}")
        state = step(state)
        version += 1
    return {**state, "version": version}


def check_accumulator_class(accumulator: object, owner: str) -> None:
    """Raise ``ValueError`` unless ``accumulator`` is a concrete :class:`Accumulator` subclass.

    Called when a statistic is registered, so a wrong accumulator fails there
    with a message instead of inside a forward hook.

    Examples
    --------
    >>> check_accumulator_class(dict, "statistic 'x'")
    Traceback (most recent call last):
    ...
    ValueError: statistic 'x': accumulator must be a subclass of delve.Accumulator, got dict
    """
    if not (isinstance(accumulator, type) and issubclass(accumulator, Accumulator)):
        shown = accumulator.__name__ if isinstance(accumulator, type) else repr(accumulator)
        raise ValueError(f"{owner}: accumulator must be a subclass of delve.Accumulator, got {shown}")
    if inspect.isabstract(accumulator):
        missing = ", ".join(sorted(accumulator.__abstractmethods__))
        raise ValueError(f"{owner}: accumulator {accumulator.__name__} does not implement {missing}")
