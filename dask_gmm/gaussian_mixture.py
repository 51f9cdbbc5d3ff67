"""``GaussianMixture``: scikit-learn's estimator, fitted one chunk pass per EM round.

How a fit runs
--------------
``fit`` validates the input and wraps its row chunks (``_base.fit_estimator``);
the fit itself is a step generator (``BaseMixture._fit_steps``) that yields one
request per round -- rows for seeding, a k-means step, an E-step -- and gets
its answer back. :func:`~dask_gmm._engine.run_together` drives it (or a sweep's
many fits in lockstep): each round is one dask graph of one
:func:`~dask_gmm._requests.chunk_pass` task per chunk, a tree of
:func:`~dask_gmm._stats.combine_stats`, and one ``dask.compute``. The M-step,
:func:`~dask_gmm._mstep.m_step`, runs here on the client. The protocol a
request follows is written down in ``_requests``.
"""

from __future__ import annotations

import math

import numpy as np

from ._base import BaseMixture
from ._init import initial_params
from ._mstep import (
    Params,
    covariances_from_cholesky,
    m_step,
    precision_cholesky_from_precisions,
    precisions_from_cholesky,
)
from ._requests import EStep
from ._validation import (  # noqa: F401 - InvalidParameterError is public
    InvalidParameterError,
    check_int,
    check_means,
    check_option,
    check_precisions,
    check_real,
    check_weights,
)
from .persistence import register


