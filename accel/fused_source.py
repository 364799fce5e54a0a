"""The fused history pass of the GPU backend: one kernel over the history, one reduction (MATH §4).

For queries Z (q, d) against the history P (M, d), C (M, dr) the pass computes the sums of
:mod:`accel._simbase` (modes 0, 1, 2):

    f[b, r]       = sum_m K(Z_b, P_m) C_m,r
    T[r, b, k]    = sum_m alpha(Z_b, P_m) w_m,r P_m,k
    bsum[r, b]    = sum_m beta(Z_b, P_m) w_m,r

with ``w = C`` (mode 1) or ``w_m = C_m . chi_b`` (mode 2, one column).  Kernel
``bd_fused_history`` does it in one pass over the history, so each row of P and C is read
from global memory once per query tile and no (q, M) pair matrix is ever stored:

* block (x, y) takes query tile y (``qt`` queries, kept in shared memory for the whole pass)
  and the history tiles x, x + gridDim.x, ... of ``tile`` rows (grid-stride);
* per tile: (1) the block loads the tile of P (and its columns of C) into shared memory, rows
  at an odd stride (threads of a warp reading different rows at one k hit different banks);
  (2) each thread takes tasks of ``BD_QB`` queries x one row: the dot products z_b . p_j in the
  working dtype T (as the GEMM of the unfused pass; each row element loaded once for BD_QB
  products), then the pair terms through the architecture's device functions ``bd_near`` /
  ``bd_pair`` of :data:`accel.pair_source.ARCH` (the same text as the elementwise kernels;
  nearly (anti-)parallel pairs recomputed from explicit differences in float64, MATH §2.1),
  written as coefficients to shared memory;
  (3) each thread owns, in registers, up to ``BD_NACC`` f or beta-sum outputs and up to
  ``BD_NTASK`` T tasks (one column k of T for BD_QB queries, again one row element per BD_QB
  multiply-adds), and adds the tile's contribution to them;
* at the end each block writes its outputs (a partial sum over its tiles, float64) to
  ``part[(y, x), :]``; ``bd_fused_reduce`` sums the partials over x in a fixed order
  (deterministic), giving ``out[y, :]`` = [f (nq, nr) | T (R, nq, d) | bsum (R, nq)].

Float32 histories: dot products and f / T sums run in float32 (as the float32 GEMMs did);
beta sums in float64; the Xi term of a nearly parallel pair (alpha ~ 1/sin, cancelling against
beta) is accumulated in a float64 twin of the owning thread's accumulators, so there are no atomics
(each output belongs to one thread of one block).

Outputs per block are at most ``BD_NACC * blockDim.x`` f / beta-sum entries and
``BD_NTASK * blockDim.x`` T tasks; :func:`plan` picks the query tile and,
for wide outputs (dr up to 784, the MNIST autoencoder), splits the columns of C into chunks
(r0, nr) launched one after the other.  Each chunk streams P once more, but every element of
C is read once per query tile and never per query.  Mode 2 needs C_m . chi_b, so it keeps the
whole row of C in the shared tile and takes smaller tiles when dr is large.  Where even a
one-row tile does not fit in 48 KiB of shared memory beside the query tile (the query tile is not
shrunk: in float64 from d = 184 when evaluating many queries, d = 292 for a batch of 20 in mode 0,
d = 513 in modes 1-2; twice that in float32), or one query
group's T tasks exceed a block (modes 1-2 with d > ``NTASK * MAX_THREADS`` = 512), or mode 1
needs more than ``MAX_CHUNKS_MODE1`` column chunks (a Jacobian at dr = 784), :func:`plan`
returns None and the engine uses the unfused GEMM pass (:mod:`accel.xpcore`).

The source is written once; ``TARGET_MACROS`` says what the kernel-level macros mean on
a GPU ("cuda", NVRTC via ``cupy.RawModule``) and in the CPU execution harness ("sim",
:mod:`accel.cudasim`, which runs each CUDA thread of a block as a coroutine).
:func:`cuda_sources` lists every variant the backend can generate, for the NVRTC compile test.
"""

