"""Files that nothing can half-write: atomic writes and pickle-free npz (used by every writer here)."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

#: The record of a sweep directory (written by :mod:`experiments.sweep`, read by :mod:`experiments.plots`).
SWEEP_FILE = "sweep.json"


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)            # mkstemp makes 0600; give the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def save_npz(path, arrays):
    """Save a dict of arrays as an (uncompressed) npz file, atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path):
    """Load an npz file written by :func:`save_npz` (never unpickles)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def write_csv(path, columns, rows):
    """Write the dicts ``rows`` as CSV with the header ``columns``, atomically.

    None is written as an empty cell, a float as its ``repr`` (every digit, read back exactly).
    """
    import csv
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else
                             repr(float(row[k])) if isinstance(row[k], float) else row[k]) for k in columns})
    atomic_write_text(path, buf.getvalue())


def read_csv(path):
    """The rows of a CSV file as dicts of strings ([] when the file does not exist)."""
    import csv
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
