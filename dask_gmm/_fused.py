"""Compiled (numba) kernel for the full-covariance E-step, and what every tile kernel shares.

Shared by the kernels of ``_fused_linear``, ``_fused_kmeans`` and
``_fused_missing``: the :func:`compiled` decorator, tile sizes, loading a tile
of rows (:func:`load_tile`), whitened densities, the tile's max and
exponential (:func:`exponentiate_tile`, with an exponential and a log that
vectorise) and its weighted responsibilities (:func:`normalise_tile`).

For full covariances numpy has to materialise every intermediate of an EM
iteration: the whitened rows of all components (``n x K D``), their squares,
the log densities, the packed products ``y_i y_j`` (``n x T``). With few
features those passes over memory cost more than the arithmetic. The kernel
here walks a block in tiles of rows that stay in cache and does, per tile:

1. one BLAS product that whitens the tile for every component
   (``[U_1 ... U_K]^T y``, the same form and rounding as the numpy kernel);
2. squared norms, log densities, the log-sum-exp and the responsibilities in
   one loop over the tile, with an exponential that vectorises;
3. one BLAS product of the responsibilities with the tile's packed products
   for the second moments.

Results agree with :func:`dask_gmm._estep.weighted_log_prob` /
:func:`dask_gmm._estep.responsibilities` to rounding (tests compare them).
The functions release the GIL, so dask's threads run them in parallel.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Everything except assuming no NaN/inf: the kernels compare with -inf and
# rely on exp(-inf) == 0.
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split in two for an exact reduction
_LN2_LO = 1.90821492927058770002e-10
# Below this, responsibilities are flushed to exact zeros (as in the numpy path:
# subnormal numbers slow every later product).
_EXP_FLOOR = -700.0



def compiled(**options):
    """``numba.njit(nogil=True, cache=True, error_model="numpy", **options)``.

    numba refuses ``cache=True`` when it finds no writable place for the
    cache (a read-only install and home, a function without a source file);
    then every process compiles again (about a second) instead of failing.
    numpy's error model: a division by zero gives inf or NaN, as in numpy,
    rather than raising. The E-step kernels read rows before they are checked
    (they take the check's sum of squares as they read), and rows holding NaN
    must reach the check's clear error, not a ``ZeroDivisionError``.
    """
    options = {"error_model": "numpy", **options}

    def decorate(function):
        try:
            return njit(nogil=True, cache=True, **options)(function)
        except RuntimeError:
            return njit(nogil=True, cache=False, **options)(function)
    return decorate


# Bytes of per-tile buffers to aim for; tiles never have more than TILE_ROWS rows.
TILE_BYTES = 8 * 2**20
TILE_ROWS = 128


def tile_rows(n_components, n_features):
    """Rows per tile for ``K`` components of ``D`` features (a multiple of 8, at least 8)."""
    n_packed = n_features * (n_features + 1) // 2
    row_bytes = 8 * (n_features + n_components * n_features + n_packed + 2 * n_components + 4)
    rows = min(TILE_ROWS, TILE_BYTES // row_bytes)
    return max(8, rows // 8 * 8)


# exp(f) = sum f^n / n!, n = 12 down to 0; 2 atanh(s) / (2 s) = sum s^2n / (2n + 1), n = 11..0
_EXP_TAYLOR = tuple(1.0 / math.factorial(n) for n in range(12, -1, -1))
_ATANH_SERIES = tuple(1.0 / (2 * n + 1) for n in range(11, -1, -1))


# No reassociation here: it would undo the two-part ln 2 of the range reduction.
# LLVM inlines this into the callers' loops, keeping these flags, and vectorises them.
@compiled(fastmath={"nsz", "contract"})
def _exp_scalar(x):
    """``exp(x)`` for ``x <= 0``; exactly 0 below ``_EXP_FLOOR``.

    Range reduction ``x = k ln2 + f`` with ``|f| <= ln2 / 2``, a degree-12
    Taylor polynomial for ``exp(f)`` (truncation below 2e-16 relative), times
    ``2^k`` built from its exponent bits (exact: the result stays normal).
    Unlike a call to libm's ``exp``, a loop of it vectorises.
    """
    v = max(x, _EXP_FLOOR)
    kf = np.floor(v * _LOG2E + 0.5)
    f = v - kf * _LN2_HI - kf * _LN2_LO
    p = 0.0
    for coefficient in _EXP_TAYLOR:  # Horner's rule; the compiler unrolls it
        p = p * f + coefficient
    power = np.int64((np.int64(kf) + 1023) << 52).view(np.float64)
    return p * power if x >= _EXP_FLOOR else 0.0


_LN2 = 0.6931471805599453
_SQRT2 = 1.4142135623730951


@compiled(fastmath={"nsz", "contract"})
def _log_scalar(x):
    """``log(x)`` for normal positive ``x`` below ``2^1023`` (here sums of exponentials, >= 1).

    ``x = 2^e a`` with ``a`` in ``[sqrt(1/2), sqrt(2))``, read from the bits;
    ``log a = 2 atanh(s)`` with ``s = (a - 1) / (a + 1)``, ``|s| <= 0.172``, as
    an odd series to ``s^23`` (truncation below 1e-18). A loop of it
    vectorises, where libm's ``log`` is a call per row. (``a`` is ``x`` times
    ``2^-e`` built from bits, rather than ``x``'s mantissa bits themselves: the
    compiler does not vectorise a float-to-int-to-float round trip of bits.)
    """
    e = (np.float64(x).view(np.int64) >> 52) - 1023
    a = x * np.int64((1023 - e) << 52).view(np.float64)  # the mantissa, in [1, 2)
    high = a > _SQRT2
    a = a * 0.5 if high else a
    e = e + 1 if high else e
    s = (a - 1.0) / (a + 1.0)
    s2 = s * s
    q = 0.0
    for coefficient in _ATANH_SERIES:
        q = q * s2 + coefficient
    return e * _LN2 + 2.0 * s * q


@compiled(fastmath={"nsz", "contract"})
def _log_positive(x, out, m):
    """``out[:m] = log(x[:m])`` (see :func:`_log_scalar`)."""
    for r in range(m):
        out[r] = _log_scalar(x[r])


@compiled(fastmath=_FASTMATH)
def log_positive(x):
    """The kernel's logarithm on an array of normal positive values (for tests)."""
    out = np.empty(x.shape[0])
    _log_positive(x, out, x.shape[0])
    return out


