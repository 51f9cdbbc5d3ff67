"""Compiled (numba) tile kernels for tied, diagonal and spherical covariances, and
for the prediction pass of every covariance type.

For these three types a row's log density is linear in a few features of the
row (with ``y`` the row minus the chunk's shift, ``p`` the precisions):

- diag: ``F = [y, y*y]`` (``2D``), since ``-(y - m)^2 p / 2 = y (p m) - y^2 p / 2 - m^2 p / 2``;
- spherical: ``F = [y, |y|^2]`` (``D + 1``);
- tied: ``F = [z, |z|^2]`` with ``z = U^T y`` the whitened row (``D + 1``).

So a tile's log densities are one BLAS product ``coef @ F`` plus a constant per
component (the expanded forms of the numpy kernels in ``_estep``), and for diag
and spherical the M-step sums ``[s1, s2]`` are one more product ``R @ F^T`` of
the responsibilities with the same features. Tied sums ``R @ y^T`` and the
weighted ``y y^T`` of the tile. Rows are read as stored (float32 stays
float32 in memory), tiles stay in cache, and nothing of size ``n x K`` is kept
beyond a tile. :func:`predict_rows` gives labels, probabilities and scores of
every covariance type in one pass; full covariances there whiten as
``_fused.full_e_step`` does.

Full covariances on wide rows take the products of ``_wide`` instead.

Results agree with the numpy kernels to rounding (tests compare them).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _wide
from ._estep import log_det_cholesky
from ._fused import (
    _FASTMATH,
    _log_positive,
    compiled,
    exponentiate_tile,
    load_tile,
    normalise_tile,
    split_whitening,
    tile_rows,
    whiten_tile,
    whitened_densities,
)

DIAG, SPHERICAL, TIED, FULL = 0, 1, 2, 3
KINDS = {"diag": DIAG, "spherical": SPHERICAL, "tied": TIED, "full": FULL}
# Rows per tile of the linear kernels: their tiles are narrow, and BLAS calls on
# a few hundred rows cost more in overhead than in arithmetic. Not a power of two:
# the rows of a (D, 256) tile lie 2 KiB apart, on few cache sets, and loading a
# tile then evicted itself (diag, one thread: 49.9 core-ms per million rows at 256
# rows, 46-47 at 320-480, 77 at 512).
LINEAR_TILE_ROWS = 320


@compiled(fastmath=_FASTMATH)
def _log_densities(kind, y_t, whiten, first, coef, const, cap, z_first, z_t, f_t, resp,
                   shifted, m):
    """Weighted log densities ``(K, n_tile)`` of a tile's rows into ``resp``.

    Parameters
    ----------
    kind : int
        DIAG, SPHERICAL, TIED or FULL.
    y_t : ndarray of shape (D, n_tile)
        The rows minus the shift, transposed; columns ``m..`` hold finite stale rows.
        DIAG and SPHERICAL: the first ``D`` rows of ``f_t`` (their features begin
        with the rows themselves, so they are loaded there and not copied).
    whiten, first : ndarray
        TIED: ``whiten`` is ``U^T`` (D, D); FULL: the stacked ``[U_1 ... U_K]^T``
        as ``_fused.split_whitening`` gives it (``first``, ``whiten``);
        otherwise unused.
    coef : ndarray
        FULL: the offsets ``(mean_k - shift) @ U_k`` (K, D); otherwise the
        linear coefficients (K, P) of the features.
    const, cap : ndarray of shape (K,)
        Added to each component's density; ``cap`` bounds it (a squared
        distance is never negative, whatever the rounding of an expanded form).
    z_first, z_t, f_t : ndarray
        Work buffers: FULL's whitened rows (as ``_fused.whiten_tile`` fills
        them) and the features (P, n_tile); TIED whitens into the features.
    resp : ndarray of shape (K, n_tile)
    shifted : ndarray of shape (n_tile,)
    m : int
        Real rows of the tile.
    """
    n_features, n_tile = y_t.shape
    n_components = resp.shape[0]
    if kind == FULL:
        half = first.shape[1]
        whiten_tile(first, whiten, y_t, z_first, z_t)
        for k in range(n_components):
            whitened_densities(z_first, z_t, half, k, coef, const, resp, shifted)
        return
    if kind == DIAG:
        for i in range(n_features):
            for r in range(m):
                v = y_t[i, r]
                f_t[n_features + i, r] = v * v
    else:
        if kind == TIED:
            np.dot(whiten, y_t, f_t[:n_features])
        for r in range(m):
            shifted[r] = 0.0
        for i in range(n_features):
            for r in range(m):
                v = f_t[i, r]
                shifted[r] += v * v
        for r in range(m):
            f_t[n_features, r] = shifted[r]
    np.dot(coef, f_t, resp)
    for k in range(n_components):
        c = const[k]
        top = cap[k]
        for r in range(n_tile):
            resp[k, r] = min(resp[k, r] + c, top)


@compiled(fastmath=_FASTMATH)
def linear_e_step(X, shift, w, kind, whiten, coef, const, cap, n_tile, nk, sums, moments,
                  row_squares):
    """E-step of tied, diag or spherical covariances, adding the sums in place.

    Parameters
    ----------
    X : ndarray of shape (n, D), float32 or float64, C-contiguous
        Finite rows, read as they are.
    shift : ndarray of shape (D,)
    w : ndarray of shape (n,) or (0,)
        Sample weights; an empty array for none.
    kind : int
        DIAG, SPHERICAL or TIED.
    whiten, coef, const, cap : ndarray
        As :func:`_log_densities` takes them (see :func:`kernel_inputs`).
    n_tile : int
        Rows per tile.
    nk : ndarray of shape (K,)
        Adds ``sum w r_k``.
    sums : ndarray of shape (K, P)
        DIAG and SPHERICAL: adds ``sum w r_k F`` (``[s1, s2]``); TIED: shape
        (K, D), adds ``sum w r_k y`` (``s1``).
    moments : ndarray of shape (D, D) or (0, 0)
        TIED: adds ``sum w y y^T``; (0, 0) skips it.
    row_squares : ndarray of shape (1,)
        Adds the sum of the squares of the rows' values (``_fused.load_tile``).

    Returns
    -------
    float
        ``sum w log p(y)`` over the rows.
    """
    n, n_features = X.shape
    n_components, n_coef = coef.shape
    weighted = w.shape[0] > 0
    f_t = np.zeros((n_coef, n_tile))
    y_t = f_t[:n_features] if kind != TIED else np.zeros((n_features, n_tile))
    no_rows = np.zeros((0, n_tile))
    no_first = np.zeros((0, 0))
    yw_t = np.zeros((n_features if kind == TIED else 0, n_tile))
    resp = np.empty((n_components, n_tile))
    top = np.empty(n_tile)
    total = np.empty(n_tile)
    shifted = np.empty(n_tile)
    sums_tile = np.empty(sums.shape)
    moments_tile = np.empty(moments.shape)
    log_likelihood = 0.0
    squares = 0.0
    for start in range(0, n, n_tile):
        m = min(n_tile, n - start)
        squares += load_tile(X, shift, start, m, y_t)
        _log_densities(kind, y_t, whiten, no_first, coef, const, cap, no_first, no_rows, f_t, resp,
                       shifted, m)
        log_likelihood += normalise_tile(resp, m, w, start, top, total, shifted, nk)
        if kind != TIED:
            np.dot(resp, f_t.T, sums_tile)
        else:
            np.dot(resp, y_t.T, sums_tile)
            if moments.shape[0] > 0:
                for i in range(n_features):
                    for r in range(m):
                        yw_t[i, r] = y_t[i, r] * w[start + r] if weighted else y_t[i, r]
                    for r in range(m, n_tile):
                        yw_t[i, r] = 0.0
                np.dot(yw_t, y_t.T, moments_tile)
                moments += moments_tile
        sums += sums_tile
    row_squares[0] += squares
    return log_likelihood


@compiled(fastmath=_FASTMATH)
def predict_rows(X, shift, kind, whiten, first, coef, const, cap, n_tile, labels, proba,
                 scores, row_squares):
    """Labels, probabilities and log-likelihoods of rows, for any covariance type.

    Parameters
    ----------
    X : ndarray of shape (n, D), float32 or float64, C-contiguous
        Finite rows.
    shift : ndarray of shape (D,)
    kind, whiten, first, coef, const, cap :
        As :func:`_log_densities` takes them (see :func:`kernel_inputs`).
    n_tile : int
    labels : ndarray of shape (n,) or (0,), int64
        Receives the most likely component (the first of equals); empty to skip.
    proba : ndarray of shape (n, K) or (0, K)
        Receives the responsibilities (any float dtype); empty to skip.
    scores : ndarray of shape (n,) or (0,), any float dtype
        Receives ``log p(x)``; empty to skip.
    row_squares : ndarray of shape (1,)
        Adds the sum of the squares of the rows' values (``_fused.load_tile``).
    """
    n, n_features = X.shape
    n_components = const.shape[0]
    want_labels, want_proba, want_scores = (labels.shape[0] > 0, proba.shape[0] > 0,
                                            scores.shape[0] > 0)
    f_t = np.zeros((coef.shape[1] if kind != FULL else 0, n_tile))
    y_t = f_t[:n_features] if kind in (DIAG, SPHERICAL) else np.zeros((n_features, n_tile))
    z_t = np.zeros((whiten.shape[0] if kind == FULL else 0, n_tile))
    z_first = np.zeros((first.shape[0], n_tile))
    resp = np.empty((n_components, n_tile))
    top = np.empty(n_tile)
    total = np.empty(n_tile)
    shifted = np.empty(n_tile)
    best = np.empty(n_tile if want_labels else 0, dtype=np.int64)
    squares = 0.0
    for start in range(0, n, n_tile):
        m = min(n_tile, n - start)
        squares += load_tile(X, shift, start, m, y_t)
        _log_densities(kind, y_t, whiten, first, coef, const, cap, z_first, z_t, f_t, resp,
                       shifted, m)
        exponentiate_tile(resp, top, total, best)
        if want_labels:
            for r in range(m):
                labels[start + r] = best[r]
        if want_scores:
            _log_positive(total, shifted, m)
            for r in range(m):
                scores[start + r] = top[r] + shifted[r]
        if want_proba:
            for r in range(m):
                inverse = 1.0 / total[r]
                for k in range(n_components):
                    proba[start + r, k] = resp[k, r] * inverse
    row_squares[0] += squares


class KernelParts(NamedTuple):
    """What the kernels' inputs are made of, for one set of parameters (any shift).

    Attributes
    ----------
    kind : int
    means : ndarray of shape (K, D)
    scale : ndarray
        DIAG: the precisions (K, D); SPHERICAL: (K, 1); TIED: ``U`` (D, D);
        FULL: the stacked ``[U_1 ... U_K]^T`` (K D, D).
    whiten : ndarray
        TIED: ``U^T`` (D, D); FULL: the second matrix of
        ``_fused.split_whitening`` of the stacked ``[U_1 ... U_K]^T``; else (0, 0).
    first : ndarray
        FULL: the first matrix of ``_fused.split_whitening``; else (0, 0).
    cap : ndarray of shape (K,)
        ``log weight_k + log det U_k - D/2 log(2 pi)``.
    """

    kind: int
    means: np.ndarray
    scale: np.ndarray
    whiten: np.ndarray
    first: np.ndarray
    cap: np.ndarray


def kernel_parts(params):
    """:class:`KernelParts` of ``params`` (numpy; once per request, not per chunk)."""
    n_components, n_features = params.means.shape
    kind = KINDS[params.covariance_type]
    prec_chol = params.prec_chol
    cap = params.log_mixing()
    cap += log_det_cholesky(prec_chol, params.covariance_type, n_features)
    cap -= 0.5 * n_features * math.log(2 * math.pi)
    cap = np.ascontiguousarray(np.broadcast_to(cap, (n_components,)), dtype=np.float64)
    scale, whiten, first = np.zeros((0, 0)), np.zeros((0, 0)), np.zeros((0, 0))
    if kind == FULL:
        scale = prec_chol.transpose(0, 2, 1).reshape(-1, n_features)
        first, whiten = split_whitening(scale, n_features)
    elif kind == DIAG:
        scale = prec_chol**2
    elif kind == SPHERICAL:
        scale = (prec_chol**2)[:, None]
    else:
        scale, whiten = prec_chol, prec_chol.T
    return KernelParts(kind, np.ascontiguousarray(params.means, dtype=np.float64),
                       np.ascontiguousarray(scale, dtype=np.float64),
                       np.ascontiguousarray(whiten, dtype=np.float64), first, cap)


@compiled(fastmath=_FASTMATH)
def _fill_inputs(kind, means, scale, whiten, cap, shift, coef, const):
    """A chunk's coefficients and constants from :class:`KernelParts` about ``shift``.

    Each mean is taken about the shift first (``m - shift``, exact when the
    shift is near the data), as the numpy kernels do. FULL: ``coef`` receives
    the offsets ``(m_k - shift) U_k``.
    """
    n_components, n_features = means.shape
    local = np.empty(n_features)
    for k in range(n_components):
        for j in range(n_features):
            local[j] = means[k, j] - shift[j]
        quadratic = 0.0
        if kind == DIAG:
            for j in range(n_features):
                p = scale[k, j]
                coef[k, j] = local[j] * p
                coef[k, n_features + j] = -0.5 * p
                quadratic += p * local[j] * local[j]
        elif kind == SPHERICAL:
            p = scale[k, 0]
            for j in range(n_features):
                coef[k, j] = local[j] * p
                quadratic += local[j] * local[j]
            coef[k, n_features] = -0.5 * p
            quadratic *= p
        elif kind == TIED:
            for j in range(n_features):
                acc = 0.0
                for i in range(n_features):
                    acc += local[i] * scale[i, j]
                coef[k, j] = acc
                quadratic += acc * acc
            coef[k, n_features] = -0.5
        else:
            for j in range(n_features):
                acc = 0.0
                row = k * n_features + j
                for i in range(n_features):
                    acc += local[i] * scale[row, i]
                coef[k, j] = acc
        const[k] = cap[k] - 0.5 * quadratic


COEF_WIDTH = {DIAG: lambda d: 2 * d, SPHERICAL: lambda d: d + 1, TIED: lambda d: d + 1,
              FULL: lambda d: d}


def kernel_inputs(params, shift, parts=None):
    """What the compiled kernels take for ``params`` about ``shift``.

    Parameters
    ----------
    params : Params
    shift : ndarray of shape (D,)
    parts : KernelParts, optional
        ``kernel_parts(params)``, when the caller keeps it.

    Returns
    -------
    kind : int
    whiten, first : ndarray
        As :class:`KernelParts` holds them.
    coef : ndarray
        FULL: offsets (K, D); else feature coefficients (K, P).
    const, cap : ndarray of shape (K,)
    """
    parts = kernel_parts(params) if parts is None else parts
    n_components, n_features = parts.means.shape
    coef = np.empty((n_components, COEF_WIDTH[parts.kind](n_features)))
    const = np.empty(n_components)
    _fill_inputs(parts.kind, parts.means, parts.scale, parts.whiten, parts.cap,
                 np.asarray(shift, dtype=np.float64), coef, const)
    return parts.kind, parts.whiten, parts.first, coef, const, parts.cap


def _weights(w):
    return np.empty(0) if w is None else np.ascontiguousarray(w, dtype=np.float64)


def e_step(block, params, stats, cache=None, parts=None, tied_moments=True):
    """One row block's E-step and M-step sums into ``stats`` (any covariance type).

    Parameters
    ----------
    block : RowBlock
    params : Params
    stats : SuffStats
        About the chunk's shift; ``nk``, ``s1``, ``s2``, ``n`` and ``rows`` are added to.
    cache : dict or None
        Keeps :func:`kernel_inputs` for the next block of the same chunk.
    parts : KernelParts, optional
        ``kernel_parts(params)``, kept by the request for all its chunks.
    tied_moments : bool
        False: tied covariances leave ``stats.s2`` as it is (the caller knows it).

    Returns
    -------
    float
        The block's ``sum w log p(x)``.
    """
    from . import _fused

    inputs = None if cache is None else cache.get("inputs")
    if inputs is None:
        inputs = kernel_inputs(params, stats.shift, parts)
        if cache is not None:
            cache["inputs"] = inputs
    kind, whiten, first, coef, const, cap = inputs
    rows = np.ascontiguousarray(block.rows)
    w = _weights(block.w)
    stats.n += block.total_weight()
    stats.rows += block.n
    n_components, n_features = params.means.shape
    squares = np.zeros(1)
    if kind == FULL and n_features >= _wide.WIDE_FEATURES:
        log_likelihood = _wide.wide_full_e_step(rows, stats.shift, w, first, whiten, coef,
                                                const, stats.nk, stats.s1, stats.s2, squares)
    elif kind == FULL:
        log_likelihood = _fused.full_e_step(rows, stats.shift, w, first, whiten, coef, const,
                                            tile_rows(n_components, n_features),
                                            stats.nk, stats.s1, stats.s2, squares)
    elif kind == TIED:
        moments = stats.s2 if tied_moments else np.zeros((0, 0))
        log_likelihood = linear_e_step(rows, stats.shift, w, kind, whiten, coef, const, cap,
                                       LINEAR_TILE_ROWS, stats.nk, stats.s1, moments, squares)
    else:
        sums = np.zeros(coef.shape)
        log_likelihood = linear_e_step(rows, stats.shift, w, kind, whiten, coef, const, cap,
                                       LINEAR_TILE_ROWS, stats.nk, sums, np.zeros((0, 0)),
                                       squares)
        stats.s1 += sums[:, :n_features]
        stats.s2 += sums[:, n_features:].reshape(stats.s2.shape)
    block.report_squares(squares)
    return log_likelihood


def prediction_tile_rows(params):
    """Rows per tile of :func:`predict_rows` under ``params``."""
    n_components, n_features = params.means.shape
    if params.covariance_type == "full":
        return tile_rows(n_components, n_features)
    return LINEAR_TILE_ROWS


def predict(rows, params, shift, labels=None, proba=None, scores=None, parts=None,
            row_squares=None):
    """Labels, probabilities and scores of finite rows in one pass, into the arrays given.

    Parameters
    ----------
    rows : ndarray of shape (n, D)
    params : Params
    shift : ndarray of shape (D,)
        A point near the rows (the chunk's shift).
    labels : ndarray of shape (n,), int64, or None
    proba : ndarray of shape (n, K), C-contiguous, any float dtype, or None
    scores : ndarray of shape (n,), any float dtype, or None
        Each output given is filled; None skips it.
    parts : KernelParts, optional
        ``kernel_parts(params)``, when the caller keeps it.
    row_squares : ndarray of shape (1,), optional
        Adds the sum of the squares of the rows' values (``_fused.load_tile``).
    """
    kind, whiten, first, coef, const, cap = kernel_inputs(params, shift, parts)
    row_squares = np.zeros(1) if row_squares is None else row_squares
    n_components = len(const)
    rows = rows if rows.dtype in (np.float32, np.float64) else rows.astype(np.float64)
    if kind == FULL and rows.shape[1] >= _wide.WIDE_FEATURES:
        _wide.wide_full_predict(rows, shift, first, whiten, coef, const,
                                np.empty(0, dtype=np.int64) if labels is None else labels,
                                np.empty((0, n_components)) if proba is None else proba,
                                np.empty(0) if scores is None else scores, row_squares)
        return
    predict_rows(np.ascontiguousarray(rows), np.asarray(shift, dtype=np.float64), kind,
                 whiten, first, coef, const, cap, prediction_tile_rows(params),
                 np.empty(0, dtype=np.int64) if labels is None else labels,
                 np.empty((0, n_components)) if proba is None else proba,
                 np.empty(0) if scores is None else scores, row_squares)
