"""``dask-gmm``: the command line.

Subcommands: ``generate``, ``fit``, ``sweep``, ``predict``, ``info`` and ``demo``.
Exit codes: 0 success, 2 usage error, 1 runtime error. Expected errors (a missing
file, bad data, a bad model file, an output that exists) print one line; ``-v``
adds the traceback.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import traceback

import click
import dask
import dask.array as da
import numpy as np

from ._engine import worker_settings
from .persistence import ModelFormatError

logger = logging.getLogger("dask_gmm.cli")

EXPECTED_ERRORS = (FileNotFoundError, FileExistsError, ModelFormatError, ValueError,
                   TypeError, KeyError, PermissionError, IsADirectoryError,
                   NotADirectoryError)
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


# --------------------------------------------------------------------- helpers


class Settings:
    """The options every subcommand shares."""

    def __init__(self, scheduler, n_workers, threads_per_worker, memory_limit, progress,
                 verbose):
        self.scheduler = scheduler
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker
        self.memory_limit = memory_limit
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.verbose = verbose


def common_options(command):
    """Scheduler, progress and verbosity options, and the error handling."""

    @click.option("--scheduler", default="local", show_default=True,
                  help="'local' (a LocalCluster sized to this machine), 'threads', "
                       "'sync', or a scheduler address such as tcp://host:8786.")
    @click.option("--n-workers", type=click.IntRange(1), default=None,
                  help="Workers of the local cluster (default: one per 2 cores).")
    @click.option("--threads-per-worker", type=click.IntRange(1), default=None,
                  help="Threads of each local worker.")
    @click.option("--memory-limit", default="auto", show_default=True,
                  help="Memory limit of each local worker, e.g. '2GiB'.")
    @click.option("--progress/--no-progress", default=None,
                  help="Progress bars (default: on when stderr is a terminal).")
    @click.option("-v", "--verbose", count=True, help="More log output (-vv: debug).")
    @functools.wraps(command)
    def wrapper(scheduler, n_workers, threads_per_worker, memory_limit, progress,
                verbose, **kwargs):
        settings = Settings(scheduler, n_workers, threads_per_worker, memory_limit,
                            progress, verbose)
        level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
        logging.basicConfig(level=level,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        try:
            return command(settings, **kwargs)
        except EXPECTED_ERRORS as error:
            if verbose:
                traceback.print_exc()
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            click.echo(f"Error: {message}", err=True)
            sys.exit(1)

    return wrapper


def em_options(command):
    """The EM options ``fit`` and ``sweep`` share (scikit-learn's names and defaults)."""
    options = [
        click.option("--init", "init_params",
                     type=click.Choice(["kmeans", "k-means++", "random", "random_from_data"]),
                     default="kmeans", show_default=True),
        click.option("--n-init", type=click.IntRange(1), default=1, show_default=True),
        click.option("--max-iter", type=click.IntRange(0), default=100, show_default=True),
        click.option("--tol", type=click.FloatRange(0), default=1e-3, show_default=True),
        click.option("--reg-covar", type=click.FloatRange(0), default=1e-6,
                     show_default=True),
        click.option("--seed", type=int, default=None),
        click.option("--dataset", default=None, help="Array in a zarr group or HDF5 file."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@contextlib.contextmanager
def scheduler_context(settings):
    """Run the body on the chosen scheduler; a local cluster is closed afterwards."""
    choice = settings.scheduler
    if choice in ("threads", "sync", "processes", "single-threaded"):
        with dask.config.set(scheduler=choice):
            yield None
        return
    from distributed import Client, LocalCluster

    # distributed logs every connection at INFO; keep it quiet unless -vv
    quiet = logging.DEBUG if settings.verbose >= 2 else logging.WARNING
    for name in ("distributed", "distributed.scheduler", "distributed.nanny",
                 "distributed.core", "distributed.http.proxy", "distributed.worker"):
        logging.getLogger(name).setLevel(quiet)
    if choice == "local":
        cores = os.cpu_count() or 1
        n_workers = settings.n_workers or max(1, cores // 2)
        threads = settings.threads_per_worker or max(1, cores // n_workers)
        with dask.config.set(worker_settings()), \
                LocalCluster(n_workers=n_workers, threads_per_worker=threads,
                             memory_limit=settings.memory_limit, dashboard_address=None,
                             processes=True, silence_logs=logging.WARNING) as cluster, \
                Client(cluster) as client:
            logger.info("local cluster: %d workers x %d threads", n_workers, threads)
            yield client
        return
    with Client(choice) as client:
        yield client


def compute_with_progress(collection, settings, client):
    """Compute ``collection`` with dask's progress bar (or distributed's)."""
    if not settings.progress:
        return dask.compute(collection)[0]
    if client is not None:
        from distributed import progress

        future = client.compute(collection)
        progress(future)
        return future.result()
    from dask.diagnostics import ProgressBar

    with ProgressBar():
        return dask.compute(collection)[0]


def parse_k(text):
    """'4' -> [4]; '1:12' -> [1..12]; '2,4,8' -> [2, 4, 8]."""
    try:
        if ":" in text:
            low, high = (int(v) for v in text.split(":"))
            values = list(range(low, high + 1))
        else:
            values = [int(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"'{text}': use K, K1:K2 or K1,K2,...") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"'{text}': the numbers of components must be >= 1")
    return values


def parse_covariance_types(text):
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in COVARIANCE_TYPES]
    if bad or not values:
        raise click.BadParameter(
            f"'{text}': choose from {', '.join(COVARIANCE_TYPES)} (comma-separated)")
    return values


def check_output(path, overwrite):
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"'{path}' exists; pass --overwrite to replace it.")


def replace_path(temporary, target):
    """Move ``temporary`` to ``target``, replacing an existing target."""
    if os.path.isdir(target) and not os.path.islink(target):
        old = f"{target}.old-{os.getpid()}"
        os.rename(target, old)
        os.rename(temporary, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if os.path.exists(target):
            os.remove(target)
        os.rename(temporary, target)


def open_data(path, dataset):
    from .io import open_array

    X = open_array(path, dataset=dataset)
    logger.info("data: %s rows x %s features in %s chunks", *X.shape, X.numblocks[0])
    return X


def print_model(model, stream=None):
    echo = functools.partial(click.echo, file=stream)
    n_components, n_features = model.means_.shape
    echo(f"GaussianMixture: {n_components} components, covariance_type="
         f"{model.covariance_type!r}, {n_features} features, dtype {model.means_.dtype}")
    echo(f"  converged: {model.converged_}, EM iterations: {model.n_iter_}, "
         f"lower bound (mean log-likelihood): {model.lower_bound_:.6f}")
    order = np.argsort(model.weights_)[::-1]
    for k in order:
        mean = np.array2string(model.means_[k], precision=3, max_line_width=10_000,
                               threshold=8)
        echo(f"  component {k}: weight {model.weights_[k]:.4f}, mean {mean}")


def results_table(results):
    lines = ["    K  covariance         BIC            AIC    lower bound  iters  converged"]
    for i in range(len(results["bic"])):
        error = results["error"][i]
        if error:
            lines.append(f"{results['n_components'][i]:5d}  {results['covariance_type'][i]:9s}"
                         f"  failed: {error}")
            continue
        lines.append(
            f"{results['n_components'][i]:5d}  {results['covariance_type'][i]:9s}"
            f"  {results['bic'][i]:13.2f}  {results['aic'][i]:13.2f}"
            f"  {results['lower_bound'][i]:12.6f}  {results['n_iter'][i]:5d}"
            f"  {str(bool(results['converged'][i])):9s}"
        )
    return "\n".join(lines)


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
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--chunk-rows", type=click.IntRange(1), default=250_000, show_default=True)
@click.option("--separation", type=float, default=4.0, show_default=True,
              help="Spread of the true means, in units of the components' scale.")
@click.option("--zarr-format", type=click.Choice(["2", "3"]), default="3", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@common_options
def generate(settings, out, n_samples, n_features, n_components, covariance_type, seed,
             chunk_rows, separation, zarr_format, overwrite):
    """Write synthetic mixture data to the zarr group OUT, chunk by chunk.

    OUT gets the data array 'X', the true 'labels', and the true 'weights',
    'means' and 'covariances'. It is never whole in memory, so it can be larger
    than RAM.
    """
    from .synthetic import write_mixture

    check_output(out, overwrite)
    start = time.perf_counter()
    write_mixture(out, n_samples, n_features, n_components, covariance_type, seed,
                  chunk_rows, separation, int(zarr_format), overwrite,
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
@click.option("--overwrite", is_flag=True, help="Replace the model file if it exists.")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Keep the EM state here after every iteration; run again to resume.")
@common_options
def fit(settings, data, n_components, covariance_type, init_params, n_init, max_iter, tol,
        reg_covar, seed, dataset, out, overwrite, checkpoint):
    """Fit one mixture to DATA and save it to --out."""
    from .gaussian_mixture import GaussianMixture, fit_estimator

    check_output(out, overwrite)
    X = open_data(data, dataset)
    model = GaussianMixture(n_components, covariance_type=covariance_type, tol=tol,
                            reg_covar=reg_covar, max_iter=max_iter, n_init=n_init,
                            init_params=init_params, random_state=seed)
    with scheduler_context(settings):
        start = time.perf_counter()
        with rounds_bar(settings, "fit") as on_round:
            fit_estimator(model, X, on_round=on_round, checkpoint=checkpoint)
        elapsed = time.perf_counter() - start
    model.save(out, overwrite=overwrite)
    print_model(model)
    click.echo(f"  fit time: {elapsed:.1f}s")
    click.echo(f"model written to {out}")


@contextlib.contextmanager
def rounds_bar(settings, label):
    """A tqdm bar counting passes over the data; yields its callback (or None)."""
    if not settings.progress:
        yield None
        return
    from tqdm.auto import tqdm

    with tqdm(desc=label, unit="pass") as bar:
        yield lambda running: bar.update(1)


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
@click.option("--overwrite", is_flag=True, help="Replace output files that exist.")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Folder keeping every candidate's EM state; run again to resume.")
@common_options
def sweep(settings, data, ks, covariance_types, criterion, init_params, n_init, max_iter,
          tol, reg_covar, seed, dataset, plot, results, out, overwrite, checkpoint):
    """Fit every K x covariance type candidate on DATA together; report the best."""
    from .sweep import GaussianMixtureSweep, plot_criterion

    ks, types = parse_k(ks), parse_covariance_types(covariance_types)
    for path in (plot, results, out):
        if path is not None:
            check_output(path, overwrite)
    X = open_data(data, dataset)
    model = GaussianMixtureSweep(ks, types, criterion, tol=tol, reg_covar=reg_covar,
                                 max_iter=max_iter, n_init=n_init,
                                 init_params=init_params, random_state=seed,
                                 progress=settings.progress)
    with scheduler_context(settings):
        start = time.perf_counter()
        model.fit(X, checkpoint=checkpoint)
        elapsed = time.perf_counter() - start
    click.echo(results_table(model.results_))
    best = model.best_params_
    click.echo(f"best by {criterion.upper()}: {best['n_components']} components, "
               f"{best['covariance_type']} ({model.n_rounds_} passes over the data, "
               f"{elapsed:.1f}s)")
    if results is not None:
        write_results_csv(model.results_, results)
        click.echo(f"table written to {results}")
    if plot is not None:
        plot_criterion(model.results_, plot, criterion)
        click.echo(f"plot written to {plot}")
    if out is not None:
        model.save(out, overwrite=overwrite)
        click.echo(f"model written to {out}")


def write_results_csv(results, path):
    import csv

    columns = ["n_components", "covariance_type", "bic", "aic", "lower_bound", "n_iter",
               "converged", "fit_time", "error"]
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i in range(len(results["bic"])):
            writer.writerow([results[c][i] for c in columns])
    os.replace(temporary, path)


@main.command()
@click.argument("data", type=click.Path())
@click.option("--model", "model_path", type=click.Path(), required=True)
@click.option("--out", type=click.Path(), required=True,
              help="zarr group to write: 'labels', and 'proba' / 'score_samples' if asked.")
@click.option("--proba", is_flag=True, help="Also write the responsibilities.")
@click.option("--score-samples", is_flag=True, help="Also write per-row log-likelihoods.")
@click.option("--dataset", default=None, help="Array in a zarr group or HDF5 file.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@common_options
def predict(settings, data, model_path, out, proba, score_samples, dataset, overwrite):
    """Label every row of DATA with a saved model, out of core, into the zarr group --out.

    The output is written under a temporary name and renamed into place at the
    end: an interrupted run leaves nothing at --out.
    """
    from .io import temporary_sibling
    from .persistence import load

    check_output(out, overwrite)
    model = load(model_path)
    X = open_data(data, dataset)
    temporary = str(temporary_sibling(out))
    with scheduler_context(settings) as client:
        start = time.perf_counter()
        try:
            write_predictions(model, X, temporary, proba, score_samples, settings, client)
            replace_path(temporary, out)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    click.echo(f"wrote {', '.join(['labels'] + ['proba'] * proba + ['score_samples'] * score_samples)}"
               f" for {X.shape[0]:,} rows to {out} in {time.perf_counter() - start:.1f}s")


def write_predictions(model, X, path, proba, score_samples, settings, client):
    """All outputs in one pass over ``X``, chunk-aligned with it, into a zarr group."""
    import zarr

    outputs = {"labels": model.predict(X)}
    if proba:
        outputs["proba"] = model.predict_proba(X)
    if score_samples:
        outputs["score_samples"] = model.score_samples(X)
    group = zarr.open_group(path, mode="w")
    targets = []
    for name, array in outputs.items():
        chunks = tuple(c[0] for c in array.chunks)
        targets.append(group.create_array(name, shape=array.shape, dtype=array.dtype,
                                          chunks=chunks))
    group.attrs["dask_gmm:source"] = "dask-gmm predict"
    stored = da.store(list(outputs.values()), targets, lock=False, compute=False)
    compute_with_progress(stored, settings, client)


@main.command()
@click.argument("model_path", type=click.Path())
@common_options
def info(settings, model_path):
    """Print a saved model (or sweep)."""
    from .persistence import load
    from .sweep import GaussianMixtureSweep

    model = load(model_path)
    if isinstance(model, GaussianMixtureSweep):
        click.echo(f"GaussianMixtureSweep ({model.criterion.upper()}), "
                   f"{len(model.results_['bic'])} candidates, best: "
                   f"{model.best_params_['n_components']} {model.best_params_['covariance_type']}")
        click.echo(results_table(model.results_))
        model = model.best_estimator_
    print_model(model)


@main.command()
@click.option("--n-samples", type=click.IntRange(1000), default=400_000, show_default=True)
@click.option("--out-dir", type=click.Path(), default=None,
              help="Where to put the data and outputs (default: a new temporary folder).")
@common_options
def demo(settings, n_samples, out_dir):
    """Generate data, sweep K on a local cluster, fit, predict, plot, score: end to end."""
    from sklearn.metrics import adjusted_rand_score

    from .gaussian_mixture import GaussianMixture, fit_estimator
    from .io import open_array
    from .synthetic import write_mixture
    from .sweep import GaussianMixtureSweep, plot_criterion

    out_dir = out_dir or tempfile.mkdtemp(prefix="dask-gmm-demo-")
    os.makedirs(out_dir, exist_ok=True)
    data_path = os.path.join(out_dir, "data.zarr")
    n_features, true_k, chunk_rows = 6, 5, max(1000, n_samples // 8)
    click.echo(f"1. generating {n_samples:,} x {n_features} rows from {true_k} components "
               f"into {data_path} ({math.ceil(n_samples / chunk_rows)} chunks)")
    write_mixture(data_path, n_samples, n_features, true_k, "full", 0, chunk_rows, 4.0, 3,
                  overwrite=True, progress=settings.progress)
    X = open_array(data_path)
    with scheduler_context(settings) as client:
        if client is not None:
            workers = client.scheduler_info()["workers"].values()
            where = (f"{client.scheduler.address}, {len(workers)} workers x "
                     f"{sum(w['nthreads'] for w in workers) // max(1, len(workers))} threads")
        else:
            where = "no cluster"
        click.echo(f"2. scheduler: {settings.scheduler} ({where})")
        start = time.perf_counter()
        sweep_model = GaussianMixtureSweep(range(1, 9), ("full", "diag"), random_state=0,
                                           progress=settings.progress).fit(X)
        click.echo(f"3. sweep over K=1..8 x (full, diag) in {time.perf_counter() - start:.1f}s,"
                   f" {sweep_model.n_rounds_} passes over the data:")
        click.echo(results_table(sweep_model.results_))
        best = sweep_model.best_params_
        click.echo(f"   best by BIC: {best['n_components']} components, {best['covariance_type']}")
        plot_path = os.path.join(out_dir, "bic.png")
        plot_criterion(sweep_model.results_, plot_path)
        start = time.perf_counter()
        model = GaussianMixture(best["n_components"], covariance_type=best["covariance_type"],
                                n_init=2, random_state=0)
        fit_estimator(model, X)
        click.echo(f"4. refit with n_init=2 in {time.perf_counter() - start:.1f}s "
                   f"({model.n_iter_} EM iterations)")
        model_path = os.path.join(out_dir, "model.npz")
        model.save(model_path, overwrite=True)
        labels_path = os.path.join(out_dir, "labels.zarr")
        if os.path.exists(labels_path):
            shutil.rmtree(labels_path)
        write_predictions(model, X, labels_path, True, False, settings, client)
        import zarr

        labels = zarr.open_group(labels_path, mode="r")["labels"][:]
        truth = zarr.open_group(data_path, mode="r")["labels"][:]
    ari = adjusted_rand_score(truth, labels)
    click.echo(f"5. adjusted Rand index of the labels against the truth: {ari:.4f}")
    click.echo("outputs:")
    for name, path in [("data", data_path), ("BIC plot", plot_path), ("model", model_path),
                       ("labels and probabilities", labels_path)]:
        click.echo(f"   {name:25s} {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
