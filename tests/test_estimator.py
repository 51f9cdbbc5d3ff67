"""The estimator contract: scikit-learn's API, lazy outputs, inits, one compute per round."""

import inspect
import time
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture
from sklearn.utils.estimator_checks import check_estimator

from dask_gmm import BayesianGaussianMixture, GaussianMixture, _predict

from .helpers import COVARIANCE_TYPES, as_dask, blobs, count_computes, reference_inits


def test_constructor_matches_sklearn_signature():
    """scikit-learn's parameters, in order and with their defaults; ours come after."""
    ours = inspect.signature(GaussianMixture.__init__).parameters
    theirs = inspect.signature(SklearnGaussianMixture.__init__).parameters
    assert list(ours) == list(theirs) + ["nan_policy"]
    assert ours["nan_policy"].default == "raise"
    assert ours["nan_policy"].kind == inspect.Parameter.KEYWORD_ONLY
    for name in theirs:
        assert ours[name].default == theirs[name].default, name
        assert ours[name].kind == theirs[name].kind, name


def test_sklearn_estimator_checks_pass():
    results = check_estimator(GaussianMixture(), on_fail=None)
    failed = [r for r in results if r["status"] == "failed"]
    assert not failed, [(r["check_name"], str(r["exception"])[:200]) for r in failed]


def test_clone_and_params_round_trip():
    gm = GaussianMixture(3, covariance_type="diag", tol=1e-4, random_state=7)
    copy = clone(gm)
    assert copy.get_params() == gm.get_params()
    copy.set_params(n_components=5)
    assert copy.n_components == 5 and gm.n_components == 3


def test_methods_on_numpy_return_numpy_and_equal_sklearn():
    X, _ = blobs()
    inits = reference_inits(X, 4, "full")
    ours = GaussianMixture(4, **inits).fit(X)
    theirs = SklearnGaussianMixture(4, **inits).fit(X)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-8)
    np.testing.assert_allclose(ours.score_samples(X), theirs.score_samples(X), rtol=1e-8)
    assert isinstance(ours.predict(X), np.ndarray)
    np.testing.assert_allclose(ours.score(X), theirs.score(X), rtol=1e-8)
    np.testing.assert_allclose(ours.bic(X), theirs.bic(X), rtol=1e-8)
    np.testing.assert_allclose(ours.aic(X), theirs.aic(X), rtol=1e-8)
    np.testing.assert_array_equal(ours.fit_predict(X), theirs.fit_predict(X))


def _numpy_outputs(gm, X):
    return gm.predict(X), gm.predict_proba(X), gm.score_samples(X)


@pytest.mark.parametrize("estimator", [GaussianMixture, BayesianGaussianMixture])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_many_numpy_rows_are_predicted_in_row_tasks_on_dask_threads(
        monkeypatch, covariance_type, dtype, estimator):
    """Rows in memory enough for two tasks run as one dask round of row tasks (the
    last one ragged), and give what one pass over all the rows gives."""
    X = blobs(1050, dtype=dtype)[0]
    gm = estimator(n_components=4, covariance_type=covariance_type, random_state=0).fit(X)
    monkeypatch.setattr(_predict, "MEMORY_TASK_ROWS", 100)
    with dask.config.set(scheduler="sync"), count_computes() as rounds:
        serial = _numpy_outputs(gm, X)  # dask would not run on its threads: one pass
    assert rounds == []
    with count_computes() as rounds:
        tasks = _numpy_outputs(gm, X)
    assert rounds == [11, 11, 11]
    np.testing.assert_array_equal(tasks[0], serial[0])
    for ours, whole in zip(tasks[1:], serial[1:]):
        assert ours.dtype == whole.dtype == dtype
        np.testing.assert_allclose(ours, whole, rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=1e-6 if dtype == np.float32 else 1e-12)
    monkeypatch.setattr(_predict, "MEMORY_TASK_ROWS", 600)  # fewer rows than two tasks
    with count_computes() as rounds:
        np.testing.assert_array_equal(gm.predict(X), serial[0])
    assert rounds == []


