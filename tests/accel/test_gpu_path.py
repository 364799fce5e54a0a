"""The GPU backend's code without a GPU: its CUDA-C kernel source compiled by gcc, and the Python
around it (blocking by device memory, near pairs, history growth, the train driver; checkpoints and the
tracked update with the other engines in tests/accel/test_accel.py)
on the NumPy stand-in (accel.standin).  On a GPU the same source runs through cupy.ElementwiseKernel
(tests/accel/test_gpu.py, ``pytest -m gpu``)."""

import json
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

import accel
import cli
import refimpl
from accel import formulas, gpu, pair_source, standin, xpcore
from accel._simbase import ArrayHistory
from experiments import golden
from refimpl import kernels as rk

pytestmark = pytest.mark.skipif(standin.compiler() is None, reason="needs a host C compiler (gcc)")

ENGINE = gpu.engine("numpy")


def _pairs(m, seed):
    """Random pairs plus parallel, anti-parallel, nearly (anti-)parallel, orthogonal and zero rows."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((12, m))
    rows = [rng.standard_normal((10, m)), 2.5 * X[:3], -0.5 * X[3:5], np.zeros((1, m))]
    for k, eps in enumerate((1e-3, 1e-6, 1e-9)):
        v = rng.standard_normal(m)
        v -= v @ X[k] / (X[k] @ X[k]) * X[k]
        v *= eps * np.linalg.norm(X[k]) / np.linalg.norm(v)
        rows += [(X[k] + v)[None], (-X[k] + v)[None]]
    Y = np.concatenate(rows)
    return np.concatenate([X, np.zeros((1, m))]), Y


def _rel(a, b):
    return np.max(np.abs(a - b) / (np.abs(b) + 1e-6 * np.max(np.abs(b))))


@pytest.mark.parametrize("m", [3, 10, 50])
def test_kernel_source_compiled_by_gcc_matches_refimpl(m):
    """The CUDA-C pair source (ReLU), run on the host, against refimpl's kernels: if the source
    and the reference formulas diverge, this fails."""
    X, Y = _pairs(m, m)
    # within 1e-5 of anti-parallel refimpl itself is ill-conditioned (experiments.golden.SINGULAR)
    anti = (np.pi - rk.pair_angles(X, Y)[2]) < golden.SINGULAR
    for what, refs in (("ntk", [rk.ntk(X, Y)]), ("nngp", [rk.nngp(X, Y)]), ("sigmadot", [rk.sigmadot(X, Y)]),
                       ("xi", list(rk.xi_coefficients(X, Y))), ("nngp+ntk", [rk.nngp(X, Y), rk.ntk(X, Y)])):
        got = ENGINE.pair_kernel(X, Y, what)
        for g, r in zip(got, refs):
            assert _rel(g[~anti], r[~anti]) < golden.TOL_FLOAT64, (what, _rel(g[~anti], r[~anti]))
            assert np.max(np.abs(g - r)[anti] / (np.abs(r).max())) < golden.TOL_SINGULAR, what
    # refimpl's recursion forms x.y as |x||y| cos(theta): a few ulps of |x||y| off the dot product
    ref = rk.ntk(X, Y, "linear", 3)
    np.testing.assert_allclose(ENGINE.pair_kernel(X, Y, "ntk", arch="linear", par=3)[0], ref, rtol=1e-14,
                               atol=1e-14 * np.abs(ref).max())


def test_kernel_source_uses_the_named_cutoffs():
    src = pair_source.preamble("relu", "host")
    assert repr(1.0 - formulas.NEAR) in src and repr(rk.XI_SIN_THRESHOLD) in src
    assert pair_source.NEAR_COS == 1.0 - formulas.NEAR
    assert "__device__" in pair_source.preamble("relu", "cuda")
    with pytest.raises(ValueError, match="arch"):
        pair_source.preamble("tanh", "host")


def test_standin_kernel_checks_its_arguments():
    hist, pair = ENGINE.kernels("relu")
    with pytest.raises(TypeError, match="expected 12"):
        pair(np.zeros((2, 2)))
    G = np.zeros((2, 2), dtype=np.float32)               # pair kernel wants float64 G
    z = np.zeros(4)
    with pytest.raises(TypeError, match="float64"):
        pair(G, z, z, z, z, 2, 2, 2.0, 0.0, 0, np.empty((2, 2)), np.empty(4))


def _history(M, d, dr, rng, dtype=np.float64):
    h = ArrayHistory(d, dr, dtype=dtype, xp=standin.numpy_device)
    base = rng.standard_normal((50, d))
    h.append(base[rng.integers(0, 50, M)] + 1e-3 * rng.standard_normal((M, d)), rng.standard_normal((M, dr)))
    return h, base


def _run(h, Z, mode, chi, arch="relu"):
    return ENGINE.history_pass(Z, h.P_dev, h.norms_dev, h.C_dev, mode, chi, arch, float(Z.shape[1]), 2)


def test_blocks_follow_device_memory_and_do_not_change_results(monkeypatch):
    rng = np.random.default_rng(1)
    h, base = _history(3000, 6, 2, rng)
    Z = np.concatenate([base[:30] + 1e-4, rng.standard_normal((10, 6))])
    chi = rng.standard_normal((40, 2))
    whole = [_run(h, Z, mode, chi if mode == 2 else None) for mode in (0, 1, 2)]
    assert ENGINE.block_shape(40, 3000, 64) == (40, 3000)
    monkeypatch.setattr(standin.NumpyDevice, "memory_bytes", 200_000)   # 80 kB for temporaries
    qb, nb = ENGINE.block_shape(40, 3000, 64)
    assert qb * nb * 64 <= xpcore.MEMORY_FRACTION * 200_000 and nb < 3000
    monkeypatch.setattr(standin.NumpyDevice, "memory_bytes", 20_000)    # query blocks too
    assert ENGINE.block_shape(40, 3000, 64)[0] < 40
    for mode, ref in zip((0, 1, 2), whole):
        got = _run(h, Z, mode, chi if mode == 2 else None)
        for a, b in zip(got, ref):
            if b is not None:
                assert np.linalg.norm(a - b) <= 1e-13 * np.linalg.norm(b)


@pytest.fixture
def standin_gpu(monkeypatch):
    """The gpu backend itself (get_backend("gpu")) on the NumPy stand-in."""
    monkeypatch.setenv(gpu.STANDIN_ENV, "standin")
    gpu.reset()
    yield
    monkeypatch.delenv(gpu.STANDIN_ENV)
    gpu.reset()


def _copy_counter(counts):
    real = np.asarray

    def count(kind):
        def copy(a, *args, **kwargs):
            if kind == "d2h" or np.ndim(a) > 0:
                counts[kind] = counts.get(kind, 0) + 1
                counts[kind + "_bytes"] = counts.get(kind + "_bytes", 0) + real(a).nbytes
            return real(a, *args, **kwargs)
        return staticmethod(copy)
    return count


GPU_ARCHS = {"relu": lambda: (rk.Layers.make("relu"), rk.Layers.make("relu")),
             "linear": lambda: rk.architecture("linear", hidden_g=2, w_std=0.9),
             "erf-bias": lambda: rk.architecture("erf", b_std=0.3, out_std=0.7)}


@pytest.mark.parametrize("arch", sorted(GPU_ARCHS))
def test_a_step_moves_no_tracked_inputs_between_host_and_device(monkeypatch, arch):
    """The gpu engine keeps the tracked inputs, their norms, unit rows and embeddings on the device,
    for every architecture of g: the bytes a step copies each way do not grow with the number of
    tracked inputs, and a step makes at most 4 device-to-host copies (measured 2 with the fused history
    pass: the batch embeddings and the pass's results; the embeddings of all tracked inputs never come
    back).  The embeddings equal refimpl's (NumPy engine) to 1e-11."""
    g, f = GPU_ARCHS[arch]()
    rng = np.random.default_rng(6)
    counts = {}
    count = _copy_counter(counts)
    seen = []
    for n in (400, 1600):
        X, Y = rng.standard_normal((n, 30)), rng.standard_normal((n, 1))
        net = refimpl.RandomNetwork.sample(30, 8, 1, width=100, seed=0, layers_g=g, layers_f=f)
        X_eval = rng.standard_normal((n // 4, 30))
        sim = accel.standin_backend().BottleneckSimulator(net, X, Y, lr=0.5, X_eval=X_eval)
        ref = refimpl.BottleneckSimulator(net, X, Y, lr=0.5, X_eval=X_eval)
        assert sim.engine.stored_route and sim.engine.relu_pairs == (arch == "relu")
        for t in range(3):
            sim.step(np.arange(20 * t, 20 * t + 20))
            ref.step(np.arange(20 * t, 20 * t + 20))
        for Xq in (X, X_eval):
            want = ref.embeddings(Xq)
            np.testing.assert_allclose(sim.embeddings(Xq), want, rtol=1e-11, atol=1e-11 * np.abs(want).max())
        counts.clear()
        with monkeypatch.context() as m:
            m.setattr(standin.NumpyDevice, "asnumpy", count("d2h"))
            m.setattr(standin.NumpyDevice, "asarray", count("h2d"))
            m.setattr(sim.engine, "kernels", None)          # no kernel function on host arrays in a step
            sim.step(np.arange(100, 120))
        seen.append(dict(counts))
    assert seen[0] == seen[1], seen
    assert seen[0]["d2h_bytes"] < 400 * 8 * 8 and seen[0]["h2d_bytes"] < 30 * 20 * 8 * 4, seen
    # one device-to-host copy per step (the batch embeddings come back with the fused pass's results)
    assert seen[0]["d2h"] == 1, seen


@pytest.mark.parametrize("dr,loss,dtype", [(1, "mse", None), (4, "mse", None), (6, "mse", None), (10, "ce", None),
                                            (10, "mse", "float32")])
def test_a_step_copies_back_once(monkeypatch, dr, loss, dtype):
    """One device-to-host copy per step, for every dr: where f and the Xi sums come from one fused pass
    (dr at most the engine's fuse_max_dr) and where J^T chi needs a second pass with chi (larger dr: chi
    is formed in device memory, from the head's device copy, and read there by the second pass).  The
    embeddings after 6 steps equal refimpl's to 1e-11 (float32 history: 1e-5)."""
    rng = np.random.default_rng(9)
    n = 300
    X = rng.standard_normal((n, 12))
    Y = np.eye(dr)[rng.integers(0, dr, n)] if loss == "ce" else rng.standard_normal((n, dr))
    net = refimpl.RandomNetwork.sample(12, 5, dr, width=100, seed=2)
    sim = accel.standin_backend().BottleneckSimulator(net, X, Y, lr=0.5, loss=loss, dtype=dtype)
    ref = refimpl.BottleneckSimulator(net, X, Y, lr=0.5, loss=loss)
    counts = {}
    count = _copy_counter(counts)
    passes = []
    real = xpcore.XPEngine.fused_history_pass

    def spy(self, *args, **kwargs):
        passes.append((args[4], kwargs.get("results")))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(xpcore.XPEngine, "fused_history_pass", spy)
    for t in range(6):
        idx = np.arange(20 * t, 20 * t + 20)
        counts.clear()
        passes.clear()
        with monkeypatch.context() as m:
            m.setattr(standin.NumpyDevice, "asnumpy", count("d2h"))
            m.setattr(standin.NumpyDevice, "asarray", count("h2d"))
            loss_sim = sim.step(idx)
        loss_ref = ref.step(idx)
        assert abs(loss_sim - loss_ref) <= (1e-9 if dtype is None else 1e-5) * abs(loss_ref)
        if t:                                   # step 0 has no history: the batch rows only
            # one copy back; up: the batch's indices and targets only (V, the new history rows and chi are
            # read where the step formed them)
            assert counts["d2h"] == 1 and counts["h2d"] == 2, (t, counts)
            assert passes == ([(1, "device")] if dr <= sim.engine.fuse_max_dr else [(0, "device"), (2, "device")])
    sim.engine.device_step = False          # the host route of the head (benchmarks): one copy per pass
    counts.clear()
    with monkeypatch.context() as m:
        m.setattr(standin.NumpyDevice, "asnumpy", count("d2h"))
        sim.step(np.arange(120, 140))
    ref.step(np.arange(120, 140))
    assert counts["d2h"] == (1 if dr <= sim.engine.fuse_max_dr else 2), counts
    want = ref.embeddings(X)
    tol = 1e-11 if dtype is None else 1e-5
    np.testing.assert_allclose(sim.embeddings(X), want, rtol=tol, atol=tol * np.abs(want).max())


def test_a_step_that_diverges_on_the_device_raises_and_keeps_the_state():
    """The device route of a step checks the loss it copies back: a non-finite loss raises DivergenceError
    before anything is updated (the history and the embeddings are those before the step)."""
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((100, 8)), rng.standard_normal((100, 10))
    net = refimpl.RandomNetwork.sample(8, 4, 10, width=50, seed=1)
    sim = accel.standin_backend().BottleneckSimulator(net, X, Y, lr=0.5)
    for t in range(2):
        sim.step(np.arange(20 * t, 20 * t + 20))
    before = (sim.engine.history.M, sim.embeddings(X).copy())
    sim.Y[40:60] = np.inf
    with pytest.raises(refimpl.dynamics.DivergenceError, match="loss is"):
        sim.step(np.arange(40, 60))
    assert sim.engine.history.M == before[0] and np.array_equal(sim.embeddings(X), before[1])


@pytest.mark.parametrize("arch", ["relu", "erf-deep"])
def test_infinite_step_keeps_tracked_inputs_on_the_device(arch, monkeypatch):
    """Without bottleneck the gpu engine keeps the tracked inputs (norms, unit rows) and outputs on the
    device: a step's copies do not grow with the number of tracked inputs, and its outputs equal
    refimpl's InfiniteSimulator (NumPy engine) to 1e-12 over a few steps, with momentum too."""
    rng = np.random.default_rng(8)
    g, f = (rk.Layers.make("relu"), rk.Layers.make("relu")) if arch == "relu" else \
        rk.architecture("erf", hidden_g=2, w_std=1.2, out_std=0.6)
    seen = []
    for n in (300, 1200):
        X, Y = rng.standard_normal((n, 20)), rng.standard_normal((n, 2))
        X[3] = 2.0 * X[4]                                   # a parallel pair
        X_eval = rng.standard_normal((n // 4, 20))
        kw = dict(lr=0.5, X_eval=X_eval, init="network", width=200, seed=1, layers_g=g, layers_f=f)
        sim = accel.standin_backend().InfiniteSimulator(X, Y, momentum=0.5, **kw)
        ref = refimpl.InfiniteSimulator(X, Y, momentum=0.5, **kw)
        assert sim.engine.stored_route and isinstance(sim._tracked[0], gpu.DeviceTracked)
        for t in range(3):
            idx = np.arange(20 * t, 20 * t + 20)
            np.testing.assert_allclose(sim.step(idx), ref.step(idx), rtol=1e-12)
        counts = {}
        count = _copy_counter(counts)
        with monkeypatch.context() as m:
            m.setattr(standin.NumpyDevice, "asnumpy", count("d2h"))
            m.setattr(standin.NumpyDevice, "asarray", count("h2d"))
            m.setattr(sim.engine, "kernels", None)          # no kernel function on host arrays in a step
            sim.step(np.arange(100, 120))
        ref.step(np.arange(100, 120))
        seen.append(counts)
        for Xq in (X, X_eval):
            want = ref.outputs(Xq)
            np.testing.assert_allclose(sim.outputs(Xq), want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    assert seen[0] == seen[1], seen
    assert seen[0]["h2d_bytes"] < 20 * 20 * 8 * 4 and seen[0]["d2h_bytes"] < 20 * 2 * 8 * 4, seen


def test_train_backend_gpu_with_resume_on_the_standin(tmp_path, standin_gpu):
    """cli.py train --backend gpu end to end (and --resume) on the stand-in; float64 metrics
    equal the cpu backend's to 1e-10."""
    runner = CliRunner()
    common = ["train", "--train-size", "60", "--test-size", "20", "--width", "4",
              "--init-width", "300", "--batch-size", "10", "--eval-every", "6", "--quiet"]
    res = runner.invoke(cli.cli, common + ["--steps", "12", "--backend", "cpu", "--out", str(tmp_path / "cpu")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli.cli, common + ["--steps", "6", "--backend", "gpu", "--out", str(tmp_path / "gpu")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli.cli, ["train", "--resume", str(tmp_path / "gpu"), "--steps", "12", "--quiet"])
    assert res.exit_code == 0, res.output

    def losses(run):
        lines = (tmp_path / run / "metrics.csv").read_text().splitlines()
        col = lines[0].split(",").index("test_loss")
        return np.array([float(line.split(",")[col]) for line in lines[1:]])

    ref, got = losses("cpu"), losses("gpu")
    assert got.shape == ref.shape == (3,)
    np.testing.assert_allclose(got, ref, rtol=1e-10)


@pytest.mark.parametrize("tensor_cores", ["0", "1"])
def test_train_records_the_fp64_route_of_the_gpu_backend(tmp_path, standin_gpu, monkeypatch, tensor_cores):
    """config.json of a gpu run says whether its float64 passes ran on the FP64 tensor cores
    (BOTTLENECK_TENSOR_CORES=1 on a device that has them: the stand-in is a compute capability 9.0 one); the
    test loss is the cpu backend's to 1e-10 either way."""
    monkeypatch.setenv(xpcore.TENSOR_CORES_ENV, tensor_cores)
    gpu.reset()
    common = ["train", "--train-size", "60", "--test-size", "20", "--width", "4", "--init-width", "300",
              "--batch-size", "10", "--eval-every", "4", "--steps", "8", "--quiet"]
    for be in ("cpu", "gpu"):
        res = CliRunner().invoke(cli.cli, common + ["--backend", be, "--out", str(tmp_path / be)])
        assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "gpu" / "config.json").read_text())
    assert meta["engine"] == {"fp64_tensor_cores": tensor_cores == "1"}
    assert "engine" not in json.loads((tmp_path / "cpu" / "config.json").read_text())
    loss = [np.loadtxt(tmp_path / be / "metrics.csv", delimiter=",", skiprows=1,
                       usecols=(open(tmp_path / be / "metrics.csv").readline().split(",").index("test_loss"),))
            for be in ("cpu", "gpu")]
    np.testing.assert_allclose(loss[1], loss[0], rtol=1e-10)


def test_gpu_path_is_a_golden_target():
    labels = [label for label, _, _ in accel.golden_targets()]
    assert "gpu-path/numpy/float64" in labels and "gpu-path/numpy/float32" in labels
    row = golden.check([t for t in accel.golden_targets() if t[0] == "gpu-path/numpy/float64"],
                       cases=["kernels"], log=None)
    assert all(r["ok"] for r in row)


@pytest.mark.parametrize("backend", ["cpu", "gpu-path"])
def test_jacobian_at_many_points_matches_refimpl(backend, standin_gpu):
    """J_t at query points from one history pass (mode 1), dr = 3, against the reference engine's."""
    be = accel.get_backend("gpu" if backend == "gpu-path" else "cpu")
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((40, 5)), rng.standard_normal((40, 3))
    net = refimpl.RandomNetwork.sample(5, 6, 3, width=200, seed=1)
    sim = be.BottleneckSimulator(net, X, Y, lr=0.5, lr_f=0.7)
    for t in range(8):
        sim.step(np.arange(t, t + 5))
    Z = np.concatenate([sim.embeddings(X), rng.standard_normal((500, 6))])
    ref_sim = refimpl.BottleneckSimulator(net, X, Y, lr=0.5, lr_f=0.7)
    ref_sim.load_state_dict(sim.state_dict())
    ref = ref_sim.jacobian(Z)
    got = sim.jacobian(Z)
    assert got.shape == (540, 3, 6)
    assert np.linalg.norm(got - ref) <= 1e-12 * np.linalg.norm(ref)


_CUDA_MOCK = r"""
#include <cmath>
using std::fabs; using std::sqrt; using std::atan2;
#define __device__
#define __forceinline__ inline
template<typename X> struct CArray { X* p; X& operator[](long long i) const { return p[i]; } };
inline double atomicAdd(double* a, double v) { double o = *a; *a += v; return o; }
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.parametrize("arch", sorted(pair_source.ARCH))
def test_cuda_target_source_is_valid_cpp(arch):
    """What CuPy hands to NVRTC (C++): the "cuda" preamble and both loop bodies, with raw arrays as a
    CArray-like class and outputs as references (as CuPy declares them), pass g++ -fsyntax-only."""
    ctype = {"float64": "double", "float32": "float", "int64": "long long"}
    for T in ("float", "double"):
        for ins, outs, op in ((pair_source.HISTORY_IN, pair_source.HISTORY_OUT, pair_source.HISTORY_OP),
                              (pair_source.PAIR_IN, pair_source.PAIR_OUT, pair_source.PAIR_OP)):
            args = []
            for k, (raw, typ, name) in enumerate(standin._parse(ins) + standin._parse(outs)):
                c = T if typ == "T" else ctype[typ]
                out = k >= len(standin._parse(ins))
                args.append(f"CArray<{c}> {name}" if raw else (f"{c} &{name}" if out else f"const {c} {name}"))
            src = (_CUDA_MOCK + pair_source.preamble(arch, "cuda") + f"typedef {T} T;\n"
                   f"void k({', '.join(args)}) {{ for (long long i = 0; i < 4; ++i) {{ {op} }} }}\n")
            res = subprocess.run(["g++", "-std=c++11", "-fsyntax-only", "-x", "c++", "-"], input=src,
                                 text=True, capture_output=True)
            assert res.returncode == 0, res.stderr[:2000]


def test_gpu_path_trajectories_run_the_fused_kernel(monkeypatch, standin_gpu):
    """The golden trajectories of the gpu path go through the fused kernel (accel.fused_source run by
    the CUDA harness), never through the unfused fallback, and pass their tolerances."""
    from accel import fused_source

    def refuse(*args, **kwargs):
        raise AssertionError("the unfused history pass was used")

    monkeypatch.setattr(xpcore.XPEngine, "gemm_history_pass", refuse)
    calls = []
    real = xpcore.XPEngine.fused_history_pass

    def counting(self, *args, **kwargs):
        calls.append(args[4])                                       # the mode
        return real(self, *args, **kwargs)

    monkeypatch.setattr(xpcore.XPEngine, "fused_history_pass", counting)
    targets = [t for t in accel.golden_targets() if t[0].startswith("gpu-path/")]
    rows = golden.check(targets, cases=["bottleneck_d10_full", "linear_d5_mini"], log=None)
    assert len(rows) == 4 and all(r["ok"] for r in rows), rows
    assert 1 in calls and len(calls) > 400
    launches = accel.gpu.engine("numpy").last_launches
    assert launches["h2d"] == 1 and launches["d2h"] == 1 and launches["kernels"] >= 2
    assert fused_source.plan(20, 4000, 10, 3, 1, np.float64, "relu")["chunks"] == [(0, 3, 0, 10)]


def test_gpu_probe_runs_the_fused_history_kernel(monkeypatch):
    """The probe behind get_backend("gpu") compiles and runs the pair kernel and the fused history
    pass once, and names the fused kernel when it is broken."""
    assert gpu.kernel_check(standin.numpy_device) is None

    def broken(self, *args, **kwargs):
        raise RuntimeError("nvrtc: error: planted")

    monkeypatch.setattr(xpcore.XPEngine, "fused_history_pass", broken)
    assert gpu.kernel_check(standin.numpy_device) == \
        "CuPy works but the fused history kernel fails (RuntimeError: nvrtc: error: planted)"
    monkeypatch.setattr(xpcore.XPEngine, "fused_history_pass", lambda self, *a, **k: (np.zeros((1, 1)),))
    assert "gives a wrong value (0.0" in gpu.kernel_check(standin.numpy_device)
