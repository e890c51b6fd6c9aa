"""Layers that project their input onto its leading eigendirections.

The saturation papers check that the directions saturation ignores carry no
information: a PCA layer placed after a layer lets the network run on only the
eigendirections that explain ``threshold`` of that layer's variance, and the
accuracy barely moves. Randomly chosen directions of the same dimension are the
control: they do change the outputs.

Life cycle of a PCA layer

* **training mode**: the input passes through unchanged while its running
  covariance is merged into a :class:`~delve.engine.covariance.TorchCovarianceMatrix`
  (float64, no host synchronisation).
* **first evaluation forward after training** (or an explicit :meth:`fit`): the
  covariance is decomposed once, the smallest ``k`` eigendirections explaining
  ``threshold`` of the variance are kept (at least one) and the accumulator is
  emptied, so each training phase ("epoch") gets its own fit.
* **evaluation mode**: ``x -> (x - mean) V_k V_k^T + mean`` (``centering=True``)
  or ``x -> x V_k V_k^T`` (``centering=False``, where ``V_k`` are eigenvectors
  of the uncentred second moment ``E[x x^T]``).

The fitted state (mean, covariance, eigenvalues, eigenvectors, the basis in use
and the transformation matrix) lives in buffers, so it travels with
``state_dict()`` and ``.to(device)``; the threshold and any partially
accumulated covariance travel as the module's extra state.

Under ``DistributedDataParallel`` every process fits on its own shard of the
data; load one rank's ``state_dict`` everywhere for identical projections.
``nn.DataParallel`` replicas share one accumulator across threads and are not
supported.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..common.validation import check_fraction, check_int
from .fit import CovarianceObserver, decompose, random_orthonormal, select_components

__all__ = ["LinearPCALayer", "like"]

logger = logging.getLogger("delve")


def like(tensor: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``tensor`` in ``x``'s dtype and device, without a copy when it already is."""
    if tensor.dtype == x.dtype and tensor.device == x.device:
        return tensor
    return tensor.to(device=x.device, dtype=x.dtype)