@compiled(fastmath=_FASTMATH)
def exp_nonpositive(x):
    """The kernel's exponential on an array of values ``<= 0`` (for tests)."""
    out = np.empty(x.shape[0])
    for r in range(x.shape[0]):
        out[r] = _exp_scalar(x[r])
    return out


@compiled(fastmath=_FASTMATH)
def load_tile(X, shift, start, m, y_t):
    """Rows ``start..start+m`` of ``X`` minus ``shift`` into the columns of ``y_t`` (D, n_tile).

    Columns ``m..`` keep the previous tile's rows; the kernels give them zero
    weight.

    Returns
    -------
    float
        The sum of the squares of the rows' values (``(y + shift)^2``, read back
        from the tile, where it vectorises): NaN or infinite when a value is, and
        at least ``1e200`` when one is beyond ``1e100``. The kernels report it, so
        that the row check (``_estep.check_rows``) needs no read of its own.
    """
    n_features = X.shape[1]
    for r in range(m):
        for i in range(n_features):
            y_t[i, r] = X[start + r, i] - shift[i]
    total = 0.0
    for i in range(n_features):
        s = shift[i]
        for r in range(m):
            v = y_t[i, r] + s
            total += v * v
    return total


def split_whitening(whiten, n_features):
    """The stacked whitening ``[U_1 ... U_K]^T`` (K D, D) as the matrices of two products.

    The precision factors the M-step makes are upper triangular: output ``j``
    of a component's whitening takes inputs ``0..j`` only. So the first half of
    the outputs is one product with the first half of the inputs, ``(K h, h)``,
    and the second half one with all of them, ``(K (D - h), D)``: three
    quarters of the flops of one whole product. A factor that is not
    triangular (a user's lower-triangular ``precisions_init``) keeps one
    product: ``first`` is then empty.

    Parameters
    ----------
    whiten : ndarray of shape (K D, D)
    n_features : int

    Returns
    -------
    first : ndarray of shape (K h, h), or (0, 0)
        ``h = first.shape[1]`` is the split (``D // 2``, or 0).
    second : ndarray of shape (K (D - h), D)
    """
    n_components = whiten.shape[0] // n_features
    stacked = whiten.reshape(n_components, n_features, n_features)
    half = n_features // 2
    if half == 0 or stacked[:, :half, half:].any():
        return np.zeros((0, 0)), np.ascontiguousarray(whiten, dtype=np.float64)
    first = np.ascontiguousarray(stacked[:, :half, :half], dtype=np.float64)
    second = np.ascontiguousarray(stacked[:, half:, :], dtype=np.float64)
    return first.reshape(-1, half), second.reshape(-1, n_features)


