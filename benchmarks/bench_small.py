"""Small data: an EM iteration where a pass's fixed costs show, against scikit-learn.

At 20,000 or 100,000 rows an iteration's arithmetic takes a few milliseconds, so
what a pass costs besides it (building the graph, dask's scheduler, the M-step
on the client) is a visible share. Both libraries start from the same
parameters, on the same numpy array, in one process.

Seconds per iteration from fits of 1 and 31 iterations for dask_gmm (1 and 11
for scikit-learn), ``tol=0``: the difference over the extra iterations, best of 3.

Run: ``python -m benchmarks.bench_small``; writes its table into
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import time
import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

from dask_gmm import GaussianMixture

from ._common import machine_summary, write_section
from .bench_em_iteration import COVARIANCE_TYPES, make_data, starting_point

SIZES = (20_000, 100_000)
N_FEATURES, N_COMPONENTS = 16, 8


def per_iteration(estimator, X, covariance_type, inits, n_iter, repeats=3):
    """Seconds per iteration: fits of 1 and ``n_iter + 1`` iterations, best of repeats."""

    def fit(iterations):
        start = time.perf_counter()
        estimator(N_COMPONENTS, covariance_type=covariance_type, max_iter=iterations,
                  tol=0, **inits).fit(X)
        return time.perf_counter() - start

    return min((fit(n_iter + 1) - fit(1)) / n_iter for _ in range(repeats))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the same sizes (already small)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    lines = machine_summary() + [
        "",
        f"D={N_FEATURES}, K={N_COMPONENTS}; numpy input, threaded scheduler. Milliseconds "
        "per EM iteration; ratio = dask_gmm / scikit-learn, lower is better.",
        "",
        "| rows | covariance | scikit-learn ms/iter | dask_gmm ms/iter | ratio |",
        "|---|---|---|---|---|",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for n_samples in SIZES:
            X, means = make_data(n_samples, N_FEATURES, N_COMPONENTS)
            for covariance_type in COVARIANCE_TYPES:
                inits = starting_point(X, means, covariance_type)
                t_ours = per_iteration(GaussianMixture, X, covariance_type, inits, 30)
                t_sklearn = per_iteration(SklearnGaussianMixture, X, covariance_type, inits,
                                          10)
                lines.append(f"| {n_samples:,} | {covariance_type} | {t_sklearn * 1e3:.2f} | "
                             f"{t_ours * 1e3:.2f} | {t_ours / t_sklearn:.3f} |")
                print(lines[-1], flush=True)
    if not args.no_write:
        write_section("small", "EM iteration on small data", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
