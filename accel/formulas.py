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
A pair is described by ``hu = sin(theta/2) = |x^ - y^|/2`` and
``hv = cos(theta/2) = |x^ + y^|/2``.  For pairs that are not nearly parallel or
anti-parallel (``|lam| <= 1 - NEAR``, lam the cosine from a dot product) these
follow from lam without loss (``1 -+ lam`` is then well conditioned);
nearly (anti-)parallel pairs get them from the explicit differences
``x^ -+ y^``, as the reference does.  The angle is then taken through an
arcsine on a reduced range,

    lam >  1/2:  theta = 2 asin(hu)
    lam < -1/2:  theta = pi - 2 asin(hv)
    otherwise:   theta = pi/2 - asin(lam)

so that ``asin`` is only needed on [-1/2, 1/2], where :func:`asin_small`
evaluates it as ``x + x w R(w)`` (``w = x^2``) with a degree-12 polynomial R
fitted to the Taylor series of asin (max error 1 ulp against libm on
[-1/2, 1/2], measured in tests).  The polynomial vectorises where scalar
``acos`` (about 8-12 ns a call near lam = 1) does not.  ``cos`` and ``sin``
of theta are ``(hv - hu)(hv + hu)`` and ``2 hu hv``, with no further
transcendental calls.
"""

from __future__ import annotations

import builtins
import math
import types

import numpy as np
from numpy.polynomial import Chebyshev, Polynomial

from refimpl.kernels import XI_SIN_THRESHOLD

PI = math.pi
TWO_PI = 2.0 * math.pi
HALF_PI = 0.5 * math.pi

#: Pairs with |cos| above 1 - NEAR get their angle from explicit differences (MATH §2.1).
#: Below it the cosine from a dot product loses at most eps/NEAR relative (8 ulps) in 1 -+ lam,
#: and the reduced-range arcsine stays on [-1/2, 1/2].  refimpl uses |cos| > 0.95
#: (refimpl.kernels.NEAR_PARALLEL_COS, 20 ulps) because its NumPy gather of such pairs is costly;
#: here a pair is recomputed in place for O(d) flops, so the tighter cut-off costs little.
NEAR = 0.125


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


def angle(lam, hu, hv):
    """theta in [0, pi] from cos theta, sin(theta/2), cos(theta/2) (reduced-range asin)."""
    pos = lam > 0.5
    neg = lam < -0.5
    a = asin_small(where(pos, hu, where(neg, hv, lam)))
    return where(pos, 2.0 * a, where(neg, PI - 2.0 * a, HALF_PI - a))


def geometry_from_cos(lam):
    """(theta, lam, s) from a cosine that is not near +-1 (|lam| <= 1 - NEAR)."""
    hu = sqrt(0.5 - 0.5 * lam)
    hv = sqrt(0.5 + 0.5 * lam)
    return angle(lam, hu, hv), lam, 2.0 * hu * hv


def geometry_from_halves(minus2, plus2):
    """(theta, lam, s) from |x^ - y^|^2 and |x^ + y^|^2 (explicit differences).

    Two zero vectors (both squares 0) give theta = 0, as the reference's atan2(0, 0).
    """
    r2 = minus2 + plus2
    zero = r2 <= 0.0
    r2 = where(zero, 1.0, r2)
    hu = sqrt(minus2 / r2)
    hv = where(zero, 1.0, sqrt(plus2 / r2))
    lam = (hv - hu) * (hv + hu)
    return angle(lam, hu, hv), lam, 2.0 * hu * hv


def cos_from_ratio(ratio, nn, zero_pair):
    """:func:`cos_of_pair` from the ratio dot/(|x||y|) formed by the caller (used where nn > 0).

    The Numba history pass forms it as dot (1/|x|)(1/|y|) with the reciprocal norms computed
    once per query and per history row: a division per pair less (2 ulps at most).
    """
    lam = where(nn > 0.0, ratio, where(zero_pair, 1.0, 0.0))
    return where(lam > 1.0, 1.0, where(lam < -1.0, -1.0, lam))


def cos_of_pair(dot, nn, zero_pair):
    """Cosine dot/(|x||y|) clipped to [-1, 1]; a zero vector gives 0 (theta = pi/2), two give 1."""
    return cos_from_ratio(dot / where(nn > 0.0, nn, 1.0), nn, zero_pair)


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


#: The formula functions, callees before callers.
NAMES = ("asin_small", "angle", "geometry_from_cos", "geometry_from_halves", "cos_from_ratio", "cos_of_pair",
         "relu_sigmadot", "relu_nngp", "relu_ntk", "relu_xi_alpha", "relu_xi_beta")


def _identity(fn):
    return fn


def build(where, sqrt, jit=_identity, tag="np"):
    """Copies of the formula functions over another ``where`` (select) and ``sqrt``.

    Returns a dict name -> function.  With ``jit=numba.njit`` (and a scalar
    select for ``where``) they are compiled for scalars; with ``xp.where`` and
    ``xp.sqrt`` they work elementwise on arrays of the module ``xp``.
    """
    namespace = {"__builtins__": builtins, "where": where, "sqrt": sqrt, "_C": _C, "PI": PI, "TWO_PI": TWO_PI,
                 "HALF_PI": HALF_PI, "XI_SIN_THRESHOLD": XI_SIN_THRESHOLD}
    out = {}
    for name in NAMES:
        fn = globals()[name]
        copy = types.FunctionType(fn.__code__, namespace, name, fn.__defaults__)
        copy.__doc__ = fn.__doc__
        copy.__module__ = __name__
        copy.__qualname__ = f"{name}_{tag}"    # distinct names for distinct builds
        namespace[name] = out[name] = jit(copy)
    return out


#: The formulas on NumPy arrays (reference for tests and the array-module path on the CPU).
numpy_formulas = build(np.where, np.sqrt)
