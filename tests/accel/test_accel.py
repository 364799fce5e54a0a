"""accel: backend selection, the shared formulas, the history passes (cpu and the GPU code on
NumPy) against refimpl, blocking, memory, history growth, float32 near lam = 1, checkpoints."""

import math
import tracemalloc

import numpy as np
import pytest
from click.testing import CliRunner

import accel
import cli
import refimpl
from accel import cpu, formulas, gpu
from accel._simbase import ArrayHistory
from refimpl import kernels as rk

KERNEL_IMPLS = {"cpu": cpu, "gpu-path/numpy": gpu.kernels("numpy")}
#: The engines every simulator test runs on: the reference, Numba, the GPU code on the stand-in.
ENGINES = ["numpy", "cpu", "gpu-path/numpy"]
FAST_ENGINES = ENGINES[1:]


def backend(name, dtype="float64"):
    """The backend ``name`` of ENGINES (the GPU code through accel.standin_backend)."""
    return accel.standin_backend(dtype) if name == "gpu-path/numpy" else accel.get_backend(name, dtype)


# ------------------------------------------------------------------ backend selection

def test_get_backend_names_and_errors():
    net, X, Y = _problem()
    sim = accel.get_backend("numpy").BottleneckSimulator(net, X, Y)
    assert type(sim) is refimpl.BottleneckSimulator and type(sim.engine) is refimpl.engine.BottleneckEngine
    b = accel.get_backend("cpu", "float32")
    assert b.name == "cpu" and b.dtype == "float32"
    sim = b.BottleneckSimulator(net, X, Y)
    assert type(sim) is refimpl.BottleneckSimulator and type(sim.engine) is cpu.BottleneckEngine
    assert sim.history.dtype == np.float32 and b.BottleneckSimulator(net, X, Y, dtype="float64").history.dtype == np.float64
    assert type(b.InfiniteSimulator(X, Y).engine) is cpu.InfiniteEngine
    assert type(backend("gpu-path/numpy").BottleneckSimulator(net, X, Y).engine) is gpu.BottleneckEngine
    for name in accel.KERNEL_NAMES:
        assert callable(getattr(b, name))
    with pytest.raises(ValueError, match="backend"):
        accel.get_backend("tpu")
    with pytest.raises(ValueError, match="dtype"):
        accel.get_backend("cpu", "float16")
    with pytest.raises(ValueError, match="float64 only"):
        accel.get_backend("numpy", "float32")
    expected = "gpu" if gpu.available() else "cpu"
    assert accel.get_backend("auto").name == expected


@pytest.mark.skipif(gpu.available(), reason="a GPU is available here")
def test_gpu_unavailable_is_one_line():
    with pytest.raises(accel.BackendUnavailable) as exc:
        accel.get_backend("gpu")
    assert "\n" not in str(exc.value) and ("CuPy" in str(exc.value))
    res = CliRunner().invoke(cli.cli, ["train", "--backend", "gpu", "--steps", "2", "--train-size", "40",
                                       "--test-size", "10", "--out", "unused_run_dir"])
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    errors = [line for line in res.output.strip().splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "gpu" in errors[0] and "CuPy" in errors[0]       # the reason, in one line
    assert res.output.strip().splitlines()[-1] == errors[0]


# ------------------------------------------------------------------ shared formulas

def test_asin_polynomial_within_an_ulp():
    x = np.linspace(-0.5, 0.5, 20001)
    got = formulas.numpy_formulas["asin_small"](x)
    ref = np.array([math.asin(v) for v in x])
    assert np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-300)) < 2.5e-16


def test_geometry_matches_arccos_and_halves():
    F = formulas.numpy_formulas
    lam = np.linspace(-1 + formulas.NEAR, 1 - formulas.NEAR, 10001)
    theta, lam2, s = F["geometry_from_cos"](lam)
    np.testing.assert_allclose(theta, np.arccos(lam), rtol=4e-16, atol=0)
    np.testing.assert_allclose(s, np.sqrt(1 - lam * lam), rtol=2e-15)
    # explicit half-angle route against refimpl's atan2 for tiny and near-pi angles
    rng = np.random.default_rng(0)
    for a in (1e-12, 1e-8, 1e-4, 0.3, np.pi - 1e-3, np.pi - 1e-9):
        x = rng.standard_normal(7)
        xh = x / np.linalg.norm(x)
        u = rng.standard_normal(7)
        u -= (u @ xh) * xh
        u /= np.linalg.norm(u)
        y = np.cos(a) * xh + np.sin(a) * u
        th, lm, sn = F["geometry_from_halves"](np.sum((xh - y) ** 2), np.sum((xh + y) ** 2))
        ref = rk.pair_angles(x[None], y[None])[2].item()
        assert abs(th - ref) <= 1e-15 * max(ref, 1e-300) + 5e-16, a


