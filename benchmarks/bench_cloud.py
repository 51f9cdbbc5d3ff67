"""Fits reading Zarr from object storage: storage reads per chunk and seconds per EM
iteration, from a local S3-protocol server against local files.

N=1,000,000 x 16 float64 (122 MiB) in 16 chunks of 62,500 rows, stored twice:
in a zarr folder on disk and in a bucket of moto's S3 server on 127.0.0.1 (the
protocol s3fs speaks to AWS). A LocalCluster of 2 worker processes x 1 thread
fits K=8 full covariance with the default k-means start and 10 EM iterations
(``tol=0``), four ways: from files or S3, persisted (``dask_gmm.persist``
'auto', the default) or streamed ('never'). The server counts the GET of each
chunk; the seconds per iteration are the median of the iteration times the fit
logs. Targets (issue 17): at most 2 reads per chunk for a persisted fit (10.6
before), and a persisted fit from S3 within 1.2x of the same fit from files.

Run: ``python -m benchmarks.bench_cloud [--quick]`` (needs ``moto[server]`` and
``s3fs``, in the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import dask
import numpy as np
import zarr
from distributed import Client, LocalCluster
from sklearn.exceptions import ConvergenceWarning

from dask_gmm import GaussianMixture, open_array, worker_settings

from ._common import IterationTimes, machine_summary, write_section
from .bench_em_iteration import make_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.s3server import BUCKET, S3Server  # noqa: E402 - the tests' server, reused

CHUNK_ROWS = 62_500
N_ITER = 10


def fit(source, persist, server):
    handler = IterationTimes()
    logger = logging.getLogger("dask_gmm")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    server.gets.clear()
    try:
        with dask.config.set({"dask_gmm.persist": persist}), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            start = time.perf_counter()
            model = GaussianMixture(8, max_iter=N_ITER, tol=0, random_state=0).fit(
                open_array(source))
            total = time.perf_counter() - start
    finally:
        logger.removeHandler(handler)
    reads = server.chunk_reads("x.zarr") if source.startswith("s3://") else {}
    return dict(model=model, total=total, per_iteration=statistics.median(handler.seconds),
                reads=reads)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=250,000")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    n_samples = 250_000 if args.quick else 1_000_000
    X, _ = make_data(n_samples, 16, 8)
    results = {}
    with tempfile.TemporaryDirectory() as tmp, S3Server() as server:
        os.environ.update(server.environment)  # the workers inherit it
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir(BUCKET)
        local, remote = f"{tmp}/x.zarr", f"s3://{BUCKET}/x.zarr"
        for store in (local, remote):
            array = zarr.create_array(store=store, shape=X.shape,
                                      chunks=(CHUNK_ROWS, 16), dtype=X.dtype)
            array[:] = X
        with dask.config.set(worker_settings()), \
                LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                             dashboard_address=None) as cluster, Client(cluster):
            for source, where in ((local, "files"), (remote, "S3")):
                for persist in ("auto", "never"):
                    results[(where, persist)] = fit(source, persist, server)
                    r = results[(where, persist)]
                    print(where, persist, f"{r['per_iteration']:.3f} s/iter",
                          f"{r['total']:.1f} s", r["model"].n_passes_,
                          r["model"].persisted_, flush=True)
    base = results[("files", "auto")]
    n_chunks = -(-n_samples // CHUNK_ROWS)
    lines = machine_summary() + [
        "",
        f"N={n_samples:,}, D=16 float64 in {n_chunks} chunks of {CHUNK_ROWS:,} rows, K=8 "
        f"full, k-means start, {N_ITER} EM iterations; LocalCluster of 2 worker processes "
        "x 1 thread. S3: moto's server on 127.0.0.1, read through s3fs. Reads: GET "
        "requests per chunk counted by the server. Ratio: seconds per EM iteration "
        "against the persisted fit from files.",
        "",
        "| source | dask_gmm.persist | kept in memory | passes | storage reads per chunk "
        "| MiB read | s per EM iteration | ratio | whole fit, s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (where, persist), r in results.items():
        reads = r["reads"]
        per_chunk = (f"{min(reads.values())}-{max(reads.values())}" if reads
                     else "(files)")
        model = r["model"]
        lines.append(
            f"| {where} | {persist} | {model.persisted_} | {model.n_passes_} | {per_chunk} | "
            f"{model.bytes_read_ / 2**20:.0f} | {r['per_iteration']:.3f} | "
            f"{r['per_iteration'] / base['per_iteration']:.2f} | {r['total']:.1f} |")
    persisted = results[("S3", "auto")]
    same = np.allclose(persisted["model"].means_, base["model"].means_, rtol=1e-10)
    lines += ["", f"Targets: at most 2 reads per chunk when persisted (measured: "
              f"{max(persisted['reads'].values())}); persisted S3 within 1.2x of files "
              f"(measured: {persisted['per_iteration'] / base['per_iteration']:.2f}x). "
              f"The S3 and file fits give the same means: {same}."]
    if not args.no_write:
        write_section("cloud", "Object storage: reads and time per iteration", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
