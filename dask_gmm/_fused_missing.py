"""Compiled (numba) E-step of rows missing some features, for full and tied covariances.

The same formulas as ``_missing`` (written with the precision ``Λ = U Uᵀ``;
``d = x - μ`` with ``d_m = 0``, ``g = Λ d``): the observed-data density from
``dᵀ g - g_mᵀ Λ_mm⁻¹ g_m`` and ``log det Λ - log det Λ_mm``, the missing block
filled with ``μ_m - Λ_mm⁻¹ g_m`` and ``Λ_mm⁻¹`` added to its second moment.

numpy needed ``n x K x D`` temporaries and a batched product per pattern
group, and an iteration with 10% of values missing took 13x a complete one.
Here a chunk's rows come sorted by pattern: each pattern's ``Λ_mm`` is
inverted once per component (``O(patterns x K x q³)``, by a small Gauss-Jordan
elimination written out: a LAPACK call and its copies cost more than inverting
a 2 x 2 block), one product per tile of rows gives ``Λ_k (x - shift)`` for
every component, each row's densities and fills come from a loop over its
components, and the tile's responsibilities are normalised in one pass. The
second moments ``x̂ x̂ᵀ`` split into the observed part, shared by every
component (packed products of a tile, one BLAS call with the tile's
responsibilities, as for complete rows), and the parts at the q missing
features (``q x D`` per row and component); the conditional covariances are
added once per pattern with the pattern's total responsibility. The
per-pattern numbers one call holds are bounded (``PATTERN_FLOATS``): a chunk
where nearly every row has a pattern of its own is taken in several calls.
Given an ``out`` array, the same kernel gives the densities alone, for
predictions and the sweep's likelihood pass. Results agree with
``_missing``'s numpy route (tests compare them).
"""

from __future__ import annotations

import math

import numpy as np

from ._fused import _FASTMATH, compiled, normalise_tile, packed_products

LOG_2PI = math.log(2 * math.pi)
TILE_ROWS = 128
# Per-pattern numbers (Λ_mm⁻¹ and h of every component) one kernel call holds:
# 8 MiB of float64. Chunks with more distinct patterns -- rows missing many of
# many features -- are handled in several calls, so memory stays bounded.
PATTERN_FLOATS = 2**20


@compiled(fastmath=_FASTMATH)
def _inverse_of_blocks(matrices, indices, p, q, out, log_det):
    """``out[:q, :q, k] = inv(M_k[m][:, m])`` for every ``M_k = matrices[k]``, with
    ``m = indices[p, :q]``; ``log_det[k]`` receives its log-determinant.

    Gauss-Jordan elimination in place, without pivoting (the blocks of a
    precision matrix are symmetric positive definite, where that is stable):
    one loop nest and one division per column, twice as fast as a Cholesky
    factor and its inverse at these sizes (the missing features of one row),
    where a LAPACK call and its copies would cost more than the arithmetic.
    The components are the innermost loop: every step is the same for all of
    them, so it vectorises (the blocks are small, a few features).

    Parameters
    ----------
    matrices : ndarray of shape (K, D, D)
    indices : ndarray of shape (P, D), int64
    p, q : int
    out : ndarray of shape (D, D, K)
    log_det : ndarray of shape (K,)
    """
    n_components = matrices.shape[0]
    product = np.ones(n_components)
    inverse = np.empty(n_components)
    factor = np.empty(n_components)
    for a in range(q):
        row = indices[p, a]
        for b in range(q):
            column = indices[p, b]
            for k in range(n_components):
                out[a, b, k] = matrices[k, row, column]
    for k in range(n_components):
        log_det[k] = 0.0
    for c in range(q):
        for k in range(n_components):
            pivot = out[c, c, k]
            product[k] *= pivot
            inverse[k] = 1.0 / pivot
        for k in range(n_components):
            if not 1e-150 < product[k] < 1e150:  # keep the product of pivots in range
                log_det[k] += math.log(product[k])
                product[k] = 1.0
        for j in range(q):
            for k in range(n_components):
                out[c, j, k] *= inverse[k]
        for k in range(n_components):
            out[c, c, k] = inverse[k]
        for i in range(q):
            if i != c:
                for k in range(n_components):
                    factor[k] = out[i, c, k]
                for j in range(q):
                    for k in range(n_components):
                        out[i, j, k] -= factor[k] * out[c, j, k]
                for k in range(n_components):
                    out[i, c, k] = -factor[k] * inverse[k]
    for k in range(n_components):
        log_det[k] += math.log(product[k])


