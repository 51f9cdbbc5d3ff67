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

FORMAT = "dask-gmm-model"
FORMAT_VERSION = 1
FITTED_ARRAYS = ("weights_", "means_", "covariances_", "precisions_",
                 "precisions_cholesky_", "feature_names_in_")
FITTED_SCALARS = ("converged_", "n_iter_", "lower_bound_", "lower_bounds_",
                  "n_features_in_")
ARRAY_PARAMS = ("weights_init", "means_init", "precisions_init")
RESULT_COLUMNS = ("n_components", "covariance_type", "bic", "aic", "lower_bound",
                  "n_iter", "converged", "fit_time", "error")


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
        if name in ARRAY_PARAMS:
            if value is not None:
                arrays[f"{prefix}param:{name}"] = np.asarray(value)
        else:
            params[name] = _plain(value)
    fitted = {}
    for name in FITTED_ARRAYS:
        if hasattr(model, name):
            value = np.asarray(getattr(model, name))
            if value.dtype == object:  # feature names: stored as fixed-width text
                value = value.astype(str)
            arrays[prefix + name] = value
    for name in FITTED_SCALARS:
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
        Replace an existing file. Without it an existing file is an error.

    Returns
    -------
    path
    """
    from sklearn.utils.validation import check_is_fitted

    from . import __version__
    from .sweep import GaussianMixtureSweep

    check_is_fitted(model)
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"'{path}' exists; pass overwrite=True (--overwrite) to replace it."
        )
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "class": type(model).__name__, "dask_gmm_version": __version__}
    if isinstance(model, GaussianMixtureSweep):
        arrays, params, fitted = {}, {}, {}
        for name, value in model.get_params(deep=False).items():
            params[name] = _plain(value)
        for column in RESULT_COLUMNS:
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

    write_npz_atomically(path, arrays)
    return path


def write_npz_atomically(path, arrays):
    """Write ``arrays`` as an ``.npz`` under a temporary name, then rename it to ``path``.

    A crash leaves the previous file (or none), never half of one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as f:
            np.savez(f, **arrays)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _read(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file or directory: '{path}'")
    not_ours = ModelFormatError(f"'{path}' is not a dask-gmm model file.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files") or "__metadata__" not in archive.files:
                raise not_ours
            entries = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, io.UnsupportedOperation):
        raise not_ours from None
    try:
        metadata = json.loads(str(entries.pop("__metadata__")))
    except (json.JSONDecodeError, TypeError):
        raise not_ours from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise not_ours
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFormatError(
            f"'{path}' was written in model format version {version} by dask-gmm "
            f"{metadata.get('dask_gmm_version', '?')}; this dask-gmm reads versions up "
            f"to {FORMAT_VERSION}. Upgrade dask-gmm to load it."
        )
    return metadata, entries


def _build_gaussian_mixture(params, fitted, entries, prefix=""):
    from .gaussian_mixture import GaussianMixture

    params = dict(params)
    for name in ARRAY_PARAMS:
        key = f"{prefix}param:{name}"
        params[name] = entries[key] if key in entries else None
    model = GaussianMixture(**params)
    for name in FITTED_ARRAYS:
        if prefix + name in entries:
            value = entries[prefix + name]
            setattr(model, name, value.astype(object) if value.dtype.kind == "U" else value)
    for name, value in fitted.items():
        setattr(model, name, value)
    return model


def load(path):
    """Read a model written by ``save``; safe on files from anyone (no pickle).

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
        Not a dask-gmm model, or written in a newer format version.
    """
    from .sweep import GaussianMixtureSweep

    metadata, entries = _read(path)
    params, fitted = metadata.get("params", {}), metadata.get("fitted", {})
    try:
        if metadata.get("class") == "GaussianMixture":
            return _build_gaussian_mixture(params, fitted, entries)
        if metadata.get("class") == "GaussianMixtureSweep":
            sweep = GaussianMixtureSweep(**params)
            results = {c: entries[f"results:{c}"] for c in RESULT_COLUMNS}
            results["covariance_type"] = results["covariance_type"].astype(object)
            results["error"] = results["error"].astype(object)
            results["params"] = [
                {"n_components": int(k), "covariance_type": str(c)}
                for k, c in zip(results["n_components"], results["covariance_type"])
            ]
            sweep.results_ = results
            sweep.best_index_ = fitted["best_index_"]
            sweep.n_rounds_ = fitted["n_rounds_"]
            sweep.n_features_in_ = fitted["n_features_in_"]
            sweep.best_params_ = dict(results["params"][sweep.best_index_])
            sweep.best_estimator_ = _build_gaussian_mixture(
                fitted["best_params"], fitted["best_fitted"], entries, prefix="best:")
            return sweep
    except (KeyError, TypeError) as error:
        raise ModelFormatError(f"'{path}' is a damaged dask-gmm model file: {error}") from None
    raise ModelFormatError(f"'{path}' holds an unknown model class {metadata.get('class')!r}.")


def to_sklearn(model):
    """An equivalent fitted ``sklearn.mixture.GaussianMixture`` (in-memory use)."""
    from sklearn.mixture import GaussianMixture as SklearnGaussianMixture
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model)
    params = model.get_params(deep=False)
    if not isinstance(params.get("random_state"), (int, type(None))):
        params["random_state"] = None
    twin = SklearnGaussianMixture(**params)
    for name in FITTED_ARRAYS + FITTED_SCALARS:
        if hasattr(model, name):
            setattr(twin, name, getattr(model, name))
    return twin
