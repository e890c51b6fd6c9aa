"""The covariance accumulator: exact running mean and covariance of a layer's rows, in float64.

Every tracked layer has one; it judges each batch (NaN or Inf anywhere: left
out whole) before the layer's other accumulators see it. Its state is the row
count, mean and centred co-moment (:class:`~delve.engine.moments.Moments`,
merged by the pairwise update explained there) and the count of rejected
batches. On a CPU, small batches wait in a block (:class:`~delve.engine.moments.PendingRows`)
so that one product serves many; a batch's route (centred, shifted, on the
device, sliced) is chosen in :mod:`delve.engine.products`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..common.validation import check_choice
from .accumulator import Accumulator, AccumulatorContext, Batch
from .input_route import MappedInput, merge_mapped
from .moments import Moments, PendingRows, merge_on_cpu, merge_on_device, merge_sliced, pending_capacity, upper_indices
from .precision import PRECISIONS, resolve_precision, tf32_products
from .products import ProductPlan, choose_route, feature_blocks, to_device
from .states import Comoments, Sum

__all__ = ["TorchCovarianceMatrix", "EmptyCovarianceError"]


class EmptyCovarianceError(RuntimeError):
    """Raised when a covariance is requested before any observation was merged."""


class TorchCovarianceMatrix(Accumulator):
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

    state_version = 3

    def __init__(
        self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64, precision: str = "auto"
    ) -> None:
        super().__init__()
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        self.precision = check_choice("precision", precision, PRECISIONS)
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self._plan: ProductPlan | None = None  # once the device is known
        self._pending: PendingRows | None = None
        self.moments: Moments | None
        self.rejected: torch.Tensor | None
        self.add_state("moments", Comoments())
        self.add_state("rejected", Sum(torch.int64))

    @classmethod
    def create(cls, context: AccumulatorContext) -> TorchCovarianceMatrix:
        """The covariance of one layer and mode: on the tracker's device, in its precision."""
        accumulator = cls(device=context.device, precision=context.precision)
        accumulator.context = context
        return accumulator

    def empty_like(self) -> TorchCovarianceMatrix:
        empty = TorchCovarianceMatrix(self.device, self.dtype, self.precision)
        empty.context = self.context
        return empty

    # ------------------------------------------------------------------ reads
    @property
    def count(self) -> int:
        """Number of observation rows merged since the last reset."""
        self.settle()
        return 0 if self.moments is None else self.moments.count

    @property
    def rejected_batches(self) -> int:
        """Batches skipped since the last reset because they held NaN or Inf."""
        self.settle()
        return 0 if self.rejected is None else int(self.rejected)

    @property
    def num_features(self) -> int | None:
        """Feature size ``d``, or ``None`` before the first batch."""
        return None if self.moments is None else self.moments.mean.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        """Running mean, shape ``(d,)``."""
        self._require_data()
        return self.moments.mean  # type: ignore[union-attr]

    @torch.no_grad()
    def comoment(self) -> torch.Tensor:
        """The centred co-moment ``M = sum_i (x_i - mean)(x_i - mean)^T``, a symmetric ``(d, d)`` matrix.

        Raises
        ------
        EmptyCovarianceError
            If no observation was merged since the last reset.
        """
        self._require_data()
        return self.moments.full_comoment()  # type: ignore[union-attr]

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
        return self.moments.full_comoment().div_(self.count)  # type: ignore[union-attr]

    def _require_data(self) -> None:
        if self.count == 0:
            raise EmptyCovarianceError("the covariance is undefined: no observation was merged since the last reset")

    # ---------------------------------------------------------------- update
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
        if self.device is not None and x.device != self.device:
            x = to_device(x, self.device)
        batch = Batch(x)
        self.accumulate(batch)
        return batch.accepted

    @torch.no_grad()
    def accumulate(self, batch: Batch) -> None:
        """Merge the batch's rows and give the verdict every other accumulator of the layer follows."""
        if batch.mapped is not None:
            self._accumulate_mapped(batch)
            return
        x, n = batch.rows, batch.n
        if n == 0:
            return
        d = x.shape[-1]
        moments = self.moments if self.moments is not None else self._allocate(d, x.device)
        if d != moments.mean.shape[0]:
            raise ValueError(
                f"feature size changed from {moments.mean.shape[0]} to {d}; "
                "reset() the accumulator before feeding a different layer width"
            )
        if x.ndim == 1:
            x = x.unsqueeze(0)
        plan = self._plan
        assert plan is not None
        if plan.on_device:
            route = choose_route(plan, n, d, x.dtype, merged_before=True)
            with tf32_products(route.tf32):
                batch.accepted = merge_on_device(moments, x, route)
            return
        if self._holds(n, d, x.dtype):
            accepted = self._hold(x, n, d)
        else:
            route = choose_route(plan, n, d, x.dtype, moments.count > 0)
            if route.slice_bytes is None:
                accepted = merge_on_cpu(moments, x, route)
            else:
                accepted = merge_sliced(moments, x, route, plan)
        if not accepted:
            self.add_to("rejected", torch.ones((), dtype=torch.int64))
        batch.accepted = accepted

    def _accumulate_mapped(self, batch: Batch) -> None:
        """The input route (:mod:`delve.engine.input_route`): exact per batch, with that batch's weights."""
        mapped_input: MappedInput = batch.mapped
        if batch.n == 0:
            return
        d = mapped_input.view.features_out
        moments = self.moments if self.moments is not None else self._allocate(d, mapped_input.view.rows.device)
        if d != moments.mean.shape[0]:
            raise ValueError(f"feature size changed from {moments.mean.shape[0]} to {d}; reset() the accumulator first")
        self.flush()  # rows an earlier output-route batch held back go first
        assert self._plan is not None
        batch.accepted = merge_mapped(moments, mapped_input, self._plan)
        if batch.accepted is False:
            self.add_to("rejected", torch.ones((), dtype=torch.int64))

    def _allocate(self, d: int, device: torch.device) -> Moments:
        if self.device is None:
            self.device = device
        self.moments = Moments(
            mean=torch.zeros(d, dtype=self.dtype, device=self.device),
            comoment=torch.zeros(d, d, dtype=self.dtype, device=self.device),
            blocks=feature_blocks(d),
        )
        self.restored()
        return self.moments

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

    def flush(self) -> None:
        """Merge the small batches held back (see :class:`~delve.engine.moments.PendingRows`); reading does it too."""
        pending, moments, plan = self._pending, self.moments, self._plan
        if pending is None or not pending.count or moments is None or plan is None:
            return
        rows = pending.rows()
        route = choose_route(plan, rows.shape[0], rows.shape[1], rows.dtype, moments.count > 0)
        if not merge_on_cpu(moments, rows, route):
            # Only a float32 product can overflow where the rows did not.
            self.add_to("rejected", torch.ones((), dtype=torch.int64))
        pending.clear()

    # ------------------------------------------------- the protocol's hooks
    def settle(self) -> None:
        """Merge held rows and read the device's counters into the declared state."""
        self.flush()
        moments = self.moments
        if moments is not None and moments.device_count is not None:
            moments.count = int(moments.device_count.item())
            self.rejected = moments.device_rejected.detach().clone()  # type: ignore[union-attr]

    def restored(self) -> None:
        """After the state was replaced: the product plan, and on accelerators the counters on the device."""
        self._pending = None
        moments = self.moments
        if moments is None:
            return
        if self.device is None:
            self.device = moments.mean.device
        elif moments.mean.device != self.device:
            moments.mean, moments.comoment = moments.mean.to(self.device), moments.comoment.to(self.device)
        resolved = resolve_precision(self.precision, self.device)
        product = torch.float32 if resolved in ("float32", "tf32") else self.dtype
        self._plan = ProductPlan(product, self.dtype, self.device, tf32=resolved == "tf32")
        if self._plan.on_device:
            # On accelerators the accept/reject decision stays on the device, so the counters live there.
            rejected = 0 if self.rejected is None else int(self.rejected)
            moments.device_count = torch.tensor(moments.count, dtype=torch.int64, device=self.device)
            moments.device_rejected = torch.tensor(rejected, dtype=torch.int64, device=self.device)
        else:
            moments.device_count = moments.device_rejected = None

    def load_extra_state(self, state: dict[str, Any]) -> None:
        # States saved before checkpoints merged held rows may carry them.
        held = state.get("pending")
        moments = self.moments
        if held is not None and moments is not None:
            d = moments.mean.shape[0]
            self._pending = PendingRows(pending_capacity(d, held.dtype), d, held.dtype, moments.mean.device)
            self._pending.restore(held)

    def merge(self, other: TorchCovarianceMatrix) -> TorchCovarianceMatrix:  # type: ignore[override]
        """Merge another accumulator's observations into this one, in place.

        The result equals one accumulator fed with both streams of rows.

        Examples
        --------
        >>> a, b = TorchCovarianceMatrix(), TorchCovarianceMatrix()
        >>> a.update(torch.randn(10, 4)); b.update(torch.randn(20, 4))
        >>> a.merge(b).count
        30
        """
        return super().merge(other)

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


def _declared_state(state: dict[str, Any]) -> dict[str, Any]:
    # Version 3 groups the moments under their declared name (delve.engine.accumulator).
    state = dict(state)
    moments = {key: state.pop(key) for key in ("count", "mean", "comoment_upper") if key in state}
    if "mean" in moments:
        state["moments"] = moments
    if "rejected_batches" in state:
        state["rejected"] = state.pop("rejected_batches")
    return state


TorchCovarianceMatrix.migrations = {0: _from_unversioned, 1: _upper_triangle_only, 2: _declared_state}
