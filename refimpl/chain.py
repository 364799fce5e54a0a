"""Networks with several bottlenecks: a chain of infinitely wide layers (MATH §9).

The input passes through the embedding g and L heads f_1 ... f_L, each an infinitely
wide network between two finite widths:

    xi  ->  g: R^d0 -> R^d1  ->  f_1: R^d1 -> R^d2  ->  ...  ->  f_L: R^dL -> R^dr
    z_0 = g(xi),   z_k = f_k(z_{k-1}),   F = z_L.

L = 1 is the network of MATH §1 (f_1 = f), and :class:`ChainSimulator` with one head
equals :class:`refimpl.BottleneckSimulator` step for step.  Every head is simulated as
the head f of MATH §4: its initial function and Jacobian plus a history of its batch
inputs P_k (z_{k-1} at the batch) and of the gradient C_k = u_k it received,

    u_L = chi,   u_k = J_{k+1}(z_k)^T u_{k+1}    (back-propagation through the heads),

and g moves by Theta J_1(z_0)^T u_1 = Theta J_1^T ... J_L^T chi (MATH §9).  Each head
owns one engine (:mod:`refimpl.engine`, ``engine(layers_g, layers_k, d_k, d_{k+1})``),
so a backend runs the chain by handing its engine factory; the first engine also holds
g's tracked inputs and Theta.

:class:`RandomChain` draws the initial functions (MATH §3: one wide random network per
infinite layer); :func:`infinite_chain_simulator` is the chain with every width infinite
(one deep network in the NTK regime, MATH §9.3), and :func:`ntk_inf_chain`,
:func:`nngp_inf_chain` its kernels.
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .dynamics import DivergenceError, InfiniteSimulator, _check_state_keys, _SimulatorBase, tracked_embeddings
from .engine import BottleneckEngine, InfiniteEngine, contract_xi
from .kernels import Layers, as_points
from .network import MLP, RandomNetwork, _draw_biases, backward_blocks, forward_blocks, tagged_weights
from .validate import positive_int, state_arrays

# ----------------------------------------------------------------------------
# architecture
# ----------------------------------------------------------------------------


def check_widths(widths, name="widths"):
    """The bottleneck widths d_1 ... d_L as a tuple of positive ints (one-line ValueError otherwise)."""
    if isinstance(widths, (int, np.integer)) and not isinstance(widths, bool):
        widths = (widths,)
    try:
        widths = tuple(widths)
    except TypeError:
        raise ValueError(f"{name}: expected a sequence of positive integers (the bottleneck widths), "
                         f"got {widths!r}") from None
    if not widths:
        raise ValueError(f"{name}: expected at least one bottleneck width, got none")
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1:
            raise ValueError(f"{name}: expected positive integers (the bottleneck widths), got {widths!r}")
    return tuple(int(w) for w in widths)


def head_layers(layers_f, n_heads):
    """A tuple of ``n_heads`` Layers: ``layers_f`` repeated (one Layers) or checked (a sequence)."""
    if isinstance(layers_f, Layers):
        return (layers_f,) * n_heads
    heads = tuple(layers_f)
    if len(heads) != n_heads:
        raise ValueError(f"layers_f: expected one Layers or {n_heads} (one per head), got {len(heads)}")
    for spec in heads:
        if not isinstance(spec, Layers):
            raise ValueError(f"layers_f: expected Layers, got {type(spec).__name__}")
    return heads


class RandomChain:
    """Finite random networks g, f_1 ... f_L that supply the initial functions (MATH §3, §9).

    Parameters
    ----------
    g : MLP (d0 -> d1);  heads : list of MLP (d_k -> d_{k+1}, the last to dr)
    layers_g : Layers;  layers_heads : tuple of Layers (one per head)

    Build it with :meth:`sample`, or :meth:`from_random_network` (one head).
    """

    def __init__(self, g, heads, layers_g, layers_heads):
        self._g, self._heads = g, list(heads)
        self.layers_g, self.layers_heads = layers_g, tuple(layers_heads)
        acts_ = {layers_g.activation} | {s.activation for s in self.layers_heads}
        if len(acts_) != 1:
            raise ValueError(f"layers_f: expected the activation of g ({layers_g.activation!r}) for every head, "
                             f"got {sorted(acts_)}")
        self.activation = layers_g.activation
        if len(self._heads) != len(self.layers_heads):
            raise ValueError(f"layers_f: expected {len(self._heads)} head architectures, got {len(self.layers_heads)}")
        prev = g.n_out
        for k, h in enumerate(self._heads):
            if h.n_in != prev:
                raise ValueError(f"head {k}: expected {prev} inputs (the width before it), got {h.n_in}")
            prev = h.n_out

    @classmethod
    def sample(cls, d0, widths, dr, width=10_000, seed=0, layers_g=None, layers_f=None, activation="relu"):
        """Draw every weight i.i.d. N(0, 1) from ``numpy.random.default_rng(seed)``.

        Order: the matrices of g (input layer first), of f_1, ..., of f_L, then the biases
        of g, f_1, ..., f_L (only where ``b_std > 0``).  With one width this is the order of
        :meth:`RandomNetwork.sample`, so ``RandomChain.sample(d0, [d], dr, n, seed)`` computes
        the functions of ``RandomNetwork.sample(d0, d, dr, n, seed)``.  ``layers_f``: one
        Layers for every head, or one per head.  ``width`` is the hidden width n0 of every
        infinite layer.
        """
        widths = check_widths(widths)
        for name, val in (("d0", d0), ("dr", dr), ("width", width)):
            positive_int(name, val)
        layers_g = layers_g if layers_g is not None else Layers.make(activation)
        heads = head_layers(layers_f if layers_f is not None else Layers.make(layers_g.activation), len(widths))
        rng = np.random.default_rng(seed)
        dims = list(widths) + [dr]
        specs = [(layers_g, d0, dims[0])] + [(heads[k], dims[k], dims[k + 1]) for k in range(len(widths))]
        ws = []
        for spec, n_in, n_out in specs:
            sizes = [n_in] + [width] * (spec.depth - 1) + [n_out]
            ws.append([rng.standard_normal((sizes[k + 1], sizes[k])) for k in range(spec.depth)])
        bs = [_draw_biases(rng, w, spec) for w, (spec, _, _) in zip(ws, specs)]
        mlps = [MLP(w, spec.activation, np, name, b, spec.layer_stds())
                for w, b, (spec, _, _), name in zip(ws, bs, specs, ["g_weights"] + [f"head{k}_weights"
                                                                                     for k in range(len(widths))])]
        return cls(mlps[0], mlps[1:], layers_g, heads)

    @classmethod
    def from_random_network(cls, net):
        """The one-head chain of a :class:`RandomNetwork` (shares its weight arrays)."""
        if not isinstance(net, RandomNetwork):
            raise TypeError(f"net: expected a RandomNetwork, got {type(net).__name__}")
        return cls(net._g, [net._f], net.layers_g, (net.layers_f,))

    def weights(self):
        """The weights as a dict of arrays (for npz files): ``g/W0 ...``, ``head0/W0 ...``, ... and,
        with biases, ``g/b0 ...``, ``head0/b0 ...`` (read back by :meth:`from_weights`)."""
        return tagged_weights(zip(self._tags(), self.mlps))

    @classmethod
    def from_weights(cls, arrays, layers_g, layers_heads):
        """The chain written by :meth:`weights` (``arrays`` a dict of arrays; one Layers per head)."""
        specs = [layers_g] + list(layers_heads)
        mlps = []
        for k, spec in enumerate(specs):
            tag = "g" if k == 0 else f"head{k - 1}"
            missing = [f"{tag}/W{j}" for j in range(spec.depth) if f"{tag}/W{j}" not in arrays]
            if missing:
                raise ValueError(f"arrays: missing {missing[0]!r} for a chain of {len(specs) - 1} heads")
            ws = [arrays[f"{tag}/W{j}"] for j in range(spec.depth)]
            bs = [arrays[f"{tag}/b{j}"] for j in range(spec.depth)] if spec.b_std > 0 else None
            mlps.append(MLP(ws, spec.activation, np, f"{tag}_weights", bs, spec.layer_stds()))
        return cls(mlps[0], mlps[1:], layers_g, layers_heads)

    def _tags(self):
        return ["g"] + [f"head{k}" for k in range(self.n_heads)]

    # ------------------------------------------------------------------ sizes
    @property
    def d0(self):
        return self._g.n_in

    @property
    def widths(self):
        """The bottleneck widths (d_1, ..., d_L)."""
        return tuple(h.n_in for h in self._heads)

    @property
    def dr(self):
        return self._heads[-1].n_out

    @property
    def n_heads(self):
        return len(self._heads)

    @property
    def mlps(self):
        """[g, f_1, ..., f_L] (live MLPs)."""
        return [self._g] + self._heads

    # -------------------------------------------------------------- functions
    def g(self, X):
        """Embeddings z_0 = g(X), (p, d0) -> (p, d1)."""
        X = as_points(X, "X")
        if X.shape[1] != self.d0:
            raise ValueError(f"X: expected {self.d0} columns, got {X.shape[1]}")
        return forward_blocks(self._g, X)

    def head(self, k, Z):
        """f_k(Z) of head k (0-based), (p, d_k) -> (p, d_{k+1})."""
        return forward_blocks(self._heads[k], self._check_z(k, Z))

    def head_jacobian_t_dot(self, k, Z, C):
        """J_k(Z_b)^T c_b of head k for each row, (p, d_k), (p, d_{k+1}) -> (p, d_k)."""
        return backward_blocks(self._heads[k], self._check_z(k, Z), C)

    def outputs(self, X):
        """F(X) = f_L(... f_1(g(X))), (p, d0) -> (p, dr)."""
        Z = self.g(X)
        for k in range(self.n_heads):
            Z = self.head(k, Z)
        return Z

    def _check_z(self, k, Z):
        Z = as_points(Z, "Z")
        if Z.shape[1] != self.widths[k]:
            raise ValueError(f"Z: expected {self.widths[k]} columns (the width before head {k}), got {Z.shape[1]}")
        return Z


# ----------------------------------------------------------------------------
# the simulator
# ----------------------------------------------------------------------------


class ChainSimulator(_SimulatorBase):
    """Discrete function-space SGD of a chain of bottlenecks (MATH §9).

    Parameters
    ----------
    net : RandomChain or RandomNetwork
        The initial functions g0 and (f_k0, J_k0) of every head (a RandomNetwork is a chain of one).
    X : (N, d0) array;  Y : (N, dr) array
        Training inputs and targets.
    lr : float
        Rate for every weight.
    lr_f, lr_g : float, optional
        Rate of the heads' weights (every head) and of g's (default ``lr``).
    X_eval : (q, d0) array, optional
        Extra inputs whose embeddings are kept up to date.
    loss : {"mse", "ce"}
    engine : callable, optional
        Engine factory ``engine(layers_g, layers_k, d_k, d_{k+1})`` of :mod:`refimpl.engine`,
        called once per head (default the reference :class:`~refimpl.engine.BottleneckEngine`).
    lr_schedule, total_steps, momentum, nesterov
        The optimiser of MATH §8, as for :class:`~refimpl.dynamics.BottleneckSimulator`: every head's
        history gets the same per-entry weights as the single head's, and g's tracked sets and A
        their velocities (MATH §9.1).

    One step (MATH §9.1) takes per head a forward pass over its history (f) and a backward one
    (J^T u), fused into one where the head has at most ``fuse_max_dr`` outputs: about L times the
    single bottleneck's step at equal widths.
    """

    def __init__(self, net, X, Y, lr=1.0, lr_f=None, lr_g=None, X_eval=None, loss="mse", engine=None,
                 lr_schedule=None, total_steps=None, momentum=0.0, nesterov=False):
        if isinstance(net, RandomNetwork):
            net = RandomChain.from_random_network(net)
        if not isinstance(net, RandomChain):
            raise TypeError(f"net: expected a RandomChain or RandomNetwork, got {type(net).__name__}")
        self._setup(X, Y, lr, lr_f, lr_g, X_eval, loss, lr_schedule, total_steps, momentum, nesterov)
        if self.X.shape[1] != net.d0:
            raise ValueError(f"X: expected {net.d0} columns (the network's input dimension), got {self.X.shape[1]}")
        if self.Y.shape[1] != net.dr:
            raise ValueError(f"Y: expected {net.dr} columns (the network's output dimension), got {self.Y.shape[1]}")
        self.net = net
        self.activation = net.activation
        self.layers_g, self.layers_heads = net.layers_g, net.layers_heads
        self.widths, self.dr = net.widths, net.dr
        self.dims = self.widths + (self.dr,)
        factory = engine or BottleneckEngine
        self.engines = [factory(self.layers_g, self.layers_heads[k], self.dims[k], self.dims[k + 1])
                        for k in range(net.n_heads)]
        self.engine = self.engines[0]
        self._tracked = [self.engine.track(self.X, net.g(self.X))]
        if self.X_eval is not None:
            self._tracked.append(self.engine.track(self.X_eval, net.g(self.X_eval)))
        self.A = np.zeros((self.N, self.widths[0]))

    @property
    def n_heads(self):
        """L, the number of heads (= bottlenecks)."""
        return len(self.engines)

    def _history_terms(self, k, Z, mode, chi=None):
        eng = self.engines[k]
        if eng.history.M:
            return eng.history_pass(Z, mode, chi)
        q, R, d = Z.shape[0], (self.dims[k + 1] if mode == 1 else 1), self.dims[k]
        return (np.zeros((q, self.dims[k + 1])) if mode != 2 else None,
                None if mode == 0 else np.zeros((q, R, d)), None if mode == 0 else np.zeros((q, R)))

    # -------------------------------------------------------------- functions
    def head(self, k, Z):
        """f_{k,t}(Z) of head k (0-based), (q, d_k) -> (q, d_{k+1})."""
        Z = self.net._check_z(k, Z)
        return self.net.head(k, Z) - self.lr_f * self._history_terms(k, Z, 0)[0]

    def head_jacobian_t_dot(self, k, Z, C):
        """J_{k,t}(Z_b)^T c_b of head k for each row, (q, d_k), (q, d_{k+1}) -> (q, d_k)."""
        Z = self.net._check_z(k, Z)
        _, T, bsum = self._history_terms(k, Z, 2, C)
        return (self.net.head_jacobian_t_dot(k, Z, C)
                - self.lr_f * contract_xi(np.ones((Z.shape[0], 1)), T, bsum, Z))

    def f(self, Z):
        """The map from the first bottleneck to the output, f_L o ... o f_1 at Z (q, d1) -> (q, dr)."""
        for k in range(self.n_heads):
            Z = self.head(k, Z)
        return Z

    def embeddings(self, Xq):
        """g_t(Xq) = z_0, (q, d0) -> (q, d1).  Tracked inputs are read off; others are computed."""
        return tracked_embeddings(self, Xq)

    def features(self, Xq):
        """[z_0, z_1, ..., z_L] at Xq: the embedding and every head's output (the last is F_t)."""
        Z = [self.embeddings(Xq)]
        for k in range(self.n_heads):
            Z.append(self.head(k, Z[-1]))
        return Z

    def outputs(self, Xq):
        """F_t(Xq) = f_L(... f_1(g_t(Xq))), (q, d0) -> (q, dr)."""
        return self.features(Xq)[-1]

    # ------------------------------------------------------------------- step
    def step(self, idx):
        """One SGD step on the rows ``idx`` (MATH §9.1); returns the batch loss before the update.

        Raises :class:`~refimpl.dynamics.DivergenceError` without changing the state when the
        loss or the update is not finite.
        """
        idx = self._check_batch(idx)
        Z = [self._tracked[0].rows(idx)]                  # z_0 = g_t at the batch (a copy)
        passes = []
        for k, eng in enumerate(self.engines):            # forward through the heads
            fuse = self.dims[k + 1] <= eng.fuse_max_dr
            fh, T, bsum = self._history_terms(k, Z[k], 1 if fuse else 0)
            passes.append((fuse, T, bsum))
            Z.append(self.net.head(k, Z[k]) - self.lr_f * fh)
        loss, chi = self._batch_loss(Z[-1], self.Y[idx])
        U = [None] * self.n_heads
        u = chi
        for k in range(self.n_heads - 1, -1, -1):         # back through the heads: u_k, then J_k^T u_k
            U[k] = u
            fuse, T, bsum = passes[k]
            if fuse:
                xi_sum = contract_xi(u, T, bsum, Z[k])
            else:
                _, T, bsum = self._history_terms(k, Z[k], 2, u)
                xi_sum = contract_xi(np.ones((Z[k].shape[0], 1)), T, bsum, Z[k])
            u = self.net.head_jacobian_t_dot(k, Z[k], u) - self.lr_f * xi_sum
            if not np.all(np.isfinite(u)):
                raise DivergenceError(f"J^T chi is not finite at step {self.t}: the run diverged")
        rate, kw = self._optimiser()                      # MATH §8: (1.0, {}) for plain SGD
        for tr in self._tracked:
            self.engine.update_tracked(tr, self._tracked[0], idx, u, self.lr_g * rate, **kw)
        self._accumulate(idx, u, rate)
        for k, eng in enumerate(self.engines):
            if self.plain_sgd:
                eng.history.append(Z[k], U[k])
            else:
                eng.history.append(Z[k], U[k], rate=rate, beta=self.momentum, nesterov=self.nesterov)
        self.t += 1
        return loss

    # ------------------------------------------------------------- checkpoint
    def state_dict(self):
        """All state that changes during training, as a dict of arrays (for npz)."""
        state = {"t": np.array(self.t), "A": self.A.copy()}
        for k, eng in enumerate(self.engines):
            state[f"history_P_{k}"] = eng.history.P.copy()
            state[f"history_C_{k}"] = eng.history.C.copy()
        for k, tr in enumerate(self._tracked):
            state[f"tracked_{k}"] = tr.values.copy()
        if self.momentum:                                 # MATH §8.3: each head's decayed rows
            for k, eng in enumerate(self.engines):
                D = eng.history.D
                state[f"history_D_{k}"] = np.zeros_like(state[f"history_C_{k}"]) if D is None else np.array(D)
        return self._optimiser_state(state)

    def load_state_dict(self, state):
        """Restore a state written by :meth:`state_dict` on a simulator built the same way."""
        keys = ("A",) + tuple(f"history_{w}_{k}" for k in range(self.n_heads) for w in "PC")
        _check_state_keys(state, len(self._tracked), keys)
        known = set(keys) | {f"history_D_{k}" for k in range(self.n_heads)}
        extra = sorted(k for k in state if k.startswith("history_") and k not in known)
        if extra:
            raise ValueError(f"state: arrays {extra} belong to a chain with more heads than {self.n_heads}")
        shapes = {"A": (self.N, self.widths[0]),
                  **{f"tracked_{k}": tr.values.shape for k, tr in enumerate(self._tracked)}}
        for k in range(self.n_heads):
            shapes[f"history_P_{k}"] = ("M", self.dims[k])
            shapes[f"history_C_{k}"] = ("M", self.dims[k + 1])
        t = state_arrays(state, shapes)
        for k in range(self.n_heads):
            if state[f"history_P_{k}"].shape[0] < t:
                raise ValueError(f"state: {state[f'history_P_{k}'].shape[0]} history rows of head {k} cannot come "
                                 f"from {t} steps")
        for k in range(self.n_heads):
            key = f"history_D_{k}"
            if self.momentum and key in state and np.shape(state[key]) != np.shape(state[f"history_C_{k}"]):
                raise ValueError(f"state[{key!r}]: expected shape {np.shape(state[f'history_C_{k}'])}, "
                                 f"got {np.shape(state[key])}")
        self.t = t
        self.A = np.array(state["A"], dtype=np.float64)
        self._load_optimiser_state(state, t)
        for k, eng in enumerate(self.engines):
            P, C = np.asarray(state[f"history_P_{k}"]), np.asarray(state[f"history_C_{k}"])
            eng.reset_history(capacity=max(1024, P.shape[0]))
            eng.history.append(P, C)
            if self.momentum and f"history_D_{k}" in state:
                eng.history.set_decay(state[f"history_D_{k}"])
        for k, tr in enumerate(self._tracked):
            tr.values = np.array(state[f"tracked_{k}"], dtype=np.float64)


