"""Controls of the bottleneck experiments: centring (MATH §7.4) and per-width learning rates (MATH §7.5).

Centring (``--center``)
    The model trained and reported is ``F_t - F_0``: every input's initial
    output ``F_0(xi) = f_0(g_0(xi))`` is subtracted from the prediction, in the
    loss and in every reported output.  Since F_0 is a fixed function, the loss
    ``|F_t - F_0 - y|^2`` is the loss of the uncentred model on the shifted
    targets ``y + F_0``: the kernel dynamics are unchanged, only the targets move
    (MATH §7.4).  :class:`Centring` does exactly that, on every backend: it
    evaluates F_0 on the training and test inputs of the fresh simulator, adds
    F_0 to the simulator's training targets, and subtracts F_0 from the outputs
    that are evaluated.  At step 0 the centred outputs are 0, so a centred run's
    curves start at the zero predictor's loss.

Per-width learning rates (``--lr-policy per-width --lr-fraction c``)
    Each width trains at ``c`` times its own largest stable rate.  The largest
    stable rate comes from a short deterministic probe (:func:`probe_width`):
    runs of ``lr_probe_steps`` SGD steps from the run's initial functions (the
    first seed of a sweep) on the rates ``2^j`` of a doubling grid, walking from
    ``2^0`` upwards while the rate is stable and downwards while it is not.  A
    rate is *stable* when no step diverges and the final training loss (on the
    evaluation rows; centred when the run is) is below the initial one.  The
    probe of a sweep is written to ``lr_probe.json`` in the sweep directory
    (every trial with its losses) and each run's rate to ``sweep.json``; a
    resumed sweep reads it back and never probes again.
"""

from __future__ import annotations

import numpy as np

from .metrics import simulator_outputs
from .tasks import TASKS

LR_POLICIES = ("fixed", "per-width")


def validate_controls(config):
    """Raise ValueError (one line, naming the option) for bad control options of a TrainConfig."""
    if config.task not in TASKS:
        raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {config.task!r}")
    if config.lr_policy not in LR_POLICIES:
        raise ValueError(f"lr_policy: expected fixed or per-width, got {config.lr_policy!r}")
    frac = config.lr_fraction
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not (0 < frac <= 1):
        raise ValueError(f"lr_fraction: expected a number in (0, 1], got {frac!r}")
    if not isinstance(config.center, bool):
        raise ValueError(f"center: expected true or false, got {config.center!r}")
    if config.center and getattr(config, "loss", "mse") != "mse":
        raise ValueError("center: implemented for the squared loss only (it shifts the targets by F0, which "
                         "is exact for mse and not for cross-entropy); use --loss mse")
    if config.lr_policy == "per-width" and (config.lr_f is not None or config.lr_g is not None):
        raise ValueError("lr_policy: per-width sets one rate per width; it cannot be combined with lr_f / lr_g")
    if config.dataset in ("multi-index", "manifold") and config.latent_dim > config.d0:
        raise ValueError(f"latent_dim: expected at most d0 = {config.d0}, got {config.latent_dim}")


class Centring:
    """Train and report ``F - F0`` (module docstring; MATH §7.4).

    Build it from the fresh simulator (before any step or checkpoint): it
    stores F0 on the training and test inputs and shifts the simulator's
    training targets to ``Y + F0`` (the simulators read ``sim.Y`` at every step).

    Parameters
    ----------
    sim : simulator of any backend, at step 0
    data : Dataset (X_train (N, d0), X_test (M, d0))
    """

    def __init__(self, sim, data):
        if getattr(sim, "t", 0) != 0:
            raise ValueError("sim: centring needs the simulator at step 0")
        self.F0 = {"train": np.array(simulator_outputs(sim, data.X_train), dtype=np.float64),
                   "test": np.array(simulator_outputs(sim, data.X_test), dtype=np.float64)}
        sim.Y = np.asarray(sim.Y, dtype=np.float64) + self.F0["train"]

    def centred(self, split, F, rows=None):
        """``F - F0`` for the outputs ``F`` of ``split`` ("train" / "test") at ``rows`` (None: all)."""
        F0 = self.F0[split]
        return F - (F0 if rows is None else F0[rows])
