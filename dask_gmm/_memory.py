"""Read storage once per fit when the data fit in memory, stream it otherwise.

Every EM iteration is a pass over all the data. Read from Zarr on object
storage, a pass costs more than the iteration's arithmetic, so a fit whose
data fit in the memory at hand keeps the row blocks there (``persist``) from
the first pass to the last and reads storage once; data larger than a safe
share of that memory stream from storage on every pass, as an out-of-core fit
must, and memory stays flat.

The choice is dask's config key ``dask_gmm.persist``:

- ``"auto"`` (the default): persist when the blocks take at most
  ``PERSIST_SHARE`` of the memory the workers have left below their pause
  threshold (on a ``distributed`` cluster), or of the machine's available
  memory (on dask's threads);
- ``True`` / ``"always"``: persist whatever the size (spilling is then the
  cluster's business);
- ``False`` / ``"never"``: stream every pass.

Data already in memory (numpy input, or a dask array that is persisted or
made from numpy blocks) are never copied. Persisted blocks are released when
the fit ends, on success, error or interruption. On a cluster, a worker lost
meanwhile takes its blocks with it; the scheduler reads them from storage again,
so the answer does not change.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import dask
import numpy as np

from ._compute import one_blas_thread
from ._engine import HeldBlocks, active_client, flat_keys

logger = logging.getLogger("dask_gmm")

CONFIG_KEY = "dask_gmm.persist"
# Share of the free memory persisted blocks may take: the rest is for the
# chunk tasks' temporaries and whatever else the cluster runs.
PERSIST_SHARE = 0.5
# distributed pauses a worker at this share of its memory limit.
WORKER_PAUSE_SHARE = 0.8
_CHOICES = {"auto": "auto", "always": True, "never": False, True: True, False: False}


@dataclass
class ReadPlan:
    """What a fit does with its data, and why.

    Attributes
    ----------
    persist : bool
        Keep the row blocks in memory across passes.
    in_memory : bool
        The data were in memory before the fit (nothing is read from storage).
    nbytes : int
        Size of the row blocks (and weights).
    reason : str
        For the log.
    """

    persist: bool
    in_memory: bool
    nbytes: int
    reason: str


def persist_setting():
    """``'auto'``, ``True`` or ``False`` from the ``dask_gmm.persist`` config key."""
    value = dask.config.get(CONFIG_KEY, "auto")
    key = value.strip().lower() if isinstance(value, str) else value
    key = {"true": True, "false": False}.get(key, key)  # environment variables
    if not isinstance(key, (str, bool)) or key not in _CHOICES:
        raise ValueError(
            f"dask config '{CONFIG_KEY}' must be 'auto', True ('always') or False "
            f"('never'); got {value!r}."
        )
    return _CHOICES[key]


def already_in_memory(array):
    """Whether every block of a dask ``array`` is held in memory already.

    True for a persisted array (futures on a cluster, ndarrays in its graph on
    threads) and for ``da.from_array`` of a numpy array.
    """
    with contextlib.suppress(ImportError):
        from distributed import futures_of

        if futures_of(array):
            return True
    return _block_values(array) is not None


def _block_values(array):
    """The ndarrays of a dask array persisted on dask's local schedulers, or None."""
    graph = array.__dask_graph__()
    values = [graph.get(key) for key in flat_keys(array)]
    return values if all(isinstance(v, np.ndarray) for v in values) else None


def free_memory(client):
    """Bytes of memory a fit may fill: the workers' (``client``) or this machine's.

    Returns None when the workers have no memory limit.
    """
    if client is None:
        import psutil

        return int(psutil.virtual_memory().available)
    total = 0
    for worker in client.scheduler_info()["workers"].values():
        limit = worker.get("memory_limit") or 0
        if limit <= 0:
            return None
        used = (worker.get("metrics") or {}).get("memory", 0) or 0
        total += max(0, int(WORKER_PAUSE_SHARE * limit) - int(used))
    return total


