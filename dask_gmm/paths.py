"""Outputs that never destroy what the user owns.

Every file or folder dask-gmm writes goes through :func:`check_output` before
any work starts and :func:`place` at the end:

- The output may not be an input, hold an input, or lie inside one.
- An existing output is replaced only with ``overwrite=True`` **and** only if it
  is an output of the same kind that dask-gmm wrote (recognised by the marker
  each writer leaves: a zarr/HDF5 attribute, the model header, the CSV header,
  the PNG's ``Software`` text). Anything else is refused, whatever the flag.
- The output is written under a hidden temporary name beside the target and
  renamed into place at the end, without replacing anything that appeared at
  the target meanwhile (``renameat2(RENAME_NOREPLACE)`` where the system has
  it). A replaced output is moved aside, checked again, and only then deleted.
- If the final rename fails, the finished output is kept under its temporary
  name and the error says where.

Predictions may also go to object storage as Zarr (``s3://...``); the same
promises hold there, with a server-side copy in place of the rename (see the
last section).
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import uuid
import zipfile
from pathlib import Path

from ._options import BAYESIAN_RESULT_COLUMNS, MODEL_FORMAT

# The marker attribute of zarr groups and HDF5 files we write, and its values.
MARKER = "dask_gmm:output"
PREDICTIONS = "predictions"
GENERATED = "generated"
MODEL = "model"
TABLE = "table"
PLOT = "plot"
KINDS = (PREDICTIONS, GENERATED, MODEL, TABLE, PLOT)
PLOT_SOFTWARE = "dask-gmm"
TABLE_FIRST_COLUMN = "n_components"


class OutputError(OSError):
    """An output path that may not be written, or could not be put in place.

    ``kept`` is the temporary path holding the finished output when the final
    rename failed (the caller must not delete it), else None.
    """

    kept = None


def _kept(message, temporary):
    error = OutputError(message)
    error.kept = temporary
    return error


def is_url(path):
    return "://" in str(path)


def _real(path):
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _contains(outer, inner):
    """True when ``inner`` is ``outer`` or lies below it (real paths)."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def written_by_us(path, kind):
    """Whether ``path`` is an output of ``kind`` that dask-gmm wrote.

    Parameters
    ----------
    path : str or path-like
    kind : {'predictions', 'generated', 'model', 'table', 'plot'}

    Returns
    -------
    bool
    """
    path = os.fspath(path)
    try:
        if kind in (PREDICTIONS, GENERATED):
            if os.path.isdir(path):
                return _zarr_marker(path) == kind
            return os.path.isfile(path) and _hdf5_marker(path) == kind
        if kind == MODEL:
            return _is_model_file(path)
        if kind == TABLE:
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            return bool(header) and (header[0] == TABLE_FIRST_COLUMN and "bic" in header
                                     or tuple(header) == BAYESIAN_RESULT_COLUMNS)
        if kind == PLOT:
            with open(path, "rb") as f:
                head = f.read(4096)
            return head.startswith(b"\x89PNG") and PLOT_SOFTWARE.encode() in head
    except (OSError, ValueError, StopIteration, UnicodeDecodeError, zipfile.BadZipFile,
            KeyError):
        return False
    raise ValueError(f"unknown output kind {kind!r}")


def _zarr_marker(path):
    for name in ("zarr.json", ".zattrs"):
        meta = os.path.join(path, name)
        if os.path.isfile(meta):
            with open(meta) as f:
                document = json.load(f)
            attributes = document.get("attributes", document) if name == "zarr.json" \
                else document
            value = attributes.get(MARKER)
            if value is not None:
                return value
    return None


def _hdf5_marker(path):
    with open(path, "rb") as f:
        if f.read(8) != b"\x89HDF\r\n\x1a\n":
            return None
    import h5py

    with h5py.File(path, "r") as f:
        value = f.attrs.get(MARKER)
    return value.decode() if isinstance(value, bytes) else value


def _is_model_file(path):
    with zipfile.ZipFile(path) as archive:
        if "__metadata__.npy" not in archive.namelist():
            return False
        if archive.getinfo("__metadata__.npy").file_size > 16 * 2**20:
            return False
        raw = archive.read("__metadata__.npy")
    return f'"format": "{MODEL_FORMAT}"'.encode("utf-32-le") in raw or \
        f'"format": "{MODEL_FORMAT}"'.encode() in raw


