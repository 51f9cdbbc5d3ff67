"""Names defined once: the version, covariance types, initialisations, result columns."""

VERSION = "0.1.0"

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")
CRITERIA = ("bic", "aic")
NAN_POLICIES = ("raise", "omit", "marginalize")
# A component of a Bayesian mixture holding less of the weight than this is not in use.
EFFECTIVE_WEIGHT = 0.01
# One entry per candidate in GaussianMixtureSweep.results_ (and in saved sweeps,
# and in the command line's CSV), besides the ``params`` dicts.
RESULT_COLUMNS = ("n_components", "covariance_type", "bic", "aic", "lower_bound",
                  "n_iter", "converged", "n_passes", "finish_time", "error")
# The same for BayesianGaussianMixtureSweep.results_.
BAYESIAN_RESULT_COLUMNS = ("weight_concentration_prior", "covariance_type", "n_components",
                           "lower_bound", "n_effective", "n_iter", "converged", "n_passes",
                           "finish_time", "error")
# The "format" a model file's header names (see persistence).
MODEL_FORMAT = "dask-gmm-model"
