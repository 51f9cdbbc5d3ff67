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

import math
import sys
import uuid
from numbers import Integral

import dask
import dask.array as da
import numpy as np
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from ._compute import active_client, compute_delayed, one_blas_thread
from ._estep import RowPlace
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


# What a chunk task needs besides its chunk: the worker process itself (Python,
# numpy, dask, numba), row-block temporaries and the statistics.
WORKER_BASE_BYTES = 200 * 2**20
# distributed pauses a worker at 80% of its memory limit.
WORKER_USABLE_SHARE = 0.8


def check_chunks_fit_workers(X, client):
    """Refuse at once chunks that a worker's memory limit cannot hold.

    A worker over its limit is restarted and its task retried, again and
    again: without this check a too-small limit looks like a hang.

    Parameters
    ----------
    X : dask.array.Array
    client : distributed.Client
    """
    limits = [w.get("memory_limit") or 0
              for w in client.scheduler_info()["workers"].values()]
    limits = [limit for limit in limits if limit > 0]
    if not limits:
        return
    chunk_bytes = math.prod(max(c) for c in X.chunks[:-1]) * X.shape[-1] * X.dtype.itemsize
    needed = 2 * chunk_bytes + WORKER_BASE_BYTES
    usable = WORKER_USABLE_SHARE * min(limits)
    if needed > usable:
        mib = 2**20
        raise MemoryError(
            f"Row chunks of {chunk_bytes / mib:.1f} MiB need about {needed / mib:.0f} MiB "
            f"in a worker (the chunk, its temporaries and the worker process), but the "
            f"smallest worker memory limit is {min(limits) / mib:.0f} MiB (work pauses "
            f"at {usable / mib:.0f} MiB). Raise the limit (--memory-limit) or read "
            f"smaller chunks (--chunk-rows, or open_array(..., chunks=ROWS))."
        )


def split_every():
    """Fan-in of the combine tree: dask's ``split_every`` setting, else 8."""
    value = dask.config.get("split_every", None)
    if isinstance(value, Integral) and value >= 2:
        return int(value)
    return DEFAULT_SPLIT_EVERY


def join_features(X):
    """``X`` with its features in one chunk, joined inside each block's task.

    Zarr cubes are often written one band per chunk. Rather than a rechunk,
    each block of samples gets one task that concatenates its feature chunks
    (``blockwise`` with ``concatenate=True``), so the graph stays one task per
    block of samples and memory stays one block's worth.

    Parameters
    ----------
    X : dask.array.Array of shape (..., D)
        Sample dims first, features last.

    Returns
    -------
    dask.array.Array
        ``X`` itself when it already has one feature chunk.
    """
    if X.numblocks[-1] == 1:
        return X
    samples = "".join(chr(ord("a") + i) for i in range(X.ndim - 1))
    return da.blockwise(_identity, samples + "z", X, samples + "y", concatenate=True,
                        new_axes={"z": X.shape[-1]}, dtype=X.dtype,
                        meta=np.empty((0,) * X.ndim, dtype=X.dtype))


def _identity(block):
    return block


