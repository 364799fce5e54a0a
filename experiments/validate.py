"""User-facing errors and input checks of the experiment tooling (one module; the rules are refimpl's).

The primitive checks are those of :mod:`refimpl.validate`; here they raise :class:`TrainError`, the
one-line error the command line reports with exit status 2.  :class:`RunFailed` is a run that started
and then failed (diverged, interrupted, some runs of a sweep failed): exit status 1.  The list parsers
(widths, seeds, hidden sizes) are written once here and used by the drivers and by the command line.
"""

from __future__ import annotations

import functools

import numpy as np

from refimpl import validate as _rules


class TrainError(Exception):
    """A problem with the options, the input or the output folder; the message is one line for the user."""


class RunFailed(TrainError):
    """A run started and then failed (diverged, interrupted, runs of a sweep failed); the message says how."""


def _as_train_error(check):
    @functools.wraps(check)
    def wrapped(*args, **kwargs):
        try:
            return check(*args, **kwargs)
        except ValueError as exc:
            raise TrainError(str(exc)) from None
    return wrapped


positive_int = _as_train_error(_rules.positive_int)
non_negative_int = _as_train_error(_rules.non_negative_int)
int_at_least = _as_train_error(_rules.int_at_least)
positive_number = _as_train_error(_rules.positive_number)
positive_rate = _as_train_error(_rules.positive_rate)
one_of = _as_train_error(_rules.one_of)


def lr_schedule(text, steps=None, name="lr_schedule"):
    """A learning-rate schedule (MATH §8.1) in its canonical text: ``constant``, ``step:EVERY:FACTOR``,
    ``warmup:STEPS`` or ``cosine:STEPS`` (plain ``cosine`` takes the run's ``steps``, so that a resumed or
    extended run keeps the horizon it started with); one-line TrainError naming ``name``."""
    from refimpl.optim import parse_schedule
    try:
        sched = parse_schedule(text, steps, name)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    return f"cosine:{sched.steps}" if sched.kind == "cosine" else sched.text


def momentum(value, name="momentum"):
    """Momentum beta in [0, 1) (MATH §8.1) as a float; one-line TrainError naming ``name``."""
    from refimpl.optim import check_momentum
    try:
        return check_momentum(value)[0]
    except ValueError as exc:
        raise TrainError(str(exc).replace("momentum", name, 1)) from None


def optimiser_kwargs(config):
    """The simulators' and finite networks' keyword arguments of a config's optimiser (MATH §8); empty for
    plain SGD (constant schedule, momentum 0), so plain runs take exactly the paper's route."""
    kw = {}
    if config.lr_schedule != "constant":
        kw["lr_schedule"] = config.lr_schedule
    if config.momentum:
        kw.update(momentum=config.momentum, nesterov=config.nesterov)
    return kw


def optional(check, name, value, *args):
    """``check(name, value, *args)`` unless ``value`` is None."""
    return None if value is None else check(name, value, *args)


def width(name, value):
    """A bottleneck width: a positive integer, or the string ``"inf"`` (no bottleneck, MATH §5)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("inf", "infinity"):
            return "inf"
        if text.isdigit():
            value = int(text)
    try:
        return positive_int(name, value)
    except TrainError:
        raise TrainError(f"{name}: expected a positive integer or 'inf', got {value!r}") from None


def parse_int_list(text, name, minimum=1, allow_inf=False, presets=None, merge=False):
    """Parse a comma-separated list of integers (or a list / tuple of them).

    Parameters
    ----------
    text : str or sequence
    name : the option's name, used in the error message
    minimum : smallest allowed value (1: positive, 0: non-negative)
    allow_inf : accept ``inf`` (returned as the string ``"inf"``)
    presets : dict mapping a keyword (e.g. ``"paper"``) to a tuple returned as is
    merge : False: keep the order and reject a repeated item (returns a list);
        True: return the sorted tuple of the distinct items

    Raises
    ------
    TrainError naming ``name`` for an empty list, a bad or (unless ``merge``) a repeated item.
    """
    kind = ("non-negative" if minimum == 0 else "positive") + " integers" + (" or 'inf'" if allow_inf else "")
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        s = str(text).strip()
        if presets and s.lower() in presets:
            return presets[s.lower()]
        items = [p.strip() for p in s.split(",") if p.strip()]
    if not items:
        raise TrainError(f"{name}: expected a comma-separated list of {kind}, got {text!r}")
    out = []
    for item in items:
        if isinstance(item, str) and item.lower() in ("inf", "infinity") and allow_inf:
            value = "inf"
        else:
            if isinstance(item, str) and item.isdigit():
                value = int(item)
            elif isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_)):
                value = int(item)
            else:
                value = None
            if value is None or value < minimum:
                raise TrainError(f"{name}: expected {kind}, got {item!r} in {text!r}")
        if value in out and not merge:
            raise TrainError(f"{name}: {item!r} appears twice in {text!r}")
        out.append(value)
    return tuple(sorted(set(out))) if merge else out


def parse_widths(text, name="widths", allow_inf=True, presets=None, merge=False):
    """Bottleneck widths: ``"inf,10,20"`` -> ``["inf", 10, 20]`` (see :func:`parse_int_list`)."""
    return parse_int_list(text, name, minimum=1, allow_inf=allow_inf, presets=presets, merge=merge)


def parse_chain(text, name="chain"):
    """Widths of further bottlenecks (MATH §9): ``"5"`` or ``"5,3"`` (or a list) -> ``[5, 3]``; positive
    integers, repeats allowed (a chain may keep its width)."""
    items = list(text) if isinstance(text, (list, tuple)) else [p.strip() for p in str(text).split(",")]
    out = []
    for item in items:
        if isinstance(item, str) and item.isdigit():
            item = int(item)
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)) or item < 1:
            raise TrainError(f"{name}: expected comma-separated positive integers (the widths after --width), "
                             f"got {text!r}")
        out.append(int(item))
    return out


def width_key(width):
    """Sort key of bottleneck widths: finite widths ascending, then ``inf``."""
    return (1, 0) if width == "inf" else (0, int(width))


def parse_seeds(text, name="seeds"):
    """Seeds: ``"0,1,2"`` -> ``[0, 1, 2]``; distinct non-negative integers."""
    return parse_int_list(text, name, minimum=0)
