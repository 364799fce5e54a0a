"""The angle between two points: one near-parallel rule and one angle formula (MATH §2.1).

Written once for every implementation.  The functions below use only arithmetic and the
module globals ``where`` (a three-argument select), ``sqrt`` and ``asin`` (NumPy's here), so
that :func:`accel.formulas.build` can re-bind the very same code to Numba scalars (with a
polynomial ``asin`` on [-1/2, 1/2]); the CUDA-C source of the GPU backend
(:mod:`accel.pair_source`) writes the same steps in C with the constant below.

The rule (MATH §2.1)
--------------------
For points x, y with ``lam = x.y / (|x||y|)`` (clipped to [-1, 1]; a zero vector has lam = 0
against a non-zero one and lam = 1 against another zero vector):

* ``|lam| <= NEAR_PARALLEL_COS``: ``hu = sin(theta/2) = sqrt((1 - lam)/2)``,
  ``hv = cos(theta/2) = sqrt((1 + lam)/2)`` (``1 -+ lam >= 1/8``: at most 8 ulps lost);
* otherwise (nearly parallel or anti-parallel): ``hu, hv`` from the explicit differences,
  ``hu^2 = |x^ - y^|^2 / (|x^ - y^|^2 + |x^ + y^|^2)`` and likewise ``hv`` with ``|x^ + y^|^2``,
  and ``lam = (hv - hu)(hv + hu)``: full relative accuracy down to angle 0 and pi.

The angle formula (MATH §2.1): with the arcsine only on [-1/2, 1/2],

    lam >  1/2:  theta = 2 asin(hu)
    lam < -1/2:  theta = pi - 2 asin(hv)
    otherwise:   theta = pi/2 - asin(lam)

and ``pi - theta`` is the angle of (x, -y): :func:`angle` with ``(-lam, hv, hu)``.
"""

from __future__ import annotations

import types

import numpy as np

#: Pairs with |cos| above this get their half-angles from the explicit differences x^ -+ y^
#: (MATH §2.1): below it ``1 -+ lam >= 1/8``, so the half-angles from the cosine lose at most 8 ulps.
NEAR_PARALLEL_COS = 0.875

PI = float(np.pi)
HALF_PI = 0.5 * PI

#: Largest temporary, in float64 elements, that :func:`pair_angles` allocates.
BLOCK_ELEMENTS = 1 << 21

# The array functions of the formulas (re-bound by accel.formulas.build for Numba).
where = np.where
sqrt = np.sqrt
asin = np.arcsin


def cos_from_ratio(ratio, nn, zero_pair):
    """The cosine of a pair from ``ratio = x.y / (|x||y|)`` formed where ``nn = |x||y| > 0``.

    A zero vector gives 0 (theta = pi/2), two zero vectors (``zero_pair``) give 1 (theta = 0);
    the result is clipped to [-1, 1].
    """
    lam = where(nn > 0.0, ratio, where(zero_pair, 1.0, 0.0))
    return where(lam > 1.0, 1.0, where(lam < -1.0, -1.0, lam))


def cos_of_pair(dot, nn, zero_pair):
    """:func:`cos_from_ratio` of ``dot / nn`` (``dot = x.y``, ``nn = |x||y|``)."""
    return cos_from_ratio(dot / where(nn > 0.0, nn, 1.0), nn, zero_pair)


def is_near_parallel(lam):
    """The near-parallel rule: whether a pair with cosine ``lam`` needs the explicit differences."""
    return abs(lam) > NEAR_PARALLEL_COS


def halves_from_cos(lam):
    """(hu, hv) = (sin(theta/2), cos(theta/2)) from a cosine with ``|lam| <= NEAR_PARALLEL_COS``."""
    return sqrt(0.5 - 0.5 * lam), sqrt(0.5 + 0.5 * lam)


def halves_from_differences(minus2, plus2):
    """(hu, hv, lam) from ``|x^ - y^|^2`` and ``|x^ + y^|^2`` (any common positive scale).

    Both 0 (two zero vectors) gives theta = 0.
    """
    r2 = minus2 + plus2
    zero = r2 <= 0.0
    r2 = where(zero, 1.0, r2)
    hu = sqrt(minus2 / r2)
    hv = where(zero, 1.0, sqrt(plus2 / r2))
    return hu, hv, (hv - hu) * (hv + hu)


