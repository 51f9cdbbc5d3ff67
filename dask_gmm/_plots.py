"""matplotlib, imported on first use (it is the ``plot`` extra) and drawing off screen."""

from __future__ import annotations


def pyplot(caller):
    """``matplotlib.pyplot`` with the Agg backend, or an ImportError naming the extra.

    Parameters
    ----------
    caller : str
        The function that needs it, for the message.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(f"{caller} needs matplotlib: pip install 'dask-gmm[plot]'") \
            from None
    return plt
