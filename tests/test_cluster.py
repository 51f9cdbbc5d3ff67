"""On a real dask scheduler and worker processes, started with the commands users run.

The scheduler and workers listen on 127.0.0.1 only and are stopped when the
module's tests end, pass or fail.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster

from dask_gmm import GaussianMixture, GaussianMixtureSweep
from dask_gmm._base import fit_estimator

from .helpers import blobs

DASK = Path(sys.executable).with_name("dask")


def _start(args, log):
    return subprocess.Popen([str(DASK)] + args, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(process):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def scheduler_file(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes (each with its nanny)."""
    folder = tmp_path_factory.mktemp("cluster")
    path = folder / "scheduler.json"
    log = open(folder / "cluster.log", "w")
    processes = [_start(["scheduler", "--host", "127.0.0.1", "--port", "0",
                         "--no-dashboard", "--scheduler-file", str(path)], log)]
    try:
        deadline = time.time() + 60
        while not path.exists():
            if time.time() > deadline:
                raise RuntimeError("the dask scheduler did not start")
            time.sleep(0.2)
        for _ in range(2):
            processes.append(_start(["worker", "--scheduler-file", str(path), "--host",
                                     "127.0.0.1", "--nthreads", "1", "--no-dashboard",
                                     "--memory-limit", "1GiB"], log))
        with Client(scheduler_file=str(path)) as client:
            client.wait_for_workers(2, timeout=60)
        yield str(path)
    finally:
        for process in reversed(processes):
            _stop(process)
        log.close()


@pytest.fixture(scope="module")
def zarr_data(tmp_path_factory):
    X, _ = blobs(6000, n_features=4, centers=4, seed=5)
    path = tmp_path_factory.mktemp("data") / "x.zarr"
    store = zarr.open_array(path, mode="w", shape=X.shape, chunks=(500, 4), dtype="f8")
    store[:] = X
    return path, X


def model(**params):
    settings = dict(n_components=4, covariance_type="full", random_state=0, tol=1e-6,
                    max_iter=300)
    settings.update(params)
    return GaussianMixture(**settings)


def assert_same(a, b, rtol=1e-10):
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=1e-12)
    assert a.n_iter_ == b.n_iter_


def test_real_scheduler_gives_the_threaded_answer(scheduler_file, zarr_data):
    path, _ = zarr_data
    threaded = model().fit(da.from_zarr(str(path)))
    with Client(scheduler_file=scheduler_file) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        on_cluster = model().fit(da.from_zarr(str(path)))
    assert_same(on_cluster, threaded)


@pytest.mark.parametrize("chunks", [500, 1700, 6000])
def test_layout_does_not_change_the_answer(zarr_data, chunks):
    """Three chunkings x 1, 2 and 4 workers: the same parameters to rtol 1e-10."""
    _, X = zarr_data
    reference = model().fit(da.from_array(X, chunks=(700, 4)))
    for n_workers in (1, 2, 4):
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=False,
                          dashboard_address=None) as cluster, Client(cluster):
            fitted = model().fit(da.from_array(X, chunks=(chunks, 4)))
        assert_same(fitted, reference)


def _kill_one_worker_after(client, rounds_seen, n_rounds, killed, timeout=120):
    deadline = time.time() + timeout  # never outlive a fit that ends early or fails
    while len(rounds_seen) < n_rounds:
        if time.time() > deadline:
            return
        time.sleep(0.01)
    pid = next(iter(client.run(os.getpid).values()))
    os.kill(pid, signal.SIGKILL)
    killed.append(pid)