def angle(lam, hu, hv):
    """theta in [0, pi] from cos theta, sin(theta/2), cos(theta/2): the arcsine on [-1/2, 1/2] only."""
    pos = lam > 0.5
    neg = lam < -0.5
    a = asin(where(pos, hu, where(neg, hv, lam)))
    return where(pos, 2.0 * a, where(neg, PI - 2.0 * a, HALF_PI - a))


def angle_and_supplement(lam, hu, hv):
    """(theta, pi - theta), each with full relative accuracy (pi - theta is the angle of (x, -y))."""
    return angle(lam, hu, hv), angle(-lam, hv, hu)


#: The per-pair functions above, in dependency order.
FORMULAS = ("cos_from_ratio", "cos_of_pair", "is_near_parallel", "halves_from_cos", "halves_from_differences",
            "angle", "angle_and_supplement")
_BOUND = {}


def on_module(xp):
    """The functions of :data:`FORMULAS` on arrays of the array module ``xp`` (NumPy: this module).

    The same code with ``where``, ``sqrt``, ``asin`` taken from ``xp`` (e.g. CuPy), so no array
    crosses between modules.
    """
    if xp is np:
        return types.SimpleNamespace(**{name: globals()[name] for name in FORMULAS})
    key = id(xp)
    if key not in _BOUND:
        namespace = dict(globals(), where=xp.where, sqrt=xp.sqrt, asin=xp.arcsin)
        for name in FORMULAS:
            fn = globals()[name]
            namespace[name] = types.FunctionType(fn.__code__, namespace, name, fn.__defaults__)
        _BOUND[key] = (xp, types.SimpleNamespace(**{name: namespace[name] for name in FORMULAS}))
    return _BOUND[key][1]


# --------------------------------------------------------------------------
# whole point sets (NumPy)
# --------------------------------------------------------------------------

def unit_rows(X):
    """Norms (p,) and unit vectors (p, m) of the rows of ``X``; a zero row has unit vector 0."""
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))
    safe = np.where(norms > 0.0, norms, 1.0)
    return norms, X / safe[:, None]


def pair_halves(X, Y):
    """Norms and half-angles of every pair of rows of ``X`` (p, m) and ``Y`` (q, m) by the rule above.

    Returns
    -------
    nx : (p,);  ny : (q,);  hu, hv, lam : (p, q) sin(theta/2), cos(theta/2), cos(theta)
    """
    nx, Xh = unit_rows(X)
    ny, Yh = unit_rows(Y)
    zero_pair = (nx[:, None] + ny[None, :]) == 0.0
    lam = cos_of_pair(X @ Y.T, np.outer(nx, ny), zero_pair)
    hu, hv = halves_from_cos(lam)
    ii, jj = np.nonzero(is_near_parallel(lam))
    step = max(1, BLOCK_ELEMENTS // max(1, X.shape[1]))
    for k in range(0, ii.size, step):
        i, j = ii[k:k + step], jj[k:k + step]
        minus = Xh[i] - Yh[j]
        plus = Xh[i] + Yh[j]
        hu[i, j], hv[i, j], lam[i, j] = halves_from_differences(np.einsum("ij,ij->i", minus, minus),
                                                                np.einsum("ij,ij->i", plus, plus))
    return nx, ny, hu, hv, lam


def pair_angles(X, Y):
    """Pairwise angles between rows of ``X`` (p, m) and ``Y`` (q, m) (MATH §2.1).

    Returns
    -------
    nx : (p,) norms of X;  ny : (q,) norms of Y
    theta : (p, q) angles in [0, pi];  lam : (p, q) cos(theta);  s : (p, q) sin(theta)
    """
    nx, ny, hu, hv, lam = pair_halves(X, Y)
    return nx, ny, angle(lam, hu, hv), lam, 2.0 * hu * hv
