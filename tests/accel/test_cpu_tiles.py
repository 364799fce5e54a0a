"""The register-blocked micro-kernels of the Numba history pass (accel/cpu.py) against NumPy.

Every remainder path is exercised: widths d that are and are not multiples of the SIMD
vector (full 3-vector tiles, single vectors, half vectors, scalar columns), query counts
that are and are not multiples of the 4-query tile, history row counts that are and are
not multiples of 4, and row/query offsets inside larger arrays."""

import numpy as np
import pytest

from accel import cpu

WIDTHS = (1, 2, 3, 4, 5, 8, 10, 12, 13, 16, 24, 25, 28, 100)
TOL = {np.float64: 1e-13, np.float32: 2e-6}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d", WIDTHS)
def test_gram_tile_matches_numpy(d, dtype):
    rng = np.random.default_rng(d)
    P = rng.standard_normal((70, d)).astype(dtype)
    Z = rng.standard_normal((23, d)).astype(dtype)
    zero = np.zeros(1, dtype=dtype)[0]
    for b0, nb, s0, nm in ((0, 23, 0, 70), (3, 17, 5, 61), (20, 3, 69, 1), (0, 4, 8, 16)):
        dots = np.full((nb, 64 + 8), np.nan, dtype=dtype)
        cpu._dots_tile(Z, b0, nb, P, s0, nm, zero, dots)
        ref = Z[b0:b0 + nb].astype(np.float64) @ P[s0:s0 + nm].astype(np.float64).T
        err = np.abs(dots[:, :nm] - ref).max() / max(1.0, np.abs(ref).max())
        assert err < TOL[dtype], (b0, nb, s0, nm, err)
        assert np.isnan(dots[:, nm:]).all()                      # nothing past nm is written


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d", WIDTHS)
def test_xi_contraction_tile_matches_numpy(d, dtype):
    rng = np.random.default_rng(100 + d)
    P = rng.standard_normal((90, d)).astype(dtype)
    for nb, s0, nm in ((20, 0, 90), (7, 13, 61), (4, 89, 1), (1, 2, 40), (13, 5, 0)):
        W = rng.standard_normal((nb, 96)).astype(dtype)
        acc0 = rng.standard_normal((nb, d)).astype(dtype)
        acc = acc0.copy()
        cpu._axpy_tile(W, P, s0, nb, nm, acc)
        ref = acc0.astype(np.float64) + W[:, :nm].astype(np.float64) @ P[s0:s0 + nm].astype(np.float64)
        err = np.abs(acc - ref).max() / max(1.0, np.abs(ref).max())
        assert err < TOL[dtype] * max(1, nm) ** 0.5, (nb, s0, nm, err)
