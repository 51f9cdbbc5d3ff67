"""GaussianMixtureSweep: the right K, candidates equal to separate fits, one read per round."""

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr
from dask.callbacks import Callback
from sklearn.datasets import make_blobs

from dask_gmm import GaussianMixture, GaussianMixtureSweep, InvalidParameterError
from dask_gmm.sweep import plot_criterion

from .helpers import count_computes
from .test_storage import ReadCounter


@pytest.fixture(scope="module")
def stretched_blobs():
    X, _ = make_blobs(n_samples=1250, n_features=2, centers=4, cluster_std=0.6,
                      random_state=0)
    return X @ np.random.RandomState(0).normal(size=(2, 2))


@pytest.fixture(scope="module")
def fitted_sweep(stretched_blobs):
    return GaussianMixtureSweep(range(1, 7), random_state=0).fit(
        da.from_array(stretched_blobs, chunks=(300, 2)))


def test_bic_picks_four_components(fitted_sweep):
    assert fitted_sweep.best_params_["n_components"] == 4
    best = fitted_sweep.best_index_
    assert fitted_sweep.results_["bic"][best] == np.nanmin(fitted_sweep.results_["bic"])
    assert isinstance(fitted_sweep.best_estimator_, GaussianMixture)


def test_every_candidate_equals_a_separate_fit(fitted_sweep, stretched_blobs):
    results = fitted_sweep.results_
    for i, (k, covariance_type) in enumerate(zip(results["n_components"],
                                                 results["covariance_type"])):
        alone = GaussianMixture(int(k), covariance_type=covariance_type,
                                random_state=0).fit(stretched_blobs)
        np.testing.assert_allclose(results["bic"][i], alone.bic(stretched_blobs), rtol=1e-6)
        np.testing.assert_allclose(results["aic"][i], alone.aic(stretched_blobs), rtol=1e-6)
        np.testing.assert_allclose(results["lower_bound"][i], alone.lower_bound_, rtol=1e-6)
        assert results["n_iter"][i] == alone.n_iter_
        assert results["converged"][i] == alone.converged_


def test_results_make_a_dataframe_and_methods_delegate(fitted_sweep, stretched_blobs):
    table = pd.DataFrame(fitted_sweep.results_)
    assert len(table) == 24
    assert set(table.covariance_type) == {"full", "tied", "diag", "spherical"}
    assert (table.error == "").all()
    assert (table.finish_time > 0).all() and (table.n_passes >= table.n_iter).all()
    best = fitted_sweep.best_estimator_
    X = stretched_blobs
    np.testing.assert_array_equal(fitted_sweep.predict(X), best.predict(X))
    np.testing.assert_allclose(fitted_sweep.predict_proba(X), best.predict_proba(X))
    np.testing.assert_allclose(fitted_sweep.score_samples(X), best.score_samples(X))
    assert fitted_sweep.score(X) == best.score(X)
    assert fitted_sweep.bic(X) == pytest.approx(np.nanmin(table.bic), rel=1e-9)
    assert fitted_sweep.aic(X) == best.aic(X)


@pytest.mark.parametrize("n_init", [1, 3])
def test_each_chunk_is_read_once_per_round(tmp_path, stretched_blobs, n_init, streaming):
    """With n_init=3 candidates restart at different rounds: draws of rows for
    seeding then share rounds with EM passes, and still read each chunk once."""
    store = zarr.open_array(tmp_path / "x.zarr", mode="w", shape=stretched_blobs.shape,
                            chunks=(250, 2), dtype="f8")
    store[:] = stretched_blobs
    counter = ReadCounter(store)
    X = da.from_array(counter, chunks=(250, 2))
    sweep = GaussianMixtureSweep([2, 3, 4], ("full", "diag"), n_init=n_init,
                                 init_params="random_from_data", random_state=0)
    round_starts = []
    with Callback(start=lambda dsk: round_starts.append(len(counter.reads))):
        sweep.fit(X)
    assert len(round_starts) == sweep.n_rounds_
    bounds = round_starts + [len(counter.reads)]
    for begin, end in zip(bounds[:-1], bounds[1:]):
        rows_read = [key[0].start for key in counter.reads[begin:end]
                     if key[0].stop > key[0].start]
        assert len(rows_read) == len(set(rows_read)), "a chunk was read twice in a round"
    full_rounds = sum(1 for b, e in zip(bounds[:-1], bounds[1:]) if e - b >= 5)
    assert full_rounds >= sweep.n_rounds_ - n_init  # only seeding draws touch fewer
    rounds = round_starts
    # far fewer reads than fitting the six candidates one after another
    with count_computes() as separate:
        for params in sweep.results_["params"]:
            GaussianMixture(**params, n_init=n_init, init_params="random_from_data",
                            random_state=0).fit(X)
    assert len(rounds) < len(separate) / 2


