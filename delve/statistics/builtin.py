"""The built-in statistics, one :class:`~delve.statistics.registry.Statistic` record each.

Registered when :mod:`delve.statistics` is imported. A statistic of your own
is a record like these, registered with
:func:`~delve.statistics.registry.register_statistic`; the table in the
README and the documentation lists the built-ins.
"""

from __future__ import annotations

import numpy as np

from ..engine.activity import MeanAbsoluteActivity
from ..engine.probe import ProbeMoments
from ..engine.sample import ReservoirSample
from . import metrics
from .probes import probe_values
from .registry import LayerSummary, Part, Statistic, register_statistic

__all__ = ["BUILTIN_KEYS"]


def _embed(summary: LayerSummary) -> np.ndarray:
    rows = summary.accumulators["embed"].rows  # type: ignore[attr-defined]
    if rows is None or summary.spectrum.vectors is None:
        return np.empty((0, 2))
    return metrics.embed_top2(rows, summary.mean, summary.spectrum.vectors).cpu().numpy()


def _dormant(summary: LayerSummary) -> float:
    activity = summary.accumulators["dorm"]
    return metrics.dormant_fraction(activity.mean_abs(), metrics.DEFAULT_DORMANT_TAU)  # type: ignore[attr-defined]


_BUILTINS = (
    Statistic(
        "lsat",
        "saturation",
        lambda s: metrics.saturation(s.spectrum.values, s.threshold),
        "k / d, in [0, 1]",
        bounds=(0.0, 1.0),
        averaged=True,
        needs_rows=True,
    ),
    Statistic(
        "idim",
        "intrinsic-dimensionality",
        lambda s: metrics.intrinsic_dimensionality(s.spectrum.values, s.threshold),
        "k: the fewest eigen-directions holding ``sat_threshold`` (0.99) of the variance",
        bounds=(0.0, None),
        needs_rows=True,
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
        needs_rows=True,
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
        scalar=False,
        accumulator=ReservoirSample,
    ),
    Statistic(
        "erank",
        "effective-rank",
        lambda s: metrics.effective_rank(s.spectrum.values),
        "exp of the entropy of the normalised eigenvalues",
        bounds=(0.0, None),
        needs_rows=True,
    ),
    Statistic(
        "pr",
        "participation-ratio",
        lambda s: metrics.participation_ratio(s.spectrum.values),
        "(sum of eigenvalues)² / sum of their squares",
        bounds=(0.0, None),
        needs_rows=True,
    ),
    Statistic(
        "alpha",
        "spectral-decay",
        lambda s: metrics.spectral_decay_exponent(s.spectrum.values),
        "power-law decay exponent of the eigenvalues",
        needs_rows=True,
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
    Statistic(
        "probe",
        "probe",
        probe_values,
        "R² (``probe-r2``) and class accuracy (``probe-accuracy``) of a ridge probe of the outputs averaged "
        "per sample, fitted live on the epoch's training samples",
        accumulator=ProbeMoments,
        parts=(
            Part("r2", "R² of the probe's predictions (training: in-sample)", (None, 1.0), higher_is_better=True),
            Part("accuracy", "share of samples whose class the probe predicts", (0.0, 1.0), higher_is_better=True),
        ),
    ),
)

for _statistic in _BUILTINS:
    register_statistic(_statistic)

#: The keys of the built-in statistics, in registry order.
BUILTIN_KEYS = tuple(statistic.key for statistic in _BUILTINS)
