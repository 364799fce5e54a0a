"""The chain of bottlenecks (MATH §9): one head equals the single-bottleneck simulator, the new
Jacobian terms against finite differences, the all-infinite kernel against Monte Carlo, wide
finite chains against the simulator, checkpoints and argument checks."""

import numpy as np
import pytest

from fdiff import central_difference
from refimpl import Layers, kernels
from refimpl.chain import (ChainSimulator, RandomChain, check_widths, infinite_chain_simulator, nngp_inf_chain,
                           ntk_inf_chain)
from refimpl.dynamics import BottleneckSimulator, InfiniteSimulator
from refimpl.engine import BottleneckEngine
from refimpl.finite import FiniteChain
from refimpl.network import RandomNetwork

D0, DR, N = 5, 2, 16


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    return rng.standard_normal((N, D0)), rng.standard_normal((N, DR)), rng.standard_normal((5, D0))


def _batches(steps, seed=0, size=6):
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(N, size=size, replace=False)) for _ in range(steps)]


def _trained_chain(data, widths=(3, 4), steps=8, lr=0.5, **kw):
    X, Y, Xe = data
    sim = ChainSimulator(RandomChain.sample(D0, widths, DR, width=300, seed=2, **kw), X, Y, lr=lr, X_eval=Xe)
    for idx in _batches(steps):
        sim.step(idx)
    return sim


def test_one_head_equals_the_bottleneck_simulator_bit_for_bit(data):
    X, Y, Xe = data
    for kw in ({}, {"layers_g": Layers.make("erf", 3, b_std=0.3), "layers_f": Layers.make("erf", 2, b_std=0.3)}):
        net = RandomNetwork.sample(D0, 3, DR, width=300, seed=1, **kw)
        chain = RandomChain.sample(D0, [3], DR, width=300, seed=1, **kw)
        assert np.array_equal(chain.outputs(Xe), net.f(net.g(Xe)))
        a = BottleneckSimulator(net, X, Y, lr=0.5, lr_g=0.7, X_eval=Xe)
        b = ChainSimulator(chain, X, Y, lr=0.5, lr_g=0.7, X_eval=Xe)
        for idx in _batches(10):
            assert a.step(idx) == b.step(idx)
        assert np.array_equal(a.outputs(Xe), b.outputs(Xe))
        assert np.array_equal(a.embeddings(X), b.embeddings(X))
        sa, sb = a.state_dict(), b.state_dict()
        assert np.array_equal(sa["history_P"], sb["history_P_0"]) and np.array_equal(sa["history_C"], sb["history_C_0"])
    c = ChainSimulator(net, X, Y, lr=0.5, X_eval=Xe)           # a RandomNetwork is a chain of one
    assert c.n_heads == 1 and np.array_equal(c.outputs(Xe), net.f(net.g(Xe)))


@pytest.mark.parametrize("k", [0, 1, 2])
def test_head_jacobians_after_training_equal_finite_differences(data, k):
    """J_{k,t}^T c from the history's Xi terms (MATH §9.1) against central differences of f_{k,t}:
    the intermediate heads' histories carry gradients u_k of their own output dimension."""
    sim = _trained_chain(data, widths=(3, 4, 2))
    rng = np.random.default_rng(k)
    Z = rng.standard_normal((4, sim.dims[k]))
    C = rng.standard_normal((4, sim.dims[k + 1]))
    got = sim.head_jacobian_t_dot(k, Z, C)
    for b in range(4):
        fd = central_difference(lambda z: sim.head(k, z[None])[0], Z[b], 1e-6)      # (d_k, d_{k+1})
        np.testing.assert_allclose(got[b], fd @ C[b], rtol=1e-6, atol=1e-8)
    assert sim.engines[k].history.M > 0


def test_g_moves_by_theta_times_the_chained_jacobians(data):
    """One step moves g by -mu_g Theta J_1^T J_2^T chi (MATH §9.1), with the composed Jacobian of
    z_0 -> F taken by central differences of the simulator's heads at the current step."""
    X, Y, Xe = data
    sim = _trained_chain(data, widths=(3, 4), lr=0.4)
    idx = np.array([1, 4, 9])
    Z0 = sim.embeddings(X)[idx]

    def F_of_z0(z):
        return sim.head(1, sim.head(0, z[None]))[0]

    F = np.stack([F_of_z0(z) for z in Z0])
    chi = (F - Y[idx]) / len(idx)
    V = np.stack([central_difference(F_of_z0, z, 1e-6) @ c for z, c in zip(Z0, chi)])   # J_1^T J_2^T chi
    before = sim.embeddings(Xe)
    sim.step(idx)
    want = before - sim.lr_g * kernels.ntk(Xe, X[idx], sim.layers_g) @ V
    np.testing.assert_allclose(sim.embeddings(Xe), want, rtol=1e-7, atol=1e-9)


