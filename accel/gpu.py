"""CuPy backend: the history and the tracked inputs on the GPU, one fused history pass per query set.

The history pass and the pair kernels are :class:`accel.xpcore.XPEngine` over ``cupy``: the fused
kernel of :mod:`accel.fused_source` and its reduction (the GEMM pass only where not even a one-query,
one-row tile fits, no shape of the campaign); the per-pair terms are the CUDA-C source of :mod:`accel.pair_source`.  :class:`BottleneckEngine` and
:class:`InfiniteEngine` are the engines (:mod:`refimpl.engine`) that refimpl's simulators run on;
with ``xp_name="numpy"`` (:func:`accel.standin_backend`) the same engines run over the NumPy stand-in (:mod:`accel.standin`, the kernel source compiled
by gcc): that is what CI runs against the golden files, so only CuPy itself (and NVRTC) is left
untested without a GPU.  A training step runs in device memory with one copy back
(:meth:`BottleneckEngine.batch_step`: the fused passes, the head's f_0 and pullback, the loss and chi).

CuPy is imported lazily: importing this module never fails.  :func:`load_cupy` raises
:class:`BackendUnavailable` with a one-line reason when CuPy is missing, sees no device, or is
installed but broken (the driver is too old for the CUDA of the wheel, or the kernel source does
not compile or gives a wrong value on the device).

Not yet run on GPU hardware in this form (see docs/BENCHMARKS.md; ``pytest -m gpu`` and
``cli.py gpu-check`` are the checks to run there).
"""

from __future__ import annotations

import functools
import os

import numpy as np

from refimpl.dynamics import loss_terms
from refimpl.engine import Tracked, contract_xi
from refimpl.kernels import unit_rows
from refimpl.network import MLP
from refimpl.optim import momentum_direction

from . import archkernels, fused_source, kernelapi
from ._simbase import AccelBottleneckEngine, AccelInfiniteEngine, BackendUnavailable
from .standin import numpy_device
from .xpcore import XPEngine, device_unit_rows, tensor_cores_requested


