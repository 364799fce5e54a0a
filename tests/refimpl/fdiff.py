"""The one finite-difference helper of the refimpl tests."""

import numpy as np


def central_difference(fun, x, h, inplace=False):
    """Central differences of ``fun`` at the array ``x``: ``(fun(x + h e_k) - fun(x - h e_k)) / 2h``.

    Parameters
    ----------
    fun : callable; ``fun(z)`` for an array ``z`` of x's shape (``inplace``: ``fun()``, reading x,
        which is then perturbed in place and restored, e.g. a weight matrix of a network)
    x : array
    h : float, the step

    Returns
    -------
    array of shape ``x.shape + shape(fun(x))``: the derivative along each coordinate of x
    """
    out = []
    for idx in np.ndindex(x.shape):
        if inplace:
            old = x[idx]
            x[idx] = old + h
            up = np.asarray(fun(), dtype=float)
            x[idx] = old - h
            down = np.asarray(fun(), dtype=float)
            x[idx] = old
        else:
            e = np.zeros_like(x, dtype=float)
            e[idx] = h
            up, down = np.asarray(fun(x + e), dtype=float), np.asarray(fun(x - e), dtype=float)
        out.append((up - down) / (2 * h))
    return np.stack(out).reshape(x.shape + out[0].shape)
