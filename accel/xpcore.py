"""The GPU backend's engine: history pass and pair kernels over CuPy or its NumPy stand-in.

The history pass (MATH §4) is the fused pass of :mod:`accel.fused_source`: per query tile, one
kernel ``bd_fused_history`` streams the history P (M, d), C (M, dr) through shared memory once,
forms the dot products with the queries, the pair terms (K, alpha, beta; nearly parallel pairs
from explicit differences, MATH §2.1) and accumulates f, the Xi contraction T and the beta sums
in registers; per-block partials go to a small buffer that ``bd_fused_reduce`` sums.  Per pass:
one host-to-device copy (the queries, their norms, unit rows and chi packed in one buffer), two
kernels per launch (one unless dr or d is large: columns of C or of T in chunks), one device-to-host copy.  No
(q, M) pair matrix is stored.

Where the fused kernel's tile would not hold one history row and one query even in the device's
opt-in shared memory, or a Jacobian needs too many launches (:func:`accel.fused_source.plan` returns
None; no shape of the campaign) the pass falls back to the unfused form
(:meth:`XPEngine.gemm_history_pass`): per block of the history a GEMM G = Z P^T, one
elementwise kernel (:mod:`accel.pair_source`) writing K and the Xi weights, and GEMMs for f
and T, in as few blocks as the free device memory allows (:meth:`XPEngine.block_shape`).

With the NumPy stand-in (:data:`accel.standin.numpy_device`) the same code runs on the CPU: the
elementwise kernels compiled by gcc, the fused kernels by the CUDA execution harness
:mod:`accel.cudasim` (threads as coroutines, barriers as synchronisation points).  That is how
CI checks them against refimpl and the golden files.

FP64 tensor cores: with ``BOTTLENECK_TENSOR_CORES=1`` (or ``XPEngine(xp, tensor_cores=True)``) a
float64 pass on a device of compute capability 8.0 or later runs the tile's two products (the dot
products and the T sums) as ``mma.sync`` m8n8k4 warp operations (:func:`accel.fused_source.source`,
``mma``); the harness runs them as warp collectives.  Off by default until a GPU has timed both.
"""

from __future__ import annotations

import os

import numpy as np

from refimpl.kernels import unit_rows

from . import archkernels, fused_source, pair_source

#: Fraction of the free device memory (plus the memory pool's free blocks) that one block's
#: temporaries may use.
MEMORY_FRACTION = 0.4
#: Environment variable that turns the FP64 tensor cores on ("1") or off ("0", the default).
TENSOR_CORES_ENV = "BOTTLENECK_TENSOR_CORES"


def tensor_cores_requested(env=None):
    """Whether ``BOTTLENECK_TENSOR_CORES`` asks for the FP64 tensor cores: "1" yes, "0" or unset no; any other
    value is an error naming the variable."""
    v = (os.environ if env is None else env).get(TENSOR_CORES_ENV, "0").strip()
    if v not in ("0", "1"):
        raise ValueError(f"{TENSOR_CORES_ENV}: expected 0 or 1, got {v!r}")
    return v == "1"


#: Modes of the history pass (see accel._simbase): number of weight columns R.
_R = {0: 0, 1: None, 2: 1}


def device_unit_rows(fx, Z):
    """Norms (q,) and unit rows (q, d) of the rows of Z on the array module ``fx`` (a zero row stays zero)."""
    zn = fx.sqrt(fx.sum(Z * Z, axis=1))
    return zn, Z / fx.where(zn > 0.0, zn, 1.0)[:, None]


