"""The budget: which share of its rows each layer keeps, and from which batches.

With a budget (``max_overhead=0.05``), each layer keeps a random subset of its
rows per batch so that the estimated tracking work (:mod:`delve.budget.layer_cost`) stays
within that share of the tracked layers' training work. The budget is spent
so that layers get similar rows per direction where they can: the sampling
error of a covariance spanning ``r`` directions grows with ``sqrt(r / rows)``,
so every layer is given the same ``rows / r`` up to the rows it has
(water-filling). ``r`` is the layer's width ``d``, or for an affine layer at
most its input width (:attr:`~delve.budget.layer_cost.LayerCost.rank`): a
widening layer (attention's ``qkv``, an MLP's up-projection) needs no more
rows than its input is wide.

Each draw costs a fixed few operations whatever its size (choosing rows,
gathering them, checking them), about as much as a few hundred rows of
product. A layer whose share is smaller than :data:`ROWS_PER_DRAW` rows per
batch therefore draws from one batch in ``m`` (chosen at random, the first
batch of an epoch always; ``m`` at most :data:`MAX_BATCHES_PER_DRAW`) and
keeps ``m`` times the rows when it does: every row is still kept with the
same probability.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from .cost_table import COST_COLUMNS, CostTable
from .layer_cost import INPUT, OUTPUT, LayerCost

__all__ = [
    "CostModel",
    "rows_per_feature_within",
    "EXPENSIVE_SHARE",
    "EXPENSIVE_SECONDS",
    "ROWS_PER_DRAW",
    "MAX_BATCHES_PER_DRAW",
    "MAX_BATCHES_PER_WHOLE_DRAW",
    "WHOLE_SHARE",
    "ROWS_PER_FEATURE",
]

#: Above this estimated tracking work relative to training work, the tracker says so once...
EXPENSIVE_SHARE = 0.25
#: ... when tracking is also estimated to take more than this many seconds in an epoch: below it the
#: share may be large (a toy model) but the time is not worth a word.
EXPENSIVE_SECONDS = 1.0
#: Fewest rows a layer draws at once under a budget (fewer per batch: it draws from fewer batches).
ROWS_PER_DRAW = 256
#: Most batches per draw: more would leave short epochs with no draw but their first (too few rows).
MAX_BATCHES_PER_DRAW = 8
#: Most batches per draw of a layer on the input route, which keeps the whole batches it draws.
MAX_BATCHES_PER_WHOLE_DRAW = 16
#: The cheapest layers keep every row while, together, that costs at most this share of the budget.
WHOLE_SHARE = 0.1
#: Rows per feature a layer's statistics need to be more than sampling noise (their error grows with
#: ``sqrt(d / rows)``); fewer are flagged where users look, and an evaluation pass keeps every row until
#: a layer holds this many per feature in the epoch.
ROWS_PER_FEATURE = 20


def _period(rate: float, cost: LayerCost) -> int:
    """Batches per draw for a layer keeping ``rate`` of its rows.

    On the output route, about :data:`ROWS_PER_DRAW` rows a draw. On the
    input route whole batches: one in ``1 / rate`` (at most
    :data:`MAX_BATCHES_PER_WHOLE_DRAW`), since a batch's map costs the same
    whatever rows it holds.
    """
    rows = cost.rows
    if rate >= 1.0 or rows <= 0:
        return 1
    if cost.route == INPUT:
        return max(1, min(round(1.0 / rate), MAX_BATCHES_PER_WHOLE_DRAW))
    kept = max(1, math.ceil(rate * rows))
    return max(1, min(math.ceil(ROWS_PER_DRAW / kept), rows // kept, MAX_BATCHES_PER_DRAW))


def _kept_whole(costs: Sequence[LayerCost], allowance: float) -> set[str]:
    """The cheapest layers whose every row, together, costs at most ``allowance``."""
    whole: set[str] = set()
    spent = 0.0
    for cost in sorted(costs, key=lambda c: c.work):
        if spent + cost.work > allowance:
            break
        whole.add(cost.layer)
        spent += cost.work
    return whole


def rows_per_feature_within(costs: Sequence[LayerCost], budget: float) -> float:
    """The largest common ``rows / r`` whose update work, capped at each layer's rows, fits ``budget``.

    ``r`` is each layer's :attr:`~delve.budget.layer_cost.LayerCost.rank`.
    Layers whose ``rows / r`` is below the level keep all their rows; the
    others get ``level * r`` rows, each costing what picking it out of the
    batch adds. ``math.inf`` when every row fits.

    Examples
    --------
    >>> small, wide = LayerCost("a", 8, 4, 8, 16), LayerCost("b", 10_000, 64, 10_000, 4096)
    >>> rows_per_feature_within([small, wide], budget=small.work + 10 * 64 * wide.work_per_row)
    10.0
    """
    by_level = sorted(costs, key=lambda c: c.rows / c.rank)
    full = 0.0  # work of the layers already capped at all their rows
    for index, cost in enumerate(by_level):
        level = cost.rows / cost.rank
        partial = sum(c.rank * c.sampled_work_per_row for c in by_level[index:])
        if full + level * partial > budget:
            return max(budget - full, 0.0) / partial if partial else math.inf
        full += cost.work
    return math.inf


class CostModel:
    """The tracked layers' costs as they are first seen, and the share of rows each may keep.

    Parameters
    ----------
    max_overhead : float, optional
        Budget: estimated tracking work as a share of the tracked layers'
        training work. ``None`` keeps every row.

    Examples
    --------
    >>> model = CostModel(max_overhead=0.05)
    >>> model.note(LayerCost("up", rows=4096, features=768, applications=4096, weight_elements=192 * 768))
    >>> 0 < model.rate("up") < 1
    True
    """

    def __init__(self, max_overhead: float | None = None) -> None:
        self.max_overhead = max_overhead
        self._costs: dict[str, LayerCost] = {}
        self._rates: dict[str, float] = {}
        self._periods: dict[str, int] = {}
        self._whole: set[str] = set()  # cheap enough to keep every row
        self._level = math.inf  # rows per feature and batch that the budget allows
        self._no_input: dict[str, str] = {}  # layers kept off the input route, and why
        self._lock = threading.Lock()

    def __contains__(self, layer: object) -> bool:
        return layer in self._costs

    @property
    def costs(self) -> list[LayerCost]:
        """The layers seen so far, in the order they were first seen."""
        with self._lock:
            return list(self._costs.values())

    def note(self, cost: LayerCost) -> None:
        """Record a layer's shapes (its first recorded pass only), choose its route and re-balance the budget."""
        with self._lock:
            if cost.layer in self._costs:
                return
            self._costs[cost.layer] = replace(cost, route=cost.cheaper_route())
            self._rebalance()

    def keep_off_input_route(self, layer: str, reason: str) -> None:
        """The layer's input route turned out not to be exact (``reason``): the output route from now on."""
        with self._lock:
            self._no_input[layer] = reason
            cost = self._costs.get(layer)
            if cost is not None:
                self._costs[layer] = replace(cost, features_in=None, route=OUTPUT)
                self._rebalance()

    def route(self, layer: str) -> str:
        """The layer's route: :data:`~delve.budget.layer_cost.OUTPUT` before it was seen."""
        cost = self._costs.get(layer)
        return OUTPUT if cost is None else cost.route

    def route_note(self, layer: str) -> str:
        """Why a layer is kept off the input route, or an empty string."""
        return self._no_input.get(layer, "")

    def _rebalance(self) -> None:
        """Rates for the budget, then each layer's route at the rows it keeps (once more if one changed)."""
        if self.max_overhead is None:
            return
        for _ in range(2):
            self._rates = self._balance(list(self._costs.values()))
            changed = False
            for name, cost in self._costs.items():
                rate = self._rates[name]
                route = cost.cheaper_route(rate * cost.rows)
                if route == INPUT and rate * MAX_BATCHES_PER_WHOLE_DRAW < 1.0:
                    # Whole batches this rarely leave the epoch's drift between batches to chance: rows
                    # spread over every batch estimate the epoch's covariance better for the same work.
                    route = OUTPUT
                if route != cost.route:
                    self._costs[name] = replace(cost, route=route)
                    changed = True
            if not changed:
                break
        self._periods = {c.layer: _period(self._rates[c.layer], c) for c in self._costs.values()}

    def _balance(self, costs: list[LayerCost]) -> dict[str, float]:
        # Rows per feature are the rule, but a layer that costs next to nothing (a classifier head,
        # a squeeze-excitation reduction) keeps every row: the rest loses at most WHOLE_SHARE.
        budget = self.max_overhead * sum(c.training for c in costs)  # type: ignore[operator]
        # Probes rest on every sample: their work is paid first, and the covariances share what is left.
        budget = max(budget - sum(c.probe_work for c in costs), 0.0)
        self._whole = whole = _kept_whole(costs, budget * WHOLE_SHARE)
        rest = [c for c in costs if c.layer not in whole]
        spent = sum(c.work for c in costs if c.layer in whole)
        self._level = level = rows_per_feature_within(rest, budget - spent)
        return {
            c.layer: level * c.rank / c.rows
            if c.layer not in whole and c.worth_sampling(level * c.rank)
            else 1.0
            for c in costs
        }

    def overhead_for(self, layer: str, factor: float) -> float:
        """The ``max_overhead`` that would give ``layer`` ``factor`` times the rows it keeps now.

        ``math.inf`` when the layer does not have that many rows per batch.
        """
        costs = self.costs
        training = sum(c.training for c in costs)
        by_name = {c.layer: c for c in costs}
        if layer not in by_name or layer in self._whole or not training:
            return math.inf
        level = min(self._level, by_name[layer].rows / by_name[layer].rank) * factor
        if level * by_name[layer].rank > by_name[layer].rows:
            return math.inf
        kept = {c.layer: c.rows if c.layer in self._whole else min(c.rows, level * c.rank) for c in costs}
        return sum(c.kept_work(kept[c.layer]) + c.probe_work for c in costs) / training

    def rate(self, layer: str) -> float:
        """Share of a batch's rows the layer keeps: 1 without a budget or before it was seen."""
        return self._rates.get(layer, 1.0)

    def period(self, layer: str) -> int:
        """``m``: the layer draws from one batch in ``m`` on average, ``m`` times its share of rows.

        Examples
        --------
        >>> model = CostModel(max_overhead=0.001)
        >>> model.note(LayerCost("fc", rows=4096, features=64, applications=4096, weight_elements=64 * 64))
        >>> model.rows_to_keep("fc", 4096), model.period("fc")
        (25, 8)
        """
        return self._periods.get(layer, 1)

    def rows_to_keep(self, layer: str, rows: int) -> int:
        """How many of a batch's ``rows`` the layer keeps (at least one)."""
        rate = self._rates.get(layer, 1.0)
        return rows if rate >= 1.0 else max(1, min(rows, math.ceil(rate * rows)))

    def expensive(self, share: float = EXPENSIVE_SHARE) -> tuple[float, list[str]]:
        """``(tracking / training work of every row, the layers that make up half of it)``.

        Examples
        --------
        >>> model = CostModel()
        >>> model.note(LayerCost("qkv", rows=128, features=576, applications=128, weight_elements=192 * 576))
        >>> ratio, layers = model.expensive()
        >>> round(ratio, 2), layers
        (0.5, ['qkv'])
        >>> model.note(LayerCost("fc", rows=128, features=64, applications=128, weight_elements=64 * 64,
        ...                      product_weight=5.0, pass_weight=24.0))
        >>> model.expensive()[1]
        ['qkv']
        """
        costs = self.costs
        training = sum(c.training for c in costs)
        work = sum(c.work + c.probe_work for c in costs)
        if not training:
            return 0.0, []
        dominating: list[str] = []
        covered = 0.0
        for cost in sorted(costs, key=lambda c: -(c.work + c.probe_work)):
            if covered >= work * 0.5:
                break
            dominating.append(cost.layer)
            covered += cost.work + cost.probe_work
        return work / training, dominating

    def probe_share(self) -> float:
        """The probes' work against the budget (above 1: they alone exceed it); 0 without a budget.

        Examples
        --------
        >>> model = CostModel(max_overhead=0.05)
        >>> model.note(LayerCost("fc", 64, 64, 64, 64 * 64, probe_samples=64, probe_width=74))
        >>> round(model.probe_share(), 2)  # 64 x 74 x 75 / 2, and pooling 64 x 64, against 5 % of 3 x 64 x 4096
        4.62
        """
        costs = self.costs
        budget = (self.max_overhead or 0.0) * sum(c.training for c in costs)
        return sum(c.probe_work for c in costs) / budget if budget else 0.0

    def seconds(self, rows: Mapping[str, float]) -> float:
        """Estimated time to merge ``rows[layer]`` rows of each layer (every row, no budget).

        From each layer's work per row and its device's
        :func:`~delve.budget.layer_cost.training_rate`: an order of magnitude,
        not a measurement. Layers not seen yet count nothing.

        Examples
        --------
        >>> model = CostModel()
        >>> model.note(LayerCost("fc", 32, 64, 32, 64 * 64, training_rate=1e9))
        >>> model.seconds({"fc": 1000, "unseen": 5})  # 1000 rows x 64 x 65 / 2 multiply-adds
        0.00208
        """
        by_name = {c.layer: c for c in self.costs}
        return sum(by_name[layer].seconds(n) for layer, n in rows.items() if layer in by_name)

    def frame(
        self, layers: Iterable[str] | None = None, epochs: Mapping[str, tuple[int, int]] | None = None
    ) -> CostTable:
        """One row per layer: the multiply-adds per batch and what they are estimated to cost.

        The columns (:data:`COST_COLUMNS`), all per batch of the layer's
        first recorded forward pass:

        * ``layer``; ``rows``: observation rows; ``features``: ``d``;
        * ``route``: ``output`` (the Gram product of the output rows) or
          ``input`` (the input scatter mapped through the weights, for an
          affine layer whose input is the narrow side); printed ``out``, ``in``;
        * ``update``: multiply-adds of the Gram product of every row,
          ``rows * d * (d + 1) / 2``;
        * ``training``: multiply-adds of the layer's forward and backward;
        * ``overhead``: tracking every row against training (1.0 = 100 %),
          in training multiply-adds: the product and the passes over the
          rows, weighted by what they cost on the device
          (:func:`~delve.budget.layer_cost.relative_cost`), and the probe's;
        * ``share``: the layer's part of all tracking work;
        * ``kept_rows``, ``kept_overhead``: the same under the budget
          (``max_overhead``); every row without one;
        * ``probe``: the live probe's part of ``overhead`` (0 without the
          ``"probe"`` statistic): paid on every batch, under a budget too.

        * ``epoch_overhead``: the epoch-end statistics (their float64
          eigendecompositions, per mode) against the layer's training work in
          the last epoch (``epochs[layer]``: its training batches and the
          modes it was seen in); missing before an epoch has ended.

        The budget covers the work of every step (``kept_overhead``), not
        the epoch-end statistics nor the writers: on short epochs those can
        dominate, and ``epoch_overhead`` shows it.

        Printed, the table shows fractions as percentages and large counts
        in thousands (k), millions (M) or billions (G); the values stay plain
        numbers.
        """
        costs = {c.layer: c for c in self.costs}
        order = [name for name in (layers or costs) if name in costs]
        total = sum(c.work + c.probe_work for c in costs.values()) or 1.0
        records = []
        for name in order:
            cost = costs[name]
            kept = self.rows_to_keep(name, cost.rows)
            training = cost.training or math.nan
            batches, modes = (epochs or {}).get(name, (0, 0))
            records.append(
                {
                    "layer": name,
                    "rows": cost.rows,
                    "features": cost.features,
                    "route": cost.route,
                    "update": cost.update,
                    "training": cost.training,
                    "overhead": (cost.work + cost.probe_work) / training,
                    "share": (cost.work + cost.probe_work) / total,
                    "kept_rows": kept,
                    "kept_overhead": (cost.kept_work(kept) + cost.probe_work) / training,
                    "probe": cost.probe_work / training,
                    "epoch_overhead": cost.epoch_work(modes) / (training * batches) if batches else math.nan,
                }
            )
        return CostTable.from_records(records, columns=list(COST_COLUMNS))
