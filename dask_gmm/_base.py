"""What every mixture shares: the fit loop, checkpoints, prediction and scores.

:class:`BaseMixture` holds the loop the way scikit-learn's ``BaseMixture`` does;
a model supplies its hyper-parameter checks, its initialisation, the pass
request of its E-step and its M-step (the methods marked *hook* below). The
loop is a step generator (see ``_requests``): it yields one request per round
and :func:`~dask_gmm._engine.run_together` answers it, so the same loop serves
one fit or a sweep of many.
"""

from __future__ import annotations

import logging
import warnings
from time import perf_counter

import dask
import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._engine import (
    ChunkedRows,
    check_chunks_fit_workers,
    in_memory_rows,
    join_features,
    run_together,
)
from ._memory import cluster_client, record_reads, rows_for_fit
from ._mstep import Params
from ._options import COVARIANCE_TYPES, INIT_PARAMS, NAN_POLICIES
from ._predict import (
    predict_block,
    predict_proba_block,
    rows_in_memory_outputs,
    score_samples_block,
)
from ._requests import TakeRows
from ._stats import translate_stats
from ._validation import (
    InvalidParameterError,
    check_int,
    check_kept_rows,
    check_option,
    check_real,
    check_sample_weight,
    check_X,
    numpy_row_chunks,
)
from ._xarray import xarray_kind
from .checkpoint import (
    Checkpointer,
    CheckpointMismatchError,
    InitResult,
    check_data_sums,
    data_fingerprint,
    estimator_fingerprint,
    load_state,
)
from .persistence import save_model, to_sklearn

logger = logging.getLogger("dask_gmm")

def prepare_rows(X, lazy, sample_weight, layout=None, nan_policy="raise"):
    """Validated ``X`` (numpy or dask) and weights as :class:`ChunkedRows`."""
    sample_weight = check_sample_weight(sample_weight, X, lazy, layout)
    if not lazy:
        n_samples, n_features = X.shape
        rows = numpy_row_chunks(n_samples, n_features, X.dtype.itemsize)
        X = in_memory_rows(X, rows)
        if sample_weight is not None:
            sample_weight = da.from_array(sample_weight, chunks=(X.chunks[0],))
    return ChunkedRows(X, sample_weight, omit_nan=nan_policy != "raise",
                       marginalize=nan_policy == "marginalize")


def fit_estimator(estimator, X, sample_weight=None, on_round=None, checkpoint=None,
                  feature_dim=None):
    """Fit ``estimator`` on ``X``; on any error it is left exactly as it was.

    Parameters
    ----------
    estimator : BaseMixture
    X, sample_weight
        As for :meth:`BaseMixture.fit`.
    on_round : callable or None
        Called after every pass over the data (for progress bars).
    checkpoint : str or path-like or None
        See :meth:`BaseMixture.fit`.
    feature_dim : str or None
        See :meth:`BaseMixture.fit`.

    Returns
    -------
    estimator
    """
    snapshot = dict(estimator.__dict__)
    try:
        estimator._validate_hyperparameters()
        X, lazy, layout = check_X(estimator, X, reset=True, ensure_min_samples=2,
                                  feature_dim=feature_dim)
        data = prepare_rows(X, lazy, sample_weight, layout, estimator.nan_policy)
        client = cluster_client()
        if client is not None:
            check_chunks_fit_workers(data.array, client)
        with rows_for_fit(data, client) as rows:
            steps = estimator._fit_steps(rows, X.dtype, checkpoint=checkpoint)
            (outcome,) = run_together(rows, [steps], on_round=on_round, isolate=())
            record_reads(estimator, rows)
    except BaseException:
        estimator.__dict__.clear()
        estimator.__dict__.update(snapshot)
        raise
    return outcome


