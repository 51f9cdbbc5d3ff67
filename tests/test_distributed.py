"""Under a distributed.Client: same answer as threads, and flat worker memory."""

import resource

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster

from dask_gmm import GaussianMixture

from .helpers import as_dask, blobs, reference_inits


def _peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _load_kernels():
    """Load and compile the diagonal E-step kernel here (numba: ~150 MiB per process)."""
    from dask_gmm._mstep import Params, precision_cholesky
    from dask_gmm._requests import EStep, chunk_pass

    params = Params(np.full(2, 0.5), np.zeros((2, 16)),
                    precision_cholesky(np.ones((2, 16)), "diag"), "diag")
    chunk_pass(np.random.default_rng(0).normal(size=(300, 16)), [EStep(params)])


def small_cluster():
    return LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                        memory_limit="600MiB", dashboard_address=None)


@pytest.fixture(scope="module")
def cluster():
    with small_cluster() as cluster:
        yield cluster


@pytest.fixture
def fresh_cluster():
    """A worker that has run nothing yet (an E-step loads numba, ~150 MiB)."""
    with small_cluster() as cluster:
        yield cluster


def test_client_gives_the_same_fit_as_threads(cluster):
    X, _ = blobs(3000)
    inits = reference_inits(X, 4, "full")
    threaded = GaussianMixture(4, **inits).fit(as_dask(X, 400))
    with Client(cluster):
        distributed = GaussianMixture(4, **inits).fit(as_dask(X, 400))
        labels = distributed.predict(as_dask(X, 400)).compute()
    np.testing.assert_allclose(distributed.means_, threaded.means_, rtol=1e-12)
    np.testing.assert_allclose(distributed.covariances_, threaded.covariances_, rtol=1e-12)
    np.testing.assert_array_equal(labels, threaded.predict(X))


def test_zarr_bigger_than_worker_memory_limit_fits_with_flat_memory(fresh_cluster, tmp_path):
    n_samples, n_features, rows = 6_000_000, 16, 150_000
    store = zarr.open_array(tmp_path / "big.zarr", mode="w", shape=(n_samples, n_features),
                            chunks=(rows, n_features), dtype="f8")
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=5, size=(3, n_features))
    for start in range(0, n_samples, rows):
        labels = rng.integers(0, 3, size=rows)
        store[start:start + rows] = centers[labels] + rng.normal(size=(rows, n_features))
    array_bytes = n_samples * n_features * 8

    X = da.from_zarr(store)
    gm = GaussianMixture(3, covariance_type="diag", max_iter=2, tol=0,
                         means_init=centers + 0.5, random_state=0)
    with Client(fresh_cluster) as client:
        client.run(_load_kernels)  # imports and compiled code are not data
        baseline = max(client.run(_peak_rss_bytes).values())
        with pytest.warns(Warning, match="did not converge"):
            gm.fit(X)
        peaks = client.run(_peak_rss_bytes)
    growth = max(peaks.values()) - baseline
    print(f"worker baseline {baseline / 2**20:.0f} MiB, growth {growth / 2**20:.0f} MiB, "
          f"array {array_bytes / 2**20:.0f} MiB")
    assert growth < 0.25 * array_bytes, (baseline, growth, array_bytes)
    np.testing.assert_allclose(np.sort(gm.weights_), [1 / 3] * 3, atol=0.01)


def test_worker_settings_reach_the_worker_processes(monkeypatch):
    """dask_gmm.worker_settings() replaces the nanny's MALLOC_TRIM_THRESHOLD_=65536."""
    import os

    import dask

    from dask_gmm import worker_settings

    # A nanny writes its settings into this process's environment, and the
    # environment wins over config: undo what earlier clusters of this run left.
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    with dask.config.set(worker_settings()), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                         dashboard_address=None) as cluster, Client(cluster) as client:
        environ = client.run(lambda: {k: os.environ.get(k) for k in
                                      ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")})
    (values,) = environ.values()
    assert values == {"MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
                      "MALLOC_MMAP_THRESHOLD_": str(64 * 2**20)}


def test_deploy_config_matches_worker_settings():
    from pathlib import Path

    import yaml

    from dask_gmm import worker_settings

    config = yaml.safe_load((Path(__file__).parents[1] / "deploy" / "dask.yaml").read_text())
    environ = config["distributed"]["nanny"]["pre-spawn-environ"]
    assert {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in environ.items()} \
        == worker_settings()


def test_a_persisted_fit_keeps_its_chunks_in_the_workers(tmp_path):
    """A Client makes dask's scheduler 'dask.distributed': the blocks stay on the cluster.

    Its own cluster without a tight memory limit: the module's 600 MiB worker can
    sit above its pause threshold after the fits of the tests before.
    """
    from dask_gmm._base import fit_estimator
    from dask_gmm._memory import cluster_client

    X, _ = blobs(3000)
    store = zarr.open_array(tmp_path / "x.zarr", mode="w", shape=X.shape, chunks=(300, 3),
                            dtype=X.dtype)
    store[:] = X
    held = []
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        assert cluster_client() is client
        with dask.config.set(scheduler="threads"):
            assert cluster_client() is None
        model = fit_estimator(GaussianMixture(3, random_state=0), da.from_zarr(store),
                              on_round=lambda running: held.append(len(client.who_has())))
    assert model.persisted_ and min(held) >= 10
