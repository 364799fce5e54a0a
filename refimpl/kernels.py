"""Closed-form kernels of the infinite layers (MATH §2 and §5).

Every function takes a batch of points ``X`` of shape (p, m) and ``Y`` of
shape (q, m) and returns the kernel for every pair ``(X[i], Y[j])``.  The scale
``m`` is the input dimension of the layer: ``m = d0`` for the embedding network
g (the kernel is then Theta) and ``m = d`` for the head f (the kernel is K).

Two activations are supported:

``"relu"``
    One hidden ReLU layer of infinite width between two weight matrices
    (MATH §1, paper eq 45).
``"linear"``
    A deep linear network with ``depth`` weight matrices (paper lemma 4.1).
    ``depth=2`` is the architecture of MATH §1 with the identity activation.

``depth`` counts weight matrices (the paper's L_f, L_g).  The ReLU kernels are
those of the two-matrix network of MATH §1, so ``depth`` must be 2 there.

Numerics (MATH §2.1): the angle between two points is computed as
``2 * atan2(|x^ - y^|, |x^ + y^|)``, which keeps full relative accuracy near 0
and pi, and cos and sin are taken from it.  A zero vector has unit vector 0 and
all kernels return their limits there (no NaN).
"""

from __future__ import annotations

import numpy as np

from .validate import real_array

ACTIVATIONS = ("relu", "linear")

#: Largest temporary, in float64 elements, that the pairwise helpers allocate.
BLOCK_ELEMENTS = 1 << 21

#: Pairs with |cos| above this get their angle from explicit differences (see :func:`pair_angles`).
#: 0.95 bounds the loss in 1 -+ cos to 20 ulps while keeping the NumPy gather of such pairs
#: rare.  Backends that recompute a pair in place for O(m) flops may use a tighter cut-off.
NEAR_PARALLEL_COS = 0.95

#: Below this sine, Xi's direction ``a`` is set to 0 (MATH §2; golden files depend on it).
XI_SIN_THRESHOLD = 1e-10

TWO_PI = 2.0 * np.pi


# --------------------------------------------------------------------------
# input checking and pairwise geometry
# --------------------------------------------------------------------------

