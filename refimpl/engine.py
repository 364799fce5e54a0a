"""The engine of a simulator: history storage, tracked inputs, Theta and the history pass (MATH §4, §5).

A simulator (:mod:`refimpl.dynamics`) does the bookkeeping of SGD; everything that costs
flops or memory is asked of its engine.  The classes here are the reference engines (pure
NumPy, float64) and define the interface; the accelerated backends (``accel``) supply other
engines with the same public methods, never subclasses of the simulators.

A simulator receives an engine *factory* (``engine=``), called once with the architecture:

``BottleneckEngine(layers_g, layers_f, d, dr)`` (:class:`BottleneckSimulator`)
    ``history``          the stored batch embeddings P (M, d) and loss derivatives C (M, dr):
                         ``append(P, C)``, host views ``P``, ``C``, count ``M``;
    ``reset_history(capacity)``  a new empty history (restoring a checkpoint);
    ``track(X, values)``  a :class:`Tracked` set: inputs X (n, d0) whose embeddings ``values``
                         (n, d) are updated at every step, with whatever of X the engine
                         precomputes once (norms, device copies);
    ``update_tracked(target, source, idx, V, lr)``  ``target.values -= lr Theta(target.X,
                         source.X[idx]) @ V``, Theta the NTK of g (MATH §4);
    ``theta(Xq, tracked)``  Theta(Xq, tracked.X) for inputs that are not tracked;
    ``history_pass(Z, mode, chi)``  one pass over the history (below);
    ``fuse_max_dr``      the step takes f and J^T chi from one mode-1 pass when dr is at most
                         this, else from a mode-0 and a mode-2 pass.

``InfiniteEngine(layers_g, layers_f, lr_f, lr_g)`` (:class:`InfiniteSimulator`)
    ``track``, ``update_tracked(target, source, idx, chi)`` (``values -= NTK_inf chi``) and
    ``ntk(Xq, tracked)``, NTK_inf weighted by the rates (MATH §5).

The history pass returns, for queries Z (q, d), host float64

    f[b]       = sum_m K(Z_b, P_m) C_m                              (q, dr)
    T[b, r]    = sum_m alpha(Z_b, P_m) w_m,r P_m                    (q, R, d)
    bsum[b, r] = sum_m beta(Z_b, P_m) w_m,r                         (q, R)

with ``w = C`` (mode 1, R = dr) or ``w_m = C_m . chi_b`` (mode 2, R = 1); mode 0 computes
f only (T, bsum None), mode 2 T and bsum only (f None).  Since Xi(x, y) = alpha y + beta x^,

    sum_m (C_m . chi_b) Xi(Z_b, P_m) = sum_r chi_b,r (T[b, r] + bsum[b, r] Z^_b)

(:func:`contract_xi`), and the Jacobian's history part is ``T[b, r] + bsum[b, r] Z^_b``.
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .kernels import unit_rows

#: History rows processed per block in the reference pass.
HISTORY_BLOCK = 4096
#: Query rows processed per block when evaluating f_t at many points.
QUERY_BLOCK = 512


def contract_xi(chi, T, bsum, Z):
    """sum_r chi_b,r (T[b, r] + bsum[b, r] Z^_b), (q, R), (q, R, d), (q, R), (q, d) -> (q, d) (MATH §4).

    With a mode-2 pass (R = 1, chi already in the weights) pass ``chi = ones((q, 1))``.
    """
    _, Zh = unit_rows(Z)
    return np.einsum("br,brk->bk", chi, T) + np.sum(chi * bsum, axis=1)[:, None] * Zh


class History:
    """Past batch embeddings P (M, d) and loss derivatives C (M, dr), grown by amortised doubling."""

    def __init__(self, d, dr, capacity=1024, dtype=np.float64):
        self.store_P = np.empty((capacity, d), dtype=dtype)
        self.store_C = np.empty((capacity, dr), dtype=dtype)
        self.M = 0

    def append(self, P, C):
        """Append rows; copies the storage only when it is full (capacity doubles)."""
        k = P.shape[0]
        if self.M + k > self.store_P.shape[0]:
            cap = max(2 * self.store_P.shape[0], self.M + k)
            self.store_P = grown(np, self.store_P, cap, self.M)
            self.store_C = grown(np, self.store_C, cap, self.M)
        self.store_P[self.M:self.M + k] = P
        self.store_C[self.M:self.M + k] = C
        self.M += k

    @property
    def P(self):
        """(M, d) view of the stored embeddings."""
        return self.store_P[:self.M]

    @property
    def C(self):
        """(M, dr) view of the stored loss derivatives."""
        return self.store_C[:self.M]


def grown(xp, old, capacity, rows):
    """A new array of ``capacity`` rows on the array module ``xp`` holding the first ``rows`` of ``old``."""
    new = xp.empty((capacity,) + old.shape[1:], dtype=old.dtype)
    new[:rows] = old[:rows]
    return new


class Tracked:
    """Inputs X (n, d0) whose function values (n, k) are updated in place at every step.

    ``values`` is a host array here; an engine may keep them elsewhere (device memory) behind
    the same attribute, and precompute what never changes about X.
    """

    def __init__(self, X, values):
        self.X = X
        self.values = values

    def matches(self, Xq):
        """True when ``Xq`` is this set's inputs (the same array or equal values)."""
        return Xq is self.X or (Xq.shape == self.X.shape and np.array_equal(Xq, self.X))

    def rows(self, idx):
        """values[idx], a host copy."""
        return self.values[idx]


