"""zarr arrays and h5py datasets are fitted chunk by chunk, never loaded whole."""

import dask
import h5py
import numpy as np
import pytest
import zarr

from dask_gmm import GaussianMixture, open_array

from .helpers import blobs, reference_inits


class ReadCounter:
    """A zarr-like array that records the row ranges read from it."""

    def __init__(self, array):
        self.array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.chunks = array.chunks
        self.reads = []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.array[key]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_array_fits_like_numpy(tmp_path, zarr_format):
    X, _ = blobs(2000)
    store = zarr.open_array(tmp_path / "x.zarr", mode="w", shape=X.shape,
                            chunks=(300, 3), dtype=X.dtype, zarr_format=zarr_format)
    store[:] = X
    inits = reference_inits(X, 4, "full")
    from_disk = GaussianMixture(4, **inits).fit(store)
    in_memory = GaussianMixture(4, **inits).fit(X)
    np.testing.assert_allclose(from_disk.means_, in_memory.means_, rtol=1e-10)
    labels = from_disk.predict(store)
    assert labels.chunks[0] == open_array(store).chunks[0]
    np.testing.assert_array_equal(labels.compute(), in_memory.predict(X))


def test_h5py_dataset_fits_like_numpy(tmp_path):
    X, _ = blobs(2000)
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=X, chunks=(250, 3))
    inits = reference_inits(X, 4, "diag")
    with h5py.File(path, "r") as f:
        from_disk = GaussianMixture(4, covariance_type="diag", **inits).fit(f["data"])
    in_memory = GaussianMixture(4, covariance_type="diag", **inits).fit(X)
    np.testing.assert_allclose(from_disk.covariances_, in_memory.covariances_, rtol=1e-10)


def test_stores_are_read_in_row_chunks_never_whole(tmp_path, monkeypatch):
    from dask_gmm import io

    monkeypatch.setattr(io, "TARGET_CHUNK_BYTES", 300 * 3 * 8)
    X, _ = blobs(3000)
    store = zarr.open_array(tmp_path / "x.zarr", mode="w", shape=X.shape,
                            chunks=(100, 3), dtype=X.dtype)
    store[:] = X
    for persist, reads_per_chunk in (("never", 3), ("auto", 1)):
        counter = ReadCounter(store)
        gm = GaussianMixture(4, max_iter=3, tol=0, **reference_inits(X, 4, "full"))
        with pytest.warns(Warning), dask.config.set({"dask_gmm.persist": persist}):
            gm.fit(counter)
        sizes = [key[0].stop - key[0].start for key in counter.reads]
        sizes = [size for size in sizes if size > 0]  # dask's zero-row probe for meta
        assert max(sizes) == 300  # whole storage chunks, never the whole array
        # each chunk once per EM iteration, or once in all when the data are kept in memory
        assert len(sizes) == reads_per_chunk * 10
