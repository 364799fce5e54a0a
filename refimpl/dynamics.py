"""Function-space SGD of an infinitely wide network with a finite bottleneck (MATH §4, §5).

Two simulators share one interface:

:class:`BottleneckSimulator`
    The embeddings g_t, the head f_t and its Jacobian J_t under the discrete
    dynamics of MATH §4 (paper eqs 42-44, corrected: every sum starts at the
    first step and F_{t+1}(xi) = f_{t+1}(g_{t+1}(xi))).
:class:`InfiniteSimulator`
    The same network without a bottleneck (d -> infinity): ordinary NTK
    dynamics with the kernel :func:`~refimpl.kernels.ntk_inf` (MATH §5).

Loss (``loss="mse"``, the default): ``L = 1/(2B) sum_{i in batch} |F_i - y_i|^2``,
so ``chi_i = (F_i - y_i)/B``.  ``loss="ce"`` (MATH §4.3, cross-entropy): softmax
cross-entropy on one-hot targets, ``L = 1/B sum_i (logsumexp(F_i) - y_i . F_i)``,
``chi_i = (softmax(F_i) - y_i)/B``; with one output (dr = 1) the logistic loss on
0/1 targets, ``L = 1/B sum_i (softplus(F_i) - y_i F_i)``, ``chi_i = (sigmoid(F_i) - y_i)/B``.
Only chi enters the dynamics; the loss changes nothing else.

The update of one SGD step on the batch ``idx`` (with ``p_i = g_t(xi_i)``):

    g_{t+1}(xi) = g_t(xi) - mu_g sum_i Theta(xi, xi_i) J_t(p_i)^T chi_i
    f_{t+1}(x)  = f_t(x)  - mu_f sum_i K(x, p_i) chi_i
    J_{t+1}(x)  = J_t(x)  - mu_f sum_i chi_i Xi(x, p_i)^T

f and J are stored as their initial functions plus the history of all past
batch embeddings ``P`` (M, d) and loss derivatives ``C`` (M, dr), M = t * B:

    f_t(x) = f0(x) - mu_f sum_m K(x, P_m) C_m
    J_t(x)^T chi = J0(x)^T chi - mu_f sum_m (C_m . chi) Xi(x, P_m)

and since ``Xi(x, y) = alpha(x, y) y + beta(x, y) x^`` the second sum is two
matrix products over the history (MATH §4); J itself is never formed in the
hot loop.  The embeddings of the training inputs (and of optional evaluation
inputs) are updated in place.  Embeddings at any other input use the
accumulated ``A_j = sum over the steps where row j was in the batch of
J^T chi``: ``g_t(xi) = g0(xi) - mu_g sum_j Theta(xi, xi_j) A_j``.

Schedules and momentum (MATH §8): with ``lr_schedule`` (multiplier s_t of both rates) and
``momentum=beta`` (heavy ball, or ``nesterov=True``) the weight update is a fixed linear
combination of past gradients, so each function moves by the same combination of the history
terms: the head's history carries per-entry weights (kept in ``C``), and the in-place embeddings,
the accumulated ``A`` and (without bottleneck) the outputs carry a velocity.  The defaults are
plain SGD, computed exactly as without these options.

Everything that costs flops or memory (the history, the tracked inputs, Theta and
the history pass) is asked of an engine (:mod:`refimpl.engine`): the reference engines
there by default, or a backend's (``accel``) passed as ``engine=``; the bookkeeping here
is shared by every backend.
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .engine import HISTORY_BLOCK, QUERY_BLOCK, History  # noqa: F401 (public names of this module)
from .engine import BottleneckEngine, InfiniteEngine, contract_xi
from .kernels import as_points
from .optim import Schedule, check_momentum, make_schedule, momentum_direction, schedule_rate
from .validate import positive_rate, real_array, state_arrays
from .network import RandomNetwork


class DivergenceError(FloatingPointError):
    """Raised by ``step`` when the loss or the update is NaN or infinite; the state is left untouched."""


#: Loss functions (MATH §4, §4.3).
LOSSES = ("mse", "ce")


def check_loss(loss):
    """Return ``loss`` if it is one of LOSSES, else raise a one-line ValueError."""
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
    return loss


def check_ce_targets(Y):
    """Raise a one-line ValueError unless Y (N, dr) suits cross-entropy: one-hot rows, or 0/1 when dr = 1."""
    Y = np.asarray(Y)
    if Y.ndim == 1:
        Y = Y[:, None]
    binary = np.all((Y == 0.0) | (Y == 1.0))
    if not binary or (Y.shape[1] > 1 and not np.all(Y.sum(axis=1) == 1.0)):
        what = "0/1 targets" if Y.shape[1] == 1 else "one-hot rows"
        raise ValueError(f"Y: loss 'ce' needs classification targets ({what}); these look like regression "
                         "targets (use loss 'mse')")


def _log_softmax(F, xp=np):
    top = xp.max(F, axis=1, keepdims=True)
    Z = F - top
    return Z - xp.log(xp.sum(xp.exp(Z), axis=1, keepdims=True))


def _softplus(F, xp=np):
    return xp.maximum(F, 0.0) + xp.log1p(xp.exp(-xp.abs(F)))


def pointwise_loss(F, Y, loss="mse", xp=np):
    """Loss of each row, (n, dr), (n, dr) -> (n,) (MATH §4, §4.3).

    mse: ``|F - y|^2 / 2``.  ce: ``-y . log softmax(F)``, or for dr = 1
    ``softplus(F) - y F`` (logistic loss on 0/1 targets).  ``xp``: array module.
    """
    if loss == "mse":
        return 0.5 * xp.sum((F - Y) ** 2, axis=1)
    check_loss(loss)
    if F.shape[1] == 1:
        return (_softplus(F, xp) - Y * F)[:, 0]
    return -xp.sum(Y * _log_softmax(F, xp), axis=1)


def loss_and_chi(F, Y, loss="mse", xp=np, B=None):
    """Batch loss and chi = dL/dF for a batch (MATH §4, §4.3).

    ``B`` (default the rows of F) is the batch size the loss is averaged over;
    a caller that splits a batch into row blocks passes the whole batch's B.
    Returns (float, (rows, dr) array).
    """
    total, chi = loss_terms(F, Y, loss, xp, B)
    return float(total), chi


def loss_terms(F, Y, loss="mse", xp=np, B=None):
    """:func:`loss_and_chi` with the loss as a 0-d array of ``xp`` (on a device it stays there)."""
    B = F.shape[0] if B is None else B
    if loss == "mse":
        resid = F - Y
        return 0.5 * xp.sum(resid * resid) / B, resid / B
    check_loss(loss)
    if F.shape[1] == 1:
        p = 0.5 * (1.0 + xp.tanh(0.5 * F))                # sigmoid without overflow
    else:
        p = xp.exp(_log_softmax(F, xp))
    return xp.sum(pointwise_loss(F, Y, loss, xp)) / B, (p - Y) / B


def _check_targets(X, Y):
    Y = np.asarray(real_array("Y", Y), dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2 or Y.shape[0] != X.shape[0]:
        raise ValueError(f"Y: expected shape ({X.shape[0]}, dr) matching the rows of X, got {Y.shape}")
    if not np.all(np.isfinite(Y)):
        raise ValueError("Y: contains NaN or inf")
    return np.ascontiguousarray(Y)


class _SimulatorBase:
    """Shared bookkeeping: data, rates, batch checking, tracked point sets, step counter."""

    def _setup(self, X, Y, lr, lr_f, lr_g, X_eval, loss="mse", lr_schedule=None, total_steps=None,
               momentum=0.0, nesterov=False):
        self.X = as_points(X, "X")
        if self.X.shape[0] == 0:
            raise ValueError("X: expected at least one training point, got 0 rows")
        self.Y = _check_targets(self.X, Y)
        self.loss = check_loss(loss)
        if loss == "ce":
            check_ce_targets(self.Y)
        lr = positive_rate("lr", lr)
        if lr is None:
            raise ValueError("lr: expected a positive finite number, got None")
        self.lr_f = positive_rate("lr_f", lr_f) or lr
        self.lr_g = positive_rate("lr_g", lr_g) or lr
        self.X_eval = None if X_eval is None else as_points(X_eval, "X_eval")
        if self.X_eval is not None and self.X_eval.shape[1] != self.X.shape[1]:
            raise ValueError(f"X_eval: expected {self.X.shape[1]} columns like X, got {self.X_eval.shape[1]}")
        self.lr_schedule = make_schedule(lr_schedule, total_steps)
        self.momentum, self.nesterov = check_momentum(momentum, nesterov)
        self.A_velocity = None
        self.t = 0

    @property
    def train_tracked(self):
        """The tracked training inputs (:class:`refimpl.engine.Tracked`): X and their embeddings (or outputs)."""
        return self._tracked[0]

    @property
    def plain_sgd(self):
        """True for the constant schedule without momentum (the paper's SGD, MATH §4)."""
        return self.momentum == 0.0 and isinstance(self.lr_schedule, Schedule) and self.lr_schedule.is_constant

    def _optimiser(self):
        """(s_t, keyword arguments of the engine's updates) for this step (MATH §8); (1.0, {}) for plain SGD."""
        if self.plain_sgd:
            return 1.0, {}
        rate = schedule_rate(self.lr_schedule, self.t)
        return rate, ({"beta": self.momentum, "nesterov": self.nesterov} if self.momentum else {})

    def _accumulate(self, idx, V, rate):
        """A += the step's gradients (scattered to their rows), through A's velocity under momentum (MATH §8.4)."""
        if rate == 1.0 and not self.momentum:
            np.add.at(self.A, idx, V)
            return
        inc = np.zeros_like(self.A)
        np.add.at(inc, idx, V)
        if self.momentum:
            if self.A_velocity is None:
                self.A_velocity = np.zeros_like(self.A)
            inc = momentum_direction(self.A_velocity, inc, self.momentum, self.nesterov)
        self.A += rate * inc

    def _optimiser_state(self, state):
        """Add the velocities to a state dict (only under momentum: plain runs keep today's format)."""
        if self.momentum:
            zeros = np.zeros_like(self.A)
            state["velocity_A"] = zeros if self.A_velocity is None else self.A_velocity.copy()
            for k, tr in enumerate(self._tracked):
                v = tr.velocity
                state[f"velocity_tracked_{k}"] = np.zeros_like(tr.values) if v is None else np.array(v)
        return state

    def _load_optimiser_state(self, state, t):
        """Restore the velocities; one-line errors when the state and the simulator disagree about momentum."""
        has = "velocity_A" in state
        if has and not self.momentum:
            raise ValueError("state: written by a run with momentum; this simulator has momentum 0")
        if self.momentum and not has and t > 0:
            raise ValueError("state: written by a run without momentum; this simulator has "
                             f"momentum {self.momentum}")
        self.A_velocity = None
        for tr in self._tracked:
            tr.velocity = None
        if has:
            shapes = {"velocity_A": self.A.shape,
                      **{f"velocity_tracked_{k}": tr.values.shape for k, tr in enumerate(self._tracked)}}
            if hasattr(self, "history"):
                shapes["history_D"] = ("M", self.dr)
            state_arrays(state, shapes)
            self.A_velocity = np.array(state["velocity_A"], dtype=np.float64)
            for k, tr in enumerate(self._tracked):
                tr.velocity = np.array(state[f"velocity_tracked_{k}"], dtype=np.float64)

    @property
    def N(self):
        """Number of training points."""
        return self.X.shape[0]

    def shift_targets(self, S):
        """Train on the shifted targets ``Y + S`` (MATH §7.4): centring is the shift ``S = F0(X)``.

        Call it before the first step: the run is then, bit for bit, the run of the same simulator built
        with the targets ``Y + S``.  The outputs are not shifted (a centred run reports ``F - F0`` itself).

        Parameters
        ----------
        S : (N, dr) array, finite

        Raises
        ------
        ValueError (one line) after the first step, for another shape or non-finite values, and for the
        cross-entropy (its targets are classes; the shift is the centring of the squared loss).
        """
        if self.t != 0:
            raise ValueError(f"S: the targets can be shifted only at step 0, before the first step; the simulator "
                             f"is at step {self.t}")
        if self.loss != "mse":
            raise ValueError(f"S: a target shift needs the squared loss (MATH §7.4), got loss {self.loss!r}")
        S = np.asarray(real_array("S", S), dtype=np.float64)
        if S.shape != self.Y.shape:
            raise ValueError(f"S: expected shape {self.Y.shape} like the targets, got {S.shape}")
        if not np.all(np.isfinite(S)):
            raise ValueError("S: contains NaN or inf")
        self.Y = self.Y + S

    def _check_batch(self, idx):
        idx = np.asarray(idx)
        if idx.ndim == 0:
            idx = idx[None]
        if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"idx: expected a non-empty 1-d array of row indices, got {idx!r}")
        if idx.min() < 0 or idx.max() >= self.N:
            raise ValueError(f"idx: row indices must lie in [0, {self.N}), got [{idx.min()}, {idx.max()}]")
        return idx.astype(np.int64)

    def _find(self, Xq):
        for tr in self._tracked:
            if tr.matches(Xq):
                return tr
        return None

    def _batch_loss(self, Fb, Yb):
        loss, chi = loss_and_chi(Fb, Yb, self.loss)
        self.check_batch_loss(loss)
        return loss, chi

    def check_batch_loss(self, loss):
        """Raise :class:`DivergenceError` when the batch loss is not finite."""
        if not np.isfinite(loss):
            raise DivergenceError(f"loss is {loss} at step {self.t}: the run diverged (lower the learning rate)")



