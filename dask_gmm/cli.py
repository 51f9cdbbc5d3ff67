"""``dask-gmm``: the command line.

Subcommands: ``generate``, ``fit``, ``sweep``, ``predict``, ``info`` and ``demo``.
Exit codes: 0 success, 2 usage error, 1 runtime error, 130/143 interrupted by
SIGINT/SIGTERM. Every error prints one line on stderr; ``-v`` adds the
traceback. Outputs are checked before any work starts and are never written over
anything dask-gmm did not write (see :mod:`dask_gmm.paths`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import signal
import sys
import tempfile
import time
import traceback
import warnings

import click
import numpy as np

from . import paths
from ._engine import worker_settings
from ._progress import progress_bar

logger = logging.getLogger("dask_gmm.cli")

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
LOCAL_SCHEDULERS = ("threads", "sync")
DISTRIBUTED_LOGGERS = ("distributed", "tornado", "asyncio")
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


# --------------------------------------------------------------------- helpers


class Interrupted(BaseException):
    """SIGTERM (what SLURM and Kubernetes send), raised in the main thread."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


class Settings:
    """The options a subcommand was given that every subcommand shares."""

    def __init__(self, verbose=0, progress=None, scheduler="threads", n_workers=None,
                 threads_per_worker=None, memory_limit="auto", dashboard=None, timeout=10.0,
                 chunk_rows=None):
        self.verbose = verbose
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.scheduler = scheduler
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker
        self.memory_limit = memory_limit
        self.dashboard = dashboard
        self.timeout = timeout
        self.chunk_rows = chunk_rows


def _one_line(error):
    """The error as one line: its message, or its type and message when unexpected."""
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    else:
        text = str(error)
    expected = isinstance(error, (ValueError, TypeError, OSError, KeyError)) and text
    if not expected:
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _show_warning(message, category, filename, lineno, file=None, line=None):
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    click.echo(f"Warning: {text}", err=True)


def _configure_logging(verbose):
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # distributed logs connections at INFO and every failure at length; a failure
    # reaches the user as our one line, the details with -v
    _quiet_distributed(verbose)
    if not verbose:
        warnings.showwarning = _show_warning


def _quiet_distributed(verbose):
    """distributed configures its own loggers (at INFO) when imported: set them all."""
    quiet = {0: logging.CRITICAL + 1, 1: logging.WARNING}.get(verbose, logging.DEBUG)
    names = [n for n in logging.root.manager.loggerDict if n.startswith(DISTRIBUTED_LOGGERS)]
    for name in set(names) | set(DISTRIBUTED_LOGGERS):
        logging.getLogger(name).setLevel(quiet)


def command_options(scheduler=True, progress=True, verbose=True):
    """The shared options of a subcommand, and its error handling.

    Parameters
    ----------
    scheduler : bool
        Offer the scheduler options (only for subcommands that compute on dask).
    progress : bool
        Offer --progress/--no-progress.
    """

    def decorate(command):
        @functools.wraps(command)
        def wrapper(**kwargs):
            settings = Settings(**{name: kwargs.pop(name) for name in list(kwargs)
                                   if name in SETTING_NAMES})
            return run_command(command, settings, kwargs)

        options = []
        if scheduler:
            options += [
                click.option("--scheduler", default="local", show_default=True,
                             callback=_check_scheduler,
                             help="Where to compute: 'local' (a LocalCluster of worker "
                                  "processes sized to this machine), 'threads' (dask's "
                                  "threads in this process), 'sync' (one thread, for "
                                  "debugging), or the address of a running scheduler, "
                                  "e.g. tcp://host:8786."),
                click.option("--n-workers", type=click.IntRange(1), default=None,
                             help="Workers of the local cluster (default: one per 2 "
                                  "cores)."),
                click.option("--threads-per-worker", type=click.IntRange(1), default=None,
                             help="Threads of each local worker."),
                click.option("--memory-limit", default="auto", show_default=True,
                             help="Memory limit of each local worker, e.g. '2GiB'."),
                click.option("--dashboard", default=None, is_flag=False,
                             flag_value=":8787", metavar="[ADDRESS]",
                             help="Serve dask's dashboard for the local cluster (at "
                                  "ADDRESS, default :8787) and print its link. Off by "
                                  "default."),
                click.option("--timeout", type=click.FloatRange(0, min_open=True),
                             default=10.0, show_default=True,
                             help="Seconds to wait for a scheduler address to answer."),
                click.option("--chunk-rows", type=click.IntRange(1), default=None,
                             help="Rows per chunk read from the data (default: whole "
                                  "storage chunks adding up to about 64 MiB)."),
            ]
        if progress:
            options.append(click.option(
                "--progress/--no-progress", default=None,
                help="Progress bars on stderr (default: on when stderr is a terminal)."))
        if verbose:
            options.append(click.option("-v", "--verbose", count=True,
                                        help="More log output, and tracebacks on errors "
                                             "(-vv: debug)."))
        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


