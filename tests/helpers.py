"""Shared data and helpers: small mixtures, chunkings, and a compute counter."""

import contextlib

import dask.array as da
import numpy as np
from dask.callbacks import Callback
from sklearn.datasets import make_blobs
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]


def blobs(n_samples=1500, n_features=3, centers=4, seed=0, dtype=np.float64):
    """Four stretched blobs: well separated but not axis-aligned."""
    X, labels = make_blobs(
        n_samples=n_samples, n_features=n_features, centers=centers,
        cluster_std=1.0, random_state=seed,
    )
    stretch = np.random.RandomState(seed + 1).normal(size=(n_features, n_features))
    return (X @ stretch).astype(dtype), labels


def reference_inits(X, n_components, covariance_type):
    """Initial parameters from scikit-learn's own k-means start (max_iter=0)."""
    start = SklearnGaussianMixture(
        n_components, covariance_type=covariance_type, random_state=0, max_iter=0
    ).fit(X)
    return dict(
        weights_init=start.weights_,
        means_init=start.means_,
        precisions_init=start.precisions_,
    )


def ragged_chunks(n_samples, n_chunks, seed=0):
    """Row chunk sizes of unequal lengths summing to n_samples."""
    cuts = np.sort(np.random.RandomState(seed).choice(np.arange(1, n_samples),
                                                     n_chunks - 1, replace=False))
    return tuple(np.diff(np.concatenate([[0], cuts, [n_samples]])).tolist())


@contextlib.contextmanager
def count_computes():
    """Count calls into the dask scheduler (like flox's raise_if_dask_computes)."""
    calls = []

    def on_start(dsk):
        calls.append(len(dsk))

    with Callback(start=on_start):
        yield calls




def as_dask(X, chunks):
    return da.from_array(X, chunks=(chunks, X.shape[1]))


def ill_conditioned_case():
    """Two components with condition numbers near 1e8, data far from the origin.

    Returns
    -------
    X : ndarray of shape (4000, 3)
    gm : scikit-learn GaussianMixture fitted to X
    exact : ndarray of shape (4000,)
        Each row's log-likelihood under ``gm``, computed in long double.
    """
    from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

    rng = np.random.RandomState(0)
    a = rng.normal(size=(2000, 3)) * [1, 1e-3, 1e-4]
    b = rng.normal(size=(2000, 3)) * [1e-4, 1, 1e-3] + [30, -20, 10]
    X = np.vstack([a, b]) @ np.linalg.qr(rng.normal(size=(3, 3)))[0] + 100
    gm = SklearnGaussianMixture(2, random_state=0, reg_covar=1e-12).fit(X)
    Xl = X.astype(np.longdouble)
    per_component = []
    for k in range(2):
        U = gm.precisions_cholesky_[k].astype(np.longdouble)
        z = (Xl - gm.means_[k].astype(np.longdouble)) @ U
        per_component.append(-0.5 * (3 * np.log(2 * np.pi) + (z * z).sum(axis=1))
                             + np.log(np.diag(U)).sum() + np.log(gm.weights_[k]))
    per_component = np.array(per_component).T
    top = per_component.max(axis=1)
    exact = top + np.log(np.exp(per_component - top[:, None]).sum(axis=1))
    return X, gm, exact