def plan_reads(data, client, setting=None):
    """Decide whether ``data`` (a :class:`~dask_gmm._engine.ChunkedRows`) is persisted.

    Parameters
    ----------
    data : ChunkedRows
    client : distributed.Client or None
        The cluster the fit runs on; None for dask's local schedulers.
    setting : {'auto', True, False} or None
        Default: the ``dask_gmm.persist`` config key.

    Returns
    -------
    ReadPlan
    """
    setting = persist_setting() if setting is None else setting
    nbytes = data.nbytes
    if already_in_memory(data.source):  # before its feature chunks were joined
        return ReadPlan(False, True, nbytes, "the data are in memory already")
    if setting is False:
        return ReadPlan(False, False, nbytes, f"{CONFIG_KEY} is False")
    if setting is True:
        return ReadPlan(True, False, nbytes, f"{CONFIG_KEY} is True")
    where = "the workers" if client is not None else "this machine"
    free = free_memory(client)
    if free is None:
        return ReadPlan(False, False, nbytes,
                        "the workers have no memory limit to size it against")
    if nbytes > PERSIST_SHARE * free:
        return ReadPlan(False, False, nbytes,
                        f"{_size(nbytes)} is more than {PERSIST_SHARE:.0%} of the "
                        f"{_size(free)} free in {where}")
    return ReadPlan(True, False, nbytes,
                    f"{_size(nbytes)} fits in {PERSIST_SHARE:.0%} of the {_size(free)} "
                    f"free in {where}")


def _size(nbytes):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return None  # pragma: no cover


@contextlib.contextmanager
def rows_for_fit(data, client=None):
    """Yield the :class:`ChunkedRows` a fit should read: persisted or ``data`` itself.

    Persisted blocks are released when the body ends, however it ends. The
    yielded rows count what they read from storage (``bytes_read``,
    ``n_passes``; see :class:`~dask_gmm._engine.ChunkedRows`).

    Parameters
    ----------
    data : ChunkedRows
    client : distributed.Client or None
        The cluster the fit's computations go to.
    """
    plan = plan_reads(data, client)
    data.in_memory = plan.in_memory
    logger.info("%s: %s", "persisting the data" if plan.persist else
                "reading the data on every pass" if not plan.in_memory else
                "not persisting", plan.reason)
    if not plan.persist:
        yield data
        return
    with one_blas_thread():
        arrays = [data.array] + ([data.weights] if data.weights is not None else [])
        persisted = dask.persist(*arrays)
        held = [_block_values(a) for a in persisted] if client is None else [None]
        if all(values is not None for values in held):
            # in this process, behind one graph key (see HeldBlocks)
            kept = data.with_blocks(data.source, data.weights)
            kept.held = HeldBlocks(*held)
        else:
            kept = data.with_blocks(persisted[0], persisted[1] if len(persisted) > 1
                                    else None)
        del persisted, arrays, held
    kept.persisted = True
    kept.in_memory = True
    kept.bytes_read = plan.nbytes
    try:
        yield kept
    except BaseException:
        kept.release(cancel=True)  # a traceback may still hold a round's graph
        raise
    kept.release()


def cluster_client():
    """The ``distributed.Client`` a fit computes on, or None for dask's local schedulers."""
    client = active_client()
    # a Client sets dask's scheduler to "dask.distributed" while it is the default
    if client is not None and dask.config.get("scheduler", None) in (
            None, "dask.distributed", "distributed"):
        return client
    return None


def record_reads(estimator, rows):
    """Set ``n_passes_``, ``bytes_read_`` and ``persisted_`` from what a fit read."""
    estimator.n_passes_ = rows.n_passes
    estimator.bytes_read_ = int(rows.bytes_read)
    estimator.persisted_ = bool(rows.persisted)
    read = ("the data were in memory" if rows.in_memory and not rows.persisted else
            f"{rows.bytes_read / 2**20:.1f} MiB read from storage"
            + (" (persisted at the first)" if rows.persisted else ""))
    logger.info("%s: %d passes over the data, %s", type(estimator).__name__,
                rows.n_passes, read)