@pytest.mark.parametrize("impl", list(KERNEL_IMPLS))
def test_kernels_match_refimpl_near_parallel(impl):
    kern = KERNEL_IMPLS[impl]
    rng = np.random.default_rng(1)
    X = rng.standard_normal((9, 6))
    near = X[:4] * (1 + rng.standard_normal((4, 1)) * 1e-3) + 1e-7 * rng.standard_normal((4, 6))
    Y = np.concatenate([rng.standard_normal((5, 6)), near, -X[4:6], X[6:7] * 3.0, np.zeros((1, 6))])
    for name in ("nngp", "sigmadot", "ntk", "ntk_inf"):
        np.testing.assert_allclose(getattr(kern, name)(X, Y), getattr(rk, name)(X, Y), rtol=1e-11, atol=1e-15)
    a, b = kern.xi_coefficients(X, Y)
    ra, rb = rk.xi_coefficients(X, Y)
    np.testing.assert_allclose(a, ra, rtol=1e-10)
    np.testing.assert_allclose(b, rb, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(kern.xi(X, Y, "linear", 3), rk.xi(X, Y, "linear", 3), rtol=1e-14)
    with pytest.raises(ValueError, match="columns"):
        kern.ntk(X, Y[:, :3])


# ------------------------------------------------------------------ history passes

def _history(M, d, dr, rng, dtype=np.float64):
    h = ArrayHistory(d, dr, dtype=dtype)
    base = rng.standard_normal((50, d))
    P = base[rng.integers(0, 50, M)] + 1e-3 * rng.standard_normal((M, d))
    h.append(P, rng.standard_normal((M, dr)))
    return h, base


def _ref_pass(Z, P, C, chi):
    """refimpl's sums: f = sum K C and sum_m (C_m . chi_b) Xi(Z_b, P_m)."""
    f = rk.ntk(Z, P) @ C
    alpha, beta = rk.xi_coefficients(Z, P)
    W = chi @ C.T
    _, Zh = rk.unit_rows(Z)
    return f, (W * alpha) @ P + np.sum(W * beta, axis=1)[:, None] * Zh


def _pass(impl, Z, h, mode, chi, **kw):
    if impl == "cpu":
        return cpu.history_pass(Z, h.P, h.norms, h.C, mode, chi, "relu", Z.shape[1], 2, dtype=h.P.dtype, **kw)
    return gpu.engine("numpy").history_pass(Z, h.P, h.norms, h.C, mode, chi, "relu", float(Z.shape[1]), 2, **kw)


@pytest.mark.parametrize("dr", [3, cpu.WIDE_DR + 4])        # the cpu pass sums K C in two orders
@pytest.mark.parametrize("impl", ["cpu", "gpu-path/numpy"])
def test_history_pass_modes_match_refimpl(impl, dr):
    rng = np.random.default_rng(2)
    h, base = _history(3000, 7, dr, rng)
    Z = np.concatenate([base[:6] + 1e-4 * rng.standard_normal((6, 7)), rng.standard_normal((4, 7))])
    chi = rng.standard_normal((10, dr))
    f_ref, jt_ref = _ref_pass(Z, h.P, h.C, chi)
    f0, _, _ = _pass(impl, Z, h, 0, None)
    f1, T, bsum = _pass(impl, Z, h, 1, None)
    _, T2, b2 = _pass(impl, Z, h, 2, chi)
    _, Zh = rk.unit_rows(Z)
    jt1 = np.einsum("br,brk->bk", chi, T) + np.sum(chi * bsum, axis=1)[:, None] * Zh
    jt2 = T2[:, 0] + b2[:, 0][:, None] * Zh
    for got, ref in ((f0, f_ref), (f1, f_ref), (jt1, jt_ref), (jt2, jt_ref)):
        assert np.linalg.norm(got - ref) <= 1e-12 * np.linalg.norm(ref)


@pytest.mark.parametrize("impl", ["cpu", "gpu-path/numpy"])
def test_history_pass_pairwise_at_tiny_and_near_pi_angles(impl):
    """Each pair on its own (a one-row history): nearly parallel and anti-parallel pairs at angles
    down to 1e-9 from 0 and pi (the explicit-difference route, MATH §2.1), a zero row and an
    ordinary pair, against refimpl's K and Xi.

    Xi's alpha carries 1/sin(theta), so a representation error eps in the inputs moves Xi by about
    eps/sin(theta) relative: the tolerance is that bound (refimpl is off from a long-double
    evaluation by 3.5e-9 at theta = 1e-8 and 1.3e-7 at pi - 1e-9; this pass by 2.8e-9 and 2.5e-7).
    """
    rng = np.random.default_rng(12)
    d = 9
    x = rng.standard_normal(d)
    xh = x / np.linalg.norm(x)
    u = rng.standard_normal(d)
    u -= (u @ xh) * xh
    u /= np.linalg.norm(u)
    cases = [(np.zeros(d), 1.0), (rng.standard_normal(d), 1.0)]
    for a in (0.0, 1e-12, 1e-8, 1e-4, 0.05, 0.3, np.pi - 0.3, np.pi - 1e-4, np.pi - 1e-9):
        cases.append((2.5 * (np.cos(a) * xh + np.sin(a) * u), np.sin(a)))
    chi = np.array([[0.7]])
    eps = np.finfo(float).eps
    for y, s in cases:
        h = ArrayHistory(d, 1)
        h.append(y[None], np.array([[1.3]]))
        f_ref, jt_ref = _ref_pass(x[None], h.P, h.C, chi)
        f, _, _ = _pass(impl, x[None], h, 0, None)
        _, T, b = _pass(impl, x[None], h, 2, chi)
        jt = T[:, 0] + b[:, 0][:, None] * xh[None]
        scale = np.linalg.norm(x) * np.linalg.norm(y) / d * 1.3
        np.testing.assert_allclose(f, f_ref, rtol=1e-14, atol=1e-15 * scale)
        tol = 1e-13 + 20 * eps / max(s, 1e-300) if s > 1e-12 else 1e-13   # below 1e-12: Xi's ridge (a := 0)
        assert np.abs(jt - jt_ref).max() <= tol * np.abs(jt_ref).max(), (s, np.abs(jt - jt_ref).max())


def test_cpu_pass_independent_of_blocking():
    rng = np.random.default_rng(3)
    h, base = _history(5000, 5, 2, rng)
    Z = base[:40] + 1e-5
    ref = _pass("cpu", Z, h, 1, None)
    for qb, hb in ((1, 7), (13, 100), (64, 4096)):
        got = _pass("cpu", Z, h, 1, None, qblock=qb, hblock=hb)
        for a, b in zip(got, ref):
            assert np.linalg.norm(a - b) <= 1e-13 * np.linalg.norm(b)


@pytest.mark.parametrize("impl", ["cpu"])
def test_history_pass_memory_is_bounded(impl):
    """No (queries x M) temporaries: the pass's peak allocation does not grow with M.
    (The GPU path's blocks are sized by free device memory: tests/accel/test_gpu_path.py.)"""
    rng = np.random.default_rng(4)
    B = 20
    peaks = {}
    for M in (50_000, 400_000):
        h, base = _history(M, 4, 1, rng)
        Z = base[:B] + 1e-3
        _pass(impl, Z, h, 1, None)            # compile / warm
        tracemalloc.start()
        _pass(impl, Z, h, 1, None)
        _pass(impl, Z, h, 2, rng.standard_normal((B, 1)))
        peaks[M] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[400_000] < 1.3 * peaks[50_000] + 2**20, peaks
    assert peaks[400_000] < B * 400_000 * 8 / 2, peaks      # B x M float64 would be 64 MB


@pytest.mark.parametrize("where", ["numpy", "gpu-path/numpy"])
def test_history_grows_by_doubling(where):
    """One store over NumPy and the stand-in (CuPy: tests/accel/test_gpu.py): capacity doubles,
    rows and their float64 norms read back, float32 rows stay float32."""
    from accel import standin
    xp = np if where == "numpy" else standin.numpy_device
    h = ArrayHistory(3, 1, capacity=4, xp=xp)
    buffers = set()
    rng = np.random.default_rng(5)
    rows = []
    for _ in range(300):
        P = rng.standard_normal((5, 3))
        h.append(P, np.ones((5, 1)))
        rows.append(P)
        buffers.add(id(h.store_P))
    assert h.M == 1500 and len(buffers) <= 10            # 4 -> 2048 in 9 doublings
    assert h.store_P.shape[0] == h.store_C.shape[0] == h.store_norms.shape[0] < 2 * 1500 + 8
    np.testing.assert_array_equal(h.P, np.concatenate(rows))
    np.testing.assert_allclose(h.norms, np.linalg.norm(h.P, axis=1), rtol=1e-15)
    h32 = ArrayHistory(3, 1, dtype=np.float32, xp=xp)
    h32.append(rows[0], np.ones((5, 1)))
    assert h32.P.dtype == np.float32
    np.testing.assert_allclose(h32.norms, np.linalg.norm(h32.P.astype(np.float64), axis=1), rtol=1e-15)


@pytest.mark.parametrize("impl", ["cpu", "gpu-path/numpy"])
def test_history_pass_of_the_linear_head(impl):
    """Linear head (K = L z.p / m, Xi = L p / m, beta = 0) with L = 2, m = d, all modes."""
    rng = np.random.default_rng(9)
    h, base = _history(2000, 8, 2, rng)
    P, C = h.P, h.C
    Z = np.concatenate([P[:5] * (1 + 1e-9), -P[5:7], rng.standard_normal((3, 8))])
    chi = rng.standard_normal((10, 2))
    if impl == "cpu":
        run = lambda mode, c: cpu.history_pass(Z, P, h.norms, C, mode, c, "linear", 8.0, 2.0)    # noqa: E731
    else:
        run = lambda mode, c: gpu.engine("numpy").history_pass(Z, P, h.norms, C, mode, c, "linear", 8.0, 2.0)  # noqa: E731
    f, T, b = run(1, None)
    np.testing.assert_allclose(f, 2 * Z @ P.T @ C / 8, rtol=1e-12)
    np.testing.assert_allclose(T, np.broadcast_to(2 * (C.T @ P) / 8, T.shape), rtol=1e-12)
    assert np.all(b == 0)
    _, T2, b2 = run(2, chi)
    np.testing.assert_allclose(T2[:, 0], 2 * (chi @ C.T) @ P / 8, rtol=1e-12)
    assert np.all(b2 == 0)


def test_float32_error_near_lam_one():
    """float32 history: queries at angle ~1e-4 from the history's own points (lam ~ 1 - 5e-9).

    Measured (docs/BENCHMARKS.md): J^T chi 1.6e-6, f 1e-7 (cpu) / 9e-7 (array path)."""
    rng = np.random.default_rng(6)
    h64, base = _history(4000, 10, 1, rng)
    h32 = ArrayHistory(10, 1, dtype=np.float32)
    h32.append(h64.P, h64.C)
    P0 = h64.P[:20]
    Z = P0 + 1e-4 * np.linalg.norm(P0, axis=1, keepdims=True) * rng.standard_normal((20, 10)) / np.sqrt(10)
    chi = rng.standard_normal((20, 1))
    f_ref, jt_ref = _ref_pass(Z, h64.P, h64.C, chi)
    for impl in ("cpu", "gpu-path/numpy"):
        f, _, _ = _pass(impl, Z, h32, 0, None)
        _, T, b = _pass(impl, Z, h32, 2, chi)
        jt = T[:, 0] + b[:, 0][:, None] * rk.unit_rows(Z)[1]
        ef = np.linalg.norm(f - f_ref) / np.linalg.norm(f_ref)
        ej = np.linalg.norm(jt - jt_ref) / np.linalg.norm(jt_ref)
        assert ef < 1e-5 and ej < 1e-5, (impl, ef, ej)
        assert ef > 1e-10                                   # it is float32


# ------------------------------------------------------------------ simulators

def _problem(d=4, dr=2, N=30, seed=0, act="relu"):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, 5))
    Y = rng.standard_normal((N, dr))
    net = refimpl.RandomNetwork.sample(5, d, dr, width=200, seed=seed, activation=act)
    return net, X, Y


