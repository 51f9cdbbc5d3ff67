"""Initial parameters that never load the whole data.

Each strategy mirrors one of scikit-learn's ``init_params`` and reads the data
at most a few times through the same chunk/combine engine as EM:

- ``'kmeans'``: k-means on a random sample of rows (scikit-learn's ``KMeans``;
  the best of ``KMEANS_SAMPLE_RESTARTS`` k-means++ seedings when the data are
  larger than the sample), then Lloyd steps over all chunks until the centers
  settle; the last step's hard-assignment statistics (second moments
  included) give the initial weights, means and covariances by one M-step.
  Data no larger than the sample get that one statistics pass alone.
- ``'k-means++'``: k-means++ seeds picked from the sample become the means.
- ``'random_from_data'``: randomly chosen rows become the means.
- ``'random'``: random responsibilities per row (one seed drawn up front, one
  random stream per chunk derived from it) turned into parameters by one M-step.

For the last three, as in scikit-learn, the covariances start at ``reg_covar``
(the statistics of a single row per component).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans, kmeans_plusplus

from ._estep import RowPlace, check_finite_rows, check_rows, screen_rows
from ._mstep import Params, gaussian_estimate, precision_cholesky
from ._requests import HardAssignment, RandomResponsibilities, TakeRows
from ._validation import check_kept_rows
from ._variational import DataMoments, moments_from_rows, moments_from_stats

logger = logging.getLogger(__name__)

# Data of at most this many rows are seeded from whole (k-means on every row, as
# scikit-learn); larger data from a random sample of ``seeding_rows(K)`` rows.
KMEANS_SAMPLE_ROWS = 50_000
# The sample of larger data: at least this many rows, and this many per component.
SEEDING_ROWS, SEEDING_ROWS_PER_COMPONENT = 20_000, 2_500
# On data larger than the sample, k-means runs on the sample from this many
# k-means++ seedings and keeps the best. One seeding (scikit-learn's KMeans
# default) put two centers in one blob in 9 of 60 samples of 1M rows from 8
# Gaussian blobs, 8 of 60 with 20,000 rows (3 of 30 on all the rows); three
# seedings in none of 40. Data no larger than KMEANS_SAMPLE_ROWS get one
# seeding, so that the same seeds give scikit-learn's fit.
KMEANS_SAMPLE_RESTARTS = 3
# Populations up to this size are drawn from with numpy's own
# ``RandomState.choice`` (as scikit-learn does, so small data draw the rows it
# would); larger ones with :func:`sample_indices`, whose cost does not grow
# with the population.
PERMUTED_POPULATION = 1_000_000
# Lloyd passes over all chunks after the sample's k-means.
KMEANS_MAX_PASSES = 30
# As scikit-learn's KMeans: stop when centers move less than this times the
# mean feature variance.
KMEANS_TOL = 1e-4


def sample_indices(n_samples, size, random_state):
    """``size`` distinct row numbers out of ``n_samples``, uniformly at random, sorted.

    numpy's ``RandomState.choice(n, size, replace=False)`` permutes all ``n``
    numbers: 0.4 s and 80 MB for 10**7 rows, 8 GB for 10**9. Here numbers are
    drawn with replacement and the repeats drawn again, so time and memory
    grow with ``size`` alone. Every subset of ``size`` rows is equally likely:
    the draws are exchangeable, so the set's law is invariant under any
    permutation of the rows.

    Parameters
    ----------
    n_samples : int
    size : int
        At most ``n_samples``.
    random_state : numpy.random.RandomState

    Returns
    -------
    ndarray of shape (size,), int64
    """
    if size >= n_samples:
        return np.arange(n_samples)
    if 4 * size >= n_samples:
        return np.sort(random_state.permutation(n_samples)[:size])
    chosen = _sorted_distinct(random_state.randint(0, n_samples, size=size, dtype=np.int64))
    while len(chosen) < size:
        more = random_state.randint(0, n_samples, size=size - len(chosen), dtype=np.int64)
        chosen = _sorted_distinct(np.concatenate([chosen, more]))
    return chosen


def _sorted_distinct(values):
    """``np.unique(values)`` for integers, by a sort (numpy's hash-based unique took
    2.2 ms on 20,000 row numbers, this 0.6 ms)."""
    values = np.sort(values)
    keep = np.empty(len(values), dtype=bool)
    keep[:1] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def random_rows(n_samples, size, random_state):
    """``size`` distinct row numbers in random order (``random_from_data``).

    Up to ``PERMUTED_POPULATION`` rows, scikit-learn's own draw; beyond it,
    :func:`sample_indices` shuffled.
    """
    if n_samples <= PERMUTED_POPULATION:
        return random_state.choice(n_samples, size=size, replace=False)
    indices = sample_indices(n_samples, size, random_state)
    random_state.shuffle(indices)
    return indices


def draw_rows(data, indices):
    """Step generator: fetch rows by index in one pass, in the order given.

    Parameters
    ----------
    data : ChunkedRows
    indices : ndarray of int

    Returns
    -------
    ndarray of shape (len(indices), n_features), float64
        Under ``nan_policy='omit'`` rows holding NaN come back as they are
        (see :func:`usable_rows`); otherwise they are an error.
    """
    rows = yield TakeRows(indices)
    rows = np.asarray(rows, dtype=np.float64)
    if not data.omit_nan:
        check_finite_rows(rows, row_numbers=indices, place=_grid_place(data))
        check_rows(rows)
    return rows


def _grid_place(data):
    """Messages about drawn rows of an N-D input name them on the sample grid."""
    grid = data.sample_shape
    return RowPlace((0,) * len(grid), grid, grid) if len(grid) > 1 else None


def usable_rows(rows, data, indices):
    """The drawn rows a fit may use: all of them, or those without NaN under 'omit'.

    Parameters
    ----------
    rows : ndarray of shape (n, n_features)
    data : ChunkedRows
    indices : ndarray of shape (n,)
        The sample number of each row, for messages.

    Returns
    -------
    ndarray of shape (m, n_features)
    """
    if not data.omit_nan:
        return rows
    rows, _, _ = screen_rows(rows, None, True, place=_grid_place(data), row_numbers=indices)
    return rows


def seeding_rows(n_components):
    """Rows of the random sample k-means seeds from, for data larger than KMEANS_SAMPLE_ROWS.

    The Lloyd passes over all the rows refine what the sample gives, so the
    sample need only place each component: 20,000 rows of 1M (8 blobs) gave the
    same fits as 50,000 in 10 of 10 seeds, and a default fit 0.315 s instead of
    0.364 s (median; three seedings cost about three times the rows).
    """
    return min(KMEANS_SAMPLE_ROWS,
               max(SEEDING_ROWS, SEEDING_ROWS_PER_COMPONENT * n_components))


def _sample(data, n_components, random_state):
    """Step generator: the rows k-means seeds from (all of them when few), and if whole."""
    n_samples = data.shape[0]
    whole = n_samples <= KMEANS_SAMPLE_ROWS
    size = n_samples if whole else seeding_rows(n_components)
    if whole:
        indices = np.arange(n_samples)
    else:
        indices = sample_indices(n_samples, size, random_state)
    rows = usable_rows((yield from draw_rows(data, indices)), data, indices)
    if data.omit_nan:
        where = "" if whole else f" (in a random sample of {size:,})"
        check_kept_rows(len(rows), n_components, n_samples, where)
    return rows, whole


def _rows_from_data(data, n_components, random_state):
    """Step generator: ``n_components`` distinct rows drawn at random (random_from_data).

    As scikit-learn: ``random_state.choice(n_samples, n_components)`` (see
    :func:`random_rows` for large data). Under
    ``nan_policy='omit'`` the draw is among the rows without NaN: when the data
    are small all rows are read and the draw made among the kept ones (what
    scikit-learn does on the kept rows); otherwise more rows are drawn than
    needed and the first complete ones kept.
    """
    n_samples = data.shape[0]
    if not data.omit_nan:
        indices = random_rows(n_samples, n_components, random_state)
        return (yield from draw_rows(data, indices))
    if n_samples <= KMEANS_SAMPLE_ROWS:
        indices = np.arange(n_samples)
        kept = usable_rows((yield from draw_rows(data, indices)), data, indices)
        check_kept_rows(len(kept), n_components, n_samples)
        return kept[random_state.choice(len(kept), size=n_components, replace=False)]
    size = 4 * n_components
    while True:
        size = min(size, KMEANS_SAMPLE_ROWS)
        indices = random_rows(n_samples, size, random_state)
        kept = usable_rows((yield from draw_rows(data, indices)), data, indices)
        if len(kept) >= n_components or size == KMEANS_SAMPLE_ROWS:
            check_kept_rows(len(kept), n_components, n_samples,
                            f" (in a random sample of {size:,})")
            return kept[:n_components]
        size *= 4


def _seed_estimate(means, covariance_type, reg_covar, eps):
    """Masses, means and covariances of one row per component (k-means++, random_from_data).

    As in scikit-learn, each component holds one row of mass ``1 + 10 * eps``,
    so its variance is ``reg_covar`` plus a rounding-sized term. That term is
    taken about the seeds' own centre rather than the origin: about the origin
    it grows with the data's distance from it (for float32 data offset by 1e6 it
    was about 1e6, and EM started from variances as wide as the offset).
    """
    n_components, n_features = means.shape
    mass = 1.0 + 10 * eps
    centre = means.mean(axis=0)
    centred = means - centre
    local = centre + centred / mass
    variances = np.full((n_components, n_features), reg_covar) + (
        centred**2 / mass - (centred / mass) ** 2
    )
    if covariance_type == "full":
        cov = np.zeros((n_components, n_features, n_features))
        cov[:, np.arange(n_features), np.arange(n_features)] = reg_covar
    elif covariance_type == "tied":
        cov = np.eye(n_features) * reg_covar
    elif covariance_type == "diag":
        cov = variances
    else:
        cov = variances.mean(axis=1)
    return np.full(n_components, mass), local, cov


def _kmeans_stats(data, n_components, covariance_type, random_state):
    sample, whole = yield from _sample(data, n_components, random_state)
    km = KMeans(n_clusters=n_components, n_init=1 if whole else KMEANS_SAMPLE_RESTARTS,
                random_state=random_state)
    centers = km.fit(sample).cluster_centers_
    stats = None
    if not whole:
        # Every Lloyd pass brings the second moments too: once the centers have
        # settled, the last pass's sums are the initial estimate and no pass of
        # their own is needed. Data in memory skip them in the first pass (half
        # its time at D=16, full): the sample's centers nearly always move on
        # all the rows, and when they do not, one more pass costs no read.
        tol = KMEANS_TOL * sample.var(axis=0).mean()
        for n_pass in range(1, KMEANS_MAX_PASSES + 1):
            moments = n_pass > 1 or not data.in_memory
            stats = yield HardAssignment(centers, covariance_type, second_moments=moments)
            filled = stats.nk > 0
            new_centers = centers.copy()
            new_centers[filled] = (stats.shift + stats.s1[filled]
                                   / stats.nk[filled, None])
            moved = ((new_centers - centers) ** 2).sum()
            centers = new_centers
            logger.debug("k-means pass %d: centers moved %.3g", n_pass, moved)
            if moved <= tol and moments:
                break
            stats = None
    if stats is None:
        stats = yield HardAssignment(centers, covariance_type)
    if data.omit_nan:
        check_kept_rows(stats.rows, n_components, data.shape[0])
    return stats


@dataclass
class InitialEstimate:
    """What an initialisation gives: masses, means and covariances per component.

    ``moments`` are the data's mean and covariance when they came for free (from
    the initialisation's statistics pass, or a sample that is the whole data);
    a variational mixture's default priors need them.
    """

    nk: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    moments: DataMoments | None


def initial_estimate(data, init_params, n_components, covariance_type, reg_covar, eps,
                     random_state):
    """Step generator: an :class:`InitialEstimate` by one of the ``init_params`` strategies.

    Parameters
    ----------
    data : ChunkedRows
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}
    n_components : int
    covariance_type : str
    reg_covar : float
    eps : float
        Machine epsilon of the input dtype.
    random_state : numpy.random.RandomState
    """
    unweighted = not data.weighted
    if init_params in ("kmeans", "random"):
        if init_params == "kmeans":
            stats = yield from _kmeans_stats(data, n_components, covariance_type,
                                             random_state)
        else:
            seed = int(random_state.randint(np.iinfo(np.int32).max))
            stats = yield RandomResponsibilities(n_components, covariance_type, seed)
            if data.omit_nan:
                check_kept_rows(stats.rows, n_components, data.shape[0])
        nk, means, cov = gaussian_estimate(stats, covariance_type, reg_covar, eps)
        return InitialEstimate(nk, means, cov, moments_from_stats(stats))
    if init_params == "k-means++":
        sample, whole = yield from _sample(data, n_components, random_state)
        centers, _ = kmeans_plusplus(sample, n_components, random_state=random_state)
        moments = moments_from_rows(sample) if whole and unweighted else None
        return InitialEstimate(*_seed_estimate(centers, covariance_type, reg_covar, eps),
                               moments)
    rows = yield from _rows_from_data(data, n_components, random_state)
    return InitialEstimate(*_seed_estimate(rows, covariance_type, reg_covar, eps), None)


def initial_params(data, init_params, n_components, covariance_type, reg_covar,
                   eps, float32_input, random_state):
    """Step generator: initial mixture parameters by one of the ``init_params`` strategies.

    See :func:`initial_estimate`; ``float32_input`` adds the float32 hint to
    the error of an ill-defined covariance.

    Returns
    -------
    Params
        (as the generator's return value)
    """
    estimate = yield from initial_estimate(data, init_params, n_components,
                                           covariance_type, reg_covar, eps, random_state)
    nk = estimate.nk
    return Params(weights=nk / nk.sum(), means=estimate.means,
                  prec_chol=precision_cholesky(estimate.covariances, covariance_type,
                                               float32_input),
                  covariance_type=covariance_type, covariances=estimate.covariances)
