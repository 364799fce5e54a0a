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
* per tile: (1) the block loads the tile of P (and its columns of C) into shared memory by
  asynchronous copies (``cp.async`` on sm_80+, each thread's copies all in flight until one wait; a
  plain load and store before sm_80), rows at an odd stride (threads of a warp reading different rows
  at one k hit different banks; 4 mod 8 with tensor cores);
  (2) each thread takes tasks of ``BD_QB`` queries x two rows (register tiles): the dot products
  z_b . p_j in the working dtype T (as the GEMM of the unfused pass); the query tile is kept
  transposed by groups of BD_QB, so per k two row elements and BD_QB / BD_VW 128-bit broadcast loads
  serve 2 BD_QB multiply-adds; the dot products go to shared memory, then the pair terms through
  the architecture's device functions ``bd_near`` / ``bd_pair`` of :data:`accel.pair_source.ARCH`
  (the same text as the elementwise kernels; nearly (anti-)parallel pairs recomputed from explicit
  differences in float64, MATH §2.1), written as coefficients to shared memory (the Xi weights
  transposed by query group like the queries);
  (3) each thread owns, in registers, up to ``BD_NACC`` f or beta-sum outputs and ``BD_NTASK`` T
  tasks of ``TCOLS`` = 2 columns (k and k + nk / 2) of T for BD_QB queries (again two row elements
  and BD_QB / BD_VW broadcast loads per 2 BD_QB multiply-adds), and adds the tile's contribution;
* at the end each block writes its outputs (a partial sum over its tiles, float64) to
  ``part[(y, x), :]``; ``bd_fused_reduce`` sums the partials over x in a fixed order
  (deterministic), giving ``out[y, :]`` = [f (nq, nr) | T (R, nq, d) | bsum (R, nq)].

Float32 histories: dot products and f / T sums run in float32 (as the float32 GEMMs did);
beta sums in float64; the Xi term of a nearly parallel pair (alpha ~ 1/sin, cancelling against
beta) is accumulated in a float64 twin of the owning thread's accumulators, so there are no atomics
(each output belongs to one thread of one block).

Outputs per block are at most ``BD_NACC * blockDim.x`` f / beta-sum entries and
``BD_NTASK * blockDim.x`` T tasks; :func:`plan` picks the query tile and the launches ("chunks",
(r0, nr, k0, nk)): for wide outputs (dr up to 784, the MNIST autoencoder) the columns of C are split
(r0, nr), and for wide bottlenecks (d above 512 / query groups) the columns of T (k0, nk); each
launch streams P once more (the dot products need whole rows), but every element of C is read once
per query tile and launch and never per query.  Mode 2 needs C_m . chi_b, so it keeps the whole row
of C in the shared tile.  The query tile (up to 64 queries) shrinks (down to one query) until a tile
of history rows fits beside it, first in half a multiprocessor's shared memory (113 KiB on sm_90: two
blocks per SM, all the registers allow), else in the device's opt-in maximum (227 KiB on sm_90); above
48 KiB the launch raises the kernel's limit through the driver API.  So every shape of the
campaign (d up to 1000, dr = 10, batches of 20 and 10,000 test queries) runs fused.  :func:`plan`
returns None, and the engine uses the unfused GEMM pass (:mod:`accel.xpcore`), only where a one-row
tile with one query does not fit in the opt-in maximum (a row of C above ~200 KiB in mode 2, d above
~14,000 in float64) or mode 1 needs more than ``MAX_CHUNKS_MODE1`` launches (a Jacobian at dr = 784).

FP64 tensor cores (``mma``, opt-in): the two products of a tile run as ``mma.sync`` m8n8k4 warp
operations, a warp task being 2 query groups x 2 blocks of 8 rows (dot products) or of 8 columns of T;
``#if BD_MMA`` / ``#else`` blocks of the text, of which :func:`source` keeps the selected branch.

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
#: have few f / beta-sum outputs and need the registers for T: 2 (mode 1) and 1 (mode 2: only the
#: query tile's beta sums, at most MAX_QT) keep them within 128 registers (2 blocks per SM) without
#: spills.
NACC = {0: 8, 1: 2, 2: 1}
NTASK = 1
#: With tensor cores (``mma``): a warp task is MMA_QG query groups x MMA_RB blocks of 8 rows (dot products) or
#: of 8 columns of T (T sums), each block pair one m8n8k4 operation per step of 4, so that per step MMA_QG + MMA_RB
#: fragment loads serve MMA_QG x MMA_RB operations (0.25 shared-memory wavefronts per warp-wide multiply-add at
#: 2 x 2, as the plain float32 kernel; 0.5 at 1 x 1); NWT T tasks per warp, held as two float64 per lane per
#: block pair (NWT x 2 x 2 x 2 = the same 16 registers of T outputs per thread as NTASK tasks of TCOLS x QB).
MMA_QG = 2
MMA_RB = 2
NWT = 2
#: With tensor cores: the tile's rows come in whole blocks of this many (and the columns of T of a task in
#: MMA_RB blocks of this many).
MMA_COLS = 8
#: Columns of T per task (c and c + nk / 2: two row elements per BD_QB weights loaded).
TCOLS = 2
QB = 8
#: Threads per block: at most this many (a power of two, at least MIN_THREADS; :func:`plan` takes at least 128).
MAX_THREADS = 256
MIN_THREADS = 64
#: Queries per tile, at most.
MAX_QT = 64
#: History rows per tile, at most.
MAX_TILE = 128
#: Shared memory per block without opt-in (the default limit of a CUDA kernel); more needs the kernel
#: attribute raised before the launch, up to the device's opt-in maximum.
SHARED_BYTES = 48 * 1024
#: The opt-in maximum of sm_90 (H100, H200: 227 KiB per block), used by :func:`pass_counts` and the
#: stand-in (sm_80: 163 KiB).
SHARED_OPTIN_SM90 = 227 * 1024
#: Shared memory per block that still lets two blocks share a multiprocessor on sm_90 (228 KiB per SM,
#: 1 KiB reserved per block): the register budget of ``__launch_bounds__(256, 2)`` allows two blocks per
#: SM, so a tile up to this size costs no occupancy (sm_80: 164 / 2 - 1 = 81 KiB).
SHARED_TWO_BLOCKS_SM90 = 228 * 1024 // 2 - 1024
#: History rows per tile, at least, before a smaller query tile or the opt-in limit is tried.
MIN_TILE = 16
#: Mode 1 (T for every column of C) with more launches (column chunks of C x of T) than this falls back to
#: the unfused pass: each launch streams P again.
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
             "#define BD_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]\n"
             # D (8 x 8) += A (8 x 4, row) B (4 x 8, col) on the FP64 tensor cores, one warp (sm_80+)
             "#define BD_MMA_F64(d0, d1, a, b) asm volatile(\"mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 "
             "{%0,%1}, {%2}, {%3}, {%0,%1};\" : \"+d\"(d0), \"+d\"(d1) : \"d\"(a), \"d\"(b))\n"
             # one element global -> shared without a register, asynchronous until BD_CP_WAIT() (sm_80+: cp.async;
             # older devices: a plain load and store)
             "#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800\n"
             "#define BD_CP_ASYNC(dst, src) asm volatile(\"cp.async.ca.shared.global [%0], [%1], %2;\" :: "
             "\"r\"((unsigned)__cvta_generic_to_shared(dst)), \"l\"(src), \"n\"((int)sizeof(*(src))) : \"memory\")\n"
             "#define BD_CP_WAIT() asm volatile(\"cp.async.wait_all;\" ::: \"memory\")\n"
             "#else\n"
             "#define BD_CP_ASYNC(dst, src) (*(dst) = *(src))\n"
             "#define BD_CP_WAIT() ((void)0)\n"
             "#endif\n"),
    # accel.cudasim defines threadIdx, blockIdx, blockDim, gridDim, bd_sim_sync, bd_sim_shared
    "sim": ("#include <math.h>\n"
            "#define BD_DEVICE static inline\n"
            "#define BD_GLOBAL\n"
            "#define BD_SYNC() bd_sim_sync()\n"
            "#define BD_LAUNCH_BOUNDS(threads, blocks)\n"
            "#define BD_DYNAMIC_SHARED(name) unsigned char *name = bd_sim_shared()\n"
            "#define BD_MMA_F64(d0, d1, a, b) bd_sim_mma(&(d0), &(d1), (a), (b))\n"
            "#define BD_CP_ASYNC(dst, src) bd_sim_cp_async((void *)(dst), (const void *)(src), sizeof(*(src)))\n"
            "#define BD_CP_WAIT() bd_sim_cp_wait()\n"),
}