SETTING_NAMES = ("verbose", "progress", "scheduler", "n_workers", "threads_per_worker",
                 "memory_limit", "dashboard", "timeout", "chunk_rows")


def run_command(command, settings, kwargs):
    """Run a subcommand: one line on stderr and exit 1 on error, 130/143 on a signal."""
    _configure_logging(settings.verbose)
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        return command(settings, **kwargs)
    except click.exceptions.ClickException:
        raise
    except (KeyboardInterrupt, Interrupted) as interruption:
        signum = getattr(interruption, "signum", signal.SIGINT)
        if settings.verbose:
            traceback.print_exc()
        click.echo(f"Error: interrupted by {signal.Signals(signum).name}; nothing was "
                   "left half-written.", err=True)
        sys.exit(EXIT_INTERRUPTED[signum])
    except Exception as error:  # noqa: BLE001 - every failure is one line (-v: traceback)
        if settings.verbose:
            traceback.print_exc()
        click.echo(f"Error: {_one_line(error)}", err=True)
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_scheduler(ctx, param, value):
    if value in ("local",) + LOCAL_SCHEDULERS:
        return value
    if not re.fullmatch(r"[A-Za-z_-]+", value):  # an address (or a shell variable for one)
        return value
    raise click.BadParameter(
        f"'{value}': use 'local', 'threads', 'sync' or a scheduler address such as "
        "tcp://host:8786.")


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
        click.option("--seed", type=int, default=None,
                     help="Integer seed of the initialisation (scikit-learn's "
                          "random_state): the same seed on the same data gives the same "
                          "model. Default: a fresh random start every run."),
        click.option("--dataset", default=None, help="Array in a zarr group or HDF5 file."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _plural(count, word):
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


@contextlib.contextmanager
def scheduler_context(settings, X=None):
    """Run the body on the chosen scheduler; a local cluster is closed afterwards.

    Yields the ``distributed.Client`` (None on dask's threads). With ``X``, a
    chunk too large for the workers' memory limit is refused at once.
    """
    import dask

    choice = settings.scheduler
    if settings.dashboard and choice != "local":
        raise click.UsageError("--dashboard serves the local cluster's dashboard: use it "
                               "with --scheduler local (a scheduler at an address serves "
                               "its own; -v prints its link).")
    if choice in LOCAL_SCHEDULERS:
        with dask.config.set(scheduler=choice):
            yield None
        return
    from distributed import Client, LocalCluster

    _quiet_distributed(settings.verbose)
    if choice == "local":
        cores = os.cpu_count() or 1
        n_workers = settings.n_workers or max(1, cores // 2)
        threads = settings.threads_per_worker or max(1, cores // n_workers)
        dashboard = settings.dashboard
        with dask.config.set(worker_settings()), \
                LocalCluster(n_workers=n_workers, threads_per_worker=threads,
                             memory_limit=settings.memory_limit,
                             dashboard_address=dashboard,
                             # without a dashboard the scheduler's HTTP server (health,
                             # metrics) takes any free port, not 8787
                             scheduler_kwargs=None if dashboard else
                             {"dashboard_address": ":0"},
                             processes=True, silence_logs=logging.CRITICAL) as cluster, \
                Client(cluster) as client:
            logger.info("local cluster: %s x %s", _plural(n_workers, "worker"),
                        _plural(threads, "thread"))
            if dashboard:
                click.echo(f"dashboard: {client.dashboard_link}", err=True)
            if X is not None:
                check_worker_memory(client, X)
            yield client
        return
    try:
        client = Client(choice, timeout=settings.timeout)
    except (OSError, TimeoutError) as error:
        raise ConnectionError(
            f"Could not reach the dask scheduler at {choice} within {settings.timeout:g} s "
            f"({_one_line(error)}). Is it running? (--timeout to wait longer)"
        ) from None
    with client:
        logger.info("dashboard: %s", client.dashboard_link)
        if X is not None:
            check_worker_memory(client, X)
        yield client


def check_worker_memory(client, X):
    from .gaussian_mixture import check_chunks_fit_workers

    check_chunks_fit_workers(X, client)


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


def open_data(path, dataset, settings):
    from .io import open_array

    X = open_array(path, dataset=dataset, chunks=settings.chunk_rows)
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
    lines = ["    K  covariance         BIC            AIC    lower bound  iters  passes"
             "  converged"]
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
            f"  {results['n_passes'][i]:6d}  {str(bool(results['converged'][i])):9s}"
        )
    return "\n".join(lines)


def save_model_or_keep(model, path, overwrite):
    """Save ``model``; if that fails, save it in the temporary folder and say where."""
    try:
        return model.save(path, overwrite=overwrite)
    except OSError as error:
        fallback = os.path.join(tempfile.mkdtemp(prefix="dask-gmm-model-"),
                                os.path.basename(os.fspath(path)) or "model.npz")
        model.save(fallback)
        raise OSError(f"Could not write the model to '{path}' ({_one_line(error)}); it was "
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

    paths.check_output(out, overwrite, paths.GENERATED, option="OUT")
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
@command_options()
def fit(settings, data, n_components, covariance_type, init_params, n_init, max_iter, tol,
        reg_covar, seed, dataset, out, overwrite, checkpoint):
    """Fit one mixture to DATA and save it to --out."""
    from .gaussian_mixture import GaussianMixture, fit_estimator

    check_checkpoint(checkpoint, data, [out])
    paths.check_output(out, overwrite, paths.MODEL, inputs=[data, checkpoint])
    X = open_data(data, dataset, settings)
    model = GaussianMixture(n_components, covariance_type=covariance_type, tol=tol,
                            reg_covar=reg_covar, max_iter=max_iter, n_init=n_init,
                            init_params=init_params, random_state=seed)
    with scheduler_context(settings, X):
        start = time.perf_counter()
        with progress_bar(settings.progress, "fit", "pass") as bar:
            on_round = None if bar is None else (lambda running: bar.update(1))
            fit_estimator(model, X, on_round=on_round, checkpoint=checkpoint)
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
@command_options()
def sweep(settings, data, ks, covariance_types, criterion, init_params, n_init, max_iter,
          tol, reg_covar, seed, dataset, plot, results, out, overwrite, checkpoint):
    """Fit every K x covariance type candidate on DATA together; report the best."""
    from .sweep import GaussianMixtureSweep

    ks, types = parse_k(ks), parse_covariance_types(covariance_types)
    check_checkpoint(checkpoint, data, [plot, results, out])
    for path, kind, option in ((plot, paths.PLOT, "--plot"), (results, paths.TABLE,
                               "--results"), (out, paths.MODEL, "--out")):
        if path is not None:
            paths.check_output(path, overwrite, kind, inputs=[data, checkpoint],
                               option=option)
    X = open_data(data, dataset, settings)
    model = GaussianMixtureSweep(ks, types, criterion, tol=tol, reg_covar=reg_covar,
                                 max_iter=max_iter, n_init=n_init,
                                 init_params=init_params, random_state=seed,
                                 progress=settings.progress)
    model._check_grid(X.shape[0])
    with scheduler_context(settings, X):
        start = time.perf_counter()
        model.fit(X, checkpoint=checkpoint)
        elapsed = time.perf_counter() - start
    click.echo(results_table(model.results_))
    best = model.best_params_
    click.echo(f"best by {criterion.upper()}: {best['n_components']} components, "
               f"{best['covariance_type']} ({model.n_rounds_} passes over the data, "
               f"{elapsed:.1f}s)")
    if results is not None:
        write_results_csv(model.results_, results, overwrite)
        click.echo(f"table written to {results}")
    if plot is not None:
        write_plot(model.results_, plot, criterion, overwrite)
        click.echo(f"plot written to {plot}")
    if out is not None:
        save_model_or_keep(model, out, overwrite)
        click.echo(f"model written to {out}")


def write_results_csv(results, path, overwrite=False):
    import csv

    from .persistence import RESULT_COLUMNS

    temporary = paths.temporary_sibling(path)
    try:
        with open(temporary, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(RESULT_COLUMNS)
            for i in range(len(results["bic"])):
                writer.writerow([results[c][i] for c in RESULT_COLUMNS])
        paths.place(temporary, path, overwrite, paths.TABLE)
    except BaseException as error:
        paths.discard_unless_kept(temporary, error)
        raise


def write_plot(results, path, criterion, overwrite=False):
    from .sweep import plot_criterion

    temporary = paths.temporary_sibling(path)
    temporary = temporary.with_name(temporary.name + os.path.splitext(path)[1])
    try:
        plot_criterion(results, temporary, criterion)
        paths.place(temporary, path, overwrite, paths.PLOT)
    except BaseException as error:
        paths.discard_unless_kept(temporary, error)
        raise


@main.command()
@click.argument("data", type=click.Path())
@click.option("--model", "model_path", type=click.Path(), required=True)
@click.option("--out", type=click.Path(), required=True,
              help="Where to write 'labels' (and 'proba' / 'score_samples' if asked): a "
                   "zarr group for a '.zarr' path, an HDF5 file for '.h5' / '.hdf5'.")
@click.option("--proba", is_flag=True, help="Also write the responsibilities.")
@click.option("--score-samples", is_flag=True, help="Also write per-row log-likelihoods.")
@click.option("--dataset", default=None, help="Array in a zarr group or HDF5 file.")
@click.option("--overwrite", is_flag=True,
              help="Replace --out if it is a prediction output dask-gmm wrote.")
@command_options()
def predict(settings, data, model_path, out, proba, score_samples, dataset, overwrite):
    """Label every row of DATA with a saved model, out of core, into --out.

    The outputs are chunked like DATA's storage and written under a temporary
    name that is renamed into place at the end: an interrupted or failed run
    leaves nothing at --out and no temporary behind.
    """
    from .outputs import output_format
    from .persistence import load

    paths.check_output(out, overwrite, paths.PREDICTIONS, inputs=[data, model_path])
    output_format(out)
    model = load(model_path)
    X = open_data(data, dataset, settings)
    names = ("labels",) + ("proba",) * proba + ("score_samples",) * score_samples
    with scheduler_context(settings, X) as client:
        start = time.perf_counter()
        write_outputs(model, X, out, names, data, dataset, overwrite, settings, client)
    click.echo(f"wrote {', '.join(names)} for {X.shape[0]:,} rows to {out} in "
               f"{time.perf_counter() - start:.1f}s")


def write_outputs(model, X, out, names, data, dataset, overwrite, settings, client):
    """Per-row outputs with a progress bar over rows, chunked like the input's storage."""
    from .io import storage_row_chunks
    from .outputs import write_predictions

    with progress_bar(settings.progress, "predict", "row", total=X.shape[0],
                      unit_scale=True) as bar:
        write_predictions(model, X, out, names,
                          chunk_rows=storage_row_chunks(data, dataset),
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
        click.echo(f"GaussianMixtureSweep ({model.criterion.upper()}), "
                   f"{len(model.results_['bic'])} candidates, best: "
                   f"{model.best_params_['n_components']} {model.best_params_['covariance_type']}")
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

    from .gaussian_mixture import GaussianMixture, fit_estimator
    from .io import open_array
    from .synthetic import write_mixture
    from .sweep import GaussianMixtureSweep

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
            where = (f"{client.scheduler.address}, {_plural(len(workers), 'worker')} x "
                     f"{_plural(threads, 'thread')}")
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
                      settings, client)
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
