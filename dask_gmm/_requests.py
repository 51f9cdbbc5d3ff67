r"""Pass requests: what one pass over the data computes from every row chunk.

How an EM round runs
--------------------
A fit is a *step generator* (``GaussianMixture._fit_steps``): it ``yield``\ s a
request and receives its answer, once per round. :func:`~dask_gmm._engine.run_together`
collects the pending request of every running fit (one, or a sweep's dozens),
builds one dask graph for the round and computes it once:

1. **chunk** -- one task per row chunk runs :func:`chunk_pass`: the chunk is
   walked in row blocks (``_estep``), and each :class:`PassRequest` adds every
   block into its own :class:`~dask_gmm._stats.SuffStats`. Several requests on
   one chunk share the read, the row checks and the shifted rows.
2. **combine** -- a tree of :func:`~dask_gmm._stats.combine_stat_lists` tasks
   adds the chunks' statistics (associative, any tree shape).
3. **aggregate** -- on the client, the fit that asked turns its statistics into
   parameters: :func:`~dask_gmm._mstep.m_step` for an EM iteration.

A request is either a :class:`PassRequest` (answered with its combined
``SuffStats``) or a :class:`TakeRows` (answered with the rows themselves, an
ndarray; for seeding). A new model -- a variational E-step, a missing-value
E-step -- is a new ``PassRequest`` and a new M-step, not a new engine.
"""

from __future__ import annotations

import math

import numpy as np

from ._estep import (
    RowBlock,
    RowPlace,
    block_rows,
    check_rows,
    chunk_shift,
    kernel_block_rows,
    responsibilities,
    row_blocks,
    screen_rows,
    weighted_sum,
)
from ._missing import (
    IncompleteRows,
    accumulate_expected,
    marginal_terms,
    observed_log_prob,
)
from ._stats import accumulate, empty_stats


class PassRequest:
    """The protocol every pass request implements (``yield request`` -> ``SuffStats``).

    One request object is shared by every chunk task of a pass, and tasks run
    in parallel threads: a request holds only what the pass needs (parameters,
    centers, a seed) and never per-chunk state; that lives in the *context*
    :meth:`start_chunk` returns, which :func:`chunk_pass` keeps and hands back
    with every block of the chunk.

    ``checks_rows`` is True for requests whose :meth:`accumulate` runs a
    compiled tile kernel that reports the block's sum of squared values
    (``RowBlock.report_squares``) as it reads the rows: a pass of such
    requests alone checks the rows from that sum, without a read of its own.
    """

    checks_rows = False

    def row_width(self):
        """float64 numbers of temporaries per row, which sizes the row blocks.

        Returns
        -------
        int
        """
        raise NotImplementedError

    def empty(self, n_features, shift):
        """Zero statistics about the chunk's ``shift`` for this request to fill.

        Parameters
        ----------
        n_features : int
        shift : ndarray of shape (D,)

        Returns
        -------
        SuffStats
        """
        raise NotImplementedError

    def start_chunk(self, chunk_index):
        """Per-chunk state (e.g. a random stream), or None; called once per chunk.

        Parameters
        ----------
        chunk_index : int or None
            The chunk's position among the row chunks.
        """
        return None

    def accumulate_incomplete(self, incomplete, stats):
        """Add rows missing some features (``nan_policy='marginalize'``); None by default.

        Requests that do not override it (the initialisations) use complete
        rows only.

        Parameters
        ----------
        incomplete : IncompleteRows
        stats : SuffStats

        Returns
        -------
        float or None
            As :meth:`accumulate`.
        """
        return None

    def accumulate(self, block, stats, context):
        """Add one row block into ``stats`` in place.

        Parameters
        ----------
        block : RowBlock
            Rows as stored, their shifted float64 copy ``Y``, weights ``w``.
        stats : SuffStats
            This request's statistics for the chunk, from :meth:`empty`.
        context : object
            What :meth:`start_chunk` returned for this chunk.

        Returns
        -------
        float or None
            The block's share of ``stats.log_likelihood`` (summed exactly by
            :func:`chunk_pass`), or None when the request has none.
        """
        raise NotImplementedError


class TakeRows:
    """Request for the rows at sorted ``indices``; answered with an ndarray.

    Not a :class:`PassRequest`: it reads only the chunks that hold the rows, in
    the same round as the passes of other fits (``ChunkedRows.take_rows``).

    Parameters
    ----------
    indices : array-like of int, sorted
    """

    def __init__(self, indices):
        self.indices = np.asarray(indices, dtype=np.int64)