def test_wide_finite_chains_approach_the_simulator():
    """Theorem 3.2 for a chain: finite chains of hidden width n trained by GD from the simulator's
    initial functions; the gap in F (relative to F's movement) falls with n (MATH §9.4)."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((8, 4)), rng.standard_normal((8, 1))
    gaps = {}
    for n in (250, 4000):
        vals = []
        for seed in range(3):
            net = RandomChain.sample(4, [3, 2], 1, width=n, seed=seed)
            fin, sim = FiniteChain.from_random_chain(net), ChainSimulator(net, X, Y, lr=0.2)
            for _ in range(20):
                assert np.isclose(fin.step(X, Y, lr=0.2), sim.step(np.arange(8)), rtol=0.2)
            F0 = net.outputs(X)
            vals.append(np.linalg.norm(sim.outputs(X) - fin.outputs(X)) / np.linalg.norm(fin.outputs(X) - F0))
        gaps[n] = np.mean(vals)
    assert gaps[4000] < 0.5 * gaps[250], gaps
    assert gaps[4000] < 0.03, gaps


def test_finite_chain_gradient_equals_finite_differences():
    X = np.random.default_rng(1).standard_normal((3, 4))
    Y = np.random.default_rng(2).standard_normal((3, 2))
    fin = FiniteChain.sample(4, [3, 2], 2, width=6, seed=0, layers_f=Layers.make("relu", 2, b_std=0.4))
    w = fin._chain.mlps[1].weights[0]
    before = w.copy()

    def loss():
        return 0.5 * np.sum((fin.outputs(X) - Y) ** 2) / 3

    fd = central_difference(loss, w, 1e-6, inplace=True)
    fin.step(X, Y, lr=1.0)
    np.testing.assert_allclose(before - w, fd, rtol=1e-6, atol=1e-9)


def test_all_infinite_kernel_matches_wide_networks_and_reduces_to_ntk_inf():
    """ntk_inf_chain is the NTK of the chain with every width infinite: with one head it is
    ntk_inf (MATH §5), and with two it matches the empirical NTK of wide chains (Monte Carlo),
    not that of a plain deep network of the same activations."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3, 4))
    lg, lf = Layers.make("erf"), Layers.make("erf", 3)
    np.testing.assert_allclose(ntk_inf_chain(X, X, lg, (lf,), lr_g=0.3, lr_f=0.8),
                               kernels.ntk_inf(X, X, lg, lf, lr_g=0.3, lr_f=0.8), rtol=1e-14)
    np.testing.assert_allclose(nngp_inf_chain(X, X, lg, (lf,)), kernels.nngp_inf(X, X, lg, lf), rtol=1e-14)
    lin = Layers.make("linear", 2)
    np.testing.assert_allclose(ntk_inf_chain(X, X, lin, (lin, lin)), 6 * X @ X.T / 4, rtol=1e-12)
    relu = Layers()
    want = ntk_inf_chain(X, X, relu, (relu, relu))
    ests = [_empirical_ntk(RandomChain.sample(4, [800, 800], 1, width=800, seed=s), X) for s in range(3)]
    err = np.abs(np.mean(ests, axis=0) - want).max() / np.abs(want).max()
    plain = np.abs(kernels.ntk(X, X, Layers.make("relu", 4)) - want).max() / np.abs(want).max()
    assert err < 0.1 and plain > 0.25, (err, plain)


def _empirical_ntk(chain, X):
    rows = []
    for i in range(X.shape[0]):
        h, caches = X[i:i + 1], []
        for m in chain.mlps:
            h, cache = m.forward(h, keep=True)
            caches.append(cache)
        G, parts = np.ones((1, 1)), []
        for k in range(len(chain.mlps) - 1, -1, -1):
            grads = [None] * len(chain.mlps[k].weights)
            G = chain.mlps[k].backward(caches[k], G, grads, need_input=k > 0)
            parts += [g.ravel() for g in grads]
        rows.append(np.concatenate(parts))
    R = np.stack(rows)
    return R @ R.T


