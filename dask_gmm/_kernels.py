"""Numpy kernels of the EM engine (plus one compiled kernel, in ``_fused``).

Nothing here knows about dask. :func:`chunk_pass` takes one block of rows and a
list of *requests* (an E-step, a k-means step, random responsibilities, a
log-likelihood) and returns one :class:`SuffStats` per request; several
requests on the same chunk share the row conversion and the quadratic
features, which is how a sweep's candidates share one read. :func:`combine_stats`
adds statistics up and :func:`m_step` turns them into parameters.

Conventions
-----------
``K`` is the number of components, ``D`` the number of features, ``T = D (D + 1) / 2``
and ``n`` the number of rows at hand. Rows are always handled *shifted*: each
chunk subtracts a point of its own (the mean of its first rows) and sums its
moments about it, which keeps the digits that raw ``sum(x x^T)`` loses when the
data sit far from the origin. :func:`combine_stats` moves moments taken about
different points to a common one exactly (the parallel-axis identity).

Precision Cholesky factors follow scikit-learn: for ``full`` the factor ``U``
of component ``k`` satisfies ``precision_k = U U^T``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

# Rows handled at once inside a chunk: enough that numpy's per-call cost (paid
# holding the GIL) is small, few enough that the per-block temporaries (n x K x D
# whitened rows, n x T quadratic features) stay near BLOCK_BYTES.
BLOCK_BYTES = 4 * 2**20
MIN_BLOCK_ROWS, MAX_BLOCK_ROWS = 512, 16384
ROW_BLOCK = None  # a fixed number of rows instead (tests use it)
# Rows whose mean is a chunk's shift (fixed, so results do not depend on blocks).
SHIFT_ROWS = 1024

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


# |x| beyond this overflows float64 in the second moments (x**2 summed over rows).
LARGEST_MAGNITUDE = 1e100


def check_rows(rows, block_start=0, where=""):
    """Raise a clear error for rows that are not finite or too large to square safely."""
    low, high = float(rows.min(initial=0.0)), float(rows.max(initial=0.0))
    if not (math.isfinite(low) and math.isfinite(high)):
        check_finite_rows(rows, block_start, where)
    largest = max(-low, high)
    if largest > LARGEST_MAGNITUDE:
        position = int(np.flatnonzero((np.abs(rows) > LARGEST_MAGNITUDE).any(axis=1))[0])
        scale = 10.0 ** math.ceil(math.log10(largest / 1e3))
        raise NonFiniteInputError(
            f"Input X holds values up to {largest:.3g}{where} (row {block_start + position}): "
            f"beyond {LARGEST_MAGNITUDE:g} their squares overflow float64. Scale the data "
            f"first, e.g. X / {scale:g}."
        )


def _where(chunk_index):
    return "" if chunk_index is None else f" in chunk {chunk_index}"


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
    """

    weights: np.ndarray
    means: np.ndarray
    prec_chol: np.ndarray
    covariance_type: str
    covariances: np.ndarray | None = None


# --------------------------------------------------------------------------
# Sufficient statistics and their combine.


def triu_indices(n_features):
    """Row and column of each packed upper-triangle entry, row by row."""
    return np.triu_indices(n_features)


def unpack_symmetric(packed, n_features):
    """``(..., T)`` packed upper triangles to ``(..., D, D)`` symmetric matrices."""
    rows, cols = triu_indices(n_features)
    out = np.empty(packed.shape[:-1] + (n_features, n_features))
    out[..., rows, cols] = packed
    out[..., cols, rows] = packed
    return out


@dataclass
class SuffStats:
    """Sufficient statistics of one or more row blocks, all in float64.

    Attributes
    ----------
    n : float
        Sum of the sample weights (the number of rows when unweighted).
    log_likelihood : float
        Sum over rows of ``weight * log p(x)`` (minus the inertia for a k-means step).
    nk : ndarray of shape (K,)
        Sum of weighted responsibilities per component.
    s1 : ndarray of shape (K, D)
        Sum of ``r * (x - shift)`` per component.
    s2 : ndarray or None
        Second moments about ``shift`` in the form the covariance type needs:
        full ``(K, T)`` packed upper triangles of ``sum r (x-shift)(x-shift)^T``,
        tied ``(D, D)`` (summed over all rows), diag ``(K, D)``, spherical
        ``(K,)``. None when not asked for.
    shift : ndarray of shape (D,)
        The point the moments were taken about.
    covariance_type : str
    """

    n: float
    log_likelihood: float
    nk: np.ndarray
    s1: np.ndarray
    s2: np.ndarray | None
    shift: np.ndarray
    covariance_type: str = "full"


