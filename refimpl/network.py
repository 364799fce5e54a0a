"""Random finite networks that supply the initial functions g0, f0, J0 (MATH §1, §3).

The paper (appendix D.1) samples the initial Gaussian processes by drawing one
finite random network of width n0 = 10,000 and using it as the initial
function.  :class:`RandomNetwork` is that network, in the NTK parametrisation
of MATH §1:

    g(xi) = theta2 phi(theta1 xi / sqrt(d0)) / sqrt(n)      R^d0 -> R^d
    f(x)  = v phi(u x / sqrt(d)) / sqrt(n)                   R^d  -> R^dr
    J(x)  = df/dx = v diag(phi'(u x / sqrt(d))) u / sqrt(n d)   (paper eq 15)
"""

from __future__ import annotations

import numpy as np

from .validate import positive_int
from .kernels import ACTIVATIONS, as_points

#: Rows of inputs evaluated at once, so that (rows, n) hidden activations stay small.
ROW_BLOCK = 2048


def _phi(h, activation):
    return np.maximum(h, 0.0) if activation == "relu" else h


def _dphi(h, activation):
    return (h > 0.0).astype(h.dtype) if activation == "relu" else np.ones_like(h)


class RandomNetwork:
    """A finite network g (d0 -> d) followed by f (d -> dr), each with one hidden layer.

    Parameters
    ----------
    theta1 : (n, d0) array, first layer of g
    theta2 : (d, n) array, second layer of g
    u : (n, d) array, first layer of f
    v : (dr, n) array, second layer of f
    activation : {"relu", "linear"}

    The hidden widths of g and f may differ (theta1.shape[0] and u.shape[0]).
    """

    def __init__(self, theta1, theta2, u, v, activation="relu"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        self.theta1 = np.ascontiguousarray(theta1, dtype=np.float64)
        self.theta2 = np.ascontiguousarray(theta2, dtype=np.float64)
        self.u = np.ascontiguousarray(u, dtype=np.float64)
        self.v = np.ascontiguousarray(v, dtype=np.float64)
        for name, w in (("theta1", self.theta1), ("theta2", self.theta2), ("u", self.u), ("v", self.v)):
            if w.ndim != 2:
                raise ValueError(f"{name}: expected a 2-d weight matrix, got shape {w.shape}")
        n_g, _ = self.theta1.shape
        n_f, d = self.u.shape
        if self.theta2.shape != (d, n_g):
            raise ValueError(f"theta2: expected shape {(d, n_g)}, got {self.theta2.shape}")
        if self.v.shape[1] != n_f:
            raise ValueError(f"v: expected {n_f} columns like the rows of u, got {self.v.shape[1]}")
        self.activation = activation

    # ------------------------------------------------------------------ sizes
    @property
    def d0(self):
        """Input dimension."""
        return self.theta1.shape[1]

    @property
    def d(self):
        """Bottleneck width."""
        return self.u.shape[1]

    @property
    def dr(self):
        """Output dimension."""
        return self.v.shape[0]

    @property
    def width(self):
        """Hidden width n of g (and of f when they are equal)."""
        return self.theta1.shape[0]

    # ----------------------------------------------------------- constructors
    @classmethod
    def sample(cls, d0, d, dr, width=10_000, seed=0, activation="relu"):
        """Draw all weights i.i.d. N(0, 1) from ``numpy.random.default_rng(seed)``.

        The order of draws is theta1, theta2, u, v, so a given seed always
        gives the same network.
        """
        for name, val in (("d0", d0), ("d", d), ("dr", dr), ("width", width)):
            positive_int(name, val)
        rng = np.random.default_rng(seed)
        theta1 = rng.standard_normal((width, d0))
        theta2 = rng.standard_normal((d, width))
        u = rng.standard_normal((width, d))
        v = rng.standard_normal((dr, width))
        return cls(theta1, theta2, u, v, activation)

    # -------------------------------------------------------------- functions
    def g(self, X):
        """Bottleneck embeddings g(X), (p, d0) -> (p, d)."""
        X = as_points(X, "X")
        if X.shape[1] != self.d0:
            raise ValueError(f"X: expected {self.d0} columns, got {X.shape[1]}")
        out = np.empty((X.shape[0], self.d))
        scale = 1.0 / np.sqrt(self.d0)
        for i in range(0, X.shape[0], ROW_BLOCK):
            h = _phi(X[i:i + ROW_BLOCK] @ self.theta1.T * scale, self.activation)
            out[i:i + ROW_BLOCK] = h @ self.theta2.T / np.sqrt(self.width)
        return out

    def f(self, Z):
        """Head outputs f(Z), (p, d) -> (p, dr)."""
        Z = self._check_z(Z)
        out = np.empty((Z.shape[0], self.dr))
        n = self.u.shape[0]
        for i in range(0, Z.shape[0], ROW_BLOCK):
            h = _phi(Z[i:i + ROW_BLOCK] @ self.u.T / np.sqrt(self.d), self.activation)
            out[i:i + ROW_BLOCK] = h @ self.v.T / np.sqrt(n)
        return out

    def jacobian(self, Z):
        """Input-output Jacobians J(Z) = df/dx, (p, d) -> (p, dr, d) (paper eq 15)."""
        Z = self._check_z(Z)
        n = self.u.shape[0]
        out = np.empty((Z.shape[0], self.dr, self.d))
        for i in range(0, Z.shape[0], ROW_BLOCK):
            mask = _dphi(Z[i:i + ROW_BLOCK] @ self.u.T / np.sqrt(self.d), self.activation)
            out[i:i + ROW_BLOCK] = np.einsum("ak,pk,kb->pab", self.v, mask, self.u, optimize=True)
        return out / np.sqrt(n * self.d)

    def jacobian_t_dot(self, Z, C):
        """J(Z)^T c for each row: (p, d), (p, dr) -> (p, d), without forming J."""
        Z = self._check_z(Z)
        n = self.u.shape[0]
        out = np.empty((Z.shape[0], self.d))
        for i in range(0, Z.shape[0], ROW_BLOCK):
            mask = _dphi(Z[i:i + ROW_BLOCK] @ self.u.T / np.sqrt(self.d), self.activation)
            out[i:i + ROW_BLOCK] = (mask * (C[i:i + ROW_BLOCK] @ self.v)) @ self.u
        return out / np.sqrt(n * self.d)

    def _check_z(self, Z):
        Z = as_points(Z, "Z")
        if Z.shape[1] != self.d:
            raise ValueError(f"Z: expected {self.d} columns (the bottleneck width), got {Z.shape[1]}")
        return Z

    def weights(self):
        """The weights as a dict of arrays (for npz files)."""
        return {"theta1": self.theta1, "theta2": self.theta2, "u": self.u, "v": self.v}
