"""Data as Zarr users hold it: N-D xarray cubes, masked (NaN) samples, one band per chunk.

The reference is scikit-learn fitted on the kept pixels, stacked in C order
over the sample dims: at this size (under 50,000 samples) our k-means start
sees the same rows in the same order, so the fits agree to rounding.
"""

import dask.array as da
import numpy as np
import pytest
from sklearn.datasets import load_sample_image
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

import dask_gmm
from dask_gmm import GaussianMixture, GaussianMixtureSweep

from .helpers import COVARIANCE_TYPES, count_computes

xr = pytest.importorskip("xarray")

RTOL = 1e-6


@pytest.fixture(scope="module")
def photo():
    """scikit-learn's china.jpg, every 5th pixel: (y, x, band) floats with two masks.

    A block of pixels is NaN in every band (land); a stripe is NaN in one band
    only (a band lost to cloud): both kinds of sample are left out.
    """
    image = load_sample_image("china.jpg")[::5, ::5].astype(np.float64) / 255.0
    image[20:40, 30:70, :] = np.nan
    image[:, 100:104, 1] = np.nan
    return xr.DataArray(
        image, dims=("y", "x", "band"),
        coords={"y": np.arange(image.shape[0]) * 10.0, "x": np.arange(image.shape[1]) * 5.0,
                "band": ["red", "green", "blue"]},
        name="reflectance",
    )


def kept_rows(values):
    """Samples in C order over the sample dims (features last), NaN rows dropped."""
    rows = values.reshape(-1, values.shape[-1])
    keep = ~np.isnan(rows).any(axis=1)
    return rows[keep], keep


