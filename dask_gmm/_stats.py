"""Sufficient statistics of a pass and their algebra (the ``combine`` step).

A pass reduces every row chunk to one :class:`SuffStats` per request: the total
weight ``n``, ``sum(w * log p(x))``, and per component ``nk = sum(r)``,
``s1 = sum(r (x - shift))`` and the second moments ``s2`` about ``shift`` in the
form the covariance type needs. Each chunk takes its moments about a point of
its own (the mean of its first rows), which keeps the digits a raw
``sum(x x^T)`` loses far from the origin; :func:`translate_stats` moves them to
another point exactly (the parallel-axis identity) and :func:`combine_stats`
adds statistics taken about different points.

The layout of ``s2`` is the one thing several places must agree on, so it is
written once, in :data:`SECOND_MOMENTS`: per covariance type its shape, what a
row block adds to it, how it moves to another point, and the covariance it
gives (used by the M-step). The compiled full-covariance kernel (``_fused``)
fills the same packed ``(K, T)`` layout as ``SECOND_MOMENTS['full']``.

Conventions: ``K`` components, ``D`` features, ``T = D (D + 1) / 2``, ``n`` rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


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
        Second moments about ``shift``, laid out as ``SECOND_MOMENTS[covariance_type]``
        says; None when not asked for.
    shift : ndarray of shape (D,)
        The point the moments were taken about.
    covariance_type : str
    rows : int
        Rows counted, weighted or not (masked rows are not counted).
    imputed : ndarray of shape (D,) or None
        Under ``nan_policy='marginalize'``: the part of ``s1`` (in absolute
        coordinates) that filled-in missing values contribute, so that
        :func:`pass_sums` can give the sums of the observed data alone.
    """

    n: float
    log_likelihood: float
    nk: np.ndarray
    s1: np.ndarray
    s2: np.ndarray | None
    shift: np.ndarray
    covariance_type: str = "full"
    rows: int = 0
    imputed: np.ndarray | None = None


# --------------------------------------------------------------------------
# The second-moment layout, one entry per covariance type.


@dataclass(frozen=True)
class SecondMoments:
    """How one covariance type keeps ``sum r (x - shift)(x - shift)^T``.

    Attributes
    ----------
    shape : callable ``(K, D) -> tuple``
        Shape of ``s2``.
    block_sum : callable ``(block, Rw) -> ndarray``
        What a row block adds to ``s2``; ``block`` is a ``RowBlock`` (``Y`` its
        shifted rows, ``quad_t`` their packed products, ``w`` the weights) and
        ``Rw`` its weighted responsibilities ``(n, K)``.
    translate : callable ``(stats, d) -> ndarray``
        ``s2`` about ``shift - d`` (``d = shift - new_shift``).
    covariance : callable ``(s2, nk, local_means, reg_covar) -> ndarray``
        The covariances (plus ``reg_covar`` on the diagonal) from ``s2``, the
        masses ``nk`` and the means relative to the shift.
    """

    shape: Callable
    block_sum: Callable
    translate: Callable
    covariance: Callable


def _translate_full(stats, d):
    rows, cols = triu_indices(len(d))
    s1, nk = stats.s1, stats.nk
    return stats.s2 + s1[:, rows] * d[cols] + d[rows] * s1[:, cols] + nk[:, None] * (
        d[rows] * d[cols]
    )


def _covariance_full(s2, nk, local_means, reg_covar):
    cov = unpack_symmetric(s2, local_means.shape[1]) / nk[:, None, None]
    cov -= local_means[:, :, None] * local_means[:, None, :]
    n_features = cov.shape[-1]
    cov[:, np.arange(n_features), np.arange(n_features)] += reg_covar
    return cov


def _block_sum_tied(block, Rw):
    Y = block.Y
    Yw = Y if block.w is None else Y * block.w[:, None]
    return np.dot(Yw.T, Y)


def _translate_tied(stats, d):
    total = stats.s1.sum(axis=0)
    return stats.s2 + np.outer(total, d) + np.outer(d, total) + stats.n * np.outer(d, d)


def _covariance_tied(s2, nk, local_means, reg_covar):
    cov = s2 - np.dot((nk[:, None] * local_means).T, local_means)
    cov /= nk.sum()
    cov.flat[:: cov.shape[0] + 1] += reg_covar
    return cov


