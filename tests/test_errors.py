"""Every bad input gets a clear error before work is wasted, and a failed fit
leaves the estimator as it was."""

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp

from dask_gmm import GaussianMixture, InvalidParameterError

from .helpers import as_dask, blobs, count_computes


@pytest.fixture
def X():
    return blobs(600)[0]


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("init_params", ["kmeans", "random_from_data", "random"])
def test_non_finite_dask_rows_are_named_with_their_chunk(X, value, init_params):
    X = X.copy()
    X[250, 2] = value
    dX = as_dask(X, 100)
    kind = "NaN" if np.isnan(value) else "infinity"
    with pytest.raises(ValueError, match=rf"Input X contains {kind}.*rows \[250\]"):
        GaussianMixture(2, init_params=init_params, random_state=0).fit(dX)


def test_non_finite_found_in_the_first_pass_without_an_extra_read(X):
    X = X.copy()
    X[250, 2] = np.nan
    dX = as_dask(X, 100)
    gm = GaussianMixture(2, weights_init=[0.5, 0.5], means_init=X[:2] * 0,
                         precisions_init=np.stack([np.eye(3)] * 2))
    with count_computes() as calls:
        with pytest.raises(ValueError, match=r"NaN in chunk 2: rows \[250\]"):
            gm.fit(dX)
    assert len(calls) == 1