@compiled(fastmath=_FASTMATH)
def _pattern_factors(rows, order, starts, precision, local_means, log_const):
    """What every row of a pattern shares, per pattern and component.

    Returns
    -------
    counts : ndarray of shape (P,)
        Missing features of each pattern.
    missing : ndarray of shape (P, D)
        Their indices (the first ``counts[p]`` of each row).
    offsets : ndarray of shape (P + 1,)
        Where pattern ``p``'s inverses start in ``inverses``.
    inverses : ndarray
        ``Λ_mm⁻¹`` of every pattern and component, ``q²`` numbers each.
    h : ndarray of shape (P, K, D)
        ``Λ_k`` times the mean with its missing features set to 0.
    pattern_const : ndarray of shape (P, K)
        ``log_const_k - (D - q)/2 log 2π - log det Λ_mm / 2``.
    """
    n_features = rows.shape[1]
    n_components = local_means.shape[0]
    n_patterns = starts.shape[0] - 1
    # --- per pattern: missing features, h_k = Λ_k (μ_k observed, 0 missing),
    # the constants, and Λ_mm⁻¹ of every component (flat, q² numbers each)
    counts = np.zeros(n_patterns, dtype=np.int64)
    missing = np.empty((n_patterns, n_features), dtype=np.int64)
    offsets = np.zeros(n_patterns + 1, dtype=np.int64)
    for p in range(n_patterns):
        first = order[starts[p]]
        q = 0
        for j in range(n_features):
            if np.isnan(rows[first, j]):
                missing[p, q] = j
                q += 1
        counts[p] = q
        offsets[p + 1] = offsets[p] + n_components * q * q
    inverses = np.empty(offsets[n_patterns])
    h = np.empty((n_patterns, n_components, n_features))
    pattern_const = np.empty((n_patterns, n_components))
    block_inverse = np.empty((n_features, n_features, n_components))
    log_det_mm = np.empty(n_components)
    whole_h = np.empty((n_components, n_features))
    for k in range(n_components):
        for i in range(n_features):
            acc = 0.0
            for j in range(n_features):
                acc += precision[k, i, j] * local_means[k, j]
            whole_h[k, i] = acc
    for p in range(n_patterns):
        q = counts[p]
        _inverse_of_blocks(precision, missing, p, q, block_inverse, log_det_mm)
        for k in range(n_components):
            at = offsets[p] + k * q * q
            for a in range(q):
                for b in range(q):
                    inverses[at + a * q + b] = block_inverse[a, b, k]
            # h = Λ_k μ_k less the columns of the missing features
            for i in range(n_features):
                h[p, k, i] = whole_h[k, i]
            for c in range(q):
                j = missing[p, c]
                mean_j = local_means[k, j]
                for i in range(n_features):
                    h[p, k, i] -= precision[k, j, i] * mean_j
            pattern_const[p, k] = (log_const[k] - 0.5 * (n_features - q) * LOG_2PI
                                   - 0.5 * log_det_mm[k])
    return counts, missing, offsets, inverses, h, pattern_const


