"""What the tracker tells its user once: batches left out, layers with too few rows, costly tracking, no data.

Each notice is a :mod:`warnings` warning, given once for what it is about
(per layer, mode and epoch for non-finite batches; once per layer and mode
for too few rows; once per tracker for the cost and for an epoch without
data), so a long run is not flooded. Every message starts with the tracker's
``savefile``, so a script with several trackers knows which one speaks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

from ..budget import cost_model
from ..budget.cost_model import EXPENSIVE_SHARE, ROWS_PER_FEATURE, CostModel
from ..engine.layer_state import LayerState
from ..statistics.epoch import LoggedValue
from ..statistics.registry import NONFINITE_BATCHES, ROWS

__all__ = ["Notices", "ROWS_PER_FEATURE"]


class Notices:
    """The once-only warnings of one tracker.

    Examples
    --------
    >>> notices = Notices("runs/vgg")
    >>> notices.nonfinite([LoggedValue("train", "fc", "nonfinite-batches", 2)], epoch=0)  # doctest: +SKIP
    """

    def __init__(self, run: str = "") -> None:
        self.run = run
        self._nonfinite: set[tuple[int, str | None, str]] = set()
        self._sparse: set[tuple[str | None, str]] = set()
        self._costly = False
        self._probes = False
        self._empty = False

    def epoch(
        self,
        logged: Sequence[LoggedValue],
        states: Sequence[LayerState],
        costs: CostModel,
        epoch: int,
        world: int = 1,
        notify_empty: bool = False,
    ) -> None:
        """Every notice an epoch's values may call for (``states``: merged over ``world`` ranks)."""
        self.nonfinite(logged, epoch, stacklevel=5)
        rows: dict[str, float] = {}
        for state in states:  # each rank merged about its share of the rows
            rows[state.layer] = rows.get(state.layer, 0) + state.covariance.count / world
        self.costly(costs, rows, stacklevel=5)
        self.probes_over_budget(costs, stacklevel=5)
        features = {state.layer: state.covariance.num_features for state in states if state.covariance.count}
        self.sparse(logged, features, costs, stacklevel=5)
        if notify_empty and not any(s.covariance.count or s.covariance.rejected_batches for s in states):
            self.empty(epoch, stacklevel=5)

    @property
    def prefix(self) -> str:
        """``delve (<savefile>): ``, the start of every message."""
        return f"delve ({self.run}): " if self.run else "delve: "

    def nonfinite(self, logged: Sequence[LoggedValue], epoch: int, stacklevel: int = 4) -> None:
        """Warn about every rejected-batch count in ``logged`` not warned about in this epoch."""
        for value in logged:
            key = (epoch, value.layer, value.mode)
            if value.statistic != NONFINITE_BATCHES or key in self._nonfinite:
                continue
            self._nonfinite = {entry for entry in self._nonfinite if entry[0] == epoch}
            self._nonfinite.add(key)
            warnings.warn(
                f"{self.prefix}layer {value.layer!r} ({value.mode}) produced {value.value} batch(es) with NaN or Inf "
                f"outputs in epoch {epoch}; they were left out of its statistics",
                RuntimeWarning,
                stacklevel=stacklevel,
            )

    def sparse(
        self, logged: Sequence[LoggedValue], features: Mapping[str, int], costs: CostModel, stacklevel: int = 4
    ) -> None:
        """Under a budget, warn once per layer and mode whose rows in an epoch fall short of
        :data:`ROWS_PER_FEATURE` per feature (a larger ``max_overhead`` would keep more). Without a budget
        the rows are what the data gave: values from fewer rows than features are logged as missing, with
        the rows beside them, and nothing more is said.
        """
        if costs.max_overhead is None:
            return
        # An affine layer spans at most its input width: its rows are counted against that (the budget's rule).
        ranks = {cost.layer: cost.rank for cost in costs.costs}
        for value in logged:
            width = features.get(value.layer or "", 0)
            d = min(width, ranks.get(value.layer or "", width))
            key = (value.layer, value.mode)
            if value.statistic != ROWS or not d or value.value >= ROWS_PER_FEATURE * d or key in self._sparse:
                continue
            self._sparse.add(key)
            needed = costs.overhead_for(value.layer or "", ROWS_PER_FEATURE * d / max(value.value, 1))
            unit = "feature" if d == width else "direction"
            spanned = f"{d} features" if d == width else f"the {d} directions its {width} outputs can span"
            advice = f"about max_overhead={needed:.2g} would give it that" if math.isfinite(needed) else ""
            warnings.warn(
                f"{self.prefix}layer {value.layer!r} ({value.mode}) merged {value.value} rows for {spanned} in this "
                f"epoch, fewer than {ROWS_PER_FEATURE} per {unit}: its spectrum is mostly sampling noise; "
                f"{advice or 'it has fewer rows than that in the whole epoch'}",
                RuntimeWarning,
                stacklevel=stacklevel,
            )

    def costly(
        self,
        costs: CostModel,
        rows: Mapping[str, float],
        share: float = EXPENSIVE_SHARE,
        seconds: float | None = None,
        stacklevel: int = 4,
    ) -> None:
        """Warn once when tracking every row costs more than ``share`` of training and ``seconds`` an epoch.

        ``rows`` are the rows each layer merged in the epoch; their
        estimated time (:meth:`~delve.budget.cost_model.CostModel.seconds`)
        keeps small experiments quiet, however large their share.
        ``seconds`` defaults to :data:`~delve.budget.cost_model.EXPENSIVE_SECONDS`.
        """
        if self._costly or costs.max_overhead is not None:
            return
        seconds = cost_model.EXPENSIVE_SECONDS if seconds is None else seconds
        ratio, dominating = costs.expensive()
        spent = costs.seconds(rows)
        if ratio <= share or not spent > seconds:
            return
        self._costly = True
        widths = {cost.layer: cost.features for cost in costs.costs}
        named = ", ".join(f"{name!r} (d = {widths[name]})" for name in dominating)
        warnings.warn(
            f"{self.prefix}tracking every row is estimated at {ratio:.0%} of the tracked layers' training work, "
            f"about {spent:.2g} s in this epoch; most of it is in {named}: a layer of width d pays d(d+1)/2 "
            "multiply-adds per row. SaturationTracker(..., max_overhead=0.05) records a random subset of rows "
            "within a 5 % budget; tracker.cost() shows the estimate per layer",
            UserWarning,
            stacklevel=stacklevel,
        )

    def probes_over_budget(self, costs: CostModel, stacklevel: int = 4) -> None:
        """Warn once when the live probes alone are estimated to cost more than the budget."""
        share = costs.probe_share()
        if self._probes or share <= 1.0:
            return
        self._probes = True
        warnings.warn(
            f"{self.prefix}the live probes alone are estimated at {share:.1f} times the budget "
            f"(max_overhead={costs.max_overhead}): they rest on every sample, so the covariances keep the fewest "
            "rows; raise max_overhead, or track fewer layers (tracker.cost() shows the probe column)",
            RuntimeWarning,
            stacklevel=stacklevel,
        )

    def empty(self, epoch: int, stacklevel: int = 4) -> None:
        """Warn once when an epoch ends without a single recorded forward pass of any tracked layer."""
        if self._empty:
            return
        self._empty = True
        warnings.warn(
            f"{self.prefix}add_saturations() found no recorded forward pass of any tracked layer in epoch {epoch}, "
            "so no statistic was computed: run the model between add_saturations() calls, pass the model that "
            "trains as modules=, and call tracker.resume() after tracker.stop()",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
