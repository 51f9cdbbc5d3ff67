"""The engine on its own: rounds, one compute per round, isolation, and the initialisations."""

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

from dask_gmm import BayesianGaussianMixture, GaussianMixture
from dask_gmm._engine import ChunkedRows, run_together
from dask_gmm._init import draw_rows, initial_params
from dask_gmm._mstep import m_step
from dask_gmm._requests import EStep, HardAssignment, PassRequest, TakeRows

from .helpers import as_dask, blobs, count_computes, ragged_chunks


@pytest.fixture(scope="module")
def data():
    X, _ = blobs(1200)
    return X, ChunkedRows(as_dask(X, 250))


def em_steps(params, n_iter, fail_at=None, error=ValueError):
    """A minimal fit: ``n_iter`` E-steps, raising ``error`` before pass ``fail_at``."""
    for i in range(n_iter):
        if i == fail_at:
            raise error("stop here")
        stats = yield EStep(params)
        params, lower_bound = m_step(stats, "diag", 1e-6, np.finfo(float).eps)
    return lower_bound


def start(X):
    model = GaussianMixture(3, covariance_type="diag", max_iter=0, random_state=0).fit(X)
    return model._current_params()


def test_every_request_class_implements_the_protocol():
    from dask_gmm import _requests

    classes = [getattr(_requests, name) for name in ("EStep", "HardAssignment",
                                                     "RandomResponsibilities",
                                                     "LogLikelihood")]
    for cls in classes:
        assert issubclass(cls, PassRequest)
        for method in ("row_width", "empty", "accumulate"):
            assert getattr(cls, method) is not getattr(PassRequest, method), (cls, method)
    assert not issubclass(TakeRows, PassRequest)


def test_one_compute_per_round_whatever_the_number_of_fits(data):
    X, rows = data
    params = start(X)
    rounds = []
    with count_computes() as computes:
        results = run_together(rows, [em_steps(params, 3), em_steps(params, 5),
                                      em_steps(params, 1)], on_round=rounds.append)
    assert len(computes) == 5 == len(rounds)
    assert rounds == [2, 2, 1, 1, 0]  # fits still running after each round
    assert results[0] == pytest.approx(results[1], abs=0.2)


def test_rows_and_passes_share_a_round(data):
    X, rows = data

    def wants_rows():
        taken = yield TakeRows(np.array([0, 7, 900]))
        return taken

    params = start(X)
    with count_computes() as computes:
        taken, _ = run_together(rows, [wants_rows(), em_steps(params, 1)])
    assert len(computes) == 1
    np.testing.assert_array_equal(taken, X[[0, 7, 900]])


def test_an_isolated_error_ends_only_its_fit(data):
    X, rows = data
    params = start(X)
    results = run_together(rows, [em_steps(params, 4, fail_at=2), em_steps(params, 4)],
                           isolate=(ValueError,))
    assert isinstance(results[0], ValueError) and str(results[0]) == "stop here"
    assert isinstance(results[1], float)


def test_a_fatal_error_ends_every_fit(data):
    X, rows = data

    class Fatal(ValueError):
        pass

    params = start(X)
    with pytest.raises(Fatal):
        run_together(rows, [em_steps(params, 4, fail_at=1, error=Fatal),
                            em_steps(params, 4)], isolate=(ValueError,), fatal=(Fatal,))
    with pytest.raises(ValueError, match="stop here"):  # isolate=() lets every error out
        run_together(rows, [em_steps(params, 4, fail_at=1)], isolate=())


def run_init(X, init_params, chunks, seed=0, covariance_type="full"):
    rows = ChunkedRows(as_dask(X, chunks))
    steps = initial_params(rows, init_params, 4, covariance_type, 1e-6,
                           np.finfo(float).eps, False, np.random.RandomState(seed))
    with count_computes() as computes:
        (params,) = run_together(rows, [steps], isolate=())
    return params, len(computes)


def test_kmeans_start_equals_scikit_learn_on_data_within_the_sample():
    X, _ = blobs(1500)
    params, _ = run_init(X, "kmeans", 300)
    reference = SklearnGaussianMixture(4, random_state=0, max_iter=0).fit(X)
    np.testing.assert_allclose(params.means, reference.means_, rtol=1e-6)
    np.testing.assert_allclose(params.weights, reference.weights_, rtol=1e-6)


@pytest.mark.parametrize("init_params, reads", [("k-means++", 1), ("random_from_data", 1),
                                                ("random", 1), ("kmeans", 2)])
def test_each_start_reads_the_data_a_few_times(init_params, reads):
    X, _ = blobs(1500)
    _, computes = run_init(X, init_params, 300)
    assert computes == reads