def _covariance_spherical(s2, nk, local_means, reg_covar):
    n_features = local_means.shape[1]
    return (s2 / nk - (local_means**2).sum(axis=1)) / n_features + reg_covar


SECOND_MOMENTS = {
    "full": SecondMoments(
        shape=lambda k, d: (k, d * (d + 1) // 2),
        block_sum=lambda block, Rw: np.dot(block.quad_t, Rw).T,
        translate=_translate_full,
        covariance=_covariance_full,
    ),
    "tied": SecondMoments(
        shape=lambda k, d: (d, d),
        block_sum=_block_sum_tied,
        translate=_translate_tied,
        covariance=_covariance_tied,
    ),
    "diag": SecondMoments(
        shape=lambda k, d: (k, d),
        block_sum=lambda block, Rw: np.dot(Rw.T, block.Y * block.Y),
        translate=lambda stats, d: stats.s2 + 2 * stats.s1 * d + stats.nk[:, None] * d**2,
        covariance=lambda s2, nk, local_means, reg_covar: (
            s2 / nk[:, None] - local_means**2 + reg_covar),
    ),
    "spherical": SecondMoments(
        shape=lambda k, d: (k,),
        block_sum=lambda block, Rw: np.dot(Rw.T, np.einsum("nd,nd->n", block.Y, block.Y)),
        translate=lambda stats, d: stats.s2 + 2 * np.dot(stats.s1, d) + stats.nk * np.dot(d, d),
        covariance=_covariance_spherical,
    ),
}


# --------------------------------------------------------------------------
# The algebra.


def empty_stats(n_components, n_features, covariance_type, shift, second_moments=True):
    """Zero statistics about ``shift``.

    Returns
    -------
    SuffStats
    """
    s2_shape = SECOND_MOMENTS[covariance_type].shape(n_components, n_features)
    return SuffStats(
        n=0.0,
        log_likelihood=0.0,
        nk=np.zeros(n_components),
        s1=np.zeros((n_components, n_features)),
        s2=np.zeros(s2_shape) if second_moments else None,
        shift=np.asarray(shift, dtype=np.float64),
        covariance_type=covariance_type,
    )


def accumulate(stats, block, R):
    """Add one row block's responsibility-weighted sums into ``stats`` (in place).

    Parameters
    ----------
    stats : SuffStats
    block : RowBlock
    R : ndarray of shape (n, K)
        Responsibilities of the block's rows.
    """
    Rw = block.weighted(R)
    stats.nk += Rw.sum(axis=0)
    stats.s1 += np.dot(Rw.T, block.Y)
    stats.n += block.total_weight()
    stats.rows += block.n
    if stats.s2 is not None:
        stats.s2 += SECOND_MOMENTS[stats.covariance_type].block_sum(block, Rw)


def translate_stats(stats, new_shift):
    """The same statistics with moments taken about ``new_shift`` (exact identity).

    With ``d = shift - new_shift``, ``x - new_shift = (x - shift) + d``, so
    ``s1' = s1 + nk d`` and ``s2' = s2 + s1 d^T + d s1^T + nk d d^T``.
    """
    d = stats.shift - new_shift
    if not d.any():
        return stats
    s2 = stats.s2
    if s2 is not None:
        s2 = SECOND_MOMENTS[stats.covariance_type].translate(stats, d)
    return SuffStats(
        n=stats.n,
        log_likelihood=stats.log_likelihood,
        nk=stats.nk,
        s1=stats.s1 + stats.nk[:, None] * d,
        s2=s2,
        shift=np.asarray(new_shift, dtype=np.float64),
        covariance_type=stats.covariance_type,
        rows=stats.rows,
        imputed=stats.imputed,
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
        rows=sum(p.rows for p in parts),
        imputed=_sum_or_none([p.imputed for p in parts]),
    )


def _sum_or_none(arrays):
    present = [a for a in arrays if a is not None]
    return np.sum(present, axis=0) if present else None


def combine_stat_lists(*lists):
    """Combine lists of statistics element by element (one list per chunk)."""
    return [combine_stats(*items) for items in zip(*lists)]


def pass_sums(stats):
    """``(sum of weight * x, sum of weight)`` from a pass's statistics.

    Missing values (marginalised) count as 0, so the sums depend on the data
    alone, not on the parameters that filled them in.
    """
    total = stats.s1.sum(axis=0) + stats.n * stats.shift
    if stats.imputed is not None:
        total = total - stats.imputed
    return total, stats.n
