"""``GaussianMixtureSweep``: many candidate mixtures fitted together, one read per round.

Every candidate (a number of components and a covariance type) is an ordinary
:class:`~dask_gmm.GaussianMixture` fit. The sweep advances all of them in
lockstep: each round, every candidate still running asks for its next pass
(a k-means step, an EM iteration, rows for seeding), and all those passes are
computed in one ``dask.compute``. They are built on the same chunk tasks, so
each chunk is read once per round and feeds one statistics task per candidate.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils.validation import check_is_fitted

from ._base import prepare_rows
from ._engine import compute_round, run_together
from ._estep import NonFiniteInputError
from ._memory import cluster_client, record_reads, rows_for_fit
from ._options import COVARIANCE_TYPES, CRITERIA, RESULT_COLUMNS
from ._plots import pyplot
from ._progress import progress_bar
from ._requests import LogLikelihood
from ._validation import InvalidParameterError, check_X
from .checkpoint import CheckpointMismatchError
from .gaussian_mixture import GaussianMixture
from .paths import PLOT_SOFTWARE
from .persistence import register, save_model

# Each candidate holds its parameters and a generator; a grid larger than this is
# a typo (K=1:1000000000), not a sweep.
MAX_CANDIDATES = 10_000


def _as_list(value, name, kind):
    if isinstance(value, (str, Integral)):
        return [value]
    try:
        values = list(value)
    except TypeError:
        raise InvalidParameterError(
            f"The '{name}' parameter of GaussianMixtureSweep must be a {kind} or an "
            f"iterable of them. Got {value!r} instead."
        ) from None
    if not values:
        raise InvalidParameterError(f"The '{name}' parameter must not be empty.")
    return values


@register
class GaussianMixtureSweep(DensityMixin, BaseEstimator):
    """Fit a grid of Gaussian mixtures and keep the one with the best BIC or AIC.

    Each candidate is exactly the model that
    ``GaussianMixture(n_components=k, covariance_type=c, random_state=random_state,
    **the other parameters).fit(X)`` gives, so any row of ``results_`` can be
    reproduced alone. The candidates run together: each round reads every chunk
    of ``X`` once for all of them, and finished candidates drop out.

    Parameters
    ----------
    n_components : int or iterable of int, default=range(1, 11)
    covariance_type : str or iterable of str, default=('full', 'tied', 'diag', \
            'spherical')
    criterion : {'bic', 'aic'}, default='bic'
        Lower is better; the best candidate becomes ``best_estimator_``.
    tol, reg_covar, max_iter, n_init, init_params, verbose, verbose_interval, nan_policy
        As in :class:`~dask_gmm.GaussianMixture`, for every candidate.
    random_state : int, RandomState instance or None, default=None
        Given to every candidate as it is. A ``RandomState`` instance is first
        turned into one integer seed per candidate, drawn up front.
    progress : bool, default=False
        Show a progress bar (tqdm, on stderr) counting passes over the data, with
        the candidates finished and still running and the best lower bound so far.

    Attributes
    ----------
    results_ : dict of ndarray
        One entry per candidate, in the manner of ``GridSearchCV.cv_results_``:
        ``n_components, covariance_type, bic, aic, lower_bound, n_iter, converged,
        n_passes, finish_time, error`` (``''`` when the candidate succeeded) and
        ``params``. ``pandas.DataFrame(sweep.results_)`` gives the table.
        Candidates share every pass, so none has a time of its own: ``n_passes``
        is the number of passes over the data the candidate took part in (its
        cost in reads), ``finish_time`` the seconds from the start of the sweep
        until it finished.
    best_index_ : int
    best_params_ : dict
    best_estimator_ : GaussianMixture
    n_rounds_ : int
        Rounds (each one read of the data) the sweep took, the final scoring
        pass included.
    n_features_in_ : int
    """

    def __init__(
        self,
        n_components=range(1, 11),
        covariance_type=COVARIANCE_TYPES,
        criterion="bic",
        *,
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        random_state=None,
        verbose=0,
        verbose_interval=10,
        progress=False,
        nan_policy="raise",
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.criterion = criterion
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.random_state = random_state
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.progress = progress
        self.nan_policy = nan_policy

    def _check_grid(self, n_samples):
        """Refuse, before anything is built, a grid larger than the data can support.

        ``n_components`` may be a huge ``range``: only its length and ends are read.
        """
        ks = self.n_components
        if isinstance(ks, (str, Integral)):
            ks = [ks]
        if not hasattr(ks, "__len__"):
            return
        types = self.covariance_type
        n_types = 1 if isinstance(types, str) else len(types)
        n_candidates = len(ks) * n_types
        if isinstance(ks, range):  # max() would walk a range of a billion
            largest = ks[-1] if len(ks) else 0
        else:
            largest = max(ks) if len(ks) else 0
        beyond = (f" (and n_components goes up to {largest:,} while the data have "
                  f"{n_samples:,} rows)" if isinstance(largest, Integral)
                  and largest > n_samples else "")
        if n_candidates > MAX_CANDIDATES:
            raise ValueError(
                f"The sweep has {n_candidates:,} candidates{beyond}; at most "
                f"{MAX_CANDIDATES:,} are allowed. Sweep a coarser grid, e.g. 1:100 or "
                "2,4,8,16."
            )

    def _candidates(self):
        if self.criterion not in CRITERIA:
            raise InvalidParameterError(
                "The 'criterion' parameter of GaussianMixtureSweep must be a str among "
                f"{set(CRITERIA)}. Got {self.criterion!r} instead."
            )
        ks = _as_list(self.n_components, "n_components", "int")
        types = _as_list(self.covariance_type, "covariance_type", "str")
        grid = [(c, k) for c in types for k in ks]
        if isinstance(self.random_state, np.random.RandomState):
            seeds = self.random_state.randint(np.iinfo(np.int32).max, size=len(grid))
            seeds = [int(s) for s in seeds]
        else:
            seeds = [self.random_state] * len(grid)
        candidates = []
        for (covariance_type, k), seed in zip(grid, seeds):
            candidate = GaussianMixture(
                n_components=k, covariance_type=covariance_type, tol=self.tol,
                reg_covar=self.reg_covar, max_iter=self.max_iter, n_init=self.n_init,
                init_params=self.init_params, random_state=seed, verbose=self.verbose,
                verbose_interval=self.verbose_interval, nan_policy=self.nan_policy,
            )
            candidate._validate_hyperparameters()  # a bad grid fails before any read
            candidates.append(candidate)
        return candidates

    def fit(self, X, y=None, sample_weight=None, checkpoint=None, feature_dim=None):
        """Fit every candidate, score it on ``X`` and keep the best.

        Parameters
        ----------
        X : array-like, dask array, zarr array or h5py dataset of shape \
                (n_samples, n_features)
        y : Ignored
        sample_weight : array-like or dask array of shape (n_samples,), default=None
        checkpoint : str or path-like, default=None
            A folder keeping one EM checkpoint per candidate (see
            :meth:`GaussianMixture.fit`); fitting again with it resumes every
            candidate where it stopped.
        feature_dim : str, default=None
            The feature dim of an xarray ``X`` (see :meth:`GaussianMixture.fit`).

        Returns
        -------
        self : GaussianMixtureSweep
        """
        X, lazy, layout = check_X(self, X, reset=True, ensure_min_samples=2,
                                  feature_dim=feature_dim)
        self._check_grid(math.prod(X.shape[:-1]))
        candidates = self._candidates()
        data = prepare_rows(X, lazy, sample_weight, layout, self.nan_policy)
        start = time.perf_counter()
        finished_at = [np.nan] * len(candidates)
        n_passes = [0] * len(candidates)
        n_rounds = 0
        n_finished = 0

        def timed(i, candidate):
            nonlocal n_finished
            candidate.n_features_in_ = data.shape[1]
            candidate.feature_dim_ = self.feature_dim_
            if hasattr(self, "feature_names_in_"):
                candidate.feature_names_in_ = self.feature_names_in_
            path = None
            if checkpoint is not None:
                path = os.path.join(os.fspath(checkpoint),
                                    self._checkpoint_name(candidate))
            steps = candidate._fit_steps(data, X.dtype, checkpoint=path)
            try:
                request = next(steps)
                while True:
                    n_passes[i] += 1
                    request = steps.send((yield request))
            except StopIteration as stop:
                return stop.value
            finally:
                finished_at[i] = time.perf_counter() - start
                n_finished += 1

        with rows_for_fit(data, cluster_client()) as data, \
                progress_bar(self.progress, "sweep", "pass") as bar:

            def on_round(running):
                nonlocal n_rounds
                n_rounds += 1
                if bar is not None:
                    bounds = [c.lower_bound_ for c in candidates
                              if hasattr(c, "lower_bound_")]
                    postfix = {"finished": f"{n_finished}/{len(candidates)}",
                               "running": running}
                    if bounds:
                        postfix["best_lower_bound"] = f"{max(bounds):.4f}"
                    bar.set_postfix(postfix, refresh=False)
                    bar.update(1)

            outcomes = run_together(
                data,
                [timed(i, c) for i, c in enumerate(candidates)],
                on_round=on_round,
                isolate=(ValueError, np.linalg.LinAlgError, FloatingPointError),
                fatal=(NonFiniteInputError, CheckpointMismatchError),
            )
            fitted = [i for i, o in enumerate(outcomes) if not isinstance(o, BaseException)]
            scores = [None] * len(fitted)
            final_pass = self._final_pass and fitted
            if final_pass:
                scores = self._final_log_likelihoods(data, [candidates[i] for i in fitted])
                if bar is not None:
                    bar.update(1)
            record_reads(self, data)
        n_rounds += 1 if final_pass else 0
        self._record(candidates, outcomes, dict(zip(fitted, scores)), finished_at, n_passes)
        self.n_rounds_ = n_rounds
        return self

    def _checkpoint_name(self, candidate):
        return f"{candidate.covariance_type}-{candidate.n_components}.npz"

    # BIC and AIC need each candidate's log-likelihood under its final
    # parameters: one more shared pass.
    _final_pass = True
    RESULT_COLUMNS = RESULT_COLUMNS

    def _final_log_likelihoods(self, data, models):
        """``(sum of weights, sum of weighted log p(x))`` per model, in one shared pass."""
        if not models:
            return []
        requests = [LogLikelihood(m._current_params()) for m in models]
        return [(s.n, s.log_likelihood) for s in compute_round(data, requests)]

    def _record(self, candidates, outcomes, scores, finished_at, n_passes):
        n = len(candidates)
        results = {
            "n_components": np.array([c.n_components for c in candidates]),
            "covariance_type": np.array([c.covariance_type for c in candidates],
                                        dtype=object),
            "bic": np.full(n, np.nan),
            "aic": np.full(n, np.nan),
            "lower_bound": np.full(n, np.nan),
            "n_iter": np.zeros(n, dtype=int),
            "converged": np.zeros(n, dtype=bool),
            "n_passes": np.array(n_passes, dtype=int),
            "finish_time": np.array(finished_at, dtype=float),
            "error": np.array([""] * n, dtype=object),
            "params": [{"n_components": c.n_components,
                        "covariance_type": c.covariance_type} for c in candidates],
        }
        failures = []
        for i, (candidate, outcome) in enumerate(zip(candidates, outcomes)):
            if isinstance(outcome, BaseException):
                message = f"{type(outcome).__name__}: {outcome}"
                results["error"][i] = message
                failures.append(f"{candidate.n_components} {candidate.covariance_type}: "
                                f"{message}")
                continue
            total_weight, log_likelihood = scores[i]
            n_parameters = candidate._n_parameters()
            results["bic"][i] = -2 * log_likelihood + n_parameters * math.log(total_weight)
            results["aic"][i] = -2 * log_likelihood + 2 * n_parameters
            results["lower_bound"][i] = candidate.lower_bound_
            results["n_iter"][i] = candidate.n_iter_
            results["converged"][i] = candidate.converged_
        if len(failures) == n:
            raise ValueError("Every candidate of the sweep failed:\n" + "\n".join(failures))
        if failures:
            warnings.warn(
                f"{len(failures)} of {n} candidates failed and were skipped (NaN "
                "scores, message in results_['error']):\n" + "\n".join(failures),
                UserWarning,
                stacklevel=2,
            )
        best = int(np.nanargmin(results[self.criterion]))
        self.results_ = results
        self.best_index_ = best
        self.best_params_ = dict(results["params"][best])
        self.best_estimator_ = candidates[best]

    # Delegation to the best candidate -----------------------------------------

    def predict(self, X):
        """Labels from the best candidate; see :meth:`GaussianMixture.predict`."""
        check_is_fitted(self)
        return self.best_estimator_.predict(X)

    def predict_proba(self, X):
        """Responsibilities from the best candidate."""
        check_is_fitted(self)
        return self.best_estimator_.predict_proba(X)

    def score_samples(self, X):
        """Per-row log-likelihood under the best candidate."""
        check_is_fitted(self)
        return self.best_estimator_.score_samples(X)

    def score(self, X, y=None):
        """Mean per-row log-likelihood under the best candidate."""
        check_is_fitted(self)
        return self.best_estimator_.score(X)

    def bic(self, X):
        """BIC of the best candidate on ``X``."""
        check_is_fitted(self)
        return self.best_estimator_.bic(X)

    def aic(self, X):
        """AIC of the best candidate on ``X``."""
        check_is_fitted(self)
        return self.best_estimator_.aic(X)

    def save(self, path, overwrite=False):
        """Write the sweep (its ``results_`` and best model) to ``path``, without pickle."""
        return save_model(self, path, overwrite=overwrite)

    def plot(self, path, criterion=None):
        """Write the criterion-against-K plot of ``results_`` to ``path`` (PNG)."""
        check_is_fitted(self)
        return plot_criterion(self.results_, path, criterion or self.criterion)


def plot_criterion(results, path, criterion="bic"):
    """Plot BIC or AIC against the number of components, one line per covariance type.

    Parameters
    ----------
    results : dict
        ``GaussianMixtureSweep.results_`` (or a DataFrame made from it).
    path : str or path-like
        Where to write the figure (the format follows the suffix; PNG by default).
    criterion : {'bic', 'aic'}

    Returns
    -------
    path
    """
    plt = pyplot("plot_criterion")
    ks = np.asarray(results["n_components"])
    types = np.asarray(results["covariance_type"], dtype=object)
    values = np.asarray(results[criterion], dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for covariance_type in dict.fromkeys(types):
        mask = types == covariance_type
        order = np.argsort(ks[mask])
        ax.plot(ks[mask][order], values[mask][order], marker="o", label=covariance_type)
    if np.isfinite(values).any():
        best = int(np.nanargmin(values))
        ax.plot([ks[best]], [values[best]], marker="*", markersize=18, color="black",
                linestyle="none",
                label=f"chosen: {ks[best]} {types[best]}")
    ax.set_xlabel("number of components")
    ax.set_ylabel(criterion.upper() + " (lower is better)")
    ax.set_xticks(np.unique(ks))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    is_png = os.fspath(path).lower().endswith(".png") or "." not in os.path.basename(
        os.fspath(path))
    fig.savefig(path, metadata={"Software": PLOT_SOFTWARE} if is_png else None)
    plt.close(fig)
    return path
