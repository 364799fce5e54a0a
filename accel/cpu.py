"""Numba backend: parallel CPU kernels behind refimpl's interface.

Exposes the kernel functions of :mod:`refimpl.kernels` under the same names
and signatures, and :class:`BottleneckSimulator` / :class:`InfiniteSimulator`,
subclasses of the refimpl simulators that override only the kernel hooks
(``_theta``, ``_hist_f``, ``_hist_jt_chi``, ``_ntk``) and the history storage.

The hot loop (:func:`_hist_kernel`) walks the history in tiles of
``HIST_BLOCK`` rows against ``QUERY_BLOCK`` query rows, so its temporaries
are O(QUERY_BLOCK x HIST_BLOCK) whatever M and the number of queries; it
calls no BLAS (nothing to oversubscribe inside ``prange``).  Per tile:

1. dot products z_b . p_m in the working dtype (float32 or float64);
2. the angle of every pair from its cosine, branch-free with the reduced-range
   arcsine of :mod:`accel.formulas` (vectorised by LLVM), then a scalar pass
   that recomputes nearly (anti-)parallel pairs (|cos| > 1 - NEAR) from the
   explicit differences z^ -+ p^ in float64 (MATH §2.1);
3. the sums f += K C, T += alpha C P, bsum += beta C (or with C . chi).

Partial sums are kept per history chunk (a fixed split of the history that
depends on M and the number of queries only, never on the thread count) and
added in order, so results are deterministic.  In float32 mode the history is
stored in float32, the dot products and the sums inside a tile run in float32,
the angle of near pairs is computed in float64, and sums across tiles are
float64.
"""

from __future__ import annotations

import math
import os

import numpy as np

# Numba's OpenMP threads would otherwise spin after each parallel region and
# starve the BLAS threads that the step uses next (or vice versa) on few cores.
# Read once when libgomp starts, i.e. at the first parallel call; a value set by
# the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
from numba import njit, prange  # noqa: E402

import refimpl
from refimpl.kernels import unit_rows

from . import formulas, kernelapi
from ._simbase import AccelBottleneckMixin, AccelInfiniteMixin
from .pair_source import WHAT

#: History rows per tile of the hot loop.
HIST_BLOCK = 512
#: Query rows per tile of the hot loop.
QUERY_BLOCK = 32
#: Target number of tiles per pass (enough for 16 threads); fixes the chunking.
TARGET_TILES = 16
#: Passes over fewer pairs than this run on one thread: a parallel region costs more than it
#: saves there, and far more when the cores are shared with other processes.
SERIAL_PAIRS = 1 << 16


class _threads:
    """Context: run Numba parallel regions on one thread when the work is small."""

    def __init__(self, pairs):
        self.serial = pairs < SERIAL_PAIRS

    def __enter__(self):
        if self.serial:
            self.saved = numba.get_num_threads()
            numba.set_num_threads(1)

    def __exit__(self, *exc):
        if self.serial:
            numba.set_num_threads(self.saved)

# Floating point: error_model="numpy" everywhere (a float division by zero gives inf
# instead of a Python exception; no per-division branches, so loops vectorise).  The
# pair kernels use the formulas with IEEE semantics (bit-faithful to refimpl's order of
# operations where that matters: NTK_inf clips Sigma_g(x, x) / sqrt(c11 c22) at 1).  The
# history pass uses them with reciprocal and FMA contraction allowed ("arcp", "contract";
# a few ulps), and may reassociate its reductions (dot products, sums).
_STRICT = dict(error_model="numpy")
_FAST_PAIR = dict(error_model="numpy", fastmath={"arcp", "contract", "nsz"})
_FAST_LOOP = dict(error_model="numpy", fastmath={"reassoc", "arcp", "contract", "nsz"})


@njit(cache=True)
def _select(cond, a, b):
    return a if cond else b


_F = formulas.build(_select, math.sqrt, jit=njit(**_STRICT), tag="nb")
_cos_of_pair = _F["cos_of_pair"]
_geometry_from_cos = _F["geometry_from_cos"]
_geometry_from_halves = _F["geometry_from_halves"]
_relu_nngp = _F["relu_nngp"]
_relu_sigmadot = _F["relu_sigmadot"]
_relu_ntk = _F["relu_ntk"]
_relu_xi_alpha = _F["relu_xi_alpha"]
_relu_xi_beta = _F["relu_xi_beta"]

