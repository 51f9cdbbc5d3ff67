"""Reading storage once when the data fit in memory, every pass when they do not (``_memory``)."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

from dask_gmm import GaussianMixture, GaussianMixtureSweep, _memory, open_array
from dask_gmm._base import prepare_rows
from dask_gmm._validation import check_X

from .helpers import blobs, count_computes

ROWS, D, CHUNK = 4000, 3, 400


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    X, _ = blobs(ROWS, n_features=D, centers=3, seed=2)
    path = tmp_path_factory.mktemp("memory") / "x.zarr"
    array = zarr.create_array(store=str(path), shape=X.shape, chunks=(CHUNK, D), dtype="f8")
    array[:] = X
    return path, X


def _rows(X):
    model = GaussianMixture(2)
    X, lazy, layout = check_X(model, X, reset=True)
    return prepare_rows(X, lazy, None, layout)


@pytest.mark.parametrize(("value", "expected"), [
    ("auto", "auto"), ("always", True), ("never", False), (True, True), (False, False),
    ("false", False), ("True", True),
])
def test_the_config_key_takes_auto_always_never_and_booleans(value, expected):
    with dask.config.set({"dask_gmm.persist": value}):
        assert _memory.persist_setting() == expected


def test_a_bad_config_value_is_refused_before_any_read(stored):
    with dask.config.set({"dask_gmm.persist": "sometimes"}), count_computes() as calls, \
            pytest.raises(ValueError, match="'dask_gmm.persist' must be 'auto'"):
        GaussianMixture(2).fit(open_array(stored[0]))
    assert calls == []


def test_data_already_in_memory_are_never_copied(stored):
    _, X = stored
    assert _memory.plan_reads(_rows(X), None).in_memory  # numpy
    assert _memory.plan_reads(_rows(da.from_array(X, chunks=(CHUNK, D))), None).in_memory
    persisted = open_array(stored[0]).persist()
    assert _memory.plan_reads(_rows(persisted), None, setting=True).in_memory
    fitted = GaussianMixture(2, random_state=0).fit(X)
    assert not fitted.persisted_ and fitted.bytes_read_ == 0 and fitted.n_passes_ > 2


def test_auto_persists_what_fits_and_streams_what_does_not(stored, monkeypatch):
    rows = _rows(open_array(stored[0]))
    assert rows.nbytes == ROWS * D * 8
    plan = _memory.plan_reads(rows, None)
    assert plan.persist and not plan.in_memory
    monkeypatch.setattr(_memory, "free_memory", lambda client: 2 * rows.nbytes - 1)
    plan = _memory.plan_reads(rows, None)
    assert not plan.persist and "more than 50%" in plan.reason
    assert _memory.plan_reads(rows, None, setting=True).persist
    monkeypatch.setattr(_memory, "free_memory", lambda client: None)
    assert not _memory.plan_reads(rows, None).persist


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_a_persisted_fit_reads_once_and_equals_a_streamed_one(stored, covariance_type):
    def fit(setting):
        with dask.config.set({"dask_gmm.persist": setting}):
            return GaussianMixture(3, covariance_type=covariance_type, random_state=0,
                                   n_init=2).fit(open_array(stored[0]))

    kept, streamed = fit("always"), fit("never")
    np.testing.assert_array_equal(kept.means_, streamed.means_)
    np.testing.assert_array_equal(kept.covariances_, streamed.covariances_)
    assert kept.persisted_ and not streamed.persisted_
    assert kept.n_passes_ == streamed.n_passes_ > 2 * 2
    assert kept.bytes_read_ == ROWS * D * 8
    assert streamed.bytes_read_ == streamed.n_passes_ * ROWS * D * 8


def test_a_sweep_reads_its_data_once(stored):
    sweep = GaussianMixtureSweep([2, 3], ["full", "spherical"], random_state=0).fit(
        open_array(stored[0]))
    assert sweep.persisted_ and sweep.bytes_read_ == ROWS * D * 8
    assert sweep.n_passes_ == sweep.n_rounds_


def test_persisted_blocks_are_dropped_when_the_fit_ends(stored, monkeypatch):
    seen = []
    real = _memory.rows_for_fit

    def watched(data, client=None):
        with real(data, client) as rows:
            seen.append(rows)
            yield rows

    monkeypatch.setattr(_memory, "rows_for_fit", _memory.contextlib.contextmanager(watched))
    import dask_gmm._base as base

    monkeypatch.setattr(base, "rows_for_fit", _memory.rows_for_fit)
    X = open_array(stored[0])
    poisoned = da.where(da.arange(ROWS)[:, None] == ROWS - 5, np.nan, X)
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixture(2).fit(poisoned)
    GaussianMixture(2).fit(X)
    assert len(seen) == 2 and all(rows.persisted for rows in seen)
    assert all(rows.array is None and rows.block_keys == [] for rows in seen)
