"""metrics.py against numpy (eigvalsh, slogdet, eigh) and hand-computed spectra."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import np_cov, np_eigenvalues, np_idim, np_logdet
from hypothesis import given
from hypothesis import strategies as st

from delve import (
    covariance_trace,
    diagonal_trace,
    eigenvalues,
    embed_top2,
    intrinsic_dimensionality,
    log_determinant,
    saturation,
    spectra,
    spectrum,
)


def t64(array) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float64))


def random_covariance(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    rows = rng.standard_normal((4 * d + 10, rank or d)) @ rng.standard_normal((rank or d, d))
    return np_cov(rows)


# --------------------------------------------------------------- eigenvalues
def test_eigenvalues_descending_clipped_and_equal_to_numpy():
    rng = np.random.default_rng(0)
    cov = random_covariance(rng, 20, rank=5)  # rank deficient: tiny negative eigenvalues appear
    got = eigenvalues(t64(cov)).numpy()
    assert np.all(got >= 0)
    assert np.all(np.diff(got) <= 0)
    np.testing.assert_allclose(got, np_eigenvalues(cov), rtol=1e-10, atol=1e-10 * got[0])


# ----------------------------------------------------- intrinsic dimension
HAND_SPECTRA = [
    # (eigenvalues, threshold, idim): cumulative ratios worked out by hand
    ([6.0, 3.0, 1.0], 0.9, 2),  # 0.6, 0.9, 1.0: 0.9 reaches 0.9 exactly
    ([6.0, 3.0, 1.0], 0.91, 3),
    ([6.0, 3.0, 1.0], 0.6, 1),
    ([6.0, 3.0, 1.0], 0.59, 1),
    ([1.0, 1.0, 1.0, 1.0], 0.5, 2),
    ([1.0, 1.0, 1.0, 1.0], 0.51, 3),
    ([5.0, 0.0, 0.0, 0.0], 0.99, 1),
    ([5.0, 0.0, 0.0, 0.0], 1.0, 1),  # threshold 1.0 stops at the last non-zero eigenvalue
    ([4.0, 3.0, 2.0, 1.0, 0.0, 0.0], 1.0, 4),
    ([90.0, 9.0, 0.9, 0.1], 0.99, 2),  # 0.9, 0.99
    ([90.0, 9.0, 0.9, 0.1], 0.999, 3),  # 0.999
]


@pytest.mark.parametrize(("values", "threshold", "expected"), HAND_SPECTRA)
def test_intrinsic_dimensionality_on_hand_computed_spectra(values, threshold, expected):
    assert intrinsic_dimensionality(t64(values), threshold) == expected
    assert saturation(t64(values), threshold) == expected / len(values)


@pytest.mark.parametrize(("values", "threshold", "expected"), HAND_SPECTRA)
def test_hand_spectra_through_a_covariance(values, threshold, expected):
    """A rotated diagonal covariance gives the same answer as its spectrum, and as numpy."""
    rng = np.random.default_rng(len(values))
    q, _ = np.linalg.qr(rng.standard_normal((len(values), len(values))))
    cov = q @ np.diag(values) @ q.T
    cov = (cov + cov.T) / 2
    ratios = np.cumsum(values) / np.sum(values)
    if threshold < 1.0 and np.min(np.abs(ratios - threshold)) > 1e-9:
        # On the boundary (0.9 of [6, 3, 1]) or at threshold 1.0 of a singular
        # matrix, rounding noise of the rotation decides; the spectrum test covers those.
        assert intrinsic_dimensionality(eigenvalues(t64(cov)), threshold) == expected
        assert np_idim(cov, threshold) == expected


@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.99, 0.999])
@pytest.mark.parametrize("seed", range(4))
def test_intrinsic_dimensionality_matches_numpy_definition(threshold, seed):
    rng = np.random.default_rng(seed)
    # A decaying spectrum so every threshold lands on a different k.
    d = 32
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    cov = q @ np.diag(0.8 ** np.arange(d)) @ q.T
    cov = (cov + cov.T) / 2
    values = eigenvalues(t64(cov))
    assert intrinsic_dimensionality(values, threshold) == np_idim(cov, threshold)
    assert saturation(values, threshold) == np_idim(cov, threshold) / d


def test_threshold_one_counts_every_nonzero_direction():
    values = t64([3.0, 2.0, 1e-3, 1e-9])
    assert intrinsic_dimensionality(values, 1.0) == 4
    assert saturation(values, 1.0) == 1.0


@pytest.mark.parametrize("d", [1, 3, 16])
def test_dead_layer_gives_zero_not_nan(d):
    """Zero variance (a dead layer): idim 0 and saturation 0."""
    cov = np_cov(np.full((10, d), 0.25))
    values = eigenvalues(t64(cov))
    assert intrinsic_dimensionality(values, 0.99) == 0
    sat = saturation(values, 0.99)
    assert sat == 0.0 and not math.isnan(sat)
    assert covariance_trace(t64(cov)) == 0.0
    assert log_determinant(values) == -math.inf


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.0001, 2.0])
def test_threshold_outside_range_raises(threshold):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        intrinsic_dimensionality(t64([1.0, 0.5]), threshold)


@given(
    values=st.lists(st.floats(0.0, 1e3, allow_subnormal=False), min_size=1, max_size=12),
    threshold=st.floats(0.01, 1.0),
)
def test_property_idim_is_the_smallest_k_reaching_the_threshold(values, threshold):
    ordered = np.sort(np.asarray(values))[::-1].copy()
    k = intrinsic_dimensionality(t64(ordered), threshold)
    cumulative = np.cumsum(ordered)
    total = cumulative[-1]
    if total == 0:
        assert k == 0
        return
    assert 1 <= k <= len(ordered)
    assert cumulative[k - 1] >= threshold * total * (1 - 1e-12)
    if k > 1:
        assert cumulative[k - 2] < threshold * total * (1 + 1e-12)


# ------------------------------------------------------------------ traces
def test_traces_match_numpy():
    rng = np.random.default_rng(3)
    cov = random_covariance(rng, 12)
    assert covariance_trace(t64(cov)) == pytest.approx(np.trace(cov), rel=1e-14)
    assert diagonal_trace(eigenvalues(t64(cov))) == pytest.approx(np.linalg.eigvalsh(cov).sum(), rel=1e-12)
    # Both traces measure the same total variance.
    assert diagonal_trace(eigenvalues(t64(cov))) == pytest.approx(np.trace(cov), rel=1e-12)


# --------------------------------------------------------------- log det
@pytest.mark.parametrize("d", [2, 10, 64])
def test_log_determinant_matches_slogdet(d):
    rng = np.random.default_rng(d)
    cov = random_covariance(rng, d)
    assert log_determinant(eigenvalues(t64(cov))) == pytest.approx(np_logdet(cov), rel=1e-10, abs=1e-9)


def test_log_determinant_does_not_underflow_in_512_dimensions():
    rng = np.random.default_rng(512)
    d = 512
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    diagonal = rng.uniform(0.05, 0.2, d)  # well conditioned, yet det ~ 1e-500
    cov = q @ np.diag(diagonal) @ q.T
    cov = (cov + cov.T) / 2
    assert np.linalg.det(cov) == 0.0  # the plain determinant underflows
    got = log_determinant(eigenvalues(t64(cov)))
    assert math.isfinite(got)
    assert got == pytest.approx(np.log(diagonal).sum(), rel=1e-10)
    assert got == pytest.approx(np_logdet(cov), rel=1e-10)


def test_singular_covariance_gives_minus_infinity():
    rng = np.random.default_rng(1)
    cov = random_covariance(rng, 8, rank=3)
    assert np.linalg.cond(cov) > 1e12  # numpy agrees it is singular
    assert log_determinant(eigenvalues(t64(cov))) == -math.inf
    assert log_determinant(t64([2.0, 1.0, 0.0])) == -math.inf


def test_log_determinant_of_hand_spectrum():
    assert log_determinant(t64([4.0, 2.0, 0.5])) == pytest.approx(math.log(4.0), rel=1e-15)


# --------------------------------------------------------------- batching
def test_batched_spectra_equal_per_matrix_results():
    rng = np.random.default_rng(4)
    covs = [random_covariance(rng, d) for d in (5, 3, 5, 8, 3, 5)]
    batched = spectra([t64(c) for c in covs])
    assert len(batched) == len(covs)
    for cov, result in zip(covs, batched):
        single = spectrum(t64(cov)).values.numpy()
        np.testing.assert_allclose(result.values.numpy(), single, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(result.values.numpy(), np_eigenvalues(cov), rtol=1e-10, atol=1e-12)
        assert result.vectors is None


def test_batched_vectors_match_numpy_up_to_sign():
    rng = np.random.default_rng(5)
    covs = [random_covariance(rng, 4) for _ in range(3)]
    for cov, result in zip(covs, spectra([t64(c) for c in covs], vectors=True)):
        _, np_vectors = np.linalg.eigh(cov)
        np_vectors = np_vectors[:, ::-1]
        got = result.vectors.numpy()
        for column in range(4):
            assert abs(abs(got[:, column] @ np_vectors[:, column]) - 1) < 1e-9


def test_spectra_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        spectra([torch.zeros(2, 3)])


# ------------------------------------------------------------------- embed
def test_embed_projection_matches_numpy_eigenvectors():
    rng = np.random.default_rng(6)
    rows = rng.standard_normal((200, 5)) @ np.diag([5.0, 3.0, 1.0, 0.5, 0.1]) + 2.0
    cov = np_cov(rows)
    mean = rows.mean(0)
    result = spectrum(t64(cov), vectors=True)
    got = embed_top2(t64(rows[:50]), t64(mean), result.vectors).numpy()
    _, np_vectors = np.linalg.eigh(cov)
    expected = (rows[:50] - mean) @ np_vectors[:, ::-1][:, :2]
    assert got.shape == (50, 2)
    for column in range(2):
        sign = np.sign(got[:, column] @ expected[:, column])
        np.testing.assert_allclose(sign * got[:, column], expected[:, column], rtol=1e-9, atol=1e-9)
    # The coordinates of all rows have the top-2 eigenvalues as variances.
    everything = embed_top2(t64(rows), t64(mean), result.vectors).numpy()
    np.testing.assert_allclose(np.var(everything, axis=0), np_eigenvalues(cov)[:2], rtol=1e-9)


def test_embed_of_a_one_feature_layer():
    rows = t64([[1.0], [3.0]])
    result = spectrum(t64(np_cov(rows.numpy())), vectors=True)
    got = embed_top2(rows, t64([2.0]), result.vectors)
    assert got.shape == (2, 1)
    np.testing.assert_allclose(np.abs(got.numpy()[:, 0]), [1.0, 1.0])
