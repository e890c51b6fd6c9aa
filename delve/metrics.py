"""delve 0.1.x import path of the spectrum functions; they live in :mod:`delve.statistics.metrics`."""

from .statistics.metrics import *  # noqa: F403
from .statistics.metrics import __all__  # noqa: F401
