"""Missing values integrated out (nan_policy='marginalize') against a dense reference.

The reference below is the textbook algorithm, row by row and component by
component, with the conditional Gaussian formulas on covariances (what the
package does with precisions, grouped by pattern): slow and obviously right.
"""

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from dask_gmm import GaussianMixture

from .helpers import COVARIANCE_TYPES, as_dask, blobs, ragged_chunks

EPS = np.finfo(np.float64).eps


def full_covariance(covariances, k, covariance_type, n_features):
    if covariance_type == "full":
        return covariances[k]
    if covariance_type == "tied":
        return covariances
    if covariance_type == "diag":
        return np.diag(covariances[k])
    return np.eye(n_features) * covariances[k]


def shaped_covariances(nk, scatter, covariance_type, reg_covar):
    """Per-component scatter matrices ``(K, D, D)`` in ``covariance_type``'s shape."""
    eye = np.eye(scatter.shape[1])
    if covariance_type == "full":
        return scatter + reg_covar * eye
    if covariance_type == "tied":
        return np.einsum("k,kij->ij", nk, scatter) / nk.sum() + reg_covar * eye
    variances = np.diagonal(scatter, axis1=1, axis2=2)
    if covariance_type == "diag":
        return variances + reg_covar
    return variances.mean(axis=1) + reg_covar


def dense_em(X, w, weights, means, covariances, covariance_type, n_iter, reg_covar=1e-6):
    """``n_iter`` EM iterations with missing values; returns parameters and lower bounds."""
    n, n_features = X.shape
    n_components = len(weights)
    bounds = []
    for _ in range(n_iter):
        log_prob = np.zeros((n, n_components))
        filled = np.zeros((n, n_components, n_features))
        conditional = np.zeros((n, n_components, n_features, n_features))
        for i in range(n):
            o = ~np.isnan(X[i])
            m = ~o
            for k in range(n_components):
                cov = full_covariance(covariances, k, covariance_type, n_features)
                mu = means[k]
                s_oo, s_mo, s_mm = cov[np.ix_(o, o)], cov[np.ix_(m, o)], cov[np.ix_(m, m)]
                log_prob[i, k] = np.log(weights[k]) + multivariate_normal.logpdf(
                    X[i, o], mu[o], s_oo)
                row = X[i].copy()
                row[m] = mu[m] + s_mo @ np.linalg.solve(s_oo, X[i, o] - mu[o])
                filled[i, k] = row
                conditional[i, k][np.ix_(m, m)] = s_mm - s_mo @ np.linalg.solve(s_oo, s_mo.T)
        log_norm = logsumexp(log_prob, axis=1)
        bounds.append(float(w @ log_norm / w.sum()))
        resp = np.exp(log_prob - log_norm[:, None]) * w[:, None]
        nk = resp.sum(axis=0) + 10 * EPS
        means = np.einsum("nk,nkd->kd", resp, filled) / nk[:, None]
        scatter = np.empty((n_components, n_features, n_features))
        for k in range(n_components):
            centred = filled[:, k] - means[k]
            scatter[k] = (np.einsum("n,ni,nj->ij", resp[:, k], centred, centred)
                          + np.einsum("n,nij->ij", resp[:, k], conditional[:, k])) / nk[k]
        covariances = shaped_covariances(nk, scatter, covariance_type, reg_covar)
        weights = nk / nk.sum()
    return weights, means, covariances, bounds


def holes(X, share, seed=0):
    """X with ``share`` of its values missing completely at random (no row all missing)."""
    rng = np.random.RandomState(seed)
    out = X.copy()
    out[rng.rand(*X.shape) < share] = np.nan
    empty = np.isnan(out).all(axis=1)
    out[empty, 0] = X[empty, 0]
    return out


def start_for(X, covariance_type, n_components=3, seed=1):
    rng = np.random.RandomState(seed)
    filled = np.where(np.isnan(X), np.nanmean(X, axis=0), X)
    means = filled[rng.choice(len(filled), n_components, replace=False)]
    n_features = X.shape[1]
    covariances = {"full": np.tile(np.eye(n_features) * 2.0, (n_components, 1, 1)),
                   "tied": np.eye(n_features) * 2.0,
                   "diag": np.full((n_components, n_features), 2.0),
                   "spherical": np.full(n_components, 2.0)}[covariance_type]
    precisions = {"full": np.linalg.inv, "tied": np.linalg.inv}.get(
        covariance_type, lambda c: 1.0 / c)(covariances)
    weights = np.full(n_components, 1.0 / n_components)
    return weights, means, covariances, dict(weights_init=weights, means_init=means,
                                             precisions_init=precisions)