class BaseMixture(DensityMixin, BaseEstimator):
    """Base of the mixtures: fit loop, checkpoints, lazy outputs, scores.

    Subclasses supply the hooks ``_validate_hyperparameters``,
    ``_check_initial_values``, ``_initial_params``, ``_e_step_request``,
    ``_m_step``, ``_set_params_from`` and ``_current_params``; ``_seen_stats``
    (called with the statistics of a pass that no M-step follows) and
    ``_params_class`` (what a checkpoint restores) have defaults.
    """

    _params_class = Params

    def _validate_shared_hyperparameters(self):
        """The constructor parameters both mixtures have, with scikit-learn's messages."""
        owner = type(self).__name__
        check_int("n_components", self.n_components, 1, owner)
        check_option("covariance_type", self.covariance_type, COVARIANCE_TYPES, owner)
        check_real("tol", self.tol, owner)
        check_real("reg_covar", self.reg_covar, owner)
        check_int("max_iter", self.max_iter, 0, owner)
        check_int("n_init", self.n_init, 1, owner)
        check_option("init_params", self.init_params, INIT_PARAMS, owner)
        if not isinstance(self.warm_start, (bool, np.bool_)):
            raise InvalidParameterError(
                f"The 'warm_start' parameter of {owner} must be an instance of "
                f"'bool'. Got {self.warm_start!r} instead."
            )
        check_int("verbose", self.verbose, 0, owner)
        check_int("verbose_interval", self.verbose_interval, 1, owner)
        check_option("nan_policy", self.nan_policy, NAN_POLICIES, owner)

    def _seen_stats(self, stats):
        """Hook: statistics of a pass that no M-step follows (a finished checkpoint's)."""

    # ---------------------------------------------------------------- fitting

    def fit(self, X, y=None, sample_weight=None, checkpoint=None, feature_dim=None):
        """Estimate the model parameters with the EM algorithm.

        Fits ``n_init`` times and keeps the initialisation with the largest
        lower bound. Each EM iteration reads every chunk of ``X`` once.

        Parameters
        ----------
        X : array-like, dask array, zarr array or h5py dataset of shape \
                (n_samples, n_features), or an xarray DataArray or Dataset
            An N-D ``DataArray`` (e.g. ``(time, y, x, band)``) is taken as samples
            over every dim but ``feature_dim``; a ``Dataset`` gives one feature
            per data variable. Features may lie in separate chunks.
        y : Ignored
        sample_weight : array-like or dask array of shape (n_samples,), default=None
            Non-negative weight of each row; an integer weight counts as that
            many copies of the row.
        checkpoint : str or path-like, default=None
            A file that keeps the EM state after every iteration (written
            atomically). Fitting again with the same file resumes where it
            stopped and ends at the same parameters as an uninterrupted fit; a
            checkpoint made for other data or parameters is refused.
        feature_dim : str, default=None
            The dim of an xarray ``X`` holding the features. Needed for a
            DataArray of more than two dims; a 2-D one takes its second dim.
            Remembered (``feature_dim_``), so prediction needs no argument.

        Returns
        -------
        self
        """
        return fit_estimator(self, X, sample_weight=sample_weight, checkpoint=checkpoint,
                             feature_dim=feature_dim)

    def fit_predict(self, X, y=None, sample_weight=None, feature_dim=None):
        """Fit, then label every row with the final parameters.

        Returns
        -------
        labels : ndarray or dask array of shape (n_samples,)
            Lazy (a dask array chunked like ``X``) for dask input; a DataArray
            over the sample dims for xarray input.
        """
        return self.fit(X, y, sample_weight=sample_weight,
                        feature_dim=feature_dim).predict(X)

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
        n_samples, n_features = data.shape
        if n_samples < self.n_components:
            raise ValueError(
                "Expected n_samples >= n_components "
                f"but got n_components = {self.n_components}, "
                f"n_samples = {n_samples}"
            )
        initial_values = self._check_initial_values(n_features)
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
            saved = yield from self._load_checkpoint(checkpoint, fingerprint)
        best, first_init = None, 0
        if saved is not None:
            random_state = np.random.RandomState()  # never overwrite a shared generator
            random_state.set_state(saved.rng_state)
            best, first_init = saved.best, saved.init
            logger.info("resuming from checkpoint %s: initialization %d, iteration %d",
                        checkpoint, saved.init, saved.n_iter)

        for init in range(first_init, n_init):
            self._verbose_init_begin(init)
            checkpointer = None if checkpoint is None else Checkpointer(
                checkpoint, fingerprint, init, random_state, best)
            resumed = saved is not None and init == saved.init
            if resumed:
                start = InitResult(saved.params, saved.lower_bound, saved.lower_bounds,
                                   saved.n_iter, saved.converged)
                if checkpointer is not None:
                    checkpointer.resumed_sums = saved.data_sums
            elif do_init:
                params = yield from self._initial_params(data, random_state, eps,
                                                         float32_input, *initial_values)
                start = InitResult(params, -np.inf, [], 0, False)
            else:
                start = InitResult(self._current_params(), self.lower_bound_, [], 0, False)
            finished = resumed and (start.converged or start.n_iter >= self.max_iter)
            result = start if finished else (
                yield from self._em(data, start, eps, float32_input, checkpointer))
            if best is None or result.lower_bound > best.lower_bound:
                best = result

        if not best.converged and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. "
                "Try different init parameters, or increase max_iter, "
                "tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=2,
            )
        self._set_params_from(best.params, dtype)
        self.converged_ = best.converged
        self.n_iter_ = best.n_iter
        self.lower_bound_ = best.lower_bound
        self.lower_bounds_ = list(best.lower_bounds)
        return self

    def _fingerprint(self, data, dtype):
        """Step generator: what a checkpoint must match (parameters, data digest)."""
        n_samples = data.shape[0]
        edge = min(4, n_samples)
        indices = np.unique(np.r_[np.arange(edge), np.arange(n_samples - edge, n_samples)])
        rows = yield TakeRows(indices)
        return {
            "estimator": estimator_fingerprint(self),
            "data": data_fingerprint(data.shape, dtype, rows, rows[:0],
                                     data.weighted),
        }

    def _load_checkpoint(self, path, fingerprint):
        """Step generator: the saved state (or None), checked against this fit and data."""
        saved = load_state(path, fingerprint, self.covariance_type, self._params_class)
        if saved is None:
            return None
        if saved.n_iter > self.max_iter:
            raise CheckpointMismatchError(
                f"Checkpoint '{path}' already ran {saved.n_iter} EM iterations, more than "
                f"max_iter={self.max_iter}. Use another checkpoint path, or delete this "
                "one to start afresh."
            )
        if saved.converged or saved.n_iter >= self.max_iter:
            # a finished fit returns without a pass of its own: check the data first
            stats = yield self._e_step_request(saved.params)
            self._seen_stats(stats)
            check_data_sums(path, saved.data_sums, stats)
            saved.data_sums = None
        return saved

    def _em(self, data, start, eps, float32_input, checkpointer=None):
        """Step generator: EM from ``start``, one chunk pass per iteration.

        Parameters
        ----------
        data : ChunkedRows
        start : InitResult
            The parameters to start from, and for a resumed fit the iterations
            and lower bounds already done.
        eps : float
            Machine epsilon of the input dtype.
        float32_input : bool
        checkpointer : Checkpointer or None
            Saves the state after every iteration.

        Returns
        -------
        InitResult
        """
        state = start._replace(lower_bounds=list(start.lower_bounds), converged=False)
        # Tied covariances: the rows' own sum w y y^T is the same in every pass (no
        # parameter enters it), so the first pass's is kept and the later passes
        # skip it. Not with missing values marginalised: those are filled in anew.
        keeps_moments = self.covariance_type == "tied" and not data.marginalize
        first_stats = None
        for n_iter in range(start.n_iter + 1, self.max_iter + 1):
            began = perf_counter()
            stats = yield self._e_step_request(state.params,
                                               tied_moments=first_stats is None)
            if keeps_moments:
                if first_stats is None:
                    first_stats = stats
                else:
                    stats.s2 = translate_stats(first_stats, stats.shift).s2
            if data.omit_nan:
                check_kept_rows(stats.rows, self.n_components, data.shape[0])
            if checkpointer is not None:
                checkpointer.check_pass(stats)
            params, lower_bound = self._m_step(stats, eps, float32_input, state.params)
            change = lower_bound - state.lower_bound
            state = InitResult(params, lower_bound, state.lower_bounds + [lower_bound],
                               n_iter, abs(change) < self.tol)
            logger.debug("EM iteration %d: lower bound %.6f, change %.3g, %.3fs",
                         n_iter, lower_bound, change, perf_counter() - began)
            self._verbose_iter_end(n_iter, change)
            if checkpointer is not None:
                checkpointer.save(state, state.converged or n_iter == self.max_iter, stats)
            if state.converged:
                break
        if self.max_iter > 0:
            self._verbose_init_end(state.lower_bound, state.converged)
        return state

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

    # -------------------------------------------------------------- prediction

    def _rowwise(self, X, block_fn, dtype_out, name, extra_dim=None):
        """Output ``name`` of every sample: lazy on dask input (``block_fn`` per block,
        features joined in it), else :func:`rows_in_memory_outputs`; xarray input
        gets a DataArray on its sample dims back.
        """
        check_is_fitted(self)
        X, lazy, layout = check_X(self, X, reset=False)
        params = self._current_params()
        policy = self.nan_policy
        if not lazy:
            rows = X.reshape(-1, X.shape[-1])
            out = rows_in_memory_outputs(rows, params, (name,), X.dtype, policy)[name]
            if layout is not None:
                out = out.reshape(layout.shape + out.shape[1:])
        else:
            X = join_features(X)
            if extra_dim is None:
                out = X.map_blocks(block_fn, params, policy, drop_axis=X.ndim - 1,
                                   dtype=dtype_out)
            else:
                out = X.map_blocks(block_fn, params, policy,
                                   chunks=X.chunks[:-1] + ((extra_dim,),), dtype=dtype_out)
        if layout is not None:
            return layout.wrap(out, name, "component" if extra_dim is not None else None)
        return out

    def predict(self, X):
        """Most likely component of each sample.

        Samples left out by ``nan_policy`` (any NaN under 'omit', every feature
        missing under 'marginalize') get -1.

        Returns
        -------
        labels : ndarray, dask array or DataArray of shape (n_samples,), int64
            A DataArray over the sample dims for xarray input.
        """
        return self._rowwise(X, predict_block, np.int64, "labels")

    def predict_proba(self, X):
        """Posterior probability of each component for each sample.

        Samples left out by ``nan_policy`` get NaN.

        Returns
        -------
        resp : ndarray, dask array or DataArray of shape (n_samples, n_components)
            For xarray input, the sample dims plus a ``component`` dim.
        """
        dtype = self.means_.dtype if hasattr(self, "means_") else np.float64

        def block_fn(block, params, policy, block_info=None):
            return predict_proba_block(block, params, block.dtype, policy, block_info)

        return self._rowwise(X, block_fn, dtype, "proba",
                             extra_dim=self._n_components_fitted())

    def score_samples(self, X):
        """Log-likelihood of each sample under the model.

        Samples left out by ``nan_policy`` get NaN.

        Returns
        -------
        log_prob : ndarray, dask array or DataArray of shape (n_samples,)
        """

        def block_fn(block, params, policy, block_info=None):
            return score_samples_block(block, params, block.dtype, policy, block_info)

        dtype = self.means_.dtype if hasattr(self, "means_") else np.float64
        return self._rowwise(X, block_fn, dtype, "score_samples")

    def _n_components_fitted(self):
        return self.means_.shape[0] if hasattr(self, "means_") else None

    def _scored(self, X):
        """``(sum, count)`` of the per-sample log-likelihoods of ``X``, masked skipped."""
        log_prob = self.score_samples(X)
        if xarray_kind(log_prob) is not None:
            log_prob = log_prob.data
        kept = ~np.isnan(log_prob) if self.nan_policy != "raise" else None
        if kept is None:
            total, count = log_prob.sum(), log_prob.size
        else:
            total, count = log_prob[kept].sum() if not hasattr(log_prob, "dask") else \
                da.where(kept, log_prob, 0.0).sum(), kept.sum()
        total, count = dask.compute(total, count)
        if count == 0:
            raise ValueError("Every sample of X holds NaN: there is nothing to score.")
        return float(total), int(count)

    def score(self, X, y=None):
        """Mean per-sample log-likelihood of ``X`` (computed, even for dask input).

        With ``nan_policy='omit'``, the mean over the samples without NaN.

        Returns
        -------
        float
        """
        total, count = self._scored(X)
        return total / count

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

    def save(self, path, overwrite=False):
        """Write the fitted model to ``path`` (no pickle); see :mod:`dask_gmm.persistence`."""
        return save_model(self, path, overwrite=overwrite)

    def to_sklearn(self):
        """An equivalent fitted scikit-learn estimator, for in-memory use."""
        return to_sklearn(self)
