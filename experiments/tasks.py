"""Tasks where feature learning can matter: the multi-index model, a low-dimensional manifold, the autoencoder.

Three constructions (MATH §7.2, §7.3), all deterministic functions of ``seed``
(``numpy.random.default_rng``), all float64:

``multi-index`` (:func:`make_multi_index`)
    Inputs ``x ~ N(0, I_d0)``; a projection ``U`` (k, d0) with orthonormal rows
    (the first k rows of the Q factor of a Gaussian matrix, signs fixed by R's
    diagonal); the latent ``z = U x`` (so ``z ~ N(0, I_k)``); the target

        h(z) = sum_{j=1..k} tanh(2 z_j) z_{j+1},   z_{k+1} := z_1

    (k = 1: tanh(2 z) z; k = 2: tanh(2 z_1) z_2 + tanh(2 z_2) z_1), one output,
    standardised with the training mean and standard deviation.  h has no
    linear part (E[h(z) z] = 0, since tanh is odd), so its lowest Hermite
    component is quadratic in z.

``manifold`` (:func:`make_manifold`)
    A k-dimensional latent ``z ~ N(0, I_k)`` embedded smoothly in R^d0 by random
    Fourier features ``x = sqrt(2) cos(W z + b)`` with ``W`` (d0, k) i.i.d.
    N(0, 1/k) and ``b`` i.i.d. uniform on [0, 2 pi); then centred with the
    training mean and scaled by one scalar so that ``mean_i |x_i|^2 / d0 = 1`` on
    the training rows (the preprocessing of the image data, MATH §7).  The
    targets are the latent coordinates z, standardised per coordinate (dr = k).

``autoencoder`` (:func:`as_autoencoder`)
    Any data set with the targets replaced by the inputs: ``Y = X`` (dr = d0),
    train and test alike; labels are dropped (a regression task).  On MNIST the
    targets are the preprocessed images, so the zero predictor's loss is
    ``mean |x|^2 / 2 = d0 / 2 = 392``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from refimpl.validate import positive_int

TASKS = ("default", "autoencoder")
NONLINEARITY = "h(z) = sum_j tanh(2 z_j) z_{j+1} (cyclic, z_{k+1} = z_1)"


def orthonormal_projection(k, d0, rng):
    """A (k, d0) matrix with orthonormal rows, from the QR factorisation of a Gaussian (d0, k) matrix."""
    Q, R = np.linalg.qr(rng.standard_normal((d0, k)))
    return (Q * np.sign(np.diag(R))).T


def multi_index_h(Z):
    """The fixed nonlinearity of the multi-index task, (n, k) -> (n,) (module docstring)."""
    Z = np.asarray(Z, dtype=np.float64)
    return np.sum(np.tanh(2.0 * Z) * np.roll(Z, -1, axis=1), axis=1)


def _standardise(Y, n_train):
    mean = Y[:n_train].mean(axis=0)
    std = Y[:n_train].std(axis=0)
    return (Y - mean) / np.where(std > 0, std, 1.0), mean, std


def _check_sizes(n_train, n_test, d0, k):
    for name, val in (("n_train", n_train), ("n_test", n_test), ("d0", d0), ("latent_dim", k)):
        positive_int(name, val)
    if k > d0:
        raise ValueError(f"latent_dim: expected at most d0 = {d0}, got {k}")


def make_multi_index(n_train=2000, n_test=2000, d0=32, latent_dim=2, seed=0):
    """The multi-index regression task ``y = h(U x)`` (module docstring; MATH §7.2).

    Returns
    -------
    X_train (n_train, d0), Y_train (n_train, 1), X_test (n_test, d0), Y_test (n_test, 1), meta (dict),
    U (latent_dim, d0).  The standardisation constants are in ``meta``.
    """
    _check_sizes(n_train, n_test, d0, latent_dim)
    rng = np.random.default_rng(seed)
    U = orthonormal_projection(latent_dim, d0, rng)
    X = rng.standard_normal((n_train + n_test, d0))
    Y, mean, std = _standardise(multi_index_h(X @ U.T)[:, None], n_train)
    meta = {"construction": "multi-index: x ~ N(0, I_d0), U (k, d0) orthonormal rows (QR of a Gaussian), "
                            f"y = {NONLINEARITY} at z = U x, standardised with training mean/std",
            "n_train": int(n_train), "n_test": int(n_test), "d0": int(d0), "dr": 1,
            "latent_dim": int(latent_dim), "seed": int(seed),
            "target_mean": float(mean[0]), "target_std": float(std[0])}
    return X[:n_train], Y[:n_train], X[n_train:], Y[n_train:], meta, U


def make_manifold(n_train=2000, n_test=2000, d0=32, latent_dim=4, seed=0):
    """A k-dimensional manifold in R^d0 by random Fourier features (module docstring; MATH §7.3).

    Returns
    -------
    X_train (n_train, d0), Y_train (n_train, k) (standardised latents), X_test, Y_test, meta (dict).
    """
    _check_sizes(n_train, n_test, d0, latent_dim)
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d0, latent_dim)) / np.sqrt(latent_dim)
    b = rng.uniform(0.0, 2.0 * np.pi, d0)
    Z = rng.standard_normal((n_train + n_test, latent_dim))
    X = np.sqrt(2.0) * np.cos(Z @ W.T + b)
    X = X - X[:n_train].mean(axis=0)
    scale = float(np.sqrt(np.mean(np.sum(X[:n_train] ** 2, axis=1)) / d0))
    X = X / scale
    Y, _, _ = _standardise(Z, n_train)
    meta = {"construction": "manifold: z ~ N(0, I_k), x = sqrt(2) cos(W z + b), W_ij ~ N(0, 1/k), "
                            "b_i ~ U[0, 2 pi); x centred with the training mean and divided by one scalar "
                            "so that mean |x|^2 / d0 = 1 on the training rows; targets z standardised",
            "n_train": int(n_train), "n_test": int(n_test), "d0": int(d0), "dr": int(latent_dim),
            "latent_dim": int(latent_dim), "seed": int(seed), "input_scale": scale}
    return X[:n_train], Y[:n_train], X[n_train:], Y[n_train:], meta


def as_autoencoder(data):
    """The same inputs with targets = inputs (dr = d0), labels dropped: a new :class:`~experiments.data.Dataset`."""
    meta = dict(data.meta)
    meta["task"] = "autoencoder: targets = inputs (dr = d0)"
    meta["dr"] = int(data.X_train.shape[1])
    return dataclasses.replace(data, Y_train=data.X_train.copy(), Y_test=data.X_test.copy(),
                               labels_train=None, labels_test=None, classes=None, meta=meta)


def apply_task(data, task):
    """``data`` for ``task`` ("default": unchanged; "autoencoder": :func:`as_autoencoder`)."""
    if task == "default":
        return data
    if task == "autoencoder":
        return as_autoencoder(data)
    raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
