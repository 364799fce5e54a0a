"""Argument checks shared by the reference modules: one-line ValueErrors that name the argument."""

from __future__ import annotations

import math

import numpy as np


def positive_int(name, value):
    """Return ``value`` as an int, or raise ValueError naming ``name`` unless it is an integer >= 1."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def positive_rate(name, value):
    """Return ``value`` as a float (None passes through), or raise unless it is finite and > 0."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a positive number, got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return value


def real_array(name, value):
    """``value`` as a NumPy array, or raise ValueError naming ``name`` if it holds complex numbers."""
    arr = np.asarray(value)
    if np.iscomplexobj(arr):
        raise ValueError(f"{name}: expected real numbers, got complex values (dtype {arr.dtype})")
    return arr


def state_arrays(state, shapes):
    """Check the arrays of a simulator state against the shapes they must have; return the step ``t``.

    ``shapes`` maps a key of ``state`` to a tuple whose entries are ints or names (str): a name must
    take the same value in every shape it appears in (e.g. the history length "M").  Raises a one-line
    ValueError for a missing key, a wrong shape, a non-real or non-finite array, or a bad step.
    """
    t = np.asarray(state["t"]) if "t" in state else None
    if t is None or t.shape != () or not np.issubdtype(t.dtype, np.integer) or int(t) < 0:
        raise ValueError(f"state: 't' must be a non-negative integer step, got {None if t is None else t!r}")
    sizes = {}
    for key, shape in shapes.items():
        if key not in state:
            raise ValueError(f"state: missing array {key!r}; was it written by this simulator?")
        arr = real_array(f"state[{key!r}]", state[key])
        ok = arr.ndim == len(shape)
        for have, want in zip(arr.shape if ok else (), shape):
            if isinstance(want, str):
                ok = ok and sizes.setdefault(want, have) == have
            else:
                ok = ok and have == want
        if not ok:
            expect = tuple(sizes.get(w, w) if isinstance(w, str) else w for w in shape)
            raise ValueError(f"state[{key!r}]: expected shape {expect}, got {arr.shape}")
        if arr.dtype.kind not in "fiu" or not np.all(np.isfinite(arr)):
            raise ValueError(f"state[{key!r}]: expected finite real numbers")
    return int(t)
