"""Closed-form kernels of the infinite layers (MATH §2 and §5).

Every function takes a batch of points ``X`` of shape (p, m) and ``Y`` of
shape (q, m) and returns the kernel for every pair ``(X[i], Y[j])``.  The scale
``m`` is the input dimension of the layer: ``m = d0`` for the embedding network
g (the kernel is then Theta) and ``m = d`` for the head f (the kernel is K).

Activations: ``"relu"`` (paper eq 45), ``"erf"`` (Williams 1997) and
``"linear"`` (paper lemma 4.1).

Architecture of one half (g or f) of the network, in the NTK parametrisation
(MATH §1, §2.2): ``depth`` weight matrices (the paper's L_g, L_f; ``depth - 1``
hidden layers of infinite width), every hidden layer a
``Dense(w_std, b_std)``: ``a = w_std W h / sqrt(fan_in) + b_std b`` with W, b
standard normal, and the last layer a ``Dense(out_std, b_std)``.  The default
(``depth=2, w_std=1, b_std=0, out_std=1``) is the network of MATH §1.

Two code paths compute the same kernels:

* the default ReLU network and the linear networks without scales or biases
  use the closed forms of MATH §2 and lemma 4.1 written out (the golden files
  were written by them);
* every other architecture goes through the layer recursion of MATH §2.2
  (:func:`pair_terms`): each layer maps the covariance entries
  ``q = k(x, x), q~ = k(x~, x~), c = k(x, x~)`` of its inputs through the
  activation's dual kernel, carrying the partial derivatives with respect to
  |x| and x.x~ from which Xi, Sigma_(1) and the NTK follow by the chain rule.

Numerics (MATH §2.1): the angle between two points is computed as
``2 * atan2(|x^ - y^|, |x^ + y^|)``, which keeps full relative accuracy near 0
and pi, and cos and sin are taken from it.  A zero vector has unit vector 0 and
all kernels return their limits there (no NaN).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .validate import positive_number, real_array

ACTIVATIONS = ("relu", "linear", "erf")

#: Largest temporary, in float64 elements, that the pairwise helpers allocate.
BLOCK_ELEMENTS = 1 << 21

#: Pairs with |cos| above this get their angle from explicit differences (see :func:`pair_angles`).
#: 0.95 bounds the loss in 1 -+ cos to 20 ulps while keeping the NumPy gather of such pairs
#: rare.  Backends that recompute a pair in place for O(m) flops may use a tighter cut-off.
NEAR_PARALLEL_COS = 0.95

#: Below this sine, Xi's direction ``a`` is set to 0 (MATH §2; golden files depend on it).
XI_SIN_THRESHOLD = 1e-10

TWO_PI = 2.0 * np.pi


# --------------------------------------------------------------------------
# input checking and pairwise geometry
# --------------------------------------------------------------------------

def check_activation(activation, depth):
    """Validate ``activation`` and ``depth`` (weight matrices); return the depth to use (default 2).

    ReLU and erf need a hidden layer (depth >= 2); a linear network may have one matrix.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    if depth is None:
        return 2
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth: expected a positive integer, got {depth!r}")
    if activation != "linear" and depth < 2:
        raise ValueError(f"depth: a {activation} network needs at least one hidden layer (depth >= 2 weight "
                         f"matrices), got depth={depth}")
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
    def closed_form(self):
        """True where the written-out kernels of MATH §2 / lemma 4.1 apply (unit scales, no biases,
        and for ReLU one hidden layer); the layer recursion is used otherwise."""
        return self.kernel_scale is not None and self.w_std == 1.0 and self.out_std == 1.0

    @property
    def kernel_scale(self):
        """c such that Sigma, Theta and Xi are c times those of the unit-scale network (MATH §2.2).

        Defined where the closed forms apply up to the scales: no biases, and a linear network or
        a ReLU network with one hidden layer.  Both activations are positively homogeneous, so each
        weight std w_l multiplies the kernels by w_l^2: c = prod_l w_l^2.  (Sigmadot scales by
        out_std^2 alone.)  None for every other architecture.
        """
        if self.b_std != 0.0 or not (self.activation == "linear"
                                     or (self.activation == "relu" and self.depth == 2)):
            return None
        return float(np.prod([w * w for w, _ in self.layer_stds()]))

    def layer_stds(self):
        """[(weight std, bias std)] of the layers, input layer first."""
        return [(self.w_std, self.b_std)] * (self.depth - 1) + [(self.out_std, self.b_std)]


def architecture(activation="relu", depth_g=1, depth_f=1, w_std=1.0, b_std=0.0, out_std=1.0):
    """(Layers of g, Layers of f) from the command line's options (MATH §2.2).

    ``depth_g``, ``depth_f`` count *hidden layers* (1 is the network of MATH §1;
    a Layers counts weight matrices, one more).  ``w_std``, ``b_std``, ``out_std``
    are one number for both halves or a pair (g, f).
    """
    def pair(name, value):
        if isinstance(value, (tuple, list)):
            if len(value) != 2:
                raise ValueError(f"{name}: expected one number or two (g, f), got {value!r}")
            return tuple(value)
        return value, value

    out = []
    for k, (name, hidden) in enumerate((("depth_g", depth_g), ("depth_f", depth_f))):
        if isinstance(hidden, bool) or not isinstance(hidden, (int, np.integer)) or hidden < 0 \
                or (hidden == 0 and activation != "linear"):
            least = 0 if activation == "linear" else 1
            raise ValueError(f"{name}: expected a number of hidden layers >= {least}, got {hidden!r}")
        out.append(Layers.make(activation, int(hidden) + 1, pair("w_std", w_std)[k], pair("b_std", b_std)[k],
                               pair("out_std", out_std)[k]))
    return tuple(out)


