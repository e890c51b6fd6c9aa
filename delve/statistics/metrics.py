"""Statistics of a layer's feature covariance, all from one eigendecomposition.

Definitions (population covariance ``Q`` of every observation since the last
reset, eigenvalues ``l_1 >= ... >= l_d`` with negatives clipped to 0):

* intrinsic dimensionality ``k``: the smallest ``k`` with
  ``(l_1 + ... + l_k) / sum(l) >= threshold``; ``0`` when ``sum(l) == 0``.
* saturation: ``k / d``, in ``[0, 1]``.
* covariance trace: ``sum_i Q_ii`` (read from the matrix).
* diagonal trace: ``sum_i l_i`` (read from the spectrum).
* log-determinant: ``sum_i log(l_i)``, natural log. The determinant itself
  under- or overflows for any realistic width (a 512-dim covariance with unit
  eigenvalues of 0.1 has determinant 1e-512), so it is reported as a logarithm.
  It is ``-inf`` when ``Q`` is numerically singular: an eigenvalue at or below
  ``d * eps * l_1`` counts as zero.

Every function of a spectrum takes it sorted in *descending* order, as
:mod:`delve.statistics.spectra` returns it, so a caller decomposes each matrix
once and shares it. :func:`embed_top2` also reads rows, and
:func:`dormant_fraction` the units' mean ``|x|``.
"""

from __future__ import annotations

import math

import torch

from ..common.validation import check_fraction, check_number, check_optional_int

__all__ = [
    "intrinsic_dimensionality",
    "saturation",
    "covariance_trace",
    "diagonal_trace",
    "log_determinant",
    "embed_top2",
    "effective_rank",
    "participation_ratio",
    "spectral_decay_exponent",
    "dormant_fraction",
    "DEFAULT_DORMANT_TAU",
]


def intrinsic_dimensionality(values: torch.Tensor, threshold: float = 0.99) -> int:
    """Smallest ``k`` whose top-``k`` eigenvalues explain ``threshold`` of the variance.

    Parameters
    ----------
    values : torch.Tensor
        Eigenvalues in descending order, non-negative.
    threshold : float
        Fraction of the total variance, in ``(0, 1]``.

    Returns
    -------
    int
        ``k`` in ``[1, d]``, or ``0`` when the total variance is zero.

    Examples
    --------
    >>> intrinsic_dimensionality(torch.tensor([6.0, 3.0, 1.0]), 0.9)
    2
    >>> intrinsic_dimensionality(torch.zeros(4), 0.99)
    0
    """
    check_fraction("threshold", threshold)
    cumulative = torch.cumsum(values.to(torch.float64), dim=-1)
    # The total is the last partial sum, so threshold 1.0 is reached exactly
    # at the last non-zero eigenvalue despite rounding.
    total = cumulative[-1]
    if not bool(total > 0):
        return 0
    below = torch.count_nonzero(cumulative < threshold * total)
    return min(int(below) + 1, values.shape[-1])


def saturation(values: torch.Tensor, threshold: float = 0.99) -> float:
    """Intrinsic dimensionality divided by the feature size ``d``.

    Examples
    --------
    >>> saturation(torch.tensor([6.0, 3.0, 1.0, 0.0]), 0.9)
    0.5
    """
    d = values.shape[-1]
    return intrinsic_dimensionality(values, threshold) / d if d else 0.0


def covariance_trace(covariance: torch.Tensor) -> float:
    """Sum of the diagonal of the covariance: the total variance.

    Examples
    --------
    >>> covariance_trace(torch.tensor([[2.0, 1.0], [1.0, 3.0]]))
    5.0
    """
    return float(torch.diagonal(covariance).sum())


def diagonal_trace(values: torch.Tensor) -> float:
    """Sum of the eigenvalues, i.e. the trace of the diagonalised covariance.

    Examples
    --------
    >>> diagonal_trace(torch.tensor([3.0, 2.0]))
    5.0
    """
    return float(values.sum())


