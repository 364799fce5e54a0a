"""The GPU backend's engine: history pass and pair kernels over CuPy or its NumPy stand-in.

Per block of the history (MATH §4), for queries Z (q, d) against rows P (n, d), C (n, dr):

1. ``G = Z P^T`` (one GEMM, cuBLAS on a GPU) in the working dtype T (float32 or float64);
2. one elementwise kernel (:mod:`accel.pair_source`) computes, per pair, K and the Xi weights
   ``WA = alpha w`` (T), ``WB = beta w`` (float64) with ``w = C`` (mode 1) or ``C . chi``
   (mode 2), recomputing nearly (anti-)parallel pairs in place from the explicit differences
   z^ -+ p^ in float64 (MATH §2.1): no gather, no host round trip;
3. ``f += K C``, ``T += WA P`` (GEMMs, batched over the R weight columns), ``bsum += sum WB``.

So a pass is about five kernels per block, and the history is processed in as few blocks as
the free device memory allows (:meth:`XPEngine.block_shape`: normally the whole history at
once).  With the NumPy stand-in (:data:`accel.standin.numpy_device`) the same code runs on the
CPU, with the kernel source compiled by gcc: that is how CI checks it against the golden files.
"""

from __future__ import annotations

import numpy as np

from refimpl.kernels import unit_rows

from . import pair_source

#: Fraction of the free device memory (plus the memory pool's free blocks) that one block's
#: temporaries may use.
MEMORY_FRACTION = 0.4
#: Modes of the history pass (see accel._simbase): number of weight columns R.
_R = {0: 0, 1: None, 2: 1}


