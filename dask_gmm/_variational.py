"""The variational (Bayesian) mixture's M-step, E-step constants and lower bound.

Pure numpy on reduced statistics; the data are never touched here. The model
is scikit-learn's ``BayesianGaussianMixture`` (Bishop, PRML 10.2, with its
normalised Wishart): a Dirichlet (or Dirichlet-process stick-breaking) prior
on the weights and a Gaussian-Wishart prior on each component's mean and
precision.

- The E-step is the Gaussian E-step with other per-component constants
  (expected log weights, ``-D/2 log nu``, the expected log-determinant and
  ``-D / (2 beta)``): :class:`VariationalParams` carries them as
  ``log_weights``, so the same chunk kernels (the compiled one for full
  covariances) serve both models.
- The M-step starts from :func:`~dask_gmm._mstep.gaussian_estimate` (masses,
  means and covariances of the responsibilities) and the priors.
- The lower bound needs ``sum r log r`` over the rows. It is not summed per
  row: since ``log r_nk = c_k - maha_nk / 2 - log p(x_n)``, it equals
  ``sum_k c_k N_k - 1/2 sum_k tr(Lambda_k S_k) - sum_n log p(x_n)``, where
  ``S_k`` is the scatter about the E-step's means, which the pass's
  statistics already hold (:func:`responsibility_entropy`).

Missing features (``nan_policy='marginalize'``) need nothing of their own
here. The posterior is mean-field over (labels, missing features) and
(weights, means, precisions). As a function of a row's missing block,
``E[log N(x | mu_k, Lambda_k)]`` is the log density of ``N(mean_k, P_k^-1)``
(``P_k = nu_k W_k``, scikit-learn's ``precisions_``) plus the constants above,
so:

- a row's weight for component k is the Gaussian E-step's observed-data
  marginal under ``(means_, covariances_)`` with the same constants, and
  ``q(x_m | k)`` is that Gaussian's conditional: the marginal E-step of
  ``_missing`` and ``_fused_missing`` serves both models;
- the M-step takes the expected statistics (conditional means, plus the
  conditional covariance in the second moments) unchanged;
- the lower bound gains the entropy of ``q(x_m | k)``, and
  :func:`responsibility_entropy` applied to the expected statistics already
  returns ``sum r log r`` minus exactly that entropy, since the observed
  marginal's log density is the expected complete-data one plus it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import betaln, digamma, gammaln

from ._estep import log_det_cholesky
from ._mstep import Params, precision_cholesky
from ._stats import unpack_symmetric

WEIGHT_PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")


@dataclass
class VariationalParams(Params):
    """The variational posterior, with what the E-step needs precomputed.

    ``weights`` are the expected weights (scikit-learn's ``weights_``),
    ``covariances`` the normalised Wishart scale (``covariances_``) and
    ``log_weights`` the E-step's per-component constants.

    Attributes
    ----------
    weight_concentration : ndarray of shape (K,) or (2, K)
        Dirichlet parameters, or the two Beta parameters of each stick.
    mean_precision : ndarray of shape (K,)
    degrees_of_freedom : ndarray of shape (K,) (tied: shape ())
    """

    weight_concentration: np.ndarray | None = None
    mean_precision: np.ndarray | None = None
    degrees_of_freedom: np.ndarray | None = None


@dataclass
class Priors:
    """The prior's parameters (scikit-learn's ``*_prior_`` attributes)."""

    weight_concentration: float
    mean_precision: float
    mean: np.ndarray
    degrees_of_freedom: float
    covariance: np.ndarray | float


@dataclass
class DataMoments:
    """Mean and covariance (``ddof=1``) of the data, for the default priors.

    ``covariance`` is ``(D, D)`` when known in full, else None; ``variances``
    ``(D,)`` or, when only their sum is known, None with ``mean_variance`` set.
    """

    mean: np.ndarray
    covariance: np.ndarray | None
    variances: np.ndarray | None
    mean_variance: float


def moments_from_rows(rows):
    """DataMoments of rows in memory (all the data), as scikit-learn computes them."""
    rows = np.asarray(rows, dtype=np.float64)
    variances = np.var(rows, axis=0, ddof=1)
    return DataMoments(rows.mean(axis=0), np.atleast_2d(np.cov(rows.T)), variances,
                       float(variances.mean()))


def moments_from_stats(stats):
    """DataMoments from any pass's statistics (summed over the components).

    The sums are taken about the pass's shift, so data far from the origin keep
    their digits. With weights, ``n`` is the total weight.
    """
    n = stats.n
    d = stats.s1.sum(axis=0) / n  # mean minus shift
    mean = stats.shift + d
    kind, s2 = stats.covariance_type, stats.s2
    n_features = len(d)
    covariance = variances = None
    if kind == "full":
        second = unpack_symmetric(s2, n_features).sum(axis=0)
    elif kind == "tied":
        second = s2
    else:
        second = None
    if second is not None:
        covariance = (second - n * np.outer(d, d)) / (n - 1)
        variances = np.diag(covariance).copy()
        mean_variance = float(variances.mean())
    elif kind == "diag":
        variances = (s2.sum(axis=0) - n * d**2) / (n - 1)
        mean_variance = float(variances.mean())
    else:  # spherical: only sum |y|^2 per component
        mean_variance = float((s2.sum() - n * (d @ d)) / (n - 1) / n_features)
    return DataMoments(mean, covariance, variances, mean_variance)


def default_covariance_prior(moments, covariance_type):
    """scikit-learn's default ``covariance_prior`` from the data moments."""
    if covariance_type in ("full", "tied"):
        return np.atleast_2d(moments.covariance)
    if covariance_type == "diag":
        return moments.variances
    return moments.mean_variance