def log_determinant(values: torch.Tensor) -> float:
    """Natural log of the covariance determinant, ``-inf`` if numerically singular.

    Examples
    --------
    >>> round(log_determinant(torch.full((512,), 0.1, dtype=torch.float64)), 3)
    -1178.924
    """
    values = values.to(torch.float64)
    d = values.shape[-1]
    if d == 0:
        return 0.0
    floor = d * torch.finfo(torch.float64).eps * float(values[0])
    if float(values[-1]) <= floor:
        return -math.inf
    return float(torch.log(values).sum())


def embed_top2(
    samples: torch.Tensor, mean: torch.Tensor, vectors: torch.Tensor
) -> torch.Tensor:
    """Project centred samples onto the two leading eigenvectors.

    Parameters
    ----------
    samples : torch.Tensor
        ``(m, d)`` observations.
    mean : torch.Tensor
        ``(d,)`` mean used for centring.
    vectors : torch.Tensor
        ``(d, d)`` eigenvectors as columns, descending eigenvalue order.

    Returns
    -------
    torch.Tensor
        ``(m, 2)`` coordinates (``(m, 1)`` for a one-feature layer).

    Examples
    --------
    >>> x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    >>> embed_top2(x, torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    tensor([[ 1.,  0.],
            [-1.,  0.]], dtype=torch.float64)
    """
    centred = samples.to(vectors.dtype) - mean.to(vectors.dtype)
    return centred @ vectors[:, :2]


def effective_rank(values: torch.Tensor) -> float:
    """Effective rank of a spectrum (Roy and Vetterli 2007).

    With ``p_i = l_i / sum_j l_j`` the normalised eigenvalues, the effective
    rank is ``exp(H)``, ``H = -sum_i p_i log p_i`` their Shannon entropy in
    nats (``0 log 0 = 0``). It lies in ``[1, d]``: 1 when one direction holds
    all the variance, ``d`` when the variance is spread evenly.

    Reference: O. Roy and M. Vetterli, "The effective rank: a measure of
    effective dimensionality", 15th European Signal Processing Conference
    (EUSIPCO), 2007.

    Parameters
    ----------
    values : torch.Tensor
        Eigenvalues, non-negative (any order).

    Returns
    -------
    float
        The effective rank; ``0.0`` when the total variance is zero (a dead
        layer has no direction of variance, as its intrinsic dimensionality 0).

    Examples
    --------
    >>> effective_rank(torch.tensor([2.0, 2.0, 0.0]))
    2.0
    >>> round(effective_rank(torch.tensor([3.0, 1.0])), 4)  # exp(-(.75 ln .75 + .25 ln .25))
    1.7548
    >>> effective_rank(torch.zeros(3))
    0.0
    """
    values = values.to(torch.float64).clamp_min(0)
    total = values.sum()
    if not bool(total > 0):
        return 0.0
    p = values / total
    p = p[p > 0]
    return float(torch.exp(-(p * torch.log(p)).sum()))


def participation_ratio(values: torch.Tensor) -> float:
    """Participation ratio ``(sum_i l_i)^2 / sum_i l_i^2`` of a spectrum.

    Like the effective rank it lies in ``[1, d]`` (1: a single direction,
    ``d``: isotropic) but weighs large eigenvalues more. It is the
    dimensionality measure used for neural population activity, e.g. in
    P. Gao et al., "A theory of multineuronal dimensionality, dynamics and
    measurement", bioRxiv 214262, 2017.

    Parameters
    ----------
    values : torch.Tensor
        Eigenvalues, non-negative (any order).

    Returns
    -------
    float
        The ratio; ``0.0`` when the total variance is zero.

    Examples
    --------
    >>> participation_ratio(torch.tensor([3.0, 1.0]))  # 16 / 10
    1.6
    >>> participation_ratio(torch.zeros(2))
    0.0
    """
    values = values.to(torch.float64).clamp_min(0)
    squares = (values * values).sum()
    if not bool(squares > 0):
        return 0.0
    return float(values.sum() ** 2 / squares)