class LinearPCALayer(nn.Module):
    """Project features (the last dimension) onto their leading eigendirections.

    Parameters
    ----------
    in_features : int
        Size ``d`` of the last input dimension.
    threshold : float, default 0.99
        Fraction of the variance, in ``(0, 1]``, the kept directions explain:
        ``k`` is the intrinsic dimensionality of :mod:`delve.statistics.metrics` (at
        least 1).
    keepdim : bool, default True
        ``True`` returns the projection in the input space (``d`` features);
        ``False`` returns its ``k`` coordinates ``(x - mean) V_k``.
    verbose : bool, default False
        Log each fit (``k``, ``d``) at INFO level to the ``delve`` logger.
    gradient_epoch_start : int, default 20
        Accepted for delve 0.1.x scripts, where it was stored but unused; it
        has no effect.
    centering : bool, default True
        Decompose the covariance and project around the mean; ``False``
        decomposes the uncentred second moment and projects through the
        origin.

    Attributes
    ----------
    n_components : int
        ``k``, the number of directions in use (``d`` before the first fit).
    sat : float
        ``100 * k / d``, the saturation in percent, as in delve 0.1.x.
    in_dim, fs_dim : int
        delve 0.1.x names of ``k`` and ``d``.
    epoch : int
        Number of fits so far.

    Examples
    --------
    >>> import torch
    >>> layer = LinearPCALayer(4)
    >>> basis = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]])
    >>> x = torch.randn(256, 2) @ basis + 3.0  # lies in a 2-dim affine subspace
    >>> _ = layer(x)                            # training mode: accumulate
    >>> _ = layer.eval()
    >>> torch.allclose(layer(x), x, atol=1e-4)  # the first eval forward fits
    True
    >>> layer.n_components
    2
    """

    _feature_dim = -1

    def __init__(
        self,
        in_features: int,
        threshold: float = 0.99,
        keepdim: bool = True,
        verbose: bool = False,
        gradient_epoch_start: int = 20,
        centering: bool = True,
    ) -> None:
        super().__init__()
        d = check_int("in_features", in_features, minimum=1)
        self.in_features = d
        self._threshold = check_fraction("threshold", threshold)
        self.keepdim = bool(keepdim)
        self.verbose = bool(verbose)
        self.gradient_epoch_start = gradient_epoch_start
        self._centering = bool(centering)
        self.epoch = 0

        f64 = torch.float64
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("n_components_", torch.tensor(d, dtype=torch.int64))
        self.register_buffer("mean", torch.zeros(d, dtype=f64))
        self.register_buffer("covariance", torch.zeros(d, d, dtype=f64))
        self.register_buffer("eigenvalues", torch.zeros(d, dtype=f64))
        self.register_buffer("eigenvectors", torch.eye(d, dtype=f64))
        # The first n_components columns span the subspace projected onto
        # (eigenvectors, or random directions after an injection).
        self.register_buffer("basis", torch.eye(d, dtype=f64))
        self.register_buffer("transformation_matrix", torch.eye(d))
        self.register_buffer("offset", torch.zeros(d))

        # Python mirrors of the buffers above, so forward never reads a
        # device value back.
        self._fitted = False
        self._k = d
        self._warned = False
        self._observer = CovarianceObserver()
        self.register_load_state_dict_post_hook(_refresh_mirrors)

    # -------------------------------------------------------------- settings
    @property
    def threshold(self) -> float:
        """Fraction of variance kept; setting it re-selects ``k`` from the fitted spectrum."""
        return self._threshold

    @threshold.setter
    def threshold(self, threshold: float) -> None:
        self._threshold = check_fraction("threshold", threshold)
        if self._fitted:
            self._select_eigendirections()

    @property
    def centering(self) -> bool:
        """Whether the projection is centred; setting it re-decomposes the fitted moments."""
        return self._centering

    @centering.setter
    def centering(self, centering: bool) -> None:
        self._centering = bool(centering)
        if self._fitted:
            self._decompose()

    @property
    def n_components(self) -> int:
        return self._k

    @property
    def in_dim(self) -> int:
        """delve 0.1.x's name of ``n_components`` (``k``)."""
        return self._k

    @property
    def fs_dim(self) -> int:
        """delve 0.1.x's name of ``in_features`` (``d``)."""
        return self.in_features

    @property
    def sat(self) -> float:
        """``100 * k / d``: the saturation in percent, as delve 0.1.x gave it."""
        return 100.0 * self._k / self.in_features

    @property
    def is_fitted(self) -> bool:
        """Whether a projection has been fitted (or loaded)."""
        return self._fitted

    # --------------------------------------------------------------- forward
    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """Observation rows ``(..., d)`` of an input batch."""
        return x

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim == 0 or x.shape[self._feature_dim] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_features} features in dimension "
                f"{self._feature_dim}, got input of shape {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self.training:
            self._observer.update(self._rows(x))
            return x
        if self._observer.pending:
            self.fit()
        if not self._fitted:
            if not self._warned:
                warnings.warn(
                    f"{type(self).__name__} has seen no training data yet; "
                    "passing its input through unchanged",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._warned = True
            return x
        return self._project(x)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if self.keepdim:
            # (x - m) P + m == x P + (m - m P); the offset is precomputed.
            return F.linear(x, like(self.transformation_matrix, x).t(), like(self.offset, x))
        basis = self.basis[:, : self._k]
        bias = -(self.mean @ basis) if self._centering else None
        return F.linear(x, like(basis, x).t(), None if bias is None else like(bias, x))

    # ------------------------------------------------------------------- fit
    @torch.no_grad()
    def fit(self) -> None:
        """Decompose the input accumulated since the last fit and start afresh.

        Called automatically by the first evaluation forward after training.
        Without new observations it keeps the current projection.
        """
        basis = self._observer.fit(self._centering)
        if basis is None:
            logger.warning("%s: no finite observations to fit; keeping the current projection", type(self).__name__)
            return
        # The float64 moments are kept, not only their buffer copies (a model
        # cast with .half() also casts the buffers).
        self.mean.copy_(basis.mean)
        self.covariance.copy_(basis.covariance)
        self.fitted.fill_(True)
        self._fitted = True
        self._warned = False
        self.epoch += 1
        self._use_decomposition(basis.values, basis.vectors)

    def _decompose(self) -> None:
        self._use_decomposition(*decompose(self.covariance, self.mean, self._centering))

    def _use_decomposition(self, values: torch.Tensor, vectors: torch.Tensor) -> None:
        self.eigenvalues.copy_(values)
        self.eigenvectors.copy_(vectors)
        self._select_eigendirections(values, vectors)

    def _select_eigendirections(
        self, values: torch.Tensor | None = None, vectors: torch.Tensor | None = None
    ) -> None:
        values = self.eigenvalues if values is None else values
        vectors = self.eigenvectors if vectors is None else vectors
        k = select_components(values, self._threshold)
        self._use_basis(vectors[:, :k])
        if self.verbose:
            logger.info(
                "%s: %d of %d directions explain %.4g of the variance (saturation %.2f%%)",
                type(self).__name__, k, self.in_features, self._threshold, self.sat,
            )

    @torch.no_grad()
    def _use_basis(self, basis: torch.Tensor) -> None:
        """Project onto the span of ``basis``'s orthonormal columns from now on."""
        basis = basis.to(device=self.basis.device, dtype=torch.float64)
        k = basis.shape[1]
        projection = basis @ basis.t()
        self.basis.zero_()
        self.basis[:, :k] = basis
        self.n_components_.fill_(k)
        self._k = k
        self.transformation_matrix.copy_(projection)
        if self._centering:
            mean = self.mean.to(torch.float64)
            self.offset.copy_(mean - mean @ projection)
        else:
            self.offset.zero_()

    def inject_random_directions(self, generator: torch.Generator | None = None) -> None:
        """Project onto ``n_components`` random orthonormal directions instead (a control).

        The next fit, or a change of ``threshold``, returns to the eigendirections.
        """
        self._use_basis(random_orthonormal(self.in_features, self._k, generator))

    # ----------------------------------------------------------- persistence
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "threshold": self._threshold,
            "centering": self._centering,
            "epoch": self.epoch,
            **self._observer.state_dict(),
        }

    def set_extra_state(self, state: Any) -> None:
        self._threshold = check_fraction("threshold", state["threshold"])
        self._centering = bool(state["centering"])
        self.epoch = int(state["epoch"])
        self._observer.load_state_dict(state)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, threshold={self._threshold}, keepdim={self.keepdim}, "
            f"centering={self._centering}, n_components={self._k}"
        )


def _refresh_mirrors(module: nn.Module, incompatible_keys: Any) -> None:
    module._fitted = bool(module.fitted)
    module._k = int(module.n_components_)
