"""What tracking costs against training, per layer (the budget spending it is :mod:`delve.budget.cost_model`).

A layer's Gram update costs about ``n * d * (d + 1) / 2`` multiply-adds for
``n`` observation rows of ``d`` features, while its own training costs about
``3 * W * a`` (forward, and a backward of twice the forward), ``W`` being its
weight elements and ``a`` how often they are applied (output positions or
tokens). So a widening layer (attention's ``qkv``, an MLP's up-projection, a
depthwise convolution) pays more for tracking than for training.
:class:`LayerCost` holds both, estimated from the shapes seen at the layer's
first recorded forward pass, with what the device makes each elementary
operation cost (:func:`~delve.budget.device_costs.relative_cost`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .device_costs import EPOCH_SECONDS_PER_CUBE, POOLING_WEIGHT, ROWS_PER_CACHE_LINE, UNIT_WEIGHTS, CostWeights

__all__ = [
    "LayerCost",
    "layer_cost",
    "OUTPUT",
    "INPUT",
]

#: Training work relative to a forward pass: the backward computes two products of the same size.
TRAINING_PER_FORWARD = 3


#: The two exact routes of a layer's covariance (:mod:`delve.engine.input_route`).
OUTPUT, INPUT = "output", "input"


@dataclass(frozen=True)
class LayerCost:
    """The shapes behind one layer's costs, from its first recorded forward pass, and its route.

    Attributes
    ----------
    layer : str
        The layer's name.
    rows : int
        Observation rows per batch.
    features : int
        ``d``, the width of each row (the layer's output width).
    applications : int
        How often the layer applied its weights in that pass (output
        positions of a convolution, tokens of a linear layer).
    weight_elements : int
        Elements of its weight matrices (parameters of two or more dimensions).
    product_weight, pass_weight : float
        What one multiply-add of the Gram product, and one element of a
        pass over the rows (copy, convert, shift), cost in multiply-adds of
        the layer's training (see :func:`~delve.budget.device_costs.relative_cost`).
    gather_weight : float
        What picking one element of a sampled row out of the batch costs on
        top, in the same unit: zero where rows lie contiguous (a linear
        layer's), large where each row is strided across the batch (a
        channels-first convolution's ``(N, H*W, C)`` view).
    features_in : int or None
        ``d_in`` of an affine layer that can take the input route; ``None``
        when it cannot.
    float64_weight : float
        What one float64 multiply-add costs (the probe's moments are float64
        whatever the covariance's precision).
    input_shared : bool
        Another layer computes the same input scatter in the same forward
        pass: this one pays only its map.
    route : str
        :data:`OUTPUT` (the output rows' Gram product) or :data:`INPUT` (the
        input scatter mapped through the weights).
    training_rate : float
        Training multiply-adds per second on the layer's device
        (:func:`~delve.budget.device_costs.training_rate`), to turn work into an estimated time; ``0``
        where unknown.
    probe_samples, probe_width : int
        With live probes: samples per batch, and the width of their moment
        rows (the features and the target columns); ``0`` without probes.
    device : str
        The type of the device the layer's state lives on.
    """

    layer: str
    rows: int
    features: int
    applications: int
    weight_elements: int
    product_weight: float = 1.0
    pass_weight: float = 0.0
    gather_weight: float = 0.0
    features_in: int | None = None
    float64_weight: float = 1.0
    input_shared: bool = False
    route: str = OUTPUT
    training_rate: float = 0.0
    probe_samples: int = 0
    probe_width: int = 0
    device: str = "cpu"

    @property
    def rank(self) -> int:
        """The most directions the layer's outputs can span: ``min(d_in, d)`` for an affine layer, else ``d``.

        ``x W^T + b`` spans at most ``d_in`` directions however wide it is,
        so a widening layer's covariance is as well estimated from ``n`` rows
        as a ``d_in``-wide one: the budget gives rows per direction, not per
        output feature.

        Examples
        --------
        >>> LayerCost("qkv", 64, 576, 64, 192 * 576, features_in=192).rank
        192
        """
        return min(self.features, self.features_in) if self.features_in else self.features

    @property
    def update_per_row(self) -> int:
        """Multiply-adds to merge one row on the output route: its share of the upper-triangular Gram product."""
        d = self.features
        return d * (d + 1) // 2

    @property
    def update(self) -> int:
        """Multiply-adds to merge every row of a batch on the output route."""
        return self.rows * self.update_per_row

    def row_work(self, route: str) -> float:
        """What merging one row costs on ``route``, in multiply-adds of training: the product and the passes."""
        if route == INPUT:
            if self.input_shared:
                return 0.0
            d = self.features_in or 0
            return d * (d + 1) // 2 * self.product_weight + d * self.pass_weight
        return self.update_per_row * self.product_weight + self.features * self.pass_weight

    def fixed_work(self, route: str) -> float:
        """What a batch costs on ``route`` whatever its rows: the map ``W S_x W^T`` and adding it to the state."""
        if route != INPUT:
            return 0.0
        d_in, d_out = self.features_in or 0, self.features
        # The map runs in the products' precision (float64 in exact mode, float32 under a budget).
        # Both products of the map in full: its upper blocks alone are thin products that ran 4 times slower.
        return d_out * d_in * (d_in + d_out) * self.product_weight + 2 * d_out * d_out * self.pass_weight

    @property
    def probe_work(self) -> float:
        """What the probe costs per batch: pooling every row, and one moment row per sample.

        A budget never samples it (the probe rests on every sample), so it is
        paid first, out of the budget, on every batch.
        """
        if not self.probe_samples:
            return 0.0
        w = self.probe_width
        pooling = self.rows * self.features * POOLING_WEIGHT
        return self.probe_samples * w * (w + 1) // 2 * self.float64_weight + pooling

    @property
    def work_per_row(self) -> float:
        """What merging one row costs on the layer's route."""
        return self.row_work(self.route)

    @property
    def sampled_work_per_row(self) -> float:
        """What merging one row costs when a budget keeps a share of them.

        On the output route a row is picked out of the batch. On the input
        route a budget keeps whole batches, one in ``m``: the map is paid
        once per batch kept, so a row costs its share of the whole batch.
        """
        if self.route == INPUT:
            return self.work / max(self.rows, 1)
        return self.work_per_row + self.features * self.gather_weight

    @property
    def work(self) -> float:
        """What merging every row of a batch into the covariance costs, in multiply-adds of training.

        The probe's work (:attr:`probe_work`) comes on top.
        """
        return self.rows * self.work_per_row + self.fixed_work(self.route)

    def kept_work(self, kept: float, route: str | None = None) -> float:
        """What merging ``kept`` rows of a batch costs on ``route`` (the layer's), on average per batch.

        On the output route rows are picked out of the batch unless they are
        all its rows; a strided gather reads one cache line per element, and
        once rows are kept that densely it costs one read of the whole batch
        and no more. On the input route whole batches are kept, one in
        ``rows / kept``: the work is that share of a whole batch's.
        """
        route = route or self.route
        whole = self.rows * self.row_work(route) + self.fixed_work(route)
        if kept >= self.rows:
            return whole
        if route == INPUT:
            return whole * kept / max(self.rows, 1)
        gathered = min(kept, self.rows / ROWS_PER_CACHE_LINE)
        return kept * self.row_work(route) + gathered * self.features * self.gather_weight

    def cheaper_route(self, kept: float | None = None) -> str:
        """The route that merges ``kept`` rows (all of them by default) for less work."""
        if self.features_in is None:
            return OUTPUT
        kept = self.rows if kept is None else kept
        return INPUT if self.kept_work(kept, INPUT) < self.kept_work(kept, OUTPUT) else OUTPUT

    def worth_sampling(self, kept: float) -> bool:
        """Whether keeping ``kept`` rows costs less than keeping them all (picking rows is not free)."""
        return kept < self.rows and self.kept_work(kept) < self.work

    def seconds(self, rows: float) -> float:
        """Estimated time to merge ``rows`` rows, from :attr:`training_rate`; NaN where the rate is unknown.

        Examples
        --------
        >>> LayerCost("fc", 32, 64, 32, 64 * 64, training_rate=1e9).seconds(1000)  # 1000 x 64 x 65 / 2
        0.00208
        """
        return rows * self.work_per_row / self.training_rate if self.training_rate > 0 else math.nan

    def epoch_work(self, modes: int = 1) -> float:
        """The epoch-end statistics of ``modes`` modes (their eigendecompositions), in multiply-adds of training.

        Paid once an epoch, whatever the budget: an order of magnitude, as
        :meth:`seconds`, from the device's time per ``d^3`` and its
        :attr:`training_rate`.

        Examples
        --------
        >>> LayerCost("fc", 32, 1000, 32, 10**6, training_rate=5e10).epoch_work()  # 0.25 s at 5e10 per s
        12500000000.0
        """
        per_cube = EPOCH_SECONDS_PER_CUBE.get(self.device, EPOCH_SECONDS_PER_CUBE["cpu"])
        return modes * per_cube * self.features**3 * self.training_rate

    @property
    def training(self) -> int:
        """Multiply-adds of the layer's forward and backward pass on a batch."""
        return TRAINING_PER_FORWARD * self.weight_elements * self.applications


def layer_cost(
    layer: str,
    module: nn.Module,
    output: object,
    rows: int,
    features: int,
    weights: CostWeights = UNIT_WEIGHTS,
    strided: bool = False,
    features_in: int | None = None,
    float64_weight: float | None = None,
    input_shared: bool = False,
    rate: float = 0.0,
    probe_samples: int = 0,
    probe_width: int = 0,
    device: str = "cpu",
) -> LayerCost:
    """The :class:`LayerCost` of ``module`` from its output and its observation's shape.

    ``weights`` is :func:`~delve.budget.device_costs.relative_cost` for the layer's device and dtypes;
    ``strided`` says the observation's rows are not contiguous in memory;
    ``features_in`` and ``input_shared`` describe the input route where the
    layer can take it, ``float64_weight`` what a float64 multiply-add costs
    (see :class:`LayerCost`).
    ``rate`` is :func:`training_rate` for the layer's device (``0``: unknown);
    ``probe_samples`` and ``probe_width`` describe its live probe, if any;
    ``device`` is the type of the device its state lives on.

    Examples
    --------
    >>> conv = nn.Conv2d(3, 8, 3, padding=1)
    >>> cost = layer_cost("conv", conv, torch.zeros(2, 8, 5, 5), rows=50, features=8)
    >>> cost.applications, cost.weight_elements, cost.training
    (50, 216, 32400)
    """
    weight_elements = sum(p.numel() for p in module.parameters() if p.ndim >= 2)
    gather = weights.gather if strided else 0.0
    return LayerCost(
        layer,
        int(rows),
        int(features),
        _applications(module, output),
        int(weight_elements),
        weights.product,
        weights.passes,
        gather,
        features_in,
        weights.product if float64_weight is None else float64_weight,
        input_shared,
        OUTPUT,
        float(rate),
        int(probe_samples),
        int(probe_width),
        device,
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
