"""The architectures beyond MATH §1 in the accelerated backends: one array-module path (MATH §2.2).

The default ReLU network and the plain linear networks keep each backend's fast pair kernels.
Every other architecture (erf, biases, layer scales, depth; :class:`refimpl.kernels.Layers`)
goes through the layer recursion of :func:`refimpl.kernels.pair_terms`, which is written over
an array module: here it runs vectorised on NumPy arrays (cpu backend, and the GPU backend's
NumPy stand-in) or on CuPy arrays (gpu backend), for whole blocks of pairs at once.  Written
once, used by both simulators:

* :func:`pair_kernel`: the kernel functions (nngp, sigmadot, ntk, Xi coefficients, ntk_inf);
* :func:`history_pass`: the history pass of :mod:`accel._simbase` (modes 0, 1, 2).

Angles by refimpl's rule and formula (MATH §2.1, :mod:`refimpl.angles`): cosines from a matrix
product, and pairs with |cos| > ``NEAR_PARALLEL_COS`` recomputed from the explicit differences x^ -+ y^.
"""

from __future__ import annotations

import numpy as np

from refimpl import kernels as rk
from refimpl.angles import NEAR_PARALLEL_COS

from . import formulas

#: Largest number of pairs whose per-pair terms are formed at once (the recursion holds a few
#: dozen temporaries of this size).
MAX_PAIRS = 1 << 18


def full_module(xp):
    """The array module with NumPy's full API for ``xp``: NumPy itself for the NumPy stand-in."""
    if xp is np or getattr(xp, "KERNEL_TARGET", None) == "host":
        return np
    return xp


_FORMULAS = {}


def _formulas(xp):
    """The formulas of :mod:`accel.formulas` (refimpl's angle rule, MATH §2.1) on arrays of ``xp``."""
    key = xp.__name__
    if key not in _FORMULAS:
        _FORMULAS[key] = formulas.build(xp.where, xp.sqrt, tag=key.replace(".", "_"))
    return _FORMULAS[key]


def geometry(xp, X, Y, stored=None):
    """Norms (p,), (q,), half-angles hu, hv and cosines lam (p, q) of float64 X (p, m), Y (q, m) on ``xp`` (MATH §2.1).

    refimpl's near-parallel rule and angle formula (:mod:`refimpl.angles`): cosines from a matrix
    product, and pairs with |cos| > ``NEAR_PARALLEL_COS`` from the explicit differences x^ -+ y^.
    ``stored``: (nx, Xh, ny, Yh), the norms and unit rows of X and Y computed once
    (:func:`refimpl.angles.unit_rows`; tracked inputs), instead of computing them here.
    """
    F = _formulas(xp)
    if stored is None:
        nx = xp.sqrt(xp.sum(X * X, axis=1))
        ny = xp.sqrt(xp.sum(Y * Y, axis=1))
        Xh = X / xp.where(nx > 0, nx, 1.0)[:, None]
        Yh = Y / xp.where(ny > 0, ny, 1.0)[:, None]
    else:
        nx, Xh, ny, Yh = stored
    zero_pair = (nx[:, None] + ny[None, :]) == 0.0
    lam = F["cos_of_pair"](X @ Y.T, nx[:, None] * ny[None, :], zero_pair)
    hu, hv = F["halves_from_cos"](lam)
    rows, cols = xp.nonzero(xp.abs(lam) > NEAR_PARALLEL_COS)
    if rows.size:
        minus = Xh[rows] - Yh[cols]
        plus = Xh[rows] + Yh[cols]
        h_u, h_v, la = F["halves_from_differences"](xp.sum(minus * minus, axis=1), xp.sum(plus * plus, axis=1))
        hu[rows, cols], hv[rows, cols], lam[rows, cols] = h_u, h_v, la
    return nx, ny, hu, hv, lam


def terms(xp, X, Y, spec):
    """:func:`refimpl.kernels.pair_terms` of every pair of rows of X, Y (float64 on ``xp``)."""
    nx, ny, hu, hv, lam = geometry(xp, X, Y)
    return rk.pair_terms(nx[:, None], ny[None, :], hu, hv, lam, spec, X.shape[1], xp=xp)