def layers(activation="relu", depth=None, w_std=1.0, b_std=0.0, out_std=1.0):
    """:class:`Layers` from the keyword arguments of the kernel functions (or a Layers passed as activation)."""
    if isinstance(activation, Layers):
        return activation
    return Layers.make(activation, depth, w_std, b_std, out_std)


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


_pair = as_pair          # the short name the kernels below use


def unit_rows(X):
    """Norms (p,) and unit vectors (p, m) of the rows of ``X``; a zero row has unit vector 0."""
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))
    safe = np.where(norms > 0.0, norms, 1.0)
    return norms, X / safe[:, None]


def pair_angles(X, Y):
    """Pairwise angles between rows of ``X`` (p, m) and ``Y`` (q, m).

    Returns
    -------
    nx : (p,) norms of X;  ny : (q,) norms of Y
    theta : (p, q) angles in [0, pi], ``2 atan2(|x^ - y^|, |x^ + y^|)`` (MATH §2.1)
    lam : (p, q) cos(theta);  s : (p, q) sin(theta)
    """
    nx, Xh = unit_rows(X)
    ny, Yh = unit_rows(Y)
    # |x^ -+ y^|^2 = |x^|^2 + |y^|^2 -+ 2 x^.y^ loses a factor 1/(1 -+ x^.y^) of relative accuracy
    # to cancellation: at most 20 ulps while |x^.y^| <= NEAR_PARALLEL_COS.  Nearer to parallel or
    # anti-parallel (where training lives, MATH §2.1) the pairs are recomputed from the explicit
    # differences x^ -+ y^, which keep full relative accuracy down to angle 0.
    cos = Xh @ Yh.T
    sx = np.einsum("ij,ij->i", Xh, Xh)[:, None]
    sy = np.einsum("ij,ij->i", Yh, Yh)[None, :]
    minus2 = np.maximum(sx + sy - 2.0 * cos, 0.0)
    plus2 = np.maximum(sx + sy + 2.0 * cos, 0.0)
    ii, jj = np.nonzero(np.abs(cos) > NEAR_PARALLEL_COS)
    step = max(1, BLOCK_ELEMENTS // X.shape[1])
    for k in range(0, ii.size, step):
        i, j = ii[k:k + step], jj[k:k + step]
        minus = Xh[i] - Yh[j]
        plus = Xh[i] + Yh[j]
        minus2[i, j] = np.einsum("ij,ij->i", minus, minus)
        plus2[i, j] = np.einsum("ij,ij->i", plus, plus)
    theta = 2.0 * np.arctan2(np.sqrt(minus2), np.sqrt(plus2))
    return nx, ny, theta, np.cos(theta), np.sin(theta)


# --------------------------------------------------------------------------
# Dual kernels and the layer recursion  (MATH §2.2)
# --------------------------------------------------------------------------
#
# A layer's pre-activations at two inputs x, x~ are jointly Gaussian with
# covariance entries q = sx^2, q~ = sy^2, c.  The state of a layer keeps
#   sx, sy          standard deviations,
#   c               the covariance,
#   dlt = sx sy - c and eps = sx sy + c (both >= 0), computed without
#                   cancellation, so that the angle 2 atan2(sqrt(dlt), sqrt(eps))
#                   keeps full relative accuracy near 0 and pi (MATH §2.1),
# and the partial derivatives with respect to r = |x| and c0 = x.x~ of the raw
# inputs: dsx = dsx/dr, dc_r = dc/dr, dc_c = dc/dc0.
#
# The output of an activation (its dual kernel, MATH §2.2) has the entries
#   Vx = E[phi(u)^2], Vy = E[phi(v)^2], V = E[phi(u) phi(v)],
#   dltV = sqrt(Vx Vy) - V, epsV = sqrt(Vx Vy) + V,
# their partials dVx_r, dV_r, dV_c, and the derivative kernel
#   Vd = E[phi'(u) phi'(v)] = dV/dc (Price's theorem) with partials dVd_r, dVd_c.


class _State:
    """Covariance entries of a layer for arrays of pairs, with partials (see the comment above)."""

    __slots__ = ("sx", "sy", "c", "dlt", "eps", "dsx", "dc_r", "dc_c")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))


class _Dual:
    """Entries of an activation's output (the next layer's input covariance) and the derivative kernel."""

    __slots__ = ("Vx", "Vy", "V", "dltV", "epsV", "dVx_r", "dV_r", "dV_c", "lim0", "Vd", "dVd_r", "dVd_c")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))


def _safe_div(xp, num, den):
    """num / den where den > 0, else 0."""
    ok = den > 0.0
    return xp.where(ok, num / xp.where(ok, den, 1.0), 0.0)


def _input_dual(nx, ny, theta, m, xp):
    """The raw inputs as the 'output' feeding the first layer: entries x.x~/m and partials."""
    hu, hv = xp.sin(0.5 * theta), xp.cos(0.5 * theta)
    nn = nx * ny / m
    zero = xp.zeros_like(nn)
    return _Dual(Vx=nx * nx / m + zero, Vy=ny * ny / m + zero, V=nn * (hv - hu) * (hv + hu),
                 dltV=2.0 * nn * hu * hu, epsV=2.0 * nn * hv * hv,
                 dVx_r=2.0 * nx / m + zero, dV_r=zero, dV_c=zero + 1.0 / m, lim0=zero + 1.0 / math.sqrt(m))


