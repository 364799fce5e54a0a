"""Random finite networks that supply the initial functions g0, f0, J0 (MATH §1, §3).

The paper (appendix D.1) samples the initial Gaussian processes by drawing one
finite random network of width n0 = 10,000 and using it as the initial
function.  :class:`RandomNetwork` is that network, in the NTK parametrisation
of MATH §1:

    g(xi) = theta2 phi(theta1 xi / sqrt(d0)) / sqrt(n)      R^d0 -> R^d
    f(x)  = v phi(u x / sqrt(d)) / sqrt(n)                   R^d  -> R^dr
    J(x)  = df/dx = v diag(phi'(u x / sqrt(d))) u / sqrt(n d)   (paper eq 15)

Other architectures (MATH §2.2) are multilayer perceptrons, :class:`MLP`:
``depth`` weight matrices per half, hidden layers
``a_l = w_std W_l h_{l-1} / sqrt(fan_in) + b_std b_l``, ``h_l = phi(a_l)``, and
the last layer with ``out_std`` in place of ``w_std``; all weights and biases
standard normal.  The architecture of each half is a
:class:`~refimpl.kernels.Layers`.
"""

from __future__ import annotations

import math

import numpy as np

from . import activations as acts
from .kernels import Layers, as_points
from .validate import positive_int

#: Rows of inputs evaluated at once, so that (rows, n) hidden activations stay small.
ROW_BLOCK = 2048


class MLP:
    """A stack of Dense(std, b_std) layers with a hand-written backward pass (MATH §1, §2.2).

    Parameters
    ----------
    weights : list of 2-d arrays (out, in), input layer first
    biases : list of 1-d arrays (out,) or None (no biases)
    stds : list of (weight std, bias std) per layer; default (1, 0) for every layer
    activation : {"relu", "erf", "linear"}, applied after every layer but the last (its record,
        :mod:`refimpl.activations`, supplies phi and phi')
    xp : array module (numpy, or one with NumPy's names, e.g. CuPy)
    name : str, used in error messages
    """

    def __init__(self, weights, activation, xp=np, name="weights", biases=None, stds=None):
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
        self.stds = list(stds) if stds is not None else [(1.0, 0.0)] * len(ws)
        if len(self.stds) != len(ws):
            raise ValueError(f"{name}: expected {len(ws)} (w_std, b_std) pairs, got {len(self.stds)}")
        if biases is not None and any(b is not None for b in biases):
            bs = []
            for k, (b, w) in enumerate(zip(biases, ws)):
                b = xp.ascontiguousarray(xp.asarray(b, dtype=xp.float64))
                if b.shape != (w.shape[0],):
                    raise ValueError(f"{name} bias {k}: expected shape ({w.shape[0]},), got {tuple(b.shape)}")
                bs.append(b)
            self.biases = bs
        else:
            self.biases = None
        self.activation = activation
        self.xp = xp
        self.scales = [s / math.sqrt(w.shape[1]) if s != 1.0 else 1.0 / math.sqrt(w.shape[1])
                       for (s, _), w in zip(self.stds, ws)]
        self.act = acts.get(activation)

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
        return self.act.phi(a, self.xp)

    def _dphi(self, a):
        return self.act.dphi(a, self.xp)

    def forward(self, X, keep=False):
        """Output for rows X (p, n_in) -> (p, n_out); with keep, also the layer inputs and pre-activations."""
        h, inputs, pre = X, [], []
        last = len(self.weights) - 1
        for k, (w, c) in enumerate(zip(self.weights, self.scales)):
            if keep:
                inputs.append(h)
            a = (h @ w.T) * c
            if self.biases is not None and self.stds[k][1] != 0.0:
                a = a + self.stds[k][1] * self.biases[k]
            if k < last:
                if keep:
                    pre.append(a)
                h = self._phi(a)
            else:
                h = a
        return (h, (inputs, pre)) if keep else h

    def backward(self, cache, G, grads=None, need_input=True, grads_b=None):
        """Back-propagate the output cotangent G (p, n_out).

        Adds dL/dW_l to ``grads[l]`` when ``grads`` (a list like ``weights``,
        entries None or arrays) is given, dL/db_l to ``grads_b[l]`` likewise, and
        returns the cotangent of the input, (p, n_in), or None when
        ``need_input`` is false.
        """
        inputs, pre = cache
        for k in range(len(self.weights) - 1, -1, -1):
            if grads_b is not None and self.biases is not None:
                contrib_b = self.stds[k][1] * G.sum(axis=0)
                grads_b[k] = contrib_b if grads_b[k] is None else grads_b[k] + contrib_b
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
            if k > 0 and self.act.name != "linear":
                G *= self._dphi(pre[k - 1])
        return G