@pytest.mark.parametrize("name", FAST_ENGINES)
def test_step_from_one_pass_equals_two_passes(name):
    """head_at_batch: f and J^T chi from one mode-1 pass (dr <= fuse_max_dr) or from a mode-0 and a
    mode-2 pass give the same step; no state is kept between the calls (MATH §4)."""
    net, X, Y = _problem()
    sims = [backend(name).BottleneckSimulator(net, X, Y, lr=0.5) for _ in range(2)]
    assert sims[0].engine.fuse_max_dr >= 2
    sims[1].engine.fuse_max_dr = 0
    for t in range(6):
        losses = [sim.step(np.arange(t, t + 6)) for sim in sims]
        assert losses[0] == pytest.approx(losses[1], rel=1e-13)
    Z = sims[0].embeddings(X[:6])
    Y6 = Y[:6]
    one, two = sims[0].head_at_batch(Z, Y6), sims[1].head_at_batch(Z, Y6)
    np.testing.assert_allclose(one[2], two[2], rtol=1e-12)
    np.testing.assert_array_equal(sims[0].head_at_batch(Z, Y6)[2], one[2])       # nothing cached
    ref = refimpl.BottleneckSimulator(net, X, Y, lr=0.5)
    ref.load_state_dict(sims[0].state_dict())
    np.testing.assert_allclose(one[2], ref.head_at_batch(Z, Y6)[2], rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", FAST_ENGINES)
def test_checkpoint_resume_is_exact(name, dtype):
    be = backend(name, dtype)
    net, X, Y = _problem(dr=1)
    a = be.BottleneckSimulator(net, X, Y, lr=0.5, X_eval=X[:5] + 0.1)
    b = be.BottleneckSimulator(net, X, Y, lr=0.5, X_eval=X[:5] + 0.1)
    for t in range(6):
        a.step(np.arange(t, t + 4))
    state = {k: np.array(v) for k, v in a.state_dict().items()}
    assert state["history_P"].dtype == np.dtype(dtype)
    b.load_state_dict(state)
    for t in range(6, 10):
        assert a.step(np.arange(t, t + 4)) == b.step(np.arange(t, t + 4))
    np.testing.assert_array_equal(a.outputs(X), b.outputs(X))


def _shifted_sparse(n, m, rng):
    """Rows like centred images: sparse rows minus a mean row (dense), plus a zero row, a row equal
    to another, a nearly parallel and a nearly anti-parallel one."""
    R = np.where(rng.random((n, m)) < 0.2, rng.random((n, m)), 0.0)
    X = R - R.mean(axis=0)
    X[1] = 0.0
    X[2] = 3.0 * X[3]
    X[4] = X[5] * (1 + 1e-9) + 1e-9 * rng.standard_normal(m)
    X[6] = -X[7] + 1e-8 * rng.standard_normal(m)
    return X


@pytest.mark.parametrize("data", ["shifted-sparse", "dense"])
@pytest.mark.parametrize("name", FAST_ENGINES)
def test_tracked_update_matches_the_kernel_functions(name, data):
    """update_tracked from what the engine stores once per tracked set (cpu: norms, column shift and
    nonzero pattern; gpu: device copies, norms, unit rows) equals values - lr ntk(X, X[idx]) @ V."""
    rng = np.random.default_rng(11)
    X = _shifted_sparse(300, 40, rng) if data == "shifted-sparse" else rng.standard_normal((300, 40))
    eng = backend(name).engines()[0](rk.Layers.make("relu"), rk.Layers.make("relu"), 3, 1)
    values = rng.standard_normal((300, 3))
    tr = eng.track(X, values.copy())
    if name == "cpu":
        density = tr.nz_idx.size / X.size
        assert density < 0.3 if data == "shifted-sparse" else density == 1.0
    idx = np.array([2, 3, 4, 5, 6, 7, 1, 0, 9, 10, 11])
    V = rng.standard_normal((idx.size, 3))
    eng.update_tracked(tr, tr, idx, V, 0.7)
    want = values - 0.7 * rk.ntk(X, X[idx]) @ V
    np.testing.assert_allclose(tr.values, want, rtol=1e-12, atol=1e-13 * np.abs(want).max())
    np.testing.assert_array_equal(tr.rows(idx), tr.values[idx])


INF_ARCHS = {"relu": lambda: (rk.Layers.make("relu"), rk.Layers.make("relu")),
             "relu-deep-scaled": lambda: rk.architecture("relu", hidden_g=2, hidden_f=3, w_std=(1.3, 0.8),
                                                         out_std=(0.4, 0.3)),
             "relu-bias": lambda: rk.architecture("relu", b_std=0.2),
             "erf-scaled": lambda: rk.architecture("erf", out_std=0.5)}


@pytest.mark.parametrize("arch", sorted(INF_ARCHS))
@pytest.mark.parametrize("data", ["shifted-sparse", "dense"])
def test_infinite_tracked_update_matches_ntk_inf(data, arch, monkeypatch):
    """cpu InfiniteEngine: NTK_inf against tracked inputs from the stored norms and nonzero pattern
    equals refimpl's ntk_inf, with zero rows, parallel and nearly (anti-)parallel pairs.  ReLU without
    biases (any depth, scales): the one-pass kernel; others: half-angles by _halves_rows, then the composed
    recursion, where blocks of rows (MAX_PAIRS) change nothing."""
    from accel import archkernels
    rng = np.random.default_rng(12)
    X = _shifted_sparse(300, 40, rng) if data == "shifted-sparse" else rng.standard_normal((300, 40))
    g, f = INF_ARCHS[arch]()
    eng = cpu.InfiniteEngine(g, f, 0.7, 1.3)
    assert eng.fused_relu == (arch.startswith("relu") and arch != "relu-bias")
    values = rng.standard_normal((300, 2))
    idx = np.array([2, 3, 4, 5, 6, 7, 1, 0, 9, 10, 11])
    chi = rng.standard_normal((idx.size, 2))
    want = values - rk.ntk_inf(X, X[idx], lr_f=0.7, lr_g=1.3, layers_g=g, layers_f=f) @ chi
    tr = eng.track(X, values.copy())
    eng.update_tracked(tr, tr, idx, chi)
    np.testing.assert_allclose(tr.values, want, rtol=1e-12, atol=1e-13 * np.abs(want).max())
    monkeypatch.setattr(archkernels, "MAX_PAIRS", 5 * idx.size)            # blocks of 5 rows
    tr2 = eng.track(X, values.copy())
    eng.update_tracked(tr2, tr2, idx, chi)
    np.testing.assert_allclose(tr2.values, tr.values, rtol=1e-14, atol=1e-15 * np.abs(want).max())
    # a rate and momentum go through Tracked.descend with the same increment
    tr3 = eng.track(X, values.copy())
    eng.update_tracked(tr3, tr3, idx, chi, rate=0.5, beta=0.9)
    np.testing.assert_allclose(tr3.values, values + 0.5 * (want - values), rtol=1e-12,
                               atol=1e-13 * np.abs(want).max())
    assert tr3.velocity is not None


def test_infinite_fused_relu_pass_keeps_every_digit_on_the_diagonal():
    """The one-pass NTK_inf kernel at x = y (the near-parallel route, theta = 0) and at -x equals refimpl's
    ntk_inf to a few ulps: NTK_inf(x, x) has no cancellation in either (MATH §2.1)."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((50, 30))
    X = np.vstack([X, -X[:5], 2.5 * X[:5]])
    g, f = rk.architecture("relu", hidden_g=2, w_std=1.1, out_std=0.7)
    eng = cpu.InfiniteEngine(g, f, 1.0, 1.0)
    assert eng.fused_relu
    idx = np.arange(5)
    for r in range(idx.size):
        chi = np.zeros((idx.size, 1))
        chi[r, 0] = -1.0                                   # values + NTK_inf(X, X[r])
        tr = eng.track(X, np.zeros((X.shape[0], 1)))
        eng.update_tracked(tr, tr, idx, chi)
        want = rk.ntk_inf(X, X[idx[r:r + 1]], layers_g=g, layers_f=f)[:, 0]
        np.testing.assert_allclose(tr.values[:, 0], want, rtol=8e-15, atol=0)


def test_train_driver_runs_on_cpu_backend(tmp_path):
    """cli.py train --backend cpu gives the numpy backend's metrics (float64)."""
    runner = CliRunner()
    common = ["train", "--train-size", "60", "--test-size", "20", "--steps", "12", "--width", "4",
              "--init-width", "300", "--batch-size", "10", "--eval-every", "6", "--quiet"]
    outs = {}
    for be in ("numpy", "cpu"):
        res = runner.invoke(cli.cli, common + ["--backend", be, "--out", str(tmp_path / be)])
        assert res.exit_code == 0, res.output
        lines = (tmp_path / be / "metrics.csv").read_text().splitlines()
        header = lines[0].split(",")
        col = header.index("test_loss")
        outs[be] = np.array([float(l.split(",")[col]) for l in lines[1:]])
    np.testing.assert_allclose(outs["cpu"], outs["numpy"], rtol=1e-10)


# ------------------------------------------------------------------ layer scales on the fast path

SCALED = {"relu": rk.Layers.make("relu", 2, 1.5, 0.0, 0.3), "linear": rk.Layers.make("linear", 3, 0.8, 0.0, 0.5)}


def test_kernel_scale_is_the_product_of_the_squared_stds():
    assert SCALED["relu"].kernel_scale == pytest.approx((1.5 * 0.3) ** 2, rel=1e-15)
    assert SCALED["linear"].kernel_scale == pytest.approx(0.8 ** 4 * 0.5 ** 2, rel=1e-15)
    assert rk.Layers.make("relu").kernel_scale == 1.0
    for spec in (rk.Layers.make("relu", 2, 1.0, 0.1, 1.0), rk.Layers.make("relu", 3, 1.2, 0.0, 0.5),
                 rk.Layers.make("erf", 2, 1.0, 0.0, 0.5)):
        assert spec.kernel_scale is None


@pytest.mark.parametrize("impl", list(KERNEL_IMPLS))
@pytest.mark.parametrize("act", sorted(SCALED))
def test_scaled_kernels_match_the_layer_recursion(impl, act, monkeypatch):
    """nngp, sigmadot, ntk and Xi of scaled networks from the closed forms times the scale, against
    refimpl's layer recursion; the array-module recursion of accel is not used."""
    from accel import archkernels
    monkeypatch.setattr(archkernels, "pair_kernel", lambda *a, **k: pytest.fail("recursion used"))
    kern, spec = KERNEL_IMPLS[impl], SCALED[act]
    rng = np.random.default_rng(5)
    X = rng.standard_normal((7, 5))
    Y = np.concatenate([rng.standard_normal((6, 5)), 2 * X[:2] + 1e-6 * rng.standard_normal((2, 5)), -X[2:3]])
    for name in ("nngp", "sigmadot", "ntk"):
        np.testing.assert_allclose(getattr(kern, name)(X, Y, spec), getattr(rk, name)(X, Y, spec),
                                   rtol=1e-12, atol=1e-15)
    a, b = kern.xi_coefficients(X, Y, spec)
    ra, rb = rk.xi_coefficients(X, Y, spec)
    np.testing.assert_allclose(a, ra, rtol=1e-9, atol=1e-15)   # the anti-parallel pair: 0 (ridge) against 1.6e-18
    np.testing.assert_allclose(b, rb, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("name", FAST_ENGINES)
def test_small_initialisation_takes_the_fast_history_pass(name, monkeypatch):
    """out_std = 0.3 (the small initialisation of the controls): the backend's own history pass,
    not the array-module recursion, and the same trajectory as refimpl's recursion."""
    from accel import archkernels
    rng = np.random.default_rng(8)
    X = rng.standard_normal((30, 5))
    Y = rng.standard_normal((30, 1))
    g, f = rk.architecture("relu", out_std=0.3)
    net = refimpl.RandomNetwork.sample(5, 6, 1, width=200, seed=3, layers_g=g, layers_f=f)
    ref = refimpl.BottleneckSimulator(net, X, Y, lr=2.0)
    monkeypatch.setattr(archkernels, "history_pass", lambda *a, **k: pytest.fail("recursion used"))
    sim = backend(name).BottleneckSimulator(net, X, Y, lr=2.0)
    for t in range(40):
        idx = rng.permutation(30)[:6]
        ref.step(idx)
        sim.step(idx)
    np.testing.assert_allclose(sim.embeddings(X), ref.embeddings(X), rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(sim.outputs(X), ref.outputs(X), rtol=1e-11, atol=1e-13)


def test_device_math_supplies_erf_to_refimpl_networks():
    """refimpl imports NumPy only: on another array module erf comes from accel.devicemath (CuPy's
    cupyx.scipy.special there); a module without erf is refused with a one-line error."""
    import math
    import types

    from accel.devicemath import with_special_functions
    from refimpl.network import MLP

    bare = types.ModuleType("bare_numpy")                  # NumPy's names, but not NumPy itself
    bare.__dict__.update({k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    rng = np.random.default_rng(0)
    W = [rng.standard_normal((5, 3)), rng.standard_normal((2, 5))]
    X = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match="^activation: 'erf' needs an erf function"):
        MLP(W, "erf", bare).forward(X)
    xp = with_special_functions(bare, erf=np.frompyfunc(math.erf, 1, 1))
    assert xp.float64 is np.float64 and with_special_functions(np) is np
    np.testing.assert_allclose(MLP(W, "erf", xp).forward(X).astype(float), MLP(W, "erf").forward(X), rtol=1e-15)


# ------------------------------------------------------------------ schedules and momentum (MATH §8)

@pytest.mark.parametrize("opt", [dict(momentum=0.9, lr_schedule="warmup:3"),
                                 dict(momentum=0.8, nesterov=True, lr_schedule="cosine", total_steps=10),
                                 dict(lr_schedule="step:4:0.5")])
@pytest.mark.parametrize("name", FAST_ENGINES)
def test_momentum_and_schedules_match_refimpl(name, opt):
    """The per-entry weights of the history (ArrayHistory, MATH §8.3) and the velocities of the tracked
    embeddings (MATH §8.4) on each backend against the reference engine, over 10 minibatch steps; float64
    to 1e-10, and a float32 run resumed from its checkpoint continues exactly."""
    net, X, Y = _problem(dr=2)
    ref = refimpl.BottleneckSimulator(net, X, Y, lr=0.5, X_eval=X[:4] + 0.1, **opt)
    sim = backend(name).BottleneckSimulator(net, X, Y, lr=0.5, X_eval=X[:4] + 0.1, **opt)
    for t in range(10):
        idx = np.arange(2 * t, 2 * t + 6) % 30
        assert sim.step(idx) == pytest.approx(ref.step(idx), rel=1e-10)
    for Xq in (X, X[:4] + 0.1, X + 0.3):
        np.testing.assert_allclose(sim.outputs(Xq), ref.outputs(Xq), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sim.history.C, ref.history.C, rtol=1e-12, atol=1e-15)
    assert np.abs(ref.outputs(X) - net.f(net.g(X))).max() > 0.1
    a, b = (backend(name, "float32").BottleneckSimulator(net, X, Y, lr=0.5, **opt) for _ in range(2))
    ref = refimpl.BottleneckSimulator(net, X, Y, lr=0.5, **opt)
    for t in range(10):
        ref.step(np.arange(t, t + 4))
    for t in range(5):
        a.step(np.arange(t, t + 4))
    b.load_state_dict({k: np.array(v) for k, v in a.state_dict().items()})
    for t in range(5, 10):
        assert a.step(np.arange(t, t + 4)) == b.step(np.arange(t, t + 4))
    np.testing.assert_array_equal(a.outputs(X), b.outputs(X))
    np.testing.assert_allclose(a.outputs(X), ref.outputs(X), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("name", FAST_ENGINES)
def test_infinite_momentum_matches_refimpl(name):
    """No bottleneck: the tracked outputs' velocities (MATH §8.4) on each backend against the reference."""
    _, X, Y = _problem(dr=2)
    opt = dict(momentum=0.9, nesterov=True, lr_schedule="step:3:0.7")
    ref = refimpl.InfiniteSimulator(X, Y, lr=0.5, X_eval=X[:4] + 0.1, init="network", width=64, **opt)
    sim = backend(name).InfiniteSimulator(X, Y, lr=0.5, X_eval=X[:4] + 0.1, init="network", width=64, **opt)
    for t in range(8):
        idx = np.arange(3 * t, 3 * t + 5) % 30
        assert sim.step(idx) == pytest.approx(ref.step(idx), rel=1e-11)
    for Xq in (X, X[:4] + 0.1, X + 0.3):
        np.testing.assert_allclose(sim.outputs(Xq), ref.outputs(Xq), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("name", FAST_ENGINES)
def test_float32_decay_never_goes_subnormal(name):
    """MATH §8.3: the decayed derivatives D of a float32 history are zeroed below float32's smallest normal
    number (no subnormal arithmetic), the leading dead rows are skipped, and the run matches float64."""
    net, X, Y = _problem(dr=1)
    runs = [backend(name, dt).BottleneckSimulator(net, X, Y, lr=0.3, momentum=0.05) for dt in ("float32", "float64")]
    for t in range(40):                                  # 0.05^30 < 1.2e-38
        for sim in runs:
            sim.step(np.arange(t % 25, t % 25 + 5))
    D = runs[0].history.D
    tiny = np.finfo(np.float32).tiny
    assert D.dtype == np.float32 and np.all((D == 0) | (np.abs(D) >= tiny))
    assert 0 < runs[0].history.live < runs[0].history.M and np.all(D[:runs[0].history.live] == 0)
    np.testing.assert_allclose(runs[0].outputs(X), runs[1].outputs(X), rtol=2e-3, atol=2e-3)
