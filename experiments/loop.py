"""The one SGD loop of the experiments: the batch order and the step loop with callbacks (MATH §4).

Every command that trains (``train``, the per-width rate probe, ``finite-sweep`` and the
finite-against-infinite comparison, ``verify`` and ``bench``) steps through :class:`SGDLoop`.  The loop
knows nothing of run folders, metrics or plots: it takes

- a *stepper*, ``stepper(idx) -> batch loss``: a simulator's ``sim.step`` of any backend, or a closure
  around a finite network (``lambda idx: net.step(X[idx], Y[idx], lr=lr)``, :mod:`refimpl.finite`), or
  around several models that take the same batch;
- a *batch order*, ``batches(step) -> idx`` (:class:`BatchOrder`, :func:`full_batch`, or any function of
  the step);
- *callbacks*: ``before(step)`` ahead of step ``step`` (0-based), and ``after(done, loss)`` once ``done``
  steps are done (evaluation, checkpoints, probes, logging, fault points), in the order given.  An
  ``after`` callback stops the loop by returning True (a stop condition), or by raising;
- a *progress* display (a context manager with ``update(n, loss=batch_loss)``, updated after the
  callbacks of every step).

Divergence: the simulators and the finite networks raise
:class:`~refimpl.dynamics.DivergenceError` (state unchanged) when a step is not finite, and the
evaluation callbacks raise it for a non-finite loss.  It propagates to the caller, or, with
``on_divergence``, ends the loop quietly: :attr:`SGDLoop.diverged` holds the error.  Overflow inside
a diverging step is reported that way, not as NumPy warnings (``np.errstate`` over the loop).

The batch order (:func:`batch_indices`): epoch ``e`` uses the permutation
``default_rng((seed, 1, e))`` of the N training rows, cut into ``N // batch_size`` batches (the
remainder is dropped).  Batch ``t`` is therefore a pure function of (seed, t), which is what makes a
resumed run identical, bit for bit, to an uninterrupted one, and gives the simulators and the finite
networks the same batches for the same seed.
"""

from __future__ import annotations

import contextlib

import numpy as np

from accel import blas_threads
from refimpl.dynamics import DivergenceError
from .stop import raise_if_requested
from .validate import TrainError


def batch_indices(seed, step, n, batch_size):
    """Row indices of SGD batch number ``step`` (0-based): a pure function of (seed, step).

    Parameters
    ----------
    seed : int;  step : int >= 0;  n : number of training rows;  batch_size : B

    Returns
    -------
    (B,) int array, sorted
    """
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise TrainError(f"batch_size: expected at most the number of training points ({n}), got {batch_size}")
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng((seed, 1, epoch)).permutation(n)
    return np.sort(perm[k * batch_size:(k + 1) * batch_size])


class BatchOrder:
    """The batch order of a run: ``order(step)`` is :func:`batch_indices` ``(seed, step, n, batch_size)``."""

    def __init__(self, seed, n, batch_size):
        self.seed, self.n, self.batch_size = seed, n, batch_size

    def __call__(self, step):
        return batch_indices(self.seed, step, self.n, self.batch_size)


def full_batch(n):
    """The batch order of full-batch gradient descent on ``n`` rows: every step takes ``arange(n)``."""
    idx = np.arange(n)
    return lambda step: idx


def every(period, fn, stop=None):
    """An ``after`` callback that calls ``fn(done)`` when ``done`` is a multiple of ``period`` or equals
    ``stop`` (the last step): the schedule of evaluations and checkpoints."""
    def callback(done, loss):
        if due(done, period, stop):
            fn(done)
    return callback


def due(done, period, stop=None):
    """True after ``done`` steps when ``done`` is a multiple of ``period`` or the last step ``stop``."""
    return done % period == 0 or done == stop


class _NullProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1, loss=None):
        pass


class SGDLoop:
    """Steps ``start .. stop - 1`` of SGD with callbacks (module docstring).

    Parameters
    ----------
    stepper : callable(idx) -> float
        One step on the batch rows ``idx`` (B,); returns the batch loss before the update.
    batches : callable(step) -> (B,) int array
        The batch order (:class:`BatchOrder`, :func:`full_batch`).
    after : sequence of callable(done, loss) -> bool or None
        Called after every step, in order; True stops the loop after this step.
    before : sequence of callable(step)
        Called before every step.
    progress : context manager with ``update(n, loss=...)``, or None
    on_divergence : callable(error, step) or None
        None: a :class:`~refimpl.dynamics.DivergenceError` of a step or a callback propagates.  Otherwise
        it is called with the error and the step (0-based) at which it happened, the loop ends, and
        :attr:`diverged` holds the error.
    blas_one_thread : bool
        Run the steps with one BLAS thread (a step's products are small; threads only oversubscribe
        the cores, :mod:`accel.blas_threads`).

    Attributes
    ----------
    step : the step being made (0-based), or ``start`` before the first
    done : steps done (the simulator's ``t`` when it started at ``start``)
    last : the last batch loss, None before the first step
    diverged : the DivergenceError that ended the loop, or None
    """

    def __init__(self, stepper, batches, after=(), before=(), progress=None, on_divergence=None,
                 blas_one_thread=False):
        self.stepper, self.batches = stepper, batches
        self.after, self.before = list(after), list(before)
        self.progress = progress if progress is not None else _NullProgress()
        self.on_divergence = on_divergence
        self.blas_one_thread = blas_one_thread
        self.step = self.done = 0
        self.last = self.diverged = None

    def run(self, start, stop):
        """Make the steps ``start .. stop - 1`` (fewer if a callback stops the loop); return the last batch loss."""
        self.step = self.done = start
        threads = blas_threads.limit(1) if self.blas_one_thread else contextlib.nullcontext()
        try:
            with self.progress as bar, np.errstate(over="ignore", invalid="ignore"), threads:
                for step in range(start, stop):
                    self.step = step
                    raise_if_requested()                    # a SIGTERM whose interrupt was swallowed
                    for callback in self.before:
                        callback(step)
                    self.last = self.stepper(self.batches(step))
                    self.done = done = step + 1
                    halt = False
                    for callback in self.after:
                        halt = bool(callback(done, self.last)) or halt
                    bar.update(1, loss=self.last)
                    if halt:
                        break
        except DivergenceError as exc:
            if self.on_divergence is None:
                raise
            self.diverged = exc
            self.on_divergence(exc, self.step)
        return self.last