KERNEL = r"""
/* ---- fused history pass (accel/fused_source.py; MATH 4) ---- */

#if !BD_MMA
/* BD_QB consecutive values at p (16-byte aligned, shared memory) into v: BD_QB / BD_VW 128-bit loads, each a
   broadcast when the lanes of a warp read the same group (one shared-memory wavefront for BD_VW values) */
BD_DEVICE void bd_load_qb(T *v, const T *p)
{
    const bd_vec *pv = (const bd_vec *)p;
#pragma unroll
    for (int i = 0; i < BD_QB / BD_VW; ++i) {
        const bd_vec x = pv[i];
        BD_UNPACK(v, i, x);
    }
}
#endif

/* the pair (query b, row j of the tile): K, and the Xi weights alpha w and beta w (w = 1, or C_j . chi_b in mode
   2) into the tile's coefficient arrays; nearly (anti-)parallel pairs from explicit differences (MATH 2.1) */
BD_DEVICE void bd_tile_pair(const bd_idx b, const bd_idx j, const bd_idx b0, const bd_idx j0, const bd_idx d,
                            const bd_idx dp, const bd_idx dr, const bd_idx tile, const T *Gd, const T *Ps,
                            const T *Cs, const double *__restrict__ zn, const double *__restrict__ pn,
                            const double *__restrict__ Zh, const double *__restrict__ chi, const double m,
                            const double par, T *Kc, double *Bc, T *At, double *An, int *near_any)
{
    const bd_idx g = b / BD_QB, u = b - g * BD_QB;
    const double dot = (double)Gd[b * tile + j], znb = zn[b0 + b], pnj = pn[j0 + j];
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
        const bd_idx ct = (g * tile + j) * BD_QB + u;
        Bc[c] = tr.beta * w;
        if (BD_EXACT_NEAR && minus2 >= 0.0) {
            At[ct] = (T)0;
            An[c] = tr.alpha * w;
            *near_any = 1;
        } else {
            At[ct] = (T)(tr.alpha * w);
            if (BD_EXACT_NEAR) An[c] = 0.0;
        }
    }
}

/* shared memory, each part 16-byte aligned: [Bc | An] float64, then [Zt | At | Ps | Cs | Kc] T, then the near
   flag.  Zt (the query tile) and At (the Xi weights alpha w of the tile's pairs) are transposed by query group:
   the BD_QB queries of a group are contiguous, so one 128-bit broadcast load gives BD_VW of them; rows of Ps
   have an odd stride dp (threads of a warp read different rows at the same k: no bank conflicts) */
extern "C" BD_GLOBAL void BD_LAUNCH_BOUNDS(256, BD_MIN_BLOCKS) bd_fused_history(
    const T *__restrict__ P, const double *__restrict__ pn, const T *__restrict__ C,
    const T *__restrict__ Zw, const double *__restrict__ zn, const double *__restrict__ Zh,
    const double *__restrict__ chi,
    const long long M_, const long long q_, const long long d_, const long long dr_,
    const long long r0_, const long long nr_, const long long k0_, const long long nk_,
    const long long qt_, const long long tile_,
    const long long stride_, const double m, const double par, double *__restrict__ part)
{
    BD_DYNAMIC_SHARED(bd_smem);
    const bd_idx M = (bd_idx)M_, q = (bd_idx)q_, d = (bd_idx)d_, dr = (bd_idx)dr_;
    const bd_idx r0 = (bd_idx)r0_, nr = (bd_idx)nr_, qt = (bd_idx)qt_, tile = (bd_idx)tile_;
    const bd_idx k0 = (bd_idx)k0_, nk = (bd_idx)nk_;      /* the columns k0 .. k0 + nk - 1 of T */
    const bd_idx tid = (bd_idx)threadIdx.x, nthr = (bd_idx)blockDim.x;
    const bd_idx b0 = (bd_idx)blockIdx.y * qt;
    const bd_idx nq = (q - b0 < qt) ? q - b0 : qt;
    const bd_idx ncs = (BD_MODE == 2) ? dr : nr;          /* columns of C kept per row */
    const bd_idx RR = (BD_MODE == 1) ? nr : (BD_MODE == 2 ? 1 : 0);
    const bd_idx NF = (BD_MODE == 2) ? 0 : nq * nr;
    const bd_idx NTT = RR * nq * nk;
    const bd_idx npair = qt * tile;
    /* row stride of the tile in shared memory: odd (threads of a warp reading different rows at one k hit
       different banks); with tensor cores 4 mod 8 (the 32 lanes of a fragment load, 8 rows x 4 columns or
       4 rows x 8 columns, cover each bank pair twice: two wavefronts, the least for 32 doubles) */
#if BD_MMA
    const bd_idx dp = d + (12 - d % 8) % 8;
#else
    const bd_idx dp = d | 1;
#endif
    const bd_idx ngq = (nq + BD_QB - 1) / BD_QB;           /* query groups of BD_QB */
    const bd_idx nqp = ((qt + BD_QB - 1) / BD_QB) * BD_QB;  /* the tile's queries, padded to whole groups */
#if !BD_MMA
    const bd_idx nkh = (nk + 1) / 2;                        /* a T task: columns c and c + nkh */
#endif

    double *Bc = (double *)bd_smem;
    double *An = Bc + ((BD_MODE != 0) ? npair : 0);
    const bd_idx n64 = ((BD_MODE != 0) ? npair : 0) + (BD_EXACT_NEAR ? npair : 0);
    T *Zt = (T *)(Bc + ((n64 + 1) / 2) * 2);
    T *At = Zt + nqp * d;
    T *Ps = At + ((BD_MODE != 0) ? nqp * tile : 0);
    T *Cs = Ps + tile * dp;
    T *Kc = Cs + tile * ncs;
    T *Gd = Kc + ((BD_MODE != 2) ? npair : 0);            /* the tile's dot products, Gd[b tile + j] */
    int *near_any = (int *)(Gd + npair);

    double accG[BD_NACC];                                   /* f and beta-sum outputs */
#if BD_MMA
    /* tensor cores: this warp's T tasks, each BD_MQG query groups x BD_MCB column blocks of 8 (16 queries x 16
       columns of T), as D fragments: row lane / 4 (query), columns 2 (lane % 4) + {0, 1} */
    const bd_idx lane = tid & 31, wid = tid >> 5, nw = nthr >> 5, lr = lane >> 2, lc = lane & 3;
    const bd_idx ngp = (ngq + BD_MQG - 1) / BD_MQG;          /* query-group sets of a warp task */
    const bd_idx nkb = (nk + 7) / 8, nkp = (nkb + BD_MCB - 1) / BD_MCB;   /* column blocks of 8, and their sets */
    double accM[BD_NWT][BD_MQG][BD_MCB][2];
#pragma unroll
    for (int a = 0; a < BD_NWT; ++a)
#pragma unroll
        for (int i = 0; i < BD_MQG; ++i)
#pragma unroll
            for (int c = 0; c < BD_MCB; ++c) { accM[a][i][c][0] = 0.0; accM[a][i][c][1] = 0.0; }
#else
    T accT[BD_NTASK][2][BD_QB];                             /* T outputs ... */
    double acc64[BD_NTASK][2][BD_QB];                       /* ... their nearly parallel pairs (float32) */
#pragma unroll
    for (int a = 0; a < BD_NTASK; ++a)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int u = 0; u < BD_QB; ++u) { accT[a][h][u] = (T)0; acc64[a][h][u] = 0.0; }
#endif
#pragma unroll
    for (int a = 0; a < BD_NACC; ++a) accG[a] = 0.0;

    for (bd_idx e = tid; e < ngq * BD_QB * d; e += nthr) {  /* Zt[(g d + k) QB + u] = Z[g QB + u, k], 0 past nq */
        const bd_idx u = e % BD_QB, gk = e / BD_QB, g = gk / d, k = gk - g * d;
        const bd_idx b = g * BD_QB + u;
        Zt[e] = (b < nq) ? Zw[(b0 + b) * d + k] : (T)0;
    }

    const bd_idx ntiles = (M + tile - 1) / tile;
    for (bd_idx t = (bd_idx)blockIdx.x; t < ntiles; t += (bd_idx)gridDim.x) {
        const bd_idx j0 = t * tile;
        const bd_idx nrow = (M - j0 < tile) ? M - j0 : tile;
        /* (1) load the tile: asynchronous copies (no register, no wait per element: every copy of the block in
           flight at once), then each thread waits for its own and the barrier for everyone's */
        for (bd_idx e = tid; e < nrow * d; e += nthr) {
            const bd_idx j = e / d;
            BD_CP_ASYNC(&Ps[j * dp + (e - j * d)], &P[j0 * d + e]);
        }
        if (BD_MODE == 2) {
            for (bd_idx e = tid; e < nrow * dr; e += nthr) BD_CP_ASYNC(&Cs[e], &C[j0 * dr + e]);
        } else {
            for (bd_idx e = tid; e < nrow * nr; e += nthr) {
                const bd_idx j = e / nr;
                BD_CP_ASYNC(&Cs[e], &C[(j0 + j) * dr + r0 + (e - j * nr)]);
            }
        }
        if (tid == 0) *near_any = 0;
        BD_CP_WAIT();
        BD_SYNC();
        /* (2) dot products (a task: BD_QB queries x two rows, ja and jb = ja + njp; per k two row elements
           and BD_QB / BD_VW broadcast loads of query values serve 2 BD_QB multiply-adds), then the pair terms */
#if BD_MMA
        /* tensor cores: a warp task is BD_MQG query groups x BD_MRB row blocks of 8 (16 queries x 16 rows) of dot
           products, D += A B over k in steps of 4 with A (8 x 4) = a group's queries at k .. k + 3 (lane: query lr,
           k + lc) and B (4 x 8) = a row block's (lane: k + lc, row lr): per k, BD_MQG + BD_MRB fragment loads serve
           BD_MQG BD_MRB operations.  Sets past the last group or row block skip their operations (warp-uniform);
           rows past nrow within a block give columns of D that are not used, and columns past d are zero in A and
           B (shared memory past them is not written) */
        const bd_idx nrb = (nrow + 7) / 8, nrs = (nrb + BD_MRB - 1) / BD_MRB;
        for (bd_idx wt = wid; wt < ngp * nrs; wt += nw) {   /* the same trip count for the lanes of a warp */
            const bd_idx gs = wt / nrs, rs = wt - gs * nrs;
            const T *za[BD_MQG], *pb[BD_MRB];
            bool gok[BD_MQG], rok[BD_MRB];
            double c0[BD_MQG][BD_MRB], c1[BD_MQG][BD_MRB];
#pragma unroll
            for (int i = 0; i < BD_MQG; ++i) {
                const bd_idx g = gs * BD_MQG + i;
                gok[i] = g < ngq;
                za[i] = Zt + (gok[i] ? g : 0) * d * BD_QB + lc * BD_QB + lr;
            }
#pragma unroll
            for (int r = 0; r < BD_MRB; ++r) {
                const bd_idx jb8 = (rs * BD_MRB + r) * 8;
                rok[r] = jb8 < nrow;
                pb[r] = Ps + ((rok[r] ? jb8 : 0) + lr) * dp + lc;
            }
#pragma unroll
            for (int i = 0; i < BD_MQG; ++i)
#pragma unroll
                for (int r = 0; r < BD_MRB; ++r) { c0[i][r] = 0.0; c1[i][r] = 0.0; }
            const bd_idx d4 = d - d % 4;
            for (bd_idx k = 0; k <= d4; k += 4) {
                if (k == d4 && k == d) break;
                const bool kok = k < d4 || lc < d - d4;      /* the last step: columns past d are zero */
                double av[BD_MQG], bv[BD_MRB];
#pragma unroll
                for (int i = 0; i < BD_MQG; ++i) av[i] = kok ? (double)za[i][k * BD_QB] : 0.0;
#pragma unroll
                for (int r = 0; r < BD_MRB; ++r) bv[r] = kok ? (double)pb[r][k] : 0.0;
#pragma unroll
                for (int i = 0; i < BD_MQG; ++i)
#pragma unroll
                    for (int r = 0; r < BD_MRB; ++r)
                        if (gok[i] && rok[r]) BD_MMA_F64(c0[i][r], c1[i][r], av[i], bv[r]);
            }
#pragma unroll
            for (int i = 0; i < BD_MQG; ++i)
#pragma unroll
                for (int r = 0; r < BD_MRB; ++r) {
                    const bd_idx b = (gs * BD_MQG + i) * BD_QB + lr, ja = (rs * BD_MRB + r) * 8 + 2 * lc;
                    if (gok[i] && b < nq) {                  /* D: query lr, rows ja, ja + 1 */
                        if (ja < nrow) Gd[b * tile + ja] = (T)c0[i][r];
                        if (ja + 1 < nrow) Gd[b * tile + ja + 1] = (T)c1[i][r];
                    }
                }
        }
        BD_SYNC();
        /* the pair terms, one pair per thread and iteration */
        for (bd_idx p = tid; p < ngq * BD_QB * nrow; p += nthr) {
            const bd_idx b = p / nrow, j = p - b * nrow, g = b / BD_QB, u = b - g * BD_QB;
            if (b >= nq) {                                   /* padded queries: zero weights */
                if (BD_MODE != 0) At[(g * tile + j) * BD_QB + u] = (T)0;
                continue;
            }
            bd_tile_pair(b, j, b0, j0, d, dp, dr, tile, Gd, Ps, Cs, zn, pn, Zh, chi, m, par, Kc, Bc, At, An,
                         near_any);
        }
#else
        const bd_idx njp = (nrow + 1) / 2;
        for (bd_idx p = tid; p < ngq * njp; p += nthr) {
            const bd_idx g = p / njp, jp = p - g * njp;
            const bd_idx ja = jp, jb = (jp + njp < nrow) ? jp + njp : jp;   /* no second row: ja again, unused */
            T ga[BD_QB], gb[BD_QB];
#pragma unroll
            for (int u = 0; u < BD_QB; ++u) { ga[u] = (T)0; gb[u] = (T)0; }
            const T *zg = Zt + g * d * BD_QB;
            const T *pa = Ps + ja * dp, *pb = Ps + jb * dp;
            for (bd_idx k = 0; k < d; ++k) {
                T zv[BD_QB];
                bd_load_qb(zv, zg + k * BD_QB);
                const T va = pa[k], vb = pb[k];
#pragma unroll
                for (int u = 0; u < BD_QB; ++u) { ga[u] += zv[u] * va; gb[u] += zv[u] * vb; }
            }
#pragma unroll
            for (int u = 0; u < BD_QB; ++u) {              /* to shared memory: no dot product stays in a
                                                              register through the pair terms below */
                const bd_idx b = g * BD_QB + u;
                if (b < nq) { Gd[b * tile + ja] = ga[u]; Gd[b * tile + jb] = (jb == ja) ? ga[u] : gb[u]; }
            }
#pragma unroll 1
            for (int h = 0; h < 2; ++h) {
                if (h == 1 && jb == ja) break;
                const bd_idx j = h ? jb : ja;
#pragma unroll 1
                for (int u = 0; u < BD_QB; ++u) {
                    const bd_idx b = g * BD_QB + u;
                    if (b >= nq) {                           /* padded queries: zero weights */
                        if (BD_MODE != 0) At[(g * tile + j) * BD_QB + u] = (T)0;
                        continue;
                    }
                    bd_tile_pair(b, j, b0, j0, d, dp, dr, tile, Gd, Ps, Cs, zn, pn, Zh, chi, m, par, Kc, Bc, At, An,
                                 near_any);
                }
            }
        }
#endif
        BD_SYNC();
        /* (3) accumulate the tile into the outputs this thread owns */
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
#if BD_MMA
        /* tensor cores: T task (r, query-group set, column-block set) = 16 queries x 16 columns of T; D += A B over
           the tile's rows in steps of 4 with A (8 x 4) = a group's Xi weights (lane: query lr, row j + lc) and
           B (4 x 8) = a column block of the rows (lane: row j + lc, column lr; columns past nk read column k0 and
           give columns of D that are not used): per step BD_MQG + BD_MCB loads serve BD_MQG BD_MCB operations */
#pragma unroll
        for (int a = 0; a < BD_NWT; ++a) {
            const bd_idx tk = wid + (bd_idx)a * nw;
            if (BD_MODE != 0 && tk < RR * ngp * nkp) {      /* the same for the lanes of a warp */
                const bd_idx cs = tk % nkp, rest = tk / nkp, gs = rest % ngp, r = rest / ngp;
                const T *ag[BD_MQG], *pb[BD_MCB];
                bool gok[BD_MQG], cok[BD_MCB];
#pragma unroll
                for (int i = 0; i < BD_MQG; ++i) {
                    const bd_idx g = gs * BD_MQG + i;
                    gok[i] = g < ngq;
                    ag[i] = At + ((gok[i] ? g : 0) * tile + lc) * BD_QB + lr;
                }
#pragma unroll
                for (int c = 0; c < BD_MCB; ++c) {
                    const bd_idx c8 = cs * BD_MCB + c;
                    cok[c] = c8 < nkb;
                    pb[c] = Ps + lc * dp + ((cok[c] && c8 * 8 + lr < nk) ? k0 + c8 * 8 + lr : k0);
                }
                const bd_idx n4 = nrow - nrow % 4;
                for (bd_idx j = 0; j <= n4; j += 4) {
                    if (j == n4 && j == nrow) break;
                    const bool jok = j < n4 || lc < nrow - n4;   /* the last step: rows past nrow are zero */
                    const double w = (BD_MODE == 1 && jok) ? (double)Cs[(j + lc) * nr + r] : 1.0;
                    double av[BD_MQG], bv[BD_MCB];
#pragma unroll
                    for (int i = 0; i < BD_MQG; ++i) av[i] = jok ? (double)ag[i][j * BD_QB] : 0.0;
#pragma unroll
                    for (int c = 0; c < BD_MCB; ++c) bv[c] = jok ? (double)pb[c][j * dp] * w : 0.0;
#pragma unroll
                    for (int i = 0; i < BD_MQG; ++i)
#pragma unroll
                        for (int c = 0; c < BD_MCB; ++c)
                            if (gok[i] && cok[c]) BD_MMA_F64(accM[a][i][c][0], accM[a][i][c][1], av[i], bv[c]);
                }
            }
        }
#else
        const int any_near = BD_EXACT_NEAR ? *near_any : 0;
#pragma unroll
        for (int a = 0; a < BD_NTASK; ++a) {                /* T[r, b, k] for BD_QB queries b, two columns k */
            const bd_idx tk = tid + (bd_idx)a * nthr;
            if (BD_MODE != 0 && tk < RR * ngq * nkh) {
                const bd_idx c = tk % nkh, rest = tk / nkh, g = rest % ngq, r = rest / ngq;
                const bd_idx ka = k0 + c, kb = (c + nkh < nk) ? ka + nkh : ka;
                /* float32: the tile's sum first, then into the accumulator (shorter float32 sums); float64: straight
                   into the accumulators (no second set of registers) */
                T sa[BD_QB], sb[BD_QB];
#pragma unroll
                for (int u = 0; u < BD_QB; ++u) {
                    sa[u] = BD_TILE_SUMS ? (T)0 : accT[a][0][u];
                    sb[u] = BD_TILE_SUMS ? (T)0 : accT[a][1][u];
                }
                const T *ag = At + g * tile * BD_QB;
                for (bd_idx j = 0; j < nrow; ++j) {
                    T va = Ps[j * dp + ka], vb = Ps[j * dp + kb];
                    if (BD_MODE == 1) { const T w = Cs[j * nr + r]; va *= w; vb *= w; }
                    T av[BD_QB];
                    bd_load_qb(av, ag + j * BD_QB);
#pragma unroll
                    for (int u = 0; u < BD_QB; ++u) { sa[u] += av[u] * va; sb[u] += av[u] * vb; }
                }
#pragma unroll
                for (int u = 0; u < BD_QB; ++u) {
                    accT[a][0][u] = BD_TILE_SUMS ? accT[a][0][u] + sa[u] : sa[u];
                    accT[a][1][u] = BD_TILE_SUMS ? accT[a][1][u] + sb[u] : sb[u];
                }
                if (BD_EXACT_NEAR && any_near) {
                    bd_idx coff[BD_QB];
                    double s64a[BD_QB], s64b[BD_QB];
#pragma unroll
                    for (int u = 0; u < BD_QB; ++u) {
                        const bd_idx bu = g * BD_QB + u;
                        coff[u] = (bu < nq ? bu : nq - 1) * tile;
                        s64a[u] = 0.0; s64b[u] = 0.0;
                    }
                    for (bd_idx j = 0; j < nrow; ++j) {
                        const double w = (BD_MODE == 1) ? (double)Cs[j * nr + r] : 1.0;
                        const double pva = (double)Ps[j * dp + ka] * w, pvb = (double)Ps[j * dp + kb] * w;
#pragma unroll
                        for (int u = 0; u < BD_QB; ++u) { s64a[u] += An[coff[u] + j] * pva; s64b[u] += An[coff[u] + j] * pvb; }
                    }
#pragma unroll
                    for (int u = 0; u < BD_QB; ++u) { acc64[a][0][u] += s64a[u]; acc64[a][1][u] += s64b[u]; }
                }
            }
        }
#endif
        BD_SYNC();
    }
    double *mine = part + ((bd_idx)blockIdx.y * (bd_idx)gridDim.x + (bd_idx)blockIdx.x) * (bd_idx)stride_;
#pragma unroll
    for (int a = 0; a < BD_NACC; ++a) {
        const bd_idx e = tid + (bd_idx)a * nthr;
        if (e < NF) mine[e] = accG[a];
        else if (e < NF + RR * nq) mine[NTT + e] = accG[a];
    }
#if BD_MMA
#pragma unroll
    for (int a = 0; a < BD_NWT; ++a) {
        const bd_idx tk = wid + (bd_idx)a * nw;
        if (BD_MODE != 0 && tk < RR * ngp * nkp) {
            const bd_idx cs = tk % nkp, rest = tk / nkp, gs = rest % ngp, r = rest / ngp;
#pragma unroll
            for (int i = 0; i < BD_MQG; ++i)
#pragma unroll
                for (int c = 0; c < BD_MCB; ++c)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const bd_idx b = (gs * BD_MQG + i) * BD_QB + lr;
                        const bd_idx kk = (cs * BD_MCB + c) * 8 + 2 * lc + (bd_idx)h;
                        if (b < nq && kk < nk) mine[NF + r * (nq * nk) + b * nk + kk] = accM[a][i][c][h];
                    }
        }
    }
#else
#pragma unroll
    for (int a = 0; a < BD_NTASK; ++a) {
        const bd_idx tk = tid + (bd_idx)a * nthr;
        if (BD_MODE != 0 && tk < RR * ngq * nkh) {
            const bd_idx c = tk % nkh, rest = tk / nkh, g = rest % ngq, r = rest / ngq;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const bd_idx kk = c + (bd_idx)h * nkh;
                if (kk >= nk) break;
#pragma unroll
                for (int u = 0; u < BD_QB; ++u) {
                    const bd_idx b = g * BD_QB + u;
                    if (b < nq) mine[NF + r * (nq * nk) + b * nk + kk] = (double)accT[a][h][u] + acc64[a][h][u];
                }
            }
        }
    }
#endif
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


def select_branch(text, mma):
    """``text`` with each ``#if BD_MMA`` (or ``#if !BD_MMA``) / ``#else`` / ``#endif`` block (not nested) reduced
    to the branch that ``mma`` selects: a variant's source holds only the code it runs (a planted bug in the
    source then always lands in live code, and NVRTC parses less)."""
    out, keep, depth, want = [], True, 0, True
    for line in text.splitlines(keepends=True):
        tag = line.strip()
        if tag in ("#if BD_MMA", "#if !BD_MMA"):
            if depth:
                raise ValueError("source: nested #if BD_MMA")
            want = bool(mma) == (tag == "#if BD_MMA")
            depth, keep = 1, want
        elif tag == "#else" and depth:
            keep = not want
        elif tag == "#endif" and depth:
            depth, keep = 0, True
        elif keep:
            out.append(line)
    if depth:
        raise ValueError("source: #if BD_MMA without #endif")
    return "".join(out)


def exact_near(arch, dtype, mode):
    """Whether nearly parallel pairs' Xi terms go to the float64 accumulators (float32 relu, modes 1-2)."""
    return int(arch == "relu" and np.dtype(dtype) == np.float32 and mode != 0)


