"""Statistics: from a layer's accumulated state to the values it logs, once per epoch.

:mod:`.metrics` holds the functions of a spectrum, :mod:`.registry` the
record every statistic is (add yours with :func:`register_statistic`),
:mod:`.builtin` the built-in records and :mod:`.epoch` the computation of an
epoch: one eigendecomposition per layer and mode, shared by every statistic.
"""

from . import builtin  # noqa: F401  (registers the built-in statistics)
from .registry import *  # noqa: F403
from .registry import __all__  # noqa: F401
