"""Shared pieces of the benchmarks: machine description and the results file."""

from __future__ import annotations

import logging
import os
import platform
import re
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine_summary():
    """Cores, CPU, BLAS and library versions, as markdown lines."""
    import dask
    import numpy
    import sklearn
    from threadpoolctl import threadpool_info

    import dask_gmm

    blas = ", ".join(
        f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}, "
        f"{i.get('num_threads')} threads)"
        for i in threadpool_info() if i.get("user_api") == "blas"
    )
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        pass
    return [
        f"Run {date.today().isoformat()} on {os.cpu_count()} cores ({cpu}); BLAS: {blas}.",
        f"Python {platform.python_version()}, numpy {numpy.__version__}, scikit-learn "
        f"{sklearn.__version__}, dask {dask.__version__}, dask_gmm {dask_gmm.__version__}.",
    ]


def write_section(key, title, lines):
    """Replace (or append) the section between this benchmark's markers."""
    begin, end = f"<!-- begin {key} -->", f"<!-- end {key} -->"
    block = "\n".join([begin, f"## {title}", "", *lines, end])
    text = RESULTS.read_text() if RESULTS.exists() else (
        "# Benchmark results\n\nWritten by the benchmarks in this folder; every figure "
        "is a ratio against a peer measured in the same run.\n"
    )
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text,
                      flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(text)


class IterationTimes(logging.Handler):
    """Collect the seconds of each EM iteration from dask_gmm's debug log."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.seconds = []

    def emit(self, record):
        match = re.search(r"EM iteration \d+: .*, ([0-9.]+)s$", record.getMessage())
        if match:
            self.seconds.append(float(match.group(1)))