def source(arch, dtype, mode, index_bits, target="cuda", mma=False):
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
    mma : bool
        Whether the two products of a tile (the dot products and the T sums) run on the FP64 tensor cores
        (``mma.sync`` m8n8k4, sm_80 and later; float64 only), else on the FP64 units.
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
    if mma and dt != "float64":
        raise ValueError(f"mma: the FP64 tensor cores take float64 only, got dtype {dt}")
    # the architecture's device functions, exactly as accel.pair_source writes them
    device_functions = pair_source.preamble(arch, "cuda")
    device_functions = device_functions[len(pair_source.TARGET_MACROS["cuda"]):]
    return "".join([
        TARGET_MACROS[target],
        f"typedef {DTYPES[dt]} T;\n",
        VECTOR_TYPES[target] if target == "sim" else "",
        VECTORS[dt],
        f"typedef {INDEX_TYPES[index_bits]} bd_idx;\n",
        f"#define BD_MODE {int(mode)}\n",
        f"#define BD_EXACT_NEAR {exact_near(arch, dt, mode)}\n",
        f"#define BD_TILE_SUMS {int(dt == 'float32')}\n",
        f"#define BD_NACC {NACC[mode]}\n#define BD_NTASK {NTASK}\n#define BD_QB {QB}\n",
        f"#define BD_NWT {NWT}\n#define BD_MQG {MMA_QG}\n#define BD_MRB {MMA_RB}\n#define BD_MCB {MMA_RB}\n"
        if mma else "",
        # at most 128 registers (2 blocks of 256 threads per SM) with 32-bit indices; 64-bit
        # indices (only past 2^31 elements) need more and get 1 block per SM rather than spills
        f"#define BD_MIN_BLOCKS {2 if index_bits == 32 else 1}\n",
        device_functions,
        select_branch(KERNEL, mma),
    ])


