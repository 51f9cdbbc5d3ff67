"""Per-EM-iteration time of dask_gmm against scikit-learn, same data, same start.

Both estimators get the same ``weights_init``/``means_init``/``precisions_init``
and ``tol=0``; each is fitted with 1 and with 4 iterations and the time per
iteration is the difference divided by 3, so fixed costs (validation,
scikit-learn's final E-step, graph setup) cancel out. Both run in the same
process on the same data; the ratio is what we report. For full covariances
the table also gives the fraction of this machine's matrix-multiply rate that
dask_gmm reaches (one iteration costs about 4·N·K·D² floating-point operations).

Run: ``python -m benchmarks.bench_em_iteration [--quick]``; writes its tables
into ``benchmarks/RESULTS.md``.
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
CHUNK_ROWS = 62_500


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


def matmul_rate(seconds=2.0):
    """This machine's float64 matrix-multiply rate in GFLOP/s (all cores)."""
    a = np.random.default_rng(0).normal(size=(2000, 2000))
    a @ a
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        count += 1
    return 2 * 2000**3 * count / (time.perf_counter() - start) / 1e9


def run(n_samples, n_features, n_components, covariance_types, repeats, sklearn_repeats):
    X, means = make_data(n_samples, n_features, n_components)
    dX = da.from_array(X, chunks=(CHUNK_ROWS, n_features)).persist()
    rows = []
    for covariance_type in covariance_types:
        inits = starting_point(X, means, covariance_type)

        def sklearn_model(n_iter, covariance_type=covariance_type, inits=inits):
            return SklearnGaussianMixture(n_components, covariance_type=covariance_type,
                                          max_iter=n_iter, tol=0, **inits)

        def ours(n_iter, covariance_type=covariance_type, inits=inits):
            return GaussianMixture(n_components, covariance_type=covariance_type,
                                   max_iter=n_iter, tol=0, **inits)

        t_sklearn = per_iteration(sklearn_model, X, 1, 4, sklearn_repeats)
        t_numpy = per_iteration(ours, X, 1, 4, repeats)
        t_dask = per_iteration(ours, dX, 1, 4, repeats)
        rows.append((covariance_type, t_sklearn, t_numpy, t_dask))
        print(f"D={n_features} K={n_components} {covariance_type:9s} sklearn "
              f"{t_sklearn:.3f}s  numpy {t_numpy:.3f}s ({t_numpy / t_sklearn:.2f}x)  "
              f"dask {t_dask:.3f}s ({t_dask / t_sklearn:.2f}x)", flush=True)
    return rows


def table(n_samples, n_features, n_components, rows, rate, target):
    flops = 4 * n_samples * n_components * n_features**2
    lines = [
        f"N={n_samples:,}, D={n_features}, K={n_components}; dask input in chunks of "
        f"{CHUNK_ROWS:,} rows, threaded scheduler. Seconds per EM iteration (from fits of "
        f"1 and 4 iterations); ratio = dask_gmm / scikit-learn, lower is better. {target}",
        "",
        "| covariance | scikit-learn s/iter | dask_gmm numpy s/iter | ratio | "
        "dask_gmm dask s/iter | ratio | full: share of matmul rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for covariance_type, t_sklearn, t_numpy, t_dask in rows:
        share = ""
        if covariance_type == "full":
            best = min(t_numpy, t_dask)
            share = (f"{flops / best / 1e9:.1f} of {rate:.0f} GFLOP/s = "
                     f"{flops / best / 1e9 / rate:.0%}; bound {flops / rate / 1e9:.3f} s, "
                     f"{best / (flops / rate / 1e9):.1f}x it")
        lines.append(
            f"| {covariance_type} | {t_sklearn:.3f} | {t_numpy:.3f} | "
            f"{t_numpy / t_sklearn:.2f} | {t_dask:.3f} | {t_dask / t_sklearn:.2f} | {share} |"
        )
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=100,000 instead of 1,000,000")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--small-only", action="store_true", help="only D=16, K=8")
    args = parser.parse_args(argv)
    n_samples = 100_000 if args.quick else 1_000_000
    rate = matmul_rate()
    print(f"matrix multiply: {rate:.1f} GFLOP/s", flush=True)
    lines = machine_summary() + [f"Matrix multiply (2000x2000 float64, all cores): "
                                 f"{rate:.1f} GFLOP/s.", ""]
    small = run(n_samples, 16, 8, COVARIANCE_TYPES, repeats=2, sklearn_repeats=2)
    lines += table(n_samples, 16, 8, small, rate,
                   "Targets: <= 0.5 (issue 2); full <= 0.15 and within 2x of the matmul "
                   "bound (issue 6).")
    if not args.small_only:
        large = run(n_samples, 64, 16, COVARIANCE_TYPES, repeats=1, sklearn_repeats=1)
        lines += [""] + table(n_samples, 64, 16, large, rate,
                              "Target (issue 6): full <= 0.15.")
        pycave = run(n_samples, 64, 64, ["diag"], repeats=1, sklearn_repeats=1)
        lines += ["", "The pycave setting (diagonal, D=64, K=64; pycave reported 3.7x over "
                  "scikit-learn on a 4-core CPU, i.e. a ratio of 0.27). Target (issue 6): "
                  "<= 0.27.", ""] + table(n_samples, 64, 64, pycave, rate, "")[2:]
    if not args.no_write:
        write_section("em-iteration", "EM iteration, data in memory", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
