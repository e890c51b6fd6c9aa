"""The one eigendecomposition per layer and mode that every statistic shares.

:func:`spectra` decomposes many covariances at once (equal sizes batched);
eigenvalues come back in descending order with the negatives that rounding
leaves clipped to 0, as the definitions in :mod:`delve.statistics.metrics`
expect.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

__all__ = ["Spectrum", "eigenvalues", "spectrum", "spectra"]


@dataclass(frozen=True)
class Spectrum:
    """Eigen-decomposition of one covariance matrix.

    Attributes
    ----------
    values : torch.Tensor
        Eigenvalues in descending order, negatives clipped to 0, float64.
    vectors : torch.Tensor or None
        Matching eigenvectors as columns, only when they were requested.
    """

    values: torch.Tensor
    vectors: torch.Tensor | None = None


def _descending(values: torch.Tensor) -> torch.Tensor:
    return values.flip(-1).clamp_min(0)


def eigenvalues(covariance: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric matrix, descending, negatives clipped to 0.

    Examples
    --------
    >>> eigenvalues(torch.diag(torch.tensor([1.0, 3.0, -1e-18], dtype=torch.float64)))
    tensor([3., 1., 0.], dtype=torch.float64)
    """
    return _descending(torch.linalg.eigvalsh(covariance))


def spectrum(covariance: torch.Tensor, vectors: bool = False) -> Spectrum:
    """Decompose one covariance matrix (``eigvalsh`` unless vectors are needed).

    Examples
    --------
    >>> spectrum(torch.eye(3, dtype=torch.float64)).values
    tensor([1., 1., 1.], dtype=torch.float64)
    """
    return spectra([covariance], vectors=vectors)[0]


def spectra(covariances: Iterable[torch.Tensor], vectors: bool = False) -> list[Spectrum]:
    """Decompose many matrices, batching those of equal size and device.

    One batched ``eigvalsh`` (or ``eigh``) call per group of equal-size
    matrices replaces one call per layer.

    Examples
    --------
    >>> out = spectra([torch.eye(2, dtype=torch.float64), 2 * torch.eye(3, dtype=torch.float64)])
    >>> [s.values.tolist() for s in out]
    [[1.0, 1.0], [2.0, 2.0, 2.0]]
    """
    covariances = list(covariances)
    groups: dict[tuple[int, torch.device, torch.dtype], list[int]] = {}
    for index, cov in enumerate(covariances):
        if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
            raise ValueError(f"expected a square matrix, got shape {tuple(cov.shape)}")
        groups.setdefault((cov.shape[0], cov.device, cov.dtype), []).append(index)
    results: list[Spectrum | None] = [None] * len(covariances)
    for indices in groups.values():
        stacked = torch.stack([covariances[i] for i in indices])
        if vectors:
            values, vecs = torch.linalg.eigh(stacked)
            for row, i in enumerate(indices):
                results[i] = Spectrum(_descending(values[row]), vecs[row].flip(-1))
        else:
            values = torch.linalg.eigvalsh(stacked)
            for row, i in enumerate(indices):
                results[i] = Spectrum(_descending(values[row]))
    return results  # type: ignore[return-value]
