"""Synthetic regression data from a deep Gaussian process (MATH §7, paper appendix D.4.1).

The paper draws 2000 training and 2000 test inputs from a standard normal
distribution and passes them through "a deep Gaussian process model" without
saying which.  This module uses the construction suggested in MATH §7:

1. inputs ``xi ~ N(0, I_{d0})``, train and test drawn together;
2. a hidden layer ``h = (h_1, ..., h_k)`` of ``k = hidden`` independent
   coordinates, each ``h_j ~ GP(0, Sigma(xi, xi'))`` with the ReLU NNGP kernel
   of :func:`refimpl.kernels.nngp` (m = d0);
3. each output ``y_a ~ GP(0, Sigma(h, h'))``, independently for a = 1..dr,
   with the ReLU NNGP kernel on the hidden layer (m = k);
4. both layers are sampled jointly on the train and test points by Cholesky
   with a relative jitter of ``jitter`` on the diagonal;
5. the targets are standardised with the training mean and standard deviation
   of each output (the same affine map is applied to the test targets).

Everything is a deterministic function of ``seed`` (numpy ``default_rng``).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np

from refimpl import kernels
from refimpl.validate import positive_int

#: Training and test points of the synthetic data set when a command is given no size (the commands'
#: one default; :func:`make_synthetic` itself draws the paper's 2000 and 2000).
SYNTHETIC_TRAIN_SIZE = 1000
SYNTHETIC_TEST_SIZE = 500
#: Draws kept in memory by :func:`make_synthetic` (the same draw is asked for by every run of a sweep, in
#: the same worker process; at the paper's 2000 + 2000 points one draw costs two 4000 x 4000 NNGP kernels
#: and two Cholesky factorisations, about 10 s, and takes 0.3 MB to keep).
SYNTHETIC_CACHE_SIZE = 4
_cache = OrderedDict()


def default_sizes(dataset, train_size=None, test_size=None):
    """``(train_size, test_size)`` with the synthetic defaults filled in for the generated data sets
    (synthetic, multi-index, manifold); None (the whole split) otherwise."""
    if dataset in ("synthetic", "multi-index", "manifold"):
        return (SYNTHETIC_TRAIN_SIZE if train_size is None else train_size,
                SYNTHETIC_TEST_SIZE if test_size is None else test_size)
    return train_size, test_size


def _gp_sample(K, columns, rng, jitter):
    """Draw ``columns`` independent samples of GP(0, K) on the points of K (n, n) -> (n, columns)."""
    scale = float(np.mean(np.diag(K))) or 1.0
    L = np.linalg.cholesky(K + jitter * scale * np.eye(K.shape[0]))
    return L @ rng.standard_normal((K.shape[0], columns))


def make_synthetic(n_train=2000, n_test=2000, d0=16, dr=1, hidden=8, seed=0, jitter=1e-8):
    """Inputs N(0, I) and targets from a two-layer deep Gaussian process.

    Parameters
    ----------
    n_train, n_test : int
        Numbers of training and test points.
    d0 : int
        Input dimension.
    dr : int
        Number of outputs.
    hidden : int
        Number of coordinates of the hidden GP layer.
    seed : int
        Seed of every random draw.
    jitter : float
        Relative diagonal jitter of the Cholesky factorisations.

    Returns
    -------
    X_train : (n_train, d0);  Y_train : (n_train, dr);  X_test : (n_test, d0);  Y_test : (n_test, dr)
    meta : dict describing the construction (JSON-serialisable)

    Notes
    -----
    The last :data:`SYNTHETIC_CACHE_SIZE` draws are kept in memory: asking again with the same arguments
    returns fresh copies of the same arrays (bit for bit what a new draw gives) without drawing again.
    """
    for name, val in (("n_train", n_train), ("n_test", n_test), ("d0", d0), ("dr", dr), ("hidden", hidden)):
        positive_int(name, val)
    if n_train + n_test > 20_000:
        raise ValueError(f"n_train: n_train + n_test must be at most 20000 for the exact GP draw, "
                         f"got {n_train + n_test}")
    key = (int(n_train), int(n_test), int(d0), int(dr), int(hidden), int(seed), float(jitter))
    if key not in _cache:
        _cache[key] = _draw(*key)
        while len(_cache) > SYNTHETIC_CACHE_SIZE:
            _cache.popitem(last=False)
    _cache.move_to_end(key)
    arrays, meta = _cache[key]
    return (*(a.copy() for a in arrays), copy.deepcopy(meta))


def _draw(n_train, n_test, d0, dr, hidden, seed, jitter):
    """The draw of :func:`make_synthetic` (arguments checked there): ``((X_train, Y_train, X_test,
    Y_test), meta)``."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    X = rng.standard_normal((n, d0))
    H = _gp_sample(kernels.nngp(X, X), hidden, rng, jitter)
    Y = _gp_sample(kernels.nngp(H, H), dr, rng, jitter)
    mean = Y[:n_train].mean(axis=0)
    std = Y[:n_train].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    Y = (Y - mean) / std
    meta = {
        "construction": "deep GP: h_j ~ GP(0, Sigma_relu(xi, xi')), j=1..hidden; "
                        "y_a ~ GP(0, Sigma_relu(h, h')); joint Cholesky on train+test; "
                        "targets standardised with training mean/std",
        "n_train": int(n_train), "n_test": int(n_test), "d0": int(d0), "dr": int(dr),
        "hidden": int(hidden), "seed": int(seed), "jitter": float(jitter),
    }
    return (X[:n_train], Y[:n_train], X[n_train:], Y[n_train:]), meta