def _reason(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


#: Environment variable: ``BOTTLENECK_GPU=standin`` runs the gpu backend on the NumPy stand-in
#: (accel.standin: the kernel source compiled by gcc), e.g. to try ``cli.py train --backend gpu``
#: or ``cli.py gpu-check`` without a GPU.  Slow; for testing the code path only.
STANDIN_ENV = "BOTTLENECK_GPU"


def standin_requested():
    """True when ``BOTTLENECK_GPU=standin`` is set."""
    return os.environ.get(STANDIN_ENV, "").strip().lower() == "standin"


def reset():
    """Forget the cached probe and engines (after changing BOTTLENECK_GPU)."""
    for fn in (_probe_cupy, engine, kernels):
        fn.cache_clear()


def _driver_reason(cupy, exc):
    """Why CuPy sees no device: no NVIDIA driver at all, a driver older than CuPy's CUDA, or
    (neither) the runtime's own message."""
    runtime = cupy.cuda.runtime
    try:
        driver = int(runtime.driverGetVersion())        # 0 when no driver is installed
    except Exception:                                   # noqa: BLE001 - no such call: ask the loader
        driver = None if _libcuda_present() else 0
    if driver == 0:
        return ("no NVIDIA driver found (CuPy is installed, but this machine has no libcuda: "
                "no GPU here, or its driver is not installed)")
    try:
        rt = int(runtime.runtimeGetVersion())
    except Exception:                                   # noqa: BLE001
        rt = None
    if driver is not None and rt is not None and driver < rt:
        return (f"the NVIDIA driver supports CUDA {_cuda_version(driver)}, older than the CUDA "
                f"{_cuda_version(rt)} of this CuPy: update the driver or install the cupy-cuda"
                f"{driver // 1000}x wheel that matches it")
    return f"CuPy sees no usable CUDA device ({_reason(exc)})"


def _cuda_version(v):
    return f"{v // 1000}.{(v % 1000) // 10}"


def _libcuda_present():
    """Whether the CUDA driver library (libcuda) can be found by the dynamic loader."""
    import ctypes.util
    if ctypes.util.find_library("cuda"):
        return True
    import ctypes
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            pass
    return False


def _probe():
    """(array module, None) when the gpu backend can run here, else (None, one-line reason).

    ``BOTTLENECK_GPU=standin`` is read at every call (never cached), so a stand-in run cannot leave
    a later run believing that a GPU is present; only the CuPy probe itself is cached.
    """
    if standin_requested():
        return numpy_device, None
    return _probe_cupy()


@functools.lru_cache(maxsize=None)
def _probe_cupy():
    """(cupy module, None) when CuPy works here, else (None, one-line reason).

    The reasons, each worded for its case: CuPy not installed; installed but not importable;
    no NVIDIA driver (no libcuda: e.g. a machine without a GPU); a driver older than the wheel's
    CUDA; a driver but no device; kernels that fail to compile or give a wrong value.
    """
    try:
        import cupy
    except ImportError as exc:
        if getattr(exc, "name", None) == "cupy":
            return None, "CuPy is not installed (pip install -e '.[gpu]'; 'cupy-cuda13x[ctk]' on CUDA 13)"
        return None, f"CuPy is installed but does not import ({_reason(exc)})"
    except Exception as exc:                           # noqa: BLE001 - a broken installation
        return None, f"CuPy is installed but does not import ({_reason(exc)})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:                           # noqa: BLE001 - driver missing or too old
        return None, _driver_reason(cupy, exc)
    if count < 1:
        return None, "CuPy sees no CUDA device (a driver is installed, but no GPU is visible: CUDA_VISIBLE_DEVICES?)"
    reason = kernel_check(cupy)
    return (None, reason) if reason else (cupy, None)


def kernel_check(xp):
    """Compile and run the pair kernel and the fused history pass once on ``xp`` (CuPy, or the
    stand-in in the tests): None when both give the known values, else the reason (one line)."""
    try:
        tensor_cores_requested()
    except ValueError as exc:
        return str(exc)
    try:
        eng = XPEngine(xp)
        got = eng.pair_kernel(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]]), "ntk")[0]
    except Exception as exc:                           # noqa: BLE001 - NVRTC, driver, ...
        return f"CuPy works but the GPU kernels fail ({_reason(exc)})"
    # orthogonal unit and 2x unit vector, m = 2: K = Sigma = (2/2)(0 + 1)/(2 pi)
    if not abs(float(got[0, 0]) - 1.0 / (2.0 * np.pi)) < 1e-12:
        return f"the GPU kernels give a wrong value ({float(got[0, 0])!r} for 1/(2 pi))"
    try:                                               # the fused history pass (accel.fused_source)
        P = xp.asarray(np.array([[1.0, 0.0], [0.0, 3.0]]))
        f = eng.history_pass(np.array([[0.0, 2.0]]), P, xp.asarray(np.array([1.0, 3.0])),
                             xp.asarray(np.array([[1.0], [0.0]])), 0, None, "relu", 2.0, 0.0)[0]
    except Exception as exc:                           # noqa: BLE001 - NVRTC, launch, ...
        return f"CuPy works but the fused history kernel fails ({_reason(exc)})"
    # the same pair (the second row has C = 0): f = 1/(2 pi)
    if not abs(float(f[0, 0]) - 1.0 / (2.0 * np.pi)) < 1e-12:
        return f"the fused history kernel gives a wrong value ({float(f[0, 0])!r} for 1/(2 pi))"
    return None


def load_cupy():
    """CuPy, checked to work on a device here; else BackendUnavailable with the cause (one line)."""
    cupy, reason = _probe()
    if cupy is None:
        raise BackendUnavailable(reason)
    return cupy


def available():
    """True when CuPy is installed, sees a CUDA device and runs the kernels."""
    return _probe()[0] is not None


def unavailable_reason():
    """Why the gpu backend cannot run here (one line), or None when it can."""
    return _probe()[1]


@functools.lru_cache(maxsize=None)
def engine(xp_name):
    """The engine for ``"cupy"`` or ``"numpy"`` (the NumPy stand-in: the CI path)."""
    return XPEngine(numpy_device if xp_name == "numpy" else load_cupy())


@functools.lru_cache(maxsize=None)
def kernels(xp_name):
    """Kernel functions (refimpl names and signatures) computed by :func:`engine`."""
    eng = engine(xp_name)
    return kernelapi.make_kernels(lambda X, Y, what: eng.pair_kernel(X, Y, what), eng.xp)


