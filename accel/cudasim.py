"""A CPU execution harness for CUDA kernel text: every thread of a block is a coroutine.

A kernel with shared memory and ``__syncthreads`` cannot be checked by running its body once per
element as plain C (as :class:`accel.standin.ElementwiseKernel` does): the threads of a block
cooperate through shared memory, and what one thread reads another wrote before a barrier.  This
module compiles the kernel source with the host C++ compiler (g++, or ``$CXX``) together with a
small scheduler (:data:`RUNTIME`) and runs it as the GPU would, one block after the other:

* each CUDA thread of the block is a coroutine with its own stack (x86-64: a 20-instruction
  context switch; elsewhere ``ucontext``), so its local variables are its own;
* ``__syncthreads`` (the source's ``BD_SYNC()``) is a yield point: the scheduler runs every
  thread of the block up to its next barrier, and only when all threads have arrived does any
  continue.  A thread that returns while others wait at a barrier, or a block whose threads
  reach different numbers of barriers, is reported as an error (undefined on a GPU);
* between two barriers the threads run one after the other, in increasing order in even
  phases and decreasing order in odd ones, so a missing barrier shows up as a read of data
  that is not yet written, or already overwritten;
* the dynamic shared memory of each block is filled with NaN bytes (0xFF) before the block
  starts, and followed by 64 guard bytes that are checked after the block (an overrun is an
  error);
* ``threadIdx``, ``blockIdx``, ``blockDim``, ``gridDim`` are set for the running thread.

* the FP64 warp matrix operation ``mma.sync.aligned.m8n8k4.row.col.f64`` (the source's
  ``BD_MMA_F64(d0, d1, a, b)``) is a collective of the warp: each lane deposits its fragments
  (A: row lane / 4, column lane % 4; B: row lane % 4, column lane / 4; C, D: row lane / 4, columns
  2 (lane % 4) + {0, 1}, the layout of the PTX ISA) and waits; when all 32 lanes of the warp have
  issued the same operation, D = A B + C is formed (fused multiply-adds, k in order) and the lanes
  run on.  A warp with lanes at different operations, at a barrier or returned, or a block whose
  size is not a whole number of warps, is reported as an error (undefined on a GPU).

* an asynchronous copy from global to shared memory (``cp.async``, the source's
  ``BD_CP_ASYNC(dst, src)``) is only recorded when issued and carried out when the issuing thread
  waits (``cp.async.wait_all``, ``BD_CP_WAIT()``): the latest a GPU may complete it.  A read before the
  wait, or of another thread's copy before the barrier after its wait, sees the NaN fill; a thread
  that returns with copies never waited for is an error.

Other warp-level operations (shuffles, votes, ``__syncwarp``) and atomics are not provided: a kernel
using them fails to compile here, visibly, rather than running with invented semantics.

The kernel source must declare its kernels as ``extern "C" BD_GLOBAL void name(...)`` with the
macros of :data:`accel.fused_source.TARGET_MACROS` ("sim" target).  :func:`load` compiles (cached
by content, like :func:`accel.standin.compile_shared`) and returns one :class:`SimKernel` per
kernel, called like ``cupy.RawKernel`` (:class:`accel.standin.RawModule` wraps it as CuPy's
``RawModule``): ``kernel(grid, block, args, shared_mem=bytes)``.
"""

from __future__ import annotations

import ctypes
import re

import numpy as np

