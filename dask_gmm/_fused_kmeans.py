"""Compiled (numba) k-means step: each row to its nearest center, and the sums.

The 'kmeans' initialisation makes a few Lloyd passes over all chunks and one
pass of hard-assignment statistics (the initial weights, means and
covariances). In numpy that pass built an ``n x K`` one-hot matrix and the
``n x T`` packed products of every block, and it cost more than an EM
iteration. Here a tile of rows is whitened by nothing: one BLAS product gives
``c_k . y`` for every center, the nearest center is picked in a loop, and the
sums are BLAS products of the tile's one-hot assignments with the rows (and
with their squares in the layout of the covariance type, ``_stats.SECOND_MOMENTS``);
full covariances add each row's ``y yᵀ`` to its own component's matrix instead.
Results agree with ``_requests.HardAssignment``'s numpy route (tests compare them).
"""

from __future__ import annotations

import numpy as np

from ._fused import _FASTMATH, compiled, load_tile

FULL, TIED, DIAG, SPHERICAL, NONE = 0, 1, 2, 3, 4
LAYOUTS = {"full": FULL, "tied": TIED, "diag": DIAG, "spherical": SPHERICAL}
# Not a power of two, as _fused_linear.LINEAR_TILE_ROWS (a Lloyd pass, one
# thread: 32.6 core-ms per million rows at 256 rows, 28.7 at 320).
TILE_ROWS = 320


