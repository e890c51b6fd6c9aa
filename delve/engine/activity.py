"""Per-unit activity: the running mean ``|x|`` of every feature, and dormant units.

A unit is *dormant* when it hardly ever responds. Sokar, Agarwal, Castro and
Evci ("The dormant neuron phenomenon in deep reinforcement learning", ICML
2023) score unit ``i`` of a layer with ``H`` units by

    s_i = E|h_i| / ((1 / H) * sum_k E|h_k|)

and call it tau-dormant when ``s_i <= tau``. Only the per-unit mean of ``|h|``
is needed, so :class:`MeanAbsoluteActivity` keeps a float64 sum of ``|x|`` per
feature and a row count, fed on the tracker's hot path with the same
observation rows as the covariance (a convolution's channels are its units,
every spatial position an observation).

The tracker observes a layer's *output*: for ``Linear`` or ``Conv`` layers
followed by a separate activation module that is the pre-activation, whereas
Sokar et al. score post-activation values. A pre-activation unit counts as
dormant only when its output stays near zero, not when a ReLU silences it.
"""

from __future__ import annotations

from typing import Any

import torch

from ..common.ranks import communication_device
from ..common.validation import check_number

__all__ = ["MeanAbsoluteActivity", "dormant_fraction", "DEFAULT_DORMANT_TAU"]

DEFAULT_DORMANT_TAU = 0.025


class MeanAbsoluteActivity:
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
        self.reset()

    def reset(self) -> None:
        """Forget every observation."""
        self._sum: torch.Tensor | None = None
        self._count: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, rows: torch.Tensor, accepted: bool | torch.Tensor | None = None) -> None:
        """Merge a batch of rows, shape ``(..., d)``; leading dimensions are samples.

        ``accepted``: merge the batch at all (a bool, or a 0-d bool tensor on
        the rows' device); ``None`` decides from the rows themselves.
        """
        if rows.ndim == 0 or rows.numel() == 0 or accepted is False:
            return
        leading = tuple(range(rows.ndim - 1))
        # One kernel: the 1-norm over the sample dimensions, accumulated in
        # float64 without materialising |rows|.
        batch_sum = (
            torch.linalg.vector_norm(rows, ord=1, dim=leading, dtype=torch.float64)
            if leading
            else rows.abs().to(torch.float64)
        )
        n = rows.numel() // rows.shape[-1]
        if self._sum is None:
            self._sum = torch.zeros_like(batch_sum)
            self._count = torch.zeros((), dtype=torch.int64, device=batch_sum.device)
        elif batch_sum.shape != self._sum.shape:
            raise ValueError(
                f"feature size changed from {self._sum.shape[0]} to {batch_sum.shape[0]}; reset() first"
            )
        if accepted is True:
            self._sum.add_(batch_sum)
            self._count.add_(n)  # type: ignore[union-attr]
            return
        keep = torch.isfinite(batch_sum).all() if accepted is None else accepted
        self._sum.add_(torch.where(keep, batch_sum, 0.0))
        self._count.add_(keep.to(torch.int64) * n)  # type: ignore[union-attr]

    @property
    def count(self) -> int:
        """Rows merged since the last reset (reads the device counter)."""
        return 0 if self._count is None else int(self._count)

    def mean_abs(self) -> torch.Tensor:
        """``(d,)`` float64 mean of ``|x|`` per feature; zeros before any row."""
        if self._sum is None:
            return torch.zeros(0, dtype=torch.float64)
        return self._sum / self._count.clamp_min(1)  # type: ignore[union-attr]

    def merge(self, other: MeanAbsoluteActivity) -> MeanAbsoluteActivity:
        """Add another accumulator's rows to this one, in place (e.g. across ranks)."""
        if other._sum is None:
            return self
        if self._sum is None:
            self._sum = torch.zeros_like(other._sum)
            self._count = torch.zeros((), dtype=torch.int64, device=other._sum.device)
        self._sum.add_(other._sum.to(self._sum.device))
        self._count.add_(other._count.to(self._count.device))  # type: ignore[union-attr]
        return self

    def merged_across_ranks(self, num_features: int, group: Any = None) -> MeanAbsoluteActivity:
        """A new accumulator holding the rows of every ``torch.distributed`` rank.

        Sums and counts add up, so one all-reduce of ``d + 1`` numbers does it.
        A rank that saw no rows contributes zeros of size ``num_features``.
        This accumulator is left untouched.
        """
        device = communication_device(group)
        packed = torch.zeros(num_features + 1, dtype=torch.float64, device=device)
        if self._sum is not None:
            packed[:num_features] = self._sum.to(device)
            packed[num_features] = self._count.to(device, torch.float64)  # type: ignore[union-attr]
        torch.distributed.all_reduce(packed, group=group)
        home = self._sum.device if self._sum is not None else device
        merged = MeanAbsoluteActivity()
        merged._sum = packed[:num_features].to(home)
        merged._count = packed[num_features].round().to(torch.int64).to(home)
        return merged

    def state_dict(self) -> dict[str, Any]:
        """Tensors only, loadable with ``torch.load(weights_only=True)``."""
        if self._sum is None:
            return {}
        return {"sum": self._sum.clone(), "count": self._count.clone()}  # type: ignore[union-attr]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` produced."""
        self.reset()
        if "sum" in state:
            self._sum = state["sum"].to(torch.float64).clone()
            self._count = torch.as_tensor(state["count"], dtype=torch.int64, device=self._sum.device).clone()

    def __repr__(self) -> str:
        features = None if self._sum is None else self._sum.shape[0]
        return f"MeanAbsoluteActivity(features={features})"


def dormant_fraction(mean_abs: torch.Tensor, tau: float = DEFAULT_DORMANT_TAU) -> float:
    """Fraction of tau-dormant units (Sokar et al. 2023).

    Unit ``i`` is dormant when ``m_i <= tau * (1/d) sum_k m_k``, with ``m_i``
    its mean absolute activation: the score ``s_i = m_i / mean(m)`` is at most
    ``tau``. Reference: G. Sokar, R. Agarwal, P. S. Castro and U. Evci, "The
    dormant neuron phenomenon in deep reinforcement learning", ICML 2023.

    Parameters
    ----------
    mean_abs : torch.Tensor
        ``(d,)`` mean ``|activation|`` per unit.
    tau : float
        Dormancy threshold on the score, ``>= 0`` (0.025 in the paper's
        experiments; ``tau = 0`` counts only units that never fire).

    Returns
    -------
    float
        In ``[0, 1]``. A dead layer (every ``m_i = 0``) is entirely dormant:
        ``1.0`` (each unit satisfies ``0 <= tau * 0``). ``0.0`` for ``d = 0``.

    Examples
    --------
    >>> dormant_fraction(torch.tensor([1.0, 1.0, 0.02, 0.0]))  # mean 0.505, limit 0.012625
    0.25
    >>> dormant_fraction(torch.zeros(3))
    1.0
    """
    tau = check_number("tau", tau, minimum=0)
    mean_abs = mean_abs.to(torch.float64)
    d = mean_abs.shape[-1]
    if d == 0:
        return 0.0
    limit = tau * mean_abs.mean()
    return float(torch.count_nonzero(mean_abs <= limit)) / d
