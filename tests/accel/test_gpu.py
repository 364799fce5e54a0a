"""GPU suite: ``python -m pytest -m gpu tests/accel/test_gpu.py`` on a machine with a CUDA GPU and CuPy.

Every test skips cleanly without CuPy or a device (the reason says which).  The same code runs
on the NumPy stand-in in CI (tests/accel/test_gpu_path.py; ``BOTTLENECK_GPU=standin`` also runs this
file there).  Not yet run on GPU hardware in this form (docs/BENCHMARKS.md).
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import accel
import cli
import refimpl
from accel import gpu, xpcore
from accel._simbase import ArrayHistory
from experiments import golden
from refimpl import kernels as rk

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not gpu.available(), reason=f"gpu backend: {gpu.unavailable_reason()}")]


def test_kernels_on_device_match_refimpl():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 12))
    Y = np.concatenate([rng.standard_normal((30, 12)), X[:5] * 1.5, -X[5:8] + 1e-3, X[8:10] + 1e-7,
                        np.zeros((1, 12))])
    be = accel.get_backend("gpu")
    for name in ("nngp", "sigmadot", "ntk", "ntk_inf"):
        ref = getattr(rk, name)(X, Y)
        got = getattr(be, name)(X, Y)
        assert np.max(np.abs(got - ref) / (np.abs(ref) + 1e-6 * np.abs(ref).max())) < 1e-10, name
    a, b = be.xi_coefficients(X, Y)
    ra, rb = rk.xi_coefficients(X, Y)
    np.testing.assert_allclose(a, ra, rtol=1e-10)
    np.testing.assert_allclose(b, rb, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float64-tensor-cores"])
def test_golden_on_gpu(dtype, monkeypatch):
    """Every golden case on the device; float64-tensor-cores: with BOTTLENECK_TENSOR_CORES=1 (skipped where the
    device has no FP64 tensor cores)."""
    if dtype.endswith("-tensor-cores"):
        if not gpu.engine("cupy").mma_available():
            pytest.skip("the device has no FP64 tensor cores (compute capability below 8.0)")
        monkeypatch.setenv(xpcore.TENSOR_CORES_ENV, "1")
        gpu.reset()
    try:
        be = accel.get_backend("gpu", dtype.removesuffix("-tensor-cores"))
        assert gpu.engine("cupy").tensor_cores == dtype.endswith("-tensor-cores")
        rows = golden.check([(f"gpu/{dtype}", be, dtype.removesuffix("-tensor-cores"))], log=None)
    finally:
        if dtype.endswith("-tensor-cores"):
            monkeypatch.delenv(xpcore.TENSOR_CORES_ENV)
            gpu.reset()
    assert {r["case"] for r in rows} == set(golden.read_manifest()["files"])
    bad = [(r["case"], r["worst"], r["worst_error"]) for r in rows if not r["ok"]]
    assert not bad, bad


@pytest.mark.parametrize("tensor_cores", [False, True], ids=["fp64-units", "fp64-tensor-cores"])
def test_fused_pass_on_device_matches_refimpl(tensor_cores):
    """The fused history pass on the device in every mode, against refimpl's kernels on the host (float64; near
    and anti-parallel queries included), with the tile's products on the FP64 units and on the tensor cores."""
    xp = gpu.engine("cupy").xp
    eng = xpcore.XPEngine(xp, tensor_cores=tensor_cores)
    if tensor_cores and not eng.mma_available():
        pytest.skip("the device has no FP64 tensor cores (compute capability below 8.0)")
    rng = np.random.default_rng(4)
    M, d, dr, q = 3000, 37, 3, 20
    h = ArrayHistory(d, dr, dtype=np.float64, xp=xp)
    base = rng.standard_normal((50, d))
    h.append(base[rng.integers(0, 50, M)] + 1e-3 * rng.standard_normal((M, d)), rng.standard_normal((M, dr)))
    P, C = h.P, h.C
    Z = np.concatenate([P[:5] * (1 + 1e-9), -P[5:10], rng.standard_normal((q - 10, d))])
    chi = rng.standard_normal((q, dr))
    K = rk.ntk(Z, P)
    alpha, beta = rk.xi_coefficients(Z, P)
    Zh = rk.unit_rows(Z)[1]
    for mode in (0, 1, 2):
        assert eng.plan(q, M, d, dr, mode, np.float64, "relu")["mma"] == tensor_cores
        f, T, b = eng.history_pass(Z, h.P_dev, h.norms_dev, h.C_dev, mode, chi if mode == 2 else None, "relu",
                                   float(d), 0.0)
        W = C.T[:, None, :] if mode != 2 else (chi @ C.T)[None]
        if mode != 2:
            assert np.linalg.norm(f - K @ C) <= 1e-12 * np.linalg.norm(K @ C)
        if mode:
            J = T + b[:, :, None] * Zh[:, None, :]
            J_ref = np.einsum("rbm,bm,mk->brk", W, alpha, P) + np.einsum("rbm,bm->br", W, beta)[:, :, None] * Zh[:, None, :]
            assert np.linalg.norm(J - J_ref) <= 1e-10 * np.linalg.norm(J_ref), mode