from __future__ import annotations

import numpy as np

from . import pair_source

#: Per thread, kept in registers across the whole pass: NACC[mode] f or beta-sum outputs, and
#: NTASK tasks of QB T outputs (one column k of T for QB queries: each row element read from shared
#: memory serves QB multiply-adds; likewise in the dot products, QB queries per row).  Modes 1 and 2
#: have few f / beta-sum outputs and need the registers for T: 2 there keeps them within 128
#: registers (2 blocks per SM) without spills.
NACC = {0: 8, 1: 2, 2: 2}
NTASK = 2
QB = 8
#: Threads per block: at most this many (a power of two, at least MIN_THREADS).
MAX_THREADS = 256
MIN_THREADS = 64
#: Queries per tile, at most.
MAX_QT = 32
#: History rows per tile, at most.
MAX_TILE = 64
#: Shared memory per block, at most (the default limit of a CUDA block without opt-in).
SHARED_BYTES = 48 * 1024
#: Mode 1 (T for every column of C) with more column chunks than this falls back to the unfused
#: pass: each chunk streams P again, and one query group's T tasks cover d columns per chunk.
MAX_CHUNKS_MODE1 = 8
#: Kernel names in the module.
HISTORY_KERNEL = "bd_fused_history"
REDUCE_KERNEL = "bd_fused_reduce"
#: Modes of the pass (accel._simbase).
MODES = (0, 1, 2)
#: Index widths: C type of the index variable.
INDEX_TYPES = {32: "int", 64: "long long"}
DTYPES = {"float64": "double", "float32": "float"}

TARGET_MACROS = {
    "cuda": ("#define BD_DEVICE __device__ __forceinline__\n"
             "#define BD_GLOBAL __global__\n"
             "#define BD_SYNC() __syncthreads()\n"
             "#define BD_LAUNCH_BOUNDS(threads, blocks) __launch_bounds__(threads, blocks)\n"
             "#define BD_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]\n"),
    # accel.cudasim defines threadIdx, blockIdx, blockDim, gridDim, bd_sim_sync, bd_sim_shared
    "sim": ("#include <math.h>\n"
            "#define BD_DEVICE static inline\n"
            "#define BD_GLOBAL\n"
            "#define BD_SYNC() bd_sim_sync()\n"
            "#define BD_LAUNCH_BOUNDS(threads, blocks)\n"
            "#define BD_DYNAMIC_SHARED(name) unsigned char *name = bd_sim_shared()\n"),
}

