"""delve 0.1.x import path of the covariance accumulator; see :mod:`delve.covariance`."""

from .covariance import TorchCovarianceMatrix

__all__ = ["TorchCovarianceMatrix"]
