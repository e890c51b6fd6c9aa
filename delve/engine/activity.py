"""Per-unit activity: the running mean ``|x|`` of every feature, behind the ``dorm`` statistic.

A unit is *dormant* when it hardly ever responds (Sokar, Agarwal, Castro and
Evci, ICML 2023; see :func:`delve.statistics.metrics.dormant_fraction`). Only
the per-unit mean of ``|h|`` is needed, so :class:`MeanAbsoluteActivity` keeps
a float64 sum of ``|x|`` per feature and a row count, fed on the hot path with
the same observation rows as the covariance (a convolution's channels are its
units, every spatial position an observation).

The tracker observes a layer's *output*: for ``Linear`` or ``Conv`` layers
followed by a separate activation module that is the pre-activation, whereas
Sokar et al. score post-activation values. A pre-activation unit counts as
dormant only when its output stays near zero, not when a ReLU silences it.
"""

from __future__ import annotations

import torch

from .accumulator import Accumulator, Batch
from .states import Sum

__all__ = ["MeanAbsoluteActivity"]


class MeanAbsoluteActivity(Accumulator):
    """Running mean of ``|x|`` per feature over ``(..., d)`` observation rows.

    ``update`` launches a handful of kernels and never reads a value back from
    the device: the row count of an accepted batch is added on the device. A
    batch is skipped when ``accepted`` (the covariance's verdict on the same
    rows) says so, or, without a verdict, when it holds NaN or Inf.

    Examples
    --------
    >>> acc = MeanAbsoluteActivity()
    >>> acc.update(torch.tensor([[1.0, -2.0], [-3.0, 0.0]]))
    >>> acc.update(torch.tensor([[[5.0, 0.0]]]))  # any leading dimensions are samples
    >>> acc.mean_abs()
    tensor([3.0000, 0.6667], dtype=torch.float64)
    """

    def __init__(self) -> None:
        super().__init__()
        self.total: torch.Tensor | None
        self.rows: torch.Tensor | None
        self.add_state("total", Sum(torch.float64))
        self.add_state("rows", Sum(torch.int64))

    @torch.no_grad()
    def update(self, rows: torch.Tensor, accepted: bool | torch.Tensor | None = None) -> None:
        """Merge a batch of rows, shape ``(..., d)``; leading dimensions are samples.

        ``accepted``: merge the batch at all (a bool, or a 0-d bool tensor on
        the rows' device); ``None`` decides from the rows themselves.
        """
        if rows.ndim == 0 or rows.numel() == 0 or accepted is False:
            return
        self._add(rows, accepted)

    @torch.no_grad()
    def accumulate(self, batch: Batch) -> None:
        """Add the batch's ``|x|`` per feature, when the covariance accepted it."""
        if batch.n and batch.accepted is not False:
            self._add(batch.rows, batch.accepted)

    def _add(self, rows: torch.Tensor, accepted: bool | torch.Tensor | None) -> None:
        leading = tuple(range(rows.ndim - 1))
        # One kernel: the 1-norm over the sample dimensions, accumulated in
        # float64 without materialising |rows|.
        batch_sum = (
            torch.linalg.vector_norm(rows, ord=1, dim=leading, dtype=torch.float64)
            if leading
            else rows.abs().to(torch.float64)
        )
        n = torch.tensor(rows.numel() // rows.shape[-1], dtype=torch.int64, device=batch_sum.device)
        if self.total is not None and batch_sum.shape != self.total.shape:
            raise ValueError(f"feature size changed from {self.total.shape[0]} to {batch_sum.shape[0]}; reset() first")
        if accepted is None:
            accepted = torch.isfinite(batch_sum).all()
        if accepted is not True:
            batch_sum = torch.where(accepted, batch_sum, 0.0)
            n = n * accepted
        self.add_to("total", batch_sum)
        self.add_to("rows", n)

    @property
    def count(self) -> int:
        """Rows merged since the last reset (reads the device counter)."""
        return 0 if self.rows is None else int(self.rows)

    def mean_abs(self) -> torch.Tensor:
        """``(d,)`` float64 mean of ``|x|`` per feature; empty before any row."""
        if self.total is None or self.rows is None:
            return torch.zeros(0, dtype=torch.float64)
        return self.total / self.rows.to(self.total.device).clamp_min(1)

    def __repr__(self) -> str:
        features = None if self.total is None else self.total.shape[0]
        return f"MeanAbsoluteActivity(features={features})"


def _named_by_role(state: dict) -> dict:
    # Version 1 names the sums by their role: "sum" and "count" became "total" and "rows".
    state = dict(state)
    if "sum" in state:
        state["total"] = state.pop("sum")
    if "count" in state:
        state["rows"] = state.pop("count")
    return state


MeanAbsoluteActivity.migrations = {0: _named_by_role}