def test_random_start_depends_on_seed_and_chunking_only():
    X, _ = blobs(1500)
    first, _ = run_init(X, "random", 300, seed=3)
    with dask.config.set(scheduler="sync"):
        again, _ = run_init(X, "random", 300, seed=3)
    other, _ = run_init(X, "random", 300, seed=4)
    np.testing.assert_array_equal(first.means, again.means)
    assert not np.allclose(first.means, other.means)


def test_draw_rows_keeps_the_order_asked_for(data):
    X, rows = data
    indices = np.array([900, 3, 250, 249])
    (drawn,) = run_together(rows, [draw_rows(rows, indices)], isolate=())
    np.testing.assert_array_equal(drawn, X[indices])


def test_hard_assignment_step_matches_a_direct_computation(data):
    X, rows = data
    centers = X[[0, 400, 800]]

    def one_step():
        stats = yield HardAssignment(centers, "diag", second_moments=False)
        return stats

    (stats,) = run_together(rows, [one_step()], isolate=())
    labels = ((X[:, None, :] - centers[None]) ** 2).sum(axis=2).argmin(axis=1)
    np.testing.assert_allclose(stats.nk, np.bincount(labels, minlength=3))
    means = stats.shift + stats.s1 / stats.nk[:, None]
    expected = np.array([X[labels == k].mean(axis=0) for k in range(3)])
    np.testing.assert_allclose(means, expected, rtol=1e-10)


@pytest.mark.parametrize("estimator, nan_policy", [
    (GaussianMixture, "raise"), (GaussianMixture, "omit"), (BayesianGaussianMixture, "raise")])
def test_tied_fits_keep_the_rows_moments_from_their_first_pass(monkeypatch, estimator,
                                                               nan_policy):
    """A tied covariance's sum of w y y^T is the rows' own: the first EM pass takes it,
    the later ones skip it (spied on), and the fit is the one that takes it every
    pass (forced by a stand-in request)."""
    from dask_gmm import _fused_linear, _requests

    X, _ = blobs(3000, centers=3, seed=5)
    if nan_policy == "omit":
        X[::37, 1] = np.nan
    weights = np.random.default_rng(0).uniform(0.5, 2.0, len(X))
    dX = da.from_array(X, chunks=(ragged_chunks(len(X), 6), 3))
    make = dict(n_components=3, covariance_type="tied", max_iter=6, tol=0, random_state=0,
                nan_policy=nan_policy)
    skipped = []
    kernel = _fused_linear.linear_e_step
    monkeypatch.setattr(_fused_linear, "linear_e_step", lambda *a: skipped.append(
        a[11].shape == (0, 0)) or kernel(*a))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        kept = estimator(**make).fit(dX, sample_weight=weights)
        assert any(skipped) and not all(skipped)
        taken_each_pass = _requests.EStep.__init__
        monkeypatch.setattr(_requests.EStep, "__init__",
                            lambda self, params, tied_moments=True: taken_each_pass(self, params))
        skipped.clear()
        every = estimator(**make).fit(dX, sample_weight=weights)
        assert not any(skipped)
    np.testing.assert_allclose(kept.means_, every.means_, rtol=1e-12)
    np.testing.assert_allclose(kept.covariances_, every.covariances_, rtol=1e-11)
    np.testing.assert_allclose(kept.lower_bounds_, every.lower_bounds_, rtol=1e-12)


