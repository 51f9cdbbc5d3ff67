"""Full covariances on wide rows (``D >= WIDE_FEATURES``): products over many rows.

The compiled tile kernel (``_fused.full_e_step``) keeps a tile of rows in
cache and shrinks its tiles as ``D`` grows, so that the packed products of
``D (D + 1) / 2`` numbers per row fit; at wide ``D`` it then reads its
``K D x D`` whitening matrix from memory every few rows. Here the same formulas
run as BLAS products over sub-blocks of hundreds of rows:

- one product whitens every component (:func:`wide_full_log_prob`); the
  precision factors the M-step makes are upper triangular, so the zero block of
  each is skipped (three quarters of the flops);
- the second moments are three half-width products per component
  (:func:`add_gram`; the lower-left block is never formed);
- densities and responsibilities are the tile kernel's compiled loops.

Results agree with the numpy kernels to rounding (tests compare them).
"""

from __future__ import annotations

import numpy as np

# Full covariances from this many features on take the wide path: products over
# sub-blocks of many rows (see :func:`wide_full_log_prob`).
WIDE_FEATURES = 96
# float64 numbers of the whitened rows a wide sub-block holds (8 MiB)
WIDE_FLOATS = 2**20


def wide_full_log_prob(Y, whiten, offsets, log_const):
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
    whiten : ndarray of shape (K D, D)
        The stacked ``[U_1 ... U_K]^T``.
    offsets : ndarray of shape (K, D)
        ``(mean_k - shift) U_k``.
    log_const : ndarray of shape (K,)

    Returns
    -------
    ndarray of shape (K, m), C-contiguous
    """
    from . import _fused

    n_components, n_features = offsets.shape
    m = len(Y)
    stacked = whiten.reshape(n_components, n_features, n_features)  # U_k^T
    half = n_features // 2
    log_prob = np.empty((n_components, m))
    squares = np.empty(m)
    if stacked[:, :half, half:].any():  # not triangular (a user's precisions_init)
        z_t = whiten @ Y.T  # (K D, m)
        for k in range(n_components):
            _fused.whitened_densities(z_t, k * n_features, k, offsets, log_const, log_prob,
                                      squares)
        return log_prob
    # U_k^T is lower triangular: its upper-right block is zero, and the first half
    # of z needs only the first half of y (three quarters of the flops)
    first = np.ascontiguousarray(stacked[:, :half, :half]).reshape(-1, half) @ Y[:, :half].T
    second = np.ascontiguousarray(stacked[:, half:, :]).reshape(-1, n_features) @ Y.T
    rest = np.empty((n_components, m))
    first_offsets = np.ascontiguousarray(offsets[:, :half])
    second_offsets = np.ascontiguousarray(offsets[:, half:])
    width = n_features - half
    for k in range(n_components):
        _fused.whitened_densities(first, k * half, k, first_offsets, log_const, log_prob,
                                  squares)
        _fused.whitened_densities(second, k * width, k, second_offsets,
                                  np.zeros(n_components), rest, squares)
    log_prob += rest
    return log_prob


def add_gram(Y, r, packed, upper):
    """``packed += (Y^T diag(r) Y)[upper]``, the products of the upper triangle only.

    The matrix is taken in 2 x 2 blocks, of which the lower-left one is never
    formed: three products of half width, three quarters of the flops of one
    whole product.
    """
    n_features = Y.shape[1]
    half = n_features // 2
    A = Y * r[:, None]
    gram = np.empty((n_features, n_features))
    gram[:half, :half] = Y[:, :half].T @ A[:, :half]
    gram[:half, half:] = Y[:, :half].T @ A[:, half:]
    gram[half:, half:] = Y[:, half:].T @ A[:, half:]
    packed += gram[upper]


def _wide_blocks(n, n_components, n_features):
    step = max(8, WIDE_FLOATS // (n_components * n_features))
    return ((start, min(start + step, n)) for start in range(0, n, step))


def wide_full_e_step(X, shift, w, whiten, offsets, log_const, nk, s1, s2):
    """Full-covariance E-step and M-step sums for wide rows (see :func:`wide_full_log_prob`).

    Takes and fills what ``_fused.full_e_step`` does. The second moments are a
    product per component over the sub-block (``(r_k y)^T y``), not packed
    products of every row, whose ``D (D + 1) / 2`` numbers per row would be
    read from memory rather than cache.

    Returns
    -------
    float
        ``sum w log p(y)`` over the rows.
    """
    from . import _fused

    n, n_features = X.shape
    n_components = len(log_const)
    upper = np.triu_indices(n_features)
    log_likelihood = 0.0
    for start, stop in _wide_blocks(n, n_components, n_features):
        Y = np.subtract(X[start:stop], shift, dtype=np.float64)
        m = stop - start
        resp = wide_full_log_prob(Y, whiten, offsets, log_const)
        buffers = [np.empty(m) for _ in range(4)]
        log_likelihood += _fused.normalise_tile(resp, m, w, start, *buffers, nk)
        s1 += resp @ Y
        for k in range(n_components):
            add_gram(Y, resp[k], s2[k], upper)
    return log_likelihood


def wide_full_predict(X, shift, whiten, offsets, log_const, labels, proba, scores):
    """:func:`predict_rows` for full covariances and wide rows (same arguments)."""
    n, n_features = X.shape
    n_components = len(log_const)
    for start, stop in _wide_blocks(n, n_components, n_features):
        Y = np.subtract(X[start:stop], shift, dtype=np.float64)
        log_prob = wide_full_log_prob(Y, whiten, offsets, log_const)
        top = log_prob.max(axis=0)
        expo = np.exp(log_prob - top)
        total = expo.sum(axis=0)
        if labels.shape[0]:
            labels[start:stop] = log_prob.argmax(axis=0)
        if scores.shape[0]:
            scores[start:stop] = top + np.log(total)
        if proba.shape[0]:
            proba[start:stop] = (expo / total).T
