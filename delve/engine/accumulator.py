"""The protocol of an extra per-layer accumulator, for statistics that need more than the covariance.

A :class:`~delve.statistics.registry.Statistic` names a factory of such an
accumulator; the recorder feeds it the same rows as the covariance, and the
statistic reads it at the end of the epoch. :class:`~delve.engine.activity.MeanAbsoluteActivity`
is the built-in one.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

__all__ = ["FeatureAccumulator"]


class FeatureAccumulator(Protocol):
    """Extra per-layer state a statistic needs beyond the covariance.

    One instance is made per layer and mode; ``update`` receives the same
    ``(..., d)`` observation rows as the covariance, on the hot path, so it
    must not synchronise with the device. ``accepted`` is the covariance's
    verdict on the batch (``False`` when it held NaN or Inf): a Python bool on
    a CPU, a 0-d bool tensor on accelerators. Honour it, so that every
    statistic of a layer rests on the same rows.

    ``merge`` adds another instance's rows in place (an epoch put back after a
    failed computation); ``merged_across_ranks`` returns a new instance
    holding the rows of every ``torch.distributed`` rank, given the layer's
    feature size (a rank that saw no rows passes a fresh instance).
    """

    def update(self, rows: torch.Tensor, accepted: bool | torch.Tensor) -> None: ...

    def reset(self) -> None: ...

    def merge(self, other: Any) -> Any: ...

    def merged_across_ranks(self, num_features: int, group: Any = None) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
