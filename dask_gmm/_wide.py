"""Full covariances on wide rows (``D >= WIDE_FEATURES``): products over many rows.

The compiled tile kernel (``_fused.full_e_step``) keeps a tile of rows in
cache and shrinks its tiles as ``D`` grows, so that the packed products of
``D (D + 1) / 2`` numbers per row fit; at wide ``D`` it then reads its
``K D x D`` whitening matrix from memory every few rows. Here the same formulas
run as BLAS products over sub-blocks of hundreds of rows:

- two products whiten every component (:func:`wide_full_log_prob`); the
  precision factors the M-step makes are upper triangular, so the zero block of
  each is skipped (three quarters of the flops; ``_fused.split_whitening``);
- the second moments are three half-width products per component
  (:func:`add_gram`; the lower-left block is never formed);
- densities and responsibilities are the tile kernel's compiled loops.

Products are spelled ``np.dot``, or ``np.matmul`` where an operand is a slice
of columns (``np.dot`` copies those; measured 0.52 against 0.37 ms for a Gram
block): numpy's ``@`` holds the GIL for some shapes (a vector by a vector, a
short wide matrix by a tall one), which serialises the chunk tasks of a
threaded pass, and the layout test keeps the operator out of chunk-task code.
These shapes release it (measured with two threads).

Results agree with the numpy kernels to rounding (tests compare them).
"""

from __future__ import annotations

import numpy as np

from ._estep import sum_of_squares

# Full covariances from this many features on take the wide path: products over
# sub-blocks of many rows (see :func:`wide_full_log_prob`).
WIDE_FEATURES = 96
# float64 numbers of the whitened rows a wide sub-block holds (8 MiB)
WIDE_FLOATS = 2**20
# float64 numbers of the weighted rows one product of the second moments takes (1 MiB)
GRAM_FLOATS = 2**17


def wide_full_log_prob(Y, first, second, offsets, log_const):
    """Weighted log densities of shifted rows under full covariances, transposed.

    The formula of the compiled tile kernel, ``log_const_k - |U_k^T y - o_k|^2 / 2``,
    with the whitening of every component as one product over many rows: at
    wide ``D`` the stacked whitening matrix (``K D x D``) is larger than a cache,
    and the tile kernel, whose tiles shrink as ``D`` grows, would read it once
    per few rows.

    Parameters
    ----------
    Y : ndarray of shape (m, D), float64
        Rows minus the shift.
    first, second : ndarray
        The stacked ``[U_1 ... U_K]^T`` as ``_fused.split_whitening`` gives it
        (triangular factors skip their zero block: three quarters of the flops).
    offsets : ndarray of shape (K, D)
        ``(mean_k - shift) U_k``.
    log_const : ndarray of shape (K,)

    Returns
    -------
    ndarray of shape (K, m), C-contiguous
    """
    from . import _fused

    n_components = offsets.shape[0]
    m = len(Y)
    half = first.shape[1]
    z_first = np.matmul(first, Y[:, :half].T) if half else np.empty((0, m))
    z_second = np.dot(second, Y.T)
    log_prob = np.empty((n_components, m))
    squares = np.empty(m)
    for k in range(n_components):
        _fused.whitened_densities(z_first, z_second, half, k, offsets, log_const, log_prob,
                                  squares)
    return log_prob


def add_gram(Y, r, gram):
    """``gram += Y^T diag(r) Y`` on and above the diagonal blocks only.

    The matrix is taken in 2 x 2 blocks, of which the lower-left one is never
    formed: three products of half width, three quarters of the flops of one
    whole product. ``gram`` is ``(D, D)``; its lower-left block is left as it is.
    """
    half = Y.shape[1] // 2
    A = Y * r[:, None]
    gram[:half, :half] += np.matmul(Y[:, :half].T, A[:, :half])
    gram[:half, half:] += np.matmul(Y[:, :half].T, A[:, half:])
    gram[half:, half:] += np.matmul(Y[:, half:].T, A[:, half:])


def _wide_blocks(n, n_components, n_features):
    step = max(8, WIDE_FLOATS // (n_components * n_features))
    return ((start, min(start + step, n)) for start in range(0, n, step))


def wide_full_e_step(X, shift, w, first, second, offsets, log_const, nk, s1, s2, row_squares):
    """Full-covariance E-step and M-step sums for wide rows (see :func:`wide_full_log_prob`).

    Takes and fills what ``_fused.full_e_step`` does. The densities are taken
    in sub-blocks (their whitened rows are ``K D`` numbers each); the second
    moments are products per component (``(r_k y)^T y``) over slices of the
    block sized for the cache, not by ``K``: with many components each product
    still runs over many rows.

    Returns
    -------
    float
        ``sum w log p(y)`` over the rows.
    """
    from . import _fused

    n, n_features = X.shape
    n_components = len(log_const)
    row_squares[0] += sum_of_squares(X)
    Y = np.subtract(X, shift, dtype=np.float64)
    resp = np.empty((n_components, n))
    for start, stop in _wide_blocks(n, n_components, n_features):
        resp[:, start:stop] = wide_full_log_prob(Y[start:stop], first, second, offsets,
                                                 log_const)
    buffers = [np.empty(n) for _ in range(3)]
    log_likelihood = _fused.normalise_tile(resp, n, w, 0, *buffers, nk)
    s1 += np.dot(resp, Y)
    # (r_k y) in slices that stay in cache, each product still over many rows
    step = max(64, GRAM_FLOATS // n_features)
    gram = np.zeros((n_components, n_features, n_features))
    for start in range(0, n, step):
        for k in range(n_components):
            add_gram(Y[start:start + step], resp[k, start:start + step], gram[k])
    upper = np.triu_indices(n_features)
    s2 += gram[:, upper[0], upper[1]]
    return log_likelihood


def wide_full_predict(X, shift, first, second, offsets, log_const, labels, proba, scores,
                      row_squares):
    """``_fused_linear.predict_rows`` for full covariances and wide rows (same arguments)."""
    n, n_features = X.shape
    n_components = len(log_const)
    row_squares[0] += sum_of_squares(X)
    for start, stop in _wide_blocks(n, n_components, n_features):
        Y = np.subtract(X[start:stop], shift, dtype=np.float64)
        log_prob = wide_full_log_prob(Y, first, second, offsets, log_const)
        top = log_prob.max(axis=0)
        expo = np.exp(log_prob - top)
        total = expo.sum(axis=0)
        if labels.shape[0]:
            labels[start:stop] = log_prob.argmax(axis=0)
        if scores.shape[0]:
            scores[start:stop] = top + np.log(total)
        if proba.shape[0]:
            proba[start:stop] = (expo / total).T
