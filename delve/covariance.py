"""Exact running covariance of a stream of observation batches.

The accumulator keeps, in float64, the number of rows seen, their mean and the
centred co-moment matrix ``M = sum_i (x_i - mean)(x_i - mean)^T``. Each batch is
first centred on its *own* mean and then merged with the running state by the
pairwise update of Chan, Golub and LeVeque (1979)::

    n     = n_a + n_b
    delta = mean_b - mean_a
    mean  = mean_a + delta * n_b / n
    M     = M_a + M_b + delta delta^T * n_a * n_b / n

Because no raw sum of squares is ever formed, a large common offset never
cancels the variance away (the textbook ``E[x x^T] - mean mean^T`` loses about
``2 * log10(|mean| / std)`` digits).

Only the upper block triangle of ``M`` is accumulated: the Gram product of a
centred batch is symmetric, so the lower blocks are redundant work. ``fix()``
mirrors the upper triangle when the covariance is read.

In float32 products, batches with many more rows than features (a
convolution's positions) skip the centring passes: their rows are shifted by
the running mean while they are copied anyway, a row of ones rides along in
the product to give the batch sum, and the shifted Gram is corrected by
rank-one terms. With any shift ``c`` the update is exactly::

    M = M_a + sum_b (x - c)(x - c)^T - n_b u u^T + (n_a n_b / n) delta delta^T

with ``u = mean_b - c``. The rounding error of the uncentred product grows
with ``1 + |u|^2 / var``; a shift leaving ``|u| > 2 std`` in some feature is
detected from the same product and the batch is then centred on its own mean.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["TorchCovarianceMatrix", "EmptyCovarianceError", "all_finite", "to_device"]

# Largest centred slice (bytes) merged at once. On a CPU a slice of 8 MiB stays
# below the size from which the C allocator maps (and the kernel zero-fills)
# fresh pages at every call, which cost as much as the product itself for the
# 32 MiB float64 rows of a 64-channel 32x32 convolution at batch 64; 4 to 16 MiB
# measured alike on 2 threads, 1 MiB and unsliced clearly slower.
_SLICE_BYTES = 8 * 2**20
# On accelerators the slice only bounds the transient buffer.
_DEVICE_SLICE_BYTES = 256 * 2**20
# The shifted (uncentred) product is used when a batch has at least this many
# rows per feature: its rank-one corrections cost passes over d x d, the
# centring passes it saves cost passes over n x d.
_SHIFTED_ROWS_PER_FEATURE = 4
# On a CPU, float32 products are used for batches of at least d / 8 rows.
# Measured on a 1024-1024-512 MLP (2 threads): at 32 and 64 rows per batch the
# float32 route cost +62 % and +43 % per step against +36 % and +30 % for
# float64 products; from 128 rows on it is the cheaper one.
_MIN_FAST_ROWS_FRACTION = 8
# Largest |batch mean - shift| / std accepted in the shifted product: the
# rounding error of the uncentred product grows by at most 1 + 2**2 = 5
# (0.7 digits). Further out, the batch is centred on its own mean instead.
_MAX_OFFSET_TO_STD = 2.0

def _decides_on_device(device: torch.device) -> bool:
    """Whether batches on ``device`` are merged without reading decisions back to the host.

    On a CPU a value read back costs nothing; on an accelerator it would stall
    the stream at every forward pass. (Tests force the accelerator route on a
    CPU by replacing this function.)
    """
    return device.type != "cpu"


def all_finite(x: torch.Tensor) -> torch.Tensor:
    """Whether every value of ``x`` is finite, as a 0-d bool tensor, in one pass.

    A sum would overflow: float16 saturates at 65504, so the sum of a large
    finite half-precision batch is Inf. The extremes cannot overflow, and NaN
    propagates into them.

    Examples
    --------
    >>> bool(all_finite(torch.full((4096,), 60000.0, dtype=torch.float16)))
    True
    >>> bool(all_finite(torch.tensor([1.0, float("nan")])))
    False
    """
    low, high = torch.aminmax(x)
    return torch.isfinite(low) & torch.isfinite(high)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; asynchronous only where that is safe.

    A copy from an accelerator into ordinary host memory that does not wait
    could be read before it has landed, so copies to the CPU block.
    """
    return x.to(device, non_blocking=device.type != "cpu")


class EmptyCovarianceError(RuntimeError):
    """Raised when a covariance is requested before any observation was merged."""


