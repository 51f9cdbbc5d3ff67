"""dask-gmm: Gaussian mixture models for arrays that do not fit in memory."""

from ._engine import worker_settings
from ._options import VERSION as __version__  # noqa: F401
from ._validation import InvalidParameterError
from .bayesian_mixture import BayesianGaussianMixture, plot_weights
from .bayesian_sweep import BayesianGaussianMixtureSweep
from .gaussian_mixture import GaussianMixture
from .io import open_array
from .outputs import write_predictions
from .persistence import ModelFormatError, load
from .sweep import GaussianMixtureSweep, plot_criterion

__all__ = ["BayesianGaussianMixture", "BayesianGaussianMixtureSweep", "GaussianMixture",
           "GaussianMixtureSweep", "InvalidParameterError", "ModelFormatError", "load",
           "open_array", "plot_criterion", "plot_weights", "worker_settings",
           "write_predictions"]
