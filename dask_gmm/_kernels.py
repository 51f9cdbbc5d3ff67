"""Pure numpy kernels of the EM engine.

Nothing here knows about dask. Every function takes one block of rows (or the
reduced statistics) and returns numpy arrays, so each can be tested alone.

Conventions
-----------
``K`` is the number of components, ``D`` the number of features and ``n`` the
number of rows in the block at hand. Data are always handled *shifted*: the
kernels receive ``shift`` (a point near the centre of the mixture, shape
``(D,)``) and work with ``Y = X - shift``. The shift cancels out of every
covariance, and summing second moments about it keeps the digits that raw
``sum(x x^T)`` loses when the data sit far from the origin.

Precision Cholesky factors follow scikit-learn: for ``full`` the factor ``U``
of component ``k`` satisfies ``precision_k = U U^T`` and the whitened point is
``(x - mean_k) @ U``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular
from scipy.special import logsumexp

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

# Rows handled at once inside a chunk: small enough that the per-row-block
# temporaries (n x K x D for full covariances) stay in cache-friendly sizes.
ROW_BLOCK = 2048

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
class SuffStats:
    """Sufficient statistics of one or more row blocks, all in float64.

    Attributes
    ----------
    n : float
        Sum of the sample weights (the number of rows when unweighted).
    log_likelihood : float
        Sum over rows of ``weight * log p(x)`` under the parameters of the pass.
    nk : ndarray of shape (K,)
        Sum of weighted responsibilities per component.
    s1 : ndarray of shape (K, D)
        Sum of ``r * (x - shift)`` per component.
    s2 : ndarray
        Second moments about ``shift`` in the form the covariance type needs:
        full ``(K, D, D)``, tied ``(D, D)``, diag ``(K, D)``, spherical ``(K,)``.
    shift : ndarray of shape (D,)
        The point the moments were taken about; equal in every block of a pass.
    """

    n: float
    log_likelihood: float
    nk: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    shift: np.ndarray


def combine_stats(*parts):
    """Add the statistics of several blocks; associative, same type in and out.

    Parameters
    ----------
    *parts : SuffStats
        One or more statistics taken about the same shift.

    Returns
    -------
    SuffStats
    """
    first = parts[0]
    if len(parts) == 1:
        return first
    return SuffStats(
        n=math.fsum(p.n for p in parts),
        log_likelihood=math.fsum(p.log_likelihood for p in parts),
        nk=np.sum([p.nk for p in parts], axis=0),
        s1=np.sum([p.s1 for p in parts], axis=0),
        s2=np.sum([p.s2 for p in parts], axis=0),
        shift=first.shift,
    )


# --------------------------------------------------------------------------
# Log densities, one kernel per covariance type.


def _squared_mahalanobis_full(Y, means, prec_chol):
    """Squared Mahalanobis distances for full covariances.

    Parameters
    ----------
    Y : ndarray of shape (n, D)
        Shifted rows.
    means : ndarray of shape (K, D)
        Shifted means.
    prec_chol : ndarray of shape (K, D, D)

    Returns
    -------
    ndarray of shape (n, K)
    """
    n, n_features = Y.shape
    n_components = means.shape[0]
    # All components' whitening in one matrix product: columns k*D..(k+1)*D
    # of `stacked` hold prec_chol[k].
    stacked = prec_chol.transpose(1, 0, 2).reshape(n_features, -1)
    offsets = np.einsum("kd,kde->ke", means, prec_chol).reshape(-1)
    Z = Y @ stacked
    Z -= offsets
    # einsum squares and sums the short last axis in one pass, ~4x faster than
    # np.square followed by .sum(axis=2)
    Z = Z.reshape(n, n_components, n_features)
    return np.einsum("nkd,nkd->nk", Z, Z)


def _squared_mahalanobis_tied(Y, means, prec_chol):
    """Squared Mahalanobis distances for one shared covariance.

    Parameters
    ----------
    Y : ndarray of shape (n, D)
    means : ndarray of shape (K, D)
    prec_chol : ndarray of shape (D, D)

    Returns
    -------
    ndarray of shape (n, K)
    """
    Z = Y @ prec_chol
    M = means @ prec_chol
    out = Z @ M.T
    out *= -2.0
    out += np.einsum("nd,nd->n", Z, Z)[:, None]
    out += np.einsum("kd,kd->k", M, M)
    return out


def _squared_mahalanobis_diag(Y, means, prec_chol):
    """Squared Mahalanobis distances for diagonal covariances.

    Parameters
    ----------
    Y : ndarray of shape (n, D)
    means : ndarray of shape (K, D)
    prec_chol : ndarray of shape (K, D)

    Returns
    -------
    ndarray of shape (n, K)
    """
    precisions = prec_chol**2
    out = Y @ (means * precisions).T
    out *= -2.0
    out += (Y * Y) @ precisions.T
    out += np.einsum("kd,kd->k", means * means, precisions)
    return out


def _squared_mahalanobis_spherical(Y, means, prec_chol):
    """Squared Mahalanobis distances for one variance per component.

    Parameters
    ----------
    Y : ndarray of shape (n, D)
    means : ndarray of shape (K, D)
    prec_chol : ndarray of shape (K,)

    Returns
    -------
    ndarray of shape (n, K)
    """
    precisions = prec_chol**2
    out = Y @ means.T
    out *= -2.0
    out += np.einsum("nd,nd->n", Y, Y)[:, None]
    out += np.einsum("kd,kd->k", means, means)
    out *= precisions
    return out


SQUARED_MAHALANOBIS = {
    "full": _squared_mahalanobis_full,
    "tied": _squared_mahalanobis_tied,
    "diag": _squared_mahalanobis_diag,
    "spherical": _squared_mahalanobis_spherical,
}


def log_det_cholesky(prec_chol, covariance_type, n_features):
    """Log-determinant of the precision Cholesky factors.

    Parameters
    ----------
    prec_chol : ndarray
        full ``(K, D, D)``, tied ``(D, D)``, diag ``(K, D)``, spherical ``(K,)``.
    covariance_type : str
    n_features : int

    Returns
    -------
    ndarray of shape (K,) or float (tied)
    """
    if covariance_type == "full":
        return np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
    if covariance_type == "tied":
        return np.log(np.diagonal(prec_chol)).sum()
    if covariance_type == "diag":
        return np.log(prec_chol).sum(axis=1)
    return n_features * np.log(prec_chol)


@dataclass
class Params:
    """Mixture parameters in float64, as the kernels use them.

    Attributes
    ----------
    weights : ndarray of shape (K,)
    means : ndarray of shape (K, D)
    prec_chol : ndarray
        Precision Cholesky factors, shaped by ``covariance_type``.
    covariance_type : str
    covariances : ndarray or None
        Shaped like ``prec_chol``; None when the parameters came from
        user-given precisions and no M-step has run yet.
    """

    weights: np.ndarray
    means: np.ndarray
    prec_chol: np.ndarray
    covariance_type: str
    covariances: np.ndarray | None = None

    @property
    def shift(self):
        """The mixture's mean, the point every pass sums its moments about."""
        return self.weights @ self.means / self.weights.sum()