def test_infinite_chain_simulator_trains_on_its_kernel(data):
    X, Y, Xe = data
    sim = infinite_chain_simulator(X, Y, 2, lr=0.5, X_eval=Xe, seed=1)
    assert isinstance(sim, InfiniteSimulator) and sim.f0_method == "cholesky"
    before = sim.outputs(Xe)
    idx = np.arange(5)
    chi = (sim.outputs(X)[idx] - Y[idx]) / 5
    sim.step(idx)
    np.testing.assert_allclose(sim.outputs(Xe), before - 0.5 * ntk_inf_chain(Xe, X[idx], Layers(), (Layers(),) * 2)
                               @ chi, rtol=1e-12, atol=1e-14)
    net = infinite_chain_simulator(X, Y, 2, lr=0.5, seed=1, init="network", width=64)
    assert net.f0_method == "network(width=64)"


def test_state_dict_roundtrip_reproduces_the_next_steps_bit_for_bit(data, tmp_path):
    X, Y, Xe = data
    a = _trained_chain(data)
    np.savez(tmp_path / "s.npz", **a.state_dict())
    b = ChainSimulator(RandomChain.sample(D0, (3, 4), DR, width=300, seed=2), X, Y, lr=0.5, X_eval=Xe)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        b.load_state_dict(dict(z))
    for idx in _batches(3, seed=9):
        assert a.step(idx) == b.step(idx)
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb) and all(np.array_equal(sa[k], sb[k]) for k in sa)
    one = ChainSimulator(RandomChain.sample(D0, (3,), DR, width=300, seed=2), X, Y, lr=0.5, X_eval=Xe)
    with pytest.raises(ValueError, match="more heads"):
        one.load_state_dict(sa)


def test_engine_factory_gets_one_engine_per_head(data):
    X, Y, _ = data
    made = []

    def factory(lg, lf, d, dr):
        made.append((d, dr))
        return BottleneckEngine(lg, lf, d, dr)

    ChainSimulator(RandomChain.sample(D0, (3, 4, 6), DR, width=50, seed=0), X, Y, engine=factory)
    assert made == [(3, 4), (4, 6), (6, DR)]


@pytest.mark.parametrize("widths, match", [((), "at least one"), ((3, 0), "positive integers"),
                                           ((3, 2.5), "positive integers"), ("ab", "positive integers"),
                                           (None, "sequence")])
def test_bad_widths_are_refused_in_one_line(widths, match):
    with pytest.raises(ValueError, match=match) as exc:
        check_widths(widths)
    assert "\n" not in str(exc.value)


def test_bad_chain_arguments(data):
    X, Y, _ = data
    net = RandomChain.sample(D0, (3, 4), DR, width=20, seed=0)
    with pytest.raises(ValueError, match="^X: expected 5 columns"):
        ChainSimulator(net, X[:, :4], Y)
    with pytest.raises(ValueError, match="^Y: expected 2 columns"):
        ChainSimulator(net, X, Y[:, :1])
    with pytest.raises(TypeError, match="^net:"):
        ChainSimulator("net", X, Y)
    with pytest.raises(ValueError, match="^layers_f: expected one Layers or 2"):
        RandomChain.sample(D0, (3, 4), DR, width=20, layers_f=[Layers()])
    with pytest.raises(ValueError, match="^Z: expected 4 columns"):
        ChainSimulator(net, X, Y).head(1, X[:, :3])


OPTIMISERS = [dict(momentum=0.9), dict(momentum=0.8, nesterov=True), dict(lr_schedule="cosine", total_steps=12),
              dict(momentum=0.5, lr_schedule="step:4:0.5")]