class DeviceTracked(Tracked):
    """A tracked set (:class:`refimpl.engine.Tracked`) whose inputs, their norms and unit rows (computed
    once) and values live in device memory; ``values`` reads and writes through to the host."""

    def __init__(self, X, values, xp):
        self.xp = xp
        norms, units = unit_rows(X)
        self.X_dev, self.norms_dev, self.units_dev = xp.asarray(X), xp.asarray(norms), xp.asarray(units)
        super().__init__(X, values)

    @property
    def values(self):
        return self.xp.asnumpy(self.values_dev)

    @values.setter
    def values(self, host):
        self.values_dev = self.xp.asarray(np.ascontiguousarray(host, dtype=np.float64))

    @property
    def velocity(self):
        """The velocity under momentum (MATH §8.4) on the host, or None."""
        v = getattr(self, "velocity_dev", None)
        return None if v is None else self.xp.asnumpy(v)

    @velocity.setter
    def velocity(self, host):
        self.velocity_dev = None if host is None else self.xp.asarray(np.ascontiguousarray(host, dtype=np.float64))

    def descend(self, inc, lr, beta=0.0, nesterov=False):
        """values -= lr inc, or a momentum step (:meth:`refimpl.engine.Tracked.descend`), in device memory."""
        xp = self.xp
        if not isinstance(inc, xp.ndarray):                 # the kernel-function route computes on the host
            inc = xp.asarray(inc)
        if beta == 0.0 and getattr(self, "velocity_dev", None) is None:
            self.values_dev -= lr * inc
            return
        if getattr(self, "velocity_dev", None) is None:
            self.velocity_dev = xp.zeros_like(self.values_dev)
        self.values_dev -= lr * momentum_direction(self.velocity_dev, inc, beta, nesterov)

    def rows(self, idx):
        """values[idx] on the host (one device-to-host copy of B x d)."""
        return self.xp.asnumpy(self.values_dev[self.xp.asarray(idx)])


