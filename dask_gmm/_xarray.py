"""xarray in and out: N-D cubes as samples x features, outputs back on the grid.

A ``DataArray`` names its feature dim (``feature_dim="band"``); every other dim
is a sample dim. A ``Dataset`` gives one feature per data variable. Either
becomes an array with the sample dims first and the features last (a lazy
transpose of the dask chunks, never a rechunk), plus a :class:`SampleLayout`
that remembers the sample dims and their coordinates, so labels,
probabilities and scores come back as ``DataArray``\\ s on the input's grid.

xarray is never imported here unless the caller passed xarray objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DATASET_FEATURE_DIM = "variable"


def xarray_kind(X):
    """``"DataArray"``, ``"Dataset"`` or None, without importing xarray."""
    if type(X).__module__.split(".")[0] != "xarray":
        return None
    return type(X).__name__


@dataclass
class SampleLayout:
    """Where xarray samples came from, to put outputs back on their grid.

    Attributes
    ----------
    dims : tuple of str
        The sample dims, in the order of the outputs' axes.
    coords : xarray.Coordinates
        Coordinates over the sample dims (the feature dim's dropped).
    feature_dim : str
    feature_names : ndarray of str or None
        The feature coordinate's labels (or the variable names), when strings.
    shape : tuple of int
        The sample shape.
    """

    dims: tuple
    coords: object
    feature_dim: str
    feature_names: np.ndarray | None
    shape: tuple

    def wrap(self, values, name, extra_dim=None):
        """``values`` (numpy or dask, sample shape first) as a DataArray on the grid."""
        import xarray as xr

        dims = self.dims + ((extra_dim,) if extra_dim else ())
        return xr.DataArray(values, dims=dims, coords=self.coords, name=name)


def _string_names(values):
    values = np.asarray(values)
    if values.ndim != 1 or not all(isinstance(v, str) for v in values.tolist()):
        return None
    return values.astype(object)


def _pick_feature_dim(X, feature_dim, fitted_dim):
    dims = tuple(X.dims)
    if feature_dim is not None:
        if feature_dim not in dims:
            raise ValueError(
                f"feature_dim={feature_dim!r} is not a dim of X; its dims are {dims}."
            )
        return feature_dim
    if fitted_dim is not None and fitted_dim in dims:
        return fitted_dim
    if fitted_dim is not None:
        raise ValueError(
            f"The model was fitted with feature_dim={fitted_dim!r}, which X (dims "
            f"{dims}) does not have. Pass feature_dim=... to name X's feature dim."
        )
    if len(dims) == 2:
        return dims[1]
    if len(dims) < 2:
        raise ValueError(
            f"The DataArray has dims {dims}: one dim must hold the features and at "
            "least one the samples."
        )
    raise ValueError(
        f"The DataArray has dims {dims}: name the one holding the features with "
        f"feature_dim=..., e.g. fit(X, feature_dim={dims[-1]!r}); every other dim "
        "is a sample dim."
    )


def from_xarray(X, feature_dim=None, fitted_dim=None, fitted_names=None):
    """A DataArray or Dataset as an array ``(*sample dims, features)`` and its layout.

    Parameters
    ----------
    X : xarray.DataArray or xarray.Dataset
    feature_dim : str or None
        The dim holding the features (a DataArray), or the name to give the
        variables' dim (a Dataset; default ``"variable"``).
    fitted_dim : str or None
        The feature dim the model was fitted with, used when ``feature_dim`` is None.
    fitted_names : ndarray or None
        The fitted feature names: a Dataset's variables are taken in this order.

    Returns
    -------
    values : ndarray or dask.array.Array of shape (*sample_shape, n_features)
    layout : SampleLayout
    """
    if xarray_kind(X) == "Dataset":
        return _from_dataset(X, feature_dim or fitted_dim or DATASET_FEATURE_DIM,
                             fitted_names)
    if xarray_kind(X) != "DataArray":
        raise TypeError(f"Expected an xarray DataArray or Dataset, got {type(X).__name__}.")
    dim = _pick_feature_dim(X, feature_dim, fitted_dim)
    sample_dims = tuple(d for d in X.dims if d != dim)
    ordered = X.transpose(*sample_dims, dim)
    names = _string_names(X[dim].values) if dim in X.coords else None
    template = X.isel({dim: 0}, drop=True)
    layout = SampleLayout(sample_dims, template.coords, dim, names,
                          tuple(ordered.shape[:-1]))
    return ordered.data, layout


def _from_dataset(X, feature_dim, fitted_names):
    variables = [str(v) for v in X.data_vars]
    if not variables:
        raise ValueError("The Dataset has no data variables to take as features.")
    if fitted_names is not None:
        missing = [v for v in fitted_names if v not in X.data_vars]
        if missing:
            raise ValueError(
                f"X has no data variable {missing[0]!r}, one the model was fitted with "
                f"(fitted on {list(fitted_names)}; X has {variables})."
            )
        variables = [str(v) for v in fitted_names]
    first = X[variables[0]]
    dims = tuple(first.dims)
    for name in variables[1:]:
        if set(X[name].dims) != set(dims):
            raise ValueError(
                f"Every data variable must lie over the same sample dims to be a "
                f"feature: {variables[0]!r} has {dims}, {name!r} has "
                f"{tuple(X[name].dims)}. Select the variables to use, e.g. "
                "X[['a', 'b']]."
            )
    columns = [X[name].transpose(*dims).data for name in variables]
    if any(hasattr(c, "dask") for c in columns):
        import dask.array as da

        values = da.stack([da.asarray(c) for c in columns], axis=-1)
    else:
        values = np.stack([np.asarray(c) for c in columns], axis=-1)
    layout = SampleLayout(dims, first.coords, feature_dim,
                          np.array(variables, dtype=object), tuple(first.shape))
    return values, layout
