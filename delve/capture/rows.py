"""Rows of an observation: picking some of them by flat position, without copying the rest.

An observation is a ``(..., d)`` view whose leading dimensions are samples
(:mod:`delve.capture.observation`), often strided: a convolution's
``(N, H*W, C)`` view of a channels-first output. The budget's row sampler and
the ``embed`` sample both keep a few rows of such a view; gathering them reads
only those rows.
"""

from __future__ import annotations

import torch

from ..common.torch_features import unravel_index

__all__ = ["gather_rows"]


def gather_rows(rows: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """The rows of ``(..., d)`` ``rows`` at flat sample positions ``index`` (all when ``None``), as ``(m, d)``.

    Examples
    --------
    >>> view = torch.arange(24.0).view(2, 3, 4).transpose(1, 2)  # (N=2, 4 positions, 3 channels), strided
    >>> gather_rows(view, torch.tensor([0, 5]))
    tensor([[ 0.,  4.,  8.],
            [13., 17., 21.]])
    """
    d = rows.shape[-1]
    if index is None:
        return rows.reshape(-1, d)
    if rows.ndim == 2 or rows.is_contiguous():
        return rows.reshape(-1, d).index_select(0, index)
    if rows.ndim == 3:  # a convolution's (N, H*W, C) view: two integer ops, not a general unravel
        per_sample = rows.shape[1]
        return rows[torch.div(index, per_sample, rounding_mode="floor"), torch.remainder(index, per_sample)]
    return rows[unravel_index(index, tuple(rows.shape[:-1]))]
