"""The machinery every ``dask-gmm`` subcommand shares.

Its options (scheduler, progress, verbosity), the error handling that makes
every failure one line on stderr (exit 1; 130/143 on SIGINT/SIGTERM), and the
scheduler a command computes on (dask's threads, a local cluster, or a
scheduler at an address), with the checks that fail at once rather than hang.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import re
import signal
import sys
import traceback
import warnings

import click

from ._engine import worker_settings
from ._options import INIT_PARAMS, NAN_POLICIES
from ._signals import Interrupted, interruptions_at_safe_points

logger = logging.getLogger("dask_gmm.cli")

LOCAL_SCHEDULERS = ("threads", "sync")
DISTRIBUTED_LOGGERS = ("distributed", "tornado", "asyncio")
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


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


def one_line(error):
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
            names = inspect.signature(Settings).parameters
            settings = Settings(**{name: kwargs.pop(name) for name in list(kwargs)
                                   if name in names})
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


def run_command(command, settings, kwargs):
    """Run a subcommand: one line on stderr and exit 1 on error, 130/143 on a signal."""
    _configure_logging(settings.verbose)
    try:
        with interruptions_at_safe_points():
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
        click.echo(f"Error: {one_line(error)}", err=True)
        sys.exit(1)


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
                     type=click.Choice(INIT_PARAMS),
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
        click.option("--nan-policy", type=click.Choice(NAN_POLICIES), default="raise",
                     show_default=True,
                     help="'omit' leaves samples holding NaN out of the fit (predict "
                          "labels them -1); 'marginalize' treats NaN as missing values "
                          "and fits on each row's observed features; 'raise' refuses "
                          "them."),
        click.option("--persist", type=click.Choice(["auto", "always", "never"]),
                     default=None,
                     help="Keep the data in memory (the cluster's, or this machine's) "
                          "after the first read: 'auto' does when they take at most half "
                          "of the free memory; 'never' reads storage on every pass. "
                          "Default: dask's config 'dask_gmm.persist' (e.g. "
                          "DASK_DASK_GMM__PERSIST=never), else 'auto'."),
    ]
    for option in reversed(options):
        command = option(command)
    return data_options(command)


def bayesian_options(command):
    """``--bayesian`` and the weight prior of a variational mixture (``fit``, ``sweep``)."""
    options = [
        click.option("--bayesian", is_flag=True,
                     help="Fit variational Bayesian mixtures (BayesianGaussianMixture): "
                          "-k is an upper bound and unneeded components get no weight."),
        click.option("--weight-concentration-prior", "weight_priors", default=None,
                     help="With --bayesian: the weight prior (sweep: comma-separated "
                          "values); smaller values leave fewer components in use. "
                          "Default 1/K (sweep: 0.001,0.1,10)."),
        click.option("--weight-concentration-prior-type",
                     type=click.Choice(["dirichlet_process", "dirichlet_distribution"]),
                     default="dirichlet_process", show_default=True),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def parse_floats(text, option="--weight-concentration-prior"):
    """'0.01,1' -> [0.01, 1.0]; each value must be positive."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not v > 0 for v in values):
        raise click.BadParameter(f"'{text}': positive numbers, comma-separated",
                                 param_hint=option)
    return values


def data_options(command):
    """How DATA is read: an array (``--dataset``) or xarray variables and their feature dim."""
    options = [
        click.option("--dataset", default=None, help="Array in a zarr group or HDF5 file."),
        click.option("--variable", "variables", multiple=True,
                     help="Read DATA with xarray (a Zarr store or netCDF file) and use this "
                          "variable; repeat it to take several variables as the features."),
        click.option("--feature-dim", default=None,
                     help="The dim of --variable holding the features (e.g. band); every "
                          "other dim is a sample dim."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def plural(count, word):
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


@contextlib.contextmanager
def scheduler_context(settings, X=None, persist=None):
    """Run the body on the chosen scheduler; a local cluster is closed afterwards.

    Yields the ``distributed.Client`` (None on dask's threads). With ``X``, a
    chunk too large for the workers' memory limit is refused at once.
    ``persist`` ('auto', 'always', 'never') sets ``dask_gmm.persist`` meanwhile.
    """
    import dask

    if persist is not None:
        with dask.config.set({"dask_gmm.persist": persist}), \
                scheduler_context(settings, X) as client:
            yield client
        return
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
            logger.info("local cluster: %s x %s", plural(n_workers, "worker"),
                        plural(threads, "thread"))
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
            f"({one_line(error)}). Is it running? (--timeout to wait longer)"
        ) from None
    with client:
        logger.info("dashboard: %s", client.dashboard_link)
        if X is not None:
            check_worker_memory(client, X)
        yield client


def check_worker_memory(client, X):
    """Refuse chunks the cluster's workers cannot hold (see ``_engine``)."""
    from ._engine import check_chunks_fit_workers

    X = getattr(X, "data", X) if type(X).__name__ == "DataArray" else X
    if hasattr(X, "chunks") and hasattr(X, "dask") and X.ndim >= 2:
        check_chunks_fit_workers(X, client)
