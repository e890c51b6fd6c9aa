"""Fitting a PCA layer: an observer that accumulates its input and decomposes it on demand.

Modelled on ``torch.ao.quantization`` observers: :class:`CovarianceObserver`
accumulates rows while the network trains and computes the eigenbasis in one
call (:meth:`CovarianceObserver.fit`); the layers of :mod:`delve.pca.layers`
only project. The accumulation is the tracker's exact float64 covariance, with
no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..common.torch_features import autocast_enabled
from ..engine.covariance import TorchCovarianceMatrix
from ..statistics.metrics import intrinsic_dimensionality
from ..statistics.spectra import spectrum

__all__ = ["Eigenbasis", "CovarianceObserver", "decompose", "select_components", "random_orthonormal"]


@dataclass(frozen=True)
class Eigenbasis:
    """One fit: the moments and their decomposition (float64, descending eigenvalues).

    ``vectors`` are eigenvectors of the covariance (centred fit) or of the
    uncentred second moment ``E[x x^T]``.
    """

    mean: torch.Tensor
    covariance: torch.Tensor
    values: torch.Tensor
    vectors: torch.Tensor


def decompose(covariance: torch.Tensor, mean: torch.Tensor, centering: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors of the covariance, or of ``E[x x^T]`` without centring.

    Examples
    --------
    >>> values, _ = decompose(torch.eye(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64), centering=False)
    >>> values.tolist()
    [3.0, 1.0]
    """
    moment = covariance.to(torch.float64)
    if not centering:
        mean = mean.to(torch.float64)
        moment = moment + torch.outer(mean, mean)
    result = spectrum(moment, vectors=True)
    return result.values, result.vectors  # type: ignore[return-value]


def select_components(values: torch.Tensor, threshold: float) -> int:
    """How many leading directions explain ``threshold`` of the variance (at least one).

    Examples
    --------
    >>> select_components(torch.tensor([6.0, 3.0, 1.0], dtype=torch.float64), 0.9)
    2
    """
    return max(1, intrinsic_dimensionality(values.to(torch.float64), threshold))


def random_orthonormal(
    d: int,
    k: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """A ``(d, k)`` matrix with orthonormal columns, uniformly distributed (Haar).

    The QR factorisation of a Gaussian matrix, with the signs of ``R``'s
    diagonal moved into ``Q`` so the distribution does not depend on the QR
    implementation's sign convention (Mezzadri 2007).

    Parameters
    ----------
    d, k : int
        Ambient dimension and number of directions, ``1 <= k <= d``.
    generator : torch.Generator, optional
        A CPU generator, for reproducible directions.
    dtype : torch.dtype
        Floating dtype of the result.

    Examples
    --------
    >>> q = random_orthonormal(5, 3, torch.Generator().manual_seed(0))
    >>> torch.allclose(q.T @ q, torch.eye(3, dtype=torch.float64))
    True
    """
    if not (isinstance(d, int) and isinstance(k, int) and 1 <= k <= d):
        raise ValueError(f"need integers 1 <= k <= d, got d={d!r}, k={k!r}")
    gaussian = torch.randn(d, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return (q * signs).to(dtype)


class CovarianceObserver:
    """Accumulate rows while training; decompose them once when asked.

    Examples
    --------
    >>> observer = CovarianceObserver()
    >>> observer.update(torch.randn(100, 3) * torch.tensor([5.0, 1.0, 0.1]))
    >>> basis = observer.fit(centering=True)
    >>> basis.values.shape, observer.pending
    (torch.Size([3]), False)
    """

    def __init__(self) -> None:
        self._accumulator = TorchCovarianceMatrix()
        self.pending = False

    @torch.no_grad()
    def update(self, rows: torch.Tensor) -> None:
        """Merge ``(..., d)`` rows (no gradient, no host synchronisation)."""
        if torch.is_inference_mode_enabled():
            # State allocated under inference mode could not be updated in
            # place by a later ordinary forward.
            with torch.inference_mode(False):
                self._update(rows.detach())
        else:
            self._update(rows.detach())

    def _update(self, rows: torch.Tensor) -> None:
        accumulator = self._accumulator
        if accumulator.device is not None and accumulator.device != rows.device:
            # The module moved (.to(device)) since the accumulation began.
            moved = TorchCovarianceMatrix(device=rows.device)
            moved.load_state_dict(accumulator.state_dict())
            self._accumulator = accumulator = moved
        if autocast_enabled(rows.device.type):
            # Autocast would run the Gram product in half precision.
            with torch.autocast(rows.device.type, enabled=False):
                accumulator.update_rows(rows)
        else:
            accumulator.update_rows(rows)
        self.pending = True

    @torch.no_grad()
    def fit(self, centering: bool) -> Eigenbasis | None:
        """Decompose what was accumulated since the last fit and start afresh; ``None`` without rows."""
        self.pending = False
        accumulator = self._accumulator
        if accumulator.count == 0:
            return None
        mean = accumulator.mean.clone()
        covariance = accumulator.fix()
        accumulator.reset()
        values, vectors = decompose(covariance, mean, centering)
        return Eigenbasis(mean, covariance, values, vectors)

    def state_dict(self) -> dict[str, Any]:
        """The partial accumulation, tensors only."""
        return {"pending": self.pending, "accumulator": self._accumulator.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self._accumulator = TorchCovarianceMatrix()
        self._accumulator.load_state_dict(state["accumulator"])
        self.pending = bool(state["pending"])