RUNTIME = r"""
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <stddef.h>
struct bd_dim3 { unsigned int x, y, z; };
static bd_dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace bd_sim {
enum { READY = 0, AT_BARRIER = 1, DONE = 2, AT_MMA = 3 };
static const size_t STACK = 256 * 1024;
static const size_t GUARD = 64;
static char error[512];
static void (*body)(void **);
static void **body_args;
static unsigned nthreads;
static unsigned current;
static unsigned char *shared;
static size_t shared_size;
static unsigned char *stacks;
static size_t stacks_threads;
static int *state;
static long *barriers;
static long *mmas;          /* per thread: warp matrix operations issued */
struct copy { void *dst; const void *src; size_t n; };
static copy **pending;      /* per thread: asynchronous copies issued and not yet waited for */
static size_t *npending, *cappending;
static double *mma_slot;    /* per thread: a, b, c0, c1 in; d0, d1 out (in c0, c1) */

#if defined(__x86_64__)
/* save the callee-saved registers and the FP control words on this stack, switch stacks */
extern "C" void bd_sim_switch(void **from_sp, void *to_sp);
__asm__(
    ".text\n.globl bd_sim_switch\n.hidden bd_sim_switch\n.type bd_sim_switch,@function\n"
    "bd_sim_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  subq $8, %rsp\n  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n  addq $8, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n.size bd_sim_switch, .-bd_sim_switch\n");
static void *sched_sp;
static void **thread_sp;
static void to_scheduler() { bd_sim_switch(&thread_sp[current], sched_sp); }
static void to_thread(unsigned t) { bd_sim_switch(&sched_sp, thread_sp[t]); }
static void entry();
static void start(unsigned t)
{
    /* a frame that bd_sim_switch "returns" from into entry(), 16-byte aligned as after a call */
    unsigned char *top = stacks + (size_t)(t + 1) * STACK;
    void **sp = (void **)(((size_t)top & ~(size_t)15) - 8);
    *--sp = (void *)&entry;                           /* return address */
    for (int r = 0; r < 6; ++r) *--sp = 0;            /* rbp rbx r12 r13 r14 r15 */
    unsigned int cw[2];
    __asm__ volatile("stmxcsr %0" : "=m"(cw[0]));
    __asm__ volatile("fnstcw %0" : "=m"(cw[1]));
    --sp;
    memcpy(sp, cw, 8);
    thread_sp[t] = (void *)sp;
}
#else
#include <ucontext.h>
static ucontext_t sched_ctx;
static ucontext_t *thread_ctx;
static void to_scheduler() { swapcontext(&thread_ctx[current], &sched_ctx); }
static void to_thread(unsigned t) { swapcontext(&sched_ctx, &thread_ctx[t]); }
static void entry();
static void start(unsigned t)
{
    getcontext(&thread_ctx[t]);
    thread_ctx[t].uc_stack.ss_sp = stacks + (size_t)t * STACK;
    thread_ctx[t].uc_stack.ss_size = STACK;
    thread_ctx[t].uc_link = 0;
    makecontext(&thread_ctx[t], entry, 0);
}
#endif

static void entry()
{
    body(body_args);
    state[current] = DONE;
    to_scheduler();
    abort();                                          /* never resumed */
}

static void set_thread(unsigned t)
{
    current = t;
    threadIdx.x = t % blockDim.x;
    threadIdx.y = (t / blockDim.x) % blockDim.y;
    threadIdx.z = t / (blockDim.x * blockDim.y);
}

}  /* namespace bd_sim */

static unsigned char *bd_sim_shared() { return bd_sim::shared; }
static void bd_sim_sync()
{
    using namespace bd_sim;
    state[current] = AT_BARRIER;
    barriers[current] += 1;
    to_scheduler();
}

/* mma.sync.aligned.m8n8k4.row.col.f64 of the thread's warp: D (8 x 8) = A (8 x 4) B (4 x 8) + C, lane l holding
   A[l / 4][l % 4], B[l % 4][l / 4] and C, D [l / 4][2 (l % 4) + {0, 1}] (PTX ISA, the m8n8k4 .f64 fragments).  A
   collective of the warp: the lane waits here until all 32 lanes of its warp have issued the same one */
static void bd_sim_mma(double *d0, double *d1, double a, double b)
{
    using namespace bd_sim;
    double *s = mma_slot + 4 * (size_t)current;
    s[0] = a; s[1] = b; s[2] = *d0; s[3] = *d1;
    mmas[current] += 1;
    state[current] = AT_MMA;
    to_scheduler();
    *d0 = s[2]; *d1 = s[3];
}

/* cp.async: the copy is only recorded; it happens when the issuing thread waits (cp.async.wait_all), the
   latest a GPU may complete it, so a read of the destination before the wait (or, for another thread's copy,
   before the barrier that follows its wait) sees the NaN fill */
static void bd_sim_cp_async(void *dst, const void *src, size_t n)
{
    using namespace bd_sim;
    if (npending[current] == cappending[current]) {
        cappending[current] = cappending[current] ? 2 * cappending[current] : 64;
        pending[current] = (copy *)realloc(pending[current], cappending[current] * sizeof(copy));
    }
    copy c = {dst, src, n};
    pending[current][npending[current]++] = c;
}
static void bd_sim_cp_wait()
{
    using namespace bd_sim;
    for (size_t i = 0; i < npending[current]; ++i)
        memcpy(pending[current][i].dst, pending[current][i].src, pending[current][i].n);
    npending[current] = 0;
}

namespace bd_sim {
/* complete the warp matrix operations whose 32 lanes have all arrived; 1 if any did, 0 if none, -1 on an
   undefined use (a partial warp, or lanes of a warp at different operations, at a barrier or returned) */
static int warp_ops()
{
    int any = 0;
    for (unsigned w = 0; w * 32 < nthreads; ++w) {
        unsigned at = 0;
        for (unsigned l = 0; l < 32 && w * 32 + l < nthreads; ++l) at += state[w * 32 + l] == AT_MMA;
        if (!at) continue;
        if (at != 32) {
            snprintf(error, sizeof error, "block (%u,%u,%u): warp %u: %u of its lanes wait at mma.sync while the "
                     "others are at __syncthreads, have returned or do not exist (undefined on a GPU)",
                     blockIdx.x, blockIdx.y, blockIdx.z, w, at);
            return -1;
        }
        for (unsigned l = 1; l < 32; ++l)
            if (mmas[w * 32 + l] != mmas[w * 32]) {
                snprintf(error, sizeof error, "block (%u,%u,%u): warp %u: lanes at different mma.sync operations "
                         "(%ld and %ld)", blockIdx.x, blockIdx.y, blockIdx.z, w, mmas[w * 32], mmas[w * 32 + l]);
                return -1;
            }
        double A[8][4], B[4][8], D[8][8];
        for (unsigned l = 0; l < 32; ++l) {
            const double *s = mma_slot + 4 * (size_t)(w * 32 + l);
            A[l / 4][l % 4] = s[0];
            B[l % 4][l / 4] = s[1];
            D[l / 4][2 * (l % 4)] = s[2];
            D[l / 4][2 * (l % 4) + 1] = s[3];
        }
        for (unsigned l = 0; l < 32; ++l) {
            double *s = mma_slot + 4 * (size_t)(w * 32 + l);
            for (unsigned h = 0; h < 2; ++h) {
                const unsigned r = l / 4, c = 2 * (l % 4) + h;
                double v = D[r][c];
                for (unsigned k = 0; k < 4; ++k) v = fma(A[r][k], B[k][c], v);
                s[2 + h] = v;
            }
            state[w * 32 + l] = READY;
        }
        any = 1;
    }
    return any;
}

static int block()
{
    memset(shared, 0xFF, shared_size);
    memset(shared + shared_size, 0xA5, GUARD);
    for (unsigned t = 0; t < nthreads; ++t) {
        state[t] = READY; barriers[t] = 0; mmas[t] = 0; npending[t] = 0; start(t);
    }
    for (long phase = 0;; ++phase) {
        for (unsigned k = 0; k < nthreads; ++k) {
            unsigned t = (phase % 2 == 0) ? k : nthreads - 1 - k;
            if (state[t] != READY) continue;
            set_thread(t);
            to_thread(t);
        }
        const int ops = warp_ops();
        if (ops < 0) return 1;
        if (ops) continue;                            /* lanes released from an mma.sync run on */
        unsigned done = 0, waiting = 0;
        for (unsigned t = 0; t < nthreads; ++t) {
            done += state[t] == DONE;
            waiting += state[t] == AT_BARRIER;
        }
        if (done == nthreads) break;
        if (done) {
            snprintf(error, sizeof error, "block (%u,%u,%u): %u thread(s) returned while %u wait at "
                     "__syncthreads (barrier %ld)", blockIdx.x, blockIdx.y, blockIdx.z, done, waiting,
                     barriers[0]);
            return 1;
        }
        for (unsigned t = 0; t < nthreads; ++t) state[t] = READY;
    }
    for (unsigned t = 0; t < nthreads; ++t)
        if (npending[t]) {
            snprintf(error, sizeof error, "block (%u,%u,%u): thread %u returned with %zu asynchronous copies "
                     "(cp.async) never waited for", blockIdx.x, blockIdx.y, blockIdx.z, t, npending[t]);
            return 1;
        }
    for (size_t g = 0; g < GUARD; ++g)
        if (shared[shared_size + g] != 0xA5) {
            snprintf(error, sizeof error, "block (%u,%u,%u): write past the %zu bytes of dynamic shared "
                     "memory", blockIdx.x, blockIdx.y, blockIdx.z, shared_size);
            return 1;
        }
    return 0;
}

static int launch(void (*fn)(void **), void **args, unsigned gx, unsigned gy, unsigned gz,
                  unsigned bx, unsigned by, unsigned bz, size_t shmem)
{
    error[0] = 0;
    nthreads = bx * by * bz;
    if (!nthreads || !gx || !gy || !gz || nthreads > 1024) {
        snprintf(error, sizeof error, "invalid launch: grid (%u,%u,%u), block (%u,%u,%u)", gx, gy, gz,
                 bx, by, bz);
        return 1;
    }
    if (nthreads > stacks_threads) {
        for (size_t t = 0; t < stacks_threads; ++t) free(pending[t]);
        free(stacks); free(state); free(barriers); free(mmas); free(mma_slot); free(pending); free(npending);
        free(cappending);
#if defined(__x86_64__)
        free(thread_sp);
        thread_sp = (void **)calloc(nthreads, sizeof(void *));
#else
        free(thread_ctx);
        thread_ctx = (ucontext_t *)calloc(nthreads, sizeof(ucontext_t));
#endif
        stacks = (unsigned char *)malloc((size_t)nthreads * STACK);
        state = (int *)calloc(nthreads, sizeof(int));
        barriers = (long *)calloc(nthreads, sizeof(long));
        mmas = (long *)calloc(nthreads, sizeof(long));
        mma_slot = (double *)calloc(4 * (size_t)nthreads, sizeof(double));
        pending = (copy **)calloc(nthreads, sizeof(copy *));
        npending = (size_t *)calloc(nthreads, sizeof(size_t));
        cappending = (size_t *)calloc(nthreads, sizeof(size_t));
        stacks_threads = nthreads;
    }
    free(shared);
    shared_size = shmem;
    shared = (unsigned char *)malloc(shmem + GUARD + 16);
    body = fn;
    body_args = args;
    gridDim.x = gx; gridDim.y = gy; gridDim.z = gz;
    blockDim.x = bx; blockDim.y = by; blockDim.z = bz;
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                blockIdx.x = x; blockIdx.y = y; blockIdx.z = z;
                if (block()) return 1;
            }
    return 0;
}
}  /* namespace bd_sim */

extern "C" const char *bd_sim_error() { return bd_sim::error; }
"""