def _affine(o, w, b, xp):
    """Pre-activation state of Dense(w, b) fed by the output ``o`` (MATH §2.2)."""
    w2, beta = w * w, b * b
    A, At = w2 * o.Vx, w2 * o.Vy
    qx, qy = A + beta, At + beta
    sx, sy = xp.sqrt(qx), xp.sqrt(qy)
    dlt = w2 * o.dltV
    eps = w2 * o.epsV
    if beta > 0.0:
        # sqrt(qx qy) - beta - sqrt(A At) and sqrt(qx qy) + beta - sqrt(A At), without cancellation
        rA, rAt = xp.sqrt(A), xp.sqrt(At)
        Q = sx * sy
        dlt = dlt + beta * (rA - rAt) ** 2 / (Q + beta + rA * rAt)
        eps = eps + beta * (A + At + beta) / (Q + rA * rAt) + beta
    dsx = xp.where(sx > 0.0, 0.5 * w2 * o.dVx_r / xp.where(sx > 0.0, sx, 1.0), w * o.lim0)
    return _State(sx=sx, sy=sy, c=w2 * o.V + beta, dlt=dlt, eps=eps, dsx=dsx, dc_r=w2 * o.dV_r,
                  dc_c=w2 * o.dV_c)


def _half_angles(st, xp):
    """sin(theta/2), cos(theta/2) of a state.

    Zero vectors as in :func:`pair_angles` (MATH §2.1): theta = pi/2 against one
    zero vector, theta = 0 between two.
    """
    r2 = st.dlt + st.eps
    zero = r2 <= 0.0
    both = (st.sx + st.sy) <= 0.0
    r2 = xp.where(zero, 1.0, r2)
    hu = xp.where(zero, xp.where(both, 0.0, math.sqrt(0.5)), xp.sqrt(st.dlt / r2))
    hv = xp.where(zero, xp.where(both, 1.0, math.sqrt(0.5)), xp.sqrt(st.eps / r2))
    return hu, hv


def _relu_dual(st, xp):
    """ReLU: V = sx sy (sin t + (pi - t) cos t) / 2pi, Vd = (pi - t) / 2pi (paper eq 45; MATH §2.2)."""
    hu, hv = _half_angles(st, xp)
    theta = 2.0 * xp.arctan2(hu, hv)
    pi_minus = 2.0 * xp.arctan2(hv, hu)
    s, lam = 2.0 * hu * hv, (hv - hu) * (hv + hu)
    nn = st.sx * st.sy
    Vd = pi_minus / TWO_PI
    one_minus_J = (TWO_PI * hu * hu + theta * lam - s) / np.pi          # 1 - J(t)/pi, J = s + (pi - t) lam
    ridge = s < XI_SIN_THRESHOLD
    inv_s = xp.where(ridge, 0.0, 1.0 / xp.where(ridge, 1.0, s))
    dVd_c1 = _safe_div(xp, inv_s / TWO_PI, nn)                           # dVd/dc
    dVd_sx = -_safe_div(xp, lam * inv_s / TWO_PI, st.sx)                 # dVd/dsx at fixed c
    dV_sx = st.sy * s / TWO_PI                                           # dV/dsx at fixed c
    return _Dual(Vx=0.5 * st.sx * st.sx, Vy=0.5 * st.sy * st.sy, V=nn * (s + pi_minus * lam) / TWO_PI,
                 dltV=0.5 * nn * one_minus_J, epsV=0.5 * nn * (2.0 - one_minus_J),
                 dVx_r=st.sx * st.dsx, dV_r=dV_sx * st.dsx + Vd * st.dc_r, dV_c=Vd * st.dc_c,
                 lim0=st.dsx * math.sqrt(0.5), Vd=Vd, dVd_r=dVd_sx * st.dsx + dVd_c1 * st.dc_r,
                 dVd_c=dVd_c1 * st.dc_c)


def _erf_dual(st, xp):
    """erf (Williams 1997): V = (2/pi) asin(2c / sqrt((1 + 2q)(1 + 2q~))), Vd = 4 / (pi sqrt(E)),
    E = (1 + 2q)(1 + 2q~) - 4c^2 = 1 + 2q + 2q~ + 4 dlt eps (MATH §2.2)."""
    qx, qy = st.sx * st.sx, st.sy * st.sy
    E = 1.0 + 2.0 * qx + 2.0 * qy + 4.0 * st.dlt * st.eps
    rE = xp.sqrt(E)
    V = (2.0 / np.pi) * xp.arctan2(2.0 * st.c, rE)
    Vx = (2.0 / np.pi) * xp.arctan2(2.0 * qx, xp.sqrt(1.0 + 4.0 * qx))
    Vy = (2.0 / np.pi) * xp.arctan2(2.0 * qy, xp.sqrt(1.0 + 4.0 * qy))
    Vd = 4.0 / (np.pi * rE)
    dV_sx = -8.0 * st.sx * st.c / (np.pi * rE * (1.0 + 2.0 * qx))
    E32 = E * rE
    dVd_c1 = 16.0 * st.c / (np.pi * E32)
    dVd_sx = -8.0 * st.sx * (1.0 + 2.0 * qy) / (np.pi * E32)
    root = xp.sqrt(Vx * Vy)
    return _Dual(Vx=Vx, Vy=Vy, V=V, dltV=root - V, epsV=root + V,
                 dVx_r=8.0 * st.sx * st.dsx / (np.pi * (1.0 + 2.0 * qx) * xp.sqrt(1.0 + 4.0 * qx)),
                 dV_r=dV_sx * st.dsx + Vd * st.dc_r, dV_c=Vd * st.dc_c,
                 lim0=st.dsx * math.sqrt(4.0 / np.pi), Vd=Vd, dVd_r=dVd_sx * st.dsx + dVd_c1 * st.dc_r,
                 dVd_c=dVd_c1 * st.dc_c)


