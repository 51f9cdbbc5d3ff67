"""Per-sample outputs of a fitted mixture: labels, probabilities, log-likelihoods.

:func:`row_outputs` gives every asked output of a block of rows from one pass
of the compiled prediction kernel (``_fused_linear.predict``); rows missing
some features under ``nan_policy='marginalize'`` are scored on their observed
features. The ``*_block`` functions apply it to the blocks of ``map_blocks``
(sample dims first, features last). :func:`log_resp_and_norm` is the numpy
route, kept as the reference the kernel is tested against.
"""

from __future__ import annotations

import numpy as np

from ._estep import (
    RowBlock,
    RowPlace,
    block_rows,
    check_rows,
    chunk_shift,
    kernel_block_rows,
    params_row_width,
    row_blocks,
    screen_rows,
    weighted_log_prob,
)
from ._missing import IncompleteRows, observed_log_prob

# Rows in memory are predicted in tasks of this many rows on dask's threads once
# there are two tasks' worth (see rows_in_memory_outputs).
MEMORY_TASK_ROWS = 65_536


def log_resp_and_norm(X, params, row_start=0, chunk_index=None, nan_policy="raise",
                      place=None):
    """Log responsibilities and per-row log-likelihood for one block of rows.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    params : Params
    row_start, chunk_index : int
        Where ``X`` sits in the whole input, for error messages.
    nan_policy : {'raise', 'omit', 'marginalize'}
        'omit': rows holding NaN get NaN outputs instead of an error;
        'marginalize': rows missing some features are scored on the others.
    place : RowPlace or None
        Where ``X`` sits, instead of ``row_start`` and ``chunk_index``.

    Returns
    -------
    log_resp : ndarray of shape (n, K), float64
    log_norm : ndarray of shape (n,), float64
    """
    n = X.shape[0]
    if place is None:
        place = RowPlace((row_start,), chunk_index=chunk_index)
    shift = chunk_shift(X)
    log_resp = np.full((n, len(params.weights)), np.nan)
    log_norm = np.full(n, np.nan)
    for start, rows, _ in row_blocks(X, None, block_rows(params_row_width(params))):
        complete, _, kept = screen_rows(rows, None, nan_policy != "raise", start, place)
        with np.errstate(invalid="ignore", over="ignore"):
            wlp = weighted_log_prob(RowBlock(complete, shift, None, start), params, shift)
        at = np.arange(start, start + len(complete)) if kept is None else start + kept
        _store_log_resp(wlp, at, log_resp, log_norm)
        if nan_policy == "marginalize" and kept is not None:
            incomplete = IncompleteRows.from_block(rows, None)
            if incomplete.n:
                wlp, taken = observed_log_prob(incomplete, params, shift)
                _store_log_resp(wlp, start + taken.positions, log_resp, log_norm)
    return log_resp, log_norm


def output_shapes(n, n_components, names, dtype):
    """Shape and dtype of each output in ``names``, in :func:`row_outputs`' order.

    ``labels`` (n,) int64, ``proba`` (n, K) and ``score_samples`` (n,) in ``dtype``.

    Returns
    -------
    dict of str to (tuple, numpy.dtype)
    """
    shapes = {"labels": ((n,), np.dtype(np.int64)),
              "proba": ((n, n_components), np.dtype(dtype)),
              "score_samples": ((n,), np.dtype(dtype))}
    return {name: shape for name, shape in shapes.items() if name in names}


def new_outputs(n, n_components, names, dtype):
    """Arrays (not filled) for the outputs ``names`` of ``n`` rows (see :func:`output_shapes`)."""
    return {name: np.empty(shape, kind)
            for name, (shape, kind) in output_shapes(n, n_components, names, dtype).items()}


def row_outputs(X, params, names, dtype, nan_policy="raise", place=None, out=None):
    """Labels, probabilities and log-likelihoods of a block of rows, from one pass.

    Complete rows go through the compiled prediction kernel (``_fused_linear``);
    under 'marginalize' rows missing some features are scored on the others.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    params : Params
    names : collection of str
        Among ``'labels'``, ``'proba'``, ``'score_samples'``.
    dtype : numpy dtype
        Of the probabilities and scores.
    nan_policy : {'raise', 'omit', 'marginalize'}
        Rows left out get label -1 and NaN probabilities and scores.
    place : RowPlace or None
        Where ``X`` sits, for messages.
    out : dict of ndarray, optional
        Arrays to write the outputs into (of the shapes and dtypes returned, for
        every name asked), instead of new ones.

    Returns
    -------
    dict
        ``labels`` (n,) int64, ``proba`` (n, K), ``score_samples`` (n,): those asked.
    """
    from . import _fused_linear

    n, n_features = X.shape
    place = place or RowPlace()
    shift = chunk_shift(X)
    if out is None:
        out = new_outputs(n, len(params.weights), names, dtype)
    # Under 'raise' every row is written (a NaN is an error); otherwise rows left
    # out keep the fill values.
    if nan_policy != "raise":
        for name, value in out.items():
            value.fill(-1 if name == "labels" else np.nan)
    # Under 'raise' the kernel checks the rows as it reads them (their sum of
    # squares; see chunk_pass), so a block can be large: few hand-overs of the GIL.
    kernel_checks = nan_policy == "raise"
    rows_per_block = kernel_block_rows(n_features) if kernel_checks else block_rows(n_features)
    for start, rows, _ in row_blocks(X, None, rows_per_block):
        if kernel_checks:
            complete, kept = rows, None
        else:
            complete, _, kept = screen_rows(rows, None, True, start, place)
        if kept is None:  # every row complete: the kernel writes in place
            at = slice(start, start + len(rows))
            squares = np.zeros(1)
            _fused_linear.predict(complete, params, shift, *(
                out[name][at] if name in out else None
                for name in ("labels", "proba", "score_samples")), row_squares=squares)
            if kernel_checks:
                check_rows(rows, start, place=place, squares=squares[0])
        elif len(complete):
            found = {name: np.empty((len(complete),) + value.shape[1:], value.dtype)
                     for name, value in out.items()}
            _fused_linear.predict(complete, params, shift, *(
                found.get(name) for name in ("labels", "proba", "score_samples")))
            for name, value in found.items():
                out[name][start + kept] = value
        if nan_policy == "marginalize" and kept is not None:
            incomplete = IncompleteRows.from_block(rows, None)
            if incomplete.n:
                wlp, taken = observed_log_prob(incomplete, params, shift)
                log_resp, log_norm = np.empty_like(wlp), np.empty(len(wlp))
                _store_log_resp(wlp, slice(None), log_resp, log_norm)
                at = start + taken.positions
                if "labels" in out:
                    out["labels"][at] = log_resp.argmax(axis=1)
                if "proba" in out:
                    out["proba"][at] = np.exp(log_resp)
                if "score_samples" in out:
                    out["score_samples"][at] = log_norm
    return out