_KERNEL_RE = re.compile(r'extern\s+"C"\s+BD_GLOBAL\s+void\s+(?:BD_LAUNCH_BOUNDS\([^)]*\)\s+)?(\w+)\s*\(([^)]*)\)',
                        re.S)
#: C parameter types -> NumPy scalar type of the argument (pointers: dtype of the array)
_SCALARS = {"double": np.float64, "float": np.float32, "long long": np.int64, "int": np.int32,
            "unsigned int": np.uint32}


def kernel_signatures(source):
    """{kernel name: [(base C type, is_pointer, parameter name), ...]} of the ``extern "C"`` kernels."""
    typedefs = dict((new, old) for old, new in re.findall(r"typedef\s+([\w ]+?)\s+(\w+)\s*;", source))
    out = {}
    for name, params in _KERNEL_RE.findall(source):
        sig = []
        for part in params.split(","):
            words = part.replace("*", " * ").replace("__restrict__", " ").split()
            pointer = "*" in words
            words = [w for w in words if w not in ("*", "const")]
            pname, ctype = words[-1], " ".join(words[:-1])
            ctype = typedefs.get(ctype, ctype)
            if ctype not in _SCALARS:
                raise ValueError(f"kernel {name}: parameter {pname}: type {ctype!r} not supported by the harness")
            sig.append((ctype, pointer, pname))
        out[name] = sig
    if not out:
        raise ValueError('source: no extern "C" BD_GLOBAL kernel found')
    return out


