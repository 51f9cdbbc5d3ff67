"""Synthetic mixture data written chunk by chunk (``dask-gmm generate``)."""

from __future__ import annotations

import numpy as np

from . import paths
from ._progress import progress_bar
from .io import DATA_ATTRIBUTE


def true_mixture(n_features, n_components, covariance_type, seed, separation=4.0):
    """Random mixture parameters: weights, means and covariances (numpy's shapes).

    Returns
    -------
    weights : ndarray of shape (K,)
    means : ndarray of shape (K, D)
    covariances : ndarray
        Shaped as scikit-learn's ``covariances_`` for ``covariance_type``.
    """
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(n_components, 5.0))
    means = rng.normal(scale=separation, size=(n_components, n_features))
    if covariance_type == "full":
        mixing = rng.normal(size=(n_components, n_features, n_features)) / np.sqrt(n_features)
        covariances = mixing @ mixing.transpose(0, 2, 1) + 0.1 * np.eye(n_features)
    elif covariance_type == "tied":
        mixing = rng.normal(size=(n_features, n_features)) / np.sqrt(n_features)
        covariances = mixing @ mixing.T + 0.1 * np.eye(n_features)
    elif covariance_type == "diag":
        covariances = rng.uniform(0.3, 1.5, size=(n_components, n_features))
    else:
        covariances = rng.uniform(0.3, 1.5, size=n_components)
    return weights, means, covariances


def _draw(rng, rows, weights, means, covariances, covariance_type):
    """``rows`` draws from the mixture: X of shape (rows, D) and their labels.

    Memory is a few (rows, D) arrays whatever D: each component's rows are
    transformed by its own factor, never through a (rows, D, D) stack.
    """
    labels = rng.choice(len(weights), size=rows, p=weights)
    X = rng.standard_normal(size=(rows, means.shape[1]))
    if covariance_type == "full":
        factors = np.linalg.cholesky(covariances)
        for k in range(len(weights)):
            members = np.flatnonzero(labels == k)
            X[members] = X[members] @ factors[k].T
    elif covariance_type == "tied":
        X = X @ np.linalg.cholesky(covariances).T
    elif covariance_type == "diag":
        X *= np.sqrt(covariances)[labels]
    else:
        X *= np.sqrt(covariances)[labels][:, None]
    X += means[labels]
    return X, labels


def write_mixture(out, n_samples, n_features, n_components, covariance_type="full", seed=0,
                  chunk_rows=250_000, separation=4.0, zarr_format=3, overwrite=False,
                  progress=False):
    """Write a zarr group of mixture data chunk by chunk, never whole in memory.

    The group holds ``X`` (n_samples, n_features) float64, ``labels``
    (n_samples,), and the true ``weights``, ``means`` and ``covariances``; its
    ``"dask_gmm:data"`` attribute names ``X`` as the array to fit. It is
    written under a temporary name and renamed into place.

    Returns
    -------
    str
        ``out``.
    """
    import zarr

    paths.check_output(out, overwrite, paths.GENERATED, option="OUT")
    weights, means, covariances = true_mixture(n_features, n_components, covariance_type,
                                               seed, separation)
    with paths.atomic_output(out, overwrite, paths.GENERATED) as temporary:
        group = zarr.open_group(str(temporary), mode="w", zarr_format=zarr_format)
        X = group.create_array("X", shape=(n_samples, n_features), dtype="f8",
                               chunks=(min(chunk_rows, n_samples), n_features))
        labels = group.create_array("labels", shape=(n_samples,), dtype="i4",
                                    chunks=(min(chunk_rows, n_samples),))
        for name, value in [("weights", weights), ("means", means),
                            ("covariances", covariances)]:
            group.create_array(name, shape=value.shape, dtype="f8")[...] = value
        group.attrs.update({DATA_ATTRIBUTE: "X", "covariance_type": covariance_type,
                            "seed": seed, "n_components": n_components,
                            paths.MARKER: paths.GENERATED})
        starts = range(0, n_samples, chunk_rows)
        seeds = np.random.SeedSequence(seed).spawn(len(starts))
        with progress_bar(progress, "generate", "row", total=n_samples,
                          unit_scale=True) as bar:
            for start, chunk_seed in zip(starts, seeds):
                rows = min(chunk_rows, n_samples - start)
                block, block_labels = _draw(np.random.default_rng(chunk_seed), rows,
                                            weights, means, covariances, covariance_type)
                X[start:start + rows] = block
                labels[start:start + rows] = block_labels
                if bar is not None:
                    bar.update(rows)
    return out