class BottleneckEngine(AccelBottleneckEngine):
    """The engine of :class:`refimpl.BottleneckSimulator` (:mod:`refimpl.engine`) with the history, the
    tracked inputs and their embeddings in device memory.

    ``dtype`` ("float64" or "float32"): precision of the history and of its pass.  ``xp_name``
    selects the array module: "cupy", or "numpy" for the stand-in (:data:`accel.standin.numpy_device`).
    Per step, Theta of g against the tracked inputs is computed on the device from the norms and unit
    rows stored once: for the ReLU g of MATH §1 (layer scales that factor out) one GEMM and one pair
    kernel, for every other architecture the layer recursion on device arrays
    (:func:`accel.archkernels.ntk_increment`); only V (B x d) goes up.
    """

    def __init__(self, layers_g, layers_f, d, dr, dtype=None, xp_name="cupy"):
        self.device = engine(xp_name)
        super().__init__(layers_g, layers_f, d, dr, dtype=dtype, kernels=kernels(xp_name), xp=self.device.xp)
        #: False: the kernel functions on host arrays every step (the route before; for benchmarks)
        self.stored_route = True
        #: (host array, device array) pairs of the last device step (:meth:`device_copy`)
        self._step_copies = ()
        self.history.device_copy = self.device_copy
        #: False: the head's f_0, pullback, loss and chi on the host after the first pass's copy back (the
        #: route before :meth:`batch_step`; one more copy back where dr > fuse_max_dr; for benchmarks)
        self.device_step = True
        self.relu_pairs = layers_g.activation == "relu" and layers_g.kernel_scale is not None

    def track(self, X, values):
        return DeviceTracked(X, values, self.xp)

    def reset_history(self, capacity=1024):
        super().reset_history(capacity)
        self.history.device_copy = self.device_copy

    def device_copy(self, a):
        """The device array behind host array ``a`` if ``a`` is one that :meth:`batch_step` copied back this
        step (the batch indices, embeddings, chi, V), else None: the step's updates and the history append
        then read it where it is instead of copying it up again."""
        for host, dev in self._step_copies:
            if a is host:
                return dev
        return None

    def _to_device(self, a):
        dev = self.device_copy(a)
        return dev if dev is not None else self.xp.asarray(np.ascontiguousarray(a))

    def update_tracked(self, target, source, idx, V, lr, beta=0.0, nesterov=False):
        if not self.stored_route:
            return super().update_tracked(target, source, idx, V, lr, beta, nesterov)
        xp = self.xp
        idx_d = self._to_device(idx)
        V_d = self._to_device(np.asarray(V, dtype=np.float64))
        if not self.relu_pairs:
            inc = archkernels.ntk_increment(archkernels.full_module(xp), target.X_dev, target.norms_dev,
                                            target.units_dev, source.X_dev[idx_d], source.norms_dev[idx_d],
                                            source.units_dev[idx_d], V_d, self.layers_g)
            return target.descend(inc, lr, beta, nesterov)
        theta, _ = self.device.pair_kernel_device(target.X_dev, target.norms_dev, target.units_dev,
                                                  source.X_dev[idx_d], source.norms_dev[idx_d], "ntk")
        if not self.layers_g.closed_form:
            theta *= self.layers_g.kernel_scale
        target.descend(xp.matmul(theta, V_d), lr, beta, nesterov)

    def fast_pass(self, Z, mode, chi):
        h = self.history
        return self.device.history_pass(Z, h.P_dev, h.norms_dev, h.C_dev, mode, chi, self.head.kind,
                                        self.head.m, self.head.par)

    def batch_pass(self, tracked, idx, mode):
        """The batch's embeddings and the first history pass at them (:meth:`refimpl.engine.BottleneckEngine.batch_pass`)
        with one device-to-host copy: the embeddings are gathered on the device, the fused pass reads
        them there, and they come back with its results.  Where the fused pass does not apply (another
        head architecture, tiles that do not fit), the rows and the pass separately."""
        h = self.history
        pl = None
        if self.head.kind is not None and h.M:
            pl = self.device.plan(len(idx), h.M, self.d, self.dr, mode, h.P_dev.dtype, self.head.kind)
        if pl is None:
            return super().batch_pass(tracked, idx, mode)
        Zd = tracked.values_dev[self.xp.asarray(idx)]
        return self.device.fused_history_pass(Zd, h.P_dev, h.norms_dev, h.C_dev, mode, None, self.head.kind,
                                              self.head.m, self.head.par, pl, device_queries=True)

    def device_head(self, net):
        """The head f of ``net`` (:class:`refimpl.network.MLP`) with its weights in device memory, copied
        once per network; None for a network without the head's weights (the host route then)."""
        try:
            weights, biases, stds = net.f_weights, net.f_biases, net.layers_f.layer_stds()
        except AttributeError:
            return None
        if getattr(self, "_head_of", None) is not net:
            self._head = MLP(weights, net.layers_f.activation, archkernels.full_module(self.xp), "f_weights",
                             biases, stds)
            self._head_of = net
        return self._head

    def batch_step(self, sim, idx):
        """(Z, loss, chi, V) of a step (:func:`refimpl.engine.batch_step`) computed in device memory with one
        device-to-host copy: the batch's embeddings are gathered there, the fused pass(es) leave f, T and
        the beta sums there, the head's f_0 and pullback run on its device copy (:meth:`device_head`), the
        loss, chi and V = J_t(Z)^T chi are formed there, and Z, the loss, chi and V come back together.  Where
        dr exceeds ``fuse_max_dr`` the second pass (mode 2) takes chi from device memory.  Where the fused
        pass does not apply (another head architecture, an empty history, tiles that do not fit): the host
        route."""
        self._step_copies = ()
        h, kind = self.history, self.head.kind
        head = self.device_head(sim.net) if kind is not None and h.M and self.stored_route and self.device_step \
            else None
        mode = sim.first_pass_mode()
        B, d, dr = len(idx), self.d, self.dr
        plans = [self.device.plan(B, h.M, d, dr, m, h.P_dev.dtype, kind) for m in ((mode,) if mode else (0, 2))] \
            if head is not None else [None]
        if any(pl is None for pl in plans):
            return super().batch_step(sim, idx)
        xp, fx, dev = self.xp, archkernels.full_module(self.xp), self.device
        idx_d = xp.asarray(idx)
        Zd = sim.train_tracked.values_dev[idx_d]

        def history_pass(mode, chi, pl):
            return dev.fused_history_pass(Zd, h.P_dev, h.norms_dev, h.C_dev, mode, chi, kind, self.head.m,
                                          self.head.par, pl, device_queries=True, results="device",
                                          query_rows=(zn, Zh))
        with np.errstate(all="ignore"):      # the stand-in's NumPy: a diverged step is judged below, once
            zn, Zh = device_unit_rows(fx, Zd)                  # once for both passes and the contraction
            fh, T, bsum = history_pass(mode, None, plans[0])
            f0, cache = head.forward(Zd, keep=True)
            loss, chi = loss_terms(f0 - sim.lr_f * fh, xp.asarray(sim.Y[idx]), sim.loss, fx)
            if mode == 1:
                xi_sum = contract_xi(chi, T, bsum, Zd, fx, Zh)
            else:
                _, T, bsum = history_pass(2, chi, plans[1])
                xi_sum = contract_xi(fx.ones((B, 1)), T, bsum, Zd, fx, Zh)
            V = head.backward(cache, chi) - sim.lr_f * xi_sum
        host = xp.asnumpy(fx.concatenate([fx.reshape(loss, (1,)), Zd.ravel(), chi.ravel(), V.ravel()]))  # one copy
        loss = float(host[0])
        sim.check_batch_loss(loss)
        Z = host[1:1 + B * d].reshape(B, d)
        chi_h, V_h = host[1 + B * d:1 + B * (d + dr)].reshape(B, dr), host[1 + B * (d + dr):].reshape(B, d)
        self._step_copies = ((idx, idx_d), (Z, Zd), (chi_h, chi), (V_h, V))
        return Z, loss, chi_h, V_h