def tracked_embeddings(sim, Xq):
    """g_t(Xq) of a simulator with a bottleneck (MATH §4.1 "Storage"): read off where Xq is a tracked set,
    else ``g0(Xq) - mu_g Theta(Xq, X) A`` from the accumulated gradients ``A``."""
    Xq = as_points(Xq, "Xq")
    tr = sim._find(Xq)
    if tr is not None:
        return tr.values.copy()
    if Xq.shape[1] != sim.X.shape[1]:
        raise ValueError(f"Xq: expected {sim.X.shape[1]} columns, got {Xq.shape[1]}")
    return sim.net.g(Xq) - sim.lr_g * (sim.engine.theta(Xq, sim._tracked[0]) @ sim.A)


class BottleneckSimulator(_SimulatorBase):
    """Discrete function-space SGD with a finite bottleneck (MATH §4).

    Parameters
    ----------
    net : RandomNetwork
        Supplies the initial functions g0, f0, J0 (MATH §3).
    X : (N, d0) array
        Training inputs.
    Y : (N, dr) array
        Training targets.
    lr : float
        Learning rate mu for both networks.
    lr_f, lr_g : float, optional
        Separate rates for the weights of f and of g (default ``lr``).
    X_eval : (q, d0) array, optional
        Extra inputs (e.g. the test set) whose embeddings are kept up to date.
    activation : {"relu", "erf", "linear"}, optional
        Kernel family; defaults to ``net.activation``.
    depth_f, depth_g : int, optional
        Depths (weight matrices) L_f, L_g of the kernels; default the network's.
        A linear network of any depth may be started from a two-matrix network
        with the same functions (lemma 4.1).
    loss : {"mse", "ce"}
        Squared loss or cross-entropy (MATH §4.3; needs one-hot or 0/1 targets).
    engine : callable, optional
        Engine factory ``engine(layers_g, layers_f, d, dr)`` (:mod:`refimpl.engine`); default
        the reference :class:`refimpl.engine.BottleneckEngine`.  Backends pass their own.
    lr_schedule : str, Schedule or callable, optional
        Multiplier s_t of both rates at step t (MATH §8.1): ``"constant"`` (default),
        ``"step:EVERY:FACTOR"``, ``"cosine"`` (over ``total_steps``), ``"warmup:STEPS"``, a
        :class:`refimpl.optim.Schedule` or a callable ``t -> s_t``.
    total_steps : int, optional
        The run's steps (the cosine schedule's horizon).
    momentum : float in [0, 1)
        Heavy-ball momentum beta of the weights of f and g (MATH §8); 0 is plain SGD.
    nesterov : bool
        Nesterov momentum in the PyTorch convention (step ``G_t + beta v_t``).

    The architecture of the kernels (depths, scales, biases; MATH §2.2) is the
    network's, ``net.layers_g`` and ``net.layers_f``, with the overrides above.
    """

    def __init__(self, net, X, Y, lr=1.0, lr_f=None, lr_g=None, X_eval=None,
                 activation=None, depth_f=None, depth_g=None, loss="mse", engine=None, lr_schedule=None,
                 total_steps=None, momentum=0.0, nesterov=False):
        if not isinstance(net, RandomNetwork):
            raise TypeError(f"net: expected a RandomNetwork, got {type(net).__name__}")
        self._setup(X, Y, lr, lr_f, lr_g, X_eval, loss, lr_schedule, total_steps, momentum, nesterov)
        if self.X.shape[1] != net.d0:
            raise ValueError(f"X: expected {net.d0} columns (the network's input dimension), got {self.X.shape[1]}")
        if self.Y.shape[1] != net.dr:
            raise ValueError(f"Y: expected {net.dr} columns (the network's output dimension), got {self.Y.shape[1]}")
        self.net = net
        self.activation = activation or net.activation
        self.layers_g = _override(net.layers_g, self.activation, depth_g)
        self.layers_f = _override(net.layers_f, self.activation, depth_f)
        for name, spec, own in (("depth_g", self.layers_g, net.layers_g), ("depth_f", self.layers_f, net.layers_f)):
            if spec.activation != "linear" and spec.depth != own.depth:
                raise ValueError(f"{name}: the kernels of a {spec.activation} network need the network's depth "
                                 f"({own.depth}), got {spec.depth}")
        self.depth_f, self.depth_g = self.layers_f.depth, self.layers_g.depth
        self.d, self.dr = net.d, net.dr
        self.engine = (engine or BottleneckEngine)(self.layers_g, self.layers_f, self.d, self.dr)
        self._tracked = [self.engine.track(self.X, net.g(self.X))]
        if self.X_eval is not None:
            self._tracked.append(self.engine.track(self.X_eval, net.g(self.X_eval)))
        self.A = np.zeros((self.N, self.d))

    @property
    def history(self):
        """The stored history (the engine's): ``P`` (M, d), ``C`` (M, dr), ``M``, ``append``."""
        return self.engine.history

    def _history_terms(self, Z, mode, chi=None):
        """The engine's history pass (:mod:`refimpl.engine`); zeros while the history is empty."""
        if self.engine.history.M:
            return self.engine.history_pass(Z, mode, chi)
        q, R = Z.shape[0], (self.dr if mode == 1 else 1)
        return (np.zeros((q, self.dr)) if mode != 2 else None,
                None if mode == 0 else np.zeros((q, R, self.d)), None if mode == 0 else np.zeros((q, R)))

    # -------------------------------------------------------------- functions
    def f(self, Z):
        """f_t(Z), the head at bottleneck points Z (q, d) -> (q, dr)."""
        Z = self._check_z(Z)
        return self.net.f(Z) - self.lr_f * self._history_terms(Z, 0)[0]

    def jacobian(self, Z):
        """J_t(Z) = df_t/dx at bottleneck points Z, (q, d) -> (q, dr, d) (paper eq 13).

        From one history pass in mode 1: ``J[b, r] = J0[b, r] - mu_f (T[b, r] + bsum[b, r] Z^_b)``.
        """
        Z = self._check_z(Z)
        _, T, bsum = self._history_terms(Z, 1)
        _, Zh = kernels.unit_rows(Z)
        return self.net.jacobian(Z) - self.lr_f * (T + bsum[:, :, None] * Zh[:, None, :])

    def jacobian_t_dot(self, Z, chi):
        """J_t(Z_b)^T chi_b for each row b, (B, d), (B, dr) -> (B, d), without forming J."""
        Z = self._check_z(Z)
        _, T, bsum = self._history_terms(Z, 2, chi)
        return self.net.jacobian_t_dot(Z, chi) - self.lr_f * contract_xi(np.ones((Z.shape[0], 1)), T, bsum, Z)

    def first_pass_mode(self):
        """The mode of a step's first history pass: 1 (f and the Xi sums at once) when dr is at most the
        engine's ``fuse_max_dr``, else 0 (f; J^T chi follows in mode 2)."""
        return 1 if self.dr <= self.engine.fuse_max_dr else 0

    def head_at_batch(self, Z, Y, terms=None):
        """Batch loss, chi and J_t^T chi at the batch embeddings Z (B, d) with targets Y (B, dr).

        One call for what a step needs of the head (MATH §4): when dr is at most the engine's
        ``fuse_max_dr``, f and the Xi sums come from one history pass (mode 1) and chi is
        contracted with them afterwards; otherwise f (mode 0) and then J^T chi (mode 2, chi in
        the weights).  ``terms``: that first pass at Z when the caller has it already
        (:meth:`refimpl.engine.BottleneckEngine.batch_pass`).  Raises :class:`DivergenceError` when
        the loss is not finite.
        """
        fuse = self.first_pass_mode() == 1
        fh, T, bsum = terms if terms is not None else self._history_terms(Z, 1 if fuse else 0)
        f0, pullback = self.net.f_and_pullback(Z)          # f_0(Z) and c -> J_0(Z)^T c
        loss, chi = self._batch_loss(f0 - self.lr_f * fh, Y)
        if fuse:
            xi_sum = contract_xi(chi, T, bsum, Z)
        else:
            _, T, bsum = self._history_terms(Z, 2, chi)
            xi_sum = contract_xi(np.ones((Z.shape[0], 1)), T, bsum, Z)
        return loss, chi, pullback(chi) - self.lr_f * xi_sum

    def embeddings(self, Xq):
        """g_t(Xq), (q, d0) -> (q, d).  Tracked inputs (X, X_eval) are read off; others are computed."""
        return tracked_embeddings(self, Xq)

    def outputs(self, Xq):
        """F_t(Xq) = f_t(g_t(Xq)), (q, d0) -> (q, dr)."""
        return self.f(self.embeddings(Xq))

    # ------------------------------------------------------------------- step
    def step(self, idx):
        """One SGD step on the rows ``idx`` (all rows: full-batch GD).

        Returns the batch loss before the update.  Raises :class:`DivergenceError`
        without changing the state when the loss or the update is not finite.
        """
        idx = self._check_batch(idx)
        Pb, loss, chi, V = self.engine.batch_step(self, idx)  # g_t at the batch, V = J_t(p_i)^T chi_i
        if not np.all(np.isfinite(V)):
            raise DivergenceError(f"J^T chi is not finite at step {self.t}: the run diverged")
        rate, kw = self._optimiser()
        for tr in self._tracked:
            self.engine.update_tracked(tr, self._tracked[0], idx, V, self.lr_g * rate, **kw)
        self._accumulate(idx, V, rate)
        if self.plain_sgd:
            self.history.append(Pb, chi)
        else:
            self.history.append(Pb, chi, rate=rate, beta=self.momentum, nesterov=self.nesterov)
        self.t += 1
        return loss

    # ------------------------------------------------------------- checkpoint
    def state_dict(self):
        """All state that changes during training, as a dict of arrays (for npz).

        Under momentum also ``velocity_A``, ``velocity_tracked_k`` and ``history_D`` (MATH §8.3-8.4);
        ``history_C`` holds the per-entry weighted coefficients under a schedule or momentum.
        """
        state = {"t": np.array(self.t), "A": self.A.copy(),
                 "history_P": self.history.P.copy(), "history_C": self.history.C.copy()}
        for k, tr in enumerate(self._tracked):
            state[f"tracked_{k}"] = tr.values.copy()
        if self.momentum:
            D = self.history.D
            state["history_D"] = np.zeros_like(state["history_C"]) if D is None else np.array(D)
        return self._optimiser_state(state)

    def load_state_dict(self, state):
        """Restore a state written by :meth:`state_dict` on a simulator built the same way."""
        _check_state_keys(state, len(self._tracked), ("A", "history_P", "history_C"))
        shapes = {"A": (self.N, self.d), "history_P": ("M", self.d), "history_C": ("M", self.dr),
                  **{f"tracked_{k}": tr.values.shape for k, tr in enumerate(self._tracked)}}
        t = state_arrays(state, shapes)
        if state["history_P"].shape[0] < t:
            raise ValueError(f"state: {state['history_P'].shape[0]} history rows cannot come from {t} steps")
        self.t = t
        self.A = np.array(state["A"], dtype=np.float64)
        self._load_optimiser_state(state, t)
        self.engine.reset_history(capacity=max(1024, state["history_P"].shape[0]))
        self.history.append(np.asarray(state["history_P"]), np.asarray(state["history_C"]))
        if self.momentum and "history_D" in state:
            if np.shape(state["history_D"]) != np.shape(state["history_C"]):
                raise ValueError(f"state['history_D']: expected shape {np.shape(state['history_C'])}, "
                                 f"got {np.shape(state['history_D'])}")
            self.history.set_decay(state["history_D"])
        for k, tr in enumerate(self._tracked):
            tr.values = np.array(state[f"tracked_{k}"], dtype=np.float64)

    def _check_z(self, Z):
        Z = as_points(Z, "Z")
        if Z.shape[1] != self.d:
            raise ValueError(f"Z: expected {self.d} columns (the bottleneck width), got {Z.shape[1]}")
        return Z


