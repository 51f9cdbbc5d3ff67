"""Per-EM-iteration time of dask_gmm against scikit-learn, same data, same start.

Both estimators get the same ``weights_init``/``means_init``/``precisions_init``
and ``tol=0``; each is fitted with ``m_short`` and ``m_long`` iterations and the
time per iteration is the difference divided by ``m_long - m_short``, so fixed
costs (validation, scikit-learn's final E-step, graph setup) cancel out. Both
run in the same process on the same data; the ratio is what we report.

Run: ``python -m benchmarks.bench_em_iteration [--quick]``; writes its table into
``benchmarks/RESULTS.md`` between the markers for this benchmark.
"""

from __future__ import annotations

import argparse
import time
import warnings

import dask.array as da
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

from dask_gmm import GaussianMixture

from ._common import machine_summary, write_section

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]


def make_data(n_samples, n_features, n_components, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(n_components, n_features))
    labels = rng.integers(0, n_components, size=n_samples)
    return means[labels] + rng.normal(size=(n_samples, n_features)), means


def starting_point(X, means, covariance_type):
    """A shared start: scikit-learn's M-step from the nearest-mean labels of a sample."""
    sample = X[:: max(1, X.shape[0] // 50_000)]
    start = SklearnGaussianMixture(
        len(means), covariance_type=covariance_type, means_init=means, max_iter=1,
        tol=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start.fit(sample)
    return dict(weights_init=start.weights_, means_init=start.means_,
                precisions_init=start.precisions_)


def time_fit(make_estimator, X, n_iter, repeats):
    best = np.inf
    for _ in range(repeats):
        estimator = make_estimator(n_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            estimator.fit(X)
            best = min(best, time.perf_counter() - t0)
    return best


def per_iteration(make_estimator, X, m_short, m_long, repeats):
    short = time_fit(make_estimator, X, m_short, repeats)
    long = time_fit(make_estimator, X, m_long, repeats)
    return max(long - short, 1e-9) / (m_long - m_short)


def run(n_samples, n_features, n_components, m_short, m_long, repeats, chunk_rows):
    X, means = make_data(n_samples, n_features, n_components)
    dX = da.from_array(X, chunks=(chunk_rows, n_features)).persist()
    rows = []
    for covariance_type in COVARIANCE_TYPES:
        inits = starting_point(X, means, covariance_type)

        def sklearn_model(n_iter):
            return SklearnGaussianMixture(n_components, covariance_type=covariance_type,
                                          max_iter=n_iter, tol=0, **inits)

        def ours(n_iter):
            return GaussianMixture(n_components, covariance_type=covariance_type,
                                   max_iter=n_iter, tol=0, **inits)

        t_sklearn = per_iteration(sklearn_model, X, m_short, m_long, repeats)
        t_numpy = per_iteration(ours, X, m_short, m_long, repeats)
        t_dask = per_iteration(ours, dX, m_short, m_long, repeats)
        rows.append((covariance_type, t_sklearn, t_numpy, t_dask))
        print(f"{covariance_type:9s} sklearn {t_sklearn:.3f}s  dask_gmm numpy {t_numpy:.3f}s "
              f"({t_numpy / t_sklearn:.2f}x)  dask {t_dask:.3f}s ({t_dask / t_sklearn:.2f}x)",
              flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=100,000 instead of 1,000,000")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    n_samples = 100_000 if args.quick else 1_000_000
    n_features, n_components = 16, 8
    chunk_rows = 62_500
    rows = run(n_samples, n_features, n_components, m_short=1, m_long=4,
               repeats=2, chunk_rows=chunk_rows)
    lines = [
        f"N={n_samples:,}, D={n_features}, K={n_components}; dask input in "
        f"{-(-n_samples // chunk_rows)} chunks of {chunk_rows:,} rows, threaded scheduler.",
        "Seconds per EM iteration (best of 2, from fits of 1 and 4 iterations); ratio = "
        "dask_gmm / scikit-learn, lower is better. Target (issue 2): <= 0.5.",
        "",
        "| covariance | scikit-learn s/iter | dask_gmm numpy s/iter | ratio | "
        "dask_gmm dask s/iter | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for covariance_type, t_sklearn, t_numpy, t_dask in rows:
        lines.append(
            f"| {covariance_type} | {t_sklearn:.3f} | {t_numpy:.3f} | "
            f"{t_numpy / t_sklearn:.2f} | {t_dask:.3f} | {t_dask / t_sklearn:.2f} |"
        )
    if not args.no_write:
        write_section("em-iteration", "EM iteration, data in memory",
                      machine_summary() + [""] + lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