@pytest.mark.parametrize("nan_policy", ["omit", "marginalize"])
def test_row_tasks_keep_the_fill_values_of_rows_left_out(monkeypatch, nan_policy):
    X = blobs(1050)[0]
    gm = GaussianMixture(4, random_state=0, nan_policy=nan_policy).fit(X)
    holed = X.copy()
    holed[[5, 150, 777, 1049], 1] = np.nan
    holed[[151, 900], :] = np.nan
    with dask.config.set(scheduler="sync"):
        serial = _numpy_outputs(gm, holed)
    monkeypatch.setattr(_predict, "MEMORY_TASK_ROWS", 100)
    tasks = _numpy_outputs(gm, holed)
    np.testing.assert_array_equal(tasks[0], serial[0])
    assert (tasks[0][[151, 900]] == -1).all()
    for ours, whole in zip(tasks[1:], serial[1:]):
        np.testing.assert_allclose(ours, whole, rtol=1e-12, atol=1e-12)
        assert np.isnan(ours[[151, 900]]).all()


def test_row_tasks_report_the_first_bad_row_as_one_pass_does(monkeypatch):
    """Several tasks fail: the error is the first failing task's, in row order."""
    X = blobs(1050)[0]
    gm = GaussianMixture(4, random_state=0).fit(X)
    bad = X.copy()
    bad[950, 1] = 1e150
    bad[150, 0] = -1e160
    monkeypatch.setattr(_predict, "MEMORY_TASK_ROWS", 100)
    one_pass = _predict.row_outputs

    def second_task_last(X, *args):
        if args[-2].origin == (100,):  # the task of rows 100-199 fails after the others
            time.sleep(0.2)
        return one_pass(X, *args)

    monkeypatch.setattr(_predict, "row_outputs", second_task_last)
    with pytest.raises(ValueError, match=r"up to 1e\+160 \(rows \[150\]\)"):
        gm.predict_proba(bad)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_outputs_on_dask_input_are_lazy_and_chunked_like_the_input(covariance_type):
    X, _ = blobs()
    dX = as_dask(X, (500, 400, 600))
    gm = GaussianMixture(4, covariance_type=covariance_type, random_state=0).fit(dX)
    with count_computes() as calls:
        labels = gm.predict(dX)
        proba = gm.predict_proba(dX)
        log_prob = gm.score_samples(dX)
    assert calls == []
    assert isinstance(labels, da.Array) and labels.chunks == (dX.chunks[0],)
    assert proba.chunks == (dX.chunks[0], (4,))
    assert log_prob.chunks == (dX.chunks[0],)
    np.testing.assert_array_equal(labels.compute(), gm.predict(X))
    # chunks shift their rows about points of their own: equal up to rounding
    np.testing.assert_allclose(proba.compute(), gm.predict_proba(X), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(log_prob.compute(), gm.score_samples(X), rtol=1e-12)
    np.testing.assert_allclose(gm.bic(dX), gm.bic(X), rtol=1e-12)
    np.testing.assert_allclose(gm.aic(dX), gm.aic(X), rtol=1e-12)


def test_fit_predict_on_dask_is_lazy_with_final_parameters():
    X, _ = blobs()
    dX = as_dask(X, 300)
    gm = GaussianMixture(4, random_state=0)
    labels = gm.fit_predict(dX)
    assert isinstance(labels, da.Array)
    np.testing.assert_array_equal(labels.compute(), gm.predict(X))


def test_one_compute_per_em_iteration():
    X, _ = blobs()
    inits = reference_inits(X, 4, "full")
    dX = as_dask(X, 100)  # 15 chunks
    with count_computes() as calls:
        gm = GaussianMixture(4, tol=1e-8, **inits).fit(dX)
    assert gm.n_iter_ > 2
    assert len(calls) == gm.n_iter_
    # one iteration's graph: a task per chunk, a few combines, the parameters
    assert max(calls) <= 2 * dX.numblocks[0] + 10


def test_graph_size_grows_with_chunks_not_rows():
    X, _ = blobs(3000)
    inits = reference_inits(X, 4, "diag")
    sizes = []
    for n_rows in (1500, 3000):
        with count_computes() as calls:
            GaussianMixture(4, covariance_type="diag", max_iter=1, **inits).fit(
                as_dask(X[:n_rows], n_rows // 10))
        sizes.append(calls[0])
    assert sizes[0] == sizes[1]


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_every_init_finds_the_blobs(init_params):
    X, truth = blobs(4000, centers=3)
    dX = as_dask(X, 700)
    # 'random' starts with all components alike: it needs a tight tol to
    # leave that saddle, as it does in scikit-learn.
    gm = GaussianMixture(3, init_params=init_params, n_init=4, random_state=1,
                         max_iter=500, tol=1e-7).fit(dX)
    assert gm.converged_
    assert adjusted_rand_score(truth, gm.predict(X)) > 0.95


def test_kmeans_init_on_data_larger_than_the_sample(monkeypatch):
    """Sampled k-means seeding plus Lloyd passes over all chunks."""
    from dask_gmm import _init

    monkeypatch.setattr(_init, "KMEANS_SAMPLE_ROWS", 300)
    X, truth = blobs(4000, centers=3, seed=4)
    with count_computes() as calls:
        gm = GaussianMixture(3, random_state=0, max_iter=0).fit(as_dask(X, 500))
    # one sample read, at least one Lloyd pass and one statistics pass
    assert len(calls) >= 3
    labels = gm.predict(X)
    assert adjusted_rand_score(truth, labels) > 0.95


def test_kmeans_on_a_sample_keeps_the_best_of_several_seedings(monkeypatch):
    """Eight blobs in 16 features: one k-means++ seeding sometimes puts two
    centers in one blob, and EM then ends in a worse optimum; data larger than
    the sample get the best of several seedings and every seed here finds the
    best fit."""
    from dask_gmm import _init

    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3.0, size=(8, 16))
    X = centers[rng.integers(0, 8, size=6000)] + rng.normal(size=(6000, 16))
    monkeypatch.setattr(_init, "KMEANS_SAMPLE_ROWS", 2000)

    def lower_bounds():
        return np.array([GaussianMixture(8, random_state=seed, max_iter=20).fit(X).lower_bound_
                         for seed in range(12)])

    several = lower_bounds()
    np.testing.assert_allclose(several, several.max(), rtol=1e-9)
    monkeypatch.setattr(_init, "KMEANS_SAMPLE_RESTARTS", 1)
    assert (lower_bounds() < several.max() - 0.1).any()  # the data do catch one seeding


def test_larger_data_seed_from_a_sample_sized_by_the_components(monkeypatch):
    """At least SEEDING_ROWS rows and SEEDING_ROWS_PER_COMPONENT per component, never
    more than KMEANS_SAMPLE_ROWS; data no larger than that are seeded from whole."""
    from dask_gmm import _init, _requests

    assert _init.seeding_rows(8) == 20_000
    assert _init.seeding_rows(12) == 30_000
    assert _init.seeding_rows(400) == _init.KMEANS_SAMPLE_ROWS
    monkeypatch.setattr(_init, "KMEANS_SAMPLE_ROWS", 1000)
    monkeypatch.setattr(_init, "SEEDING_ROWS", 400)
    monkeypatch.setattr(_init, "SEEDING_ROWS_PER_COMPONENT", 150)
    drawn = []
    take = _requests.TakeRows.__init__
    monkeypatch.setattr(_requests.TakeRows, "__init__",
                        lambda self, indices: (drawn.append(len(indices)), take(self, indices))[1])
    X, truth = blobs(3000, centers=3, seed=4)
    gm = GaussianMixture(3, random_state=0).fit(as_dask(X, 500))
    assert drawn == [450]
    assert adjusted_rand_score(truth, gm.predict(X)) > 0.95
    drawn.clear()
    GaussianMixture(3, random_state=0).fit(as_dask(X[:1000], 500))
    assert drawn == [1000]


def test_sample_indices_are_distinct_sorted_and_uniform():
    from dask_gmm._init import sample_indices

    for n_samples, size in [(10, 10), (10, 3), (1000, 40), (7, 2)]:
        drawn = sample_indices(n_samples, size, np.random.RandomState(0))
        assert drawn.dtype.kind == "i" and len(drawn) == size
        assert np.all(np.diff(drawn) > 0) and drawn[0] >= 0 and drawn[-1] < n_samples
    np.testing.assert_array_equal(sample_indices(1000, 40, np.random.RandomState(5)),
                                  sample_indices(1000, 40, np.random.RandomState(5)))
    # every row equally likely: 20,000 draws of 3 rows out of 30 (expect 2,000 each)
    random_state = np.random.RandomState(1)
    counts = np.bincount(np.concatenate([sample_indices(30, 3, random_state)
                                         for _ in range(20_000)]), minlength=30)
    assert np.abs(counts - 2000).max() < 5 * np.sqrt(2000)
    # pairs too, not only single rows: 435 pairs, about 46 draws each
    pairs = np.array([sample_indices(30, 2, random_state) for _ in range(20_000)])
    pair_counts = np.bincount(pairs[:, 0] * 30 + pairs[:, 1], minlength=900)
    taken = pair_counts[np.triu_indices(30, 1)[0] * 30 + np.triu_indices(30, 1)[1]]
    assert taken.min() > 15 and taken.max() < 85


def test_sample_of_a_huge_population_costs_only_its_size():
    """numpy's choice(replace=False) would permute all 10**12 numbers (8 TB)."""
    from dask_gmm._init import random_rows, sample_indices

    drawn = sample_indices(10**12, 50_000, np.random.RandomState(0))
    assert len(np.unique(drawn)) == 50_000 and drawn.max() < 10**12
    assert drawn.max() > 10**11  # spread over the whole range, not its start
    rows = random_rows(10**12, 8, np.random.RandomState(0))
    assert len(set(rows.tolist())) == 8


def test_random_rows_draws_as_sklearn_on_small_data():
    from dask_gmm._init import random_rows

    np.testing.assert_array_equal(
        random_rows(5000, 4, np.random.RandomState(3)),
        np.random.RandomState(3).choice(5000, size=4, replace=False))


def test_n_init_keeps_the_best_lower_bound():
    X, _ = blobs(1000, centers=5, seed=2)
    single = [GaussianMixture(5, init_params="random_from_data", random_state=s,
                              max_iter=200).fit(X).lower_bound_ for s in range(3)]
    multi = GaussianMixture(5, init_params="random_from_data", n_init=4,
                            random_state=0, max_iter=200).fit(X)
    assert multi.lower_bound_ >= min(single) - 1e-9
    assert multi.lower_bound_ == pytest.approx(max(multi.lower_bounds_[-1:]), rel=1e-12)


def test_same_random_state_same_result_on_any_scheduler():
    """Chunk tasks run in parallel threads: per-chunk random streams must not mix."""
    X, _ = blobs(6000)
    results = []
    for scheduler in ("threads", "sync", "threads"):
        with dask.config.set(scheduler=scheduler):
            results.append(GaussianMixture(4, init_params="random", random_state=3,
                                           max_iter=2, tol=0).fit(as_dask(X, 50)))
    for other in results[1:]:
        np.testing.assert_array_equal(other.means_, results[0].means_)


def test_warm_start_continues_where_it_stopped():
    X, _ = blobs()
    inits = reference_inits(X, 4, "full")
    full_run = GaussianMixture(4, tol=0, max_iter=6, **inits).fit(X)
    warm = GaussianMixture(4, tol=0, max_iter=3, warm_start=True, **inits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warm.fit(as_dask(X, 300))
        warm.fit(as_dask(X, 300))
    np.testing.assert_allclose(warm.means_, full_run.means_, rtol=1e-10)
    np.testing.assert_allclose(warm.covariances_, full_run.covariances_, rtol=1e-10)


def test_non_convergence_warns_as_sklearn():
    X, _ = blobs()
    with pytest.warns(ConvergenceWarning, match="Best performing initialization did not"):
        gm = GaussianMixture(4, max_iter=1, random_state=0).fit(as_dask(X, 500))
    assert not gm.converged_ and gm.n_iter_ == 1


def test_max_iter_zero_returns_the_initial_parameters():
    X, _ = blobs()
    inits = reference_inits(X, 4, "tied")
    gm = GaussianMixture(4, covariance_type="tied", max_iter=0, **inits).fit(X)
    np.testing.assert_allclose(gm.means_, inits["means_init"])
    np.testing.assert_allclose(gm.precisions_, inits["precisions_init"], rtol=1e-10)
    assert gm.n_iter_ == 0


def test_verbose_prints_like_sklearn(capsys):
    X, _ = blobs(500)
    GaussianMixture(2, verbose=2, verbose_interval=1, random_state=0).fit(X)
    out = capsys.readouterr().out
    assert "Initialization 0" in out
    assert "Iteration 1\t time lapse" in out
    assert "Initialization converged. time lapse" in out


def test_sample_draws_from_the_mixture():
    X, _ = blobs(3000)
    gm = GaussianMixture(4, random_state=0).fit(X)
    rows, labels = gm.sample(20000)
    assert rows.shape == (20000, 3) and labels.shape == (20000,)
    np.testing.assert_allclose(np.bincount(labels) / 20000, gm.weights_, atol=0.02)
    np.testing.assert_allclose(rows[labels == 0].mean(axis=0), gm.means_[0], atol=0.1)
    with pytest.raises(ValueError, match="at least one sample"):
        gm.sample(0)


def test_unfitted_estimator_raises_not_fitted():
    with pytest.raises(NotFittedError):
        GaussianMixture().predict(np.zeros((3, 2)))


def test_threads_and_sync_schedulers_agree():
    X, _ = blobs()
    inits = reference_inits(X, 4, "full")
    results = []
    for scheduler in ("threads", "sync"):
        with dask.config.set(scheduler=scheduler):
            results.append(GaussianMixture(4, **inits).fit(as_dask(X, 150)).means_)
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_sample_for_every_covariance_type(covariance_type):
    X, _ = blobs(3000)
    gm = GaussianMixture(4, covariance_type=covariance_type, random_state=0).fit(X)
    rows, labels = gm.sample(40000)
    k = int(np.argmax(gm.weights_))
    spread = np.sqrt(np.max(gm.covariances_))
    np.testing.assert_allclose(rows[labels == k].mean(axis=0), gm.means_[k],
                               atol=0.05 * spread + 0.05)
    # the drawn rows score like the model's own data
    assert abs(gm.score(rows) - gm.score(X)) < 0.2


def test_empty_chunks_are_harmless():
    X, _ = blobs()
    dX = da.from_array(X, chunks=((700, 0, 800, 0), (3,)))
    inits = reference_inits(X, 4, "diag")
    ours = GaussianMixture(4, covariance_type="diag", **inits).fit(dX)
    reference = GaussianMixture(4, covariance_type="diag", **inits).fit(X)
    np.testing.assert_allclose(ours.means_, reference.means_, rtol=1e-10)
    labels = ours.predict(dX)
    assert labels.chunks == ((700, 0, 800, 0),)
    np.testing.assert_array_equal(labels.compute(), reference.predict(X))


def test_blas_runs_one_thread_during_the_client_side_m_steps(monkeypatch):
    """OpenBLAS threads left spinning by a client-side call slow the next round's tasks."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from dask_gmm import gaussian_mixture

    blas_threads = []
    real_m_step = gaussian_mixture.m_step

    def recording_m_step(*args, **kwargs):
        blas_threads.append([p["num_threads"] for p in threadpool_info()
                             if p["user_api"] == "blas"])
        return real_m_step(*args, **kwargs)

    monkeypatch.setattr(gaussian_mixture, "m_step", recording_m_step)
    X, _ = blobs(2000)
    with threadpool_limits(limits=2, user_api="blas"):
        GaussianMixture(3, max_iter=5, tol=0, random_state=0).fit(X)
        outside = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    assert len(blas_threads) >= 5
    assert all(threads == [1] * len(threads) for threads in blas_threads)
    assert max(outside) == 2  # the limit is lifted after the fit
