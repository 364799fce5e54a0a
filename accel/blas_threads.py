"""Limit the BLAS thread pool around code that runs its own parallel kernels.

After a multithreaded call, OpenBLAS's worker threads keep spinning for a while
(a compiled-in timeout of about 2^28 cycles, some 0.1 s) before they sleep.  A
Numba history pass that starts in that window shares its cores with them: on the
2-core machine of docs/BENCHMARKS.md the SGD step at M = 1e6, d = 100 took
0.23 s with the default BLAS threads and 0.18 s with one.  The BLAS calls of a
step (the random network at a batch of 20 points) gain nothing from threads, so
the Numba backend runs its steps under :func:`limit` (1).

The pool is found among the libraries loaded into the process (``/proc/self/maps``
on Linux) and controlled through its own ``set_num_threads`` entry point: OpenBLAS
under any of the symbol names its builds use (plain, 64-bit-integer ``64_``,
SciPy's ``scipy_`` prefix) and MKL.  Where none is found (another BLAS, another
OS) :func:`limit` does nothing.  No new dependency: threadpoolctl does the same
for more libraries, but is not among the project's dependencies.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os

#: (getter, setter) symbol names, per library family, in the order tried.
_OPENBLAS = [(f"{pre}openblas_get_num_threads{suf}", f"{pre}openblas_set_num_threads{suf}")
             for pre in ("", "scipy_") for suf in ("", "64_", "_64_")]
_MKL = [("MKL_Get_Max_Threads", "MKL_Set_Num_Threads")]


def _loaded_libraries():
    """Paths of the shared libraries mapped into this process (Linux; [] elsewhere)."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split(None, 5)[5].strip() for line in fh if len(line.split(None, 5)) == 6}
    except OSError:
        return []
    return sorted(p for p in paths if ".so" in os.path.basename(p))


def _controllers():
    """[(get, set)] ctypes functions of every BLAS thread pool loaded now."""
    found = []
    for path in _loaded_libraries():
        name = os.path.basename(path).lower()
        candidates = _OPENBLAS if "openblas" in name else _MKL if "mkl_rt" in name else None
        if candidates is None:
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in candidates:
            get, set_ = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get is not None and set_ is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                set_.restype, set_.argtypes = None, [ctypes.c_int]
                found.append((get, set_))
                break
    return found


_CACHE = []


def controllers():
    """The BLAS thread-pool controllers of this process (looked up once, after NumPy is loaded)."""
    if not _CACHE:
        _CACHE.append(_controllers())
    return _CACHE[0]


def current():
    """Thread counts of the BLAS pools found ([] where none is)."""
    return [get() for get, _ in controllers()]


@contextlib.contextmanager
def limit(n):
    """Run the body with at most ``n`` BLAS threads, then restore the previous counts."""
    ctl = controllers()
    saved = [get() for get, _ in ctl]
    try:
        for (_, set_), old in zip(ctl, saved):
            if old > n:
                set_(n)
        yield
    finally:
        for (_, set_), old in zip(ctl, saved):
            if old > n:
                set_(old)


def one_blas_thread(fn):
    """``fn`` run under :func:`limit` (1): for drivers whose BLAS calls are small products, or run beside
    other processes, where a threaded BLAS oversubscribes the cores (measured: docs/BENCHMARKS.md,
    "BLAS threads")."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with limit(1):
            return fn(*args, **kwargs)
    return wrapper