def _block_rows(mlp):
    return max(1, min(ROW_BLOCK, (1 << 22) // max(1, mlp.max_width)))


def forward_blocks(mlp, X):
    """``mlp`` at the rows X (p, n_in) -> (p, n_out), in row blocks that keep the hidden activations small."""
    out = np.empty((X.shape[0], mlp.n_out))
    rows = _block_rows(mlp)
    for i in range(0, X.shape[0], rows):
        out[i:i + rows] = mlp.forward(X[i:i + rows])
    return out


def backward_blocks(mlp, Z, C):
    """J(Z_b)^T c_b of ``mlp`` for each row, (p, n_in), (p, n_out) -> (p, n_in), by back-propagation in row
    blocks (J the input-output Jacobian, never formed)."""
    C = np.asarray(C, dtype=np.float64)
    out = np.empty(Z.shape)
    rows = _block_rows(mlp)
    for i in range(0, Z.shape[0], rows):
        _, cache = mlp.forward(Z[i:i + rows], keep=True)
        out[i:i + rows] = mlp.backward(cache, C[i:i + rows])
    return out


def _draw_biases(rng, weights, spec):
    if spec.b_std == 0.0:
        return None
    return [rng.standard_normal(w.shape[0]) for w in weights]


class TwoHalves:
    """Sizes and weights of a network made of two MLPs, g (``self._g``) then f (``self._f``).

    Shared by :class:`RandomNetwork` and :class:`refimpl.finite.FiniteNetwork` (MATH §1).
    """

    @property
    def d0(self):
        """Input dimension."""
        return self._g.n_in

    def f_and_pullback(self, Z):
        """f(Z) and the map C -> J(Z)^T c (row-wise): here the two calls :meth:`f` and
        :meth:`jacobian_t_dot` (:meth:`RandomNetwork.f_and_pullback` shares one forward pass)."""
        return self.f(Z), lambda C: self.jacobian_t_dot(Z, C)

    @property
    def d(self):
        """Bottleneck width."""
        return self._f.n_in

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
    def g_weights(self):
        """Weight matrices of g (live arrays, input layer first)."""
        return self._g.weights

    @property
    def f_weights(self):
        """Weight matrices of f (live arrays, input layer first)."""
        return self._f.weights

    @property
    def g_biases(self):
        """Biases of g (list of 1-d arrays) or None."""
        return self._g.biases

    @property
    def f_biases(self):
        """Biases of f (list of 1-d arrays) or None."""
        return self._f.biases



def tagged_weights(tagged_mlps):
    """``{tag/W0: ..., tag/b0: ...}`` for the (tag, MLP) pairs: the npz layout of every network's weights."""
    out = {}
    for tag, mlp in tagged_mlps:
        for k, w in enumerate(mlp.weights):
            out[f"{tag}/W{k}"] = w
        for k, b in enumerate(mlp.biases or []):
            out[f"{tag}/b{k}"] = b
    return out


class RandomNetwork(TwoHalves):
    """A finite network g (d0 -> d) followed by f (d -> dr).

    Parameters
    ----------
    theta1 : (n, d0) array, first layer of g
    theta2 : (d, n) array, second layer of g
    u : (n, d) array, first layer of f
    v : (dr, n) array, second layer of f
    activation : {"relu", "erf", "linear"}

    This is the network of MATH §1 (one hidden layer per half, unit scales, no
    biases).  Other architectures: :meth:`from_layers` or :meth:`sample` with
    ``layers_g``, ``layers_f``.  The hidden widths of g and f may differ.
    """

    def __init__(self, theta1, theta2, u, v, activation="relu"):
        acts.get(activation)
        self._init([theta1, theta2], [u, v], None, None, Layers(activation), Layers(activation))

    def _init(self, g_weights, f_weights, g_biases, f_biases, layers_g, layers_f):
        for name, ws in (("g_weights", g_weights), ("f_weights", f_weights)):
            for k, w in enumerate(ws):
                if np.ndim(w) != 2:
                    raise ValueError(f"{name}[{k}]: expected a 2-d weight matrix, got shape {np.shape(w)}")
        if layers_g.activation != layers_f.activation:
            raise ValueError(f"layers_f: expected the activation of g ({layers_g.activation!r}), "
                             f"got {layers_f.activation!r}")
        for name, ws, spec in (("g_weights", g_weights, layers_g), ("f_weights", f_weights, layers_f)):
            if len(ws) != spec.depth:
                raise ValueError(f"{name}: expected {spec.depth} weight matrices (the depth), got {len(ws)}")
        self.layers_g, self.layers_f = layers_g, layers_f
        self.activation = layers_f.activation
        self._g = MLP(g_weights, self.activation, np, "g_weights", g_biases, layers_g.layer_stds())
        self._f = MLP(f_weights, self.activation, np, "f_weights", f_biases, layers_f.layer_stds())
        if self._f.n_in != self._g.n_out:
            raise ValueError(f"f_weights: the first matrix needs {self._g.n_out} columns (the bottleneck "
                             f"width of g), got {self._f.n_in}")

    @classmethod
    def from_layers(cls, g_weights, f_weights, layers_g, layers_f, g_biases=None, f_biases=None):
        """A network of any architecture from its weight matrices (input layer first) and biases.

        ``layers_g``, ``layers_f`` are :class:`~refimpl.kernels.Layers`; the biases are
        lists of 1-d arrays (needed when ``b_std > 0``).
        """
        for name, spec, bs in (("g_biases", layers_g, g_biases), ("f_biases", layers_f, f_biases)):
            if not isinstance(spec, Layers):
                raise TypeError(f"layers: expected a Layers, got {type(spec).__name__}")
            if spec.b_std > 0 and bs is None:
                raise ValueError(f"{name}: expected biases for b_std = {spec.b_std}")
        net = cls.__new__(cls)
        net._init(list(g_weights), list(f_weights), g_biases if layers_g.b_std > 0 else None,
                  f_biases if layers_f.b_std > 0 else None, layers_g, layers_f)
        return net

    # ------------------------------------------------------------------ sizes
    @property
    def width(self):
        """Hidden width n of g (and of f when they are equal)."""
        return self._g.weights[0].shape[0]

    @property
    def math1_weights(self):
        """True where the weights file uses MATH §1's names theta1, theta2, u, v (:meth:`weights`):
        the default ReLU and linear networks, as written since the first version."""
        act = self.activation
        return act in ("relu", "linear") and self.layers_g == Layers(act) and self.layers_f == Layers(act)

    @property
    def theta1(self):
        """g's first weight matrix (n, d0), MATH §1's theta1."""
        return self._g.weights[0]

    @property
    def theta2(self):
        """g's last weight matrix (d, n) of a one-hidden-layer g, MATH §1's theta2."""
        return self._g.weights[-1]

    @property
    def u(self):
        """f's first weight matrix (n, d), MATH §1's u."""
        return self._f.weights[0]

    @property
    def v(self):
        """f's last weight matrix (dr, n) of a one-hidden-layer f, MATH §1's v."""
        return self._f.weights[-1]

    # ----------------------------------------------------------- constructors
    @classmethod
    def sample(cls, d0, d, dr, width=10_000, seed=0, activation="relu", layers_g=None, layers_f=None):
        """Draw all weights i.i.d. N(0, 1) from ``numpy.random.default_rng(seed)``.

        The order of draws is the weight matrices of g (input layer first), those
        of f, then the biases of g and of f (only where ``b_std > 0``).  For the
        network of MATH §1 that is theta1, theta2, u, v, so a given seed always
        gives the same network.  ``layers_g``, ``layers_f`` (Layers) set other
        architectures; their activation overrides ``activation``.
        """
        for name, val in (("d0", d0), ("d", d), ("dr", dr), ("width", width)):
            positive_int(name, val)
        layers_g = layers_g if layers_g is not None else Layers.make(activation)
        layers_f = layers_f if layers_f is not None else Layers.make(layers_g.activation)
        rng = np.random.default_rng(seed)
        g_dims = [d0] + [width] * (layers_g.depth - 1) + [d]
        f_dims = [d] + [width] * (layers_f.depth - 1) + [dr]
        g_w = [rng.standard_normal((g_dims[k + 1], g_dims[k])) for k in range(layers_g.depth)]
        f_w = [rng.standard_normal((f_dims[k + 1], f_dims[k])) for k in range(layers_f.depth)]
        g_b, f_b = _draw_biases(rng, g_w, layers_g), _draw_biases(rng, f_w, layers_f)
        return cls.from_layers(g_w, f_w, layers_g, layers_f, g_b, f_b)

    # -------------------------------------------------------------- functions
    def g(self, X):
        """Bottleneck embeddings g(X), (p, d0) -> (p, d)."""
        X = as_points(X, "X")
        if X.shape[1] != self.d0:
            raise ValueError(f"X: expected {self.d0} columns, got {X.shape[1]}")
        return forward_blocks(self._g, X)

    def f(self, Z):
        """Head outputs f(Z), (p, d) -> (p, dr)."""
        return forward_blocks(self._f, self._check_z(Z))

    def jacobian(self, Z):
        """Input-output Jacobians J(Z) = df/dx, (p, d) -> (p, dr, d) (paper eq 15)."""
        Z = self._check_z(Z)
        out = np.empty((Z.shape[0], self.dr, self.d))
        for a in range(self.dr):
            E = np.zeros((Z.shape[0], self.dr))
            E[:, a] = 1.0
            out[:, a, :] = self.jacobian_t_dot(Z, E)
        return out

    def jacobian_t_dot(self, Z, C):
        """J(Z)^T c for each row: (p, d), (p, dr) -> (p, d), without forming J."""
        return backward_blocks(self._f, self._check_z(Z), C)

    def f_and_pullback(self, Z):
        """f(Z) and the map C -> J(Z)^T c (row-wise), from one forward pass where the rows fit one block.

        A step needs f and then J^T chi at the same batch, with chi computed from f (MATH §4); this
        keeps the forward pass's layer values for the back-propagation instead of running the forward
        pass twice.  The numbers are those of :meth:`f` and :meth:`jacobian_t_dot` (the same operations
        on the same block); more rows than one block: exactly those two calls.

        Returns
        -------
        out : (p, dr) array;  pullback : callable, (p, dr) -> (p, d)
        """
        Z = self._check_z(Z)
        if Z.shape[0] > _block_rows(self._f):
            return forward_blocks(self._f, Z), lambda C: backward_blocks(self._f, Z, C)
        out, cache = self._f.forward(Z, keep=True)
        return out, lambda C: self._f.backward(cache, np.asarray(C, dtype=np.float64))

    def _check_z(self, Z):
        Z = as_points(Z, "Z")
        if Z.shape[1] != self.d:
            raise ValueError(f"Z: expected {self.d} columns (the bottleneck width), got {Z.shape[1]}")
        return Z

    def weights(self):
        """The weights as a dict of arrays (for npz files).

        The network of MATH §1 (:attr:`math1_weights`): theta1, theta2, u, v.  Other
        architectures: ``g/W0 ...``, ``f/W0 ...`` and, with biases, ``g/b0 ...``, ``f/b0 ...``
        (read back by :meth:`from_weights`).
        """
        if self.math1_weights:
            return {"theta1": self.theta1, "theta2": self.theta2, "u": self.u, "v": self.v}
        return tagged_weights((("g", self._g), ("f", self._f)))

    @classmethod
    def from_weights(cls, arrays, layers_g=None, layers_f=None, activation="relu"):
        """The network written by :meth:`weights` (``arrays`` a dict of arrays)."""
        if "theta1" in arrays:
            return cls(arrays["theta1"], arrays["theta2"], arrays["u"], arrays["v"],
                       layers_g.activation if layers_g is not None else activation)
        parts = {}
        for tag, spec in (("g", layers_g), ("f", layers_f)):
            ws = [arrays[f"{tag}/W{k}"] for k in range(spec.depth)]
            bs = [arrays[f"{tag}/b{k}"] for k in range(spec.depth)] if spec.b_std > 0 else None
            parts[tag] = (ws, bs)
        return cls.from_layers(parts["g"][0], parts["f"][0], layers_g, layers_f, parts["g"][1], parts["f"][1])
