"""``BayesianGaussianMixture``: scikit-learn's variational mixture, one chunk pass per iteration.

The fit loop, initialisations, inputs and outputs are those of
:class:`~dask_gmm.GaussianMixture` (``_base``); what differs is written in
``_variational``: the priors, the M-step and the lower bound. The E-step is
the same chunk pass with other per-component constants, so the compiled
full-covariance kernel serves it. The default priors need the data's mean and
covariance; they come from the statistics of the initialisation's own pass
(or of the first E-step), never from a pass of their own, except for
'k-means++' and 'random_from_data' starts on data larger than the k-means
sample.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from sklearn.utils import check_array

from ._base import BaseMixture
from ._init import initial_estimate
from ._mstep import gaussian_estimate, precisions_from_cholesky
from ._options import EFFECTIVE_WEIGHT
from ._plots import pyplot
from ._requests import EStep, Moments
from ._validation import (
    InvalidParameterError,
    _check_precision_matrix,
    _check_shape,
    check_option,
)
from ._variational import (
    WEIGHT_PRIOR_TYPES,
    Priors,
    VariationalParams,
    default_covariance_prior,
    e_step_constants,
    lower_bound,
    moments_from_stats,
    responsibility_entropy,
    variational_m_step,
)
from .persistence import register


def _check_positive_or_none(name, value, owner):
    if value is not None and (isinstance(value, bool) or not isinstance(value, Real)
                              or not value > 0):
        raise InvalidParameterError(
            f"The '{name}' parameter of {owner} must be None or a float in the range "
            f"(0.0, inf). Got {value!r} instead."
        )


@register
class BayesianGaussianMixture(BaseMixture):
    """Variational Bayesian Gaussian mixture over the chunks of a (possibly huge) array.

    A drop-in replacement for :class:`sklearn.mixture.BayesianGaussianMixture`:
    the same parameters, defaults, fitted attributes, methods and messages, on
    every input :class:`~dask_gmm.GaussianMixture` takes (numpy, dask, zarr,
    HDF5, xarray; ``sample_weight``; ``nan_policy``). Components the data do
    not need get weights near zero, so ``n_components`` is an upper bound and
    the effective number of components is read off ``weights_``.

    Parameters
    ----------
    n_components : int, default=1
        The largest number of components the data may use.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
    tol : float, default=1e-3
        EM stops when the lower bound (a total over the rows, as in
        scikit-learn) gains less than this.
    reg_covar : float, default=1e-6
    max_iter : int, default=100
    n_init : int, default=1
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}, \
            default='kmeans'
    weight_concentration_prior_type : {'dirichlet_process', \
            'dirichlet_distribution'}, default='dirichlet_process'
        Stick-breaking (Dirichlet process) or finite Dirichlet prior on the weights.
    weight_concentration_prior : float, default=None
        Smaller values put more weight on fewer components. Default ``1 / n_components``.
    mean_precision_prior : float, default=None
        How strongly the means are pulled towards ``mean_prior``. Default 1.
    mean_prior : array-like of shape (n_features,), default=None
        Default: the data's mean.
    degrees_of_freedom_prior : float, default=None
        Default: ``n_features``.
    covariance_prior : float or array-like, default=None
        Default: the data's covariance (shaped by ``covariance_type``; ``ddof=1``).
    random_state, warm_start, verbose, verbose_interval
        As in :class:`~dask_gmm.GaussianMixture`.
    nan_policy : {'raise', 'omit', 'marginalize'}, default='raise'
        As in :class:`~dask_gmm.GaussianMixture`. Under 'marginalize' the
        variational posterior also covers each row's missing features (see
        ``_variational``): rows count through their observed features and
        ``lower_bound_`` includes the missing features' entropy.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_
        As in :class:`~dask_gmm.GaussianMixture` (``covariances_`` is the
        normalised Wishart scale, as in scikit-learn).
    weight_concentration_ : ndarray of shape (n_components,) or tuple of two
        The Dirichlet parameters, or the Beta parameters of the sticks.
    mean_precision_ : ndarray of shape (n_components,)
    degrees_of_freedom_ : ndarray of shape (n_components,) (tied: a float)
    weight_concentration_prior_, mean_precision_prior_, mean_prior_, \
    degrees_of_freedom_prior_, covariance_prior_
        The priors used.
    converged_, n_iter_, lower_bound_, lower_bounds_, n_features_in_, \
    feature_names_in_, feature_dim_
        As in :class:`~dask_gmm.GaussianMixture`; ``lower_bound_`` is the
        variational lower bound (a total, not per row).
    """

    def __init__(
        self,
        *,
        n_components=1,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=None,
        mean_precision_prior=None,
        mean_prior=None,
        degrees_of_freedom_prior=None,
        covariance_prior=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        nan_policy="raise",
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.nan_policy = nan_policy

    # ------------------------------------------------------------------ hooks

    def _validate_hyperparameters(self):
        self._validate_shared_hyperparameters()
        owner = type(self).__name__
        check_option("weight_concentration_prior_type",
                     self.weight_concentration_prior_type, WEIGHT_PRIOR_TYPES, owner)
        _check_positive_or_none("weight_concentration_prior",
                                self.weight_concentration_prior, owner)
        _check_positive_or_none("mean_precision_prior", self.mean_precision_prior, owner)
        _check_positive_or_none("degrees_of_freedom_prior", self.degrees_of_freedom_prior,
                                owner)

    def _check_initial_values(self, n_features):
        """Check the user's priors (scikit-learn's messages) before any pass; none is data."""
        self._fit_priors = None
        self._n_features = n_features
        if self.mean_prior is not None:
            mean = check_array(self.mean_prior, dtype=[np.float64, np.float32],
                               ensure_2d=False)
            _check_shape(mean, (n_features,), "means")
        if self.degrees_of_freedom_prior is not None and not (
                self.degrees_of_freedom_prior > n_features - 1.0):
            raise ValueError(
                "The parameter 'degrees_of_freedom_prior' should be greater than "
                f"{n_features - 1}, but got {self.degrees_of_freedom_prior:.3f}."
            )
        self._user_covariance_prior(n_features)
        return ()

    def _user_covariance_prior(self, n_features):
        prior, cov_type = self.covariance_prior, self.covariance_type
        if prior is None or cov_type == "spherical":
            return prior
        prior = check_array(prior, dtype=[np.float64, np.float32], ensure_2d=False)
        if cov_type in ("full", "tied"):
            _check_shape(prior, (n_features, n_features), f"{cov_type} covariance_prior")
            _check_precision_matrix(prior, cov_type)
        else:
            _check_shape(prior, (n_features,), f"{cov_type} covariance_prior")
            if np.any(prior <= 0.0):
                raise ValueError(f"'{cov_type} precision' should be positive")
        return prior

    def _priors(self, moments):
        """The priors, scikit-learn's defaults filled from the data's moments."""
        n_features = self._n_features
        return Priors(
            weight_concentration=(1.0 / self.n_components
                                  if self.weight_concentration_prior is None
                                  else self.weight_concentration_prior),
            mean_precision=(1.0 if self.mean_precision_prior is None
                            else self.mean_precision_prior),
            mean=(moments.mean if self.mean_prior is None
                  else np.asarray(self.mean_prior, dtype=np.float64)),
            degrees_of_freedom=(n_features if self.degrees_of_freedom_prior is None
                                else self.degrees_of_freedom_prior),
            covariance=(default_covariance_prior(moments, self.covariance_type)
                        if self.covariance_prior is None
                        else self._user_covariance_prior(n_features)),
        )

    def _priors_need_data(self):
        return self.mean_prior is None or self.covariance_prior is None

    def _learn_priors(self, stats_or_moments):
        """Fix the fit's priors from the first statistics seen (any pass sums the data)."""
        if self._fit_priors is None:
            moments = stats_or_moments
            if moments is not None and hasattr(moments, "nk"):
                moments = moments_from_stats(moments)
            self._fit_priors = self._priors(moments)

    def _seen_stats(self, stats):
        self._learn_priors(stats)

    # A fresh fit takes its default priors from its initialisation's pass, which
    # sums the complete rows. Under 'marginalize' an E-step's statistics also hold
    # filled-in values, so a resumed or warm-started fit takes the complete rows'
    # moments in a pass of their own.

    def _complete_row_priors(self):
        """Step generator: the priors from the complete rows, when an E-step's would differ."""
        if self.nan_policy == "marginalize" and self._priors_need_data():
            self._fit_priors = None
            self._learn_priors(moments_from_stats(
                (yield Moments(self.covariance_type, self._n_features))))

    def _load_checkpoint(self, path, fingerprint):
        saved = yield from super()._load_checkpoint(path, fingerprint)
        if saved is not None:
            yield from self._complete_row_priors()
        return saved

    def _em(self, data, start, *args, **kwargs):
        if self._fit_priors is None:  # warm start: no initialisation pass
            yield from self._complete_row_priors()
        return (yield from super()._em(data, start, *args, **kwargs))

    _params_class = VariationalParams

    def _initial_params(self, data, random_state, eps, float32_input):
        """Step generator: the initial estimate turned into a posterior (scikit-learn's
        ``_initialize``), with the priors from the same pass."""
        estimate = yield from initial_estimate(
            data, self.init_params, self.n_components, self.covariance_type,
            self.reg_covar, eps, random_state)
        moments = estimate.moments
        if self._fit_priors is None and moments is None and self._priors_need_data():
            moments = moments_from_stats(
                (yield Moments(self.covariance_type, self._n_features)))
        self._learn_priors(moments)
        return variational_m_step(estimate.nk, estimate.means, estimate.covariances,
                                  self._fit_priors, self.covariance_type,
                                  self.weight_concentration_prior_type, float32_input)

    def _e_step_request(self, params, tied_moments=True):
        return EStep(params, tied_moments)

    def _m_step(self, stats, eps, float32_input, previous=None):
        """The new posterior and the lower bound (with the new parameters, as scikit-learn)."""
        self._learn_priors(stats)
        nk, xk, sk = gaussian_estimate(stats, self.covariance_type, self.reg_covar, eps)
        params = variational_m_step(nk, xk, sk, self._fit_priors, self.covariance_type,
                                    self.weight_concentration_prior_type, float32_input)
        entropy = responsibility_entropy(stats, previous)
        return params, lower_bound(entropy, params, self.weight_concentration_prior_type)

    def _set_params_from(self, params, dtype):
        cov_type = self.covariance_type
        concentration = np.asarray(params.weight_concentration, dtype=np.float64)
        if self.weight_concentration_prior_type == "dirichlet_process":
            self.weight_concentration_ = (concentration[0].astype(dtype),
                                          concentration[1].astype(dtype))
        else:
            self.weight_concentration_ = concentration.astype(dtype)
        self.mean_precision_ = np.asarray(params.mean_precision).astype(dtype)
        self.means_ = params.means.astype(dtype)
        dof = np.asarray(params.degrees_of_freedom, dtype=np.float64)
        self.degrees_of_freedom_ = dtype.type(dof) if dof.ndim == 0 else dof.astype(dtype)
        self.covariances_ = np.asarray(params.covariances).astype(dtype)
        self.precisions_cholesky_ = params.prec_chol.astype(dtype)
        self.precisions_ = precisions_from_cholesky(params.prec_chol, cov_type).astype(dtype)
        self.weights_ = params.weights.astype(dtype)
        priors = self._fit_priors
        self.weight_concentration_prior_ = priors.weight_concentration
        self.mean_precision_prior_ = priors.mean_precision
        self.mean_prior_ = np.asarray(priors.mean).astype(dtype)
        self.degrees_of_freedom_prior_ = priors.degrees_of_freedom
        covariance_prior = priors.covariance
        self.covariance_prior_ = (np.asarray(covariance_prior).astype(dtype)
                                  if np.ndim(covariance_prior) else covariance_prior)

    def _current_params(self):
        """The fitted posterior in float64, as the kernels take it."""
        concentration = self.weight_concentration_
        if self.weight_concentration_prior_type == "dirichlet_process":
            concentration = np.stack([np.asarray(c, np.float64) for c in concentration])
        params = VariationalParams(
            weights=np.asarray(self.weights_, dtype=np.float64),
            means=np.asarray(self.means_, dtype=np.float64),
            prec_chol=np.asarray(self.precisions_cholesky_, dtype=np.float64),
            covariance_type=self.covariance_type,
            covariances=np.asarray(self.covariances_, dtype=np.float64),
            weight_concentration=np.asarray(concentration, dtype=np.float64),
            mean_precision=np.asarray(self.mean_precision_, dtype=np.float64),
            degrees_of_freedom=np.asarray(self.degrees_of_freedom_, dtype=np.float64),
        )
        params.log_weights = e_step_constants(params, self.weight_concentration_prior_type)
        return params

    @property
    def n_effective_components_(self):
        """Components holding at least 1% of the weight (a summary of ``weights_``)."""
        return int(np.sum(np.asarray(self.weights_) >= EFFECTIVE_WEIGHT))


def plot_weights(model, path, title=None):
    """Bar chart of a fitted mixture's weights, heaviest first (PNG by the suffix).

    The picture that tells how many components a variational mixture kept:
    the ones it does not need end with weights near zero.

    Parameters
    ----------
    model : BayesianGaussianMixture or GaussianMixture
        Fitted.
    path : str or path-like
    title : str, optional

    Returns
    -------
    path
    """
    plt = pyplot("plot_weights")
    weights = np.sort(np.asarray(model.weights_, dtype=float))[::-1]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(np.arange(1, len(weights) + 1), weights, color="tab:blue")
    ax.axhline(EFFECTIVE_WEIGHT, color="grey", linewidth=0.8, linestyle="--",
               label=f"{EFFECTIVE_WEIGHT:.0%} of the weight")
    ax.set_xlabel("component (heaviest first)")
    ax.set_ylabel("weight")
    ax.set_xticks(np.arange(1, len(weights) + 1))
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
