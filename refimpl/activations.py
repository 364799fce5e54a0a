"""Activations: one record each, with everything the kernels need (MATH §2.2).

An :class:`Activation` holds the function phi and its derivative (for finite networks), its dual
kernel (for the infinite layers: V, Vd = dV/dc and every partial the layer recursion of
:mod:`refimpl.kernels` carries), and its limits at parallel and anti-parallel inputs.  Adding an
activation is one record here (registered in :data:`ACTIVATIONS`) plus its golden cases; the
recursion, the kernels, the networks and the command line pick it up by name.

Dual kernel (MATH §2.2).  A layer's pre-activations (u, v) at two inputs are jointly Gaussian with
standard deviations s_x, s_y and covariance c (:class:`PreActivation`, which also carries
``dlt = s_x s_y - c`` and ``eps = s_x s_y + c`` without cancellation).  ``dual(z, xp)`` returns a
:class:`Dual`: V = E[phi(u) phi(v)], Vx = E[phi(u)^2], Vy = E[phi(v)^2], the non-negative
``dltV = sqrt(Vx Vy) - V`` and ``epsV = sqrt(Vx Vy) + V`` computed without cancellation (so the next
layer's angle keeps full relative accuracy, MATH §2.1), Vd = dV/dc = E[phi'(u) phi'(v)] (Price's
theorem), and the partials in (s_x, s_y, c) up to the mixed second ones.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from . import angles

TWO_PI = 2.0 * math.pi

#: Below this sine of a layer's angle, ReLU's 1/sin partials take their limit 0 on the ridge (MATH §2:
#: Xi's direction ``a := 0``; the golden files depend on it).
XI_SIN_THRESHOLD = 1e-10


@dataclasses.dataclass(frozen=True)
class PreActivation:
    """Covariance entries of one layer's pre-activations for arrays of pairs (MATH §2.2).

    ``sx``, ``sy`` standard deviations at the two inputs, ``c`` the covariance,
    ``dlt = sx sy - c >= 0`` and ``eps = sx sy + c >= 0`` (formed without cancellation).
    """

    sx: object
    sy: object
    c: object
    dlt: object
    eps: object


@dataclasses.dataclass(frozen=True)
class Dual:
    """An activation's dual kernel at a :class:`PreActivation` (MATH §2.2); all arrays of the pair shape.

    Values: ``V``, ``Vx`` = V(q, q, q), ``Vy`` = V(q~, q~, q~), ``dltV``, ``epsV`` (sqrt(Vx Vy) -+ V,
    non-negative), ``Vd`` = dV/dc.  Partials (at fixed c unless in c): ``Vx_sx`` = dVx/ds_x,
    ``Vy_sy`` = dVy/ds_y, ``V_sx``, ``V_sy``, ``V_sxsy`` = d^2 V/ds_x ds_y, ``Vd_sx``, ``Vd_sy``,
    ``Vd_c`` (= V_xc, V_yc, V_cc by Price's theorem).
    """

    V: object
    Vx: object
    Vy: object
    dltV: object
    epsV: object
    Vd: object
    Vx_sx: object
    Vy_sy: object
    V_sx: object
    V_sy: object
    V_sxsy: object
    Vd_sx: object
    Vd_sy: object
    Vd_c: object


@dataclasses.dataclass(frozen=True)
class Activation:
    """One activation, everything the project needs of it (MATH §1, §2.2).

    Attributes
    ----------
    name : str, the name on the command line and in the kernel functions
    phi, dphi : callables ``(a, xp) -> array``, the function and its derivative on arrays of the
        array module ``xp`` (finite networks, MATH §1)
    dual : callable ``(z: PreActivation, xp) -> Dual``, the dual kernel (MATH §2.2)
    zero_slope : float, ``lim_{s -> 0} sqrt(V(s^2, s^2, s^2)) / s``: the output scale of a layer
        whose input vanishes (a zero vector, MATH §2.1)
    parallel, antiparallel : callables ``q -> (V, Vd)``, the limits of the dual kernel at
        c = q and c = -q (equal variances q, angle 0 and pi); the partials that grow like 1/sin
        there take the limit 0 below :data:`XI_SIN_THRESHOLD` (MATH §2)
    min_depth : int, fewest weight matrices of a network with this activation
    homogeneous : bool, phi(w u) = w phi(u) for w > 0 (scales then factor out, MATH §2.2)
    """

    name: str
    phi: Callable
    dphi: Callable
    dual: Callable
    zero_slope: float
    parallel: Callable
    antiparallel: Callable
    min_depth: int
    homogeneous: bool


def _safe_div(xp, num, den):
    """num / den where den > 0, else 0."""
    ok = den > 0.0
    return xp.where(ok, num / xp.where(ok, den, 1.0), 0.0)


def layer_halves(z, xp):
    """(hu, hv, lam) = sin, cos of half the angle of a :class:`PreActivation`, and cos (MATH §2.1).

    Zero vectors as in :func:`refimpl.angles.pair_angles`: pi/2 against one zero vector, 0 between two.
    """
    zero = (z.dlt + z.eps) <= 0.0
    hu, hv, lam = angles.on_module(xp).halves_from_differences(z.dlt, z.eps)
    one = zero & ((z.sx + z.sy) > 0.0)
    h = math.sqrt(0.5)
    return xp.where(one, h, hu), xp.where(one, h, hv), xp.where(one, 0.0, lam)


# --------------------------------------------------------------------------- ReLU

def _relu_dual(z, xp):
    """ReLU (paper eq 45): V = sx sy (sin t + (pi - t) cos t) / 2pi, Vd = (pi - t) / 2pi."""
    hu, hv, lam = layer_halves(z, xp)
    theta, pi_minus = angles.on_module(xp).angle_and_supplement(lam, hu, hv)
    s = 2.0 * hu * hv
    nn = z.sx * z.sy
    one_minus_J = (TWO_PI * hu * hu + theta * lam - s) / math.pi          # 1 - J(t)/pi, J = s + (pi - t) lam
    ridge = s < XI_SIN_THRESHOLD
    inv_s = xp.where(ridge, 0.0, 1.0 / xp.where(ridge, 1.0, s))
    return Dual(V=nn * (s + pi_minus * lam) / TWO_PI, Vx=0.5 * z.sx * z.sx, Vy=0.5 * z.sy * z.sy,
                dltV=0.5 * nn * one_minus_J, epsV=0.5 * nn * (2.0 - one_minus_J), Vd=pi_minus / TWO_PI,
                Vx_sx=z.sx + 0.0 * nn, Vy_sy=z.sy + 0.0 * nn, V_sx=z.sy * s / TWO_PI, V_sy=z.sx * s / TWO_PI,
                V_sxsy=inv_s / TWO_PI, Vd_sx=-_safe_div(xp, lam * inv_s / TWO_PI, z.sx),
                Vd_sy=-_safe_div(xp, lam * inv_s / TWO_PI, z.sy), Vd_c=_safe_div(xp, inv_s / TWO_PI, nn))


def _relu_phi(a, xp=np):
    return xp.maximum(a, 0.0)


def _relu_dphi(a, xp=np):
    return (a > 0.0).astype(a.dtype)


RELU = Activation(name="relu", phi=_relu_phi, dphi=_relu_dphi, dual=_relu_dual, zero_slope=math.sqrt(0.5),
                  parallel=lambda q: (0.5 * q, 0.5), antiparallel=lambda q: (0.0 * q, 0.0), min_depth=2,
                  homogeneous=True)


# --------------------------------------------------------------------------- erf

def _erf_diagonal(q, xp):
    """V(q, q, q) = (2/pi) atan2(2q, sqrt(1 + 4q)) and its derivative in s = sqrt(q)."""
    r = xp.sqrt(1.0 + 4.0 * q)
    return (2.0 / math.pi) * xp.arctan2(2.0 * q, r), 8.0 * xp.sqrt(q) / (math.pi * (1.0 + 2.0 * q) * r)


def _erf_radial(sx, sy, qx, qy, nn, rE0, xp):
    """sqrt(alpha_x alpha_y) - M >= 0 of :func:`_erf_dual`'s docstring, without cancellation."""
    ax, ay = 2.0 * qx / (1.0 + 2.0 * qx), 2.0 * qy / (1.0 + 2.0 * qy)
    cx, cy = xp.sqrt(1.0 + 4.0 * qx) / (1.0 + 2.0 * qx), xp.sqrt(1.0 + 4.0 * qy) / (1.0 + 2.0 * qy)
    alpha_x, alpha_y = xp.arctan2(ax, cx), xp.arctan2(ay, cy)
    a_diff = 2.0 * (sx - sy) * (sx + sy) / ((1.0 + 2.0 * qx) * (1.0 + 2.0 * qy))      # ax - ay
    D = 0.5 * xp.arctan2(a_diff * (cy + ay * (ax + ay) / (cx + cy)), cx * cy + ax * ay)
    P = 0.5 * (alpha_x + alpha_y)
    M = xp.arctan2(2.0 * nn, rE0)
    sPM = xp.sin(P + M)
    sD = xp.sin(D)
    PmM = xp.arcsin(xp.minimum(_safe_div(xp, sD * sD, sPM), 1.0))
    root_sum = xp.sqrt(alpha_x) + xp.sqrt(alpha_y)
    return xp.maximum(PmM - _safe_div(xp, 2.0 * D * D, root_sum * root_sum), 0.0)


def _erf_dual(z, xp):
    """erf (Williams 1997): V = (2/pi) asin(2c / sqrt((1 + 2q)(1 + 2q~))) = (2/pi) atan2(2c, sqrt(E)),
    Vd = 4 / (pi sqrt(E)), E = 1 + 2q + 2q~ + 4 dlt eps (MATH §2.2).

    dltV = sqrt(Vx Vy) - V is split as (sqrt(Vx Vy) - Vm) + (Vm - V) with Vm = V at c = sx sy, both
    formed without cancellation (MATH §2.2):

    * Vm - V = (2/pi)(asin a - asin b), a - b = 2 dlt / R, as (2/pi) atan2 of
      sin(A - B) R^2 = 2 dlt (4 sx sy eps / (sqrt(E) + sqrt(E0)) + sqrt(E0)) and
      cos(A - B) R^2 = sqrt(E0 E) + 4 sx sy c (E0 = 1 + 2(q + q~), R^2 = (1 + 2q)(1 + 2q~));
    * the radial part: with Vx = (2/pi) alpha_x, Vy = (2/pi) alpha_y, Vm = (2/pi) M, sin M is the
      geometric mean of sin alpha_x, sin alpha_y, so with P, D = (alpha_x +- alpha_y)/2,
      sin^2 P - sin^2 M = sin^2 D and sqrt(alpha_x alpha_y) - M = asin(sin^2 D / sin(P + M))
      - 2 D^2 / (sqrt(alpha_x) + sqrt(alpha_y))^2, where D comes from sx - sy without cancellation.
      It is exactly 0 for q = q~ (a point with itself).

    epsV likewise with dlt <-> eps and c -> -c.
    """
    sx, sy, c = z.sx, z.sy, z.c
    qx, qy = sx * sx, sy * sy
    nn = sx * sy
    E0 = 1.0 + 2.0 * (qx + qy)
    rE0 = xp.sqrt(E0)
    E = E0 + 4.0 * z.dlt * z.eps
    rE = xp.sqrt(E)
    E32 = E * rE
    Vx, Vx_sx = _erf_diagonal(qx, xp)
    Vy, Vy_sy = _erf_diagonal(qy, xp)
    radial = (2.0 / math.pi) * _erf_radial(sx, sy, qx, qy, nn, rE0, xp)
    k = 4.0 * nn / (rE + rE0)
    angular_dlt = (2.0 / math.pi) * xp.arctan2(2.0 * z.dlt * (k * z.eps + rE0), rE0 * rE + 4.0 * nn * c)
    angular_eps = (2.0 / math.pi) * xp.arctan2(2.0 * z.eps * (k * z.dlt + rE0), rE0 * rE - 4.0 * nn * c)
    return Dual(V=(2.0 / math.pi) * xp.arctan2(2.0 * c, rE), Vx=Vx, Vy=Vy,
                dltV=radial + angular_dlt, epsV=radial + angular_eps, Vd=4.0 / (math.pi * rE),
                Vx_sx=Vx_sx, Vy_sy=Vy_sy,
                V_sx=-8.0 * sx * c / (math.pi * rE * (1.0 + 2.0 * qx)),
                V_sy=-8.0 * sy * c / (math.pi * rE * (1.0 + 2.0 * qy)),
                V_sxsy=16.0 * nn * c / (math.pi * E32),
                Vd_sx=-8.0 * sx * (1.0 + 2.0 * qy) / (math.pi * E32),
                Vd_sy=-8.0 * sy * (1.0 + 2.0 * qx) / (math.pi * E32),
                Vd_c=16.0 * c / (math.pi * E32))


_SQRT_PI = math.sqrt(math.pi)
#: libm's erf elementwise on NumPy arrays (NumPy has no erf).
_ERF = np.frompyfunc(math.erf, 1, 1)


def _erf_phi(a, xp=np):
    if xp is np:
        return _ERF(a).astype(np.float64) if a.size else a.copy()
    erf = getattr(xp, "erf", None)
    if erf is None:
        raise ValueError(f"activation: 'erf' needs an erf function of the array module {xp.__name__} "
                         f"(accel.devicemath provides one for CuPy)")
    return erf(a)


def _erf_dphi(a, xp=np):
    return (2.0 / _SQRT_PI) * xp.exp(-a * a)


def _erf_limit(q, sign):
    V = (2.0 / math.pi) * np.arctan2(2.0 * q, np.sqrt(1.0 + 4.0 * q))
    return sign * V, 4.0 / (math.pi * np.sqrt(1.0 + 4.0 * q))


ERF = Activation(name="erf", phi=_erf_phi, dphi=_erf_dphi, dual=_erf_dual, zero_slope=math.sqrt(4.0 / math.pi),
                 parallel=lambda q: _erf_limit(q, 1.0), antiparallel=lambda q: _erf_limit(q, -1.0), min_depth=2,
                 homogeneous=False)


# --------------------------------------------------------------------------- identity

def _linear_dual(z, xp):
    """Identity: V = c, Vd = 1."""
    zero = xp.zeros_like(z.c)
    return Dual(V=z.c, Vx=z.sx * z.sx, Vy=z.sy * z.sy, dltV=z.dlt, epsV=z.eps, Vd=zero + 1.0,
                Vx_sx=2.0 * z.sx + zero, Vy_sy=2.0 * z.sy + zero, V_sx=zero, V_sy=zero, V_sxsy=zero,
                Vd_sx=zero, Vd_sy=zero, Vd_c=zero)


LINEAR = Activation(name="linear", phi=lambda a, xp=np: a, dphi=lambda a, xp=np: xp.ones_like(a),
                    dual=_linear_dual, zero_slope=1.0, parallel=lambda q: (q, 1.0),
                    antiparallel=lambda q: (-q, 1.0), min_depth=1, homogeneous=True)


#: Every activation by name.
ACTIVATIONS = {a.name: a for a in (RELU, ERF, LINEAR)}


def get(name):
    """The :class:`Activation` called ``name`` (one-line ValueError naming the argument otherwise)."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"activation: expected one of {tuple(ACTIVATIONS)}, got {name!r}") from None