_FF = formulas.build(_select, math.sqrt, jit=njit(**_FAST_PAIR), tag="nbfast")
_f_cos_of_pair = _FF["cos_of_pair"]
_f_geometry_from_cos = _FF["geometry_from_cos"]
_f_geometry_from_halves = _FF["geometry_from_halves"]
_f_relu_ntk = _FF["relu_ntk"]
_f_relu_xi_alpha = _FF["relu_xi_alpha"]
_f_relu_xi_beta = _FF["relu_xi_beta"]
NEAR = formulas.NEAR


# ---------------------------------------------------------------------------
# pairwise kernels (p x q matrices): Theta, K, Xi coefficients
# ---------------------------------------------------------------------------

@njit(cache=True, **_STRICT)
def _near_halves(xh, y, ny):
    """|x^ - y^|^2, |x^ + y^|^2 in float64 from a unit row x^ and a row y with norm ny."""
    minus2 = 0.0
    plus2 = 0.0
    for k in range(xh.shape[0]):
        yk = y[k] / ny if ny > 0.0 else 0.0
        a = xh[k] - yk
        b = xh[k] + yk
        minus2 += a * a
        plus2 += b * b
    return minus2, plus2


@njit(parallel=True, cache=True, **_STRICT)
def _pair_kernel(G, nx, ny, Xh, Yh, m, what, out1, out2):
    """Fill out1 (and out2) for every pair from dot products G = X Y^T.

    what (accel.pair_source.WHAT): 0 ntk, 1 nngp, 2 sigmadot, 3 Xi coefficients (alpha -> out1,
    beta -> out2), 4 nngp -> out1 and ntk -> out2.
    """
    p, q = G.shape
    for i in prange(p):
        for j in range(q):
            nn = nx[i] * ny[j]
            lam = _cos_of_pair(G[i, j], nn, nx[i] + ny[j] == 0.0)
            if abs(lam) > 1.0 - NEAR:
                minus2, plus2 = _near_halves(Xh[i], Yh[j], 1.0)
                theta, lam, s = _geometry_from_halves(minus2, plus2)
            else:
                theta, lam, s = _geometry_from_cos(lam)
            if what == 0:
                out1[i, j] = _relu_ntk(G[i, j], nn, m, theta, lam, s)
            elif what == 1:
                out1[i, j] = _relu_nngp(nn, m, theta, lam, s)
            elif what == 2:
                out1[i, j] = _relu_sigmadot(theta)
            elif what == 3:
                out1[i, j] = _relu_xi_alpha(m, theta, lam, s)
                out2[i, j] = _relu_xi_beta(ny[j], m, lam, s)
            else:
                out1[i, j] = _relu_nngp(nn, m, theta, lam, s)
                out2[i, j] = _relu_ntk(G[i, j], nn, m, theta, lam, s)


def _relu_pairs(X, Y, what):
    nx, Xh = unit_rows(X)
    ny, Yh = unit_rows(Y)
    G = X @ Y.T
    out1 = np.empty(G.shape)
    out2 = np.empty(G.shape) if what in (3, 4) else np.empty((1, 1))
    with _threads(G.size):
        _pair_kernel(G, nx, ny, Xh, Yh, float(X.shape[1]), what, out1, out2)
    return out1, out2


#: The kernel functions (refimpl's names and signatures) over :func:`_relu_pairs`.
_KernelFunctions = kernelapi.make_kernels(lambda X, Y, what: _relu_pairs(X, Y, WHAT[what]))
nngp = _KernelFunctions.nngp
sigmadot = _KernelFunctions.sigmadot
ntk = _KernelFunctions.ntk
xi_coefficients = _KernelFunctions.xi_coefficients
xi = _KernelFunctions.xi
ntk_inf = _KernelFunctions.ntk_inf


# sigma1 and sigma2 (Jacobian covariances, lemma 3.1) serve Monte Carlo checks, not the
# dynamics: every backend shares refimpl's.
sigma1 = _KernelFunctions.sigma1
sigma2 = _KernelFunctions.sigma2


# ---------------------------------------------------------------------------
# the history pass
# ---------------------------------------------------------------------------

@njit(cache=True, **_FAST_PAIR)
def _row_terms(drow, znb, pn, m, s0, nm, Krow, Arow, Brow, nearrow):
    """Pair terms K, alpha, beta of one query against history rows s0 .. s0 + nm (branch-free)."""
    for mm in range(nm):
        pnm = pn[s0 + mm]
        dot = np.float64(drow[mm])
        nn = znb * pnm
        lam = _f_cos_of_pair(dot, nn, znb + pnm == 0.0)
        nearrow[mm] = abs(lam) > 1.0 - NEAR
        theta, lam, s = _f_geometry_from_cos(lam)
        Krow[mm] = _f_relu_ntk(dot, nn, m, theta, lam, s)
        Arow[mm] = _f_relu_xi_alpha(m, theta, lam, s)
        Brow[mm] = _f_relu_xi_beta(pnm, m, lam, s)


