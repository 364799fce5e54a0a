"""Learning-rate schedules and heavy-ball / Nesterov momentum (MATH §8).

The optimiser of every model of the project (the simulators of :mod:`refimpl.dynamics` and the
finite networks of :mod:`refimpl.finite`) is

    v_t = beta v_{t-1} + G_t                       (v_{-1} = 0, G_t the gradient at step t)
    w_{t+1} = w_t - mu s_t v_t                     (heavy ball)
    w_{t+1} = w_t - mu s_t (G_t + beta v_t)        (Nesterov, the PyTorch convention)

with the base rate ``mu`` (``lr_f`` or ``lr_g``: their ratio is kept) times the schedule's multiplier
``s_t``.  ``beta = 0`` with the constant schedule is plain (S)GD, computed exactly as before.

:class:`Schedule` is the small record behind ``--lr-schedule``; :func:`make_schedule` also accepts a
callable ``t -> s_t``.  :func:`momentum_direction` is the one update of a velocity buffer, used for
weights, for tracked embeddings and for the accumulated gradients alike; the history of the head keeps
its own per-entry weights (:class:`refimpl.engine.History`, MATH §8.3).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .validate import positive_int, positive_number

#: Kinds of schedule record (MATH §8.1).
SCHEDULE_KINDS = ("constant", "step", "cosine", "warmup")


class Schedule(NamedTuple):
    """A learning-rate multiplier s_t for the step t = 0, 1, ... (MATH §8.1).

    kind : "constant" (s_t = 1), "step" (s_t = factor^floor(t / every)), "cosine"
           (s_t = (1 + cos(pi t / steps)) / 2 over the run's ``steps``), "warmup"
           (s_t = min(1, (t + 1) / steps)).
    every, factor, steps : the parameters of the kind (0 where unused).
    """

    kind: str
    every: int = 0
    factor: float = 1.0
    steps: int = 0

    def __call__(self, t):
        """The multiplier s_t (a float; 1.0 exactly for the constant schedule)."""
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            return float(self.factor ** (t // self.every))
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(t, self.steps) / self.steps))
        return min(1.0, (t + 1) / self.steps)

    @property
    def text(self):
        """The record as written on the command line (``cosine`` without its steps, which the run supplies)."""
        if self.kind == "step":
            return f"step:{self.every}:{self.factor:g}"
        if self.kind == "warmup":
            return f"warmup:{self.steps}"
        return self.kind

    @property
    def is_constant(self):
        return self.kind == "constant"


def parse_schedule(text, total_steps=None, name="lr_schedule"):
    """The :class:`Schedule` written as ``constant``, ``step:EVERY:FACTOR``, ``cosine`` or ``warmup:STEPS``.

    ``cosine`` runs over ``total_steps`` (the run's steps; ``cosine:STEPS`` names them).  Raises a
    one-line ValueError naming ``name`` for anything else.
    """
    expected = "constant, step:EVERY:FACTOR, cosine or warmup:STEPS"
    if not isinstance(text, str):
        raise ValueError(f"{name}: expected {expected}, got {text!r}")
    parts = text.strip().split(":")
    kind = parts[0]
    try:
        if kind == "constant" and len(parts) == 1:
            return Schedule("constant")
        if kind == "step" and len(parts) == 3:
            every = positive_int(f"{name}: step EVERY", _as_int(parts[1]))
            factor = positive_number(f"{name}: step FACTOR", float(parts[2]))
            return Schedule("step", every=every, factor=factor)
        if kind == "warmup" and len(parts) == 2:
            return Schedule("warmup", steps=positive_int(f"{name}: warmup STEPS", _as_int(parts[1])))
        if kind == "cosine" and len(parts) <= 2:
            steps = _as_int(parts[1]) if len(parts) == 2 else total_steps
            if steps is None:
                raise ValueError(f"{name}: 'cosine' runs over the run's total steps; none were given "
                                 "(write cosine:STEPS)")
            return Schedule("cosine", steps=positive_int(f"{name}: cosine STEPS", steps))
    except ValueError as exc:
        if str(exc).startswith(name):
            raise
        raise ValueError(f"{name}: expected {expected}, got {text!r}") from None
    raise ValueError(f"{name}: expected {expected}, got {text!r}")


def _as_int(text):
    if not text.strip().lstrip("+").isdigit():
        raise ValueError(text)
    return int(text)


def make_schedule(schedule, total_steps=None):
    """A schedule from None (constant), a :class:`Schedule`, its text (:func:`parse_schedule`) or a
    callable ``t -> s_t``.  Returns a callable; :class:`Schedule` records stay records."""
    if schedule is None:
        return Schedule("constant")
    if isinstance(schedule, Schedule):
        if schedule.kind not in SCHEDULE_KINDS:
            raise ValueError(f"lr_schedule: expected a kind in {SCHEDULE_KINDS}, got {schedule.kind!r}")
        return schedule
    if isinstance(schedule, str):
        return parse_schedule(schedule, total_steps)
    if callable(schedule):
        return schedule
    raise ValueError(f"lr_schedule: expected a schedule text, a Schedule or a callable t -> multiplier, "
                     f"got {schedule!r}")


def schedule_rate(schedule, t):
    """s_t of ``schedule`` as a float, or a one-line ValueError unless it is finite and >= 0."""
    s = schedule(t)
    try:
        s = float(s)
    except (TypeError, ValueError):
        raise ValueError(f"lr_schedule: the multiplier at step {t} is not a number: {s!r}") from None
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"lr_schedule: the multiplier at step {t} must be finite and >= 0, got {s}")
    return s


def check_momentum(beta, nesterov=False):
    """Return (beta, nesterov) as (float, bool); ValueError unless 0 <= beta < 1."""
    try:
        b = float(beta) if not isinstance(beta, (bool, str)) else None
    except (TypeError, ValueError):
        b = None
    if b is None or not math.isfinite(b) or not 0.0 <= b < 1.0:
        raise ValueError(f"momentum: expected a number in [0, 1), got {beta!r}")
    if not isinstance(nesterov, bool):
        raise ValueError(f"nesterov: expected True or False, got {nesterov!r}")
    return b, nesterov


def momentum_direction(velocity, grad, beta, nesterov):
    """Update the velocity in place, ``v <- beta v + grad``, and return the step direction (MATH §8).

    Heavy ball: ``v``; Nesterov: ``grad + beta v``.  Works on any array module's arrays.
    """
    velocity *= beta
    velocity += grad
    return grad + beta * velocity if nesterov else velocity
