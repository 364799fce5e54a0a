"""What the accelerated simulators share: history storage with norms, dtype, the fused step pass.

A backend subclasses :class:`refimpl.BottleneckSimulator` through
:class:`AccelBottleneckMixin` and supplies only

* ``_kernels``: a namespace with ``ntk`` and ``ntk_inf`` (used by the ``_theta``
  and ``_ntk`` hooks), and
* ``_history_pass(Z, mode, chi)``: one pass over the stored history.

All bookkeeping (step, tracked sets, A, state_dict) stays in refimpl.

The history pass (MATH §4) returns, for queries Z (q, d),

    f[b]       = sum_m K(Z_b, P_m) C_m                              (q, dr)
    T[b, r]    = sum_m alpha(Z_b, P_m) w_m,r P_m                    (q, R, d)
    bsum[b, r] = sum_m beta(Z_b, P_m) w_m,r                         (q, R)

with ``w = C`` (mode 1, R = dr) or ``w_m = C_m . chi_b`` (mode 2, R = 1); mode 0
computes f only.  Then ``sum_m (C_m . chi_b) Xi(Z_b, P_m) = sum_r chi_b,r
T[b, r] + (sum_r chi_b,r bsum[b, r]) Z^_b``.  In a training step f and
J^T chi are needed at the same batch points, so ``_hist_f`` at a small batch
runs mode 1 and keeps T, and the following ``_hist_jt_chi`` contracts it with
chi: one pass over the history per step instead of two (the angles, the
expensive part, are computed once).  This costs dr times the flops of the
Xi contraction, so it is used for ``dr <= FUSE_MAX_DR`` only.
"""

from __future__ import annotations

import numpy as np

from refimpl.dynamics import History
from refimpl.kernels import as_points, unit_rows

from . import archkernels

DTYPES = {"float64": np.float64, "float32": np.float32}


class BackendUnavailable(RuntimeError):
    """A backend cannot run on this machine; the message (one line) says why."""

#: The fused f + Xi pass is used when the query has at most this many rows ...
FUSE_MAX_ROWS = 256
#: ... and the output dimension is at most this.
FUSE_MAX_DR = 4


def check_dtype(dtype):
    """Return the NumPy scalar type for ``"float64"`` / ``"float32"`` (or the types themselves)."""
    if dtype is None:
        return np.float64
    key = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if key not in DTYPES:
        raise ValueError(f"dtype: expected 'float64' or 'float32', got {dtype!r}")
    return DTYPES[key]


class ArrayHistory(History):
    """The history of :class:`refimpl.History` on an array module, with float64 row norms.

    One store for every backend: ``xp`` is NumPy (cpu backend) or CuPy / its NumPy stand-in
    (gpu backend, device memory).  Rows are kept in ``dtype`` (float32 or float64); the norms
    |P_m| are those of the rows as stored (after rounding to ``dtype``), computed once at append
    time so that no step recomputes them.  Growth (amortised doubling) is refimpl's.

    ``P``, ``C``, ``norms`` are host (NumPy) arrays, for checkpoints and refimpl's
    ``jacobian``; ``P_dev``, ``C_dev``, ``norms_dev`` are the arrays on ``xp`` for the hot loop.
    """

    _arrays = ("_P", "_C", "_norms")

    def __init__(self, d, dr, capacity=1024, dtype=np.float64, xp=np):
        self.xp = xp
        self.dtype = np.dtype(dtype)
        super().__init__(d, dr, capacity=capacity, dtype=dtype)
        self._norms = self._empty((capacity,), np.float64)

    def _empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def append(self, P, C):
        xp = self.xp
        start = self.M
        super().append(xp.asarray(np.asarray(P, dtype=self.dtype)),
                       xp.asarray(np.asarray(C, dtype=self.dtype)))
        rows = self._P[start:self.M].astype(np.float64)
        self._norms[start:self.M] = xp.sqrt((rows * rows).sum(axis=1))

    def _host(self, a):
        return a if self.xp is np else self.xp.asnumpy(a)

    P_dev = property(lambda self: self._P[:self.M])
    C_dev = property(lambda self: self._C[:self.M])
    norms_dev = property(lambda self: self._norms[:self.M])

    @property
    def P(self):
        """(M, d) stored embeddings, on the host."""
        return self._host(self.P_dev)

    @property
    def C(self):
        """(M, dr) stored loss derivatives, on the host."""
        return self._host(self.C_dev)

    @property
    def norms(self):
        """(M,) float64 norms of the stored embeddings, on the host."""
        return self._host(self.norms_dev)


