"""Statistics: from a layer's accumulated state to the values it logs, once per epoch.

:mod:`.metrics` holds the functions of a spectrum, :mod:`.registry` one
record per statistic (add yours there with :func:`register_statistic`) and
:mod:`.epoch` the computation of an epoch: one eigendecomposition per layer and
mode, shared by every statistic.
"""

from .registry import *  # noqa: F403
from .registry import __all__  # noqa: F401