def test_device_history_doubles_and_reads_back():
    h = ArrayHistory(3, 2, capacity=4, dtype=np.float32, xp=gpu.load_cupy())
    rng = np.random.default_rng(2)
    rows = [rng.standard_normal((7, 3)) for _ in range(50)]
    for P in rows:
        h.append(P, np.ones((7, 2)))
    assert h.M == 350 and h.store_P.shape[0] < 2 * 350 + 8
    assert isinstance(h.P, np.ndarray)
    np.testing.assert_allclose(h.P, np.concatenate(rows).astype(np.float32))
    np.testing.assert_allclose(h.norms, np.linalg.norm(h.P.astype(np.float64), axis=1), rtol=1e-12)


def _problem(N=300, d0=8, d=10, dr=1, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, d0))
    Y = np.tanh(X[:, :dr]) + 0.1 * rng.standard_normal((N, dr))
    net = refimpl.RandomNetwork.sample(d0, d, dr, width=500, seed=seed)
    return net, X, Y


def test_long_float64_trajectory_matches_cpu():
    """2000 SGD steps (M = 40000) in float64: gpu and cpu backends agree to 1e-10."""
    net, X, Y = _problem()
    rng = np.random.default_rng(1)
    batches = [rng.choice(X.shape[0], 20, replace=False) for _ in range(2000)]
    sims = [accel.get_backend(b, "float64").BottleneckSimulator(net, X, Y, lr=1.0, X_eval=X[:50] + 0.1)
            for b in ("gpu", "cpu")]
    losses = np.array([[s.step(idx) for s in sims] for idx in batches])
    assert np.max(np.abs(losses[:, 0] - losses[:, 1]) / np.abs(losses[:, 1])) <= 1e-10
    Xq = X[:50] + 0.1
    out = [s.outputs(Xq) for s in sims]
    assert np.max(np.abs(out[0] - out[1]) / (np.abs(out[1]) + 1e-12)) <= 1e-10


def test_evaluation_on_a_large_test_set(monkeypatch):
    """f_t at 20000 query points (the test-set evaluation) against cpu, in one block and in
    blocks forced small by the memory budget."""
    net, X, Y = _problem()
    sims = [accel.get_backend(b, "float64").BottleneckSimulator(net, X, Y, lr=1.0) for b in ("gpu", "cpu")]
    rng = np.random.default_rng(3)
    for _ in range(100):
        idx = rng.choice(X.shape[0], 20, replace=False)
        for s in sims:
            s.step(idx)
    Z = sims[1].embeddings(X)[rng.integers(0, X.shape[0], 20000)] + 1e-3 * rng.standard_normal((20000, 10))
    ref = sims[1].f(Z)
    got = sims[0].f(Z)
    assert np.linalg.norm(got - ref) <= 1e-12 * np.linalg.norm(ref)
    monkeypatch.setattr(xpcore, "MEMORY_FRACTION", 2**26 / max(1, sims[0].engine.device.free_bytes()))  # 64 MiB
    assert sims[0].engine.device.block_shape(20000, 2000, 32)[1] < 2000
    blocked = sims[0].f(Z)
    assert np.linalg.norm(blocked - ref) <= 1e-12 * np.linalg.norm(ref)


def test_train_backend_gpu_end_to_end_with_resume(tmp_path):
    runner = CliRunner()
    common = ["train", "--train-size", "200", "--test-size", "100", "--width", "5",
              "--init-width", "1000", "--eval-every", "10", "--quiet"]
    res = runner.invoke(cli.cli, common + ["--steps", "40", "--backend", "cpu", "--out", str(tmp_path / "cpu")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli.cli, common + ["--steps", "20", "--backend", "gpu", "--out", str(tmp_path / "gpu")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli.cli, ["train", "--resume", str(tmp_path / "gpu"), "--steps", "40", "--quiet"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "gpu" / "summary.json").read_text())
    assert summary is not None

    def losses(run):
        lines = (tmp_path / run / "metrics.csv").read_text().splitlines()
        col = lines[0].split(",").index("test_loss")
        return np.array([float(line.split(",")[col]) for line in lines[1:]])

    np.testing.assert_allclose(losses("gpu"), losses("cpu"), rtol=1e-10)


def test_bench_smoke(tmp_path):
    from experiments import bench
    report = bench.run(sizes=(10_000,), widths=(10,), backends=("cpu", "gpu"), reps=1, log=lambda m: None)
    rows = {(r["backend"], r["dtype"]): r for r in report["results"]}
    assert {b for b, _ in rows} == {"cpu", "gpu"}
    assert rows[("gpu", "float64")]["device_peak_mib"] is not None
    bench.write(report, tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text())["results"]
