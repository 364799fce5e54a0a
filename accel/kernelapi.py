"""The kernel functions of an accelerated backend, written once over its pair routine (MATH §2, §5).

Each backend supplies one function ``relu_pairs(X, Y, what) -> (out1, out2)`` that evaluates
the ReLU pair kernels on checked float64 arrays X (p, m), Y (q, m), with ``what`` one of
:data:`accel.pair_source.WHAT` ("ntk", "nngp", "sigmadot", "xi" -> (alpha, beta),
"nngp+ntk" -> (Sigma, K)).  :func:`make_kernels` turns it into the functions of
:mod:`refimpl.kernels` with their names, signatures and input checks; the linear kernels and
the Jacobian covariances sigma1, sigma2 (Monte Carlo checks, not the dynamics) are refimpl's.
Architectures other than the default ReLU and the plain linear networks (MATH §2.2) go through
:mod:`accel.archkernels` on the backend's array module ``device``.
"""

from __future__ import annotations

import numpy as np

from refimpl import kernels as rk
from refimpl.kernels import as_pair, unit_rows

from . import archkernels, formulas

KERNEL_NAMES = ("nngp", "sigmadot", "ntk", "xi", "xi_coefficients", "sigma1", "sigma2", "ntk_inf")


def make_kernels(relu_pairs, device=np):
    """A namespace class with the kernel functions of :mod:`refimpl.kernels` over ``relu_pairs``.

    ``device``: the array module of the architectures of MATH §2.2 (NumPy, CuPy or the stand-in).
    """

    def _route(X, Y, spec, what):
        """The pair kernel ``what`` of ``spec``: refimpl's linear forms, the backend's ReLU (times the
        layer scales where they factor out, :attr:`refimpl.kernels.Layers.kernel_scale`), or the recursion."""
        scale = spec.kernel_scale
        if scale is None:
            out = archkernels.pair_kernel(device, *as_pair(X, Y), spec, what)
            return out if isinstance(out, tuple) else (out,)
        if spec.activation == "linear":
            out = formulas.linear_pairs(*as_pair(X, Y), spec.depth, what)
        else:
            out = relu_pairs(*as_pair(X, Y), what)
        if spec.closed_form:
            return out
        factor = spec.out_std ** 2 if what == "sigmadot" else scale
        return tuple(None if o is None else o * factor for o in out)

    def nngp(X, Y, activation="relu", depth=None, w_std=None, b_std=None, out_std=None):
        """NNGP kernel Sigma(x, y), as :func:`refimpl.kernels.nngp`."""
        return _route(X, Y, rk.layers(activation, depth, w_std, b_std, out_std), "nngp")[0]

    def sigmadot(X, Y, activation="relu", depth=None, w_std=None, b_std=None, out_std=None):
        """Derivative kernel Sigmadot(x, y), as :func:`refimpl.kernels.sigmadot`."""
        return _route(X, Y, rk.layers(activation, depth, w_std, b_std, out_std), "sigmadot")[0]

    def ntk(X, Y, activation="relu", depth=None, w_std=None, b_std=None, out_std=None):
        """NTK (Theta with m = d0, K with m = d), as :func:`refimpl.kernels.ntk`."""
        return _route(X, Y, rk.layers(activation, depth, w_std, b_std, out_std), "ntk")[0]

    def xi_coefficients(X, Y, activation="relu", depth=None, w_std=None, b_std=None, out_std=None):
        """alpha, beta with Xi = alpha y + beta x^, as :func:`refimpl.kernels.xi_coefficients`."""
        alpha, beta = _route(X, Y, rk.layers(activation, depth, w_std, b_std, out_std), "xi")
        return alpha, beta

    def xi(X, Y, activation="relu", depth=None, w_std=None, b_std=None, out_std=None):
        """Xi(x, y) = dK/dx, (p, q, m), as :func:`refimpl.kernels.xi`."""
        X, Y = as_pair(X, Y)
        alpha, beta = xi_coefficients(X, Y, activation, depth, w_std, b_std, out_std)
        _, Xh = unit_rows(X)
        return alpha[:, :, None] * Y[None, :, :] + beta[:, :, None] * Xh[:, None, :]

    def ntk_inf(X, Y, layers_g=None, layers_f=None, lr_g=1.0, lr_f=1.0):
        """NTK without bottleneck, as :func:`refimpl.kernels.ntk_inf`: Sigma_g and Theta_g from
        one call of the pair routine, combined by :func:`accel.formulas.ntk_inf_from_g`
        (other architectures: the composed recursion of :mod:`accel.archkernels`)."""
        spec_g, spec_f = rk.inf_layers(layers_g, layers_f)
        X, Y = as_pair(X, Y)
        if not (spec_g.closed_form and spec_f.closed_form and spec_g.activation == spec_f.activation):
            return archkernels.composed_kernel(device, X, Y, spec_g, spec_f, lr_f, lr_g)
        if spec_g.activation == "linear":
            sigma_g, theta_g = X @ Y.T / X.shape[1], spec_g.depth * (X @ Y.T) / X.shape[1]
        else:
            sigma_g, theta_g = relu_pairs(X, Y, "nngp+ntk")
        return formulas.ntk_inf_from_g(X, Y, sigma_g, theta_g, spec_g.activation, spec_f.depth, lr_f, lr_g)

    class Kernels:
        """Kernel functions of one backend (refimpl's names and signatures)."""

    for fn in (nngp, sigmadot, ntk, xi_coefficients, xi, ntk_inf):
        setattr(Kernels, fn.__name__, staticmethod(fn))
    Kernels.sigma1 = staticmethod(rk.sigma1)
    Kernels.sigma2 = staticmethod(rk.sigma2)
    return Kernels