def rows_in_memory_outputs(X, params, names, dtype, nan_policy="raise"):
    """:func:`row_outputs` of rows in memory, in tasks of rows on dask's threads.

    Rows enough for two tasks of ``MEMORY_TASK_ROWS`` are cut into such tasks,
    run on dask's threaded scheduler (BLAS held to one thread), each writing its
    rows of arrays made once; otherwise, or when dask would not run on its
    threads (another scheduler, a distributed client), one pass here. A row the
    kernels reject (one too large to square, under 'raise') is reported as the
    one pass would report it: the first task in row order that fails gives the
    error.

    Parameters
    ----------
    X : ndarray of shape (n, D)
    params, names, dtype, nan_policy :
        As :func:`row_outputs`.

    Returns
    -------
    dict
        As :func:`row_outputs`.
    """
    from ._compute import runs_on_dask_threads, threaded_get

    n = X.shape[0]
    if n < 2 * MEMORY_TASK_ROWS or not runs_on_dask_threads():
        return row_outputs(X, params, names, dtype, nan_policy)
    out = new_outputs(n, len(params.weights), names, dtype)

    def task(start):
        stop = min(start + MEMORY_TASK_ROWS, n)
        try:
            row_outputs(X[start:stop], params, names, dtype, nan_policy, RowPlace((start,)),
                        {name: value[start:stop] for name, value in out.items()})
        except Exception as error:  # raised below, in row order
            return error
        return None

    graph = {("dask-gmm-rows", i): (task, start)
             for i, start in enumerate(range(0, n, MEMORY_TASK_ROWS))}
    errors = threaded_get(graph, sorted(graph))
    for error in errors:
        if error is not None:
            raise error
    return out


def _store_log_resp(wlp, at, log_resp, log_norm):
    """Normalise weighted log densities ``wlp`` into rows ``at`` of the outputs."""
    top = wlp.max(axis=1)
    top[~np.isfinite(top)] = 0.0
    with np.errstate(divide="ignore"):
        norm = np.log(np.exp(wlp - top[:, None]).sum(axis=1)) + top
    log_norm[at] = norm
    log_resp[at] = wlp - norm[:, None]


def _block_place(block, block_info):
    """Where a ``map_blocks`` block sits, for messages."""
    if not block_info:
        return RowPlace()
    info = block_info[0]
    origin = tuple(loc[0] for loc in info["array-location"][:-1])
    location = tuple(info["chunk-location"][:-1])
    return RowPlace(origin, block.shape[:-1], tuple(info["shape"][:-1]),
                    location[0] if len(location) == 1 else location)


def block_outputs(X, params, names, dtype, nan_policy="raise", block_info=None):
    """:func:`row_outputs` of a block of samples ``(..., D)``, on its sample shape."""
    rows = X.reshape(-1, X.shape[-1])
    out = row_outputs(rows, params, names, dtype, nan_policy, _block_place(X, block_info))
    return {name: value.reshape(X.shape[:-1] + value.shape[1:])
            for name, value in out.items()}


def predict_block(X, params, nan_policy="raise", block_info=None):
    """Most likely component of each sample, int64; -1 where a sample is left out."""
    return block_outputs(X, params, ("labels",), np.float64, nan_policy, block_info)["labels"]


def predict_proba_block(X, params, dtype, nan_policy="raise", block_info=None):
    """Responsibilities of each sample, shape ``(..., K)``, in ``dtype``; NaN where masked."""
    return block_outputs(X, params, ("proba",), dtype, nan_policy, block_info)["proba"]


def score_samples_block(X, params, dtype, nan_policy="raise", block_info=None):
    """Log-likelihood of each sample, shape ``(...)``, in ``dtype``; NaN where masked."""
    return block_outputs(X, params, ("score_samples",), dtype, nan_policy,
                         block_info)["score_samples"]