class ChunkedRows:
    """The samples of a dask array (and optional weights) as delayed blocks.

    The blocks are taken from the array once per fit, so every pass and every
    row draw built from one ``ChunkedRows`` uses the same chunk tasks: computed
    together, they read each chunk once. An N-D array (sample dims first,
    features last, e.g. ``(time, y, x, band)``) is served block by block as it
    is chunked; its samples are numbered in C order over the sample dims, the
    order ``X.reshape(-1, D)`` would give, though it is never reshaped.

    Parameters
    ----------
    X : dask.array.Array of shape (n_samples, n_features) or (..., n_features)
        Validated: known chunks; features may span several chunks (joined in
        each block's task by :func:`join_features`).
    sample_weight : dask.array.Array of X's sample shape or (n_samples,), or None
    omit_nan : bool
        Samples holding NaN are no error: left out of every pass (``nan_policy='omit'``).
    marginalize : bool
        Samples missing some features enter the E-steps through their observed
        features (``nan_policy='marginalize'``; see ``_missing``).
    """

    def __init__(self, X, sample_weight=None, omit_nan=False, marginalize=False):
        self.source = X
        X = join_features(X)
        self.array = X
        self.weights = None
        # What the passes read (see ``_memory``): a persisted or in-memory
        # array is read from storage at most once.
        self.persisted = False
        self.in_memory = False
        self.n_passes = 0
        self.bytes_read = 0
        self.held = None  # HeldBlocks, once persisted on dask's local schedulers
        self.omit_nan = omit_nan or marginalize
        self.marginalize = marginalize
        self.sample_shape = tuple(X.shape[:-1])
        self.shape = (math.prod(self.sample_shape), X.shape[-1])
        self.dtype = X.dtype
        sample_chunks = X.chunks[:-1]
        self.starts = [np.concatenate([[0], np.cumsum(c)]).astype(np.int64)
                       for c in sample_chunks]
        self.block_keys = flat_keys(X)
        self.places = []
        for location in np.ndindex(*X.numblocks[:-1]):
            origin = tuple(int(s[i]) for s, i in zip(self.starts, location))
            block_shape = tuple(c[i] for c, i in zip(sample_chunks, location))
            chunk_index = location[0] if len(location) == 1 else location
            self.places.append(RowPlace(origin, block_shape, self.sample_shape,
                                        chunk_index))
        if sample_weight is None:
            self.weight_keys = None
        else:
            if sample_weight.shape != self.sample_shape:
                sample_weight = sample_weight.reshape(self.sample_shape)
            sample_weight = sample_weight.rechunk(sample_chunks)
            self.weights = sample_weight
            self.weight_keys = flat_keys(sample_weight)
        itemsize = X.dtype.itemsize * X.shape[-1]
        if self.weights is not None:
            itemsize += self.weights.dtype.itemsize
        self.block_nbytes = [math.prod(p.block_shape) * itemsize for p in self.places]

    @property
    def nbytes(self):
        """Bytes of all the row blocks (and weights)."""
        return int(sum(self.block_nbytes))

    def with_blocks(self, X, sample_weight=None):
        """The same rows served from other (e.g. persisted) arrays of the same chunks."""
        return ChunkedRows(X, sample_weight, omit_nan=self.omit_nan,
                           marginalize=self.marginalize)

    def release(self, cancel=False):
        """Drop every block; ``cancel``: also cancel the futures of persisted ones.

        Dropping the last reference to a future releases it on the cluster (at
        20,000 chunks in 1.5 s); cancelling is sure to release them even while a
        traceback still refers to a round's graph, but took 24 s there.
        """
        futures = []
        if cancel and "distributed" in sys.modules:
            from distributed import futures_of

            futures = futures_of([self.array] + [w for w in [self.weights] if w is not None])
        self.array = self.weights = self.source = self.held = None
        self.block_keys, self.weight_keys = [], None
        if futures:
            client = active_client()
            if client is not None:
                client.cancel(futures)

    def count_round(self, blocks):
        """Record one round that reads the blocks numbered ``blocks``."""
        self.n_passes += 1
        if not self.in_memory:
            self.bytes_read += sum(self.block_nbytes[b] for b in blocks)

    @property
    def n_chunks(self):
        return len(self.block_keys)

    @property
    def weighted(self):
        return self.weight_keys is not None

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
        # Written as a graph rather than one dask.delayed call per chunk: the
        # delayed calls cost 0.35 ms each on the client (tokenising their
        # arguments), more than a small chunk's arithmetic.
        token = uuid.uuid4().hex
        shared = f"requests-{token}"
        layer = {shared: (list, list(requests))}
        options = (self.omit_nan, self.marginalize)
        parts = [(f"chunk-pass-{token}", i) for i in range(self.n_chunks)]
        if self.held is not None:
            layer[self.held.key] = self.held
            for i, (key, place) in enumerate(zip(parts, self.places)):
                layer[key] = (_held_pass_task, self.held.key, shared, i, *options, place)
            dependencies = []
        else:
            block_keys = self.block_keys
            weight_keys = self.weight_keys or [None] * len(block_keys)
            for i, (key, block, weight, place) in enumerate(
                    zip(parts, block_keys, weight_keys, self.places)):
                layer[key] = (_pass_task, block, shared, weight, i, *options, place)
            dependencies = [self.array] + ([self.weights] if self.weights is not None
                                           else [])
        final = _tree_layer(layer, parts, combine_stat_lists, f"combine-{token}")
        graph = HighLevelGraph.from_collections(f"pass-{token}", layer,
                                                dependencies=dependencies)
        return Delayed(final, graph, layer=f"pass-{token}")

    def take_rows(self, indices):
        """Build (without computing) the samples at ``indices``, from the same blocks.

        Parameters
        ----------
        indices : ndarray of int
            Sample numbers (C order over the sample dims).

        Returns
        -------
        dask.delayed.Delayed
            An ndarray of shape (len(indices), n_features), in the order of
            ``indices``, once computed.
        """
        indices = np.asarray(indices, dtype=np.int64)
        coords = np.unravel_index(indices, self.sample_shape)
        grid = self.array.numblocks[:-1]
        block_of = [np.searchsorted(s, c, side="right") - 1
                    for s, c in zip(self.starts, coords)]
        local = [c - s[b] for c, s, b in zip(coords, self.starts, block_of)]
        flat_block = np.ravel_multi_index(block_of, grid) if len(indices) else indices
        order = np.argsort(flat_block, kind="stable")
        token = uuid.uuid4().hex
        layer, parts = {}, []
        if self.held is not None:
            layer[self.held.key] = self.held
        bounds = np.searchsorted(flat_block[order], np.arange(self.n_chunks + 1))
        self.last_blocks_taken = np.flatnonzero(np.diff(bounds)).tolist()
        for b in self.last_blocks_taken:
            members = order[bounds[b] : bounds[b + 1]]
            shape = self.places[b].block_shape
            positions = np.ravel_multi_index([d[members] for d in local], shape)
            key = (f"take-rows-{token}", b)
            layer[key] = ((_take_held, self.held.key, b, positions) if self.held is not None
                          else (_take, self.block_keys[b], positions))
            parts.append(key)
        final = f"rows-in-order-{token}"
        layer[final] = (_in_order, parts, order, self.shape[1], self.dtype)
        graph = HighLevelGraph.from_collections(
            final, layer, dependencies=[] if self.held is not None else [self.array])
        return Delayed(final, graph, layer=final)

    def build_round(self, requests):
        """One graph answering every request of a round; see :func:`run_together`."""
        passes = [i for i, r in enumerate(requests) if not isinstance(r, TakeRows)]
        graph = {}
        touched = set(range(self.n_chunks)) if passes else set()
        if passes:
            graph["passes"] = self.map_reduce([requests[i] for i in passes])
        for i, request in enumerate(requests):
            if isinstance(request, TakeRows):
                graph[i] = self.take_rows(request.indices)
                touched.update(self.last_blocks_taken)
        self.count_round(touched)
        return graph, passes


