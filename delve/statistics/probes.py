"""Live linear probes: a ridge least-squares probe fitted from moments, and its R² and accuracy.

From the training-mode moments of an epoch (:class:`~delve.engine.probe.ProbeMoments`:
the pooled features ``x`` and targets ``y`` of every sample, one-hot rows for
classes), with ``Sxx`` and ``Sxy`` the population (co)variances::

    W      = (Sxx + lambda I)^-1 Sxy,      lambda = probe_ridge * trace(Sxx) / d
    y_hat  = (x - mean_train(x)) W + mean_train(y)

so ``lambda`` scales with the features' own variance and ``probe_ridge`` is
free of units. A class is the argmax of ``y_hat``. Then, on a mode's samples
(the training samples themselves, in-sample, or the evaluation samples)::

    R^2 = 1 - sum ||y - y_hat||^2 / sum ||y - mean(y)||^2

(scikit-learn's ``r2_score`` with ``multioutput="variance_weighted"``), exact
from that mode's moments, since both sums are quadratic in ``[x, y]``. The
accuracy needs each sample's prediction: it is computed on the sample the
accumulator keeps, which holds every sample of the mode while they fit in
:data:`~delve.engine.probe.PROBE_SAMPLE_BYTES` and a uniform sample beyond.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..engine.moments import Moments
from ..engine.probe import ProbeMoments

__all__ = ["Probe", "fit_probe", "r2_score_from_moments", "accuracy_on_rows", "probe_values"]


@dataclass(frozen=True)
class Probe:
    """A fitted probe: ``y_hat = (x - feature_mean) weights + target_mean`` (float64)."""

    weights: torch.Tensor
    feature_mean: torch.Tensor
    target_mean: torch.Tensor

    @property
    def width(self) -> int:
        """Columns of the targets (classes, or real values)."""
        return self.weights.shape[1]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, width)`` predictions for ``(n, d)`` features."""
        return (x.to(self.weights) - self.feature_mean) @ self.weights + self.target_mean


def _moments(moments: Moments, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population covariance of ``[x, y]``, padded with zero target columns up to ``width``."""
    moments = moments.widened(width)
    return moments.mean, moments.full_comoment() / moments.count


def fit_probe(moments: Moments, features: int, ridge: float, width: int | None = None) -> Probe:
    """The ridge probe of the module docstring, from the moments of ``[x, y]`` (``features`` columns of ``x``).

    Examples
    --------
    >>> from delve.engine.probe import ProbeMoments
    >>> from delve.engine.accumulator import Batch
    >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64)
    >>> probe = ProbeMoments()
    >>> probe.accumulate(Batch(x, samples=x, targets=2 * x + 1))
    >>> fit_probe(probe.joint, features=1, ridge=0.0).weights
    tensor([[2.]], dtype=torch.float64)
    """
    d = features
    mean, covariance = _moments(moments, width or moments.mean.shape[0])
    sxx, sxy = covariance[:d, :d], covariance[:d, d:]
    penalty = ridge * float(torch.trace(sxx)) / d
    if penalty > 0:
        weights = torch.linalg.solve(sxx + penalty * torch.eye(d, dtype=sxx.dtype, device=sxx.device), sxy)
    else:  # no ridge (or a layer without variance): the least-squares solution of smallest norm
        weights = torch.linalg.pinv(sxx, hermitian=True) @ sxy
    return Probe(weights, mean[:d].clone(), mean[d:].clone())


def r2_score_from_moments(moments: Moments, probe: Probe) -> float:
    """R² of ``probe`` on the samples whose ``[x, y]`` moments these are; NaN when ``y`` does not vary."""
    d = probe.feature_mean.shape[0]
    mean, covariance = _moments(moments, max(d + probe.width, moments.mean.shape[0]))
    width = mean.shape[0] - d
    weights = torch.zeros(d, width, dtype=torch.float64, device=mean.device)
    weights[:, : probe.width] = probe.weights
    target_mean = torch.zeros(width, dtype=torch.float64, device=mean.device)
    target_mean[: probe.width] = probe.target_mean
    sxx, sxy, syy = covariance[:d, :d], covariance[:d, d:], covariance[d:, d:]
    # Residual e = y - (x - mean_train(x)) W - mean_train(y): its mean and covariance over these samples.
    residual_mean = mean[d:] - (mean[:d] - probe.feature_mean) @ weights - target_mean
    residual_spread = torch.trace(syy) - 2 * torch.trace(weights.T @ sxy) + torch.trace(weights.T @ sxx @ weights)
    total = float(torch.trace(syy))
    if total <= 0:
        return math.nan
    return 1.0 - (float(residual_spread) + float(residual_mean @ residual_mean)) / total


def accuracy_on_rows(rows: torch.Tensor, probe: Probe) -> float:
    """Share of ``[x, class]`` rows whose predicted class is right; NaN without rows."""
    if rows.shape[0] == 0:
        return math.nan
    d = probe.feature_mean.shape[0]
    predicted = probe.predict(rows[:, :d]).argmax(dim=1)
    return float((predicted == rows[:, d].long()).double().mean())


def probe_values(summary: Any) -> dict[str, float]:
    """``{"r2": ..., "accuracy": ...}`` of a layer and mode (the ``probe`` statistic); empty without targets.

    Missing (NaN) when no probe can be fitted: the layer did not train this
    epoch, or its training samples had other kinds of targets.
    """
    own: ProbeMoments = summary.accumulators["probe"]
    own.settle()
    if own.joint is None or own.joint.count == 0:
        return {}
    names = ("r2", "accuracy") if own.classes else ("r2",)
    fitted = (summary.fitted_on or {}).get("probe")
    if (
        fitted is None
        or fitted.joint is None
        or fitted.joint.count == 0
        or (fitted.features, fitted.target_kind) != (own.features, own.target_kind)
    ):
        return dict.fromkeys(names, math.nan)
    probe = fit_probe(fitted.joint, fitted.features, float(summary.options.get("probe_ridge", 1e-3)))  # type: ignore[arg-type]
    values = {"r2": r2_score_from_moments(own.joint, probe)}
    if own.classes:
        rows = own.sample[1] if own.sample is not None else torch.zeros(0, own.features + 1)  # type: ignore[operator]
        finite = own.sample[0].isfinite() if own.sample is not None else None
        values["accuracy"] = accuracy_on_rows(rows[finite] if finite is not None else rows, probe)
    return values
