"""EM with missing values integrated out (``nan_policy='marginalize'``).

For a row whose features ``m`` are missing and ``o`` observed, component
``k``'s density is the Gaussian marginal of the observed features, and the
M-step takes expected complete-data statistics (Ghahramani & Jordan, 1994):
the missing block filled with its conditional mean ``x̂_m``, and the
conditional covariance ``C`` added to the second moment. Written with the
precision ``Λ = U Uᵀ`` (no covariance is inverted):

- ``d = x - μ`` with ``d_m = 0``, ``g = Λ d``;
- ``x̂_m = μ_m - Λ_mm⁻¹ g_m`` and ``C = Λ_mm⁻¹``;
- ``(x_o - μ_o)ᵀ Σ_oo⁻¹ (x_o - μ_o) = dᵀ g - g_mᵀ Λ_mm⁻¹ g_m``;
- ``log det Σ_oo⁻¹ = log det Λ - log det Λ_mm``.

Only ``Λ_mm`` (as small as the number of missing features) is factored, once
per missingness pattern and component. Rows are grouped by how many features
they miss, and each group's patterns are factored together (batched numpy),
and every component is handled in the same numpy calls: the Python work per
block grows with the distinct counts of missing features, not with the
patterns or the components; the arithmetic is O(rows x K x D²) plus
O(patterns x K x q³), and pattern slices are bounded (``PATTERN_FLOATS``).
Diagonal and spherical covariances need no pattern at all (the conditional
mean of a missing feature is the component mean).

The statistics keep their layout (``_stats``), so combine, checkpoints and
the M-step are those of complete data.
"""

from __future__ import annotations

import math

import numpy as np

from ._stats import triu_indices

LOG_2PI = math.log(2 * math.pi)
# Bound on q x q entries per component held for one pattern group (2 MiB of float64):
# rows missing many features are factored in slices of at most this many entries.
PATTERN_FLOATS = 2**18


class PatternGroup:
    """The rows of a block that miss ``q`` features, by pattern.

    The incomplete rows are sorted by their number of missing features, so a
    group's rows are one slice.

    Attributes
    ----------
    rows : slice
        The group's rows among the (sorted) incomplete rows.
    missing : ndarray of shape (n_q, q)
        The missing features of each row.
    flat : ndarray of shape (n_q * q,)
        Positions of the missing entries in the flattened ``(n, D)`` rows.
    pattern_of_row : ndarray of shape (n_q,)
        Index of each row's pattern in ``patterns``.
    patterns : ndarray of shape (P, q)
        The distinct missing sets.
    """

    def __init__(self, rows, missing, n_features):
        self.rows = rows
        self.missing = missing
        self.flat = (np.arange(rows.start, rows.stop)[:, None] * n_features
                     + missing).reshape(-1)
        q = missing.shape[1]
        if q * math.log2(max(n_features, 2)) < 62:  # each pattern as one integer
            keys = np.dot(missing, n_features ** np.arange(q, dtype=np.int64))
            unique_keys, first, self.pattern_of_row = np.unique(
                keys, return_index=True, return_inverse=True)
            self.patterns = missing[first]
        else:
            self.patterns, self.pattern_of_row = np.unique(missing, axis=0,
                                                           return_inverse=True)
        self.pattern_of_row = self.pattern_of_row.reshape(-1)