class XPEngine:
    """Pair kernels and history pass on the array module ``xp`` (CuPy or the NumPy stand-in).

    Parameters
    ----------
    xp : module-like
        ``cupy`` or :data:`accel.standin.numpy_device`.
    """

    def __init__(self, xp):
        self.xp = xp
        self._kernels = {}

    def kernels(self, arch):
        """(history_kernel, pair_kernel) for ``arch`` ("relu", "linear"), built on first use."""
        if arch not in self._kernels:
            self._kernels[arch] = pair_source.elementwise_kernels(self.xp, arch)
        return self._kernels[arch]

    def to_host(self, a):
        return self.xp.asnumpy(a)

    # ------------------------------------------------------------ memory
    def free_bytes(self):
        """Free device memory plus the free blocks held by CuPy's memory pool."""
        xp = self.xp
        free = xp.cuda.runtime.memGetInfo()[0]
        pool = xp.get_default_memory_pool()
        return int(free + pool.total_bytes() - pool.used_bytes())

    def block_shape(self, q, M, bytes_per_pair):
        """(query rows, history rows) per block: the whole pass if it fits in
        MEMORY_FRACTION of :meth:`free_bytes`, else history blocks of equal size."""
        pairs = max(1, int(MEMORY_FRACTION * self.free_bytes()) // bytes_per_pair)
        if q * M <= pairs:
            return q, M
        nb = min(M, max(256, pairs // max(q, 1)))
        qb = max(1, min(q, pairs // nb))
        nblocks = -(-M // nb)
        return qb, -(-M // nblocks)                       # equal blocks

    # ------------------------------------------------------------ pair kernels
    def pair_kernel(self, X, Y, what, arch="relu", par=0.0):
        """Pair matrices of checked float64 host arrays X (p, m), Y (q, m) (MATH §2).

        ``what`` as :data:`accel.pair_source.WHAT`; returns host (out1, out2), (p, q) float64
        (out2 None unless ``what`` is "xi" or "nngp+ntk").
        """
        xp = self.xp
        nx, Xh = unit_rows(X)
        ny = np.sqrt(np.einsum("ij,ij->i", Y, Y))
        Xd, Yd = xp.asarray(X), xp.asarray(Y)
        G = xp.matmul(Xd, Yd.T)
        G = xp.ascontiguousarray(G)
        two = what in ("xi", "nngp+ntk")
        out1 = xp.empty(G.shape)
        out2 = xp.empty(G.shape if two else (1,))
        _, kern = self.kernels(arch)
        kern(G, xp.asarray(nx), xp.asarray(ny), xp.asarray(Xh).ravel(), Yd.ravel(),
             int(Y.shape[0]), int(X.shape[1]), float(X.shape[1]), float(par),
             int(pair_source.WHAT[what]), out1, out2.ravel())
        return self.to_host(out1), (self.to_host(out2) if two else None)

    # ------------------------------------------------------------ history pass
    def history_pass(self, Z, P, pn, C, mode, chi, arch, m, par):
        """Sums over the history for queries Z (q, d); modes as in :mod:`accel._simbase`.

        P (M, d), C (M, dr) in the working dtype and pn (M,) float64 live on ``xp``; Z, chi are
        host arrays.  Returns host float64 f (q, dr) (None in mode 2), T (q, R, d) and
        bsum (q, R) (None in mode 0).
        """
        xp = self.xp
        q, d = Z.shape
        M, dr = C.shape
        wdt = np.dtype(P.dtype)
        R = dr if mode == 1 else _R[mode]
        exact_near = int(arch == "relu" and wdt == np.float32 and mode != 0)
        zn_h, Zh_h = unit_rows(np.ascontiguousarray(Z, dtype=np.float64))
        Zw = xp.asarray(np.ascontiguousarray(Z, dtype=wdt))
        zn, Zh = xp.asarray(zn_h), xp.asarray(Zh_h)
        chi_d = xp.asarray(np.zeros((q, dr)) if chi is None else np.ascontiguousarray(chi, dtype=np.float64))
        f = xp.zeros((q, dr))
        T = xp.zeros((max(R, 1), q, d))
        bsum = xp.zeros((max(R, 1), q))
        hist_kernel, _ = self.kernels(arch)
        bytes_per_pair = 2 * wdt.itemsize + R * (wdt.itemsize + 8)
        qb, nb = self.block_shape(q, M, bytes_per_pair)
        dummy_T = xp.zeros(1, dtype=wdt)
        dummy_64 = xp.zeros(1)
        for r0 in range(0, q, qb):
            r1 = min(q, r0 + qb)
            nq = r1 - r0
            for s0 in range(0, M, nb):
                s1 = min(M, s0 + nb)
                ns = s1 - s0
                Ps = P[s0:s1]
                Cs = C[s0:s1]
                G = xp.matmul(Zw[r0:r1], Ps.T)
                K = xp.empty((nq, ns), dtype=wdt)
                if R:
                    WA = xp.empty((R, nq, ns), dtype=wdt)
                    WB = xp.empty((R, nq, ns))
                    T64 = xp.zeros((R, nq, d)) if exact_near else dummy_64
                else:
                    WA, WB, T64 = dummy_T, dummy_64, dummy_64
                hist_kernel(G, Ps.ravel(), pn[s0:s1], zn[r0:r1], Zh[r0:r1].ravel(), Cs.ravel(),
                            chi_d[r0:r1].ravel(), ns, nq, d, dr, R, mode, exact_near,
                            float(m), float(par), K, WA.ravel(), WB.ravel(), T64.ravel())
                if mode != 2:
                    f[r0:r1] += xp.matmul(K, Cs).astype(np.float64, copy=False)
                if R:
                    T[:, r0:r1] += xp.matmul(WA, Ps).astype(np.float64, copy=False)
                    if exact_near:
                        T[:, r0:r1] += T64
                    bsum[:, r0:r1] += WB.sum(axis=2)
        f = self.to_host(f) if mode != 2 else None
        if mode == 0:
            return f, None, None
        return f, self.to_host(T).transpose(1, 0, 2).copy(), self.to_host(bsum).T.copy()