@compiled(fastmath=_FASTMATH)
def marginal_e_step(rows, w, order, starts, shift, precision, local_means, log_const,
                    n_tile, nk, s1, s2, imputed, out):
    """Add the expected complete-data sums of incomplete rows; return their log-likelihood.

    Parameters
    ----------
    rows : ndarray of shape (n, D), float64
        NaN at the missing features; no row complete, none all missing.
    w : ndarray of shape (n,) or (0,)
        Sample weights; empty for none.
    order : ndarray of shape (m,), int64
        The rows to take (all, or the patterns of one batch), sorted by
        missingness pattern.
    starts : ndarray of shape (P + 1,), int64
        Pattern ``p`` is rows ``order[starts[p]:starts[p + 1]]``; ``starts[-1] = m``.
    shift : ndarray of shape (D,)
    precision : ndarray of shape (K, D, D)
        ``Λ_k`` (tied: the same matrix K times).
    local_means : ndarray of shape (K, D)
        The means minus ``shift``.
    log_const : ndarray of shape (K,)
        ``log weight_k + log det U_k``.
    n_tile : int
        Rows whose filled values are summed in one product.
    nk : ndarray of shape (K,)
    s1 : ndarray of shape (K, D)
    s2 : ndarray of shape (K, D, D)
        Adds ``sum w r_k x̂ x̂ᵀ + w r_k C`` (all of the matrix; packed by the caller).
    imputed : ndarray of shape (D,)
        Adds ``sum_k w r_k (x̂_m + shift_m)`` at the missing features.
    out : ndarray of shape (n, K) or (0, K)
        Non-empty: receives ``log weight_k + log N(x_o | ...)`` of each row
        (predictions, the sweep's likelihood pass), and nothing else is done.

    Returns
    -------
    float
        ``sum w log p(x_o)`` (0 when ``out`` is given).
    """
    n, n_features = order.shape[0], rows.shape[1]
    n_components = local_means.shape[0]
    n_patterns = starts.shape[0] - 1
    weighted = w.shape[0] > 0
    densities_only = out.shape[0] > 0
    counts, missing, offsets, inverses, h, pattern_const = _pattern_factors(
        rows, order, starts, precision, local_means, log_const)
    # --- tiles of rows in pattern order: one product gives Λ_k base for every k
    # Λ_k is symmetric: row r of base_rows @ stacked_t is [Λ_1 base_r, ..., Λ_K base_r]
    stacked_t = np.ascontiguousarray(
        precision.reshape(n_components * n_features, n_features).T)
    base_rows = np.zeros((n_tile, n_features))
    products = np.empty((n_tile, n_components * n_features))
    pattern_of = np.empty(n_tile, dtype=np.int64)
    g = np.empty(n_features)
    fills = np.empty((n_tile, n_components, n_features))
    row_w = np.empty(n_tile if weighted else 0)
    top = np.empty(n_tile)
    total = np.empty(n_tile)
    logs = np.empty(n_tile)
    # x̂ x̂ᵀ = base baseᵀ + (base fᵀ + f baseᵀ) + f fᵀ, where the fill f is
    # non-zero only at the missing features: the first term is shared by every
    # component (packed products of the tile, one product with the tile's
    # responsibilities, as for complete rows); the others are q x D per row.
    n_packed = n_features * (n_features + 1) // 2
    base_t = np.zeros((n_features, n_tile))
    quad_t = np.empty((n_packed, n_tile))
    resp_t = np.zeros((n_components, n_tile))
    s1_tile = np.empty((n_components, n_features))
    s2_tile = np.empty((n_components, n_packed))
    packed = np.zeros((n_components, n_packed))
    cross = np.zeros((n_components, n_features, n_features))
    fill_sum = np.zeros((n_components, n_features))
    mass = np.zeros((n_patterns, n_components))
    log_likelihood = 0.0
    p = 0
    for begin in range(0, n, n_tile):
        m = min(n_tile, n - begin)
        for r in range(m):
            while starts[p + 1] <= begin + r:
                p += 1
            pattern_of[r] = p
            row = order[begin + r]
            for j in range(n_features):
                value = rows[row, j]
                base_rows[r, j] = 0.0 if np.isnan(value) else value - shift[j]
        np.dot(base_rows, stacked_t, products)
        for r in range(m):
            pr = pattern_of[r]
            q = counts[pr]
            row = order[begin + r]
            for k in range(n_components):
                at = offsets[pr] + k * q * q
                quad = 0.0
                for i in range(n_features):
                    g[i] = products[r, k * n_features + i] - h[pr, k, i]
                    quad += (base_rows[r, i] - local_means[k, i]) * g[i]
                for a in range(q):
                    j = missing[pr, a]
                    quad += local_means[k, j] * g[j]
                    solved = 0.0
                    for b in range(q):
                        solved += inverses[at + a * q + b] * g[missing[pr, b]]
                    quad -= g[j] * solved
                    fills[r, k, a] = local_means[k, j] - solved
                resp_t[k, r] = pattern_const[pr, k] - 0.5 * quad
            if densities_only:
                for k in range(n_components):
                    out[row, k] = resp_t[k, r]
        if densities_only:
            continue
        if weighted:
            for r in range(m):
                row_w[r] = w[order[begin + r]]
        log_likelihood += normalise_tile(resp_t, m, row_w, 0, top, total, logs, nk)
        for r in range(m):
            pr = pattern_of[r]
            q = counts[pr]
            for k in range(n_components):
                a_k = resp_t[k, r]
                mass[pr, k] += a_k
                for a in range(q):
                    j = missing[pr, a]
                    fill = a_k * fills[r, k, a]
                    fill_sum[k, j] += fill
                    for i in range(n_features):
                        cross[k, j, i] += fill * base_rows[r, i]
                    for b in range(q):
                        s2[k, j, missing[pr, b]] += fill * fills[r, k, b]
        for j in range(n_features):
            for r in range(m):
                base_t[j, r] = base_rows[r, j]
        packed_products(base_t, quad_t)
        np.dot(resp_t, base_rows, s1_tile)
        s1 += s1_tile
        np.dot(resp_t, quad_t.T, s2_tile)
        packed += s2_tile
    # imputed: sum w r (x̂_j + shift_j) over rows missing j; sum_k r = 1
    s1 += fill_sum
    for k in range(n_components):
        for j in range(n_features):
            imputed[j] += fill_sum[k, j]
    for p in range(n_patterns):
        weight = 0.0
        for k in range(n_components):
            weight += mass[p, k]
        for a in range(counts[p]):
            imputed[missing[p, a]] += weight * shift[missing[p, a]]
    for k in range(n_components):
        t = 0
        for i in range(n_features):
            for j in range(i, n_features):
                value = packed[k, t] + cross[k, i, j] + cross[k, j, i]
                s2[k, i, j] += value
                if j != i:
                    s2[k, j, i] += value
                t += 1
    for p in range(n_patterns):
        q = counts[p]
        for k in range(n_components):
            at = offsets[p] + k * q * q
            for a in range(q):
                for b in range(q):
                    s2[k, missing[p, a], missing[p, b]] += mass[p, k] * inverses[at + a * q + b]
    return log_likelihood