# ----------------------------------------------------------------------------
# every width infinite (MATH §9.3)
# ----------------------------------------------------------------------------


def chain_terms(nx, ny, hu, hv, lam, layers_g, layers_heads, m, lr_f=1.0, lr_g=1.0, xp=np):
    """NNGP and NTK of f_L o ... o f_1 o g with every bottleneck infinitely wide (MATH §9.3).

    Each infinite linear bottleneck hands the previous half's pre-activation covariance to the
    next half's first layer (:func:`refimpl.kernels.composed_terms`, applied L times); the NTK of
    each half is carried into the next one's first layer times its ``w^2``, g's parameters
    weighted by ``lr_g`` and every head's by ``lr_f``.  Returns (nngp, ntk) of the pair shape.
    """
    st, T, _, _, _ = kernels._recursion(kernels.input_output(nx, ny, hu, hv, lam, float(m), xp), layers_g, xp)
    T = lr_g * T
    for spec in layers_heads:
        st, T, _, _, _ = kernels._recursion(kernels.state_as_output(st), spec, xp, T_in=T, lr_self=lr_f)
    return st.z.c, T


def _pairs(X, Y):
    from .angles import pair_halves
    X, Y = kernels.as_pair(X, Y)
    nx, ny, hu, hv, lam = pair_halves(X, Y)
    return nx[:, None], ny[None, :], hu, hv, lam, X.shape[1]