# --------------------------------------------------------------------------
# M-step


def estimate_weights(nk, prior_type, prior):
    """Posterior weight concentration: ``(K,)`` (Dirichlet) or ``(2, K)`` (sticks)."""
    if prior_type == "dirichlet_process":
        tail = np.hstack((np.cumsum(nk[::-1])[-2::-1], 0))
        return np.stack([1.0 + nk, prior + tail])
    return prior + nk


def _wishart_full(nk, diff, sk, priors, mean_precision):
    scatter = np.einsum("ki,kj->kij", diff, diff)
    factor = nk * priors.mean_precision / mean_precision
    return priors.covariance + nk[:, None, None] * sk + factor[:, None, None] * scatter


def _wishart_tied(nk, diff, sk, priors, mean_precision):
    n_components = len(nk)
    return (priors.covariance + sk * nk.sum() / n_components
            + priors.mean_precision / n_components
            * np.dot((nk / mean_precision) * diff.T, diff))


def _wishart_diag(nk, diff, sk, priors, mean_precision):
    return priors.covariance + nk[:, None] * (
        sk + (priors.mean_precision / mean_precision)[:, None] * diff**2)


def _wishart_spherical(nk, diff, sk, priors, mean_precision):
    return priors.covariance + nk * (
        sk + priors.mean_precision / mean_precision * np.mean(diff**2, axis=1))


WISHART_SCALE = {"full": _wishart_full, "tied": _wishart_tied, "diag": _wishart_diag,
                 "spherical": _wishart_spherical}


def variational_m_step(nk, xk, sk, priors, covariance_type, prior_type,
                       float32_input=False):
    """The posterior from masses, means and covariances of the responsibilities.

    Parameters
    ----------
    nk : ndarray of shape (K,)
        With ``10 * eps`` added (see ``gaussian_estimate``).
    xk : ndarray of shape (K, D)
    sk : ndarray
        Covariances of the responsibilities, ``reg_covar`` included.
    priors : Priors
    covariance_type : str
    prior_type : {'dirichlet_process', 'dirichlet_distribution'}
    float32_input : bool

    Returns
    -------
    VariationalParams
    """
    n_components, n_features = xk.shape
    concentration = estimate_weights(nk, prior_type, priors.weight_concentration)
    mean_precision = priors.mean_precision + nk
    # the prior mean's weight is small next to nk: the means keep xk's digits
    means = xk + (priors.mean_precision / mean_precision)[:, None] * (priors.mean - xk)
    if covariance_type == "tied":
        dof = np.asarray(priors.degrees_of_freedom + nk.sum() / n_components)
    else:
        dof = priors.degrees_of_freedom + nk
    scale = WISHART_SCALE[covariance_type](nk, xk - priors.mean, sk, priors, mean_precision)
    covariances = scale / (dof if covariance_type in ("tied", "spherical")
                           else dof[:, None] if covariance_type == "diag"
                           else dof[:, None, None])
    prec_chol = precision_cholesky(covariances, covariance_type, float32_input)
    params = VariationalParams(
        weights=expected_weights(concentration, prior_type), means=means,
        prec_chol=prec_chol, covariance_type=covariance_type, covariances=covariances,
        weight_concentration=concentration, mean_precision=mean_precision,
        degrees_of_freedom=dof)
    params.log_weights = e_step_constants(params, prior_type)
    return params


def expected_weights(concentration, prior_type):
    """scikit-learn's ``weights_`` from the weight concentration."""
    if prior_type == "dirichlet_process":
        a, b = concentration
        total = a + b
        weights = a / total * np.hstack((1, np.cumprod(b / total)[:-1]))
        return weights / weights.sum()
    return concentration / concentration.sum()


# --------------------------------------------------------------------------
# E-step constants and the lower bound


