"""Generated data follow the mixture stored beside them, for every covariance type."""

import numpy as np
import pytest
import zarr

from dask_gmm import GaussianMixture, open_array
from dask_gmm.synthetic import write_mixture

from .helpers import COVARIANCE_TYPES


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_written_data_match_the_stored_truth(tmp_path, covariance_type):
    path = tmp_path / "data.zarr"
    write_mixture(path, 30_000, 3, 2, covariance_type, seed=2, chunk_rows=7000,
                  separation=8.0)
    group = zarr.open_group(path, mode="r")
    X, labels = group["X"][:], group["labels"][:]
    assert X.shape == (30_000, 3) and group["X"].chunks == (7000, 3)
    np.testing.assert_allclose(np.bincount(labels) / len(labels), group["weights"][:],
                               atol=0.02)
    for k in range(2):
        rows = X[labels == k]
        np.testing.assert_allclose(rows.mean(axis=0), group["means"][k], atol=0.1)
        empirical = np.cov(rows.T)
        truth = group["covariances"][:]
        expected = {"full": truth[k] if truth.ndim == 3 else truth,
                    "tied": truth,
                    "diag": np.diag(truth[k]) if truth.ndim == 2 else truth,
                    "spherical": np.eye(3) * truth[k] if truth.ndim == 1 else truth}
        np.testing.assert_allclose(empirical, expected[covariance_type], atol=0.1)
    fitted = GaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(
        open_array(path))  # the group's attribute names X as the data
    np.testing.assert_allclose(np.sort(fitted.weights_), np.sort(group["weights"][:]),
                               atol=0.02)


def test_refuses_to_replace_without_overwrite(tmp_path):
    path = tmp_path / "data.zarr"
    write_mixture(path, 100, 2, 2, chunk_rows=50)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_mixture(path, 100, 2, 2, chunk_rows=50)
    write_mixture(path, 200, 2, 2, chunk_rows=50, overwrite=True)
    assert zarr.open_group(path, mode="r")["X"].shape == (200, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr"]
