"""The statistics a tracker can log, keyed as in ``stats=[...]``.

Each :class:`Statistic` turns a :class:`LayerSummary` (the covariance, its one
shared eigendecomposition and whatever else was accumulated) into a value. The
logged name of a value is ``<mode>-<statistic name>_<layer>``, see
:func:`delve.naming.value_name`.

=========  ================================  ====================================================
key        logged name                       value
=========  ================================  ====================================================
``lsat``   ``saturation``                    intrinsic dimensionality / feature size
``idim``   ``intrinsic-dimensionality``      smallest k explaining ``sat_threshold``
``cov``    ``covariance-matrix``             the (d, d) covariance (arrays, not in CSV)
``det``    ``covariance-log-determinant``    natural log of det(Q), see metrics
``trc``    ``covariance-trace``              sum of the diagonal of Q
``dtrc``   ``diagonal-trace``                sum of the eigenvalues of Q
``embed``  ``embedded-sample``               reservoir sample on the top-2 eigenvectors
``erank``  ``effective-rank``                exp of the entropy of the normalised eigenvalues
``pr``     ``participation-ratio``           (sum of eigenvalues)^2 / sum of squared eigenvalues
``alpha``  ``spectral-decay``                power-law decay exponent of the eigenvalues (alpha-ReQ)
``dorm``   ``dormant-fraction``              share of units with mean abs(x) <= 0.025 x the layer's mean
=========  ================================  ====================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from . import metrics
from .activity import DEFAULT_DORMANT_TAU, MeanAbsoluteActivity, dormant_fraction
from .metrics import Spectrum

__all__ = [
    "FeatureAccumulator",
    "LayerSummary",
    "Statistic",
    "STATISTICS",
    "register_statistic",
    "resolve_stats",
]


class FeatureAccumulator(Protocol):
    """Extra per-layer state a statistic needs beyond the covariance.

    One instance is made per layer and mode; ``update`` receives the same
    ``(..., d)`` observation rows as the covariance, on the hot path, so it
    must not synchronise with the device. ``accepted`` is the covariance's
    verdict on the batch (``False`` when it held NaN or Inf): a Python bool on
    a CPU, a 0-d bool tensor on accelerators. Honour it, so that every
    statistic of a layer rests on the same rows.
    """

    def update(self, rows: torch.Tensor, accepted: bool | torch.Tensor) -> None: ...

    def reset(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def merge(self, other: Any) -> Any:
        """Add another instance's rows, in place (used to put an epoch back when computing it failed)."""
        ...


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
    """One loggable statistic.

    Attributes
    ----------
    key : str
        The short key used in ``stats=[...]``.
    name : str
        The name used in logged value names and file names.
    compute : callable
        ``LayerSummary -> float | np.ndarray``.
    needs_vectors : bool
        Whether it needs eigenvectors (``eigh`` instead of ``eigvalsh``).
    scalar : bool
        ``False`` for arrays, which only array-capable writers store.
    accumulator : callable, optional
        Factory of a :class:`FeatureAccumulator` fed on every recorded batch;
        the statistic finds it as ``summary.extras[key]``.
    """

    key: str
    name: str
    compute: Callable[[LayerSummary], Any]
    needs_vectors: bool = False
    scalar: bool = True
    accumulator: Callable[[], FeatureAccumulator] | None = None


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
    """Make a statistic available under its key in ``stats=[...]``.

    Parameters
    ----------
    statistic : Statistic
        The record; its ``name`` may not contain ``_``.
    replace : bool
        Allow replacing a statistic already registered under the same key
        (built-ins included); without it a duplicate key raises.

    Raises
    ------
    ValueError
        If the key is taken and ``replace`` is false, or the name holds ``_``.

    Examples
    --------
    >>> from delve.statistics import STATISTICS, Statistic, register_statistic
    >>> _ = register_statistic(Statistic("top", "top-eigenvalue",
    ...                                  lambda s: float(s.spectrum.values[0])))
    >>> resolve_stats(["lsat", "top"])
    ['lsat', 'top']
    >>> del STATISTICS["top"]  # keep the doctest from changing the global registry
    """
    if "_" in statistic.name:
        raise ValueError(f"statistic names may not contain '_': {statistic.name!r}")
    if statistic.key in STATISTICS and not replace:
        raise ValueError(
            f"a statistic is already registered under the key {statistic.key!r} "
            f"({STATISTICS[statistic.key].name!r}); pass replace=True to replace it"
        )
    STATISTICS[statistic.key] = statistic
    return statistic


for _statistic in (
    Statistic("lsat", "saturation", lambda s: metrics.saturation(s.spectrum.values, s.threshold)),
    Statistic(
        "idim",
        "intrinsic-dimensionality",
        lambda s: metrics.intrinsic_dimensionality(s.spectrum.values, s.threshold),
    ),
    Statistic("cov", "covariance-matrix", lambda s: s.covariance.cpu().numpy(), scalar=False),
    Statistic("det", "covariance-log-determinant", lambda s: metrics.log_determinant(s.spectrum.values)),
    Statistic("trc", "covariance-trace", lambda s: metrics.covariance_trace(s.covariance)),
    Statistic("dtrc", "diagonal-trace", lambda s: metrics.diagonal_trace(s.spectrum.values)),
    Statistic("embed", "embedded-sample", _embed, needs_vectors=True, scalar=False),
    Statistic("erank", "effective-rank", lambda s: metrics.effective_rank(s.spectrum.values)),
    Statistic("pr", "participation-ratio", lambda s: metrics.participation_ratio(s.spectrum.values)),
    Statistic("alpha", "spectral-decay", lambda s: metrics.spectral_decay_exponent(s.spectrum.values)),
    Statistic("dorm", "dormant-fraction", _dormant, accumulator=MeanAbsoluteActivity),
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
        key = entry[: -len("_eval")] if entry.endswith("_eval") else entry
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
    """Map keys to their logged names."""
    return {key: STATISTICS[key].name for key in keys}