def empty_stats(n_components, n_features, covariance_type, shift, second_moments=True):
    """Zero statistics about ``shift``.

    Returns
    -------
    SuffStats
    """
    s2_shape = {
        "full": (n_components, n_features * (n_features + 1) // 2),
        "tied": (n_features, n_features),
        "diag": (n_components, n_features),
        "spherical": (n_components,),
    }[covariance_type]
    return SuffStats(
        n=0.0,
        log_likelihood=0.0,
        nk=np.zeros(n_components),
        s1=np.zeros((n_components, n_features)),
        s2=np.zeros(s2_shape) if second_moments else None,
        shift=np.asarray(shift, dtype=np.float64),
        covariance_type=covariance_type,
    )


def translate_stats(stats, new_shift):
    """The same statistics with moments taken about ``new_shift`` (exact identity).

    With ``d = shift - new_shift``, ``x - new_shift = (x - shift) + d``, so
    ``s1' = s1 + nk d`` and ``s2' = s2 + s1 d^T + d s1^T + nk d d^T``.
    """
    d = stats.shift - new_shift
    if not d.any():
        return stats
    nk, s1, s2 = stats.nk, stats.s1, stats.s2
    if s2 is not None:
        kind = stats.covariance_type
        if kind == "full":
            rows, cols = triu_indices(len(d))
            s2 = s2 + s1[:, rows] * d[cols] + d[rows] * s1[:, cols] + nk[:, None] * (
                d[rows] * d[cols]
            )
        elif kind == "tied":
            total = s1.sum(axis=0)
            s2 = s2 + np.outer(total, d) + np.outer(d, total) + stats.n * np.outer(d, d)
        elif kind == "diag":
            s2 = s2 + 2 * s1 * d + nk[:, None] * d**2
        else:
            s2 = s2 + 2 * s1 @ d + nk * (d @ d)
    return SuffStats(
        n=stats.n,
        log_likelihood=stats.log_likelihood,
        nk=nk,
        s1=s1 + nk[:, None] * d,
        s2=s2,
        shift=np.asarray(new_shift, dtype=np.float64),
        covariance_type=stats.covariance_type,
    )


def combine_stats(*parts):
    """Add the statistics of several blocks; associative, same type in and out.

    Parts taken about different points are first moved to their
    weight-averaged point, so the result does not depend on the tree shape
    beyond rounding.

    Parameters
    ----------
    *parts : SuffStats

    Returns
    -------
    SuffStats
    """
    if len(parts) == 1:
        return parts[0]
    total = math.fsum(p.n for p in parts)
    if total > 0:
        shift = sum(p.n * p.shift for p in parts) / total
    else:
        shift = parts[0].shift
    moved = [translate_stats(p, shift) for p in parts]
    first = moved[0]
    return SuffStats(
        n=total,
        log_likelihood=math.fsum(p.log_likelihood for p in moved),
        nk=np.sum([p.nk for p in moved], axis=0),
        s1=np.sum([p.s1 for p in moved], axis=0),
        s2=None if first.s2 is None else np.sum([p.s2 for p in moved], axis=0),
        shift=shift,
        covariance_type=first.covariance_type,
    )


def combine_stat_lists(*lists):
    """Combine lists of statistics element by element (one list per chunk)."""
    return [combine_stats(*items) for items in zip(*lists)]


# --------------------------------------------------------------------------
# One block of shifted rows, with lazily built quadratic features.


class RowBlock:
    """One block of a chunk's rows and what several requests can share.

    Parameters
    ----------
    rows : ndarray of shape (n, D)
        The rows as stored (float32 or float64), finite.
    shift : ndarray of shape (D,)
        The chunk's shift.
    w : ndarray of shape (n,) or None
        Sample weights.
    start : int
        Index of the first row within the chunk.
    """

    def __init__(self, rows, shift, w, start):
        self.rows = rows
        self.shift = shift
        self.w = w
        self.start = start
        self._Y = None
        self._quad_t = None

    @property
    def n(self):
        return self.rows.shape[0]

    @property
    def Y(self):
        """Rows minus the shift in float64, shape ``(n, D)``; built on first use.

        The compiled full-covariance kernel reads ``rows`` directly, so a pass
        of full-covariance E-steps never makes this copy.
        """
        if self._Y is None:
            self._Y = np.subtract(self.rows, self.shift, dtype=np.float64)
        return self._Y

    @property
    def quad_t(self):
        """Packed products ``y_i y_j`` (i <= j), transposed: shape ``(T, n)``; built once.

        Built row by row of the transposed layout, where every write is a
        contiguous run (twice as fast as filling ``(n, T)`` column slices).
        """
        if self._quad_t is None:
            n, n_features = self.Y.shape
            YT = np.ascontiguousarray(self.Y.T)
            quad_t = np.empty((n_features * (n_features + 1) // 2, n))
            offset = 0
            for i in range(n_features):
                width = n_features - i
                np.multiply(YT[i : i + 1], YT[i:], out=quad_t[offset : offset + width])
                offset += width
            self._quad_t = quad_t
        return self._quad_t

    def weighted(self, R):
        """Responsibilities times sample weights."""
        return R if self.w is None else R * self.w[:, None]

    def total_weight(self):
        return float(self.n) if self.w is None else float(self.w.sum())


def block_rows(row_width):
    """Rows per block for temporaries of ``row_width`` float64 numbers per row."""
    if ROW_BLOCK is not None:
        return ROW_BLOCK
    return int(np.clip(BLOCK_BYTES // (8 * max(1, row_width)), MIN_BLOCK_ROWS,
                       MAX_BLOCK_ROWS))


def _row_width(params):
    n_components, n_features = params.means.shape
    if params.covariance_type == "full":
        return max(n_components * n_features, n_features * (n_features + 1) // 2)
    return max(n_components, n_features)


def _row_blocks(X, sample_weight, rows):
    """Yield ``(start, rows, weights)`` for blocks of ``rows`` rows of ``X``.

    float32 and float64 rows keep their dtype (no upcast copy); any other
    dtype becomes float64.
    """
    dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
    for start in range(0, X.shape[0], rows):
        stop = start + rows
        w = None if sample_weight is None else np.asarray(sample_weight[start:stop], np.float64)
        yield start, np.asarray(X[start:stop], dtype=dtype), w


def chunk_shift(X):
    """A point near the chunk's data: the mean of its first row block."""
    head = np.asarray(X[:SHIFT_ROWS], dtype=np.float64)
    if head.shape[0] == 0:  # an empty chunk (dask allows them)
        return np.zeros(X.shape[1])
    shift = head.mean(axis=0)
    if not np.isfinite(shift).all():
        shift = np.zeros(X.shape[1])  # the row check reports the bad rows
    return shift


# --------------------------------------------------------------------------
# Log densities, one kernel per covariance type.


def _squared_mahalanobis_full(block, means, params):
    """``|(y - m_k) U_k|^2`` for all components through one whitening product.

    Columns ``k*D .. (k+1)*D`` of the stacked factor hold ``U_k``, so
    ``Y @ stacked`` whitens the rows for every component at once. Whitening
    before squaring keeps the accuracy of scikit-learn's form; expanding
    ``y^T Lambda y - 2 y^T Lambda m + m^T Lambda m`` is cheaper but lost 4e-5 in
    the log-density of a component with condition number 1e8.
    """
    n, n_features = block.Y.shape
    prec_chol = params.prec_chol
    n_components = prec_chol.shape[0]
    stacked = prec_chol.transpose(1, 0, 2).reshape(n_features, -1)
    offsets = np.einsum("kd,kde->ke", means, prec_chol).reshape(-1)
    Z = block.Y @ stacked
    Z -= offsets
    # einsum squares and sums the short last axis in one pass, ~4x faster than
    # np.square followed by .sum(axis=2)
    Z = Z.reshape(n, n_components, n_features)
    return np.einsum("nkd,nkd->nk", Z, Z)


def _squared_mahalanobis_tied(block, means, params):
    """Whitened distances for one shared covariance: one ``(n, D) @ (D, D)`` product."""
    Z = block.Y @ params.prec_chol
    M = means @ params.prec_chol
    out = Z @ M.T
    out *= -2.0
    out += np.einsum("nd,nd->n", Z, Z)[:, None]
    out += np.einsum("kd,kd->k", M, M)
    return out


def _squared_mahalanobis_diag(block, means, params):
    """Distances for diagonal covariances through two ``(n, D) @ (D, K)`` products."""
    precisions = params.prec_chol**2
    Y = block.Y
    out = Y @ (means * precisions).T
    out *= -2.0
    out += (Y * Y) @ precisions.T
    out += np.einsum("kd,kd->k", means * means, precisions)
    return out


def _squared_mahalanobis_spherical(block, means, params):
    """Distances for one variance per component."""
    precisions = params.prec_chol**2
    Y = block.Y
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
    """Log-determinant of the precision Cholesky factors, shape ``(K,)`` (tied: scalar)."""
    if covariance_type == "full":
        return np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
    if covariance_type == "tied":
        return np.log(np.diagonal(prec_chol)).sum()
    if covariance_type == "diag":
        return np.log(prec_chol).sum(axis=1)
    return n_features * np.log(prec_chol)


def weighted_log_prob(block, params, shift):
    """Per-component ``log(weight_k) + log N(x | mean_k, cov_k)``, shape ``(n, K)``.

    Parameters
    ----------
    block : RowBlock
        Rows minus ``shift``.
    params : Params
    shift : ndarray of shape (D,)
    """
    n_features = block.Y.shape[1]
    maha = SQUARED_MAHALANOBIS[params.covariance_type](block, params.means - shift, params)
    np.maximum(maha, 0.0, out=maha)  # rounding in the expanded forms
    log_det = log_det_cholesky(params.prec_chol, params.covariance_type, n_features)
    maha += n_features * math.log(2 * math.pi)
    maha *= -0.5
    maha += log_det
    with np.errstate(divide="ignore"):
        maha += np.log(params.weights)
    return maha


def responsibilities(wlp):
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
    # exp() of -708..-745 gives subnormal numbers, which make every later
    # product with them ~10x slower on x86; they are below any tolerance, so
    # flush them to exact zeros.
    np.putmask(wlp, wlp < -700.0, -np.inf)
    resp = np.exp(wlp, out=wlp)
    total = resp.sum(axis=1)
    resp /= total[:, None]
    with np.errstate(divide="ignore"):
        log_norm = np.log(total)
    log_norm += top
    return resp, log_norm


def _accumulate(stats, block, R):
    """Add one block's responsibility-weighted sums into ``stats``."""
    Rw = block.weighted(R)
    Y = block.Y
    stats.nk += Rw.sum(axis=0)
    stats.s1 += Rw.T @ Y
    stats.n += block.total_weight()
    if stats.s2 is None:
        return
    kind = stats.covariance_type
    if kind == "full":
        stats.s2 += (block.quad_t @ Rw).T
    elif kind == "tied":
        Yw = Y if block.w is None else Y * block.w[:, None]
        stats.s2 += Yw.T @ Y
    elif kind == "diag":
        stats.s2 += Rw.T @ (Y * Y)
    else:
        stats.s2 += Rw.T @ np.einsum("nd,nd->n", Y, Y)


# --------------------------------------------------------------------------
# Requests: what a pass computes from each chunk. ``accumulate(block, stats,
# context)`` adds one row block into ``stats`` and returns the block's share of
# ``log_likelihood`` (or None); ``chunk_pass`` sums the shares exactly.


def _weighted_sum(values, w):
    return float(values.sum() if w is None else values @ w)


def _full_e_step(block, params, stats):
    """The E-step for full covariances through the compiled kernel (see ``_fused``)."""
    # Imported on first use: numba and the compiled code cost a process ~150 MiB,
    # which fits of the other covariance types need not pay.
    from . import _fused

    n_components, n_features = params.means.shape
    prec_chol = params.prec_chol
    whiten_t = np.ascontiguousarray(prec_chol.transpose(0, 2, 1).reshape(-1, n_features))
    offsets = np.einsum("kd,kde->ke", params.means - stats.shift, prec_chol)
    with np.errstate(divide="ignore"):
        log_const = np.log(params.weights)
    log_const += log_det_cholesky(prec_chol, "full", n_features)
    log_const -= 0.5 * n_features * math.log(2 * math.pi)
    w = np.empty(0) if block.w is None else np.ascontiguousarray(block.w, dtype=np.float64)
    stats.n += block.total_weight()
    return _fused.full_e_step(
        np.ascontiguousarray(block.rows), stats.shift, w, whiten_t, np.ascontiguousarray(offsets),
        log_const, _fused.tile_rows(n_components, n_features),
        stats.nk, stats.s1, stats.s2)


class EStep:
    """E-step plus the partial M-step sums under ``params`` (one EM iteration)."""

    def __init__(self, params):
        self.params = params

    def row_width(self):
        if self.params.covariance_type == "full":  # the compiled kernel works in tiles
            return self.params.means.shape[1]
        return _row_width(self.params)

    def empty(self, n_features, shift):
        return empty_stats(len(self.params.weights), n_features,
                           self.params.covariance_type, shift)

    def accumulate(self, block, stats, context=None):
        if self.params.covariance_type == "full":
            return _full_e_step(block, self.params, stats)
        with np.errstate(invalid="ignore", over="ignore"):
            R, log_norm = responsibilities(weighted_log_prob(block, self.params, stats.shift))
        _accumulate(stats, block, R)
        return _weighted_sum(log_norm, block.w)


class HardAssignment:
    """A k-means (Lloyd) step: each row belongs wholly to its nearest center.

    ``log_likelihood`` holds minus the weighted inertia. With
    ``second_moments=True`` the statistics also give the mixture parameters
    of that hard assignment (the 'kmeans' initialisation).
    """

    def __init__(self, centers, covariance_type, second_moments=True):
        self.centers = centers
        self.covariance_type = covariance_type
        self.second_moments = second_moments

    def row_width(self):
        n_components, n_features = self.centers.shape
        if self.covariance_type == "full" and self.second_moments:
            return max(n_components, n_features * (n_features + 1) // 2)
        return max(n_components, n_features)

    def empty(self, n_features, shift):
        return empty_stats(len(self.centers), n_features, self.covariance_type, shift,
                           self.second_moments)

    def accumulate(self, block, stats, context=None):
        centers = self.centers - stats.shift
        Y = block.Y
        dist = Y @ centers.T
        dist *= -2.0
        dist += np.einsum("kd,kd->k", centers, centers)
        labels = dist.argmin(axis=1)
        rows = np.arange(block.n)
        closest = dist[rows, labels] + np.einsum("nd,nd->n", Y, Y)
        R = np.zeros((block.n, len(centers)))
        R[rows, labels] = 1.0
        _accumulate(stats, block, R)
        return -_weighted_sum(closest, block.w)


class RandomResponsibilities:
    """Sums for uniform random responsibilities (the 'random' initialisation).

    Each chunk draws from its own generator, seeded by ``(seed, chunk index)``,
    so the result depends on the seed and the chunking only.
    """

    def __init__(self, n_components, covariance_type, seed):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.seed = seed

    def row_width(self):
        return self.n_components

    def empty(self, n_features, shift):
        return empty_stats(self.n_components, n_features, self.covariance_type, shift)

    def start_chunk(self, chunk_index):
        """This chunk's random stream (kept by the caller: requests are shared by threads)."""
        return np.random.default_rng([self.seed, chunk_index or 0])

    def accumulate(self, block, stats, rng):
        resp = rng.uniform(size=(block.n, self.n_components))
        resp /= resp.sum(axis=1, keepdims=True)
        _accumulate(stats, block, resp)


class LogLikelihood:
    """Only ``n`` and ``sum(weight * log p(x))`` under ``params`` (for BIC/AIC)."""

    def __init__(self, params):
        self.params = params

    def row_width(self):
        return _row_width(self.params)

    def empty(self, n_features, shift):
        return empty_stats(0, n_features, "spherical", shift, second_moments=False)

    def accumulate(self, block, stats, context=None):
        with np.errstate(invalid="ignore", over="ignore"):
            _, log_norm = responsibilities(weighted_log_prob(block, self.params, stats.shift))
        stats.n += block.total_weight()
        return _weighted_sum(log_norm, block.w)


def chunk_pass(X, requests, sample_weight=None, row_start=0, chunk_index=None):
    """Every request's statistics from one chunk: the ``chunk`` function of a pass.

    The rows are converted, shifted and checked once, and the quadratic
    features built once, for all requests.

    Parameters
    ----------
    X : ndarray of shape (n, D)
        One row chunk, any float dtype.
    requests : list of EStep, HardAssignment, RandomResponsibilities or LogLikelihood
    sample_weight : ndarray of shape (n,) or None
    row_start : int
        Index of ``X[0]`` in the whole input (for error messages).
    chunk_index : int or None
        Which chunk this is (for error messages and random streams).

    Returns
    -------
    list of SuffStats
        One per request, in order.
    """
    n_features = X.shape[1]
    shift = chunk_shift(X)
    stats = [request.empty(n_features, shift) for request in requests]
    # Per-chunk state lives here, never on the requests: one request object is
    # shared by every chunk task, and tasks run in parallel threads.
    contexts = [request.start_chunk(chunk_index) if hasattr(request, "start_chunk")
                else None for request in requests]
    # per-block log-likelihood contributions, summed exactly at the end
    partials = [[] for _ in requests]
    rows_per_block = block_rows(max(r.row_width() for r in requests))
    for start, rows, w in _row_blocks(X, sample_weight, rows_per_block):
        check_rows(rows, row_start + start, _where(chunk_index))
        block = RowBlock(rows, shift, w, start)
        for request, st, context, partial in zip(requests, stats, contexts, partials):
            contribution = request.accumulate(block, st, context)
            if contribution is not None:
                partial.append(contribution)
    for st, partial in zip(stats, partials):
        st.log_likelihood = math.fsum(partial)
    return stats


def e_step_stats(X, params, sample_weight=None, row_start=0, chunk_index=None):
    """One chunk's E-step statistics (a single-request :func:`chunk_pass`)."""
    return chunk_pass(X, [EStep(params)], sample_weight, row_start, chunk_index)[0]


def hard_assignment_stats(X, centers, covariance_type, sample_weight=None,
                          second_moments=True):
    """One chunk's k-means statistics (a single-request :func:`chunk_pass`)."""
    request = HardAssignment(centers, covariance_type, second_moments)
    return chunk_pass(X, [request], sample_weight)[0]


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
        cov = unpack_symmetric(stats.s2, local_means.shape[1]) / nk[:, None, None]
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


def log_resp_and_norm(X, params, row_start=0, chunk_index=None):
    """Log responsibilities and per-row log-likelihood for one block of rows.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    params : Params
    row_start, chunk_index : int
        Where ``X`` sits in the whole input, for error messages.

    Returns
    -------
    log_resp : ndarray of shape (n, K), float64
    log_norm : ndarray of shape (n,), float64
    """
    n = X.shape[0]
    shift = chunk_shift(X)
    log_resp = np.empty((n, len(params.weights)))
    log_norm = np.empty(n)
    for start, rows, _ in _row_blocks(X, None, block_rows(_row_width(params))):
        check_rows(rows, row_start + start, _where(chunk_index))
        block = RowBlock(rows, shift, None, start)
        with np.errstate(invalid="ignore", over="ignore"):
            wlp = weighted_log_prob(block, params, shift)
        stop = start + block.n
        top = wlp.max(axis=1)
        top[~np.isfinite(top)] = 0.0
        with np.errstate(divide="ignore"):
            norm = np.log(np.exp(wlp - top[:, None]).sum(axis=1)) + top
        log_norm[start:stop] = norm
        log_resp[start:stop] = wlp - norm[:, None]
    return log_resp, log_norm


def _block_position(block_info):
    """``(row_start, chunk_index)`` of a ``map_blocks`` block, or ``(0, None)``."""
    if not block_info:
        return 0, None
    info = block_info[0]
    return info["array-location"][0][0], info["chunk-location"][0]


def predict_block(X, params, block_info=None):
    """Most likely component of each row, shape ``(n,)``, int64."""
    return log_resp_and_norm(X, params, *_block_position(block_info))[0].argmax(axis=1)


def predict_proba_block(X, params, dtype, block_info=None):
    """Responsibilities of each row, shape ``(n, K)``, in ``dtype``."""
    log_resp = log_resp_and_norm(X, params, *_block_position(block_info))[0]
    return np.exp(log_resp).astype(dtype, copy=False)


def score_samples_block(X, params, dtype, block_info=None):
    """Log-likelihood of each row, shape ``(n,)``, in ``dtype``."""
    log_norm = log_resp_and_norm(X, params, *_block_position(block_info))[1]
    return log_norm.astype(dtype, copy=False)
