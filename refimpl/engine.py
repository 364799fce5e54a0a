"""The engine of a simulator: history storage, tracked inputs, Theta and the history pass (MATH §4, §5).

A simulator (:mod:`refimpl.dynamics`) does the bookkeeping of SGD; everything that costs
flops or memory is asked of its engine.  The classes here are the reference engines (pure
NumPy, float64) and define the interface; the accelerated backends (``accel``) supply other
engines with the same public methods, never subclasses of the simulators.

A simulator receives an engine *factory* (``engine=``), called once with the architecture:

``BottleneckEngine(layers_g, layers_f, d, dr)`` (:class:`BottleneckSimulator`)
    ``history``          the stored batch embeddings P (M, d) and loss derivatives C (M, dr):
                         ``append(P, C)``, host views ``P``, ``C``, count ``M``; with a schedule
                         or momentum ``append(P, C, rate, beta, nesterov)`` keeps C as the
                         per-entry weighted coefficients (MATH §8.3, :class:`MomentumRows`);
    ``reset_history(capacity)``  a new empty history (restoring a checkpoint);
    ``track(X, values)``  a :class:`Tracked` set: inputs X (n, d0) whose embeddings ``values``
                         (n, d) are updated at every step, with whatever of X the engine
                         precomputes once (norms, device copies);
    ``update_tracked(target, source, idx, V, lr)``  ``target.values -= lr Theta(target.X,
                         source.X[idx]) @ V``, Theta the NTK of g (MATH §4); with momentum
                         ``update_tracked(..., lr, beta=, nesterov=)`` steps along the set's
                         velocity instead (:meth:`Tracked.descend`, MATH §8.4);
    ``theta(Xq, tracked)``  Theta(Xq, tracked.X) for inputs that are not tracked;
    ``history_pass(Z, mode, chi)``  one pass over the history (below);
    ``batch_pass(tracked, idx, mode)``  what a step reads first: the batch's embeddings
                         ``tracked.rows(idx)`` and the history pass at them, ``(Z, (f, T, bsum))``
                         (an engine with device memory returns both in one copy);
    ``fuse_max_dr``      the step takes f and J^T chi from one mode-1 pass when dr is at most
                         this, else from a mode-0 and a mode-2 pass;
    ``batch_step(sim, idx)``  all a step of ``sim`` needs before its updates: (Z, loss, chi, V), the
                         batch's embeddings, loss, loss derivatives and V = J_t(Z)^T chi (:func:`batch_step`:
                         :meth:`batch_pass` and the head's terms on the host; an engine with device memory
                         may compute them there and copy back once).

``InfiniteEngine(layers_g, layers_f, lr_f, lr_g)`` (:class:`InfiniteSimulator`)
    ``track``, ``update_tracked(target, source, idx, chi)`` (``values -= NTK_inf chi``; with a
    schedule or momentum ``update_tracked(..., rate=, beta=, nesterov=)``, MATH §8.4) and
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
from .optim import momentum_direction

#: History rows processed per block in the reference pass.
HISTORY_BLOCK = 4096
#: Query rows processed per block when evaluating f_t at many points.
QUERY_BLOCK = 512


def contract_xi(chi, T, bsum, Z, xp=np, Zh=None):
    """sum_r chi_b,r (T[b, r] + bsum[b, r] Z^_b), (q, R), (q, R, d), (q, R), (q, d) -> (q, d) (MATH §4).

    With a mode-2 pass (R = 1, chi already in the weights) pass ``chi = ones((q, 1))``.  ``xp``: the
    array module of the arguments; ``Zh``: the unit rows Z^ where the caller has them (else from Z).
    """
    if Zh is None:
        Zh = unit_rows(Z)[1]
    return xp.einsum("br,brk->bk", chi, T) + xp.sum(chi * bsum, axis=1)[:, None] * Zh


def batch_step(engine, sim, idx):
    """What a step of :class:`refimpl.BottleneckSimulator` asks of its engine, on the host: the batch's
    embeddings Z (B, d), the first history pass at them (:meth:`BottleneckEngine.batch_pass`; none while
    the history is empty) and the head's loss, chi and V = J_t(Z)^T chi (``sim.head_at_batch``).
    Returns (Z, loss, chi, V) as host arrays and a float."""
    tracked = sim.train_tracked
    if engine.history.M:
        Z, terms = engine.batch_pass(tracked, idx, sim.first_pass_mode())
    else:
        Z, terms = tracked.rows(idx), None
    loss, chi, V = sim.head_at_batch(Z, sim.Y[idx], terms)
    return Z, loss, chi, V


class MomentumRows:
    """Per-entry weights of the history under a schedule and momentum (MATH §8.3), for any history
    class with ``store_C`` (capacity, dr), ``M`` and array module ``xp``.

    With a schedule s_t and momentum beta the head's history term is ``sum_s w_{t,s} K(x, P_s) C_s``
    with ``w_{t,s} = sum_{u=s}^{t-1} s_u c_{u,s}`` (``c = beta^(u-s)``, heavy ball;
    ``beta^(u-s+1) + [u = s]``, Nesterov).  The store keeps the weighted coefficients ``w C`` in
    ``store_C`` (what every history pass reads, so no kernel changes) and the decayed loss
    derivatives ``D_s = beta^(t-s) C_s`` in ``store_D``; a step adds ``s_t D`` (``s_t beta D``, and
    ``s_t C`` for the new rows, Nesterov) to the weighted rows and multiplies D by beta: O(M dr)
    per step, no powers beta^(-s).  Entries of D below :data:`DECAY_FLOOR` are set to zero (they
    could no longer change a weight; in float32 the floor is its smallest normal number, 1.2e-38) and the
    rows before the first live one are skipped.
    """

    #: |D| below this is set to 0 (below any weight's last bit; avoids subnormal arithmetic).
    DECAY_FLOOR = 1e-250
    store_D = None
    live = 0

    def weigh_appended(self, start, rate, beta, nesterov):
        """Weights of rows ``start..M`` (just stored raw in store_C) and of all earlier live rows."""
        xp = self.xp
        if beta == 0.0 and self.store_D is None:
            if rate != 1.0:
                self.store_C[start:self.M] *= rate
            return
        if self.store_D is None:
            if start:
                raise ValueError("history: momentum cannot start on a history written without it")
            self.store_D = xp.zeros_like(self.store_C)
            self.live = 0
        elif self.store_D.shape[0] < self.store_C.shape[0]:
            self.store_D = grown(xp, self.store_D, self.store_C.shape[0], start)
        self.store_D[start:self.M] = self.store_C[start:self.M]
        self.store_C[start:self.M] = 0.0
        C_live, D_live = self.store_C[self.live:self.M], self.store_D[self.live:self.M]
        C_live += (rate * beta if nesterov else rate) * D_live
        if nesterov:
            self.store_C[start:self.M] += rate * self.store_D[start:self.M]
        D_live *= beta
        floor = max(self.DECAY_FLOOR, float(np.finfo(self.store_D.dtype).tiny))     # float32: its smallest normal
        D_live[xp.abs(D_live) < floor] = 0.0
        alive = xp.any(D_live != 0.0, axis=1)
        self.live += int(xp.argmax(alive)) if bool(xp.any(alive)) else D_live.shape[0]

    def to_host(self, a):
        """``a`` (an array of ``xp``) as a NumPy array."""
        return a if self.xp is np else self.xp.asnumpy(a)

    @property
    def D(self):
        """(M, dr) decayed loss derivatives beta^(t-s) C_s on the host, or None without momentum."""
        return None if self.store_D is None else self.to_host(self.store_D[:self.M])

    def set_decay(self, D):
        """Restore the decayed loss derivatives (a checkpoint's, (M, dr)) of the stored rows."""
        self.store_D = self.xp.zeros_like(self.store_C)
        self.store_D[:self.M] = self.xp.asarray(np.asarray(D, dtype=self.store_C.dtype))
        alive = np.any(np.asarray(D) != 0.0, axis=1)
        self.live = int(np.argmax(alive)) if alive.any() else self.M


class History(MomentumRows):
    """Past batch embeddings P (M, d) and loss derivatives C (M, dr), grown by amortised doubling.

    With a schedule or momentum, C holds the per-entry weighted coefficients (:class:`MomentumRows`).
    """

    xp = np

    def __init__(self, d, dr, capacity=1024, dtype=np.float64):
        self.store_P = np.empty((capacity, d), dtype=dtype)
        self.store_C = np.empty((capacity, dr), dtype=dtype)
        self.M = 0

    def append(self, P, C, rate=1.0, beta=0.0, nesterov=False):
        """Append rows; copies the storage only when it is full (capacity doubles).

        ``rate`` (the schedule's multiplier s_t), ``beta``, ``nesterov``: MATH §8.3; the defaults
        store C as given.
        """
        k = P.shape[0]
        start = self.M
        if self.M + k > self.store_P.shape[0]:
            cap = max(2 * self.store_P.shape[0], self.M + k)
            self.store_P = grown(np, self.store_P, cap, self.M)
            self.store_C = grown(np, self.store_C, cap, self.M)
        self.store_P[self.M:self.M + k] = P
        self.store_C[self.M:self.M + k] = C
        self.M += k
        self.weigh_appended(start, rate, beta, nesterov)

    @property
    def P(self):
        """(M, d) view of the stored embeddings."""
        return self.store_P[:self.M]

    @property
    def C(self):
        """(M, dr) view of the stored (weighted) loss derivatives."""
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

    #: the velocity of ``values`` under momentum (MATH §8.4); None until the first momentum step
    velocity = None

    def __init__(self, X, values):
        self.X = X
        self.values = values

    def descend(self, inc, lr, beta=0.0, nesterov=False):
        """``values -= lr inc``, or with momentum ``values -= lr (direction)`` of the velocity (MATH §8.4)."""
        if beta == 0.0 and self.velocity is None:
            self.values -= lr * inc
            return
        if self.velocity is None:
            self.velocity = np.zeros_like(self.values)
        self.values -= lr * momentum_direction(self.velocity, inc, beta, nesterov)

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

    def update_tracked(self, target, source, idx, V, lr, beta=0.0, nesterov=False):
        """target.values -= lr Theta(target.X, source.X[idx]) @ V (with momentum: :meth:`Tracked.descend`)."""
        target.descend(kernels.ntk(target.X, source.X[idx], self.layers_g) @ V, lr, beta, nesterov)

    def batch_pass(self, tracked, idx, mode):
        """The batch's embeddings Z = tracked.rows(idx) (B, d) and :meth:`history_pass` (Z, mode) (the
        history must not be empty); returns (Z, (f, T, bsum))."""
        Z = tracked.rows(idx)
        return Z, self.history_pass(Z, mode)

    def batch_step(self, sim, idx):
        """(Z, loss, chi, V) of a step of ``sim`` at the rows ``idx`` (:func:`batch_step`)."""
        return batch_step(self, sim, idx)

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

    def update_tracked(self, target, source, idx, chi, rate=1.0, beta=0.0, nesterov=False):
        """target.values -= rate NTK_inf(target.X, source.X[idx]) @ chi (with momentum: :meth:`Tracked.descend`)."""
        target.descend(self._ntk(target.X, source.X[idx]) @ chi, rate, beta, nesterov)

    def _ntk(self, Xa, Xb):
        return kernels.ntk_inf(Xa, Xb, lr_f=self.lr_f, lr_g=self.lr_g, layers_g=self.layers_g,
                               layers_f=self.layers_f)
