"""delve 0.1.x import path of the tracker; the logic lives in :mod:`delve.tracking.tracker`."""

from .tracking.tracker import CheckLayerSat, SaturationTracker

__all__ = ["SaturationTracker", "CheckLayerSat"]
