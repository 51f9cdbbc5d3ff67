"""``dask-gmm``: the command line.

Subcommands: ``generate``, ``fit``, ``sweep``, ``predict``, ``info`` and ``demo``.
Exit codes: 0 success, 2 usage error, 1 runtime error, 130/143 interrupted by
SIGINT/SIGTERM. Every error prints one line on stderr; ``-v`` adds the
traceback. Outputs are checked before any work starts and are never written over
anything dask-gmm did not write (see :mod:`dask_gmm.paths`). The options and the
error handling every subcommand shares are in ``_command``.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time

import click

from . import paths
from ._command import (
    bayesian_options,
    command_options,
    data_options,
    em_options,
    one_line,
    parse_floats,
    plural,
    scheduler_context,
)
from ._options import COVARIANCE_TYPES
from ._progress import progress_bar
from ._report import print_model, results_table

logger = logging.getLogger("dask_gmm.cli")


def parse_k(text):
    """'4' -> [4]; '1:12' -> range(1, 13) (never built as a list); '2,4,8' -> [2, 4, 8]."""
    try:
        if ":" in text:
            low, high = (int(v) for v in text.split(":"))
            values = range(low, high + 1)
        else:
            values = [int(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"'{text}': use K, K1:K2 or K1,K2,...") from None
    smallest = values.start if isinstance(values, range) else min(values, default=0)
    if len(values) == 0 or smallest < 1:
        raise click.BadParameter(f"'{text}': the numbers of components must be >= 1")
    return values


def parse_covariance_types(text):
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in COVARIANCE_TYPES]
    if bad or not values:
        raise click.BadParameter(
            f"'{text}': choose from {', '.join(COVARIANCE_TYPES)} (comma-separated)")
    return values


def open_data(path, dataset, settings, variables=(), feature_dim=None, nan_policy="raise"):
    """DATA as a dask array (``open_array``), or as xarray with ``--variable``.

    One variable gives a DataArray (its ``--feature-dim`` holds the features);
    several give a Dataset whose variables are the features. Under
    ``--nan-policy omit`` zarr chunks missing from an array whose fill value is
    NaN are masked samples, not an error.
    """
    if variables or feature_dim:
        if dataset is not None:
            raise click.UsageError("--dataset names an array; with --variable/--feature-dim "
                                   "DATA is read with xarray: name variables instead.")
        return open_xarray(path, variables, feature_dim, settings)
    from .io import open_array

    X = open_array(path, dataset=dataset, chunks=settings.chunk_rows,
                   missing_chunks="nan" if nan_policy != "raise" else "error")
    logger.info("data: %s rows x %s features in %s chunks", *X.shape, X.numblocks[0])
    return X


def open_xarray(path, variables, feature_dim, settings):
    """A Zarr store or netCDF file opened lazily with xarray, as the features asked for."""
    try:
        import xarray as xr
    except ImportError:
        raise click.UsageError("--variable/--feature-dim read DATA with xarray: "
                               "pip install 'dask-gmm[xarray]'") from None
    if settings.chunk_rows is not None:
        raise click.UsageError("--chunk-rows applies to arrays; xarray DATA keeps the "
                               "chunks it is stored in.")
    text = os.fspath(path).rstrip("/")
    if text.endswith((".nc", ".nc4", ".cdf")):
        store = xr.open_dataset(text, chunks={})
    else:
        store = xr.open_zarr(text)
        if feature_dim is not None and feature_dim in store.dims:
            # one dask chunk across the features: each task reads a block's feature
            # chunks in one zarr call (4 band chunks read apart cost twice as much)
            store = xr.open_zarr(text, chunks={feature_dim: -1})
    names = list(variables) or [str(v) for v in store.data_vars]
    missing = [v for v in names if v not in store.data_vars]
    if missing:
        raise ValueError(f"'{path}' has no variable {missing[0]!r}; it has "
                         f"{[str(v) for v in store.data_vars]}.")
    if len(names) == 1:
        X = store[names[0]]
        if feature_dim is None and X.ndim != 2:
            raise ValueError(f"Variable {names[0]!r} has dims {tuple(X.dims)}: name the one "
                             "holding the features with --feature-dim.")
    elif not variables:
        raise ValueError(f"'{path}' has several variables {names}: name the ones to use "
                         "with --variable (repeat it to take several as the features).")
    else:
        X = store[names]
    logger.info("data: %s of %s", names, dict(store[names[0]].sizes))
    return X


def save_model_or_keep(model, path, overwrite):
    """Save ``model``; if that fails, save it in the temporary folder and say where."""
    try:
        return model.save(path, overwrite=overwrite)
    except OSError as error:
        if getattr(error, "kept", None):  # the finished file is already kept beside it
            raise
        fallback = os.path.join(tempfile.mkdtemp(prefix="dask-gmm-model-"),
                                os.path.basename(os.fspath(path)) or "model.npz")
        model.save(fallback)
        raise OSError(f"Could not write the model to '{path}' ({one_line(error)}); it was "
                      f"saved to '{fallback}' instead.") from None


# -------------------------------------------------------------------- commands


@click.group()
@click.version_option(package_name="dask-gmm")
def main():
    """Gaussian mixture models for arrays that do not fit in memory."""


@main.command()
@click.argument("out", type=click.Path())
@click.option("--n-samples", type=click.IntRange(2), required=True)
@click.option("--n-features", type=click.IntRange(1), required=True)
@click.option("--n-components", type=click.IntRange(1), required=True)
@click.option("--covariance-type", type=click.Choice(COVARIANCE_TYPES), default="full",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Integer seed: the same seed writes the same data.")
@click.option("--chunk-rows", "rows_per_chunk", type=click.IntRange(1), default=250_000,
              show_default=True)
@click.option("--separation", type=float, default=4.0, show_default=True,
              help="Spread of the true means, in units of the components' scale.")
@click.option("--zarr-format", type=click.Choice(["2", "3"]), default="3", show_default=True)
@click.option("--overwrite", is_flag=True,
              help="Replace OUT if it is data that dask-gmm generate wrote.")
@command_options(scheduler=False)
def generate(settings, out, n_samples, n_features, n_components, covariance_type, seed,
             rows_per_chunk, separation, zarr_format, overwrite):
    """Write synthetic mixture data to the zarr group OUT, chunk by chunk.

    OUT gets the data array 'X', the true 'labels', and the true 'weights',
    'means' and 'covariances'. It is never whole in memory (memory grows with
    --chunk-rows x --n-features, not with the number of rows), so it can be
    larger than RAM.
    """
    from .synthetic import write_mixture

    start = time.perf_counter()
    write_mixture(out, n_samples, n_features, n_components, covariance_type, seed,
                  rows_per_chunk, separation, int(zarr_format), overwrite,
                  progress=settings.progress)
    click.echo(f"wrote {n_samples:,} x {n_features} ({n_components} components, "
               f"{covariance_type}) to {out} in {time.perf_counter() - start:.1f}s")


@main.command()
@click.argument("data", type=click.Path())
@click.option("-k", "--n-components", type=click.IntRange(1), required=True)
@click.option("--covariance-type", type=click.Choice(COVARIANCE_TYPES), default="full",
              show_default=True)
@em_options
@click.option("--out", type=click.Path(), required=True, help="Model file to write.")
@click.option("--overwrite", is_flag=True,
              help="Replace --out if it is a model file dask-gmm wrote.")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Keep the EM state here after every iteration; run again to resume.")
@bayesian_options
@command_options()
def fit(settings, data, n_components, covariance_type, init_params, n_init, max_iter, tol,
        reg_covar, seed, nan_policy, persist, dataset, variables, feature_dim, out,
        overwrite, checkpoint, bayesian, weight_priors, weight_concentration_prior_type):
    """Fit one mixture to DATA and save it to --out."""
    from ._base import fit_estimator
    from .gaussian_mixture import GaussianMixture

    check_checkpoint(checkpoint, data, [out])
    paths.check_output(out, overwrite, paths.MODEL, inputs=[data, checkpoint])
    X = open_data(data, dataset, settings, variables, feature_dim, nan_policy)
    common = dict(n_components=n_components, covariance_type=covariance_type, tol=tol,
                  reg_covar=reg_covar, max_iter=max_iter, n_init=n_init,
                  init_params=init_params, random_state=seed, nan_policy=nan_policy)
    if bayesian:
        from .bayesian_mixture import BayesianGaussianMixture

        priors = parse_floats(weight_priors) if weight_priors else [None]
        if len(priors) > 1:
            raise click.BadParameter("fit takes one value (sweep takes several)",
                                     param_hint="--weight-concentration-prior")
        model = BayesianGaussianMixture(
            weight_concentration_prior=priors[0],
            weight_concentration_prior_type=weight_concentration_prior_type, **common)
    elif weight_priors is not None:
        raise click.UsageError("--weight-concentration-prior goes with --bayesian.")
    else:
        model = GaussianMixture(**common)
    with scheduler_context(settings, X, persist):
        start = time.perf_counter()
        with progress_bar(settings.progress, "fit", "pass") as bar:
            on_round = None if bar is None else (lambda running: bar.update(1))
            fit_estimator(model, X, on_round=on_round, checkpoint=checkpoint,
                          feature_dim=feature_dim)
        elapsed = time.perf_counter() - start
    save_model_or_keep(model, out, overwrite)
    print_model(model)
    click.echo(f"  fit time: {elapsed:.1f}s")
    click.echo(f"model written to {out}")


def check_checkpoint(checkpoint, data, outputs):
    """A checkpoint may be neither the data nor an output of the same run."""
    if checkpoint is None:
        return
    for other in [data] + [o for o in outputs if o is not None]:
        if not paths.is_url(other) and (
                os.path.realpath(checkpoint) == os.path.realpath(other)
                or os.path.realpath(other).startswith(os.path.realpath(checkpoint) + os.sep)):
            raise ValueError(f"--checkpoint '{checkpoint}' is also '{other}', an input or "
                             "output of this run; give it a path of its own.")


@main.command()
@click.argument("data", type=click.Path())
@click.option("-k", "--n-components", "ks", default="1:10", show_default=True,
              help="Numbers of components: K1:K2 or K1,K2,...")
@click.option("--covariance-type", "covariance_types", default="full,tied,diag,spherical",
              show_default=True, help="Comma-separated covariance types.")
@click.option("--criterion", type=click.Choice(["bic", "aic"]), default="bic",
              show_default=True)
@em_options
@click.option("--plot", type=click.Path(), default=None, help="Write the criterion plot (PNG).")
@click.option("--results", type=click.Path(), default=None, help="Write the table (CSV).")
@click.option("--out", type=click.Path(), default=None, help="Write the sweep model file.")
@click.option("--overwrite", is_flag=True,
              help="Replace outputs that exist if dask-gmm wrote them.")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Folder keeping every candidate's EM state; run again to resume.")
@bayesian_options
@command_options()
def sweep(settings, data, ks, covariance_types, criterion, init_params, n_init, max_iter,
          tol, reg_covar, seed, nan_policy, persist, dataset, variables, feature_dim, plot,
          results, out, overwrite, checkpoint, bayesian, weight_priors,
          weight_concentration_prior_type):
    """Fit every K x covariance type candidate on DATA together; report the best."""
    from .sweep import GaussianMixtureSweep

    ks, types = parse_k(ks), parse_covariance_types(covariance_types)
    check_checkpoint(checkpoint, data, [plot, results, out])
    for path, kind, option in ((plot, paths.PLOT, "--plot"), (results, paths.TABLE,
                               "--results"), (out, paths.MODEL, "--out")):
        if path is not None:
            paths.check_output(path, overwrite, kind, inputs=[data, checkpoint],
                               option=option)
    X = open_data(data, dataset, settings, variables, feature_dim, nan_policy)
    common = dict(tol=tol, reg_covar=reg_covar, max_iter=max_iter, n_init=n_init,
                  init_params=init_params, random_state=seed, progress=settings.progress,
                  nan_policy=nan_policy)
    if bayesian:
        from .bayesian_sweep import BayesianGaussianMixtureSweep

        if plot is not None:
            raise click.UsageError("--plot draws BIC/AIC against K; a --bayesian sweep "
                                   "reports its table (--results) instead.")
        priors = parse_floats(weight_priors) if weight_priors else (0.001, 0.1, 10.0)
        model = BayesianGaussianMixtureSweep(
            ks, types, priors, weight_concentration_prior_type=weight_concentration_prior_type,
            **common)
    elif weight_priors is not None:
        raise click.UsageError("--weight-concentration-prior goes with --bayesian.")
    else:
        model = GaussianMixtureSweep(ks, types, criterion, **common)
    model._check_grid(sample_count(X, feature_dim))
    with scheduler_context(settings, X, persist):
        start = time.perf_counter()
        model.fit(X, checkpoint=checkpoint, feature_dim=feature_dim)
        elapsed = time.perf_counter() - start
    click.echo(results_table(model.results_))
    best = model.best_params_
    if bayesian:
        chosen = model.best_estimator_
        click.echo(f"largest lower bound: prior {best['weight_concentration_prior']:g}, "
                   f"{best['covariance_type']}, {model.results_['n_effective'][model.best_index_]}"
                   f" effective components of {chosen.n_components} ({model.n_rounds_} passes "
                   f"over the data, {elapsed:.1f}s)")
    else:
        click.echo(f"best by {criterion.upper()}: {best['n_components']} components, "
                   f"{best['covariance_type']} ({model.n_rounds_} passes over the data, "
                   f"{elapsed:.1f}s)")
    if results is not None:
        write_results_csv(model.results_, results, overwrite, type(model).RESULT_COLUMNS)
        click.echo(f"table written to {results}")
    if plot is not None:
        write_plot(model.results_, plot, criterion, overwrite)
        click.echo(f"plot written to {plot}")
    if out is not None:
        save_model_or_keep(model, out, overwrite)
        click.echo(f"model written to {out}")


def write_results_csv(results, path, overwrite=False, columns=None):
    import csv

    from ._options import RESULT_COLUMNS

    columns = columns or RESULT_COLUMNS
    with paths.atomic_output(path, overwrite, paths.TABLE) as temporary, \
            open(temporary, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i in range(len(results["n_components"])):
            writer.writerow([results[c][i] for c in columns])


def write_plot(results, path, criterion, overwrite=False):
    from .sweep import plot_criterion

    with paths.atomic_output(path, overwrite, paths.PLOT,
                             suffix=os.path.splitext(path)[1]) as temporary:
        plot_criterion(results, temporary, criterion)


@main.command()
@click.argument("data", type=click.Path())
@click.option("--model", "model_path", type=click.Path(), required=True)
@click.option("--out", type=click.Path(), required=True,
              help="Where to write 'labels' (and 'proba' / 'score_samples' if asked): a "
                   "zarr group for a '.zarr' path, an HDF5 file for '.h5' / '.hdf5'.")
@click.option("--proba", is_flag=True, help="Also write the responsibilities.")
@click.option("--score-samples", is_flag=True, help="Also write per-row log-likelihoods.")
@data_options
@click.option("--overwrite", is_flag=True,
              help="Replace --out if it is a prediction output dask-gmm wrote.")
@command_options()
def predict(settings, data, model_path, out, proba, score_samples, dataset, variables,
            feature_dim, overwrite):
    """Label every row of DATA with a saved model, out of core, into --out.

    The outputs are chunked like DATA's storage and written under a temporary
    name that is renamed into place at the end: an interrupted or failed run
    leaves nothing at --out and no temporary behind. xarray DATA (--variable)
    gets a Zarr dataset on its own grid and coordinates (xarray.open_zarr).
    """
    from .outputs import output_format
    from .persistence import load

    paths.check_output(out, overwrite, paths.PREDICTIONS, inputs=[data, model_path])
    output_format(out)
    model = load(model_path)
    if variables:  # the model remembers the feature dim it was fitted with
        feature_dim = feature_dim or getattr(model, "feature_dim_", None)
    X = open_data(data, dataset, settings, variables, feature_dim, model.nan_policy)
    names = ("labels",) + ("proba",) * proba + ("score_samples",) * score_samples
    n_samples = sample_count(X, feature_dim or getattr(model, "feature_dim_", None))
    with scheduler_context(settings, X) as client:
        start = time.perf_counter()
        write_outputs(model, X, out, names, data, dataset, overwrite, settings, client,
                      n_samples, feature_dim)
    click.echo(f"wrote {', '.join(names)} for {n_samples:,} rows to {out} in "
               f"{time.perf_counter() - start:.1f}s")


def sample_count(X, feature_dim=None):
    """Samples in DATA: rows of an array, or the product of an xarray input's sample dims."""
    kind = type(X).__name__
    if kind == "Dataset":
        X = X[next(iter(X.data_vars))]
        return math.prod(X.shape)
    if kind == "DataArray":
        dim = feature_dim if feature_dim in X.dims else X.dims[-1]
        return math.prod(n for d, n in X.sizes.items() if d != dim)
    return X.shape[0]


