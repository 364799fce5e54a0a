"""Stop requests: SIGTERM as Ctrl-C, also where the interrupt it raises is swallowed.

The command line handles SIGTERM (sent by batch systems, ``timeout``, ``kill``) as Ctrl-C: the handler
raises KeyboardInterrupt and the drivers keep the last checkpoint and say how to resume.  A Python signal
handler runs wherever the main thread is, and some places swallow what it raises: a ctypes callback
(Numba's compiler reports its cache through one) prints "Exception ignored" and goes on.  So the handler
also records the request here, and :class:`experiments.loop.SGDLoop` checks it before every step
(:func:`raise_if_requested`): a swallowed SIGTERM stops the run at its next step instead of being lost.
Repeated SIGTERMs within :data:`GRACE_S` of the first are ignored (the clean-up of the first is running);
a later one is honoured again, so a process whose first interrupt was swallowed outside a loop can
still be stopped.
"""

from __future__ import annotations

import time

#: Seconds after a SIGTERM during which further SIGTERMs are ignored (the clean-up is running).
GRACE_S = 30.0

_requested = {"reason": None, "at": None}


def request(reason="SIGTERM"):
    """Record a stop request (time of the first one kept)."""
    if _requested["reason"] is None:
        _requested["reason"], _requested["at"] = reason, time.monotonic()


def within_grace():
    """True while a request made less than :data:`GRACE_S` ago is being handled."""
    at = _requested["at"]
    return at is not None and time.monotonic() - at < GRACE_S


def renew(reason="SIGTERM"):
    """A request again after the grace period: restart its clock."""
    _requested["reason"], _requested["at"] = reason, time.monotonic()


def requested():
    """The pending request's reason, or None."""
    return _requested["reason"]


def raise_if_requested():
    """Raise KeyboardInterrupt for a pending request (and clear it: it is now being handled)."""
    reason = _requested["reason"]
    if reason is not None:
        _requested["reason"] = None          # "at" stays: repeated signals within the grace are still ignored
        raise KeyboardInterrupt(reason)


def clear():
    """Forget every request (tests)."""
    _requested["reason"], _requested["at"] = None, None


def on_sigterm(signum, frame):
    """The SIGTERM handler of the command line and of the campaign's workers: record the request and
    raise KeyboardInterrupt; within the grace period of an earlier one, do nothing."""
    if within_grace():
        return
    if _requested["at"] is None:
        request("SIGTERM")
    else:
        renew("SIGTERM")
    raise KeyboardInterrupt("SIGTERM")
