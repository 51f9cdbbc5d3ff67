"""The numpy kernels alone, without dask: sums, combine, M-step, log densities."""

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

from dask_gmm import _estep
from dask_gmm._estep import RowBlock, responsibilities, weighted_log_prob
from dask_gmm._mstep import (
    Params,
    covariances_from_cholesky,
    m_step,
    precision_cholesky,
    precision_cholesky_from_precisions,
    precisions_from_cholesky,
)
from dask_gmm._predict import log_resp_and_norm
from dask_gmm._requests import (
    EStep,
    HardAssignment,
    LogLikelihood,
    RandomResponsibilities,
    chunk_pass,
    e_step_stats,
    hard_assignment_stats,
)
from dask_gmm._stats import combine_stats, translate_stats, unpack_symmetric

from .helpers import COVARIANCE_TYPES, blobs, ill_conditioned_case


def fitted_reference(covariance_type):
    X, _ = blobs(600)
    gm = SklearnGaussianMixture(4, covariance_type=covariance_type, random_state=0,
                                max_iter=5).fit(X)
    params = Params(
        weights=gm.weights_, means=gm.means_, prec_chol=gm.precisions_cholesky_,
        covariance_type=covariance_type, covariances=gm.covariances_,
    )
    return X, gm, params


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_weighted_log_prob_matches_sklearn_densities(covariance_type):
    X, gm, params = fitted_reference(covariance_type)
    shift = X.mean(axis=0)
    wlp = weighted_log_prob(RowBlock(X, shift, None, 0), params, shift)
    np.testing.assert_allclose(logsumexp(wlp, axis=1), gm.score_samples(X), rtol=1e-10)
    resp, log_norm = responsibilities(wlp.copy())
    np.testing.assert_allclose(log_norm, gm.score_samples(X), rtol=1e-10)
    np.testing.assert_allclose(resp, gm.predict_proba(X), atol=1e-10)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_combine_is_associative_and_split_invariant(covariance_type):
    """Chunks sum their moments about points of their own; combine moves them."""
    X, _, params = fitted_reference(covariance_type)
    whole = e_step_stats(X, params)
    parts = [e_step_stats(X[a:b], params) for a, b in
             [(0, 7), (7, 300), (300, 301), (301, 600)]]
    assert not np.allclose(parts[0].shift, parts[3].shift)
    left = combine_stats(combine_stats(parts[0], parts[1]), combine_stats(*parts[2:]))
    flat = combine_stats(*parts)
    eps = np.finfo(np.float64).eps
    reference, _ = m_step(whole, covariance_type, 1e-6, eps)
    for combined in (left, flat):
        assert combined.n == whole.n == 600
        np.testing.assert_allclose(combined.log_likelihood, whole.log_likelihood, rtol=1e-12)
        np.testing.assert_allclose(combined.nk, whole.nk, rtol=1e-12)
        moved = translate_stats(combined, whole.shift)
        np.testing.assert_allclose(moved.s1, whole.s1, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(moved.s2, whole.s2, rtol=1e-9, atol=1e-9)
        params_combined, _ = m_step(combined, covariance_type, 1e-6, eps)
        np.testing.assert_allclose(params_combined.means, reference.means, rtol=1e-10)
        np.testing.assert_allclose(params_combined.covariances, reference.covariances,
                                   rtol=1e-10)
    assert combine_stats(whole) is whole


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_m_step_equals_sklearn_update(covariance_type):
    """One E-step + M-step from the same start equals scikit-learn's first iteration."""
    X, gm, params = fitted_reference(covariance_type)
    stats = e_step_stats(X, params)
    new, mean_ll = m_step(stats, covariance_type, 1e-6, np.finfo(np.float64).eps)
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
    reference = e_step_stats(X, params)
    monkeypatch.setattr(_estep, "ROW_BLOCK", 37)
    blocked = translate_stats(e_step_stats(X, params), reference.shift)
    np.testing.assert_allclose(blocked.s2, reference.s2, rtol=1e-12)
    np.testing.assert_allclose(blocked.log_likelihood, reference.log_likelihood, rtol=1e-12)


def test_sample_weight_equals_repeated_rows():
    X, _, params = fitted_reference("diag")
    weights = np.random.RandomState(0).randint(0, 4, size=X.shape[0])
    weighted = e_step_stats(X, params, sample_weight=weights)
    repeated = e_step_stats(np.repeat(X, weights, axis=0), params)
    repeated = translate_stats(repeated, weighted.shift)
    assert weighted.n == repeated.n
    np.testing.assert_allclose(weighted.s2, repeated.s2, rtol=1e-10)
    np.testing.assert_allclose(weighted.log_likelihood, repeated.log_likelihood, rtol=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_second_moments_about_a_shift_keep_their_digits(covariance_type):
    """Data offset by 1e6: statistics about the mixture mean give the same covariances."""
    X, _, params = fitted_reference(covariance_type)
    offset = 1e6
    moved = Params(params.weights, params.means + offset, params.prec_chol,
                     covariance_type)
    eps = np.finfo(np.float64).eps
    base, _ = m_step(e_step_stats(X, params), covariance_type, 1e-6, eps)
    parts = [e_step_stats(X[a:a + 100] + offset, moved) for a in range(0, 600, 100)]
    far, _ = m_step(combine_stats(*parts), covariance_type, 1e-6, eps)
    np.testing.assert_allclose(far.covariances, base.covariances, rtol=1e-8)
    np.testing.assert_allclose(far.means - offset, base.means, rtol=1e-8, atol=1e-8)


def test_ill_defined_covariance_message_matches_sklearn():
    with pytest.raises(ValueError, match="ill-defined empirical covariance") as info:
        precision_cholesky(np.zeros((1, 2, 2)), "full")
    assert "float32" not in str(info.value)
    with pytest.raises(ValueError, match="passing float64"):
        precision_cholesky(np.array([0.0, 1.0]), "spherical", float32_input=True)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_precision_cholesky_round_trips(covariance_type):
    _, gm, _ = fitted_reference(covariance_type)
    np.testing.assert_allclose(
        precision_cholesky_from_precisions(gm.precisions_, covariance_type),
        gm.precisions_cholesky_, rtol=1e-8, atol=1e-12,
    )
    np.testing.assert_allclose(
        covariances_from_cholesky(gm.precisions_cholesky_, covariance_type),
        gm.covariances_, rtol=1e-8, atol=1e-12,
    )
    np.testing.assert_allclose(
        precisions_from_cholesky(gm.precisions_cholesky_, covariance_type),
        gm.precisions_, rtol=1e-10,
    )


def test_non_finite_rows_are_named():
    X, _, params = fitted_reference("full")
    X = X.copy()
    X[123, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN in chunk 5: rows \[1123\]"):
        e_step_stats(X, params, row_start=1000, chunk_index=5)
    X[123, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        hard_assignment_stats(X, params.means, "full")
    X[0, 0] = np.nan  # the chunk's own shift comes from its first rows
    with pytest.raises(ValueError, match=r"rows \[0, 123\]"):
        e_step_stats(X, params)


def test_hard_assignment_matches_nearest_center():
    X, _, params = fitted_reference("full")
    stats = hard_assignment_stats(X, params.means, "full")
    labels = ((X[:, None, :] - params.means[None]) ** 2).sum(axis=2).argmin(axis=1)
    np.testing.assert_array_equal(stats.nk, np.bincount(labels, minlength=4))
    inertia = ((X - params.means[labels]) ** 2).sum()
    np.testing.assert_allclose(-stats.log_likelihood, inertia, rtol=1e-10)


def test_one_chunk_pass_serves_many_requests_like_separate_passes():
    X, _, full = fitted_reference("full")
    _, _, diag = fitted_reference("diag")
    requests = [EStep(full), EStep(diag), LogLikelihood(full),
                HardAssignment(full.means, "tied"),
                RandomResponsibilities(3, "spherical", seed=5)]
    together = chunk_pass(X, requests, chunk_index=2)
    for request, stats in zip(requests, together):
        alone = chunk_pass(X, [request], chunk_index=2)[0]
        assert stats.n == alone.n
        np.testing.assert_allclose(stats.log_likelihood, alone.log_likelihood, rtol=1e-14)
        np.testing.assert_allclose(stats.s1, alone.s1, rtol=1e-14)
        if stats.s2 is not None:
            np.testing.assert_allclose(stats.s2, alone.s2, rtol=1e-14)
    np.testing.assert_allclose(together[2].log_likelihood, together[0].log_likelihood,
                               rtol=1e-12)


def test_quadratic_features_are_the_packed_outer_products():
    Y = np.random.RandomState(0).normal(size=(5, 4))
    quad = RowBlock(Y, np.zeros(4), None, 0).quad_t.T
    rows, cols = np.triu_indices(4)
    np.testing.assert_allclose(quad, Y[:, rows] * Y[:, cols])
    np.testing.assert_allclose(unpack_symmetric(quad.sum(axis=0), 4), Y.T @ Y)


def test_log_density_stays_accurate_for_ill_conditioned_components():
    """Condition number ~1e8, data far from the origin: compare with long double."""
    X, gm, exact = ill_conditioned_case()
    params = Params(gm.weights_, gm.means_, gm.precisions_cholesky_, "full")
    ours = log_resp_and_norm(X, params)[1]
    ours_error = np.abs(ours - exact).max()
    sklearn_error = np.abs(gm.score_samples(X) - exact).max()
    assert ours_error < 1e-8
    assert ours_error <= 2 * sklearn_error