def test_non_finite_numpy_rows_get_sklearns_message(X):
    X = X.copy()
    X[3, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        GaussianMixture(2).fit(X)


@pytest.mark.parametrize("make", [lambda X: X[:, 0], lambda X: X[None]])
def test_wrong_number_of_dimensions(X, make):
    with pytest.raises(ValueError, match="Expected 2D array|Found array with dim 3"):
        GaussianMixture(2).fit(make(X))
    with pytest.raises(ValueError, match="Expected 2D array"):
        GaussianMixture(2).fit(da.from_array(make(X)))


def test_non_numeric_dtype(X):
    strings = X.astype(str)
    with pytest.raises(ValueError, match="numeric"):
        GaussianMixture(2).fit(da.from_array(strings, chunks=(100, 3)))
    with pytest.raises(ValueError):
        GaussianMixture(2).fit(strings.astype(object) + "x")


def test_complex_dtype(X):
    with pytest.raises(ValueError, match="Complex data not supported"):
        GaussianMixture(2).fit(da.from_array(X + 1j, chunks=(100, 3)))
    with pytest.raises(ValueError, match="Complex data not supported"):
        GaussianMixture(2).fit(X + 1j)


def test_sparse_input(X):
    with pytest.raises(TypeError, match="Sparse data was passed"):
        GaussianMixture(2).fit(sp.csr_matrix(X))
    sparse_chunks = as_dask(X, 100).map_blocks(sp.csr_matrix)
    with pytest.raises(TypeError, match="Sparse data was passed"):
        GaussianMixture(2).fit(sparse_chunks)


def test_fewer_than_two_samples(X):
    with pytest.raises(ValueError, match="minimum of 2 is required"):
        GaussianMixture(1).fit(as_dask(X[:1], 1))
    with pytest.raises(ValueError, match="minimum of 2 is required"):
        GaussianMixture(1).fit(X[:1])


def test_fewer_samples_than_components(X):
    with pytest.raises(ValueError, match="Expected n_samples >= n_components"):
        GaussianMixture(5).fit(as_dask(X[:4], 2))


def test_feature_count_mismatch_at_predict(X):
    gm = GaussianMixture(2, random_state=0).fit(as_dask(X, 200))
    message = "X has 2 features, but GaussianMixture is expecting 3 features"
    with pytest.raises(ValueError, match=message):
        gm.predict(as_dask(X[:, :2], 200))
    with pytest.raises(ValueError, match=message):
        gm.score_samples(X[:, :2])


def test_unknown_chunk_sizes(X):
    dX = as_dask(X, 100)
    unknown = dX[dX[:, 0] > -np.inf]
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        GaussianMixture(2).fit(unknown)


@pytest.mark.parametrize("weights, message", [
    (-np.ones(600), "Negative values"),
    (np.ones(599), r"sample_weight.shape == \(599,\), expected \(600,\)"),
    (np.zeros(600), "at least one non-zero"),
    (np.full(600, np.nan), "NaN or infinity"),
])
def test_bad_sample_weight(X, weights, message):
    with pytest.raises(ValueError, match=message):
        GaussianMixture(2).fit(X, sample_weight=weights)
    with pytest.raises(ValueError, match=message):
        GaussianMixture(2).fit(as_dask(X, 100), sample_weight=da.from_array(weights))


@pytest.mark.parametrize("params, message", [
    (dict(n_components=0), "'n_components' parameter of GaussianMixture must be an int"),
    (dict(covariance_type="banana"), "'covariance_type' parameter"),
    (dict(tol=-1.0), "'tol' parameter"),
    (dict(reg_covar=-1.0), "'reg_covar' parameter"),
    (dict(max_iter=-1), "'max_iter' parameter"),
    (dict(n_init=0), "'n_init' parameter"),
    (dict(init_params="nope"), "'init_params' parameter"),
    (dict(warm_start="yes"), "'warm_start' parameter"),
    (dict(verbose_interval=0), "'verbose_interval' parameter"),
])
def test_invalid_hyperparameters(X, params, message):
    with pytest.raises(InvalidParameterError, match=message):
        GaussianMixture(**params).fit(X)


def test_bad_initial_parameters_read_as_sklearn(X):
    with pytest.raises(ValueError, match="'weights' should be normalized"):
        GaussianMixture(2, weights_init=[0.2, 0.2]).fit(X)
    with pytest.raises(ValueError, match=r"'weights' should be in the range \[0, 1\]"):
        GaussianMixture(2, weights_init=[1.5, -0.5]).fit(X)
    with pytest.raises(ValueError, match="'means' should have the shape of"):
        GaussianMixture(2, means_init=np.zeros((3, 3))).fit(X)
    with pytest.raises(ValueError, match="'full precision' should be symmetric, positive"):
        GaussianMixture(2, precisions_init=-np.stack([np.eye(3)] * 2)).fit(X)
    with pytest.raises(ValueError, match="'diag precision' should be positive"):
        GaussianMixture(2, covariance_type="diag",
                        precisions_init=np.zeros((2, 3))).fit(X)


def test_ill_defined_covariance_message(X):
    collapsed = np.repeat(X[:1], 50, axis=0)
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        GaussianMixture(2, reg_covar=0, init_params="random_from_data",
                        random_state=0).fit(as_dask(collapsed, 10))


def test_failed_fit_leaves_a_previous_fit_intact(X):
    gm = GaussianMixture(2, random_state=0).fit(as_dask(X, 200))
    before = {k: v.copy() if hasattr(v, "copy") else v for k, v in vars(gm).items()}
    bad = X.copy()
    bad[5, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        gm.fit(as_dask(bad, 200))
    with pytest.raises(ValueError, match="minimum of 2"):
        gm.fit(as_dask(X[:1], 1))
    assert set(vars(gm)) == set(before)
    for name, value in before.items():
        np.testing.assert_array_equal(getattr(gm, name), value)


def test_failed_fit_leaves_an_unfitted_estimator_unfitted(X):
    gm = GaussianMixture(2)
    bad = X.copy()
    bad[5, 0] = np.inf
    with pytest.raises(ValueError):
        gm.fit(as_dask(bad, 200))
    assert not [name for name in vars(gm) if name.endswith("_")]


def test_predicting_non_finite_dask_rows_raises_when_computed(X):
    gm = GaussianMixture(2, random_state=0).fit(X)
    bad = X.copy()
    bad[321, 0] = np.nan
    labels = gm.predict(as_dask(bad, 100))  # lazy: nothing read yet
    with pytest.raises(ValueError, match=r"Input X contains NaN in chunk 3: rows \[321\]"):
        labels.compute()
    with pytest.raises(ValueError, match=r"in chunk 3: rows \[321\]"):
        gm.score_samples(as_dask(bad, 100)).compute()
