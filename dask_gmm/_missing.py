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
so the Python work per block is O(K x distinct counts of missing features),
whatever the number of patterns; the arithmetic is O(rows x K x D²) plus
O(patterns x K x q³). Diagonal and spherical covariances need no pattern at
all (the conditional mean of a missing feature is the component mean).

The statistics keep their layout (``_stats``), so combine, checkpoints and
the M-step are those of complete data.
"""

from __future__ import annotations

import math

import numpy as np

from ._stats import triu_indices

LOG_2PI = math.log(2 * math.pi)


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
            keys = missing @ (n_features ** np.arange(q, dtype=np.int64))
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
    bounds = np.flatnonzero(np.diff(counts)) + 1
    groups = []
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(counts)]):
        q = int(counts[start])
        # each row's missing features, in increasing order
        missing = np.nonzero(missing_mask[start:stop])[1].reshape(stop - start, q)
        groups.append(PatternGroup(slice(int(start), int(stop)), missing, n_features))
    return groups


def _submatrices(matrix, patterns):
    """``matrix[m][:, m]`` for every pattern ``m``: shape (P, q, q)."""
    return matrix[patterns[:, :, None], patterns[:, None, :]]


class ComponentView:
    """One component's marginal densities and filled rows for a block's incomplete rows.

    Attributes
    ----------
    log_prob : ndarray of shape (n,)
        ``log N(x_o | mean_o, cov_oo)``.
    filled : ndarray of shape (n, D)
        The rows with their missing features at the conditional mean, minus ``shift``.
    conditional : list of ndarray of shape (P, q, q), or ndarray of shape (D,)
        Per pattern group, the conditional covariances (full, tied); or the
        component's variances (diag, spherical), whose missing entries are it.
    """

    def __init__(self, log_prob, filled, conditional):
        self.log_prob = log_prob
        self.filled = filled
        self.conditional = conditional


def component_views(rows, missing_mask, groups, params, shift):
    """Per component, the marginal log density and filled rows of incomplete ``rows``.

    Parameters
    ----------
    rows : ndarray of shape (n, D)
        NaN at the missing features.
    missing_mask : ndarray of shape (n, D), bool
    groups : list of PatternGroup
    params : Params
    shift : ndarray of shape (D,)

    Returns
    -------
    list of ComponentView
        One per component; ``log_prob`` includes the E-step's log weight.
    """
    cov_type = params.covariance_type
    n, n_features = rows.shape
    observed = n_features - missing_mask.sum(axis=1)
    present = (~missing_mask).astype(np.float64)
    log_mixing = params.log_mixing()
    # observed entries minus the shift, missing ones 0: the base of every filled row
    base = np.where(missing_mask, 0.0, rows - shift)
    views = []
    tied_factors = {}  # tied: one factorisation per pattern group serves every component
    for k, mean in enumerate(params.means):
        local_mean = mean - shift
        d = base - present * local_mean  # x - mean, missing entries 0
        if cov_type in ("full", "tied"):
            chol = params.prec_chol[k] if cov_type == "full" else params.prec_chol
            precision = chol @ chol.T
            g = d @ precision
            quad = np.einsum("nd,nd->n", d, g)
            log_det = np.full(n, 2 * np.log(np.diagonal(chol)).sum())
            filled = base.copy()
            g_flat, filled_flat = g.reshape(-1), filled.reshape(-1)
            conditional = []
            for index, group in enumerate(groups):
                if index in tied_factors:
                    inverse, log_det_mm = tied_factors[index]
                else:
                    blocks = _submatrices(precision, group.patterns)
                    lower = np.linalg.cholesky(blocks)
                    log_det_mm = 2 * np.log(np.diagonal(lower, axis1=1, axis2=2)).sum(axis=1)
                    inverse = np.linalg.inv(blocks)
                    if cov_type == "tied":
                        tied_factors[index] = inverse, log_det_mm
                g_m = g_flat[group.flat].reshape(group.missing.shape)
                solved = np.einsum("nij,nj->ni", inverse[group.pattern_of_row], g_m)
                quad[group.rows] -= np.einsum("ni,ni->n", g_m, solved)
                log_det[group.rows] -= log_det_mm[group.pattern_of_row]
                filled_flat[group.flat] = (local_mean[group.missing] - solved).reshape(-1)
                conditional.append(inverse)
            log_prob = -0.5 * quad + 0.5 * log_det
        else:
            precisions = params.prec_chol[k] ** 2
            if cov_type == "spherical":
                precisions = np.full(n_features, precisions)
            quad = (d * d) @ precisions
            log_prob = -0.5 * quad + 0.5 * (present @ np.log(precisions))
            filled = base + (1.0 - present) * local_mean
            conditional = 1.0 / precisions
        log_prob += log_mixing[k] - 0.5 * observed * LOG_2PI
        views.append(ComponentView(log_prob, filled, conditional))
    return views


def log_prob_matrix(views):
    """``(n, K)`` weighted log densities from :func:`component_views`."""
    return np.stack([view.log_prob for view in views], axis=1)


def accumulate_expected(stats, views, groups, missing_mask, resp_weighted):
    """Add the expected complete-data statistics of incomplete rows into ``stats``.

    Parameters
    ----------
    stats : SuffStats
        About the views' shift; ``n``, ``rows`` and ``log_likelihood`` are the caller's.
    views : list of ComponentView
    groups : list of PatternGroup
    missing_mask : ndarray of shape (n, D), bool
    resp_weighted : ndarray of shape (n, K)
        Responsibilities times sample weights.
    """
    cov_type = stats.covariance_type
    n_features = missing_mask.shape[1]
    upper = triu_indices(n_features)
    for k, view in enumerate(views):
        a = resp_weighted[:, k]
        Y = view.filled
        stats.nk[k] += a.sum()
        stats.s1[k] += a @ Y
        if stats.s2 is None:
            continue
        if cov_type in ("full", "tied"):
            second = (Y * a[:, None]).T @ Y
            for group, inverse in zip(groups, view.conditional):
                mass = np.bincount(group.pattern_of_row, weights=a[group.rows],
                                   minlength=len(group.patterns))
                index = (group.patterns[:, :, None] * n_features
                         + group.patterns[:, None, :])
                second.reshape(-1)[:] += np.bincount(
                    index.reshape(-1), weights=(mass[:, None, None] * inverse).reshape(-1),
                    minlength=n_features * n_features)
            if cov_type == "full":
                stats.s2[k] += second[upper]
            else:
                stats.s2 += second
        else:
            extra = missing_mask * view.conditional
            if cov_type == "diag":
                stats.s2[k] += a @ (Y * Y + extra)
            else:
                stats.s2[k] += a @ (np.einsum("nd,nd->n", Y, Y) + extra.sum(axis=1))


class IncompleteRows:
    """The rows of a block missing some (not all) features, ready for the kernels above.

    Parameters
    ----------
    rows : ndarray of shape (n, D)
        With NaN at the missing features, sorted by the number missing.
    w : ndarray of shape (n,) or None
    positions : ndarray of shape (n,)
        Their positions in the block.
    """

    def __init__(self, rows, w, positions):
        self.rows = rows
        self.w = w
        self.positions = positions
        self.missing = np.isnan(rows)
        self.groups = pattern_groups(self.missing)

    @property
    def n(self):
        return self.rows.shape[0]

    def total_weight(self):
        return float(self.n) if self.w is None else float(self.w.sum())

    def weighted(self, R):
        return R if self.w is None else R * self.w[:, None]

    @classmethod
    def from_block(cls, rows, w, complete_positions):
        """The block's rows that are neither complete (``complete_positions``) nor all NaN."""
        others = np.ones(len(rows), dtype=bool)
        if complete_positions is not None:
            others[complete_positions] = False
        candidates = np.flatnonzero(others)
        missing = np.isnan(rows[candidates])
        counts = missing.sum(axis=1)
        keep = counts < rows.shape[1]
        positions = candidates[keep][np.argsort(counts[keep], kind="stable")]
        return cls(np.asarray(rows[positions], dtype=np.float64),
                   None if w is None else w[positions], positions)
