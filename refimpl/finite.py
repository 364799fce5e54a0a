"""Finite-width networks of the MATH §1 architecture, trained by plain (S)GD in weight space.

These are the objects the theory is checked against (MATH §6, paper appendix
E): a wide :class:`FiniteNetwork` trained by gradient descent must follow the
function-space dynamics of :class:`~refimpl.dynamics.BottleneckSimulator`
(theorem 3.2), and deep linear ones must follow their two-layer effective
network (lemma 4.1).

Architecture (MATH §1, NTK parametrisation, no biases).  Both halves are
multilayer perceptrons in which every layer divides by the square root of its
fan-in:

    h_0 = x,   a_l = W_l h_{l-1} / sqrt(fan_in_l),   h_l = phi(a_l)  (hidden layers),
    output = a_L.

With two weight matrices per half this is exactly

    g(xi) = theta2 phi(theta1 xi / sqrt(d0)) / sqrt(n)      R^d0 -> R^d
    f(x)  = v phi(u x / sqrt(d)) / sqrt(n)                   R^d  -> R^dr

as in :class:`~refimpl.network.RandomNetwork`.  With ``activation="linear"``
and L weight matrices it is the deep linear network of lemma 4.1 (scale
1/sqrt(d0) or 1/sqrt(d) at the input and 1/sqrt(n) per hidden layer), and with
one weight matrix per half it is the effective two-layer network of MATH §5.2,

    F(xi) = W Theta xi / sqrt(d d0),   g(xi) = Theta xi / sqrt(d0),   f(x) = W x / sqrt(d).

Loss (same as the simulators, MATH §4): ``L = 1/(2B) sum_i |F_i - y_i|^2``,
``chi_i = (F_i - y_i) / B``.  A step updates every weight matrix at once with
the gradient at the current weights: ``W <- W - lr_f dL/dW`` for the layers
of f and ``lr_g`` for those of g.  With a schedule and momentum (MATH §8) every
weight matrix and bias keeps a velocity buffer, ``v <- beta v + dL/dW`` and
``W <- W - lr s_t v`` (Nesterov: ``W <- W - lr s_t (dL/dW + beta v)``), the
optimiser the simulators follow in function space.

Forward and backward passes are written by hand.  Hidden activations are
formed for at most ``ROW_BLOCK_ELEMENTS / width`` input rows at a time, so wide
networks stay within bounded memory for any number of inputs.  The array math
goes through the array module ``self.xp`` (NumPy here) and avoids NumPy-only
calls, so that a CuPy module can be passed later without changes.
"""

from __future__ import annotations

import math

import numpy as np

from .dynamics import DivergenceError, check_ce_targets, check_loss, loss_and_chi, pointwise_loss
from .kernels import ACTIVATIONS, Layers, as_points
from .network import MLP, RandomNetwork, TwoHalves
from .optim import check_momentum, make_schedule, momentum_direction, schedule_rate
from .validate import positive_int, positive_rate

#: Largest hidden-activation block, in float64 elements, formed during a pass.
ROW_BLOCK_ELEMENTS = 1 << 22



def step_rates(lr, lr_f, lr_g, momentum, nesterov, lr_schedule, total_steps, t):
    """The rates of step ``t`` of a finite network's optimiser (MATH §8.1): ``(lr_f, lr_g, beta, nesterov)``,
    the base rates (``lr`` where ``lr_f`` / ``lr_g`` are not given) times the schedule's multiplier."""
    lr = positive_rate("lr", lr)
    lr_f = positive_rate("lr_f", lr_f) or lr
    lr_g = positive_rate("lr_g", lr_g) or lr
    if lr_f is None or lr_g is None:
        raise ValueError("lr: expected a positive finite number (or both lr_f and lr_g), got None")
    beta, nesterov = check_momentum(momentum, nesterov)
    if lr_schedule is not None:
        rate = schedule_rate(make_schedule(lr_schedule, total_steps), t)
        lr_f, lr_g = lr_f * rate, lr_g * rate
    return lr_f, lr_g, beta, nesterov