def _linear_dual(st, xp):
    """Identity: V = c, Vd = 1."""
    zero = xp.zeros_like(st.c)
    return _Dual(Vx=st.sx * st.sx, Vy=st.sy * st.sy, V=st.c, dltV=st.dlt, epsV=st.eps,
                 dVx_r=2.0 * st.sx * st.dsx, dV_r=st.dc_r, dV_c=st.dc_c, lim0=st.dsx, Vd=zero + 1.0,
                 dVd_r=zero, dVd_c=zero)


DUALS = {"relu": _relu_dual, "erf": _erf_dual, "linear": _linear_dual}


def _state_as_output(st):
    """A state fed forward unchanged (the linear bottleneck between g and f, MATH §5)."""
    return _Dual(Vx=st.sx * st.sx, Vy=st.sy * st.sy, V=st.c, dltV=st.dlt, epsV=st.eps,
                 dVx_r=2.0 * st.sx * st.dsx, dV_r=st.dc_r, dV_c=st.dc_c, lim0=st.dsx)


def _recursion(out, spec, xp, T_in=None, lr_self=1.0):
    """Run the layers of ``spec`` from the input entries ``out``.

    NTK recursion (MATH §2.2): ``T_1 = lr_self c_1 + w_1^2 T_in``,
    ``T_l = lr_self c_l + Sigmadot_l T_{l-1}``, ``Sigmadot_l = w_l^2 Vd`` of the
    previous state, with the partials carried alongside.
    Returns the last state, the NTK with its partials, and Sigmadot of the last layer.
    """
    dual = DUALS[spec.activation]
    (w, b), rest = spec.layer_stds()[0], spec.layer_stds()[1:]
    st = _affine(out, w, b, xp)
    T, dT_r, dT_c = lr_self * st.c, lr_self * st.dc_r, lr_self * st.dc_c
    if T_in is not None:
        T = T + w * w * T_in
    sdot = xp.ones_like(st.c)
    for w, b in rest:
        o = dual(st, xp)
        w2 = w * w
        sdot = w2 * o.Vd
        st = _affine(o, w, b, xp)
        dT_r = lr_self * st.dc_r + w2 * o.dVd_r * T + sdot * dT_r
        dT_c = lr_self * st.dc_c + w2 * o.dVd_c * T + sdot * dT_c
        T = lr_self * st.c + sdot * T
    return st, T, dT_r, dT_c, sdot


def pair_terms(nx, ny, theta, spec, m, xp=np):
    """Kernels of the network ``spec`` (a :class:`Layers`) for arrays of pairs, by the layer recursion.

    Parameters
    ----------
    nx, ny : arrays broadcasting to the pair shape, the norms |x|, |x~|
    theta : array of the pair shape, the angle between x and x~ (accurate as in MATH §2.1)
    spec : Layers
    m : int, the input dimension
    xp : array module (numpy, or cupy for the GPU backend)

    Returns
    -------
    dict of arrays of the pair shape: ``nngp`` (Sigma), ``sigmadot`` (Sigmadot of the last
    layer, ``out_std^2 E[phi' phi']``), ``ntk`` (K or Theta), ``alpha``, ``beta`` (Xi = alpha x~ + beta x^,
    alpha = dK/d(x.x~), beta = dK/d|x|), ``nngp_dc``, ``nngp_dr`` (the same partials of Sigma).
    """
    st, T, dT_r, dT_c, sdot = _recursion(_input_dual(nx, ny, theta, float(m), xp), spec, xp)
    return {"nngp": st.c, "sigmadot": sdot, "ntk": T, "alpha": dT_c, "beta": dT_r,
            "nngp_dc": st.dc_c, "nngp_dr": st.dc_r}


def composed_terms(nx, ny, theta, spec_g, spec_f, m, lr_f=1.0, lr_g=1.0, xp=np):
    """NNGP and NTK of f o g without bottleneck (d -> infinity), by the layer recursion (MATH §5, §2.2).

    g's last layer feeds f's first through the infinitely wide linear bottleneck,
    so f's first layer sees the input covariance Sigma_g; its NTK gets
    ``w_f^2 Theta_g`` from g's parameters (weighted by ``lr_g``, f's own terms by ``lr_f``).

    Returns
    -------
    nngp (Sigma_F), ntk (NTK_inf) : arrays of the pair shape
    """
    st_g, T_g, _, _, _ = _recursion(_input_dual(nx, ny, theta, float(m), xp), spec_g, xp)
    st_f, T, _, _, _ = _recursion(_state_as_output(st_g), spec_f, xp, T_in=lr_g * T_g, lr_self=lr_f)
    return st_f.c, T


def _terms(X, Y, spec):
    """pair_terms on every pair of rows of X (p, m) and Y (q, m)."""
    nx, ny, theta, _, _ = pair_angles(X, Y)
    return pair_terms(nx[:, None], ny[None, :], theta, spec, X.shape[1])


# --------------------------------------------------------------------------
# Second partials of the NNGP: Sigma_(2) = d^2 Sigma(x, y) / dx dy  (MATH §2.2)
# --------------------------------------------------------------------------