def harness_source(source):
    """The C++ translation unit: runtime, the kernel source, one launcher per kernel."""
    sigs = kernel_signatures(source)
    parts = [RUNTIME, "/* ---- kernel source ---- */\n", source, "\n/* ---- launchers ---- */\n"]
    for name, sig in sigs.items():
        args = ", ".join(f"*({c}{' *' if p else ''} *)a[{k}]" for k, (c, p, _) in enumerate(sig))
        parts.append(
            f"static void bd_call_{name}(void **a) {{ {name}({args}); }}\n"
            f'extern "C" int bd_launch_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, '
            f"unsigned by, unsigned bz, size_t shmem, void **args)\n"
            f"{{ return bd_sim::launch(bd_call_{name}, args, gx, gy, gz, bx, by, bz, shmem); }}\n")
    return "".join(parts)


class HarnessError(RuntimeError):
    """The kernel did something undefined on a GPU (the message says what and in which block)."""


def _dims(v, what):
    v = (v,) if np.isscalar(v) else tuple(v)
    if not 1 <= len(v) <= 3 or any(int(x) < 1 for x in v):
        raise ValueError(f"{what}: expected 1 to 3 positive sizes, got {v!r}")
    return tuple(int(x) for x in v) + (1,) * (3 - len(v))


class SimKernel:
    """One kernel of a module compiled by :func:`load`, called like ``cupy.RawKernel``.

    Arguments are checked as strictly as a GPU would need them: an array for every pointer
    parameter (C-contiguous, of the parameter's dtype), and for every scalar parameter a NumPy
    scalar of exactly the parameter's type (``np.int64`` for ``long long``, ``np.float64`` for
    ``double``): a Python int or a wrong width would be passed wrongly by a real launch.
    """

    def __init__(self, lib, name, signature):
        self.name = name
        self.signature = signature
        self._fn = getattr(lib, f"bd_launch_{name}")
        self._fn.restype = ctypes.c_int
        self._fn.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_size_t, ctypes.c_void_p]
        self._error = lib.bd_sim_error
        self._error.restype = ctypes.c_char_p

    def __call__(self, grid, block, args, shared_mem=0):
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name}: expected {len(self.signature)} arguments, got {len(args)}")
        holders = []
        for (ctype, pointer, pname), a in zip(self.signature, args):
            want = np.dtype(_SCALARS[ctype])
            if pointer:
                if not isinstance(a, np.ndarray) or a.dtype != want or not a.flags.c_contiguous:
                    got = f"{a.dtype} array (contiguous: {a.flags.c_contiguous})" \
                        if isinstance(a, np.ndarray) else type(a).__name__
                    raise TypeError(f"{self.name}: argument {pname}: expected a C-contiguous {want} "
                                    f"array, got {got}")
                holders.append(ctypes.c_void_p(a.ctypes.data))
            else:
                if not isinstance(a, np.generic) or np.dtype(type(a)) != want:
                    raise TypeError(f"{self.name}: argument {pname}: expected a numpy.{want.name} "
                                    f"scalar ({ctype}), got {type(a).__name__}")
                holders.append(np.ctypeslib.as_ctypes_type(want)(a))
        ptrs = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
        g, b = _dims(grid, "grid"), _dims(block, "block")
        if self._fn(*g, *b, int(shared_mem), ctypes.cast(ptrs, ctypes.c_void_p)):
            raise HarnessError(f"{self.name}: {self._error().decode()}")


def load(source, compile_cxx, name="cudasim"):
    """Compile ``source`` with the harness and return {kernel name: SimKernel}.

    ``compile_cxx(cxx_source, name)`` builds and loads the shared library: the stand-in's
    (:class:`accel.standin.RawModule`: cached, with the stand-in's flags, IEEE semantics unless
    :data:`accel.standin.CFLAGS` asks for FMA contraction, as NVRTC does on the GPU).
    """
    sigs = kernel_signatures(source)
    lib = compile_cxx(harness_source(source), name)
    return {k: SimKernel(lib, k, sig) for k, sig in sigs.items()}
