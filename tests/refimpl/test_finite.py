"""FiniteNetwork (refimpl/finite.py): hand-written forward/backward against finite differences, the
RandomNetwork it is built from, the effective linear network, row blocking and bad input."""

import numpy as np
import pytest

from fdiff import central_difference
from refimpl import finite
from refimpl.dynamics import DivergenceError
from refimpl.finite import FiniteNetwork
from refimpl.network import RandomNetwork

RNG = np.random.default_rng(99)
X = RNG.standard_normal((9, 4))
Y = RNG.standard_normal((9, 2))


def _fd_weight_grads(net, X, Y, h=1e-6):
    return [[central_difference(lambda: net.loss(X, Y), w, h, inplace=True) for w in ws]
            for ws in (net.g_weights, net.f_weights)]


@pytest.mark.parametrize("activation, depth_g, depth_f", [("relu", 2, 2), ("linear", 2, 3), ("linear", 1, 1),
                                                          ("relu", 3, 2)])
def test_gradients_match_finite_differences(activation, depth_g, depth_f):
    net = FiniteNetwork.sample(4, 3, 2, width=6, seed=3, activation=activation, depth_g=depth_g, depth_f=depth_f)
    loss, gg, gf = net.gradients(X, Y)
    assert loss == pytest.approx(net.loss(X, Y), rel=1e-14)
    fd_g, fd_f = _fd_weight_grads(net, X, Y)
    for a, b in zip(gg + gf, fd_g + fd_f):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_same_functions_as_the_random_network():
    rn = RandomNetwork.sample(4, 3, 2, width=700, seed=5)
    for net in (FiniteNetwork.from_random_network(rn), FiniteNetwork.sample(4, 3, 2, width=700, seed=5)):
        Z = rn.g(X)
        np.testing.assert_allclose(net.g(X), Z, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(net.f(Z), rn.f(Z), rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(net.outputs(X), rn.f(Z), rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(net.jacobian(Z), rn.jacobian(Z), rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(net.jacobian_t_dot(Z, Y), rn.jacobian_t_dot(Z, Y), rtol=1e-13, atol=1e-14)
    # training the copy does not touch the RandomNetwork's weights
    theta1 = rn.theta1.copy()
    net.step(X, Y, lr=0.5)
    np.testing.assert_array_equal(rn.theta1, theta1)
    back = net.as_random_network()
    np.testing.assert_allclose(back.f(back.g(X)), net.outputs(X), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_jacobian_matches_finite_differences_of_f(activation):
    net = FiniteNetwork.sample(4, 3, 2, width=50, seed=1, activation=activation, depth_f=3)
    Z = RNG.standard_normal((5, 3))
    J = net.jacobian(Z)
    fd = central_difference(lambda e: net.f(Z + e), np.zeros(3), 1e-7)         # (d, p, dr), rows moved together
    np.testing.assert_allclose(J, np.transpose(fd, (1, 2, 0)), atol=1e-6)
    C = RNG.standard_normal((5, 2))
    np.testing.assert_allclose(net.jacobian_t_dot(Z, C), np.einsum("pab,pa->pb", J, C), rtol=1e-13, atol=1e-14)


def test_step_is_one_gradient_step_with_separate_rates():
    net = FiniteNetwork.sample(4, 3, 2, width=30, seed=2)
    before = [w.copy() for w in net.g_weights + net.f_weights]
    loss, gg, gf = net.gradients(X, Y)
    assert net.step(X, Y, lr_f=0.3, lr_g=0.05) == loss
    for w, w0, g in zip(net.g_weights, before[:2], gg):
        np.testing.assert_allclose(w, w0 - 0.05 * g, rtol=1e-14, atol=1e-15)
    for w, w0, g in zip(net.f_weights, before[2:], gf):
        np.testing.assert_allclose(w, w0 - 0.3 * g, rtol=1e-14, atol=1e-15)
    assert net.t == 1


def test_small_rate_gd_decreases_the_loss():
    net = FiniteNetwork.sample(4, 3, 2, width=500, seed=4)
    losses = [net.step(X, Y, lr=0.2) for _ in range(25)]
    assert np.all(np.diff(losses) < 0)


def test_row_blocks_give_the_same_results(monkeypatch):
    net = FiniteNetwork.sample(4, 3, 2, width=40, seed=6, depth_f=3, activation="linear")
    full = (net.outputs(X), net.jacobian(net.g(X)), net.gradients(X, Y))
    monkeypatch.setattr(finite, "ROW_BLOCK_ELEMENTS", 80)     # two rows per block
    assert net._rows() == 2
    blocked = (net.outputs(X), net.jacobian(net.g(X)), net.gradients(X, Y))
    np.testing.assert_allclose(blocked[0], full[0], rtol=1e-13)
    np.testing.assert_allclose(blocked[1], full[1], rtol=1e-13)
    assert blocked[2][0] == pytest.approx(full[2][0], rel=1e-13)
    for a, b in zip(blocked[2][1] + blocked[2][2], full[2][1] + full[2][2]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_effective_network_of_a_deep_linear_network(depth):
    net = FiniteNetwork.sample(4, 3, 2, width=20, seed=depth, activation="linear", depth_g=depth, depth_f=depth)
    eff = net.effective()
    assert (eff.depth_g, eff.depth_f) == (1, 1)
    Z = RNG.standard_normal((4, 3))
    np.testing.assert_allclose(eff.outputs(X), net.outputs(X), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(eff.g(X), net.g(X), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(eff.jacobian(Z), net.jacobian(Z), rtol=1e-12, atol=1e-14)
    # effective network: g = Theta xi / sqrt(d0), f = W x / sqrt(d)
    (Theta,), (W,) = eff.g_weights, eff.f_weights
    np.testing.assert_allclose(eff.outputs(X), X @ Theta.T @ W.T / np.sqrt(3 * 4), rtol=1e-12)
    rn = net.as_random_network()
    np.testing.assert_allclose(rn.f(rn.g(X)), net.outputs(X), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rn.jacobian(Z), net.jacobian(Z), rtol=1e-12, atol=1e-14)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_leaves_the_weights_unchanged():
    net = FiniteNetwork.sample(4, 3, 2, width=30, seed=7)
    with pytest.raises(DivergenceError):
        for _ in range(10):
            before = [w.copy() for w in net.g_weights + net.f_weights]
            net.step(X, Y, lr=1e200)
    for w, w0 in zip(net.g_weights + net.f_weights, before):
        np.testing.assert_array_equal(w, w0)


def test_bad_input_names_the_argument():
    net = FiniteNetwork.sample(4, 3, 2, width=10, seed=0)
    cases = [
        (lambda: net.step(X, Y), "lr"),
        (lambda: net.step(X, Y, lr=-1), "lr"),
        (lambda: net.step(X, Y, lr=1.0, lr_f=float("inf")), "lr_f"),
        (lambda: net.step(X, Y[:, :1], lr=1.0), "Y"),
        (lambda: net.step(X[:, :3], Y, lr=1.0), "X"),
        (lambda: net.step(X[:0], Y[:0], lr=1.0), "X"),
        (lambda: net.f(X), "Z"),
        (lambda: net.jacobian_t_dot(X[:, :3], Y[:4]), "C"),
        (lambda: FiniteNetwork([np.ones((5, 4)), np.ones((3, 6))], [np.ones((5, 3)), np.ones((2, 5))]),
         r"g_weights\[1\]"),
        (lambda: FiniteNetwork([np.ones((3, 4))], [np.ones((5, 2))]), "f_weights"),
        (lambda: FiniteNetwork([np.ones((3, 4))], [np.ones((2, 3))], activation="tanh"), "activation"),
        (lambda: FiniteNetwork.sample(4, 3, 2, width=0), "width"),
        (lambda: FiniteNetwork.sample(4, 3, 2, depth_f=0), "depth_f"),
        (lambda: net.effective(), "activation"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=rf"^{name}:"):
            call()