def _dual_second(st, activation, xp):
    """Partials of V(s_x, s_y, c) up to the mixed second ones (MATH §2.2).

    Returns Vx, Vy, Vc, Vxy, Vxc, Vyc, Vcc (x, y: s_x, s_y at fixed c) and the derivatives
    dV(q, q, q)/ds_x, dV(q~, q~, q~)/ds_y of the diagonal.  Vc = Vd and Vxc, Vyc, Vcc are Vd's partials (Price).
    """
    sx, sy, c = st.sx, st.sy, st.c
    if activation == "linear":
        zero = xp.zeros_like(c)
        return zero, zero, zero + 1.0, zero, zero, zero, zero, 2.0 * sx, 2.0 * sy
    if activation == "relu":
        hu, hv = _half_angles(st, xp)
        s, lam = 2.0 * hu * hv, (hv - hu) * (hv + hu)
        ridge = s < XI_SIN_THRESHOLD
        inv_s = xp.where(ridge, 0.0, 1.0 / xp.where(ridge, 1.0, s))
        Vc = 2.0 * xp.arctan2(hv, hu) / TWO_PI
        return (sy * s / TWO_PI, sx * s / TWO_PI, Vc, inv_s / TWO_PI,
                -_safe_div(xp, lam * inv_s / TWO_PI, sx), -_safe_div(xp, lam * inv_s / TWO_PI, sy),
                _safe_div(xp, inv_s / TWO_PI, sx * sy), sx, sy)
    qx, qy = sx * sx, sy * sy
    E = 1.0 + 2.0 * qx + 2.0 * qy + 4.0 * st.dlt * st.eps
    rE = xp.sqrt(E)
    E32 = E * rE
    return (-8.0 * sx * c / (np.pi * rE * (1.0 + 2.0 * qx)), -8.0 * sy * c / (np.pi * rE * (1.0 + 2.0 * qy)),
            4.0 / (np.pi * rE), 16.0 * sx * sy * c / (np.pi * E32),
            -8.0 * sx * (1.0 + 2.0 * qy) / (np.pi * E32), -8.0 * sy * (1.0 + 2.0 * qx) / (np.pi * E32),
            16.0 * c / (np.pi * E32),
            8.0 * sx / (np.pi * (1.0 + 2.0 * qx) * xp.sqrt(1.0 + 4.0 * qx)),
            8.0 * sy / (np.pi * (1.0 + 2.0 * qy) * xp.sqrt(1.0 + 4.0 * qy)))


def nngp_second_partials(nx, ny, theta, spec, m, xp=np):
    """Sigma and its partials in r_a = |x|, r_b = |y|, c0 = x.y up to the mixed second ones.

    Returns a dict with ``c`` (Sigma), ``a``, ``b``, ``cc`` (first partials in r_a, r_b, c0) and
    ``ab``, ``ac``, ``bc``, ``ccc`` (second: r_a r_b, r_a c0, r_b c0, c0 c0), by the chain rule
    through the layer recursion (MATH §2.2).
    """
    m = float(m)
    o = _input_dual(nx, ny, theta, m, xp)
    zero = xp.zeros_like(o.V)
    (w, b), rest = spec.layer_stds()[0], spec.layer_stds()[1:]
    st = _affine(o, w, b, xp)
    sy_in = _input_dual(ny, nx, theta, m, xp)                # the same step seen from y: ds_y/dr_b
    dsy = _affine(sy_in, w, b, xp).dsx
    w2 = w * w
    d = {"a": zero, "b": zero, "cc": zero + w2 / m, "ab": zero, "ac": zero, "bc": zero, "ccc": zero}
    for w, b in rest:
        Vx, Vy, Vc, Vxy, Vxc, Vyc, Vcc, dVxx, dVyy = _dual_second(st, spec.activation, xp)
        sxp, syp = st.dsx, dsy
        w2 = w * w
        new = {
            "a": w2 * (Vx * sxp + Vc * d["a"]),
            "b": w2 * (Vy * syp + Vc * d["b"]),
            "cc": w2 * Vc * d["cc"],
            "ab": w2 * (Vxy * sxp * syp + Vxc * sxp * d["b"] + Vyc * d["a"] * syp + Vcc * d["a"] * d["b"]
                        + Vc * d["ab"]),
            "ac": w2 * (Vxc * sxp * d["cc"] + Vcc * d["a"] * d["cc"] + Vc * d["ac"]),
            "bc": w2 * (Vyc * syp * d["cc"] + Vcc * d["b"] * d["cc"] + Vc * d["bc"]),
            "ccc": w2 * (Vcc * d["cc"] * d["cc"] + Vc * d["ccc"]),
        }
        o = DUALS[spec.activation](st, xp)
        # ds_y/dr_b through the diagonal V(q~, q~, q~): the same rule as _affine for s_x
        sy_new = xp.sqrt(w2 * o.Vy + b * b)
        dVy_r = dVyy * dsy
        lim = {"relu": math.sqrt(0.5), "erf": math.sqrt(4.0 / np.pi), "linear": 1.0}[spec.activation]
        dsy = xp.where(sy_new > 0.0, 0.5 * w2 * dVy_r / xp.where(sy_new > 0.0, sy_new, 1.0), w * lim * dsy)
        st = _affine(o, w, b, xp)
        d = new
    d["c"] = st.c
    return d


# --------------------------------------------------------------------------
# NNGP, its derivative kernel, NTK  (paper eq 45; MATH §2)
# --------------------------------------------------------------------------