def weighted_log_prob(Y, params, shift):
    """Per-component ``log(weight_k) + log N(x | mean_k, cov_k)``.

    Parameters
    ----------
    Y : ndarray of shape (n, D)
        Rows minus ``shift``, float64.
    params : Params
    shift : ndarray of shape (D,)

    Returns
    -------
    ndarray of shape (n, K)
    """
    n_features = Y.shape[1]
    maha = SQUARED_MAHALANOBIS[params.covariance_type](
        Y, params.means - shift, params.prec_chol
    )
    log_det = log_det_cholesky(params.prec_chol, params.covariance_type, n_features)
    maha += n_features * math.log(2 * math.pi)
    maha *= -0.5
    maha += log_det
    with np.errstate(divide="ignore"):
        maha += np.log(params.weights)
    return maha


def _second_moments(Y, Rw, covariance_type):
    """Second moments about the shift for one row block.

    Parameters
    ----------
    Y : ndarray of shape (n, D)
        Shifted rows.
    Rw : ndarray of shape (n, K)
        Responsibilities times sample weights.
    covariance_type : str

    Returns
    -------
    ndarray
        full ``(K, D, D)``, tied ``(D, D)``, diag ``(K, D)``, spherical ``(K,)``.
    """
    if covariance_type == "full":
        # One (D, n) @ (n, D) product per component; on row blocks this beats
        # a single product over an (n, K*D) temporary, which leaves the cache.
        YT = np.ascontiguousarray(Y.T)
        return np.stack([(YT * Rw[:, k]) @ Y for k in range(Rw.shape[1])])
    if covariance_type == "tied":
        row_weights = Rw.sum(axis=1)
        return (Y * row_weights[:, None]).T @ Y
    if covariance_type == "diag":
        return Rw.T @ (Y * Y)
    return Rw.T @ np.einsum("nd,nd->n", Y, Y)


def empty_stats(n_components, n_features, covariance_type, shift):
    """Zero statistics, the identity of :func:`combine_stats`.

    Returns
    -------
    SuffStats
    """
    s2_shape = {
        "full": (n_components, n_features, n_features),
        "tied": (n_features, n_features),
        "diag": (n_components, n_features),
        "spherical": (n_components,),
    }[covariance_type]
    return SuffStats(
        n=0.0,
        log_likelihood=0.0,
        nk=np.zeros(n_components),
        s1=np.zeros((n_components, n_features)),
        s2=np.zeros(s2_shape),
        shift=np.asarray(shift, dtype=np.float64),
    )