class InfiniteEngine(AccelInfiniteEngine):
    """The engine of :class:`refimpl.InfiniteSimulator` with NTK_inf's pair kernel on the GPU
    (always float64: this model has no history).

    The tracked inputs, their norms and unit rows (computed once) and their outputs live in device
    memory (:class:`DeviceTracked`); per step NTK_inf against them is the composed layer recursion on
    the device (:func:`accel.archkernels.composed_increment`), and only the batch's chi goes up.
    """

    def __init__(self, layers_g, layers_f, lr_f, lr_g, xp_name="cupy"):
        self.device = engine(xp_name)
        super().__init__(layers_g, layers_f, lr_f, lr_g, kernels=kernels(xp_name))
        self.xp = self.device.xp
        #: False: the kernel functions on host arrays every step (the route before; for benchmarks)
        self.stored_route = True

    def track(self, X, values):
        return DeviceTracked(X, values, self.xp)

    def update_tracked(self, target, source, idx, chi, rate=1.0, beta=0.0, nesterov=False):
        """target.values -= rate NTK_inf(target.X, source.X[idx]) @ chi, in device memory (MATH §5, §8.4)."""
        if not self.stored_route:
            return super().update_tracked(target, source, idx, chi, rate, beta, nesterov)
        xp = self.xp
        idx_d = xp.asarray(idx)
        inc = archkernels.composed_increment(
            archkernels.full_module(xp), target.X_dev, target.norms_dev, target.units_dev, source.X_dev[idx_d],
            source.norms_dev[idx_d], source.units_dev[idx_d], xp.asarray(np.ascontiguousarray(chi, dtype=np.float64)),
            self.layers_g, self.layers_f, self.lr_f, self.lr_g)
        target.descend(inc, rate, beta, nesterov)


def memory_pool_peak():
    """Bytes held by CuPy's default memory pool (its high-water mark: the pool never shrinks
    unless freed), or None without CuPy."""
    cupy, _ = _probe()
    return None if cupy is None else int(cupy.get_default_memory_pool().total_bytes())


def free_pool():
    """Release the free blocks of CuPy's memory pool (so that its next high-water mark is one step's)."""
    cupy, _ = _probe()
    if cupy is not None:
        cupy.get_default_memory_pool().free_all_blocks()


def synchronize():
    """Wait for the device (no-op without CuPy)."""
    cupy, _ = _probe()
    if cupy is not None:
        cupy.cuda.Device().synchronize()


def __getattr__(name):
    """Kernel functions (ntk, xi, ...) as module attributes, computed on the GPU."""
    if name in kernelapi.KERNEL_NAMES:
        return getattr(kernels("cupy"), name)
    raise AttributeError(f"module 'accel.gpu' has no attribute {name!r}")
