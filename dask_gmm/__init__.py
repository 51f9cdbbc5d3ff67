"""dask-gmm: Gaussian mixture models for arrays that do not fit in memory."""

from .gaussian_mixture import GaussianMixture, InvalidParameterError

__all__ = ["GaussianMixture", "InvalidParameterError"]
__version__ = "0.1.0"
