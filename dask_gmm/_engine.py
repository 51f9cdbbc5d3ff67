"""The thin dask layer: one map-reduce pass over the row chunks of an array.

A fit is written as a *step generator*: it yields requests (a pass of
statistics such as :class:`~dask_gmm._requests.EStep`, or
:class:`~dask_gmm._requests.TakeRows`; the protocol is written down in
``_requests``) and receives their computed results. The drivers here turn the requests of
one round into one dask graph: a single :func:`~dask_gmm._requests.chunk_pass`
task per chunk serves every pass request of the round, a fixed-order tree of
combine tasks adds the statistics up, and one ``dask.compute`` runs it on
whatever scheduler is active (a ``distributed.Client`` if one is, dask's threads
otherwise). Only the reduced statistics, O(K·D²) numbers per request, come
back to the client.
"""

from __future__ import annotations

from numbers import Integral

import dask
import numpy as np
from threadpoolctl import threadpool_limits

from ._estep import log_resp_and_norm
from ._requests import TakeRows, chunk_pass
from ._stats import combine_stat_lists

DEFAULT_SPLIT_EVERY = 8

# distributed's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also
# freezes glibc's mmap threshold at 128 KiB: every temporary of a chunk task is
# then mapped, faulted in and unmapped again, and the kernels ran 2x slower in a
# worker than in the client (0.070 s against 0.037 s per 62,500-row chunk). These
# values keep temporaries on the heap while still returning memory above 256 MiB.
WORKER_ENVIRONMENT = {"MALLOC_TRIM_THRESHOLD_": 256 * 2**20,
                      "MALLOC_MMAP_THRESHOLD_": 64 * 2**20}


def worker_settings():
    """dask config for worker processes started by a nanny (``LocalCluster``, ``dask worker``).

    Use it around the cluster's creation::

        with dask.config.set(dask_gmm.worker_settings()):
            cluster = LocalCluster(...)

    Returns
    -------
    dict
        ``{"distributed.nanny.pre-spawn-environ.<NAME>": value}``
    """
    return {f"distributed.nanny.pre-spawn-environ.{name}": value
            for name, value in WORKER_ENVIRONMENT.items()}


def split_every():
    """Fan-in of the combine tree: dask's ``split_every`` setting, else 8."""
    value = dask.config.get("split_every", None)
    if isinstance(value, Integral) and value >= 2:
        return int(value)
    return DEFAULT_SPLIT_EVERY


class ChunkedRows:
    """A row-chunked dask array (and optional row weights) as delayed blocks.

    The blocks are taken from the array once per fit, so every pass and every
    row draw built from one ``ChunkedRows`` uses the same chunk tasks: computed
    together, they read each chunk once.

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

    def map_reduce(self, requests):
        """Build (without computing) one pass serving every request in ``requests``.

        Parameters
        ----------
        requests : list
            Pass requests (see :func:`~dask_gmm._requests.chunk_pass`); put into the
            graph once, not copied into every task.

        Returns
        -------
        dask.delayed.Delayed
            The list of reduced statistics, one per request.
        """
        shared = dask.delayed(list(requests), traverse=False)
        task = dask.delayed(chunk_pass, pure=True)
        parts = [
            task(block, shared, sample_weight=weight, row_start=int(start), chunk_index=i)
            for i, (block, weight, start) in enumerate(
                zip(self.blocks, self.weight_blocks, self.row_starts)
            )
        ]
        return tree_reduce(parts, combine_stat_lists)

    def take_rows(self, indices):
        """Build (without computing) the rows at sorted ``indices``, from the same blocks.

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

    def build_round(self, requests):
        """One graph answering every request of a round; see :func:`run_together`."""
        passes = [i for i, r in enumerate(requests) if not isinstance(r, TakeRows)]
        graph = {}
        if passes:
            graph["passes"] = self.map_reduce([requests[i] for i in passes])
        for i, request in enumerate(requests):
            if isinstance(request, TakeRows):
                graph[i] = self.take_rows(request.indices)
        return graph, passes