def pattern_groups(missing_mask):
    """Rows grouped by their number of missing features.

    Parameters
    ----------
    missing_mask : ndarray of shape (n, D), bool
        Sorted by the number of missing features; no row misses none or all.

    Returns
    -------
    list of PatternGroup
    """
    counts = missing_mask.sum(axis=1)
    n_features = missing_mask.shape[1]
    groups = []
    if len(counts) == 0:
        return groups
    bounds = np.flatnonzero(np.diff(counts)) + 1
    for first, end in zip(np.r_[0, bounds], np.r_[bounds, len(counts)]):
        q = int(counts[first])
        # a group's per-row and per-pattern q x q matrices stay under
        # PATTERN_FLOATS per component, however many distinct patterns there are
        step = max(1, PATTERN_FLOATS // (q * q))
        for start in range(int(first), int(end), step):
            stop = min(start + step, int(end))
            # each row's missing features, in increasing order
            missing = np.nonzero(missing_mask[start:stop])[1].reshape(stop - start, q)
            groups.append(PatternGroup(slice(start, stop), missing, n_features))
    return groups


def _submatrices(matrix, patterns):
    """``matrix[m][:, m]`` for every pattern ``m``: shape (P, q, q)."""
    return matrix[patterns[:, :, None], patterns[:, None, :]]


class MarginalTerms:
    """A block's incomplete rows under every component: densities and expected rows.

    Attributes
    ----------
    log_prob : ndarray of shape (n, K)
        ``log weight_k + log N(x_o | mean_o, cov_oo)``.
    base : ndarray of shape (n, D)
        Observed values minus the shift, 0 where missing.
    fills : list of ndarray of shape (n_q, K, q)
        Full and tied: per pattern group, the conditional means of the missing
        features minus the shift, for every component.
    inverses : list of ndarray of shape (K, P, q, q)
        Full and tied: per pattern group, the conditional covariances.
    variances : ndarray of shape (K, D)
        Diag and spherical: each component's variances (a missing feature's
        conditional mean is the component mean, its variance the component's).
    local_means : ndarray of shape (K, D)
        The means minus the shift.
    """

    def __init__(self, log_prob, base, local_means, fills=None, inverses=None,
                 variances=None):
        self.log_prob = log_prob
        self.base = base
        self.local_means = local_means
        self.fills = fills
        self.inverses = inverses
        self.variances = variances


def marginal_terms(rows, missing_mask, groups, params, shift):
    """Marginal log densities and expected rows of incomplete ``rows``, all components at once.

    Parameters
    ----------
    rows : ndarray of shape (n, D)
        NaN at the missing features, sorted by their number (see ``IncompleteRows``).
    missing_mask : ndarray of shape (n, D), bool
    groups : list of PatternGroup
    params : Params
    shift : ndarray of shape (D,)

    Returns
    -------
    MarginalTerms
    """
    cov_type = params.covariance_type
    n, n_features = rows.shape
    n_components = len(params.means)
    observed = n_features - missing_mask.sum(axis=1)
    present = (~missing_mask).astype(np.float64)
    base = np.where(missing_mask, 0.0, rows - shift)
    local_means = params.means - shift
    constant = params.log_mixing()[None, :] - 0.5 * LOG_2PI * observed[:, None]
    if cov_type in ("diag", "spherical"):
        precisions = params.prec_chol**2
        if cov_type == "spherical":
            precisions = np.repeat(precisions[:, None], n_features, axis=1)
        # sum over observed d of prec (x - mean)^2, expanded: no n x K x D temporary
        quad = (np.dot(base * base, precisions.T)
                - 2 * np.dot(base, (precisions * local_means).T)
                + np.dot(present, (precisions * local_means**2).T))
        log_det = np.dot(present, np.log(precisions).T)
        return MarginalTerms(-0.5 * quad + 0.5 * log_det + constant, base, local_means,
                             variances=1.0 / precisions)
    chol = params.prec_chol if cov_type == "full" else np.broadcast_to(
        params.prec_chol, (n_components, n_features, n_features))
    precision = np.matmul(chol, chol.transpose(0, 2, 1))  # (K, D, D)
    # g_k = Lambda_k (x - mean_k) with missing entries of x - mean_k set to 0
    # [base, present] @ [Lambda_k; -diag(mean_k) Lambda_k] for all k in one product
    # (each n x K x D temporary costs more in fresh memory than in arithmetic)
    factors = np.concatenate([precision, -local_means[:, :, None] * precision], axis=1)
    g = np.dot(np.concatenate([base, present], axis=1),
               factors.transpose(1, 0, 2).reshape(2 * n_features, -1)
               ).reshape(n, n_components, n_features)
    quad = (np.einsum("nd,nkd->nk", base, g)
            - np.einsum("nd,kd,nkd->nk", present, local_means, g, optimize=False))
    log_det = np.repeat(
        2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)[None], n, axis=0)
    fills, inverses = [], []
    for group in groups:
        blocks = precision[:, group.patterns[:, :, None], group.patterns[:, None, :]]
        if cov_type == "tied":
            blocks = blocks[:1]
        lower = np.linalg.cholesky(blocks)
        log_det_mm = 2 * np.log(np.diagonal(lower, axis1=2, axis2=3)).sum(axis=2)
        inverse = np.linalg.inv(blocks)
        if cov_type == "tied":
            inverse = np.broadcast_to(inverse, (n_components,) + inverse.shape[1:])
            log_det_mm = np.broadcast_to(log_det_mm, (n_components, log_det_mm.shape[1]))
        g_m = np.take_along_axis(g[group.rows], group.missing[:, None, :], axis=2)
        per_row = inverse[:, group.pattern_of_row]  # (K, n_q, q, q)
        solved = np.matmul(per_row, g_m.transpose(1, 0, 2)[..., None])[..., 0].transpose(1, 0, 2)
        quad[group.rows] -= np.einsum("nki,nki->nk", g_m, solved)
        log_det[group.rows] -= log_det_mm[:, group.pattern_of_row].T
        fills.append(local_means[:, group.missing].transpose(1, 0, 2) - solved)
        inverses.append(inverse)
    return MarginalTerms(-0.5 * quad + 0.5 * log_det + constant, base, local_means,
                         fills=fills, inverses=inverses)


