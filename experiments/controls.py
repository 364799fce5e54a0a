"""Controls of the bottleneck experiments: centring (MATH §7.4) and per-width learning rates (MATH §7.5).

Centring (``--center``)
    The model trained and reported is ``F_t - F_0``: every input's initial
    output ``F_0(xi) = f_0(g_0(xi))`` is subtracted from the prediction, in the
    loss and in every reported output.  Since F_0 is a fixed function, the loss
    ``|F_t - F_0 - y|^2`` is the loss of the uncentred model on the shifted
    targets ``y + F_0``: the kernel dynamics are unchanged, only the targets move
    (MATH §7.4).  :class:`Centring` does exactly that, on every backend: it
    evaluates F_0 on the training and test inputs of the fresh simulator, has
    the simulator shift its training targets by F_0 (``shift_targets``, a
    method of every simulator), and the evaluation subtracts F_0 from the
    outputs it reports.  At step 0 the centred outputs are 0, so a centred run's
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

Matched effective rates (``--lr-scale matched``)
    A run trains at ``lr / c`` with ``c = c_g c_f`` the factor by which the weight
    stds scale the function-space kernel at initialisation (MATH §7.7;
    :func:`rate_scale`), so that the linearised dynamics, exact for ``inf``, are
    those of the unit-scale network at ``lr``.  Every rate is divided by ``c``
    (``lr``, ``lr_f``, ``lr_g``, and the per-width probe's grid, which is then in
    units of the matched rate).  Defined where the scales factor out: ReLU or
    linear activations, no biases; refused otherwise.
"""

from __future__ import annotations

import numpy as np

from .evaluation import simulator_outputs

LR_POLICIES = ("fixed", "per-width")
#: --lr-scale: "none" (the rates as given) or "matched" (divided by :func:`rate_scale`, MATH §7.7).
LR_SCALES = ("none", "matched")
#: The training rows the training loss is evaluated on: "fixed" (one subset per data set, the same for every
#: seed and width) or "seed" (drawn from the run's seed: runs made before the option existed).
EVAL_SUBSETS = ("fixed", "seed")


def half_scale(layers):
    """``prod_l w_l^2`` over the weight layers of one half (hidden ``w_std``'s and the last ``out_std``).

    Parameters
    ----------
    layers : refimpl.kernels.Layers (activation ReLU or linear, ``b_std = 0``; checked by :func:`rate_scale`)
    """
    return float(np.prod([w * w for w, _ in layers.layer_stds()]))


def rate_scale(layers_g, layers_f):
    """``c = c_g c_f``: the factor by which the scales multiply the function-space kernel (MATH §7.7).

    Both activations and no biases make each half positively homogeneous of degree 1 in its input and
    in each layer's weight std: ``g = a g_unit``, ``f = b f_unit``, ``F = a b F_unit`` with
    ``a^2 = c_g``, ``b^2 = c_f`` (:func:`half_scale`), and the kernel of F at initialisation
    (``K(g, g~) + Theta J J~^T``, or ``NTK_inf``) is ``c_g c_f`` times the unit network's.

    Returns
    -------
    float ``c > 0``

    Raises
    ------
    ValueError (one line, naming lr_scale) where the scales do not factor out: an activation other
    than ReLU / linear, or a bias (``b_std > 0``) in either half.
    """
    for name, layers in (("g", layers_g), ("f", layers_f)):
        if layers.activation not in ("relu", "linear"):
            raise ValueError(f"lr_scale: matched needs a positively homogeneous activation (relu or linear), "
                             f"got {layers.activation!r}")
        if layers.b_std != 0.0:
            raise ValueError(f"lr_scale: matched needs b_std = 0 (biases do not scale with the weights), "
                             f"got b_std {layers.b_std:g} in {name}")
    return half_scale(layers_g) * half_scale(layers_f)


def rate_factor(config):
    """The factor every rate of a run is multiplied by: ``1 / rate_scale`` for ``lr_scale = "matched"``,
    1 otherwise (``config``: a TrainConfig; ValueError where matched does not apply)."""
    if getattr(config, "lr_scale", "none") != "matched":
        return 1.0
    layers_g, layers_f = config.layers()
    return 1.0 / rate_scale(layers_g, layers_f)


def validate_controls(config):
    """Raise ValueError (one line, naming the option) for control options of a TrainConfig that do not go
    together (each option's own values are checked by its rule in experiments.config)."""
    if config.center and getattr(config, "loss", "mse") != "mse":
        raise ValueError("center: implemented for the squared loss only (it shifts the targets by F0, which "
                         "is exact for mse and not for cross-entropy); use --loss mse")
    if config.lr_policy == "per-width" and (config.lr_f is not None or config.lr_g is not None):
        raise ValueError("lr_policy: per-width sets one rate per width; it cannot be combined with lr_f / lr_g")
    if config.dataset in ("multi-index", "manifold") and config.latent_dim is not None and config.latent_dim > config.d0:
        raise ValueError(f"latent_dim: expected at most d0 = {config.d0}, got {config.latent_dim}")


class Centring:
    """Train and report ``F - F0`` (module docstring; MATH §7.4).

    Build it from the fresh simulator (before any step or checkpoint): it
    stores F0 on the training and test inputs and has the simulator train on
    the targets ``Y + F0`` (``sim.shift_targets``, refused after step 0); the
    evaluation subtracts F0 from the outputs (:meth:`centred`).

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
        sim.shift_targets(self.F0["train"])

    def centred(self, split, F, rows=None):
        """``F - F0`` for the outputs ``F`` of ``split`` ("train" / "test") at ``rows`` (None: all)."""
        F0 = self.F0[split]
        return F - (F0 if rows is None else F0[rows])