def expected_log_weights(concentration, prior_type):
    """``E[log pi_k]`` under the posterior, shape ``(K,)``."""
    if prior_type == "dirichlet_process":
        a, b = concentration
        digamma_sum = digamma(a + b)
        return (digamma(a) - digamma_sum
                + np.hstack((0, np.cumsum(digamma(b) - digamma_sum)[:-1])))
    return digamma(concentration) - digamma(concentration.sum())


def _expected_log_det(dof, n_features):
    """``D log 2 + sum_j digamma((nu - j) / 2)``: the expected log-determinant term."""
    dof = np.asarray(dof, dtype=np.float64)
    return n_features * math.log(2.0) + digamma(
        0.5 * (dof - np.arange(n_features)[:, None])).sum(axis=0).reshape(dof.shape)


def e_step_constants(params, prior_type):
    """What the E-step adds to ``log N(x | mean_k, covariance_k)``, shape ``(K,)``.

    The Gaussian density uses the normalised precision, so ``-D/2 log nu`` puts
    the scale back; ``(E[log det] - D / beta) / 2`` and ``E[log pi]`` follow
    Bishop (10.46), as scikit-learn computes them.
    """
    n_features = params.means.shape[1]
    dof = params.degrees_of_freedom
    return (expected_log_weights(params.weight_concentration, prior_type)
            - 0.5 * n_features * np.log(dof)
            + 0.5 * (_expected_log_det(dof, n_features)
                     - n_features / params.mean_precision))


def responsibility_entropy(stats, params):
    """``sum_n w_n sum_k r_nk log r_nk`` from the statistics of an E-step under ``params``.

    Parameters
    ----------
    stats : SuffStats
        Of the E-step (``log_likelihood`` is ``sum w log p(x)``).
    params : Params
        The parameters the E-step used.

    Returns
    -------
    float
    """
    n_features = params.means.shape[1]
    cov_type = params.covariance_type
    constants = params.log_mixing() + log_det_cholesky(params.prec_chol, cov_type,
                                                       n_features)
    constants = constants - 0.5 * n_features * math.log(2 * math.pi)
    d = params.means - stats.shift  # the E-step's means about the statistics' point
    nk, s1, s2 = stats.nk, stats.s1, stats.s2
    if cov_type == "full":
        cross = np.einsum("ki,kj->kij", s1, d)
        scatter = (unpack_symmetric(s2, n_features) - cross - cross.transpose(0, 2, 1)
                   + nk[:, None, None] * np.einsum("ki,kj->kij", d, d))
        precisions = params.prec_chol @ params.prec_chol.transpose(0, 2, 1)
        quadratic = np.einsum("kij,kij->", precisions, scatter)
    elif cov_type == "tied":
        cross = s1.T @ d
        scatter = s2 - cross - cross.T + (nk[:, None] * d).T @ d
        quadratic = np.einsum("ij,ij->", params.prec_chol @ params.prec_chol.T, scatter)
    elif cov_type == "diag":
        scatter = s2 - 2 * s1 * d + nk[:, None] * d**2
        quadratic = np.sum(params.prec_chol**2 * scatter)
    else:
        scatter = s2 - 2 * np.einsum("kd,kd->k", s1, d) + nk * np.einsum("kd,kd->k", d, d)
        quadratic = np.sum(params.prec_chol**2 * scatter)
    return float(constants @ nk - 0.5 * quadratic - stats.log_likelihood)


def _log_wishart_norm(dof, log_det_chol, n_features):
    dof = np.asarray(dof, dtype=np.float64)
    return -(dof * log_det_chol + dof * n_features * 0.5 * math.log(2.0)
             + gammaln(0.5 * (dof - np.arange(n_features)[:, None])).sum(axis=0)
             .reshape(dof.shape))


def lower_bound(entropy, params, prior_type):
    """scikit-learn's variational lower bound (constant terms dropped, not per sample).

    Parameters
    ----------
    entropy : float
        ``sum r log r`` of the E-step (:func:`responsibility_entropy`).
    params : VariationalParams
        The parameters after the M-step.
    prior_type : str
    """
    n_features = params.means.shape[1]
    cov_type = params.covariance_type
    log_det = log_det_cholesky(params.prec_chol, cov_type, n_features) - (
        0.5 * n_features * np.log(params.degrees_of_freedom))
    norms = _log_wishart_norm(params.degrees_of_freedom, log_det, n_features)
    n_components = len(params.mean_precision)
    log_wishart = n_components * float(norms) if cov_type == "tied" else float(np.sum(norms))
    concentration = params.weight_concentration
    if prior_type == "dirichlet_process":
        log_norm_weight = -float(np.sum(betaln(concentration[0], concentration[1])))
    else:
        log_norm_weight = float(gammaln(concentration.sum()) - np.sum(gammaln(concentration)))
    return (-entropy - log_wishart - log_norm_weight
            - 0.5 * n_features * float(np.sum(np.log(params.mean_precision))))