class EStep(PassRequest):
    """E-step plus the partial M-step sums under ``params`` (one EM iteration).

    ``tied_moments=False``: tied covariances leave ``s2`` (the rows' own
    ``sum w y y^T``, which no parameter changes) at zero, for a fit that kept
    it from an earlier pass over the same rows (see ``_base``'s EM loop).
    """

    checks_rows = True

    def __init__(self, params, tied_moments=True):
        self.params = params
        self.tied_moments = tied_moments
        self._parts = None  # the kernels' inputs that do not depend on a chunk

    def row_width(self):
        # the compiled kernels work in tiles: blocks need only hold the rows
        return self.params.means.shape[1]

    def empty(self, n_features, shift):
        return empty_stats(len(self.params.weights), n_features,
                           self.params.covariance_type, shift)

    def start_chunk(self, chunk_index):
        """A place for the kernels' inputs, worked out on the chunk's first block."""
        return {}

    def accumulate(self, block, stats, context=None):
        # Imported on first use: numba and the compiled code cost a process
        # ~150 MiB, which importing the package need not pay.
        from . import _fused_linear

        if self._parts is None:
            self._parts = _fused_linear.kernel_parts(self.params)
        return _fused_linear.e_step(block, self.params, stats, context, self._parts,
                                    self.tied_moments)

    def accumulate_incomplete(self, incomplete, stats):
        """Observed-data densities and expected complete-data sums (see ``_missing``)."""
        if self.params.covariance_type in ("full", "tied"):
            from . import _fused_missing

            stats.n += incomplete.total_weight()
            stats.rows += incomplete.n
            return _fused_missing.expected_sums(incomplete, self.params, stats)
        incomplete = incomplete.by_count()
        terms, R, log_norm = _marginal_pass(incomplete, self.params, stats)
        accumulate_expected(stats, terms, incomplete.groups, incomplete.missing,
                            incomplete.weighted(R))
        return weighted_sum(log_norm, incomplete.w)


class HardAssignment(PassRequest):
    """A k-means (Lloyd) step: each row belongs wholly to its nearest center.

    ``log_likelihood`` holds minus the weighted inertia. With
    ``second_moments=True`` the statistics also give the mixture parameters
    of that hard assignment (the 'kmeans' initialisation).
    """

    checks_rows = True

    def __init__(self, centers, covariance_type, second_moments=True):
        self.centers = centers
        self.covariance_type = covariance_type
        self.second_moments = second_moments

    def row_width(self):
        return self.centers.shape[1]  # the compiled kernel works in tiles

    def empty(self, n_features, shift):
        return empty_stats(len(self.centers), n_features, self.covariance_type, shift,
                           self.second_moments)

    def accumulate(self, block, stats, context=None):
        from . import _fused_kmeans

        return _fused_kmeans.hard_assignment_step(block, self.centers, stats)


class RandomResponsibilities(PassRequest):
    """Sums for uniform random responsibilities (the 'random' initialisation).

    Each chunk draws from its own generator, seeded by ``(seed, chunk index)``,
    so the result depends on the seed and the chunking only.
    """

    def __init__(self, n_components, covariance_type, seed):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.seed = seed

    def row_width(self):
        return self.n_components

    def empty(self, n_features, shift):
        return empty_stats(self.n_components, n_features, self.covariance_type, shift)

    def start_chunk(self, chunk_index):
        """This chunk's random stream: the context of every block of the chunk."""
        return np.random.default_rng([self.seed, chunk_index or 0])

    def accumulate(self, block, stats, context):
        resp = context.uniform(size=(block.n, self.n_components))
        resp /= resp.sum(axis=1, keepdims=True)
        accumulate(stats, block, resp)
        return None


class LogLikelihood(PassRequest):
    """Only ``n`` and ``sum(weight * log p(x))`` under ``params`` (for BIC/AIC)."""

    checks_rows = True

    def __init__(self, params):
        self.params = params
        self._parts = None

    def row_width(self):
        return self.params.means.shape[1]  # the compiled kernel works in tiles

    def empty(self, n_features, shift):
        return empty_stats(0, n_features, "spherical", shift, second_moments=False)

    def accumulate(self, block, stats, context=None):
        from . import _fused_linear

        if self._parts is None:
            self._parts = _fused_linear.kernel_parts(self.params)
        log_norm = np.empty(block.n)
        squares = np.zeros(1)
        _fused_linear.predict(block.rows, self.params, stats.shift, scores=log_norm,
                              parts=self._parts, row_squares=squares)
        block.report_squares(squares)
        stats.n += block.total_weight()
        stats.rows += block.n
        return weighted_sum(log_norm, block.w)

    def accumulate_incomplete(self, incomplete, stats):
        """The observed-data log-likelihood of rows missing some features."""
        log_prob, rows = observed_log_prob(incomplete, self.params, stats.shift)
        with np.errstate(invalid="ignore", over="ignore"):
            _, log_norm = responsibilities(log_prob)
        stats.n += rows.total_weight()
        stats.rows += rows.n
        return weighted_sum(log_norm, rows.w)


def _marginal_pass(incomplete, params, stats):
    """Rows missing some features under ``params``: counted into ``stats``, scored.

    Returns
    -------
    terms : MarginalTerms
    resp : ndarray of shape (n, K)
    log_norm : ndarray of shape (n,)
        The observed-data log-likelihood of each row.
    """
    terms = marginal_terms(incomplete.rows, incomplete.missing, incomplete.groups,
                           params, stats.shift)
    with np.errstate(invalid="ignore", over="ignore"):
        resp, log_norm = responsibilities(terms.log_prob)
    stats.n += incomplete.total_weight()
    stats.rows += incomplete.n
    return terms, resp, log_norm


