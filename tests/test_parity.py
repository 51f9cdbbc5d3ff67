"""dask_gmm against scikit-learn, the serial reference.

Tolerance: rtol 1e-6 in float64 for every fitted quantity (observed agreement
is about 1e-12); iteration counts and convergence flags must be equal.
"""

import dask
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

from dask_gmm import GaussianMixture

from .helpers import COVARIANCE_TYPES, as_dask, blobs, ragged_chunks, reference_inits

RTOL = 1e-6
N_SAMPLES = 1500

LAYOUTS = {
    "numpy": None,
    "1 chunk": (N_SAMPLES,),
    "7 ragged chunks": ragged_chunks(N_SAMPLES, 7),
    "50 chunks": (N_SAMPLES // 50,) * 50,
}


def assert_same_fit(ours, reference, offset=0.0):
    np.testing.assert_allclose(ours.weights_, reference.weights_, rtol=RTOL)
    np.testing.assert_allclose(ours.means_ - offset, reference.means_, rtol=RTOL,
                               atol=1e-9)
    np.testing.assert_allclose(ours.covariances_, reference.covariances_, rtol=RTOL,
                               atol=1e-12)
    np.testing.assert_allclose(ours.lower_bound_, reference.lower_bound_, rtol=RTOL)
    np.testing.assert_allclose(ours.lower_bounds_, reference.lower_bounds_, rtol=RTOL)
    assert ours.n_iter_ == reference.n_iter_
    assert ours.converged_ == reference.converged_


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_same_start_same_fit_as_sklearn(covariance_type, layout):
    X, _ = blobs(N_SAMPLES)
    inits = reference_inits(X, 4, covariance_type)
    reference = SklearnGaussianMixture(4, covariance_type=covariance_type, **inits).fit(X)
    chunks = LAYOUTS[layout]
    data = X if chunks is None else as_dask(X, chunks)
    with dask.config.set(split_every=2):
        ours = GaussianMixture(4, covariance_type=covariance_type, **inits).fit(data)
    assert_same_fit(ours, reference)
    np.testing.assert_allclose(ours.precisions_cholesky_,
                               reference.precisions_cholesky_, rtol=RTOL, atol=1e-9)
    np.testing.assert_allclose(ours.precisions_, reference.precisions_, rtol=RTOL,
                               atol=1e-9)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_default_kmeans_start_matches_sklearn_on_small_data(covariance_type):
    """Data smaller than the k-means sample: the same seeds give the same fit."""
    X, _ = blobs(N_SAMPLES)
    reference = SklearnGaussianMixture(4, covariance_type=covariance_type,
                                       random_state=0).fit(X)
    ours = GaussianMixture(4, covariance_type=covariance_type, random_state=0).fit(
        as_dask(X, 200))
    assert_same_fit(ours, reference)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_data_offset_by_a_million_gives_the_same_fit(covariance_type):
    X, _ = blobs(N_SAMPLES)
    inits = reference_inits(X, 4, covariance_type)
    offset = 1e6
    reference = GaussianMixture(4, covariance_type=covariance_type, **inits).fit(X)
    moved_inits = dict(inits, means_init=inits["means_init"] + offset)
    ours = GaussianMixture(4, covariance_type=covariance_type, **moved_inits).fit(
        as_dask(X + offset, ragged_chunks(N_SAMPLES, 7)))
    assert_same_fit(ours, reference, offset=offset)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_float32_input_keeps_its_dtype_and_stays_close(covariance_type):
    X, _ = blobs(N_SAMPLES)
    inits = reference_inits(X, 4, covariance_type)
    X32 = X.astype(np.float32)
    ours = GaussianMixture(4, covariance_type=covariance_type, **inits).fit(
        as_dask(X32, 300))
    reference = GaussianMixture(4, covariance_type=covariance_type, **inits).fit(X)
    for name in ("weights_", "means_", "covariances_", "precisions_",
                 "precisions_cholesky_"):
        assert getattr(ours, name).dtype == np.float32, name
        np.testing.assert_allclose(getattr(ours, name), getattr(reference, name),
                                   rtol=1e-4, atol=1e-5)
    assert ours.predict_proba(X32).dtype == np.float32
    assert ours.score_samples(as_dask(X32, 300)).dtype == np.float32
    assert ours.score_samples(as_dask(X32, 300)).compute().dtype == np.float32


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_integer_sample_weight_equals_repeated_rows(covariance_type):
    X, _ = blobs(600)
    weights = np.random.RandomState(3).randint(0, 4, size=X.shape[0])
    inits = reference_inits(X, 4, covariance_type)
    repeated = GaussianMixture(4, covariance_type=covariance_type, **inits).fit(
        np.repeat(X, weights, axis=0))
    for sample_weight in (weights, as_dask(weights[:, None], 77)[:, 0]):
        weighted = GaussianMixture(4, covariance_type=covariance_type, **inits).fit(
            as_dask(X, 100), sample_weight=sample_weight)
        assert_same_fit(weighted, repeated)
