"""Per-row outputs written out of core: labels, probabilities and scores in one pass.

:func:`write_predictions` computes every asked output from one read of each
row chunk and writes it to a zarr group (a ``.zarr`` path) or an HDF5 file (a
``.h5`` / ``.hdf5`` path), chunked like the input's storage. The output is
written under a temporary name and moved into place at the end with
:func:`dask_gmm.paths.place`; an error or an interruption (Ctrl-C, SIGTERM)
first stops the computation, waits for chunk tasks already running, and then
removes the temporary output, so nothing is left behind.

zarr outputs are written by the chunk tasks themselves (in parallel, on the
workers of a cluster); HDF5 outputs are written by the client as chunks
arrive, since an HDF5 file takes one writer.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import time

import dask
import numpy as np

from . import paths
from ._compute import one_blas_thread
from ._engine import join_features
from ._estep import RowPlace
from ._predict import output_shapes, row_outputs
from ._xarray import xarray_kind

logger = logging.getLogger(__name__)

OUTPUTS = ("labels", "proba", "score_samples")
ZARR_SUFFIXES = (".zarr",)
HDF5_SUFFIXES = (".h5", ".hdf5")
# Smallest output chunk made from a ragged input chunking before it is rechunked.
MIN_OUTPUT_CHUNK_ROWS = 1024
# Longest wait for chunk tasks already running after an interruption.
DRAIN_SECONDS = 120


def output_format(path):
    """``'zarr'`` or ``'hdf5'`` from the suffix of ``path``; anything else is refused."""
    name = os.fspath(path).rstrip("/").lower()
    if name.endswith(ZARR_SUFFIXES):
        return "zarr"
    if name.endswith(HDF5_SUFFIXES):
        return "hdf5"
    raise ValueError(
        f"--out '{path}': the output format follows the suffix: '.zarr' for a zarr "
        "store, '.h5' or '.hdf5' for an HDF5 file."
    )


def predict_chunk(block, params, names, dtype, row_start=0, chunk_index=None,
                  nan_policy="raise"):
    """Every asked output of one row chunk, from one E-step.

    Parameters
    ----------
    block : ndarray of shape (n, D)
    params : Params
    names : tuple of str
        Among ``OUTPUTS``.
    dtype : numpy dtype
        Of the probabilities and scores (the model's).
    nan_policy : {'raise', 'omit', 'marginalize'}
        The model's: rows left out get label -1 and NaN probabilities and scores.

    Returns
    -------
    dict of ndarray
        ``labels`` (n,) int64, ``proba`` (n, K), ``score_samples`` (n,).
    """
    place = RowPlace((row_start,), chunk_index=chunk_index)
    return row_outputs(block, params, names, dtype, nan_policy, place)


def _write_zarr_chunk(block, params, names, dtype, path, row_start, chunk_index,
                      nan_policy="raise"):
    import zarr

    values = predict_chunk(block, params, names, dtype, row_start, chunk_index, nan_policy)
    group = zarr.open_group(path, mode="r+")
    stop = row_start + len(block)
    for name, value in values.items():
        group[name][row_start:stop] = value
    return len(block)


def _create_zarr(path, shapes, chunk_rows, source):
    import zarr

    group = zarr.open_group(path, mode="w-")
    for name, (shape, dtype) in shapes.items():
        group.create_array(name, shape=shape, dtype=dtype,
                           chunks=(min(chunk_rows, max(shape[0], 1)),) + shape[1:],
                           fill_value=-1 if dtype.kind == "i" else np.nan,
                           config={"write_empty_chunks": True})
    group.attrs.update({paths.MARKER: paths.PREDICTIONS, "dask_gmm:source": source})


def _create_hdf5(path, shapes, chunk_rows, source):
    import h5py

    f = h5py.File(path, "w-")
    for name, (shape, dtype) in shapes.items():
        f.create_dataset(name, shape=shape, dtype=dtype,
                         chunks=(min(chunk_rows, max(shape[0], 1)),) + shape[1:])
    f.attrs[paths.MARKER] = paths.PREDICTIONS
    f.attrs["dask_gmm:source"] = source
    return f


def write_predictions(model, X, path, names=("labels",), chunk_rows=None, overwrite=False,
                      client=None, progress=None, source="dask-gmm predict"):
    """Write ``model``'s per-row outputs for ``X`` to ``path``, whole or not at all.

    Parameters
    ----------
    model : GaussianMixture
        Fitted.
    X : dask.array.Array of shape (n_samples, n_features), or an xarray object
        Features may span several chunks (joined in each row chunk's task).
        xarray input (as ``model.predict`` takes it) is written as a Zarr
        dataset that ``xarray.open_zarr`` opens on the input's grid.
    path : str or path-like
        ``*.zarr`` (a zarr group) or ``*.h5`` / ``*.hdf5`` (an HDF5 file).
    names : tuple of str
        Among ``'labels'``, ``'proba'``, ``'score_samples'``.
    chunk_rows : int, optional
        Rows per storage chunk of the outputs (default: the row chunks of ``X``).
        Must divide every row chunk of ``X`` but the last.
    overwrite : bool
        Replace an existing output that dask-gmm wrote (never anything else).
    client : distributed.Client, optional
        Run the chunk tasks on this cluster; dask's threads otherwise.
    progress : callable, optional
        Called with the rows of each chunk as it is written.

    Returns
    -------
    path
    """
    from ._validation import check_X

    fmt = output_format(path)
    if xarray_kind(X) is not None:
        if fmt != "zarr":
            raise ValueError(f"'{path}': predictions for xarray input are written as a "
                             "Zarr dataset; name it '*.zarr'.")
        return _write_xarray(model, X, path, names, overwrite, client, progress, source)
    X, lazy, _ = check_X(model, X, reset=False)
    if not lazy:
        raise TypeError("write_predictions takes a dask array (see dask_gmm.open_array).")
    X, chunk_rows = _aligned(join_features(X), chunk_rows)
    policy = model.nan_policy
    row_chunks = X.chunks[0]
    params = model._current_params()
    dtype = model.means_.dtype
    shapes = output_shapes(X.shape[0], len(params.weights), names, dtype)
    starts = np.concatenate([[0], np.cumsum(row_chunks)[:-1]]).astype(int)
    blocks = X.to_delayed().ravel()
    with paths.atomic_output(path, overwrite, paths.PREDICTIONS) as temporary:
        temporary = str(temporary)
        if fmt == "zarr":
            _create_zarr(temporary, shapes, chunk_rows, source)
            task = dask.delayed(_write_zarr_chunk, pure=False)
            tasks = [task(b, params, names, dtype, temporary, int(s), i, policy)
                     for i, (b, s) in enumerate(zip(blocks, starts))]
            run_chunk_tasks(tasks, lambda i, rows: progress and progress(rows), client)
        else:
            task = dask.delayed(predict_chunk, pure=False)
            tasks = [task(b, params, names, dtype, int(s), i, policy)
                     for i, (b, s) in enumerate(zip(blocks, starts))]
            with _create_hdf5(temporary, shapes, chunk_rows, source) as handle:

                def on_done(i, values):
                    stop = starts[i] + row_chunks[i]
                    for name, value in values.items():
                        handle[name][starts[i]:stop] = value
                    if progress is not None:
                        progress(row_chunks[i])

                run_chunk_tasks(tasks, on_done, client)
    return path


XARRAY_OUTPUTS = {"labels": "predict", "proba": "predict_proba",
                  "score_samples": "score_samples"}


def _write_xarray(model, X, path, names, overwrite, client, progress, source):
    """Outputs on xarray input as one Zarr dataset on the input's grid, whole or not at all."""
    import xarray as xr

    outputs = {name: getattr(model, XARRAY_OUTPUTS[name])(X) for name in names}
    dataset = xr.Dataset({name: value.rename(name) for name, value in outputs.items()})
    for value in dataset.data_vars.values():
        value.encoding.clear()
    dataset.attrs.update({paths.MARKER: paths.PREDICTIONS, "dask_gmm:source": source})
    with paths.atomic_output(path, overwrite, paths.PREDICTIONS) as temporary:
        delayed = dataset.to_zarr(str(temporary), mode="w-", compute=False)
        if client is not None:
            client.compute(delayed).result()
        else:
            dask.compute(delayed)
    if progress is not None:
        first = dataset[names[0]]
        progress(math.prod(n for dim, n in first.sizes.items() if dim != "component"))
    return path


def _aligned(X, chunk_rows):
    """Rows per output chunk that every task writes whole, and ``X`` chunked to match.

    zarr chunk tasks write in parallel: two tasks sharing one output chunk would
    overwrite each other's rows, so every row chunk of ``X`` (but the last) must
    be a multiple of the output chunk. Ragged chunkings use their common divisor,
    or are rechunked when that divisor is too small to be a useful chunk.
    """
    row_chunks = X.chunks[0]
    rows = int(chunk_rows or max(row_chunks))
    if not any(c % rows for c in row_chunks[:-1]):
        return X, rows
    rows = math.gcd(*row_chunks[:-1])
    if rows >= MIN_OUTPUT_CHUNK_ROWS:
        return X, rows
    rows = max(row_chunks)
    return X.rechunk({0: rows}), rows


def run_chunk_tasks(tasks, on_done, client=None, window=None):
    """Compute independent delayed ``tasks``, calling ``on_done(i, result)`` as each ends.

    At most ``window`` tasks are in flight, so results never pile up. On any
    error or interruption, queued tasks are cancelled and running ones are
    waited for (up to ``DRAIN_SECONDS``) before the exception goes on: nothing
    writes after this function returns or raises.
    """
    if client is not None:
        return _run_on_client(tasks, on_done, client, window)
    threads = 1 if dask.config.get("scheduler", None) in ("sync", "single-threaded") \
        else (os.cpu_count() or 1)
    window = window or 2 * threads

    executor = concurrent.futures.ThreadPoolExecutor(threads)
    running = {}
    try:
        with one_blas_thread():
            queue = iter(enumerate(tasks))
            for i, task in queue:
                running[executor.submit(_compute_here, task)] = i
                if len(running) >= window:
                    break
            while running:
                done, _ = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    i = running.pop(future)
                    on_done(i, future.result())
                    following = next(queue, None)
                    if following is not None:
                        running[executor.submit(_compute_here, following[1])] = following[0]
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _compute_here(task):
    """A delayed task's result, computed on the calling thread.

    The tasks' graphs were optimised when they were made (``to_delayed``), so
    ``dask.get`` runs them as they are: ``task.compute(scheduler="sync")``
    tokenised and optimised each again, 0.58 against 0.22 ms a task, and on
    two threads at once 15.5 against 4 ms for 16 trivial tasks.
    """
    return dask.get(task.__dask_graph__(), task.key)


def _run_on_client(tasks, on_done, client, window):
    from distributed import as_completed

    window = window or 2 * max(1, sum(client.nthreads().values()))
    queue = iter(enumerate(tasks))
    futures = {}

    def submit(item):
        i, task = item
        futures[client.compute(task)] = i

    try:
        for item in queue:
            submit(item)
            if len(futures) >= window:
                break
        pending = as_completed(list(futures))
        for future in pending:
            i = futures.pop(future)
            on_done(i, future.result())
            future.release()
            item = next(queue, None)
            if item is not None:
                submit(item)
                pending.add(list(futures)[-1])
    except BaseException:
        keys = [f.key for f in futures]
        client.cancel(list(futures))
        _wait_until_not_running(client, keys)
        raise


def _executing_keys(dask_worker, keys):
    state = getattr(dask_worker, "state", dask_worker)
    return [str(ts.key) for ts in getattr(state, "executing", ()) if str(ts.key) in keys]


def _wait_until_not_running(client, keys):
    """After a cancel, wait until no worker still runs one of ``keys``."""
    keys = {str(k) for k in keys}
    deadline = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < deadline:
        try:
            busy = client.run(_executing_keys, keys=keys)
        except Exception:  # the cluster is gone: nothing of ours runs there any more
            return
        if not any(busy.values()):
            return
        time.sleep(0.1)
    logger.warning("chunk tasks were still running %d s after the interruption",
                   DRAIN_SECONDS)
