"""open_array: every source becomes a row-chunked dask array, lazily, with clear errors."""

import pickle

import dask.array as da
import h5py
import numpy as np
import pytest
import zarr

from dask_gmm import GaussianMixture, open_array
from dask_gmm.io import HDF5Array

from .helpers import blobs


@pytest.fixture(scope="module")
def X():
    return blobs(2000)[0]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_array_and_group(tmp_path, X, zarr_format):
    path = tmp_path / "x.zarr"
    z = zarr.open_array(path, mode="w", shape=X.shape, chunks=(300, 3), dtype="f8",
                        zarr_format=zarr_format)
    z[:] = X
    opened = open_array(str(path))
    assert opened.chunks == ((2000,), (3,))  # far below 64 MiB: one chunk
    np.testing.assert_array_equal(opened.compute(), X)

    group = zarr.open_group(tmp_path / "g.zarr", mode="w", zarr_format=zarr_format)
    group.create_array("data", shape=X.shape, dtype="f8", chunks=(500, 3))[:] = X
    np.testing.assert_array_equal(open_array(tmp_path / "g.zarr").compute(), X)
    group.create_array("other", shape=(3,), dtype="f8")
    with pytest.raises(ValueError, match=r"zarr group with arrays \['data', 'other'\]"):
        open_array(tmp_path / "g.zarr")
    np.testing.assert_array_equal(open_array(tmp_path / "g.zarr", "data").compute(), X)
    with pytest.raises(ValueError, match="has no array 'nope'"):
        open_array(tmp_path / "g.zarr", dataset="nope")


def test_fsspec_memory_url(X):
    z = zarr.open_array("memory://dask-gmm-test/x.zarr", mode="w", shape=X.shape,
                        chunks=(500, 3), dtype="f8")
    z[:] = X
    np.testing.assert_array_equal(open_array("memory://dask-gmm-test/x.zarr").compute(), X)


def test_hdf5_by_dataset_and_colon_path(tmp_path, X):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("group/data", data=X, chunks=(250, 3))
    for opened in (open_array(path, dataset="group/data"),
                   open_array(f"{path}:group/data")):
        np.testing.assert_array_equal(opened.compute(), X)
    with pytest.raises(ValueError, match="name the dataset"):
        open_array(path)
    with pytest.raises(ValueError, match=r"no dataset 'nope'; it has: \['group/data'\]"):
        open_array(path, dataset="nope")


def test_hdf5_array_pickles_without_its_handle(tmp_path, X):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=X)
    lazy = HDF5Array(path, "data")
    np.testing.assert_array_equal(lazy[:5], X[:5])  # opens the file here
    clone = pickle.loads(pickle.dumps(lazy))
    assert clone._handle is None
    np.testing.assert_array_equal(clone[10:12], X[10:12])


def test_npy_file_is_memory_mapped(tmp_path, X):
    path = tmp_path / "x.npy"
    np.save(path, X)
    opened = open_array(str(path), chunks=700)
    assert opened.chunks[0] == (700, 700, 600)
    np.testing.assert_array_equal(opened.compute(), X)


def test_arrays_in_memory(X):
    assert open_array(X, chunks=500).chunks == ((500,) * 4, (3,))
    split = da.from_array(X, chunks=(400, 2))
    assert open_array(split) is split  # feature chunks are joined in the fit's tasks
    assert open_array(split, chunks=500).chunks == ((500,) * 4, (2, 1))


def test_clear_errors(tmp_path, X):
    with pytest.raises(FileNotFoundError, match="No such file or directory"):
        open_array(tmp_path / "missing.zarr")
    with pytest.raises(FileNotFoundError):
        open_array("memory://dask-gmm-test/missing.zarr")
    (tmp_path / "text.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a zarr array or group"):
        open_array(tmp_path / "text.txt")
    z = zarr.open_array(tmp_path / "3d.zarr", mode="w", shape=(4, 3, 2), dtype="f8")
    with pytest.raises(ValueError, match="Expected a 2-D array"):
        open_array(tmp_path / "3d.zarr")
    s = zarr.open_array(tmp_path / "s.zarr", mode="w", shape=(4, 3), dtype="U4")
    with pytest.raises(ValueError, match="not numeric"):
        open_array(tmp_path / "s.zarr")
    del z, s


def test_opened_hdf5_fits_on_a_process_cluster(tmp_path, X):
    """The lazily opened HDF5 dataset travels to worker processes."""
    from distributed import Client, LocalCluster

    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=X, chunks=(250, 3))
    reference = GaussianMixture(3, random_state=0, init_params="random_from_data").fit(X)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                      dashboard_address=None) as cluster, Client(cluster):
        fitted = GaussianMixture(3, random_state=0, init_params="random_from_data").fit(
            open_array(path, dataset="data", chunks=500))
    np.testing.assert_allclose(fitted.means_, reference.means_, rtol=1e-8)


def test_2d_xarray_dataarray_fits_like_its_values(X, tmp_path):
    """A dask-backed DataArray raised a TypeError from inside; numpy-backed gave dask output."""
    import xarray as xr

    reference = GaussianMixture(3, random_state=0).fit(X)
    as_numpy = xr.DataArray(X, dims=("sample", "band"))
    fitted = GaussianMixture(3, random_state=0).fit(as_numpy)
    np.testing.assert_allclose(fitted.means_, reference.means_, rtol=1e-10)
    labels = fitted.predict(as_numpy)
    assert isinstance(labels, xr.DataArray) and isinstance(labels.data, np.ndarray)
    assert labels.dims == ("sample",)
    xr.Dataset({"x": as_numpy}).to_zarr(tmp_path / "x.zarr")
    as_dask = xr.open_zarr(tmp_path / "x.zarr")["x"].chunk({"sample": 250})
    fitted = GaussianMixture(3, random_state=0).fit(as_dask)
    assert fitted.feature_dim_ == "band"
    np.testing.assert_allclose(fitted.means_, reference.means_, rtol=1e-8)
    labels = fitted.predict(as_dask)
    assert hasattr(labels.data, "dask") and labels.chunks == ((250,) * 8,)
    np.testing.assert_array_equal(labels.values, reference.predict(X))
    cube = xr.DataArray(X.reshape(10, -1, 3), dims=("y", "x", "band"))
    with pytest.raises(ValueError, match=r"dims \('y', 'x', 'band'\).*feature_dim"):
        GaussianMixture(3).fit(cube)


@pytest.mark.parametrize("url, package", [("s3://bucket/data.zarr", "s3fs"),
                                          ("gs://bucket/data.zarr", "gcsfs")])
def test_missing_object_storage_backend_names_the_extra(monkeypatch, url, package):
    import sys

    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'dask-gmm\[cloud\]'"):
        open_array(url)
