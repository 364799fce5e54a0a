"""Per-pair kernel formulas, written once for every backend (MATH §2, §2.1).

The functions here take the geometry of one pair (or arrays of pairs) and
return the kernel terms.  They use only arithmetic, ``sqrt`` and a
three-argument ``where`` (select), which :func:`build` injects, so that one
definition serves

* the Numba backend (``where`` a jitted scalar select, every function ``njit``),
* NumPy arrays (``where = np.where``; :data:`numpy_formulas`, the tests' reference).

The GPU backend computes the same terms in CUDA-C (:mod:`accel.pair_source`), with the same
cut-off :data:`NEAR`.

Angles (MATH §2.1)
------------------
The near-parallel rule and the angle formula are refimpl's, :mod:`refimpl.angles`, the same
code re-bound here: its ``asin`` (on [-1/2, 1/2] only) becomes :func:`asin_small`, evaluated as
``x + x w R(w)`` (``w = x^2``) with a degree-12 polynomial R fitted to the Taylor series of asin
(max error 1 ulp against libm on [-1/2, 1/2], measured in tests).  The polynomial vectorises
where scalar ``acos`` (about 8-12 ns a call near lam = 1) does not.  ``cos`` and ``sin`` of theta
are ``(hv - hu)(hv + hu)`` and ``2 hu hv``, with no further transcendental calls.
"""

from __future__ import annotations

import builtins
import math
import types

import numpy as np
from numpy.polynomial import Chebyshev, Polynomial

from refimpl import angles
from refimpl.activations import XI_SIN_THRESHOLD
from refimpl.angles import NEAR_PARALLEL_COS

PI = math.pi
TWO_PI = 2.0 * math.pi
HALF_PI = 0.5 * math.pi

#: The near-parallel rule's margin: pairs with |cos| > 1 - NEAR = refimpl.angles.NEAR_PARALLEL_COS
#: get their angle from explicit differences (MATH §2.1).
NEAR = 1.0 - NEAR_PARALLEL_COS


def _asin_coefficients(degree=12):
    """Monomial coefficients of R(w) = (asin(x) - x)/(x w), w = x^2 in [0, 1/4].

    R is evaluated at Chebyshev points from its Taylor series (positive terms, no
    cancellation; 45 terms reach 1e-20 at w = 1/4), interpolated by a Chebyshev
    series and converted to monomials (degree 12: the largest coefficient is 1/6,
    so Horner's rule is stable).
    """
    nodes = Chebyshev.basis(degree + 1, domain=[0.0, 0.25]).roots()
    values = np.zeros_like(nodes)
    power = np.ones_like(nodes)
    c = 1.0
    for k in range(1, 45):
        c *= (2 * k - 1) / (2 * k)                  # (2k)! / (4^k (k!)^2)
        values += c / (2 * k + 1) * power
        power = power * nodes
    series = Chebyshev.fit(nodes, values, degree, domain=[0.0, 0.25])
    return tuple(float(v) for v in series.convert(kind=Polynomial, domain=[-1, 1], window=[-1, 1]).coef)


ASIN_COEF = _asin_coefficients()
_C = ASIN_COEF      # short name for the unrolled Horner rule below
assert len(_C) == 13


# The formulas are ordinary module-level functions over the globals ``where`` and
# ``sqrt`` (NumPy's here); :func:`build` re-binds copies of them to another
# ``where``/``sqrt`` (and to each other's compiled versions), so that Numba sees
# plain global calls it can inline rather than closures.
where = np.where
sqrt = np.sqrt


def asin_small(x):
    """asin(x) for |x| <= 1/2 (1 ulp)."""
    w = x * x
    r = _C[12]
    r = r * w + _C[11]
    r = r * w + _C[10]
    r = r * w + _C[9]
    r = r * w + _C[8]
    r = r * w + _C[7]
    r = r * w + _C[6]
    r = r * w + _C[5]
    r = r * w + _C[4]
    r = r * w + _C[3]
    r = r * w + _C[2]
    r = r * w + _C[1]
    r = r * w + _C[0]
    return x + x * (w * r)


def geometry_from_cos(lam):
    """(theta, lam, s) from a cosine that is not near +-1 (|lam| <= NEAR_PARALLEL_COS)."""
    hu, hv = halves_from_cos(lam)
    return angle(lam, hu, hv), lam, 2.0 * hu * hv


def geometry_from_halves(minus2, plus2):
    """(theta, lam, s) from |x^ - y^|^2 and |x^ + y^|^2 (explicit differences; two zero vectors: 0)."""
    hu, hv, lam = halves_from_differences(minus2, plus2)
    return angle(lam, hu, hv), lam, 2.0 * hu * hv


def relu_sigmadot(theta):
    """Sigmadot = (pi - theta) / (2 pi)."""
    return (PI - theta) / TWO_PI


def relu_nngp(nn, m, theta, lam, s):
    """Sigma = (|x||y|/m) (lam (pi - theta) + s) / (2 pi)  (paper eq 45)."""
    return nn / m * (lam * (PI - theta) + s) / TWO_PI


def relu_ntk(dot, nn, m, theta, lam, s):
    """K = (x.y/m) Sigmadot + Sigma (paper eq 45)."""
    return dot / m * relu_sigmadot(theta) + relu_nngp(nn, m, theta, lam, s)


def relu_xi_alpha(m, theta, lam, s):
    """alpha of Xi = alpha y + beta x^ (MATH §2; a := 0 below XI_SIN_THRESHOLD)."""
    ridge = s < XI_SIN_THRESHOLD
    inv_s = where(ridge, 0.0, 1.0 / where(ridge, 1.0, s))
    return (2.0 * relu_sigmadot(theta) + lam * inv_s / TWO_PI) / m


