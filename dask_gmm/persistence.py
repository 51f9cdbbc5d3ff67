"""Models on disk without pickle: ``model.save(path)`` and ``dask_gmm.load(path)``.

Format (version 1)
------------------
A model file is a numpy ``.npz`` archive (a zip of ``.npy`` files) holding only
numeric and string arrays, so loading it never runs code: it is read with
``numpy.load(allow_pickle=False)``. Its entries:

- ``__metadata__``: a JSON document as a 0-d string array:
  ``{"format": "dask-gmm-model", "format_version": 1, "class": "GaussianMixture"
  | "GaussianMixtureSweep", "dask_gmm_version": ..., "params": {...}, "fitted":
  {...}}``. ``params`` holds the constructor parameters that are plain values;
  ``fitted`` holds the scalar fitted attributes (``converged_``, ``n_iter_``,
  ``lower_bound_``, ``lower_bounds_``, ``n_features_in_``, ...).
- ``weights_``, ``means_``, ``covariances_``, ``precisions_``,
  ``precisions_cholesky_`` (and ``feature_names_in_`` when set): the fitted arrays.
- ``param:weights_init`` etc.: constructor parameters that are arrays.
- For a sweep, ``results:<column>`` for every column of ``results_`` and
  ``best:<entry>`` for every entry of the best estimator as above.

A file is written to a temporary name beside the target and renamed into
place, so it appears whole or not at all; an existing file is replaced only
with ``overwrite=True``.
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np

from . import paths
from ._options import COVARIANCE_TYPES, MODEL_FORMAT, NAN_POLICIES, VERSION

# The classes a model file may name, registered by their modules (``@register``):
# this module builds them without importing them, so no import goes both ways.
MODEL_CLASSES = {}


def register(cls):
    """Class decorator: let model files name ``cls``."""
    MODEL_CLASSES[cls.__name__] = cls
    return cls

FORMAT = MODEL_FORMAT
FORMAT_VERSION = 1
FITTED_ARRAYS = ("weights_", "means_", "covariances_", "precisions_",
                 "precisions_cholesky_", "feature_names_in_")
FITTED_SCALARS = ("converged_", "n_iter_", "lower_bound_", "lower_bounds_",
                  "n_features_in_", "feature_dim_")
# Ours alone: not given to the scikit-learn twin of ``to_sklearn``.
OWN_NAMES = ("nan_policy", "feature_dim_")
ARRAY_PARAMS = ("weights_init", "means_init", "precisions_init", "mean_prior",
                "covariance_prior")
# What a BayesianGaussianMixture keeps besides a GaussianMixture's attributes:
# arrays (a Dirichlet process's two Beta parameter vectors stacked as one
# (2, K) array; a tied model's degrees of freedom and a spherical covariance
# prior as 0-d arrays) and scalar priors.
BAYESIAN_ARRAYS = ("weight_concentration_", "mean_precision_", "degrees_of_freedom_",
                   "mean_prior_", "covariance_prior_")
BAYESIAN_SCALARS = ("weight_concentration_prior_", "mean_precision_prior_",
                    "degrees_of_freedom_prior_")




class ModelFormatError(ValueError):
    """The file is not a dask-gmm model this version can read."""


def _plain(value):
    """JSON-ready parameter value, or None for what JSON cannot hold."""
    if isinstance(value, range):
        return list(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None  # e.g. a RandomState instance: not kept


def _gaussian_mixture_entries(model, prefix=""):
    arrays, params = {}, {}
    for name, value in model.get_params(deep=False).items():
        if name in ARRAY_PARAMS and not (name == "covariance_prior"
                                         and isinstance(value, (int, float))):
            if value is not None:
                arrays[f"{prefix}param:{name}"] = np.asarray(value)
        else:
            params[name] = _plain(value)
    fitted = {}
    bayesian = type(model).__name__ == "BayesianGaussianMixture"
    for name in FITTED_ARRAYS + (BAYESIAN_ARRAYS if bayesian else ()):
        if hasattr(model, name):
            value = getattr(model, name)
            value = np.stack(value) if isinstance(value, tuple) else np.asarray(value)
            if value.dtype == object:  # feature names: stored as fixed-width text
                value = value.astype(str)
            arrays[prefix + name] = value
    for name in FITTED_SCALARS + (BAYESIAN_SCALARS if bayesian else ()):
        if hasattr(model, name):
            fitted[name] = _plain(getattr(model, name))
    return arrays, params, fitted


def save_model(model, path, overwrite=False):
    """Write a fitted ``GaussianMixture`` or ``GaussianMixtureSweep`` to ``path``.

    Parameters
    ----------
    model : GaussianMixture or GaussianMixtureSweep
        Fitted.
    path : str or path-like
        The model file (``.npz`` is conventional but not required).
    overwrite : bool, default=False
        Replace an existing dask-gmm model file. Without it an existing file is
        an error; a file that is not a dask-gmm model is never replaced.

    Returns
    -------
    path
    """
    from sklearn.utils.validation import check_is_fitted



    check_is_fitted(model)
    path = os.fspath(path)
    if os.path.lexists(path):
        if not overwrite:
            raise FileExistsError(
                f"'{path}' exists; pass overwrite=True (--overwrite) to replace it."
            )
        if not paths.written_by_us(path, paths.MODEL):
            raise paths.OutputError(
                f"'{path}' exists and is not a dask-gmm model file; it is left alone even "
                "with overwrite=True. Remove it yourself or choose another path."
            )
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "class": type(model).__name__, "dask_gmm_version": VERSION}
    if type(model).__name__.endswith("Sweep"):
        arrays, params, fitted = {}, {}, {}
        for name, value in model.get_params(deep=False).items():
            params[name] = _plain(value)
        for column in type(model).RESULT_COLUMNS:
            values = np.asarray(model.results_[column])
            if values.dtype == object:
                values = values.astype(str)
            arrays[f"results:{column}"] = values
        best_arrays, best_params, best_fitted = _gaussian_mixture_entries(
            model.best_estimator_, prefix="best:")
        arrays.update(best_arrays)
        fitted = {"best_index_": int(model.best_index_),
                  "n_rounds_": int(model.n_rounds_),
                  "n_features_in_": int(model.n_features_in_),
                  "best_params": best_params, "best_fitted": best_fitted}
    else:
        arrays, params, fitted = _gaussian_mixture_entries(model)
    metadata["params"] = params
    metadata["fitted"] = fitted
    arrays["__metadata__"] = np.array(json.dumps(metadata))

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with paths.atomic_output(path, overwrite, paths.MODEL) as temporary:
        with open(temporary, "wb") as f:
            np.savez(f, **arrays)
    return path


HEADER_KEYS = {"format", "format_version", "class", "dask_gmm_version", "params", "fitted"}
SWEEP_FITTED = {"best_index_", "n_rounds_", "n_features_in_", "best_params", "best_fitted"}
MAX_HEADER_BYTES = 16 * 2**20
NPY_HEADER_BYTES = 4096


def _fail(path, field, problem):
    raise ModelFormatError(f"'{path}' is a damaged or forged dask-gmm model file: "
                           f"{field} {problem}.")


def _read(path):
    """The header and the zip listing; no array is read yet."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file or directory: '{path}'")
    not_ours = ModelFormatError(f"'{path}' is not a dask-gmm model file.")
    try:
        with zipfile.ZipFile(path) as archive:
            sizes = {info.filename[:-4]: info.file_size for info in archive.infolist()
                     if info.filename.endswith(".npy")}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise not_ours from None
    if sizes.get("__metadata__", MAX_HEADER_BYTES + 1) > MAX_HEADER_BYTES:
        raise not_ours
    try:
        with np.load(path, allow_pickle=False) as archive:
            metadata = json.loads(str(archive["__metadata__"]))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, TypeError,
            io.UnsupportedOperation, json.JSONDecodeError):
        raise not_ours from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise not_ours
    version = metadata.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        _fail(path, "format_version", f"is {version!r}, not a positive integer")
    if version > FORMAT_VERSION:
        raise ModelFormatError(
            f"'{path}' was written in model format version {version} by dask-gmm "
            f"{metadata.get('dask_gmm_version', '?')}; this dask-gmm reads versions up "
            f"to {FORMAT_VERSION}. Upgrade dask-gmm to load it."
        )
    unknown = set(metadata) - HEADER_KEYS
    if unknown:
        _fail(path, "the header", f"has unknown keys {sorted(unknown)}")
    for key in ("params", "fitted"):
        if not isinstance(metadata.get(key, {}), dict):
            _fail(path, key, "is not a mapping")
    return path, metadata, sizes