@compiled()
def take_incomplete_rows(rows, out, missing, positions):
    """Copy the rows missing some but not all features to the front of ``out``, in one pass.

    Parameters
    ----------
    rows : ndarray of shape (n, D), float32 or float64
    out : ndarray of shape (n, D), float64
        Receives the rows, in order.
    missing : ndarray of shape (n, D), bool
        Receives their NaN mask.
    positions : ndarray of shape (n,), int64
        Receives their positions in ``rows``.

    Returns
    -------
    int
        How many rows were taken.
    """
    n, n_features = rows.shape
    taken = 0
    for i in range(n):
        n_missing = 0
        for j in range(n_features):
            value = rows[i, j]
            absent = np.isnan(value)
            n_missing += absent
            out[taken, j] = value
            missing[taken, j] = absent
        if 0 < n_missing < n_features:
            positions[taken] = i
            taken += 1
    return taken


@compiled()
def pattern_keys(mask):
    """One integer per row of a NaN mask of at most 62 features: bit ``j`` is
    feature ``j`` missing (numpy's product of the mask with the powers of two
    converted the mask to int64 first: 0.8 ms for 51,000 rows, this 0.05)."""
    keys = np.zeros(mask.shape[0], dtype=np.int64)
    for r in range(mask.shape[0]):
        key = 0
        for j in range(mask.shape[1]):
            if mask[r, j]:
                key |= np.int64(1) << j
        keys[r] = key
    return keys


def pattern_batches(missing_counts, n_components, n_features):
    """Split patterns into runs whose per-pattern numbers fit in ``PATTERN_FLOATS``.

    Parameters
    ----------
    missing_counts : ndarray of shape (P,)
        How many features each pattern misses.

    Returns
    -------
    list of (first, last)
        Patterns ``first..last - 1`` per kernel call; every run has at least one.
    """
    cost = n_components * (missing_counts.astype(np.int64) ** 2 + n_features + 3)
    if len(cost) and cost.sum() <= PATTERN_FLOATS:  # the common case: one call
        return [(0, len(cost))]
    batches, first, held = [], 0, 0
    for p, c in enumerate(cost.tolist()):
        if held and held + c > PATTERN_FLOATS:
            batches.append((first, p))
            first, held = p, 0
        held += c
    if len(cost):
        batches.append((first, len(cost)))
    return batches


def sort_by_pattern(keys, n_features):
    """The order that sorts non-negative integer ``keys`` (one per pattern), as int64.

    Sorted 16 bits at a time from the lowest: numpy's stable sort of 16-bit
    integers is a radix sort, ten times quicker than sorting the int64 keys.
    """
    bits = min(n_features, 62) if keys.max(initial=0) >= 2**16 else 16
    order = None
    for low in range(0, bits, 16):
        digit = ((keys >> low) & 0xFFFF).astype(np.uint16)
        if order is None:
            order = np.argsort(digit, kind="stable")
        else:
            order = order[np.argsort(digit[order], kind="stable")]
    return order.astype(np.int64)


