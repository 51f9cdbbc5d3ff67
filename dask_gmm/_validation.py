"""Input checks at the public edge: arrays, sample weights, initial parameters.

Everything here raises before any pass over the data starts. Messages follow
scikit-learn's wording where scikit-learn has one, so users who swap the import
see what they know.
"""

from __future__ import annotations

import math
import os
from numbers import Integral, Real

import dask.array as da
import numpy as np
import scipy.sparse as sp
from sklearn.utils.validation import check_array, validate_data

from ._xarray import from_xarray, xarray_kind
from .io import TARGET_CHUNK_BYTES, check_dtype, open_array

MIN_CHUNK_ROWS = 4096
# Mean sample weights within 2**-10 .. 2**10 are used as given.
WEIGHT_EXPONENT_RANGE = 10


def _is_lazy_store(X):
    """zarr arrays, h5py datasets and other chunked on-disk arrays.

    They are wrapped lazily with ``dask.array.from_array`` and never loaded
    whole: anything with ``shape``, ``dtype``, ``chunks`` and slicing that is
    neither numpy nor dask qualifies.
    """
    if isinstance(X, (np.ndarray, da.Array)) or sp.issparse(X):
        return False
    module = type(X).__module__.split(".")[0]
    looks_chunked = all(hasattr(X, a) for a in ("shape", "dtype", "chunks", "__getitem__"))
    return looks_chunked or (module in ("zarr", "h5py") and hasattr(X, "shape"))


def is_dask_collection(X):
    return isinstance(X, da.Array)


