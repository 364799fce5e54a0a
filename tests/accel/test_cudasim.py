"""The CUDA execution harness (accel.cudasim) and the fused history pass it runs (accel.fused_source).

The harness must show what a GPU would do with the kernel text: threads that cooperate through
shared memory and barriers.  So besides checking the fused pass against refimpl and the unfused
pass, these tests plant bugs in the kernel source (a missing barrier, a wrong shared layout, a
broken reduction, ...) and require each one to be caught.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from accel import cudasim, fused_source, pair_source, standin, xpcore
from accel._simbase import ArrayHistory
from refimpl import kernels as rk

pytestmark = pytest.mark.skipif(standin.cxx_compiler() is None, reason="needs a C++ compiler (g++)")

DEV = standin.numpy_device


# ---------------------------------------------------------------- the harness itself
TOY = r"""
typedef double T;
typedef int bd_idx;
extern "C" BD_GLOBAL void toy(const double *__restrict__ x, const long long n, const long long mode,
                              double *__restrict__ out)
{
    BD_DYNAMIC_SHARED(smem);
    double *s = (double *)smem;
    const int t = threadIdx.x;
    if (mode == 3) { if (t == 0) return; }            /* divergent exit before a barrier */
    s[t] = x[blockIdx.x * blockDim.x + t];
    if (mode != 1) BD_SYNC();                          /* mode 1: the barrier is missing */
    /* reverse within the block through shared memory */
    double v = s[blockDim.x - 1 - t];
    if (mode == 2) v = s[blockDim.x + t];              /* reads shared memory never written */
    if (mode == 4 && t == 0) s[2 * blockDim.x] = 1.0;  /* writes past the dynamic shared memory */
    out[blockIdx.x * blockDim.x + t] = v + 1000.0 * blockIdx.x + 0.0 * n;
}
"""


def _toy():
    return standin.RawModule(code=fused_source.TARGET_MACROS["sim"] + TOY).get_function("toy")


def _toy_run(mode, nthr=32, nblk=3):
    x = np.arange(nthr * nblk, dtype=np.float64)
    out = np.full(nthr * nblk, -1.0)
    _toy()((nblk,), (nthr,), (x, np.int64(x.size), np.int64(mode), out), shared_mem=16 * nthr)
    return x, out


def test_harness_runs_blocks_and_threads_with_shared_memory():
    x, out = _toy_run(0)
    want = x.reshape(3, 32)[:, ::-1] + 1000.0 * np.arange(3)[:, None]
    np.testing.assert_array_equal(out.reshape(3, 32), want)


def test_harness_catches_a_missing_barrier_and_uninitialised_shared_memory():
    x, out = _toy_run(1)             # threads run in order: thread 0 reads before 31 wrote
    want = x.reshape(3, 32)[:, ::-1] + 1000.0 * np.arange(3)[:, None]
    assert np.isnan(out).any() and not np.array_equal(out.reshape(3, 32), want)
    _, out = _toy_run(2)             # shared memory is NaN until written
    assert np.isnan(out).all()


def test_harness_reports_divergent_barriers_and_shared_overruns():
    with pytest.raises(cudasim.HarnessError, match="returned while .* wait at __syncthreads"):
        _toy_run(3)
    with pytest.raises(cudasim.HarnessError, match="past the 512 bytes of dynamic shared memory"):
        _toy_run(4)


MMA_TOY = r"""
typedef int bd_idx;
extern "C" BD_GLOBAL void mma_toy(const double *__restrict__ a, const double *__restrict__ b,
                                  const double *__restrict__ c, const long long mode, double *__restrict__ out)
{
    const int t = threadIdx.x;
    double d0 = c[2 * t], d1 = c[2 * t + 1];
    if (mode == 1 && t % 32 == 5) { out[2 * t] = d0; out[2 * t + 1] = d1; return; }   /* a lane skips it */
    BD_MMA_F64(d0, d1, a[t], b[t]);
    if (mode == 2 && t % 32 == 7) BD_SYNC();                                             /* one lane waits */
    BD_MMA_F64(d0, d1, a[t] * 0.5, b[(t + 1) % blockDim.x]);                             /* a second one */
    out[2 * t] = d0; out[2 * t + 1] = d1;
}
"""


def _mma_reference(a, b, c):
    """One m8n8k4 f64 operation per warp with the fragment layout of the PTX ISA, written from it: lane l holds
    A[l // 4, l % 4], B[l % 4, l // 4] and C, D[l // 4, 2 (l % 4) + h]."""
    out = np.empty_like(c)
    for w in range(a.size // 32):
        L = np.arange(32) + 32 * w
        A, B, C = np.empty((8, 4)), np.empty((4, 8)), np.empty((8, 8))
        A[L % 32 // 4, L % 4] = a[L]
        B[L % 4, L % 32 // 4] = b[L]
        C[L % 32 // 4, 2 * (L % 4)], C[L % 32 // 4, 2 * (L % 4) + 1] = c[2 * L], c[2 * L + 1]
        D = A @ B + C
        out[2 * L], out[2 * L + 1] = D[L % 32 // 4, 2 * (L % 4)], D[L % 32 // 4, 2 * (L % 4) + 1]
    return out


def _mma_toy(mode, nthr=64):
    rng = np.random.default_rng(5)
    a, b, c = rng.standard_normal(nthr), rng.standard_normal(nthr), rng.standard_normal(2 * nthr)
    out = np.full(2 * nthr, np.nan)
    kern = standin.RawModule(code=fused_source.TARGET_MACROS["sim"] + MMA_TOY).get_function("mma_toy")
    kern((1,), (nthr,), (a, b, c, np.int64(mode), out))
    return a, b, c, out


def test_harness_runs_mma_sync_as_a_warp_collective_with_the_ptx_fragment_layout():
    """Two warps, two operations each (the second reads another lane's B): D = A B + C per warp, each lane
    holding its fragment elements as the PTX ISA lays them out for mma.m8n8k4 .f64."""
    a, b, c, out = _mma_toy(0)
    first = _mma_reference(a, b, c)
    want = _mma_reference(0.5 * a, np.roll(b, -1), first)
    np.testing.assert_allclose(out, want, rtol=1e-14, atol=1e-14)
    assert not np.allclose(out, _mma_reference(0.5 * a, np.roll(b, -1), c))    # the first one counted


@pytest.mark.parametrize("mode,nthr,what", [(1, 64, "wait at mma.sync"), (2, 64, "wait at mma.sync"),
                                            (0, 48, "do not exist")])
def test_harness_reports_a_divergent_or_partial_warp_at_mma_sync(mode, nthr, what):
    """Undefined on a GPU, an error here: a lane that skips the operation, one that waits at a barrier while
    its warp is at mma.sync, and a block that is not a whole number of warps."""
    with pytest.raises(cudasim.HarnessError, match=what):
        _mma_toy(mode, nthr)


CP_TOY = r"""
extern "C" BD_GLOBAL void cp_toy(const double *__restrict__ x, const long long mode, double *__restrict__ out)
{
    BD_DYNAMIC_SHARED(smem);
    double *s = (double *)smem;
    const int t = threadIdx.x, n = blockDim.x;
    BD_CP_ASYNC(&s[t], &x[t]);
    if (mode == 0) { BD_CP_WAIT(); BD_SYNC(); }
    if (mode == 1) { BD_SYNC(); BD_CP_WAIT(); }        /* waits for its own copy only after the barrier */
    if (mode == 2) BD_SYNC();                          /* never waits */
    out[t] = s[n - 1 - t];
}
"""


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_harness_completes_asynchronous_copies_only_at_the_wait(mode):
    """cp.async: copy, wait, barrier, read another thread's element: right; the wait after the barrier: the
    other threads' copies are not there yet (NaN); no wait at all: an error (copies never waited for)."""
    x = np.arange(64.0)
    out = np.full(64, -1.0)
    kern = standin.RawModule(code=fused_source.TARGET_MACROS["sim"] + CP_TOY).get_function("cp_toy")
    if mode == 2:
        with pytest.raises(cudasim.HarnessError, match="never waited for"):
            kern((1,), (64,), (x, np.int64(mode), out), shared_mem=8 * 64)
        return
    kern((1,), (64,), (x, np.int64(mode), out), shared_mem=8 * 64)
    if mode == 0:
        np.testing.assert_array_equal(out, x[::-1])
    else:
        assert np.isnan(out).sum() >= 32              # the threads read before the others' waits


def test_harness_checks_argument_types_as_a_launch_needs_them():
    k = _toy()
    x, out = np.zeros(32), np.zeros(32)
    with pytest.raises(TypeError, match="argument n: expected a numpy.int64"):
        k((1,), (32,), (x, 32, np.int64(0), out), shared_mem=256)
    with pytest.raises(TypeError, match="argument x: expected a C-contiguous float64"):
        k((1,), (32,), (x.astype(np.float32), np.int64(32), np.int64(0), out), shared_mem=256)
    with pytest.raises(TypeError, match="expected 4 arguments"):
        k((1,), (32,), (x,), shared_mem=256)
    with pytest.raises(cudasim.HarnessError, match="invalid launch"):
        k((1,), (2048,), (x, np.int64(32), np.int64(0), out), shared_mem=256)


# ---------------------------------------------------------------- the fused pass
def _history(M, d, dr, dtype, seed=0):
    rng = np.random.default_rng(seed)
    h = ArrayHistory(d, dr, dtype=dtype, xp=DEV)
    base = rng.standard_normal((40, d))
    h.append(base[rng.integers(0, 40, M)] + 1e-3 * rng.standard_normal((M, d)), rng.standard_normal((M, dr)))
    for store in (h.store_P, h.store_C, h.store_norms):      # the store's spare rows: garbage, as on a device
        store[h.M:] = np.nan
    return h, rng


def _queries(h, q, rng):
    """Queries parallel, at angles ~1e-5, anti-parallel and generic to the stored rows (closer than
    1e-5, Xi's cancellation (alpha ~ 1/sin) costs every implementation more than 1e-10)."""
    P = h.P.astype(np.float64)
    k = q // 4
    return np.concatenate([P[:k] * (1 + 1e-9), P[k:2 * k] + 1e-5 * rng.standard_normal((k, P.shape[1])),
                           -P[2 * k:3 * k], rng.standard_normal((q - 3 * k, P.shape[1]))])


def _reference(Z, h, mode, chi, arch="relu", par=0.0):
    """The sums of accel._simbase from refimpl's kernels (float64)."""
    P, C = h.P.astype(np.float64), h.C.astype(np.float64)
    d = Z.shape[1]
    if arch == "relu":
        K = rk.ntk(Z, P)
        alpha, beta = rk.xi_coefficients(Z, P)
    else:
        K = par * Z @ P.T / d
        alpha, beta = np.full(K.shape, par / d), np.zeros(K.shape)
    W = C.T[:, None, :] if mode != 2 else (chi @ C.T)[None]          # (R, q, M)
    f = K @ C
    T = np.einsum("rbm,bm,mk->brk", W, alpha, P)
    bsum = np.einsum("rbm,bm->br", W, beta)
    return f, T, bsum


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


class _Mutant(xpcore.XPEngine):
    """An engine whose fused module is compiled from a mutated kernel source."""

    def __init__(self, old, new, mma=False):
        super().__init__(DEV, tensor_cores=mma)
        self.old, self.new = old, new

    def module(self, arch, dtype, mode, index_bits, mma=False):
        src = fused_source.source(arch, dtype, mode, index_bits, target="sim", mma=mma)
        assert src.count(self.old) >= 1, self.old
        return standin.RawModule(code=src.replace(self.old, self.new, 1))


@pytest.mark.parametrize("dtype,tol,mma", [(np.float64, 1e-12, False), (np.float32, 2e-5, False),
                                           (np.float64, 1e-12, True)], ids=["float64", "float32", "float64-mma"])
@pytest.mark.parametrize("M,d,dr,q", [(700, 6, 1, 20), (300, 5, 3, 70), (200, 4, 200, 7), (150, 600, 3, 20),
                                     (97, 23, 22, 1)])
def test_fused_pass_matches_refimpl_in_every_mode(M, d, dr, q, dtype, tol, mma):
    """Modes 0-2 against refimpl's kernels, with (anti-)parallel queries; (200, 4, 200, 7) splits the
    columns of C into chunks in mode 1, (300, 5, 3, 70) takes two query tiles; (150, 600, 3, 20), a wide
    bottleneck (d > 512 T columns a block holds for one query group), puts T's columns in two launches and
    takes more than 48 KiB of shared memory (the kernel's limit raised through the driver API); (97, 23, 22, 1)
    has an odd d, whose last T task holds one column (found by the property test below: 22 columns of C with
    12 tasks each exceed a block's 256).  ``mma``: the tile's products on the FP64 tensor cores."""
    h, rng = _history(M, d, dr, dtype)
    Z = _queries(h, q, rng)
    chi = rng.standard_normal((q, dr))
    eng = xpcore.XPEngine(DEV, tensor_cores=mma)
    plans = []
    for mode in (0, 1, 2):
        pl = eng.plan(q, M, d, dr, mode, dtype, "relu")
        # with tensor cores every plan but the Jacobians at dr = 200 and d = 600 (16 x 16 tasks: too many launches;
        # the plain kernel's plan instead)
        assert pl["mma"] == (mma and not (mode == 1 and (dr == 200 or d == 600)))
        assert not pl["mma"] or pl["tile"] % 8 == 0
        plans.append(pl)
        got = eng.history_pass(Z, h.P_dev, h.norms_dev, h.C_dev, mode, chi if mode == 2 else None,
                               "relu", float(d), 0.0)
        assert eng.last_launches["d2h"] == 1
        assert eng.last_launches["kernels"] == 2 * len(pl["chunks"]) + (dtype != np.float64) + (len(pl["chunks"]) > 1)
        f_ref, T_ref, b_ref = _reference(Z, h, mode, chi)
        if mode != 2:
            assert _rel(got[0], f_ref) <= tol
        if mode:
            # Xi sums cancel for nearly parallel pairs: compare J^T-like contractions as the backend uses them
            Zh = rk.unit_rows(Z)[1]
            J = got[1] + got[2][:, :, None] * Zh[:, None, :]
            J_ref = T_ref + b_ref[:, :, None] * Zh[:, None, :]
            assert _rel(J, J_ref) <= tol * 100
    if (M, d, dr, q) == (200, 4, 200, 7):
        assert len(plans[1]["chunks"]) > 1
    if q == 70:
        assert plans[0]["qt"] < q
    if d == 600:
        assert plans[1]["kchunks"] == 2 and plans[2]["kchunks"] == (3 if mma else 2), plans
        assert max(p["shared"] for p in plans) > fused_source.SHARED_BYTES


def test_fused_pass_linear_arch_and_64_bit_indices_agree():
    h, rng = _history(500, 5, 2, np.float64)
    Z = rng.standard_normal((9, 5))
    eng = xpcore.XPEngine(DEV)
    f, T, b = eng.history_pass(Z, h.P_dev, h.norms_dev, h.C_dev, 1, None, "linear", 5.0, 3.0)
    f_ref, T_ref, _ = _reference(Z, h, 1, None, "linear", 3.0)
    assert _rel(f, f_ref) <= 1e-13 and _rel(T, T_ref) <= 1e-12        # (T's entries are cancelling sums)
    assert np.all(b == 0)
    for mode in (0, 1, 2):
        chi = rng.standard_normal((9, 2)) if mode == 2 else None
        pl = fused_source.plan(9, 500, 5, 2, mode, np.float64, "relu")
        assert pl["index_bits"] == 32
        a = eng.fused_history_pass(Z, h.P_dev, h.norms_dev, h.C_dev, mode, chi, "relu", 5.0, 0.0, pl)
        b64 = eng.fused_history_pass(Z, h.P_dev, h.norms_dev, h.C_dev, mode, chi, "relu", 5.0, 0.0,
                                     dict(pl, index_bits=64))
        for x, y in zip(a, b64):
            if x is not None:
                np.testing.assert_array_equal(x, y)


def test_fused_pass_agrees_with_the_unfused_pass_and_falls_back_where_it_must():
    h, rng = _history(400, 6, 2, np.float32)
    Z = _queries(h, 12, rng)
    eng = xpcore.XPEngine(DEV)
    for mode in (0, 1, 2):
        chi = rng.standard_normal((12, 2)) if mode == 2 else None
        a = eng.fused_history_pass(Z, h.P_dev, h.norms_dev, h.C_dev, mode, chi, "relu", 6.0, 0.0)
        b = eng.gemm_history_pass(Z, h.P_dev, h.norms_dev, h.C_dev, mode, chi, "relu", 6.0, 0.0)
        for x, y in zip(a, b):
            if y is not None:
                assert _rel(x, y) <= 1e-5
    optin = fused_source.SHARED_OPTIN_SM90
    wide = fused_source.plan(20, 1000, 3000, 1, 1, np.float64, "relu", optin)     # T in column chunks
    assert wide["kchunks"] == 6 and wide["chunks"][1] == (0, 1, 512, 512)
    assert fused_source.plan(20, 1000, 100, 30000, 2, np.float64, "relu", optin) is None  # a row of C > 227 KiB
    ae = fused_source.plan(20, 10**6, 100, 784, 0, np.float64, "relu")        # the MNIST autoencoder's f: fused,
    assert len(ae["chunks"]) > 1 and sum(c[1] for c in ae["chunks"]) == 784  # C's columns in launches
    assert fused_source.plan(20, 10**6, 100, 784, 1, np.float64, "relu") is None      # 784 chunks
    # fewer query groups worked: 5 tiles of 4 queries in one launch, not 1 tile of 20 (3 groups) in 4
    assert (lambda p: (p["qt"], p["chunks"]))(fused_source.plan(20, 10**6, 10, 40, 1, np.float64, "relu")) == (4, [(0, 40, 0, 10)])
    # the campaign's shapes (MNIST dr = 10, widths to 1000; batch 20, test set 10,000) all take the fused pass
    for q in (20, 10000):
        for d in (50, 100, 200, 500, 1000):
            for mode in (0, 2):
                for dt in (np.float64, np.float32):
                    assert fused_source.plan(q, 80000, d, 10, mode, dt, "relu", optin) is not None, (q, d, mode, dt)


def test_a_launch_above_48_kib_of_shared_memory_fails_unless_the_kernel_limit_is_raised():
    """As on a GPU: without funcSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES) the launch fails; the driver
    refuses a limit above the device's opt-in maximum."""
    class NoRaise(xpcore.XPEngine):
        def allow_shared(self, fn, nbytes):
            pass

    h, rng = _history(150, 600, 3, np.float64)
    Z = rng.standard_normal((20, 600))
    assert xpcore.XPEngine(DEV).plan(20, 150, 600, 3, 0, np.float64, "relu")["shared"] > fused_source.SHARED_BYTES
    with pytest.raises(cudasim.HarnessError, match="above the kernel's limit"):
        NoRaise(DEV).history_pass(Z, h.P_dev, h.norms_dev, h.C_dev, 0, None, "relu", 600.0, 0.0)
    fn = DEV.RawModule(code=fused_source.source("relu", "float64", 0, 32, target="sim")).get_function(
        fused_source.HISTORY_KERNEL)
    drv = xpcore.XPEngine(DEV).driver()
    with pytest.raises(ValueError, match="CUDA_ERROR_INVALID_VALUE"):
        drv.funcSetAttribute(fn.ptr, drv.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 300 * 1024)


def test_cupy_driver_api_has_what_allow_shared_calls():
    """The names :meth:`accel.xpcore.XPEngine.allow_shared` uses on a GPU exist in CuPy's driver module
    (importable without a GPU) and a RawModule's function has the handle ``ptr``."""
    drv = pytest.importorskip("cupy_backends.cuda.api.driver", reason="CuPy is not installed (the nvrtc extra)")
    cupy_fn = pytest.importorskip("cupy.cuda.function", reason="CuPy is not installed (the nvrtc extra)")
    assert drv.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES == 8 and callable(drv.funcSetAttribute)
    assert "ptr" in dir(cupy_fn.Function)


# planted bugs: (what, old text, new text); each must give a wrong result or a harness error
MUTANTS = [
    ("barrier after loading the tile removed",
     "BD_CP_WAIT();\n        BD_SYNC();", "BD_CP_WAIT();\n"),
    ("wait for the tile's asynchronous copies removed", "BD_CP_WAIT();\n        BD_SYNC();", "BD_SYNC();"),
    ("wait for the tile's asynchronous copies after the barrier", "BD_CP_WAIT();\n        BD_SYNC();",
     "BD_SYNC();\n        BD_CP_WAIT();"),
    ("barrier at the end of the tile removed", "        BD_SYNC();\n    }\n    double *mine", "    }\n    double *mine"),
    ("reduction drops the last partial", "x < nparts; ++x", "x + 1 < nparts; ++x"),
    ("shared layout: C tile overlaps P tile", "T *Cs = Ps + tile * dp;", "T *Cs = Ps + (tile - 1) * dp;"),
    ("f accumulator ownership differs from the write-out",
     "const bd_idx e = tid + (bd_idx)a * nthr;\n            if (e < NF) {",
     "const bd_idx e = tid * BD_NACC + a;\n            if (e < NF) {"),
    ("T task ownership differs from the write-out",
     "const bd_idx tk = tid + (bd_idx)a * nthr;", "const bd_idx tk = tid * BD_NTASK + a;"),
    ("query group of the dot products off by one", "const T *zg = Zt + g * d * BD_QB;",
     "const T *zg = Zt + (g + 1 < ngq ? g + 1 : g) * d * BD_QB;"),
    ("second row of a dot-product task off by one", "jb = (jp + njp < nrow) ? jp + njp : jp;",
     "jb = (jp + njp < nrow) ? jp + njp - 1 : jp;"),
    ("query values unpacked from the wrong half of a vector", "(v)[2 * (i) + 1] = (vec).y;", "(v)[2 * (i) + 1] = (vec).x;"),
    ("last lane of a float32 vector unpacked from the first", "(v)[4 * (i) + 3] = (vec).w;", "(v)[4 * (i) + 3] = (vec).x;"),
    ("T tasks read the wrong coefficient row", "bd_load_qb(av, ag + j * BD_QB);", "bd_load_qb(av, ag + (j + 1) * BD_QB);"),
    ("second column of a T task at the wrong offset", "kb = (c + nkh < nk) ? ka + nkh : ka;",
     "kb = (c + nkh < nk) ? ka + nkh - 1 : ka;"),
    ("near-parallel pairs not recomputed", "if (bd_near(znb, pnj, dot))", "if (0 && bd_near(znb, pnj, dot))"),
    ("grid-stride loop skips tiles", "t += (bd_idx)gridDim.x)", "t += (bd_idx)gridDim.x + 1)"),
    ("last partial tile dropped", "(M - j0 < tile) ? M - j0 : tile", "tile"),
    ("T column chunk read at column c, not k0 + c", "const bd_idx ka = k0 + c,", "const bd_idx ka = c,"),
]
#: Planted bugs in the code that only the plain FP64 / float32 kernel has (not the tensor-core variant's source).
PLAIN_ONLY = {"T task ownership differs from the write-out", "query group of the dot products off by one",
              "second row of a dot-product task off by one", "query values unpacked from the wrong half of a vector",
              "last lane of a float32 vector unpacked from the first", "T tasks read the wrong coefficient row",
              "second column of a T task at the wrong offset", "T column chunk read at column c, not k0 + c"}
#: Planted bugs in the tensor-core variant (mma.sync fragments, their masks and ownership).
MMA_MUTANTS = [
    ("mma: dot-product B fragment transposed", "pb[r] = Ps + ((rok[r] ? jb8 : 0) + lr) * dp + lc;",
     "pb[r] = Ps + ((rok[r] ? jb8 : 0) + lc) * dp + lr;"),
    ("mma: dot-product A fragment transposed", "za[i] = Zt + (gok[i] ? g : 0) * d * BD_QB + lc * BD_QB + lr;",
     "za[i] = Zt + (gok[i] ? g : 0) * d * BD_QB + lr * BD_QB + lc;"),
    ("mma: dot-product D columns misplaced", "ja = (rs * BD_MRB + r) * 8 + 2 * lc;", "ja = (rs * BD_MRB + r) * 8 + lc;"),
    ("mma: dot products of the second query group skipped", "if (gok[i] && rok[r]) BD_MMA_F64(c0[i][r]",
     "if (gok[i] && rok[r] && i == 0) BD_MMA_F64(c0[i][r]"),
    ("mma: second row block of a set read as the first", "const bd_idx jb8 = (rs * BD_MRB + r) * 8;",
     "const bd_idx jb8 = (rs * BD_MRB) * 8;"),
    ("mma: columns past d not masked", "const bool kok = k < d4 || lc < d - d4;", "const bool kok = true;"),
    ("mma: barrier before the pair terms removed",
     "        BD_SYNC();\n        /* the pair terms, one pair per thread and iteration */",
     "        /* the pair terms, one pair per thread and iteration */"),
    ("mma: T-sum B fragment transposed", "pb[c] = Ps + lc * dp + ", "pb[c] = Ps + lr * dp + "),
    ("mma: T-sum A fragment transposed", "ag[i] = At + ((gok[i] ? g : 0) * tile + lc) * BD_QB + lr;",
     "ag[i] = At + ((gok[i] ? g : 0) * tile + lr) * BD_QB + lc;"),
    ("mma: T column block of a set off by one", "const bd_idx c8 = cs * BD_MCB + c;", "const bd_idx c8 = cs * BD_MCB;"),
    ("mma: rows past the tile's end not masked", "const bool jok = j < n4 || lc < nrow - n4;", "const bool jok = true;"),
    ("mma: T write-out columns misplaced", "kk = (cs * BD_MCB + c) * 8 + 2 * lc + (bd_idx)h;",
     "kk = (cs * BD_MCB + c) * 8 + lc + (bd_idx)h;"),
    ("mma: warp task ownership differs from the write-out", "const bd_idx tk = wid + (bd_idx)a * nw;",
     "const bd_idx tk = wid * BD_NWT + a;"),
    ("mma: mode-1 weights left out of the T sums", "const double w = (BD_MODE == 1 && jok) ?",
     "const double w = (0 && jok) ?"),
]


#: The cases each planted bug is run on: (mode, dtype, M, d, dr, q, tolerance of the unmutated source,
#: error a mutant must exceed, tensor cores).  Mode 1 float64 in one query tile (f, T and beta sums: every part
#: of the kernel); mode 2 float32 in two query tiles (chi in the weights; float32 sums with the float64 twins of
#: nearly parallel pairs); mode 1 float64 with the columns of C in chunks; and on the tensor cores mode 1 with d
#: and the last tile's rows not multiples of 4 (both masks live) and mode 2 with T's columns in launches.
PLANT_CASES = {"mode1-f64": (1, np.float64, 1333, 6, 1, 20, 1e-9, 1e-6, False),
               "mode2-f32-two-query-tiles": (2, np.float32, 333, 6, 3, 70, 1e-4, 1e-3, False),
               "mode1-f64-column-chunks": (1, np.float64, 600, 4, 200, 7, 1e-9, 1e-6, False),
               "mode2-f64-wide-T-chunks-opt-in": (2, np.float64, 157, 600, 3, 20, 1e-9, 1e-6, False),
               "mode1-f64-mma": (1, np.float64, 1333, 6, 1, 20, 1e-9, 1e-6, True),
               "mode2-f64-mma-wide-T-chunks": (2, np.float64, 157, 600, 3, 20, 1e-9, 1e-6, True)}


#: Planted bugs that only some cases can show, and which: T in column chunks needs d > 512; the f / beta-sum
#: ownership needs more than one accumulator per thread (mode 2 has one: the mutant is the same code there).
ONLY = {"T column chunk read at column c, not k0 + c": lambda case: case[3] > 512,
        "f accumulator ownership differs from the write-out": lambda case: fused_source.NACC[case[0]] > 1,
        "query values unpacked from the wrong half of a vector": lambda case: case[1] == np.float64,
        "last lane of a float32 vector unpacked from the first": lambda case: case[1] == np.float32,
        "T task ownership differs from the write-out": lambda case: fused_source.NTASK > 1,
        "query group of the dot products off by one": lambda case: case[5] > fused_source.QB and case[3] < 512,
        "mma: columns past d not masked": lambda case: case[3] % 4 != 0,
        "mma: T column block of a set off by one": lambda case: case[3] > fused_source.MMA_COLS,
        "mma: rows past the tile's end not masked": lambda case: case[2] == 1333,
        "mma: mode-1 weights left out of the T sums": lambda case: case[0] == 1}


def _applies(mutant, case):
    """Whether a planted bug is in the live code of a case's variant and can show there (:data:`ONLY`)."""
    mma = case[8]
    if mutant[0].startswith("mma:") and not mma or mma and mutant[0] in PLAIN_ONLY:
        return False
    return ONLY.get(mutant[0], lambda case: True)(case)


PLANTS = [(m, c) for m in MUTANTS + MMA_MUTANTS for c in sorted(PLANT_CASES) if _applies(m, PLANT_CASES[c])]


@pytest.mark.parametrize("what,old,new,case", [m + (c,) for m, c in PLANTS], ids=[f"{m[0]}-{c}" for m, c in PLANTS])
def test_harness_catches_planted_bugs(what, old, new, case):
    """Each case (:data:`PLANT_CASES`) with the mutated source: a harness error, NaN or a wrong result; the
    unmutated source agrees with refimpl (the Xi sums as the backend contracts them, T + bsum z^)."""
    mode, dtype, M, d, dr, q, tol, wrong, mma = PLANT_CASES[case]
    h, rng = _history(M, d, dr, dtype, seed=7)
    Z = _queries(h, q, rng)
    chi = rng.standard_normal((q, dr)) if mode == 2 else None
    pl = xpcore.XPEngine(DEV, tensor_cores=mma).plan(q, M, d, dr, mode, dtype, "relu")
    assert pl is not None and pl["mma"] == mma and (dr < 200 or len(pl["chunks"]) > 1)
    assert mma or mode == 1 or pl["qt"] < q
    assert d < 600 or (pl["kchunks"] > 1 and (mma or pl["shared"] > fused_source.SHARED_BYTES))
    assert not mma or M != 1333 or (M % pl["tile"]) % 4 != 0        # the row mask is live
    f_ref, T_ref, b_ref = _reference(Z, h, mode, chi)
    Zh = rk.unit_rows(Z)[1]

    def errors(got):
        J = got[1] + got[2][:, :, None] * Zh[:, None, :]
        J_ref = T_ref + b_ref[:, :, None] * Zh[:, None, :]
        return ([_rel(got[0], f_ref)] if mode != 2 else []) + [_rel(J, J_ref), _rel(got[2], b_ref)]

    good = errors(xpcore.XPEngine(DEV, tensor_cores=mma).history_pass(Z, h.P_dev, h.norms_dev, h.C_dev, mode, chi,
                                                                      "relu", float(d), 0.0))
    assert max(good) <= tol, good
    try:
        got = _Mutant(old, new, mma).history_pass(Z, h.P_dev, h.norms_dev, h.C_dev, mode, chi, "relu", float(d), 0.0)
    except cudasim.HarnessError:
        return
    errs = errors(got)
    assert not all(np.isfinite(errs)) or max(errs) > wrong, (what, errs)


def test_every_variant_is_listed_and_valid_cpp():
    """accel.fused_source.cuda_sources: arch x dtype x mode x index width, unique names; the CUDA
    text passes g++ -fsyntax-only with CUDA's builtins declared (NVRTC itself: the compile test)."""
    srcs = fused_source.cuda_sources()
    assert len(srcs) == len(pair_source.ARCH) * (2 + 1) * 3 * 2            # float64 twice: plain and mma
    assert sum(name.endswith("_mma") for name, _, _ in srcs) == len(pair_source.ARCH) * 3 * 2
    assert len({name for name, _, _ in srcs}) == len(srcs)
    for name, src, options in srcs:
        assert "bd_fused_history(" in src and "bd_fused_reduce(" in src and "__launch_bounds__(threads" in src
        assert "__syncthreads()" in src and isinstance(options, tuple)
        assert pair_source.ARCH[name.split("_")[2]].split("{")[0].strip() in src    # the shared device functions
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    mock = ("#include <cmath>\nusing std::fabs; using std::sqrt; using std::atan2;\n"
            "#define __device__\n#define __global__\n#define __forceinline__ inline\n#define __align__(n)\n"
            "#define __shared__\n#define __launch_bounds__(t, b)\nstruct bd_dim3 { unsigned x, y, z; };\n"
            "extern bd_dim3 threadIdx, blockIdx, blockDim, gridDim;\nvoid __syncthreads();\n"
            "#define asm(...) ((void)0)\n"                                                 # mma.sync's inline PTX
            "struct double2 { double x, y; };\nstruct float4 { float x, y, z, w; };\n")   # CUDA's vector types
    for i, (name, src, _) in enumerate(srcs):
        if i % 4 and "relu_float32_mode1" not in name and not name.endswith("mode2_i32_mma"):   # a quarter of them,
            # the busiest one and a tensor-core one
            continue
        body = re.sub(r'extern __shared__', "extern", src)
        res = subprocess.run(["g++", "-std=c++11", "-fsyntax-only", "-x", "c++", "-"], input=mock + body,
                             text=True, capture_output=True)
        assert res.returncode == 0, (name, res.stderr[:2000])


def test_fused_pass_with_fma_contraction_meets_the_golden_tolerances(monkeypatch):
    """The fused kernel compiled as the GPU compiles it (a*b+c contracted to FMA: -ffp-contract=fast,
    and on x86-64 -mfma, without which gcc has nothing to contract into) changes the rounding but
    stays within the golden tolerances on every trajectory of the gpu path (float64)."""
    import platform

    from experiments import golden

    import accel
    from accel import gpu
    h, rng = _history(300, 6, 1, np.float64, seed=3)
    Z = _queries(h, 10, rng)
    plain = xpcore.XPEngine(DEV).history_pass(Z, h.P_dev, h.norms_dev, h.C_dev, 1, None, "relu", 6.0, 0.0)
    fma = ("-ffp-contract=fast",) + (("-mfma",) if platform.machine() in ("x86_64", "AMD64") else ())
    monkeypatch.setattr(standin, "CFLAGS",
                        tuple(f for f in standin.CFLAGS if not f.startswith("-ffp-contract")) + fma)
    monkeypatch.delenv(gpu.STANDIN_ENV, raising=False)
    gpu.reset()
    try:
        got = xpcore.XPEngine(DEV).history_pass(Z, h.P_dev, h.norms_dev, h.C_dev, 1, None, "relu", 6.0, 0.0)
        assert any(not np.array_equal(a, b) for a, b in zip(plain, got)), "no contraction happened"
        Zh = rk.unit_rows(Z)[1]
        J = [T + b[:, :, None] * Zh[:, None, :] for _, T, b in (plain, got)]
        assert _rel(got[0], plain[0]) < 1e-13 and _rel(J[1], J[0]) < 1e-11
        targets = [t for t in accel.golden_targets() if t[0] == "gpu-path/numpy/float64"]
        rows = golden.check(targets, cases=list(golden.TRAJECTORIES), log=None)
        bad = [(r["case"], r["worst"], r["worst_error"]) for r in rows if not r["ok"]]
        assert len(rows) == len(golden.TRAJECTORIES) and not bad, bad
    finally:
        gpu.reset()


def test_tensor_cores_are_asked_for_by_one_variable_and_used_where_the_device_has_them(monkeypatch):
    """BOTTLENECK_TENSOR_CORES: "1" on, "0" or unset off, anything else an error naming it; on, a float64 plan uses
    mma.sync only on compute capability 8.0 or later, and a float32 plan never does."""
    assert xpcore.tensor_cores_requested({}) is False
    assert xpcore.tensor_cores_requested({xpcore.TENSOR_CORES_ENV: "1"}) is True
    assert xpcore.tensor_cores_requested({xpcore.TENSOR_CORES_ENV: " 0 "}) is False
    with pytest.raises(ValueError, match="BOTTLENECK_TENSOR_CORES: expected 0 or 1, got 'yes'"):
        xpcore.tensor_cores_requested({xpcore.TENSOR_CORES_ENV: "yes"})
    monkeypatch.setenv(xpcore.TENSOR_CORES_ENV, "1")
    eng = xpcore.XPEngine(DEV)
    assert eng.tensor_cores and eng.plan(20, 1000, 100, 1, 2, np.float64, "relu")["mma"]
    assert not eng.plan(20, 1000, 100, 1, 2, np.float32, "relu")["mma"]
    eng._attributes = dict(eng.attributes(), ComputeCapabilityMajor=7)              # a V100: no FP64 mma
    assert not eng.plan(20, 1000, 100, 1, 2, np.float64, "relu")["mma"]
    monkeypatch.setenv(xpcore.TENSOR_CORES_ENV, "on")
    from accel import gpu
    assert gpu.kernel_check(DEV) == "BOTTLENECK_TENSOR_CORES: expected 0 or 1, got 'on'"


#: Golden trajectories the tensor-core test runs (the rest take the same passes; the GPU suite runs them all on a
#: device): one, ten and fifty bottleneck units (modes 1 and 0 + 2), the linear head, cross-entropy, a deep g, a
#: chain and momentum.
TENSOR_CORE_GOLDEN = ("bottleneck_d3_full", "bottleneck_d10_full", "bottleneck_d50_mini", "linear_d5_mini",
                      "ce_d3_mini", "deep_d4_mini", "chain_d3_d2_mini", "momentum_d3_mini")


def test_tensor_core_pass_meets_the_golden_tolerances(monkeypatch):
    """The gpu path with BOTTLENECK_TENSOR_CORES=1 (every float64 pass on mma.sync, run by the harness's warp
    collective) stays within the golden tolerances on the trajectories of :data:`TENSOR_CORE_GOLDEN`."""
    from experiments import golden

    import accel
    from accel import gpu
    assert set(TENSOR_CORE_GOLDEN) <= set(golden.TRAJECTORIES)
    monkeypatch.delenv(gpu.STANDIN_ENV, raising=False)
    monkeypatch.setenv(xpcore.TENSOR_CORES_ENV, "1")
    gpu.reset()
    try:
        targets = [t for t in accel.golden_targets() if t[0] == "gpu-path/numpy/float64"]
        rows = golden.check(targets, cases=list(TENSOR_CORE_GOLDEN), log=None)
        bad = [(r["case"], r["worst"], r["worst_error"]) for r in rows if not r["ok"]]
        assert len(rows) == len(TENSOR_CORE_GOLDEN) and not bad, bad
        built = gpu.engine("numpy")._modules
        assert built and all(key[-1] for key in built if key[1] == "float64"), list(built)
    finally:
        gpu.reset()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pass_counts_describe_what_the_engine_launches(dtype):
    """accel.fused_source.pass_counts (the numbers of docs/BENCHMARKS.md) against the launches the
    engine records, including a pass with column chunks; and P streamed once at B = 20, d = 100."""
    eng = xpcore.XPEngine(DEV)
    for M, d, dr, q, mode in ((500, 6, 1, 20, 1), (200, 4, 60, 7, 1), (300, 5, 2, 40, 0)):
        h, rng = _history(M, d, dr, dtype)
        eng.history_pass(rng.standard_normal((q, d)), h.P_dev, h.norms_dev, h.C_dev, mode, None,
                         "relu", float(d), 0.0)
        c = fused_source.pass_counts(q, M, d, dr, mode, dtype, "relu", multiprocessors=1)
        got = eng.last_launches
        assert (got["kernels"], got["h2d"], got["d2h"], got["grid"]) == (c["kernels"], 1, 1, c["grid"])
        assert got["partials"] == c["grid"][0] * c["grid"][1] * sum(c["plan"]["strides"])
        assert c["parts"]["partials"] == 2 * 8 * got["partials"]
    big = fused_source.pass_counts(20, 10**6, 100, 1, 1, dtype, "relu")
    it = np.dtype(dtype).itemsize
    assert big["parts"]["P"] == 10**6 * 100 * it and big["kernels"] == (2 if it == 8 else 3)
    assert big["bytes"] < 1.1 * (10**6 * (100 * it + 8 + it))


@settings(max_examples=300, deadline=None)
@given(q=st.integers(1, 20000), M=st.integers(1, 10**7), d=st.integers(1, 3000), dr=st.integers(1, 1000),
       mode=st.sampled_from([0, 1, 2]), dtype=st.sampled_from([np.float64, np.float32]),
       optin=st.sampled_from([48 * 1024, 163 * 1024, 227 * 1024]), mma=st.booleans())
def test_every_plan_fits_its_limits_and_covers_every_output_once(q, M, d, dr, mode, dtype, optin, mma):
    """For any shape :func:`accel.fused_source.plan` either declines or gives launches whose shared memory
    fits the device's opt-in limit (the layout of the kernel), whose threads own every output (f / beta sums
    within NACC per thread, T columns within NTASK tasks of TCOLS columns, or with tensor cores NWT tasks of
    MMA_COLS columns per warp, the tile in whole blocks of MMA_COLS rows), and whose chunks cover each column of
    C and of T exactly once."""
    budget = min(optin, 228 * 1024 // 2 - 1024)
    pl = fused_source.plan(q, M, d, dr, mode, dtype, "relu", optin, budget, mma=mma)
    if pl is None:
        return
    qt, tile, thr = pl["qt"], pl["tile"], pl["threads"]
    mma = pl["mma"]
    assert mma == (mma and dtype == np.float64)
    blk = fused_source.MMA_COLS if mma else 1
    assert 1 <= qt <= min(q, fused_source.MAX_QT) and 1 <= tile <= -(-min(M, fused_source.MAX_TILE) // blk) * blk
    assert tile % blk == 0
    assert fused_source.MIN_THREADS <= thr <= fused_source.MAX_THREADS and pl["shared"] <= optin
    exact = fused_source.exact_near("relu", dtype, mode)
    ngq = -(-qt // fused_source.QB)
    seen = np.zeros((dr, d), dtype=int)
    for (r0, nr, k0, nk), stride in zip(pl["chunks"], pl["strides"]):
        assert pl["shared"] == fused_source.shared_bytes(mode, exact, np.dtype(dtype).itemsize, d, dr,
                                                         max(c[1] for c in pl["chunks"]), qt, tile, mma)
        assert stride == qt * fused_source.outputs_per_query(mode, nk, nr)
        rr = {0: 0, 1: nr, 2: 1}[mode]
        assert qt * ((nr if mode != 2 else 0) + rr) <= fused_source.NACC[mode] * thr
        if mma:
            assert rr * -(-ngq // fused_source.MMA_QG) * -(-nk // (fused_source.MMA_COLS * fused_source.MMA_RB)) \
                <= fused_source.NWT * (thr // 32)
        else:
            assert rr * ngq * -(-nk // fused_source.TCOLS) <= fused_source.NTASK * thr
        seen[r0:r0 + nr, k0:k0 + nk] += 1
    if mode == 2:
        assert all(c[0] == 0 and c[1] == dr for c in pl["chunks"])
        seen = seen[:1]
    assert np.all(seen == 1) and pl["kchunks"] == len({c[2] for c in pl["chunks"]})


@example(q=1, M=1, d=1, dr=1, mode=0, dtype="float64", seed=10).via("an anti-parallel pair at d = 1")
@example(q=1, M=1, d=1, dr=1, mode=2, dtype="float64-mma", seed=10).via("the same on the tensor cores")
@settings(max_examples=80, deadline=None)
@given(q=st.integers(1, 40), M=st.integers(1, 300), d=st.integers(1, 300), dr=st.integers(1, 30),
       mode=st.sampled_from([0, 1, 2]), dtype=st.sampled_from(["float64", "float32", "float64-mma"]),
       seed=st.integers(0, 99))
def test_the_fused_pass_agrees_with_refimpl_on_random_shapes(q, M, d, dr, mode, dtype, seed):
    """Any small shape (query tiles, several launches of C's or T's columns, odd sizes, a partial last tile)
    run through the CUDA harness agrees with refimpl's kernels (norm-relative: float64 1e-10, float32 1e-4),
    with the products on the FP64 units or (float64-mma) on the tensor cores."""
    mma = dtype.endswith("-mma")
    dtype = np.dtype(dtype.removesuffix("-mma")).type
    h, rng = _history(M, d, dr, dtype, seed=seed)
    Z = rng.standard_normal((q, d))
    chi = rng.standard_normal((q, dr))
    eng = xpcore.XPEngine(DEV, tensor_cores=mma)
    if eng.plan(q, M, d, dr, mode, dtype, "relu") is None:
        return
    got = eng.fused_history_pass(Z, h.P_dev, h.norms_dev, h.C_dev, mode, chi if mode == 2 else None, "relu",
                                 float(d), 0.0)
    f_ref, T_ref, b_ref = _reference(Z, h, mode, chi)
    tol = 1e-10 if dtype == np.float64 else 1e-4

    # norm-relative, with a floor at the sums' natural size: where the reference is exactly zero (an anti-parallel
    # pair at d = 1: K = 0 analytically) the kernel's last-digit rounding is not an error (q = M = d = dr = 1,
    # seed 10: 1.7e-18 against a scale of 0.1)
    scale = np.linalg.norm(Z) * np.linalg.norm(h.P) * np.linalg.norm(h.C) * (1.0 + np.linalg.norm(chi))

    def close(a, b):
        return np.linalg.norm(a - b) <= tol * max(np.linalg.norm(b), 1e-6 * scale)
    if mode != 2:
        assert close(got[0], f_ref)
    if mode:
        Zh = rk.unit_rows(Z)[1]
        assert close(got[1] + got[2][:, :, None] * Zh[:, None, :], T_ref + b_ref[:, :, None] * Zh[:, None, :])