def _accumulate(stats, Y, R, w, covariance_type, second_moments=True):
    """Add one row block's responsibility-weighted sums into ``stats``."""
    Rw = R if w is None else R * w[:, None]
    stats.nk += Rw.sum(axis=0)
    stats.s1 += Rw.T @ Y
    if second_moments:
        stats.s2 += _second_moments(Y, Rw, covariance_type)
    stats.n += Y.shape[0] if w is None else w.sum()


def _row_blocks(X, w, shift):
    """Yield ``(start, Y, w)`` for row blocks of ``X`` shifted, in float64."""
    for start in range(0, X.shape[0], ROW_BLOCK):
        stop = start + ROW_BLOCK
        Y = np.asarray(X[start:stop], dtype=np.float64) - shift
        yield start, Y, (None if w is None else np.asarray(w[start:stop], np.float64))


class NonFiniteInputError(ValueError):
    """Input rows hold NaN or infinity."""


def check_finite_rows(X, block_start=0, where="", row_numbers=None):
    """Raise a clear error naming the first rows of ``X`` that are not finite.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    block_start : int
        Index of ``X[0]`` in the whole input, for the message.
    where : str
        Extra context for the message (e.g. which chunk).
    row_numbers : ndarray of shape (n,) or None
        Index of each row of ``X`` in the whole input, when not contiguous.
    """
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        positions = np.flatnonzero(bad)
        rows = positions + block_start if row_numbers is None else row_numbers[positions]
        kind = "NaN" if np.isnan(X[bad]).any() else "infinity"
        more = " and more" if len(rows) > 5 else ""
        raise NonFiniteInputError(
            f"Input X contains {kind}{where}: rows {rows[:5].tolist()}{more} are "
            "not finite. Remove or impute them before fitting."
        )


def _where(chunk_index):
    return "" if chunk_index is None else f" in chunk {chunk_index}"


def _responsibilities(wlp):
    """Responsibilities and log-normaliser from weighted log densities, in place.

    Parameters
    ----------
    wlp : ndarray of shape (n, K)
        Overwritten with the responsibilities.

    Returns
    -------
    resp : ndarray of shape (n, K)
        The same memory as ``wlp``.
    log_norm : ndarray of shape (n,)
        ``log sum_k exp(wlp[:, k])``.
    """
    top = wlp.max(axis=1)
    top[~np.isfinite(top)] = 0.0
    wlp -= top[:, None]
    resp = np.exp(wlp, out=wlp)
    total = resp.sum(axis=1)
    resp /= total[:, None]
    with np.errstate(divide="ignore"):
        log_norm = np.log(total)
    log_norm += top
    return resp, log_norm


def e_step_stats(X, params, shift, sample_weight=None, row_start=0, chunk_index=None):
    """E-step and partial M-step sums for one chunk: the ``chunk`` function.

    Parameters
    ----------
    X : ndarray of shape (n, D)
        One row block, any float dtype.
    params : Params
        Parameters of the current EM round (float64).
    shift : ndarray of shape (D,)
    sample_weight : ndarray of shape (n,) or None
    row_start : int
        Index of ``X[0]`` in the whole input (for error messages).
    chunk_index : int or None
        Which chunk this is (for error messages).

    Returns
    -------
    SuffStats
    """
    n_components, n_features = params.means.shape
    stats = empty_stats(n_components, n_features, params.covariance_type, shift)
    log_likelihood = []
    for start, Y, w in _row_blocks(X, sample_weight, shift):
        with np.errstate(invalid="ignore", over="ignore"):
            R, log_norm = _responsibilities(weighted_log_prob(Y, params, shift))
        if not np.isfinite(log_norm).all():
            check_finite_rows(Y, row_start + start, _where(chunk_index))
        _accumulate(stats, Y, R, w, params.covariance_type)
        log_likelihood.append(log_norm.sum() if w is None else log_norm @ w)
    stats.log_likelihood = math.fsum(log_likelihood)
    return stats