@pytest.mark.parametrize("opt", OPTIMISERS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_one_head_equals_the_bottleneck_simulator_under_momentum_and_schedules(data, opt):
    """MATH §8 in the chain: the same per-entry history weights and velocities; the finite chain of one
    head takes the finite network's momentum steps."""
    from refimpl.finite import FiniteNetwork
    X, Y, Xe = data
    net = RandomNetwork.sample(D0, 3, DR, width=200, seed=1)
    a = BottleneckSimulator(net, X, Y, lr=0.3, X_eval=Xe, **opt)
    b = ChainSimulator(net, X, Y, lr=0.3, X_eval=Xe, **opt)
    fa, fb = FiniteNetwork.from_random_network(net), FiniteChain.from_random_chain(net)
    for idx in _batches(12):
        assert a.step(idx) == b.step(idx)
        assert fa.step(X[idx], Y[idx], lr=0.3, **opt) == pytest.approx(fb.step(X[idx], Y[idx], lr=0.3, **opt),
                                                                        rel=1e-13)
    assert np.array_equal(a.outputs(Xe), b.outputs(Xe))
    np.testing.assert_allclose(fb.outputs(Xe), fa.outputs(Xe), rtol=1e-12)
    sa, sb = a.state_dict(), b.state_dict()
    renamed = {k.replace("history_P", "history_P_0").replace("history_C", "history_C_0")
               .replace("history_D", "history_D_0"): v for k, v in sa.items()}
    assert set(renamed) == set(sb) and all(np.array_equal(renamed[k], sb[k]) for k in sb)


def test_momentum_chain_resumes_bit_for_bit_and_approaches_wide_finite_chains(data, tmp_path):
    X, Y, Xe = data
    opt = dict(momentum=0.9, nesterov=True)
    a = ChainSimulator(RandomChain.sample(D0, (3, 4), DR, width=200, seed=2), X, Y, lr=0.2, X_eval=Xe, **opt)
    for idx in _batches(6):
        a.step(idx)
    np.savez(tmp_path / "s.npz", **a.state_dict())
    b = ChainSimulator(RandomChain.sample(D0, (3, 4), DR, width=200, seed=2), X, Y, lr=0.2, X_eval=Xe, **opt)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        b.load_state_dict(dict(z))
    for idx in _batches(4, seed=3):
        assert a.step(idx) == b.step(idx)
    assert {"history_D_0", "history_D_1", "velocity_A"} <= set(b.state_dict())
    plain = ChainSimulator(RandomChain.sample(D0, (3, 4), DR, width=200, seed=2), X, Y, lr=0.2, X_eval=Xe)
    with pytest.raises(ValueError, match="momentum"):
        plain.load_state_dict(a.state_dict())
    rng = np.random.default_rng(0)
    Xs, Ys = rng.standard_normal((8, 4)), rng.standard_normal((8, 1))
    gaps = {}
    for n in (250, 4000):
        vals = []
        for seed in range(3):
            net = RandomChain.sample(4, [3, 2], 1, width=n, seed=seed)
            fin, sim = FiniteChain.from_random_chain(net), ChainSimulator(net, Xs, Ys, lr=0.05, momentum=0.9)
            for _ in range(20):
                fin.step(Xs, Ys, lr=0.05, momentum=0.9)
                sim.step(np.arange(8))
            F0 = net.outputs(Xs)
            vals.append(np.linalg.norm(sim.outputs(Xs) - fin.outputs(Xs)) / np.linalg.norm(fin.outputs(Xs) - F0))
        gaps[n] = np.mean(vals)
    assert gaps[4000] < 0.5 * gaps[250], gaps


def test_all_infinite_chain_with_momentum_matches_the_infinite_simulator_with_one_head(data):
    """infinite_chain_simulator forwards the optimiser: with one head it is InfiniteSimulator step for step."""
    X, Y, Xe = data
    opt = dict(momentum=0.9, nesterov=True, lr_schedule="cosine", total_steps=6)
    a = infinite_chain_simulator(X, Y, 1, lr=0.5, X_eval=Xe, seed=1, **opt)
    b = InfiniteSimulator(X, Y, lr=0.5, X_eval=Xe, seed=1, init="cholesky", **opt)
    for idx in _batches(6):
        np.testing.assert_allclose(a.step(idx), b.step(idx), rtol=1e-12)
    np.testing.assert_allclose(a.outputs(Xe), b.outputs(Xe), rtol=1e-10, atol=1e-12)
    assert a.momentum == 0.9 and "velocity_A" in a.state_dict()


def test_weights_round_trip_and_the_trained_finite_chain_as_initial_functions(data):
    X, Y, Xe = data
    spec = Layers.make("erf", 3, b_std=0.2)
    net = RandomChain.sample(D0, (3, 4), DR, width=30, seed=4, layers_g=spec, layers_f=spec)
    back = RandomChain.from_weights(net.weights(), spec, (spec, spec))
    assert np.array_equal(back.outputs(Xe), net.outputs(Xe))
    with pytest.raises(ValueError, match="^arrays: missing 'head1/W0'"):
        RandomChain.from_weights({k: v for k, v in net.weights().items() if not k.startswith("head1")}, spec,
                                 (spec, spec))
    fin = FiniteChain.from_random_chain(net)
    for idx in _batches(3):
        fin.step(X[idx], Y[idx], lr=0.3)
    moved = fin.as_random_chain()
    assert np.array_equal(moved.outputs(Xe), fin.outputs(Xe))
    assert not np.allclose(moved.outputs(Xe), net.outputs(Xe))        # trained, and the original untouched
    fin.step(X, Y, lr=0.3)
    assert np.array_equal(moved.outputs(Xe), RandomChain.from_weights(moved.weights(), spec, (spec, spec)).outputs(Xe))
    assert not np.array_equal(moved.outputs(Xe), fin.outputs(Xe))     # a copy, not the live weights
