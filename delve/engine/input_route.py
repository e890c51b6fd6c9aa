"""The input route: a batch's input scatter mapped through an affine layer's weights, exactly.

For ``y = W x + b`` (:mod:`delve.capture.affine`), a batch of ``n`` input
rows with mean ``m_x`` and centred scatter ``S_x`` has output mean
``W m_x + b`` and output scatter ``W S_x W^T``. The scatter costs
``n d_in^2 / 2`` multiply-adds and the map ``d_out d_in (d_in + d_out)``,
whatever ``n``; the output Gram would cost ``n d_out^2 / 2``. Where a layer
widens (attention's projections, an MLP's up projection, a pointwise
expansion) and batches are tall, the input side is the cheaper exact route;
:mod:`delve.budget` chooses per layer. The scatter and the map are computed
in the covariance's own product precision (float64 in exact mode, float32
where the precision allows it, as under a budget) from the full-precision
weights, every batch with that batch's weights; the mean in the state's
float64. Layers reading the same input tensor in one forward pass (query, key
and value; gate and up projections) share one scatter (:class:`ScatterCache`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from ..capture.affine import AffineView
from .moments import Moments, merge_on_cpu, merge_slice_on_device, merge_sliced
from .products import ProductPlan, all_finite, choose_route, feature_blocks

__all__ = ["InputScatter", "MappedInput", "input_scatter", "mapped", "merge_mapped", "ScatterCache"]


@dataclass(frozen=True)
class InputScatter:
    """The count, mean and centred scatter (full, float64) of a batch's input rows.

    ``accepted`` is whether the rows were finite: a bool on a CPU, a 0-d bool
    tensor on accelerators.
    """

    count: int
    mean: torch.Tensor
    scatter: torch.Tensor
    accepted: bool | torch.Tensor


def input_scatter(rows: torch.Tensor, plan: ProductPlan) -> InputScatter:
    """The :class:`InputScatter` of ``(..., d_in)`` rows, by the product routes of ``plan``.

    Examples
    --------
    >>> plan = ProductPlan(torch.float64, torch.float64, torch.device("cpu"))
    >>> scatter = input_scatter(torch.tensor([[1.0, 0.0], [3.0, 2.0]]), plan)
    >>> scatter.mean.tolist(), scatter.scatter.tolist()
    ([2.0, 1.0], [[2.0, 2.0], [2.0, 2.0]])
    """
    d = rows.shape[-1]
    n = rows.numel() // d
    dtype = plan.state_dtype
    scratch = Moments(
        torch.zeros(d, dtype=dtype, device=plan.device),
        torch.zeros(d, d, dtype=dtype, device=plan.device),
        feature_blocks(d),
    )
    if plan.on_device:
        scratch.device_count = torch.zeros((), dtype=torch.int64, device=plan.device)
        scratch.device_rejected = torch.zeros((), dtype=torch.int64, device=plan.device)
        accepted: bool | torch.Tensor = merge_slice_on_device(scratch, rows, plan.product_dtype)
    else:
        route = choose_route(plan, n, d, rows.dtype, merged_before=False)
        if route.slice_bytes is None:
            accepted = merge_on_cpu(scratch, rows, route)
        else:
            accepted = merge_sliced(scratch, rows, route, plan)
    return InputScatter(n, scratch.mean, scratch.full_comoment(), accepted)


def mapped(
    scatter: InputScatter,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
    product_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, bool | torch.Tensor]:
    """``(mean, scatter, accepted)`` of the outputs: ``W m_x + b`` in ``dtype``, ``W S_x W^T`` in ``product_dtype``.

    The map runs in the precision of the covariance's products (``dtype``
    unless ``product_dtype`` says otherwise), as the output rows' Gram
    product would. Weights that are not finite reject the batch, as
    non-finite outputs would.

    Examples
    --------
    >>> x = InputScatter(2, torch.tensor([2.0, 1.0]).double(), torch.tensor([[2.0, 2.0], [2.0, 2.0]]).double(), True)
    >>> mean, comoment, accepted = mapped(x, torch.tensor([[1.0, -1.0]]), torch.tensor([0.5]), torch.float64)
    >>> mean.tolist(), comoment.tolist(), accepted
    ([1.5], [[0.0]], True)
    """
    product_dtype = product_dtype or dtype
    w = weight.detach().to(dtype)
    mean = w @ scatter.mean.to(dtype)
    if bias is not None:
        mean = mean + bias.detach().to(dtype)
    w = w.to(product_dtype)
    comoment = (w @ scatter.scatter.to(product_dtype)) @ w.T
    finite = all_finite(mean) & all_finite(comoment.diagonal())
    accepted = scatter.accepted
    if isinstance(accepted, torch.Tensor) or finite.device.type != "cpu":
        return mean, comoment, finite & accepted
    return mean, comoment, bool(accepted) and bool(finite)


@dataclass(frozen=True)
class MappedInput:
    """A batch's input side, for the covariance on the input route.

    Attributes
    ----------
    view : AffineView
        The kept input rows (on the state's device), the weights and the bias.
    source : torch.Tensor
        The tensor the layer was called with (layers sharing it share a scatter).
    kept : hashable
        Which of the source's rows ``view.rows`` holds: ``None`` for all of them.
    cache : ScatterCache or None
        The tracker's cache of this forward pass's scatters.
    """

    view: AffineView
    source: torch.Tensor
    kept: Hashable = None
    cache: ScatterCache | None = None

    def scatter(self, plan: ProductPlan) -> InputScatter:
        """The input scatter, from the cache when another layer computed it for the same rows."""
        if self.cache is None:
            return input_scatter(self.view.rows, plan)
        return self.cache.scatter(self.source, self.view.rows, self.kept, plan)


def merge_mapped(moments: Moments, mapped_input: MappedInput, plan: ProductPlan) -> bool | torch.Tensor:
    """Merge a batch's mapped input scatter into the output ``moments``; returns the verdict on the batch.

    On accelerators nothing is read back (a rejected batch adds nothing); on
    a CPU a rejected batch leaves ``moments`` untouched.
    """
    view = mapped_input.view
    scatter = mapped_input.scatter(plan)
    mean, comoment, accepted = mapped(scatter, view.weight, view.bias, plan.state_dtype, plan.product_dtype)
    if plan.on_device:
        moments.add_batch_on_device(mean, comoment, scatter.count, accepted)  # type: ignore[arg-type]
    elif accepted:
        moments.add_batch(mean, comoment, scatter.count)
    return accepted


class ScatterCache:
    """Input scatters of the forward pass under way, shared by the layers that read the same input tensor.

    An entry is found again only for the same tensor object (held by a weak
    reference, so memory reused by a later batch is never mistaken for it),
    unchanged since (its version), read through the same view and the same
    rows, in the same precision.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, tuple[weakref.ReferenceType, int, InputScatter]] = {}
        self._lock = threading.Lock()

    def scatter(self, source: torch.Tensor, rows: torch.Tensor, kept: Hashable, plan: ProductPlan) -> InputScatter:
        """The scatter of ``rows`` (a view of ``source``, ``kept`` naming which of its rows), computed once."""
        key = (id(source), tuple(rows.shape), rows.stride(), rows.storage_offset(), kept, plan)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0]() is source and entry[1] == source._version:
                return entry[2]
        scatter = input_scatter(rows, plan)
        with self._lock:
            # Entries of tensors that are gone (earlier forward passes) are dropped here.
            self._entries = {k: e for k, e in self._entries.items() if e[0]() is not None}
            self._entries[key] = (weakref.ref(source), source._version, scatter)
        return scatter

    def holds(self, source: torch.Tensor, rows: torch.Tensor, kept: Hashable = None) -> bool:
        """Whether a scatter of these rows of ``source`` was computed in this forward pass (any precision)."""
        with self._lock:
            return any(
                key[:5] == (id(source), tuple(rows.shape), rows.stride(), rows.storage_offset(), kept)
                and entry[0]() is source
                and entry[1] == source._version
                for key, entry in self._entries.items()
            )

    def shared_draw(self, source: torch.Tensor, n: int, k: int, draw: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The indices of ``k`` of ``n`` rows of ``source``: drawn once per forward pass for every layer reading it.

        Layers that read the same input then keep the same rows, and so share one scatter under a budget.
        """
        key = ("draw", id(source), n, k)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0]() is source and entry[1] == source._version:
                return entry[2]  # type: ignore[return-value]
        indices = draw()
        with self._lock:
            self._entries[key] = (weakref.ref(source), source._version, indices)  # type: ignore[assignment]
        return indices

    def __len__(self) -> int:
        with self._lock:
            return sum(entry[0]() is not None for entry in self._entries.values())
