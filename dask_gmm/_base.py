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
import math
import sys
import warnings
from dataclasses import dataclass
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
    predict_block,
    predict_proba_block,
    run_together,
    score_samples_block,
)
from ._requests import TakeRows
from ._stats import pass_sums
from ._validation import check_sample_weight, check_X, numpy_row_chunks
from .checkpoint import (
    CheckpointMismatchError,
    FitState,
    InitResult,
    check_data_sums,
    data_fingerprint,
    estimator_fingerprint,
    load_state,
    save_state,
)
from .persistence import save_model, to_sklearn

logger = logging.getLogger("dask_gmm")

# What a chunk task needs besides its chunk: the worker process itself (Python,
# numpy, dask, numba), row-block temporaries and the statistics.
WORKER_BASE_BYTES = 200 * 2**20
# distributed pauses a worker at 80% of its memory limit.
WORKER_USABLE_SHARE = 0.8


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
    estimator : BaseMixture
    X, sample_weight
        As for :meth:`BaseMixture.fit`.
    on_round : callable or None
        Called after every pass over the data (for progress bars).
    checkpoint : str or path-like or None
        See :meth:`BaseMixture.fit`.

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
        (outcome,) = run_together(data, [steps], on_round=on_round, isolate=())
    except BaseException:
        estimator.__dict__.clear()
        estimator.__dict__.update(snapshot)
        raise
    return outcome


@dataclass
class Checkpointer:
    """Saves one initialisation's EM state after every iteration (see ``checkpoint``).

    ``resumed_sums`` are the data sums a resumed checkpoint holds: the first
    pass after resuming is compared with them, which catches changed data.
    """

    path: object
    fingerprint: dict
    init: int
    random_state: np.random.RandomState
    best: InitResult | None
    resumed_sums: tuple | None = None

    def check_pass(self, stats):
        """Compare the first pass after resuming with the checkpoint's data sums."""
        if self.resumed_sums is not None:
            check_data_sums(self.path, self.resumed_sums, stats)
            self.resumed_sums = None

    def save(self, state, finished, stats):
        """Write ``state`` (an InitResult) and this pass's data sums."""
        save_state(self.path, self.fingerprint, FitState(
            self.init, state.n_iter, state.lower_bound, state.lower_bounds, finished,
            state.params, self.random_state.get_state(), self.best, pass_sums(stats),
            state.converged))


class BaseMixture(DensityMixin, BaseEstimator):
    """Base of the mixtures: fit loop, checkpoints, lazy outputs, scores.

    Subclasses supply the hooks ``_validate_hyperparameters``,
    ``_check_initial_values``, ``_initial_params``, ``_e_step_request``,
    ``_m_step``, ``_set_params_from``, ``_current_params`` and ``_n_parameters``.
    """

    # ---------------------------------------------------------------- fitting

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
        self
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
        n_samples = data.array.shape[0]
        edge = min(4, n_samples)
        indices = np.unique(np.r_[np.arange(edge), np.arange(n_samples - edge, n_samples)])
        rows = yield TakeRows(indices)
        return {
            "estimator": estimator_fingerprint(self),
            "data": data_fingerprint(data.array.shape, dtype, rows, rows[:0],
                                     data.weight_blocks[0] is not None),
        }

    def _load_checkpoint(self, path, fingerprint):
        """Step generator: the saved state (or None), checked against this fit and data."""
        saved = load_state(path, fingerprint, self.covariance_type)
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
        for n_iter in range(start.n_iter + 1, self.max_iter + 1):
            began = perf_counter()
            stats = yield self._e_step_request(state.params)
            if checkpointer is not None:
                checkpointer.check_pass(stats)
            params, lower_bound = self._m_step(stats, eps, float32_input)
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
        return self._rowwise(X, predict_block, np.int64)

    def predict_proba(self, X):
        """Posterior probability of each component for each row.

        Returns
        -------
        resp : ndarray or dask array of shape (n_samples, n_components)
        """
        dtype = self.means_.dtype if hasattr(self, "means_") else np.float64

        def block_fn(block, params, block_info=None):
            return predict_proba_block(block, params, block.dtype, block_info)

        return self._rowwise(X, block_fn, dtype, extra_dim=self._n_components_fitted())

    def score_samples(self, X):
        """Log-likelihood of each row under the model.

        Returns
        -------
        log_prob : ndarray or dask array of shape (n_samples,)
        """

        def block_fn(block, params, block_info=None):
            return score_samples_block(block, params, block.dtype, block_info)

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
        return save_model(self, path, overwrite=overwrite)

    def to_sklearn(self):
        """An equivalent fitted scikit-learn estimator, for in-memory use."""
        return to_sklearn(self)