def chunk_pass(X, requests, sample_weight=None, row_start=0, chunk_index=None,
               omit_nan=False, marginalize=False, place=None):
    """Every request's statistics from one chunk: the ``chunk`` function of a pass.

    The rows are converted, shifted and checked once, and the quadratic
    features built once, for all requests.

    Parameters
    ----------
    X : ndarray of shape (n, D), or of shape (..., D)
        One row chunk, any float dtype; a block of an N-D input (sample dims
        first, features last) is taken as its samples in C order.
    requests : list of PassRequest
    sample_weight : ndarray of shape (n,) or of X's sample shape, or None
    row_start : int
        Index of ``X[0]`` in the whole input (for error messages).
    chunk_index : int or None
        Which chunk this is (for error messages and random streams).
    omit_nan : bool
        Rows holding NaN in any feature are left out of every statistic
        (``nan_policy='omit'``) instead of raising.
    marginalize : bool
        Rows missing some features are given to the requests that take them
        (:meth:`PassRequest.accumulate_incomplete`; ``nan_policy='marginalize'``).
    place : RowPlace or None
        Where the chunk sits, instead of ``row_start`` (N-D blocks).

    Returns
    -------
    list of SuffStats
        One per request, in order.
    """
    if X.ndim != 2:
        X = X.reshape(-1, X.shape[-1])
        if sample_weight is not None:
            sample_weight = np.reshape(sample_weight, -1)
    if place is None:
        place = RowPlace((row_start,), chunk_index=chunk_index)
    n_features = X.shape[1]
    shift = chunk_shift(X)
    stats = [request.empty(n_features, shift) for request in requests]
    # The kernels check the rows as they read them (their sum of squares); the
    # check that needs it, or finds a bad row, runs after them.
    kernels_check = not omit_nan and all(request.checks_rows for request in requests)
    # Per-chunk state lives here, never on the requests: one request object is
    # shared by every chunk task, and tasks run in parallel threads.
    seed_index = chunk_index if isinstance(chunk_index, int) else None
    contexts = [request.start_chunk(seed_index) for request in requests]
    # per-block log-likelihood contributions, summed exactly at the end
    partials = [[] for _ in requests]
    rows_per_block = (kernel_block_rows(n_features) if kernels_check
                      else block_rows(max(r.row_width() for r in requests)))
    incomplete_parts = []
    for start, rows, w in row_blocks(X, sample_weight, rows_per_block):
        if kernels_check:
            complete, complete_w, kept = rows, w, None
        else:
            complete, complete_w, kept = screen_rows(rows, w, omit_nan, start, place)
        if complete.shape[0]:
            block = RowBlock(complete, shift, complete_w, start)
            for request, st, context, partial in zip(requests, stats, contexts, partials):
                contribution = request.accumulate(block, st, context)
                if contribution is not None:
                    partial.append(contribution)
            if kernels_check:
                check_rows(rows, start, place=place, squares=block.squares)
        if marginalize and kept is not None:
            incomplete = IncompleteRows.from_block(rows, w)
            if incomplete.n:
                incomplete_parts.append(incomplete)
    if incomplete_parts:
        # one call for the chunk: a missingness pattern seen in several blocks
        # is factored once
        incomplete = IncompleteRows.joined(incomplete_parts)
        for request, st, partial in zip(requests, stats, partials):
            contribution = request.accumulate_incomplete(incomplete, st)
            if contribution is not None:
                partial.append(contribution)
    for st, partial in zip(stats, partials):
        st.log_likelihood = math.fsum(partial)
    return stats


def e_step_stats(X, params, sample_weight=None, row_start=0, chunk_index=None):
    """One chunk's E-step statistics (a single-request :func:`chunk_pass`)."""
    return chunk_pass(X, [EStep(params)], sample_weight, row_start, chunk_index)[0]


def hard_assignment_stats(X, centers, covariance_type, sample_weight=None,
                          second_moments=True):
    """One chunk's k-means statistics (a single-request :func:`chunk_pass`)."""
    request = HardAssignment(centers, covariance_type, second_moments)
    return chunk_pass(X, [request], sample_weight)[0]


class Moments(PassRequest):
    """The data's sum and second moments (one component holding every row).

    For a variational mixture's default priors when no initialisation pass
    gave them: full second moments for 'full' and 'tied', per feature
    otherwise.
    """

    def __init__(self, covariance_type, n_features):
        self.layout = "full" if covariance_type in ("full", "tied") else "diag"
        self.n_features = n_features

    def row_width(self):
        d = self.n_features
        return d * (d + 1) // 2 if self.layout == "full" else d

    def empty(self, n_features, shift):
        return empty_stats(1, n_features, self.layout, shift)

    def accumulate(self, block, stats, context=None):
        accumulate(stats, block, np.ones((block.n, 1)))
        return None