def _blocks(xp, X, Y, fn):
    """fn(X block, Y) for row blocks of X with at most MAX_PAIRS pairs; results stacked on axis 0."""
    step = max(1, MAX_PAIRS // max(1, Y.shape[0]))
    parts = [fn(X[i:i + step], Y) for i in range(0, X.shape[0], step)]
    if isinstance(parts[0], tuple):
        return tuple(xp.concatenate([p[k] for p in parts]) for k in range(len(parts[0])))
    return xp.concatenate(parts)


def pair_kernel(device, X, Y, spec, what):
    """Kernel ``what`` ("nngp", "sigmadot", "ntk", "xi" -> (alpha, beta)) of ``spec`` on host X, Y.

    ``device``: the backend's array module (NumPy, CuPy or the stand-in).  Returns host arrays.
    """
    xp = full_module(device)
    Xd, Yd = xp.asarray(X), xp.asarray(Y)

    def one(Xb, Yb):
        t = terms(xp, Xb, Yb, spec)
        return (t["alpha"], t["beta"]) if what == "xi" else t[what]

    out = _blocks(xp, Xd, Yd, one)
    host = (lambda a: a) if xp is np else xp.asnumpy
    return tuple(host(a) for a in out) if isinstance(out, tuple) else host(out)


def composed_kernel(device, X, Y, spec_g, spec_f, lr_f, lr_g):
    """NTK_inf of g and f without bottleneck (MATH §5, §2.2) on host X, Y; returns a host array."""
    xp = full_module(device)
    m = X.shape[1]

    def one(Xb, Yb):
        nx, ny, hu, hv, lam = geometry(xp, Xb, Yb)
        return rk.composed_terms(nx[:, None], ny[None, :], hu, hv, lam, spec_g, spec_f, m, lr_f, lr_g, xp=xp)[1]

    out = _blocks(xp, xp.asarray(X), xp.asarray(Y), one)
    return out if xp is np else xp.asnumpy(out)


def _increment(xp, X, nx, Xh, Y, ny, Yh, W, kernel):
    """kernel(pairs) @ W (p, k) on ``xp`` over blocks of at most ``MAX_PAIRS`` pairs of rows of X (p, m)
    and Y (q, m), whose norms and unit rows are stored; ``kernel(nx, ny, hu, hv, lam, m)`` gives the
    kernel of a block from its geometry (:func:`geometry`)."""
    m = X.shape[1]
    step = max(1, MAX_PAIRS // max(1, Y.shape[0]))
    out = xp.empty((X.shape[0], W.shape[1]))
    for r in range(0, X.shape[0], step):
        rows = slice(r, min(X.shape[0], r + step))
        gx, gy, hu, hv, lam = geometry(xp, X[rows], Y, stored=(nx[rows], Xh[rows], ny, Yh))
        out[rows] = xp.matmul(kernel(gx[:, None], gy[None, :], hu, hv, lam, m), W)
    return out


def ntk_increment(xp, X, nx, Xh, Y, ny, Yh, V, spec):
    """Theta(X, Y) @ V (p, k) of the network ``spec`` on ``xp`` from inputs whose norms and unit rows are
    stored (the layer recursion, MATH §2.2; any architecture): the tracked inputs of g against a batch.

    X (p, m), Y (q, m) with norms nx, ny and unit rows Xh, Yh (:func:`refimpl.angles.unit_rows`), V
    (q, k), all float64 arrays of ``xp`` (device memory on the gpu backend: nothing crosses to the host).
    """
    return _increment(xp, X, nx, Xh, Y, ny, Yh, V,
                      lambda a, b, hu, hv, lam, m: rk.pair_terms(a, b, hu, hv, lam, spec, m, xp=xp)["ntk"])


def composed_increment(xp, X, nx, Xh, Y, ny, Yh, chi, spec_g, spec_f, lr_f, lr_g):
    """NTK_inf(X, Y) @ chi (p, dr) on ``xp`` without bottleneck (MATH §5, §2.2), as :func:`ntk_increment`:
    the tracked inputs' outputs against a batch."""
    return _increment(xp, X, nx, Xh, Y, ny, Yh, chi,
                      lambda a, b, hu, hv, lam, m: rk.composed_terms(a, b, hu, hv, lam, spec_g, spec_f, m, lr_f,
                                                                     lr_g, xp=xp)[1])


def history_pass(device, Z, P, C, mode, chi, spec):
    """The history pass of :mod:`accel._simbase` for the head architecture ``spec``.

    Z (q, d), chi (q, dr) host float64; P (M, d), C (M, dr) the stored history on ``device``
    (any float dtype; the terms are float64).  Returns host float64 f (q, dr) (None in mode 2),
    T (q, R, d) and bsum (q, R) (None in mode 0), R = dr (mode 1) or 1 (mode 2).
    """
    xp = full_module(device)
    q, d = Z.shape
    M, dr = C.shape
    R = {0: 0, 1: dr, 2: 1}[mode]
    Zd = xp.asarray(np.ascontiguousarray(Z, dtype=np.float64))
    chi_d = None if chi is None else xp.asarray(np.ascontiguousarray(chi, dtype=np.float64))
    f = xp.zeros((q, dr))
    T = xp.zeros((q, max(R, 1), d))
    bsum = xp.zeros((q, max(R, 1)))
    qstep = max(1, min(q, MAX_PAIRS // 256))
    for r0 in range(0, q, qstep):
        rs = slice(r0, min(q, r0 + qstep))
        nq = rs.stop - rs.start
        step = max(1, MAX_PAIRS // nq)
        for s0 in range(0, M, step):
            Ps = xp.asarray(P[s0:s0 + step]).astype(np.float64)
            Cs = xp.asarray(C[s0:s0 + step]).astype(np.float64)
            t = terms(xp, Zd[rs], Ps, spec)
            if mode != 2:
                f[rs] += t["ntk"] @ Cs
            if mode == 1:
                for r in range(dr):
                    W = Cs[:, r][None, :]
                    T[rs, r] += (t["alpha"] * W) @ Ps
                    bsum[rs, r] += xp.sum(t["beta"] * W, axis=1)
            elif mode == 2:
                W = chi_d[rs] @ Cs.T
                T[rs, 0] += (t["alpha"] * W) @ Ps
                bsum[rs, 0] += xp.sum(t["beta"] * W, axis=1)
    host = (lambda a: a) if xp is np else xp.asnumpy
    f = host(f) if mode != 2 else None
    if mode == 0:
        return f, None, None
    return f, host(T), host(bsum)
