"""One progress style for the library and the command line: a tqdm bar on stderr."""

from __future__ import annotations

import contextlib
import shutil
import sys


@contextlib.contextmanager
def progress_bar(enabled, desc, unit, total=None, unit_scale=False):
    """A tqdm bar counting ``unit``\\ s (passes, rows), or None when not ``enabled``.

    Parameters
    ----------
    enabled : bool
    desc : str
        What runs ("fit", "sweep", "predict", "generate").
    unit : str
        What the bar counts: "pass" (a read of the data) or "row".
    total : int, optional
        Known only for bounded work (rows); passes of EM have no total.
    unit_scale : bool
        Show 1.2M rather than 1200000.

    Yields
    ------
    tqdm or None
    """
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    # a terminal that reports no size (a pseudo-terminal nobody sized) would get
    # no bar at all from tqdm (0 rows hides it): take 80 x 24 instead
    size = shutil.get_terminal_size()
    bar = tqdm(desc=desc, unit=unit, total=total, unit_scale=unit_scale, file=sys.stderr,
               ncols=size.columns, nrows=size.lines, mininterval=0.2)
    try:
        yield bar
    finally:
        bar.close()