@pytest.mark.parametrize("layout", ["numpy", "ragged dask, weighted"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_equals_the_dense_reference(covariance_type, layout):
    X, _ = blobs(240, n_features=4)
    X = holes(X, 0.25)
    w = np.ones(len(X))
    data = X
    if layout != "numpy":
        w = np.random.RandomState(4).uniform(0.5, 2.0, len(X))
        data = as_dask(X, ragged_chunks(len(X), 5))
    weights, means, covariances, init = start_for(X, covariance_type)
    reference = dense_em(X, w, weights, means, covariances, covariance_type, n_iter=4)
    ours = GaussianMixture(3, covariance_type=covariance_type, max_iter=4, tol=0,
                           nan_policy="marginalize", **init)
    ours.fit(data, sample_weight=None if layout == "numpy" else w)
    np.testing.assert_allclose(ours.weights_, reference[0], rtol=1e-6)
    np.testing.assert_allclose(ours.means_, reference[1], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.covariances_, reference[2], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.lower_bounds_, reference[3], rtol=1e-9)
    # partially observed rows are scored on what they have
    final = dense_em(X, w, *reference[:3], covariance_type, n_iter=1)[3][0]
    np.testing.assert_allclose(np.average(np.asarray(ours.score_samples(data)), weights=w),
                               final, rtol=1e-9)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_float32_and_an_offset_of_a_million(covariance_type):
    X, _ = blobs(240, n_features=4)
    X = holes(X, 0.25)
    weights, means, covariances, init = start_for(X, covariance_type)
    reference = dense_em(X, np.ones(len(X)), weights, means, covariances,
                         covariance_type, n_iter=4)
    moved = dict(init, means_init=init["means_init"] + 1e6)
    far = GaussianMixture(3, covariance_type=covariance_type, max_iter=4, tol=0,
                          nan_policy="marginalize", **moved).fit(as_dask(X + 1e6, 60))
    np.testing.assert_allclose(far.means_ - 1e6, reference[1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(far.covariances_, reference[2], rtol=1e-6, atol=1e-7)
    single = GaussianMixture(3, covariance_type=covariance_type, max_iter=4, tol=0,
                             nan_policy="marginalize", **init).fit(
        as_dask(X.astype(np.float32), 60))
    assert single.means_.dtype == np.float32
    np.testing.assert_allclose(single.means_, reference[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_without_missing_values_the_ordinary_fit(covariance_type):
    X, _ = blobs(600)
    plain = GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(
        as_dask(X, 100))
    marginal = GaussianMixture(3, covariance_type=covariance_type, random_state=0,
                               nan_policy="marginalize").fit(as_dask(X, 100))
    np.testing.assert_array_equal(marginal.means_, plain.means_)
    np.testing.assert_array_equal(marginal.lower_bounds_, plain.lower_bounds_)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_observed_data_lower_bound_never_decreases(covariance_type):
    X, _ = blobs(1000, n_features=5)
    gm = GaussianMixture(4, covariance_type=covariance_type, random_state=0, max_iter=40,
                         tol=0, nan_policy="marginalize").fit(as_dask(holes(X, 0.3), 128))
    assert np.all(np.diff(gm.lower_bounds_) >= -1e-9)


def test_recovery_with_forty_percent_missing():
    """8 features, 40% of values missing at random: close to the complete-data fit."""
    rng = np.random.RandomState(0)
    centres = rng.normal(scale=4.0, size=(3, 8))
    labels = rng.randint(0, 3, 3000)
    X = centres[labels] + rng.normal(size=(3000, 8))
    Xm = holes(X, 0.4, seed=1)
    assert (~np.isnan(Xm).any(axis=1)).mean() < 0.03  # 'omit' keeps under 3% of rows
    complete = GaussianMixture(3, random_state=0).fit(X)
    marginal = GaussianMixture(3, random_state=0, nan_policy="marginalize").fit(
        as_dask(Xm, 500))
    order = [int(np.argmin(((complete.means_ - m) ** 2).sum(axis=1)))
             for m in marginal.means_]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(marginal.means_, complete.means_[order], atol=0.25)
    agree = np.mean(np.asarray(order)[np.asarray(marginal.predict(Xm))]
                    == complete.predict(X))
    assert agree >= 0.95


def test_sweep_scores_observed_data():
    from dask_gmm import GaussianMixtureSweep

    X, _ = blobs(900, n_features=4)
    Xm = as_dask(holes(X, 0.2), 300)
    sweep = GaussianMixtureSweep([2, 4], ["full", "diag"], random_state=0,
                                 nan_policy="marginalize").fit(Xm)
    for i, params in enumerate(sweep.results_["params"]):
        single = GaussianMixture(random_state=0, nan_policy="marginalize", **params).fit(Xm)
        np.testing.assert_allclose(sweep.results_["bic"][i], single.bic(Xm), rtol=1e-9)


# --------------------------------------------------------------------------
# The variational mixture. Mean-field over (labels, missing features) and
# (weights, means, precisions): q(x_m | z=k) is Gaussian, and the row's
# weight is the integral over x_m of exp(E[log pi_k + log N(x | mu_k, Lambda_k)])
# (Bishop, PRML 10.2, with the missing block integrated). The reference works
# it out row by row from the Wishart scale W, the Schur complement of its
# missing block and ``E[log det Lambda]``; the package never forms those.


def dense_variational_e_step(X, w, model):
    """Expected log weights of every row and component, the filled rows and the
    conditional covariances of their missing blocks, from ``model``'s posterior."""
    from scipy.special import digamma

    n, n_features = X.shape
    cov_type = model.covariance_type
    n_components = len(model.mean_precision_)
    dof = np.broadcast_to(np.asarray(model.degrees_of_freedom_, np.float64), (n_components,))
    if model.weight_concentration_prior_type == "dirichlet_process":
        a, b = (np.asarray(c, np.float64) for c in model.weight_concentration_)
        log_pi = (digamma(a) - digamma(a + b)
                  + np.r_[0, np.cumsum(digamma(b) - digamma(a + b))[:-1]])
    else:
        alpha = np.asarray(model.weight_concentration_, np.float64)
        log_pi = digamma(alpha) - digamma(alpha.sum())
    covariances = np.asarray(model.covariances_, np.float64)
    log_rho = np.empty((n, n_components))
    filled = np.repeat(X[:, None, :], n_components, axis=1)
    conditional = np.zeros((n, n_components, n_features, n_features))
    for k in range(n_components):
        scale = np.linalg.inv(full_covariance(covariances, k, cov_type, n_features) * dof[k])
        mean = np.asarray(model.means_[k], np.float64)
        e_log_det = (digamma(0.5 * (dof[k] - np.arange(n_features))).sum()
                     + n_features * np.log(2) + np.linalg.slogdet(scale)[1])
        for i in range(n):
            m = np.isnan(X[i])
            o = ~m
            d_o = X[i, o] - mean[o]
            w_oo, w_mo, w_mm = scale[np.ix_(o, o)], scale[np.ix_(m, o)], scale[np.ix_(m, m)]
            schur, log_det_mm = w_oo, 0.0
            if m.any():
                schur = w_oo - w_mo.T @ np.linalg.solve(w_mm, w_mo)
                log_det_mm = np.linalg.slogdet(dof[k] * w_mm)[1]
                filled[i, k, m] = mean[m] - np.linalg.solve(w_mm, w_mo @ d_o)
                conditional[i, k][np.ix_(m, m)] = np.linalg.inv(dof[k] * w_mm)
            log_rho[i, k] = (log_pi[k] + 0.5 * e_log_det
                             - 0.5 * n_features / model.mean_precision_[k]
                             - 0.5 * o.sum() * np.log(2 * np.pi) - 0.5 * log_det_mm
                             - 0.5 * dof[k] * d_o @ schur @ d_o)
    return log_rho, filled, conditional


def dense_variational_fit(X, w, model, n_iter):
    """``n_iter`` mean-field iterations from ``model``'s posterior; the posteriors'
    attributes and lower bounds. The M-step from the filled statistics is the
    package's (tested against scikit-learn on complete data); everything about
    the missing features is the reference's own."""
    from sklearn.base import clone

    from dask_gmm._variational import Priors, lower_bound, variational_m_step

    cov_type, prior_type = model.covariance_type, model.weight_concentration_prior_type
    priors = Priors(model.weight_concentration_prior_, model.mean_precision_prior_,
                    np.asarray(model.mean_prior_, np.float64),
                    model.degrees_of_freedom_prior_,
                    np.asarray(model.covariance_prior_, np.float64))
    current, bounds = model, []
    for _ in range(n_iter):
        log_rho, filled, conditional = dense_variational_e_step(X, w, current)
        log_resp = log_rho - logsumexp(log_rho, axis=1)[:, None]
        resp = np.exp(log_resp) * w[:, None]
        nk = resp.sum(axis=0) + 10 * EPS
        xk = np.einsum("nk,nkd->kd", resp, filled) / nk[:, None]
        scatter = np.stack([
            (np.einsum("n,ni,nj->ij", resp[:, k], filled[:, k] - xk[k], filled[:, k] - xk[k])
             + np.einsum("n,nij->ij", resp[:, k], conditional[:, k])) / nk[k]
            for k in range(len(nk))])
        sk = shaped_covariances(nk, scatter, cov_type, model.reg_covar)
        params = variational_m_step(nk, xk, sk, priors, cov_type, prior_type)
        # the bound's data term: the entropy of q(labels) and of q(missing | label)
        log_det_conditional = np.zeros_like(log_rho)
        n_missing = np.isnan(X).sum(axis=1)
        for i in np.flatnonzero(n_missing):
            m = np.isnan(X[i])
            for k in range(len(nk)):
                log_det_conditional[i, k] = np.linalg.slogdet(
                    conditional[i, k][np.ix_(m, m)])[1]
        entropy_missing = 0.5 * (n_missing[:, None] * (1 + np.log(2 * np.pi))
                                 + log_det_conditional)
        entropy = float(np.sum(resp * (log_resp - entropy_missing)))
        bounds.append(lower_bound(entropy, params, prior_type))
        current = clone(model)
        current._fit_priors = priors
        current._set_params_from(params, np.dtype(np.float64))
    return current, bounds


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("layout", ["numpy", "ragged dask, weighted"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_bayesian_mixture_equals_the_dense_reference(covariance_type, layout):
    from dask_gmm import BayesianGaussianMixture

    X, _ = blobs(240, n_features=4)
    X = holes(X, 0.25)
    w, data, fit_weight = np.ones(len(X)), X, None
    if layout != "numpy":
        w = fit_weight = np.random.RandomState(4).uniform(0.5, 2.0, len(X))
        data = as_dask(X, ragged_chunks(len(X), 5))
    prior_type = ("dirichlet_process" if covariance_type in ("full", "diag")
                  else "dirichlet_distribution")
    settings = dict(n_components=3, covariance_type=covariance_type, tol=0, random_state=0,
                    weight_concentration_prior_type=prior_type, nan_policy="marginalize")
    start = BayesianGaussianMixture(max_iter=1, **settings).fit(data, sample_weight=fit_weight)
    ours = BayesianGaussianMixture(max_iter=5, **settings).fit(data, sample_weight=fit_weight)
    reference, bounds = dense_variational_fit(X, w, start, n_iter=4)
    for name in ("means_", "covariances_", "mean_precision_", "degrees_of_freedom_",
                 "weights_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(reference, name),
                                   rtol=1e-6, atol=1e-9, err_msg=name)
    np.testing.assert_allclose(np.asarray(ours.weight_concentration_),
                               np.asarray(reference.weight_concentration_), rtol=1e-6)
    np.testing.assert_allclose(ours.lower_bounds_[1:], bounds, rtol=1e-9)
    # partially observed rows are scored and labelled on what they have
    log_rho = dense_variational_e_step(X, w, ours)[0]
    np.testing.assert_allclose(np.asarray(ours.score_samples(data)),
                               logsumexp(log_rho, axis=1), rtol=1e-9)
    np.testing.assert_array_equal(np.asarray(ours.predict(data)), log_rho.argmax(axis=1))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_bayesian_mixture_without_missing_values_the_ordinary_fit(covariance_type):
    from dask_gmm import BayesianGaussianMixture

    X, _ = blobs(600)
    settings = dict(n_components=4, covariance_type=covariance_type, random_state=0)
    plain = BayesianGaussianMixture(**settings).fit(as_dask(X, 100))
    marginal = BayesianGaussianMixture(nan_policy="marginalize", **settings).fit(
        as_dask(X, 100))
    np.testing.assert_array_equal(marginal.means_, plain.means_)
    np.testing.assert_array_equal(marginal.lower_bounds_, plain.lower_bounds_)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_bayesian_lower_bound_never_decreases(covariance_type):
    from dask_gmm import BayesianGaussianMixture

    X, _ = blobs(1000, n_features=5)
    bgm = BayesianGaussianMixture(n_components=6, covariance_type=covariance_type,
                                  random_state=0, max_iter=60, tol=0,
                                  nan_policy="marginalize")
    with pytest.warns(Warning):  # tol=0 never converges
        bgm.fit(as_dask(holes(X, 0.3), 128))
    bounds = np.asarray(bgm.lower_bounds_)
    assert np.all(np.diff(bounds) >= -1e-9 * np.abs(bounds[1:]))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_bayesian_float32_and_an_offset_of_a_million(covariance_type):
    from dask_gmm import BayesianGaussianMixture

    X, _ = blobs(240, n_features=4)
    X = holes(X, 0.25)
    settings = dict(n_components=3, covariance_type=covariance_type, max_iter=5, tol=0,
                    random_state=0, nan_policy="marginalize")
    near = BayesianGaussianMixture(**settings).fit(as_dask(X, 60))
    far = BayesianGaussianMixture(**settings).fit(as_dask(X + 1e6, 60))
    np.testing.assert_allclose(far.means_ - 1e6, near.means_, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(far.covariances_, near.covariances_, rtol=1e-6, atol=1e-7)
    single = BayesianGaussianMixture(**settings).fit(as_dask(X.astype(np.float32), 60))
    assert single.means_.dtype == np.float32
    np.testing.assert_allclose(single.means_, near.means_, rtol=1e-4, atol=1e-4)


def test_bayesian_recovery_with_forty_percent_missing():
    """8 features, 40% missing: the surplus components are emptied and the rest match
    the complete-data variational fit; the sweep scores the same candidates."""
    from dask_gmm import BayesianGaussianMixture, BayesianGaussianMixtureSweep

    rng = np.random.RandomState(0)
    centres = rng.normal(scale=4.0, size=(3, 8))
    labels = rng.randint(0, 3, 3000)
    X = centres[labels] + rng.normal(size=(3000, 8))
    Xm = holes(X, 0.4, seed=1)
    settings = dict(n_components=6, weight_concentration_prior=1e-3, random_state=0,
                    max_iter=400)
    complete = BayesianGaussianMixture(**settings).fit(X)
    marginal = BayesianGaussianMixture(nan_policy="marginalize", **settings).fit(
        as_dask(Xm, 500))
    kept = [np.flatnonzero(m.weights_ >= 0.01) for m in (complete, marginal)]
    assert len(kept[0]) == len(kept[1]) == 3
    order = [int(np.argmin(((complete.means_[kept[0]] - m) ** 2).sum(axis=1)))
             for m in marginal.means_[kept[1]]]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(marginal.means_[kept[1]], complete.means_[kept[0]][order],
                               atol=0.25)
    relabel = np.full(6, -1)
    relabel[kept[1]] = kept[0][order]
    agree = np.mean(relabel[np.asarray(marginal.predict(Xm))] == complete.predict(X))
    assert agree >= 0.95
    sweep = BayesianGaussianMixtureSweep(
        n_components=6, weight_concentration_prior=[1e-3], covariance_type=["full"],
        random_state=0, max_iter=400, nan_policy="marginalize").fit(as_dask(Xm, 500))
    np.testing.assert_allclose(sweep.best_estimator_.means_, marginal.means_, rtol=1e-9)


def test_many_distinct_patterns_in_bounded_slices(monkeypatch):
    """Half the values missing at D=10: nearly every row its own pattern, factored in
    slices (a small bound forces many) with the same result as the dense reference."""
    from dask_gmm import _missing

    monkeypatch.setattr(_missing, "PATTERN_FLOATS", 40)
    X, _ = blobs(150, n_features=10)
    X = holes(X, 0.5, seed=3)
    groups = _missing.pattern_groups(np.isnan(X[np.isnan(X).any(axis=1)
                                                & ~np.isnan(X).all(axis=1)]))
    assert all(g.missing.shape[0] * g.missing.shape[1] ** 2 <= max(40, g.missing.shape[1] ** 2)
               for g in groups)
    weights, means, covariances, init = start_for(X, "full", seed=2)
    reference = dense_em(X, np.ones(len(X)), weights, means, covariances, "full", n_iter=3)
    ours = GaussianMixture(3, max_iter=3, tol=0, nan_policy="marginalize", **init).fit(X)
    np.testing.assert_allclose(ours.means_, reference[1], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.lower_bounds_, reference[3], rtol=1e-9)


def test_rows_missing_every_feature_are_left_out():
    """Blocks whose only NaN rows miss everything (a masked region) and blocks mixing both."""
    X, _ = blobs(600)
    masked = X.copy()
    masked[:50] = np.nan  # no partially observed row at all in the first chunk
    start = dict(random_state=0, max_iter=5, tol=0)
    ours = GaussianMixture(3, nan_policy="marginalize", **start).fit(as_dask(masked, 100))
    omitted = GaussianMixture(3, nan_policy="omit", **start).fit(as_dask(masked, 100))
    np.testing.assert_allclose(ours.means_, omitted.means_, rtol=1e-10)
    labels = np.asarray(ours.predict(masked))
    assert (labels[:50] == -1).all() and (labels[50:] >= 0).all()
    masked[60:70, 1] = np.nan
    mixed = GaussianMixture(3, nan_policy="marginalize", **start).fit(as_dask(masked, 100))
    assert (np.asarray(mixed.predict(masked))[60:70] >= 0).all()


def test_checkpoint_resumes_a_marginalised_fit(tmp_path):
    """The checkpoint's data check sums observed values only (filled ones move each pass)."""
    X, _ = blobs(600)
    Xm = holes(X, 0.2)
    settings = dict(random_state=0, nan_policy="marginalize", tol=0)
    path = tmp_path / "fit.ckpt"
    GaussianMixture(3, max_iter=3, **settings).fit(as_dask(Xm, 100), checkpoint=path)
    resumed = GaussianMixture(3, max_iter=7, **settings).fit(as_dask(Xm, 100),
                                                            checkpoint=path)
    whole = GaussianMixture(3, max_iter=7, **settings).fit(as_dask(Xm, 100))
    np.testing.assert_allclose(resumed.means_, whole.means_, rtol=1e-10)
    other = Xm.copy()
    row, col = np.argwhere(~np.isnan(other))[300]
    other[row, col] += 1.0  # one observed value changed
    from dask_gmm.checkpoint import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError):
        GaussianMixture(3, max_iter=9, **settings).fit(as_dask(other, 100), checkpoint=path)


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
@pytest.mark.parametrize("n_rows", [1, 5, 300, 2000])
@pytest.mark.parametrize("weighted", [False, True])
def test_compiled_marginal_e_step_equals_the_numpy_route(covariance_type, n_rows, weighted):
    # the compiled E-step of incomplete rows against _missing's numpy kernels,
    # across many patterns, partial tiles and data far from the origin
    from dask_gmm._estep import chunk_shift, responsibilities
    from dask_gmm._fused_missing import expected_sums
    from dask_gmm._missing import IncompleteRows, accumulate_expected, marginal_terms
    from dask_gmm._mstep import Params, precision_cholesky
    from dask_gmm._stats import empty_stats

    rng = np.random.RandomState(n_rows)
    n_features, n_components = 7, 4
    X = holes(rng.normal(size=(n_rows, n_features)) * 3 + 1e3, 0.3, seed=n_rows)
    X[:, 0] = np.where(np.isnan(X).all(axis=1), 1e3, X[:, 0])
    complete = ~np.isnan(X).any(axis=1)
    X[complete, 1] = np.nan  # every row misses something
    w = rng.uniform(0.1, 2.0, n_rows) if weighted else None
    A = rng.normal(size=(n_components, n_features, n_features)) * 0.4
    cov = A @ A.transpose(0, 2, 1) + np.eye(n_features)
    if covariance_type == "tied":
        cov = cov[0]
    means = rng.normal(size=(n_components, n_features)) * 3 + 1e3
    params = Params(np.full(n_components, 1 / n_components), means,
                    precision_cholesky(cov, covariance_type), covariance_type)
    shift = chunk_shift(X)
    incomplete = IncompleteRows.from_block(X, w).by_count()
    assert incomplete.n == n_rows
    ours = empty_stats(n_components, n_features, covariance_type, shift)
    ours_ll = expected_sums(incomplete, params, ours)
    reference = empty_stats(n_components, n_features, covariance_type, shift)
    terms = marginal_terms(incomplete.rows, incomplete.missing, incomplete.groups, params,
                           shift)
    R, log_norm = responsibilities(terms.log_prob.copy())
    accumulate_expected(reference, terms, incomplete.groups, incomplete.missing,
                        incomplete.weighted(R))
    reference_ll = float(log_norm.sum() if w is None else log_norm @ incomplete.w)
    assert ours_ll == pytest.approx(reference_ll, rel=1e-11)
    for name in ("nk", "s1", "s2", "imputed"):
        np.testing.assert_allclose(getattr(ours, name), getattr(reference, name),
                                   rtol=1e-9, atol=1e-8, err_msg=name)
    # the densities alone (predictions, the sweep's likelihood pass), in the rows' order
    from dask_gmm._fused_missing import marginal_log_prob

    np.testing.assert_allclose(marginal_log_prob(incomplete, params, shift), terms.log_prob,
                               rtol=1e-11, atol=1e-9)


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_compiled_e_step_bounds_its_pattern_memory(monkeypatch, covariance_type):
    """Nearly every row its own pattern, and a bound so small that the compiled
    E-step takes a few patterns per call: the same sums as one call."""
    from dask_gmm import _fused_missing
    from dask_gmm._requests import EStep, chunk_pass

    X, _ = blobs(400, n_features=10)
    X = holes(X, 0.5, seed=4)
    _, _, _, init = start_for(X, covariance_type, seed=2)
    params = GaussianMixture(3, covariance_type=covariance_type, max_iter=1, tol=0,
                             nan_policy="marginalize", **init).fit(X)._current_params()
    whole = chunk_pass(X, [EStep(params)], omit_nan=True, marginalize=True)[0]
    calls = []
    kernel = _fused_missing.marginal_e_step

    def counted(*args):
        rows, order, starts = args[0], args[2], args[3]
        q = np.isnan(rows[order[starts[:-1]]]).sum(axis=1)
        calls.append((len(q), int((3 * (q**2 + 10 + 3)).sum())))
        return kernel(*args)

    monkeypatch.setattr(_fused_missing, "PATTERN_FLOATS", 500)
    monkeypatch.setattr(_fused_missing, "marginal_e_step", counted)
    split = chunk_pass(X, [EStep(params)], omit_nan=True, marginalize=True)[0]
    assert len(calls) > 10
    assert all(held <= 500 or patterns == 1 for patterns, held in calls)
    for name in ("nk", "s1", "s2", "imputed"):
        np.testing.assert_allclose(getattr(split, name), getattr(whole, name), rtol=1e-12,
                                   atol=1e-10, err_msg=name)
    assert split.log_likelihood == pytest.approx(whole.log_likelihood, rel=1e-13)
    # the prediction kernel takes the same runs, and puts every row back in its place
    from dask_gmm._missing import IncompleteRows, observed_log_prob

    incomplete = IncompleteRows.from_block(X, None)
    shift = np.nanmean(X, axis=0)
    monkeypatch.setattr(_fused_missing, "PATTERN_FLOATS", 2**20)
    in_one_run = observed_log_prob(incomplete, params, shift)[0]
    monkeypatch.setattr(_fused_missing, "PATTERN_FLOATS", 500)
    np.testing.assert_allclose(observed_log_prob(incomplete, params, shift)[0], in_one_run,
                               rtol=1e-13)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_patterns_of_many_features_are_grouped():
    """Pattern keys wider than 16 bits are sorted 16 bits at a time; every
    pattern ends up in one run, and the E-step at D=20 equals the numpy route."""
    from dask_gmm._estep import responsibilities
    from dask_gmm._fused_missing import expected_sums, sort_by_pattern
    from dask_gmm._missing import IncompleteRows, accumulate_expected, marginal_terms
    from dask_gmm._stats import empty_stats

    rng = np.random.RandomState(7)
    for n_features, high in ((16, 2**16), (40, 2**40), (62, 2**62)):
        keys = rng.randint(0, 2**62, 5000, dtype=np.int64) % high
        keys = np.concatenate([keys, keys[:2000]])
        order = sort_by_pattern(keys, n_features)
        assert order.dtype == np.int64 and sorted(order) == list(range(len(keys)))
        assert np.all(np.diff(keys[order]) >= 0)
    X, _ = blobs(600, n_features=20)
    X = holes(X, 0.3, seed=8)
    X[:, 19] = np.where(np.isnan(X).any(axis=1), X[:, 19], np.nan)  # none complete
    _, _, _, init = start_for(X, "full", seed=3)
    params = GaussianMixture(3, max_iter=1, tol=0, nan_policy="marginalize",
                             **init).fit(X)._current_params()
    incomplete = IncompleteRows.from_block(X, None).by_count()
    shift = np.nanmean(X, axis=0)
    ours = empty_stats(3, 20, "full", shift)
    ours_ll = expected_sums(incomplete, params, ours)
    reference = empty_stats(3, 20, "full", shift)
    terms = marginal_terms(incomplete.rows, incomplete.missing, incomplete.groups, params,
                           shift)
    R, log_norm = responsibilities(terms.log_prob.copy())
    accumulate_expected(reference, terms, incomplete.groups, incomplete.missing, R)
    assert ours_ll == pytest.approx(float(log_norm.sum()), rel=1e-11)
    for name in ("nk", "s1", "s2", "imputed"):
        np.testing.assert_allclose(getattr(ours, name), getattr(reference, name),
                                   rtol=1e-9, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_incomplete_rows_are_taken_in_block_order(dtype):
    from dask_gmm._missing import IncompleteRows

    X = np.arange(24, dtype=dtype).reshape(6, 4)
    X[1, 2] = X[3] = X[4, :3] = X[5, 0] = np.nan  # row 3 misses everything
    w = np.arange(6.0)
    taken = IncompleteRows.from_block(X, w)
    np.testing.assert_array_equal(taken.positions, [1, 4, 5])
    np.testing.assert_array_equal(taken.rows, X[[1, 4, 5]].astype(np.float64))
    assert taken.rows.dtype == np.float64
    np.testing.assert_array_equal(taken.missing, np.isnan(X[[1, 4, 5]]))
    np.testing.assert_array_equal(taken.w, [1.0, 4.0, 5.0])
    with pytest.raises(ValueError, match="by_count"):
        taken.groups  # noqa: B018 -- the numpy kernels need the rows sorted
    by_count = taken.by_count()
    np.testing.assert_array_equal(by_count.positions, [1, 5, 4])
    assert [g.missing.shape[1] for g in by_count.groups] == [1, 3]


@pytest.mark.parametrize("nan_policy", ["omit", "marginalize"])
def test_infinity_is_an_error_under_every_policy(nan_policy):
    X, _ = blobs(300)
    for row in ([np.inf, 1.0, 2.0], [np.inf, np.nan, 2.0], [-np.inf, np.nan, np.nan]):
        bad = X.copy()
        bad[150] = row
        with pytest.raises(ValueError, match=r"infinity.*rows \[150\]"):
            GaussianMixture(2, nan_policy=nan_policy, random_state=0).fit(as_dask(bad, 100))


@pytest.mark.parametrize("condition", [1.0, 1e4, 1e8])
def test_block_inverse_of_the_compiled_e_step(condition):
    """Gauss-Jordan without pivoting on symmetric positive definite blocks, every
    component at once, against LAPACK: the inverses and log-determinants of blocks
    up to condition number 1e8."""
    from dask_gmm._fused_missing import _inverse_of_blocks

    rng = np.random.RandomState(int(np.log10(condition)))
    n_features = 9
    basis = np.linalg.qr(rng.normal(size=(n_features, n_features)))[0]
    spectrum = np.logspace(0, np.log10(condition), n_features) * 3.0
    other = np.linalg.qr(rng.normal(size=(n_features, n_features)))[0]
    matrices = np.stack([basis * spectrum @ basis.T, np.eye(n_features),
                         other * spectrum[::-1] @ other.T])
    indices = np.array([[0, 2, 3, 5, 6, 7, 8, 0, 0], [4, 0, 0, 0, 0, 0, 0, 0, 0]])
    out = np.empty((n_features, n_features, len(matrices)))
    log_det = np.empty(len(matrices))
    for p, q in ((0, 7), (1, 1)):
        _inverse_of_blocks(matrices, indices, p, q, out, log_det)
        for k, matrix in enumerate(matrices):
            block = matrix[np.ix_(indices[p, :q], indices[p, :q])]
            assert log_det[k] == pytest.approx(np.linalg.slogdet(block)[1], abs=1e-9)
            np.testing.assert_allclose(out[:q, :q, k], np.linalg.inv(block),
                                       rtol=1e-14 * condition, atol=1e-14 * condition)


def test_the_nan_error_names_both_policies():
    X, _ = blobs(300)
    X[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"rows \[7\].*nan_policy='omit'.*"
                                         r"nan_policy='marginalize' to fit each sample"):
        GaussianMixture(2).fit(as_dask(X, 100))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_bayesian_checkpoint_resumes_with_the_fresh_fits_priors(tmp_path):
    """The default priors come from the complete rows, as in a fresh fit, not from a
    resumed E-step's statistics (which hold filled-in values): mid-fit and finished."""
    from dask_gmm import BayesianGaussianMixture

    X, _ = blobs(600)
    Xm = as_dask(holes(X, 0.2), 100)
    settings = dict(n_components=4, random_state=0, nan_policy="marginalize", tol=0)
    path = tmp_path / "fit.ckpt"
    BayesianGaussianMixture(max_iter=3, **settings).fit(Xm, checkpoint=path)
    resumed = BayesianGaussianMixture(max_iter=7, **settings).fit(Xm, checkpoint=path)
    finished = BayesianGaussianMixture(max_iter=7, **settings).fit(Xm, checkpoint=path)
    whole = BayesianGaussianMixture(max_iter=7, **settings).fit(Xm)
    for model in (resumed, finished):
        np.testing.assert_allclose(model.mean_prior_, whole.mean_prior_, rtol=1e-12)
        np.testing.assert_allclose(model.covariance_prior_, whole.covariance_prior_,
                                   rtol=1e-12)
        np.testing.assert_allclose(model.means_, whole.means_, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(model.lower_bounds_, whole.lower_bounds_, rtol=1e-9)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_bayesian_warm_start_keeps_the_complete_rows_priors():
    from dask_gmm import BayesianGaussianMixture

    X, _ = blobs(600)
    Xm = as_dask(holes(X, 0.2), 100)
    bgm = BayesianGaussianMixture(n_components=4, random_state=0, max_iter=3, tol=0,
                                  nan_policy="marginalize", warm_start=True).fit(Xm)
    first = (bgm.mean_prior_.copy(), bgm.covariance_prior_.copy())
    bgm.fit(Xm)
    np.testing.assert_allclose(bgm.mean_prior_, first[0], rtol=1e-12)
    np.testing.assert_allclose(bgm.covariance_prior_, first[1], rtol=1e-12)


@pytest.mark.parametrize("n_features", [1, 16, 62])
def test_pattern_keys_give_each_mask_row_its_bits(n_features):
    from dask_gmm._fused_missing import pattern_keys

    mask = np.random.default_rng(n_features).random((500, n_features)) < 0.3
    expected = mask.astype(np.int64) @ (np.int64(1) << np.arange(n_features, dtype=np.int64))
    np.testing.assert_array_equal(pattern_keys(mask), expected)