def observed_log_prob(incomplete, params, shift):
    """Weighted log densities of incomplete rows' observed features, any covariance type.

    Full and tied take the compiled kernel (``_fused_missing``), diag and
    spherical :func:`marginal_terms`.

    Parameters
    ----------
    incomplete : IncompleteRows
    params : Params
    shift : ndarray of shape (D,)

    Returns
    -------
    log_prob : ndarray of shape (n, K)
    rows : IncompleteRows
        ``incomplete``, or its :meth:`~IncompleteRows.by_count` copy: the rows
        (positions, weights) in the order of ``log_prob``.
    """
    if params.covariance_type in ("full", "tied"):
        from . import _fused_missing

        return _fused_missing.marginal_log_prob(incomplete, params, shift), incomplete
    rows = incomplete.by_count()
    terms = marginal_terms(rows.rows, rows.missing, rows.groups, params, shift)
    return terms.log_prob, rows


def accumulate_expected(stats, terms, groups, missing_mask, resp_weighted):
    """Add the expected complete-data statistics of incomplete rows into ``stats``.

    The expected row of component ``k`` is ``base + F_k``, where ``F_k`` is
    non-zero only at the missing features: the sums split into a part shared by
    every component (one product for all of them, as for complete rows) and
    parts as small as the number of missing features.

    Parameters
    ----------
    stats : SuffStats
        About the terms' shift; ``n``, ``rows`` and ``log_likelihood`` are the caller's.
    terms : MarginalTerms
        From :func:`marginal_terms`.
    groups : list of PatternGroup
    missing_mask : ndarray of shape (n, D), bool
    resp_weighted : ndarray of shape (n, K)
        Responsibilities times sample weights.
    """
    cov_type = stats.covariance_type
    a = resp_weighted
    base = terms.base
    n_components, n_features = terms.local_means.shape
    absent = missing_mask.astype(np.float64)
    stats.nk += a.sum(axis=0)
    shift = stats.shift
    imputed = stats.imputed if stats.imputed is not None else np.zeros(n_features)
    if terms.variances is not None:
        imputed += (np.dot(a.T, absent) * (terms.local_means + shift)).sum(axis=0)
    else:
        for group, fill in zip(groups, terms.fills):
            weighted_fill = a[group.rows][:, :, None] * (fill + shift[group.missing][:, None, :])
            imputed += np.bincount(group.missing.reshape(-1), minlength=n_features,
                                   weights=weighted_fill.sum(axis=1).reshape(-1))
    stats.imputed = imputed
    if terms.variances is not None:  # diag, spherical: missing entries at the means
        counts = np.dot(a.T, absent)  # (K, D): responsibility mass missing each feature
        stats.s1 += np.dot(a.T, base) + counts * terms.local_means
        if stats.s2 is not None:
            second = (np.dot(a.T, base * base)
                      + counts * (terms.local_means**2 + terms.variances))
            stats.s2 += second if cov_type == "diag" else second.sum(axis=1)
        return
    # every component's expected rows at once: base plus its fills at the missing features
    n = base.shape[0]
    expected = np.repeat(base[:, None, :], n_components, axis=1)  # (n, K, D)
    flat = expected.reshape(n, -1)
    for group, fill in zip(groups, terms.fills):
        columns = (np.arange(n_components)[None, :, None] * n_features
                   + group.missing[:, None, :]).reshape(len(fill), -1)
        # a group's rows are a slice: this view writes into ``expected``
        np.put_along_axis(flat[group.rows], columns, fill.reshape(len(fill), -1), axis=1)
    weighted = expected * a[:, :, None]
    stats.s1 += np.einsum("nkd->kd", weighted)
    if stats.s2 is None:
        return
    # (K, D, n) @ (K, n, D): one batched product for every component
    second = np.matmul(weighted.transpose(1, 2, 0), expected.transpose(1, 0, 2))
    square = n_features * n_features
    for group, inverse in zip(groups, terms.inverses):
        mass = np.stack([np.bincount(group.pattern_of_row, weights=a[group.rows, k],
                                     minlength=len(group.patterns))
                         for k in range(n_components)])  # (K, P)
        index = (np.arange(n_components)[:, None, None, None] * square
                 + group.patterns[None, :, :, None] * n_features
                 + group.patterns[None, :, None, :])
        second += np.bincount(index.reshape(-1), minlength=n_components * square,
                              weights=(mass[:, :, None, None] * inverse).reshape(-1)
                              ).reshape(n_components, n_features, n_features)
    if cov_type == "full":
        rows_i, cols_i = triu_indices(n_features)
        stats.s2 += second[:, rows_i, cols_i]
    else:
        stats.s2 += second.sum(axis=0)