def check_output(path, overwrite, kind, inputs=(), option="--out"):
    """Refuse, before any work, an output that would destroy something of the user's.

    Parameters
    ----------
    path : str or path-like
        The output.
    overwrite : bool
        Whether the user asked to replace an existing output.
    kind : str
        What will be written there (see :func:`written_by_us`).
    inputs : iterable of str or path-like
        Every path the run reads (data, model, checkpoint). URLs are skipped.
    option : str
        How the user named the output, for messages.

    Raises
    ------
    OutputError
        The path is an input or holds one, exists and may not be replaced, or
        its folder cannot be written.
    """
    if is_url(path):
        return check_url_output(path, overwrite, kind, inputs, option)
    target = _real(path)
    for source in inputs:
        if source is None or is_url(source):
            continue
        source = _real(source)
        if _contains(target, source) or _contains(source, target):
            raise OutputError(
                f"{option} '{path}' is or holds an input of this run ('{source}'); "
                "choose another output path."
            )
    if os.path.lexists(path):
        if not overwrite:
            raise FileExistsError(f"'{path}' exists; pass --overwrite to replace it.")
        if not written_by_us(path, kind):
            raise OutputError(
                f"'{path}' exists and is not a dask-gmm {kind} output; it is left alone "
                "even with --overwrite. Remove it yourself or choose another path."
            )
    folder = _existing_ancestor(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(folder):
        raise OutputError(f"Cannot write {option} '{path}': '{folder}' is a file, not a "
                          "folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(
            f"Cannot write {option} '{path}': folder '{folder}' is not writable."
        )


def _existing_ancestor(folder):
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def temporary_sibling(path):
    """A fresh hidden name next to ``path``, for writing before renaming into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def discard_unless_kept(temporary, error):
    """Remove ``temporary`` after ``error``, unless the error says it holds the output."""
    if getattr(error, "kept", None) != os.fspath(temporary) and os.path.lexists(temporary):
        remove(temporary)


def remove(path):
    """Delete a file or folder that we wrote (a temporary or a verified old output)."""
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_libc = None


def _renameat2():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            _libc.renameat2  # noqa: B018 - glibc >= 2.28
        except (OSError, AttributeError):
            _libc = False
    return _libc.renameat2 if _libc else None


def rename_no_replace(source, target):
    """Rename ``source`` to ``target``; fail with FileExistsError if ``target`` exists.

    Atomic where the system supports ``RENAME_NOREPLACE`` (Linux); elsewhere the
    check and the rename are two steps.
    """
    source, target = os.fspath(source), os.fspath(target)
    call = _renameat2()
    if call is not None:
        result = call(_AT_FDCWD, source.encode(), _AT_FDCWD, target.encode(),
                      _RENAME_NOREPLACE)
        if result == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST or code == errno.ENOTEMPTY:
            raise FileExistsError(f"'{target}' exists")
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), target)
    if os.path.lexists(target):
        raise FileExistsError(f"'{target}' exists")
    os.rename(source, target)


def place(temporary, path, overwrite, kind):
    """Move the finished output ``temporary`` to ``path`` (see the module docstring).

    Raises
    ------
    OutputError
        ``path`` appeared meanwhile, is not ours to replace, or the rename failed;
        the finished output stays at ``temporary`` and the message says so.
    """
    temporary, path = os.fspath(temporary), os.fspath(path)
    kept = f"the finished output is kept at '{temporary}'"
    old = None
    if overwrite and os.path.lexists(path):
        if not written_by_us(path, kind):
            raise _kept(f"'{path}' is not a dask-gmm {kind} output and was left alone; "
                    f"{kept}.", temporary)
        old = str(temporary_sibling(path)).replace(".tmp-", ".old-")
        os.rename(path, old)
        if not written_by_us(old, kind):  # replaced between the check and the rename
            rename_no_replace(old, path)
            raise _kept(f"'{path}' changed while it was being replaced and was left "
                        f"alone; {kept}.", temporary)
    try:
        rename_no_replace(temporary, path)
    except FileExistsError:
        if old is not None:
            remove(old)
        raise _kept(f"'{path}' was created by someone else while this run was writing; "
                    f"it was left alone and {kept}.", temporary) from None
    except OSError as error:
        if old is not None:
            rename_no_replace(old, path)
        raise _kept(f"Could not move the output to '{path}' ({error}); {kept}.",
                    temporary) from None
    if old is not None:
        remove(old)


@contextlib.contextmanager
def atomic_output(path, overwrite=False, kind=None, suffix=""):
    """Write an output whole or not at all: yields a temporary path beside ``path``.

    When the body ends, the temporary is put in place with :func:`place` (for an
    output of ``kind``), or, with ``kind=None``, renamed over ``path`` (only for
    state files of our own, such as checkpoints). When the body fails, the
    temporary is removed, unless the error says it holds the finished output.

    Parameters
    ----------
    path : str or path-like
    overwrite : bool
    kind : str or None
    suffix : str
        Added to the temporary name (writers that pick a format by suffix).

    Yields
    ------
    pathlib.Path
    """
    if is_url(path):
        with atomic_url_output(path, overwrite, kind) as temporary:
            yield temporary
        return
    temporary = temporary_sibling(path)
    temporary = temporary.with_name(temporary.name + suffix)
    try:
        yield temporary
        if kind is None:
            os.replace(temporary, path)
        else:
            place(temporary, path, overwrite, kind)
    except BaseException as error:
        discard_unless_kept(temporary, error)
        raise


def write_npz_atomically(path, arrays):
    """Write ``arrays`` as an ``.npz`` over our own state file ``path``, whole or not at all."""
    import numpy as np

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_output(path) as temporary, open(temporary, "wb") as f:
        np.savez(f, **arrays)


# --------------------------------------------------------------------------
# Zarr outputs on object storage (s3://, gs://, memory://...).
#
# Object stores have no rename, so the recipe above becomes: write the hidden
# sibling prefix; then remove the old output (ours, checked again), copy every
# object server-side to the target with the root metadata last (until the copy
# ends the target is no zarr group at all), and remove the sibling. If the copy
# fails, the partial target is removed and the finished output stays at the
# sibling, which the error names.

ROOT_METADATA = ("zarr.json", ".zattrs", ".zgroup", ".zarray")



def filesystem(url):
    """``(fsspec filesystem, path without protocol)`` of ``url``, with a fresh listing cache."""
    from .io import url_filesystem

    fs, path = url_filesystem(url)
    fs.invalidate_cache()
    return fs, path.rstrip("/")


def url_marker(fs, path):
    """Our marker attribute of the zarr group at ``path``, or None."""
    for name in ("zarr.json", ".zattrs"):
        try:
            document = json.loads(fs.cat_file(f"{path}/{name}"))
        except (FileNotFoundError, OSError, ValueError):
            continue
        attributes = document.get("attributes", document) if name == "zarr.json" \
            else document
        if MARKER in attributes:
            return attributes[MARKER]
    return None


def _same_or_inside(outer, inner):
    return inner == outer or inner.startswith(outer + "/")


def check_url_output(url, overwrite, kind, inputs=(), option="--out"):
    """Refuse, before any work, a URL output that could destroy something (module docstring).

    Raises
    ------
    OutputError, FileExistsError
    """
    if kind != PREDICTIONS or not str(url).rstrip("/").lower().endswith(".zarr"):
        raise OutputError(
            f"{option} '{url}': only predictions written as Zarr ('*.zarr') can go to a URL; "
            "write this output to a local path and copy it."
        )
    fs, path = filesystem(url)
    protocol = str(url).split("://", 1)[0]
    for source in inputs:
        if source is None or not str(source).startswith(protocol + "://"):
            continue
        other = str(source).split("://", 1)[1].rstrip("/")
        if _same_or_inside(path, other) or _same_or_inside(other, path):
            raise OutputError(f"{option} '{url}' is or holds an input of this run "
                              f"('{source}'); choose another output path.")
    bucket = path.split("/", 1)[0]
    if "/" in path and not fs.exists(bucket):
        raise OutputError(f"Cannot write {option} '{url}': bucket '{bucket}' does not exist.")
    if fs.exists(path):
        if not overwrite:
            raise FileExistsError(f"'{url}' exists; pass --overwrite to replace it.")
        if url_marker(fs, path) != kind:
            raise OutputError(
                f"'{url}' exists and is not a dask-gmm {kind} output; it is left alone "
                "even with --overwrite. Remove it yourself or choose another path."
            )


def temporary_url(url):
    """A fresh hidden sibling of ``url`` (same protocol and folder)."""
    head, _, name = str(url).rstrip("/").rpartition("/")
    return f"{head}/.{name}.tmp-{uuid.uuid4().hex[:8]}"


def _remove(fs, path):
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)
    fs.invalidate_cache()


def place_url(temporary, url, overwrite, kind):
    """Copy the finished output at ``temporary`` to ``url`` (module docstring, step 3)."""
    fs, source = filesystem(temporary)
    _, target = filesystem(url)
    kept = f"the finished output is kept at '{temporary}'"

    def failed(message):
        error = OutputError(f"{message}; {kept}.")
        error.kept = temporary
        return error

    if fs.exists(target):
        if not overwrite or url_marker(fs, target) != kind:
            raise failed(f"'{url}' was created by someone else while this run was "
                         "writing; it was left alone")
        _remove(fs, target)
    files = sorted(fs.find(source))
    relative = [f[len(source) + 1:] for f in files]
    last = [i for i, r in enumerate(relative) if r in ROOT_METADATA]
    first = [i for i in range(len(files)) if i not in last]
    try:
        for group in (first, last):
            if group:
                fs.copy([files[i] for i in group],
                        [f"{target}/{relative[i]}" for i in group])
    except Exception as error:
        _remove(fs, target)
        raise failed(f"Could not copy the output to '{url}' ({error})") from None
    _remove(fs, source)


@contextlib.contextmanager
def atomic_url_output(url, overwrite, kind):
    """Like :func:`dask_gmm.paths.atomic_output` for a URL: yields the temporary URL."""
    temporary = temporary_url(url)
    try:
        yield temporary
        place_url(temporary, url, overwrite, kind)
    except BaseException as error:
        if getattr(error, "kept", None) != temporary:
            fs, path = filesystem(temporary)
            _remove(fs, path)
        raise
