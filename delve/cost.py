"""What tracking costs against training, per layer, and the budget that keeps it small.

A layer's Gram update costs about ``n * d * (d + 1) / 2`` multiply-adds for
``n`` observation rows of ``d`` features, while its own training costs about
``3 * W * a`` (forward, and a backward of twice the forward), ``W`` being its
weight elements and ``a`` how often they are applied (output positions or
tokens). So a widening layer (attention's ``qkv``, an MLP's up-projection, a
depthwise convolution) pays more for tracking than for training.
:class:`CostModel` estimates both from the shapes seen at each layer's first
recorded forward pass.

With a budget (``max_overhead=0.05``), each layer keeps a random subset of its
rows per batch so that the estimated tracking work stays within that share
of the tracked layers' training work. The budget is spent so that layers get
similar rows per feature where they can: the sampling error of a ``d``-wide
covariance grows with ``sqrt(d / rows)``, so every layer is given the same
``rows / d`` up to the rows it has (water-filling).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

__all__ = ["LayerCost", "CostModel", "layer_cost", "relative_cost", "rows_per_feature_within", "EXPENSIVE_SHARE"]

#: Above this estimated tracking work relative to training work, the tracker says so once.
EXPENSIVE_SHARE = 0.25
#: Training work relative to a forward pass: the backward computes two products of the same size.
TRAINING_PER_FORWARD = 3


@dataclass(frozen=True)
class LayerCost:
    """The shapes behind one layer's costs, from its first recorded forward pass.

    Attributes
    ----------
    layer : str
        The layer's name.
    rows : int
        Observation rows per batch.
    features : int
        ``d``, the width of each row.
    applications : int
        How often the layer applied its weights in that pass (output
        positions of a convolution, tokens of a linear layer).
    weight_elements : int
        Elements of its weight matrices (parameters of two or more dimensions).
    product_weight, pass_weight : float
        What one multiply-add of the Gram product, and one element of a
        pass over the rows (copy, convert, shift), cost in multiply-adds of
        the layer's training (see :func:`relative_cost`).
    """

    layer: str
    rows: int
    features: int
    applications: int
    weight_elements: int
    product_weight: float = 1.0
    pass_weight: float = 0.0

    @property
    def update_per_row(self) -> int:
        """Multiply-adds to merge one row: its share of the upper-triangular Gram product."""
        d = self.features
        return d * (d + 1) // 2

    @property
    def update(self) -> int:
        """Multiply-adds to merge every row of a batch."""
        return self.rows * self.update_per_row

    @property
    def work_per_row(self) -> float:
        """What merging one row costs, in multiply-adds of training: the product and the passes."""
        return self.update_per_row * self.product_weight + self.features * self.pass_weight

    @property
    def work(self) -> float:
        """What merging every row of a batch costs, in multiply-adds of training."""
        return self.rows * self.work_per_row

    @property
    def training(self) -> int:
        """Multiply-adds of the layer's forward and backward pass on a batch."""
        return TRAINING_PER_FORWARD * self.weight_elements * self.applications


#: ``(device type, training dtype is half) -> (product weight per product dtype, pass weight)``.
#: CPU figures are measured (docs/performance.rst: float64 and float32 upper-block products of the
#: VGG-style CNN against its training step, and the copy-and-shift pass); GPU figures are the ratios
#: of datasheet peaks (an H100's float64 and float32 against bf16 tensor cores), not measured.
_RELATIVE_COSTS: dict[tuple[str, bool], tuple[dict[torch.dtype, float], float]] = {
    ("cpu", False): ({torch.float64: 5.0, torch.float32: 2.2}, 24.0),
    ("cpu", True): ({torch.float64: 5.0, torch.float32: 2.2}, 24.0),
    ("cuda", False): ({torch.float64: 1.0, torch.float32: 1.0}, 4.0),
    ("cuda", True): ({torch.float64: 15.0, torch.float32: 15.0}, 4.0),
}


def relative_cost(device_type: str, product_dtype: torch.dtype, training_dtype: torch.dtype) -> tuple[float, float]:
    """``(product weight, pass weight)``: tracking's multiply-adds and element passes in training multiply-adds.

    A float64 product multiply-add costs more than a training one (float32,
    or half precision on tensor cores), and a pass over the rows is bound by
    memory, not arithmetic. Unknown devices count both as one training
    multiply-add.

    Examples
    --------
    >>> relative_cost("cpu", torch.float64, torch.float32)
    (5.0, 24.0)
    """
    half = training_dtype in (torch.float16, torch.bfloat16)
    products, passes = _RELATIVE_COSTS.get((device_type, half), ({}, 1.0))
    return products.get(product_dtype, 1.0), passes


def layer_cost(
    layer: str,
    module: nn.Module,
    output: object,
    rows: int,
    features: int,
    weights: tuple[float, float] = (1.0, 0.0),
) -> LayerCost:
    """The :class:`LayerCost` of ``module`` from its output and its observation's shape.

    ``weights`` is :func:`relative_cost` for the layer's device and dtypes.

    Examples
    --------
    >>> conv = nn.Conv2d(3, 8, 3, padding=1)
    >>> cost = layer_cost("conv", conv, torch.zeros(2, 8, 5, 5), rows=50, features=8)
    >>> cost.applications, cost.weight_elements, cost.training
    (50, 216, 32400)
    """
    weight_elements = sum(p.numel() for p in module.parameters() if p.ndim >= 2)
    return LayerCost(
        layer, int(rows), int(features), _applications(module, output), int(weight_elements), *weights
    )


