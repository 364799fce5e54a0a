"""CuPy backend: the history pass on a GPU, cuBLAS GEMMs and fused per-pair kernels.

Everything runs through :class:`accel.xpcore.XPEngine` over the array module
``cupy``; the same engine over ``numpy`` (:func:`numpy_path`) is what CI tests
against the golden files, since this code has no GPU-only logic apart from
``cupy.fuse`` (with a plain fallback) and the device-resident history.

CuPy is imported lazily: importing this module never fails, and constructing a
simulator or calling a kernel raises :class:`BackendUnavailable` with a
one-line reason when CuPy is missing or sees no CUDA device.

Not yet run on GPU hardware (the development machine has none): see
docs/BENCHMARKS.md and tests/test_gpu.py (``pytest -m gpu``).
"""

from __future__ import annotations

import functools

import numpy as np

import refimpl

from ._simbase import AccelBottleneckMixin, AccelInfiniteMixin, BackendUnavailable, NormedHistory
from .xpcore import XPEngine, make_kernels


def load_cupy():
    """Import CuPy and check that it sees a CUDA device; raise BackendUnavailable (one line) if not."""
    try:
        import cupy
    except ImportError:
        raise BackendUnavailable("CuPy is not installed (pip install 'bottleneck-dynamics[gpu]')") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:     # CUDA driver missing or broken
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackendUnavailable(f"CuPy sees no CUDA device ({reason})") from None
    if count < 1:
        raise BackendUnavailable("CuPy sees no CUDA device")
    return cupy


def available():
    """True when CuPy is installed and sees a CUDA device."""
    try:
        load_cupy()
        return True
    except BackendUnavailable:
        return False


@functools.lru_cache(maxsize=None)
def engine(xp_name):
    """The engine for ``"cupy"`` (fused kernels) or ``"numpy"`` (the CI path)."""
    if xp_name == "numpy":
        return XPEngine(np)
    return XPEngine(load_cupy(), fuse=True)


@functools.lru_cache(maxsize=None)
def kernels(xp_name):
    """Kernel functions (refimpl names and signatures) computed by :func:`engine`."""
    return make_kernels(engine(xp_name))


class DeviceHistory:
    """History P (M, d), C (M, dr) and float64 norms kept in device memory, grown by doubling.

    ``P`` and ``C`` return host copies (for checkpoints and refimpl's
    ``jacobian``); the hot loop reads ``P_dev``, ``C_dev``, ``norms_dev``.
    """

    def __init__(self, d, dr, capacity, dtype, xp):
        self.xp = xp
        self._P = xp.empty((capacity, d), dtype=dtype)
        self._C = xp.empty((capacity, dr), dtype=dtype)
        self._n = xp.empty(capacity)
        self.M = 0

    def append(self, P, C):
        xp = self.xp
        k = P.shape[0]
        if self.M + k > self._P.shape[0]:
            cap = max(2 * self._P.shape[0], self.M + k)
            for name in ("_P", "_C", "_n"):
                old = getattr(self, name)
                new = xp.empty((cap,) + old.shape[1:], dtype=old.dtype)
                new[:self.M] = old[:self.M]
                setattr(self, name, new)
        self._P[self.M:self.M + k] = xp.asarray(P)
        self._C[self.M:self.M + k] = xp.asarray(C)
        rows = self._P[self.M:self.M + k].astype(xp.float64)
        self._n[self.M:self.M + k] = xp.sqrt(xp.sum(rows * rows, axis=1))
        self.M += k

    P_dev = property(lambda self: self._P[:self.M])
    C_dev = property(lambda self: self._C[:self.M])
    norms_dev = property(lambda self: self._n[:self.M])
    P = property(lambda self: self.xp.asnumpy(self.P_dev))
    C = property(lambda self: self.xp.asnumpy(self.C_dev))
    norms = property(lambda self: self.xp.asnumpy(self.norms_dev))


class BottleneckSimulator(AccelBottleneckMixin, refimpl.BottleneckSimulator):
    """:class:`refimpl.BottleneckSimulator` with the history on the GPU.

    Same parameters plus ``dtype`` ("float64" or "float32").  The class
    attribute ``xp_name`` selects the array module ("cupy"; "numpy" for the
    CPU test path of :func:`numpy_path`).
    """

    xp_name = "cupy"

    def __init__(self, *args, dtype=None, **kwargs):
        self._engine = engine(self.xp_name)
        self._kernels = kernels(self.xp_name)
        self._init_accel(dtype)
        super().__init__(*args, **kwargs)

    def _new_history(self, capacity=1024):
        if self.xp_name == "numpy":
            return NormedHistory(self.d, self.dr, capacity=capacity, dtype=self.dtype)
        return DeviceHistory(self.d, self.dr, capacity, self.dtype, self._engine.xp)

    def _history_pass(self, Z, mode, chi):
        h = self.history
        relu, m, lin = self._kernel_params()
        if self.xp_name == "numpy":
            P, pn, C = h.P, h.norms, h.C
        else:
            P, pn, C = h.P_dev, h.norms_dev, h.C_dev
        return self._engine.history_pass(Z, P, pn, C, mode, chi, relu, m, lin)


class InfiniteSimulator(AccelInfiniteMixin, refimpl.InfiniteSimulator):
    """:class:`refimpl.InfiniteSimulator` with NTK_inf's pair kernel on the GPU.

    ``dtype`` is accepted for a uniform interface; this model runs in float64.
    """

    xp_name = "cupy"

    def __init__(self, *args, dtype=None, **kwargs):
        self._kernels = kernels(self.xp_name)
        super().__init__(*args, **kwargs)


def numpy_path():
    """(BottleneckSimulator, InfiniteSimulator, kernels) of this backend's code running on NumPy."""
    bott = type("BottleneckSimulator", (BottleneckSimulator,), {"xp_name": "numpy"})
    inf = type("InfiniteSimulator", (InfiniteSimulator,), {"xp_name": "numpy"})
    return bott, inf, kernels("numpy")


def __getattr__(name):
    """Kernel functions (ntk, xi, ...) as module attributes, computed on the GPU."""
    if name in ("nngp", "sigmadot", "ntk", "xi", "xi_coefficients", "ntk_inf", "sigma1", "sigma2"):
        return getattr(kernels("cupy"), name)
    raise AttributeError(f"module 'accel.gpu' has no attribute {name!r}")