class IncompleteRows:
    """The rows of a block missing some (not all) features, ready for the kernels above.

    Parameters
    ----------
    rows : ndarray of shape (n, D)
        With NaN at the missing features.
    w : ndarray of shape (n,) or None
    positions : ndarray of shape (n,)
        Their positions in the block.
    missing : ndarray of shape (n, D), bool, optional
        ``isnan(rows)``, when the caller has it.
    sorted_by_count : bool
        Whether the rows are sorted by their number of missing features.
    """

    def __init__(self, rows, w, positions, missing=None, sorted_by_count=True):
        self.rows = rows
        self.w = w
        self.positions = positions
        self.missing = np.isnan(rows) if missing is None else missing
        self.sorted = sorted_by_count
        self._groups = None

    @property
    def groups(self):
        """The rows' :class:`PatternGroup` list, made on first use (the compiled
        E-step sorts rows by pattern itself)."""
        if not self.sorted:
            raise ValueError("groups need the rows sorted by count: use by_count()")
        if self._groups is None:
            self._groups = pattern_groups(self.missing)
        return self._groups

    @property
    def n(self):
        return self.rows.shape[0]

    def total_weight(self):
        return float(self.n) if self.w is None else float(self.w.sum())

    def weighted(self, R):
        return R if self.w is None else R * self.w[:, None]

    @classmethod
    def joined(cls, parts):
        """One :class:`IncompleteRows` of several (positions are no longer meaningful)."""
        if len(parts) == 1:
            return parts[0]
        rows = np.concatenate([part.rows for part in parts])
        w = None if parts[0].w is None else np.concatenate([part.w for part in parts])
        return cls(rows, w, np.full(len(rows), -1, dtype=np.int64),
                   np.concatenate([part.missing for part in parts]), sorted_by_count=False)

    def by_count(self):
        """These rows sorted by their number of missing features (what the numpy
        kernels and :attr:`groups` need); ``self`` when they already are."""
        if self.sorted:
            return self
        # small integers: numpy's stable sort of them is a radix sort
        order = np.argsort(self.missing.sum(axis=1, dtype=np.int16), kind="stable")
        return IncompleteRows(self.rows[order], None if self.w is None else self.w[order],
                              self.positions[order], self.missing[order])

    @classmethod
    def from_block(cls, rows, w):
        """The block's rows that miss some features but not all, in block order.

        One compiled pass (``_fused_missing.take_incomplete_rows``); the
        compiled E-step sorts them by pattern itself, and :meth:`by_count`
        sorts them for the numpy kernels.
        """
        from . import _fused_missing

        rows = np.ascontiguousarray(rows)
        out = np.empty(rows.shape)
        missing = np.empty(rows.shape, dtype=bool)
        positions = np.empty(len(rows), dtype=np.int64)
        taken = _fused_missing.take_incomplete_rows(rows, out, missing, positions)
        positions = positions[:taken]
        return cls(out[:taken], None if w is None else w[positions], positions,
                   missing[:taken], sorted_by_count=False)