KERNEL = r"""
/* ---- fused history pass (accel/fused_source.py; MATH 4) ---- */

/* shared memory: [Bc | An] float64, then [Zs | Ps | Cs | Kc | Ac] T, then the near flag; rows of
   Zs and Ps have an odd stride dp (threads of a warp read different rows at the same k) */
extern "C" BD_GLOBAL void BD_LAUNCH_BOUNDS(256, BD_MIN_BLOCKS) bd_fused_history(
    const T *__restrict__ P, const double *__restrict__ pn, const T *__restrict__ C,
    const T *__restrict__ Zw, const double *__restrict__ zn, const double *__restrict__ Zh,
    const double *__restrict__ chi,
    const long long M_, const long long q_, const long long d_, const long long dr_,
    const long long r0_, const long long nr_, const long long qt_, const long long tile_,
    const long long stride_, const double m, const double par, double *__restrict__ part)
{
    BD_DYNAMIC_SHARED(bd_smem);
    const bd_idx M = (bd_idx)M_, q = (bd_idx)q_, d = (bd_idx)d_, dr = (bd_idx)dr_;
    const bd_idx r0 = (bd_idx)r0_, nr = (bd_idx)nr_, qt = (bd_idx)qt_, tile = (bd_idx)tile_;
    const bd_idx tid = (bd_idx)threadIdx.x, nthr = (bd_idx)blockDim.x;
    const bd_idx b0 = (bd_idx)blockIdx.y * qt;
    const bd_idx nq = (q - b0 < qt) ? q - b0 : qt;
    const bd_idx ncs = (BD_MODE == 2) ? dr : nr;          /* columns of C kept per row */
    const bd_idx RR = (BD_MODE == 1) ? nr : (BD_MODE == 2 ? 1 : 0);
    const bd_idx NF = (BD_MODE == 2) ? 0 : nq * nr;
    const bd_idx NTT = RR * nq * d;
    const bd_idx npair = qt * tile;
    const bd_idx dp = d | 1;        /* odd row stride in shared memory: no bank conflicts across rows */

    double *Bc = (double *)bd_smem;
    double *An = Bc + ((BD_MODE != 0) ? npair : 0);
    T *Zs = (T *)(An + (BD_EXACT_NEAR ? npair : 0));
    T *Ps = Zs + qt * dp;
    T *Cs = Ps + tile * dp;
    T *Kc = Cs + tile * ncs;
    T *Ac = Kc + ((BD_MODE != 2) ? npair : 0);
    int *near_any = (int *)(Ac + ((BD_MODE != 0) ? npair : 0));

    const bd_idx ngq = (nq + BD_QB - 1) / BD_QB;           /* query groups of BD_QB */
    double accG[BD_NACC];                                   /* f and beta-sum outputs */
    T accT[BD_NTASK][BD_QB];                                /* T outputs ... */
    double acc64[BD_NTASK][BD_QB];                          /* ... their nearly parallel pairs (float32) */
#pragma unroll
    for (int a = 0; a < BD_NACC; ++a) accG[a] = 0.0;
#pragma unroll
    for (int a = 0; a < BD_NTASK; ++a)
#pragma unroll
        for (int u = 0; u < BD_QB; ++u) { accT[a][u] = (T)0; acc64[a][u] = 0.0; }

    for (bd_idx e = tid; e < nq * d; e += nthr) {
        const bd_idx b = e / d;
        Zs[b * dp + (e - b * d)] = Zw[b0 * d + e];
    }

    const bd_idx ntiles = (M + tile - 1) / tile;
    for (bd_idx t = (bd_idx)blockIdx.x; t < ntiles; t += (bd_idx)gridDim.x) {
        const bd_idx j0 = t * tile;
        const bd_idx nrow = (M - j0 < tile) ? M - j0 : tile;
        /* (1) load the tile */
        for (bd_idx e = tid; e < nrow * d; e += nthr) {
            const bd_idx j = e / d;
            Ps[j * dp + (e - j * d)] = P[j0 * d + e];
        }
        if (BD_MODE == 2) {
            for (bd_idx e = tid; e < nrow * dr; e += nthr) Cs[e] = C[j0 * dr + e];
        } else {
            for (bd_idx e = tid; e < nrow * nr; e += nthr) {
                const bd_idx j = e / nr;
                Cs[e] = C[(j0 + j) * dr + r0 + (e - j * nr)];
            }
        }
        if (tid == 0) *near_any = 0;
        BD_SYNC();
        /* (2) dot products (a task: BD_QB queries x one row; the row element is loaded once for
           BD_QB products), then the pair terms */
        for (bd_idx p = tid; p < ngq * nrow; p += nthr) {
            const bd_idx g = p / nrow, j = p - g * nrow;
            bd_idx zoff[BD_QB];
            T gd[BD_QB];
#pragma unroll
            for (int u = 0; u < BD_QB; ++u) {
                const bd_idx bu = g * BD_QB + u;
                zoff[u] = (bu < nq ? bu : nq - 1) * dp;      /* past the last query: a valid row, unused */
                gd[u] = (T)0;
            }
            for (bd_idx k = 0; k < d; ++k) {
                const T pv = Ps[j * dp + k];
#pragma unroll
                for (int u = 0; u < BD_QB; ++u) gd[u] += Zs[zoff[u] + k] * pv;
            }
#pragma unroll 1
            for (int u = 0; u < BD_QB; ++u) {
                const bd_idx b = g * BD_QB + u;
                if (b >= nq) break;
                T gu = gd[0];
#pragma unroll
                for (int v = 1; v < BD_QB; ++v) if (v == u) gu = gd[v];
                const double dot = (double)gu, znb = zn[b0 + b], pnj = pn[j0 + j];
                double minus2 = -1.0, plus2 = -1.0;
                if (bd_near(znb, pnj, dot)) {
                    minus2 = 0.0; plus2 = 0.0;
                    const double rpn = pnj > 0.0 ? 1.0 / pnj : 0.0;
                    for (bd_idx k = 0; k < d; ++k) {
                        const double y = (double)Ps[j * dp + k] * rpn, z = Zh[(b0 + b) * d + k];
                        minus2 += (z - y) * (z - y);
                        plus2 += (z + y) * (z + y);
                    }
                }
                const bd_terms tr = bd_pair(znb, pnj, dot, minus2, plus2, m, par);
                const bd_idx c = b * tile + j;
                if (BD_MODE != 2) Kc[c] = (T)tr.K;
                if (BD_MODE != 0) {
                    double w = 1.0;
                    if (BD_MODE == 2) {
                        w = 0.0;
                        for (bd_idx r = 0; r < dr; ++r) w += chi[(b0 + b) * dr + r] * (double)Cs[j * dr + r];
                    }
                    Bc[c] = tr.beta * w;
                    if (BD_EXACT_NEAR && minus2 >= 0.0) {
                        Ac[c] = (T)0;
                        An[c] = tr.alpha * w;
                        *near_any = 1;
                    } else {
                        Ac[c] = (T)(tr.alpha * w);
                        if (BD_EXACT_NEAR) An[c] = 0.0;
                    }
                }
            }
        }
        BD_SYNC();
        /* (3) accumulate the tile into the outputs this thread owns */
        const int any_near = BD_EXACT_NEAR ? *near_any : 0;
#pragma unroll
        for (int a = 0; a < BD_NACC; ++a) {                 /* f and beta sums, one output each */
            const bd_idx e = tid + (bd_idx)a * nthr;
            if (e < NF) {                                   /* f[b, r] */
                const bd_idx b = e / nr, r = e - b * nr;
                T s = (T)0;
                for (bd_idx j = 0; j < nrow; ++j) s += Kc[b * tile + j] * Cs[j * nr + r];
                accG[a] += (double)s;
            } else if (e < NF + RR * nq) {                  /* bsum[r, b] */
                const bd_idx o3 = e - NF, r = o3 / nq, b = o3 - r * nq;
                double s = 0.0;
                for (bd_idx j = 0; j < nrow; ++j)
                    s += Bc[b * tile + j] * ((BD_MODE == 1) ? (double)Cs[j * nr + r] : 1.0);
                accG[a] += s;
            }
        }
#pragma unroll
        for (int a = 0; a < BD_NTASK; ++a) {                /* T[r, b, k] for BD_QB queries b */
            const bd_idx tk = tid + (bd_idx)a * nthr;
            if (BD_MODE != 0 && tk < RR * ngq * d) {
                const bd_idx k = tk % d, rest = tk / d, g = rest % ngq, r = rest / ngq;
                bd_idx coff[BD_QB];
                T s[BD_QB];
#pragma unroll
                for (int u = 0; u < BD_QB; ++u) {
                    const bd_idx bu = g * BD_QB + u;
                    coff[u] = (bu < nq ? bu : nq - 1) * tile;
                    s[u] = (T)0;
                }
                for (bd_idx j = 0; j < nrow; ++j) {
                    T pv = Ps[j * dp + k];
                    if (BD_MODE == 1) pv *= Cs[j * nr + r];
#pragma unroll
                    for (int u = 0; u < BD_QB; ++u) s[u] += Ac[coff[u] + j] * pv;
                }
#pragma unroll
                for (int u = 0; u < BD_QB; ++u) accT[a][u] += s[u];
                if (BD_EXACT_NEAR && any_near) {
                    double s64[BD_QB];
#pragma unroll
                    for (int u = 0; u < BD_QB; ++u) s64[u] = 0.0;
                    for (bd_idx j = 0; j < nrow; ++j) {
                        const double pv = (double)Ps[j * dp + k] * ((BD_MODE == 1) ? (double)Cs[j * nr + r] : 1.0);
#pragma unroll
                        for (int u = 0; u < BD_QB; ++u) s64[u] += An[coff[u] + j] * pv;
                    }
#pragma unroll
                    for (int u = 0; u < BD_QB; ++u) acc64[a][u] += s64[u];
                }
            }
        }
        BD_SYNC();
    }
    double *mine = part + ((bd_idx)blockIdx.y * (bd_idx)gridDim.x + (bd_idx)blockIdx.x) * (bd_idx)stride_;
#pragma unroll
    for (int a = 0; a < BD_NACC; ++a) {
        const bd_idx e = tid + (bd_idx)a * nthr;
        if (e < NF) mine[e] = accG[a];
        else if (e < NF + RR * nq) mine[NTT + e] = accG[a];
    }
#pragma unroll
    for (int a = 0; a < BD_NTASK; ++a) {
        const bd_idx tk = tid + (bd_idx)a * nthr;
        if (BD_MODE != 0 && tk < RR * ngq * d) {
            const bd_idx k = tk % d, rest = tk / d, g = rest % ngq, r = rest / ngq;
#pragma unroll
            for (int u = 0; u < BD_QB; ++u) {
                const bd_idx b = g * BD_QB + u;
                if (b < nq) mine[NF + r * (nq * d) + b * d + k] = (double)accT[a][u] + acc64[a][u];
            }
        }
    }
}

/* out[y, o] = sum_x part[y, x, o], x in order: one thread per output, grid-stride */
extern "C" BD_GLOBAL void bd_fused_reduce(const double *__restrict__ part, const long long nparts_,
                                          const long long stride_, const long long ny_,
                                          double *__restrict__ out)
{
    const bd_idx nparts = (bd_idx)nparts_, stride = (bd_idx)stride_, total = (bd_idx)ny_ * stride;
    for (bd_idx e = (bd_idx)blockIdx.x * (bd_idx)blockDim.x + (bd_idx)threadIdx.x; e < total;
         e += (bd_idx)gridDim.x * (bd_idx)blockDim.x) {
        const bd_idx y = e / stride, o = e - y * stride;
        double s = 0.0;
        for (bd_idx x = 0; x < nparts; ++x) s += part[(y * nparts + x) * stride + o];
        out[e] = s;
    }
}
"""


