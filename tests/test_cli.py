"""The dask-gmm command line, end to end through the installed entry point."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from dask_gmm import GaussianMixture, GaussianMixtureSweep, load, open_array
from dask_gmm.cli import main

ENTRY_POINT = Path(sys.executable).with_name("dask-gmm")


def dask_gmm(*args, check=True):
    """Run the installed console script; return the completed process."""
    command = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "dask_gmm"]
    result = subprocess.run(command + [str(a) for a in args], capture_output=True, text=True,
                            timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Mixture data from `dask-gmm generate`, zarr v2 and v3."""
    folder = tmp_path_factory.mktemp("cli")
    paths = {}
    for version in ("2", "3"):
        path = folder / f"data-v{version}.zarr"
        dask_gmm("generate", path, "--n-samples", 6000, "--n-features", 3,
                 "--n-components", 3, "--chunk-rows", 1000, "--seed", 1,
                 "--zarr-format", version, "--no-progress")
        paths[version] = path
    return folder, paths


def test_generate_writes_data_labels_and_truth(generated):
    _, paths = generated
    for version, path in paths.items():
        group = zarr.open_group(path, mode="r")
        assert group.metadata.zarr_format == int(version)
        assert group["X"].shape == (6000, 3) and group["X"].chunks == (1000, 3)
        assert group["labels"].shape == (6000,)
        assert group["means"].shape == (3, 3) and group["covariances"].shape == (3, 3, 3)
        assert set(np.unique(group["labels"][:])) == {0, 1, 2}


@pytest.mark.parametrize("version", ["2", "3"])
def test_fit_predict_info_on_zarr(generated, version, tmp_path):
    _, paths = generated
    model_path = tmp_path / "model.npz"
    fitted = dask_gmm("fit", paths[version], "-k", 3, "--seed", 0, "--out", model_path,
                      "--scheduler", "threads", "--no-progress")
    assert "converged: True" in fitted.stdout and f"written to {model_path}" in fitted.stdout
    labels_path = tmp_path / "labels.zarr"
    dask_gmm("predict", paths[version], "--model", model_path, "--out", labels_path,
             "--proba", "--score-samples", "--scheduler", "threads", "--no-progress")
    model = load(model_path)
    X = zarr.open_group(paths[version], mode="r")["X"][:]
    out = zarr.open_group(labels_path, mode="r")
    np.testing.assert_array_equal(out["labels"][:], model.predict(X))
    np.testing.assert_allclose(out["proba"][:], model.predict_proba(X), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out["score_samples"][:], model.score_samples(X), rtol=1e-9)
    # chunked like the input's storage, not like the (larger) dask chunks it was read in
    stored_rows = zarr.open_group(paths[version], mode="r")["X"].chunks[0]
    assert open_array(paths[version]).chunks[0][0] > stored_rows
    assert out["labels"].chunks == (stored_rows,) and out["proba"].chunks == (stored_rows, 3)
    info = dask_gmm("info", model_path)
    assert "GaussianMixture: 3 components, covariance_type='full', 3 features" in info.stdout


