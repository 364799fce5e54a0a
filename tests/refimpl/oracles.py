"""The paper's closed forms, written out here as independent oracles for refimpl's layer recursion.

ReLU with one hidden layer (paper eq 45, 46; MATH §2): Sigma, Sigmadot, the NTK, Xi's coefficients,
Sigma_(1), Sigma_(2); the no-bottleneck kernel of the default network (MATH §5); linear networks
(lemma 4.1).  Nothing here imports refimpl.  Angles are 2 atan2(|x^ - y^|, |x^ + y^|) from explicit
differences, so the oracles stay accurate near parallel and anti-parallel pairs.
"""

import numpy as np

TWO_PI = 2 * np.pi


def _units(X):
    n = np.linalg.norm(X, axis=1)
    return n, X / np.where(n > 0, n, 1.0)[:, None]


def geometry(X, Y):
    """nx (p,), ny (q,), theta, lam, s (p, q); a zero vector: pi/2 against others, 0 against a zero vector."""
    nx, Xh = _units(X)
    ny, Yh = _units(Y)
    minus = np.linalg.norm(Xh[:, None, :] - Yh[None, :, :], axis=2)
    plus = np.linalg.norm(Xh[:, None, :] + Yh[None, :, :], axis=2)
    theta = 2 * np.arctan2(minus, plus)
    one = (nx[:, None] == 0) ^ (ny[None, :] == 0)
    theta = np.where(one, np.pi / 2, theta)
    return nx, ny, theta, np.cos(theta), np.sin(theta)


def relu(X, Y):
    """Sigma, Sigmadot, NTK of the default ReLU network (paper eq 45)."""
    m = X.shape[1]
    nx, ny, theta, lam, s = geometry(X, Y)
    sigmadot = (np.pi - theta) / TWO_PI
    sigma = np.outer(nx, ny) / m * (lam * (np.pi - theta) + s) / TWO_PI
    return sigma, sigmadot, (X @ Y.T) / m * sigmadot + sigma


def relu_xi_coefficients(X, Y):
    """alpha, beta of Xi = alpha y + beta x^ (MATH §2's stable form; a := 0 below sine 1e-10)."""
    m = X.shape[1]
    nx, ny, theta, lam, s = geometry(X, Y)
    ridge = s < 1e-10
    inv_s = np.where(ridge, 0.0, 1.0 / np.where(ridge, 1.0, s))
    alpha = (2 * (np.pi - theta) / TWO_PI + lam * inv_s / TWO_PI) / m
    beta = ny[None, :] * (s - lam * lam * inv_s) / (TWO_PI * m)
    return alpha, beta


def _perp_unit(U, V):
    """unit(v - (v.u) u) for unit rows U (p, m) against rows V (q, m) -> (p, q, m); 0 on the ridge."""
    out = V[None, :, :] - np.einsum("qk,pk->pq", V, U)[:, :, None] * U[:, None, :]
    n = np.sqrt(np.einsum("pqk,pqk->pq", out, out))
    return out / np.where(n > 0, n, 1.0)[:, :, None]


def relu_sigma1(X, Y):
    """Sigma_(1)(x, y) = (Sigmadot x + (s / 2pi) |x| y^) / m (lemma 3.1)."""
    m = X.shape[1]
    nx, _, theta, _, s = geometry(X, Y)
    _, Yh = _units(Y)
    sigmadot = (np.pi - theta) / TWO_PI
    return (sigmadot[:, :, None] * X[:, None, :] + (s * nx[:, None] / TWO_PI)[:, :, None] * Yh[None, :, :]) / m


def relu_sigma2(X, Y):
    """Sigma_(2)(x, y) = (Sigmadot I + (s / 2pi)(x^ y^T + a b^T)) / m (lemma 3.1, MATH §2)."""
    m = X.shape[1]
    _, _, theta, _, s = geometry(X, Y)
    _, Xh = _units(X)
    _, Yh = _units(Y)
    a = _perp_unit(Xh, Y)
    b = np.transpose(_perp_unit(Yh, X), (1, 0, 2))
    outer = Xh[:, None, :, None] * Yh[None, :, None, :] + a[:, :, :, None] * b[:, :, None, :]
    sigmadot = (np.pi - theta) / TWO_PI
    return (sigmadot[:, :, None, None] * np.eye(m) + (s / TWO_PI)[:, :, None, None] * outer) / m


def relu_composed(X, Y):
    """Sigma_F, Sigmadot_F of the default network without bottleneck (MATH §5): the ReLU kernels of a
    layer whose input covariance is g's ReLU NNGP, cos theta_F = J(theta)/pi."""
    nx, ny, theta, lam, s = geometry(X, Y)
    one_minus = (TWO_PI * np.sin(0.5 * theta) ** 2 + theta * lam - s) / np.pi
    theta_F = 2 * np.arcsin(np.sqrt(np.clip(0.5 * one_minus, 0.0, 1.0)))
    D = np.outer(nx, ny) / (2 * X.shape[1])
    return D * (np.cos(theta_F) * (np.pi - theta_F) + np.sin(theta_F)) / TWO_PI, (np.pi - theta_F) / TWO_PI


def relu_ntk_inf(X, Y, lr_g=1.0, lr_f=1.0):
    """NTK_inf = lr_f (Sigma_F + Sigmadot_F Sigma_g) + lr_g Sigmadot_F Theta_g (MATH §5)."""
    sigma_g, _, theta_g = relu(X, Y)
    sigma_F, sigmadot_F = relu_composed(X, Y)
    return lr_f * (sigma_F + sigmadot_F * sigma_g) + lr_g * sigmadot_F * theta_g


def linear(X, Y, depth):
    """Sigma, Sigmadot, NTK of a linear network with ``depth`` weight matrices (lemma 4.1)."""
    m = X.shape[1]
    G = X @ Y.T / m
    return G, np.ones_like(G), depth * G