def flat_keys(array):
    """The keys of a dask array's blocks, in C order."""
    keys = array.__dask_keys__()
    while keys and isinstance(keys[0], list):
        keys = [k for sub in keys for k in sub]
    return keys


def _pass_task(block, requests, weight, chunk_index, omit_nan, marginalize, place):
    return chunk_pass(block, requests, sample_weight=weight, chunk_index=chunk_index,
                      omit_nan=omit_nan, marginalize=marginalize, place=place)


def _tree_layer(layer, keys, combine, name):
    """Add to ``layer`` a fixed-order tree of ``combine`` over ``keys``; its root key."""
    fan_in = split_every()
    level = 0
    while len(keys) > 1:
        groups = [keys[i : i + fan_in] for i in range(0, len(keys), fan_in)]
        keys = []
        for j, group in enumerate(groups):
            key = (name, level, j)
            layer[key] = (combine, *group)
            keys.append(key)
        level += 1
    return keys[0]


class HeldBlocks:
    """Row blocks (and weights) held in this process, behind one graph key.

    Used for data persisted on dask's local schedulers. Put into a graph as one
    value per block, they would each be a node that dask's local scheduler
    sets up on every compute, at a cost that grows with the square of their
    number (7.6 s of a 21 s round at 30,000 chunks); one value for all costs
    nothing.
    """

    def __init__(self, blocks, weights=None):
        self.blocks = list(blocks)
        self.weights = list(weights) if weights is not None else [None] * len(self.blocks)
        self.key = f"held-blocks-{uuid.uuid4().hex}"


def _held_pass_task(held, requests, i, omit_nan, marginalize, place):
    return chunk_pass(held.blocks[i], requests, sample_weight=held.weights[i],
                      chunk_index=i, omit_nan=omit_nan, marginalize=marginalize,
                      place=place)


def _take_held(held, b, positions):
    return _take(held.blocks[b], positions)


def _take(block, positions):
    return np.asarray(block).reshape(-1, block.shape[-1])[positions]


def _in_order(parts, order, n_features, dtype):
    """Rows gathered block by block, put back in the order they were asked for."""
    rows = np.concatenate(parts) if parts else np.empty((0, n_features), dtype)
    out = np.empty_like(rows)
    out[order] = rows
    return out


def in_memory_rows(X, rows):
    """A dask array over blocks of ``rows`` rows of the ndarray ``X``: views, never a copy.

    ``dask.array.from_array`` copies a numpy array whole before slicing it
    (and hashes it for a name): 0.35 s and twice the memory for 1,000,000 x 16.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    rows : int

    Returns
    -------
    dask.array.Array
    """
    X = np.ascontiguousarray(X)  # row blocks of a Fortran-ordered array would not be
    n_samples, n_features = X.shape
    name = f"in-memory-rows-{uuid.uuid4().hex}"
    starts = range(0, n_samples, rows)
    layer = {(name, i, 0): X[start:start + rows] for i, start in enumerate(starts)}
    chunks = (tuple(min(rows, n_samples - start) for start in starts) or (0,), (n_features,))
    if not layer:
        layer[(name, 0, 0)] = X
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())
    return da.Array(graph, name, chunks, meta=X[:0])


def compute_round(data, requests):
    """Compute every request of one round in one graph; results in order."""
    graph, passes = data.build_round(requests)
    values = dict(zip(graph, compute_delayed(list(graph.values()))))
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
    with one_blas_thread():
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