def exact_near(arch, dtype, mode):
    """Whether nearly parallel pairs' Xi terms go to the float64 accumulators (float32 relu, modes 1-2)."""
    return int(arch == "relu" and np.dtype(dtype) == np.float32 and mode != 0)


def source(arch, dtype, mode, index_bits, target="cuda"):
    """The module source (both kernels) of one variant.

    Parameters
    ----------
    arch : str
        Key of :data:`accel.pair_source.ARCH` ("relu", "linear").
    dtype : str or dtype
        Working dtype T of P, C, the dot products and the f / T sums: "float64" or "float32".
    mode : int
        0 (f), 1 (f, T, bsum with w = C), 2 (T, bsum with w = C . chi); see accel._simbase.
    index_bits : int
        32 or 64: the C type ``bd_idx`` of every index computation.
    target : str
        "cuda" (NVRTC) or "sim" (:mod:`accel.cudasim`).
    """
    dt = np.dtype(dtype).name
    if dt not in DTYPES:
        raise ValueError(f"dtype: expected float64 or float32, got {dtype!r}")
    if mode not in MODES:
        raise ValueError(f"mode: expected 0, 1 or 2, got {mode!r}")
    if index_bits not in INDEX_TYPES:
        raise ValueError(f"index_bits: expected 32 or 64, got {index_bits!r}")
    if target not in TARGET_MACROS:
        raise ValueError(f"target: expected one of {sorted(TARGET_MACROS)}, got {target!r}")
    # the architecture's device functions, exactly as accel.pair_source writes them
    device_functions = pair_source.preamble(arch, "cuda")
    device_functions = device_functions[len(pair_source.TARGET_MACROS["cuda"]):]
    return "".join([
        TARGET_MACROS[target],
        f"typedef {DTYPES[dt]} T;\n",
        f"typedef {INDEX_TYPES[index_bits]} bd_idx;\n",
        f"#define BD_MODE {int(mode)}\n",
        f"#define BD_EXACT_NEAR {exact_near(arch, dt, mode)}\n",
        f"#define BD_NACC {NACC[mode]}\n#define BD_NTASK {NTASK}\n#define BD_QB {QB}\n",
        # at most 128 registers (2 blocks of 256 threads per SM) with 32-bit indices; 64-bit
        # indices (only past 2^31 elements) need more and get 1 block per SM rather than spills
        f"#define BD_MIN_BLOCKS {2 if index_bits == 32 else 1}\n",
        device_functions,
        KERNEL,
    ])