def _entries(path, sizes, limits):
    """Read the entries named in ``limits`` (name -> largest allowed bytes), no others."""
    entries = {}
    with np.load(path, allow_pickle=False) as archive:
        for name, limit in limits.items():
            if name not in sizes:
                continue
            if sizes[name] > limit + NPY_HEADER_BYTES:
                _fail(path, name, f"holds {sizes[name]:,} bytes where the header allows "
                      f"{limit:,}")
            try:
                entries[name] = archive[name]
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
                _fail(path, name, f"cannot be read ({error})")
    return entries


def _covariance_shape(covariance_type, n_components, n_features):
    return {"full": (n_components, n_features, n_features),
            "tied": (n_features, n_features),
            "diag": (n_components, n_features),
            "spherical": (n_components,)}[covariance_type]


def _read_gaussian_mixture(path, sizes, params, fitted, prefix="",
                           class_name="GaussianMixture"):
    """Build a (Bayesian) Gaussian mixture from the header and its arrays, checking every field."""
    model_class = MODEL_CLASSES[class_name]
    bayesian = class_name == "BayesianGaussianMixture"
    params, fitted = dict(params), dict(fitted)
    allowed = set(model_class().get_params(deep=False)) - (
        set(ARRAY_PARAMS) - {"covariance_prior"})
    if set(params) - allowed:
        _fail(path, f"{prefix}params", f"has unknown keys {sorted(set(params) - allowed)}")
    scalars = set(FITTED_SCALARS) | (set(BAYESIAN_SCALARS) if bayesian else set())
    if set(fitted) - scalars:
        _fail(path, f"{prefix}fitted", f"has unknown keys {sorted(set(fitted) - scalars)}")
    k, d = params.get("n_components"), fitted.get("n_features_in_")
    cov_type = params.get("covariance_type")
    for name, value in (("n_components", k), ("n_features_in_", d)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**24:
            _fail(path, name, f"is {value!r}, not a positive integer")
    if cov_type not in COVARIANCE_TYPES:
        _fail(path, "covariance_type", f"is {cov_type!r}")
    if k * d * (d if cov_type in ("full", "tied") else 1) > 2**31:
        _fail(path, "n_components x n_features", "is too large")
    cov_shape = _covariance_shape(cov_type, k, d)
    shapes = {"weights_": (k,), "means_": (k, d), "covariances_": cov_shape,
              "precisions_": cov_shape, "precisions_cholesky_": cov_shape,
              "feature_names_in_": (d,), "param:weights_init": (k,),
              "param:means_init": (k, d), "param:precisions_init": cov_shape}
    if bayesian:
        prior_shape = _covariance_shape(cov_type, 1, d)[1:]
        dirichlet_process = params.get("weight_concentration_prior_type",
                                       "dirichlet_process") == "dirichlet_process"
        shapes.update({"weight_concentration_": (2, k) if dirichlet_process else (k,),
                       "mean_precision_": (k,), "mean_prior_": (d,),
                       "degrees_of_freedom_": () if cov_type == "tied" else (k,),
                       "covariance_prior_": prior_shape, "param:mean_prior": (d,),
                       "param:covariance_prior": prior_shape})
    limits = {prefix + name: int(np.prod(shape)) * (8 if name != "feature_names_in_"
                                                     else 4 * 1024)
              for name, shape in shapes.items()}
    entries = _entries(path, sizes, limits)
    values = {name: entries.get(prefix + name) for name in shapes}
    required = ("weights_", "means_", "covariances_", "precisions_",
                "precisions_cholesky_") + (BAYESIAN_ARRAYS if bayesian else ())
    for name in required:
        if values[name] is None:
            _fail(path, name, "is missing")
    for name, value in values.items():
        if value is None:
            continue
        if value.shape != shapes[name]:
            _fail(path, name, f"has shape {value.shape}, expected {shapes[name]} for "
                  f"{k} {cov_type} components of {d} features")
        if name == "feature_names_in_":
            if value.dtype.kind != "U":
                _fail(path, name, "is not text")
            continue
        if value.dtype.kind != "f" or not np.isfinite(value).all():
            _fail(path, name, "is not all finite numbers")
    weights = values["weights_"]
    atol = 1e-5 if weights.dtype == np.float32 else 1e-8
    if (weights <= 0).any() or abs(float(weights.sum(dtype=np.float64)) - 1) > atol:
        _fail(path, "weights_", "are not positive numbers summing to 1")
    chol = values["precisions_cholesky_"]
    diagonal = {"full": lambda c: np.diagonal(c, axis1=1, axis2=2),
                "tied": np.diagonal}.get(cov_type, lambda c: c)(chol)
    if (diagonal <= 0).any():
        _fail(path, "precisions_cholesky_", "has a diagonal that is not positive")
    for name in ("n_iter_",):
        if name in fitted and (isinstance(fitted[name], bool)
                               or not isinstance(fitted[name], int) or fitted[name] < 0):
            _fail(path, name, f"is {fitted[name]!r}")
    if params.get("nan_policy", "raise") not in NAN_POLICIES:
        _fail(path, "nan_policy", f"is {params['nan_policy']!r}")
    dim = fitted.get("feature_dim_")
    if dim is not None and not (isinstance(dim, str) and len(dim) <= 1024):
        _fail(path, "feature_dim_", f"is {dim!r}, not a dim name")
    if "lower_bounds_" in fitted and not isinstance(fitted["lower_bounds_"], list):
        _fail(path, "lower_bounds_", "is not a list")

    for name in ARRAY_PARAMS:
        if f"param:{name}" in shapes and values.get(f"param:{name}") is not None:
            params[name] = values[f"param:{name}"]
    model = model_class(**params)
    for name in FITTED_ARRAYS + (BAYESIAN_ARRAYS if bayesian else ()):
        value = values[name]
        if value is None:
            continue
        if value.dtype.kind == "U":
            value = value.astype(object)
        elif name == "weight_concentration_" and value.ndim == 2:
            value = (value[0], value[1])
        elif value.ndim == 0:
            value = value.dtype.type(value)
        setattr(model, name, value)
    for name, value in fitted.items():
        setattr(model, name, value)
    return model


def load(path):
    """Read a model written by ``save``; safe on files from anyone.

    Nothing is unpickled, only the entries the format names are read, each after
    its size was checked against the header, and every field is checked
    (shapes, finite values, weights summing to 1, positive Cholesky diagonals).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    GaussianMixture or GaussianMixtureSweep

    Raises
    ------
    FileNotFoundError
    ModelFormatError
        Not a dask-gmm model, written in a newer format version, or a field
        that does not hold what the format says (named in the message).
    """
    path, metadata, sizes = _read(path)
    params, fitted = metadata.get("params", {}), metadata.get("fitted", {})
    try:
        if metadata.get("class") in ("GaussianMixture", "BayesianGaussianMixture"):
            return _read_gaussian_mixture(path, sizes, params, fitted,
                                          class_name=metadata["class"])
        if metadata.get("class") in ("GaussianMixtureSweep", "BayesianGaussianMixtureSweep"):
            return _read_sweep(path, sizes, params, fitted, MODEL_CLASSES[metadata["class"]])
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, ModelFormatError):
            raise
        raise ModelFormatError(f"'{path}' is a damaged dask-gmm model file: {error}") \
            from None
    raise ModelFormatError(f"'{path}' holds an unknown model class {metadata.get('class')!r}.")


