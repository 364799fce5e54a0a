"""Numba backend: parallel CPU kernels behind refimpl's interface.

Exposes the kernel functions of :mod:`refimpl.kernels` under the same names
and signatures, and :class:`BottleneckEngine` / :class:`InfiniteEngine`, engines of
:mod:`refimpl.engine`'s interface that refimpl's simulators run on (``engine=``).

The hot loop (:func:`_hist_kernel`) walks the history in tiles of
``HIST_BLOCK`` rows against ``QUERY_BLOCK`` query rows, so its temporaries
are O(QUERY_BLOCK x HIST_BLOCK) whatever M and the number of queries; it
calls no BLAS (nothing to oversubscribe inside ``prange``; a single-threaded
BLAS call per tile was measured slower than the kernels below at these
skinny shapes).  Per tile:

1. dot products z_b . p_m in the working dtype (float32 or float64): the
   Gram tile P_tile Z^T against the transposed queries, as an outer-product
   register tile (:func:`_gram_tile`, 4 history rows x 20 queries);
2. the angle of every pair from its cosine, branch-free with the reduced-range
   arcsine of :mod:`accel.formulas` (vectorised by LLVM; the cosine from the
   reciprocal norms, no division), then a scalar pass that recomputes nearly
   (anti-)parallel pairs (|cos| > 1 - NEAR) from the explicit differences
   z^ -+ p^ in float64 (MATH §2.1);
3. the sums f += K C, bsum += beta C (or with C . chi), and the Xi contraction
   T += (alpha C) P as an outer-product register tile written in LLVM vector
   IR (:func:`_axpy_tile`, 8 queries x 3 SIMD vectors of columns).

Throughout the tile the next tile of the history is prefetched into the caches,
in pieces spread over the three phases.  The SGD step itself runs with one
BLAS thread (:mod:`accel.blas_threads`).  Measured costs per pair and the
reasons for the tile shapes: docs/BENCHMARKS.md.

Partial sums are kept per history chunk (a fixed split of the history that
depends on M and the number of queries only, never on the thread count or on
which thread runs a chunk) and added in order, so results are deterministic.
In float32 mode the history is stored in float32, the dot products and the
sums inside a tile run in float32, the angle of near pairs is computed in
float64, and sums across tiles are float64.
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
from llvmlite import ir  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from refimpl.engine import Tracked
from refimpl.kernels import composed_terms, unit_rows

from . import archkernels, blas_threads, formulas, kernelapi
from ._simbase import AccelBottleneckEngine, AccelInfiniteEngine
from .pair_source import WHAT

#: History rows per tile of the hot loop.
HIST_BLOCK = 128
#: Query rows per tile of the hot loop.
QUERY_BLOCK = 32
#: Target number of tiles per pass (enough for 16 threads); fixes the chunking.
TARGET_TILES = 16
#: Passes over fewer pairs than this run on one thread: a parallel region costs more than it
#: saves there, and far more when the cores are shared with other processes.
SERIAL_PAIRS = 1 << 16


class _threads:
    """Context: run Numba parallel regions on one thread when the work is small.

    With ``dynamic``, the iterations of the parallel loop are handed out one at a
    time instead of in equal static shares, so that a thread slowed down by other
    processes on the same cores does not hold the others up at the end.
    """

    def __init__(self, pairs, dynamic=False):
        self.serial = pairs < SERIAL_PAIRS
        self.dynamic = dynamic and not self.serial

    def __enter__(self):
        if self.serial:
            self.saved = numba.get_num_threads()
            numba.set_num_threads(1)
        if self.dynamic:
            self.saved_chunk = numba.set_parallel_chunksize(1)

    def __exit__(self, *exc):
        if self.serial:
            numba.set_num_threads(self.saved)
        if self.dynamic:
            numba.set_parallel_chunksize(self.saved_chunk)

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
_f_cos_from_ratio = _FF["cos_from_ratio"]
_f_geometry_from_cos = _FF["geometry_from_cos"]
_f_geometry_from_halves = _FF["geometry_from_halves"]
_f_relu_ntk = _FF["relu_ntk"]
_f_relu_xi_alpha = _FF["relu_xi_alpha"]
_f_relu_xi_beta = _FF["relu_xi_beta"]
NEAR = formulas.NEAR
#: From this many outputs dr on, the history pass sums K C row by row of C (contiguous) rather than
#: column by column (docs/BENCHMARKS.md: 3.6-4.4x faster at dr = 784, 1.2x at dr = 8; equal at dr = 4).
WIDE_DR = 8


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
def _row_terms(drow, znb, pnt, rpnt, m, nm, Krow, Arow, Brow, nearrow):
    """Pair terms K, alpha, beta of one query against the nm history rows of norms pnt (branch-free).

    rpnt are the reciprocal norms (0 for a zero row).  Flags the nearly (anti-)parallel pairs
    in nearrow and returns how many there are.
    """
    count = 0
    rz = 1.0 / znb if znb > 0.0 else 0.0
    for mm in range(nm):
        pnm = pnt[mm]
        dot = np.float64(drow[mm])
        nn = znb * pnm
        lam = _f_cos_from_ratio(dot * (rz * rpnt[mm]), nn, znb + pnm == 0.0)
        is_near = abs(lam) > 1.0 - NEAR
        nearrow[mm] = is_near
        count += is_near
        theta, lam, s = _f_geometry_from_cos(lam)
        Krow[mm] = _f_relu_ntk(dot, nn, m, theta, lam, s)
        Arow[mm] = _f_relu_xi_alpha(m, theta, lam, s)
        Brow[mm] = _f_relu_xi_beta(pnm, m, lam, s)
    return count


@njit(cache=True, **_FAST_LOOP)
def _near_diff2(xh, y, scale):
    """|x^ - scale y|^2 in float64 for a unit row x^ (scale = +-1/|y|): one explicit difference.

    The history pass's form of :func:`_near_halves`: the reciprocal is hoisted and the sum may be
    reassociated, so the loop vectorises (a pair costs about one dot product, not a division and an
    add-latency chain per element).
    """
    acc = 0.0
    for k in range(xh.shape[0]):
        e = xh[k] - scale * np.float64(y[k])
        acc += e * e
    return acc


@njit(cache=True, **_FAST_PAIR)
def _row_near(zh, znb, drow, Pt, pnt, m, nm, Krow, Arow, Brow, nearrow):
    """Recompute the nearly (anti-)parallel pairs of one query from explicit differences, float64.

    Only the small one of |x^ -+ y^|^2 is formed explicitly (the difference for a nearly parallel
    pair, the sum for a nearly anti-parallel one); the other is 4 minus it, which is well
    conditioned (it is near 4).  Pairs with a zero vector keep both explicit sums.
    """
    for mm in range(nm):
        if nearrow[mm]:
            pnm = pnt[mm]
            if pnm > 0.0 and znb > 0.0:
                rny = 1.0 / pnm
                if drow[mm] >= 0:
                    minus2 = _near_diff2(zh, Pt[mm], rny)
                    plus2 = 4.0 - minus2
                else:
                    plus2 = _near_diff2(zh, Pt[mm], -rny)
                    minus2 = 4.0 - plus2
            else:
                minus2, plus2 = _near_halves(zh, Pt[mm], pnm)
            theta, lam, s = _f_geometry_from_halves(minus2, plus2)
            Krow[mm] = _f_relu_ntk(np.float64(drow[mm]), znb * pnm, m, theta, lam, s)
            Arow[mm] = _f_relu_xi_alpha(m, theta, lam, s)
            Brow[mm] = _f_relu_xi_beta(pnm, m, lam, s)


@intrinsic
def _prefetch(typingctx, flat, i):
    """Hint the CPU to fetch the cache line of flat[i] (1-d array) into all cache levels."""
    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)     # name mangled by llvmlite
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])   # read, keep, data
        return context.get_dummy_value()
    return types.void(flat, types.intp), codegen


@njit(cache=True, **_FAST_LOOP)
def _prefetch_piece(flat, e0, e1, i, n):
    """Prefetch the i-th of n equal pieces of flat[e0:e1], one cache line at a time."""
    line = 64 // flat.itemsize
    piece = ((e1 - e0 + n - 1) // n + line - 1) // line * line
    for e in range(e0 + i * piece, min(e1, e0 + (i + 1) * piece), line):
        _prefetch(flat, e)


def _host_vector_registers():
    """SIMD registers LLVM may use on this CPU: 32 with AVX-512 VL (also for 256-bit vectors), else 16."""
    try:
        from llvmlite import binding
        return 32 if "+avx512vl" in binding.get_host_cpu_features().flatten().split(",") else 16
    except Exception:       # noqa: BLE001 - any failure: assume the smaller register file
        return 16


#: Bytes of one SIMD vector of the contraction: 256 bits.  512-bit vectors were measured no
#: faster on the AVX-512 machine of docs/BENCHMARKS.md (one 512-bit FMA per cycle against two
#: 256-bit ones) and lower the clock of the whole core.
VECTOR_BYTES = 32
#: Queries per register tile of the Xi contraction (:func:`_make_outer_tile`): 8 x 3 vectors
#: = 24 accumulators with 32 registers, 4 x 3 = 12 with 16; query blocks of 4 for the rest.
OUTER_ROWS = 8 if _host_vector_registers() == 32 else 4


def _make_outer_tile(nvec, nrows, vector_bytes=None, lanes=None, accumulate=True):
    """Intrinsic: acc[b:b+nrows, k:k+w] += W[b:b+nrows, :nm] P[s0:s0+nm, k:k+w], w = nvec SIMD vectors.

    A vector is ``vector_bytes`` long (its lanes depend on the dtype), or has ``lanes`` elements.
    With ``accumulate=False`` the product is stored (``=``) instead of added.

    Written as LLVM vector IR: the nrows x nvec accumulators stay in registers over the
    whole reduction over nm history rows, each loaded row chunk of P serves nrows queries
    and each broadcast weight nvec vectors (an outer-product micro-kernel; Numba's
    loop vectoriser keeps such accumulators in memory instead).
    """
    @intrinsic
    def outer_tile(typingctx, W, P, acc, b, s0, nm, k):
        def codegen(context, builder, sig, args):
            Wty, Pty, Aty = sig.args[:3]
            arrays = [context.make_array(t)(context, builder, a) for t, a in zip(sig.args[:3], args[:3])]
            Wa, Pa, Aa = arrays
            b_, s0_, nm_, k_ = args[3:]
            fty = context.get_value_type(Pty.dtype)
            n = lanes if lanes is not None else vector_bytes * 8 // Pty.dtype.bitwidth
            vty = ir.VectorType(fty, n)
            intp = context.get_value_type(types.intp)
            i32 = ir.IntType(32)
            align = Pty.dtype.bitwidth // 8
            undef = ir.Constant(vty, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, n), [i32(0)] * n)
            accs = [[cgutils.alloca_once_value(builder, ir.Constant(vty, [fty(0.0)] * n))
                     for _ in range(nvec)] for _ in range(nrows)]

            def vectors(ptr):
                base = builder.bitcast(ptr, vty.as_pointer())
                return [builder.gep(base, [intp(v)]) for v in range(nvec)]

            with cgutils.for_range(builder, nm_) as loop:
                mm = loop.index
                prow = cgutils.get_item_pointer(context, builder, Pty, Pa, [builder.add(s0_, mm), k_],
                                                wraparound=False)
                pv = [builder.load(p, align=align) for p in vectors(prow)]
                for i in range(nrows):
                    wptr = cgutils.get_item_pointer(context, builder, Wty, Wa, [builder.add(b_, intp(i)), mm],
                                                    wraparound=False)
                    wv = builder.shuffle_vector(builder.insert_element(undef, builder.load(wptr), i32(0)),
                                                undef, splat)
                    for v in range(nvec):
                        prod = builder.fmul(wv, pv[v], flags=("contract",))
                        builder.store(builder.fadd(builder.load(accs[i][v]), prod, flags=("contract",)),
                                      accs[i][v])
            for i in range(nrows):
                arow = cgutils.get_item_pointer(context, builder, Aty, Aa, [builder.add(b_, intp(i)), k_],
                                                wraparound=False)
                for v, p in enumerate(vectors(arow)):
                    total = builder.load(accs[i][v])
                    if accumulate:
                        total = builder.fadd(builder.load(p, align=align), total)
                    builder.store(total, p, align=align)
            return context.get_dummy_value()
        return types.void(W, P, acc, b, s0, nm, k), codegen
    return outer_tile


# wide tiles (OUTER_ROWS queries) and 4-query tiles for the queries left; 3 vectors, 1, half
_tileR3 = _make_outer_tile(3, OUTER_ROWS, VECTOR_BYTES)
_tileR1 = _make_outer_tile(1, OUTER_ROWS, VECTOR_BYTES)
_tileRh = _make_outer_tile(1, OUTER_ROWS, VECTOR_BYTES // 2)
_tile43 = _make_outer_tile(3, 4, VECTOR_BYTES)
_tile41 = _make_outer_tile(1, 4, VECTOR_BYTES)
_tile4h = _make_outer_tile(1, 4, VECTOR_BYTES // 2)


@njit(cache=True, **_FAST_LOOP)
def _axpy_tile(W, P, s0, nb, nm, acc, pflat, pf0, pf1):
    """acc[bb, :] += sum_mm W[bb, mm] P[s0 + mm, :] for bb < nb, mm < nm (the Xi contraction).

    Register tiles of OUTER_ROWS queries x 3 SIMD vectors of columns (:func:`_make_outer_tile`),
    then OUTER_ROWS x 1 vector and x 1 half vector for the columns left; the same with 4 queries
    for the queries past the last multiple of OUTER_ROWS; then plain loops for the rest (the
    last columns, queries past the last multiple of 4).  Between the register tiles,
    pflat[pf0:pf1] is prefetched in equal pieces (pf0 = pf1: nothing).
    """
    d = P.shape[1]
    lanes = VECTOR_BYTES // P.itemsize
    k3 = d - d % (3 * lanes)
    k1 = d - d % lanes
    kh = d - d % (lanes // 2)
    bR = nb - nb % OUTER_ROWS
    b4 = nb - nb % 4
    ncalls = (bR // OUTER_ROWS + (b4 - bR) // 4) * (k3 // (3 * lanes) + (k1 - k3) // lanes + (kh > k1))
    call = 0
    bb = 0
    while bb < b4:
        wide = bb < bR
        for kc in range(0, k3, 3 * lanes):
            if wide:
                _tileR3(W, P, acc, bb, s0, nm, kc)
            else:
                _tile43(W, P, acc, bb, s0, nm, kc)
            _prefetch_piece(pflat, pf0, pf1, call, ncalls)
            call += 1
        for kc in range(k3, k1, lanes):
            if wide:
                _tileR1(W, P, acc, bb, s0, nm, kc)
            else:
                _tile41(W, P, acc, bb, s0, nm, kc)
            _prefetch_piece(pflat, pf0, pf1, call, ncalls)
            call += 1
        if kh > k1:
            if wide:
                _tileRh(W, P, acc, bb, s0, nm, k1)
            else:
                _tile4h(W, P, acc, bb, s0, nm, k1)
            _prefetch_piece(pflat, pf0, pf1, call, ncalls)
            call += 1
        bb += OUTER_ROWS if wide else 4
    for mm in range(nm):
        for bb in range(nb):
            w = W[bb, mm]
            for k in range(0 if bb >= b4 else kh, d):
                acc[bb, k] += w * P[s0 + mm, k]


#: Query columns per SIMD vector of the Gram tile, and vectors per register tile.
GRAM_LANES = 4
GRAM_VECTORS = 5
_gram45 = _make_outer_tile(GRAM_VECTORS, 4, lanes=GRAM_LANES, accumulate=False)
_gram41 = _make_outer_tile(1, 4, lanes=GRAM_LANES, accumulate=False)
_gram4h = _make_outer_tile(1, 4, lanes=GRAM_LANES // 2, accumulate=False)


@njit(cache=True, **_FAST_LOOP)
def _gram_tile(P, s0, nm, ZT, dotsT, pflat, pf0, pf1):
    """dotsT[mm, bb] = P[s0 + mm] . ZT[:, bb] for mm < nm and every column bb of ZT (MATH §4).

    The queries ZT (d, nb) are transposed, so that the Gram tile is an outer-product
    register tile (4 history rows x 5 vectors of 4 queries: 20 accumulators, the batch of
    20 in one tile) over the reduction index: no horizontal sums.  Then 4 x 1 vector and
    4 x half vector tiles, and plain loops for the rest.  After each block of 4 history rows, a piece of pflat[pf0:pf1]
    is prefetched (pf0 = pf1: nothing).
    """
    nb = ZT.shape[1]
    d = ZT.shape[0]
    lanes = GRAM_LANES
    k5 = nb - nb % (GRAM_VECTORS * lanes)
    k1 = nb - nb % lanes
    kh = nb - nb % (lanes // 2)
    m4 = nm - nm % 4
    Pt = P[s0:s0 + nm]
    for mm in range(0, m4, 4):
        for kc in range(0, k5, GRAM_VECTORS * lanes):
            _gram45(Pt, ZT, dotsT, mm, 0, d, kc)
        for kc in range(k5, k1, lanes):
            _gram41(Pt, ZT, dotsT, mm, 0, d, kc)
        if kh > k1:
            _gram4h(Pt, ZT, dotsT, mm, 0, d, k1)
        _prefetch_piece(pflat, pf0, pf1, mm // 4, m4 // 4)
    for mm in range(nm):
        for bb in range(0 if mm >= m4 else kh, nb):
            acc = 0.0
            for k in range(d):
                acc += Pt[mm, k] * ZT[k, bb]
            dotsT[mm, bb] = acc


@njit(parallel=True, cache=True, **_FAST_LOOP)
def _hist_kernel(Zw, zn, Zh, P, Pflat, pn, C, chi, mode, relu, m, lin, nchunks, qblock, hblock,
                 out_f, out_T, out_b):
    """One pass over the history P (M, d), C (M, dr) for the queries Zw (q, d).

    Zw is in the working dtype (that of P); zn, Zh are the float64 norms and
    unit rows of the queries; pn the float64 norms of P; Pflat the flat (M d,)
    view of P (for prefetching).  Adds the sums of chunk c into out_f[c]
    (q, dr), out_T[c] (q, R, d), out_b[c] (q, R);
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
        nnear = np.zeros(nb, dtype=np.int64)             # near pairs per query in the tile
        W = np.empty((nb, hblock), dtype=wdt)
        accT = np.zeros((max(R, 1), nb, d), dtype=wdt)
        accT64 = np.zeros((nb, d), dtype=np.float64)
        # the queries transposed: the Gram tile is then an outer-product register tile
        # (history rows x vectors of queries), as the contraction
        ZT = np.empty((d, nb), dtype=wdt)
        for bb in range(nb):
            for k in range(d):
                ZT[k, bb] = Zw[b0 + bb, k]
        dotsT = np.empty((hblock, nb), dtype=wdt)
        rpnt = np.empty(hblock)
        # the next tile's rows [f0, f1) of Pflat are prefetched, one cache line at a time, spread
        # over the whole tile: a third each in the Gram tile, between the queries' pair terms, and
        # in the Xi contraction (mode 0: two thirds with the pair terms).
        line = 64 // P.itemsize
        for s0 in range(h0, h1, hblock):
            nm = min(h1, s0 + hblock) - s0
            pnt = pn[s0:s0 + nm]
            for mm in range(nm):
                rpnt[mm] = 1.0 / pnt[mm] if pnt[mm] > 0.0 else 0.0
            Ct = C[s0:s0 + nm]
            Pt = P[s0:s0 + nm]
            f0 = (s0 + nm) * d
            f1 = min(h1, s0 + nm + hblock) * d
            fa = f0 + (f1 - f0) // (3 * line) * line
            fb = f1 if mode == 0 else f0 + 2 * ((f1 - f0) // (3 * line)) * line
            # 1. dot products: dotsT = P_tile Zw^T (register tiles), then transposed to dots
            _gram_tile(P, s0, nm, ZT, dotsT, Pflat, f0, fa)
            for bb in range(nb):
                for mm in range(nm):
                    dots[bb, mm] = dotsT[mm, bb]
            # 2. pair terms: branch-free for all pairs, then the near pairs again
            for bb in range(nb):
                if relu:
                    nnear[bb] = _row_terms(dots[bb], zn[b0 + bb], pnt, rpnt, m, nm, Kv[bb], Av[bb], Bv[bb], near[bb])
                    if nnear[bb]:
                        _row_near(Zh[b0 + bb], zn[b0 + bb], dots[bb], Pt, pnt, m, nm,
                                  Kv[bb], Av[bb], Bv[bb], near[bb])
                else:
                    for mm in range(nm):
                        Kv[bb, mm] = lin * dots[bb, mm] / m
                        Av[bb, mm] = lin / m
                        Bv[bb, mm] = 0.0
                _prefetch_piece(Pflat, fa, fb, bb, nb)
            # 3. sums over the tile's history rows
            if mode != 2:
                if dr < WIDE_DR:
                    for bb in range(nb):
                        for r in range(dr):
                            acc64 = 0.0
                            for mm in range(nm):
                                acc64 += Kv[bb, mm] * Ct[mm, r]
                            out_f[c, b0 + bb, r] += acc64
                else:
                    # many outputs (autoencoders): rows of C are contiguous, so sweep them whole
                    # (a column of C would be read with a stride of dr elements)
                    for mm in range(nm):
                        for bb in range(nb):
                            kv = Kv[bb, mm]
                            for r in range(dr):
                                out_f[c, b0 + bb, r] += kv * Ct[mm, r]
            if mode != 0:
                for r in range(R):
                    # weights w[b, m] = alpha * C[m, r]  (mode 1)  or  alpha * (C_m . chi_b)  (mode 2)
                    accr = accT[r]
                    accr[:] = 0
                    for bb in range(nb):
                        bacc = 0.0
                        if mode == 1:
                            for mm in range(nm):
                                cw = np.float64(Ct[mm, r])
                                W[bb, mm] = Av[bb, mm] * cw
                                bacc += Bv[bb, mm] * cw
                        else:
                            for mm in range(nm):
                                cw = 0.0
                                for rr in range(dr):
                                    cw += chi[b0 + bb, rr] * Ct[mm, rr]
                                W[bb, mm] = Av[bb, mm] * cw
                                bacc += Bv[bb, mm] * cw
                        out_b[c, b0 + bb, r] += bacc
                    if exact_near:
                        # float32: alpha ~ 1/sin at nearly parallel pairs and cancels against
                        # beta's term, so their Xi terms are summed in float64, apart
                        accT64[:] = 0
                        for bb in range(nb):
                            for mm in range(nm if nnear[bb] else 0):
                                if near[bb, mm]:
                                    w64 = Av[bb, mm]
                                    if mode == 1:
                                        w64 *= np.float64(Ct[mm, r])
                                    else:
                                        cw = 0.0
                                        for rr in range(dr):
                                            cw += chi[b0 + bb, rr] * Ct[mm, rr]
                                        w64 *= cw
                                    W[bb, mm] = 0.0
                                    for k in range(d):
                                        accT64[bb, k] += w64 * Pt[mm, k]
                        for bb in range(nb):
                            for k in range(d):
                                out_T[c, b0 + bb, r, k] += accT64[bb, k]
                    _axpy_tile(W, P, s0, nb, nm, accr, Pflat, fb, f1 if r == 0 else fb)
                    for bb in range(nb):
                        for k in range(d):
                            out_T[c, b0 + bb, r, k] += accr[bb, k]


def history_pass(Z, P, pn, C, mode, chi, arch, m, par, dtype=np.float64,
                 qblock=QUERY_BLOCK, hblock=HIST_BLOCK):
    """Sums over the history for queries Z (q, d); modes as in :mod:`refimpl.engine`.

    P (M, d), C (M, dr) in the working dtype ``dtype`` and pn (M,) float64 norms; ``arch``
    ("relu" or "linear"), m, par as :class:`accel._simbase.HeadArch` (the signature of
    :meth:`accel.xpcore.XPEngine.history_pass`).  Returns f (q, dr), T (q, R, d), bsum (q, R)
    in float64 (T, bsum are None in mode 0; f is None in mode 2).
    """
    Z = np.ascontiguousarray(Z, dtype=np.float64)
    P = np.ascontiguousarray(P)
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
        with _threads(q * M, dynamic=True):
            _hist_kernel(Zw, zn, Zh, P, P.reshape(-1), pn, C, chi, mode, arch == "relu", float(m), float(par),
                         nchunks, qblock, hblock, out_f, out_T, out_b)
    f = out_f.sum(axis=0) if mode != 2 else None
    if mode == 0:
        return f, None, None
    return f, out_T.sum(axis=0), out_b.sum(axis=0)


# ---------------------------------------------------------------------------
# Theta against tracked inputs (MATH §4): what never changes is computed once
# ---------------------------------------------------------------------------

#: Target rows per parallel task of :func:`_theta_rows`.
THETA_ROWS = 256
#: Rows sampled to find each column's most common value (:func:`column_shift`).
SHIFT_SAMPLE = 256


def column_shift(X, sample=SHIFT_SAMPLE):
    """mu (d0,): per column the most common value among the first ``sample`` rows of X (0 where no
    value repeats), so that X - mu is sparse where X is a shifted sparse matrix (centred images:
    mu is the value of a blank pixel).  Returns mu and X - mu in CSR form: row pointers (n + 1,),
    column indices and values of the entries where X != mu.
    """
    S = np.sort(X[:sample], axis=0)
    mu = np.zeros(X.shape[1])
    if S.shape[0] > 1:
        for k in range(X.shape[1]):
            values, counts = np.unique(S[:, k], return_counts=True)
            if counts.max() > 1:
                mu[k] = values[np.argmax(counts)]
    nz = X != mu
    if nz.mean() > (X != 0.0).mean():                      # no gain: keep the plain zeros
        mu[:] = 0.0
        nz = X != 0.0
    ptr = np.concatenate([[0], np.cumsum(nz.sum(axis=1))]).astype(np.int64)
    rows, cols = np.nonzero(nz)
    return mu, ptr, cols.astype(np.int32), X[rows, cols] - mu[cols]


@njit(cache=True, **_FAST_PAIR)
def _sparse_dots(nz_ptr, nz_idx, nz_val, i, YT, muY, dots):
    """dots[b] = X_i . Y_b = (X_i - mu) . Y_b + mu . Y_b, summed over the entries where X_i differs
    from mu (CSR: nz_ptr, column indices nz_idx, values nz_val = X - mu there); YT (d0, B) the
    sources transposed, muY[b] = mu . Y_b.  Reading the stored values, not X, streams 12 bytes per
    entry instead of (nearly) the whole row of X.

    Each entry updates all B dots at once (a contiguous row of YT: SIMD over b).  Measured 1.3x
    faster than register accumulators over blocks of b (whose sweep over the entries is repeated).
    """
    B = YT.shape[1]
    for b in range(B):
        dots[b] = 0.0
    for j in range(nz_ptr[i], nz_ptr[i + 1]):
        k = nz_idx[j]
        v = nz_val[j]
        for b in range(B):
            dots[b] += v * YT[k, b]
    for b in range(B):
        dots[b] += muY[b]


@njit(cache=True)
def _source_rows(mu, Y, ny):
    """What the source rows Y (B, d0) contribute to every target row of :func:`_theta_rows` and
    :func:`_halves_rows` and :func:`_inf_rows`: Y^T (contiguous), mu . Y_b (the shift of the stored sparse rows) and 1/|Y_b|."""
    B, d0 = Y.shape
    YT = np.ascontiguousarray(Y.T)
    muY = np.zeros(B)
    rny = np.empty(B)
    for b in range(B):
        for k in range(d0):
            muY[b] += mu[k] * Y[b, k]
        rny[b] = 1.0 / ny[b] if ny[b] > 0.0 else 0.0
    return YT, muY, rny


@njit(parallel=True, cache=True, **_FAST_PAIR)
def _theta_rows(X, nx, mu, nz_ptr, nz_idx, nz_val, Y, ny, m, out):
    """out[i, b] = ReLU NTK(X_i, Y_b) with scale m for every target row i and source row b (MATH §2).

    The dot products come from :func:`_sparse_dots` (X - mu sparse; mu, nz_ptr, nz_idx from
    :func:`column_shift`, computed once per tracked set), the pair terms from the history pass's
    :func:`_row_terms` and :func:`_row_near` (nearly (anti-)parallel pairs from the explicit
    differences, MATH §2.1), so the result equals ``ntk(X, Y)`` to a few ulps.
    """
    n, d0 = X.shape
    B = Y.shape[0]
    YT, muY, rny = _source_rows(mu, Y, ny)
    ntasks = (n + THETA_ROWS - 1) // THETA_ROWS
    for task in prange(ntasks):
        dots = np.empty(B)
        A = np.empty(B)
        Bt = np.empty(B)
        near = np.zeros(B, dtype=np.bool_)
        xh = np.empty(d0)
        for i in range(task * THETA_ROWS, min(n, (task + 1) * THETA_ROWS)):
            _sparse_dots(nz_ptr, nz_idx, nz_val, i, YT, muY, dots)
            if _row_terms(dots, nx[i], ny, rny, m, B, out[i], A, Bt, near):
                r = 1.0 / nx[i] if nx[i] > 0.0 else 0.0
                for k in range(d0):
                    xh[k] = X[i, k] * r
                _row_near(xh, nx[i], dots, Y, ny, m, B, out[i], A, Bt, near)


_angle = _F["angle"]
_halves_from_cos = _F["halves_from_cos"]
_halves_from_differences = _F["halves_from_differences"]


@njit(cache=True, **_FAST_PAIR)
def _row_halves(X, i, nxi, dots, Y, ny, rny, xh, hu, hv, lam):
    """hu, hv, lam[b] = sin, cos of half the angle between X_i and Y_b and its cosine (MATH §2.1), from the
    dot products ``dots`` of :func:`_sparse_dots`: from the cosine, or for nearly (anti-)parallel pairs
    (|cos| > 1 - NEAR) from the explicit differences x^ -+ y^ (``xh``: room for the unit row x^)."""
    d0 = X.shape[1]
    rx = 1.0 / nxi if nxi > 0.0 else 0.0
    have_xh = False
    for b in range(Y.shape[0]):
        c = _f_cos_from_ratio(dots[b] * (rx * rny[b]), nxi * ny[b], nxi + ny[b] == 0.0)
        if abs(c) > 1.0 - NEAR:
            if not have_xh:
                for k in range(d0):
                    xh[k] = X[i, k] * rx
                have_xh = True
            minus2, plus2 = _near_halves(xh, Y[b], ny[b])
            hu[b], hv[b], lam[b] = _halves_from_differences(minus2, plus2)
        else:
            hu[b], hv[b] = _halves_from_cos(c)
            lam[b] = c


@njit(cache=True, **_STRICT)
def _relu_half(Vx, Vy, V, dltV, epsV, T_in, ws, lr_self):
    """One half (g or f) of a ReLU network without biases, by the layer recursion of MATH §2.2 for one pair.

    The scalar form of :func:`refimpl.kernels._recursion` with refimpl's ReLU dual
    (:func:`refimpl.activations._relu_dual`; half-angles from the differences dlt, eps of each layer,
    MATH §2.1), in the same order of operations.  Input: the entries (Vx, Vy, V, dltV, epsV) of what
    feeds the first layer, the NTK fed in ``T_in`` and the weight stds ``ws`` (input layer first).
    Returns the last pre-activation (sx, sy, c, dlt, eps) and the NTK T of this half.
    """
    sx = sy = c = dlt = eps = T = vd = 0.0
    for layer in range(ws.shape[0]):
        if layer:                               # the ReLU dual of the previous pre-activation
            if dlt + eps <= 0.0 and sx + sy > 0.0:        # one zero vector: theta = pi/2
                hu = math.sqrt(0.5)
                hv = hu
                lam = 0.0
            else:
                hu, hv, lam = _halves_from_differences(dlt, eps)
            theta = _angle(lam, hu, hv)
            pi_minus = _angle(-lam, hv, hu)
            s = 2.0 * hu * hv
            nn = sx * sy
            one_minus_J = (formulas.TWO_PI * hu * hu + theta * lam - s) / math.pi
            V = nn * (s + pi_minus * lam) / formulas.TWO_PI
            Vx = 0.5 * sx * sx
            Vy = 0.5 * sy * sy
            dltV = 0.5 * nn * one_minus_J
            epsV = 0.5 * nn * (2.0 - one_minus_J)
            vd = pi_minus / formulas.TWO_PI
        w2 = ws[layer] * ws[layer]              # the affine layer (no bias)
        sx = math.sqrt(w2 * Vx)
        sy = math.sqrt(w2 * Vy)
        c = w2 * V
        dlt = w2 * dltV
        eps = w2 * epsV
        T = lr_self * c + (w2 * T_in if layer == 0 else (w2 * vd) * T)
    return sx, sy, c, dlt, eps, T


@njit(cache=True, **_STRICT)
def _relu_ntk_inf_pair(nx, ny, hu, hv, lam, m, wg, wf, lr_f, lr_g):
    """NTK_inf of one pair for ReLU halves without biases (MATH §5): :func:`refimpl.kernels.composed_terms`
    written out for scalars (g's recursion from the inputs, f's fed by g's last state and lr_g Theta_g)."""
    nn = nx * ny / m
    sx, sy, c, dlt, eps, Tg = _relu_half(nx * nx / m, ny * ny / m, nn * lam, 2.0 * nn * hu * hu,
                                         2.0 * nn * hv * hv, 0.0, wg, 1.0)
    return _relu_half(sx * sx, sy * sy, c, dlt, eps, lr_g * Tg, wf, lr_f)[5]


@njit(parallel=True, cache=True, **_FAST_PAIR)
def _halves_rows(X, nx, mu, nz_ptr, nz_idx, nz_val, Y, ny, hu, hv, lam):
    """hu, hv, lam (n, B): the half-angles and cosine of every target row i against the batch rows Y
    (MATH §2.1), from the dot products of :func:`_sparse_dots` (stored norms and nonzero pattern, as
    :func:`_theta_rows`) by :func:`_row_halves`."""
    n, d0 = X.shape
    B = Y.shape[0]
    YT, muY, rny = _source_rows(mu, Y, ny)
    ntasks = (n + THETA_ROWS - 1) // THETA_ROWS
    for task in prange(ntasks):
        dots = np.empty(B)
        xh = np.empty(d0)
        for i in range(task * THETA_ROWS, min(n, (task + 1) * THETA_ROWS)):
            _sparse_dots(nz_ptr, nz_idx, nz_val, i, YT, muY, dots)
            _row_halves(X, i, nx[i], dots, Y, ny, rny, xh, hu[i], hv[i], lam[i])


@njit(parallel=True, cache=True, **_FAST_PAIR)
def _inf_rows(X, nx, mu, nz_ptr, nz_idx, nz_val, Y, ny, m, wg, wf, lr_f, lr_g, chi, out):
    """out[i] = sum_b NTK_inf(X_i, Y_b) chi[b] for every target row i (MATH §5): ReLU halves without biases
    (weight stds wg, wf).  One pass, no (n, B) kernel matrix: the dot products of :func:`_sparse_dots`,
    the half-angles of :func:`_row_halves`, then :func:`_relu_ntk_inf_pair`."""
    n, d0 = X.shape
    B = Y.shape[0]
    dr = chi.shape[1]
    YT, muY, rny = _source_rows(mu, Y, ny)
    ntasks = (n + THETA_ROWS - 1) // THETA_ROWS
    for task in prange(ntasks):
        dots = np.empty(B)
        xh = np.empty(d0)
        acc = np.empty(dr)
        hu, hv, lam = np.empty(B), np.empty(B), np.empty(B)
        for i in range(task * THETA_ROWS, min(n, (task + 1) * THETA_ROWS)):
            _sparse_dots(nz_ptr, nz_idx, nz_val, i, YT, muY, dots)
            _row_halves(X, i, nx[i], dots, Y, ny, rny, xh, hu, hv, lam)
            for r in range(dr):
                acc[r] = 0.0
            for b in range(B):
                k_ib = _relu_ntk_inf_pair(nx[i], ny[b], hu[b], hv[b], lam[b], m, wg, wf, lr_f, lr_g)
                for r in range(dr):
                    acc[r] += k_ib * chi[b, r]
            for r in range(dr):
                out[i, r] = acc[r]


class TrackedInputs(Tracked):
    """A tracked set (:class:`refimpl.engine.Tracked`) with what never changes about X, computed once:
    the row norms, and a per-column shift mu with X - mu in CSR form (:func:`column_shift`)."""

    def __init__(self, X, values):
        super().__init__(X, values)
        self.norms = np.sqrt(np.einsum("ij,ij->i", X, X))
        self.shift, self.nz_ptr, self.nz_idx, self.nz_val = column_shift(X)


# ---------------------------------------------------------------------------
# engines
# ---------------------------------------------------------------------------

class BottleneckEngine(AccelBottleneckEngine):
    """The engine of :class:`refimpl.BottleneckSimulator` (:mod:`refimpl.engine`) with the Numba passes.

    ``dtype`` ("float64" or "float32"): the precision of the stored history and of its pass.
    Theta of the ReLU g (with layer scales that factor out) against tracked inputs is
    :func:`_theta_rows` from the norms and nonzero pattern computed once per tracked set.  The
    passes run with one BLAS thread (:mod:`accel.blas_threads`): spinning BLAS workers would
    otherwise take cores from the Numba kernels.
    """

    def __init__(self, layers_g, layers_f, d, dr, dtype=None):
        super().__init__(layers_g, layers_f, d, dr, dtype=dtype, kernels=_KernelFunctions)
        self.stored_route = layers_g.activation == "relu" and layers_g.kernel_scale is not None

    def track(self, X, values):
        return TrackedInputs(X, values) if self.stored_route else Tracked(X, values)

    def update_tracked(self, target, source, idx, V, lr, beta=0.0, nesterov=False):
        with blas_threads.limit(1):
            if not self.stored_route:
                return super().update_tracked(target, source, idx, V, lr, beta, nesterov)
            Y = np.ascontiguousarray(source.X[idx])
            theta = np.empty((target.X.shape[0], Y.shape[0]))
            with _threads(theta.size):
                _theta_rows(target.X, target.norms, target.shift, target.nz_ptr, target.nz_idx, target.nz_val, Y,
                            source.norms[idx], float(Y.shape[1]), theta)
            if not self.layers_g.closed_form:
                theta *= self.layers_g.kernel_scale
            target.descend(theta @ V, lr, beta, nesterov)

    def fast_pass(self, Z, mode, chi):
        h = self.history
        with blas_threads.limit(1):
            return history_pass(Z, h.P, h.norms, h.C, mode, chi, self.head.kind, self.head.m, self.head.par,
                                dtype=self.dtype)


class InfiniteEngine(AccelInfiniteEngine):
    """The engine of :class:`refimpl.InfiniteSimulator` on the cpu (always float64: this model has no
    history).

    NTK_inf against tracked inputs comes from the norms and nonzero pattern stored once per tracked
    set.  ReLU halves without biases (any depth and weight stds): one Numba pass,
    :func:`_inf_rows`, forms each pair's kernel and contracts it with chi at once.  Other
    architectures: the composed layer recursion (:func:`refimpl.kernels.composed_terms`) on the
    half-angles of :func:`_halves_rows`.  Other queries use the kernel functions.
    """

    def __init__(self, layers_g, layers_f, lr_f, lr_g):
        super().__init__(layers_g, layers_f, lr_f, lr_g, kernels=_KernelFunctions)
        #: False: the kernel functions every step (the route before; for benchmarks)
        self.stored_route = True
        #: ReLU halves without biases: the one-pass kernel :func:`_inf_rows` (False: the recursion
        #: on arrays of pairs, as for every other architecture)
        self.fused_relu = all(spec.activation == "relu" and spec.b_std == 0.0 for spec in (layers_g, layers_f))
        self._stds = tuple(np.array([w for w, _ in spec.layer_stds()], dtype=np.float64)
                           for spec in (layers_g, layers_f))

    def track(self, X, values):
        return TrackedInputs(X, values)

    def update_tracked(self, target, source, idx, chi, rate=1.0, beta=0.0, nesterov=False):
        """target.values -= rate NTK_inf(target.X, source.X[idx]) @ chi (momentum: MATH §8.4)."""
        if not self.stored_route:
            with blas_threads.limit(1):
                return super().update_tracked(target, source, idx, chi, rate, beta, nesterov)
        X, Y = target.X, np.ascontiguousarray(source.X[idx])
        nx, ny = target.norms, source.norms[idx]
        chi = np.ascontiguousarray(chi, dtype=np.float64)
        inc = np.empty((X.shape[0], chi.shape[1]))
        if self.fused_relu:
            with _threads(inc.shape[0] * Y.shape[0]):
                _inf_rows(X, nx, target.shift, target.nz_ptr, target.nz_idx, target.nz_val, Y, ny,
                          float(X.shape[1]), self._stds[0], self._stds[1], float(self.lr_f), float(self.lr_g), chi,
                          inc)
        else:
            step = max(1, archkernels.MAX_PAIRS // max(1, Y.shape[0]))
            with blas_threads.limit(1):
                for r in range(0, X.shape[0], step):
                    rows = slice(r, min(X.shape[0], r + step))
                    hu, hv, lam = (np.empty((rows.stop - rows.start, Y.shape[0])) for _ in range(3))
                    with _threads(hu.size):
                        _halves_rows(X[rows], nx[rows], target.shift, target.nz_ptr[rows.start:rows.stop + 1],
                                     target.nz_idx, target.nz_val, Y, ny, hu, hv, lam)
                    ntk = composed_terms(nx[rows][:, None], ny[None, :], hu, hv, lam, self.layers_g,
                                         self.layers_f, X.shape[1], self.lr_f, self.lr_g)[1]
                    inc[rows] = ntk @ chi
        target.descend(inc, rate, beta, nesterov)
