"""One batch into the running moments, by each route of :func:`delve.engine.products.choose_route`.

:class:`Moments` is the running state of a covariance accumulator: the row
count, the mean and the upper block triangle of the centred co-moment, all in
the state's dtype (float64). Each function here merges one unsliced batch by
the pairwise update of Chan, Golub and LeVeque::

    n     = n_a + n_b
    delta = mean_b - mean_a
    mean  = mean_a + delta * n_b / n
    M     = M_a + M_b + delta delta^T * n_a * n_b / n

and leaves the state untouched when the batch holds NaN or Inf. Because no
raw sum of squares is ever formed, a large common offset never cancels the
variance away (the textbook ``E[x x^T] - mean mean^T`` loses about
``2 * log10(|mean| / std)`` digits). Only the upper block triangle of ``M``
is accumulated: the Gram product of a centred batch is symmetric, so the
lower blocks would be redundant work; reading mirrors it.
:class:`~delve.engine.covariance.TorchCovarianceMatrix` holds small batches
back, chooses each batch's route and owns the state's life cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .products import (
    MAX_OFFSET_TO_STD,
    ProductPlan,
    Route,
    add_gram,
    all_finite,
    centre,
    choose_route,
    feature_blocks,
    pairwise_weight,
    shifted_gram,
    slices,
)

__all__ = [
    "Moments",
    "PendingRows",
    "PENDING_BYTES",
    "pending_capacity",
    "upper_indices",
    "merge_on_cpu",
    "merge_sliced",
    "merge_on_device",
    "merge_centred",
    "merge_shifted",
    "merge_slice_on_device",
]


@dataclass
class Moments:
    """Running count, mean and co-moment (upper block triangle) of one accumulator.

    Attributes
    ----------
    mean : torch.Tensor
        ``(d,)`` running mean.
    comoment : torch.Tensor
        ``(d, d)`` centred co-moment; only its upper block triangle
        (``blocks``) is kept up to date.
    blocks : list of (int, int)
        Column blocks of the upper-triangular product
        (:func:`delve.engine.products.feature_blocks`).
    count : int
        Rows merged (CPU route).
    device_count, device_rejected : torch.Tensor or None
        On accelerators the counters stay on the device, so no decision is
        read back; ``None`` on a CPU.
    """

    mean: torch.Tensor
    comoment: torch.Tensor
    blocks: list[tuple[int, int]]
    count: int = 0
    device_count: torch.Tensor | None = None
    device_rejected: torch.Tensor | None = None

    def clone(self) -> Moments:
        """A copy of the tensors (a snapshot to restore a partly merged batch)."""
        return Moments(self.mean.clone(), self.comoment.clone(), self.blocks, self.count)

    def full_comoment(self) -> torch.Tensor:
        """The co-moment with its lower triangle mirrored from the upper one."""
        return torch.triu(self.comoment) + torch.triu(self.comoment, diagonal=1).t()

    def absorb(self, mean: torch.Tensor, comoment: torch.Tensor, count: int) -> None:
        """Merge another set of moments (mean, full co-moment, count) into these, in place."""
        n_a, n = self.count, self.count + count
        delta = mean.to(self.mean) - self.mean
        merged = self.full_comoment().add_(comoment.to(self.comoment))
        merged.addr_(delta, delta, alpha=n_a * count / n)
        self.comoment = merged
        self.mean.add_(delta, alpha=count / n)
        self.count = n

    def add_batch(self, mean: torch.Tensor, comoment: torch.Tensor, count: int) -> None:
        """Merge one batch's mean and full (symmetric) co-moment, in place, keeping the upper blocks valid.

        Cheaper than :meth:`absorb`: the state is not mirrored first, since
        adding a symmetric matrix keeps its upper block triangle right.
        """
        n_a, n = self.count, self.count + count
        delta = mean.to(self.mean) - self.mean
        self.comoment.add_(comoment.to(self.comoment)).addr_(delta, delta, alpha=n_a * count / n)
        self.mean.add_(delta, alpha=count / n)
        self.count = n

    def add_batch_on_device(
        self, mean: torch.Tensor, comoment: torch.Tensor, count: int, verdict: torch.Tensor
    ) -> None:
        """:meth:`add_batch` without reading anything back: a rejected batch (``verdict`` false) adds nothing."""
        assert self.device_count is not None and self.device_rejected is not None
        accepted = verdict.to(torch.int64) * count
        new_count = self.device_count + accepted
        total = new_count.clamp_min(1).to(self.mean.dtype)
        delta = torch.where(verdict, mean.to(self.mean), self.mean) - self.mean
        weight = (self.device_count * accepted).to(self.mean.dtype) / total
        self.comoment.add_(torch.where(verdict, comoment.to(self.comoment), 0.0))
        self.comoment.add_(torch.outer(delta, delta) * weight)
        self.mean.add_(delta * (accepted.to(self.mean.dtype) / total))
        self.device_count.copy_(new_count)
        self.device_rejected.add_((~verdict).to(torch.int64))

    def packed(self) -> dict[str, torch.Tensor]:
        """Mean and the co-moment's upper triangle (row by row): half the matrix, for a checkpoint."""
        rows, columns = upper_indices(self.mean.shape[0], self.mean.device)
        return {"mean": self.mean.clone(), "comoment_upper": self.comoment[rows, columns]}

    @classmethod
    def from_packed(
        cls, mean: torch.Tensor, upper: torch.Tensor, count: int, blocks: list[tuple[int, int]]
    ) -> Moments:
        """Moments from a mean and the co-moment's upper triangle (row by row), as :meth:`packed` gives them."""
        d = mean.shape[0]
        comoment = torch.zeros(d, d, dtype=mean.dtype, device=mean.device)
        rows, columns = upper_indices(d, mean.device)
        comoment[rows, columns] = upper.to(comoment)
        return cls(mean.clone(), comoment, blocks, count)

    def widened(self, d: int) -> Moments:
        """These moments with zero features appended up to ``d`` (exact for features that were always zero)."""
        width = self.mean.shape[0]
        if d == width:
            return self
        mean = torch.zeros(d, dtype=self.mean.dtype, device=self.mean.device)
        mean[:width] = self.mean
        comoment = torch.zeros(d, d, dtype=self.comoment.dtype, device=self.comoment.device)
        comoment[:width, :width] = self.full_comoment()
        return Moments(mean, comoment, feature_blocks(d), self.count)