def _read_sweep(path, sizes, params, fitted, sweep_class):
    allowed = set(sweep_class().get_params(deep=False))
    if set(params) - allowed:
        _fail(path, "params", f"has unknown keys {sorted(set(params) - allowed)}")
    if set(fitted) - SWEEP_FITTED:
        _fail(path, "fitted", f"has unknown keys {sorted(set(fitted) - SWEEP_FITTED)}")
    n = sizes.get("results:n_components", 0) // 8
    if n > 1_000_000:
        _fail(path, "results", "is too large")
    columns = sweep_class.RESULT_COLUMNS + ("fit_time",)  # fit_time: before n_passes
    limits = {f"results:{c}": max(n, 1) * (4096 if c in ("error", "covariance_type")
                                           else 8) for c in columns}
    entries = _entries(path, sizes, limits)
    if "results:fit_time" in entries and "results:finish_time" not in entries:
        entries["results:finish_time"] = entries.pop("results:fit_time")
        entries["results:n_passes"] = np.full(len(entries["results:finish_time"]), -1)
    results = {c: entries[f"results:{c}"] for c in sweep_class.RESULT_COLUMNS}
    n = len(results["n_components"])
    if any(v.shape != (n,) for v in results.values()):
        _fail(path, "results", "columns differ in length")
    results["covariance_type"] = results["covariance_type"].astype(object)
    results["error"] = results["error"].astype(object)
    results["params"] = [
        {"n_components": int(k), "covariance_type": str(c)}
        for k, c in zip(results["n_components"], results["covariance_type"])
    ]
    bayesian = "weight_concentration_prior" in results
    if bayesian:
        for row, prior in zip(results["params"], results["weight_concentration_prior"]):
            row["weight_concentration_prior"] = None if np.isnan(prior) else float(prior)
    best = fitted["best_index_"]
    if isinstance(best, bool) or not isinstance(best, int) or not 0 <= best < n:
        _fail(path, "best_index_", f"is {best!r}, not a row of the {n} results")
    sweep = sweep_class(**params)
    sweep.results_ = results
    sweep.best_index_ = best
    sweep.n_rounds_ = fitted["n_rounds_"]
    sweep.n_features_in_ = fitted["n_features_in_"]
    sweep.best_params_ = dict(results["params"][best])
    estimator = _read_gaussian_mixture(
        path, sizes, fitted["best_params"], fitted["best_fitted"], prefix="best:",
        class_name="BayesianGaussianMixture" if bayesian else "GaussianMixture")
    if (estimator.n_components, estimator.covariance_type) != (
            sweep.best_params_["n_components"], sweep.best_params_["covariance_type"]):
        _fail(path, "best_index_", "does not point at the best model's row of results")
    sweep.best_estimator_ = estimator
    return sweep


def to_sklearn(model):
    """An equivalent fitted scikit-learn ``GaussianMixture`` or ``BayesianGaussianMixture``."""
    from sklearn import mixture
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model)
    params = model.get_params(deep=False)
    if not isinstance(params.get("random_state"), (int, type(None))):
        params["random_state"] = None
    for name in OWN_NAMES:
        params.pop(name, None)
    twin = getattr(mixture, type(model).__name__)(**params)
    for name in FITTED_ARRAYS + FITTED_SCALARS + BAYESIAN_ARRAYS + BAYESIAN_SCALARS:
        if hasattr(model, name) and name not in OWN_NAMES:
            setattr(twin, name, getattr(model, name))
    return twin