def test_a_failing_candidate_does_not_fail_the_sweep(stretched_blobs):
    sweep = GaussianMixtureSweep([2, 4, 2000], ("full",), random_state=0)
    with pytest.warns(UserWarning, match="1 of 3 candidates failed"):
        sweep.fit(stretched_blobs)
    results = sweep.results_
    assert "Expected n_samples >= n_components" in results["error"][2]
    assert np.isnan(results["bic"][2]) and np.isnan(results["aic"][2])
    assert sweep.best_params_ == {"n_components": 4, "covariance_type": "full"}


def test_ill_defined_covariance_is_recorded_as_an_error():
    X = np.repeat(np.arange(6.0).reshape(3, 2), 20, axis=0)
    sweep = GaussianMixtureSweep([1, 5], ("full",), reg_covar=0, random_state=0)
    with pytest.warns(UserWarning, match="ill-defined empirical covariance"):
        sweep.fit(X + np.random.RandomState(0).normal(scale=1e-3, size=X.shape) * [1, 0])
    assert sweep.results_["error"][0] == ""
    assert "ill-defined" in sweep.results_["error"][1]


def test_every_candidate_failing_raises(stretched_blobs):
    with pytest.raises(ValueError, match="Every candidate of the sweep failed"):
        GaussianMixtureSweep([5000], ("diag",)).fit(stretched_blobs)


def test_bad_data_fails_the_whole_sweep(stretched_blobs):
    X = stretched_blobs.copy()
    X[7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixtureSweep([1, 2], ("diag",)).fit(da.from_array(X, chunks=(300, 2)))


def test_bad_grid_fails_before_reading(stretched_blobs):
    with count_computes() as calls:
        with pytest.raises(InvalidParameterError, match="'covariance_type' parameter"):
            GaussianMixtureSweep([1, 2], ("full", "round")).fit(
                da.from_array(stretched_blobs, chunks=300))
        with pytest.raises(InvalidParameterError, match="'criterion' parameter"):
            GaussianMixtureSweep(criterion="dic").fit(stretched_blobs)
        with pytest.raises(InvalidParameterError, match="'n_components' parameter"):
            GaussianMixtureSweep([0, 1]).fit(stretched_blobs)
    assert calls == []


def test_aic_criterion_and_random_state_instance(stretched_blobs):
    sweep = GaussianMixtureSweep([3, 4], "full", criterion="aic",
                                 random_state=np.random.RandomState(1)).fit(stretched_blobs)
    assert sweep.best_index_ == int(np.nanargmin(sweep.results_["aic"]))


def test_plot_writes_a_png(fitted_sweep, tmp_path):
    path = fitted_sweep.plot(tmp_path / "bic.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table_path = plot_criterion(pd.DataFrame(fitted_sweep.results_), tmp_path / "aic.png",
                                "aic")
    assert table_path.stat().st_size > 1000


def test_progress_bar(stretched_blobs, capsys):
    GaussianMixtureSweep([1, 2], "diag", progress=True, random_state=0).fit(stretched_blobs)
    err = capsys.readouterr().err
    assert "2/2" in err and "running=0" in err


@pytest.mark.parametrize("init_params", ["random", "k-means++"])
def test_candidates_equal_separate_fits_for_other_inits(stretched_blobs, init_params):
    """Requests share row blocks in a sweep; the random streams must not notice."""
    X = da.from_array(stretched_blobs, chunks=(300, 2))
    sweep = GaussianMixtureSweep([2, 4], ("full", "spherical"), init_params=init_params,
                                 random_state=1).fit(X)
    for i, params in enumerate(sweep.results_["params"]):
        alone = GaussianMixture(**params, init_params=init_params, random_state=1).fit(X)
        np.testing.assert_allclose(sweep.results_["lower_bound"][i], alone.lower_bound_,
                                   rtol=1e-10)
        assert sweep.results_["n_iter"][i] == alone.n_iter_
