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
