"""Properties of the function-space simulators (MATH §4, §5): losses, consistency of the stored
history with the closed forms, checkpoints, divergence handling and argument checking."""

import numpy as np
import pytest

from fdiff import central_difference
from refimpl import kernels
from refimpl.dynamics import BottleneckSimulator, DivergenceError, History, InfiniteSimulator
from refimpl.network import RandomNetwork

D0, D, DR, N = 5, 3, 2, 24


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(42)
    X = rng.standard_normal((N, D0))
    Y = rng.standard_normal((N, DR))
    X_eval = rng.standard_normal((7, D0))
    net = RandomNetwork.sample(D0, D, DR, width=2000, seed=1)
    return X, Y, X_eval, net


def _trained(data, steps=12, lr=0.5, **kw):
    X, Y, X_eval, net = data
    sim = BottleneckSimulator(net, X, Y, lr=lr, X_eval=X_eval, **kw)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        sim.step(rng.choice(N, size=6, replace=False))
    return sim


def _states_equal(a, b):
    return set(a) == set(b) and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


# --------------------------------------------------------------------------- losses

def test_step_returns_the_batch_loss_before_the_update(data):
    X, Y, _, _ = data
    sim = _trained(data, steps=5)
    idx = np.array([3, 7, 8, 20])
    F = sim.outputs(X[idx])                    # untracked rows: the closed form of g_t
    want = 0.5 * np.sum((F - Y[idx]) ** 2) / len(idx)
    assert sim.step(idx) == pytest.approx(want, rel=1e-12)


def test_full_batch_gd_with_a_small_rate_decreases_the_loss(data):
    X, Y, _, net = data
    sim = BottleneckSimulator(net, X, Y, lr=0.2)
    losses = [sim.step(np.arange(N)) for _ in range(30)]
    assert np.all(np.diff(losses) < 0)
    assert losses[-1] < 0.95 * losses[0]
    inf = InfiniteSimulator(X, Y, lr=0.2, seed=0)
    losses = [inf.step(np.arange(N)) for _ in range(30)]
    assert np.all(np.diff(losses) < 0)


# --------------------------------------------------------------------------- stored state vs closed forms

def test_embeddings_of_untracked_inputs_equal_the_tracked_values(data):
    X, _, X_eval, _ = data
    sim = _trained(data)
    perm = np.random.default_rng(1).permutation(N)
    tracked = sim.embeddings(X)
    formula = sim.embeddings(X[perm])          # not the tracked array: g0 - mu_g Theta(., X) A
    np.testing.assert_allclose(formula, tracked[perm], rtol=0, atol=1e-12 * np.abs(tracked).max())
    tracked_eval = sim.embeddings(X_eval)
    formula_eval = sim.embeddings(X_eval[::-1])
    np.testing.assert_allclose(formula_eval, tracked_eval[::-1], rtol=0, atol=1e-12 * np.abs(tracked_eval).max())
    assert np.abs(tracked - sim.net.g(X)).max() > 1e-3        # the embeddings did move


def test_jacobian_contracted_with_chi_equals_jacobian_t_dot(data):
    sim = _trained(data)
    rng = np.random.default_rng(2)
    Z = np.concatenate([rng.standard_normal((5, D)), sim.history.P[:3]])   # incl. points on the history
    chi = rng.standard_normal((8, DR))
    J = sim.jacobian(Z)
    np.testing.assert_allclose(np.einsum("qab,qa->qb", J, chi), sim.jacobian_t_dot(Z, chi), rtol=1e-12,
                               atol=1e-13)


def test_jacobian_equals_finite_differences_of_f(data):
    sim = _trained(data)
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((4, D))
    J = sim.jacobian(Z)
    fd = central_difference(lambda e: sim.f(Z + e), np.zeros(D), 1e-7)        # (D, p, dr), rows moved together
    np.testing.assert_allclose(J, np.transpose(fd, (1, 2, 0)), atol=1e-6)
    # and the history part changed J: it is not J0
    assert np.abs(J - sim.net.jacobian(Z)).max() > 1e-3


def test_f_at_the_history_equals_the_kernel_sum(data):
    """f_t(x) = f0(x) - mu_f sum_m K(x, P_m) C_m, written out with the public kernel."""
    sim = _trained(data, lr_f=0.3)
    Z = np.random.default_rng(4).standard_normal((3, D))
    want = sim.net.f(Z) - 0.3 * kernels.ntk(Z, sim.history.P) @ sim.history.C
    np.testing.assert_allclose(sim.f(Z), want, rtol=1e-12, atol=1e-13)