def ntk_inf_chain(X, Y, layers_g, layers_heads, lr_g=1.0, lr_f=1.0):
    """NTK of the chain with every width infinite, (p, d0), (q, d0) -> (p, q) (MATH §9.3)."""
    nx, ny, hu, hv, lam, m = _pairs(X, Y)
    return chain_terms(nx, ny, hu, hv, lam, layers_g, layers_heads, m, lr_f, lr_g)[1]


def nngp_inf_chain(X, Y, layers_g, layers_heads):
    """NNGP (the covariance of F0) of the chain with every width infinite (MATH §9.3)."""
    nx, ny, hu, hv, lam, m = _pairs(X, Y)
    return chain_terms(nx, ny, hu, hv, lam, layers_g, layers_heads, m)[0]


class InfiniteChainEngine(InfiniteEngine):
    """Reference engine of the all-infinite chain: :class:`~refimpl.engine.InfiniteEngine` with
    the kernel :func:`ntk_inf_chain` (MATH §9.3)."""

    def __init__(self, layers_g, layers_heads, lr_f, lr_g):
        super().__init__(layers_g, layers_heads[-1], lr_f, lr_g)
        self.layers_heads = tuple(layers_heads)

    def _ntk(self, Xa, Xb):
        return ntk_inf_chain(Xa, Xb, self.layers_g, self.layers_heads, lr_g=self.lr_g, lr_f=self.lr_f)