@compiled(fastmath=_FASTMATH)
def whiten_tile(first, second, y_t, z_first, z_second):
    """Whitened rows of a tile by the two products of :func:`split_whitening`.

    ``z_first`` (K h, n_tile) receives the first ``h`` whitened features of
    each component, ``z_second`` (K (D - h), n_tile) the others.
    """
    half = first.shape[1]
    if half > 0:
        np.dot(first, y_t[:half], z_first)
    np.dot(second, y_t, z_second)


@compiled(fastmath=_FASTMATH)
def whitened_densities(z_first, z_second, half, k, offsets, log_const, resp, shifted):
    """``resp[k] = log_const[k] - |z - offset_k|^2 / 2`` from :func:`whiten_tile`'s rows.

    Component ``k``'s whitened features are rows ``k h..`` of ``z_first``
    (its first ``h = half``) and rows ``k (D - h)..`` of ``z_second``.
    """
    n_features = offsets.shape[1]
    n_tile = z_second.shape[1]
    for r in range(n_tile):
        shifted[r] = 0.0
    for j in range(half):
        c = offsets[k, j]
        row = k * half + j
        for r in range(n_tile):
            v = z_first[row, r] - c
            shifted[r] += v * v
    width = n_features - half
    for j in range(width):
        c = offsets[k, half + j]
        row = k * width + j
        for r in range(n_tile):
            v = z_second[row, r] - c
            shifted[r] += v * v
    lc = log_const[k]
    for r in range(n_tile):
        resp[k, r] = lc - 0.5 * shifted[r]


@compiled(fastmath=_FASTMATH)
def exponentiate_tile(resp, top, total, best):
    """``resp[k, r] = exp(resp[k, r] - top[r])`` with ``top`` each row's largest; in place.

    Parameters
    ----------
    resp : ndarray of shape (K, n_tile)
        Log densities in, their exponentials relative to each row's largest out.
    top, total : ndarray of shape (n_tile,)
        Receive each row's largest log density (0 where all are -inf) and the
        sum of the row's exponentials.
    best : ndarray of shape (n_tile,) or (0,), int64
        Receives the first component with the largest density; empty to skip.
    """
    n_components, n_tile = resp.shape
    for r in range(n_tile):
        top[r] = resp[0, r]
    if best.shape[0] > 0:
        for r in range(n_tile):
            best[r] = 0
        for k in range(1, n_components):
            for r in range(n_tile):
                if resp[k, r] > top[r]:
                    top[r] = resp[k, r]
                    best[r] = k
    else:
        for k in range(1, n_components):
            for r in range(n_tile):
                top[r] = max(top[r], resp[k, r])
    for r in range(n_tile):
        if not top[r] > -np.inf:
            top[r] = 0.0
        total[r] = 0.0
    for k in range(n_components):
        for r in range(n_tile):
            value = _exp_scalar(resp[k, r] - top[r])
            resp[k, r] = value
            total[r] += value


@compiled(fastmath=_FASTMATH)
def packed_products(y_t, quad_t):
    """``quad_t[t] = y_t[i] * y_t[j]`` for ``i <= j`` in row-major order: shape (T, n_tile)."""
    n_features = y_t.shape[0]
    t = 0
    for i in range(n_features):
        for j in range(i, n_features):
            for r in range(y_t.shape[1]):
                quad_t[t, r] = y_t[i, r] * y_t[j, r]
            t += 1


@compiled(fastmath=_FASTMATH)
def normalise_tile(resp, m, w, start, top, total, logs, nk):
    """Log densities of a tile into weighted responsibilities, in place.

    Parameters
    ----------
    resp : ndarray of shape (K, n_tile)
        Per-component weighted log densities of the tile's rows; overwritten
        with ``w * r``. Columns ``m..`` (rows past the block's end) get zeros.
    m : int
        Rows of the tile that are real.
    w : ndarray of shape (n,) or (0,)
        The block's sample weights (empty for none); row ``r`` of the tile is
        row ``start + r`` of the block.
    start : int
    top, total, logs : ndarray of shape (n_tile,)
        Work buffers.
    nk : ndarray of shape (K,)
        Adds each component's ``sum w r`` over the tile.

    Returns
    -------
    float
        ``sum w log p(y)`` over the tile's ``m`` rows.
    """
    n_tile = resp.shape[1]
    weighted = w.shape[0] > 0
    exponentiate_tile(resp, top, total, np.empty(0, dtype=np.int64))
    _log_positive(total, logs, m)
    log_likelihood = 0.0
    for r in range(m):
        weight = w[start + r] if weighted else 1.0
        log_likelihood += weight * (top[r] + logs[r])
        total[r] = weight / total[r]
    for r in range(m, n_tile):
        total[r] = 0.0
    for k in range(resp.shape[0]):
        acc = 0.0
        for r in range(n_tile):
            resp[k, r] *= total[r]
            acc += resp[k, r]
        nk[k] += acc
    return log_likelihood