def write_outputs(model, X, out, names, data, dataset, overwrite, settings, client,
                  n_samples, feature_dim=None):
    """Per-row outputs with a progress bar over rows, chunked like the input's storage."""
    from .io import storage_row_chunks
    from .outputs import write_predictions

    if feature_dim is not None and feature_dim != getattr(model, "feature_dim_", None):
        raise ValueError(f"The model was fitted with feature dim "
                         f"{getattr(model, 'feature_dim_', None)!r}, not {feature_dim!r}.")
    xarray_input = type(X).__name__ in ("DataArray", "Dataset")
    if not xarray_input:
        from ._validation import check_X

        check_X(model, X, reset=False)  # e.g. the wrong width: an error before the bar
    with progress_bar(settings.progress, "predict", "row", total=n_samples,
                      unit_scale=True) as bar:
        write_predictions(model, X, out, names,
                          chunk_rows=None if xarray_input else storage_row_chunks(data, dataset),
                          overwrite=overwrite, client=client,
                          progress=None if bar is None else bar.update)


@main.command()
@click.argument("model_path", type=click.Path())
@command_options(scheduler=False, progress=False)
def info(settings, model_path):
    """Print a saved model (or sweep)."""
    from .persistence import load
    from .sweep import GaussianMixtureSweep

    model = load(model_path)
    if isinstance(model, GaussianMixtureSweep):
        best = model.best_params_
        how = (model.criterion.upper() if hasattr(model, "criterion")
               else "largest lower bound")
        click.echo(f"{type(model).__name__} ({how}), {len(model.results_['n_components'])} "
                   f"candidates, best: {', '.join(f'{k}={v}' for k, v in best.items())}")
        click.echo(results_table(model.results_))
        model = model.best_estimator_
    print_model(model)


