"""The statistics a tracker can log: one :class:`Statistic` record each, keyed as in ``stats=[...]``.

A record carries everything about its statistic: the key and logged name, the
function that computes it from a :class:`LayerSummary` (the covariance, its one
shared eigendecomposition and whatever else was accumulated), its bounds,
whether it is averaged over layers, whether higher is better, and the extra
accumulator it needs with that accumulator's merge across ranks. Everything
else (averages, plot axes, recomputation from saved covariances, TensorBoard
sections, the tables below) is derived from the registry :data:`STATISTICS`,
so a statistic registered with :func:`register_statistic` appears in every
writer. The logged name of a value is ``<mode>-<statistic name>_<layer>``
(see :mod:`delve.common.naming`).

The table of built-in statistics (derived from the registry when the module
is imported):

"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import metrics
from ..engine.accumulator import FeatureAccumulator
from ..engine.activity import DEFAULT_DORMANT_TAU, MeanAbsoluteActivity, dormant_fraction
from .._compat.spellings import strip_mode_suffix
from .metrics import Spectrum

__all__ = [
    "FeatureAccumulator",
    "LayerSummary",
    "Statistic",
    "STATISTICS",
    "NONFINITE_BATCHES",
    "ROWS",
    "register_statistic",
    "resolve_stats",
    "statistic_names",
    "by_name",
    "statistics_table",
]

#: Logged per layer and mode by the tracker itself: batches left out for NaN or Inf.
NONFINITE_BATCHES = "nonfinite-batches"
#: Logged per layer and mode under a cost budget: the rows the statistics rest on.
ROWS = "rows"


@dataclass
class LayerSummary:
    """Everything known about one layer and mode at the end of an epoch.

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
    sample : torch.Tensor or None
        Reservoir sample of observation rows, when ``embed`` is tracked.
    extras : dict
        Further per-layer accumulations, keyed by the statistic that asked.
    """

    covariance: torch.Tensor
    spectrum: Spectrum
    mean: torch.Tensor
    threshold: float
    count: int
    sample: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return int(self.covariance.shape[0])


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
    needs_sample : bool
        Whether it reads the reservoir sample of rows (``summary.sample``).
    scalar : bool
        ``False`` for arrays, which only array-capable writers store.
    accumulator : callable, optional
        Factory of a :class:`FeatureAccumulator` fed on every recorded batch;
        the statistic finds it as ``summary.extras[key]``.

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
    needs_sample: bool = False
    scalar: bool = True
    accumulator: Callable[[], FeatureAccumulator] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key or self.key.endswith("_eval"):
            raise ValueError(f"statistic keys must be non-empty strings not ending in '_eval', got {self.key!r}")
        if not isinstance(self.name, str) or not self.name or "_" in self.name:
            raise ValueError(f"statistic names must be non-empty and may not contain '_': {self.name!r}")
        if not callable(self.compute):
            raise ValueError(f"compute of statistic {self.key!r} must be callable")

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
        return self.scalar and self.accumulator is None and not self.needs_sample


def _embed(summary: LayerSummary) -> np.ndarray:
    if summary.sample is None or summary.spectrum.vectors is None:
        return np.empty((0, 2))
    coords = metrics.embed_top2(summary.sample, summary.mean, summary.spectrum.vectors)
    return coords.cpu().numpy()


def _dormant(summary: LayerSummary) -> float:
    activity = summary.extras["dorm"]
    return dormant_fraction(activity.mean_abs(), DEFAULT_DORMANT_TAU)


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
    clash = by_name(statistic.name)
    if clash is not None and clash.key != statistic.key:
        raise ValueError(f"statistic {clash.key!r} already logs under the name {statistic.name!r}")
    STATISTICS[statistic.key] = statistic
    return statistic


def by_name(name: str) -> Statistic | None:
    """The statistic logged under ``name`` (or whose layer average is ``name``), if any.

    Examples
    --------
    >>> by_name("average-saturation").key, by_name("test_accuracy") is None
    ('lsat', True)
    """
    for statistic in STATISTICS.values():
        if name in (statistic.name, statistic.average_name):
            return statistic
    return None


for _statistic in (
    Statistic(
        "lsat",
        "saturation",
        lambda s: metrics.saturation(s.spectrum.values, s.threshold),
        "k / d, in [0, 1]",
        bounds=(0.0, 1.0),
        averaged=True,
    ),
    Statistic(
        "idim",
        "intrinsic-dimensionality",
        lambda s: metrics.intrinsic_dimensionality(s.spectrum.values, s.threshold),
        "k: the fewest eigen-directions holding ``sat_threshold`` (0.99) of the variance",
        bounds=(0.0, None),
    ),
    Statistic(
        "cov",
        "covariance-matrix",
        lambda s: s.covariance.cpu().numpy(),
        "Q itself (array; ``npy`` writer)",
        scalar=False,
    ),
    Statistic(
        "det",
        "covariance-log-determinant",
        lambda s: metrics.log_determinant(s.spectrum.values),
        "natural log of det(Q)",
    ),
    Statistic(
        "trc",
        "covariance-trace",
        lambda s: metrics.covariance_trace(s.covariance),
        "sum of the diagonal of Q",
        bounds=(0.0, None),
    ),
    Statistic(
        "dtrc",
        "diagonal-trace",
        lambda s: metrics.diagonal_trace(s.spectrum.values),
        "sum of the eigenvalues of Q",
        bounds=(0.0, None),
    ),
    Statistic(
        "embed",
        "embedded-sample",
        _embed,
        "sampled outputs on the top two eigenvectors (array)",
        needs_vectors=True,
        needs_sample=True,
        scalar=False,
    ),
    Statistic(
        "erank",
        "effective-rank",
        lambda s: metrics.effective_rank(s.spectrum.values),
        "exp of the entropy of the normalised eigenvalues",
        bounds=(0.0, None),
    ),
    Statistic(
        "pr",
        "participation-ratio",
        lambda s: metrics.participation_ratio(s.spectrum.values),
        "(sum of eigenvalues)² / sum of their squares",
        bounds=(0.0, None),
    ),
    Statistic(
        "alpha",
        "spectral-decay",
        lambda s: metrics.spectral_decay_exponent(s.spectrum.values),
        "power-law decay exponent of the eigenvalues",
    ),
    Statistic(
        "dorm",
        "dormant-fraction",
        _dormant,
        "share of units with near-zero mean output",
        bounds=(0.0, 1.0),
        higher_is_better=False,
        accumulator=MeanAbsoluteActivity,
    ),
):
    register_statistic(_statistic)


def resolve_stats(stats: str | Iterable[str]) -> list[str]:
    """Validate ``stats=`` and map 0.1.x spellings (``lsat_eval``) to keys.

    Both modes are always recorded, so a ``<key>_eval`` entry means the same as
    ``<key>``. Order is kept and duplicates dropped.

    Examples
    --------
    >>> resolve_stats(["lsat", "lsat_eval", "idim"])
    ['lsat', 'idim']
    """
    if isinstance(stats, str):
        stats = [stats]
    resolved: list[str] = []
    for entry in stats:
        if not isinstance(entry, str):
            raise ValueError(
                f"stats entries must be strings, got {entry!r}; accepted keys: {', '.join(sorted(STATISTICS))}"
            )
        key = strip_mode_suffix(entry)
        if key not in STATISTICS:
            accepted = ", ".join(sorted(STATISTICS))
            raise ValueError(
                f"unknown statistic {entry!r}; accepted keys: {accepted} "
                "(each may carry the 0.1.x suffix '_eval')"
            )
        if key not in resolved:
            resolved.append(key)
    if not resolved:
        raise ValueError("stats is empty; give at least one of: " + ", ".join(sorted(STATISTICS)))
    return resolved


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


__doc__ = (__doc__ or "") + statistics_table() + "\n"
