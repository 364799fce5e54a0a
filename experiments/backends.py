"""Which backend runs: the names ``numpy``, ``cpu``, ``gpu`` and ``auto`` resolved to a backend object.

A backend object provides BottleneckSimulator, InfiniteSimulator and ChainSimulator (``refimpl`` for
``numpy``, :func:`accel.get_backend` otherwise); ``auto`` is the gpu where a usable GPU is present, else
cpu, else numpy.  Every command (train, sweep, verify, the probe, the campaign, finite networks) chooses
its backend here, so an unavailable one is refused with the same one-line reason everywhere.
"""

from __future__ import annotations

from .validate import TrainError


def resolve_backend(name, dtype="float64"):
    """The module-like object that provides BottleneckSimulator and InfiniteSimulator ("auto": see
    :func:`auto_backend`)."""
    if name == "auto":
        name = auto_backend(dtype)
    if name == "numpy":
        import refimpl
        return refimpl
    try:
        import accel
        get_backend = accel.get_backend
    except (ImportError, AttributeError):
        raise TrainError(f"backend: {name!r} is not available in this installation "
                         "(the accelerated backends are not built); use --backend numpy") from None
    try:
        return get_backend(name, dtype=dtype)
    except (accel.BackendUnavailable, ValueError) as exc:   # the backend's own one-line reason
        raise TrainError(f"backend: {name!r} is unavailable: {exc}") from None


def auto_backend(dtype="float64"):
    """The backend ``auto`` stands for here: "gpu" where a usable GPU is present, else "cpu" (Numba), else
    "numpy" (the reference; also for a dtype the accelerated backends cannot give)."""
    try:
        import accel
        from accel import gpu
        if gpu.available():
            return "gpu"
        accel.get_backend("cpu", dtype=dtype)
        return "cpu"
    except Exception:          # noqa: BLE001 - no accelerated backend here: the reference always runs
        return "numpy"


def settle_backend(config, log=None):
    """Resolve ``config.backend == "auto"`` to the backend that will run, keeping what was asked in
    ``config.backend_requested``; ``log`` the choice once.  Returns the backend name."""
    if config.backend_requested is None:
        config.backend_requested = config.backend
    if config.backend == "auto":
        config.backend = auto_backend(config.dtype)
    if log is not None:
        asked = config.backend_requested
        log(f"backend: {config.backend}" + (f" ({asked}: "
            + {"gpu": "a usable GPU is present", "cpu": "no usable GPU; Numba on the CPU",
               "numpy": "no accelerated backend here; the NumPy reference"}[config.backend] + ")"
            if asked == "auto" else ""))
    return config.backend
