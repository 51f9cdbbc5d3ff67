"""The E-step side of a chunk task: row blocks, log densities, responsibilities.

Nothing here knows about dask. A chunk is walked in row blocks sized so their
temporaries stay near ``BLOCK_BYTES``; each block is checked (NaN, infinity,
values too large to square), shifted by the chunk's own point, and turned into
per-component log densities through one kernel per covariance type
(:data:`SQUARED_MAHALANOBIS`, the way scikit-learn dispatches), then into
responsibilities. These numpy kernels are the reference for the compiled tile
kernels of ``_fused`` and ``_fused_linear``, which the E-step and the
prediction passes run.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

# Rows handled at once inside a chunk: enough that numpy's per-call cost (paid
# holding the GIL) is small, few enough that the per-block temporaries (n x K x D
# whitened rows, n x T quadratic features) stay near BLOCK_BYTES.
BLOCK_BYTES = 4 * 2**20
MIN_BLOCK_ROWS, MAX_BLOCK_ROWS = 512, 16384
# Blocks of a pass whose every request is a compiled tile kernel: those keep no
# per-row temporaries, so a block is only the rows (a float64 copy of them at
# most, for rows not stored as contiguous float32 or float64). Few blocks per
# chunk mean few hand-overs of the GIL between the chunk tasks' Python and their
# kernels: on 16 threads, one block per chunk (62,500 x 16) took an iteration
# from 18.5 to 13.5 ms.
KERNEL_BLOCK_BYTES = 16 * 2**20
ROW_BLOCK = None  # a fixed number of rows instead (tests use it)
# Rows whose mean is a chunk's shift (fixed, so results do not depend on blocks).
SHIFT_ROWS = 1024


class NonFiniteInputError(ValueError):
    """Input rows hold NaN or infinity."""


class RowPlace:
    """Where a block of rows sits in the whole input, for messages.

    Rows are numbered in C order over the sample dims: a 2-D input's rows are
    its row indices; an N-D block (sample dims ``grid_shape``, features last)
    numbers its samples by their position on that grid, and messages give
    their indices along the sample dims.

    Parameters
    ----------
    origin : tuple of int
        Index of the block's first sample along each sample dim.
    block_shape : tuple of int
        The block's extent along each sample dim.
    grid_shape : tuple of int or None
        The whole input's sample shape (None for a 2-D input of unknown length).
    chunk_index : int, tuple or None
        Which chunk this is.
    """

    def __init__(self, origin=(0,), block_shape=None, grid_shape=None, chunk_index=None):
        self.origin = tuple(int(o) for o in origin)
        self.block_shape = block_shape
        self.grid_shape = grid_shape
        self.chunk_index = chunk_index

    @property
    def where(self):
        """" in chunk N" for messages, or nothing when the chunk is not known."""
        return chunk_where(self.chunk_index)

    def describe(self, positions):
        """``"rows [..]"`` (or ``"samples [(i, j), ..]"``) for flat positions in the block."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(self.origin) == 1:
            return f"rows {(positions + self.origin[0]).tolist()}"
        local = np.unravel_index(positions, self.block_shape)
        places = np.stack([c + o for c, o in zip(local, self.origin)], axis=1)
        return f"samples {[tuple(p) for p in places.tolist()]}"