def check_like_sklearn(ours, reference):
    np.testing.assert_allclose(ours.means_, reference.means_, rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(ours.covariances_, reference.covariances_, rtol=RTOL,
                               atol=1e-9)
    np.testing.assert_allclose(ours.weights_, reference.weights_, rtol=RTOL)
    assert ours.n_iter_ == reference.n_iter_
    np.testing.assert_allclose(ours.lower_bound_, reference.lower_bound_, rtol=1e-9)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_masked_photo_cube_one_band_per_chunk_equals_sklearn_on_kept_pixels(
        photo, covariance_type, tmp_path):
    cube = photo.chunk({"y": 30, "x": 50, "band": 1})
    assert cube.data.numblocks == (3, 3, 3)
    rows, keep = kept_rows(photo.values)
    reference = SklearnGaussianMixture(4, covariance_type=covariance_type,
                                       random_state=0).fit(rows)
    gm = GaussianMixture(4, covariance_type=covariance_type, random_state=0,
                         nan_policy="omit")
    with count_computes() as computes:
        gm.fit(cube, feature_dim="band")
    check_like_sklearn(gm, reference)
    assert gm.feature_dim_ == "band"
    assert list(gm.feature_names_in_) == ["red", "green", "blue"]
    # one compute per round: the k-means sample, the k-means statistics, each iteration
    assert len(computes) == 2 + gm.n_iter_

    labels = gm.predict(cube)
    assert isinstance(labels, xr.DataArray) and hasattr(labels.data, "dask")
    assert labels.dims == ("y", "x") and labels.chunks == cube.chunks[:2]
    np.testing.assert_array_equal(labels.x, photo.x)
    np.testing.assert_array_equal(labels.y, photo.y)
    flat = labels.values.reshape(-1)
    assert (flat[~keep] == -1).all()
    np.testing.assert_array_equal(flat[keep], reference.predict(rows))
    proba = gm.predict_proba(cube)
    assert proba.dims == ("y", "x", "component") and proba.shape[-1] == 4
    flat_proba = proba.values.reshape(-1, 4)
    assert np.isnan(flat_proba[~keep]).all()
    np.testing.assert_allclose(flat_proba[keep], reference.predict_proba(rows), atol=1e-6)
    scores = gm.score_samples(cube).values.reshape(-1)
    assert np.isnan(scores[~keep]).all()
    np.testing.assert_allclose(scores[keep], reference.score_samples(rows), rtol=1e-6)
    np.testing.assert_allclose(gm.bic(cube), reference.bic(rows), rtol=1e-6)
    np.testing.assert_allclose(gm.aic(cube), reference.aic(rows), rtol=1e-6)

    path = tmp_path / "labels.zarr"
    xr.Dataset({"labels": labels, "proba": proba}).to_zarr(path)
    back = xr.open_zarr(path)
    np.testing.assert_array_equal(back["labels"].values, labels.values)
    np.testing.assert_array_equal(back["x"].values, photo.x.values)
    assert back["proba"].dims == ("y", "x", "component")


def test_photo_as_a_dataset_of_three_variables(photo, tmp_path):
    dataset = photo.to_dataset(dim="band")
    assert list(dataset.data_vars) == ["red", "green", "blue"]
    dataset.chunk({"y": 40, "x": 40}).to_zarr(tmp_path / "bands.zarr")
    # a Dataset's features are its variables in order (zarr may list them sorted)
    opened = xr.open_zarr(tmp_path / "bands.zarr")[["red", "green", "blue"]]
    rows, keep = kept_rows(photo.values)
    reference = SklearnGaussianMixture(3, random_state=0).fit(rows)
    gm = GaussianMixture(3, random_state=0, nan_policy="omit").fit(opened)
    check_like_sklearn(gm, reference)
    assert list(gm.feature_names_in_) == ["red", "green", "blue"]
    # variables are found by name, whatever their order in the dataset
    reordered = opened[["blue", "red", "green"]]
    labels = gm.predict(reordered)
    assert labels.dims == ("y", "x")
    np.testing.assert_array_equal(labels.values.reshape(-1)[keep], reference.predict(rows))
    with pytest.raises(ValueError, match="no data variable 'green'"):
        gm.predict(opened[["red", "blue"]])


def test_four_dimensional_cube_with_the_band_first(photo):
    """(band, time, y, x): the feature dim can be anywhere; time is a sample dim."""
    second = photo[::-1, :, :].copy(data=photo.values[::-1] * 0.9)
    cube = xr.concat([photo, second], dim="time").transpose("band", "time", "y", "x")
    cube = cube.chunk({"band": 1, "time": 1, "y": 45, "x": 64})
    values = cube.transpose("time", "y", "x", "band").values
    rows, keep = kept_rows(values)
    reference = SklearnGaussianMixture(5, covariance_type="diag", random_state=1).fit(rows)
    gm = GaussianMixture(5, covariance_type="diag", random_state=1, nan_policy="omit")
    gm.fit(cube, feature_dim="band")
    check_like_sklearn(gm, reference)
    labels = gm.predict(cube)  # no feature_dim: the model remembers it
    assert labels.dims == ("time", "y", "x")
    flat = labels.values.reshape(-1)
    np.testing.assert_array_equal(flat[keep], reference.predict(rows))
    assert (flat[~keep] == -1).all()


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random_from_data"])
@pytest.mark.parametrize("lazy", [False, True])
def test_nan_rows_under_omit_equal_the_fit_on_kept_rows(init_params, lazy):
    rng = np.random.RandomState(0)
    X = np.concatenate([rng.normal(size=(300, 3)), rng.normal(size=(300, 3)) + 5])
    X = X[rng.permutation(600)]
    X[rng.choice(600, 90, replace=False), rng.randint(0, 3, 90)] = np.nan
    rows, keep = kept_rows(X)
    reference = SklearnGaussianMixture(3, init_params=init_params, random_state=0).fit(rows)
    data = da.from_array(X, chunks=((150, 7, 243, 200), 3)) if lazy else X
    gm = GaussianMixture(3, init_params=init_params, random_state=0, nan_policy="omit")
    gm.fit(data)
    check_like_sklearn(gm, reference)
    labels = np.asarray(gm.predict(data))
    assert (labels[~keep] == -1).all()
    np.testing.assert_array_equal(labels[keep], reference.predict(rows))
    np.testing.assert_allclose(gm.score(data), reference.score(rows), rtol=1e-9)


def test_sample_weight_of_masked_rows_is_ignored():
    rng = np.random.RandomState(1)
    X = rng.normal(size=(500, 2)) * [1, 3]
    X[::7, 0] = np.nan
    weights = rng.uniform(0.5, 2.0, size=500)
    rows, keep = kept_rows(X)
    start = dict(means_init=[[-1.0, 0], [1, 0]], max_iter=5, tol=0, random_state=0)
    ours = GaussianMixture(2, nan_policy="omit", **start).fit(
        da.from_array(X, chunks=(128, 2)), sample_weight=weights)
    kept = GaussianMixture(2, **start).fit(rows, sample_weight=weights[keep])
    np.testing.assert_allclose(ours.means_, kept.means_, rtol=1e-10)
    np.testing.assert_allclose(ours.covariances_, kept.covariances_, rtol=1e-10)


def test_sweep_with_masked_samples_scores_kept_samples_only(photo):
    cube = photo.chunk({"y": 30, "x": 50})
    rows, _ = kept_rows(photo.values)
    sweep = GaussianMixtureSweep([2, 3], ["diag", "full"], random_state=0,
                                 nan_policy="omit").fit(cube, feature_dim="band")
    assert sweep.best_estimator_.feature_dim_ == "band"
    for i, (k, cov) in enumerate(zip(sweep.results_["n_components"],
                                     sweep.results_["covariance_type"])):
        reference = SklearnGaussianMixture(k, covariance_type=cov, random_state=0).fit(rows)
        np.testing.assert_allclose(sweep.results_["bic"][i], reference.bic(rows), rtol=1e-6)
    assert sweep.predict(cube).dims == ("y", "x")


def test_features_in_separate_chunks_are_joined_inside_the_chunk_task():
    rng = np.random.RandomState(2)
    X = np.concatenate([rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4)) + 3])
    one_chunk = da.from_array(X, chunks=(500, 4))
    per_feature = da.from_array(X, chunks=(500, 1))
    start = dict(random_state=0, covariance_type="tied")
    reference = GaussianMixture(2, **start).fit(one_chunk)
    gm = GaussianMixture(2, **start).fit(per_feature)
    np.testing.assert_allclose(gm.means_, reference.means_, rtol=1e-10)
    np.testing.assert_array_equal(gm.predict(per_feature).compute(), reference.predict(X))
    # no rechunk layer: one join task per block of rows, feeding the pass directly
    from dask_gmm._engine import ChunkedRows

    data = ChunkedRows(per_feature)
    graph = dict(data.map_reduce([]).dask)
    assert not any("rechunk" in str(key) for key in graph)
    assert len(graph) <= 8 * 4 + 8 + 8 + 2  # input chunks, joins, chunk tasks, combines


