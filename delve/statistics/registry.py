"""The statistic registry: one :class:`Statistic` record per statistic, keyed as in ``stats=[...]``.

A record carries everything about its statistic: the key and logged name, the
function that computes it from a :class:`LayerSummary` (the covariance, its one
shared eigendecomposition and whatever else was accumulated), its bounds,
whether it is averaged over layers, whether higher is better, and the
accumulator it needs beyond the covariance (:mod:`delve.engine.accumulator`).
Everything else (averages, plot axes, recomputation from saved covariances,
TensorBoard sections, tables) is derived from the registry :data:`STATISTICS`,
so a statistic registered with :func:`register_statistic` appears in every
writer. The built-in records are in :mod:`delve.statistics.builtin`. The
logged name of a value is ``<mode>-<statistic name>_<layer>`` (see
:mod:`delve.common.naming`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .._compat.spellings import strip_mode_suffix
from ..engine.accumulator import Accumulator, check_accumulator_class
from .spectra import Spectrum

__all__ = [
    "LayerSummary",
    "Statistic",
    "Part",
    "STATISTICS",
    "NONFINITE_BATCHES",
    "ROWS",
    "register_statistic",
    "resolve_stats",
    "statistic_key",
    "statistic_names",
    "logged_name",
    "by_name",
    "statistics_table",
]

#: Logged per layer and mode by the tracker itself: batches left out for NaN or Inf.
NONFINITE_BATCHES = "nonfinite-batches"
#: Logged per layer and mode under a cost budget: the rows the statistics rest on.
ROWS = "rows"


@dataclass(frozen=True)
class LayerSummary:
    """Everything known about one layer and mode at the end of an epoch: what a statistic computes from.

    Attributes
    ----------
    covariance : torch.Tensor
        ``(d, d)`` float64 population covariance.
    spectrum : Spectrum
        Its eigendecomposition (descending), shared by all statistics.
    mean : torch.Tensor
        ``(d,)`` running mean.
    threshold : float
        The tracker's ``sat_threshold``.
    count : int
        Number of observation rows behind the covariance.
    accumulators : mapping of str -> Accumulator
        The layer's accumulators, keyed by the statistic that asked for each
        (the covariance under ``"covariance"``).
    mode : str
        ``"train"`` or ``"eval"``.
    fitted_on : mapping of str -> Accumulator, optional
        The same layer's accumulators in training mode this epoch (what a
        probe is fitted on); ``None`` when the layer did not train. In
        training mode, the layer's own.
    options : mapping
        The tracker's settings statistics may read (``probe_ridge``).
    """

    covariance: torch.Tensor
    spectrum: Spectrum
    mean: torch.Tensor
    threshold: float
    count: int
    accumulators: Mapping[str, Accumulator]
    mode: str = "train"
    fitted_on: Mapping[str, Accumulator] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return int(self.covariance.shape[0])


@dataclass(frozen=True)
class Part:
    """One of the values a statistic with several logs, as ``<statistic name>-<part name>``.

    Attributes
    ----------
    name : str
        Appended to the statistic's name (no ``_``).
    description : str
        One line on what the value is.
    bounds : (float or None, float or None)
        Lowest and highest possible value; ``None`` where unbounded.
    higher_is_better : bool or None
        Which direction is good news, where one is.
    """

    name: str
    description: str = ""
    bounds: tuple[float | None, float | None] = (None, None)
    higher_is_better: bool | None = None


@dataclass(frozen=True)
class Statistic:
    """One loggable statistic, with every fact about it.

    Attributes
    ----------
    key : str
        The short key used in ``stats=[...]``.
    name : str
        The name used in logged value names and file names (no ``_``).
    compute : callable
        ``LayerSummary -> float | np.ndarray``.
    description : str
        One line on what the value is (tables, documentation).
    bounds : (float or None, float or None)
        Lowest and highest possible value; ``None`` where unbounded. A
        statistic bounded on both sides is drawn on a fixed axis.
    averaged : bool
        ``average_sat=True`` also logs ``<mode>-average-<name>``, its mean
        over layers; ``layerwise_sat=False`` keeps only that mean.
    higher_is_better : bool or None
        Which direction is good news, where one is (``None``: neither).
    needs_vectors : bool
        Whether it needs eigenvectors (``eigh`` instead of ``eigvalsh``).
    needs_rows : bool
        Whether it reads the spectrum's shape, which fewer rows than features
        cannot show (``n`` rows span at most ``n - 1`` directions): from fewer,
        it is logged as missing (NaN), never as a small value.
    scalar : bool
        ``False`` for arrays, which only array-capable writers store.
    accumulator : type, optional
        An :class:`~delve.engine.accumulator.Accumulator` subclass fed with
        every recorded batch of every layer; the statistic finds it as
        ``summary.accumulators[key]``.
    parts : tuple of Part
        For a statistic that logs several values: ``compute`` returns a
        mapping ``part name -> value`` (a part left out is not logged), each
        logged as ``<name>-<part name>`` with the part's own bounds.

    Examples
    --------
    >>> top = Statistic("top", "top-eigenvalue", lambda s: float(s.spectrum.values[0]), bounds=(0.0, None))
    >>> top.bounded, top.from_covariance
    (False, True)
    """

    key: str
    name: str
    compute: Callable[[LayerSummary], Any]
    description: str = ""
    bounds: tuple[float | None, float | None] = (None, None)
    averaged: bool = False
    higher_is_better: bool | None = None
    needs_vectors: bool = False
    needs_rows: bool = False
    scalar: bool = True
    accumulator: type[Accumulator] | None = None
    parts: tuple[Part, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key or self.key.endswith("_eval"):
            raise ValueError(f"statistic keys must be non-empty strings not ending in '_eval', got {self.key!r}")
        if not isinstance(self.name, str) or not self.name or "_" in self.name:
            raise ValueError(f"statistic names must be non-empty and may not contain '_': {self.name!r}")
        if not callable(self.compute):
            raise ValueError(f"compute of statistic {self.key!r} must be callable")
        if self.accumulator is not None:
            check_accumulator_class(self.accumulator, f"statistic {self.key!r}")
            if self.key == "covariance":
                raise ValueError("the key 'covariance' names every layer's covariance accumulator; choose another")

    @property
    def logged_names(self) -> tuple[str, ...]:
        """The names its per-layer values are logged under: its name, or one per part."""
        return tuple(f"{self.name}-{part.name}" for part in self.parts) or (self.name,)

    def part(self, name: str) -> Statistic:
        """The record of one logged value of a statistic with parts, as writers read it (bounds, direction)."""
        for part in self.parts:
            if f"{self.name}-{part.name}" == name:
                return replace(
                    self,
                    key=f"{self.key}-{part.name}",
                    name=name,
                    description=part.description,
                    bounds=part.bounds,
                    higher_is_better=part.higher_is_better,
                    averaged=False,
                    parts=(),
                )
        raise KeyError(name)

    @property
    def bounded(self) -> bool:
        """Bounded on both sides: drawn on a fixed axis."""
        return self.bounds[0] is not None and self.bounds[1] is not None

    @property
    def average_name(self) -> str:
        """Logged name of its mean over layers (with ``averaged``)."""
        return f"average-{self.name}"

    @property
    def from_covariance(self) -> bool:
        """Whether a saved covariance matrix is all it needs (it can be recomputed later)."""
        return self.scalar and self.accumulator is None


STATISTICS: dict[str, Statistic] = {}


def register_statistic(statistic: Statistic, replace: bool = False) -> Statistic:
    """Make a statistic available under its key in ``stats=[...]`` and in every writer.

    Parameters
    ----------
    statistic : Statistic
        The record.
    replace : bool
        Allow replacing a statistic already registered under the same key
        (built-ins included); without it a duplicate key raises.

    Raises
    ------
    ValueError
        If the key is taken and ``replace`` is false, or another statistic
        already logs under the same name.

    Examples
    --------
    >>> from delve.statistics.registry import STATISTICS, Statistic, register_statistic
    >>> _ = register_statistic(Statistic("top", "top-eigenvalue",
    ...                                  lambda s: float(s.spectrum.values[0])))
    >>> resolve_stats(["lsat", "top"])
    ['lsat', 'top']
    >>> del STATISTICS["top"]  # keep the doctest from changing the global registry
    """
    if not isinstance(statistic, Statistic):
        raise ValueError(f"expected a delve.statistics.registry.Statistic, got {type(statistic).__name__}")
    existing = STATISTICS.get(statistic.key)
    if existing is not None and not replace:
        raise ValueError(
            f"a statistic is already registered under the key {statistic.key!r} "
            f"({existing.name!r}); pass replace=True to replace it"
        )
    for name in (statistic.name, *statistic.logged_names):
        clash = _owner(name)
        if clash is not None and clash.key != statistic.key:
            raise ValueError(f"statistic {clash.key!r} already logs under the name {name!r}")
    STATISTICS[statistic.key] = statistic
    return statistic


def by_name(name: str) -> Statistic | None:
    """The statistic logged under ``name`` (or whose layer average is ``name``), if any.

    Examples
    --------
    >>> by_name("average-saturation").key, by_name("test_accuracy") is None
    ('lsat', True)
    """
    statistic = _owner(name)
    if statistic is not None and statistic.parts and name in statistic.logged_names:
        return statistic.part(name)
    return statistic


def _owner(name: str) -> Statistic | None:
    """The registered statistic that logs ``name`` (itself, its average or one of its parts)."""
    for statistic in STATISTICS.values():
        if name in (statistic.name, statistic.average_name, *statistic.logged_names):
            return statistic
    return None


def resolve_stats(stats: str | Iterable[str]) -> list[str]:
    """Validate ``stats=``: keys or logged names (``lsat`` or ``saturation``), 0.1.x spellings too.

    Both modes are always recorded, so a ``<key>_eval`` entry of delve 0.1.x
    means the same as ``<key>``. Order is kept and duplicates dropped.

    Examples
    --------
    >>> resolve_stats(["lsat", "lsat_eval", "intrinsic-dimensionality"])
    ['lsat', 'idim']
    """
    if isinstance(stats, str):
        stats = [stats]
    resolved: list[str] = []
    for entry in stats:
        key = statistic_key(entry)
        if key not in resolved:
            resolved.append(key)
    if not resolved:
        raise ValueError("stats is empty; give at least one of: " + ", ".join(sorted(STATISTICS)))
    return resolved


def statistic_key(entry: object) -> str:
    """The key of a statistic named by its key, its logged name or a 0.1.x spelling; ``ValueError`` otherwise.

    Examples
    --------
    >>> statistic_key("saturation"), statistic_key("idim_eval")
    ('lsat', 'idim')
    """
    if isinstance(entry, str):
        key = strip_mode_suffix(entry)
        if key in STATISTICS:
            return key
        statistic = by_name(key)
        if statistic is not None and statistic.name == key:
            return statistic.key
    keys = ", ".join(sorted(STATISTICS))
    names = ", ".join(sorted(s.name for s in STATISTICS.values()))
    raise ValueError(f"unknown statistic {entry!r}; accepted keys: {keys}; or their logged names: {names}")


def logged_name(entry: str) -> str:
    """The logged name of a statistic given by key or name; any other name (an unregistered one) as given.

    For readers of a run's files, which may hold statistics this process
    never registered.

    Examples
    --------
    >>> logged_name("lsat"), logged_name("saturation"), logged_name("my-statistic"), logged_name("probe-r2")
    ('saturation', 'saturation', 'my-statistic', 'probe-r2')
    """
    try:
        key = statistic_key(entry)
    except ValueError:
        return entry
    # A part of a statistic (probe-r2, probe-accuracy) is a logged name of its own, not a registry key.
    return STATISTICS[key].name if key in STATISTICS else entry


def statistic_names(keys: Iterable[str]) -> Mapping[str, str]:
    """Map keys to their logged names.

    Examples
    --------
    >>> statistic_names(["lsat"])
    {'lsat': 'saturation'}
    """
    return {key: STATISTICS[key].name for key in keys}


def statistics_table() -> str:
    """The registry as a reStructuredText table: key, logged name, value.

    Examples
    --------
    >>> print(statistics_table().splitlines()[1])
    key  logged as  value
    """
    rows = [("key", "logged as", "value")] + [
        (f"``{s.key}``", f"``{s.name}``", s.description) for s in STATISTICS.values()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    rule = "  ".join("=" * width for width in widths)
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([rule, lines[0], rule, *lines[1:], rule])


