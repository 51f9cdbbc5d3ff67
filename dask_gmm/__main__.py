"""``python -m dask_gmm``: a short end-to-end run on generated data.

Builds a dask array of one million rows drawn from a known mixture of five
components, fits ``GaussianMixture`` on it chunk by chunk, and prints what was
found next to the truth. The command-line tool proper comes with its own issue.
"""

import argparse
import logging
import time

import dask.array as da
import numpy as np
from sklearn.metrics import adjusted_rand_score

from dask_gmm import GaussianMixture


def make_mixture(n_samples, n_features, n_components, chunk_rows, seed):
    """A lazily generated mixture: each chunk is drawn by its own task."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=4.0, size=(n_components, n_features))
    mixing = rng.normal(size=(n_components, n_features, n_features)) / np.sqrt(n_features)
    chunk_seeds = rng.integers(2**31, size=-(-n_samples // chunk_rows))

    def block(seed, rows):
        local = np.random.default_rng(seed)
        labels = local.integers(0, n_components, size=rows)
        noise = local.normal(size=(rows, n_features))
        X = means[labels] + np.einsum("nd,nde->ne", noise, mixing[labels])
        return X, labels

    sizes = [min(chunk_rows, n_samples - i * chunk_rows) for i in range(len(chunk_seeds))]
    parts = [da.from_delayed(_delayed(block)(s, r), shape=(r, n_features + 1),
                             dtype=np.float64) for s, r in zip(chunk_seeds, sizes)]
    full = da.concatenate(parts, axis=0)
    return full[:, :n_features], full[:, n_features].astype(int)


def _delayed(block):
    import dask

    def stacked(seed, rows):
        X, labels = block(seed, rows)
        return np.column_stack([X, labels])

    return dask.delayed(stacked, pure=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=1_000_000)
    parser.add_argument("--n-features", type=int, default=8)
    parser.add_argument("--n-components", type=int, default=5)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    X, truth = make_mixture(args.n_samples, args.n_features, args.n_components,
                            args.chunk_rows, args.seed)
    X = X.persist()  # generated data: keep it, as a zarr store would on disk
    print(f"data: {X.shape[0]:,} rows x {X.shape[1]} features in {X.numblocks[0]} chunks")
    start = time.perf_counter()
    gm = GaussianMixture(args.n_components, n_init=2, random_state=args.seed, verbose=1,
                         verbose_interval=5).fit(X)
    elapsed = time.perf_counter() - start
    labels = gm.predict(X)  # lazy, chunked like X
    ari = adjusted_rand_score(truth.compute(), labels.compute())
    print(f"fit: {elapsed:.1f} s, {gm.n_iter_} EM iterations, converged={gm.converged_}")
    print(f"mean log-likelihood {gm.lower_bound_:.4f}, BIC {gm.bic(X):,.0f}")
    print("weights:", np.array2string(np.sort(gm.weights_)[::-1], precision=3))
    print(f"adjusted Rand index against the true labels: {ari:.4f}")


if __name__ == "__main__":
    main()
