"""EM checkpoints: the state of a fit after every iteration, so a fit can resume.

A checkpoint file is an ``.npz`` of plain arrays plus a JSON header (no pickle,
like model files) holding:

- ``fingerprint``: the estimator's parameters (all but ``verbose``,
  ``verbose_interval`` and ``max_iter``, so a fit may be continued with more
  iterations; fewer iterations than the checkpoint already ran are refused) and
  the data's shape, dtype and a digest of its first and last rows. A checkpoint
  whose fingerprint differs is refused. Before a finished checkpoint's result is
  returned, one pass compares the data's sums with the checkpoint's, so other
  data with the same edges are refused too.
- where the fit stands: the initialisation under way, its EM iteration, lower
  bounds, whether it has finished, the best finished initialisation so far,
  the random generator's state after the initialisation was drawn, and
  ``sum(weight * x)`` and ``sum(weight)`` of the last pass (checked again on the
  first pass after resuming, which catches data changed in the middle).
- the current and best parameters (float64).

It is written to a temporary name and renamed over the previous one, so a
crash leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ._mstep import Params
from ._stats import pass_sums
from .paths import write_npz_atomically

FORMAT = "dask-gmm-checkpoint"
FORMAT_VERSION = 1
IGNORED_PARAMS = ("verbose", "verbose_interval", "max_iter", "warm_start")
# Every array field of Params and its subclasses (VariationalParams adds three).
PARAM_ARRAYS = ("weights", "means", "prec_chol", "covariances", "log_weights",
                "weight_concentration", "mean_precision", "degrees_of_freedom")


class InitResult(NamedTuple):
    """Where one initialisation's EM stands (or ended)."""

    params: Params
    lower_bound: float
    lower_bounds: list
    n_iter: int
    converged: bool


class CheckpointMismatchError(ValueError):
    """The checkpoint was made for other data or other parameters."""


def _digest(value):
    return hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:32]


def estimator_fingerprint(estimator):
    """JSON-ready summary of the parameters that decide the fit."""
    summary = {}
    for name, value in sorted(estimator.get_params(deep=False).items()):
        if name in IGNORED_PARAMS:
            continue
        if value is None or isinstance(value, (bool, int, float, str)):
            summary[name] = value
        elif isinstance(value, np.random.RandomState):
            summary[name] = "RandomState:" + _digest(value.get_state()[1])
        else:
            array = np.asarray(value, dtype=np.float64)
            summary[name] = f"array{array.shape}:{_digest(array)}"
    return summary


def data_fingerprint(shape, dtype, head, tail, weighted):
    """Shape, dtype and a digest of the first and last rows of the data."""
    return {"shape": list(shape), "dtype": str(dtype), "weighted": bool(weighted),
            "rows": _digest(np.concatenate([np.asarray(head, np.float64),
                                            np.asarray(tail, np.float64)]))}


def _params_to_arrays(params, prefix):
    arrays = {}
    if params is None:
        return arrays
    for name in PARAM_ARRAYS:
        value = getattr(params, name, None)
        if value is not None:
            arrays[f"{prefix}{name}"] = np.asarray(value, dtype=np.float64)
    return arrays


def _params_from_arrays(entries, prefix, covariance_type, params_class=Params):
    if f"{prefix}weights" not in entries:
        return None
    names = {f.name for f in dataclasses.fields(params_class)} - {"covariance_type"}
    for required in ("weights", "means", "prec_chol"):
        entries[f"{prefix}{required}"]  # noqa: B018 - a KeyError names a damaged file
    return params_class(covariance_type=covariance_type,
                        **{name: entries.get(f"{prefix}{name}") for name in names})


class FitState:
    """Where a fit stands after an EM iteration (see the module docstring)."""

    def __init__(self, init, n_iter, lower_bound, lower_bounds, finished, params,
                 rng_state, best=None, data_sums=None, converged=False):
        self.init = init
        self.n_iter = n_iter
        self.lower_bound = lower_bound
        self.lower_bounds = list(lower_bounds)
        self.finished = finished
        self.params = params
        self.rng_state = rng_state
        # the best finished initialisation so far: an InitResult
        self.best = best
        self.data_sums = data_sums  # (sum of weight * x, sum of weight) of the last pass
        self.converged = converged


def save_state(path, fingerprint, state):
    """Write ``state`` atomically to ``path``."""
    header = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": fingerprint,
        "init": state.init, "n_iter": state.n_iter, "lower_bound": state.lower_bound,
        "lower_bounds": state.lower_bounds, "finished": state.finished,
        "converged": bool(state.converged),
        "rng": [state.rng_state[0], int(state.rng_state[2]), int(state.rng_state[3]),
                float(state.rng_state[4])],
        "best": None,
    }
    arrays = _params_to_arrays(state.params, "params:")
    arrays["rng_keys"] = np.asarray(state.rng_state[1])
    if state.data_sums is not None:
        arrays["data_sum"] = np.asarray(state.data_sums[0], dtype=np.float64)
        header["data_weight"] = float(state.data_sums[1])
    if state.best is not None:
        best = state.best
        arrays.update(_params_to_arrays(best.params, "best:"))
        header["best"] = {"lower_bound": best.lower_bound,
                          "lower_bounds": list(best.lower_bounds), "n_iter": best.n_iter,
                          "converged": bool(best.converged)}
    arrays["__header__"] = np.array(json.dumps(header))
    write_npz_atomically(path, arrays)


