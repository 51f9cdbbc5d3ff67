"""``GaussianMixture``: scikit-learn's estimator, fitted one chunk pass per EM round."""

from __future__ import annotations

import logging
import math
import sys
import warnings
from numbers import Integral, Real
from time import perf_counter

import dask
import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import _kernels as K
from ._engine import ChunkedRows, TakeRows, run_together
from .checkpoint import (
    CheckpointMismatchError,
    FitState,
    check_data_sums,
    data_fingerprint,
    estimator_fingerprint,
    load_state,
    pass_sums,
    save_state,
)
from ._init import initial_params
from ._validation import (
    check_means,
    check_precisions,
    check_sample_weight,
    check_weights,
    check_X,
    numpy_row_chunks,
)

logger = logging.getLogger("dask_gmm")

def prepare_rows(X, lazy, sample_weight):
    """Validated ``X`` (numpy or dask) and weights as :class:`ChunkedRows`."""
    sample_weight = check_sample_weight(sample_weight, X, lazy)
    if not lazy:
        n_samples, n_features = X.shape
        rows = numpy_row_chunks(n_samples, n_features, X.dtype.itemsize)
        X = da.from_array(X, chunks=(rows, n_features))
        if sample_weight is not None:
            sample_weight = da.from_array(sample_weight, chunks=(X.chunks[0],))
    return ChunkedRows(X, sample_weight)


# What a chunk task needs besides its chunk: the worker process itself (Python,
# numpy, dask, numba), row-block temporaries and the statistics.
WORKER_BASE_BYTES = 200 * 2**20
# distributed pauses a worker at 80% of its memory limit.
WORKER_USABLE_SHARE = 0.8


def check_chunks_fit_workers(X, client):
    """Refuse at once chunks that a worker's memory limit cannot hold.

    A worker over its limit is restarted and its task retried, again and
    again: without this check a too-small limit looks like a hang.

    Parameters
    ----------
    X : dask.array.Array
    client : distributed.Client
    """
    limits = [w.get("memory_limit") or 0
              for w in client.scheduler_info()["workers"].values()]
    limits = [limit for limit in limits if limit > 0]
    if not limits or X.ndim != 2:
        return
    chunk_bytes = max(X.chunks[0]) * X.shape[1] * X.dtype.itemsize
    needed = 2 * chunk_bytes + WORKER_BASE_BYTES
    usable = WORKER_USABLE_SHARE * min(limits)
    if needed > usable:
        mib = 2**20
        raise MemoryError(
            f"Row chunks of {chunk_bytes / mib:.1f} MiB need about {needed / mib:.0f} MiB "
            f"in a worker (the chunk, its temporaries and the worker process), but the "
            f"smallest worker memory limit is {min(limits) / mib:.0f} MiB (work pauses "
            f"at {usable / mib:.0f} MiB). Raise the limit (--memory-limit) or read "
            f"smaller chunks (--chunk-rows, or open_array(..., chunks=ROWS))."
        )


