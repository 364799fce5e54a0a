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

The simulators of a backend are subclasses of refimpl's that override only
the kernel hooks and the history storage; ``dtype`` ("float64" or
"float32") sets the precision of the history and of its pass.

:class:`BackendUnavailable` (a RuntimeError with a one-line message) is
raised when a backend cannot run here, e.g. ``gpu`` without CuPy or device.
"""

from __future__ import annotations

from ._simbase import BackendUnavailable, check_dtype

BACKENDS = ("numpy", "cpu", "gpu", "auto")
KERNEL_NAMES = ("nngp", "sigmadot", "ntk", "xi", "xi_coefficients", "sigma1", "sigma2", "ntk_inf")

__all__ = ["BackendUnavailable", "Backend", "get_backend", "available_backends", "BACKENDS"]


class Backend:
    """A backend: simulators bound to a dtype, and the kernel functions.

    Attributes
    ----------
    name : str            "numpy", "cpu" or "gpu" (what "auto" resolved to)
    dtype : str           "float64" or "float32"
    BottleneckSimulator, InfiniteSimulator : classes with refimpl's constructor signatures
    nngp, sigmadot, ntk, xi, xi_coefficients, sigma1, sigma2, ntk_inf : kernel functions
    """

    def __init__(self, name, dtype, bottleneck, infinite, kernels):
        self.name = name
        self.dtype = dtype
        #: Why "auto" chose this backend (one line), None when it was named.
        self.chosen_because = None
        self.BottleneckSimulator = bottleneck
        self.InfiniteSimulator = infinite
        for k in KERNEL_NAMES:
            setattr(self, k, getattr(kernels, k))

    def __repr__(self):
        return f"<accel backend {self.name} ({self.dtype})>"


def _bind_dtype(cls, dtype):
    """A subclass of ``cls`` whose instances default to ``dtype`` (same name and signature)."""
    return type(cls.__name__, (cls,), {"dtype": check_dtype(dtype), "__module__": cls.__module__,
                                        "__doc__": cls.__doc__})


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
        import refimpl
        from refimpl import kernels
        return Backend("numpy", dtype, refimpl.BottleneckSimulator, refimpl.InfiniteSimulator, kernels)
    if name == "cpu":
        try:
            from . import cpu
        except ImportError as exc:            # pragma: no cover - numba is a dependency
            raise BackendUnavailable(f"Numba cannot be imported ({exc})") from None
        be = Backend("cpu", dtype, _bind_dtype(cpu.BottleneckSimulator, dtype),
                     _bind_dtype(cpu.InfiniteSimulator, dtype), cpu._KernelFunctions)
        be.chosen_because = why
        return be
    from . import gpu
    gpu.load_cupy()
    be = Backend("gpu", dtype, _bind_dtype(gpu.BottleneckSimulator, dtype),
                 _bind_dtype(gpu.InfiniteSimulator, dtype), gpu.kernels("cupy"))
    be.chosen_because = why
    return be


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
        from . import gpu
        bott, inf, kern = gpu.numpy_path()
        for dtype in ("float64", "float32"):
            targets.append((f"gpu-path/numpy/{dtype}",
                            Backend("gpu-path/numpy", dtype, _bind_dtype(bott, dtype),
                                    _bind_dtype(inf, dtype), kern), dtype))
    return targets
