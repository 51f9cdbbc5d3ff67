"""The thin dask layer: one map-reduce pass over the row chunks of an array.

A pass applies a numpy kernel to every row chunk, adds the results up in a
fixed tree of :func:`~dask_gmm._kernels.combine_stats` tasks and computes the
root with one ``dask.compute`` call, on whatever scheduler is active (a
``distributed.Client`` if one is, dask's threads otherwise). Only the reduced
statistics, O(K·D²) numbers, come back to the client.
"""

from __future__ import annotations

from numbers import Integral

import dask
import numpy as np
from threadpoolctl import threadpool_limits

from ._kernels import combine_stats

DEFAULT_SPLIT_EVERY = 8


def split_every():
    """Fan-in of the combine tree: dask's ``split_every`` setting, else 8."""
    value = dask.config.get("split_every", None)
    if isinstance(value, Integral) and value >= 2:
        return int(value)
    return DEFAULT_SPLIT_EVERY


class ChunkedRows:
    """A row-chunked dask array (and optional row weights) as delayed blocks.

    The blocks are taken from the array once per fit, so every pass reuses the
    same keys: passes built from one ``ChunkedRows`` share chunk reads when
    they are computed together.

    Parameters
    ----------
    X : dask.array.Array of shape (n_samples, n_features)
        Validated: one chunk along the features, known row chunks.
    sample_weight : dask.array.Array of shape (n_samples,) or None
    """

    def __init__(self, X, sample_weight=None):
        self.array = X
        self.blocks = list(X.to_delayed().ravel())
        row_chunks = X.chunks[0]
        self.row_starts = np.concatenate([[0], np.cumsum(row_chunks)[:-1]]).astype(int)
        if sample_weight is None:
            self.weight_blocks = [None] * len(self.blocks)
        else:
            sample_weight = sample_weight.rechunk((row_chunks,))
            self.weight_blocks = list(sample_weight.to_delayed().ravel())

    @property
    def n_chunks(self):
        return len(self.blocks)

    def take_rows(self, indices):
        """Build (without computing) the rows at sorted ``indices``, from the same blocks.

        Built on the blocks every pass uses, so a round that mixes row draws
        with statistics passes still reads each chunk once.

        Parameters
        ----------
        indices : ndarray of int, sorted

        Returns
        -------
        dask.delayed.Delayed
            An ndarray of shape (len(indices), n_features) once computed.
        """
        ends = self.row_starts[1:].tolist() + [self.array.shape[0]]
        take = dask.delayed(_take, pure=True)
        parts = []
        for block, start, end in zip(self.blocks, self.row_starts, ends):
            lo, hi = np.searchsorted(indices, [start, end])
            if hi > lo:
                parts.append(take(block, indices[lo:hi] - start))
        return dask.delayed(np.concatenate, pure=True)(parts)

    def map_reduce(self, kernel, *shared, per_chunk=None, **options):
        """Build (without computing) one pass: ``kernel`` on every chunk, then a tree sum.

        Parameters
        ----------
        kernel : callable
            ``kernel(block, *shared, sample_weight=, row_start=, chunk_index=,
            **per_chunk[i])`` returning :class:`~dask_gmm._kernels.SuffStats`.
        *shared : objects
            Passed to every chunk task; each is put into the graph once.
        per_chunk : list of dict or None
            Extra keyword arguments, one dict per chunk (e.g. random seeds).
        **options
            Small keyword constants passed to every chunk task.

        Returns
        -------
        dask.delayed.Delayed
            The reduced statistics.
        """
        shared = [dask.delayed(s, traverse=False) for s in shared]
        task = dask.delayed(kernel, pure=True)
        parts = []
        for i, (block, weight) in enumerate(zip(self.blocks, self.weight_blocks)):
            extra = per_chunk[i] if per_chunk is not None else {}
            parts.append(
                task(
                    block,
                    *shared,
                    sample_weight=weight,
                    row_start=int(self.row_starts[i]),
                    chunk_index=i,
                    **options,
                    **extra,
                )
            )
        return tree_sum(parts)


def _take(block, rows):
    return np.asarray(block[rows])


def tree_sum(parts):
    """Reduce delayed statistics with ``combine_stats`` in a fixed-order tree."""
    fan_in = split_every()
    combine = dask.delayed(combine_stats, pure=True)
    while len(parts) > 1:
        parts = [combine(*parts[i : i + fan_in]) for i in range(0, len(parts), fan_in)]
    return parts[0]


def compute(*delayed_objects):
    """Compute several passes together, so they share their chunk reads.

    The chunk tasks already run in parallel on dask's threads, so BLAS is held
    to one thread meanwhile: two levels of threads on the same cores fight
    (measured: 0.78 s against 0.41 s per full-covariance iteration at
    N=1e6, D=16, K=8 on 2 cores). On a distributed cluster the work runs in the
    workers, whose BLAS dask already limits, and the limit here is harmless.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return dask.compute(*delayed_objects)


def run_steps(steps):
    """Drive one step generator: compute each pass it yields, send the result back.

    A step generator yields dask collections (a pass's reduced statistics, or
    rows to fetch) and receives their computed values; its return value is
    the value of this function.
    """
    try:
        request = next(steps)
        while True:
            (result,) = compute(request)
            request = steps.send(result)
    except StopIteration as stop:
        return stop.value


def run_together(steps, on_round=None, isolate=(Exception,), fatal=()):
    """Drive many step generators in lockstep: one compute per round for all.

    Every generator's pending request is computed in the same ``dask.compute``
    call, so requests built on the same chunks read each chunk once per round.

    Parameters
    ----------
    steps : list of generator
    on_round : callable or None
        Called after every round with the number of generators still running.
    isolate : tuple of exception types
        An exception of these types raised inside one generator ends that
        generator only; it is returned in its slot.
    fatal : tuple of exception types
        Exceptions that end the whole run even if they match ``isolate``
        (bad data concerns every candidate).

    Returns
    -------
    list
        Each generator's return value, or the exception that ended it.
    """
    results = [None] * len(steps)
    pending = {}

    def advance(i, value=None, first=False):
        try:
            pending[i] = next(steps[i]) if first else steps[i].send(value)
        except StopIteration as stop:
            results[i] = stop.value
            pending.pop(i, None)
        except fatal:
            raise
        except isolate as error:
            results[i] = error
            pending.pop(i, None)

    for i in range(len(steps)):
        advance(i, first=True)
    while pending:
        order = list(pending)
        values = compute(*(pending[i] for i in order))
        for i, value in zip(order, values):
            advance(i, value)
        if on_round is not None:
            on_round(len(pending))
    return results
