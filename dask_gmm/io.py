"""Data in and out: open any supported source as a row-chunked dask array, write
outputs whole or not at all.

``open_array`` accepts a zarr store path or fsspec URL (zarr v2 or v3, an array
or a group plus the array's name), an HDF5 file plus dataset path, a ``.npy``
file, or numpy/dask/zarr/h5py arrays, and returns a dask array with all
features in one chunk and rows in chunks of about 64 MiB. File-backed arrays
are opened lazily in each process that reads them, so the same array works on
dask's threads and on a distributed cluster.
"""

from __future__ import annotations

import itertools
import os

import dask.array as da
import numpy as np

# Target size of one row chunk when we chunk an array ourselves.
TARGET_CHUNK_BYTES = 64 * 2**20
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class UnreadableDataError(OSError):
    """Stored data that cannot be read as stored: a missing or damaged chunk."""
# A zarr group attribute naming the array to fit when none is named.
DATA_ATTRIBUTE = "dask_gmm:data"


def check_dtype(dtype, name="X"):
    if dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} has dtype {dtype}.")
    if dtype.kind not in "biuf":
        raise ValueError(
            f"{name} has dtype {dtype}, which is not numeric. Convert it to "
            f"numbers first, e.g. {name}.astype('float64')."
        )


def row_chunk_size(n_rows, n_features, itemsize, storage_rows=None):
    """Rows per chunk: whole storage chunks adding up to about ``TARGET_CHUNK_BYTES``."""
    target = max(1, TARGET_CHUNK_BYTES // max(1, n_features * itemsize))
    if storage_rows:
        target = max(storage_rows, (target // storage_rows) * storage_rows)
    return int(min(target, max(n_rows, 1)))


def store_row_chunks(store):
    """Row chunk size for an array-like (zarr, HDF5, numpy), honouring its storage chunks."""
    storage = getattr(store, "chunks", None)
    n_rows, n_features = store.shape
    return row_chunk_size(n_rows, n_features, store.dtype.itemsize,
                          storage[0] if storage else None)


class _LazyFile:
    """A file-backed array that opens its file on first read in each process.

    Only the path travels when the object is pickled (to a worker); the open
    handle stays in the process that opened it.
    """

    def __init__(self, path, shape, dtype, chunks):
        self.path = str(path)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.chunks = chunks
        self._handle = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def __getitem__(self, key):
        if self._handle is None:
            self._handle = self._open()
        return np.asarray(self._handle[key])


class HDF5Array(_LazyFile):
    """One dataset of an HDF5 file, opened read-only on demand."""

    def __init__(self, path, dataset):
        import h5py

        self.dataset = dataset
        with h5py.File(path, "r") as f:
            if dataset not in f:
                names = []
                f.visititems(lambda name, obj: names.append(name)
                             if isinstance(obj, h5py.Dataset) else None)
                raise ValueError(
                    f"HDF5 file '{path}' has no dataset '{dataset}'; it has: {names}"
                )
            node = f[dataset]
            if not isinstance(node, h5py.Dataset):
                raise ValueError(f"'{dataset}' in HDF5 file '{path}' is a group, not a dataset.")
            super().__init__(path, node.shape, node.dtype, node.chunks)

    def _open(self):
        import h5py

        return h5py.File(self.path, "r")[self.dataset]


class NpyArray(_LazyFile):
    """A ``.npy`` file, memory-mapped on demand."""

    def __init__(self, path):
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise ValueError(f"'{path}' is not a .npy file (it does not start with the "
                                 ".npy signature).")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as error:
            text = str(error)
            if "mmap length" in text or "cannot reshape" in text or "size" in text:
                raise UnreadableDataError(
                    f"'{path}' is a truncated .npy file: it holds fewer bytes than its "
                    "header announces.") from None
            if "pickle" in text or "Object arrays" in text or "Python objects" in text:
                raise ValueError(f"'{path}' holds Python objects, not numbers; dask-gmm "
                                 "never unpickles data.") from None
            raise ValueError(f"'{path}' is not a .npy file ({text.splitlines()[0]})") \
                from None
        except (OSError, EOFError) as error:
            raise ValueError(f"'{path}' is not a .npy file ({error}).") from None
        if not isinstance(array, np.ndarray):
            raise ValueError(f"'{path}' is not a .npy file.")
        super().__init__(path, array.shape, array.dtype, None)

    def _open(self):
        return np.load(self.path, mmap_mode="r")


def _is_url(source):
    return "://" in str(source)


def _exists(source, storage_options):
    if not _is_url(source):
        return os.path.exists(source)
    fs, path = url_filesystem(source, storage_options)
    return fs.exists(path)


def url_filesystem(source, storage_options=None):
    """``fsspec``'s filesystem and path for a URL; a missing backend names the extra.

    Raises
    ------
    ImportError
        The protocol's fsspec backend (s3fs, gcsfs, aiohttp) is not installed.
    """
    import fsspec

    try:
        return fsspec.core.url_to_fs(str(source), **(storage_options or {}))
    except ImportError as error:
        protocol = str(source).split("://", 1)[0]
        raise ImportError(
            f"Reading '{source}' needs fsspec's {protocol}:// backend ({error}). "
            "Install it with: pip install 'dask-gmm[cloud]' (s3fs, gcsfs and aiohttp)."
        ) from None


def _split_hdf5(source, dataset):
    """``'file.h5:/group/data'`` -> ``('file.h5', '/group/data')``."""
    text = str(source)
    if dataset is None and ":" in text and not _is_url(text):
        path, _, inner = text.rpartition(":")
        if path.lower().endswith(HDF5_SUFFIXES):
            return path, inner
    return text, dataset


def _looks_hdf5(path):
    """True for an HDF5 file: by its first bytes locally, by its suffix for URLs."""
    if _is_url(path):
        return str(path).lower().endswith(HDF5_SUFFIXES)
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        is_hdf5 = f.read(8) == HDF5_MAGIC
    if not is_hdf5 and str(path).lower().endswith(HDF5_SUFFIXES):
        raise ValueError(f"'{path}' is named like an HDF5 file but is not one (it does not "
                         "start with the HDF5 signature).")
    return is_hdf5


class ZarrRows:
    """A zarr array read by row slices; a chunk that cannot be decoded is named.

    Parameters
    ----------
    array : zarr.Array
    source : str
        Where it was opened from, for messages.
    """

    def __init__(self, array, source):
        self.array = array
        self.source = str(source)
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self.chunks = tuple(array.chunks)

    def __getitem__(self, key):
        try:
            return np.asarray(self.array[key])
        except Exception as error:  # codecs raise many types for damaged bytes
            rows = key[0] if isinstance(key, tuple) else key
            start = rows.start or 0 if isinstance(rows, slice) else 0
            stop = rows.stop if isinstance(rows, slice) and rows.stop is not None \
                else self.shape[0]
            raise self._name_damaged_chunk(start, stop, error) from None

    def _name_damaged_chunk(self, start, stop, error):
        """The error naming the first storage chunk in rows [start, stop) that fails."""
        rows = self.chunks[0]
        for index in range(start // rows, -(-stop // rows)):
            low, high = index * rows, min((index + 1) * rows, self.shape[0])
            try:
                self.array[low:high]
            except Exception as chunk_error:  # noqa: BLE001 - any decoding failure
                error, start, stop = chunk_error, low, high
                which = f"chunk {index}"
                break
        else:
            which = f"chunks {start // rows}-{(stop - 1) // rows}"
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        return UnreadableDataError(
            f"Could not read {which} (rows {start}-{stop - 1}) of zarr array "
            f"'{self.source}': {detail}. The stored chunk is damaged; restore or "
            "rewrite it."
        )


MISSING_CHUNKS = ("error", "nan")


def _check_stored_chunks(array, source, storage_options, missing_chunks="error"):
    """Refuse a zarr array with chunks missing from storage (zarr would read fill values).

    With ``missing_chunks='nan'`` an array whose fill value is NaN may miss
    chunks: they read as NaN, samples that ``nan_policy='omit'`` leaves out.
    """
    fill = array.metadata.fill_value if hasattr(array.metadata, "fill_value") else None
    if fill is None:
        fill = getattr(array, "fill_value", None)
    if missing_chunks == "nan" and fill is not None and np.isnan(fill):
        return
    expected = array.nchunks
    try:
        stored = array.nchunks_initialized
    except Exception:  # a store that cannot be listed: nothing to compare with
        return
    if stored >= expected:
        return
    missing = _missing_chunks(array, source, storage_options)
    rows = array.chunks[0]
    named = ", ".join(f"chunk {c[0]} (rows {c[0] * rows}-"
                      f"{min((c[0] + 1) * rows, array.shape[0]) - 1})"
                      for c in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    hint = (f" Its fill value is {fill!r}, not NaN, so they cannot count as masked "
            "samples either." if missing_chunks == "nan" else
            " If the array's fill value is NaN and missing chunks mean 'no data', fit "
            "with nan_policy='omit' (--nan-policy omit) to skip them.")
    raise UnreadableDataError(
        f"zarr array '{source}' has {expected - stored} of its {expected} chunks missing "
        f"from storage{': ' + named + more if named else ''}. zarr would read them as the "
        "fill value, i.e. made-up rows. Restore the chunk files (an array written with "
        "write_empty_chunks=False also omits chunks equal to the fill value: rewrite it "
        f"with write_empty_chunks=True).{hint}"
    )


def _missing_chunks(array, source, storage_options):
    try:
        import fsspec

        fs, root = fsspec.core.url_to_fs(str(source), **(storage_options or {}))
        base = root.rstrip("/") + ("/" + array.path if array.path else "")
        present = {os.path.relpath(p, base).replace(os.sep, "/")
                   for p in fs.find(base)}
        grid = [range(-(-n // c)) for n, c in zip(array.shape, array.chunks)]
        return [coords for coords in itertools.product(*grid)
                if array.metadata.encode_chunk_key(coords) not in present]
    except Exception:  # naming the chunks is a courtesy; the count is the error
        return []


def _open_zarr(source, dataset, storage_options, missing_chunks="error"):
    import zarr

    try:
        node = zarr.open(str(source), mode="r", storage_options=storage_options)
    except Exception as error:  # zarr raises several types for "not zarr"; it exists
        raise ValueError(
            f"'{source}' is not a zarr array or group (nor an HDF5 or .npy file)."
        ) from error
    if isinstance(node, zarr.Array):
        return _checked_zarr(node, source, storage_options, missing_chunks=missing_chunks)
    arrays = sorted(name for name, _ in node.arrays())
    if dataset is None:
        dataset = node.attrs.get(DATA_ATTRIBUTE)
    if dataset is None:
        if len(arrays) == 1:
            dataset = arrays[0]
        else:
            raise ValueError(
                f"'{source}' is a zarr group with arrays {arrays}; name the one to use "
                "with dataset=... (--dataset on the command line)."
            )
    try:
        found = node[dataset]
    except KeyError:
        found = None
    if not isinstance(found, zarr.Array):
        raise ValueError(
            f"zarr group '{source}' has no array '{dataset}'; it has: {arrays}"
        )
    return _checked_zarr(found, f"{source}/{dataset}", storage_options, source,
                         missing_chunks)


def _checked_zarr(array, name, storage_options, root=None, missing_chunks="error"):
    if array.ndim == 2 and np.dtype(array.dtype).kind in "biuf":
        _check_stored_chunks(array, root or name, storage_options, missing_chunks)
    return ZarrRows(array, name)


def open_array(source, dataset=None, chunks=None, storage_options=None,
               missing_chunks="error"):
    """Open ``source`` as a dask array chunked along the rows.

    Parameters
    ----------
    source : str, path, ndarray, dask array, zarr array or h5py dataset
        A zarr store path or fsspec URL (``s3://``, ``gs://``, ``memory://``...),
        an HDF5 file (``'file.h5'`` with ``dataset``, or ``'file.h5:/path'``), a
        ``.npy`` file, or an array.
    dataset : str, optional
        The array inside a zarr group or the dataset inside an HDF5 file. A zarr
        group that holds one array, or whose ``"dask_gmm:data"`` attribute names
        one, needs none.
    chunks : int, optional
        Rows per chunk; by default whole storage chunks adding up to about
        64 MiB.
    storage_options : dict, optional
        Passed to fsspec for URLs (credentials, endpoints).
    missing_chunks : {'error', 'nan'}, default='error'
        A zarr chunk missing from storage is an error; with ``'nan'`` it is
        accepted when the array's fill value is NaN (its rows read as NaN, which
        a fit with ``nan_policy='omit'`` skips).

    Returns
    -------
    dask.array.Array of shape (n_samples, n_features)
        Features spanning several chunks stay so (a fit joins them per row
        block; there is no rechunk pass).

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        Not an array, a group without the named array, not 2-D, not numeric.
    """
    if missing_chunks not in MISSING_CHUNKS:
        raise ValueError(f"missing_chunks must be one of {MISSING_CHUNKS}, got "
                         f"{missing_chunks!r}.")
    if isinstance(source, (str, os.PathLike)):
        source = open_store(source, dataset, storage_options, missing_chunks)
    if source.ndim != 2:
        raise ValueError(
            f"Expected a 2-D array (samples x features), got {source.ndim}-D with shape "
            f"{source.shape}."
        )
    check_dtype(np.dtype(source.dtype))
    n_features = source.shape[1]
    if isinstance(source, da.Array):
        return source if chunks is None else source.rechunk({0: chunks})
    rows = int(chunks) if chunks is not None else store_row_chunks(source)
    if isinstance(source, np.ndarray):
        return da.from_array(source, chunks=(rows, n_features))
    # zarr / h5py / lazy files: never read here; each task reads its own rows
    return da.from_array(source, chunks=(rows, n_features), lock=False, asarray=True)


def open_store(source, dataset=None, storage_options=None, missing_chunks="error"):
    """The array at path or URL ``source``, unread: zarr, HDF5 or ``.npy`` (see open_array).

    Returns
    -------
    array-like
        With ``shape``, ``dtype``, ``chunks`` (storage chunks, or None) and slicing.
    """
    path, inner = _split_hdf5(source, dataset)
    if not _exists(path, storage_options):
        raise FileNotFoundError(f"No such file or directory: '{path}'")
    if _looks_hdf5(path):
        if inner is None:
            raise ValueError(
                f"'{path}' is an HDF5 file: name the dataset with dataset=... "
                f"(--dataset), or as '{path}:/name'."
            )
        return HDF5Array(path, inner)
    if str(path).lower().endswith(".npy"):
        return NpyArray(path)
    return _open_zarr(path, inner, storage_options, missing_chunks)


def storage_row_chunks(source, dataset=None, storage_options=None):
    """Rows per storage chunk of the array at ``source`` (None when it has none).

    Only the chunk shape is read (chunks missing from storage are checked where
    the data are opened).
    """
    chunks = getattr(open_store(source, dataset, storage_options, missing_chunks="nan"),
                     "chunks", None)
    return int(chunks[0]) if chunks else None