def test_saved_model_remembers_the_feature_dim(photo, tmp_path):
    gm = GaussianMixture(2, random_state=0, nan_policy="omit").fit(photo, feature_dim="band")
    gm.save(tmp_path / "model.npz")
    loaded = dask_gmm.load(tmp_path / "model.npz")
    assert loaded.feature_dim_ == "band" and loaded.nan_policy == "omit"
    np.testing.assert_array_equal(loaded.predict(photo).values, gm.predict(photo).values)
    rows, keep = kept_rows(photo.values)
    np.testing.assert_array_equal(loaded.to_sklearn().predict(rows),
                                  gm.predict(photo).values.reshape(-1)[keep])


def test_clear_errors_for_bad_xarray_input_and_masks(photo):
    gm = GaussianMixture(2, nan_policy="omit")
    with pytest.raises(ValueError, match=r"dims \('y', 'x', 'band'\).*feature_dim"):
        gm.fit(photo)
    with pytest.raises(ValueError, match=r"feature_dim='wavelength' is not a dim"):
        gm.fit(photo, feature_dim="wavelength")
    with pytest.raises(ValueError, match="Every sample of X holds NaN"):
        gm.fit(photo * np.nan, feature_dim="band")
    few = photo.where(photo.y < 0)
    few[0, 0] = 0.5
    with pytest.raises(ValueError, match="only 1 of .* are free of NaN"):
        GaussianMixture(3, nan_policy="omit").fit(few.chunk({"y": 20}), feature_dim="band")
    # NaN under the default policy: found by the k-means sample, or in a chunk pass,
    # and named by position on the sample grid
    with pytest.raises(ValueError, match="Input X contains NaN"):  # scikit-learn's check
        GaussianMixture(2).fit(photo, feature_dim="band")
    with pytest.raises(ValueError, match=r"Input X contains NaN: samples \[\(0, 100\)"):
        GaussianMixture(2).fit(photo.chunk({"y": 30}), feature_dim="band")
    with pytest.raises(ValueError, match=r"NaN in chunk \(\d+, \d+\): samples "
                       r"\[\(\d+, \d+\).*nan_policy='omit'"):
        GaussianMixture(2, init_params="random").fit(photo.chunk({"y": 30, "x": 25}),
                                                     feature_dim="band")
    infinite = photo.copy()
    infinite[5, 6, 2] = np.inf
    with pytest.raises(ValueError, match=r"infinity.*samples \[\(5, 6\)\]"):
        gm.fit(infinite.chunk({"y": 30}), feature_dim="band")
    mixed = xr.Dataset({"a": photo[..., 0].drop_vars("band"),
                        "b": photo[0, :, 1].drop_vars(["band", "y"])})
    with pytest.raises(ValueError, match="same sample dims"):
        gm.fit(mixed)
    fitted = GaussianMixture(2, nan_policy="omit").fit(photo, feature_dim="band")
    renamed = photo.assign_coords(band=["r", "g", "b"])
    with pytest.raises(ValueError, match="feature names should match"):
        fitted.predict(renamed)
    with pytest.raises(ValueError, match="feature_dim='band'.*does not have"):
        fitted.predict(photo.rename(band="channel"))
