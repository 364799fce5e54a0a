"""The one way the package draws and saves a figure: matplotlib's Agg backend, under one lock.

matplotlib is not thread-safe (its mathtext parser fails under concurrent use), and runs may share a
process as threads (Dask workers), so every figure of the package is drawn and saved under
:data:`PLOT_LOCK`.  Use::

    with PLOT_LOCK:
        plt = pyplot()
        fig, ax = plt.subplots()
        ...
        save_figure(fig, path)

:func:`save_figure` takes the lock itself too (it is re-entrant), writes the PNG atomically and closes
the figure.
"""

from __future__ import annotations

import io
import threading

from .fileio import atomic_write_bytes

#: Held while any figure of the package is drawn or saved (re-entrant).
PLOT_LOCK = threading.RLock()


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, dpi=100):
    """Write ``fig`` as a PNG to ``path`` atomically and close it, under :data:`PLOT_LOCK`."""
    with PLOT_LOCK:
        import matplotlib.pyplot as plt
        buf = io.BytesIO()
        try:
            fig.savefig(buf, format="png", dpi=dpi)
        finally:
            plt.close(fig)
        atomic_write_bytes(path, buf.getvalue())