def relu_xi_beta(ny, m, lam, s):
    """beta of Xi = alpha y + beta x^ (MATH §2)."""
    ridge = s < XI_SIN_THRESHOLD
    inv_s = where(ridge, 0.0, 1.0 / where(ridge, 1.0, s))
    return ny * (s - lam * lam * inv_s) / (TWO_PI * m)


#: refimpl's angle functions (MATH §2.1), re-bound by :func:`build` with ``asin = asin_small``.
SHARED = ("cos_from_ratio", "cos_of_pair", "halves_from_cos", "halves_from_differences", "angle")
#: The formula functions, callees before callers.
NAMES = ("asin_small",) + SHARED + ("geometry_from_cos", "geometry_from_halves", "relu_sigmadot", "relu_nngp",
                                    "relu_ntk", "relu_xi_alpha", "relu_xi_beta")


def _identity(fn):
    return fn


def build(where, sqrt, jit=_identity, tag="np"):
    """Copies of the formula functions over another ``where`` (select) and ``sqrt``.

    Returns a dict name -> function.  With ``jit=numba.njit`` (and a scalar
    select for ``where``) they are compiled for scalars; with ``xp.where`` and
    ``xp.sqrt`` they work elementwise on arrays of the module ``xp``.
    """
    namespace = {"__builtins__": builtins, "where": where, "sqrt": sqrt, "_C": _C, "PI": PI, "TWO_PI": TWO_PI,
                 "HALF_PI": HALF_PI, "XI_SIN_THRESHOLD": XI_SIN_THRESHOLD, "NEAR_PARALLEL_COS": NEAR_PARALLEL_COS}
    out = {}
    for name in NAMES:
        fn = getattr(angles, name) if name in SHARED else globals()[name]
        copy = types.FunctionType(fn.__code__, namespace, name, fn.__defaults__)
        copy.__doc__ = fn.__doc__
        copy.__module__ = __name__
        copy.__qualname__ = f"{name}_{tag}"    # distinct names for distinct builds
        namespace[name] = out[name] = jit(copy)
        if name == "asin_small":
            namespace["asin"] = out[name]
    return out


#: The formulas on NumPy arrays (reference for tests and the array-module path on the CPU).
numpy_formulas = build(np.where, np.sqrt)
halves_from_cos = numpy_formulas["halves_from_cos"]
halves_from_differences = numpy_formulas["halves_from_differences"]
angle = numpy_formulas["angle"]


# ---------------------------------------------------------------------------
# The no-bottleneck ReLU kernel written out (MATH §5): the fast path of the default network
# ---------------------------------------------------------------------------

def relu_composed(X, Y):
    """Sigma_F, Sigmadot_F (p, q): ReLU kernels of a layer fed by g's infinite bottleneck (MATH §5).

    The pre-activations of f then have covariance Sigma_g (the ReLU NNGP of the inputs, m = d0),
    with variances |x|^2 / (2 d0) and correlation ``cos theta_F = J(theta) / pi``,
    ``J(theta) = sin theta + (pi - theta) cos theta``.  ``1 - cos theta_F`` is computed as
    ``(2 pi sin^2(theta/2) + theta cos theta - sin theta) / pi``, without the cancellation of
    ``1 - J/pi``, so NTK_inf(x, x) keeps every digit (MATH §2.1).
    """
    nx, ny, theta, lam, s = angles.pair_angles(X, Y)
    one_minus = (TWO_PI * np.sin(0.5 * theta) ** 2 + theta * lam - s) / np.pi
    theta_F = 2.0 * np.arcsin(np.sqrt(np.clip(0.5 * one_minus, 0.0, 1.0)))
    D = np.outer(nx, ny) / (2.0 * X.shape[1])                 # sqrt(Sigma_g(x, x) Sigma_g(y, y))
    sigma_F = D * (np.cos(theta_F) * (np.pi - theta_F) + np.sin(theta_F)) / TWO_PI
    return sigma_F, (np.pi - theta_F) / TWO_PI


def linear_pairs(X, Y, L, what):
    """The kernels of a plain linear network of depth L (lemma 4.1, MATH §5.2) on X (p, m), Y (q, m):
    Sigma = x.y/m, Sigmadot = 1, K = L x.y/m, Xi = (L/m) y; a tuple as the backends' pair routines."""
    m = X.shape[1]
    if what == "xi":
        return np.full((X.shape[0], Y.shape[0]), L / m), np.zeros((X.shape[0], Y.shape[0]))
    if what == "sigmadot":
        return (np.ones((X.shape[0], Y.shape[0])),)
    return ((1 if what == "nngp" else L) * (X @ Y.T) / m,)


def ntk_inf_from_g(X, Y, sigma_g, theta_g, activation, Lf, lr_f, lr_g):
    """NTK_inf of the default ReLU or a plain linear network from Sigma_g, Theta_g (p, q) (MATH §5).

    ReLU: ``lr_f (Sigma_F + Sigmadot_F Sigma_g) + lr_g Sigmadot_F Theta_g``; linear:
    ``lr_f L_f Sigma_g + lr_g Theta_g``.
    """
    if activation == "linear":
        return lr_f * Lf * sigma_g + lr_g * theta_g
    sigma_F, sigmadot_F = relu_composed(X, Y)
    return lr_f * (sigma_F + sigmadot_F * sigma_g) + lr_g * sigmadot_F * theta_g
