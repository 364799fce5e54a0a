"""What the accelerated engines share: history storage with norms, dtype, the head architecture.

A backend is an *engine* of :mod:`refimpl.engine`'s interface, handed to refimpl's own
simulators (``engine=``); all bookkeeping (step, tracked sets, A, state_dict) stays in
refimpl.  :class:`AccelBottleneckEngine` implements that interface over

* :class:`ArrayHistory`, the history on an array module (NumPy for cpu, CuPy or its NumPy
  stand-in for gpu), with the row norms computed once at append time;
* :class:`HeadArch`, the head architecture translated once into what the fast passes need;
* a subclass's ``fast_pass(Z, mode, chi)`` (one pass over the history, modes as in
  :mod:`refimpl.engine`), ``track`` and ``update_tracked``; heads whose kernel has no fast
  form go through :func:`accel.archkernels.history_pass` over the same stored history.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refimpl.engine import MomentumRows, Tracked, grown
from refimpl.engine import batch_step as refimpl_batch_step

from . import archkernels

DTYPES = {"float64": np.float64, "float32": np.float32}


class BackendUnavailable(RuntimeError):
    """A backend cannot run on this machine; the message (one line) says why."""


#: f and J^T chi of a step come from one history pass (mode 1) when dr is at most this: mode 1
#: costs dr times the flops of the Xi contraction (the angles, the expensive part, once).
FUSE_MAX_DR = 4


def check_dtype(dtype):
    """Return the NumPy scalar type for ``"float64"`` / ``"float32"`` (or the types themselves)."""
    if dtype is None:
        return np.float64
    key = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if key not in DTYPES:
        raise ValueError(f"dtype: expected 'float64' or 'float32', got {dtype!r}")
    return DTYPES[key]


class HeadArch(NamedTuple):
    """The head kernel K (and Xi) in the form of the fast passes (MATH §2, §2.2).

    kind : "relu", "linear", or None (no fast form: the layer recursion of accel.archkernels)
    m : float     the scale of K: d / c, with c the layer scales that factor out of K
                  (:attr:`refimpl.kernels.Layers.kernel_scale`); K, alpha, beta are all prop. to 1/m
    par : float   the depth L_f (linear: K = L_f x.y / m)
    """

    kind: str | None
    m: float
    par: float

    @classmethod
    def of(cls, layers, d):
        """The head architecture of ``layers`` (a refimpl Layers) at bottleneck width d."""
        scale = layers.kernel_scale
        if scale is None:
            return cls(None, float(d), float(layers.depth))
        return cls(layers.activation, float(d) / scale, float(layers.depth))


class ArrayHistory(MomentumRows):
    """The history of :class:`refimpl.engine.History` on an array module, with float64 row norms.

    One store for every backend: ``xp`` is NumPy (cpu backend) or CuPy / its NumPy stand-in
    (gpu backend, device memory).  Rows are kept in ``dtype`` (float32 or float64); the norms
    |P_m| are those of the rows as stored (after rounding to ``dtype``), computed once at append
    time so that no step recomputes them.  Grows by amortised doubling.

    ``P``, ``C``, ``norms`` are host (NumPy) arrays, for checkpoints; ``P_dev``, ``C_dev``,
    ``norms_dev`` are the arrays on ``xp`` for the hot loop.
    """

    #: None, or a callable: host array -> the same values already in device memory (or None); set by an
    #: engine whose step computed the rows there (:meth:`accel.gpu.BottleneckEngine.device_copy`), so that
    #: :meth:`append` does not copy them up again.
    device_copy = None

    def __init__(self, d, dr, capacity=1024, dtype=np.float64, xp=np):
        self.xp = xp
        self.dtype = np.dtype(dtype)
        self.store_P = xp.empty((capacity, d), dtype=dtype)
        self.store_C = xp.empty((capacity, dr), dtype=dtype)
        self.store_norms = xp.empty((capacity,), dtype=np.float64)
        self.M = 0

    def append(self, P, C, rate=1.0, beta=0.0, nesterov=False):
        """Append rows (host arrays); copies the storage only when it is full (capacity doubles).

        ``rate``, ``beta``, ``nesterov``: the per-entry weights of a schedule and momentum
        (:class:`refimpl.engine.MomentumRows`, MATH §8.3), kept in C; the defaults store C as given.
        """
        xp = self.xp
        k = P.shape[0]
        start = self.M
        if start + k > self.store_P.shape[0]:
            cap = max(2 * self.store_P.shape[0], start + k)
            self.store_P = grown(xp, self.store_P, cap, start)
            self.store_C = grown(xp, self.store_C, cap, start)
            self.store_norms = grown(xp, self.store_norms, cap, start)
        self.store_P[start:start + k] = self.rows_on_device(P)
        self.store_C[start:start + k] = self.rows_on_device(C)
        self.M += k
        rows = self.store_P[start:self.M].astype(np.float64)
        self.store_norms[start:self.M] = xp.sqrt((rows * rows).sum(axis=1))
        self.weigh_appended(start, rate, beta, nesterov)

    def rows_on_device(self, a):
        """Rows ``a`` (host) in ``dtype`` on ``xp``: the device copy where :attr:`device_copy` has one."""
        dev = self.device_copy(a) if self.device_copy is not None else None
        if dev is not None:
            return dev.astype(self.dtype)
        return self.xp.asarray(np.asarray(a, dtype=self.dtype))

    P_dev = property(lambda self: self.store_P[:self.M])
    C_dev = property(lambda self: self.store_C[:self.M])
    norms_dev = property(lambda self: self.store_norms[:self.M])

    @property
    def P(self):
        """(M, d) stored embeddings, on the host."""
        return self.to_host(self.P_dev)

    @property
    def C(self):
        """(M, dr) stored loss derivatives, on the host."""
        return self.to_host(self.C_dev)

    @property
    def norms(self):
        """(M,) float64 norms of the stored embeddings, on the host."""
        return self.to_host(self.norms_dev)


class AccelBottleneckEngine:
    """The engine interface of :class:`refimpl.engine.BottleneckEngine` over a backend's history pass.

    Parameters
    ----------
    layers_g, layers_f : Layers;  d, dr : int   as refimpl's engine
    dtype : "float64" or "float32"   precision of the stored history and of its pass
    kernels : namespace   the backend's kernel functions (refimpl names; Theta of untracked inputs)
    xp : module   array module of the history (NumPy, CuPy or the stand-in)
    """

    fuse_max_dr = FUSE_MAX_DR

    def __init__(self, layers_g, layers_f, d, dr, dtype=None, kernels=None, xp=np):
        self.layers_g, self.layers_f, self.d, self.dr = layers_g, layers_f, d, dr
        self.dtype = check_dtype(dtype)
        self.kernels = kernels
        self.xp = xp
        self.head = HeadArch.of(layers_f, d)
        self.history = ArrayHistory(d, dr, dtype=self.dtype, xp=xp)

    def reset_history(self, capacity=1024):
        self.history = ArrayHistory(self.d, self.dr, capacity=capacity, dtype=self.dtype, xp=self.xp)

    def track(self, X, values):
        return Tracked(X, values)

    def theta(self, Xq, tracked):
        """Theta(Xq, tracked.X), (q, n)."""
        return self.kernels.ntk(Xq, tracked.X, self.layers_g)

    def update_tracked(self, target, source, idx, V, lr, beta=0.0, nesterov=False):
        """target.values -= lr Theta(target.X, source.X[idx]) @ V (momentum: :meth:`Tracked.descend`)."""
        target.descend(self.kernels.ntk(target.X, source.X[idx], self.layers_g) @ V, lr, beta, nesterov)

    def batch_pass(self, tracked, idx, mode):
        """The batch's embeddings and the history pass at them (:meth:`refimpl.engine.BottleneckEngine.batch_pass`)."""
        Z = tracked.rows(idx)
        return Z, self.history_pass(Z, mode)

    def batch_step(self, sim, idx):
        """(Z, loss, chi, V) of a step (:func:`refimpl.engine.batch_step`, on the host)."""
        return refimpl_batch_step(self, sim, idx)

    def history_pass(self, Z, mode, chi=None):
        """f, T, bsum (host float64) over the stored history; modes as in :mod:`refimpl.engine`."""
        chi = None if chi is None else np.ascontiguousarray(chi, dtype=np.float64)
        if self.head.kind is not None:
            return self.fast_pass(np.ascontiguousarray(Z, dtype=np.float64), mode, chi)
        h = self.history
        return archkernels.history_pass(h.xp, Z, h.P_dev, h.C_dev, mode, chi, self.layers_f)

    def fast_pass(self, Z, mode, chi):            # pragma: no cover - supplied by each backend
        raise NotImplementedError


class AccelInfiniteEngine:
    """The engine interface of :class:`refimpl.engine.InfiniteEngine` over a backend's kernels."""

    def __init__(self, layers_g, layers_f, lr_f, lr_g, kernels=None):
        self.layers_g, self.layers_f, self.lr_f, self.lr_g = layers_g, layers_f, lr_f, lr_g
        self.kernels = kernels

    def track(self, X, values):
        return Tracked(X, values)

    def ntk(self, Xq, tracked):
        """NTK_inf(Xq, tracked.X) weighted by the rates, (q, n)."""
        return self.ntk_inf(Xq, tracked.X)

    def update_tracked(self, target, source, idx, chi, rate=1.0, beta=0.0, nesterov=False):
        """target.values -= rate NTK_inf(target.X, source.X[idx]) @ chi (momentum: :meth:`Tracked.descend`)."""
        target.descend(self.ntk_inf(target.X, source.X[idx]) @ chi, rate, beta, nesterov)

    def ntk_inf(self, Xa, Xb):
        return self.kernels.ntk_inf(Xa, Xb, lr_f=self.lr_f, lr_g=self.lr_g, layers_g=self.layers_g,
                                    layers_f=self.layers_f)
