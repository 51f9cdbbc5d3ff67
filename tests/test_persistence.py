"""Models on disk: exact round trips, no pickle, clear errors."""

import json
import zipfile

import numpy as np
import pytest

from dask_gmm import GaussianMixture, GaussianMixtureSweep, ModelFormatError, load

from .helpers import COVARIANCE_TYPES, blobs


@pytest.fixture(scope="module")
def X():
    return blobs(1200)[0]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_round_trip_is_exact(tmp_path, X, covariance_type):
    model = GaussianMixture(3, covariance_type=covariance_type, random_state=0,
                            means_init=X[:3]).fit(X)
    path = model.save(tmp_path / "model.npz")
    loaded = load(path)
    assert type(loaded) is GaussianMixture
    for name, value in model.get_params().items():
        np.testing.assert_array_equal(getattr(loaded, name), value)
    for name in ("weights_", "means_", "covariances_", "precisions_",
                 "precisions_cholesky_", "converged_", "n_iter_", "lower_bound_",
                 "lower_bounds_", "n_features_in_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_float32_model_keeps_its_dtype(tmp_path, X):
    model = GaussianMixture(2, random_state=0).fit(X.astype(np.float32))
    loaded = load(model.save(tmp_path / "m.npz"))
    assert loaded.means_.dtype == np.float32


def test_feature_names_survive(tmp_path, X):
    import pandas as pd

    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    model = GaussianMixture(2, random_state=0).fit(frame)
    loaded = load(model.save(tmp_path / "m.npz"))
    assert list(loaded.feature_names_in_) == ["a", "b", "c"]


def test_sweep_round_trip(tmp_path, X):
    sweep = GaussianMixtureSweep([1, 2, 3], ("full", "diag"), random_state=0).fit(X)
    loaded = load(sweep.save(tmp_path / "sweep.npz"))
    assert type(loaded) is GaussianMixtureSweep
    assert loaded.best_params_ == sweep.best_params_
    for column, values in sweep.results_.items():
        if column == "params":
            assert loaded.results_[column] == values
        else:
            np.testing.assert_array_equal(loaded.results_[column], values)
    np.testing.assert_array_equal(loaded.predict(X), sweep.predict(X))


def test_to_sklearn_predicts_the_same(X):
    model = GaussianMixture(3, covariance_type="tied", random_state=0).fit(X)
    twin = model.to_sklearn()
    from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

    assert type(twin) is SklearnGaussianMixture
    np.testing.assert_array_equal(twin.predict(X), model.predict(X))
    np.testing.assert_allclose(twin.score_samples(X), model.score_samples(X), rtol=1e-10)


def test_existing_file_is_not_overwritten_unless_asked(tmp_path, X):
    model = GaussianMixture(2, random_state=0).fit(X)
    path = tmp_path / "m.npz"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        model.save(path)
    assert path.read_bytes() == b"precious"
    # overwrite=True replaces only a model file we wrote, never the user's file
    with pytest.raises(OSError, match="not a dask-gmm model file; it is left alone"):
        model.save(path, overwrite=True)
    assert path.read_bytes() == b"precious"
    ours = tmp_path / "ours.npz"
    model.save(ours)
    GaussianMixture(3, random_state=0).fit(X).save(ours, overwrite=True)
    assert load(ours).n_components == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "ours.npz"]  # no temporary


def test_files_that_are_not_models(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(ModelFormatError, match="not a dask-gmm model file"):
        load(text)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.arange(3))
    with pytest.raises(ModelFormatError, match="not a dask-gmm model file"):
        load(other)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.npz")


def test_pickled_payloads_are_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, __metadata__=np.array([{"format": "dask-gmm-model"}], dtype=object))
    with pytest.raises(ModelFormatError):
        load(path)


def test_newer_format_version_is_refused_clearly(tmp_path, X):
    path = GaussianMixture(2, random_state=0).fit(X).save(tmp_path / "m.npz")
    with np.load(path) as archive:
        entries = {name: archive[name] for name in archive.files}
    metadata = json.loads(str(entries["__metadata__"]))
    metadata["format_version"] = 99
    entries["__metadata__"] = np.array(json.dumps(metadata))
    newer = tmp_path / "newer.npz"
    np.savez(newer, **entries)
    with pytest.raises(ModelFormatError, match="format version 99.*Upgrade dask-gmm"):
        load(newer)
    assert zipfile.is_zipfile(newer)