def test_fit_persist_option_reads_storage_once_or_every_pass(generated, tmp_path,
                                                              monkeypatch):
    _, paths = generated
    nbytes = 6000 * 3 * 8
    runs = {}
    for persist in ("auto", "never"):
        runs[persist] = dask_gmm("fit", paths["3"], "-k", 2, "--seed", 0, "--persist", persist,
                                 "--out", tmp_path / f"{persist}.npz", "--scheduler", "threads",
                                 "--no-progress").stdout
    kept = re.search(r"reads: (\d+) passes over the data, ([0-9.]+) MiB from storage "
                     r"\(kept in memory after the first read\)", runs["auto"])
    streamed = re.search(r"reads: (\d+) passes over the data, ([0-9.]+) MiB from storage$",
                         runs["never"], re.M)
    assert kept and streamed and kept.group(1) == streamed.group(1)
    assert float(kept.group(2)) == pytest.approx(nbytes / 2**20, abs=0.05)
    assert float(streamed.group(2)) == pytest.approx(int(streamed.group(1)) * nbytes / 2**20,
                                                     abs=0.05)
    bad = dask_gmm("fit", paths["3"], "-k", 2, "--persist", "sometimes", "--out",
                   tmp_path / "m.npz", check=False)
    assert bad.returncode == 2 and "'sometimes' is not one of" in bad.stderr
    # without --persist, dask's config decides (here from the environment)
    monkeypatch.setenv("DASK_DASK_GMM__PERSIST", "never")
    from_config = dask_gmm("fit", paths["3"], "-k", 2, "--seed", 0, "--out",
                           tmp_path / "config.npz", "--scheduler", "threads",
                           "--no-progress").stdout
    assert re.search(r"reads: \d+ passes over the data, [0-9.]+ MiB from storage$",
                     from_config, re.M)
    monkeypatch.setenv("DASK_DASK_GMM__PERSIST", "sometimes")
    wrong = dask_gmm("fit", paths["3"], "-k", 2, "--out", tmp_path / "wrong.npz",
                     "--scheduler", "threads", check=False)
    assert wrong.returncode == 1 and wrong.stderr.strip() == (
        "Error: dask config 'dask_gmm.persist' must be 'auto', True ('always') or False "
        "('never'); got 'sometimes'.")
    assert not (tmp_path / "wrong.npz").exists()


def test_sweep_writes_table_plot_and_model(generated, tmp_path):
    _, paths = generated
    result = dask_gmm("sweep", paths["3"], "-k", "1:4", "--covariance-type", "full,diag",
                      "--seed", 0, "--plot", tmp_path / "bic.png",
                      "--results", tmp_path / "results.csv", "--out", tmp_path / "sweep.npz",
                      "--scheduler", "threads", "--no-progress")
    assert "best by BIC: 3 components" in result.stdout
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["covariance_type"] for r in rows} == {"full", "diag"}
    assert (tmp_path / "bic.png").read_bytes()[:4] == b"\x89PNG"
    sweep = load(tmp_path / "sweep.npz")
    assert isinstance(sweep, GaussianMixtureSweep) and sweep.best_params_["n_components"] == 3
    info = dask_gmm("info", tmp_path / "sweep.npz").stdout
    assert "GaussianMixtureSweep (BIC), 8 candidates" in info


def test_fit_hdf5_input_written_by_h5py(generated, tmp_path):
    _, paths = generated
    X = zarr.open_group(paths["3"], mode="r")["X"][:]
    h5_path = tmp_path / "data.h5"
    with h5py.File(h5_path, "w") as f:
        f.create_dataset("measurements/X", data=X, chunks=(500, 3))
    model_path = tmp_path / "m.npz"
    dask_gmm("fit", h5_path, "--dataset", "measurements/X", "-k", 3, "--seed", 0,
             "--covariance-type", "diag", "--out", model_path, "--no-progress")
    reference = GaussianMixture(3, covariance_type="diag", random_state=0).fit(X)
    np.testing.assert_allclose(np.sort(load(model_path).weights_), np.sort(reference.weights_),
                               rtol=1e-6)


def test_predict_refuses_to_overwrite(generated, tmp_path):
    _, paths = generated
    model_path = tmp_path / "m.npz"
    dask_gmm("fit", paths["3"], "-k", 2, "--out", model_path, "--scheduler", "sync",
             "--no-progress")
    target = tmp_path / "labels.zarr"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = dask_gmm("predict", paths["3"], "--model", model_path, "--out", target,
                      "--scheduler", "sync", check=False)
    assert result.returncode == 1
    assert "exists; pass --overwrite" in result.stderr
    assert (target / "keep.txt").read_text() == "mine"
    # --overwrite replaces only an output that dask-gmm predict wrote, never a user's folder
    refused = dask_gmm("predict", paths["3"], "--model", model_path, "--out", target,
                       "--overwrite", "--scheduler", "sync", "--no-progress", check=False)
    assert refused.returncode == 1 and "is not a dask-gmm predictions output" in refused.stderr
    assert (target / "keep.txt").read_text() == "mine"
    ours = tmp_path / "ours.zarr"
    for _ in range(2):
        dask_gmm("predict", paths["3"], "--model", model_path, "--out", ours, "--overwrite",
                 "--scheduler", "sync", "--no-progress")
    assert zarr.open_group(ours, mode="r")["labels"].shape == (6000,)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []


