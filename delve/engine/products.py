"""The products behind a covariance update: buffer layout, blocks, centring, and which route a batch takes.

Everything here is a function of tensors; the running moments and their merge
live in :mod:`delve.engine.moments`. :func:`choose_route` decides, from the
batch's shape and dtype and the accumulator's :class:`ProductPlan` alone, how a
batch is multiplied, so the decision can be tested on its own:

* **centred**: the rows are copied into the product buffer, centred on their
  own mean, and multiplied; the running state absorbs the batch by the
  pairwise update (:mod:`delve.engine.moments`).
* **shifted** (tall batches): the rows are shifted by the running mean while
  they are copied, a row of ones in the product gives the batch sum, and
  rank-one terms on the small state complete the update. It saves the
  centring passes over the rows (a sum and a subtraction), which for a
  narrow convolution cost as much as its product. A shift leaving the batch mean
  more than :data:`MAX_OFFSET_TO_STD` standard deviations away in some
  feature falls back to centring, where rounding stays bounded.
* **on device** (accelerators): centred, with every accept/reject decision
  kept on the device, so a forward pass never waits for the host.

A batch larger than :data:`SLICE_BYTES` (CPU) or :data:`DEVICE_SLICE_BYTES`
is merged in slices, exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..common.torch_features import aminmax

__all__ = [
    "SLICE_BYTES",
    "DEVICE_SLICE_BYTES",
    "SHIFTED_ROWS_PER_FEATURE",
    "MIN_FAST_ROWS_FRACTION",
    "MAX_OFFSET_TO_STD",
    "Route",
    "ProductPlan",
    "choose_route",
    "decides_on_device",
    "all_finite",
    "to_device",
    "feature_blocks",
    "product_buffer",
    "slices",
    "centre",
    "add_gram",
    "shifted_gram",
    "pairwise_weight",
]

# Largest centred slice (bytes) merged at once. On a CPU a slice of 8 MiB stays
# below the size from which the C allocator maps (and the kernel zero-fills)
# fresh pages at every call, which cost as much as the product itself for the
# 32 MiB float64 rows of a 64-channel 32x32 convolution at batch 64; 4 to 16 MiB
# measured alike on 2 threads, 1 MiB and unsliced clearly slower.
SLICE_BYTES = 8 * 2**20
# On accelerators the slice only bounds the transient buffer.
DEVICE_SLICE_BYTES = 256 * 2**20
# The shifted (uncentred) product is used when a batch has at least this many
# rows per feature: its rank-one corrections cost passes over d x d, the
# centring passes it saves cost passes over n x d.
SHIFTED_ROWS_PER_FEATURE = 4
# On a CPU, float32 products are used for batches of at least d / 8 rows.
# Measured on a 1024-1024-512 MLP (2 threads): at 32 and 64 rows per batch the
# float32 route cost +62 % and +43 % per step against +36 % and +30 % for
# float64 products; from 128 rows on it is the cheaper one.
MIN_FAST_ROWS_FRACTION = 8
# The shifted route for float64 products too (exact mode), where the centring
# passes it saves are also a pass over every element each.
SHIFTED_FLOAT64 = True
# Largest |batch mean - shift| / std accepted in the shifted product: the
# rounding error of the uncentred product grows by at most 1 + 2**2 = 5
# (0.7 digits). Further out, the batch is centred on its own mean instead.
MAX_OFFSET_TO_STD = 2.0


@dataclass(frozen=True)
class Route:
    """How one batch is merged.

    Attributes
    ----------
    on_device : bool
        Keep every decision on the device (accelerators): no host synchronisation.
    product_dtype : torch.dtype
        Precision of the Gram product.
    shifted : bool
        Shift by the running mean instead of centring (see the module docstring).
    slice_bytes : int or None
        Merge in slices of about this many bytes; ``None``: in one piece.
    tf32 : bool
        TensorFloat-32 float32 products (``precision="tf32"`` on CUDA).
    """

    on_device: bool
    product_dtype: torch.dtype
    shifted: bool = False
    slice_bytes: int | None = None
    tf32: bool = False


def decides_on_device(device: torch.device) -> bool:
    """Whether batches on ``device`` are merged without reading decisions back to the host.

    On a CPU a value read back costs nothing; on an accelerator it would stall
    the stream at every forward pass. (Tests force the accelerator route on a
    CPU by replacing this function.)
    """
    return device.type != "cpu"


@dataclass(frozen=True)
class ProductPlan:
    """How an accumulator multiplies, fixed once its device and precision are known.

    Attributes
    ----------
    product_dtype : torch.dtype
        What the accumulator's precision asks for in the Gram product.
    state_dtype : torch.dtype
        The running state's dtype.
    device : torch.device
        Where the state lives.
    tf32 : bool
        Whether float32 products may use TensorFloat-32 (CUDA only).
    """

    product_dtype: torch.dtype
    state_dtype: torch.dtype
    device: torch.device
    tf32: bool = False

    @property
    def on_device(self) -> bool:
        """Whether every decision stays on the device (see :func:`decides_on_device`)."""
        return decides_on_device(self.device)


def choose_route(plan: ProductPlan, rows: int, features: int, input_dtype: torch.dtype, merged_before: bool) -> Route:
    """The route of a batch of ``rows`` x ``features`` values of ``input_dtype`` under ``plan``.

    ``merged_before`` says whether the state already holds rows (the shifted
    route needs a running mean).

    Examples
    --------
    >>> plan = ProductPlan(torch.float32, torch.float64, torch.device("cpu"))
    >>> choose_route(plan, 16384, 64, torch.float32, merged_before=True)
    Route(on_device=False, product_dtype=torch.float32, shifted=True, slice_bytes=None, tf32=False)
    >>> choose_route(plan, 65536, 64, torch.float32, merged_before=True).slice_bytes
    8388608
    >>> choose_route(plan, 32, 1024, torch.float32, merged_before=True).product_dtype
    torch.float64
    """
    on_device = plan.on_device
    product_dtype, state_dtype = plan.product_dtype, plan.state_dtype
    limit = DEVICE_SLICE_BYTES if on_device else SLICE_BYTES
    sliced = rows * features * _itemsize(product_dtype) > limit
    if not on_device and product_dtype != state_dtype and rows * MIN_FAST_ROWS_FRACTION < features:
        # A low-precision product of few rows costs more than it saves:
        # adding its d x d result into the state is a pass of its own,
        # where a float64 product accumulates in place (and exactly).
        product_dtype = state_dtype
    shifted = (
        not on_device
        and not sliced
        and merged_before
        and (SHIFTED_FLOAT64 or product_dtype != state_dtype)
        and rows >= SHIFTED_ROWS_PER_FEATURE * (features + 1)
        and _itemsize(input_dtype) <= _itemsize(product_dtype)
    )
    tf32 = plan.tf32 and product_dtype == torch.float32 and plan.device.type == "cuda"
    return Route(on_device, product_dtype, shifted, limit if sliced else None, tf32)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8


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
    low, high = aminmax(x)
    return torch.isfinite(low) & torch.isfinite(high)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; asynchronous only where that is safe.

    A copy from an accelerator into ordinary host memory that does not wait
    could be read before it has landed, so copies to the CPU block.
    """
    return x.to(device, non_blocking=device.type != "cpu")