@njit(cache=True, **_FAST_PAIR)
def _row_near(zh, znb, drow, P, pn, m, s0, nm, Krow, Arow, Brow, nearrow):
    """Recompute the nearly (anti-)parallel pairs of one query from explicit differences, float64."""
    for mm in range(nm):
        if nearrow[mm]:
            pnm = pn[s0 + mm]
            minus2, plus2 = _near_halves(zh, P[s0 + mm], pnm)
            theta, lam, s = _f_geometry_from_halves(minus2, plus2)
            Krow[mm] = _f_relu_ntk(np.float64(drow[mm]), znb * pnm, m, theta, lam, s)
            Arow[mm] = _f_relu_xi_alpha(m, theta, lam, s)
            Brow[mm] = _f_relu_xi_beta(pnm, m, lam, s)


@njit(parallel=True, cache=True, **_FAST_LOOP)
def _hist_kernel(Zw, zn, Zh, P, pn, C, chi, mode, relu, m, lin, nchunks, qblock, hblock,
                 out_f, out_T, out_b):
    """One pass over the history P (M, d), C (M, dr) for the queries Zw (q, d).

    Zw is in the working dtype (that of P); zn, Zh are the float64 norms and
    unit rows of the queries; pn the float64 norms of P.  Adds the sums of
    chunk c into out_f[c] (q, dr), out_T[c] (q, R, d), out_b[c] (q, R);
    mode 0: f only; 1: f and T, bsum with w = C; 2: T, bsum with w_m = C_m . chi_b.
    relu: ReLU kernels, else linear with K = lin x.y / m, alpha = lin / m, beta = 0.
    """
    q, d = Zw.shape
    M = P.shape[0]
    dr = C.shape[1]
    R = out_T.shape[2]
    nqb = (q + qblock - 1) // qblock
    per = (M + nchunks - 1) // nchunks
    wdt = P.dtype
    # float32: the Xi terms of nearly parallel pairs are summed in float64 (see below)
    exact_near = relu and P.itemsize < 8
    for tile in prange(nqb * nchunks):
        qi = tile // nchunks
        c = tile - qi * nchunks
        b0 = qi * qblock
        nb = min(q, b0 + qblock) - b0
        h0 = c * per
        h1 = min(M, h0 + per)
        dots = np.empty((nb, hblock), dtype=wdt)
        Kv = np.empty((nb, hblock), dtype=wdt)
        Av = np.empty((nb, hblock), dtype=np.float64)
        Bv = np.empty((nb, hblock), dtype=np.float64)
        near = np.zeros((nb, hblock), dtype=np.bool_)
        W = np.empty((nb, hblock), dtype=wdt)
        accT = np.zeros((nb, max(R, 1), d), dtype=wdt)
        accT64 = np.zeros((nb, max(R, 1), d), dtype=np.float64)
        zero = np.zeros(1, dtype=wdt)[0]
        for s0 in range(h0, h1, hblock):
            nm = min(h1, s0 + hblock) - s0
            # 1. dot products (reduction over d, reassociated and vectorised)
            for mm in range(nm):
                for bb in range(nb):
                    acc = zero
                    for k in range(d):
                        acc += Zw[b0 + bb, k] * P[s0 + mm, k]
                    dots[bb, mm] = acc
            # 2. pair terms: branch-free for all pairs, then the near pairs again
            for bb in range(nb):
                if relu:
                    _row_terms(dots[bb], zn[b0 + bb], pn, m, s0, nm, Kv[bb], Av[bb], Bv[bb], near[bb])
                    _row_near(Zh[b0 + bb], zn[b0 + bb], dots[bb], P, pn, m, s0, nm,
                              Kv[bb], Av[bb], Bv[bb], near[bb])
                else:
                    for mm in range(nm):
                        Kv[bb, mm] = lin * dots[bb, mm] / m
                        Av[bb, mm] = lin / m
                        Bv[bb, mm] = 0.0
            # 3. sums over the tile's history rows
            if mode != 2:
                for bb in range(nb):
                    for r in range(dr):
                        acc64 = 0.0
                        for mm in range(nm):
                            acc64 += Kv[bb, mm] * C[s0 + mm, r]
                        out_f[c, b0 + bb, r] += acc64
            if mode != 0:
                for r in range(R):
                    # weights w[b, m] = alpha * C[m, r]  (mode 1)  or  alpha * (C_m . chi_b)  (mode 2)
                    for bb in range(nb):
                        bacc = 0.0
                        for mm in range(nm):
                            if mode == 1:
                                cw = np.float64(C[s0 + mm, r])
                            else:
                                cw = 0.0
                                for rr in range(dr):
                                    cw += chi[b0 + bb, rr] * C[s0 + mm, rr]
                            W[bb, mm] = Av[bb, mm] * cw
                            bacc += Bv[bb, mm] * cw
                        out_b[c, b0 + bb, r] += bacc
                    accT[:] = 0
                    accT64[:] = 0
                    for mm in range(nm):
                        for bb in range(nb):
                            if exact_near and near[bb, mm]:
                                # alpha ~ 1/sin here and cancels against beta's term: float64
                                w64 = Av[bb, mm]
                                if mode == 1:
                                    w64 *= np.float64(C[s0 + mm, r])
                                else:
                                    cw = 0.0
                                    for rr in range(dr):
                                        cw += chi[b0 + bb, rr] * C[s0 + mm, rr]
                                    w64 *= cw
                                for k in range(d):
                                    accT64[bb, r, k] += w64 * P[s0 + mm, k]
                            else:
                                w = W[bb, mm]
                                for k in range(d):
                                    accT[bb, r, k] += w * P[s0 + mm, k]
                    for bb in range(nb):
                        for k in range(d):
                            out_T[c, b0 + bb, r, k] += accT[bb, r, k] + accT64[bb, r, k]