class BottleneckEngine:
    """Reference engine of :class:`refimpl.BottleneckSimulator` (NumPy, float64; MATH §4).

    Parameters
    ----------
    layers_g, layers_f : Layers
        Architectures of g (Theta, m = d0) and of the head f (K, Xi, m = d).
    d, dr : int
        Bottleneck width and output dimension.
    """

    #: The reference takes f and J^T chi from two passes (mode 0, then mode 2).
    fuse_max_dr = 0
    dtype = np.float64

    def __init__(self, layers_g, layers_f, d, dr):
        self.layers_g, self.layers_f, self.d, self.dr = layers_g, layers_f, d, dr
        self.history = History(d, dr)

    def reset_history(self, capacity=1024):
        """Replace the history by an empty one."""
        self.history = History(self.d, self.dr, capacity=capacity)

    def track(self, X, values):
        return Tracked(X, values)

    def theta(self, Xq, tracked):
        """Theta(Xq, tracked.X), (q, n)."""
        return kernels.ntk(Xq, tracked.X, self.layers_g)

    def update_tracked(self, target, source, idx, V, lr):
        """target.values -= lr Theta(target.X, source.X[idx]) @ V."""
        target.values -= lr * (kernels.ntk(target.X, source.X[idx], self.layers_g) @ V)

    def history_pass(self, Z, mode, chi=None):
        """f, T, bsum over the whole history for queries Z (q, d); see the module docstring."""
        P, C = self.history.P, self.history.C
        q, d = Z.shape
        if mode == 0:
            f = np.zeros((q, self.dr))
            for r in range(0, q, QUERY_BLOCK):
                for s in range(0, P.shape[0], HISTORY_BLOCK):
                    K = kernels.ntk(Z[r:r + QUERY_BLOCK], P[s:s + HISTORY_BLOCK], self.layers_f)
                    f[r:r + QUERY_BLOCK] += K @ C[s:s + HISTORY_BLOCK]
            return f, None, None
        f = None
        if mode == 1:
            f = self.history_pass(Z, 0)[0]
        R = self.dr if mode == 1 else 1
        T = np.zeros((q, R, d))
        bsum = np.zeros((q, R))
        for s in range(0, P.shape[0], HISTORY_BLOCK):
            Ps, Cs = P[s:s + HISTORY_BLOCK], C[s:s + HISTORY_BLOCK]
            alpha, beta = kernels.xi_coefficients(Z, Ps, self.layers_f)
            W = [chi @ Cs.T] if mode == 2 else [Cs[:, r][None, :] for r in range(R)]
            for r, w in enumerate(W):
                T[:, r] += (w * alpha) @ Ps
                bsum[:, r] += np.sum(w * beta, axis=1)
        return f, T, bsum


class InfiniteEngine:
    """Reference engine of :class:`refimpl.InfiniteSimulator` (NumPy, float64; MATH §5)."""

    def __init__(self, layers_g, layers_f, lr_f, lr_g):
        self.layers_g, self.layers_f, self.lr_f, self.lr_g = layers_g, layers_f, lr_f, lr_g

    def track(self, X, values):
        return Tracked(X, values)

    def ntk(self, Xq, tracked):
        """NTK_inf(Xq, tracked.X) weighted by the rates, (q, n)."""
        return self._ntk(Xq, tracked.X)

    def update_tracked(self, target, source, idx, chi):
        """target.values -= NTK_inf(target.X, source.X[idx]) @ chi."""
        target.values -= self._ntk(target.X, source.X[idx]) @ chi

    def _ntk(self, Xa, Xb):
        return kernels.ntk_inf(Xa, Xb, lr_f=self.lr_f, lr_g=self.lr_g, layers_g=self.layers_g,
                               layers_f=self.layers_f)
