"""``BayesianGaussianMixtureSweep``: variational mixtures over a grid of priors, one read per round.

The candidates (a weight concentration prior, a covariance type, an upper
bound on the components) advance in lockstep exactly as in
:class:`~dask_gmm.GaussianMixtureSweep`: each round reads every chunk once for
all of them. Each candidate is the model
``BayesianGaussianMixture(weight_concentration_prior=a, covariance_type=c,
n_components=k, ...).fit(X)`` gives. No final pass is needed: the table
reports each candidate's lower bound and effective number of components.
"""

from __future__ import annotations

import math
import warnings
from numbers import Real

import numpy as np

from ._options import BAYESIAN_RESULT_COLUMNS, COVARIANCE_TYPES
from ._validation import InvalidParameterError
from .bayesian_mixture import BayesianGaussianMixture
from .persistence import register
from .sweep import MAX_CANDIDATES, GaussianMixtureSweep, _as_list


@register
class BayesianGaussianMixtureSweep(GaussianMixtureSweep):
    """Fit variational mixtures over a grid of weight priors and covariance types.

    Parameters
    ----------
    n_components : int or iterable of int, default=10
        Upper bounds on the number of components.
    covariance_type : str or iterable of str, default=('full', 'tied', 'diag', \
            'spherical')
    weight_concentration_prior : float or iterable of float, default=(0.001, 0.1, 10.0)
        Small values let few components take the weight; large values spread it.
    weight_concentration_prior_type, tol, reg_covar, max_iter, n_init, \
    init_params, random_state, verbose, verbose_interval, nan_policy
        As in :class:`~dask_gmm.BayesianGaussianMixture`, for every candidate.
    progress : bool, default=False
        A progress bar counting passes over the data.

    Attributes
    ----------
    results_ : dict of ndarray
        One entry per candidate: ``weight_concentration_prior, covariance_type,
        n_components, lower_bound, n_effective`` (components holding at least
        1% of the weight), ``n_iter, converged, n_passes, finish_time, error``
        and ``params``.
    best_index_, best_params_, best_estimator_
        The candidate with the largest lower bound. scikit-learn's bound leaves
        out constants that depend on the priors, so read the table rather than
        the ranking across covariance types; within one covariance type the
        effective number of components is what tells the priors apart.
    n_rounds_ : int
    """

    _final_pass = False
    RESULT_COLUMNS = BAYESIAN_RESULT_COLUMNS

    def __init__(
        self,
        n_components=10,
        covariance_type=COVARIANCE_TYPES,
        weight_concentration_prior=(0.001, 0.1, 10.0),
        *,
        weight_concentration_prior_type="dirichlet_process",
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
        self.weight_concentration_prior = weight_concentration_prior
        self.weight_concentration_prior_type = weight_concentration_prior_type
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

    def _grid(self):
        priors = self.weight_concentration_prior
        priors = [priors] if isinstance(priors, Real) or priors is None else list(priors)
        if not priors:
            raise InvalidParameterError(
                "The 'weight_concentration_prior' parameter must not be empty.")
        return (priors, _as_list(self.covariance_type, "covariance_type", "str"),
                _as_list(self.n_components, "n_components", "int"))

    def _check_grid(self, n_samples):
        n_candidates = math.prod(len(axis) for axis in self._grid())
        if n_candidates > MAX_CANDIDATES:
            raise ValueError(f"The sweep has {n_candidates:,} candidates; at most "
                             f"{MAX_CANDIDATES:,} are allowed.")

    def _candidates(self):
        priors, types, ks = self._grid()
        grid = [(a, c, k) for c in types for a in priors for k in ks]
        if isinstance(self.random_state, np.random.RandomState):
            seeds = [int(s) for s in
                     self.random_state.randint(np.iinfo(np.int32).max, size=len(grid))]
        else:
            seeds = [self.random_state] * len(grid)
        candidates = []
        for (prior, covariance_type, k), seed in zip(grid, seeds):
            candidate = BayesianGaussianMixture(
                n_components=k, covariance_type=covariance_type,
                weight_concentration_prior=prior,
                weight_concentration_prior_type=self.weight_concentration_prior_type,
                tol=self.tol, reg_covar=self.reg_covar, max_iter=self.max_iter,
                n_init=self.n_init, init_params=self.init_params, random_state=seed,
                verbose=self.verbose, verbose_interval=self.verbose_interval,
                nan_policy=self.nan_policy)
            candidate._validate_hyperparameters()  # a bad grid fails before any read
            candidates.append(candidate)
        return candidates

    def _checkpoint_name(self, candidate):
        return (f"{candidate.covariance_type}-{candidate.n_components}-"
                f"{candidate.weight_concentration_prior!r}.npz")

    def _record(self, candidates, outcomes, scores, finished_at, n_passes):
        n = len(candidates)
        results = {
            "weight_concentration_prior": np.array(
                [np.nan if c.weight_concentration_prior is None
                 else c.weight_concentration_prior for c in candidates], dtype=float),
            "covariance_type": np.array([c.covariance_type for c in candidates],
                                        dtype=object),
            "n_components": np.array([c.n_components for c in candidates]),
            "lower_bound": np.full(n, np.nan),
            "n_effective": np.zeros(n, dtype=int),
            "n_iter": np.zeros(n, dtype=int),
            "converged": np.zeros(n, dtype=bool),
            "n_passes": np.array(n_passes, dtype=int),
            "finish_time": np.array(finished_at, dtype=float),
            "error": np.array([""] * n, dtype=object),
            "params": [{"weight_concentration_prior": c.weight_concentration_prior,
                        "covariance_type": c.covariance_type,
                        "n_components": c.n_components} for c in candidates],
        }
        failures = []
        for i, (candidate, outcome) in enumerate(zip(candidates, outcomes)):
            if isinstance(outcome, BaseException):
                results["error"][i] = f"{type(outcome).__name__}: {outcome}"
                failures.append(f"{results['params'][i]}: {results['error'][i]}")
                continue
            results["lower_bound"][i] = candidate.lower_bound_
            results["n_effective"][i] = candidate.n_effective_components_
            results["n_iter"][i] = candidate.n_iter_
            results["converged"][i] = candidate.converged_
        if len(failures) == n:
            raise ValueError("Every candidate of the sweep failed:\n" + "\n".join(failures))
        if failures:
            warnings.warn(f"{len(failures)} of {n} candidates failed and were skipped "
                          "(message in results_['error']):\n" + "\n".join(failures),
                          UserWarning, stacklevel=2)
        best = int(np.nanargmax(results["lower_bound"]))
        self.results_ = results
        self.best_index_ = best
        self.best_params_ = dict(results["params"][best])
        self.best_estimator_ = candidates[best]

    def plot(self, path, criterion=None):
        """Not offered: BIC/AIC plots belong to GaussianMixtureSweep; see ``results_``."""
        raise AttributeError("BayesianGaussianMixtureSweep has no criterion plot; plot "
                             "best_estimator_.weights_ instead.")
