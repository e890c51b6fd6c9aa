"""delve: live layer saturation and covariance statistics for PyTorch models.

Examples
--------
>>> import torch
>>> from torch import nn
>>> from delve import SaturationTracker
>>> model = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 2))
>>> tracker = SaturationTracker("run", modules=model, nosave=True)
>>> _ = model(torch.randn(100, 10))
>>> 0 < tracker.add_saturations()["train-saturation_0"] <= 1
True
>>> tracker.close()
"""

import logging

from .capture.observation import ObservationConfig, register_observer
from .engine.accumulator import Accumulator, Batch
from .engine.activity import MeanAbsoluteActivity
from .engine.covariance import EmptyCovarianceError, TorchCovarianceMatrix
from .output.report import format_report
from .output.results import load_results, recompute
from .pca import (
    Conv2DPCALayer,
    LinearPCALayer,
    change_all_pca_layer_thresholds,
    change_all_pca_layer_thresholds_and_inject_random_directions,
)
from .statistics.metrics import (
    covariance_trace,
    diagonal_trace,
    dormant_fraction,
    effective_rank,
    embed_top2,
    intrinsic_dimensionality,
    log_determinant,
    participation_ratio,
    saturation,
    spectral_decay_exponent,
)
from .statistics.registry import Statistic, register_statistic
from .statistics.spectra import eigenvalues, spectra, spectrum
from .tracking.tracker import CheckLayerSat, SaturationTracker
from .verdicts import receptive_field
from .verdicts.findings import Thresholds
from .writers.registry import register_writer

__version__ = "0.2.0"

logging.getLogger("delve").addHandler(logging.NullHandler())

__all__ = [
    "SaturationTracker",
    "CheckLayerSat",
    "TorchCovarianceMatrix",
    "EmptyCovarianceError",
    "ObservationConfig",
    "register_observer",
    "register_statistic",
    "register_writer",
    "load_results",
    "recompute",
    "Statistic",
    "Accumulator",
    "Batch",
    "eigenvalues",
    "spectrum",
    "spectra",
    "intrinsic_dimensionality",
    "saturation",
    "covariance_trace",
    "diagonal_trace",
    "log_determinant",
    "embed_top2",
    "effective_rank",
    "participation_ratio",
    "spectral_decay_exponent",
    "dormant_fraction",
    "MeanAbsoluteActivity",
    "LinearPCALayer",
    "Conv2DPCALayer",
    "change_all_pca_layer_thresholds",
    "change_all_pca_layer_thresholds_and_inject_random_directions",
    "receptive_field",
    "Thresholds",
    "format_report",
    "__version__",
]
