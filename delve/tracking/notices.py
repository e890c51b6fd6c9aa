"""What the tracker tells its user once: batches left out, layers with too few rows, costly tracking.

Each notice is a :mod:`warnings` warning, given once for what it is about
(per layer, mode and epoch for non-finite batches; once per layer and mode
for too few rows; once per tracker for the cost), so a long run is not
flooded.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

from ..budget.cost_model import EXPENSIVE_SHARE, ROWS_PER_FEATURE, CostModel
from ..statistics.epoch import LoggedValue
from ..statistics.registry import NONFINITE_BATCHES, ROWS

__all__ = ["Notices", "ROWS_PER_FEATURE"]



class Notices:
    """The once-only warnings of one tracker.

    Examples
    --------
    >>> notices = Notices()
    >>> notices.nonfinite([LoggedValue("train", "fc", "nonfinite-batches", 2)], epoch=0)  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._nonfinite: set[tuple[int, str | None, str]] = set()
        self._sparse: set[tuple[str | None, str]] = set()
        self._costly = False

    def nonfinite(self, logged: Sequence[LoggedValue], epoch: int, stacklevel: int = 4) -> None:
        """Warn about every rejected-batch count in ``logged`` not warned about in this epoch."""
        for value in logged:
            key = (epoch, value.layer, value.mode)
            if value.statistic != NONFINITE_BATCHES or key in self._nonfinite:
                continue
            self._nonfinite = {entry for entry in self._nonfinite if entry[0] == epoch}
            self._nonfinite.add(key)
            warnings.warn(
                f"delve: layer {value.layer!r} ({value.mode}) produced {value.value} batch(es) with NaN or Inf "
                f"outputs in epoch {epoch}; they were left out of its statistics",
                RuntimeWarning,
                stacklevel=stacklevel,
            )

    def sparse(
        self, logged: Sequence[LoggedValue], features: Mapping[str, int], costs: CostModel, stacklevel: int = 4
    ) -> None:
        """Warn once per layer and mode whose rows in an epoch fall short: of :data:`ROWS_PER_FEATURE` per feature
        under a budget (it could keep more), of one per feature otherwise (its spectrum statistics are missing).
        """
        budgeted = costs.max_overhead is not None
        for value in logged:
            d = features.get(value.layer or "", 0)
            key = (value.layer, value.mode)
            floor = ROWS_PER_FEATURE * d if budgeted else d
            if value.statistic != ROWS or not d or value.value >= floor or key in self._sparse:
                continue
            if not budgeted:
                self._sparse.add(key)
                warnings.warn(
                    f"delve: layer {value.layer!r} ({value.mode}) merged {value.value} rows for {d} features in this "
                    "epoch: fewer rows than features span fewer directions than it has, so its spectrum statistics "
                    "are logged as missing (NaN)",
                    RuntimeWarning,
                    stacklevel=stacklevel,
                )
                continue
            self._sparse.add(key)
            needed = costs.overhead_for(value.layer or "", ROWS_PER_FEATURE * d / max(value.value, 1))
            advice = f"about max_overhead={needed:.2g} would give it that" if math.isfinite(needed) else ""
            warnings.warn(
                f"delve: layer {value.layer!r} ({value.mode}) merged {value.value} rows for {d} features in this "
                f"epoch, fewer than {ROWS_PER_FEATURE} per feature: its spectrum is mostly sampling noise; "
                f"{advice or 'it has fewer rows than that in the whole epoch'}",
                RuntimeWarning,
                stacklevel=stacklevel,
            )

    def costly(self, costs: CostModel, share: float = EXPENSIVE_SHARE, stacklevel: int = 4) -> None:
        """Warn once when tracking every row is estimated to cost more than ``share`` of training."""
        if self._costly or costs.max_overhead is not None:
            return
        ratio, dominating = costs.expensive()
        if ratio <= share:
            return
        self._costly = True
        warnings.warn(
            f"delve: tracking every row is estimated at {ratio:.0%} of the tracked layers' training work; "
            f"most of it is in {', '.join(repr(name) for name in dominating)} (wide outputs cost d^2 per row). "
            "SaturationTracker(..., max_overhead=0.05) records a random subset of rows within a 5 % budget; "
            "tracker.cost() shows the estimate per layer",
            UserWarning,
            stacklevel=stacklevel,
        )