def numpy_row_chunks(n_samples, n_features, itemsize):
    """Row chunk size for in-memory data: one chunk per core, at most TARGET_CHUNK_BYTES.

    Each chunk task has a fixed cost in Python (under the GIL) and in the
    scheduler; on 16 cores, 1,000,000 x 16 rows in 16 chunks ran an EM
    iteration in half the time of 64 chunks (benchmarks/RESULTS.md).
    """
    cores = os.cpu_count() or 1
    by_cores = math.ceil(n_samples / cores)
    by_bytes = max(1, TARGET_CHUNK_BYTES // max(1, n_features * itemsize))
    return int(max(MIN_CHUNK_ROWS, min(by_cores, by_bytes)))


def check_dask_array(X, estimator_name, ensure_min_samples=1, allow_nd=False):
    """Validate a dask array without reading it.

    Parameters
    ----------
    X : dask.array.Array of shape (n_samples, n_features), or (..., n_features)
        when ``allow_nd`` (sample dims first, features last).
    estimator_name : str
        For messages.
    ensure_min_samples : int
    allow_nd : bool
        Take more than one sample dim (xarray cubes).

    Returns
    -------
    dask.array.Array
        float32 or float64, unchanged when it already was. Features may span
        several chunks: each block's task joins them.
    """
    meta = da.utils.meta_from_array(X)
    if sp.issparse(meta) or type(meta).__module__.startswith("sparse"):
        raise TypeError(
            "Sparse data was passed for X, but dense data is required. Use "
            "X.map_blocks(lambda b: b.toarray()) to convert the chunks to dense "
            "numpy arrays."
        )
    if X.ndim != 2 and not (allow_nd and X.ndim > 2):
        raise ValueError(
            f"Expected 2D array, got {X.ndim}D array instead with shape {X.shape}. "
            "Reshape your data either using array.reshape(-1, 1) if your data has "
            "a single feature or array.reshape(1, -1) if it contains a single sample."
            + (" For N-D data, pass an xarray.DataArray and name its feature dim "
               "(fit(X, feature_dim=...))." if X.ndim > 2 else "")
        )
    check_dtype(X.dtype)
    if any(math.isnan(c) for chunks in X.chunks for c in chunks):
        raise ValueError(
            "X has unknown chunk sizes. Call X.compute_chunk_sizes() first."
        )
    n_samples, n_features = math.prod(X.shape[:-1]), X.shape[-1]
    if n_samples < ensure_min_samples:
        raise ValueError(
            f"Found array with {n_samples} sample(s) (shape={X.shape}) while a "
            f"minimum of {ensure_min_samples} is required by {estimator_name}."
        )
    if n_features < 1:
        raise ValueError(
            f"Found array with 0 feature(s) (shape={X.shape}) while a minimum of 1 "
            f"is required by {estimator_name}."
        )
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    return X


def check_X(estimator, X, reset, ensure_min_samples=1, feature_dim=None):
    """Validate ``X`` for fit (``reset=True``) or for prediction.

    numpy-like input goes through scikit-learn's ``validate_data`` and stays
    numpy; dask arrays, zarr arrays and h5py datasets become validated dask
    arrays; xarray objects become their values with the sample dims first and
    the features last (see ``_xarray``). NaN is accepted when the estimator's
    ``nan_policy`` is ``'omit'``. Sets ``n_features_in_`` and ``feature_dim_``
    (and ``feature_names_in_`` from xarray feature labels) when ``reset``.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features) or dask.array.Array of shape \
            (..., n_features)
    lazy : bool
        True when ``X`` is a dask array.
    layout : SampleLayout or None
        For xarray input: the sample dims and coordinates outputs go back to.
    """
    layout = None
    if xarray_kind(X) is not None:
        fitted_dim = None if reset else getattr(estimator, "feature_dim_", None)
        X, layout = from_xarray(
            X, feature_dim, fitted_dim=fitted_dim,
            fitted_names=getattr(estimator, "feature_names_in_", None) if fitted_dim
            else None,
        )
    elif feature_dim is not None:
        raise ValueError(
            f"feature_dim={feature_dim!r} names a dim of an xarray input, but X is a "
            f"{type(X).__name__}."
        )
    if _is_lazy_store(X):
        X = open_array(X)
    omit = getattr(estimator, "nan_policy", "raise") in ("omit", "marginalize")
    if not is_dask_collection(X):
        if layout is not None:
            X = np.asarray(X)
            X = X.reshape(-1, X.shape[-1]) if X.ndim > 1 else X
        X = validate_data(
            estimator,
            X,
            dtype=[np.float64, np.float32],
            ensure_min_samples=ensure_min_samples,
            ensure_all_finite="allow-nan" if omit else True,
            reset=reset,
        )
        _check_xarray_names(estimator, layout, reset)
        return X, False, layout
    X = check_dask_array(X, type(estimator).__name__, ensure_min_samples,
                         allow_nd=layout is not None)
    n_features = X.shape[-1]
    if reset:
        estimator.n_features_in_ = n_features
        if hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_
    elif n_features != estimator.n_features_in_:
        raise ValueError(
            f"X has {n_features} features, but {type(estimator).__name__} is "
            f"expecting {estimator.n_features_in_} features as input."
        )
    _check_xarray_names(estimator, layout, reset)
    return X, True, layout


def _check_xarray_names(estimator, layout, reset):
    """``feature_dim_``/``feature_names_in_`` from xarray input (fit), or checked (predict)."""
    if reset:
        estimator.feature_dim_ = None if layout is None else layout.feature_dim
        if layout is not None and layout.feature_names is not None:
            estimator.feature_names_in_ = layout.feature_names
        return
    fitted = getattr(estimator, "feature_names_in_", None)
    if layout is None or layout.feature_names is None or fitted is None:
        return
    if list(layout.feature_names) != list(fitted):
        raise ValueError(
            "The feature names should match those that were passed during fit.\n"
            f"Fitted on: {list(fitted)}\nX has: {list(layout.feature_names)}"
        )


def check_sample_weight(sample_weight, X, lazy, layout=None):
    """Validate per-row weights: one per sample, finite and non-negative.

    Weights may also come shaped like the samples of an N-D input (or as a
    DataArray over its sample dims); they come back flat, in C order, except a
    dask array on the grid of a dask input, which stays on it.

    Weights whose mean is below 2**-10 or above 2**10 come back scaled by a power
    of two to a mean near 1 (the fit does not depend on their scale).

    Returns
    -------
    ndarray, dask.array.Array or None
    """
    if sample_weight is None:
        return None
    if xarray_kind(sample_weight) == "DataArray":
        dims = layout.dims if layout is not None else sample_weight.dims
        sample_weight = sample_weight.transpose(*dims).data
    n_samples = math.prod(X.shape[:-1])
    sample_shape = X.shape[:-1] if lazy else (layout.shape if layout else (n_samples,))
    gridded = (getattr(sample_weight, "ndim", 1) > 1
               and tuple(sample_weight.shape) == tuple(sample_shape))
    if gridded and not (lazy and is_dask_collection(sample_weight)):
        sample_weight = np.reshape(sample_weight, -1)
        gridded = False
    if is_dask_collection(sample_weight):
        if not gridded and (sample_weight.ndim != 1 or sample_weight.shape[0] != n_samples):
            raise ValueError(
                f"sample_weight.shape == {sample_weight.shape}, expected "
                f"({n_samples},)!"
            )
        check_dtype(sample_weight.dtype, "sample_weight")
        low, total, finite = da.compute(
            sample_weight.min(), sample_weight.sum(), da.isfinite(sample_weight).all()
        )
    else:
        if np.isscalar(sample_weight):
            sample_weight = np.full(n_samples, sample_weight, dtype=np.float64)
        sample_weight = check_array(
            sample_weight,
            ensure_2d=False,
            dtype=np.float64,
            ensure_all_finite=False,
            input_name="sample_weight",
        )
        if sample_weight.ndim != 1 or sample_weight.shape[0] != n_samples:
            raise ValueError(
                f"sample_weight.shape == {sample_weight.shape}, expected "
                f"({n_samples},)!"
            )
        low, total = sample_weight.min(), sample_weight.sum()
        finite = np.isfinite(sample_weight).all()
    if not finite:
        raise ValueError("sample_weight contains NaN or infinity.")
    if low < 0:
        raise ValueError("Negative values in data passed to sample_weight.")
    if total <= 0:
        raise ValueError("Sample weights must contain at least one non-zero number.")
    if not np.isfinite(total):
        raise ValueError("sample_weight sums to infinity; scale the weights down.")
    # Scaling every weight by the same factor must not change the fit, but the
    # M-step adds 10 * eps to each component's mass as scikit-learn does: weights
    # far from 1 (1e-20, 1e20) would let that term move the means. Rescale such
    # weights by a power of two (exact in floating point) to a mean near 1; weights
    # of ordinary size (integer copies among them) are left as they are.
    mean_exponent = math.log2(float(total) / n_samples)
    exponent = -round(mean_exponent) if abs(mean_exponent) > WEIGHT_EXPONENT_RANGE else 0
    if exponent:
        sample_weight = sample_weight * np.float64(2.0) ** exponent
    if lazy and not is_dask_collection(sample_weight):
        sample_weight = da.from_array(sample_weight, chunks=(X.chunks[0],)
                                      if X.ndim == 2 else "auto")
    return sample_weight


def check_kept_rows(n_kept, n_components, n_samples, where=""):
    """Refuse a fit that ``nan_policy='omit'`` leaves too few samples for.

    Parameters
    ----------
    n_kept : int
        Samples without NaN (in the data, or in a sample of it: see ``where``).
    n_components, n_samples : int
    where : str
        How ``n_kept`` was counted when not over the whole data.
    """
    if n_kept == 0:
        raise ValueError(
            f"Every sample of X{where} holds NaN: with nan_policy='omit' there is "
            "nothing left to fit."
        )
    if n_kept < n_components:
        raise ValueError(
            f"Expected n_samples >= n_components but got n_components = {n_components}, "
            f"n_samples = {n_kept}: only {n_kept} of {n_samples} samples{where} are "
            "free of NaN (nan_policy='omit' fits on those alone; 'marginalize' starts "
            "from them)."
        )


# ---------------------------------------------------------------------------
# User-given initial parameters, checked as scikit-learn checks them.


def _check_shape(param, shape, name):
    if param.shape != shape:
        raise ValueError(
            f"The parameter '{name}' should have the shape of {shape}, but got "
            f"{param.shape}"
        )


def check_weights(weights, n_components):
    weights = check_array(weights, dtype=[np.float64, np.float32], ensure_2d=False)
    _check_shape(weights, (n_components,), "weights")
    if np.any(weights < 0.0) or np.any(weights > 1.0):
        raise ValueError(
            "The parameter 'weights' should be in the range [0, 1], but got max "
            f"value {np.max(weights):.5f}, min value {np.min(weights):.5f}"
        )
    atol = 1e-6 if weights.dtype == np.float32 else 1e-8
    if not np.allclose(np.abs(1.0 - np.sum(weights)), 0.0, atol=atol):
        raise ValueError(
            "The parameter 'weights' should be normalized, but got sum(weights) = "
            f"{np.sum(weights):.5f}"
        )
    return weights


def check_means(means, n_components, n_features):
    means = check_array(means, dtype=[np.float64, np.float32], ensure_2d=False)
    _check_shape(means, (n_components, n_features), "means")
    return means


def _check_precision_matrix(precision, covariance_type):
    if not (
        np.allclose(precision, precision.T) and np.all(np.linalg.eigvalsh(precision) > 0)
    ):
        raise ValueError(
            f"'{covariance_type} precision' should be symmetric, positive-definite"
        )


def check_precisions(precisions, covariance_type, n_components, n_features):
    precisions = check_array(
        precisions,
        dtype=[np.float64, np.float32],
        ensure_2d=False,
        allow_nd=covariance_type == "full",
    )
    shapes = {
        "full": (n_components, n_features, n_features),
        "tied": (n_features, n_features),
        "diag": (n_components, n_features),
        "spherical": (n_components,),
    }
    _check_shape(precisions, shapes[covariance_type], f"{covariance_type} precision")
    if covariance_type == "full":
        for precision in precisions:
            _check_precision_matrix(precision, covariance_type)
    elif covariance_type == "tied":
        _check_precision_matrix(precisions, covariance_type)
    elif np.any(precisions <= 0.0):
        raise ValueError(f"'{covariance_type} precision' should be positive")
    return precisions


# ---------------------------------------------------------------------------
# Constructor parameters, checked in fit with scikit-learn's messages.


class InvalidParameterError(ValueError, TypeError):
    """A constructor parameter has a wrong type or value (as in scikit-learn)."""


def check_int(name, value, low, owner):
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise InvalidParameterError(
            f"The '{name}' parameter of {owner} must be an int in the range "
            f"[{low}, inf). Got {value!r} instead."
        )


def check_real(name, value, owner):
    if isinstance(value, bool) or not isinstance(value, Real) or not value >= 0:
        raise InvalidParameterError(
            f"The '{name}' parameter of {owner} must be a float in the range "
            f"[0.0, inf). Got {value!r} instead."
        )


def check_option(name, value, options, owner):
    if not isinstance(value, str) or value not in options:
        raise InvalidParameterError(
            f"The '{name}' parameter of {owner} must be a str among "
            f"{set(options)}. Got {value!r} instead."
        )
