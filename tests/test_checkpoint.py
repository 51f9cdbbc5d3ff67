"""Checkpoint and resume: an interrupted fit ends where an uninterrupted one does."""

import os

import numpy as np
import pytest

from dask_gmm import GaussianMixture, GaussianMixtureSweep
from dask_gmm._base import fit_estimator
from dask_gmm.checkpoint import CheckpointMismatchError

from .helpers import as_dask, blobs, count_computes


class Interrupt(Exception):
    pass


def interrupt_after(n_rounds):
    rounds = []

    def on_round(running):
        rounds.append(running)
        if len(rounds) == n_rounds:
            raise Interrupt

    return on_round


@pytest.fixture(scope="module")
def X():
    return as_dask(blobs(3000, centers=4, seed=3)[0], 400)


def make(**params):
    settings = dict(n_components=5, covariance_type="full", random_state=0, tol=1e-6,
                    n_init=2)
    settings.update(params)
    return GaussianMixture(**settings)


@pytest.mark.parametrize("stop_after", [10, 31, 60])
def test_interrupted_fit_resumes_to_the_uninterrupted_result(tmp_path, X, stop_after):
    """Stops inside the first init's EM, the second init's k-means, and its EM."""
    reference = make().fit(X)
    path = tmp_path / "fit.ckpt"
    interrupted = make()
    with pytest.raises(Interrupt):
        fit_estimator(interrupted, X, on_round=interrupt_after(stop_after), checkpoint=path)
    assert not hasattr(interrupted, "means_")  # a failed fit leaves nothing behind
    assert os.path.exists(path)
    with count_computes() as passes:
        resumed = make().fit(X, checkpoint=path)
    with count_computes() as full_passes:
        make().fit(X)
    assert len(passes) < len(full_passes)
    for name in ("weights_", "means_", "covariances_", "lower_bounds_"):
        np.testing.assert_allclose(getattr(resumed, name), getattr(reference, name),
                                   rtol=1e-12)
    assert resumed.n_iter_ == reference.n_iter_
    assert resumed.converged_ == reference.converged_
    assert sorted(os.listdir(tmp_path)) == ["fit.ckpt"]  # no temporary left


def test_finished_checkpoint_gives_the_result_without_em_passes(tmp_path, X):
    path = tmp_path / "done.ckpt"
    first = make(n_init=1).fit(X, checkpoint=path)
    with count_computes() as passes:
        again = make(n_init=1).fit(X, checkpoint=path)
    # the few rows that fingerprint the data, then one pass comparing the data's sums
    # with the checkpoint's (other data with the same edges must not get this result)
    assert len(passes) == 2
    np.testing.assert_array_equal(again.means_, first.means_)


def test_more_iterations_continue_a_checkpoint(tmp_path, X):
    path = tmp_path / "more.ckpt"
    with pytest.warns(Warning, match="did not converge"):
        make(n_init=1, max_iter=2).fit(X, checkpoint=path)
    continued = make(n_init=1, max_iter=100).fit(X, checkpoint=path)
    reference = make(n_init=1, max_iter=100).fit(X)
    np.testing.assert_allclose(continued.means_, reference.means_, rtol=1e-12)


def test_checkpoint_for_other_parameters_is_refused(tmp_path, X):
    path = tmp_path / "p.ckpt"
    make(n_init=1).fit(X, checkpoint=path)
    with pytest.raises(CheckpointMismatchError, match=r"other parameters \(differs in: "
                                                      r"n_components\)"):
        make(n_init=1, n_components=4).fit(X, checkpoint=path)


def test_checkpoint_for_other_data_is_refused(tmp_path, X):
    path = tmp_path / "d.ckpt"
    with pytest.raises(Interrupt):
        fit_estimator(make(n_init=1), X, on_round=interrupt_after(4), checkpoint=path)
    with pytest.raises(CheckpointMismatchError, match="other data"):
        make(n_init=1).fit(X[:-1], checkpoint=path)  # another shape
    changed_inside = X.compute()
    changed_inside[1500] += 1.0  # same first and last rows: caught by the pass sums
    with pytest.raises(CheckpointMismatchError, match="other data"):
        make(n_init=1).fit(as_dask(changed_inside, 400), checkpoint=path)


def test_not_a_checkpoint_file(tmp_path, X):
    path = tmp_path / "junk.ckpt"
    path.write_text("junk")
    with pytest.raises(ValueError, match="not a dask-gmm checkpoint"):
        make(n_init=1).fit(X, checkpoint=path)


def test_sweep_resumes_from_its_checkpoint_folder(tmp_path, X, monkeypatch):
    from dask_gmm import sweep as sweep_module

    def sweep():
        return GaussianMixtureSweep([2, 3, 4], ("full", "diag"), random_state=0, tol=1e-6)

    reference = sweep().fit(X)
    folder = tmp_path / "sweep"
    real = sweep_module.run_together
    stop = interrupt_after(6)

    def stop_early(data, steps, on_round=None, **kwargs):
        def counting(running):
            on_round(running)
            stop(running)

        return real(data, steps, on_round=counting, **kwargs)

    monkeypatch.setattr(sweep_module, "run_together", stop_early)
    with pytest.raises(Interrupt):
        sweep().fit(X, checkpoint=folder)
    monkeypatch.undo()
    assert len(os.listdir(folder)) == 6  # one checkpoint per candidate
    resumed = sweep().fit(X, checkpoint=folder)
    np.testing.assert_allclose(resumed.results_["bic"], reference.results_["bic"], rtol=1e-12)
    np.testing.assert_array_equal(resumed.results_["n_iter"], reference.results_["n_iter"])