#: 128-bit vector of the working dtype for the broadcast loads of query values and Xi weights (BD_VW values;
#: CUDA's built-in double2 / float4), and how one is unpacked into v[BD_VW i ...].
VECTORS = {"float64": "typedef double2 bd_vec;\n#define BD_VW 2\n"
                      "#define BD_UNPACK(v, i, vec) { (v)[2 * (i)] = (vec).x; (v)[2 * (i) + 1] = (vec).y; }\n",
           "float32": "typedef float4 bd_vec;\n#define BD_VW 4\n"
                      "#define BD_UNPACK(v, i, vec) { (v)[4 * (i)] = (vec).x; (v)[4 * (i) + 1] = (vec).y; "
                      "(v)[4 * (i) + 2] = (vec).z; (v)[4 * (i) + 3] = (vec).w; }\n"}
#: The CPU harness has no CUDA vector types: the same layout (16-byte aligned structs).
VECTOR_TYPES = {"sim": "typedef struct __attribute__((aligned(16))) { double x, y; } double2;\n"
                       "typedef struct __attribute__((aligned(16))) { float x, y, z, w; } float4;\n"}

#: Options passed to ``cupy.RawModule`` (CuPy adds the -arch of the device itself).  None: the
#: source is plain C++11 and compiles in NVRTC's default dialect (C++17 in CUDA 12 and 13), so no
#: ``--std`` that a newer NVRTC could refuse.
NVRTC_OPTIONS = ()