def spectral_decay_exponent(values: torch.Tensor, top: int | None = None) -> float:
    """Power-law decay exponent ``alpha`` of a spectrum, ``l_i ~ i^(-alpha)``.

    The least-squares slope of ``log l_i`` against ``log i`` (``i = 1, 2, ...``),
    negated, as in alpha-ReQ (K. K. Agrawal, A. K. Mondal, A. Ghosh and
    B. A. Richards, "alpha-ReQ: Assessing representation quality in
    self-supervised learning by measuring eigenspectrum decay", NeurIPS 2022).

    Which eigenvalues enter the fit: the leading ones, ``l_1 .. l_m``, where
    ``m`` counts the numerically positive eigenvalues (``l_i > d * eps * l_1``,
    the floor :func:`log_determinant` uses, float64 ``eps``) among the first
    ``top`` (all ``d`` by default). Exactly-zero and round-off eigenvalues
    would otherwise dominate a log-log fit.

    Parameters
    ----------
    values : torch.Tensor
        Eigenvalues in descending order, non-negative.
    top : int, optional
        Fit only the ``top`` largest eigenvalues (at least 2).

    Returns
    -------
    float
        ``alpha``; larger means faster decay, 0 a flat spectrum. ``0.0`` when
        fewer than two eigenvalues are positive (a dead layer, or a single
        direction), where no slope can be fitted.

    Examples
    --------
    >>> spectral_decay_exponent(torch.tensor([4.0, 1.0]))  # log 4 / log 2
    2.0
    >>> i = torch.arange(1, 51, dtype=torch.float64)
    >>> round(spectral_decay_exponent(3.0 * i ** -1.5), 6)
    1.5
    >>> spectral_decay_exponent(torch.tensor([1.0, 0.0, 0.0]))
    0.0
    """
    top = check_optional_int("top", top, minimum=2)
    values = values.to(torch.float64)
    d = values.shape[-1]
    if d < 2:
        return 0.0
    floor = d * torch.finfo(torch.float64).eps * values[0].clamp_min(0)
    leading = values[:top] if top is not None else values
    m = int(torch.count_nonzero(leading > floor))
    if m < 2:
        return 0.0
    log_rank = torch.log(torch.arange(1, m + 1, dtype=torch.float64, device=values.device))
    log_value = torch.log(leading[:m])
    centred_rank = log_rank - log_rank.mean()
    slope = (centred_rank * (log_value - log_value.mean())).sum() / (centred_rank * centred_rank).sum()
    return float(-slope)


#: The dormancy threshold of Sokar et al.'s experiments (``dorm``).
DEFAULT_DORMANT_TAU = 0.025


def dormant_fraction(mean_abs: torch.Tensor, tau: float = DEFAULT_DORMANT_TAU) -> float:
    """Fraction of tau-dormant units (Sokar et al. 2023).

    Unit ``i`` is dormant when ``m_i <= tau * (1/d) sum_k m_k``, with ``m_i``
    its mean absolute activation: the score ``s_i = m_i / mean(m)`` is at most
    ``tau``. Reference: G. Sokar, R. Agarwal, P. S. Castro and U. Evci, "The
    dormant neuron phenomenon in deep reinforcement learning", ICML 2023.

    Parameters
    ----------
    mean_abs : torch.Tensor
        ``(d,)`` mean ``|activation|`` per unit.
    tau : float
        Dormancy threshold on the score, ``>= 0`` (0.025 in the paper's
        experiments; ``tau = 0`` counts only units that never fire).

    Returns
    -------
    float
        In ``[0, 1]``. A dead layer (every ``m_i = 0``) is entirely dormant:
        ``1.0`` (each unit satisfies ``0 <= tau * 0``). ``0.0`` for ``d = 0``.

    Examples
    --------
    >>> dormant_fraction(torch.tensor([1.0, 1.0, 0.02, 0.0]))  # mean 0.505, limit 0.012625
    0.25
    >>> dormant_fraction(torch.zeros(3))
    1.0
    """
    tau = check_number("tau", tau, minimum=0)
    mean_abs = mean_abs.to(torch.float64)
    d = mean_abs.shape[-1]
    if d == 0:
        return 0.0
    limit = tau * mean_abs.mean()
    return float(torch.count_nonzero(mean_abs <= limit)) / d