def test_history_doubling_keeps_contents():
    rng = np.random.default_rng(5)
    h = History(3, 2, capacity=2)
    Ps, Cs = [], []
    for k in (1, 2, 5, 1, 9, 3):
        P, C = rng.standard_normal((k, 3)), rng.standard_normal((k, 2))
        h.append(P, C)
        Ps.append(P)
        Cs.append(C)
        np.testing.assert_array_equal(h.P, np.concatenate(Ps))
        np.testing.assert_array_equal(h.C, np.concatenate(Cs))
    assert h.M == 21


# --------------------------------------------------------------------------- divergence, checkpoints

@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_error_leaves_the_state_unchanged(data):
    X, Y, X_eval, net = data
    sim = BottleneckSimulator(net, X, Y, lr=1e200, X_eval=X_eval)
    with pytest.raises(DivergenceError):
        for _ in range(5):
            before = sim.state_dict()
            sim.step(np.arange(N))
    assert _states_equal(before, sim.state_dict())
    inf = InfiniteSimulator(X, Y, lr=1e300, seed=0)
    with pytest.raises(DivergenceError):
        for _ in range(5):
            before = inf.state_dict()
            inf.step(np.arange(N))
    assert _states_equal(before, inf.state_dict())


def test_state_dict_roundtrip_reproduces_the_next_steps_bit_for_bit(data, tmp_path):
    X, Y, X_eval, net = data
    a = _trained(data, steps=9)
    np.savez(tmp_path / "state.npz", **a.state_dict())
    b = BottleneckSimulator(net, X, Y, lr=0.5, X_eval=X_eval)
    with np.load(tmp_path / "state.npz", allow_pickle=False) as z:
        b.load_state_dict(dict(z))
    rng = np.random.default_rng(6)
    for _ in range(4):
        idx = rng.choice(N, size=6, replace=False)
        assert a.step(idx) == b.step(idx)
    assert _states_equal(a.state_dict(), b.state_dict())
    assert np.array_equal(a.outputs(X_eval), b.outputs(X_eval))

    ia = InfiniteSimulator(X, Y, lr=0.5, X_eval=X_eval, seed=3)
    for _ in range(5):
        ia.step(np.arange(6))
    ib = InfiniteSimulator(X, Y, lr=0.5, X_eval=X_eval, seed=3)
    ib.load_state_dict(ia.state_dict())
    for _ in range(3):
        assert ia.step(np.arange(6, 12)) == ib.step(np.arange(6, 12))
    assert _states_equal(ia.state_dict(), ib.state_dict())


# --------------------------------------------------------------------------- InfiniteSimulator init

def _sigma_F(X):
    """NNGP of the composed network without bottleneck (MATH §5), written out here."""
    n = np.linalg.norm(X, axis=1)
    d0 = X.shape[1]
    lam_g = np.clip((X @ X.T) / np.outer(n, n), -1, 1)
    th = np.arccos(lam_g)
    sg = np.outer(n, n) / d0 * (lam_g * (np.pi - th) + np.sin(th)) / (2 * np.pi)
    c = n ** 2 / (2 * d0)
    lam = np.clip(sg / np.sqrt(np.outer(c, c)), -1, 1)
    th = np.arccos(lam)
    return np.sqrt(np.outer(c, c)) * (lam * (np.pi - th) + np.sin(th)) / (2 * np.pi)


@pytest.mark.parametrize("init, samples", [("cholesky", 8000), ("network", 1000)])
def test_infinite_initial_outputs_have_the_nngp_covariance(init, samples):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((3, 4))
    X[2] = -0.5 * X[0] + 0.1 * X[1]
    Y = np.zeros((3, 1))
    F0 = np.array([InfiniteSimulator(X, Y, lr=1.0, init=init, seed=s, width=128).outputs(X)[:, 0]
                   for s in range(samples)])
    prods = F0[:, :, None] * F0[:, None, :]
    th = _sigma_F(X)
    se = np.sqrt(np.sum(prods.var(axis=0, ddof=1)) / samples)
    err = np.linalg.norm(prods.mean(axis=0) - th)
    # the network draw has a finite-width bias of order 1/width on top of the Monte Carlo error
    bias = 0.0 if init == "cholesky" else 2.0 / 128 * np.linalg.norm(th)
    assert err < 5 * se + bias, (err / np.linalg.norm(th), se / np.linalg.norm(th))


