"""Kernels of the infinite layers, by the layer recursion of MATH §2.2 (and §5 without bottleneck).

Every function takes a batch of points ``X`` of shape (p, m) and ``Y`` of shape (q, m) and returns
the kernel for every pair ``(X[i], Y[j])``.  The scale ``m`` is the input dimension of the layer:
``m = d0`` for the embedding network g (the kernel is then Theta) and ``m = d`` for the head f
(the kernel is K).

Architecture of one half (g or f) of the network, in the NTK parametrisation (MATH §1, §2.2): a
:class:`Layers` with ``depth`` weight matrices (the paper's L_g, L_f; ``depth - 1`` hidden layers
of infinite width), every hidden layer a ``Dense(w_std, b_std)``:
``a = w_std W h / sqrt(fan_in) + b_std b`` with W, b standard normal, and the last layer a
``Dense(out_std, b_std)``.  The default (``depth=2, w_std=1, b_std=0, out_std=1``) is the
network of MATH §1.  Activations are the records of :mod:`refimpl.activations`.

One code path computes every kernel: the layer recursion (:func:`pair_terms`).  Each layer maps
the covariance entries ``q = k(x, x), q~ = k(x~, x~), c = k(x, x~)`` of its inputs through the
activation's dual kernel, carrying the partial derivatives with respect to |x| and x.x~ from which
Xi, Sigma_(1), Sigma_(2) and the NTK follow by the chain rule.  The paper's written-out forms
(ReLU arc-cosine kernels, lemma 4.1's linear kernels) are the tests' independent oracles.

Argument convention (one for the whole API): a half is ``activation, depth, w_std, b_std,
out_std`` with ``depth`` counting weight matrices, or a :class:`Layers` passed as ``activation``
(then nothing else); a composed network is ``layers_g, layers_f`` in that order (g first).
:func:`architecture` translates the command line's counts of hidden layers.

Numerics (MATH §2.1): angles by :mod:`refimpl.angles`; a zero vector has unit vector 0 and all
kernels return their limits there (no NaN).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import activations as acts
from .activations import XI_SIN_THRESHOLD, PreActivation  # noqa: F401 (XI_SIN_THRESHOLD: a public name)
from .angles import NEAR_PARALLEL_COS, pair_angles, pair_halves, unit_rows  # noqa: F401 (public names)
from .validate import positive_number, real_array

#: Names of the activations (the records: :data:`refimpl.activations.ACTIVATIONS`).
ACTIVATIONS = tuple(acts.ACTIVATIONS)


# --------------------------------------------------------------------------
# architecture
# --------------------------------------------------------------------------

def check_activation(activation, depth):
    """Validate ``activation`` and ``depth`` (weight matrices); return the depth to use (default 2).

    An activation needs at least :attr:`~refimpl.activations.Activation.min_depth` matrices
    (ReLU and erf a hidden layer; a linear network may have one matrix).
    """
    act = acts.get(activation)
    if depth is None:
        return 2
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth: expected a positive integer, got {depth!r}")
    if depth < act.min_depth:
        raise ValueError(f"depth: a {activation} network needs at least one hidden layer (depth >= "
                         f"{act.min_depth} weight matrices), got depth={depth}")
    return int(depth)


def _std(name, value, allow_zero):
    return positive_number(name, value, allow_zero=allow_zero)


@dataclasses.dataclass(frozen=True)
class Layers:
    """One half of the network (g or f) in the NTK parametrisation (MATH §1, §2.2).

    ``depth`` weight matrices; layers 1 .. depth-1 are ``Dense(w_std, b_std)``
    followed by the activation, the last one is ``Dense(out_std, b_std)``:
    ``a_l = std_l W_l h_{l-1} / sqrt(fan_in) + b_std b_l`` with W_l, b_l standard normal.
    Build it with :meth:`make` (checks every field).
    """

    activation: str = "relu"
    depth: int = 2
    w_std: float = 1.0
    b_std: float = 0.0
    out_std: float = 1.0

    @classmethod
    def make(cls, activation="relu", depth=None, w_std=1.0, b_std=0.0, out_std=1.0):
        """A checked Layers (one-line ValueError naming the bad argument)."""
        depth = check_activation(activation, depth)
        return cls(activation, depth, _std("w_std", w_std, False), _std("b_std", b_std, True),
                   _std("out_std", out_std, False))

    @property
    def act(self):
        """The :class:`~refimpl.activations.Activation` record."""
        return acts.get(self.activation)

    @property
    def closed_form(self):
        """True for the network of MATH §1 and the plain linear networks (unit scales, no biases),
        whose written-out kernels the accelerated backends evaluate directly (refimpl always
        runs the recursion)."""
        return self.kernel_scale is not None and self.w_std == 1.0 and self.out_std == 1.0

    @property
    def kernel_scale(self):
        """c such that Sigma, Theta and Xi are c times those of the unit-scale network (MATH §2.2).

        Defined for a positively homogeneous activation without biases where the backends have
        written-out kernels: a linear network, or a ReLU network with one hidden layer.  Each weight
        std w_l then multiplies the kernels by w_l^2: c = prod_l w_l^2.  (Sigmadot scales by
        out_std^2 alone.)  None for every other architecture.
        """
        if self.b_std != 0.0 or not self.act.homogeneous or (self.activation != "linear" and self.depth != 2):
            return None
        return float(np.prod([w * w for w, _ in self.layer_stds()]))

    def layer_stds(self):
        """[(weight std, bias std)] of the layers, input layer first."""
        return [(self.w_std, self.b_std)] * (self.depth - 1) + [(self.out_std, self.b_std)]


def architecture(activation="relu", hidden_g=1, hidden_f=1, w_std=1.0, b_std=0.0, out_std=1.0):
    """(Layers of g, Layers of f) from the command line's options (MATH §2.2).

    ``hidden_g``, ``hidden_f`` count *hidden layers* (the command line's ``--depth-g``,
    ``--depth-f``; 1 is the network of MATH §1); a Layers' ``depth`` counts weight matrices,
    one more.  ``w_std``, ``b_std``, ``out_std`` are one number for both halves or a pair (g, f).
    """
    def pair(name, value):
        if isinstance(value, (tuple, list)):
            if len(value) != 2:
                raise ValueError(f"{name}: expected one number or two (g, f), got {value!r}")
            return tuple(value)
        return value, value

    act = acts.get(activation)
    out = []
    for k, (name, hidden) in enumerate((("depth_g", hidden_g), ("depth_f", hidden_f))):
        least = act.min_depth - 1
        if isinstance(hidden, bool) or not isinstance(hidden, (int, np.integer)) or hidden < least:
            raise ValueError(f"{name}: expected a number of hidden layers >= {least}, got {hidden!r}")
        out.append(Layers.make(activation, int(hidden) + 1, pair("w_std", w_std)[k], pair("b_std", b_std)[k],
                               pair("out_std", out_std)[k]))
    return tuple(out)


def layers(activation="relu", depth=None, w_std=None, b_std=None, out_std=None):
    """:class:`Layers` from the keyword arguments of the kernel functions.

    ``activation`` is a name (with ``depth`` in weight matrices and the scales; None means the
    default) or a :class:`Layers`, which then carries everything: giving ``depth`` or a scale
    with it is refused (one-line ValueError naming the argument).
    """
    if isinstance(activation, Layers):
        for name, value in (("depth", depth), ("w_std", w_std), ("b_std", b_std), ("out_std", out_std)):
            if value is not None:
                raise ValueError(f"{name}: expected nothing with a Layers as activation (it sets {name}), "
                                 f"got {value!r}")
        return activation
    return Layers.make(activation, depth, 1.0 if w_std is None else w_std, 0.0 if b_std is None else b_std,
                       1.0 if out_std is None else out_std)


def inf_layers(layers_g=None, layers_f=None):
    """(Layers of g, Layers of f) of a network without bottleneck (MATH §5), g first.

    Both None: the network of MATH §1.  Otherwise both must be :class:`Layers`: one half alone
    is refused rather than completed with a default (one-line ValueError naming the argument).
    """
    if layers_g is None and layers_f is None:
        return Layers(), Layers()
    for name, other, spec in (("layers_g", "layers_f", layers_g), ("layers_f", "layers_g", layers_f)):
        if spec is None:
            raise ValueError(f"{name}: expected a Layers together with {other} (no default half is assumed), "
                             f"got None")
        if not isinstance(spec, Layers):
            raise ValueError(f"{name}: expected a Layers, got {type(spec).__name__}")
    return layers_g, layers_f


# --------------------------------------------------------------------------
# input checking
# --------------------------------------------------------------------------

def as_points(X, name="X"):
    """Return ``X`` as a C-contiguous float64 array of shape (p, m)."""
    X = np.asarray(real_array(name, X), dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d array of shape (points, dim), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name}: contains NaN or inf")
    return np.ascontiguousarray(X)


def as_pair(X, Y):
    """Check two point sets for a pair kernel: ``(X, Y)`` as float64 arrays (p, m), (q, m).

    Raises ValueError (naming the argument) on a wrong shape, NaN/inf, a column mismatch or
    m = 0.  Used by every kernel here and by the accelerated backends (accel).
    """
    X = as_points(X, "X")
    Y = as_points(Y, "Y")
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"Y: expected {X.shape[1]} columns like X, got {Y.shape[1]}")
    if X.shape[1] == 0:
        raise ValueError("X: points must have at least one coordinate")
    return X, Y


# --------------------------------------------------------------------------
# The layer recursion  (MATH §2.2)
# --------------------------------------------------------------------------
#
# A layer's state is its pre-activation covariance (activations.PreActivation: sx, sy, c and
# dlt = sx sy - c, eps = sx sy + c without cancellation) with the partial derivatives with
# respect to r = |x| and c0 = x.x~ of the raw inputs: dsx = dsx/dr, dc_r = dc/dr, dc_c = dc/dc0.
# The activation's output (LayerOutput) feeds the next affine step.


@dataclasses.dataclass(frozen=True)
class LayerState:
    """Pre-activation covariance of a layer with its partials in r = |x|, c0 = x.x~ (MATH §2.2)."""

    z: PreActivation
    dsx: object
    dc_r: object
    dc_c: object


@dataclasses.dataclass(frozen=True)
class LayerOutput:
    """Covariance entries of a layer's outputs (the next layer's inputs) with partials (MATH §2.2).

    ``Vx``, ``Vy``, ``V``, the non-negative ``dltV = sqrt(Vx Vy) - V`` and ``epsV = sqrt(Vx Vy) + V``,
    ``dVx_r`` = dVx/dr, ``dV_r`` = dV/dr, ``dV_c`` = dV/dc0, and ``lim0``: d sqrt(Vx)/dr where Vx = 0.
    """

    Vx: object
    Vy: object
    V: object
    dltV: object
    epsV: object
    dVx_r: object
    dV_r: object
    dV_c: object
    lim0: object


def input_output(nx, ny, hu, hv, lam, m, xp=np):
    """The raw inputs as the 'output' feeding the first layer: entries x.x~/m and their partials.

    ``hu``, ``hv``, ``lam``: sin and cos of half the angle between the inputs, and its cosine, by
    MATH §2.1's rule (:func:`refimpl.angles.pair_halves`).
    """
    nn = nx * ny / m
    zero = xp.zeros_like(nn)
    return LayerOutput(Vx=nx * nx / m + zero, Vy=ny * ny / m + zero, V=nn * lam,
                       dltV=2.0 * nn * hu * hu, epsV=2.0 * nn * hv * hv, dVx_r=2.0 * nx / m + zero, dV_r=zero,
                       dV_c=zero + 1.0 / m, lim0=zero + 1.0 / math.sqrt(m))


def affine(o, w, b, xp=np):
    """State of Dense(w, b) fed by the output ``o`` (MATH §2.2)."""
    w2, beta = w * w, b * b
    A, At = w2 * o.Vx, w2 * o.Vy
    sx, sy = xp.sqrt(A + beta), xp.sqrt(At + beta)
    dlt = w2 * o.dltV
    eps = w2 * o.epsV
    if beta > 0.0:
        # sqrt(qx qy) - beta - sqrt(A At) and sqrt(qx qy) + beta - sqrt(A At), without cancellation
        rA, rAt = xp.sqrt(A), xp.sqrt(At)
        Q = sx * sy
        dlt = dlt + beta * (rA - rAt) ** 2 / (Q + beta + rA * rAt)
        eps = eps + beta * (A + At + beta) / (Q + rA * rAt) + beta
    dsx = xp.where(sx > 0.0, 0.5 * w2 * o.dVx_r / xp.where(sx > 0.0, sx, 1.0), w * o.lim0)
    return LayerState(z=PreActivation(sx=sx, sy=sy, c=w2 * o.V + beta, dlt=dlt, eps=eps), dsx=dsx,
                      dc_r=w2 * o.dV_r, dc_c=w2 * o.dV_c)


def activate(st, act, xp=np):
    """The activation ``act`` on a layer state: (LayerOutput, dual, dVd/dr, dVd/dc0) by the chain rule."""
    du = act.dual(st.z, xp)
    out = LayerOutput(Vx=du.Vx, Vy=du.Vy, V=du.V, dltV=du.dltV, epsV=du.epsV, dVx_r=du.Vx_sx * st.dsx,
                      dV_r=du.V_sx * st.dsx + du.Vd * st.dc_r, dV_c=du.Vd * st.dc_c,
                      lim0=st.dsx * act.zero_slope)
    return out, du, du.Vd_sx * st.dsx + du.Vd_c * st.dc_r, du.Vd_c * st.dc_c


def state_as_output(st):
    """A state fed forward unchanged (the linear bottleneck between g and f, MATH §5)."""
    z = st.z
    return LayerOutput(Vx=z.sx * z.sx, Vy=z.sy * z.sy, V=z.c, dltV=z.dlt, epsV=z.eps,
                       dVx_r=2.0 * z.sx * st.dsx, dV_r=st.dc_r, dV_c=st.dc_c, lim0=st.dsx)


def _recursion(out, spec, xp, T_in=None, lr_self=1.0):
    """Run the layers of ``spec`` from the input entries ``out``.

    NTK recursion (MATH §2.2): ``T_1 = lr_self c_1 + w_1^2 T_in``,
    ``T_l = lr_self c_l + Sigmadot_l T_{l-1}``, ``Sigmadot_l = w_l^2 Vd`` of the
    previous state, with the partials carried alongside.
    Returns the last state, the NTK with its partials, and Sigmadot of the last layer.
    """
    act = spec.act
    (w, b), rest = spec.layer_stds()[0], spec.layer_stds()[1:]
    st = affine(out, w, b, xp)
    T, dT_r, dT_c = lr_self * st.z.c, lr_self * st.dc_r, lr_self * st.dc_c
    if T_in is not None:
        T = T + w * w * T_in
    sdot = xp.ones_like(st.z.c)
    for w, b in rest:
        o, du, dVd_r, dVd_c = activate(st, act, xp)
        w2 = w * w
        sdot = w2 * du.Vd
        st = affine(o, w, b, xp)
        dT_r = lr_self * st.dc_r + w2 * dVd_r * T + sdot * dT_r
        dT_c = lr_self * st.dc_c + w2 * dVd_c * T + sdot * dT_c
        T = lr_self * st.z.c + sdot * T
    return st, T, dT_r, dT_c, sdot


def pair_terms(nx, ny, hu, hv, lam, spec, m, xp=np):
    """Kernels of the network ``spec`` (a :class:`Layers`) for arrays of pairs, by the layer recursion.

    Parameters
    ----------
    nx, ny : arrays broadcasting to the pair shape, the norms |x|, |x~|
    hu, hv, lam : arrays of the pair shape, sin and cos of half the angle between x and x~ and its
        cosine (accurate as in MATH §2.1, :func:`refimpl.angles.pair_halves`)
    spec : Layers
    m : int, the input dimension
    xp : array module (numpy, or cupy for the GPU backend)

    Returns
    -------
    dict of arrays of the pair shape: ``nngp`` (Sigma), ``sigmadot`` (Sigmadot of the last
    layer, ``out_std^2 E[phi' phi']``), ``ntk`` (K or Theta), ``alpha``, ``beta`` (Xi = alpha x~ + beta x^,
    alpha = dK/d(x.x~), beta = dK/d|x|), ``nngp_dc``, ``nngp_dr`` (the same partials of Sigma).
    """
    st, T, dT_r, dT_c, sdot = _recursion(input_output(nx, ny, hu, hv, lam, float(m), xp), spec, xp)
    return {"nngp": st.z.c, "sigmadot": sdot, "ntk": T, "alpha": dT_c, "beta": dT_r,
            "nngp_dc": st.dc_c, "nngp_dr": st.dc_r}


def composed_terms(nx, ny, hu, hv, lam, spec_g, spec_f, m, lr_f=1.0, lr_g=1.0, xp=np):
    """NNGP and NTK of f o g without bottleneck (d -> infinity), by the layer recursion (MATH §5, §2.2).

    g's last layer feeds f's first through the infinitely wide linear bottleneck,
    so f's first layer sees the input covariance Sigma_g; its NTK gets
    ``w_f^2 Theta_g`` from g's parameters (weighted by ``lr_g``, f's own terms by ``lr_f``).

    Returns
    -------
    nngp (Sigma_F), ntk (NTK_inf) : arrays of the pair shape
    """
    st_g, T_g, _, _, _ = _recursion(input_output(nx, ny, hu, hv, lam, float(m), xp), spec_g, xp)
    st_f, T, _, _, _ = _recursion(state_as_output(st_g), spec_f, xp, T_in=lr_g * T_g, lr_self=lr_f)
    return st_f.z.c, T


def _terms(X, Y, spec):
    """pair_terms on every pair of rows of X (p, m) and Y (q, m)."""
    nx, ny, hu, hv, lam = pair_halves(X, Y)
    return pair_terms(nx[:, None], ny[None, :], hu, hv, lam, spec, X.shape[1])


# --------------------------------------------------------------------------
# Second partials of the NNGP: Sigma_(2) = d^2 Sigma(x, y) / dx dy  (MATH §2.2)
# --------------------------------------------------------------------------

#: Keys of :func:`nngp_second_partials`: Sigma and its partials in r_a = |x|, r_b = |y|, c0 = x.y
#: (MATH §2.2's S_a = dSigma/dr_a, ..., S_ab = d^2 Sigma/dr_a dr_b, ..., S_cc = d^2 Sigma/dc0^2).
SECOND_PARTIALS = ("S", "S_a", "S_b", "S_c", "S_ab", "S_ac", "S_bc", "S_cc")


def nngp_second_partials(nx, ny, hu, hv, lam, spec, m, xp=np):
    """Sigma and its partials in r_a = |x|, r_b = |y|, c0 = x.y up to the mixed second ones.

    Returns a dict with the keys :data:`SECOND_PARTIALS`: ``S`` (Sigma), ``S_a``, ``S_b``, ``S_c``
    (first partials in r_a, r_b, c0) and ``S_ab``, ``S_ac``, ``S_bc``, ``S_cc`` (second: r_a r_b,
    r_a c0, r_b c0, c0 c0), by the chain rule through the layer recursion (MATH §2.2).
    """
    m = float(m)
    act = spec.act
    o = input_output(nx, ny, hu, hv, lam, m, xp)
    zero = xp.zeros_like(o.V)
    (w, b), rest = spec.layer_stds()[0], spec.layer_stds()[1:]
    st = affine(o, w, b, xp)
    dsy = affine(input_output(ny, nx, hu, hv, lam, m, xp), w, b, xp).dsx     # the same step seen from y: ds_y/dr_b
    w2 = w * w
    d = {"S_a": zero, "S_b": zero, "S_c": zero + w2 / m, "S_ab": zero, "S_ac": zero, "S_bc": zero, "S_cc": zero}
    for w, b in rest:
        o, du, _, _ = activate(st, act, xp)
        sxp, syp = st.dsx, dsy
        w2 = w * w
        d = {
            "S_a": w2 * (du.V_sx * sxp + du.Vd * d["S_a"]),
            "S_b": w2 * (du.V_sy * syp + du.Vd * d["S_b"]),
            "S_c": w2 * du.Vd * d["S_c"],
            "S_ab": w2 * (du.V_sxsy * sxp * syp + du.Vd_sx * sxp * d["S_b"] + du.Vd_sy * d["S_a"] * syp
                          + du.Vd_c * d["S_a"] * d["S_b"] + du.Vd * d["S_ab"]),
            "S_ac": w2 * (du.Vd_sx * sxp * d["S_c"] + du.Vd_c * d["S_a"] * d["S_c"] + du.Vd * d["S_ac"]),
            "S_bc": w2 * (du.Vd_sy * syp * d["S_c"] + du.Vd_c * d["S_b"] * d["S_c"] + du.Vd * d["S_bc"]),
            "S_cc": w2 * (du.Vd_c * d["S_c"] * d["S_c"] + du.Vd * d["S_cc"]),
        }
        # ds_y/dr_b through the diagonal V(q~, q~, q~): the affine step's rule for s_x
        sy_new = xp.sqrt(w2 * du.Vy + b * b)
        dsy = xp.where(sy_new > 0.0, 0.5 * w2 * du.Vy_sy * dsy / xp.where(sy_new > 0.0, sy_new, 1.0),
                       w * act.zero_slope * dsy)
        st = affine(o, w, b, xp)
    d["S"] = st.z.c
    return d


# --------------------------------------------------------------------------
# NNGP, its derivative kernel, NTK  (MATH §2, §2.2)
# --------------------------------------------------------------------------

def nngp(X, Y, activation="relu", depth=None, w_std=None, b_std=None, out_std=None):
    """NNGP kernel Sigma(x, y) (paper eq 45; MATH §2, §2.2).

    Parameters
    ----------
    X : (p, m) array;  Y : (q, m) array
    activation : {"relu", "erf", "linear"} or Layers (then nothing else, see :func:`layers`)
    depth : int, optional, number of weight matrices (default 2)
    w_std, b_std, out_std : float, the layer scales (MATH §2.2; defaults 1, 0, 1)

    Returns
    -------
    (p, q) array
    """
    spec = layers(activation, depth, w_std, b_std, out_std)
    return _terms(*as_pair(X, Y), spec)["nngp"]


def sigmadot(X, Y, activation="relu", depth=None, w_std=None, b_std=None, out_std=None):
    """Derivative kernel of the last layer, ``out_std^2 E[phi'(a) phi'(b)]`` (paper eq 32, 45; MATH §2.2).

    Arguments as :func:`nngp`.  Returns a (p, q) array.
    """
    spec = layers(activation, depth, w_std, b_std, out_std)
    return _terms(*as_pair(X, Y), spec)["sigmadot"]


def ntk(X, Y, activation="relu", depth=None, w_std=None, b_std=None, out_std=None):
    """Neural tangent kernel: Theta (inputs in R^d0) or K (points in R^d) (MATH §2, §2.2).

    Arguments as :func:`nngp`.  Returns a (p, q) array.
    """
    spec = layers(activation, depth, w_std, b_std, out_std)
    return _terms(*as_pair(X, Y), spec)["ntk"]


# --------------------------------------------------------------------------
# Xi = dK(x, y)/dx  (paper eq 13, 46; MATH §2, §2.2)
# --------------------------------------------------------------------------

def xi_coefficients(X, Y, activation="relu", depth=None, w_std=None, b_std=None, out_std=None):
    """Coefficients of Xi(x, y) = alpha * y + beta * x^ (MATH §2, §2.2, §4).

    ``alpha = dK/d(x.y)``, ``beta = dK/d|x|`` from the layer recursion; Xi is a combination of the
    two points, which is what lets the simulator sum it over the history with two matrix products.
    On the ridge (sine of a layer's angle below ``XI_SIN_THRESHOLD``) the 1/sin terms take the
    limit 0 (MATH §2: a := 0).  Arguments as :func:`nngp`.

    Returns
    -------
    alpha, beta : (p, q) arrays
    """
    spec = layers(activation, depth, w_std, b_std, out_std)
    t = _terms(*as_pair(X, Y), spec)
    return t["alpha"], t["beta"]


def xi(X, Y, activation="relu", depth=None, w_std=None, b_std=None, out_std=None):
    """Xi(x, y) = dK(x, y)/dx, the gradient of K in its first argument (paper eq 13, 46; MATH §2).

    Finite for parallel and anti-parallel pairs (the default network: ``Xi(x, c x) = c x / m`` for
    c > 0 and 0 for c < 0).  Arguments as :func:`nngp`.

    Returns
    -------
    (p, q, m) array, ``out[i, j] = Xi(X[i], Y[j])``
    """
    X, Y = as_pair(X, Y)
    alpha, beta = xi_coefficients(X, Y, activation, depth, w_std, b_std, out_std)
    _, Xh = unit_rows(X)
    return alpha[:, :, None] * Y[None, :, :] + beta[:, :, None] * Xh[:, None, :]


# --------------------------------------------------------------------------
# Jacobian covariances (lemma 3.1)
# --------------------------------------------------------------------------

def sigma1(X, Y, activation="relu", depth=None, w_std=None, b_std=None, out_std=None):
    """Cross-covariance E[f(x) J(y)] = Sigma_(1)(x, y) = dSigma(x, b)/db at b = y (paper eq 9-10; MATH §2.2).

    ``dSigma/dc (y, x) x + dSigma/dr (y, x) y^`` with the partials of the NNGP from the layer
    recursion (Sigma is symmetric, so the derivative in its second argument is the one in the
    first with the pair swapped).  Arguments as :func:`nngp`.

    Returns
    -------
    (p, q, m) array
    """
    spec = layers(activation, depth, w_std, b_std, out_std)
    X, Y = as_pair(X, Y)
    t = _terms(Y, X, spec)
    _, Yh = unit_rows(Y)
    return t["nngp_dc"].T[:, :, None] * X[:, None, :] + t["nngp_dr"].T[:, :, None] * Yh[None, :, :]


def sigma2(X, Y, activation="relu", depth=None, w_std=None, b_std=None, out_std=None):
    """Jacobian covariance E[J^{ab}(x) J^{ac}(y)] = Sigma_(2)^{bc}(x, y) (paper eq 8, 11; MATH §2, §2.2).

    ``d^2 Sigma / dx dy`` from the second partials of the NNGP in r_a = |x|, r_b = |y|, c0 = x.y
    (:func:`nngp_second_partials`), for every architecture:

        Sigma_(2) = S_c I + S_ab x^ y^T + S_bc y y^T + S_ac x^ x^T + S_cc y x^T.

    ``Sigma_(2)(y, x) = Sigma_(2)(x, y)^T``; the matrix itself is symmetric for one hidden layer
    only (MATH §2.2).  Arguments as :func:`nngp`.

    Returns
    -------
    (p, q, m, m) array
    """
    spec = layers(activation, depth, w_std, b_std, out_std)
    X, Y = as_pair(X, Y)
    nx, ny, hu, hv, lam = pair_halves(X, Y)
    t = nngp_second_partials(nx[:, None], ny[None, :], hu, hv, lam, spec, X.shape[1])
    _, Xh = unit_rows(X)
    _, Yh = unit_rows(Y)
    m = X.shape[1]
    x = X[:, None, None, :]
    y = Y[None, :, :, None]
    e = lambda k: t[k][:, :, None, None]          # noqa: E731
    return (e("S_c") * np.eye(m) + e("S_ab") * Xh[:, None, :, None] * Yh[None, :, None, :]
            + e("S_bc") * y * Yh[None, :, None, :] + e("S_ac") * Xh[:, None, :, None] * x + e("S_cc") * y * x)


# --------------------------------------------------------------------------
# No bottleneck (MATH §5)
# --------------------------------------------------------------------------

def ntk_inf(X, Y, layers_g=None, layers_f=None, lr_g=1.0, lr_f=1.0):
    """NTK of the network without bottleneck, d -> infinity (MATH §5, §2.2).

    g's last layer feeds f's first through the infinitely wide linear bottleneck; the kernel comes
    from the layer recursion through both halves (:func:`composed_terms`), with g's parameters
    weighted by ``lr_g`` and f's by ``lr_f`` (equal rates: the kernel of the composed network).

    Parameters
    ----------
    X : (p, d0) array;  Y : (q, d0) array
    layers_g, layers_f : Layers, g first; both None for the network of MATH §1 (one alone is refused)
    lr_g, lr_f : float, the rates of g's and f's parameters

    Returns
    -------
    (p, q) array
    """
    spec_g, spec_f = inf_layers(layers_g, layers_f)
    X, Y = as_pair(X, Y)
    nx, ny, hu, hv, lam = pair_halves(X, Y)
    return composed_terms(nx[:, None], ny[None, :], hu, hv, lam, spec_g, spec_f, X.shape[1], lr_f, lr_g)[1]


def nngp_inf(X, Y, layers_g=None, layers_f=None):
    """Sigma_F, the NNGP of f o g without bottleneck (MATH §5): the covariance of F0.

    Arguments as :func:`ntk_inf`.  Returns a (p, q) array.
    """
    spec_g, spec_f = inf_layers(layers_g, layers_f)
    X, Y = as_pair(X, Y)
    nx, ny, hu, hv, lam = pair_halves(X, Y)
    return composed_terms(nx[:, None], ny[None, :], hu, hv, lam, spec_g, spec_f, X.shape[1])[0]