def _applications(module: nn.Module, output: object) -> int:
    """How many output vectors the layer computed: output elements over its output width."""
    tensor = output
    while isinstance(tensor, (tuple, list)) and tensor:
        tensor = tensor[0]
    tensor = getattr(tensor, "data", tensor)  # PackedSequence holds its steps in .data
    if not isinstance(tensor, torch.Tensor) or tensor.ndim == 0:
        return 0
    width = getattr(module, "out_channels", None) or tensor.shape[-1]
    return tensor.numel() // max(int(width), 1)


def rows_per_feature_within(costs: Sequence[LayerCost], budget: float) -> float:
    """The largest common ``rows / d`` whose update work, capped at each layer's rows, fits ``budget``.

    Layers whose ``rows / d`` is below the level keep all their rows; the others
    get ``level * d`` rows. ``math.inf`` when every row fits.

    Examples
    --------
    >>> small, wide = LayerCost("a", 8, 4, 8, 16), LayerCost("b", 10_000, 64, 10_000, 4096)
    >>> rows_per_feature_within([small, wide], budget=small.work + 10 * 64 * wide.work_per_row)
    10.0
    """
    by_level = sorted(costs, key=lambda c: c.rows / c.features)
    full = 0  # work of the layers already capped at all their rows
    for index, cost in enumerate(by_level):
        level = cost.rows / cost.features
        partial = sum(c.features * c.work_per_row for c in by_level[index:])
        if full + level * partial > budget:
            return max(budget - full, 0.0) / partial
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
        self._level = math.inf  # rows per feature and batch that the budget allows
        self._lock = threading.Lock()

    def __contains__(self, layer: object) -> bool:
        return layer in self._costs

    @property
    def costs(self) -> list[LayerCost]:
        """The layers seen so far, in the order they were first seen."""
        with self._lock:
            return list(self._costs.values())

    def note(self, cost: LayerCost) -> None:
        """Record a layer's shapes (its first recorded pass only) and re-balance the budget."""
        with self._lock:
            if cost.layer in self._costs:
                return
            self._costs[cost.layer] = cost
            if self.max_overhead is not None:
                self._rates = self._balance(list(self._costs.values()))

    def _balance(self, costs: list[LayerCost]) -> dict[str, float]:
        budget = self.max_overhead * sum(c.training for c in costs)  # type: ignore[operator]
        self._level = level = rows_per_feature_within(costs, budget)
        return {c.layer: min(1.0, level * c.features / c.rows) if c.rows else 1.0 for c in costs}

    def overhead_for(self, layer: str, factor: float) -> float:
        """The ``max_overhead`` that would give ``layer`` ``factor`` times the rows it keeps now.

        ``math.inf`` when the layer does not have that many rows per batch.
        """
        costs = self.costs
        training = sum(c.training for c in costs)
        by_name = {c.layer: c for c in costs}
        if layer not in by_name or not training:
            return math.inf
        level = min(self._level, by_name[layer].rows / by_name[layer].features) * factor
        if level * by_name[layer].features > by_name[layer].rows:
            return math.inf
        return sum(min(c.rows, level * c.features) * c.work_per_row for c in costs) / training

    def rate(self, layer: str) -> float:
        """Share of a batch's rows the layer keeps: 1 without a budget or before it was seen."""
        return self._rates.get(layer, 1.0)

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
        work = sum(c.work for c in costs)
        if not training:
            return 0.0, []
        dominating: list[str] = []
        covered = 0.0
        for cost in sorted(costs, key=lambda c: -c.work):
            if covered >= work * 0.5:
                break
            dominating.append(cost.layer)
            covered += cost.work
        return work / training, dominating

    def frame(self, layers: Iterable[str] | None = None) -> pd.DataFrame:
        """One row per layer: the multiply-adds per batch and what they are estimated to cost.

        Columns: ``layer``, ``rows`` (per batch), ``features`` (``d``),
        ``update`` (multiply-adds of the Gram product of every row),
        ``training`` (multiply-adds of the layer's forward and backward),
        ``overhead`` (tracking every row against training, in training
        multiply-adds: products and passes over the rows weighted by
        :func:`relative_cost`), ``share`` (of all tracking work),
        ``kept_rows`` and ``kept_overhead`` (under the budget; every row
        without one).
        """
        costs = {c.layer: c for c in self.costs}
        order = [name for name in (layers or costs) if name in costs]
        total = sum(c.work for c in costs.values()) or 1.0
        records = []
        for name in order:
            cost = costs[name]
            kept = self.rows_to_keep(name, cost.rows)
            training = cost.training or math.nan
            records.append(
                {
                    "layer": name,
                    "rows": cost.rows,
                    "features": cost.features,
                    "update": cost.update,
                    "training": cost.training,
                    "overhead": cost.work / training,
                    "share": cost.work / total,
                    "kept_rows": kept,
                    "kept_overhead": kept * cost.work_per_row / training,
                }
            )
        columns = ["layer", "rows", "features", "update", "training", "overhead", "share", "kept_rows", "kept_overhead"]
        return pd.DataFrame.from_records(records, columns=columns)
