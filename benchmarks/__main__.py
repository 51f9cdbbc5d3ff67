"""Run the benchmark suite: ``python -m benchmarks --quick|--full [--only NAME ...]``.

Each benchmark measures dask_gmm against its peer in the same run and writes
its table into ``benchmarks/RESULTS.md``. ``--quick`` uses small data (a few
minutes in all); ``--full`` the sizes the issues name (about half an hour on
2 cores).
"""

import argparse
import importlib
import time

BENCHMARKS = ["em_iteration", "small", "kmeans", "bayesian", "missing", "sweep", "out_of_core",
              "cube", "cluster", "cloud", "scale", "spark"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--quick", action="store_true")
    size.add_argument("--full", action="store_true")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    for name in args.only:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        argv = (["--quick"] if args.quick else []) + (["--no-write"] if args.no_write else [])
        print(f"== {name} ==", flush=True)
        start = time.perf_counter()
        module.main(argv)
        print(f"== {name}: {time.perf_counter() - start:.0f}s ==", flush=True)


if __name__ == "__main__":
    main()