def _active_client():
    """The ``distributed.Client`` dask would use, or None (never imports distributed)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_client

    try:
        return get_client()
    except ValueError:
        return None


def fit_estimator(estimator, X, sample_weight=None, on_round=None, checkpoint=None):
    """Fit ``estimator`` on ``X``; on any error it is left exactly as it was.

    Parameters
    ----------
    estimator : GaussianMixture
    X, sample_weight
        As for :meth:`GaussianMixture.fit`.
    on_round : callable or None
        Called after every pass over the data (for progress bars).
    checkpoint : str or path-like or None
        See :meth:`GaussianMixture.fit`.

    Returns
    -------
    estimator
    """
    snapshot = dict(estimator.__dict__)
    try:
        estimator._validate_hyperparameters()
        X, lazy = check_X(estimator, X, reset=True, ensure_min_samples=2)
        data = prepare_rows(X, lazy, sample_weight)
        client = _active_client()
        if client is not None and dask.config.get("scheduler", None) is None:
            check_chunks_fit_workers(data.array, client)
        steps = estimator._fit_steps(data, X.dtype, checkpoint=checkpoint)
        (outcome,) = run_together(data, [steps],
                                  on_round=on_round, isolate=())
    except BaseException:
        estimator.__dict__.clear()
        estimator.__dict__.update(snapshot)
        raise
    return outcome


class InvalidParameterError(ValueError, TypeError):
    """A constructor parameter has a wrong type or value (as in scikit-learn)."""


def _check_int(name, value, low, owner):
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise InvalidParameterError(
            f"The '{name}' parameter of {owner} must be an int in the range "
            f"[{low}, inf). Got {value!r} instead."
        )


def _check_real(name, value, owner):
    if isinstance(value, bool) or not isinstance(value, Real) or not value >= 0:
        raise InvalidParameterError(
            f"The '{name}' parameter of {owner} must be a float in the range "
            f"[0.0, inf). Got {value!r} instead."
        )


def _check_option(name, value, options, owner):
    if not isinstance(value, str) or value not in options:
        raise InvalidParameterError(
            f"The '{name}' parameter of {owner} must be a str among "
            f"{set(options)}. Got {value!r} instead."
        )


class GaussianMixture(DensityMixin, BaseEstimator):
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
        Only for input with string feature names (pandas).

    Examples
    --------
    >>> import dask
import dask.array as da
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

    # ------------------------------------------------------------------ checks

    def _validate_hyperparameters(self):
        owner = type(self).__name__
        _check_int("n_components", self.n_components, 1, owner)
        _check_option("covariance_type", self.covariance_type, K.COVARIANCE_TYPES, owner)
        _check_real("tol", self.tol, owner)
        _check_real("reg_covar", self.reg_covar, owner)
        _check_int("max_iter", self.max_iter, 0, owner)
        _check_int("n_init", self.n_init, 1, owner)
        _check_option(
            "init_params",
            self.init_params,
            ("kmeans", "k-means++", "random", "random_from_data"),
            owner,
        )
        if not isinstance(self.warm_start, (bool, np.bool_)):
            raise InvalidParameterError(
                f"The 'warm_start' parameter of {owner} must be an instance of "
                f"'bool'. Got {self.warm_start!r} instead."
            )
        _check_int("verbose", self.verbose, 0, owner)
        _check_int("verbose_interval", self.verbose_interval, 1, owner)

    def _checked_initial_values(self, n_features):
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

    # --------------------------------------------------------------------- fit

    def fit(self, X, y=None, sample_weight=None, checkpoint=None):
        """Estimate the model parameters with the EM algorithm.

        Fits ``n_init`` times and keeps the initialisation with the largest
        lower bound. Each EM iteration reads every chunk of ``X`` once.

        Parameters
        ----------
        X : array-like, dask array, zarr array or h5py dataset of shape \
                (n_samples, n_features)
        y : Ignored
        sample_weight : array-like or dask array of shape (n_samples,), default=None
            Non-negative weight of each row; an integer weight counts as that
            many copies of the row.
        checkpoint : str or path-like, default=None
            A file that keeps the EM state after every iteration (written
            atomically). Fitting again with the same file resumes where it
            stopped and ends at the same parameters as an uninterrupted fit; a
            checkpoint made for other data or parameters is refused.

        Returns
        -------
        self : GaussianMixture
        """
        return fit_estimator(self, X, sample_weight=sample_weight, checkpoint=checkpoint)

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, then label every row with the final parameters.

        Returns
        -------
        labels : ndarray or dask array of shape (n_samples,)
            Lazy (a dask array chunked like ``X``) for dask input.
        """
        return self.fit(X, y, sample_weight=sample_weight).predict(X)


    def _fit_steps(self, data, dtype, checkpoint=None):
        """Step generator of a whole fit: yields passes, sets the attributes at the end.

        Parameters
        ----------
        data : ChunkedRows
            Validated rows (and weights).
        dtype : numpy dtype
            The input's dtype, which the fitted parameters take.
        checkpoint : str or path-like, optional
            Where to keep the EM state after every iteration, and to resume from.
        """
        n_samples, n_features = data.array.shape
        if n_samples < self.n_components:
            raise ValueError(
                "Expected n_samples >= n_components "
                f"but got n_components = {self.n_components}, "
                f"n_samples = {n_samples}"
            )
        user_weights, user_means, user_precisions = self._checked_initial_values(
            n_features
        )
        eps = float(np.finfo(dtype).eps)
        float32_input = dtype == np.float32
        do_init = not (self.warm_start and hasattr(self, "converged_"))
        if not do_init and self.means_.shape[1] != n_features:
            raise ValueError(
                f"warm_start=True continues the previous fit, which had "
                f"{self.means_.shape[1]} features, but X has {n_features}. Set "
                "warm_start=False to start afresh on these data."
            )
        n_init = self.n_init if do_init else 1
        random_state = check_random_state(self.random_state)

        saved, fingerprint = None, None
        if checkpoint is not None:
            fingerprint = yield from self._fingerprint(data, dtype)
            saved = load_state(checkpoint, fingerprint, self.covariance_type)
            if saved is not None and saved.n_iter > self.max_iter:
                raise CheckpointMismatchError(
                    f"Checkpoint '{checkpoint}' already ran {saved.n_iter} EM iterations, "
                    f"more than max_iter={self.max_iter}. Use another checkpoint path, or "
                    "delete this one to start afresh."
                )
            if saved is not None and (saved.converged or saved.n_iter >= self.max_iter):
                # a finished fit returns without a pass of its own: check the data first
                stats = yield K.EStep(saved.params)
                check_data_sums(checkpoint, saved.data_sums, stats)
                saved.data_sums = None
        best, first_init = None, 0
        if saved is not None:
            random_state = np.random.RandomState()  # never overwrite a shared generator
            random_state.set_state(saved.rng_state)
            best, first_init = saved.best, saved.init
            logger.info("resuming from checkpoint %s: initialization %d, iteration %d",
                        checkpoint, saved.init, saved.n_iter)

        for init in range(first_init, n_init):
            self._verbose_init_begin(init)
            if saved is not None and init == saved.init:
                result = (saved.params, saved.lower_bound, saved.lower_bounds,
                          saved.n_iter, saved.converged)
                if not saved.converged and saved.n_iter < self.max_iter:
                    result = yield from self._em(
                        data, saved.params, saved.lower_bound, eps, float32_input,
                        lower_bounds=saved.lower_bounds, done_iter=saved.n_iter,
                        checkpoint=self._checkpointer(checkpoint, fingerprint, init,
                                                      random_state, best),
                        data_sums=saved.data_sums, checkpoint_path=checkpoint,
                    )
            else:
                if do_init:
                    params = yield from self._initial_params(
                        data, random_state, eps, float32_input,
                        user_weights, user_means, user_precisions,
                    )
                    lower_bound = -np.inf
                else:
                    params = self._current_params()
                    lower_bound = self.lower_bound_
                result = yield from self._em(
                    data, params, lower_bound, eps, float32_input,
                    checkpoint=self._checkpointer(checkpoint, fingerprint, init,
                                                  random_state, best),
                )
            if best is None or result[1] > best[1]:
                best = result

        params, lower_bound, lower_bounds, n_iter, converged = best
        if not converged and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. "
                "Try different init parameters, or increase max_iter, "
                "tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=2,
            )
        self._set_params_from(params, dtype)
        self.converged_ = converged
        self.n_iter_ = n_iter
        self.lower_bound_ = lower_bound
        self.lower_bounds_ = list(lower_bounds)
        return self

    def _fingerprint(self, data, dtype):
        """Step generator: what a checkpoint must match (parameters, data digest)."""
        n_samples = data.array.shape[0]
        edge = min(4, n_samples)
        indices = np.unique(np.r_[np.arange(edge), np.arange(n_samples - edge, n_samples)])
        rows = yield TakeRows(indices)
        return {
            "estimator": estimator_fingerprint(self),
            "data": data_fingerprint(data.array.shape, dtype, rows, rows[:0],
                                     data.weight_blocks[0] is not None),
        }

    def _checkpointer(self, path, fingerprint, init, random_state, best):
        """A callback saving the state after each EM iteration, or None."""
        if path is None:
            return None

        def save(params, lower_bound, lower_bounds, n_iter, converged, finished, stats):
            save_state(path, fingerprint, FitState(
                init, n_iter, lower_bound, lower_bounds, finished, params,
                random_state.get_state(), best, pass_sums(stats), converged))

        return save

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
            params = K.Params(None, None, None, cov_type)
        if user_weights is not None:
            params.weights = np.asarray(user_weights, dtype=np.float64)
        if user_means is not None:
            params.means = np.asarray(user_means, dtype=np.float64)
        if user_precisions is not None:
            params.prec_chol = K.precision_cholesky_from_precisions(
                np.asarray(user_precisions, dtype=np.float64), cov_type
            )
            params.covariances = None
        return params

    def _em(self, data, params, lower_bound, eps, float32_input, lower_bounds=(),
            done_iter=0, checkpoint=None, data_sums=None, checkpoint_path=None):
        """Step generator: EM from ``params``, one chunk pass per iteration.

        ``lower_bounds`` and ``done_iter`` continue a resumed fit; ``checkpoint``
        is called with the state after every iteration; ``data_sums`` (from a
        checkpoint) are compared with the first pass's to catch changed data.

        Returns
        -------
        (params, lower_bound, lower_bounds, n_iter, converged)
        """
        lower_bounds = list(lower_bounds)
        converged = False
        n_iter = done_iter
        for n_iter in range(done_iter + 1, self.max_iter + 1):
            start = perf_counter()
            previous = lower_bound
            stats = yield K.EStep(params)
            if data_sums is not None:
                check_data_sums(checkpoint_path, data_sums, stats)
                data_sums = None
            params, lower_bound = K.m_step(
                stats, self.covariance_type, self.reg_covar, eps, float32_input
            )
            lower_bounds.append(lower_bound)
            change = lower_bound - previous
            logger.debug(
                "EM iteration %d: lower bound %.6f, change %.3g, %.3fs",
                n_iter, lower_bound, change, perf_counter() - start,
            )
            self._verbose_iter_end(n_iter, change)
            converged = abs(change) < self.tol
            if checkpoint is not None:
                checkpoint(params, lower_bound, lower_bounds, n_iter, converged,
                           converged or n_iter == self.max_iter, stats)
            if converged:
                break
        if self.max_iter > 0:
            self._verbose_init_end(lower_bound, converged)
        return params, lower_bound, lower_bounds, n_iter, converged

    # ---------------------------------------------------------- verbose output
    # The same lines as scikit-learn prints; verbose output was asked for.

    def _verbose_init_begin(self, init):
        if self.verbose >= 1:
            print(f"Initialization {init}")
            self._init_prev_time = self._iter_prev_time = perf_counter()

    def _verbose_iter_end(self, n_iter, change):
        if self.verbose >= 1 and n_iter % self.verbose_interval == 0:
            if self.verbose == 1:
                print(f"  Iteration {n_iter}")
            else:
                now = perf_counter()
                print(
                    f"  Iteration {n_iter}\t time lapse "
                    f"{now - self._iter_prev_time:.5f}s\t ll change {change:.5f}"
                )
                self._iter_prev_time = now

    def _verbose_init_end(self, lower_bound, converged):
        message = "converged" if converged else "did not converge"
        if self.verbose == 1:
            print(f"Initialization {message}.")
        elif self.verbose >= 2:
            elapsed = perf_counter() - self._init_prev_time
            print(
                f"Initialization {message}. time lapse {elapsed:.5f}s\t lower bound"
                f" {lower_bound:.5f}."
            )

    # ------------------------------------------------------ parameters <-> attrs

    def _set_params_from(self, params, dtype):
        cov_type = self.covariance_type
        covariances = params.covariances
        if covariances is None:
            covariances = K.covariances_from_cholesky(params.prec_chol, cov_type)
        self.weights_ = params.weights.astype(dtype)
        self.means_ = params.means.astype(dtype)
        self.covariances_ = covariances.astype(dtype)
        self.precisions_cholesky_ = params.prec_chol.astype(dtype)
        self.precisions_ = K.precisions_from_cholesky(params.prec_chol, cov_type).astype(
            dtype
        )

    def _current_params(self):
        """The fitted parameters in float64, as the kernels take them."""
        return K.Params(
            weights=np.asarray(self.weights_, dtype=np.float64),
            means=np.asarray(self.means_, dtype=np.float64),
            prec_chol=np.asarray(self.precisions_cholesky_, dtype=np.float64),
            covariance_type=self.covariance_type,
            covariances=np.asarray(self.covariances_, dtype=np.float64),
        )

    # -------------------------------------------------------------- prediction

    def _rowwise(self, X, block_fn, dtype_out, extra_dim=None):
        """Apply ``block_fn(block, params)`` lazily on dask input, eagerly otherwise."""
        check_is_fitted(self)
        X, lazy = check_X(self, X, reset=False)
        params = self._current_params()
        if not lazy:
            return block_fn(X, params)
        if extra_dim is None:
            return X.map_blocks(block_fn, params, drop_axis=1, dtype=dtype_out)
        return X.map_blocks(
            block_fn, params, chunks=(X.chunks[0], (extra_dim,)), dtype=dtype_out
        )

    def predict(self, X):
        """Most likely component of each row.

        Returns
        -------
        labels : ndarray or dask array of shape (n_samples,), int64
        """
        return self._rowwise(X, K.predict_block, np.int64)

    def predict_proba(self, X):
        """Posterior probability of each component for each row.

        Returns
        -------
        resp : ndarray or dask array of shape (n_samples, n_components)
        """
        dtype = self.means_.dtype if hasattr(self, "means_") else np.float64

        def block_fn(block, params, block_info=None):
            return K.predict_proba_block(block, params, block.dtype, block_info)

        return self._rowwise(X, block_fn, dtype, extra_dim=self._n_components_fitted())

    def score_samples(self, X):
        """Log-likelihood of each row under the model.

        Returns
        -------
        log_prob : ndarray or dask array of shape (n_samples,)
        """

        def block_fn(block, params, block_info=None):
            return K.score_samples_block(block, params, block.dtype, block_info)

        dtype = self.means_.dtype if hasattr(self, "means_") else np.float64
        return self._rowwise(X, block_fn, dtype)

    def _n_components_fitted(self):
        return self.means_.shape[0] if hasattr(self, "means_") else None

    def score(self, X, y=None):
        """Mean per-row log-likelihood of ``X`` (computed, even for dask input).

        Returns
        -------
        float
        """
        log_prob = self.score_samples(X)
        return float(log_prob.mean().compute() if hasattr(log_prob, "dask") else
                     log_prob.mean())

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

        Returns
        -------
        float
        """
        n_samples = X.shape[0] if hasattr(X, "shape") else len(X)
        return -2 * self.score(X) * n_samples + self._n_parameters() * math.log(
            n_samples
        )

    def aic(self, X):
        """Akaike information criterion on ``X``; lower is better.

        Returns
        -------
        float
        """
        n_samples = X.shape[0] if hasattr(X, "shape") else len(X)
        return -2 * self.score(X) * n_samples + 2 * self._n_parameters()

    def save(self, path, overwrite=False):
        """Write the fitted model to ``path`` (no pickle); see :mod:`dask_gmm.persistence`."""
        from .persistence import save_model

        return save_model(self, path, overwrite=overwrite)

    def to_sklearn(self):
        """An equivalent fitted :class:`sklearn.mixture.GaussianMixture` for in-memory use."""
        from .persistence import to_sklearn

        return to_sklearn(self)

    def sample(self, n_samples=1):
        """Draw random rows from the fitted mixture.

        Parameters
        ----------
        n_samples : int, default=1

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
            The component each row came from.
        """
        check_is_fitted(self)
        if n_samples < 1:
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples} . The sampling requires "
                "at least one sample."
            )
        n_features = self.means_.shape[1]
        rng = check_random_state(self.random_state)
        counts = rng.multinomial(n_samples, np.asarray(self.weights_, np.float64))
        rows = []
        for k, count in enumerate(counts):
            mean = self.means_[k]
            if self.covariance_type == "full":
                rows.append(rng.multivariate_normal(mean, self.covariances_[k], count))
            elif self.covariance_type == "tied":
                rows.append(rng.multivariate_normal(mean, self.covariances_, count))
            else:
                scale = np.sqrt(self.covariances_[k])
                rows.append(mean + rng.standard_normal(size=(count, n_features)) * scale)
        labels = np.concatenate([np.full(c, k, dtype=np.int64) for k, c in enumerate(counts)])
        return np.vstack(rows).astype(np.float64), labels
