"""Accelerated backends of bottleneck-dynamics.

``get_backend(name, dtype)`` returns an object that exposes
``BottleneckSimulator``, ``InfiniteSimulator`` and the kernel functions
(``nngp, sigmadot, ntk, xi, xi_coefficients, sigma1, sigma2, ntk_inf``) under
refimpl's names and signatures:

========  =========================================================
numpy     :mod:`refimpl` itself (float64 only)
cpu       :mod:`accel.cpu`, Numba, parallel over the cores
gpu       :mod:`accel.gpu`, CuPy (cuBLAS GEMMs, one elementwise kernel for the pair terms)
auto      gpu when CuPy sees a CUDA device, else cpu
========  =========================================================

Every backend runs refimpl's own simulators; what differs is the *engine*
(:mod:`refimpl.engine`: history storage, tracked inputs, Theta, the history
pass) handed to them.  ``dtype`` ("float64" or "float32") sets the precision
of the history and of its pass.

:class:`BackendUnavailable` (a RuntimeError with a one-line message) is
raised when a backend cannot run here, e.g. ``gpu`` without CuPy or device.
"""

from __future__ import annotations

import functools

import numpy as np

import refimpl
import refimpl.chain

from ._simbase import BackendUnavailable, check_dtype

BACKENDS = ("numpy", "cpu", "gpu", "auto")
KERNEL_NAMES = ("nngp", "sigmadot", "ntk", "xi", "xi_coefficients", "sigma1", "sigma2", "ntk_inf")

__all__ = ["BackendUnavailable", "Backend", "get_backend", "standin_backend", "available_backends", "BACKENDS"]


class Backend:
    """A backend: engines bound to a dtype, refimpl's simulators over them, and the kernel functions.

    Attributes
    ----------
    name : str            "numpy", "cpu" or "gpu" (what "auto" resolved to)
    dtype : str           "float64" or "float32"
    nngp, sigmadot, ntk, xi, xi_coefficients, sigma1, sigma2, ntk_inf : kernel functions

    ``engines(dtype)`` gives the (bottleneck, infinite) engine factories of :mod:`refimpl.engine`;
    ``BottleneckSimulator(...)`` and ``InfiniteSimulator(...)`` take refimpl's constructor arguments
    (plus ``dtype``, default the backend's) and return refimpl's simulators on these engines.
    """

    def __init__(self, name, dtype, engines, kernels):
        self.name = name
        self.dtype = dtype
        #: Why "auto" chose this backend (one line), None when it was named.
        self.chosen_because = None
        self._make_engines = engines
        for k in KERNEL_NAMES:
            setattr(self, k, getattr(kernels, k))

    def engines(self, dtype=None):
        """(bottleneck, infinite) engine factories at ``dtype`` (default the backend's)."""
        return self._make_engines(check_dtype(self.dtype if dtype is None else dtype))

    def BottleneckSimulator(self, *args, dtype=None, **kwargs):       # noqa: N802 - refimpl's class name
        """:class:`refimpl.BottleneckSimulator` on this backend's engine."""
        return refimpl.BottleneckSimulator(*args, engine=self.engines(dtype)[0], **kwargs)

    def InfiniteSimulator(self, *args, dtype=None, **kwargs):         # noqa: N802
        """:class:`refimpl.InfiniteSimulator` on this backend's engine (float64 whatever ``dtype``)."""
        return refimpl.InfiniteSimulator(*args, engine=self.engines(dtype)[1], **kwargs)

    def ChainSimulator(self, *args, dtype=None, **kwargs):            # noqa: N802
        """:class:`refimpl.chain.ChainSimulator` (several bottlenecks, MATH §9) on this backend's
        bottleneck engine, one per head."""
        return refimpl.chain.ChainSimulator(*args, engine=self.engines(dtype)[0], **kwargs)

    def __repr__(self):
        return f"<accel backend {self.name} ({self.dtype})>"


def _numpy_engines(dtype):
    if dtype is not np.float64:
        raise ValueError("dtype: the numpy reference backend is float64 only")
    from refimpl import engine
    return engine.BottleneckEngine, engine.InfiniteEngine


def _accel_engines(module, **kw):
    """dtype -> engine factories of the accel backend ``module`` (cpu or gpu)."""
    def make(dtype):
        return (functools.partial(module.BottleneckEngine, dtype=dtype, **kw),
                functools.partial(module.InfiniteEngine, **kw))
    return make


def get_backend(name, dtype="float64"):
    """The backend ``name`` (numpy, cpu, gpu, auto) at precision ``dtype`` (float64, float32).

    Raises
    ------
    ValueError
        Unknown name or dtype, or float32 with the numpy reference.
    BackendUnavailable
        The backend cannot run here (one-line reason).
    """
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
    check_dtype(dtype)
    dtype = str(dtype if isinstance(dtype, str) else check_dtype(dtype)().dtype)
    why = None
    if name == "auto":
        from . import gpu
        name = "gpu" if gpu.available() else "cpu"
        why = ("auto: a working CUDA device" if name == "gpu"
               else f"auto: cpu, since the gpu backend is unavailable: {gpu.unavailable_reason()}")
    if name == "numpy":
        if dtype != "float64":
            raise ValueError("dtype: the numpy reference backend is float64 only")
        from refimpl import kernels
        return Backend("numpy", dtype, _numpy_engines, kernels)
    if name == "cpu":
        try:
            from . import cpu
        except ImportError as exc:            # pragma: no cover - numba is a dependency
            raise BackendUnavailable(f"Numba cannot be imported ({exc})") from None
        be = Backend("cpu", dtype, _accel_engines(cpu), cpu._KernelFunctions)
        be.chosen_because = why
        return be
    from . import gpu
    gpu.load_cupy()
    be = Backend("gpu", dtype, _accel_engines(gpu), gpu.kernels("cupy"))
    be.chosen_because = why
    return be


def standin_backend(dtype="float64"):
    """The gpu backend's code on the NumPy stand-in (:mod:`accel.standin`: its kernel source compiled
    by the host C compiler), named "gpu-path/numpy": what CI can test of the GPU path without a GPU."""
    from . import gpu
    return Backend("gpu-path/numpy", str(np.dtype(check_dtype(dtype))), _accel_engines(gpu, xp_name="numpy"),
                   gpu.kernels("numpy"))


def available_backends():
    """Names of the backends that can run here, in the order numpy, cpu, gpu."""
    out = ["numpy"]
    try:
        get_backend("cpu")
        out.append("cpu")
    except BackendUnavailable:
        pass
    from . import gpu
    if gpu.available():
        out.append("gpu")
    return out


def golden_targets(include_numpy_path=True):
    """(label, backend, dtype) for every backend available here, for experiments.golden.check.

    Includes "gpu-path/numpy": the GPU backend's code on the NumPy stand-in, its kernel
    source compiled by the host C compiler (what CI can test without a GPU; left out when
    there is no C compiler).
    """
    targets = [("numpy", get_backend("numpy"), "float64")]
    for name in available_backends()[1:]:
        for dtype in ("float64", "float32"):
            targets.append((f"{name}/{dtype}", get_backend(name, dtype), dtype))
    from .standin import compiler
    if include_numpy_path and compiler() is not None:
        for dtype in ("float64", "float32"):
            targets.append((f"gpu-path/numpy/{dtype}", standin_backend(dtype), dtype))
    return targets
