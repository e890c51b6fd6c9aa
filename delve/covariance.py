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
:mod:`delve.kernels`; with a shift ``c`` (the running mean) the update is
exactly::

    M = M_a + sum_b (x - c)(x - c)^T - n_b u u^T + (n_a n_b / n) delta delta^T

with ``u = mean_b - c``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import kernels
from .kernels import Route, to_device
from .merges import Moments, merge_on_cpu, merge_on_device, merge_sliced
from .validation import check_choice

__all__ = ["TorchCovarianceMatrix", "EmptyCovarianceError", "STATE_VERSION"]

#: Version of :meth:`TorchCovarianceMatrix.state_dict`'s layout; older states are migrated on loading.
STATE_VERSION = 1


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
    precision : {"float64", "float32"}, default "float64"
        Precision of the per-batch Gram product. ``"float32"`` is faster
        (TF32 on recent GPUs when enabled); each batch is centred (or shifted
        by the running mean) before its product, so the error does not grow
        with the mean. On a CPU, batches of fewer than ``d / 8`` rows are
        multiplied in float64 anyway: for them that is the cheaper product.

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
        self,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
        precision: str = "float64",
    ) -> None:
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        check_choice("precision", precision, ("float64", "float32"))
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self.precision = precision
        self._product_dtype = torch.float32 if precision == "float32" else dtype
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget every observation."""
        self._moments: Moments | None = None
        self._rejected = 0

    @property
    def count(self) -> int:
        """Number of observation rows merged since the last reset."""
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

    def _allocate(self, d: int, device: torch.device) -> Moments:
        if self.device is None:
            self.device = device
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
        """Merge one batch of observations (:meth:`update_rows` also says whether it was merged).

        Parameters
        ----------
        x : torch.Tensor
            Shape ``(n, d)``, any floating dtype, rows are observations.

        Raises
        ------
        ValueError
            If ``x`` is not 2-D, not floating point, or its feature size
            differs from earlier batches.
        """
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"update() expects a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 2:
            raise ValueError(
                f"update() expects a 2-D (samples, features) tensor, got shape {tuple(x.shape)}"
            )
        self.update_rows(x)

    @torch.no_grad()
    def update_rows(self, x: torch.Tensor) -> bool | torch.Tensor:
        """Merge a batch whose leading dimensions are all samples.

        ``x`` has shape ``(..., d)``. A strided view (for example the
        ``(N, H*W, C)`` view of a convolution output) is copied once, in its
        own memory order, into the buffer the product reads, so no separate
        permute copy is made. Large batches are merged in slices (exactly).
        A batch holding NaN or Inf is not merged, whole, on every route; it is
        counted in :attr:`rejected_batches` instead.

        Returns
        -------
        bool or torch.Tensor
            Whether the batch was merged: a Python bool on a CPU, a 0-d bool
            tensor on accelerators (reading it would synchronise the host).
            Other accumulators fed with the same rows follow this verdict, so
            every statistic rests on the same rows.
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
            return merge_on_device(moments, x, route)
        if route.slice_bytes is None:
            accepted = merge_on_cpu(moments, x, route)
        else:
            accepted = merge_sliced(moments, x, route, lambda part: self._route(part.numel() // d, d, part.dtype))
        if not accepted:
            self._rejected += 1
        return accepted

    def _route(self, n: int, d: int, input_dtype: torch.dtype) -> Route:
        merged_before = self._moments is not None and self._moments.count > 0
        return kernels.choose_route(
            n, d, input_dtype, self._product_dtype, self.dtype, self.device, merged_before  # type: ignore[arg-type]
        )

    def _full_comoment(self) -> torch.Tensor:
        """The co-moment with its lower triangle mirrored from the upper one."""
        assert self._moments is not None
        comoment = self._moments.comoment
        return torch.triu(comoment) + torch.triu(comoment, diagonal=1).t()

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
        rejected_b = other.rejected_batches
        self._sync_device_counters()
        self._rejected += rejected_b
        if n_b == 0:
            self._write_device_counters()
            return self
        other_mean = other.mean
        d = other_mean.shape[0]
        moments = self._moments if self._moments is not None else self._allocate(d, other_mean.device)
        if d != moments.mean.shape[0]:
            raise ValueError(f"cannot merge covariances of {d} and {moments.mean.shape[0]} features")
        n_a = moments.count
        n = n_a + n_b
        delta = other_mean.to(moments.mean.device, self.dtype) - moments.mean
        comoment = self._full_comoment().add_(other._full_comoment().to(moments.mean.device, self.dtype))
        comoment.addr_(delta, delta, alpha=n_a * n_b / n)
        moments.comoment = comoment
        moments.mean.add_(delta, alpha=n_b / n)
        moments.count = n
        self._write_device_counters()
        return self

    # -------------------------------------------------------------------- fix
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
        return self._full_comoment().div_(self.count)

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Tensors only, so the state loads with ``torch.load(weights_only=True)``."""
        count = self.count
        state = {
            "version": torch.tensor(STATE_VERSION, dtype=torch.int64),
            "count": torch.tensor(count, dtype=torch.int64),
            "rejected_batches": torch.tensor(self._rejected, dtype=torch.int64),
        }
        if self._moments is not None:
            state["mean"] = self._moments.mean.clone()
            state["comoment"] = self._full_comoment()
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
            moments.mean.copy_(mean)
            moments.comoment.copy_(state["comoment"])
            moments.count = int(state["count"])
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


#: ``version -> function`` turning a state of that version into one of the next.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _from_unversioned}


def migrate(state: dict[str, Any]) -> dict[str, Any]:
    """A saved state brought to :data:`STATE_VERSION` through :data:`MIGRATIONS`, step by step.

    Examples
    --------
    >>> migrate({"count": torch.tensor(0)})["version"]
    1
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
