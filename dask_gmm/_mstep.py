"""The M-step (``aggregate``): reduced statistics to mixture parameters.

:func:`m_step` turns the statistics of a whole pass (see ``_stats``) into new
weights, means, covariances and precision Cholesky factors, with scikit-learn's
``10 * eps`` mass and ``reg_covar`` and its error message when a covariance is
not positive definite. The conversions between covariances, precisions and
their Cholesky factors never invert a covariance.

Precision Cholesky factors follow scikit-learn: for ``full`` the factor ``U``
of component ``k`` satisfies ``precision_k = U U^T``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular

from ._stats import SECOND_MOMENTS

ILL_DEFINED_COVARIANCE = (
    "Fitting the mixture model failed because some components have "
    "ill-defined empirical covariance (for instance caused by singleton "
    "or collapsed samples). Try to decrease the number of components, "
    "increase reg_covar, or scale the input data."
)
FLOAT32_HINT = (
    " The numerical accuracy can also be improved by passing float64"
    " data instead of float32."
)



@dataclass
class Params:
    """Mixture parameters in float64, as the kernels use them.

    Attributes
    ----------
    weights : ndarray of shape (K,)
    means : ndarray of shape (K, D)
    prec_chol : ndarray
        Precision Cholesky factors: full ``(K, D, D)``, tied ``(D, D)``, diag
        ``(K, D)``, spherical ``(K,)``.
    covariance_type : str
    covariances : ndarray or None
        Shaped like ``prec_chol``; None when the parameters came from
        user-given precisions and no M-step has run yet.
    log_weights : ndarray of shape (K,) or None
        What the E-step adds to each component's log density; ``log(weights)``
        when None. A variational mixture puts its expected log weights and
        precision terms here (see ``_variational``).
    """

    weights: np.ndarray
    means: np.ndarray
    prec_chol: np.ndarray
    covariance_type: str
    covariances: np.ndarray | None = None
    log_weights: np.ndarray | None = None

    def log_mixing(self):
        """Per-component constant of the E-step's log densities, shape ``(K,)``."""
        if self.log_weights is not None:
            return np.array(self.log_weights, dtype=np.float64)
        with np.errstate(divide="ignore"):
            return np.log(self.weights)


def precision_cholesky(covariances, covariance_type, float32_input=False):
    """Cholesky factors of the precisions from covariances, never inverting one.

    Parameters
    ----------
    covariances : ndarray
        full ``(K, D, D)``, tied ``(D, D)``, diag ``(K, D)``, spherical ``(K,)``.
    covariance_type : str
    float32_input : bool
        Whether to add the float32 hint to the error message.

    Returns
    -------
    ndarray shaped like ``covariances``

    Raises
    ------
    ValueError
        With scikit-learn's message when a covariance is not positive definite.
    """
    message = ILL_DEFINED_COVARIANCE + (FLOAT32_HINT if float32_input else "")
    if covariance_type in ("full", "tied"):
        matrices = covariances if covariance_type == "full" else covariances[None]
        n_features = matrices.shape[-1]
        eye = np.eye(n_features)
        out = np.empty_like(matrices)
        for k, cov in enumerate(matrices):
            try:
                lower = np.linalg.cholesky(cov)
            except np.linalg.LinAlgError:
                raise ValueError(message) from None
            out[k] = solve_triangular(lower, eye, lower=True).T
        return out if covariance_type == "full" else out[0]
    if np.any(covariances <= 0.0) or not np.all(np.isfinite(covariances)):
        raise ValueError(message)
    return 1.0 / np.sqrt(covariances)


def precisions_from_cholesky(prec_chol, covariance_type):
    """Precisions ``U U^T`` (matrices) or ``u**2`` (vectors, scalars)."""
    if covariance_type == "full":
        return prec_chol @ prec_chol.transpose(0, 2, 1)
    if covariance_type == "tied":
        return prec_chol @ prec_chol.T
    return prec_chol**2


def precision_cholesky_from_precisions(precisions, covariance_type):
    """Upper factors ``U`` with ``precision = U U^T``, as scikit-learn defines them.

    Parameters
    ----------
    precisions : ndarray shaped by ``covariance_type``
    covariance_type : str

    Returns
    -------
    ndarray shaped like ``precisions``
    """
    if covariance_type in ("full", "tied"):
        matrices = precisions if covariance_type == "full" else precisions[None]
        # Reverse rows and columns, take the lower factor, reverse back: U.
        flipped = matrices[:, ::-1, ::-1]
        out = np.linalg.cholesky(flipped)[:, ::-1, ::-1]
        out = np.ascontiguousarray(out)
        return out if covariance_type == "full" else out[0]
    return np.sqrt(precisions)


def covariances_from_cholesky(prec_chol, covariance_type):
    """Covariances from precision Cholesky factors (used only for reporting)."""
    if covariance_type in ("full", "tied"):
        matrices = prec_chol if covariance_type == "full" else prec_chol[None]
        inv = np.linalg.inv(matrices)  # inverse of a triangular factor
        cov = inv.transpose(0, 2, 1) @ inv
        return cov if covariance_type == "full" else cov[0]
    return 1.0 / prec_chol**2


def gaussian_estimate(stats, covariance_type, reg_covar, eps):
    """Masses, means and covariances of the components from a pass's statistics.

    What scikit-learn's ``_estimate_gaussian_parameters`` returns: ``nk`` with
    ``10 * eps`` added, covariances with ``reg_covar`` on the diagonal. Both
    mixtures' M-steps start here.

    Returns
    -------
    nk : ndarray of shape (K,)
    means : ndarray of shape (K, D)
    covariances : ndarray shaped by ``covariance_type``
    """
    nk = stats.nk + 10 * eps
    local_means = stats.s1 / nk[:, None]  # means relative to the shift
    cov = SECOND_MOMENTS[covariance_type].covariance(stats.s2, nk, local_means, reg_covar)
    return nk, local_means + stats.shift, cov


def m_step(stats, covariance_type, reg_covar, eps, float32_input=False):
    """Turn reduced statistics into new parameters: the ``aggregate`` step.

    Parameters
    ----------
    stats : SuffStats
        Statistics of the whole data.
    covariance_type : str
    reg_covar : float
        Added to the diagonal of every covariance.
    eps : float
        Machine epsilon of the input dtype; ``10 * eps`` is added to each
        component's mass as scikit-learn does, so empty components stay finite.
    float32_input : bool
        Adds the float32 hint to the ill-defined covariance error.

    Returns
    -------
    params : Params
    mean_log_likelihood : float
        Mean per-sample log-likelihood under the parameters the pass used.
    """
    nk, means, cov = gaussian_estimate(stats, covariance_type, reg_covar, eps)
    prec_chol = precision_cholesky(cov, covariance_type, float32_input)
    params = Params(
        weights=nk / nk.sum(),
        means=means,
        prec_chol=prec_chol,
        covariance_type=covariance_type,
        covariances=cov,
    )
    mean_log_likelihood = stats.log_likelihood / stats.n if stats.n > 0 else -np.inf
    return params, mean_log_likelihood
