"""BayesianGaussianMixture against scikit-learn's, on every input and prior.

scikit-learn is the serial reference: on data smaller than the k-means sample
our default start is scikit-learn's, so the fits agree to rounding (RTOL) and
take the same number of iterations.
"""

import warnings

import dask
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import BayesianGaussianMixture as SklearnBayesianGaussianMixture
from sklearn.utils.estimator_checks import check_estimator

import dask_gmm
from dask_gmm import BayesianGaussianMixture

from .helpers import COVARIANCE_TYPES, as_dask, blobs, count_computes, ragged_chunks

RTOL = 1e-6
N_SAMPLES = 800
PRIOR_TYPES = ["dirichlet_process", "dirichlet_distribution"]
LAYOUTS = {
    "numpy": None,
    "1 chunk": (N_SAMPLES,),
    "7 ragged chunks": ragged_chunks(N_SAMPLES, 7),
    "50 chunks": (N_SAMPLES // 50,) * 50,
}


@pytest.fixture(autouse=True)
def quiet_convergence():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def make(estimator_class, prior_type, covariance_type, **kwargs):
    return estimator_class(n_components=5, covariance_type=covariance_type,
                           weight_concentration_prior_type=prior_type, random_state=0,
                           max_iter=60, **kwargs)


def assert_same_posterior(ours, reference, offset=0.0, rtol=RTOL):
    for name in ("weights_", "covariances_", "precisions_cholesky_", "mean_precision_",
                 "degrees_of_freedom_", "mean_prior_", "covariance_prior_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(reference, name),
                                   rtol=rtol, atol=1e-9, err_msg=name)
    np.testing.assert_allclose(ours.means_ - offset, reference.means_, rtol=rtol, atol=1e-8)
    np.testing.assert_allclose(np.asarray(ours.weight_concentration_),
                               np.asarray(reference.weight_concentration_), rtol=rtol)
    # scikit-learn's tied bounds are arrays of one element
    np.testing.assert_allclose(ours.lower_bounds_, np.ravel(reference.lower_bounds_),
                               rtol=rtol)
    assert ours.n_iter_ == reference.n_iter_
    assert ours.converged_ == reference.converged_
    for name in ("weight_concentration_prior_", "mean_precision_prior_",
                 "degrees_of_freedom_prior_"):
        assert getattr(ours, name) == getattr(reference, name), name


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
def test_same_fit_as_sklearn(prior_type, covariance_type, layout):
    X, _ = blobs(N_SAMPLES)
    reference = make(SklearnBayesianGaussianMixture, prior_type, covariance_type).fit(X)
    chunks = LAYOUTS[layout]
    data = X if chunks is None else as_dask(X, chunks)
    with dask.config.set(split_every=2):
        ours = make(BayesianGaussianMixture, prior_type, covariance_type).fit(data)
    assert_same_posterior(ours, reference)
    np.testing.assert_array_equal(np.asarray(ours.predict(data)), reference.predict(X))
    np.testing.assert_allclose(np.asarray(ours.score_samples(data)),
                               reference.score_samples(X), rtol=1e-9)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_data_offset_by_a_million_keep_their_digits(covariance_type):
    """scikit-learn itself loses ~1e-3 here for tied, diag and spherical; we do not."""
    X, _ = blobs(N_SAMPLES)
    reference = make(SklearnBayesianGaussianMixture, "dirichlet_process",
                     covariance_type).fit(X)
    ours = make(BayesianGaussianMixture, "dirichlet_process", covariance_type).fit(
        as_dask(X + 1e6, ragged_chunks(N_SAMPLES, 7)))
    np.testing.assert_allclose(ours.mean_prior_ - 1e6, reference.mean_prior_, atol=1e-8)
    ours.mean_prior_ = reference.mean_prior_  # compared above; the rest is translation-free
    assert_same_posterior(ours, reference, offset=1e6)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_float32_stays_float32_and_close(covariance_type):
    X, _ = blobs(N_SAMPLES)
    reference = make(BayesianGaussianMixture, "dirichlet_process", covariance_type,
                     tol=0).fit(X)
    ours = make(BayesianGaussianMixture, "dirichlet_process", covariance_type,
                tol=0).fit(as_dask(X.astype(np.float32), 100))
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert getattr(ours, name).dtype == np.float32, name
        np.testing.assert_allclose(getattr(ours, name), getattr(reference, name),
                                   rtol=2e-3, atol=2e-3)


def test_one_compute_per_iteration():
    X, _ = blobs(N_SAMPLES)
    gm = BayesianGaussianMixture(n_components=4, random_state=0, max_iter=7, tol=0)
    with count_computes() as computes:
        gm.fit(as_dask(X, 100))
    # the k-means sample, the k-means statistics (which also give the priors), 7 E-steps
    assert len(computes) == 2 + 7


def test_priors_for_seeded_starts_on_large_data_cost_one_pass(monkeypatch):
    """k-means++ on data beyond the k-means sample: one moments pass gives the priors."""
    from dask_gmm import _init

    monkeypatch.setattr(_init, "KMEANS_SAMPLE_ROWS", 200)
    X, _ = blobs(N_SAMPLES)
    gm = BayesianGaussianMixture(n_components=3, init_params="k-means++", random_state=0,
                                 max_iter=3, tol=0, covariance_type="tied")
    with count_computes() as computes:
        gm.fit(as_dask(X + 1e6, 100))
    assert len(computes) == 1 + 1 + 3  # sample rows, moments, E-steps
    np.testing.assert_allclose(gm.mean_prior_, X.mean(axis=0) + 1e6, rtol=1e-15)
    np.testing.assert_allclose(gm.covariance_prior_, np.cov(X.T), rtol=1e-9)


def test_integer_weights_equal_repeated_rows_and_masked_rows_are_skipped():
    import copy

    X, _ = blobs(N_SAMPLES)
    counts = np.random.RandomState(2).randint(1, 4, size=N_SAMPLES)
    # the same start for both: a short fit continued with warm_start
    start = BayesianGaussianMixture(n_components=3, random_state=0, max_iter=3).fit(X)
    start.set_params(warm_start=True, max_iter=15, tol=0)
    repeated = copy.deepcopy(start).fit(np.repeat(X, counts, axis=0))
    weighted = copy.deepcopy(start).fit(as_dask(X, 128), sample_weight=counts)
    for name in ("means_", "covariances_", "weights_", "covariance_prior_", "mean_prior_"):
        np.testing.assert_allclose(getattr(weighted, name), getattr(repeated, name),
                                   rtol=1e-9, err_msg=name)
    np.testing.assert_allclose(weighted.lower_bounds_, repeated.lower_bounds_, rtol=1e-9)

    masked = X.copy()
    masked[::9, 1] = np.nan
    kept = masked[~np.isnan(masked).any(axis=1)]
    reference = SklearnBayesianGaussianMixture(n_components=3, random_state=0).fit(kept)
    omit = BayesianGaussianMixture(n_components=3, random_state=0, nan_policy="omit").fit(
        as_dask(masked, 128))
    assert_same_posterior(omit, reference)
    labels = np.asarray(omit.predict(masked))
    assert (labels[::9] == -1).all()


def test_sklearn_estimator_checks_pass():
    results = check_estimator(BayesianGaussianMixture(), on_fail=None)
    failed = [r for r in results if r["status"] == "failed"]
    assert not failed, [(r["check_name"], str(r["exception"])[:200]) for r in failed]


def test_constructor_matches_sklearn():
    import inspect

    ours = inspect.signature(BayesianGaussianMixture.__init__).parameters
    theirs = inspect.signature(SklearnBayesianGaussianMixture.__init__).parameters
    assert list(ours) == list(theirs) + ["nan_policy"]
    for name in theirs:
        assert ours[name].default == theirs[name].default, name


def test_save_load_to_sklearn_and_checkpoint(tmp_path):
    X, _ = blobs(N_SAMPLES)
    for prior_type in PRIOR_TYPES:
        gm = make(BayesianGaussianMixture, prior_type, "diag").fit(as_dask(X, 200))
        gm.save(tmp_path / f"{prior_type}.npz")
        loaded = dask_gmm.load(tmp_path / f"{prior_type}.npz")
        assert type(loaded) is BayesianGaussianMixture
        np.testing.assert_array_equal(loaded.predict(X), gm.predict(X))
        np.testing.assert_allclose(np.asarray(loaded.weight_concentration_),
                                   np.asarray(gm.weight_concentration_))
        twin = gm.to_sklearn()
        assert type(twin) is SklearnBayesianGaussianMixture
        np.testing.assert_allclose(twin.score_samples(X), gm.score_samples(X), rtol=1e-12)
    path = tmp_path / "fit.ckpt"
    part = make(BayesianGaussianMixture, "dirichlet_process", "full", tol=0)
    part.set_params(max_iter=4).fit(X, checkpoint=path)
    resumed = make(BayesianGaussianMixture, "dirichlet_process", "full", tol=0)
    resumed.set_params(max_iter=9).fit(X, checkpoint=path)
    whole = make(BayesianGaussianMixture, "dirichlet_process", "full", tol=0)
    whole.set_params(max_iter=9).fit(X)
    np.testing.assert_allclose(resumed.means_, whole.means_, rtol=1e-10)
    np.testing.assert_allclose(resumed.lower_bounds_, whole.lower_bounds_, rtol=1e-10)
    np.testing.assert_allclose(resumed.covariance_prior_, whole.covariance_prior_,
                               rtol=1e-12)
    assert resumed.n_iter_ == 9


def test_clear_errors_before_any_pass():
    X, _ = blobs(100)
    with pytest.raises(ValueError, match="'weight_concentration_prior_type' parameter"):
        BayesianGaussianMixture(weight_concentration_prior_type="bad").fit(X)
    with pytest.raises(ValueError, match="should be greater than 2, but got 1.000"):
        BayesianGaussianMixture(degrees_of_freedom_prior=1.0).fit(X)
    with pytest.raises(ValueError, match=r"'means' should have the shape of \(3,\)"):
        BayesianGaussianMixture(mean_prior=[0.0, 1.0]).fit(as_dask(X, 20))
    with pytest.raises(ValueError, match="'full precision' should be symmetric"):
        BayesianGaussianMixture(covariance_prior=-np.eye(3)).fit(as_dask(X, 20))


def test_sweep_over_priors_reads_once_per_round_and_equals_single_fits(tmp_path):
    X, _ = blobs(N_SAMPLES)
    data = as_dask(X, 200)
    sweep = dask_gmm.BayesianGaussianMixtureSweep(
        6, ["full", "spherical"], [0.01, 10.0], random_state=0, max_iter=30)
    with count_computes() as computes:
        sweep.fit(data)
    assert len(computes) == sweep.n_rounds_ == max(sweep.results_["n_passes"])
    for i, params in enumerate(sweep.results_["params"]):
        single = BayesianGaussianMixture(random_state=0, max_iter=30, **params).fit(X)
        np.testing.assert_allclose(sweep.results_["lower_bound"][i], single.lower_bound_,
                                   rtol=1e-9)
        assert sweep.results_["n_effective"][i] == np.sum(single.weights_ >= 0.01)
    best = int(np.argmax(sweep.results_["lower_bound"]))
    assert sweep.best_index_ == best and sweep.best_params_ == sweep.results_["params"][best]
    sweep.save(tmp_path / "sweep.npz")
    loaded = dask_gmm.load(tmp_path / "sweep.npz")
    assert type(loaded) is dask_gmm.BayesianGaussianMixtureSweep
    assert loaded.best_params_ == sweep.best_params_
    np.testing.assert_array_equal(loaded.results_["n_effective"], sweep.results_["n_effective"])
    np.testing.assert_array_equal(loaded.predict(X), sweep.predict(X))


def test_xarray_cube_and_weights_plot(tmp_path):
    xr = pytest.importorskip("xarray")
    X, _ = blobs(1200)
    cube = xr.DataArray(X.reshape(30, 40, 3), dims=("y", "x", "band"),
                        coords={"band": ["a", "b", "c"]}).chunk({"y": 10, "band": 1})
    reference = SklearnBayesianGaussianMixture(n_components=4, random_state=0).fit(X)
    ours = BayesianGaussianMixture(n_components=4, random_state=0).fit(
        cube, feature_dim="band")
    assert_same_posterior(ours, reference)
    labels = ours.predict(cube)
    assert labels.dims == ("y", "x")
    np.testing.assert_array_equal(labels.values.reshape(-1), reference.predict(X))
    path = dask_gmm.plot_weights(ours, tmp_path / "weights.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
@pytest.mark.parametrize("init_params", ["k-means++", "random_from_data"])
def test_seeded_starts_match_sklearn(init_params, covariance_type):
    """(tied differs on purpose: scikit-learn puts every row's second moment into a
    seeded tied start; ours starts at reg_covar, as the README says.)"""
    X, _ = blobs(N_SAMPLES)
    settings = dict(n_components=5, covariance_type=covariance_type,
                    init_params=init_params, random_state=0, max_iter=60)
    reference = SklearnBayesianGaussianMixture(**settings).fit(X)
    ours = BayesianGaussianMixture(**settings).fit(as_dask(X, 100))
    assert_same_posterior(ours, reference)