def variant_name(arch, dtype, mode, index_bits, mma=False):
    return f"bd_fused_{arch}_{np.dtype(dtype).name}_mode{mode}_i{index_bits}" + ("_mma" if mma else "")


def cuda_sources():
    """Every CUDA source variant the gpu backend's fused pass can generate.

    Returns
    -------
    list of (name, source, options)
        One entry per arch (:data:`accel.pair_source.ARCH`) x dtype (float64, float32) x mode
        (0, 1, 2) x index width (32, 64), and the float64 ones again with tensor cores (``mma``): ``name`` a
        unique identifier, ``source`` the text handed to ``cupy.RawModule(code=source, options=options)`` (kernels
        ``bd_fused_history`` and ``bd_fused_reduce``, ``extern "C"``), ``options`` a tuple of
        NVRTC options (CuPy adds ``-arch`` for the device; a compile test adds its own).
    """
    out = []
    for arch in sorted(pair_source.ARCH):
        for dtype in DTYPES:
            for mode in MODES:
                for bits in INDEX_TYPES:
                    for mma in ((False, True) if dtype == "float64" else (False,)):
                        out.append((variant_name(arch, dtype, mode, bits, mma),
                                    source(arch, dtype, mode, bits, mma=mma), NVRTC_OPTIONS))
    return out