def check_activation(activation, depth):
    """Validate ``activation`` and ``depth``; return the depth to use."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    if depth is None:
        return 2
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth: expected a positive integer, got {depth!r}")
    if activation == "relu" and depth != 2:
        raise ValueError("depth: the ReLU kernels are those of one hidden layer (depth=2), "
                         f"got depth={depth}")
    return int(depth)


def as_points(X, name="X"):
    """Return ``X`` as a C-contiguous float64 array of shape (p, m)."""
    X = np.asarray(real_array(name, X), dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d array of shape (points, dim), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name}: contains NaN or inf")
    return np.ascontiguousarray(X)


def as_pair(X, Y):
    """Check two point sets for a pair kernel: ``(X, Y)`` as float64 arrays (p, m), (q, m).

    Raises ValueError (naming the argument) on a wrong shape, NaN/inf, a column mismatch or
    m = 0.  Used by every kernel here and by the accelerated backends (accel).
    """
    X = as_points(X, "X")
    Y = as_points(Y, "Y")
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"Y: expected {X.shape[1]} columns like X, got {Y.shape[1]}")
    if X.shape[1] == 0:
        raise ValueError("X: points must have at least one coordinate")
    return X, Y


_pair = as_pair          # the short name the kernels below use


def unit_rows(X):
    """Norms (p,) and unit vectors (p, m) of the rows of ``X``; a zero row has unit vector 0."""
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))
    safe = np.where(norms > 0.0, norms, 1.0)
    return norms, X / safe[:, None]


def pair_angles(X, Y):
    """Pairwise angles between rows of ``X`` (p, m) and ``Y`` (q, m).

    Returns
    -------
    nx : (p,) norms of X;  ny : (q,) norms of Y
    theta : (p, q) angles in [0, pi], ``2 atan2(|x^ - y^|, |x^ + y^|)`` (MATH §2.1)
    lam : (p, q) cos(theta);  s : (p, q) sin(theta)
    """
    nx, Xh = unit_rows(X)
    ny, Yh = unit_rows(Y)
    # |x^ -+ y^|^2 = |x^|^2 + |y^|^2 -+ 2 x^.y^ loses a factor 1/(1 -+ x^.y^) of relative accuracy
    # to cancellation: at most 20 ulps while |x^.y^| <= NEAR_PARALLEL_COS.  Nearer to parallel or
    # anti-parallel (where training lives, MATH §2.1) the pairs are recomputed from the explicit
    # differences x^ -+ y^, which keep full relative accuracy down to angle 0.
    cos = Xh @ Yh.T
    sx = np.einsum("ij,ij->i", Xh, Xh)[:, None]
    sy = np.einsum("ij,ij->i", Yh, Yh)[None, :]
    minus2 = np.maximum(sx + sy - 2.0 * cos, 0.0)
    plus2 = np.maximum(sx + sy + 2.0 * cos, 0.0)
    ii, jj = np.nonzero(np.abs(cos) > NEAR_PARALLEL_COS)
    step = max(1, BLOCK_ELEMENTS // X.shape[1])
    for k in range(0, ii.size, step):
        i, j = ii[k:k + step], jj[k:k + step]
        minus = Xh[i] - Yh[j]
        plus = Xh[i] + Yh[j]
        minus2[i, j] = np.einsum("ij,ij->i", minus, minus)
        plus2[i, j] = np.einsum("ij,ij->i", plus, plus)
    theta = 2.0 * np.arctan2(np.sqrt(minus2), np.sqrt(plus2))
    return nx, ny, theta, np.cos(theta), np.sin(theta)


# --------------------------------------------------------------------------
# NNGP, its derivative kernel, NTK  (paper eq 45; MATH §2)
# --------------------------------------------------------------------------

def _relu_parts(X, Y):
    """Sigma, Sigmadot (p, q) for ReLU from the pairwise geometry."""
    nx, ny, theta, lam, s = pair_angles(X, Y)
    m = X.shape[1]
    sigmadot_ = (np.pi - theta) / TWO_PI
    sigma_ = np.outer(nx, ny) / m * (lam * (np.pi - theta) + s) / TWO_PI
    return sigma_, sigmadot_


def nngp(X, Y, activation="relu", depth=None):
    """NNGP kernel Sigma(x, y) (paper eq 45; MATH §2).

    ReLU: ``Sigma = (|x||y|/m) (lam (pi - arccos lam) + sqrt(1 - lam^2)) / (2 pi)``.
    Linear: ``Sigma = x.y / m`` for every depth.

    Parameters
    ----------
    X : (p, m) array;  Y : (q, m) array
    activation : {"relu", "linear"}
    depth : int, optional, number of weight matrices (linear only; default 2)

    Returns
    -------
    (p, q) array
    """
    check_activation(activation, depth)
    X, Y = as_pair(X, Y)
    if activation == "linear":
        return X @ Y.T / X.shape[1]
    return _relu_parts(X, Y)[0]


def sigmadot(X, Y, activation="relu", depth=None):
    """Derivative kernel Sigmadot(x, y) = E[phi'(a) phi'(b)] (paper eq 32, 45).

    ReLU: ``(pi - arccos lam) / (2 pi)``.  Linear: 1.

    Returns
    -------
    (p, q) array
    """
    check_activation(activation, depth)
    X, Y = as_pair(X, Y)
    if activation == "linear":
        return np.ones((X.shape[0], Y.shape[0]))
    return _relu_parts(X, Y)[1]


def ntk(X, Y, activation="relu", depth=None):
    """Neural tangent kernel: Theta (inputs in R^d0) or K (points in R^d).

    ReLU (paper eq 45): ``NTK = (x.y/m) Sigmadot + Sigma``.
    Linear (lemma 4.1): ``NTK = depth * x.y / m``.

    Parameters
    ----------
    X : (p, m) array;  Y : (q, m) array
    activation : {"relu", "linear"}
    depth : int, optional (linear only; default 2)

    Returns
    -------
    (p, q) array
    """
    L = check_activation(activation, depth)
    X, Y = as_pair(X, Y)
    m = X.shape[1]
    if activation == "linear":
        return L * (X @ Y.T) / m
    sigma_, sigmadot_ = _relu_parts(X, Y)
    return (X @ Y.T) / m * sigmadot_ + sigma_


# --------------------------------------------------------------------------
# Xi = dK(x, y)/dx  (paper eq 46, stable form of MATH §2)
# --------------------------------------------------------------------------

def xi_coefficients(X, Y, activation="relu", depth=None):
    """Coefficients of Xi(x, y) = alpha * y + beta * x^ (MATH §2, §4).

    Xi is a combination of the two points, which is what lets the simulator
    sum it over the history with two matrix products.  With
    ``a = (y^ - lam x^) / s`` (the unit vector of y - (y.x^) x^) the stable form
    of MATH §2,

        Xi = (2 Sigmadot y + (|y| / 2pi) (s x^ + lam a)) / m,

    becomes

        alpha = (2 Sigmadot + lam / (2 pi s)) / m
        beta  = |y| (s - lam^2 / s) / (2 pi m),

    and for ``s < XI_SIN_THRESHOLD`` the ``a`` term is dropped (a := 0):
    ``alpha = 2 Sigmadot / m``, ``beta = |y| s / (2 pi m)``.
    Linear: ``alpha = depth / m``, ``beta = 0``.

    Returns
    -------
    alpha, beta : (p, q) arrays
    """
    L = check_activation(activation, depth)
    X, Y = as_pair(X, Y)
    m = X.shape[1]
    if activation == "linear":
        return np.full((X.shape[0], Y.shape[0]), L / m), np.zeros((X.shape[0], Y.shape[0]))
    nx, ny, theta, lam, s = pair_angles(X, Y)
    sigmadot_ = (np.pi - theta) / TWO_PI
    ridge = s < XI_SIN_THRESHOLD
    inv_s = np.where(ridge, 0.0, 1.0 / np.where(ridge, 1.0, s))
    alpha = (2.0 * sigmadot_ + lam * inv_s / TWO_PI) / m
    beta = ny[None, :] * (s - lam * lam * inv_s) / (TWO_PI * m)
    return alpha, beta


def xi(X, Y, activation="relu", depth=None):
    """Xi(x, y) = dK(x, y)/dx, the gradient of K in its first argument (paper eq 13, 46).

    Uses the stable form of MATH §2 (finite for parallel and anti-parallel
    pairs: ``Xi(x, c x) = c x / m`` for c > 0 and 0 for c < 0).  Linear:
    ``Xi(x, y) = depth * y / m``.

    Parameters
    ----------
    X : (p, m) array;  Y : (q, m) array

    Returns
    -------
    (p, q, m) array, ``out[i, j] = Xi(X[i], Y[j])``
    """
    X, Y = as_pair(X, Y)
    alpha, beta = xi_coefficients(X, Y, activation, depth)
    _, Xh = unit_rows(X)
    return alpha[:, :, None] * Y[None, :, :] + beta[:, :, None] * Xh[:, None, :]


# --------------------------------------------------------------------------
# Jacobian covariances (lemma 3.1)
# --------------------------------------------------------------------------

def _perp_unit(U, V):
    """unit(v - (v.u) u) for unit rows U (p, m) against rows V (q, m) -> (p, q, m); 0 on the ridge."""
    out = V[None, :, :] - np.einsum("qk,pk->pq", V, U)[:, :, None] * U[:, None, :]
    n = np.sqrt(np.einsum("pqk,pqk->pq", out, out))
    return out / np.where(n > 0, n, 1.0)[:, :, None]


def sigma1(X, Y, activation="relu", depth=None):
    """Cross-covariance E[f(x) J(y)] = Sigma_(1)(x, y) = dSigma(x, b)/db at b = y (paper eq 9-10).

    ReLU: ``(Sigmadot x + (s / 2pi) |x| y^) / m``.  Linear: ``x / m``.

    Returns
    -------
    (p, q, m) array
    """
    check_activation(activation, depth)
    X, Y = as_pair(X, Y)
    m = X.shape[1]
    if activation == "linear":
        return np.broadcast_to(X[:, None, :] / m, (X.shape[0], Y.shape[0], m)).copy()
    nx, ny, theta, lam, s = pair_angles(X, Y)
    _, Yh = unit_rows(Y)
    sigmadot_ = (np.pi - theta) / TWO_PI
    return (sigmadot_[:, :, None] * X[:, None, :]
            + (s * nx[:, None] / TWO_PI)[:, :, None] * Yh[None, :, :]) / m


def sigma2(X, Y, activation="relu", depth=None):
    """Jacobian covariance E[J^{ab}(x) J^{ac}(y)] = Sigma_(2)^{bc}(x, y) (paper eq 8, 11).

    ReLU: ``(Sigmadot I + (s / 2pi)(x^ y^T + a b^T)) / m`` with
    ``a = unit(y - (y.x^) x^)``, ``b = unit(x - (x.y^) y^)`` (MATH §2).
    Linear: ``I / m``.

    Returns
    -------
    (p, q, m, m) array
    """
    check_activation(activation, depth)
    X, Y = as_pair(X, Y)
    p, m = X.shape
    q = Y.shape[0]
    eye = np.eye(m)
    if activation == "linear":
        return np.broadcast_to(eye / m, (p, q, m, m)).copy()
    nx, ny, theta, lam, s = pair_angles(X, Y)
    _, Xh = unit_rows(X)
    _, Yh = unit_rows(Y)
    sigmadot_ = (np.pi - theta) / TWO_PI
    a = _perp_unit(Xh, Y)                                  # (p, q, m)
    b = np.transpose(_perp_unit(Yh, X), (1, 0, 2))         # (p, q, m)
    outer = Xh[:, None, :, None] * Yh[None, :, None, :] + a[:, :, :, None] * b[:, :, None, :]
    return (sigmadot_[:, :, None, None] * eye + (s / TWO_PI)[:, :, None, None] * outer) / m


# --------------------------------------------------------------------------
# No bottleneck (MATH §5)
# --------------------------------------------------------------------------

def relu_composed(X, Y):
    """Sigma_F, Sigmadot_F (p, q): ReLU kernels of a layer fed by g's infinite bottleneck (MATH §5).

    The pre-activations of f then have covariance Sigma_g (the ReLU NNGP of the
    inputs, m = d0), with variances |x|^2 / (2 d0) and correlation
    ``cos theta_F = J(theta) / pi``, ``J(theta) = sin theta + (pi - theta) cos theta``,
    where theta is the angle between the inputs.  ``1 - cos theta_F`` is computed
    as ``(2 pi sin^2(theta/2) + theta cos theta - sin theta) / pi``, without the
    cancellation of ``1 - J/pi``, and ``theta_F = 2 asin(sqrt((1 - cos theta_F)/2))``
    keeps full relative accuracy near theta = 0 (a point with itself), as in MATH §2.1.
    """
    nx, ny, theta, lam, s = pair_angles(X, Y)
    one_minus = (TWO_PI * np.sin(0.5 * theta) ** 2 + theta * lam - s) / np.pi
    theta_F = 2.0 * np.arcsin(np.sqrt(np.clip(0.5 * one_minus, 0.0, 1.0)))
    D = np.outer(nx, ny) / (2.0 * X.shape[1])                 # sqrt(Sigma_g(x, x) Sigma_g(y, y))
    sigma_F = D * (np.cos(theta_F) * (np.pi - theta_F) + np.sin(theta_F)) / TWO_PI
    return sigma_F, (np.pi - theta_F) / TWO_PI


def ntk_inf(X, Y, activation="relu", depth_f=None, depth_g=None, lr_f=1.0, lr_g=1.0):
    """NTK of the network without bottleneck, d -> infinity (MATH §5).

    ``NTK_inf = lr_f (Sigma_F + Sigmadot_F Sigma_g) + lr_g Sigmadot_F Theta_g``, where
    Sigma_g, Theta_g are the NNGP and NTK of g (m = d0) and Sigma_F, Sigmadot_F
    are the ReLU kernels of f evaluated with the input covariance Sigma_g.
    With equal rates (the default) this is the kernel of the composed network;
    ``lr_f``, ``lr_g`` weight the two parameter groups for unequal rates.
    Linear: ``lr_f depth_f Sigma_g + lr_g Theta_g``.

    Returns
    -------
    (p, q) array
    """
    Lf = check_activation(activation, depth_f)
    check_activation(activation, depth_g)
    X, Y = as_pair(X, Y)
    sigma_g = nngp(X, Y, activation)
    theta_g = ntk(X, Y, activation, depth_g)
    return ntk_inf_from_g(X, Y, sigma_g, theta_g, activation, Lf, lr_f, lr_g)


def ntk_inf_from_g(X, Y, sigma_g, theta_g, activation, Lf, lr_f, lr_g):
    """The last stage of :func:`ntk_inf`: NTK_inf from Sigma_g and Theta_g (p, q) of the inputs (MATH §5).

    Split out so that accelerated backends can compute Sigma_g and Theta_g their
    own way and share this combination.
    """
    if activation == "linear":
        return lr_f * Lf * sigma_g + lr_g * theta_g
    sigma_F, sigmadot_F = relu_composed(X, Y)
    return lr_f * (sigma_F + sigmadot_F * sigma_g) + lr_g * sigmadot_F * theta_g