def _take(block, rows):
    return np.asarray(block[rows])


def tree_reduce(parts, combine):
    """Reduce delayed parts with ``combine`` in a fixed-order tree of ``split_every`` fan-in."""
    fan_in = split_every()
    task = dask.delayed(combine, pure=True)
    while len(parts) > 1:
        parts = [task(*parts[i : i + fan_in]) for i in range(0, len(parts), fan_in)]
    return parts[0]


def compute(*collections):
    """``dask.compute`` with BLAS held to one thread meanwhile.

    The chunk tasks already run in parallel on dask's threads, so two levels
    of threads on the same cores would fight (measured: 0.78 s against 0.41 s
    per full-covariance iteration at N=1e6, D=16, K=8 on 2 cores). On a
    distributed cluster the work runs in the workers, whose BLAS dask already
    limits, and the limit here is harmless.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return dask.compute(*collections)


def compute_round(data, requests):
    """Compute every request of one round in one ``dask.compute``; results in order."""
    graph, passes = data.build_round(requests)
    (values,) = compute(graph)
    results = [None] * len(requests)
    for i, stats in zip(passes, values.get("passes", [])):
        results[i] = stats
    for key, value in values.items():
        if key != "passes":
            results[key] = value
    return results


def run_together(data, steps, on_round=None, isolate=(Exception,), fatal=()):
    """Drive many step generators in lockstep: one compute per round for all.

    Every generator's pending request is answered from the same graph
    (:meth:`ChunkedRows.build_round`), so each chunk is read once per round
    whatever the number of generators.

    Parameters
    ----------
    data : ChunkedRows
    steps : list of generator
    on_round : callable or None
        Called after every round with the number of generators still running.
    isolate : tuple of exception types
        An exception of these types raised inside one generator ends that
        generator only; it is returned in its slot.
    fatal : tuple of exception types
        Exceptions that end the whole run even if they match ``isolate``.

    Returns
    -------
    list
        Each generator's return value, or the exception that ended it.
    """
    # BLAS stays at one thread between the rounds too: a multithreaded call in
    # a client-side M-step leaves OpenBLAS's threads spinning for a while,
    # and they took the cores from the next round's chunk tasks (measured:
    # 0.145 against 0.107 s per full iteration at N=1e6, D=16, K=8 on 2 cores).
    # The client's work between rounds is small (K factorisations of D x D).
    with threadpool_limits(limits=1, user_api="blas"):
        return _drive(data, steps, on_round, isolate, fatal)


def _drive(data, steps, on_round, isolate, fatal):
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
        values = compute_round(data, [pending[i] for i in order])
        for i, value in zip(order, values):
            advance(i, value)
        if on_round is not None:
            on_round(len(pending))
    return results


# --------------------------------------------------------------------------
# Per-row outputs of dask arrays, through ``map_blocks``.


def _block_position(block_info):
    """``(row_start, chunk_index)`` of a ``map_blocks`` block, or ``(0, None)``."""
    if not block_info:
        return 0, None
    info = block_info[0]
    return info["array-location"][0][0], info["chunk-location"][0]


def predict_block(X, params, block_info=None):
    """Most likely component of each row, shape ``(n,)``, int64."""
    return log_resp_and_norm(X, params, *_block_position(block_info))[0].argmax(axis=1)


def predict_proba_block(X, params, dtype, block_info=None):
    """Responsibilities of each row, shape ``(n, K)``, in ``dtype``."""
    log_resp = log_resp_and_norm(X, params, *_block_position(block_info))[0]
    return np.exp(log_resp).astype(dtype, copy=False)


def score_samples_block(X, params, dtype, block_info=None):
    """Log-likelihood of each row, shape ``(n,)``, in ``dtype``."""
    log_norm = log_resp_and_norm(X, params, *_block_position(block_info))[1]
    return log_norm.astype(dtype, copy=False)
