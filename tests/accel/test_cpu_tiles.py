"""The register-blocked micro-kernels of the Numba history pass (accel/cpu.py) against NumPy.

Every remainder path is exercised: widths d and query counts that are and are not
multiples of the SIMD vector and of the register tiles (full tiles, single vectors, half
vectors, scalar columns), history row counts that are and are not multiples of 4, row
offsets inside larger arrays, and the prefetch ranges interleaved with the tiles (which
must not change the result nor touch anything outside the array)."""

import numpy as np
import pytest

from accel import cpu

WIDTHS = (1, 2, 3, 4, 5, 8, 10, 12, 13, 16, 24, 25, 28, 100)
QUERIES = (1, 2, 3, 4, 5, 7, 8, 12, 16, 19, 20, 21, 23, 24, 32)
TOL = {np.float64: 1e-13, np.float32: 2e-6}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d", WIDTHS)
def test_gram_tile_matches_numpy(d, dtype):
    rng = np.random.default_rng(d)
    P = rng.standard_normal((70, d)).astype(dtype)
    flat = P.reshape(-1)
    for nb in QUERIES:
        ZT = np.ascontiguousarray(rng.standard_normal((nb, d)).astype(dtype).T)
        for s0, nm, pf in ((0, 70, (0, 0)), (5, 61, (0, flat.size)), (69, 1, (3, 40)), (8, 16, (flat.size, flat.size))):
            dotsT = np.full((64 + 8, nb), np.nan, dtype=dtype)
            cpu._gram_tile(P, s0, nm, ZT, dotsT, flat, *pf)
            ref = P[s0:s0 + nm].astype(np.float64) @ ZT.astype(np.float64)
            err = np.abs(dotsT[:nm] - ref).max() / max(1.0, np.abs(ref).max())
            assert err < TOL[dtype] * max(1, d) ** 0.5, (nb, s0, nm, err)
            assert np.isnan(dotsT[nm:]).all()                      # nothing past nm is written


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d", WIDTHS)
def test_xi_contraction_tile_matches_numpy(d, dtype):
    rng = np.random.default_rng(100 + d)
    P = rng.standard_normal((90, d)).astype(dtype)
    flat = P.reshape(-1)
    for nb, s0, nm, pf in ((20, 0, 90, (0, 0)), (7, 13, 61, (0, flat.size)), (4, 89, 1, (5, 6)),
                           (1, 2, 40, (0, 0)), (13, 5, 0, (0, flat.size)), (8, 0, 33, (0, 0)),
                           (12, 1, 50, (flat.size - 1, flat.size)), (23, 3, 64, (0, flat.size)), (32, 0, 90, (0, 0))):
        W = rng.standard_normal((nb, 96)).astype(dtype)
        acc0 = rng.standard_normal((nb, d)).astype(dtype)
        acc = acc0.copy()
        cpu._axpy_tile(W, P, s0, nb, nm, acc, flat, *pf)
        ref = acc0.astype(np.float64) + W[:, :nm].astype(np.float64) @ P[s0:s0 + nm].astype(np.float64)
        err = np.abs(acc - ref).max() / max(1.0, np.abs(ref).max())
        assert err < TOL[dtype] * max(1, nm) ** 0.5, (nb, s0, nm, err)


def test_register_tile_shape_follows_the_register_file():
    """8-query contraction tiles need 24 accumulators + 4 operands: only with 32 registers."""
    assert cpu.VECTOR_BYTES == 32
    assert cpu.OUTER_ROWS == (8 if cpu._host_vector_registers() == 32 else 4)
