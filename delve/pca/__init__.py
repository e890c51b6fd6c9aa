"""PCA layers: a network runs on the leading eigendirections of a layer's outputs (the papers' check).

:mod:`.fit` accumulates a layer's input and decomposes it, :mod:`.linear` and
:mod:`.conv` are the layers that project, :mod:`.thresholds` changes every PCA
layer of a network at once.
"""

from .conv import Conv2DPCALayer
from .fit import random_orthonormal
from .linear import LinearPCALayer
from .thresholds import change_all_pca_layer_thresholds, change_all_pca_layer_thresholds_and_inject_random_directions

__all__ = [
    "LinearPCALayer",
    "Conv2DPCALayer",
    "change_all_pca_layer_thresholds",
    "change_all_pca_layer_thresholds_and_inject_random_directions",
    "random_orthonormal",
]