def test_infinite_init_methods_and_untracked_outputs():
    rng = np.random.default_rng(8)
    X, Y, Xe = rng.standard_normal((10, 3)), rng.standard_normal((10, 2)), rng.standard_normal((4, 3))
    chol = InfiniteSimulator(X, Y, lr=1.0, X_eval=Xe, init="auto", seed=1)
    assert chol.f0_method == "cholesky"
    np.testing.assert_array_equal(chol.outputs(X), InfiniteSimulator(X, Y, lr=1.0, X_eval=Xe, seed=1).outputs(X))
    with pytest.raises(ValueError, match="^Xq:"):
        chol.outputs(X[::-1])
    net = InfiniteSimulator(X, Y, lr=1.0, X_eval=Xe, init="network", seed=1, width=300)
    assert net.f0_method.startswith("network")
    np.testing.assert_allclose(net.outputs(X), net.init_net.f(net.init_net.g(X)), rtol=1e-13)
    for _ in range(6):
        net.step(np.arange(5))
    # untracked inputs use F0 - NTK_inf(., X) A; they must match the in-place values
    np.testing.assert_allclose(net.outputs(X[::-1]), net.outputs(X)[::-1], atol=1e-12)
    np.testing.assert_allclose(net.outputs(Xe[::-1]), net.outputs(Xe)[::-1], atol=1e-12)
    assert InfiniteSimulator(X, Y, lr=1.0, X_eval=Xe, init="auto", cholesky_max=5).f0_method.startswith("network")


# --------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=-1.0), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(lr_f=0.0), "lr_f"),
    (dict(lr_g="fast"), "lr_g"),
    (dict(Y=np.zeros((N - 1, DR))), "Y"),
    (dict(Y=np.zeros((N, DR + 1))), "Y"),
    (dict(X=np.zeros((N, D0 + 1))), "X"),
    (dict(X_eval=np.zeros((3, D0 + 2))), "X_eval"),
    (dict(activation="tanh"), "activation"),
    (dict(depth_f=3), "depth_f"),
    (dict(loss="hinge"), "loss"),
    (dict(loss="ce"), "Y"),
])
def test_bottleneck_bad_arguments(data, kwargs, name):
    X, Y, _, net = data
    args = dict(X=X, Y=Y, lr=0.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=rf"^{name}:"):
        BottleneckSimulator(net, **args)


def test_bad_calls_name_the_argument(data):
    X, Y, _, net = data
    sim = BottleneckSimulator(net, X, Y, lr=0.5)
    for idx in (np.array([], dtype=int), np.array([0, N]), np.array([-1]), np.array([0.5])):
        with pytest.raises(ValueError, match="^idx:"):
            sim.step(idx)
    with pytest.raises(ValueError, match="^Z:"):
        sim.f(np.zeros((2, D + 1)))
    with pytest.raises(ValueError, match="^Xq:"):
        sim.embeddings(np.zeros((2, D0 + 1)))
    with pytest.raises(ValueError, match="^state:"):
        sim.load_state_dict({"t": np.array(0)})
    with pytest.raises(TypeError, match="^net:"):
        BottleneckSimulator("not a network", X, Y)
    with pytest.raises(ValueError, match="^init:"):
        InfiniteSimulator(X, Y, init="random")
    with pytest.raises(ValueError, match="^F0:"):
        InfiniteSimulator(X, Y, F0=np.zeros((N, DR + 1)))
    with pytest.raises(ValueError, match="^width:"):
        RandomNetwork.sample(D0, D, DR, width=0)


@pytest.mark.parametrize("rows", [7, 5000])
def test_f_and_pullback_is_f_and_jacobian_t_dot(rows):
    """One forward pass for f and J^T c gives exactly the numbers of the two separate calls, for a batch
    (one block) and for more rows than a block (MATH §4), and J^T c against finite differences of f."""
    from refimpl import network
    net = RandomNetwork.sample(3, 4, 2, width=900, seed=2, activation="erf")
    rng = np.random.default_rng(0)
    Z, C = rng.standard_normal((rows, 4)), rng.standard_normal((rows, 2))
    assert (rows > network._block_rows(net._f)) == (rows == 5000)
    out, pullback = net.f_and_pullback(Z)
    assert np.array_equal(out, net.f(Z))
    assert np.array_equal(pullback(C), net.jacobian_t_dot(Z, C))
    z, c = Z[:1], C[:1]
    fd = central_difference(lambda x: net.f(x.reshape(1, 4))[0] @ c[0], z[0].copy(), 1e-5)
    np.testing.assert_allclose(net.f_and_pullback(z)[1](c)[0], fd, rtol=1e-6, atol=1e-8)