def _relu_parts(X, Y):
    """Sigma, Sigmadot (p, q) for ReLU from the pairwise geometry."""
    nx, ny, theta, lam, s = pair_angles(X, Y)
    m = X.shape[1]
    sigmadot_ = (np.pi - theta) / TWO_PI
    sigma_ = np.outer(nx, ny) / m * (lam * (np.pi - theta) + s) / TWO_PI
    return sigma_, sigmadot_


def nngp(X, Y, activation="relu", depth=None, w_std=1.0, b_std=0.0, out_std=1.0):
    """NNGP kernel Sigma(x, y) (paper eq 45; MATH §2).

    ReLU: ``Sigma = (|x||y|/m) (lam (pi - arccos lam) + sqrt(1 - lam^2)) / (2 pi)``.
    Linear: ``Sigma = x.y / m`` for every depth.

    Parameters
    ----------
    X : (p, m) array;  Y : (q, m) array
    activation : {"relu", "erf", "linear"} or Layers
    depth : int, optional, number of weight matrices (default 2)
    w_std, b_std, out_std : float, the layer scales (MATH §2.2)

    Returns
    -------
    (p, q) array
    """
    spec = layers(activation, depth, w_std, b_std, out_std)
    X, Y = as_pair(X, Y)
    if not spec.closed_form:
        return _terms(X, Y, spec)["nngp"]
    if spec.activation == "linear":
        return X @ Y.T / X.shape[1]
    return _relu_parts(X, Y)[0]


def sigmadot(X, Y, activation="relu", depth=None, w_std=1.0, b_std=0.0, out_std=1.0):
    """Derivative kernel Sigmadot(x, y) = E[phi'(a) phi'(b)] (paper eq 32, 45).

    ReLU: ``(pi - arccos lam) / (2 pi)``.  Linear: 1.  In general the derivative
    kernel of the last layer, ``out_std^2 E[phi'(a) phi'(b)]`` (MATH §2.2).

    Returns
    -------
    (p, q) array
    """
    spec = layers(activation, depth, w_std, b_std, out_std)
    X, Y = as_pair(X, Y)
    if not spec.closed_form:
        return _terms(X, Y, spec)["sigmadot"]
    if spec.activation == "linear":
        return np.ones((X.shape[0], Y.shape[0]))
    return _relu_parts(X, Y)[1]


def ntk(X, Y, activation="relu", depth=None, w_std=1.0, b_std=0.0, out_std=1.0):
    """Neural tangent kernel: Theta (inputs in R^d0) or K (points in R^d).

    ReLU (paper eq 45): ``NTK = (x.y/m) Sigmadot + Sigma``.
    Linear (lemma 4.1): ``NTK = depth * x.y / m``.

    Other architectures: the layer recursion of MATH §2.2.

    Parameters
    ----------
    X : (p, m) array;  Y : (q, m) array
    activation : {"relu", "erf", "linear"} or Layers
    depth : int, optional (default 2)
    w_std, b_std, out_std : float, the layer scales (MATH §2.2)

    Returns
    -------
    (p, q) array
    """
    spec = layers(activation, depth, w_std, b_std, out_std)
    L = spec.depth
    X, Y = as_pair(X, Y)
    m = X.shape[1]
    if not spec.closed_form:
        return _terms(X, Y, spec)["ntk"]
    if spec.activation == "linear":
        return L * (X @ Y.T) / m
    sigma_, sigmadot_ = _relu_parts(X, Y)
    return (X @ Y.T) / m * sigmadot_ + sigma_


# --------------------------------------------------------------------------
# Xi = dK(x, y)/dx  (paper eq 46, stable form of MATH §2)
# --------------------------------------------------------------------------

def xi_coefficients(X, Y, activation="relu", depth=None, w_std=1.0, b_std=0.0, out_std=1.0):
    """Coefficients of Xi(x, y) = alpha * y + beta * x^ (MATH §2, §4).

    Xi is a combination of the two points, which is what lets the simulator
    sum it over the history with two matrix products.  With
    ``a = (y^ - lam x^) / s`` (the unit vector of y - (y.x^) x^) the stable form
    of MATH §2,

        Xi = (2 Sigmadot y + (|y| / 2pi) (s x^ + lam a)) / m,

    becomes

        alpha = (2 Sigmadot + lam / (2 pi s)) / m
        beta  = |y| (s - lam^2 / s) / (2 pi m),

    and for ``s < XI_SIN_THRESHOLD`` the ``a`` term is dropped (a := 0):
    ``alpha = 2 Sigmadot / m``, ``beta = |y| s / (2 pi m)``.
    Linear: ``alpha = depth / m``, ``beta = 0``.  Other architectures (MATH §2.2):
    ``alpha = dK/d(x.y)``, ``beta = dK/d|x| = 2 |x| dK/dq``, from the layer recursion.

    Returns
    -------
    alpha, beta : (p, q) arrays
    """
    spec = layers(activation, depth, w_std, b_std, out_std)
    L = spec.depth
    X, Y = as_pair(X, Y)
    m = X.shape[1]
    if not spec.closed_form:
        t = _terms(X, Y, spec)
        return t["alpha"], t["beta"]
    if spec.activation == "linear":
        return np.full((X.shape[0], Y.shape[0]), L / m), np.zeros((X.shape[0], Y.shape[0]))
    nx, ny, theta, lam, s = pair_angles(X, Y)
    sigmadot_ = (np.pi - theta) / TWO_PI
    ridge = s < XI_SIN_THRESHOLD
    inv_s = np.where(ridge, 0.0, 1.0 / np.where(ridge, 1.0, s))
    alpha = (2.0 * sigmadot_ + lam * inv_s / TWO_PI) / m
    beta = ny[None, :] * (s - lam * lam * inv_s) / (TWO_PI * m)
    return alpha, beta


