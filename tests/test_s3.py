"""Object storage through a real S3-protocol server on 127.0.0.1 (moto, with s3fs).

Fits read Zarr from ``s3://`` on threads and on a LocalCluster, give the answer
of the same data read from a local file, and read each chunk from storage once
when the data fit in memory (every pass when persisting is off); predictions
are written to ``s3://`` whole or not at all.
"""

from __future__ import annotations

import os

import dask
import numpy as np
import pytest
import zarr

pytest.importorskip("moto")
s3fs = pytest.importorskip("s3fs")

from distributed import Client, LocalCluster  # noqa: E402

from dask_gmm import GaussianMixture, GaussianMixtureSweep, load, open_array  # noqa: E402

from .helpers import blobs  # noqa: E402
from .s3server import BUCKET, S3Server  # noqa: E402
from .test_cli import dask_gmm  # noqa: E402
from .test_cluster import _wait_until_nothing_is_held  # noqa: E402

CHUNK_ROWS = 500
N_CHUNKS = 12


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The server, the environment pointing at it, and one array stored there and locally."""
    with S3Server() as server, pytest.MonkeyPatch.context() as patch:
        for name, value in server.environment.items():
            patch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir(BUCKET)
        X, _ = blobs(n_samples=CHUNK_ROWS * N_CHUNKS, n_features=3, centers=3, seed=4)
        local = tmp_path_factory.mktemp("s3") / "x.zarr"
        for store in (str(local), f"s3://{BUCKET}/x.zarr"):
            array = zarr.create_array(store=store, shape=X.shape, chunks=(CHUNK_ROWS, 3),
                                      dtype=X.dtype)
            array[:] = X
        server.local = local
        server.url = f"s3://{BUCKET}/x.zarr"
        yield server
        s3fs.S3FileSystem.clear_instance_cache()


def _fit(source, **kwargs):
    return GaussianMixture(3, covariance_type="full", random_state=0, **kwargs).fit(
        open_array(source))


def _assert_same_fit(a, b):
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-12)
    np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=1e-12)
    assert a.n_iter_ == b.n_iter_ and a.n_passes_ == b.n_passes_


def test_fit_from_s3_reads_each_chunk_once_and_equals_the_local_file(s3):
    local = _fit(s3.local)
    s3.gets.clear()
    remote = _fit(s3.url)
    _assert_same_fit(remote, local)
    reads = s3.chunk_reads("x.zarr")
    assert len(reads) == N_CHUNKS and set(reads.values()) == {1}
    assert remote.persisted_ and remote.n_passes_ > 3
    assert remote.bytes_read_ == CHUNK_ROWS * N_CHUNKS * 3 * 8


def test_streaming_reads_every_chunk_on_every_pass(s3):
    s3.gets.clear()
    with dask.config.set({"dask_gmm.persist": False}):
        streamed = _fit(s3.url)
    reads = s3.chunk_reads("x.zarr")
    assert not streamed.persisted_
    assert len(reads) == N_CHUNKS and set(reads.values()) == {streamed.n_passes_}
    assert streamed.bytes_read_ == streamed.n_passes_ * CHUNK_ROWS * N_CHUNKS * 3 * 8
    _assert_same_fit(streamed, _fit(s3.local))


def test_local_cluster_fit_and_sweep_from_s3_read_storage_at_most_twice(s3):
    threads = _fit(s3.local)
    sweep_threads = GaussianMixtureSweep([2, 3], covariance_type=["full", "diag"],
                                         random_state=0).fit(open_array(s3.local))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        s3.gets.clear()
        remote = _fit(s3.url)
        fit_reads = s3.chunk_reads("x.zarr")
        _wait_until_nothing_is_held(client)  # the persisted chunks were released
        s3.gets.clear()
        sweep = GaussianMixtureSweep([2, 3], covariance_type=["full", "diag"],
                                     random_state=0).fit(open_array(s3.url))
        sweep_reads = s3.chunk_reads("x.zarr")
        _wait_until_nothing_is_held(client)
    assert remote.persisted_ and sweep.persisted_
    assert len(fit_reads) == N_CHUNKS and max(fit_reads.values()) <= 2
    assert len(sweep_reads) == N_CHUNKS and max(sweep_reads.values()) <= 2
    np.testing.assert_allclose(remote.means_, threads.means_, rtol=1e-10)
    assert remote.n_iter_ == threads.n_iter_
    np.testing.assert_allclose(sweep.results_["bic"], sweep_threads.results_["bic"],
                               rtol=1e-10)


def test_cli_fit_and_predict_write_to_s3_whole_and_never_over_what_is_not_ours(s3, tmp_path):
    fs = s3fs.S3FileSystem()
    model = tmp_path / "model.npz"
    environment = dict(os.environ)
    dask_gmm("fit", s3.url, "-k", 3, "--seed", 0, "--out", model, "--no-progress")
    labels_url = f"s3://{BUCKET}/out/labels.zarr"
    os.chdir(tmp_path)  # a wrong writer would make a local folder 's3:' here
    dask_gmm("predict", s3.url, "--model", model, "--out", labels_url,
             "--score-samples", "--no-progress")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]
    stored = zarr.open_group(labels_url, mode="r")
    expected = load(model).predict(zarr.open_array(str(s3.local), mode="r")[:])
    np.testing.assert_array_equal(stored["labels"][:], expected)
    assert stored["score_samples"].shape == (CHUNK_ROWS * N_CHUNKS,)

    again = dask_gmm("predict", s3.url, "--model", model, "--out", labels_url, check=False)
    assert again.returncode == 1 and "exists; pass --overwrite" in again.stderr
    dask_gmm("predict", s3.url, "--model", model, "--out", labels_url, "--overwrite",
             "--no-progress")
    assert zarr.open_group(labels_url, mode="r")["labels"].shape == (CHUNK_ROWS * N_CHUNKS,)
    assert "score_samples" not in zarr.open_group(labels_url, mode="r")

    # Someone else's store and the input itself are never written, even with --overwrite.
    theirs = f"s3://{BUCKET}/theirs.zarr"
    fs.pipe(f"{BUCKET}/theirs.zarr/zarr.json", b'{"zarr_format": 3, "node_type": "group"}')
    refused = dask_gmm("predict", s3.url, "--model", model, "--out", theirs, "--overwrite",
                       check=False)
    assert refused.returncode == 1 and "is not a dask-gmm predictions output" in refused.stderr
    assert fs.cat(f"{BUCKET}/theirs.zarr/zarr.json").startswith(b'{"zarr_format": 3')
    into_input = dask_gmm("predict", s3.url, "--model", model, "--out",
                          f"{s3.url}/labels.zarr", check=False)
    assert into_input.returncode == 1 and "input of this run" in into_input.stderr
    missing_bucket = dask_gmm("predict", s3.url, "--model", model, "--out",
                              "s3://no-such-bucket/labels.zarr", check=False)
    assert missing_bucket.returncode == 1 and "does not exist" in missing_bucket.stderr
    fs.invalidate_cache()
    assert [p for p in fs.find(BUCKET) if ".tmp-" in p] == []
    assert os.environ == environment


def test_failed_predict_to_s3_leaves_nothing(s3):
    from dask_gmm.outputs import write_predictions

    fs = s3fs.S3FileSystem()
    X = open_array(s3.local)
    model = GaussianMixture(2, random_state=0).fit(X)
    poisoned = dask.array.where(dask.array.arange(X.shape[0])[:, None] == 4321, np.nan, X)
    target = f"s3://{BUCKET}/failed/labels.zarr"
    with pytest.raises(ValueError, match="NaN"):
        write_predictions(model, poisoned.rechunk((CHUNK_ROWS, 3)), target)
    fs.invalidate_cache()
    assert not fs.exists(f"{BUCKET}/failed")
