"""Where a round's graph runs: dask's scheduler, with BLAS held to one thread.

A pass over blocks already in this process's memory (numpy input, or blocks
held after a first read) has nothing for ``dask.compute`` to optimise; when it
would run on dask's threads anyway, it goes straight to ``dask.threaded.get``,
without the tokenising and optimisation: 1.3 ms against 2.1 ms for a pass of
16 chunk tasks (measured on 2 cores), which is much of a small fit's time per
iteration.
"""

from __future__ import annotations

import sys

import dask
import dask.threaded
import numpy as np
from dask.highlevelgraph import MaterializedLayer
from threadpoolctl import ThreadpoolController

THREADED_SCHEDULERS = (None, "threads", "threading")


def active_client():
    """The ``distributed.Client`` dask would use, or None (never imports distributed)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_client

    try:
        return get_client()
    except ValueError:
        return None


_CONTROLLER = []


def one_blas_thread():
    """A context in which BLAS runs one thread (threadpoolctl's ``limit``).

    The controller is made once per process: ``threadpool_limits`` scans every
    loaded library on each call, which cost 3 ms a round once numba was loaded.
    """
    if not _CONTROLLER:
        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1, user_api="blas")


def compute(*collections):
    """``dask.compute`` with BLAS held to one thread meanwhile.

    The chunk tasks already run in parallel on dask's threads, so two levels
    of threads on the same cores would fight (measured: 0.78 s against 0.41 s
    per full-covariance iteration at N=1e6, D=16, K=8 on 2 cores). On a
    distributed cluster the work runs in the workers, whose BLAS dask already
    limits, and the limit here is harmless.
    """
    with one_blas_thread():
        return dask.compute(*collections)


def runs_on_dask_threads():
    """Whether dask would run a graph on its own threads here (no client, no other scheduler)."""
    return (dask.config.get("scheduler", None) in THREADED_SCHEDULERS
            and active_client() is None)


def _blocks_in_memory(delayed):
    """Whether every layer of ``delayed``'s graph but its own holds only numpy arrays."""
    own = set(delayed.__dask_layers__())
    return all(name in own or (isinstance(layer, MaterializedLayer) and all(
        isinstance(value, np.ndarray) for value in layer.values()))
        for name, layer in delayed.dask.layers.items())


def compute_delayed(delayed):
    """The values of ``delayed`` (a list of ``dask.delayed.Delayed``), as :func:`compute`.

    Graphs over blocks in memory go straight to ``dask.threaded.get`` when dask
    would run them on its threads; anything else (a distributed client, another
    scheduler, blocks still to be read) goes through ``dask.compute``.
    """
    if not (delayed and runs_on_dask_threads()
            and all(_blocks_in_memory(d) for d in delayed)):
        return list(compute(*delayed))
    graph = {}
    for d in delayed:
        graph.update(d.dask)
    return list(threaded_get(graph, [d.key for d in delayed]))


def threaded_get(graph, keys):
    """``dask.threaded.get(graph, keys)`` with BLAS held to one thread meanwhile."""
    with one_blas_thread():
        return dask.threaded.get(graph, keys)
