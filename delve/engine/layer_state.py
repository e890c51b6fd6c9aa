"""One layer's state in one mode: its accumulators and the counters of recording.

:class:`LayerState` is the one carrier of a layer and mode's accumulation,
from the forward hook (:mod:`delve.engine.recorder`) through the merge across
ranks (:mod:`delve.engine.sync`) to the statistics of the epoch
(:mod:`delve.statistics.epoch`). Its accumulators are keyed: the covariance
under :data:`COVARIANCE`, first, so it judges every batch before the others
see it; then one per statistic that asked for one, under the statistic's key.
:class:`StateSpec` says which accumulators a tracker's layers have.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .accumulator import Accumulator, AccumulatorContext, Batch
from .covariance import TorchCovarianceMatrix

__all__ = ["COVARIANCE", "LayerState", "StateSpec"]

#: Key of the covariance among a layer's accumulators (every layer has one).
COVARIANCE = "covariance"


@dataclass(frozen=True)
class StateSpec:
    """The accumulators every layer and mode of a tracker has, and what they are made with.

    Attributes
    ----------
    accumulators : tuple of (str, type)
        ``(key, Accumulator subclass)`` of the statistics that accumulate more
        than the covariance (which every layer has, first).
    seed, device, precision, sample_size
        See :class:`~delve.engine.accumulator.AccumulatorContext`.

    Examples
    --------
    >>> state = StateSpec().new("fc", "train")
    >>> list(state.accumulators), state.covariance.count
    (['covariance'], 0)
    """

    accumulators: tuple[tuple[str, type[Accumulator]], ...] = ()
    seed: int = 0
    device: torch.device | None = None
    precision: str = "auto"
    sample_size: int = 500

    def new(self, layer: str, mode: str) -> LayerState:
        """A fresh state for ``layer`` in ``mode``."""
        context = AccumulatorContext(layer, mode, self.seed, self.device, self.precision, self.sample_size)
        accumulators = {COVARIANCE: TorchCovarianceMatrix.create(context)}
        accumulators.update((key, cls.create(context)) for key, cls in self.accumulators)
        return LayerState(layer, mode, accumulators)


@dataclass
class LayerState:
    """What one layer accumulated in one mode since the last reset.

    Attributes
    ----------
    layer, mode : str
        Whose state it is.
    accumulators : dict of str -> Accumulator
        The covariance first (:data:`COVARIANCE`), then one per statistic that asked.
    forward_calls : int
        Forward passes seen this epoch (``log_interval`` counts them).
    rows_offered : int
        Rows offered this epoch (``max_samples`` counts them).
    rows_kept : int
        Rows kept this epoch (offered, less what a budget left out).
    """

    layer: str
    mode: str
    accumulators: dict[str, Accumulator] = field(default_factory=dict)
    forward_calls: int = 0
    rows_offered: int = 0
    rows_kept: int = 0

    @property
    def covariance(self) -> TorchCovarianceMatrix:
        """The layer's covariance accumulator."""
        return self.accumulators[COVARIANCE]  # type: ignore[return-value]

    def accumulate(self, batch: Batch) -> None:
        """Feed ``batch`` to every accumulator, the covariance first: its verdict is the batch's."""
        for accumulator in self.accumulators.values():
            accumulator.accumulate(batch)

    def reset(self) -> None:
        """Forget what was accumulated and the epoch's counters."""
        for accumulator in self.accumulators.values():
            accumulator.reset()
        self.restart_counters()

    def restart_counters(self) -> None:
        """A new epoch for ``log_interval``, ``max_samples`` and the budget; the accumulators keep their rows."""
        self.forward_calls = 0
        self.rows_offered = 0
        self.rows_kept = 0

    def empty_like(self) -> LayerState:
        """A fresh state with the same accumulators (random streams continue)."""
        return LayerState(self.layer, self.mode, {key: acc.empty_like() for key, acc in self.accumulators.items()})

    def copy(self) -> LayerState:
        """An independent copy (the live state keeps accumulating)."""
        copy = LayerState(self.layer, self.mode, {key: acc.copy() for key, acc in self.accumulators.items()})
        copy.forward_calls, copy.rows_offered, copy.rows_kept = self.forward_calls, self.rows_offered, self.rows_kept
        return copy

    def merge(self, other: LayerState) -> None:
        """Add ``other``'s accumulation and counters to this state, in place."""
        for key, accumulator in self.accumulators.items():
            accumulator.merge(other.accumulators[key])
        self.forward_calls += other.forward_calls
        self.rows_offered += other.rows_offered
        self.rows_kept += other.rows_kept

    def state_dict(self) -> dict[str, Any]:
        """Accumulators and counters, tensors and plain Python values only."""
        return {
            "accumulators": {key: acc.state_dict() for key, acc in self.accumulators.items()},
            "forward_calls": self.forward_calls,
            "rows_offered": self.rows_offered,
            "rows_kept": self.rows_kept,
        }

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device | None = None) -> None:
        """Restore :meth:`state_dict` (or a tracker state of format 1), on ``device`` when given.

        Accumulators the state does not hold (a statistic added since) start empty.
        """
        state = _accumulators_by_key(state)
        for key, accumulator in self.accumulators.items():
            saved = state["accumulators"].get(key)
            if saved is None:
                accumulator.reset()
            else:
                accumulator.load_state_dict(saved, device)
        self.forward_calls = int(state["forward_calls"])
        self.rows_offered = int(state["rows_offered"])
        self.rows_kept = int(state.get("rows_kept", self.rows_offered))


def _accumulators_by_key(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """A per-mode state of tracker format 1 in the layout of format 2.

    Format 1 kept the covariance, the statistics' accumulators (``extras``) and
    the ``embed`` statistic's sample each under a key of its own.
    """
    if "accumulators" in state:
        return state
    accumulators = {COVARIANCE: state["covariance"], **state.get("extras", {})}
    if "sample" in state:
        accumulators["embed"] = state["sample"]
    return {**state, "accumulators": accumulators}