#: Options passed to ``cupy.RawModule`` (CuPy adds the -arch of the device itself).  None: the
#: source is plain C++11 and compiles in NVRTC's default dialect (C++17 in CUDA 12 and 13), so no
#: ``--std`` that a newer NVRTC could refuse.
NVRTC_OPTIONS = ()


def variant_name(arch, dtype, mode, index_bits):
    return f"bd_fused_{arch}_{np.dtype(dtype).name}_mode{mode}_i{index_bits}"


def cuda_sources():
    """Every CUDA source variant the gpu backend's fused pass can generate.

    Returns
    -------
    list of (name, source, options)
        One entry per arch (:data:`accel.pair_source.ARCH`) x dtype (float64, float32) x mode
        (0, 1, 2) x index width (32, 64): ``name`` a unique identifier, ``source`` the text
        handed to ``cupy.RawModule(code=source, options=options)`` (kernels
        ``bd_fused_history`` and ``bd_fused_reduce``, ``extern "C"``), ``options`` a tuple of
        NVRTC options (CuPy adds ``-arch`` for the device; a compile test adds its own).
    """
    out = []
    for arch in sorted(pair_source.ARCH):
        for dtype in DTYPES:
            for mode in MODES:
                for bits in INDEX_TYPES:
                    out.append((variant_name(arch, dtype, mode, bits), source(arch, dtype, mode, bits),
                                NVRTC_OPTIONS))
    return out


