"""The kernel functions of an accelerated backend, written once over its pair routine (MATH §2, §5).

Each backend supplies one function ``relu_pairs(X, Y, what) -> (out1, out2)`` that evaluates
the ReLU pair kernels on checked float64 arrays X (p, m), Y (q, m), with ``what`` one of
:data:`accel.pair_source.WHAT` ("ntk", "nngp", "sigmadot", "xi" -> (alpha, beta),
"nngp+ntk" -> (Sigma, K)).  :func:`make_kernels` turns it into the functions of
:mod:`refimpl.kernels` with their names, signatures and input checks; the linear kernels and
the Jacobian covariances sigma1, sigma2 (Monte Carlo checks, not the dynamics) are refimpl's.
"""

from __future__ import annotations

from refimpl import kernels as rk
from refimpl.kernels import check_activation, as_pair, unit_rows

KERNEL_NAMES = ("nngp", "sigmadot", "ntk", "xi", "xi_coefficients", "sigma1", "sigma2", "ntk_inf")


def make_kernels(relu_pairs):
    """A namespace class with the kernel functions of :mod:`refimpl.kernels` over ``relu_pairs``."""

    def nngp(X, Y, activation="relu", depth=None):
        """NNGP kernel Sigma(x, y), as :func:`refimpl.kernels.nngp`."""
        check_activation(activation, depth)
        if activation == "linear":
            return rk.nngp(X, Y, activation, depth)
        return relu_pairs(*as_pair(X, Y), "nngp")[0]

    def sigmadot(X, Y, activation="relu", depth=None):
        """Derivative kernel Sigmadot(x, y), as :func:`refimpl.kernels.sigmadot`."""
        check_activation(activation, depth)
        if activation == "linear":
            return rk.sigmadot(X, Y, activation, depth)
        return relu_pairs(*as_pair(X, Y), "sigmadot")[0]

    def ntk(X, Y, activation="relu", depth=None):
        """NTK (Theta with m = d0, K with m = d), as :func:`refimpl.kernels.ntk`."""
        check_activation(activation, depth)
        if activation == "linear":
            return rk.ntk(X, Y, activation, depth)
        return relu_pairs(*as_pair(X, Y), "ntk")[0]

    def xi_coefficients(X, Y, activation="relu", depth=None):
        """alpha, beta with Xi = alpha y + beta x^, as :func:`refimpl.kernels.xi_coefficients`."""
        check_activation(activation, depth)
        if activation == "linear":
            return rk.xi_coefficients(X, Y, activation, depth)
        alpha, beta = relu_pairs(*as_pair(X, Y), "xi")
        return alpha, beta

    def xi(X, Y, activation="relu", depth=None):
        """Xi(x, y) = dK/dx, (p, q, m), as :func:`refimpl.kernels.xi`."""
        X, Y = as_pair(X, Y)
        alpha, beta = xi_coefficients(X, Y, activation, depth)
        _, Xh = unit_rows(X)
        return alpha[:, :, None] * Y[None, :, :] + beta[:, :, None] * Xh[:, None, :]

    def ntk_inf(X, Y, activation="relu", depth_f=None, depth_g=None, lr_f=1.0, lr_g=1.0):
        """NTK without bottleneck, as :func:`refimpl.kernels.ntk_inf`: Sigma_g and Theta_g from
        one call of the pair routine, combined by :func:`refimpl.kernels.ntk_inf_from_g`."""
        Lf = check_activation(activation, depth_f)
        check_activation(activation, depth_g)
        if activation == "linear":
            return rk.ntk_inf(X, Y, activation, depth_f, depth_g, lr_f, lr_g)
        X, Y = as_pair(X, Y)
        sigma_g, theta_g = relu_pairs(X, Y, "nngp+ntk")
        return rk.ntk_inf_from_g(X, Y, sigma_g, theta_g, activation, Lf, lr_f, lr_g)

    class Kernels:
        """Kernel functions of one backend (refimpl's names and signatures)."""

    for fn in (nngp, sigmadot, ntk, xi_coefficients, xi, ntk_inf):
        setattr(Kernels, fn.__name__, staticmethod(fn))
    Kernels.sigma1 = staticmethod(rk.sigma1)
    Kernels.sigma2 = staticmethod(rk.sigma2)
    return Kernels