@compiled(fastmath=_FASTMATH)
def full_e_step(X, shift, w, first, second, offsets, log_const, n_tile, nk, s1, s2,
                row_squares):
    """E-step of full covariances, adding the sums about ``shift`` in place.

    Parameters
    ----------
    X : ndarray of shape (n, D), float32 or float64, C-contiguous
        Finite rows, read as they are (no float64 copy of the block).
    shift : ndarray of shape (D,)
        The point the sums are taken about (the chunk's shift).
    w : ndarray of shape (n,) or (0,)
        Sample weights; an empty array for none.
    first, second : ndarray
        The stacked whitening ``[U_1 ... U_K]^T`` (row ``k D + j`` is column
        ``j`` of the precision Cholesky factor ``U_k``) as :func:`split_whitening`
        gives it.
    offsets : ndarray of shape (K, D)
        ``(mean_k - shift) @ U_k``.
    log_const : ndarray of shape (K,)
        ``log weight_k + log det U_k - D/2 log(2 pi)``.
    n_tile : int
        Rows per tile (see :func:`tile_rows`).
    nk : ndarray of shape (K,)
        Adds ``sum w r_k``.
    s1 : ndarray of shape (K, D)
        Adds ``sum w r_k y``.
    s2 : ndarray of shape (K, T)
        Adds ``sum w r_k y_i y_j`` for ``i <= j`` in row-major order.
    row_squares : ndarray of shape (1,)
        Adds the sum of the squares of the rows' values (see :func:`load_tile`).

    Returns
    -------
    float
        ``sum w log p(y)`` over the rows.
    """
    n, n_features = X.shape
    n_components = offsets.shape[0]
    n_packed = s2.shape[1]
    half = first.shape[1]
    y_t = np.zeros((n_features, n_tile))
    z_first = np.empty((n_components * half, n_tile))
    z_second = np.empty((n_components * (n_features - half), n_tile))
    resp = np.empty((n_components, n_tile))
    quad_t = np.empty((n_packed, n_tile))
    top = np.empty(n_tile)
    total = np.empty(n_tile)
    shifted = np.empty(n_tile)
    s1_tile = np.empty((n_components, n_features))
    s2_tile = np.empty((n_components, n_packed))
    log_likelihood = 0.0
    squares = 0.0
    for start in range(0, n, n_tile):
        m = min(n_tile, n - start)
        squares += load_tile(X, shift, start, m, y_t)
        whiten_tile(first, second, y_t, z_first, z_second)
        for k in range(n_components):
            whitened_densities(z_first, z_second, half, k, offsets, log_const, resp, shifted)
        log_likelihood += normalise_tile(resp, m, w, start, top, total, shifted, nk)
        packed_products(y_t, quad_t)
        np.dot(resp, y_t.T, s1_tile)
        s1 += s1_tile
        np.dot(resp, quad_t.T, s2_tile)
        s2 += s2_tile
    row_squares[0] += squares
    return log_likelihood


@compiled()
def take_complete_rows(rows, out, positions):
    """Copy the rows without NaN to the front of ``out`` in one pass (``nan_policy='omit'``).

    Parameters
    ----------
    rows : ndarray of shape (n, D), float32 or float64
    out : ndarray like ``rows``
        Receives the kept rows in order.
    positions : ndarray of shape (n,), int64
        Receives the kept rows' positions in ``rows``.

    Returns
    -------
    n_kept : int
    n_infinite : int
        Rows holding infinity (an error whatever the policy: those rows'
        copies are not made).
    low, high : float
        Smallest and largest value among the kept rows (for the magnitude check).
    """
    n, n_features = rows.shape
    n_kept = 0
    n_infinite = 0
    low, high = np.inf, -np.inf
    for i in range(n):
        probe = 0.0
        for j in range(n_features):
            probe += rows[i, j] * 0.0  # NaN when the row holds NaN or infinity
        if probe != 0.0:
            infinite = 0
            for j in range(n_features):
                infinite += np.isinf(rows[i, j])
            n_infinite += infinite > 0
            continue
        for j in range(n_features):
            value = rows[i, j]
            out[n_kept, j] = value
            if value < low:
                low = value
            if value > high:
                high = value
        positions[n_kept] = i
        n_kept += 1
    return n_kept, n_infinite, low, high