def infinite_chain_simulator(X, Y, n_heads, layers_g=None, layers_f=None, lr=1.0, lr_f=None, lr_g=None,
                             X_eval=None, seed=0, init="auto", width=2048, cholesky_max=4000, loss="mse",
                             lr_schedule=None, total_steps=None, momentum=0.0, nesterov=False):
    """The chain of ``n_heads`` heads with every width infinite: an :class:`InfiniteSimulator` on
    the kernel :func:`ntk_inf_chain` (MATH §9.3).

    F0 ~ GP(0, nngp_inf_chain) is drawn by Cholesky (``init="cholesky"``, or ``"auto"`` up to
    ``cholesky_max`` points) or as the output of one :class:`RandomChain` whose hidden and
    bottleneck widths are all ``width`` (``"network"``).  Other arguments as
    :class:`InfiniteSimulator` (the optimiser of MATH §8 included); ``layers_f`` is one Layers for every
    head or one per head.
    The engine is the reference one on every backend (the kernel is a NumPy recursion).
    """
    positive_int("n_heads", n_heads)
    layers_g = layers_g if layers_g is not None else Layers()
    heads = head_layers(layers_f if layers_f is not None else Layers.make(layers_g.activation), n_heads)
    Xp = as_points(X, "X")
    Xall = Xp if X_eval is None else np.concatenate([Xp, as_points(X_eval, "X_eval")])
    dr = np.asarray(Y).reshape(Xp.shape[0], -1).shape[1]
    if init not in ("auto", "cholesky", "network"):
        raise ValueError(f"init: expected 'auto', 'cholesky' or 'network', got {init!r}")
    if init == "auto":
        init = "cholesky" if Xall.shape[0] <= cholesky_max else "network"
    if init == "cholesky":
        cov = nngp_inf_chain(Xall, Xall, layers_g, heads)
        scale = max(1.0, float(np.max(np.diag(cov))))
        L = np.linalg.cholesky(cov + 1e-10 * scale * np.eye(cov.shape[0]))
        F0 = L @ np.random.default_rng(seed).standard_normal((cov.shape[0], dr))
        method = "cholesky"
    else:
        net = RandomChain.sample(Xp.shape[1], [width] * n_heads, dr, width=width, seed=seed,
                                 layers_g=layers_g, layers_f=heads)
        F0 = net.outputs(Xall)
        method = f"network(width={width})"

    def engine(lg, lf, rate_f, rate_g):
        return InfiniteChainEngine(lg, heads, rate_f, rate_g)

    sim = InfiniteSimulator(X, Y, lr=lr, lr_f=lr_f, lr_g=lr_g, X_eval=X_eval, F0=F0, layers_g=layers_g,
                            layers_f=heads[-1], loss=loss, engine=engine, lr_schedule=lr_schedule,
                            total_steps=total_steps, momentum=momentum, nesterov=nesterov)
    sim.f0_method = method
    sim.layers_heads = heads
    return sim

