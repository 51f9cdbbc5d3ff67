"""SIGINT and SIGTERM raised in the command's main thread only where that is safe.

Python runs a signal handler between two bytecodes of the main thread, so an
exception it raises can land inside a library's lock bookkeeping: in
``concurrent.futures.wait`` between acquiring one future's condition and the
next, the held conditions are never released, the worker that finishes that
future blocks on it, and the drain that waits for running chunk tasks hangs for
ever. So the exception is raised only where the main thread waits on a lock
(``threading``'s waits, written to be interrupted) or runs our own code; anywhere
else it is deferred, and an interval timer (SIGALRM) asks again shortly.
"""

from __future__ import annotations

import contextlib
import signal
import threading

# How soon a deferred interruption is tried again (seconds).
RETRY_SECONDS = 0.01
# Functions of the threading module that block on a lock and are written to be
# left by an exception (Condition.wait restores its lock in a finally clause).
# Not Thread.join: an exception there marks a thread stopped that still runs.
INTERRUPTIBLE_WAITS = frozenset({"wait"})


class Interrupted(BaseException):
    """SIGTERM (what SLURM and Kubernetes send), raised in the main thread."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def safe_to_raise(frame):
    """Whether an exception may be raised in ``frame`` without breaking a library's locks.

    Parameters
    ----------
    frame : frame or None
        The frame a signal handler was given: where the main thread stands.
    """
    if frame is None:
        return True
    module = frame.f_globals.get("__name__", "")
    if module == "dask_gmm" or module.startswith("dask_gmm."):
        return True
    return module == "threading" and frame.f_code.co_name in INTERRUPTIBLE_WAITS


def _exception(signum):
    return KeyboardInterrupt() if signum == signal.SIGINT else Interrupted(signum)


@contextlib.contextmanager
def interruptions_at_safe_points():
    """SIGTERM (and SIGINT, unless ignored) raise only at safe points in this block.

    SIGTERM raises :class:`Interrupted`, SIGINT ``KeyboardInterrupt``. Outside the
    main thread (where handlers cannot be set) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []

    def interrupt_when_safe(signum, frame):
        if signum != signal.SIGALRM and not pending:
            pending.append(signum)
        if not pending:
            return
        if safe_to_raise(frame):
            signum = pending.pop()
            raise _exception(signum)
        signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)

    signums = [signal.SIGTERM, signal.SIGALRM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signums.append(signal.SIGINT)
    previous = {signum: signal.signal(signum, interrupt_when_safe) for signum in signums}
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