@main.command()
@click.option("--n-samples", type=click.IntRange(1000), default=400_000, show_default=True)
@click.option("--out-dir", type=click.Path(), default=None,
              help="Where to put the data and outputs (default: a new temporary folder). "
                   "Outputs of an earlier demo there are replaced; nothing else is.")
@command_options()
def demo(settings, n_samples, out_dir):
    """Generate data, sweep K on a local cluster, fit, predict, plot, score: end to end."""
    from sklearn.metrics import adjusted_rand_score

    from ._base import fit_estimator
    from .gaussian_mixture import GaussianMixture
    from .io import open_array
    from .sweep import GaussianMixtureSweep
    from .synthetic import write_mixture

    out_dir = out_dir or tempfile.mkdtemp(prefix="dask-gmm-demo-")
    data_path = os.path.join(out_dir, "data.zarr")
    plot_path = os.path.join(out_dir, "bic.png")
    model_path = os.path.join(out_dir, "model.npz")
    labels_path = os.path.join(out_dir, "labels.zarr")
    for path, kind in ((data_path, paths.GENERATED), (plot_path, paths.PLOT),
                       (model_path, paths.MODEL), (labels_path, paths.PREDICTIONS)):
        paths.check_output(path, True, kind, option="--out-dir")
    os.makedirs(out_dir, exist_ok=True)
    n_features, true_k, chunk_rows = 6, 5, max(1000, n_samples // 8)
    click.echo(f"1. generating {n_samples:,} x {n_features} rows from {true_k} components "
               f"into {data_path} ({math.ceil(n_samples / chunk_rows)} chunks)")
    write_mixture(data_path, n_samples, n_features, true_k, "full", 0, chunk_rows, 4.0, 3,
                  overwrite=True, progress=settings.progress)
    X = open_array(data_path, chunks=settings.chunk_rows)
    with scheduler_context(settings, X) as client:
        if client is not None:
            workers = client.scheduler_info()["workers"].values()
            threads = sum(w["nthreads"] for w in workers) // max(1, len(workers))
            where = (f"{client.scheduler.address}, {plural(len(workers), 'worker')} x "
                     f"{plural(threads, 'thread')}")
        else:
            where = "in this process"
        click.echo(f"2. scheduler: {settings.scheduler} ({where})")
        start = time.perf_counter()
        sweep_model = GaussianMixtureSweep(range(1, 9), ("full", "diag"), random_state=0,
                                           progress=settings.progress).fit(X)
        click.echo(f"3. sweep over K=1..8 x (full, diag) in {time.perf_counter() - start:.1f}s,"
                   f" {sweep_model.n_rounds_} passes over the data:")
        click.echo(results_table(sweep_model.results_))
        best = sweep_model.best_params_
        click.echo(f"   best by BIC: {best['n_components']} components, {best['covariance_type']}")
        write_plot(sweep_model.results_, plot_path, "bic", overwrite=True)
        start = time.perf_counter()
        model = GaussianMixture(best["n_components"], covariance_type=best["covariance_type"],
                                n_init=2, random_state=0)
        with progress_bar(settings.progress, "fit", "pass") as bar:
            fit_estimator(model, X,
                          on_round=None if bar is None else (lambda running: bar.update(1)))
        click.echo(f"4. refit with n_init=2 in {time.perf_counter() - start:.1f}s "
                   f"({model.n_iter_} EM iterations)")
        model.save(model_path, overwrite=True)
        write_outputs(model, X, labels_path, ("labels", "proba"), data_path, None, True,
                      settings, client, X.shape[0])
    import zarr

    labels = zarr.open_group(labels_path, mode="r")["labels"][:]
    truth = zarr.open_group(data_path, mode="r")["labels"][:]
    ari = adjusted_rand_score(truth, labels)
    click.echo(f"5. labels and probabilities written; adjusted Rand index against the "
               f"truth: {ari:.4f}")
    click.echo("outputs:")
    for name, path in [("data", data_path), ("BIC plot", plot_path), ("model", model_path),
                       ("labels and probabilities", labels_path)]:
        click.echo(f"   {name:25s} {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
