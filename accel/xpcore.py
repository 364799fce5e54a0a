"""The history pass and the pair kernels over an array module ``xp`` (NumPy or CuPy).

This is the GPU backend's code path: on CuPy the contractions are cuBLAS
GEMMs and the per-pair formulas of :mod:`accel.formulas` run as one fused
elementwise kernel (``cupy.fuse``); with ``xp = numpy`` the very same code
runs on the CPU, which is how CI tests it against the golden files without a
GPU.  The history is processed in blocks of ``block`` rows, so the
temporaries are O(q x block) whatever M (MATH §4).

Angles follow MATH §2.1 as in the other backends: cosines from a GEMM, and
pairs with |cos| > 1 - NEAR recomputed from the explicit differences
z^ -+ p^ (gathered, then scattered back).
"""

from __future__ import annotations

import numpy as np

from refimpl import kernels as rk
from refimpl.kernels import check_activation

from . import formulas

#: History rows per block of the array-module pass.
BLOCK = 8192
#: Largest (queries x block) temporary, in elements.
MAX_TILE = 1 << 22


class XPEngine:
    """Pair kernels and history pass on the array module ``xp``.

    Parameters
    ----------
    xp : module
        ``numpy`` or ``cupy``.
    fuse : bool
        Fuse the per-pair formulas into one kernel (``cupy.fuse``; CuPy only).
    """

    def __init__(self, xp, fuse=False):
        self.xp = xp
        self.F = formulas.build(xp.where, xp.sqrt, tag=xp.__name__)
        self._far = self._far_terms_plain
        if fuse:
            self._far = self._fused_or_plain()

    # ------------------------------------------------------------- per pair
    def _far_terms_plain(self, dot, nn, zero_pair, pn, m):
        """K, alpha, beta and the near mask for arrays of pairs (cosine route)."""
        F = self.F
        lam = F["cos_of_pair"](dot, nn, zero_pair)
        near = abs(lam) > 1.0 - formulas.NEAR
        theta, lam, s = F["geometry_from_cos"](lam)
        return (F["relu_ntk"](dot, nn, m, theta, lam, s), F["relu_xi_alpha"](m, theta, lam, s),
                F["relu_xi_beta"](pn, m, lam, s), near)

    def _fused_or_plain(self):
        try:
            import cupy
            return cupy.fuse()(self._far_terms_plain)
        except Exception:                      # pragma: no cover - needs CuPy
            return self._far_terms_plain

    def _near_terms(self, Zh, P, pn, dot, zn, m, rows, cols):
        """K, alpha, beta of the pairs (rows[i], cols[i]) from explicit differences."""
        xp = self.xp
        F = self.F
        pnc = pn[cols]
        Ph = P[cols].astype(xp.float64) / xp.where(pnc > 0, pnc, 1.0)[:, None]
        minus = Zh[rows] - Ph
        plus = Zh[rows] + Ph
        theta, lam, s = F["geometry_from_halves"](xp.sum(minus * minus, axis=1),
                                                  xp.sum(plus * plus, axis=1))
        nn = zn[rows] * pnc
        return (F["relu_ntk"](dot, nn, m, theta, lam, s), F["relu_xi_alpha"](m, theta, lam, s),
                F["relu_xi_beta"](pnc, m, lam, s))

    def relu_terms(self, G, zn, Zh, P, pn, m):
        """K, alpha, beta (q, n) of queries (norms zn, unit rows Zh) against rows P with norms pn.

        G holds the dot products Z P^T (any float dtype; the terms are float64).
        """
        xp = self.xp
        G = G.astype(xp.float64)
        nn = zn[:, None] * pn[None, :]
        zero_pair = (zn[:, None] + pn[None, :]) == 0.0
        K, A, Bt, near = self._far(G, nn, zero_pair, pn[None, :], m)
        rows, cols = xp.nonzero(near)
        if rows.size:
            K[rows, cols], A[rows, cols], Bt[rows, cols] = self._near_terms(
                Zh, P, pn, G[rows, cols], zn, m, rows, cols)
        return K, A, Bt, (rows, cols)

    # ------------------------------------------------------------ pair kernels
    def pair_kernel(self, X, Y, what):
        """Sigma ("nngp"), Sigmadot, K ("ntk"), (alpha, beta) ("xi") or (Sigma, K) ("nngp+ntk") on host arrays."""
        xp = self.xp
        nx, Xh = rk.unit_rows(X)
        ny, _ = rk.unit_rows(Y)
        Xd, Yd = xp.asarray(X), xp.asarray(Y)
        nxd, nyd, Xhd = xp.asarray(nx), xp.asarray(ny), xp.asarray(Xh)
        m = float(X.shape[1])
        G = Xd @ Yd.T
        nn = nxd[:, None] * nyd[None, :]
        zero_pair = (nxd[:, None] + nyd[None, :]) == 0.0
        F = self.F
        lam = F["cos_of_pair"](G, nn, zero_pair)
        theta, lam, s = F["geometry_from_cos"](lam)
        rows, cols = xp.nonzero(abs(lam) > 1.0 - formulas.NEAR)
        if rows.size:
            Yh = Yd[cols] / xp.where(nyd[cols] > 0, nyd[cols], 1.0)[:, None]
            minus = Xhd[rows] - Yh
            plus = Xhd[rows] + Yh
            theta[rows, cols], lam[rows, cols], s[rows, cols] = F["geometry_from_halves"](
                xp.sum(minus * minus, axis=1), xp.sum(plus * plus, axis=1))
        out = {
            "nngp": lambda: F["relu_nngp"](nn, m, theta, lam, s),
            "sigmadot": lambda: F["relu_sigmadot"](theta),
            "ntk": lambda: F["relu_ntk"](G, nn, m, theta, lam, s),
            "xi": lambda: (F["relu_xi_alpha"](m, theta, lam, s),
                           F["relu_xi_beta"](nyd[None, :], m, lam, s)),
            "nngp+ntk": lambda: (F["relu_nngp"](nn, m, theta, lam, s),
                                 F["relu_ntk"](G, nn, m, theta, lam, s)),
        }[what]()
        return tuple(self.to_host(a) for a in out) if isinstance(out, tuple) else self.to_host(out)

    def _xi_sum(self, W, Ps, wdt, near):
        """W @ Ps (q, d) in float64; in float32 the nearly parallel pairs (``near``) are summed
        apart in float64, since there alpha ~ 1/sin cancels against the beta term."""
        xp = self.xp
        if near is None:
            return (W.astype(wdt) @ Ps).astype(xp.float64)
        rows, cols = near
        Wn = W[rows, cols]
        W = W.copy()
        W[rows, cols] = 0.0
        out = (W.astype(wdt) @ Ps).astype(xp.float64)
        _scatter_add(xp, out, rows, Wn[:, None] * Ps[cols].astype(xp.float64))
        return out

    def to_host(self, a):
        return a if self.xp is np else self.xp.asnumpy(a)

    # ------------------------------------------------------------ history pass
    def history_pass(self, Z, P, pn, C, mode, chi, relu, m, lin, block=BLOCK):
        """Sums over the history (modes as in :mod:`accel._simbase`); P, pn, C live on ``xp``.

        Returns host arrays f (q, dr), T (q, R, d), bsum (q, R) in float64.
        """
        xp = self.xp
        q, d = Z.shape
        M, dr = C.shape
        wdt = P.dtype
        zn_h, Zh_h = rk.unit_rows(np.ascontiguousarray(Z, dtype=np.float64))
        Zd = xp.asarray(Z, dtype=np.float64)
        Zw, zn, Zh = Zd.astype(wdt), xp.asarray(zn_h), xp.asarray(Zh_h)
        chi_d = None if chi is None else xp.asarray(chi, dtype=np.float64)
        R = {0: 0, 1: dr, 2: 1}[mode]
        f = xp.zeros((q, dr))
        T = xp.zeros((q, R, d))
        bsum = xp.zeros((q, R))
        qstep = max(1, min(q, MAX_TILE // block))
        for r0 in range(0, q, qstep):
            rs = slice(r0, min(q, r0 + qstep))
            for s0 in range(0, M, block):
                Ps, Cs, pns = P[s0:s0 + block], C[s0:s0 + block], pn[s0:s0 + block]
                G = Zw[rs] @ Ps.T
                near = None
                if relu:
                    K, A, Bt, near = self.relu_terms(G, zn[rs], Zh[rs], Ps, pns, m)
                    if wdt == np.float64 or not near[0].size:
                        near = None
                else:
                    K = lin * G.astype(xp.float64) / m
                    A = xp.full(K.shape, lin / m)
                    Bt = xp.zeros(K.shape)
                if mode != 2:
                    f[rs] += (K.astype(wdt) @ Cs).astype(xp.float64)
                if mode == 1:
                    for r in range(dr):
                        W = A * Cs[:, r].astype(xp.float64)[None, :]
                        T[rs, r] += self._xi_sum(W, Ps, wdt, near)
                    bsum[rs] += Bt @ Cs.astype(xp.float64)
                elif mode == 2:
                    Wc = chi_d[rs] @ Cs.astype(xp.float64).T
                    T[rs, 0] += self._xi_sum(A * Wc, Ps, wdt, near)
                    bsum[rs, 0] += xp.sum(Bt * Wc, axis=1)
        f = self.to_host(f) if mode != 2 else None
        if mode == 0:
            return f, None, None
        return f, self.to_host(T), self.to_host(bsum)


def _scatter_add(xp, target, rows, values):
    if xp is np:
        np.add.at(target, rows, values)
    else:                                              # pragma: no cover - needs CuPy
        import cupyx
        cupyx.scatter_add(target, rows, values)


def make_kernels(engine):
    """Kernel functions with refimpl's names and signatures, computed by ``engine``."""

    def _relu(X, Y, activation, depth):
        check_activation(activation, depth)
        return rk.as_pair(X, Y)

    def nngp(X, Y, activation="relu", depth=None):
        """NNGP kernel Sigma(x, y), as :func:`refimpl.kernels.nngp`."""
        if activation == "linear":
            return rk.nngp(X, Y, activation, depth)
        return engine.pair_kernel(*_relu(X, Y, activation, depth), "nngp")

    def sigmadot(X, Y, activation="relu", depth=None):
        """Derivative kernel, as :func:`refimpl.kernels.sigmadot`."""
        if activation == "linear":
            return rk.sigmadot(X, Y, activation, depth)
        return engine.pair_kernel(*_relu(X, Y, activation, depth), "sigmadot")

    def ntk(X, Y, activation="relu", depth=None):
        """NTK, as :func:`refimpl.kernels.ntk`."""
        if activation == "linear":
            return rk.ntk(X, Y, activation, depth)
        return engine.pair_kernel(*_relu(X, Y, activation, depth), "ntk")

    def xi_coefficients(X, Y, activation="relu", depth=None):
        """alpha, beta of Xi, as :func:`refimpl.kernels.xi_coefficients`."""
        if activation == "linear":
            return rk.xi_coefficients(X, Y, activation, depth)
        return engine.pair_kernel(*_relu(X, Y, activation, depth), "xi")

    def xi(X, Y, activation="relu", depth=None):
        """Xi(x, y), as :func:`refimpl.kernels.xi`."""
        X, Y = rk.as_pair(X, Y)
        alpha, beta = xi_coefficients(X, Y, activation, depth)
        _, Xh = rk.unit_rows(X)
        return alpha[:, :, None] * Y[None, :, :] + beta[:, :, None] * Xh[:, None, :]

    def ntk_inf(X, Y, activation="relu", depth_f=None, depth_g=None, lr_f=1.0, lr_g=1.0):
        """NTK_inf, as :func:`refimpl.kernels.ntk_inf` (combination by refimpl.kernels.ntk_inf_from_g)."""
        Lf = check_activation(activation, depth_f)
        check_activation(activation, depth_g)
        if activation == "linear":
            return rk.ntk_inf(X, Y, activation, depth_f, depth_g, lr_f, lr_g)
        X, Y = rk.as_pair(X, Y)
        sigma_g, theta_g = engine.pair_kernel(X, Y, "nngp+ntk")
        return rk.ntk_inf_from_g(X, Y, sigma_g, theta_g, activation, Lf, lr_f, lr_g)

    class Kernels:
        pass

    for fn in (nngp, sigmadot, ntk, xi_coefficients, xi, ntk_inf):
        setattr(Kernels, fn.__name__, staticmethod(fn))
    Kernels.sigma1 = staticmethod(rk.sigma1)
    Kernels.sigma2 = staticmethod(rk.sigma2)
    return Kernels