@pytest.mark.parametrize("persist", ["always", "never"])
def test_a_killed_worker_does_not_change_a_fit(scheduler_file, zarr_data, persist):
    """Streamed, or persisted (the lost worker's chunks are read from storage again)."""
    path, _ = zarr_data
    undisturbed = model(n_components=5).fit(da.from_zarr(str(path)))
    rounds, killed = [], []
    with Client(scheduler_file=scheduler_file) as client, \
            dask.config.set({"dask_gmm.persist": persist}):
        killer = threading.Thread(target=_kill_one_worker_after,
                                  args=(client, rounds, 5, killed))
        killer.start()
        fitted = fit_estimator(model(n_components=5), da.from_zarr(str(path)),
                               on_round=rounds.append)
        killer.join()
        client.wait_for_workers(2, timeout=60)  # the nanny restarted it
        _wait_until_nothing_is_held(client)
    assert killed and len(rounds) > 5
    assert fitted.persisted_ == (persist == "always")
    assert_same(fitted, undisturbed)


def _wait_until_nothing_is_held(client, timeout=20):
    deadline = time.time() + timeout
    while client.who_has() and time.time() < deadline:
        time.sleep(0.05)
    assert client.who_has() == {}


def test_persisted_chunks_are_released_after_an_interrupted_fit(scheduler_file, zarr_data):
    path, _ = zarr_data

    def interrupt(running):
        raise KeyboardInterrupt

    with Client(scheduler_file=scheduler_file) as client:
        with pytest.raises(KeyboardInterrupt):
            fit_estimator(model(), da.from_zarr(str(path)), on_round=interrupt)
        _wait_until_nothing_is_held(client)
        fitted = model().fit(da.from_zarr(str(path)))
        assert fitted.persisted_
        _wait_until_nothing_is_held(client)


def test_a_killed_worker_does_not_change_a_sweep(scheduler_file, zarr_data):
    from dask_gmm import sweep as sweep_module

    path, _ = zarr_data

    def sweep():
        return GaussianMixtureSweep([2, 3, 4, 5], ("full", "diag"), random_state=0,
                                    tol=1e-6)

    undisturbed = sweep().fit(da.from_zarr(str(path)))
    rounds, killed = [], []
    real = sweep_module.run_together

    def counting(data, steps, on_round=None, **kwargs):
        return real(data, steps, on_round=lambda n: (rounds.append(n), on_round(n)),
                    **kwargs)

    with Client(scheduler_file=scheduler_file) as client:
        killer = threading.Thread(target=_kill_one_worker_after,
                                  args=(client, rounds, 4, killed))
        killer.start()
        sweep_module.run_together = counting
        try:
            fitted = sweep().fit(da.from_zarr(str(path)))
        finally:
            sweep_module.run_together = real
        killer.join()
        client.wait_for_workers(2, timeout=60)
    assert killed
    np.testing.assert_allclose(fitted.results_["bic"], undisturbed.results_["bic"],
                               rtol=1e-10)
    assert fitted.best_params_ == undisturbed.best_params_


def test_iteration_graph_is_lean(tmp_path):
    """Tasks and bytes per iteration depend on the chunks, not on the rows; the
    parameters are in the graph once, not copied into every task."""
    import pickle

    from dask_gmm._engine import ChunkedRows
    from dask_gmm._mstep import Params
    from dask_gmm._requests import EStep

    marker = np.full((4, 4), 1234.56789)  # means no other number in the graph has
    request = EStep(Params(np.full(4, 0.25), marker, np.ones(4), "spherical"))
    sizes = []
    for rows in (4000, 400_000):
        store = zarr.open_array(tmp_path / f"x{rows}.zarr", mode="w", shape=(rows, 4),
                                chunks=(rows // 8, 4), dtype="f8")
        graph = dict(ChunkedRows(da.from_zarr(store)).map_reduce([request]).__dask_graph__())
        pickled = {key: pickle.dumps(value) for key, value in graph.items()}
        holding_params = [key for key, blob in pickled.items() if marker.tobytes() in blob]
        assert len(holding_params) == 1
        sizes.append((len(graph), sum(len(blob) for blob in pickled.values())))
    assert sizes[0][0] == sizes[1][0] <= 2 * 8 + 4
    assert abs(sizes[0][1] - sizes[1][1]) < 0.05 * sizes[0][1]