def _override(spec, activation, depth):
    """``spec`` (Layers) with another activation and/or depth (None keeps the network's)."""
    depth = spec.depth if depth is None and activation == spec.activation else depth
    return kernels.Layers.make(activation, depth, spec.w_std, spec.b_std, spec.out_std)


def _check_state_keys(state, n_tracked, keys):
    need = {"t", *keys, *(f"tracked_{k}" for k in range(n_tracked))}
    missing = need - set(state)
    if missing:
        raise ValueError(f"state: missing arrays {sorted(missing)}; was it written by this simulator?")


class InfiniteSimulator(_SimulatorBase):
    """NTK dynamics of the network without bottleneck (MATH §5).

        F_{t+1}(xi) = F_t(xi) - sum_i NTK_inf(xi, xi_i) chi_i

    with ``NTK_inf`` weighted by ``lr_f`` and ``lr_g`` (:func:`kernels.ntk_inf`).

    Parameters
    ----------
    X, Y, lr, lr_f, lr_g, X_eval, activation, depth_f, depth_g, lr_schedule, total_steps, momentum, nesterov
        As for :class:`BottleneckSimulator` (MATH §8: the outputs carry the velocity).
    init : {"auto", "cholesky", "network"}
        How F0 ~ GP(0, Sigma_F) is drawn on the training and evaluation inputs:
        exactly by Cholesky ("cholesky"), or as the output of one finite random
        network of the composed architecture with hidden and bottleneck width
        ``width`` ("network").  "auto" uses Cholesky up to ``cholesky_max`` points.
        The choice is in :attr:`f0_method`.
    seed : int
        Seed of the draw of F0.
    F0 : (N + q, dr) array, optional
        Initial outputs on ``X`` followed by ``X_eval``; overrides ``init``.
    layers_g, layers_f : Layers, optional
        Architectures of g and f (MATH §2.2); they override ``activation`` and the depths.
    loss : {"mse", "ce"}
        As for :class:`BottleneckSimulator`.
    engine : callable, optional
        Engine factory ``engine(layers_g, layers_f, lr_f, lr_g)``; default the reference
        :class:`refimpl.engine.InfiniteEngine`.
    """

    def __init__(self, X, Y, lr=1.0, lr_f=None, lr_g=None, X_eval=None, init="auto", seed=0,
                 width=2048, F0=None, activation="relu", depth_f=None, depth_g=None, cholesky_max=4000,
                 layers_g=None, layers_f=None, loss="mse", engine=None, lr_schedule=None, total_steps=None,
                 momentum=0.0, nesterov=False):
        self._setup(X, Y, lr, lr_f, lr_g, X_eval, loss, lr_schedule, total_steps, momentum, nesterov)
        self.layers_g = layers_g if layers_g is not None else kernels.Layers.make(activation, depth_g)
        self.layers_f = layers_f if layers_f is not None else kernels.Layers.make(self.layers_g.activation,
                                                                                  depth_f)
        if self.layers_f.activation != self.layers_g.activation:
            raise ValueError(f"layers_f: expected the activation of g ({self.layers_g.activation!r}), "
                             f"got {self.layers_f.activation!r}")
        self.activation = self.layers_g.activation
        self.depth_f, self.depth_g = self.layers_f.depth, self.layers_g.depth
        self.dr = self.Y.shape[1]
        Xs = [self.X] + ([self.X_eval] if self.X_eval is not None else [])
        Xall = np.concatenate(Xs)
        self.init_net = None
        if F0 is not None:
            F0 = np.array(F0, dtype=np.float64)
            if F0.shape != (Xall.shape[0], self.dr):
                raise ValueError(f"F0: expected shape {(Xall.shape[0], self.dr)}, got {F0.shape}")
            self.f0_method = "given"
        else:
            if init not in ("auto", "cholesky", "network"):
                raise ValueError(f"init: expected 'auto', 'cholesky' or 'network', got {init!r}")
            if init == "auto":
                init = "cholesky" if Xall.shape[0] <= cholesky_max else "network"
            if init == "cholesky":
                F0 = self._sample_cholesky(Xall, seed)
                self.f0_method = "cholesky"
            else:
                self.init_net = RandomNetwork.sample(self.X.shape[1], width, self.dr, width=width, seed=seed,
                                                     layers_g=self.layers_g, layers_f=self.layers_f)
                F0 = self.init_net.f(self.init_net.g(Xall))
                self.f0_method = f"network(width={width})"
        self.engine = (engine or InfiniteEngine)(self.layers_g, self.layers_f, self.lr_f, self.lr_g)
        self._tracked, start = [], 0
        for Xi in Xs:
            self._tracked.append(self.engine.track(Xi, F0[start:start + Xi.shape[0]].copy()))
            start += Xi.shape[0]
        self.A = np.zeros((self.N, self.dr))

    def _sample_cholesky(self, Xall, seed, jitter=1e-10):
        """Draw F0 ~ GP(0, Sigma_F) on Xall exactly: Sigma_F is the NNGP of the composed network."""
        cov = kernels.nngp_inf(Xall, Xall, self.layers_g, self.layers_f)
        scale = max(1.0, float(np.max(np.diag(cov))))
        L = np.linalg.cholesky(cov + jitter * scale * np.eye(cov.shape[0]))
        rng = np.random.default_rng(seed)
        return L @ rng.standard_normal((cov.shape[0], self.dr))

    def outputs(self, Xq):
        """F_t(Xq), (q, d0) -> (q, dr).  Inputs other than X and X_eval need ``init="network"``."""
        Xq = as_points(Xq, "Xq")
        tr = self._find(Xq)
        if tr is not None:
            return tr.values.copy()
        if self.init_net is None:
            raise ValueError("Xq: F0 was drawn on X and X_eval only; pass these inputs as X_eval "
                             "or use init='network'")
        return self.init_net.f(self.init_net.g(Xq)) - self.engine.ntk(Xq, self._tracked[0]) @ self.A

    def step(self, idx):
        """One SGD step on the rows ``idx``; returns the batch loss before the update."""
        idx = self._check_batch(idx)
        loss, chi = self._batch_loss(self._tracked[0].rows(idx), self.Y[idx])
        rate, kw = self._optimiser()
        for tr in self._tracked:
            if self.plain_sgd:
                self.engine.update_tracked(tr, self._tracked[0], idx, chi)
            else:
                self.engine.update_tracked(tr, self._tracked[0], idx, chi, rate=rate, **kw)
        self._accumulate(idx, chi, rate)
        self.t += 1
        return loss

    def state_dict(self):
        state = {"t": np.array(self.t), "A": self.A.copy()}
        for k, tr in enumerate(self._tracked):
            state[f"tracked_{k}"] = tr.values.copy()
        return self._optimiser_state(state)

    def load_state_dict(self, state):
        _check_state_keys(state, len(self._tracked), ("A",))
        self.t = state_arrays(state, {"A": (self.N, self.dr),
                                      **{f"tracked_{k}": tr.values.shape for k, tr in enumerate(self._tracked)}})
        self._load_optimiser_state(state, self.t)
        self.A = np.array(state["A"], dtype=np.float64)
        for k, tr in enumerate(self._tracked):
            tr.values = np.array(state[f"tracked_{k}"], dtype=np.float64)