def hard_assignment_stats(
    X,
    centers,
    covariance_type,
    shift,
    sample_weight=None,
    row_start=0,
    chunk_index=None,
    second_moments=True,
):
    """Sums for a Lloyd (k-means) step: each row belongs to its nearest center.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    centers : ndarray of shape (K, D)
    covariance_type : str
        Decides the form of the second moments.
    shift : ndarray of shape (D,)
    sample_weight : ndarray of shape (n,) or None
    row_start, chunk_index : int
        For error messages.
    second_moments : bool
        When False, ``s2`` stays zero (a plain Lloyd step needs only ``s1``).

    Returns
    -------
    SuffStats
        ``log_likelihood`` holds minus the (weighted) inertia.
    """
    n_components, n_features = centers.shape
    stats = empty_stats(n_components, n_features, covariance_type, shift)
    shifted_centers = centers - shift
    center_norms = np.einsum("kd,kd->k", shifted_centers, shifted_centers)
    inertia = []
    for start, Y, w in _row_blocks(X, sample_weight, shift):
        with np.errstate(invalid="ignore", over="ignore"):
            dist = Y @ shifted_centers.T
            dist *= -2.0
            dist += center_norms
            labels = dist.argmin(axis=1)
            closest = dist[np.arange(len(labels)), labels] + np.einsum("nd,nd->n", Y, Y)
        if not np.isfinite(closest).all():
            check_finite_rows(Y, row_start + start, _where(chunk_index))
        R = np.zeros((Y.shape[0], n_components))
        R[np.arange(Y.shape[0]), labels] = 1.0
        _accumulate(stats, Y, R, w, covariance_type, second_moments)
        inertia.append(closest.sum() if w is None else closest @ w)
    stats.log_likelihood = -math.fsum(inertia)
    return stats


def responsibility_stats(X, resp, covariance_type, shift, sample_weight=None,
                         row_start=0, chunk_index=None):
    """Sums for given responsibilities (the ``'random'`` initialisation).

    Parameters
    ----------
    X : ndarray of shape (n, D)
    resp : ndarray of shape (n, K)
    covariance_type : str
    shift : ndarray of shape (D,)
    sample_weight : ndarray of shape (n,) or None

    Returns
    -------
    SuffStats
    """
    check_finite_rows(X, row_start, _where(chunk_index))
    n_components = resp.shape[1]
    stats = empty_stats(n_components, X.shape[1], covariance_type, shift)
    for start, Y, w in _row_blocks(X, sample_weight, shift):
        R = np.asarray(resp[start:start + ROW_BLOCK], dtype=np.float64)
        _accumulate(stats, Y, R, w, covariance_type)
    return stats


# --------------------------------------------------------------------------
# The M-step (``aggregate``): statistics -> parameters.


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
    nk = stats.nk + 10 * eps
    local_means = stats.s1 / nk[:, None]  # means relative to the shift
    if covariance_type == "full":
        cov = stats.s2 / nk[:, None, None]
        cov -= local_means[:, :, None] * local_means[:, None, :]
        n_features = cov.shape[-1]
        cov[:, np.arange(n_features), np.arange(n_features)] += reg_covar
    elif covariance_type == "tied":
        cov = stats.s2 - (nk[:, None] * local_means).T @ local_means
        cov /= nk.sum()
        cov.flat[:: cov.shape[0] + 1] += reg_covar
    elif covariance_type == "diag":
        cov = stats.s2 / nk[:, None] - local_means**2 + reg_covar
    else:
        n_features = local_means.shape[1]
        cov = (stats.s2 / nk - (local_means**2).sum(axis=1)) / n_features + reg_covar
    prec_chol = precision_cholesky(cov, covariance_type, float32_input)
    params = Params(
        weights=nk / nk.sum(),
        means=local_means + stats.shift,
        prec_chol=prec_chol,
        covariance_type=covariance_type,
        covariances=cov,
    )
    mean_log_likelihood = stats.log_likelihood / stats.n if stats.n > 0 else -np.inf
    return params, mean_log_likelihood


# --------------------------------------------------------------------------
# Per-row outputs (predict, predict_proba, score_samples).


def log_resp_and_norm(X, params):
    """Log responsibilities and per-row log-likelihood for one block.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    params : Params

    Returns
    -------
    log_resp : ndarray of shape (n, K), float64
    log_norm : ndarray of shape (n,), float64
    """
    shift = params.shift
    n = X.shape[0]
    n_components = params.means.shape[0]
    log_resp = np.empty((n, n_components))
    log_norm = np.empty(n)
    for start, Y, _ in _row_blocks(X, None, shift):
        wlp = weighted_log_prob(Y, params, shift)
        norm = logsumexp(wlp, axis=1)
        stop = start + Y.shape[0]
        log_norm[start:stop] = norm
        log_resp[start:stop] = wlp - norm[:, None]
    return log_resp, log_norm


def predict_block(X, params):
    """Most likely component of each row, shape ``(n,)``, int64."""
    return log_resp_and_norm(X, params)[0].argmax(axis=1)


def predict_proba_block(X, params, dtype):
    """Responsibilities of each row, shape ``(n, K)``, in ``dtype``."""
    return np.exp(log_resp_and_norm(X, params)[0]).astype(dtype, copy=False)


def score_samples_block(X, params, dtype):
    """Log-likelihood of each row, shape ``(n,)``, in ``dtype``."""
    return log_resp_and_norm(X, params)[1].astype(dtype, copy=False)
