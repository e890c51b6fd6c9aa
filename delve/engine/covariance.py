"""Exact running covariance of a stream of observation batches: the state and its merges.

The accumulator keeps, in float64, the number of rows seen, their mean and the
centred co-moment matrix ``M = sum_i (x_i - mean)(x_i - mean)^T``. Each batch is
merged with the running state by the pairwise update of Chan, Golub and
LeVeque (1979)::

    n     = n_a + n_b
    delta = mean_b - mean_a
    mean  = mean_a + delta * n_b / n
    M     = M_a + M_b + delta delta^T * n_a * n_b / n

Because no raw sum of squares is ever formed, a large common offset never
cancels the variance away (the textbook ``E[x x^T] - mean mean^T`` loses about
``2 * log10(|mean| / std)`` digits).

Only the upper block triangle of ``M`` is accumulated: the Gram product of a
centred batch is symmetric, so the lower blocks are redundant work. ``fix()``
mirrors the upper triangle when the covariance is read. The products and the
choice of route (centred, shifted, on the device, sliced) are in
:mod:`delve.engine.products`; with a shift ``c`` (the running mean) the update is
exactly::

    M = M_a + sum_b (x - c)(x - c)^T - n_b u u^T + (n_a n_b / n) delta delta^T

with ``u = mean_b - c``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import products as kernels
from .products import Route, to_device
from .moments import Moments, PendingRows, merge_on_cpu, merge_on_device, merge_sliced, pending_capacity, upper_indices
from .precision import PRECISIONS, resolve_precision, tf32_products
from ..common.validation import check_choice

__all__ = ["TorchCovarianceMatrix", "EmptyCovarianceError", "STATE_VERSION"]

#: Version of :meth:`TorchCovarianceMatrix.state_dict`'s layout; older states are migrated on loading.
STATE_VERSION = 2


class EmptyCovarianceError(RuntimeError):
    """Raised when a covariance is requested before any observation was merged."""


class TorchCovarianceMatrix:
    """Running mean and covariance of ``(n, d)`` observation batches.

    Parameters
    ----------
    device : torch.device or str, optional
        Where the running state lives. ``None`` keeps it on the device of the
        first batch, so no data is copied between devices.
    dtype : torch.dtype, default torch.float64
        Precision of the running state. float64 is strongly recommended.
    precision : {"auto", "float64", "float32", "tf32"}, default "auto"
        Precision of the per-batch Gram product (the state is ``dtype``); see
        :func:`delve.engine.precision.resolve_precision`. Batches are centred (or
        shifted by the running mean) first, so the error does not grow with
        the mean.

    Examples
    --------
    >>> import torch
    >>> from delve import TorchCovarianceMatrix
    >>> acc = TorchCovarianceMatrix()
    >>> for batch in torch.randn(4, 32, 3).unbind(0):
    ...     acc.update(batch)
    >>> acc.fix().shape
    torch.Size([3, 3])
    """

    def __init__(
        self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64, precision: str = "auto"
    ) -> None:
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        self.precision = check_choice("precision", precision, PRECISIONS)
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self._product_dtype = dtype  # resolved against the device at the first batch
        self._tf32 = False
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget every observation."""
        self._moments: Moments | None = None
        self._pending: PendingRows | None = None
        self._rejected = 0

    @property
    def count(self) -> int:
        """Number of observation rows merged since the last reset."""
        self.flush()
        self._sync_device_counters()
        return 0 if self._moments is None else self._moments.count

    @property
    def rejected_batches(self) -> int:
        """Batches skipped since the last reset because they held NaN or Inf."""
        self._sync_device_counters()
        return self._rejected

    @property
    def num_features(self) -> int | None:
        """Feature size ``d``, or ``None`` before the first batch."""
        return None if self._moments is None else self._moments.mean.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        """Running mean, shape ``(d,)``."""
        self._require_data()
        return self._moments.mean  # type: ignore[union-attr]

    def flush(self) -> None:
        """Merge the small batches held back (see :class:`~delve.engine.moments.PendingRows`); reading does it too."""
        pending, moments = self._pending, self._moments
        if pending is None or not pending.count or moments is None:
            return
        rows = pending.rows()
        if not merge_on_cpu(moments, rows, self._route(rows.shape[0], rows.shape[1], rows.dtype)):
            self._rejected += 1  # only a float32 product can overflow where the rows did not
        pending.clear()

    def _allocate(self, d: int, device: torch.device) -> Moments:
        if self.device is None:
            self.device = device
        resolved = resolve_precision(self.precision, self.device)
        self._product_dtype = torch.float32 if resolved in ("float32", "tf32") else self.dtype
        self._tf32 = resolved == "tf32"
        moments = Moments(
            mean=torch.zeros(d, dtype=self.dtype, device=self.device),
            comoment=torch.zeros(d, d, dtype=self.dtype, device=self.device),
            blocks=kernels.feature_blocks(d),
        )
        if kernels.decides_on_device(self.device):
            # On accelerators the accept/reject decision stays on the device,
            # so the counters live there too until something reads them.
            moments.device_count = torch.zeros((), dtype=torch.int64, device=self.device)
            moments.device_rejected = torch.zeros((), dtype=torch.int64, device=self.device)
        self._moments = moments
        return moments

    def _sync_device_counters(self) -> None:
        moments = self._moments
        if moments is not None and moments.device_count is not None:
            moments.count = int(moments.device_count.item())
            self._rejected = int(moments.device_rejected.item())  # type: ignore[union-attr]

    def _write_device_counters(self) -> None:
        moments = self._moments
        if moments is not None and moments.device_count is not None:
            moments.device_count.fill_(moments.count)
            moments.device_rejected.fill_(self._rejected)  # type: ignore[union-attr]

    def _require_data(self) -> None:
        if self.count == 0:
            raise EmptyCovarianceError(
                "the covariance is undefined: no observation was merged since the last reset"
            )

    # ----------------------------------------------------------------- update
    def update(self, x: torch.Tensor) -> None:
        """Merge an ``(n, d)`` batch, rows being observations; ``ValueError`` for any other shape."""
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            shown = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"update() expects a 2-D (samples, features) torch.Tensor, got {shown}")
        self.update_rows(x)

    @torch.no_grad()
    def update_rows(self, x: torch.Tensor) -> bool | torch.Tensor:
        """Merge a batch whose leading dimensions are all samples.

        ``x`` has shape ``(..., d)``; a strided view (a convolution's
        ``(N, H*W, C)``) is read in its own memory order, not copied first.
        A batch holding NaN or Inf is left out whole, on every route, and
        counted in :attr:`rejected_batches`. Returns whether it was merged: a
        bool on a CPU, a 0-d bool tensor on accelerators (reading it would
        synchronise); other accumulators fed the same rows follow it.
        """
        if not x.is_floating_point():
            raise ValueError(f"observations must be floating point, got dtype {x.dtype}")
        d = x.shape[-1] if x.ndim else 0
        n = x.numel() // d if d else 0
        if n == 0:
            return True
        moments = self._moments if self._moments is not None else self._allocate(d, x.device)
        if d != moments.mean.shape[0]:
            raise ValueError(
                f"feature size changed from {moments.mean.shape[0]} to {d}; "
                "reset() the accumulator before feeding a different layer width"
            )
        if x.device != self.device:
            x = to_device(x, self.device)  # type: ignore[arg-type]
        if x.ndim == 1:
            x = x.unsqueeze(0)
        route = self._route(n, d, x.dtype)
        if route.on_device:
            with tf32_products(route.tf32):
                return merge_on_device(moments, x, route)
        if self._holds(n, d, x.dtype):
            accepted = self._hold(x, n, d)
        elif route.slice_bytes is None:
            accepted = merge_on_cpu(moments, x, route)
        else:
            accepted = merge_sliced(moments, x, route, lambda part: self._route(part.numel() // d, d, part.dtype))
        if not accepted:
            self._rejected += 1
        return accepted

    def _holds(self, n: int, d: int, dtype: torch.dtype) -> bool:
        """Whether a CPU batch of ``n`` rows is small enough to wait for others before a product."""
        pending = self._pending
        if pending is not None:
            return 2 * n <= pending.buffer.shape[0] and dtype.itemsize <= pending.buffer.dtype.itemsize
        return 2 * n <= pending_capacity(d, dtype)

    def _hold(self, x: torch.Tensor, n: int, d: int) -> bool:
        pending = self._pending
        if pending is None:
            buffer_dtype = torch.float64 if x.dtype.itemsize > 4 else torch.float32
            pending = self._pending = PendingRows(pending_capacity(d, x.dtype), d, buffer_dtype, x.device)
        if pending.room < n:
            self.flush()
        accepted = pending.add(x)
        if not pending.room:
            self.flush()
        return accepted

    def _route(self, n: int, d: int, input_dtype: torch.dtype) -> Route:
        merged_before = self._moments is not None and self._moments.count > 0
        return kernels.choose_route(
            n, d, input_dtype, self._product_dtype, self.dtype, self.device, merged_before, self._tf32  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------------ merge
    @torch.no_grad()
    def merge(self, other: TorchCovarianceMatrix) -> TorchCovarianceMatrix:
        """Merge another accumulator's observations into this one, in place.

        The result equals one accumulator fed with both streams of rows.

        Examples
        --------
        >>> a, b = TorchCovarianceMatrix(), TorchCovarianceMatrix()
        >>> a.update(torch.randn(10, 4)); b.update(torch.randn(20, 4))
        >>> a.merge(b).count
        30
        """
        n_b = other.count
        self.flush()
        self._sync_device_counters()
        self._rejected += other.rejected_batches
        if n_b:
            d = other.mean.shape[0]
            moments = self._moments if self._moments is not None else self._allocate(d, other.mean.device)
            if d != moments.mean.shape[0]:
                raise ValueError(f"cannot merge covariances of {d} and {moments.mean.shape[0]} features")
            moments.absorb(other.mean, other.comoment(), n_b)
        self._write_device_counters()
        return self

    # -------------------------------------------------------------------- fix
    @torch.no_grad()
    def comoment(self) -> torch.Tensor:
        """The centred co-moment ``M = sum_i (x_i - mean)(x_i - mean)^T``, a symmetric ``(d, d)`` matrix.

        Raises
        ------
        EmptyCovarianceError
            If no observation was merged since the last reset.
        """
        self._require_data()
        return self._moments.full_comoment()  # type: ignore[union-attr]

    @torch.no_grad()
    def fix(self) -> torch.Tensor:
        """The population covariance ``M / n`` of every row since the last reset.

        Returns
        -------
        torch.Tensor
            Symmetric ``(d, d)`` matrix in the accumulator's dtype.

        Raises
        ------
        EmptyCovarianceError
            If no observation was merged since the last reset.
        """
        self._require_data()
        return self._moments.full_comoment().div_(self.count)  # type: ignore[union-attr]

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Tensors only, so the state loads with ``torch.load(weights_only=True)``.

        The co-moment is stored as its upper triangle (row by row), half the
        matrix. Batches held back to be merged together are merged first
        (here, in the live accumulator too): held rows would add up to half
        a matrix again, and merging them in both the saving and the loading
        run keeps the two identical from here on.
        """
        self.flush()
        self._sync_device_counters()
        moments, pending = self._moments, self._pending
        state = {
            "version": torch.tensor(STATE_VERSION, dtype=torch.int64),
            "count": torch.tensor(0 if moments is None else moments.count, dtype=torch.int64),
            "rejected_batches": torch.tensor(self._rejected, dtype=torch.int64),
        }
        if moments is not None:
            state.update(moments.packed())
        if pending is not None and pending.count:
            state["pending"] = pending.rows().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`, of this or an earlier layout.

        Raises
        ------
        ValueError
            For a state newer than this version of delve understands.
        """
        state = migrate(state)
        self.reset()
        if "mean" in state:
            mean = state["mean"]
            moments = self._allocate(mean.shape[0], self.device or mean.device)
            moments.unpack(state, int(state["count"]))
            if "pending" in state:
                held = state["pending"]
                self._pending = PendingRows(
                    pending_capacity(mean.shape[0], held.dtype), mean.shape[0], held.dtype, moments.mean.device
                )
                self._pending.restore(held)
        self._rejected = int(state.get("rejected_batches", 0))
        self._write_device_counters()

    def __repr__(self) -> str:
        return (
            f"TorchCovarianceMatrix(features={self.num_features}, count={self.count}, "
            f"device={self.device}, precision={self.precision!r})"
        )


def _from_unversioned(state: dict[str, Any]) -> dict[str, Any]:
    # The first layout had no version entry; its content is that of version 1.
    return dict(state)


def _upper_triangle_only(state: dict[str, Any]) -> dict[str, Any]:
    # Version 1 stored the full symmetric co-moment; version 2 keeps its upper triangle.
    state = dict(state)
    if "comoment" in state:
        full = state.pop("comoment")
        rows, columns = upper_indices(full.shape[0], full.device)
        state["comoment_upper"] = full[rows, columns]
    return state


#: ``version -> function`` turning a state of that version into one of the next.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _from_unversioned, 1: _upper_triangle_only}


def migrate(state: dict[str, Any]) -> dict[str, Any]:
    """A saved state brought to :data:`STATE_VERSION` through :data:`MIGRATIONS`, step by step.

    Examples
    --------
    >>> migrate({"count": torch.tensor(0)})["version"]
    2
    """
    version = int(state.get("version", 0))
    if version > STATE_VERSION:
        raise ValueError(
            f"the covariance state has layout version {version}, newer than this delve's {STATE_VERSION}; "
            "upgrade delve to load it"
        )
    while version < STATE_VERSION:
        state = MIGRATIONS[version](state)
        version += 1
    return {**state, "version": version}
