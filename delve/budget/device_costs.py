"""What tracking's elementary operations cost on a device, in multiply-adds of training.

A product's multiply-add, a pass over rows, a strided gather, averaging an
element over positions and an epoch-end eigendecomposition each cost a
different amount of a training step's work, by device and precision: the
figures below, measured on CPU and taken from datasheet ratios on GPU,
turn :class:`~delve.budget.layer_cost.LayerCost`'s counts into one unit.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "CostWeights",
    "relative_cost",
    "training_rate",
    "UNIT_WEIGHTS",
    "POOLING_WEIGHT",
    "ROWS_PER_CACHE_LINE",
    "EPOCH_SECONDS_PER_CUBE",
]

#: What averaging one element of an output over its positions costs, in multiply-adds of training: a
#: reduction reads each element once and writes little (ViT-tiny's (64, 65, 192) outputs: 60 us against
#: 93 ms for the layer's training, about 0.4 per element, CPU, 2 cores).
POOLING_WEIGHT = 1.0
#: Float32 values in a 64-byte cache line: rows kept denser than one in this many share the lines read.
ROWS_PER_CACHE_LINE = 16


class CostWeights(NamedTuple):
    """Tracking's elementary costs in multiply-adds of training (see :func:`relative_cost`)."""

    product: float
    passes: float
    gather: float


#: ``(device type, training dtype is half) -> (product weight per product dtype, pass, strided gather)``.
#: CPU figures are measured on 2 cores (docs/performance.rst: float64 and float32 upper-block
#: products of the VGG-style CNN against its training step, the copy-and-shift pass, and picking
#: sampled rows out of its (N, H*W, C) views: 5 ns per element inside a step, one cache line each). GPU
#: figures are the ratios of datasheet peaks (an H100's float64 and float32 against bf16 tensor
#: cores), not measured; a strided gather there reads a 32-byte sector per 4-byte element.
_RELATIVE_COSTS: dict[tuple[str, bool], tuple[dict[torch.dtype, float], float, float]] = {
    ("cpu", False): ({torch.float64: 5.0, torch.float32: 2.2}, 24.0, 300.0),
    ("cpu", True): ({torch.float64: 5.0, torch.float32: 2.2}, 24.0, 300.0),
    ("cuda", False): ({torch.float64: 1.0, torch.float32: 1.0}, 4.0, 32.0),
    ("cuda", True): ({torch.float64: 15.0, torch.float32: 15.0}, 4.0, 32.0),
}


#: ``(device type, training dtype is half) -> training multiply-adds per second``: orders of magnitude
#: that turn an estimated work into an estimated time, not measurements of the machine at hand. The
#: CPU figure is the MLP of docs/performance.rst on 2 cores (about 9e10 in a bare step), rounded down;
#: the CUDA figures are about half the datasheet peaks of current data-centre GPUs (float32 without
#: TensorFloat-32, and bf16/fp16 tensor cores). Other devices get :data:`OTHER_TRAINING_RATE`.
_TRAINING_RATES: dict[tuple[str, bool], float] = {
    ("cpu", False): 5e10,
    ("cpu", True): 5e10,
    ("cuda", False): 1e13,
    ("cuda", True): 1e14,
}
#: Training multiply-adds per second assumed on a device of another type (MPS, XPU, ...).
OTHER_TRAINING_RATE = 1e12

#: ``device type -> seconds per d^3`` of one epoch-end computation of a layer and mode (the float64
#: eigendecomposition that dominates it). CPU: measured on 2 cores (d = 384 to 1536); CUDA: an order of
#: magnitude of cuSOLVER's float64 ``syevd`` at d = 1024, not measured here.
EPOCH_SECONDS_PER_CUBE: dict[str, float] = {"cpu": 2.5e-10, "cuda": 3e-11}


def training_rate(device_type: str, training_dtype: torch.dtype) -> float:
    """Training multiply-adds per second assumed on a device: an order of magnitude, to estimate times.

    Examples
    --------
    >>> training_rate("cpu", torch.float32), training_rate("cuda", torch.bfloat16)
    (50000000000.0, 100000000000000.0)
    """
    half = training_dtype in (torch.float16, torch.bfloat16)
    return _TRAINING_RATES.get((device_type, half), OTHER_TRAINING_RATE)


#: Every elementary cost counted as one training multiply-add, passes and gathers as free.
UNIT_WEIGHTS = CostWeights(1.0, 0.0, 0.0)


def relative_cost(device_type: str, product_dtype: torch.dtype, training_dtype: torch.dtype) -> CostWeights:
    """Tracking's product multiply-adds, element passes and strided gathers in training multiply-adds.

    A float64 product multiply-add costs more than a training one (float32,
    or half precision on tensor cores); a pass over the rows is bound by
    memory, not arithmetic; and picking a sampled row out of a strided view
    reads each element from its own cache line. Unknown devices count each
    as one training multiply-add.

    Examples
    --------
    >>> relative_cost("cpu", torch.float64, torch.float32)
    CostWeights(product=5.0, passes=24.0, gather=300.0)
    """
    half = training_dtype in (torch.float16, torch.bfloat16)
    products, passes, gather = _RELATIVE_COSTS.get((device_type, half), ({}, 1.0, 1.0))
    return CostWeights(products.get(product_dtype, 1.0), passes, gather)
