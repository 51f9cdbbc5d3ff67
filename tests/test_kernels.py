"""The numpy kernels alone, without dask: sums, combine, M-step, log densities."""

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

from dask_gmm import _kernels as K

from .helpers import COVARIANCE_TYPES, blobs


def fitted_reference(covariance_type):
    X, _ = blobs(600)
    gm = SklearnGaussianMixture(4, covariance_type=covariance_type, random_state=0,
                                max_iter=5).fit(X)
    params = K.Params(
        weights=gm.weights_, means=gm.means_, prec_chol=gm.precisions_cholesky_,
        covariance_type=covariance_type, covariances=gm.covariances_,
    )
    return X, gm, params


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_weighted_log_prob_matches_sklearn_densities(covariance_type):
    X, gm, params = fitted_reference(covariance_type)
    shift = params.shift
    wlp = K.weighted_log_prob(X - shift, params, shift)
    np.testing.assert_allclose(logsumexp(wlp, axis=1), gm.score_samples(X), rtol=1e-10)
    np.testing.assert_allclose(np.exp(wlp - logsumexp(wlp, axis=1)[:, None]),
                               gm.predict_proba(X), atol=1e-10)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_combine_is_associative_and_split_invariant(covariance_type):
    X, _, params = fitted_reference(covariance_type)
    shift = params.shift
    whole = K.e_step_stats(X, params, shift)
    parts = [K.e_step_stats(X[a:b], params, shift) for a, b in
             [(0, 7), (7, 300), (300, 301), (301, 600)]]
    left = K.combine_stats(K.combine_stats(parts[0], parts[1]), K.combine_stats(*parts[2:]))
    flat = K.combine_stats(*parts)
    for combined in (left, flat):
        assert combined.n == whole.n == 600
        np.testing.assert_allclose(combined.log_likelihood, whole.log_likelihood, rtol=1e-12)
        np.testing.assert_allclose(combined.nk, whole.nk, rtol=1e-12)
        np.testing.assert_allclose(combined.s1, whole.s1, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(combined.s2, whole.s2, rtol=1e-10)
    assert K.combine_stats(whole) is whole


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_m_step_equals_sklearn_update(covariance_type):
    """One E-step + M-step from the same start equals scikit-learn's first iteration."""
    X, gm, params = fitted_reference(covariance_type)
    stats = K.e_step_stats(X, params, params.shift)
    new, mean_ll = K.m_step(stats, covariance_type, 1e-6, np.finfo(np.float64).eps)
    one_step = SklearnGaussianMixture(
        4, covariance_type=covariance_type, max_iter=1, weights_init=gm.weights_,
        means_init=gm.means_, precisions_init=gm.precisions_,
    )
    with pytest.warns(Warning):
        one_step.fit(X)
    np.testing.assert_allclose(mean_ll, one_step.lower_bound_, rtol=1e-12)
    np.testing.assert_allclose(new.weights, one_step.weights_, rtol=1e-10)
    np.testing.assert_allclose(new.means, one_step.means_, rtol=1e-10)
    np.testing.assert_allclose(new.covariances, one_step.covariances_, rtol=1e-9)
    np.testing.assert_allclose(new.prec_chol, one_step.precisions_cholesky_, rtol=1e-9)


def test_row_blocks_inside_a_chunk_do_not_change_the_sums(monkeypatch):
    X, _, params = fitted_reference("full")
    shift = params.shift
    reference = K.e_step_stats(X, params, shift)
    monkeypatch.setattr(K, "ROW_BLOCK", 37)
    blocked = K.e_step_stats(X, params, shift)
    np.testing.assert_allclose(blocked.s2, reference.s2, rtol=1e-12)
    np.testing.assert_allclose(blocked.log_likelihood, reference.log_likelihood, rtol=1e-12)


def test_sample_weight_equals_repeated_rows():
    X, _, params = fitted_reference("diag")
    weights = np.random.RandomState(0).randint(0, 4, size=X.shape[0])
    weighted = K.e_step_stats(X, params, params.shift, sample_weight=weights)
    repeated = K.e_step_stats(np.repeat(X, weights, axis=0), params, params.shift)
    assert weighted.n == repeated.n
    np.testing.assert_allclose(weighted.s2, repeated.s2, rtol=1e-10)
    np.testing.assert_allclose(weighted.log_likelihood, repeated.log_likelihood, rtol=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_second_moments_about_a_shift_keep_their_digits(covariance_type):
    """Data offset by 1e6: statistics about the mixture mean give the same covariances."""
    X, _, params = fitted_reference(covariance_type)
    offset = 1e6
    moved = K.Params(params.weights, params.means + offset, params.prec_chol,
                     covariance_type)
    eps = np.finfo(np.float64).eps
    base, _ = K.m_step(K.e_step_stats(X, params, params.shift), covariance_type, 1e-6, eps)
    far, _ = K.m_step(K.e_step_stats(X + offset, moved, moved.shift), covariance_type,
                      1e-6, eps)
    np.testing.assert_allclose(far.covariances, base.covariances, rtol=1e-8)
    np.testing.assert_allclose(far.means - offset, base.means, rtol=1e-8, atol=1e-8)


def test_ill_defined_covariance_message_matches_sklearn():
    with pytest.raises(ValueError, match="ill-defined empirical covariance") as info:
        K.precision_cholesky(np.zeros((1, 2, 2)), "full")
    assert "float32" not in str(info.value)
    with pytest.raises(ValueError, match="passing float64"):
        K.precision_cholesky(np.array([0.0, 1.0]), "spherical", float32_input=True)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_precision_cholesky_round_trips(covariance_type):
    _, gm, _ = fitted_reference(covariance_type)
    np.testing.assert_allclose(
        K.precision_cholesky_from_precisions(gm.precisions_, covariance_type),
        gm.precisions_cholesky_, rtol=1e-8, atol=1e-12,
    )
    np.testing.assert_allclose(
        K.covariances_from_cholesky(gm.precisions_cholesky_, covariance_type),
        gm.covariances_, rtol=1e-8, atol=1e-12,
    )
    np.testing.assert_allclose(
        K.precisions_from_cholesky(gm.precisions_cholesky_, covariance_type),
        gm.precisions_, rtol=1e-10,
    )


def test_non_finite_rows_are_named():
    X, _, params = fitted_reference("full")
    X = X.copy()
    X[123, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN in chunk 5: rows \[1123\]"):
        K.e_step_stats(X, params, params.shift, row_start=1000, chunk_index=5)
    X[123, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        K.hard_assignment_stats(X, params.means, "full", params.shift)


def test_hard_assignment_matches_nearest_center():
    X, _, params = fitted_reference("full")
    stats = K.hard_assignment_stats(X, params.means, "full", params.shift)
    labels = ((X[:, None, :] - params.means[None]) ** 2).sum(axis=2).argmin(axis=1)
    np.testing.assert_array_equal(stats.nk, np.bincount(labels, minlength=4))
    inertia = ((X - params.means[labels]) ** 2).sum()
    np.testing.assert_allclose(-stats.log_likelihood, inertia, rtol=1e-10)
