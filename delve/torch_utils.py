"""delve 0.1.x import path of the covariance accumulator; see :mod:`delve.engine.covariance`."""

from .engine.covariance import TorchCovarianceMatrix

__all__ = ["TorchCovarianceMatrix"]