@compiled(fastmath=_FASTMATH)
def hard_assignment(X, shift, w, centers, layout, n_tile, nk, s1, s2, row_squares):
    """Add the sums of rows given wholly to their nearest center.

    Parameters
    ----------
    X : ndarray of shape (n, D), float32 or float64, C-contiguous
        Finite rows.
    shift : ndarray of shape (D,)
    w : ndarray of shape (n,) or (0,)
        Sample weights; an empty array for none.
    centers : ndarray of shape (K, D)
        Relative to ``shift``.
    layout : int
        FULL, TIED, DIAG or SPHERICAL: the form of ``s2``; NONE for no ``s2``.
    n_tile : int
    nk : ndarray of shape (K,)
        Adds ``sum w`` of the rows each center takes.
    s1 : ndarray of shape (K, D)
        Adds their ``sum w y``.
    s2 : ndarray
        FULL: (K, T) packed ``sum w y_i y_j``; TIED: (D, D) ``sum w y y^T`` of all
        rows; DIAG: (K, D) ``sum w y^2``; SPHERICAL: (K, 1) ``sum w |y|^2``;
        NONE: ignored.
    row_squares : ndarray of shape (1,)
        Adds the sum of the squares of the rows' values (``_fused.load_tile``).

    Returns
    -------
    float
        Minus the weighted inertia, ``-sum w |y - c|^2``.
    """
    n, n_features = X.shape
    n_components = centers.shape[0]
    weighted = w.shape[0] > 0
    y_t = np.zeros((n_features, n_tile))
    cross = np.empty((n_components, n_tile))
    onehot = np.zeros((n_components, n_tile))
    squares = np.zeros((n_features if layout == DIAG else 1, n_tile))
    yw_t = np.zeros((n_features if layout == TIED else 0, n_tile))
    norms = np.empty(n_tile)
    row_norms = np.empty(n_tile)
    colw = np.zeros(n_tile)
    best = np.empty(n_tile, dtype=np.int64)
    half = np.empty(n_components)
    for k in range(n_components):
        acc = 0.0
        for j in range(n_features):
            acc += centers[k, j] * centers[k, j]
        half[k] = 0.5 * acc
    s1_tile = np.empty(s1.shape)
    s2_tile = np.empty(s2.shape)
    # FULL: each row's y y^T added to its own component's square matrix (a
    # product with the one-hot tile would spend K times the flops on zeros)
    square_sums = np.zeros((n_components, n_features, n_features) if layout == FULL
                           else (0, 0, 0))
    row = np.empty(n_features)
    inertia = 0.0
    squares_of_rows = 0.0
    for start in range(0, n, n_tile):
        m = min(n_tile, n - start)
        squares_of_rows += load_tile(X, shift, start, m, y_t)
        for r in range(m):
            colw[r] = w[start + r] if weighted else 1.0
        for r in range(m, n_tile):
            colw[r] = 0.0
        np.dot(centers, y_t, cross)
        # nearest center: largest c.y - |c|^2 / 2 (the first of equals)
        for r in range(n_tile):
            norms[r] = cross[0, r] - half[0]
            best[r] = 0
        for k in range(1, n_components):
            for r in range(n_tile):
                v = cross[k, r] - half[k]
                if v > norms[r]:
                    norms[r] = v
                    best[r] = k
        for r in range(n_tile):
            row_norms[r] = 0.0
        for i in range(n_features):
            for r in range(n_tile):
                row_norms[r] += y_t[i, r] * y_t[i, r]
        for r in range(m):
            inertia += colw[r] * max(row_norms[r] - 2.0 * norms[r], 0.0)
        for k in range(n_components):
            for r in range(n_tile):
                onehot[k, r] = 0.0
        for r in range(n_tile):
            onehot[best[r], r] = colw[r]
            nk[best[r]] += colw[r]
        np.dot(onehot, y_t.T, s1_tile)
        s1 += s1_tile
        if layout == NONE:
            continue
        if layout == TIED:
            for i in range(n_features):
                for r in range(n_tile):
                    yw_t[i, r] = y_t[i, r] * colw[r]
            np.dot(yw_t, y_t.T, s2_tile)
        elif layout == FULL:
            for r in range(m):
                k = best[r]
                for i in range(n_features):
                    row[i] = X[start + r, i] - shift[i]
                for i in range(n_features):
                    scaled = colw[r] * row[i]
                    for j in range(n_features):
                        square_sums[k, i, j] += scaled * row[j]
            continue
        else:
            if layout == DIAG:
                for i in range(n_features):
                    for r in range(n_tile):
                        squares[i, r] = y_t[i, r] * y_t[i, r]
            else:
                for r in range(n_tile):
                    squares[0, r] = 0.0
                for i in range(n_features):
                    for r in range(n_tile):
                        squares[0, r] += y_t[i, r] * y_t[i, r]
            np.dot(onehot, squares.T, s2_tile)
        s2 += s2_tile
    if layout == FULL:
        for k in range(n_components):
            t = 0
            for i in range(n_features):
                for j in range(i, n_features):
                    s2[k, t] += square_sums[k, i, j]
                    t += 1
    row_squares[0] += squares_of_rows
    return -inertia


def hard_assignment_step(block, centers, stats):
    """One row block's k-means sums into ``stats`` (any covariance type's layout).

    Parameters
    ----------
    block : RowBlock
    centers : ndarray of shape (K, D)
        In the data's coordinates.
    stats : SuffStats
        About the chunk's shift; ``s2`` None when no second moments are asked.

    Returns
    -------
    float
        Minus the block's weighted inertia.
    """
    w = np.empty(0) if block.w is None else np.ascontiguousarray(block.w, dtype=np.float64)
    stats.n += block.total_weight()
    stats.rows += block.n
    if stats.s2 is None:
        layout, s2 = NONE, np.zeros((1, 1))
    else:
        layout = LAYOUTS[stats.covariance_type]
        s2 = stats.s2.reshape(-1, 1) if layout == SPHERICAL else stats.s2
    squares = np.zeros(1)
    inertia = hard_assignment(np.ascontiguousarray(block.rows), stats.shift, w,
                              np.ascontiguousarray(centers - stats.shift), layout, TILE_ROWS,
                              stats.nk, stats.s1, s2, squares)
    block.report_squares(squares)
    return inertia