class FiniteNetwork(TwoHalves):
    """A finite network F = f o g of MATH §1 with hand-written gradient descent.

    Parameters
    ----------
    g_weights : sequence of 2-d arrays
        Weight matrices of g from input to bottleneck: ``[theta1 (n, d0), theta2 (d, n)]``
        for the MATH §1 network, L_g matrices for a deep linear g, one (d, d0) matrix
        for the effective network.
    f_weights : sequence of 2-d arrays
        Weight matrices of f from bottleneck to output: ``[u (n, d), v (dr, n)]``, etc.
    activation : {"relu", "erf", "linear"}
        Activation of every hidden layer.
    xp : module, optional
        Array module (default ``numpy``).
    g_biases, f_biases : sequences of 1-d arrays, optional
        Biases of every layer (with ``b_std > 0``).
    layers_g, layers_f : Layers, optional
        Scales of the layers (MATH §2.2: w_std, b_std, out_std); their depth must
        match the number of matrices.  Default: unit scales, no biases.
    loss : {"mse", "ce"}
        Squared loss or cross-entropy (MATH §4.3), as in the simulators.

    The weights are copied; training changes them in place.
    """

    def __init__(self, g_weights, f_weights, activation="relu", xp=None, g_biases=None, f_biases=None,
                 layers_g=None, layers_f=None, loss="mse"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        self.xp = np if xp is None else xp
        self.activation = activation
        self.loss_name = check_loss(loss)
        self.layers_g = layers_g or Layers(activation, len(g_weights))
        self.layers_f = layers_f or Layers(activation, len(f_weights))
        for name, spec, ws in (("layers_g", self.layers_g, g_weights), ("layers_f", self.layers_f, f_weights)):
            if spec.depth != len(ws):
                raise ValueError(f"{name}: depth {spec.depth} does not match the {len(ws)} weight matrices")
        self._g = MLP([self.xp.array(w, dtype=self.xp.float64) for w in g_weights], activation, self.xp,
                      "g_weights", _copy(self.xp, g_biases if self.layers_g.b_std > 0 else None),
                      self.layers_g.layer_stds())
        self._f = MLP([self.xp.array(w, dtype=self.xp.float64) for w in f_weights], activation, self.xp,
                      "f_weights", _copy(self.xp, f_biases if self.layers_f.b_std > 0 else None),
                      self.layers_f.layer_stds())
        for name, mlp, spec in (("g_biases", self._g, self.layers_g), ("f_biases", self._f, self.layers_f)):
            if spec.b_std > 0 and mlp.biases is None:
                raise ValueError(f"{name}: expected biases for b_std = {spec.b_std}")
        if self._f.n_in != self._g.n_out:
            raise ValueError(f"f_weights: the first matrix needs {self._g.n_out} columns (the bottleneck width "
                             f"of g), got {self._f.n_in}")
        self.t = 0
        #: velocity buffers of the weights and biases (MATH §8), None until the first momentum step
        self.velocities = None

    # ------------------------------------------------------------------ sizes
    @property
    def width(self):
        """Largest hidden width (the bottleneck width d for the effective network)."""
        return max(self._g.max_width, self._f.max_width)

    # ----------------------------------------------------------- constructors
    @classmethod
    def sample(cls, d0, d, dr, width=10_000, seed=0, activation="relu", depth_g=2, depth_f=2, xp=None,
               layers_g=None, layers_f=None, loss="mse"):
        """Draw all weights i.i.d. N(0, 1) from ``numpy.random.default_rng(seed)``.

        The matrices are drawn in order, g from input to bottleneck, then f,
        then the biases (where ``b_std > 0``), as :meth:`RandomNetwork.sample`.
        With ``depth_g = depth_f = 2`` that is theta1, theta2, u, v, so the
        network computes the same functions as
        ``RandomNetwork.sample(d0, d, dr, width, seed, activation)``.
        ``layers_g``, ``layers_f`` (Layers) override activation and depths.
        """
        for name, val in (("d0", d0), ("d", d), ("dr", dr), ("width", width),
                          ("depth_g", depth_g), ("depth_f", depth_f)):
            positive_int(name, val)
        layers_g = layers_g or Layers(activation, depth_g)
        layers_f = layers_f or Layers(layers_g.activation, depth_f)
        rng = np.random.default_rng(seed)
        g_dims = [d0] + [width] * (layers_g.depth - 1) + [d]
        f_dims = [d] + [width] * (layers_f.depth - 1) + [dr]
        g_w = [rng.standard_normal((g_dims[k + 1], g_dims[k])) for k in range(layers_g.depth)]
        f_w = [rng.standard_normal((f_dims[k + 1], f_dims[k])) for k in range(layers_f.depth)]
        g_b = [rng.standard_normal(w.shape[0]) for w in g_w] if layers_g.b_std > 0 else None
        f_b = [rng.standard_normal(w.shape[0]) for w in f_w] if layers_f.b_std > 0 else None
        return cls(g_w, f_w, layers_g.activation, xp, g_b, f_b, layers_g, layers_f, loss)

    @classmethod
    def from_random_network(cls, net, xp=None, loss="mse"):
        """A trainable copy of a :class:`RandomNetwork` (same initial g0, f0, J0)."""
        if not isinstance(net, RandomNetwork):
            raise TypeError(f"net: expected a RandomNetwork, got {type(net).__name__}")
        return cls(net.g_weights, net.f_weights, net.activation, xp, net.g_biases, net.f_biases,
                   net.layers_g, net.layers_f, loss)

    def effective(self):
        """The effective two-layer network of a linear network (lemma 4.1, MATH §2).

        ``W_eff = w_L ... w_1 / sqrt(n_1 ... n_{L-1})`` and likewise
        ``Theta_eff``, so that ``f(x) = W_eff x / sqrt(d)`` and
        ``g(xi) = Theta_eff xi / sqrt(d0)``: a FiniteNetwork with one matrix
        per half computing the same functions.  Train it with rates
        ``depth_f * mu_f`` and ``depth_g * mu_g`` to follow the deep network
        trained with ``mu_f``, ``mu_g`` as n -> infinity.
        """
        if self.activation != "linear":
            raise ValueError(f"activation: the effective network needs a linear network, got {self.activation!r}")
        return FiniteNetwork([self._collapse(self._g)], [self._collapse(self._f)], "linear", self.xp)

    def _collapse(self, mlp):
        W = mlp.weights[0]
        for w in mlp.weights[1:]:
            W = (w @ W) / math.sqrt(w.shape[1])
        return W

    def as_random_network(self):
        """A :class:`RandomNetwork` with the current functions g, f (to start a simulator from).

        A ReLU network needs two matrices per half (its weights are copied).
        A linear network of any depth is collapsed to its effective weights
        and written as a RandomNetwork with identity first layers, hidden
        widths d0 and d: ``theta1 = I, theta2 = sqrt(d0) Theta_eff``,
        ``u = I, v = sqrt(d) W_eff``, which computes the same g, f and J.
        """
        to_np = getattr(self.xp, "asnumpy", np.asarray)
        plain = self.layers_g == Layers(self.activation) and self.layers_f == Layers(self.activation)
        if not plain and not (self.activation == "linear" and self.layers_g.closed_form
                              and self.layers_f.closed_form):
            copies = [[to_np(w).copy() for w in (ws or [])] or None
                      for ws in (self._g.weights, self._f.weights, self._g.biases, self._f.biases)]
            return RandomNetwork.from_layers(copies[0], copies[1], self.layers_g, self.layers_f, copies[2],
                                             copies[3])
        if self.depth_g == 2 and self.depth_f == 2:
            (t1, t2), (u, v) = self._g.weights, self._f.weights
            return RandomNetwork(to_np(t1).copy(), to_np(t2).copy(), to_np(u).copy(), to_np(v).copy(),
                                 self.activation)
        if self.activation != "linear":
            raise ValueError("activation: only a linear network of depth other than 2 can be written as "
                             "a RandomNetwork")
        theta_eff = to_np(self._collapse(self._g))
        w_eff = to_np(self._collapse(self._f))
        return RandomNetwork(np.eye(self.d0), math.sqrt(self.d0) * theta_eff,
                             np.eye(self.d), math.sqrt(self.d) * w_eff, "linear")

    # -------------------------------------------------------------- functions
    def _rows(self):
        return max(1, ROW_BLOCK_ELEMENTS // max(self._g.max_width, self._f.max_width))

    def _points(self, X, name, cols):
        X = as_points(X, name)
        if X.shape[1] != cols:
            raise ValueError(f"{name}: expected {cols} columns, got {X.shape[1]}")
        return self.xp.asarray(X)

    def _map(self, mlp, X):
        out = self.xp.empty((X.shape[0], mlp.n_out))
        rows = self._rows()
        for i in range(0, X.shape[0], rows):
            out[i:i + rows] = mlp.forward(X[i:i + rows])
        return out

    def g(self, X):
        """Bottleneck embeddings g(X), (p, d0) -> (p, d)."""
        return self._map(self._g, self._points(X, "X", self.d0))

    embeddings = g

    def f(self, Z):
        """Head outputs f(Z), (p, d) -> (p, dr)."""
        return self._map(self._f, self._points(Z, "Z", self.d))

    def outputs(self, X):
        """F(X) = f(g(X)), (p, d0) -> (p, dr)."""
        return self._outputs(self._points(X, "X", self.d0))

    def _outputs(self, X):
        out = self.xp.empty((X.shape[0], self.dr))
        rows = self._rows()
        for i in range(0, X.shape[0], rows):
            out[i:i + rows] = self._f.forward(self._g.forward(X[i:i + rows]))
        return out

    def jacobian_t_dot(self, Z, C):
        """J(Z_b)^T c_b for each row b, (p, d), (p, dr) -> (p, d), by back-propagation."""
        Z = self._points(Z, "Z", self.d)
        C = self._points(C, "C", self.dr)
        if C.shape[0] != Z.shape[0]:
            raise ValueError(f"C: expected {Z.shape[0]} rows like Z, got {C.shape[0]}")
        out = self.xp.empty(Z.shape)
        rows = self._rows()
        for i in range(0, Z.shape[0], rows):
            _, cache = self._f.forward(Z[i:i + rows], keep=True)
            out[i:i + rows] = self._f.backward(cache, C[i:i + rows])
        return out

    def jacobian(self, Z):
        """Input-output Jacobians J(Z) = df/dx, (p, d) -> (p, dr, d)."""
        Z = self._points(Z, "Z", self.d)
        xp = self.xp
        out = xp.empty((Z.shape[0], self.dr, self.d))
        for a in range(self.dr):
            E = xp.zeros((Z.shape[0], self.dr))
            E[:, a] = 1.0
            out[:, a, :] = self.jacobian_t_dot(Z, E)
        return out

    # ------------------------------------------------------------------- step
    def _batch(self, X, Y):
        X = self._points(X, "X", self.d0)
        if X.shape[0] == 0:
            raise ValueError("X: expected a non-empty batch")
        Y = np.asarray(Y, dtype=np.float64)
        if Y.ndim == 1:
            Y = Y[:, None]
        if Y.ndim != 2 or Y.shape != (X.shape[0], self.dr):
            raise ValueError(f"Y: expected shape ({X.shape[0]}, {self.dr}) matching the rows of X, got {Y.shape}")
        if not np.all(np.isfinite(Y)):
            raise ValueError("Y: contains NaN or inf")
        if self.loss_name == "ce":
            check_ce_targets(Y)
        return X, self.xp.asarray(Y)

    def gradients(self, X, Y, with_biases=False):
        """Loss and its gradients with respect to every weight matrix (and bias).

        Parameters
        ----------
        X : (B, d0) array;  Y : (B, dr) array
        with_biases : bool, also return the bias gradients

        Returns
        -------
        loss : float, ``1/(2B) sum |F - y|^2`` (or the cross-entropy, MATH §4.3)
        grads_g, grads_f : lists of arrays shaped like :attr:`g_weights`, :attr:`f_weights`
        grads_bg, grads_bf : lists of bias gradients (None entries without biases), if ``with_biases``
        """
        X, Y = self._batch(X, Y)
        B = X.shape[0]
        grads_g = [None] * self.depth_g
        grads_f = [None] * self.depth_f
        grads_bg = [None] * self.depth_g
        grads_bf = [None] * self.depth_f
        loss = 0.0
        rows = self._rows()
        for i in range(0, B, rows):
            Zb, cache_g = self._g.forward(X[i:i + rows], keep=True)
            Fb, cache_f = self._f.forward(Zb, keep=True)
            part, chi = loss_and_chi(Fb, Y[i:i + rows], self.loss_name, self.xp, B)
            loss += part
            G = self._f.backward(cache_f, chi, grads_f, grads_b=grads_bf)     # J^T chi at the batch embeddings
            self._g.backward(cache_g, G, grads_g, need_input=False, grads_b=grads_bg)
        if with_biases:
            return loss, grads_g, grads_f, grads_bg, grads_bf
        return loss, grads_g, grads_f

    def step(self, X, Y, lr=None, lr_f=None, lr_g=None, momentum=0.0, nesterov=False, lr_schedule=None,
             total_steps=None):
        """One (S)GD step on the batch (X, Y); pass the whole data set for full-batch GD.

        Parameters
        ----------
        X : (B, d0) array;  Y : (B, dr) array
        lr : float
            Rate for all weights (required unless both ``lr_f`` and ``lr_g`` are given).
        lr_f, lr_g : float, optional
            Rates for the weights of f and of g (default ``lr``).
        momentum, nesterov : float in [0, 1), bool
            Heavy-ball (or Nesterov) momentum of every weight and bias (MATH §8.1); pass the same
            values at every step.
        lr_schedule, total_steps
            The schedule's multiplier s_t of both rates at this network's step t (MATH §8.1; as for
            :class:`~refimpl.dynamics.BottleneckSimulator`).

        Returns
        -------
        float
            The batch loss ``1/(2B) sum |F - y|^2`` before the update.

        Raises :class:`~refimpl.dynamics.DivergenceError` without changing the
        weights when the loss or a gradient is not finite.
        """
        lr_f, lr_g, beta, nesterov = step_rates(lr, lr_f, lr_g, momentum, nesterov, lr_schedule, total_steps,
                                                self.t)
        xp = self.xp
        loss, grads_g, grads_f, grads_bg, grads_bf = self.gradients(X, Y, with_biases=True)
        if not math.isfinite(loss):
            raise DivergenceError(f"loss is {loss} at step {self.t}: the run diverged (lower the learning rate)")
        for gw in grads_g + grads_f + grads_bg + grads_bf:
            if gw is not None and not bool(xp.all(xp.isfinite(gw))):
                raise DivergenceError(f"a gradient is not finite at step {self.t}: the run diverged")
        groups = ((self._g.weights, grads_g, lr_g), (self._f.weights, grads_f, lr_f),
                  (self._g.biases or [], grads_bg, lr_g), (self._f.biases or [], grads_bf, lr_f))
        if beta == 0.0 and self.velocities is None:
            for ws, grads, rate in groups:
                for w, gw in zip(ws, grads):
                    gw *= rate
                    w -= gw
        else:
            if self.velocities is None:
                self.velocities = [[xp.zeros_like(w) for w in ws] for ws, _, _ in groups]
            for (ws, grads, rate), vs in zip(groups, self.velocities):
                for w, gw, v in zip(ws, grads, vs):
                    w -= rate * momentum_direction(v, gw, beta, nesterov)
        self.t += 1
        return loss

    def loss(self, X, Y):
        """The loss ``1/(2B) sum |F - y|^2`` (or the cross-entropy) on (X, Y) without updating."""
        X, Y = self._batch(X, Y)
        F = self._outputs(X)
        if self.loss_name == "mse":
            return 0.5 * float(self.xp.sum((F - Y) ** 2)) / F.shape[0]
        return float(self.xp.sum(pointwise_loss(F, Y, self.loss_name, self.xp))) / F.shape[0]


def _copy(xp, arrays):
    return None if arrays is None else [xp.array(a, dtype=xp.float64) for a in arrays]


class FiniteChain:
    """A finite chain F = f_L o ... o f_1 o g (MATH §9) with hand-written gradient descent.

    Parameters
    ----------
    mlps : sequence of :class:`~refimpl.network.MLP`
        g (d0 -> d1) then the heads f_1 ... f_L; their weights and biases are copied.
    layers_g : Layers;  layers_heads : sequence of Layers (one per head)
    loss : {"mse", "ce"}
        As :class:`FiniteNetwork`.

    A step updates every weight at once with the gradient at the current weights: rate
    ``lr_g`` for g, ``lr_f`` for every head (as :class:`refimpl.chain.ChainSimulator`).
    Build it with :meth:`sample` or :meth:`from_random_chain` (the simulator's initial functions).
    """

    def __init__(self, mlps, layers_g, layers_heads, loss="mse"):
        from .chain import RandomChain
        copies = [MLP([np.array(w, dtype=np.float64) for w in m.weights], m.activation, np, f"mlp{k}",
                      _copy(np, m.biases), m.stds) for k, m in enumerate(mlps)]
        self._chain = RandomChain(copies[0], copies[1:], layers_g, layers_heads)
        self.loss_name = check_loss(loss)
        self.velocities = None                            # momentum buffers (MATH §8), made at the first step
        self.t = 0

    @classmethod
    def sample(cls, d0, widths, dr, width=1000, seed=0, layers_g=None, layers_f=None, loss="mse"):
        """Draw the weights as :meth:`refimpl.chain.RandomChain.sample` (same seed: same functions)."""
        from .chain import RandomChain
        return cls.from_random_chain(RandomChain.sample(d0, widths, dr, width, seed, layers_g, layers_f), loss)

    @classmethod
    def from_random_chain(cls, net, loss="mse"):
        """A trainable copy of a :class:`~refimpl.chain.RandomChain` (same initial functions)."""
        from .chain import RandomChain
        if isinstance(net, RandomNetwork):
            net = RandomChain.from_random_network(net)
        if not isinstance(net, RandomChain):
            raise TypeError(f"net: expected a RandomChain, got {type(net).__name__}")
        return cls(net.mlps, net.layers_g, net.layers_heads, loss)

    def as_random_chain(self):
        """A :class:`~refimpl.chain.RandomChain` with copies of the current weights (to start a simulator)."""
        from .chain import RandomChain
        c = self._chain
        copies = [MLP([w.copy() for w in m.weights], m.activation, np, f"mlp{k}", _copy(np, m.biases), m.stds)
                  for k, m in enumerate(c.mlps)]
        return RandomChain(copies[0], copies[1:], c.layers_g, c.layers_heads)

    # sizes and functions: those of the chain
    d0 = property(lambda self: self._chain.d0)
    widths = property(lambda self: self._chain.widths)
    dr = property(lambda self: self._chain.dr)
    n_heads = property(lambda self: self._chain.n_heads)

    def embeddings(self, X):
        """g(X), (p, d0) -> (p, d1)."""
        return self._chain.g(X)

    def features(self, X):
        """[z_0, ..., z_L] at X (the last is F)."""
        Z = [self._chain.g(X)]
        for k in range(self.n_heads):
            Z.append(self._chain.head(k, Z[-1]))
        return Z

    def outputs(self, X):
        """F(X), (p, d0) -> (p, dr)."""
        return self._chain.outputs(X)

    def head_jacobian_t_dot(self, k, Z, C):
        """J_k(Z_b)^T c_b of head k (back-propagation)."""
        return self._chain.head_jacobian_t_dot(k, Z, C)

    def step(self, X, Y, lr=None, lr_f=None, lr_g=None, momentum=0.0, nesterov=False, lr_schedule=None,
             total_steps=None):
        """One (S)GD step on the batch (X, Y); returns the batch loss before the update.

        Rates, momentum and schedule as :meth:`FiniteNetwork.step` (``lr_f`` for every head).  Raises
        :class:`~refimpl.dynamics.DivergenceError` without changing the weights when the loss or a
        gradient is not finite.
        """
        lr_f, lr_g, beta, nesterov = step_rates(lr, lr_f, lr_g, momentum, nesterov, lr_schedule, total_steps,
                                                self.t)
        X = as_points(X, "X")
        if X.shape[1] != self.d0 or X.shape[0] == 0:
            raise ValueError(f"X: expected a non-empty batch with {self.d0} columns, got shape {X.shape}")
        Y = np.asarray(Y, dtype=np.float64).reshape(X.shape[0], -1)
        if Y.shape[1] != self.dr or not np.all(np.isfinite(Y)):
            raise ValueError(f"Y: expected finite targets of shape ({X.shape[0]}, {self.dr}), got {Y.shape}")
        mlps = self._chain.mlps
        h, caches = X, []
        for m in mlps:
            h, cache = m.forward(h, keep=True)
            caches.append(cache)
        loss, G = loss_and_chi(h, Y, self.loss_name)
        if not math.isfinite(loss):
            raise DivergenceError(f"loss is {loss} at step {self.t}: the run diverged (lower the learning rate)")
        grads = [[None] * len(m.weights) for m in mlps]
        grads_b = [[None] * len(m.weights) for m in mlps]
        for k in range(len(mlps) - 1, -1, -1):
            G = mlps[k].backward(caches[k], G, grads[k], need_input=k > 0, grads_b=grads_b[k])
        for gs in grads + grads_b:
            for gw in gs:
                if gw is not None and not np.all(np.isfinite(gw)):
                    raise DivergenceError(f"a gradient is not finite at step {self.t}: the run diverged")
        if beta != 0.0 and self.velocities is None:
            self.velocities = [[np.zeros_like(w) for w in m.weights + (m.biases or [])] for m in mlps]
        for k, m in enumerate(mlps):
            rate = lr_g if k == 0 else lr_f
            params, gs = m.weights + (m.biases or []), grads[k] + (grads_b[k] if m.biases else [])
            for j, (w, gw) in enumerate(zip(params, gs)):
                w -= rate * (gw if self.velocities is None
                             else momentum_direction(self.velocities[k][j], gw, beta, nesterov))
        self.t += 1
        return loss