# ---------------------------------------------------------------------------- launch plan
def outputs_per_query(mode, d, nr):
    """Outputs of one query: f (nr) in modes 0-1, T (R d) and bsum (R) in modes 1-2."""
    if mode == 0:
        return nr
    if mode == 1:
        return nr * (d + 2)
    return d + 1


def row_stride(d, mma=False):
    """Row stride of the history tile in shared memory (``dp`` of ``bd_fused_history``): odd, or with tensor
    cores 4 mod 8."""
    return d + (12 - d % 8) % 8 if mma else d | 1


def shared_bytes(mode, exact, itemsize, d, dr, nr, qt, tile, mma=False):
    """Bytes of shared memory of one block (the layout of ``bd_fused_history``: float64 parts padded to
    16 bytes, the query tile and the Xi weights padded to whole query groups)."""
    npair = qt * tile
    nqp = -(-qt // QB) * QB
    ncs = dr if mode == 2 else nr
    n64 = (npair if mode != 0 else 0) + (npair if exact else 0)
    dp = row_stride(d, mma)
    nT = nqp * d + (nqp * tile if mode != 0 else 0) + tile * dp + tile * ncs + (npair if mode != 2 else 0) + npair
    return 8 * (-(-n64 // 2) * 2) + itemsize * nT + 8


def query_tiles(q):
    """Candidate queries per tile, largest first: min(MAX_QT, q), the multiples of QB below it, then
    QB / 2, ..., 1 (a tile of fewer than QB queries leaves lanes of a query group idle)."""
    top = min(MAX_QT, q)
    cands = [top] + [g * QB for g in range(top // QB, 0, -1)] + [QB >> s for s in range(1, QB.bit_length())]
    return sorted({c for c in cands if 1 <= c <= top}, reverse=True)


def chunking(qt, d, dr, mode, mma=False):
    """(nr, nk) of one launch for query tiles of ``qt``: columns of C (f, and T in mode 1) and columns of T
    per launch, so that a block holds the f / beta-sum outputs (``NACC[mode] * MAX_THREADS``) and the T tasks
    (``NTASK * MAX_THREADS``, a task being ``TCOLS`` columns of T for QB queries: nr x query groups x
    ceil(nk / TCOLS) tasks; with tensor cores ``NWT`` tasks per warp of MMA_QG query groups x MMA_RB x MMA_COLS
    columns); None where not even one column fits.  Mode 2 keeps every column of C (the weights C_m . chi_b need
    the whole row)."""
    cap_g = NACC[mode] * MAX_THREADS                                   # f / beta-sum outputs
    if mma:
        cap_t, cols, ngq = NWT * (MAX_THREADS // 32), MMA_COLS * MMA_RB, -(-qt // (QB * MMA_QG))
    else:
        cap_t, cols, ngq = NTASK * MAX_THREADS, TCOLS, -(-qt // QB)
    if mode == 0:
        nr = min(dr, cap_g // qt)
        return (nr, d) if nr >= 1 else None
    if mode == 2:
        nk = min(d, cols * (cap_t // ngq))
        return (dr, nk) if nk >= 1 and qt <= cap_g else None
    row_tasks = ngq * -(-d // cols)                      # the tasks of one column of C with whole rows of T
    if row_tasks <= cap_t:                               # mode 1: whole rows of T, columns of C in chunks
        nr = min(dr, cap_t // row_tasks, cap_g // (2 * qt))
        return (nr, d) if nr >= 1 else None
    nk = cols * (cap_t // ngq)                          # one column of C, T in column chunks
    return (1, nk) if nk >= 1 and 2 * qt <= cap_g else None


def plan(q, M, d, dr, mode, dtype, arch, shared_limit=SHARED_BYTES, shared_budget=SHARED_BYTES, mma=False):
    """Launch plan of the fused pass, or None where no tile fits.

    The query tile ``qt`` and the launches ("chunks") are chosen for the least work per history row:
    the fewest query groups of QB worked over all query tiles and launches (a group of fewer than QB
    queries costs as much as a full one), then tiles within ``shared_budget`` (shared memory per block
    that keeps two blocks per multiprocessor, the most the registers allow: 113 KiB on sm_90, or the
    default 48 KiB) over tiles up to ``shared_limit`` (the device's opt-in maximum per block, e.g.
    227 KiB on sm_90: one block per multiprocessor), then the fewest streams of the history (query tiles
    x chunks), then the largest tile (up to ``MAX_TILE`` rows: more rows, more dot-product tasks per
    block); tiles have at least ``MIN_TILE`` rows (or all of M) where any query tile allows it, else at
    least one.  Above 48 KiB the launch raises the kernel's limit
    (:meth:`accel.xpcore.XPEngine.allow_shared`).

    Returns a dict: ``qt`` (queries per tile), ``chunks`` (list of (r0, nr, k0, nk): the columns
    r0 .. r0 + nr - 1 of C and k0 .. k0 + nk - 1 of T of one launch; one (0, dr, 0, d) chunk unless
    the query tile's outputs exceed a block's, :func:`chunking`), ``kchunks`` (launches per column chunk
    of C), ``tile`` (history rows per tile), ``threads`` (block size), ``shared`` (bytes),
    ``strides`` (outputs per block of each chunk: the row length of its partial buffer), ``index_bits``,
    ``mma`` (whether the kernel's products run on the FP64 tensor cores: asked for by ``mma``, float64, and a
    plan exists with them (else the plain kernel's); the tile then has whole blocks of ``MMA_COLS`` rows, at
    least one block).
    """
    itemsize = np.dtype(dtype).itemsize
    mma = bool(mma) and np.dtype(dtype) == np.float64
    blk = MMA_COLS if mma else 1                     # tile rows come in blocks of blk
    mcap = -(-min(MAX_TILE, M) // blk) * blk         # rows a tile needs at most
    exact = exact_near(arch, dtype, mode)
    best = None
    optin = max(SHARED_BYTES, int(shared_limit))
    budget = min(optin, max(SHARED_BYTES, int(shared_budget)))
    for min_tile in (min(MIN_TILE, mcap), blk):
        for qt in query_tiles(q):
            ch = chunking(qt, d, dr, mode, mma)
            if ch is None:
                continue
            nr, nk = ch
            nch = -(-dr // nr) * -(-d // nk)
            if mode == 1 and nch > MAX_CHUNKS_MODE1:
                continue       # e.g. a Jacobian at dr = 784: the GEMM pass streams P far fewer times
            fixed = shared_bytes(mode, exact, itemsize, d, dr, nr, qt, 0, mma)
            per_row = shared_bytes(mode, exact, itemsize, d, dr, nr, qt, 1, mma) - fixed
            for limit in (budget, optin):
                tile = min(mcap, (limit - fixed) // per_row // blk * blk) if limit > fixed else 0
                if tile >= min_tile:
                    break
            if tile < min_tile:
                continue
            groups = nch * ((q // qt) * -(-qt // QB) + -(-(q % qt) // QB))
            cost = (groups, limit > budget, -(-q // qt) * nch, -tile)
            if best is None or cost < best[0]:
                best = (cost, qt, nr, nk, int(tile))
        if best is not None:
            break
    if best is None:          # with tensor cores a task is 16 x 16: where that needs too many launches, the plain one
        return plan(q, M, d, dr, mode, dtype, arch, shared_limit, shared_budget) if mma else None
    _, qt, nr, nk, tile = best
    chunks = [(r0, min(nr, dr - r0), k0, min(nk, d - k0)) for r0 in range(0, dr, nr) for k0 in range(0, d, nk)]
    strides = [qt * outputs_per_query(mode, ck, cr) for _, cr, _, ck in chunks]
    rr = {0: 0, 1: nr, 2: 1}[mode]
    ngq = -(-qt // QB)
    generic = qt * ((nr if mode != 2 else 0) + rr)
    # enough threads for the outputs a block owns and for its dot-product tasks (8 queries x 2 rows; with tensor
    # cores a warp per 8 queries x 8 rows); at least 128 (four warps to load the tile from global memory); the
    # registers allow two blocks of 256 per SM
    if mma:       # warp tasks: (query-group sets x T column sets), (query-group sets x row-block sets)
        ngp = -(-ngq // MMA_QG)
        tasks, dtasks = rr * ngp * -(-nk // (MMA_COLS * MMA_RB)), 32 * ngp * -(-tile // (MMA_COLS * MMA_RB))
    else:
        tasks, dtasks = rr * ngq * -(-nk // TCOLS), ngq * -(-tile // 2)

    def t_capacity(threads):
        return threads // 32 * NWT if mma else threads * NTASK

    threads = MIN_THREADS
    while threads < MAX_THREADS and (threads * NACC[mode] < generic or t_capacity(threads) < tasks
                                     or threads < dtasks or threads < 128):
        threads *= 2
    nqt = -(-q // qt)
    biggest = max(M * max(d, dr), q * max(d, dr), max(strides) * nqt * 1024, qt * tile)
    return dict(qt=qt, chunks=chunks, kchunks=-(-d // nk), tile=tile, threads=threads,
                shared=shared_bytes(mode, exact, itemsize, d, dr, nr, qt, tile, mma), strides=strides,
                index_bits=32 if biggest < 2**31 else 64, mma=mma)


def grid(pl, q, M, multiprocessors):
    """(gx, gy) of ``bd_fused_history`` for plan ``pl``: gy query tiles; gx blocks per query tile,
    about 4 per multiprocessor in all (at least 1 per query tile), each taking every gx-th history tile."""
    gy = -(-q // pl["qt"])
    ntiles = -(-M // pl["tile"])
    return max(1, min(ntiles, 1024, -(-4 * multiprocessors // gy))), gy


def pass_counts(q, M, d, dr, mode, dtype, arch, multiprocessors=132, shared_limit=SHARED_OPTIN_SM90,
                shared_budget=SHARED_TWO_BLOCKS_SM90, mma=False):
    """Global-memory traffic and launches of one fused pass, from :func:`plan` and :func:`grid`.

    Returns a dict: ``bytes`` (total), ``parts`` ({what: bytes}: history rows P, norms pn and C as
    streamed per query tile and column chunk, the queries, the partial buffer written and read,
    the reduced output; what the blocks request, an upper bound on DRAM traffic: blocks of
    different query tiles walk the history in the same order, so concurrently resident blocks
    share tiles through L2), ``kernels`` (launches, including the float32 cast of the queries and the
    concatenation of column chunks), ``h2d`` and ``d2h`` (host copies: one each way),
    ``plan`` and ``grid``.  Not counted: the rows of nearly parallel pairs' explicit differences
    (read from the shared tile) and the unit query rows Zh read for them (a few KB, cached).
    Defaults: an H100 SXM (132 multiprocessors, 227 KiB of opt-in shared memory per block, 113 KiB for
    two blocks per multiprocessor).
    """
    pl = plan(q, M, d, dr, mode, dtype, arch, shared_limit, shared_budget, mma)
    if pl is None:
        return None
    it = np.dtype(dtype).itemsize
    gx, gy = grid(pl, q, M, multiprocessors)
    chunks = pl["chunks"]
    parts = {
        "P": len(chunks) * gy * M * d * it,
        "pn": len(chunks) * gy * M * 8,
        "C": pl["kchunks"] * gy * M * dr * it,
        "queries": (q * d * it + q * 8) * gx * len(chunks) + (q * dr * 8 * gx * len(chunks) if mode == 2 else 0),
        "partials": 2 * gx * gy * sum(pl["strides"]) * 8,
        "output": gy * sum(pl["strides"]) * 8,
    }
    kernels = 2 * len(chunks) + (np.dtype(dtype) != np.float64) + (len(chunks) > 1)
    return dict(bytes=sum(parts.values()), parts=parts, kernels=int(kernels), h2d=1, d2h=1, plan=pl,
                grid=(gx, gy))