def _feature_blocks(d: int) -> list[tuple[int, int]]:
    """Split ``range(d)`` into column blocks for the upper-triangular product.

    More blocks skip more of the redundant lower triangle (``(b + 1) / 2b`` of
    the full product) but cost one kernel launch each; small matrices are not
    worth splitting at all.
    """
    if d < 128:
        return [(0, d)]
    n_blocks = 4 if d < 512 else 8 if d < 2048 else 16
    step = -(-d // n_blocks)
    return [(start, min(start + step, d)) for start in range(0, d, step)]


def _product_buffer(
    x: torch.Tensor, dtype: torch.dtype, extra_samples: int = 0, ones_row: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """A buffer for the rows of ``x`` as the ``(features, samples)`` operand of a Gram product.

    Returns ``(samples, rows)``: ``samples`` is the ``(ones_row + d, n +
    extra_samples)`` view the product reads, ``rows`` the view of its first
    ``n`` samples shaped like ``x``, for the caller to fill. The storage takes
    the layout in which ``x`` is read in order (feature-major for the
    channelwise view of a convolution output), so filling it transposes
    nothing. With ``ones_row`` the first feature row of the ``n`` samples is
    set to ones, so the product also yields the batch sum.
    """
    d = x.shape[-1]
    n = x.numel() // d
    first = int(ones_row)
    if x.ndim > 1 and x.stride(-1) != 1:
        samples = torch.empty(first + d, n + extra_samples, dtype=dtype, device=x.device)
        rows = samples[first:, :n].view(d, *x.shape[:-1]).movedim(0, -1)
    else:
        samples = torch.empty(n + extra_samples, first + d, dtype=dtype, device=x.device).t()
        rows = samples[first:, :n].t().view(x.shape)
    if ones_row:
        samples[0, :n].fill_(1.0)
    return samples, rows


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
        if precision not in ("float64", "float32"):
            raise ValueError(f"precision must be one of 'float64', 'float32'; got {precision!r}")
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self.precision = precision
        self._product_dtype = torch.float32 if precision == "float32" else dtype
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget every observation."""
        self._count = 0
        self._mean: torch.Tensor | None = None
        self._comoment: torch.Tensor | None = None
        self._rejected = 0
        # On accelerators the accept/reject decision stays on the device, so
        # the counters live there too until something reads them.
        self._device_count: torch.Tensor | None = None
        self._device_rejected: torch.Tensor | None = None

    @property
    def count(self) -> int:
        """Number of observation rows merged since the last reset."""
        self._sync_device_counters()
        return self._count

    @property
    def rejected_batches(self) -> int:
        """Batches skipped since the last reset because they held NaN or Inf."""
        self._sync_device_counters()
        return self._rejected

    @property
    def num_features(self) -> int | None:
        """Feature size ``d``, or ``None`` before the first batch."""
        return None if self._mean is None else self._mean.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        """Running mean, shape ``(d,)``."""
        self._require_data()
        return self._mean  # type: ignore[return-value]

    def _allocate(self, d: int, device: torch.device) -> None:
        if self.device is None:
            self.device = device
        self._mean = torch.zeros(d, dtype=self.dtype, device=self.device)
        self._comoment = torch.zeros(d, d, dtype=self.dtype, device=self.device)
        self._blocks = _feature_blocks(d)
        if _decides_on_device(self.device):
            self._device_count = torch.zeros((), dtype=torch.int64, device=self.device)
            self._device_rejected = torch.zeros((), dtype=torch.int64, device=self.device)

    def _sync_device_counters(self) -> None:
        if self._device_count is not None:
            self._count = int(self._device_count.item())
            self._rejected = int(self._device_rejected.item())  # type: ignore[union-attr]

    def _require_data(self) -> None:
        if self.count == 0:
            raise EmptyCovarianceError(
                "the covariance is undefined: no observation was merged since the last reset"
            )

    # ----------------------------------------------------------------- update
    def update(self, x: torch.Tensor) -> None:
        """Merge one batch of observations.

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
        if self._mean is None:
            self._allocate(d, x.device)
        elif d != self._mean.shape[0]:
            raise ValueError(
                f"feature size changed from {self._mean.shape[0]} to {d}; "
                "reset() the accumulator before feeding a different layer width"
            )
        if x.device != self.device:
            x = to_device(x, self.device)  # type: ignore[arg-type]
        if x.ndim == 1:
            x = x.unsqueeze(0)
        on_device = self._device_count is not None
        limit = _DEVICE_SLICE_BYTES if on_device else _SLICE_BYTES
        sliced = x.numel() * (torch.finfo(self._product_dtype).bits // 8) > limit
        if on_device:
            return self._update_on_device(x, limit if sliced else None)
        snapshot = None
        if sliced:
            # One NaN or Inf leaves the whole batch out, also when it is
            # merged in slices: the state is restored if a slice is rejected.
            # Where the state is larger than the batch, checking the batch
            # first is the cheaper pass.
            if n >= d:
                snapshot = (self._count, self._mean.clone(), self._comoment.clone())  # type: ignore[union-attr]
            elif not bool(all_finite(x)):
                self._rejected += 1
                return False
        if self._merge_slices(x, limit):
            return True
        if snapshot is not None:
            self._count, self._mean, self._comoment = snapshot
        self._rejected += 1
        return False

    def _update_on_device(self, x: torch.Tensor, limit: int | None) -> torch.Tensor:
        """The accelerator route: every decision stays on the device, no host synchronisation.

        An unsliced batch is judged from its upcast copy (:meth:`_merge_on_device`).
        A sliced batch (``limit`` bytes per slice) is judged whole before the
        first slice is merged, by one overflow-free pass over it, so its
        clean slices are not kept when another slice holds NaN or Inf.
        """
        if limit is None:
            finite = self._merge_on_device(x)
        else:
            finite = all_finite(x)
            for part in self._slices(x, limit):
                self._merge_on_device(part, finite)
        self._device_rejected.add_((~finite).to(torch.int64))  # type: ignore[union-attr]
        return finite

    def _merge_slices(self, x: torch.Tensor, limit: int) -> bool:
        """Merge ``x`` in slices of about ``limit`` bytes; ``False`` once a slice held NaN or Inf.

        Merging a batch in parts is exact: the pairwise update does not care
        how rows are grouped. On a CPU a slice stays in cache through the
        passes that copy, centre and multiply it, and its buffer is recycled
        by the allocator instead of being freshly mapped (and page-faulted)
        by the operating system at every call.
        """
        return all(self._merge_slice(part) for part in self._slices(x, limit))

    def _slices(self, x: torch.Tensor, limit: int) -> Iterator[torch.Tensor]:
        """Views of ``x`` along its leading dimensions of about ``limit`` bytes each."""
        nbytes = x.numel() * (torch.finfo(self._product_dtype).bits // 8)
        if nbytes <= limit or (x.shape[0] == 1 and x.ndim == 2):
            yield x
            return
        per_index = nbytes // x.shape[0]
        if per_index > limit and x.ndim > 2:
            for index in range(x.shape[0]):
                yield from self._slices(x[index], limit)
            return
        # Equal slices: a small remainder slice would cost a product's fixed
        # overhead for few rows.
        step = max(limit // per_index, 1 if x.ndim > 2 else 256)
        step = -(-x.shape[0] // -(-x.shape[0] // step))
        for start in range(0, x.shape[0], step):
            yield x[start : start + step]

    def _centre(
        self, x: torch.Tensor, extra: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Copy ``x`` into a product buffer and centre it on its own mean.

        Returns ``(samples, batch_mean, residual)``. ``samples`` is a
        ``(d, n + extra)`` view: the ``n`` centred rows of ``x`` as columns,
        then ``extra`` columns left for the caller (see
        :func:`_product_buffer` for its layout). ``copy_`` is also the fast
        dtype conversion here: mixed-dtype arithmetic is several times slower
        on a CPU.

        In a product precision below the accumulator's, the mean left over
        in the centred rows is measured; it is subtracted again when that is
        the cheaper pass (fewer samples than features), else returned as
        ``residual`` (the sum of the centred rows) for the product to remove.
        """
        d = x.shape[-1]
        n = x.numel() // d
        shift = None
        if torch.finfo(x.dtype).bits > torch.finfo(dtype).bits:
            # Rounding wider inputs (float64 into a float32 product) before
            # centring would lose what a large mean leaves of the spread.
            shift = x.mean(dim=tuple(range(x.ndim - 1)), dtype=torch.float64)
            x = x - shift
        samples, rows = _product_buffer(x, dtype, extra_samples=extra)
        rows.copy_(x)
        data = samples[:, :n]
        batch_mean = data.sum(1, keepdim=True).div_(n)
        data.sub_(batch_mean)
        batch_mean = batch_mean.to(self.dtype)
        residual = None
        if dtype != self.dtype:
            # A mean summed in the product precision is off by a rounding
            # error that grows with |mean|; what it left in the rows is
            # measured in the same precision, where it is small. (A float64
            # sum of float32 data costs three times as much on a CPU.)
            residual = data.sum(1, keepdim=True)
            batch_mean.add_(residual.to(self.dtype), alpha=1.0 / n)
            if n <= d:
                data.sub_(residual / n)
                residual = None
        batch_mean = batch_mean.view(d)
        if shift is not None:
            batch_mean = batch_mean + shift.to(self.dtype)
        return samples, batch_mean, residual

    def _merge_slice(self, x: torch.Tensor) -> bool:
        # CPU kernels run eagerly: reading the finite flag costs no device
        # synchronisation and lets the product accumulate in place.
        mean, comoment = self._mean, self._comoment
        assert mean is not None and comoment is not None
        n_a = self._count
        d = x.shape[-1]
        n_b = x.numel() // d
        dtype = self._product_dtype
        if dtype != self.dtype and n_b * _MIN_FAST_ROWS_FRACTION < d:
            # A low-precision product of few rows costs more than it saves:
            # adding its d x d result into the state is a pass of its own,
            # where a float64 product accumulates in place (and exactly).
            dtype = self.dtype
        if (
            n_a
            and dtype != self.dtype
            and n_b >= _SHIFTED_ROWS_PER_FEATURE * (d + 1)
            and x.dtype.itemsize <= dtype.itemsize
        ):
            merged = self._merge_shifted(x)
            if merged is not None:
                return merged
        n = n_a + n_b
        samples, batch_mean, residual = self._centre(x, extra=1 if n_a else 0, dtype=dtype)
        if not bool(torch.isfinite(batch_mean).all()):
            return False
        delta = batch_mean - mean
        if n_a:
            # The pairwise update's (n_a n_b / n) delta delta^T rides in the
            # product as one more sample instead of a pass over the d x d state.
            samples[:, n_b].copy_(delta * math.sqrt(n_a * n_b / n))
        self._add_gram(samples, comoment, residual, n_b)
        mean.add_(delta, alpha=n_b / n)
        self._count = n
        return True

    def _merge_shifted(self, x: torch.Tensor) -> bool | None:
        """Merge a tall batch in a low-precision product by the shifted route.

        One pass subtracts the running mean (rounded to the product dtype)
        while it copies the rows into a ``(d + 1, n)`` buffer whose first row
        is ones; one blocked product gives the batch sum and the shifted Gram;
        rank-one terms on the small ``d x d`` state complete the update (see
        the module docstring). Returns ``False`` for a batch holding NaN or
        Inf and ``None``, with the state untouched, when the batch mean lies
        too far from the running mean for the product's precision; the caller
        then centres the batch on its own mean instead.

        With float64 products this route measured no faster than centring:
        there the product dominates and the copy converts the dtype anyway.
        """
        mean, comoment = self._mean, self._comoment
        assert mean is not None and comoment is not None
        dtype = self._product_dtype
        d = x.shape[-1]
        n_b = x.numel() // d
        shift = mean.to(dtype)
        samples, rows = _product_buffer(x, dtype, ones_row=True)
        if x.dtype == dtype:
            torch.sub(x, shift, out=rows)
        else:
            rows.copy_(x).sub_(shift)
        # Row 0 of the product is the batch sum of the shifted rows; rows 1..d
        # hold the shifted Gram on the upper block triangle.
        product = torch.empty(d + 1, d, dtype=dtype, device=x.device)
        for start, stop in self._blocks:
            first = 0 if start == 0 else start + 1
            torch.mm(samples[first : stop + 1], samples[start + 1 :].t(), out=product[first : stop + 1, start:])
        offset = product[0].to(self.dtype).div_(n_b)
        offset_squared = offset.square()
        spread = torch.diagonal(product[1:]).to(self.dtype).div_(n_b).sub_(offset_squared)
        # NaN and Inf fail this comparison too; told apart only when it fails.
        if not bool((offset_squared <= _MAX_OFFSET_TO_STD**2 * spread).all()):
            if not bool(torch.isfinite(offset).all() & torch.isfinite(spread).all()):
                return False
            return None
        n_a = self._count
        n = n_a + n_b
        delta = offset + (shift.to(self.dtype) - mean)
        # Both rank-one terms as one rank-two product per block.
        left = torch.stack([offset, delta], dim=1)
        right = torch.stack([offset * -float(n_b), delta * (n_a * n_b / n)], dim=1)
        for start, stop in self._blocks:
            block = comoment[start:stop, start:]
            block.add_(product[start + 1 : stop + 1, start:])
            block.addmm_(left[start:stop], right[start:].t())
        mean.add_(delta, alpha=n_b / n)
        self._count = n
        return True

    def _merge_on_device(self, x: torch.Tensor, verdict: torch.Tensor | None = None) -> torch.Tensor:
        """Merge one slice without reading anything back; returns whether it was merged.

        A rejected batch is zeroed, so the product adds nothing for it.
        ``verdict`` is the decision already taken for the whole batch, when
        ``x`` is one of its slices; otherwise the slice's upcast copy decides.
        """
        mean, comoment, count = self._mean, self._comoment, self._device_count
        assert mean is not None and comoment is not None and count is not None
        n_b = x.numel() // x.shape[-1]
        samples, batch_mean, residual = self._centre(x, extra=1, dtype=self._product_dtype)
        finite = torch.isfinite(batch_mean).all()
        if verdict is not None:
            finite = finite & verdict
        samples.masked_fill_(~finite, 0.0)
        if residual is not None:
            residual.masked_fill_(~finite, 0.0)
        accepted = finite.to(torch.int64) * n_b
        new_count = count + accepted
        total = new_count.clamp_min(1).to(mean.dtype)
        delta = torch.where(finite, batch_mean, mean) - mean
        weight = (count * accepted).to(mean.dtype) / total
        samples[:, n_b].copy_(delta * weight.sqrt())
        self._add_gram(samples, comoment, residual, n_b)
        mean.add_(delta * (accepted.to(mean.dtype) / total))
        count.copy_(new_count)
        return finite

    def _add_gram(self, samples: torch.Tensor, out: torch.Tensor, residual: torch.Tensor | None, n: int) -> None:
        """``out += S S^T - residual residual^T / n`` on the upper block triangle only.

        ``samples`` is the ``(d, m)`` view that :meth:`_centre` returned.
        """
        same = samples.dtype == out.dtype
        if residual is not None:
            residual = residual.view(-1).to(out.dtype)
        for start, stop in self._blocks:
            block = out[start:stop, start:]
            if same:
                block.addmm_(samples[start:stop], samples[start:].t())
            else:
                block.add_(torch.mm(samples[start:stop], samples[start:].t()))
            if residual is not None:
                block.addr_(residual[start:stop], residual[start:], alpha=-1.0 / n)

    def _full_comoment(self) -> torch.Tensor:
        """The co-moment with its lower triangle mirrored from the upper one."""
        assert self._comoment is not None
        return torch.triu(self._comoment) + torch.triu(self._comoment, diagonal=1).t()

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
        if n_b == 0:
            self._sync_device_counters()
            self._rejected += rejected_b
            self._write_device_counters()
            return self
        if self._mean is None:
            self._allocate(other._mean.shape[0], other._mean.device)  # type: ignore[union-attr]
        assert self._mean is not None
        if other._mean.shape[0] != self._mean.shape[0]:  # type: ignore[union-attr]
            raise ValueError(
                f"cannot merge covariances of {other._mean.shape[0]} and "  # type: ignore[union-attr]
                f"{self._mean.shape[0]} features"
            )
        n_a = self.count
        n = n_a + n_b
        other_mean = other._mean.to(self._mean.device, self.dtype)  # type: ignore[union-attr]
        other_m2 = other._full_comoment().to(self._mean.device, self.dtype)
        delta = other_mean - self._mean
        comoment = self._full_comoment().add_(other_m2)
        comoment.addr_(delta, delta, alpha=n_a * n_b / n)
        self._comoment = comoment
        self._mean.add_(delta, alpha=n_b / n)
        self._count = n
        self._rejected += rejected_b
        self._write_device_counters()
        return self

    def _write_device_counters(self) -> None:
        if self._device_count is not None:
            self._device_count.fill_(self._count)
            self._device_rejected.fill_(self._rejected)  # type: ignore[union-attr]

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
        return self._full_comoment().div_(self._count)

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Tensors only, so the state loads with ``torch.load(weights_only=True)``."""
        count = self.count
        state = {
            "count": torch.tensor(count, dtype=torch.int64),
            "rejected_batches": torch.tensor(self._rejected, dtype=torch.int64),
        }
        if self._mean is not None:
            state["mean"] = self._mean.clone()
            state["comoment"] = self._full_comoment()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`."""
        self.reset()
        if "mean" in state:
            mean = state["mean"]
            self._allocate(mean.shape[0], self.device or mean.device)
            self._mean.copy_(mean)  # type: ignore[union-attr]
            self._comoment.copy_(state["comoment"])  # type: ignore[union-attr]
        self._count = int(state["count"])
        self._rejected = int(state.get("rejected_batches", 0))
        self._write_device_counters()

    def __repr__(self) -> str:
        return (
            f"TorchCovarianceMatrix(features={self.num_features}, count={self._count}, "
            f"device={self.device}, precision={self.precision!r})"
        )