def upper_indices(d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the upper triangle of a ``d x d`` matrix, row by row."""
    rows, columns = torch.triu_indices(d, d, device=device)
    return rows, columns


#: Largest buffer of small batches held back per accumulator (see :class:`~delve.engine.moments.PendingRows`).
PENDING_BYTES = 32 * 2**20
# Blocks of about d rows make the product compute-bound; narrower layers still gain from larger blocks.
_MIN_BLOCK_ROWS = 128


def pending_capacity(d: int, dtype: torch.dtype) -> int:
    """Rows of the block small batches are gathered into before one product.

    Examples
    --------
    >>> pending_capacity(64, torch.float32), pending_capacity(1024, torch.float32)
    (128, 1024)
    """
    itemsize = 8 if dtype.itemsize > 4 else 4
    return min(max(d, _MIN_BLOCK_ROWS), PENDING_BYTES // (itemsize * d))


class PendingRows:
    """Small batches held back and merged together in blocks of about ``d`` rows.

    Merging a batch of ``n`` rows reads and writes the whole ``d x d`` state,
    whatever ``n``: for a few rows (a budget's sample, a small batch of a wide
    layer) that traffic costs more than the product. Rows wait here, in the
    dtype they came in (float32 holds float16, bfloat16 and float32 values
    exactly), until a block is full; a block is then one product.

    Examples
    --------
    >>> pending = PendingRows(capacity=4, features=2, dtype=torch.float32, device=torch.device("cpu"))
    >>> pending.add(torch.ones(3, 2)), pending.count, pending.room
    (True, 3, 1)
    >>> pending.rows().shape
    torch.Size([3, 2])
    """

    def __init__(self, capacity: int, features: int, dtype: torch.dtype, device: torch.device) -> None:
        self.buffer = torch.empty(capacity, features, dtype=dtype, device=device)
        self.count = 0

    @property
    def room(self) -> int:
        """Rows that still fit."""
        return self.buffer.shape[0] - self.count

    def add(self, x: torch.Tensor) -> bool:
        """Copy ``(..., d)`` rows in (the caller checked they fit); ``False`` if they hold NaN or Inf."""
        n = x.numel() // x.shape[-1]
        block = self.buffer[self.count : self.count + n]
        block.view(*x.shape[:-1], x.shape[-1]).copy_(x)
        # Judged on the copy, which is small: a sum of the batch could overflow, its extremes cannot.
        if not bool(all_finite(block)):
            return False
        self.count += n
        return True

    def restore(self, rows: torch.Tensor) -> None:
        """Put back ``(n, d)`` rows saved by a checkpoint (judged finite when they first came in)."""
        self.buffer[: rows.shape[0]].copy_(rows)
        self.count = rows.shape[0]

    def rows(self) -> torch.Tensor:
        """The rows held, ``(count, d)``."""
        return self.buffer[: self.count]

    def clear(self) -> None:
        """Forget the rows held (after they were merged)."""
        self.count = 0


def merge_on_cpu(moments: Moments, x: torch.Tensor, route: Route) -> bool:
    """Merge one unsliced batch on a CPU; ``False`` (state untouched) when it holds NaN or Inf."""
    if route.shifted:
        merged = merge_shifted(moments, x, route.product_dtype)
        if merged is not None:
            return merged
    return merge_centred(moments, x, route.product_dtype)


def merge_sliced(moments: Moments, x: torch.Tensor, route: Route, plan: ProductPlan) -> bool:
    """A large batch merged in slices on a CPU, each slice by its own route under ``plan``.

    The batch is left out whole when any slice holds NaN or Inf: the state
    is restored from a snapshot, or, where the state is larger than the batch,
    the batch is checked first (the cheaper pass).
    """
    assert route.slice_bytes is not None
    d = x.shape[-1]
    snapshot = None
    if x.numel() // d >= d:
        snapshot = moments.clone()
    elif not bool(all_finite(x)):
        return False
    for part in slices(x, route.slice_bytes, route.product_dtype):
        part_route = choose_route(plan, part.numel() // d, d, part.dtype, moments.count > 0)
        if not merge_on_cpu(moments, part, part_route):
            if snapshot is not None:
                moments.mean, moments.comoment, moments.count = snapshot.mean, snapshot.comoment, snapshot.count
            return False
    return True


def merge_on_device(moments: Moments, x: torch.Tensor, route: Route) -> torch.Tensor:
    """The accelerator route: every decision stays on the device, no host synchronisation.

    An unsliced batch is judged from its upcast copy. A sliced batch is judged
    whole before the first slice is merged, by one overflow-free pass over it,
    so its clean slices are not kept when another slice holds NaN or Inf.
    Returns the verdict as a 0-d bool tensor.
    """
    if route.slice_bytes is None:
        finite = merge_slice_on_device(moments, x, route.product_dtype)
    else:
        finite = all_finite(x)
        for part in slices(x, route.slice_bytes, route.product_dtype):
            merge_slice_on_device(moments, part, route.product_dtype, finite)
    moments.device_rejected.add_((~finite).to(torch.int64))  # type: ignore[union-attr]
    return finite


def merge_centred(moments: Moments, x: torch.Tensor, dtype: torch.dtype) -> bool:
    """Centre the batch on its own mean and merge it; ``False`` when it holds NaN or Inf."""
    mean, comoment = moments.mean, moments.comoment
    n_a = moments.count
    n_b = x.numel() // x.shape[-1]
    n = n_a + n_b
    samples, batch_mean, residual = centre(x, 1 if n_a else 0, dtype, mean.dtype)
    # CPU kernels run eagerly: reading the verdict costs no synchronisation.
    if not bool(torch.isfinite(batch_mean).all()):
        return False
    delta = batch_mean - mean
    if n_a:
        # The pairwise update's (n_a n_b / n) delta delta^T rides in the
        # product as one more sample instead of a pass over the d x d state.
        samples[:, n_b].copy_(delta * pairwise_weight(n_a, n_b))
    add_gram(samples, comoment, residual, n_b, moments.blocks)
    mean.add_(delta, alpha=n_b / n)
    moments.count = n
    return True


def merge_shifted(moments: Moments, x: torch.Tensor, dtype: torch.dtype) -> bool | None:
    """Merge a tall batch shifted by the running mean (see :mod:`delve.engine.products`).

    With any shift ``c`` the update is exactly::

        M = M_a + sum_b (x - c)(x - c)^T - n_b u u^T + (n_a n_b / n) delta delta^T

    with ``u = mean_b - c``. Returns ``False`` for a batch holding NaN or Inf
    and ``None``, with the state untouched, when the batch mean lies more than
    :data:`~delve.engine.products.MAX_OFFSET_TO_STD` standard deviations from the
    shift in some feature; the caller then centres the batch instead.
    """
    mean, comoment = moments.mean, moments.comoment
    n_b = x.numel() // x.shape[-1]
    shift = mean.to(dtype)
    product = shifted_gram(x, shift, dtype, moments.blocks)
    # Out of place: in float64 .to() returns the product itself, which is still to be added.
    offset = product[0].to(mean.dtype) / n_b
    offset_squared = offset.square()
    spread = torch.diagonal(product[1:]).to(mean.dtype) / n_b - offset_squared
    # NaN and Inf fail this comparison too; told apart only when it fails.
    if not bool((offset_squared <= MAX_OFFSET_TO_STD**2 * spread).all()):
        if not bool(torch.isfinite(offset).all() & torch.isfinite(spread).all()):
            return False
        return None
    n_a = moments.count
    n = n_a + n_b
    delta = offset + (shift.to(mean.dtype) - mean)
    # Both rank-one terms as one rank-two product per block.
    left = torch.stack([offset, delta], dim=1)
    right = torch.stack([offset * -float(n_b), delta * (n_a * n_b / n)], dim=1)
    for start, stop in moments.blocks:
        block = comoment[start:stop, start:]
        block.add_(product[start + 1 : stop + 1, start:])
        block.addmm_(left[start:stop], right[start:].t())
    mean.add_(delta, alpha=n_b / n)
    moments.count = n
    return True


def merge_slice_on_device(
    moments: Moments, x: torch.Tensor, dtype: torch.dtype, verdict: torch.Tensor | None = None
) -> torch.Tensor:
    """Merge without reading anything back; returns whether the batch was merged (0-d bool tensor).

    A rejected batch is zeroed, so the product adds nothing for it.
    ``verdict`` is the decision already taken for the whole batch, when ``x``
    is one of its slices; otherwise the batch's upcast copy decides.
    """
    mean, comoment, count = moments.mean, moments.comoment, moments.device_count
    assert count is not None
    n_b = x.numel() // x.shape[-1]
    samples, batch_mean, residual = centre(x, 1, dtype, mean.dtype)
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
    add_gram(samples, comoment, residual, n_b, moments.blocks)
    mean.add_(delta * (accepted.to(mean.dtype) / total))
    count.copy_(new_count)
    return finite