def check_finite_rows(X, block_start=0, where="", row_numbers=None, place=None):
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
    place : RowPlace or None
        Where the rows are, instead of ``block_start``/``where``/``row_numbers``
        (positions are then ``block_start`` plus the row's position in ``X``).
    """
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        kind = "NaN" if np.isnan(X[bad]).any() else "infinity"
        _raise_bad_rows(kind, np.flatnonzero(bad), block_start, where, row_numbers, place)


def _raise_bad_rows(kind, positions, block_start, where, row_numbers, place):
    more = " and more" if len(positions) > 5 else ""
    positions = positions[:5]
    numbers = (positions + block_start if row_numbers is None
               else np.asarray(row_numbers)[positions])
    if place is not None:
        described, where = place.describe(numbers), where or place.where
    else:
        described = f"rows {numbers.tolist()}"
    raise NonFiniteInputError(
        f"Input X contains {kind}{where}: {described}{more} are not finite. Remove "
        "or impute them before fitting (or pass nan_policy='omit' to skip samples "
        "holding NaN, or nan_policy='marginalize' to fit each sample on the features "
        "it has)." if kind == "NaN" else
        f"Input X contains {kind}{where}: {described}{more} are not finite. Remove "
        "or impute them before fitting."
    )


# |x| beyond this overflows float64 in the second moments (x**2 summed over rows).
LARGEST_MAGNITUDE = 1e100


def sum_of_squares(rows):
    """The sum of the squares of every value of ``rows``, in float64 (the row check's figure).

    One pass; inf or NaN when a value is not finite or the sum overflows.
    """
    flat = rows.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        if flat.dtype == np.float64:
            return float(np.dot(flat, flat))
        return float(np.einsum("i,i->", flat, flat, dtype=np.float64))


def check_rows(rows, block_start=0, where="", place=None, kept=None, squares=None):
    """Raise a clear error for rows that are not finite or too large to square safely.

    ``place`` and ``block_start`` locate the rows for messages (see
    :func:`check_finite_rows`); ``kept`` gives each row's position in its block
    when masked rows were taken out. ``squares``: the sum of the squares of the
    rows' values when a kernel already took it as it read them.
    """
    # The common case in one BLAS pass: a finite sum of squares below 1e200
    # means every value is finite and below LARGEST_MAGNITUDE. np.dot, not
    # ``@``: numpy's matmul of two vectors holds the GIL, and every chunk task
    # checks its rows (on 16 threads the tasks started one after another).
    if squares is None:
        squares = sum_of_squares(rows)
    if math.isfinite(squares) and squares < LARGEST_MAGNITUDE**2:
        return
    low, high = float(rows.min(initial=0.0)), float(rows.max(initial=0.0))
    if not (math.isfinite(low) and math.isfinite(high)):
        check_finite_rows(rows, block_start, where, place=place)
    largest = max(-low, high)
    if largest > LARGEST_MAGNITUDE:
        position = np.flatnonzero((np.abs(rows) > LARGEST_MAGNITUDE).any(axis=1))[:1]
        if kept is not None:
            position = kept[position]
        if place is not None:
            described, where = place.describe(position + block_start), place.where
        else:
            described = f"row {int(position[0]) + block_start}"
        scale = 10.0 ** math.ceil(math.log10(largest / 1e3))
        raise NonFiniteInputError(
            f"Input X holds values up to {largest:.3g}{where} ({described}): "
            f"beyond {LARGEST_MAGNITUDE:g} their squares overflow float64. Scale the data "
            f"first, e.g. X / {scale:g}."
        )


def screen_rows(rows, w, omit_nan, block_start=0, place=None, row_numbers=None):
    """Check a block's rows; under ``omit_nan`` take out the rows holding NaN.

    Infinity is an error whatever the policy. ``block_start``, ``place`` and
    ``row_numbers`` locate the rows for messages (see :func:`check_finite_rows`).

    Returns
    -------
    rows : ndarray of shape (m, D)
    w : ndarray of shape (m,) or None
    kept : ndarray of int or None
        Positions of the kept rows in the block; None when none was taken out.
    """
    place = place or RowPlace()
    if not omit_nan:
        check_rows(rows, block_start, place=place)
        return rows, w, None
    # One compiled pass finds the NaN rows, copies the others and takes their
    # range (numpy needed five passes, which doubled a small-D E-step's time).
    from . import _fused

    rows = np.ascontiguousarray(rows)
    complete = np.empty_like(rows)
    positions = np.empty(len(rows), dtype=np.int64)
    n_kept, n_infinite, low, high = _fused.take_complete_rows(rows, complete, positions)
    if n_infinite:
        infinite = np.flatnonzero(np.isinf(rows).any(axis=1))
        _raise_bad_rows("infinity", infinite, block_start, "", row_numbers, place)
    kept = None
    if n_kept < len(rows):
        kept = positions[:n_kept]
        rows = complete[:n_kept]
        w = None if w is None else w[kept]
    if n_kept and max(-low, high) > LARGEST_MAGNITUDE:
        check_rows(rows, block_start, place=place, kept=kept)
    return rows, w, kept


def chunk_where(chunk_index):
    """" in chunk N" for messages, or nothing when the chunk is not known."""
    return "" if chunk_index is None else f" in chunk {chunk_index}"


class RowBlock:
    """One block of a chunk's rows and what several requests can share.

    Parameters
    ----------
    rows : ndarray of shape (n, D)
        The rows as stored (float32 or float64): finite, or not yet checked
        when every request's kernel reports ``squares`` (see
        :func:`~dask_gmm._requests.chunk_pass`).
    shift : ndarray of shape (D,)
        The chunk's shift.
    w : ndarray of shape (n,) or None
        Sample weights.
    start : int
        Index of the first row within the chunk.

    Attributes
    ----------
    squares : float or None
        The sum of the squares of the rows' values, as the first compiled
        kernel to read them reported it (:meth:`report_squares`).
    """

    def __init__(self, rows, shift, w, start):
        self.rows = rows
        self.shift = shift
        self.w = w
        self.start = start
        self.squares = None
        self._Y = None
        self._quad_t = None

    def report_squares(self, row_squares):
        """Keep a kernel's sum of the squares of the rows (the first one reported)."""
        if self.squares is None:
            self.squares = float(row_squares[0])

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
    return min(max(BLOCK_BYTES // (8 * max(1, row_width)), MIN_BLOCK_ROWS), MAX_BLOCK_ROWS)


def kernel_block_rows(n_features):
    """Rows per block of a pass made of compiled tile kernels only (``KERNEL_BLOCK_BYTES``)."""
    if ROW_BLOCK is not None:
        return ROW_BLOCK
    return max(KERNEL_BLOCK_BYTES // (8 * max(1, n_features)), MIN_BLOCK_ROWS)


def params_row_width(params):
    """float64 temporaries per row of the numpy E-step under ``params``."""
    n_components, n_features = params.means.shape
    if params.covariance_type == "full":
        return max(n_components * n_features, n_features * (n_features + 1) // 2)
    return max(n_components, n_features)


def row_blocks(X, sample_weight, rows):
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
    """A point near the chunk's data: the mean of its first (complete) rows.

    Rows holding NaN are passed over (under ``nan_policy='omit'`` they are not
    data); a chunk with no complete row gets the origin.
    """
    head = np.asarray(X[:SHIFT_ROWS], dtype=np.float64)
    if head.shape[0] == 0:  # an empty chunk (dask allows them)
        return np.zeros(X.shape[1])
    shift = head.mean(axis=0)
    if not np.isfinite(shift).all():
        # each feature's mean over the rows that have it: near the data even when
        # few rows are complete (missing values marginalised)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            shift = np.nanmean(np.where(np.isinf(head), np.nan, head), axis=0)
        if not np.isfinite(shift).all() and X.shape[0] > SHIFT_ROWS:
            whole = np.asarray(X, dtype=np.float64)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                shift = np.where(np.isfinite(shift), shift, np.nanmean(
                    np.where(np.isinf(whole), np.nan, whole), axis=0))
        shift = np.where(np.isfinite(shift), shift, 0.0)
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
    Z = np.dot(block.Y, stacked)
    Z -= offsets
    # einsum squares and sums the short last axis in one pass, ~4x faster than
    # np.square followed by .sum(axis=2)
    Z = Z.reshape(n, n_components, n_features)
    return np.einsum("nkd,nkd->nk", Z, Z)


def _squared_mahalanobis_tied(block, means, params):
    """Whitened distances for one shared covariance: one ``(n, D) @ (D, D)`` product."""
    Z = np.dot(block.Y, params.prec_chol)
    M = np.dot(means, params.prec_chol)
    out = np.dot(Z, M.T)
    out *= -2.0
    out += np.einsum("nd,nd->n", Z, Z)[:, None]
    out += np.einsum("kd,kd->k", M, M)
    return out


def _squared_mahalanobis_diag(block, means, params):
    """Distances for diagonal covariances through two ``(n, D) @ (D, K)`` products."""
    precisions = params.prec_chol**2
    Y = block.Y
    out = np.dot(Y, (means * precisions).T)
    out *= -2.0
    out += np.dot(Y * Y, precisions.T)
    out += np.einsum("kd,kd->k", means * means, precisions)
    return out


def _squared_mahalanobis_spherical(block, means, params):
    """Distances for one variance per component."""
    precisions = params.prec_chol**2
    Y = block.Y
    out = np.dot(Y, means.T)
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
    maha += params.log_mixing()
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


# --------------------------------------------------------------------------
# Per-row sums and outputs.


def weighted_sum(values, w):
    """``sum(values)``, weighted by ``w`` when there are weights."""
    return float(values.sum() if w is None else np.dot(values, w))