def xi(X, Y, activation="relu", depth=None, w_std=1.0, b_std=0.0, out_std=1.0):
    """Xi(x, y) = dK(x, y)/dx, the gradient of K in its first argument (paper eq 13, 46).

    Uses the stable form of MATH §2 (finite for parallel and anti-parallel
    pairs: ``Xi(x, c x) = c x / m`` for c > 0 and 0 for c < 0).  Linear:
    ``Xi(x, y) = depth * y / m``.

    Parameters
    ----------
    X : (p, m) array;  Y : (q, m) array

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

def _perp_unit(U, V):
    """unit(v - (v.u) u) for unit rows U (p, m) against rows V (q, m) -> (p, q, m); 0 on the ridge."""
    out = V[None, :, :] - np.einsum("qk,pk->pq", V, U)[:, :, None] * U[:, None, :]
    n = np.sqrt(np.einsum("pqk,pqk->pq", out, out))
    return out / np.where(n > 0, n, 1.0)[:, :, None]


def sigma1(X, Y, activation="relu", depth=None, w_std=1.0, b_std=0.0, out_std=1.0):
    """Cross-covariance E[f(x) J(y)] = Sigma_(1)(x, y) = dSigma(x, b)/db at b = y (paper eq 9-10).

    ReLU: ``(Sigmadot x + (s / 2pi) |x| y^) / m``.  Linear: ``x / m``.
    Other architectures (MATH §2.2): ``dSigma/dc (y, x) x + dSigma/dr (y, x) y^`` with the
    partials of the NNGP from the layer recursion (Sigma is symmetric, so the derivative in its
    second argument is the one in the first with the pair swapped).

    Returns
    -------
    (p, q, m) array
    """
    spec = layers(activation, depth, w_std, b_std, out_std)
    X, Y = as_pair(X, Y)
    m = X.shape[1]
    if not spec.closed_form:
        t = _terms(Y, X, spec)
        _, Yh = unit_rows(Y)
        return t["nngp_dc"].T[:, :, None] * X[:, None, :] + t["nngp_dr"].T[:, :, None] * Yh[None, :, :]
    if spec.activation == "linear":
        return np.broadcast_to(X[:, None, :] / m, (X.shape[0], Y.shape[0], m)).copy()
    nx, ny, theta, lam, s = pair_angles(X, Y)
    _, Yh = unit_rows(Y)
    sigmadot_ = (np.pi - theta) / TWO_PI
    return (sigmadot_[:, :, None] * X[:, None, :]
            + (s * nx[:, None] / TWO_PI)[:, :, None] * Yh[None, :, :]) / m


def sigma2(X, Y, activation="relu", depth=None, w_std=1.0, b_std=0.0, out_std=1.0):
    """Jacobian covariance E[J^{ab}(x) J^{ac}(y)] = Sigma_(2)^{bc}(x, y) (paper eq 8, 11).

    ReLU: ``(Sigmadot I + (s / 2pi)(x^ y^T + a b^T)) / m`` with
    ``a = unit(y - (y.x^) x^)``, ``b = unit(x - (x.y^) y^)`` (MATH §2).
    Linear: ``I / m``.  Other architectures (MATH §2.2): ``d^2 Sigma / dx dy`` from the
    second partials of the NNGP in r_a = |x|, r_b = |y|, c0 = x.y (:func:`nngp_second_partials`),

        Sigma_(2) = S_c I + S_ab x^ y^T + S_bc y y^T + S_ac x^ x^T + S_cc y x^T.

    Returns
    -------
    (p, q, m, m) array
    """
    spec = layers(activation, depth, w_std, b_std, out_std)
    if not spec.closed_form:
        X, Y = as_pair(X, Y)
        nx, ny, theta, _, _ = pair_angles(X, Y)
        t = nngp_second_partials(nx[:, None], ny[None, :], theta, spec, X.shape[1])
        _, Xh = unit_rows(X)
        _, Yh = unit_rows(Y)
        m = X.shape[1]
        xh, x = Xh[:, None, :, None], X[:, None, None, :]
        yh, y = Yh[None, :, None, :], Y[None, :, :, None]
        e = lambda k: t[k][:, :, None, None]          # noqa: E731
        return (e("cc") * np.eye(m) + e("ab") * xh * yh + e("bc") * y * Yh[None, :, None, :]
                + e("ac") * Xh[:, None, :, None] * x + e("ccc") * y * x)
    X, Y = as_pair(X, Y)
    p, m = X.shape
    q = Y.shape[0]
    eye = np.eye(m)
    if spec.activation == "linear":
        return np.broadcast_to(eye / m, (p, q, m, m)).copy()
    nx, ny, theta, lam, s = pair_angles(X, Y)
    _, Xh = unit_rows(X)
    _, Yh = unit_rows(Y)
    sigmadot_ = (np.pi - theta) / TWO_PI
    a = _perp_unit(Xh, Y)                                  # (p, q, m)
    b = np.transpose(_perp_unit(Yh, X), (1, 0, 2))         # (p, q, m)
    outer = Xh[:, None, :, None] * Yh[None, :, None, :] + a[:, :, :, None] * b[:, :, None, :]
    return (sigmadot_[:, :, None, None] * eye + (s / TWO_PI)[:, :, None, None] * outer) / m


# --------------------------------------------------------------------------
# No bottleneck (MATH §5)
# --------------------------------------------------------------------------

def relu_composed(X, Y):
    """Sigma_F, Sigmadot_F (p, q): ReLU kernels of a layer fed by g's infinite bottleneck (MATH §5).

    The pre-activations of f then have covariance Sigma_g (the ReLU NNGP of the
    inputs, m = d0), with variances |x|^2 / (2 d0) and correlation
    ``cos theta_F = J(theta) / pi``, ``J(theta) = sin theta + (pi - theta) cos theta``,
    where theta is the angle between the inputs.  ``1 - cos theta_F`` is computed
    as ``(2 pi sin^2(theta/2) + theta cos theta - sin theta) / pi``, without the
    cancellation of ``1 - J/pi``, and ``theta_F = 2 asin(sqrt((1 - cos theta_F)/2))``
    keeps full relative accuracy near theta = 0 (a point with itself), as in MATH §2.1.
    """
    nx, ny, theta, lam, s = pair_angles(X, Y)
    one_minus = (TWO_PI * np.sin(0.5 * theta) ** 2 + theta * lam - s) / np.pi
    theta_F = 2.0 * np.arcsin(np.sqrt(np.clip(0.5 * one_minus, 0.0, 1.0)))
    D = np.outer(nx, ny) / (2.0 * X.shape[1])                 # sqrt(Sigma_g(x, x) Sigma_g(y, y))
    sigma_F = D * (np.cos(theta_F) * (np.pi - theta_F) + np.sin(theta_F)) / TWO_PI
    return sigma_F, (np.pi - theta_F) / TWO_PI


def inf_layers(activation, depth_f, depth_g, layers_g, layers_f):
    """(Layers of g, Layers of f, closed) for :func:`ntk_inf`'s arguments; ``closed``: the written-out
    no-bottleneck kernels of MATH §5 apply (both halves closed-form, one activation)."""
    spec_g = layers_g if layers_g is not None else layers(activation, depth_g)
    spec_f = layers_f if layers_f is not None else layers(activation, depth_f)
    for name, s in (("layers_g", spec_g), ("layers_f", spec_f)):
        if not isinstance(s, Layers):
            raise TypeError(f"{name}: expected a Layers, got {type(s).__name__}")
    closed = spec_g.closed_form and spec_f.closed_form and spec_g.activation == spec_f.activation
    return spec_g, spec_f, closed


def ntk_inf(X, Y, activation="relu", depth_f=None, depth_g=None, lr_f=1.0, lr_g=1.0,
            layers_g=None, layers_f=None):
    """NTK of the network without bottleneck, d -> infinity (MATH §5).

    ``NTK_inf = lr_f (Sigma_F + Sigmadot_F Sigma_g) + lr_g Sigmadot_F Theta_g``, where
    Sigma_g, Theta_g are the NNGP and NTK of g (m = d0) and Sigma_F, Sigmadot_F
    are the ReLU kernels of f evaluated with the input covariance Sigma_g.
    With equal rates (the default) this is the kernel of the composed network;
    ``lr_f``, ``lr_g`` weight the two parameter groups for unequal rates.
    Linear: ``lr_f depth_f Sigma_g + lr_g Theta_g``.
    ``layers_g``, ``layers_f`` (:class:`Layers`) give other architectures of g and f
    (they override ``activation`` and the depths); the composed kernel then comes
    from the layer recursion (:func:`composed_terms`, MATH §2.2).

    Returns
    -------
    (p, q) array
    """
    spec_g, spec_f, closed = inf_layers(activation, depth_f, depth_g, layers_g, layers_f)
    X, Y = as_pair(X, Y)
    if not closed:
        nx, ny, theta, _, _ = pair_angles(X, Y)
        return composed_terms(nx[:, None], ny[None, :], theta, spec_g, spec_f, X.shape[1], lr_f, lr_g)[1]
    sigma_g = nngp(X, Y, spec_g.activation)
    theta_g = ntk(X, Y, spec_g.activation, spec_g.depth)
    return ntk_inf_from_g(X, Y, sigma_g, theta_g, spec_g.activation, spec_f.depth, lr_f, lr_g)


def nngp_inf(X, Y, layers_g=None, layers_f=None):
    """Sigma_F, the NNGP of f o g without bottleneck (MATH §5): the covariance of F0.

    Default ReLU network: :func:`relu_composed`; plain linear: ``x.y / d0``;
    otherwise the layer recursion (:func:`composed_terms`).

    Returns
    -------
    (p, q) array
    """
    spec_g, spec_f, closed = inf_layers("relu", None, None, layers_g or Layers(), layers_f or Layers())
    X, Y = as_pair(X, Y)
    if closed:
        if spec_g.activation == "linear":
            return nngp(X, Y, "linear")
        return relu_composed(X, Y)[0]
    nx, ny, theta, _, _ = pair_angles(X, Y)
    return composed_terms(nx[:, None], ny[None, :], theta, spec_g, spec_f, X.shape[1])[0]


def ntk_inf_from_g(X, Y, sigma_g, theta_g, activation, Lf, lr_f, lr_g):
    """The last stage of :func:`ntk_inf`: NTK_inf from Sigma_g and Theta_g (p, q) of the inputs (MATH §5).

    Split out so that accelerated backends can compute Sigma_g and Theta_g their
    own way and share this combination.
    """
    if activation == "linear":
        return lr_f * Lf * sigma_g + lr_g * theta_g
    sigma_F, sigmadot_F = relu_composed(X, Y)
    return lr_f * (sigma_F + sigmadot_F * sigma_g) + lr_g * sigmadot_F * theta_g