# ---------------------------------------------------------------------------- launch plan
def outputs_per_query(mode, d, nr):
    """Outputs of one query: f (nr) in modes 0-1, T (R d) and bsum (R) in modes 1-2."""
    if mode == 0:
        return nr
    if mode == 1:
        return nr * (d + 2)
    return d + 1


def shared_bytes(mode, exact, itemsize, d, dr, nr, qt, tile):
    """Bytes of shared memory of one block (the layout of ``bd_fused_history``)."""
    npair = qt * tile
    ncs = dr if mode == 2 else nr
    n64 = (npair if mode != 0 else 0) + (npair if exact else 0)
    dp = d | 1
    nT = qt * dp + tile * dp + tile * ncs + (npair if mode != 2 else 0) + (npair if mode != 0 else 0)
    return 8 * n64 + itemsize * nT + 8


def plan(q, M, d, dr, mode, dtype, arch):
    """Launch plan of the fused pass, or None where a one-row tile would not fit.

    Returns a dict: ``qt`` (queries per tile), ``chunks`` (list of (r0, nr) column chunks of C;
    one (0, dr) chunk unless the query tile's f outputs exceed ``NACC[mode] * MAX_THREADS`` or its T
    tasks ``NTASK * MAX_THREADS``),
    ``tile`` (history rows per tile), ``threads`` (block size), ``shared`` (bytes),
    ``stride`` (outputs per block, the row length of the partial buffer), ``index_bits``.
    """
    itemsize = np.dtype(dtype).itemsize
    exact = exact_near(arch, dtype, mode)
    cap_g, cap_t = NACC[mode] * MAX_THREADS, NTASK * MAX_THREADS     # f / beta-sum outputs, T tasks
    qt = min(MAX_QT, q)
    if mode != 0:
        groups = cap_t // d                                     # query groups of QB per T column
        if groups < 1:
            return None
        qt = min(qt, groups * QB)
    ngq = -(-qt // QB)
    if mode == 0:
        nr = min(dr, cap_g // qt)
    elif mode == 1:
        nr = min(dr, cap_t // (ngq * d), cap_g // (2 * qt))
    else:
        nr = dr
    chunks = [(r0, min(nr, dr - r0)) for r0 in range(0, dr, nr)] if mode != 2 else [(0, dr)]
    if mode == 1 and len(chunks) > MAX_CHUNKS_MODE1:
        return None            # e.g. a Jacobian at dr = 784: the GEMM pass streams P far fewer times
    fixed = shared_bytes(mode, exact, itemsize, d, dr, nr, qt, 0)
    per_row = shared_bytes(mode, exact, itemsize, d, dr, nr, qt, 1) - fixed
    tile = min(MAX_TILE, M, (SHARED_BYTES - fixed) // per_row) if SHARED_BYTES > fixed else 0
    if tile < 1:
        return None
    stride = qt * outputs_per_query(mode, d, nr)
    rr = {0: 0, 1: nr, 2: 1}[mode]
    generic, tasks = qt * ((nr if mode != 2 else 0) + rr), rr * ngq * d
    threads = MIN_THREADS
    while threads < MAX_THREADS and (threads * NACC[mode] < generic or threads * NTASK < tasks):
        threads *= 2
    nqt = -(-q // qt)
    biggest = max(M * max(d, dr), q * max(d, dr), stride * nqt * 1024, qt * tile)
    return dict(qt=qt, chunks=chunks, tile=int(tile), threads=threads,
                shared=shared_bytes(mode, exact, itemsize, d, dr, nr, qt, tile), stride=stride,
                index_bits=32 if biggest < 2**31 else 64)


def grid(pl, q, M, multiprocessors):
    """(gx, gy) of ``bd_fused_history`` for plan ``pl``: gy query tiles; gx blocks per query tile,
    about 4 per multiprocessor in all (at least 1 per query tile), each taking every gx-th history tile."""
    gy = -(-q // pl["qt"])
    ntiles = -(-M // pl["tile"])
    return max(1, min(ntiles, 1024, -(-4 * multiprocessors // gy))), gy


def pass_counts(q, M, d, dr, mode, dtype, arch, multiprocessors=132):
    """Global-memory traffic and launches of one fused pass, from :func:`plan` and :func:`grid`.

    Returns a dict: ``bytes`` (total), ``parts`` ({what: bytes}: history rows P, norms pn and C as
    streamed per query tile and column chunk, the queries, the partial buffer written and read,
    the reduced output; what the blocks request, an upper bound on DRAM traffic: blocks of
    different query tiles walk the history in the same order, so concurrently resident blocks
    share tiles through L2), ``kernels`` (launches, including the float32 cast of the queries and the
    concatenation of column chunks), ``h2d`` and ``d2h`` (host copies: one each way),
    ``plan`` and ``grid``.  Not counted: the rows of nearly parallel pairs' explicit differences
    (read from the shared tile) and the unit query rows Zh read for them (a few KB, cached).
    """
    pl = plan(q, M, d, dr, mode, dtype, arch)
    if pl is None:
        return None
    it = np.dtype(dtype).itemsize
    gx, gy = grid(pl, q, M, multiprocessors)
    chunks = pl["chunks"]
    parts = {
        "P": len(chunks) * gy * M * d * it,
        "pn": len(chunks) * gy * M * 8,
        "C": gy * M * dr * it,
        "queries": (q * d * it + q * 8) * gx * len(chunks) + (q * dr * 8 * gx if mode == 2 else 0),
        "partials": 2 * len(chunks) * gx * gy * pl["stride"] * 8,
        "output": len(chunks) * gy * pl["stride"] * 8,
    }
    kernels = 2 * len(chunks) + (np.dtype(dtype) != np.float64) + (len(chunks) > 1)
    return dict(bytes=sum(parts.values()), parts=parts, kernels=int(kernels), h2d=1, d2h=1, plan=pl,
                grid=(gx, gy))
