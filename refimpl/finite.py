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
of f and ``lr_g`` for those of g.

Forward and backward passes are written by hand.  Hidden activations are
formed for at most ``ROW_BLOCK_ELEMENTS / width`` input rows at a time, so wide
networks stay within bounded memory for any number of inputs.  The array math
goes through the array module ``self.xp`` (NumPy here) and avoids NumPy-only
calls, so that a CuPy module can be passed later without changes.
"""

from __future__ import annotations

import math

import numpy as np

from .dynamics import DivergenceError
from .kernels import ACTIVATIONS, as_points
from .network import RandomNetwork
from .validate import positive_int, positive_rate

#: Largest hidden-activation block, in float64 elements, formed during a pass.
ROW_BLOCK_ELEMENTS = 1 << 22


class _MLP:
    """A stack of weight matrices with fan-in scaling and a hand-written backward pass."""

    def __init__(self, weights, activation, xp, name):
        if len(weights) == 0:
            raise ValueError(f"{name}: expected at least one weight matrix")
        ws = []
        for k, w in enumerate(weights):
            w = xp.ascontiguousarray(xp.asarray(w, dtype=xp.float64))
            if w.ndim != 2:
                raise ValueError(f"{name}[{k}]: expected a 2-d weight matrix, got shape {tuple(w.shape)}")
            if k > 0 and w.shape[1] != ws[-1].shape[0]:
                raise ValueError(f"{name}[{k}]: expected {ws[-1].shape[0]} columns (rows of {name}[{k - 1}]), "
                                 f"got shape {tuple(w.shape)}")
            ws.append(w)
        self.weights = ws
        self.activation = activation
        self.xp = xp
        self.scales = [1.0 / math.sqrt(w.shape[1]) for w in ws]

    @property
    def n_in(self):
        return self.weights[0].shape[1]

    @property
    def n_out(self):
        return self.weights[-1].shape[0]

    @property
    def max_width(self):
        return max(w.shape[0] for w in self.weights)

    def _phi(self, a):
        return self.xp.maximum(a, 0.0) if self.activation == "relu" else a

    def _dphi(self, a):
        return (a > 0.0).astype(a.dtype) if self.activation == "relu" else None

    def forward(self, X, keep=False):
        """Output for rows X (p, n_in) -> (p, n_out); with keep, also the layer inputs and pre-activations."""
        h, inputs, pre = X, [], []
        last = len(self.weights) - 1
        for k, (w, c) in enumerate(zip(self.weights, self.scales)):
            if keep:
                inputs.append(h)
            a = (h @ w.T) * c
            if k < last:
                if keep:
                    pre.append(a)
                h = self._phi(a)
            else:
                h = a
        return (h, (inputs, pre)) if keep else h

    def backward(self, cache, G, grads=None, need_input=True):
        """Back-propagate the output cotangent G (p, n_out).

        Adds dL/dW_l to ``grads[l]`` when ``grads`` (a list like ``weights``,
        entries None or arrays) is given, and returns the cotangent of the
        input, (p, n_in), or None when ``need_input`` is false.
        """
        inputs, pre = cache
        for k in range(len(self.weights) - 1, -1, -1):
            Gs = G * self.scales[k]                           # (p, out): scale the small factor
            if grads is not None:
                contrib = Gs.T @ inputs[k]
                if grads[k] is None:
                    grads[k] = contrib
                else:
                    grads[k] += contrib
            if k == 0 and not need_input:
                return None
            G = Gs @ self.weights[k]
            if k > 0:
                mask = self._dphi(pre[k - 1])
                if mask is not None:
                    G *= mask
        return G


class FiniteNetwork:
    """A finite network F = f o g of MATH §1 with hand-written gradient descent.

    Parameters
    ----------
    g_weights : sequence of 2-d arrays
        Weight matrices of g from input to bottleneck: ``[theta1 (n, d0), theta2 (d, n)]``
        for the MATH §1 network, L_g matrices for a deep linear g, one (d, d0) matrix
        for the effective network.
    f_weights : sequence of 2-d arrays
        Weight matrices of f from bottleneck to output: ``[u (n, d), v (dr, n)]``, etc.
    activation : {"relu", "linear"}
        Activation of every hidden layer.
    xp : module, optional
        Array module (default ``numpy``).

    The weights are copied; training changes them in place.
    """

    def __init__(self, g_weights, f_weights, activation="relu", xp=None):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        self.xp = np if xp is None else xp
        self.activation = activation
        self._g = _MLP([self.xp.array(w, dtype=self.xp.float64) for w in g_weights], activation, self.xp,
                       "g_weights")
        self._f = _MLP([self.xp.array(w, dtype=self.xp.float64) for w in f_weights], activation, self.xp,
                       "f_weights")
        if self._f.n_in != self._g.n_out:
            raise ValueError(f"f_weights: the first matrix needs {self._g.n_out} columns (the bottleneck width "
                             f"of g), got {self._f.n_in}")
        self.t = 0

    # ------------------------------------------------------------------ sizes
    @property
    def d0(self):
        """Input dimension."""
        return self._g.n_in

    @property
    def d(self):
        """Bottleneck width."""
        return self._g.n_out

    @property
    def dr(self):
        """Output dimension."""
        return self._f.n_out

    @property
    def depth_g(self):
        """Number of weight matrices of g (the paper's L_g)."""
        return len(self._g.weights)

    @property
    def depth_f(self):
        """Number of weight matrices of f (the paper's L_f)."""
        return len(self._f.weights)

    @property
    def width(self):
        """Largest hidden width (the bottleneck width d for the effective network)."""
        return max(self._g.max_width, self._f.max_width)

    @property
    def g_weights(self):
        """The weight matrices of g (live arrays, input layer first)."""
        return self._g.weights

    @property
    def f_weights(self):
        """The weight matrices of f (live arrays, input layer first)."""
        return self._f.weights

    # ----------------------------------------------------------- constructors
    @classmethod
    def sample(cls, d0, d, dr, width=10_000, seed=0, activation="relu", depth_g=2, depth_f=2, xp=None):
        """Draw all weights i.i.d. N(0, 1) from ``numpy.random.default_rng(seed)``.

        The matrices are drawn in order, g from input to bottleneck, then f.
        With ``depth_g = depth_f = 2`` that is theta1, theta2, u, v, so the
        network computes the same functions as
        ``RandomNetwork.sample(d0, d, dr, width, seed, activation)``.
        """
        for name, val in (("d0", d0), ("d", d), ("dr", dr), ("width", width),
                          ("depth_g", depth_g), ("depth_f", depth_f)):
            positive_int(name, val)
        rng = np.random.default_rng(seed)
        g_dims = [d0] + [width] * (depth_g - 1) + [d]
        f_dims = [d] + [width] * (depth_f - 1) + [dr]
        g_w = [rng.standard_normal((g_dims[k + 1], g_dims[k])) for k in range(depth_g)]
        f_w = [rng.standard_normal((f_dims[k + 1], f_dims[k])) for k in range(depth_f)]
        return cls(g_w, f_w, activation, xp)

    @classmethod
    def from_random_network(cls, net, xp=None):
        """A trainable copy of a :class:`RandomNetwork` (same initial g0, f0, J0)."""
        if not isinstance(net, RandomNetwork):
            raise TypeError(f"net: expected a RandomNetwork, got {type(net).__name__}")
        return cls([net.theta1, net.theta2], [net.u, net.v], net.activation, xp)

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
        return X, self.xp.asarray(Y)

    def gradients(self, X, Y):
        """Loss and its gradients with respect to every weight matrix.

        Parameters
        ----------
        X : (B, d0) array;  Y : (B, dr) array

        Returns
        -------
        loss : float, ``1/(2B) sum |F - y|^2``
        grads_g, grads_f : lists of arrays shaped like :attr:`g_weights`, :attr:`f_weights`
        """
        X, Y = self._batch(X, Y)
        xp = self.xp
        B = X.shape[0]
        grads_g = [None] * self.depth_g
        grads_f = [None] * self.depth_f
        loss = 0.0
        rows = self._rows()
        for i in range(0, B, rows):
            Zb, cache_g = self._g.forward(X[i:i + rows], keep=True)
            Fb, cache_f = self._f.forward(Zb, keep=True)
            resid = Fb - Y[i:i + rows]
            loss += 0.5 * float(xp.sum(resid * resid)) / B
            G = self._f.backward(cache_f, resid / B, grads_f)     # J^T chi at the batch embeddings
            self._g.backward(cache_g, G, grads_g, need_input=False)
        return loss, grads_g, grads_f

    def step(self, X, Y, lr=None, lr_f=None, lr_g=None):
        """One (S)GD step on the batch (X, Y); pass the whole data set for full-batch GD.

        Parameters
        ----------
        X : (B, d0) array;  Y : (B, dr) array
        lr : float
            Rate for all weights (required unless both ``lr_f`` and ``lr_g`` are given).
        lr_f, lr_g : float, optional
            Rates for the weights of f and of g (default ``lr``).

        Returns
        -------
        float
            The batch loss ``1/(2B) sum |F - y|^2`` before the update.

        Raises :class:`~refimpl.dynamics.DivergenceError` without changing the
        weights when the loss or a gradient is not finite.
        """
        lr = positive_rate("lr", lr)
        lr_f = positive_rate("lr_f", lr_f) or lr
        lr_g = positive_rate("lr_g", lr_g) or lr
        if lr_f is None or lr_g is None:
            raise ValueError("lr: expected a positive finite number (or both lr_f and lr_g), got None")
        xp = self.xp
        loss, grads_g, grads_f = self.gradients(X, Y)
        if not math.isfinite(loss):
            raise DivergenceError(f"loss is {loss} at step {self.t}: the run diverged (lower the learning rate)")
        for gw in grads_g + grads_f:
            if not bool(xp.all(xp.isfinite(gw))):
                raise DivergenceError(f"a gradient is not finite at step {self.t}: the run diverged")
        for ws, grads, rate in ((self._g.weights, grads_g, lr_g), (self._f.weights, grads_f, lr_f)):
            for w, gw in zip(ws, grads):
                gw *= rate
                w -= gw
        self.t += 1
        return loss

    def loss(self, X, Y):
        """The loss ``1/(2B) sum |F - y|^2`` on (X, Y) without updating."""
        X, Y = self._batch(X, Y)
        F = self._outputs(X)
        return 0.5 * float(self.xp.sum((F - Y) ** 2)) / F.shape[0]