def load_state(path, fingerprint, covariance_type, params_class=Params):
    """The saved state, or None when there is no checkpoint yet.

    Raises
    ------
    CheckpointMismatchError
        The checkpoint belongs to other data or other parameters.
    ValueError
        The file is not a dask-gmm checkpoint.
    """
    if not os.path.exists(path):
        return None
    not_ours = ValueError(f"'{path}' is not a dask-gmm checkpoint file.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "__header__" not in archive.files:
                raise not_ours
            header = json.loads(str(archive["__header__"]))
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise not_ours
            entries = {name: archive[name] for name in archive.files
                       if name != "__header__" and name.split(":")[-1] in ENTRY_NAMES}
    except Exception:
        raise not_ours from None
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"Checkpoint '{path}' is damaged: format_version is {version!r}.")
    if version > FORMAT_VERSION:
        raise ValueError(f"Checkpoint '{path}' was written by a newer dask-gmm.")
    try:
        return _state_from(path, header, entries, fingerprint, covariance_type, params_class)
    except (KeyError, TypeError, ValueError, IndexError) as error:
        if isinstance(error, CheckpointMismatchError):
            raise
        raise ValueError(f"Checkpoint '{path}' is damaged ({type(error).__name__}: "
                         f"{error}). Delete it to start afresh.") from None


ENTRY_NAMES = PARAM_ARRAYS + ("rng_keys", "data_sum")


def _state_from(path, header, entries, fingerprint, covariance_type, params_class):
    saved = header["fingerprint"]
    for part in ("estimator", "data"):
        if saved.get(part) != fingerprint.get(part):
            differences = sorted(
                key for key in set(saved.get(part, {})) | set(fingerprint.get(part, {}))
                if saved.get(part, {}).get(key) != fingerprint.get(part, {}).get(key)
            )
            what = "parameters" if part == "estimator" else "data"
            raise CheckpointMismatchError(
                f"Checkpoint '{path}' was made for other {what} (differs in: "
                f"{', '.join(differences)}). Use another checkpoint path, or delete this "
                "one to start afresh."
            )
    name, position, has_gauss, cached = header["rng"]
    rng_state = (name, entries["rng_keys"], position, has_gauss, cached)
    best = None
    if header["best"] is not None:
        b = header["best"]
        best = InitResult(_params_from_arrays(entries, "best:", covariance_type,
                                              params_class),
                          b["lower_bound"], b["lower_bounds"], b["n_iter"], b["converged"])
    data_sums = None
    if "data_sum" in entries:
        data_sums = (entries["data_sum"], header["data_weight"])
    state = FitState(header["init"], header["n_iter"], header["lower_bound"],
                     header["lower_bounds"], header["finished"],
                     _params_from_arrays(entries, "params:", covariance_type, params_class),
                     rng_state,
                     best, data_sums, header["converged"])
    for name, params in (("params", state.params),
                         ("best", best[0] if best is not None else None)):
        if params is None:
            continue
        values = [params.weights, params.means, params.prec_chol]
        if not all(np.all(np.isfinite(v)) for v in values):
            raise ValueError(f"its {name} hold values that are not finite")
    if state.params is None:
        raise ValueError("it holds no parameters")
    return state


def check_data_sums(path, saved, stats):
    """Compare a pass's ``sum(weight * x)`` with the checkpoint's; raise if the data changed."""
    if saved is None:
        return
    data_sum, weight = pass_sums(stats)
    if not (np.isclose(weight, saved[1], rtol=1e-9)
            and np.allclose(data_sum, saved[0], rtol=1e-8, atol=1e-8 * abs(saved[1]))):
        raise CheckpointMismatchError(
            f"Checkpoint '{path}' was made for other data (its sums differ from this "
            "data's). Use another checkpoint path, or delete this one to start afresh."
        )


@dataclass
class Checkpointer:
    """Saves one initialisation's EM state after every iteration (see ``checkpoint``).

    ``resumed_sums`` are the data sums a resumed checkpoint holds: the first
    pass after resuming is compared with them, which catches changed data.
    """

    path: object
    fingerprint: dict
    init: int
    random_state: np.random.RandomState
    best: InitResult | None
    resumed_sums: tuple | None = None

    def check_pass(self, stats):
        """Compare the first pass after resuming with the checkpoint's data sums."""
        if self.resumed_sums is not None:
            check_data_sums(self.path, self.resumed_sums, stats)
            self.resumed_sums = None

    def save(self, state, finished, stats):
        """Write ``state`` (an InitResult) and this pass's data sums."""
        save_state(self.path, self.fingerprint, FitState(
            self.init, state.n_iter, state.lower_bound, state.lower_bounds, finished,
            state.params, self.random_state.get_state(), self.best, pass_sums(stats),
            state.converged))
