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
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["TorchCovarianceMatrix", "EmptyCovarianceError"]

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
    n_blocks = 4 if d < 512 else 8
    step = -(-d // n_blocks)
    return [(start, min(start + step, d)) for start in range(0, d, step)]


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
        (TF32 on recent GPUs when enabled); each batch is still centred on its
        own mean in float64 first, so the error does not grow with the mean.

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
        if self.device.type != "cpu":
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
    def update_rows(self, x: torch.Tensor) -> None:
        """Merge a batch whose leading dimensions are all samples.

        ``x`` has shape ``(..., d)``. A strided view (for example the
        channels-last view of a convolution output) is gathered in the same
        pass that centres and upcasts it, so no separate permute copy is made.
        A batch holding NaN or Inf is not merged; it is counted in
        :attr:`rejected_batches` instead.
        """
        if not x.is_floating_point():
            raise ValueError(f"observations must be floating point, got dtype {x.dtype}")
        d = x.shape[-1] if x.ndim else 0
        n = x.numel() // d if d else 0
        if n == 0:
            return
        if self._mean is None:
            self._allocate(d, x.device)
        elif d != self._mean.shape[0]:
            raise ValueError(
                f"feature size changed from {self._mean.shape[0]} to {d}; "
                "reset() the accumulator before feeding a different layer width"
            )
        if x.device != self.device:
            x = x.to(self.device, non_blocking=True)

        batch_mean = x.mean(dim=tuple(range(x.ndim - 1)), dtype=self.dtype)
        centred = torch.empty(x.shape, dtype=self._product_dtype, device=x.device)
        # One pass gathers a strided view, upcasts and centres. The subtraction
        # runs in float64 even when the product is float32: rounding the mean
        # first would leave an offset error that grows with |mean|.
        torch.sub(x, batch_mean, out=centred)
        centred = centred.view(n, d)
        if self._device_count is None:
            # CPU kernels run eagerly: reading the flag costs no device
            # synchronisation and lets the product accumulate in place.
            if not bool(torch.isfinite(batch_mean).all()):
                self._rejected += 1
                return
            self._merge_eager(centred, batch_mean)
        else:
            self._merge_on_device(centred, batch_mean)

    def _merge_eager(self, centred: torch.Tensor, batch_mean: torch.Tensor) -> None:
        mean, comoment = self._mean, self._comoment
        assert mean is not None and comoment is not None
        n_a, n_b = self._count, centred.shape[0]
        n = n_a + n_b
        delta = batch_mean - mean
        self._add_gram(centred, comoment)
        if n_a:
            comoment.addr_(delta, delta, alpha=n_a * n_b / n)
        mean.add_(delta, alpha=n_b / n)
        self._count = n

    def _merge_on_device(self, centred: torch.Tensor, batch_mean: torch.Tensor) -> None:
        mean, comoment = self._mean, self._comoment
        count, rejected = self._device_count, self._device_rejected
        assert mean is not None and comoment is not None
        assert count is not None and rejected is not None
        finite = torch.isfinite(batch_mean).all()
        n_b = centred.shape[0]
        accepted = finite.to(torch.int64) * n_b
        new_count = count + accepted
        gram = torch.zeros_like(comoment)
        self._add_gram(centred, gram)
        delta = torch.where(finite, batch_mean, mean) - mean
        weight = (count * accepted).to(mean.dtype) / new_count.clamp_min(1).to(mean.dtype)
        gram.addr_(delta * weight, delta)
        comoment.add_(torch.where(finite, gram, 0.0))
        mean.add_(delta * (accepted.to(mean.dtype) / new_count.clamp_min(1).to(mean.dtype)))
        count.copy_(new_count)
        rejected.add_((~finite).to(torch.int64))

    def _add_gram(self, centred: torch.Tensor, out: torch.Tensor) -> None:
        """``out += centred^T centred`` on the upper block triangle only."""
        ct = centred.t()
        if self._product_dtype == out.dtype:
            for start, stop in self._blocks:
                out[start:stop, start:].addmm_(ct[start:stop], centred[:, start:])
        else:
            for start, stop in self._blocks:
                out[start:stop, start:].add_(torch.mm(ct[start:stop], centred[:, start:]))

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