class XPEngine:
    """Pair kernels and history pass on the array module ``xp`` (CuPy or the NumPy stand-in).

    Parameters
    ----------
    xp : module-like
        ``cupy`` or :data:`accel.standin.numpy_device`.
    tensor_cores : bool or None
        Run float64 passes on the FP64 tensor cores where the device has them (compute capability 8.0 or
        later); None: as ``BOTTLENECK_TENSOR_CORES`` says (default off).
    """

    def __init__(self, xp, tensor_cores=None):
        self.xp = xp
        self.tensor_cores = tensor_cores_requested() if tensor_cores is None else bool(tensor_cores)
        self._kernels = {}
        self._modules = {}
        self._attributes = None
        #: Launches of the last history pass: {"kernels": n, "h2d": n, "d2h": n} (for the counts
        #: in docs/BENCHMARKS.md and the tests).
        self.last_launches = {}

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
        out1, out2 = self.pair_kernel_device(xp.asarray(X), xp.asarray(nx), xp.asarray(Xh), xp.asarray(Y),
                                             xp.asarray(ny), what, arch, par)
        return self.to_host(out1), (None if out2 is None else self.to_host(out2))

    def pair_kernel_device(self, Xd, nx, Xh, Yd, ny, what, arch="relu", par=0.0):
        """:meth:`pair_kernel` on device arrays: rows Xd (p, m) with norms nx (p,) and unit rows Xh,
        rows Yd (q, m) with norms ny (q,), all float64 on ``xp``.  Returns device (out1, out2)."""
        xp = self.xp
        G = xp.ascontiguousarray(xp.matmul(Xd, Yd.T))
        two = what in ("xi", "nngp+ntk")
        out1 = xp.empty(G.shape)
        out2 = xp.empty(G.shape if two else (1,))
        _, kern = self.kernels(arch)
        kern(G, nx, ny, xp.ascontiguousarray(Xh).ravel(), xp.ascontiguousarray(Yd).ravel(),
             int(Yd.shape[0]), int(Xd.shape[1]), float(Xd.shape[1]), float(par),
             int(pair_source.WHAT[what]), out1, out2.ravel())
        return out1, (out2 if two else None)

    # ------------------------------------------------------------ history pass
    def history_pass(self, Z, P, pn, C, mode, chi, arch, m, par):
        """Sums over the history for queries Z (q, d); modes as in :mod:`accel._simbase`.

        P (M, d), C (M, dr) in the working dtype and pn (M,) float64 live on ``xp``; Z, chi are
        host arrays.  Returns host float64 f (q, dr) (None in mode 2), T (q, R, d) and
        bsum (q, R) (None in mode 0).  The fused pass where its tiles fit
        (:func:`accel.fused_source.plan`), else :meth:`gemm_history_pass`.
        """
        q, d = Z.shape
        M, dr = C.shape
        pl = self.plan(q, M, d, dr, mode, P.dtype, arch) if M and q else None
        if pl is None:
            return self.gemm_history_pass(Z, P, pn, C, mode, chi, arch, m, par)
        return self.fused_history_pass(Z, P, pn, C, mode, chi, arch, m, par, pl)

    def module(self, arch, dtype, mode, index_bits, mma=False):
        """The RawModule of one variant of :mod:`accel.fused_source`, built on first use."""
        key = (arch, np.dtype(dtype).name, mode, index_bits, bool(mma))
        if key not in self._modules:
            target = "sim" if getattr(self.xp, "KERNEL_TARGET", "cuda") == "host" else "cuda"
            self._modules[key] = self.xp.RawModule(code=fused_source.source(*key[:4], target=target, mma=key[4]),
                                                   options=fused_source.NVRTC_OPTIONS)
        return self._modules[key]

    def mma_available(self):
        """Whether the device has FP64 tensor cores (compute capability 8.0 or later; unknown: no)."""
        return int(self.attributes().get("ComputeCapabilityMajor", 0)) >= 8

    def uses_tensor_cores(self, dtype):
        """Whether passes in ``dtype`` run on the FP64 tensor cores here: asked for (:attr:`tensor_cores`), the
        device has them (:meth:`mma_available`) and the dtype is float64."""
        return bool(self.tensor_cores and np.dtype(dtype) == np.float64 and self.mma_available())

    def plan(self, q, M, d, dr, mode, dtype, arch):
        """:func:`accel.fused_source.plan` with this device's opt-in shared memory per block, the share of a
        multiprocessor's shared memory that keeps two blocks on it, and the tensor cores where asked for
        (:attr:`tensor_cores`) and present."""
        return fused_source.plan(q, M, d, dr, mode, dtype, arch, self.shared_optin(), self.shared_two_blocks(),
                                 mma=self.uses_tensor_cores(dtype))

    def attributes(self):
        """The device's attributes (CuPy's ``Device().attributes``, which queries every one of them; the
        stand-in's few), read once per engine (every pass plans with them), or {} where they cannot be read."""
        if self._attributes is None:
            try:
                self._attributes = dict(self.xp.cuda.Device().attributes)
            except (AttributeError, TypeError):
                self._attributes = {}
        return self._attributes

    def shared_two_blocks(self):
        """Shared memory per block with which two blocks fit on one multiprocessor (device attributes
        MaxSharedMemoryPerMultiprocessor and ReservedSharedMemoryPerBlock); the default 48 KiB where they
        cannot be read."""
        att = self.attributes()
        if "MaxSharedMemoryPerMultiprocessor" not in att:
            return fused_source.SHARED_BYTES
        return int(att["MaxSharedMemoryPerMultiprocessor"]) // 2 - int(att.get("ReservedSharedMemoryPerBlock", 0))

    def shared_optin(self):
        """Shared memory a block may use once its kernel's limit is raised (the device attribute
        MaxSharedMemoryPerBlockOptin; the default 48 KiB where it cannot be read)."""
        return int(self.attributes().get("MaxSharedMemoryPerBlockOptin", fused_source.SHARED_BYTES))

    def driver(self):
        """The CUDA driver API module: CuPy's, or the stand-in's (which keeps each kernel's limit)."""
        drv = getattr(self.xp, "driver_api", None)
        if drv is None:
            from cupy_backends.cuda.api import driver as drv
        return drv

    def allow_shared(self, fn, nbytes):
        """Raise kernel ``fn``'s dynamic shared memory limit to ``nbytes`` where that is above the default
        48 KiB (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES; a launch above the limit fails)."""
        if nbytes > fused_source.SHARED_BYTES:
            drv = self.driver()
            drv.funcSetAttribute(fn.ptr, drv.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, int(nbytes))

    def peak_bandwidth(self):
        """Peak memory bandwidth of the device in bytes/s, 2 x memory clock x bus width (device attributes
        MemoryClockRate, kHz, and GlobalMemoryBusWidth, bits); None where they cannot be read (the stand-in)."""
        att = self.attributes()
        if "MemoryClockRate" not in att or "GlobalMemoryBusWidth" not in att:
            return None
        return 2.0 * float(att["MemoryClockRate"]) * 1e3 * float(att["GlobalMemoryBusWidth"]) / 8.0

    def multiprocessors(self):
        """Number of streaming multiprocessors of the device (1 on the stand-in)."""
        return int(self.attributes().get("MultiProcessorCount", 1))

    def fused_history_pass(self, Z, P, pn, C, mode, chi, arch, m, par, pl=None, device_queries=False,
                           results="host", query_rows=None):
        """:meth:`history_pass` by the fused kernels of :mod:`accel.fused_source` (plan ``pl``).

        ``device_queries``: Z (q, d) float64 and chi (mode 2; else None) are already on the device (a
        step's batch embeddings and its loss derivatives); the norms and unit rows are formed there and
        nothing goes up.  With ``results="host"`` the host copy of Z comes back in the one device-to-host
        copy of the results: returns (Z on the host, (f, T, bsum)).  ``results="device"`` (device queries
        only): no copy at all; returns (f, T, bsum) as device arrays.  ``query_rows``: (norms (q,), unit rows
        (q, d)) of device queries where the caller has them (a step's two passes), else formed here.
        """
        if results not in ("host", "device") or (results == "device" and not device_queries):
            raise ValueError(f"results: expected 'host', or 'device' with device queries, got {results!r}")
        xp = self.xp
        q, d = Z.shape
        M, dr = C.shape
        wdt = np.dtype(P.dtype)
        pl = pl or self.plan(q, M, d, dr, mode, wdt, arch)
        qt, tile = pl["qt"], pl["tile"]
        h2d = 0
        fx = archkernels.full_module(xp)
        if device_queries:
            if (chi is None) == (mode == 2):
                raise ValueError(f"chi: expected {'a device array' if mode == 2 else 'None'} in mode {mode}")
            Zw = Zflat = fx.ascontiguousarray(Z).ravel()
            zn, Zh = query_rows if query_rows is not None else device_unit_rows(fx, Z)
            Zh = fx.ascontiguousarray(Zh).ravel()
            chi_d = fx.zeros(q * dr) if chi is None else fx.ascontiguousarray(chi, dtype=np.float64).ravel()
        else:
            Z64 = np.ascontiguousarray(Z, dtype=np.float64)
            zn_h, Zh_h = unit_rows(Z64)
            chi_h = np.zeros(q * dr) if chi is None else np.ascontiguousarray(chi, dtype=np.float64).ravel()
            packed = xp.asarray(np.concatenate([Z64.ravel(), zn_h, Zh_h.ravel(), chi_h]))   # one copy
            h2d = 1
            Zw = packed[:q * d]
            zn, Zh = packed[q * d:q * d + q], packed[q * d + q:2 * q * d + q]
            chi_d = packed[2 * q * d + q:]
        if wdt != np.float64:
            Zw = Zw.astype(wdt)
        mod = self.module(arch, wdt, mode, pl["index_bits"], pl.get("mma", False))
        hist, reduce_ = mod.get_function(fused_source.HISTORY_KERNEL), mod.get_function(fused_source.REDUCE_KERNEL)
        self.allow_shared(hist, pl["shared"])
        gx, gy = fused_source.grid(pl, q, M, self.multiprocessors())
        i64, f64 = np.int64, np.float64
        outs = []
        npart = 0
        for (r0, nr, k0, nk), stride in zip(pl["chunks"], pl["strides"]):
            part = xp.empty(gy * gx * stride)
            out = xp.empty(gy * stride)
            hist((gx, gy), (pl["threads"],),
                 (P, pn, C, Zw, zn, Zh, chi_d, i64(M), i64(q), i64(d), i64(dr), i64(r0), i64(nr), i64(k0),
                  i64(nk), i64(qt), i64(tile), i64(stride), f64(m), f64(par), part), shared_mem=pl["shared"])
            npart += int(part.size)
            total = gy * stride
            reduce_((max(1, min(1024, -(-total // 256))),), (256,),
                    (part, i64(gx), i64(stride), i64(gy), out))
            outs.append(out)
        # device queries: + 6 small kernels (Z * Z, its row sums, sqrt, the guarded division, zeros for chi)
        launches = 2 * len(pl["chunks"]) + int(wdt != np.float64) + \
            (0 if not device_queries else (1 if query_rows is not None else 6))
        if results == "device":
            flat = outs[0] if len(outs) == 1 else fx.concatenate(outs)
            res = self._unpack(fx, flat, pl, q, d, dr, mode, gy)
            self.last_launches = {"kernels": launches + int(len(outs) > 1), "h2d": h2d, "d2h": 0,
                                  "partials": npart, "grid": (gx, gy)}
            return res
        if device_queries:
            outs.append(Zflat)
        host = self.to_host(outs[0] if len(outs) == 1 else xp.concatenate(outs))   # one copy back
        self.last_launches = {"kernels": launches + int(len(outs) > 1), "h2d": h2d, "d2h": 1,
                              "partials": npart, "grid": (gx, gy)}
        if device_queries:
            Z_host = host[len(host) - q * d:].reshape(q, d).copy()
            host = host[:len(host) - q * d]
        res = self._unpack(np, host, pl, q, d, dr, mode, gy)
        return (Z_host, res) if device_queries else res

    @staticmethod
    def _unpack(am, flat, pl, q, d, dr, mode, gy):
        """(f, T, bsum) of a fused pass from its reduced outputs ``flat`` (the chunks' [f | T | bsum] per
        query tile, one after the other), on the array module ``am`` (NumPy on the host, or the device's)."""
        qt = pl["qt"]
        R = dr if mode == 1 else _R[mode]
        if len(pl["chunks"]) == 1 and gy == 1:    # one launch, one query tile (a step's batch): views, no copies
            nf = 0 if mode == 2 else q * dr
            f = None if mode == 2 else flat[:nf].reshape(q, dr)
            if mode == 0:
                return f, None, None
            T = flat[nf:nf + R * q * d].reshape(R, q, d).transpose(1, 0, 2)
            return f, T, flat[nf + R * q * d:nf + R * q * (d + 1)].reshape(R, q).T
        f = am.zeros((q, dr))
        T = am.zeros((max(R, 1), q, d))
        bsum = am.zeros((max(R, 1), q))
        start = 0
        for (r0, nr, k0, nk), stride in zip(pl["chunks"], pl["strides"]):
            rows = flat[start:start + gy * stride].reshape(gy, stride)
            start += gy * stride
            RR = nr if mode == 1 else R
            for y in range(gy):                    # f and the beta sums: from the first chunk of T's columns
                b0 = y * qt
                nq = min(qt, q - b0)
                nf = 0 if mode == 2 else nq * nr
                if mode != 2 and k0 == 0:
                    f[b0:b0 + nq, r0:r0 + nr] = rows[y, :nf].reshape(nq, nr)
                if RR:
                    c0 = r0 if mode == 1 else 0
                    T[c0:c0 + RR, b0:b0 + nq, k0:k0 + nk] = rows[y, nf:nf + RR * nq * nk].reshape(RR, nq, nk)
                    if k0 == 0:
                        bsum[c0:c0 + RR, b0:b0 + nq] = rows[y, nf + RR * nq * nk:nf + RR * nq * (nk + 1)].reshape(RR, nq)
        if mode == 0:
            return f, None, None
        return (f if mode != 2 else None), am.ascontiguousarray(T.transpose(1, 0, 2)), am.ascontiguousarray(bsum.T)

    def gemm_history_pass(self, Z, P, pn, C, mode, chi, arch, m, par):
        """:meth:`history_pass` unfused: GEMMs and the elementwise kernel of :mod:`accel.pair_source`
        per block of the history (the fallback where the fused kernel's tile does not fit)."""
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
        self.last_launches = {}
        f = self.to_host(f) if mode != 2 else None
        if mode == 0:
            return f, None, None
        return f, self.to_host(T).transpose(1, 0, 2).copy(), self.to_host(bsum).T.copy()