class PatternRuns:
    """Incomplete rows sorted by missingness pattern, with what the kernels take.

    Parameters
    ----------
    incomplete : IncompleteRows
    params : Params
        Full or tied.
    shift : ndarray of shape (D,)
    """

    def __init__(self, incomplete, params, shift):
        mask = incomplete.missing
        n, n_features = mask.shape
        if n_features <= 62:
            keys = pattern_keys(mask)
        else:
            keys = np.unique(mask, axis=0, return_inverse=True)[1].reshape(-1)
        self.order = sort_by_pattern(keys, n_features)
        sorted_keys = keys[self.order]
        self.starts = np.r_[0, np.flatnonzero(np.diff(sorted_keys)) + 1, n].astype(np.int64)
        n_components = len(params.weights)
        chol = params.prec_chol
        if params.covariance_type == "tied":
            chol = np.broadcast_to(chol, (n_components, n_features, n_features))
        self.precision = np.ascontiguousarray(np.matmul(chol, chol.transpose(0, 2, 1)))
        self.log_const = params.log_mixing() + np.log(
            np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
        self.rows = np.ascontiguousarray(incomplete.rows, dtype=np.float64)
        self.shift = np.asarray(shift, dtype=np.float64)
        self.local_means = np.ascontiguousarray(params.means - shift)
        self.batches = pattern_batches(mask[self.order[self.starts[:-1]]].sum(axis=1),
                                       n_components, n_features)

    def runs(self):
        """``(order, starts)`` of each batch of patterns, for one kernel call each."""
        for first, last in self.batches:
            yield (self.order[self.starts[first]:self.starts[last]],
                   self.starts[first:last + 1] - self.starts[first])


def expected_sums(incomplete, params, stats):
    """Incomplete rows' observed-data log-likelihood and expected sums into ``stats``.

    Full and tied covariances (``_missing.marginal_terms`` and
    ``accumulate_expected`` are the numpy route).

    Parameters
    ----------
    incomplete : IncompleteRows
    params : Params
    stats : SuffStats
        About the chunk's shift; ``n`` and ``rows`` are the caller's.

    Returns
    -------
    float
    """
    n_components, n_features = params.means.shape
    runs = PatternRuns(incomplete, params, stats.shift)
    w = np.empty(0) if incomplete.w is None else np.ascontiguousarray(incomplete.w,
                                                                     dtype=np.float64)
    second = np.zeros((n_components, n_features, n_features))
    imputed = np.zeros(n_features)
    log_likelihood = 0.0
    for order, starts in runs.runs():
        log_likelihood += marginal_e_step(
            runs.rows, w, order, starts, runs.shift, runs.precision, runs.local_means,
            runs.log_const, TILE_ROWS, stats.nk, stats.s1, second, imputed,
            np.empty((0, n_components)))
    stats.imputed = imputed if stats.imputed is None else stats.imputed + imputed
    if stats.s2 is not None:
        if params.covariance_type == "full":
            rows_i, cols_i = np.triu_indices(n_features)
            stats.s2 += second[:, rows_i, cols_i]
        else:
            stats.s2 += second.sum(axis=0)
    return log_likelihood


def marginal_log_prob(incomplete, params, shift):
    """Weighted log densities of incomplete rows' observed features, full and tied.

    What ``_missing.marginal_terms(...).log_prob`` gives (the numpy route),
    from the compiled kernels.

    Parameters
    ----------
    incomplete : IncompleteRows
    params : Params
    shift : ndarray of shape (D,)
        A point near the rows.

    Returns
    -------
    ndarray of shape (n, K)
        ``log weight_k + log N(x_o | mean_o, cov_oo)``, in the rows' order.
    """
    runs = PatternRuns(incomplete, params, shift)
    n_components, n_features = params.means.shape
    out = np.empty((incomplete.n, n_components))
    unused = np.zeros((n_components, n_features))
    for order, starts in runs.runs():
        marginal_e_step(runs.rows, np.empty(0), order, starts, runs.shift, runs.precision,
                        runs.local_means, runs.log_const, TILE_ROWS, np.zeros(n_components),
                        unused, np.zeros((n_components, n_features, n_features)),
                        np.zeros(n_features), out)
    return out
