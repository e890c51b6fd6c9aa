"""delve 0.1.x import path of the PCA layers; they live in :mod:`delve.pca`."""

from .pca import *  # noqa: F403
from .pca import __all__  # noqa: F401