@register
class GaussianMixture(BaseMixture):
    """Gaussian mixture fitted by EM over the chunks of a (possibly huge) array.

    A drop-in replacement for :class:`sklearn.mixture.GaussianMixture`: the same
    parameters, defaults, fitted attributes, methods and messages. ``X`` may be
    a numpy array, a dask array chunked along the rows, a zarr array or an
    h5py dataset; the data are never loaded whole. Each EM iteration is one
    pass over the chunks: a numpy kernel per chunk computes the E-step and the
    sufficient statistics, a tree of tasks adds them up, and the M-step runs on
    the client. The active ``distributed.Client`` is used if there is one,
    dask's threads otherwise.

    Parameters
    ----------
    n_components : int, default=1
        The number of mixture components.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
        'full': one general covariance matrix per component; 'tied': one
        matrix shared by all components; 'diag': one diagonal covariance per
        component; 'spherical': one variance per component.
    tol : float, default=1e-3
        EM stops when the mean per-sample log-likelihood gains less than this.
    reg_covar : float, default=1e-6
        Non-negative value added to the diagonal of every covariance.
    max_iter : int, default=100
        The number of EM iterations to perform.
    n_init : int, default=1
        The number of initialisations to perform; the best result is kept.
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}, \
            default='kmeans'
        How weights, means and precisions are initialised. 'kmeans' runs
        k-means on a sample of rows and refines the centers with Lloyd steps
        over all chunks; 'k-means++' and 'random_from_data' pick rows as means;
        'random' draws random responsibilities.
    weights_init : array-like of shape (n_components,), default=None
        User-provided initial weights.
    means_init : array-like of shape (n_components, n_features), default=None
        User-provided initial means.
    precisions_init : array-like, default=None
        User-provided initial precisions (inverse covariances), shaped as
        ``precisions_``.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation and :meth:`sample`.
    warm_start : bool, default=False
        Start the next ``fit`` from the last solution (``n_init`` is ignored).
    verbose : int, default=0
        1 prints the initialisations and iterations, 2 also timings and the
        change of the lower bound.
    verbose_interval : int, default=10
        Iterations between messages.
    nan_policy : {'raise', 'omit', 'marginalize'}, default='raise'
        What a sample holding NaN in any feature means. 'raise': an error, as
        in scikit-learn. 'omit': the sample is left out of the fit (no
        statistic, k-means step or row draw uses it, and BIC/AIC count only
        the samples kept); ``predict`` gives it -1, ``predict_proba`` and
        ``score_samples`` NaN. 'marginalize': NaN marks a missing value; EM
        integrates it out (each row's density is the marginal of its observed
        features, the M-step takes expected statistics), and predictions and
        scores use the observed features; a sample with every feature missing
        is left out as under 'omit'. The initialisation uses the complete rows.
        Infinity is always an error.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    means_ : ndarray of shape (n_components, n_features)
    covariances_ : ndarray
        full ``(n_components, n_features, n_features)``, tied ``(n_features,
        n_features)``, diag ``(n_components, n_features)``, spherical
        ``(n_components,)``.
    precisions_ : ndarray
        Inverses of the covariances, shaped as ``covariances_``.
    precisions_cholesky_ : ndarray
        Cholesky factors of the precisions, shaped as ``covariances_``.
    converged_ : bool
    n_iter_ : int
        EM iterations of the best initialisation.
    lower_bound_ : float
        Mean log-likelihood of the training data under the best fit (from the
        last iteration's E-step, as in scikit-learn).
    lower_bounds_ : list of float
        ``lower_bound`` after each iteration of the best initialisation.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only for input with string feature names (pandas columns, the labels
        of an xarray feature dim, a Dataset's variable names).
    feature_dim_ : str or None
        The feature dim of the xarray input the model was fitted on (a
        Dataset's: ``'variable'``); prediction on xarray input uses it.

    Examples
    --------
    >>> import dask.array as da
    >>> from dask_gmm import GaussianMixture
    >>> X = da.random.default_rng(0).normal(size=(100_000, 4), chunks=(25_000, 4))
    >>> gm = GaussianMixture(n_components=2, random_state=0).fit(X)
    >>> labels = gm.predict(X)  # lazy, chunked like X
    """

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
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
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.nan_policy = nan_policy

    # ------------------------------------------------------------------ hooks

    def _validate_hyperparameters(self):
        self._validate_shared_hyperparameters()

    def _check_initial_values(self, n_features):
        """User-given initial weights, means and precisions, validated."""
        weights = means = precisions = None
        if self.weights_init is not None:
            weights = check_weights(self.weights_init, self.n_components)
        if self.means_init is not None:
            means = check_means(self.means_init, self.n_components, n_features)
        if self.precisions_init is not None:
            precisions = check_precisions(
                self.precisions_init, self.covariance_type, self.n_components, n_features
            )
        return weights, means, precisions

    def _initial_params(self, data, random_state, eps, float32_input,
                        user_weights, user_means, user_precisions):
        """Step generator: the user's start, the rest filled by ``init_params``."""
        cov_type = self.covariance_type
        if user_weights is None or user_means is None or user_precisions is None:
            params = yield from initial_params(
                data, self.init_params, self.n_components, cov_type, self.reg_covar,
                eps, float32_input, random_state,
            )
        else:
            params = Params(None, None, None, cov_type)
        if user_weights is not None:
            params.weights = np.asarray(user_weights, dtype=np.float64)
        if user_means is not None:
            params.means = np.asarray(user_means, dtype=np.float64)
        if user_precisions is not None:
            params.prec_chol = precision_cholesky_from_precisions(
                np.asarray(user_precisions, dtype=np.float64), cov_type
            )
            params.covariances = None
        return params

    def _e_step_request(self, params, tied_moments=True):
        """The pass request of one EM iteration under ``params`` (see ``EStep``)."""
        return EStep(params, tied_moments)

    def _m_step(self, stats, eps, float32_input, previous=None):
        """New parameters and the mean log-likelihood from a pass's statistics."""
        return m_step(stats, self.covariance_type, self.reg_covar, eps, float32_input)

    def _set_params_from(self, params, dtype):
        cov_type = self.covariance_type
        covariances = params.covariances
        if covariances is None:
            covariances = covariances_from_cholesky(params.prec_chol, cov_type)
        self.weights_ = params.weights.astype(dtype)
        self.means_ = params.means.astype(dtype)
        self.covariances_ = covariances.astype(dtype)
        self.precisions_cholesky_ = params.prec_chol.astype(dtype)
        self.precisions_ = precisions_from_cholesky(params.prec_chol, cov_type).astype(
            dtype
        )

    def _current_params(self):
        """The fitted parameters in float64, as the kernels take them."""
        return Params(
            weights=np.asarray(self.weights_, dtype=np.float64),
            means=np.asarray(self.means_, dtype=np.float64),
            prec_chol=np.asarray(self.precisions_cholesky_, dtype=np.float64),
            covariance_type=self.covariance_type,
            covariances=np.asarray(self.covariances_, dtype=np.float64),
        )

    def _n_parameters(self):
        """Free parameters of the model, counted as scikit-learn counts them."""
        n_components, n_features = self.means_.shape
        cov_params = {
            "full": n_components * n_features * (n_features + 1) / 2.0,
            "diag": n_components * n_features,
            "tied": n_features * (n_features + 1) / 2.0,
            "spherical": n_components,
        }[self.covariance_type]
        return int(cov_params + n_features * n_components + n_components - 1)

    def bic(self, X):
        """Bayesian information criterion on ``X``; lower is better.

        With ``nan_policy='omit'``, ``n`` counts the samples without NaN.

        Returns
        -------
        float
        """
        total, count = self._scored(X)
        return -2 * total + self._n_parameters() * math.log(count)

    def aic(self, X):
        """Akaike information criterion on ``X``; lower is better.

        Returns
        -------
        float
        """
        total, _ = self._scored(X)
        return -2 * total + 2 * self._n_parameters()
