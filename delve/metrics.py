"""delve 0.1.x import path of the spectrum functions; they live in :mod:`delve.statistics`."""

from .statistics.metrics import *  # noqa: F403
from .statistics.metrics import __all__ as _measures
from .statistics.spectra import *  # noqa: F403
from .statistics.spectra import __all__ as _spectra

__all__ = [*_spectra, *_measures]