def history_pass(Z, P, pn, C, mode, chi, relu, m, lin, dtype=np.float64,
                 qblock=QUERY_BLOCK, hblock=HIST_BLOCK):
    """Sums over the history for queries Z (q, d); see :mod:`accel._simbase` for the modes.

    Returns f (q, dr), T (q, R, d), bsum (q, R) in float64 (T, bsum are None in mode 0).
    """
    Z = np.ascontiguousarray(Z, dtype=np.float64)
    q, d = Z.shape
    M, dr = C.shape
    zn, Zh = unit_rows(Z)
    Zw = np.ascontiguousarray(Z, dtype=dtype)
    nqb = -(-q // qblock)
    nchunks = int(max(1, min(-(-TARGET_TILES // nqb), -(-M // hblock))))
    R = {0: 0, 1: dr, 2: 1}[mode]
    out_f = np.zeros((nchunks, q, dr) if mode != 2 else (1, 1, 1))
    out_T = np.zeros((nchunks, q, R, d) if mode else (1, 1, 0, 1))
    out_b = np.zeros((nchunks, q, R) if mode else (1, 1, 1))
    chi = np.zeros((1, 1)) if chi is None else np.ascontiguousarray(chi, dtype=np.float64)
    if M:
        with _threads(q * M):
            _hist_kernel(Zw, zn, Zh, P, pn, C, chi, mode, relu, float(m), float(lin), nchunks,
                         qblock, hblock, out_f, out_T, out_b)
    f = out_f.sum(axis=0) if mode != 2 else None
    if mode == 0:
        return f, None, None
    return f, out_T.sum(axis=0), out_b.sum(axis=0)


# ---------------------------------------------------------------------------
# simulators
# ---------------------------------------------------------------------------

class BottleneckSimulator(AccelBottleneckMixin, refimpl.BottleneckSimulator):
    """:class:`refimpl.BottleneckSimulator` with the Numba history pass.

    Same parameters, plus ``dtype`` ("float64" or "float32"): the precision of
    the stored history and of the history pass (default: the class's, set by
    :func:`accel.get_backend`).
    """

    _kernels = _KernelFunctions

    def __init__(self, *args, dtype=None, **kwargs):
        self._init_accel(dtype)
        super().__init__(*args, **kwargs)

    def _history_pass(self, Z, mode, chi):
        h = self.history
        relu, m, lin = self._kernel_params()
        return history_pass(Z, h.P, h.norms, h.C, mode, chi, relu, m, lin, dtype=self.dtype)


class InfiniteSimulator(AccelInfiniteMixin, refimpl.InfiniteSimulator):
    """:class:`refimpl.InfiniteSimulator` with the Numba NTK_inf.

    ``dtype`` is accepted for a uniform interface; this model has no history
    and always runs in float64.
    """

    _kernels = _KernelFunctions

    def __init__(self, *args, dtype=None, **kwargs):
        super().__init__(*args, **kwargs)