class AccelBottleneckMixin:
    """Hooks of :class:`refimpl.BottleneckSimulator` over a backend's history pass."""

    #: Storage and compute precision of the history pass (set by accel.get_backend).
    dtype = np.float64
    _kernels = None

    def _init_accel(self, dtype):
        self.dtype = check_dtype(dtype if dtype is not None else type(self).dtype)
        self._fused = None

    def _new_history(self, capacity=1024):
        return ArrayHistory(self.d, self.dr, capacity=capacity, dtype=self.dtype)

    def _theta(self, Xa, Xb):
        return self._kernels.ntk(Xa, Xb, self.layers_g)

    def _pass(self, Z, mode, chi):
        """The backend's history pass, or for a head of another architecture (MATH §2.2) the
        array-module pass of :mod:`accel.archkernels` over the same stored history."""
        if self.layers_f.kernel_scale is not None:
            return self._history_pass(Z, mode, chi)
        h = self.history
        return archkernels.history_pass(h.xp, Z, h.P_dev, h.C_dev, mode, chi, self.layers_f)

    def _hist_f(self, Z):
        fuse = Z.shape[0] <= FUSE_MAX_ROWS and self.dr <= FUSE_MAX_DR
        f, T, bsum = self._pass(Z, 1 if fuse else 0, None)
        self._fused = (self.history, self.history.M, Z.copy(), T, bsum) if fuse else None
        return f

    def _hist_jt_chi(self, Z, chi):
        _, Zh = unit_rows(Z)
        cached, self._fused = self._fused, None
        if (cached is not None and cached[0] is self.history and cached[1] == self.history.M
                and cached[2].shape == Z.shape and np.array_equal(cached[2], Z)):
            T, bsum = cached[3], cached[4]
            return np.einsum("br,brk->bk", chi, T) + np.sum(chi * bsum, axis=1)[:, None] * Zh
        _, T, bsum = self._pass(Z, 2, np.ascontiguousarray(chi, dtype=np.float64))
        return T[:, 0, :] + bsum[:, 0][:, None] * Zh

    def jacobian(self, Z):
        """J_t(Z) = df_t/dx at bottleneck points Z, (q, d) -> (q, dr, d) (paper eq 13; MATH §4).

        As :meth:`refimpl.BottleneckSimulator.jacobian`, from one history pass in mode 1:
        ``J[b, r] = J0[b, r] - mu_f (T[b, r] + bsum[b, r] Z^_b)``.
        """
        Z = as_points(Z, "Z")
        if Z.shape[1] != self.d:
            raise ValueError(f"Z: expected {self.d} columns (the bottleneck width), got {Z.shape[1]}")
        J = self.net.jacobian(Z)
        if self.history.M:
            _, T, bsum = self._pass(Z, 1, None)
            _, Zh = unit_rows(Z)
            J -= self.lr_f * (T + bsum[:, :, None] * Zh[:, None, :])
        return J

    def _kernel_params(self):
        """(relu flag, scale m, linear depth) of the head kernel K.

        Layer scales that factor out of K (:attr:`refimpl.kernels.Layers.kernel_scale`, c) enter
        as m = d / c: K, alpha and beta are all proportional to 1/m (MATH §2, §2.2).
        """
        return (self.activation == "relu", float(self.d) / self.layers_f.kernel_scale, float(self.depth_f))


class AccelInfiniteMixin:
    """The ``_ntk`` hook of :class:`refimpl.InfiniteSimulator` over a backend's kernels."""

    dtype = np.float64
    _kernels = None

    def _ntk(self, Xa, Xb):
        return self._kernels.ntk_inf(Xa, Xb, lr_f=self.lr_f, lr_g=self.lr_g, layers_g=self.layers_g,
                                     layers_f=self.layers_f)