def test_marginalised_tied_fits_take_the_moments_every_pass(monkeypatch):
    """Missing values are filled in anew each pass: their second moments change."""
    from dask_gmm import _requests

    X, _ = blobs(600, centers=2, seed=6)
    X[::5, 0] = np.nan
    asked = []
    init = _requests.EStep.__init__
    monkeypatch.setattr(_requests.EStep, "__init__", lambda self, params, tied_moments=True: (
        asked.append(tied_moments), init(self, params, tied_moments))[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        GaussianMixture(2, covariance_type="tied", max_iter=4, tol=0, random_state=0,
                        nan_policy="marginalize").fit(X)
    assert asked == [True] * 4


def spy_on_dask_compute(monkeypatch):
    calls = []
    real = dask.compute

    def spy(*args, **kwargs):
        calls.append(len(args))
        return real(*args, **kwargs)

    monkeypatch.setattr(dask, "compute", spy)
    return calls


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_passes_over_blocks_in_memory_go_straight_to_dask_threads(monkeypatch,
                                                                   covariance_type):
    X, _ = blobs(3000)
    ragged = as_dask(X, 700)
    fits = {}
    for scheduler in ("threads", "sync"):
        calls = spy_on_dask_compute(monkeypatch)
        with dask.config.set(scheduler=scheduler), count_computes() as rounds:
            fits[scheduler] = GaussianMixture(3, covariance_type=covariance_type, tol=0,
                                              max_iter=5, random_state=0).fit(ragged)
        # every round still reaches dask's scheduler (and its diagnostics callbacks)
        assert len(rounds) == fits[scheduler].n_passes_
        assert (calls == []) == (scheduler == "threads"), calls
    np.testing.assert_allclose(fits["threads"].means_, fits["sync"].means_, rtol=1e-13)
    np.testing.assert_allclose(fits["threads"].covariances_, fits["sync"].covariances_,
                               rtol=1e-13)
    assert fits["threads"].lower_bound_ == pytest.approx(fits["sync"].lower_bound_,
                                                         rel=1e-13)


def test_blocks_still_to_compute_go_through_dask_compute(monkeypatch):
    X, _ = blobs(3000)
    lazy = as_dask(X, 700) * 1.0  # a blockwise layer: dask.compute optimises it
    calls = spy_on_dask_compute(monkeypatch)
    with dask.config.set({"dask_gmm.persist": False}):
        model = GaussianMixture(3, covariance_type="diag", max_iter=2, random_state=0)
        model.fit(lazy)
    assert len(calls) == model.n_passes_ and not model.persisted_


def record_lloyd_passes(monkeypatch):
    """The ``second_moments`` of every Lloyd pass the k-means start asks for, in order.

    Data over 400 rows are seeded from a sample, so that Lloyd passes run.
    """
    from dask_gmm import _init

    asked = []

    class Recorded(HardAssignment):
        def __init__(self, centers, covariance_type, second_moments=True):
            super().__init__(centers, covariance_type, second_moments)
            asked.append(second_moments)

    monkeypatch.setattr(_init, "HardAssignment", Recorded)
    monkeypatch.setattr(_init, "KMEANS_SAMPLE_ROWS", 400)
    return asked


@pytest.mark.parametrize("in_memory", [True, False])
def test_first_lloyd_pass_skips_second_moments_only_for_data_in_memory(monkeypatch,
                                                                       in_memory):
    asked = record_lloyd_passes(monkeypatch)
    X, _ = blobs(1500)
    fits = {}
    for skip in (True, False):
        asked.clear()
        rows = ChunkedRows(as_dask(X, 300))
        rows.in_memory = in_memory and skip
        steps = initial_params(rows, "kmeans", 4, "full", 1e-6, np.finfo(float).eps, False,
                               np.random.RandomState(0))
        (fits[skip],) = run_together(rows, [steps], isolate=())
        if rows.in_memory:
            assert asked[0] is False and all(asked[1:]) and len(asked) >= 2
        else:
            assert all(asked)
    # the same Lloyd passes, and the same estimate from the last one
    np.testing.assert_allclose(fits[True].means, fits[False].means, rtol=1e-12)
    np.testing.assert_allclose(fits[True].covariances, fits[False].covariances, rtol=1e-12)


def test_settled_first_lloyd_pass_without_moments_takes_one_more(monkeypatch):
    from dask_gmm import _init

    asked = record_lloyd_passes(monkeypatch)
    monkeypatch.setattr(_init, "KMEANS_TOL", 1e9)  # every pass counts as settled
    X, _ = blobs(1500)
    for in_memory, expected in ((True, [False, True]), (False, [True])):
        asked.clear()
        rows = ChunkedRows(as_dask(X, 300))
        rows.in_memory = in_memory
        steps = initial_params(rows, "kmeans", 4, "tied", 1e-6, np.finfo(float).eps, False,
                               np.random.RandomState(0))
        (params,) = run_together(rows, [steps], isolate=())
        assert asked == expected and np.all(np.isfinite(params.covariances))


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_chunk_task_runner_gives_each_result_with_its_index(scheduler):
    """``run_chunk_tasks`` (what ``dask-gmm predict`` runs its chunks with) computes each
    task's own graph on its threads: tasks over the blocks of one array, with a shared
    dependency, each result handed over once with its index."""
    from dask_gmm.outputs import run_chunk_tasks

    X = da.arange(40, chunks=7).reshape(40, 1) * 1.0
    offset = dask.delayed(lambda: 100.0)()
    tasks = [dask.delayed(lambda block, o: float(block.sum()) + o, pure=False)(b, offset)
             for b in X.to_delayed().ravel()]
    results = {}

    def on_done(i, value):
        assert i not in results
        results[i] = value

    with dask.config.set(scheduler=scheduler):
        run_chunk_tasks(tasks, on_done, window=2)
    expected = [float(np.arange(40)[s:s + 7].sum()) + 100.0 for s in range(0, 40, 7)]
    assert [results[i] for i in range(len(tasks))] == expected
