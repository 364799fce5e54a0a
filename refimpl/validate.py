"""Argument checks, the one place where the project's input rules are written.

Each check returns the value in its canonical type or raises a one-line ``ValueError`` that names the
argument and says what was expected.  The reference modules use them directly; the experiment tooling
uses them through :mod:`experiments.validate` (which turns the error into its user-facing kind), and
the command line builds its option types on them, so a rule is written once.
"""

from __future__ import annotations

import math

import numpy as np


def positive_int(name, value):
    """Return ``value`` as an int, or raise ValueError naming ``name`` unless it is an integer >= 1."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def non_negative_int(name, value):
    """Return ``value`` as an int, or raise ValueError unless it is an integer >= 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    return int(value)


def int_at_least(name, value, minimum):
    """Return ``value`` as an int, or raise ValueError unless it is an integer >= ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def positive_number(name, value, allow_zero=False):
    """Return ``value`` as a float, or raise unless it is a finite number > 0 (>= 0 with ``allow_zero``)."""
    kind = "non-negative" if allow_zero else "positive"
    try:
        number = float(value) if not isinstance(value, (bool, np.bool_, str)) else None
    except (TypeError, ValueError):
        number = None
    if number is None:
        raise ValueError(f"{name}: expected a {kind} number, got {value!r}")
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a {kind} finite number, got {value!r}")
    return number


def positive_rate(name, value):
    """Return ``value`` as a float (None passes through), or raise unless it is finite and > 0."""
    if value is None:
        return None
    return positive_number(name, value)


def one_of(name, value, choices):
    """Return ``value`` if it is one of ``choices``, else raise ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(str, choices))}, got {value!r}")
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
