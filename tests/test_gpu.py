"""GPU suite: `python -m pytest -m gpu tests/test_gpu.py` on a machine with a CUDA GPU and CuPy.

Every test here skips cleanly without CuPy or a device.  Not yet run on GPU hardware
(docs/BENCHMARKS.md).  The same code paths run on NumPy in tests/test_accel.py and
tests/test_golden.py ("gpu-path/numpy").
"""

import numpy as np
import pytest

import accel
from accel import gpu
from experiments import golden
from refimpl import kernels as rk

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not gpu.available(), reason="needs CuPy and a CUDA device")]


def test_kernels_on_device_match_refimpl():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 12))
    Y = np.concatenate([rng.standard_normal((30, 12)), X[:5] * 1.5, -X[5:8], X[8:10] + 1e-7])
    be = accel.get_backend("gpu")
    for name in ("nngp", "sigmadot", "ntk", "ntk_inf"):
        np.testing.assert_allclose(getattr(be, name)(X, Y), getattr(rk, name)(X, Y), rtol=1e-11, atol=1e-15)
    a, b = be.xi_coefficients(X, Y)
    ra, rb = rk.xi_coefficients(X, Y)
    np.testing.assert_allclose(a, ra, rtol=1e-10)
    np.testing.assert_allclose(b, rb, rtol=1e-10, atol=1e-15)


def test_fused_kernel_is_used_and_matches_plain():
    eng = gpu.engine("cupy")
    xp = eng.xp
    rng = np.random.default_rng(1)
    dot = xp.asarray(rng.uniform(-0.8, 0.8, (64, 300)))
    nn = xp.ones((64, 300))
    pn = xp.ones((1, 300))
    zero = xp.zeros((64, 300), dtype=bool)
    fused = eng._far(dot, nn, zero, pn, 10.0)
    plain = eng._far_terms_plain(dot, nn, zero, pn, 10.0)
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(xp.asnumpy(a), xp.asnumpy(b), rtol=1e-14)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_golden_on_gpu(dtype):
    be = accel.get_backend("gpu", dtype)
    rows = golden.check([(f"gpu/{dtype}", be, dtype)], log=None)
    bad = [(r["case"], r["worst"], r["worst_error"]) for r in rows if not r["ok"]]
    assert not bad, bad


def test_device_history_doubles_and_reads_back():
    cupy = gpu.load_cupy()
    h = gpu.DeviceHistory(3, 2, 4, np.float32, cupy)
    rng = np.random.default_rng(2)
    rows = [rng.standard_normal((7, 3)) for _ in range(50)]
    for P in rows:
        h.append(P, np.ones((7, 2)))
    assert h.M == 350 and h._P.shape[0] < 2 * 350 + 8
    np.testing.assert_allclose(h.P, np.concatenate(rows).astype(np.float32))
    np.testing.assert_allclose(h.norms, np.linalg.norm(h.P.astype(np.float64), axis=1), rtol=1e-12)


def test_bench_smoke(tmp_path):
    from experiments import bench
    report = bench.run(sizes=(10_000,), widths=(10,), backends=("cpu", "gpu"), reps=1, log=lambda m: None)
    assert {r["backend"] for r in report["results"]} == {"cpu", "gpu"}