def feature_blocks(d: int) -> list[tuple[int, int]]:
    """Split ``range(d)`` into column blocks for the upper-triangular product.

    More blocks skip more of the redundant lower triangle (``(b + 1) / 2b`` of
    the full product) but cost one kernel launch each; small matrices are not
    worth splitting at all.

    Examples
    --------
    >>> feature_blocks(100), feature_blocks(200)
    ([(0, 100)], [(0, 50), (50, 100), (100, 150), (150, 200)])
    """
    if d < 128:
        return [(0, d)]
    n_blocks = 4 if d < 512 else 8 if d < 2048 else 16
    step = -(-d // n_blocks)
    return [(start, min(start + step, d)) for start in range(0, d, step)]


def product_buffer(
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


def slices(x: torch.Tensor, limit: int, dtype: torch.dtype) -> Iterator[torch.Tensor]:
    """Views of ``x`` along its leading dimensions of about ``limit`` bytes each in ``dtype``.

    Merging a batch in parts is exact: the pairwise update does not care how
    rows are grouped. On a CPU a slice stays in cache through the passes that
    copy, centre and multiply it, and its buffer is recycled by the allocator
    instead of being freshly mapped (and page-faulted) by the operating
    system at every call.
    """
    nbytes = x.numel() * _itemsize(dtype)
    if nbytes <= limit or (x.shape[0] == 1 and x.ndim == 2):
        yield x
        return
    per_index = nbytes // x.shape[0]
    if per_index > limit and x.ndim > 2:
        for index in range(x.shape[0]):
            yield from slices(x[index], limit, dtype)
        return
    # Equal slices: a small remainder slice would cost a product's fixed
    # overhead for few rows.
    step = max(limit // per_index, 1 if x.ndim > 2 else 256)
    step = -(-x.shape[0] // -(-x.shape[0] // step))
    for start in range(0, x.shape[0], step):
        yield x[start : start + step]


def centre(
    x: torch.Tensor, extra: int, dtype: torch.dtype, state_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Copy ``x`` into a product buffer and centre it on its own mean.

    Returns ``(samples, batch_mean, residual)``. ``samples`` is a
    ``(d, n + extra)`` view: the ``n`` centred rows of ``x`` as columns, then
    ``extra`` columns left for the caller (see :func:`product_buffer` for its
    layout). ``copy_`` is also the fast dtype conversion here: mixed-dtype
    arithmetic is several times slower on a CPU. ``batch_mean`` is in
    ``state_dtype``.

    In a product precision below the state's, the mean left over in the
    centred rows is measured; it is subtracted again when that is the cheaper
    pass (fewer samples than features), else returned as ``residual`` (the
    sum of the centred rows) for the product to remove.
    """
    d = x.shape[-1]
    n = x.numel() // d
    shift = None
    if torch.finfo(x.dtype).bits > torch.finfo(dtype).bits:
        # Rounding wider inputs (float64 into a float32 product) before
        # centring would lose what a large mean leaves of the spread.
        shift = x.mean(dim=tuple(range(x.ndim - 1)), dtype=torch.float64)
        x = x - shift
    samples, rows = product_buffer(x, dtype, extra_samples=extra)
    rows.copy_(x)
    data = samples[:, :n]
    batch_mean = data.sum(1, keepdim=True).div_(n)
    data.sub_(batch_mean)
    batch_mean = batch_mean.to(state_dtype)
    residual = None
    if dtype != state_dtype:
        # A mean summed in the product precision is off by a rounding
        # error that grows with |mean|; what it left in the rows is
        # measured in the same precision, where it is small. (A float64
        # sum of float32 data costs three times as much on a CPU.)
        residual = data.sum(1, keepdim=True)
        batch_mean.add_(residual.to(state_dtype), alpha=1.0 / n)
        if n <= d:
            data.sub_(residual / n)
            residual = None
    batch_mean = batch_mean.view(d)
    if shift is not None:
        batch_mean = batch_mean + shift.to(state_dtype)
    return samples, batch_mean, residual


def add_gram(
    samples: torch.Tensor,
    out: torch.Tensor,
    residual: torch.Tensor | None,
    n: int,
    blocks: list[tuple[int, int]],
) -> None:
    """``out += S S^T - residual residual^T / n`` on the upper block triangle only.

    ``samples`` is the ``(d, m)`` view that :func:`centre` returned.
    """
    same = samples.dtype == out.dtype
    if residual is not None:
        residual = residual.view(-1).to(out.dtype)
    for start, stop in blocks:
        block = out[start:stop, start:]
        if same:
            block.addmm_(samples[start:stop], samples[start:].t())
        else:
            block.add_(torch.mm(samples[start:stop], samples[start:].t()))
        if residual is not None:
            block.addr_(residual[start:stop], residual[start:], alpha=-1.0 / n)


def shifted_gram(
    x: torch.Tensor, shift: torch.Tensor, dtype: torch.dtype, blocks: list[tuple[int, int]]
) -> torch.Tensor:
    """The Gram product of ``x - shift`` with the batch sum, on the upper block triangle.

    One pass subtracts ``shift`` while it copies the rows into a ``(d + 1, n)``
    buffer whose first row is ones; one blocked product gives ``(d + 1, d)``:
    row 0 the sum of the shifted rows, rows ``1..d`` their Gram product
    (upper block triangle; the rest is left unset).
    """
    d = x.shape[-1]
    samples, rows = product_buffer(x, dtype, ones_row=True)
    if x.dtype == dtype:
        torch.sub(x, shift, out=rows)
    else:
        rows.copy_(x).sub_(shift)
    product = torch.empty(d + 1, d, dtype=dtype, device=x.device)
    for start, stop in blocks:
        first = 0 if start == 0 else start + 1
        torch.mm(samples[first : stop + 1], samples[start + 1 :].t(), out=product[first : stop + 1, start:])
    return product


def pairwise_weight(n_a: int, n_b: int) -> float:
    """``sqrt(n_a n_b / n)``: scaled by it, ``delta`` enters the product as one more sample."""
    return math.sqrt(n_a * n_b / (n_a + n_b))