def test_interrupted_predict_leaves_nothing_at_the_target(generated, tmp_path, monkeypatch):
    import dask_gmm.paths

    _, paths = generated
    model_path = tmp_path / "m.npz"
    GaussianMixture(2, random_state=0).fit(
        zarr.open_group(paths["3"], mode="r")["X"][:]).save(model_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # everything written to the temporary name, then Ctrl-C

    monkeypatch.setattr(dask_gmm.paths, "place", interrupted)
    result = CliRunner().invoke(main, ["predict", str(paths["3"]), "--model", str(model_path),
                                       "--out", str(tmp_path / "labels.zarr"),
                                       "--scheduler", "threads", "--no-progress"])
    assert result.exit_code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_expected_errors_print_one_line_and_exit_1(tmp_path):
    missing = dask_gmm("fit", tmp_path / "nope.zarr", "-k", 2, "--out", tmp_path / "m.npz",
                       check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"Error: No such file or directory: '{tmp_path / 'nope.zarr'}'"
    (tmp_path / "junk.npz").write_bytes(b"junk")
    bad_model = dask_gmm("info", tmp_path / "junk.npz", check=False)
    assert bad_model.returncode == 1
    junk = tmp_path / "junk.npz"
    assert bad_model.stderr.strip() == f"Error: '{junk}' is not a dask-gmm model file."
    assert "Traceback" not in missing.stderr + bad_model.stderr


def test_usage_errors_exit_2(generated):
    _, paths = generated
    assert dask_gmm("fit", paths["3"], check=False).returncode == 2  # no -k, no --out
    assert dask_gmm("sweep", paths["3"], "-k", "0:3", check=False).returncode == 2
    assert dask_gmm("sweep", paths["3"], "--covariance-type", "round",
                    check=False).returncode == 2
    assert dask_gmm("frobnicate", check=False).returncode == 2


def test_bad_data_is_a_runtime_error(tmp_path):
    z = zarr.open_array(tmp_path / "nan.zarr", mode="w", shape=(100, 2), dtype="f8")
    values = np.random.RandomState(0).normal(size=(100, 2))
    values[42, 1] = np.nan
    z[:] = values
    result = dask_gmm("fit", tmp_path / "nan.zarr", "-k", 2, "--out", tmp_path / "m.npz",
                      "--scheduler", "threads", check=False)
    assert result.returncode == 1
    assert "Input X contains NaN" in result.stderr and "rows [42]" in result.stderr
    assert not (tmp_path / "m.npz").exists()


def test_demo_runs_end_to_end(tmp_path):
    result = dask_gmm("demo", "--n-samples", 60000, "--out-dir", tmp_path / "demo",
                      "--no-progress")
    assert "best by BIC: 5 components" in result.stdout
    ari = float(result.stdout.split("against the truth:")[1].split()[0])
    assert ari > 0.95
    for name in ("data.zarr", "bic.png", "model.npz", "labels.zarr"):
        assert (tmp_path / "demo" / name).exists()
    assert os.path.getsize(tmp_path / "demo" / "bic.png") > 1000


def test_fit_and_sweep_checkpoints_resume(generated, tmp_path):
    _, paths = generated
    dask_gmm("fit", paths["3"], "-k", 3, "--seed", 0, "--out", tmp_path / "a.npz",
             "--checkpoint", tmp_path / "fit.ckpt", "--scheduler", "sync", "--no-progress")
    again = dask_gmm("fit", paths["3"], "-k", 3, "--seed", 0, "--out", tmp_path / "b.npz",
             "--checkpoint", tmp_path / "fit.ckpt", "--scheduler", "sync",
                     "--no-progress", "-v")
    assert "resuming from checkpoint" in again.stderr
    np.testing.assert_array_equal(load(tmp_path / "a.npz").means_,
                                  load(tmp_path / "b.npz").means_)
    other = dask_gmm("fit", paths["3"], "-k", 2, "--seed", 0, "--out", tmp_path / "c.npz",
                     "--checkpoint", tmp_path / "fit.ckpt", "--scheduler", "sync", check=False)
    assert other.returncode == 1 and "made for other parameters" in other.stderr
    dask_gmm("sweep", paths["3"], "-k", "1:2", "--covariance-type", "diag", "--seed", 0,
             "--checkpoint", tmp_path / "sweep-ckpt", "--scheduler", "sync", "--no-progress")
    assert sorted(os.listdir(tmp_path / "sweep-ckpt")) == ["diag-1.npz", "diag-2.npz"]


def test_every_subcommand_fails_with_one_line_and_a_traceback_only_with_v(generated,
                                                                           tmp_path):
    _, paths = generated
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.zarr").mkdir()  # a user's folder where the demo would write
    (tmp_path / "junk.npz").write_bytes(b"junk")
    failing = {
        "generate": ["generate", tmp_path / "mine", "--n-samples", 10, "--n-features", 2,
                     "--n-components", 1, "--overwrite"],
        "fit": ["fit", tmp_path / "missing.zarr", "-k", 2, "--out", tmp_path / "m.npz"],
        "sweep": ["sweep", paths["3"], "-k", "1:100000", "--scheduler", "threads"],
        "predict": ["predict", paths["3"], "--model", tmp_path / "junk.npz", "--out",
                    tmp_path / "l.zarr", "--scheduler", "threads"],
        "info": ["info", tmp_path / "junk.npz"],
        "demo": ["demo", "--out-dir", tmp_path / "mine", "--scheduler", "threads"],
    }
    for name, args in failing.items():
        result = dask_gmm(*args, check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, (name, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("Error: "), (name, result.stderr)
        verbose = dask_gmm(*args, "-v", check=False)
        assert verbose.returncode == 1 and "Traceback" in verbose.stderr, name
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["data.zarr"]


def test_options_a_subcommand_ignores_are_not_offered():
    for name in ("info", "generate"):
        result = dask_gmm(name, "--help")
        assert "--scheduler" not in result.stdout and "--n-workers" not in result.stdout
    assert "--progress" not in dask_gmm("info", "--help").stdout
    help_text = " ".join(dask_gmm("fit", "--help").stdout.split())
    for value in ("'local'", "'threads'", "'sync'", "tcp://host:8786"):
        assert value in help_text
    assert "--seed" in help_text and "same seed" in help_text
    assert dask_gmm("fit", "x.zarr", "-k", 2, "--out", "m.npz", "--scheduler", "thread",
                    check=False).returncode == 2


def test_predict_output_format_follows_the_suffix(generated, tmp_path):
    _, paths = generated
    model_path = tmp_path / "m.npz"
    dask_gmm("fit", paths["3"], "-k", 2, "--seed", 0, "--out", model_path, "--scheduler",
             "threads", "--no-progress")
    refused = dask_gmm("predict", paths["3"], "--model", model_path, "--out",
                       tmp_path / "labels.txt", "--scheduler", "threads", check=False)
    assert refused.returncode == 1 and "'.zarr'" in refused.stderr
    dask_gmm("predict", paths["3"], "--model", model_path, "--out", tmp_path / "s.h5",
             "--score-samples", "--scheduler", "threads", "--no-progress")
    assert (tmp_path / "s.h5").is_file()
    with h5py.File(tmp_path / "s.h5", "r") as f:
        X = zarr.open_group(paths["3"], mode="r")["X"][:]
        np.testing.assert_array_equal(f["labels"][:], load(model_path).predict(X))
        assert f["labels"].chunks == (1000,) and "score_samples" in f
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "s.h5"]


def test_xarray_cube_with_masked_pixels_fit_sweep_predict(tmp_path):
    """A (y, x, band) Zarr cube, one band per chunk, NaN over 'land': labels on its grid."""
    xr = pytest.importorskip("xarray")
    rng = np.random.RandomState(0)
    values = np.where(rng.rand(60, 80, 1) < 0.5, 0.2, 0.8) + rng.normal(0, 0.05, (60, 80, 3))
    values[:10, :20] = np.nan
    cube = xr.DataArray(values, dims=("y", "x", "band"),
                        coords={"y": np.arange(60.0), "x": np.arange(80.0) / 2,
                                "band": ["b1", "b2", "b3"]})
    data = tmp_path / "cube.zarr"
    bands = cube.to_dataset(dim="band")  # variables b1, b2, b3 over (y, x)
    xr.merge([bands, cube.rename("reflectance")]).chunk(
        {"y": 30, "x": 40, "band": 1}).to_zarr(data)
    model_path, out = tmp_path / "model.npz", tmp_path / "labels.zarr"
    fitted = dask_gmm("fit", data, "--variable", "reflectance", "--feature-dim", "band",
                      "--nan-policy", "omit", "-k", 2, "--seed", 0, "--out", model_path,
                      "--no-progress")
    assert "features: dim 'band' ['b1', 'b2', 'b3'], nan_policy='omit'" in fitted.stdout
    dask_gmm("predict", data, "--variable", "reflectance", "--model", model_path,
             "--out", out, "--proba", "--no-progress")
    written = xr.open_zarr(out)
    assert written["labels"].dims == ("y", "x")
    assert written["proba"].dims == ("y", "x", "component")
    np.testing.assert_array_equal(written["x"].values, cube.x.values)
    labels = written["labels"].values
    assert (labels[:10, :20] == -1).all()
    reference = GaussianMixture(2, random_state=0, nan_policy="omit").fit(
        cube, feature_dim="band")
    np.testing.assert_array_equal(labels, reference.predict(cube).values)
    # several variables: a Dataset whose variables are the features
    swept = dask_gmm("sweep", data, "--variable", "b1", "--variable", "b3",
                     "-k", "1:2", "--covariance-type", "diag", "--nan-policy", "omit",
                     "--seed", 0, "--no-progress")
    assert "best by BIC: 2 components" in swept.stdout
    # what a user gets wrong is named on one line
    for args, message in (
            (["--variable", "reflectance"], "name the one holding the features with "
                                            "--feature-dim"),
            (["--variable", "nope", "--feature-dim", "band"], "has no variable 'nope'"),
            (["--variable", "reflectance", "--feature-dim", "band"], "Input X contains NaN")):
        failed = dask_gmm("fit", data, *args, "-k", 2, "--out", tmp_path / "m2.npz",
                          "--no-progress", check=False)
        assert failed.returncode != 0 and message in failed.stderr, failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1


def test_missing_zarr_chunks_with_a_nan_fill_value_are_masked_under_omit(tmp_path):
    """Chunks never written (no data there) read as NaN: skipped with --nan-policy omit."""
    rng = np.random.RandomState(3)
    X = np.concatenate([rng.normal(size=(2000, 2)), rng.normal(size=(2000, 2)) + 4])
    X = X[rng.permutation(4000)]
    path = tmp_path / "holes.zarr"
    array = zarr.create_array(path, shape=X.shape, chunks=(500, 2), dtype="f8",
                              fill_value=np.nan)
    present = [0, 1, 2, 4, 5, 7]  # chunks 3 and 6 are never written
    for c in present:
        array[c * 500:(c + 1) * 500] = X[c * 500:(c + 1) * 500]
    refused = dask_gmm("fit", path, "-k", 2, "--out", tmp_path / "m.npz", "--no-progress",
                       check=False)
    assert refused.returncode == 1 and "2 of its 8 chunks missing" in refused.stderr
    assert "nan_policy='omit'" in refused.stderr
    model_path, out = tmp_path / "model.npz", tmp_path / "labels.zarr"
    dask_gmm("fit", path, "-k", 2, "--seed", 0, "--nan-policy", "omit", "--out", model_path,
             "--no-progress")
    kept = np.concatenate([X[c * 500:(c + 1) * 500] for c in present])
    reference = GaussianMixture(2, random_state=0).fit(kept)
    np.testing.assert_allclose(load(model_path).means_, reference.means_, rtol=1e-6)
    dask_gmm("predict", path, "--model", model_path, "--out", out, "--no-progress")
    labels = zarr.open_group(out, mode="r")["labels"][:]
    assert (labels[1500:2000] == -1).all() and (labels[3000:3500] == -1).all()
    np.testing.assert_array_equal(labels[:1500], reference.predict(X[:1500]))
    # the same from Python: open_array(..., missing_chunks="nan")
    opened = open_array(path, missing_chunks="nan")
    fitted = GaussianMixture(2, random_state=0, nan_policy="omit").fit(opened)
    np.testing.assert_allclose(fitted.means_, reference.means_, rtol=1e-6)


def test_missing_values_marginalised_by_fit_and_predict(tmp_path):
    """--nan-policy marginalize, plain and --bayesian: rows with holes are fitted on
    and labelled through their observed features, as the library does it."""
    from dask_gmm import BayesianGaussianMixture

    rng = np.random.RandomState(5)
    X = np.concatenate([rng.normal(size=(1500, 3)), rng.normal(size=(1500, 3)) + 5])
    X = X[rng.permutation(3000)]
    X[rng.rand(*X.shape) < 0.2] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.0
    path = tmp_path / "holes.zarr"
    zarr.create_array(path, shape=X.shape, chunks=(500, 3), dtype="f8")[:] = X
    for flags, estimator in (([], GaussianMixture),
                             (["--bayesian"], BayesianGaussianMixture)):
        model_path = tmp_path / f"model{len(flags)}.npz"
        out = tmp_path / f"labels{len(flags)}.zarr"
        dask_gmm("fit", path, *flags, "-k", 2, "--seed", 0, "--nan-policy", "marginalize",
                 "--out", model_path, "--no-progress")
        model = load(model_path)
        assert type(model) is estimator and model.nan_policy == "marginalize"
        reference = estimator(n_components=2, random_state=0,
                              nan_policy="marginalize").fit(X)
        np.testing.assert_allclose(model.means_, reference.means_, rtol=1e-6)
        dask_gmm("predict", path, "--model", model_path, "--out", out, "--no-progress")
        labels = zarr.open_group(out, mode="r")["labels"][:]
        assert (labels >= 0).all()
        np.testing.assert_array_equal(labels, reference.predict(X))


def test_bayesian_fit_sweep_and_info(generated, tmp_path):
    """--bayesian: -k is an upper bound; info and the sweep table show effective components."""
    _, paths = generated
    data = paths["3"]
    model_path = tmp_path / "bayes.npz"
    fitted = dask_gmm("fit", data, "--bayesian", "-k", 6, "--weight-concentration-prior",
                      0.001, "--seed", 0, "--out", model_path, "--no-progress")
    assert "BayesianGaussianMixture:" in fitted.stdout
    model = load(model_path)
    assert type(model).__name__ == "BayesianGaussianMixture"
    assert model.weight_concentration_prior == 0.001
    used = int(np.sum(model.weights_ >= 0.01))
    assert f"{used} effective components of 6" in dask_gmm("info", model_path).stdout
    table = tmp_path / "bayes.csv"
    swept = dask_gmm("sweep", data, "--bayesian", "-k", 5, "--covariance-type", "full,diag",
                     "--weight-concentration-prior", "0.001,10", "--seed", 0, "--results",
                     table, "--out", tmp_path / "sweep.npz", "--no-progress")
    assert "largest lower bound: prior" in swept.stdout
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["covariance_type"] for r in rows} == {"full", "diag"}
    assert all(1 <= int(r["n_effective"]) <= 5 for r in rows)
    again = dask_gmm("sweep", data, "--bayesian", "-k", 5, "--covariance-type", "diag",
                     "--weight-concentration-prior", "0.1", "--seed", 0, "--results", table,
                     "--overwrite", "--no-progress")  # our own table is replaced
    assert again.returncode == 0
    info = dask_gmm("info", tmp_path / "sweep.npz").stdout
    assert "BayesianGaussianMixtureSweep (largest lower bound), 4 candidates" in info
    refused = dask_gmm("fit", data, "--weight-concentration-prior", 0.1, "-k", 2, "--out",
                       tmp_path / "x.npz", "--no-progress", check=False)
    assert refused.returncode == 2 and "goes with --bayesian" in refused.stderr
