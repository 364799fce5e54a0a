"""One near-parallel rule and one angle formula (MATH §2.1): refimpl.angles, the Numba formulas
(accel.formulas re-binds refimpl's code) and the CUDA-C source (accel.pair_source, compiled by the host
C compiler through the NumPy stand-in) agree on the same pairs."""

import numpy as np
import pytest

from accel import cpu, formulas, pair_source, standin
from refimpl import angles

pytestmark = pytest.mark.skipif(standin.compiler() is None, reason="no host C compiler for the CUDA-C source")

HARNESS = r"""
double lam = bd_cos_of_pair(nx, ny, dot);
double hu, hv;
near = bd_is_near(lam);
if (near) lam = bd_halves_from_differences(minus2, plus2, &hu, &hv);
else bd_halves_from_cos(lam, &hu, &hv);
theta = bd_angle(lam, hu, hv);
"""


def _pairs():
    """Rows x, y at angles from 0 to pi (both sides of the cut-off, its exact value, both ridges) and
    zero vectors."""
    rng = np.random.default_rng(4)
    cut = np.arccos(angles.NEAR_PARALLEL_COS)
    grid = [0.0, 1e-12, 1e-8, 1e-4, 0.1, cut * (1 - 1e-9), cut, cut * (1 + 1e-9), 0.7, np.pi / 2, 2.0,
            np.pi - cut * (1 + 1e-9), np.pi - cut, np.pi - cut * (1 - 1e-9), np.pi - 1e-4, np.pi - 1e-9, np.pi]
    X, Y = [], []
    for a in grid + list(rng.uniform(0, np.pi, 40)):
        x = rng.standard_normal(5)
        u = rng.standard_normal(5)
        u -= (u @ x) / (x @ x) * x
        u *= np.linalg.norm(x) / np.linalg.norm(u)
        X.append(x)
        Y.append(rng.uniform(0.2, 3.0) * (np.cos(a) * x + np.sin(a) * u))
    X += [np.zeros(5), np.zeros(5), rng.standard_normal(5)]
    Y += [rng.standard_normal(5), np.zeros(5), np.zeros(5)]
    # a pair whose cosine is exactly the cut-off
    X.append(np.array([1.0, 0, 0, 0, 0]))
    Y.append(np.array([angles.NEAR_PARALLEL_COS, np.sqrt(1 - angles.NEAR_PARALLEL_COS ** 2), 0, 0, 0]))
    return np.array(X), np.array(Y)


def _inputs(X, Y):
    nx, Xh = angles.unit_rows(X)
    ny, Yh = angles.unit_rows(Y)
    dot = np.einsum("ij,ij->i", X, Y)
    minus2 = np.einsum("ij,ij->i", Xh - Yh, Xh - Yh)
    plus2 = np.einsum("ij,ij->i", Xh + Yh, Xh + Yh)
    return nx, ny, dot, minus2, plus2


def _refimpl(nx, ny, dot, minus2, plus2):
    lam = angles.cos_of_pair(dot, nx * ny, (nx + ny) == 0.0)
    near = angles.is_near_parallel(lam)
    hu, hv = angles.halves_from_cos(np.where(near, 0.0, lam))
    du, dv, dlam = angles.halves_from_differences(minus2, plus2)
    hu, hv, lam = np.where(near, du, hu), np.where(near, dv, hv), np.where(near, dlam, lam)
    return near, angles.angle(lam, hu, hv)


def _numba(nx, ny, dot, minus2, plus2):
    F = cpu._F
    near, theta = [], []
    for k in range(nx.size):
        lam = F["cos_of_pair"](dot[k], nx[k] * ny[k], nx[k] + ny[k] == 0.0)
        is_near = abs(lam) > 1.0 - cpu.NEAR                       # the rule as accel.cpu's loops write it
        near.append(is_near)
        t = F["geometry_from_halves"](minus2[k], plus2[k]) if is_near else F["geometry_from_cos"](lam)
        theta.append(t[0])
    return np.array(near), np.array(theta)


def _c_source(nx, ny, dot, minus2, plus2):
    kern = standin.ElementwiseKernel("float64 nx, float64 ny, float64 dot, float64 minus2, float64 plus2",
                                     "float64 theta, int64 near", HARNESS, "bd_angle_rule",
                                     preamble=pair_source.preamble("relu", "host"))
    theta, near = np.empty(nx.size), np.empty(nx.size, dtype=np.int64)
    kern(nx, ny, dot, minus2, plus2, theta, near)
    return near.astype(bool), theta


def test_the_three_implementations_share_the_rule_and_the_angle():
    assert formulas.NEAR == 1.0 - angles.NEAR_PARALLEL_COS and cpu.NEAR == formulas.NEAR
    assert pair_source.NEAR_COS == angles.NEAR_PARALLEL_COS
    assert repr(angles.NEAR_PARALLEL_COS) in pair_source.preamble("relu", "host")
    X, Y = _pairs()
    args = _inputs(X, Y)
    near_r, theta_r = _refimpl(*args)
    near_n, theta_n = _numba(*args)
    near_c, theta_c = _c_source(*args)
    np.testing.assert_array_equal(near_n, near_r)
    np.testing.assert_array_equal(near_c, near_r)
    assert near_r.any() and not near_r.all()
    # the same formula: libm's asin (refimpl, C) and the 1-ulp polynomial (Numba) on [-1/2, 1/2]
    tol = 4 * np.finfo(float).eps * theta_r + 1e-300
    assert np.all(np.abs(theta_c - theta_r) <= tol), np.max(np.abs(theta_c - theta_r) / tol)
    assert np.all(np.abs(theta_n - theta_r) <= tol), np.max(np.abs(theta_n - theta_r) / tol)
    # and refimpl's public pair_angles follows the rule on the same pairs
    full = np.array([angles.pair_angles(x[None], y[None])[2][0, 0] for x, y in zip(X, Y)])
    assert np.all(np.abs(full - theta_r) <= tol)
    assert theta_r[-4] == theta_r[-2] == np.pi / 2 and theta_r[-3] == 0.0      # zero vectors (MATH §2.1)


def test_the_rule_check_can_fail():
    """A different cut-off in the C source is seen."""
    X, Y = _pairs()
    args = _inputs(X, Y)
    near_r, _ = _refimpl(*args)
    pre = pair_source.preamble("relu", "host").replace(repr(angles.NEAR_PARALLEL_COS), "0.95")
    kern = standin.ElementwiseKernel("float64 nx, float64 ny, float64 dot, float64 minus2, float64 plus2",
                                     "float64 theta, int64 near", HARNESS, "bd_angle_rule_095", preamble=pre)
    theta, near = np.empty(X.shape[0]), np.empty(X.shape[0], dtype=np.int64)
    kern(*args, theta, near)
    assert not np.array_equal(near.astype(bool), near_r)
