"""Architectures beyond MATH §1 (MATH §2.2, §4.3): erf, biases, layer scales, depth, cross-entropy.

Each kernel of the layer recursion is checked against
* the closed forms it must reproduce (default ReLU network, plain linear networks: tests/refimpl/oracles.py,
  and test_kernels.py),
* central finite differences of K (for Xi), of Sigma (for Sigma_(1)) and of Sigma_(1) (for Sigma_(2)),
* Monte Carlo over finite random networks of the same architecture: Sigma = E[f(x) f(y)],
  Sigma_(1) = E[f(x) J(y)], Sigma_(2) = E[J(x)^T J(y)] and the NTK = E[empirical NTK], within
  3 standard errors over 20 input pairs that include parallel, anti-parallel and nearly parallel ones.
"""

import math
import os

import numpy as np
import pytest

from fdiff import central_difference
from refimpl import activations
from refimpl import kernels as K
from refimpl.dynamics import (BottleneckSimulator, InfiniteSimulator, check_ce_targets, loss_and_chi,
                              pointwise_loss)
from refimpl.finite import FiniteNetwork
from refimpl.network import MLP, RandomNetwork

ARCHS = {
    "erf": K.Layers.make("erf"),
    "erf_deep_bias": K.Layers.make("erf", 3, 1.3, 0.4, 0.8),
    "relu_bias": K.Layers.make("relu", 2, 1.0, 0.5, 1.0),
    "relu_deep": K.Layers.make("relu", 3),
    "relu_deep_bias": K.Layers.make("relu", 4, 1.4, 0.3, 0.7),
    "relu_scaled": K.Layers.make("relu", 2, 1.5, 0.0, 0.3),
    "linear_bias": K.Layers.make("linear", 3, 0.9, 0.6, 1.2),
}


def _rotate(x, angle, rng):
    r = rng.standard_normal(x.shape)
    r -= (r @ x) / (x @ x) * x
    r *= np.linalg.norm(x) / np.linalg.norm(r)
    return np.cos(angle) * x + np.sin(angle) * r


def _pairs(m, rng, n_random=12, near=(1e-3, 1e-4)):
    """Random pairs, then parallel, anti-parallel, nearly (anti-)parallel (angles ``near``), angle 0.1, orthogonal."""
    out = [(rng.standard_normal(m), rng.standard_normal(m)) for _ in range(n_random)]
    x = rng.standard_normal(m)
    out += [(x, 0.6 * x), (x, -2.3 * x), (x, 1.7 * _rotate(x, near[0], rng)), (x, -0.8 * _rotate(x, near[0], rng)),
            (x, _rotate(x, near[1], rng)), (x, -_rotate(x, near[1], rng)), (x, 2.0 * _rotate(x, 0.1, rng)),
            (x, _rotate(x, np.pi / 2, rng))]
    X, Y = zip(*out)
    return np.array(X), np.array(Y)


# --------------------------------------------------------------------------- dual kernels

def test_erf_williams_closed_form_by_quadrature():
    """E[erf(u) erf(v)] for a 2x2 covariance, by Gauss-Hermite quadrature, against the dual kernel."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = weights / weights.sum()
    erf = np.vectorize(math.erf)
    for qx, qy, rho in ((0.3, 2.0, 0.4), (1.5, 1.5, -0.9), (0.05, 4.0, 0.99)):
        c = rho * math.sqrt(qx * qy)
        L = np.linalg.cholesky([[qx, c], [c, qy]])
        u = L[0, 0] * nodes[:, None]
        v = L[1, 0] * nodes[:, None] + L[1, 1] * nodes[None, :]
        W = weights[:, None] * weights[None, :]
        quad = np.sum(W * erf(u) * erf(v))
        quad_d = np.sum(W * (2 / math.sqrt(math.pi)) ** 2 * np.exp(-u * u - v * v))
        z = activations.PreActivation(sx=np.array(math.sqrt(qx)), sy=np.array(math.sqrt(qy)), c=np.array(c),
                                      dlt=np.array(math.sqrt(qx * qy) - c), eps=np.array(math.sqrt(qx * qy) + c))
        o = activations.ERF.dual(z, np)
        assert abs(o.V - quad) < 1e-9
        assert abs(o.Vd - quad_d) < 1e-9


# --------------------------------------------------------------------------- finite differences

@pytest.mark.parametrize("name", sorted(ARCHS))
@pytest.mark.parametrize("m", [2, 5])
def test_xi_and_sigma1_match_central_differences(name, m):
    """Xi = dK(x, y)/dx and Sigma_(1) = dSigma(x, b)/db at b = y, against central differences."""
    spec = ARCHS[name]
    X, Y = _pairs(m, np.random.default_rng(m))
    for x, y in zip(X, Y):
        scale = math.sqrt(K.ntk(x[None], x[None], spec)[0, 0] * K.ntk(y[None], y[None], spec)[0, 0])
        xi = K.xi(x[None], y[None], spec)[0, 0]
        fd = central_difference(lambda z: K.ntk(z[None], y[None], spec)[0, 0], x, 1e-7 * np.linalg.norm(x))
        assert np.linalg.norm(xi - fd) <= 1e-6 * scale / np.linalg.norm(x), (name, x, y, xi, fd)
        s_scale = math.sqrt(K.nngp(x[None], x[None], spec)[0, 0] * K.nngp(y[None], y[None], spec)[0, 0])
        s1 = K.sigma1(x[None], y[None], spec)[0, 0]
        fd1 = central_difference(lambda z: K.nngp(x[None], z[None], spec)[0, 0], y, 1e-7 * np.linalg.norm(y))
        assert np.linalg.norm(s1 - fd1) <= 1e-6 * s_scale / np.linalg.norm(y), (name, x, y, s1, fd1)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_sigma2_matches_central_differences_of_sigma1(name):
    """Sigma_(2)(x, y) = d Sigma_(1)(x, y) / dx (second partials of the NNGP, MATH §2.2)."""
    spec = ARCHS[name]
    X, Y = _pairs(3, np.random.default_rng(3), near=(1e-2, 1e-3))
    for x, y in zip(X, Y):
        s2 = K.sigma2(x[None], y[None], spec)[0, 0]
        fd = central_difference(lambda z: K.sigma1(z[None], y[None], spec)[0, 0], x, 1e-7 * np.linalg.norm(x))
        scale = math.sqrt(K.nngp(x[None], x[None], spec)[0, 0] * K.nngp(y[None], y[None], spec)[0, 0])
        assert np.max(np.abs(s2 - fd)) <= 1e-6 * scale / (np.linalg.norm(x) * np.linalg.norm(y)), (name, x, y)
    S = K.sigma2(X, X, spec)
    np.testing.assert_allclose(S, np.transpose(S, (1, 0, 3, 2)), rtol=1e-10, atol=1e-14)   # E[J(x)^T J(y)]^T


def test_xi_on_the_ridge_is_the_central_difference():
    """At exactly parallel inputs K has a cone; Xi there is the central difference (a := 0, MATH §2)."""
    x = np.array([[0.3, -1.2, 2.0]])
    for name in ("relu_deep", "relu_deep_bias", "relu_bias"):
        spec = ARCHS[name]
        for c in (0.5, 3.0, -0.7):
            y = c * x
            fd = central_difference(lambda z: K.ntk(z[None], y, spec)[0, 0], x[0], 1e-6)
            np.testing.assert_allclose(K.xi(x, y, spec)[0, 0], fd, rtol=1e-6, atol=1e-9)
            assert np.all(np.isfinite(K.xi(x, y, spec)))


def test_zero_vectors_give_finite_kernels():
    X = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    for spec in ARCHS.values():
        for fn in (K.ntk, K.nngp, K.sigmadot, K.xi, K.sigma1):
            assert np.all(np.isfinite(fn(X, X, spec)))


# --------------------------------------------------------------------------- Monte Carlo

def _phi_dphi(activation):
    if activation == "relu":
        return (lambda a: np.maximum(a, 0.0)), (lambda a: (a > 0).astype(float))
    if activation == "erf":
        erf = np.frompyfunc(math.erf, 1, 1)
        return (lambda a: erf(a).astype(float)), (lambda a: 2 / math.sqrt(math.pi) * np.exp(-a * a))
    return (lambda a: a), (lambda a: np.ones_like(a))


def _mc_heads(spec, P, width, samples, seed, chunk=100):
    """f (S, p), J (S, p, m) and the empirical NTK (S, p/2) of ``samples`` random MLPs of architecture spec.

    Written out here (batched over networks), independently of refimpl.network.  Pairs are
    rows (2k, 2k+1) of P; dr = 1.
    """
    rng = np.random.default_rng(seed)
    phi, dphi = _phi_dphi(spec.activation)
    p, m = P.shape
    dims = [m] + [width] * (spec.depth - 1) + [1]
    stds = spec.layer_stds()
    f = np.empty((samples, p))
    J = np.empty((samples, p, m))
    ntk = np.empty((samples, p // 2))
    for s in range(0, samples, chunk):
        c = min(chunk, samples - s)
        ws = [rng.standard_normal((c, dims[i + 1], dims[i])) for i in range(spec.depth)]
        bs = [rng.standard_normal((c, dims[i + 1], 1)) * stds[i][1] for i in range(spec.depth)]
        scale = [stds[i][0] / math.sqrt(dims[i]) for i in range(spec.depth)]
        h = np.broadcast_to(P.T, (c, m, p))                    # layer input, (c, n_in, p)
        hs, pres = [], []
        for i in range(spec.depth):
            hs.append(h)
            a = scale[i] * (ws[i] @ h) + bs[i]
            pres.append(a)
            h = phi(a) if i < spec.depth - 1 else a
        f[s:s + c] = h[:, 0, :]
        delta = np.ones((c, 1, p))                             # df/da_l, (c, n_l, p)
        tot = np.zeros((c, p // 2))
        for i in range(spec.depth - 1, -1, -1):
            dd = np.sum(delta[:, :, 0::2] * delta[:, :, 1::2], axis=1)
            hh = np.sum(hs[i][:, :, 0::2] * hs[i][:, :, 1::2], axis=1)
            tot += dd * (scale[i] ** 2 * hh + stds[i][1] ** 2)
            back = scale[i] * np.swapaxes(ws[i], 1, 2) @ delta   # df/dh_{l-1}
            delta = back * dphi(pres[i - 1]) if i > 0 else back
        J[s:s + c] = np.swapaxes(delta, 1, 2)
        ntk[s:s + c] = tot
    return f, J, ntk


def _z(samples_of_product, theory):
    """|mean - theory| / standard error per pair (vector entries pooled per pair)."""
    S = samples_of_product.shape[0]
    diff = (samples_of_product.mean(axis=0) - theory).reshape(theory.shape[0], -1)
    var = samples_of_product.var(axis=0, ddof=1).reshape(theory.shape[0], -1) / S
    err, se = np.linalg.norm(diff, axis=1), np.sqrt(np.sum(var, axis=1))
    # a product with no variance (e.g. relu(u) relu(-u) = 0) must match exactly
    exact = se <= 1e-12 * max(1.0, float(np.max(np.abs(theory))))
    assert np.all(err[exact] <= 1e-12), err[exact]
    per_pair = np.where(exact, 0.0, err / np.where(exact, 1.0, se))
    pooled = np.linalg.norm(diff) / math.sqrt(np.sum(var))
    return per_pair, pooled


MC_CASES = [("erf", 32, 3000), ("relu_bias", 64, 4000), ("relu_scaled", 64, 4000),
            ("linear_bias", 64, 2000), ("erf_deep_bias", 64, 1500), ("relu_deep", 96, 1500),
            ("relu_deep_bias", 96, 1500)]


@pytest.mark.parametrize("name, width, samples", MC_CASES)
def test_monte_carlo_over_random_networks(name, width, samples):
    """Sigma, Sigma_(1) and the NTK against finite random networks of that architecture.

    One hidden layer: the expectations equal the closed forms at every width.  Deeper networks
    differ by O(1/width), well below the standard errors here.  Checked: the pooled error over the
    20 pairs within 3 standard errors, and every pair within 4.5 (many comparisons).
    """
    spec = ARCHS[name]
    m = 3
    # nearly anti-parallel at 1e-2, not closer: a ReLU unit is active at both inputs with
    # probability (pi - angle)/2pi, and Monte Carlo needs many such units to estimate that term
    X, Y = _pairs(m, np.random.default_rng(7), n_random=12, near=(1e-3, 1e-2))
    P = np.empty((2 * X.shape[0], m))
    P[0::2], P[1::2] = X, Y
    f, J, ntk = _mc_heads(spec, P, width, samples, seed=11)
    idx = np.arange(X.shape[0])
    checks = {
        "nngp": (f[:, 0::2] * f[:, 1::2], K.nngp(X, Y, spec)[idx, idx]),
        "sigma1": (f[:, 0::2, None] * J[:, 1::2], K.sigma1(X, Y, spec)[idx, idx]),
        "ntk": (ntk, K.ntk(X, Y, spec)[idx, idx]),
        "sigma2": (J[:, 0::2, :, None] * J[:, 1::2, None, :], K.sigma2(X, Y, spec)[idx, idx]),
    }
    for key, (prod, theory) in checks.items():
        per_pair, pooled = _z(prod, theory)
        assert pooled < 3.0, (name, key, pooled)
        assert per_pair.max() < 4.5, (name, key, per_pair)


# --------------------------------------------------------------------------- cross-entropy (MATH §4.3)

@pytest.mark.parametrize("dr", [1, 3])
def test_cross_entropy_chi_is_the_gradient_of_the_loss(dr):
    rng = np.random.default_rng(dr)
    F = rng.standard_normal((6, dr)) * 3
    Y = (rng.random((6, 1)) > 0.5).astype(float) if dr == 1 else np.eye(dr)[rng.integers(0, dr, 6)]
    loss, chi = loss_and_chi(F, Y, "ce")
    assert loss == pytest.approx(np.mean(pointwise_loss(F, Y, "ce")), rel=1e-14)
    fd = central_difference(lambda G: loss_and_chi(G, Y, "ce")[0], F, 1e-6)
    np.testing.assert_allclose(chi, fd, rtol=0, atol=1e-9)
    if dr == 1:                       # logistic on 0/1 = softmax with logits (0, F)
        F2 = np.concatenate([np.zeros_like(F), F], axis=1)
        Y2 = np.concatenate([1 - Y, Y], axis=1)
        assert pointwise_loss(F, Y, "ce") == pytest.approx(pointwise_loss(F2, Y2, "ce"), rel=1e-13)
    assert np.all(np.isfinite(loss_and_chi(1e4 * F, Y, "ce")[1]))     # no overflow


def test_cross_entropy_refuses_regression_targets():
    with pytest.raises(ValueError, match="^Y: loss 'ce' needs"):
        check_ce_targets(np.array([[0.3], [1.0]]))
    with pytest.raises(ValueError, match="^Y: loss 'ce' needs"):
        check_ce_targets(np.array([[1.0, 1.0], [0.0, 1.0]]))
    check_ce_targets(np.eye(3)[[0, 2, 1]])


def test_cli_refuses_ce_on_synthetic_regression(tmp_path):
    from click.testing import CliRunner
    import cli
    res = CliRunner().invoke(cli.cli, ["train", "--loss", "ce", "--steps", "2", "--out", str(tmp_path / "r")])
    assert res.exit_code != 0
    assert "loss: 'ce' needs a classification data set" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- networks and simulators

def test_random_network_of_an_architecture_matches_the_finite_network():
    Lg, Lf = K.architecture("erf", 2, 1, (1.2, 0.9), (0.3, 0.1), 0.7)
    net = RandomNetwork.sample(3, 4, 2, width=50, seed=3, layers_g=Lg, layers_f=Lf)
    fin = FiniteNetwork.from_random_network(net)
    X = np.random.default_rng(0).standard_normal((5, 3))
    np.testing.assert_allclose(net.g(X), fin.g(X), rtol=1e-14)
    Z = net.g(X)
    np.testing.assert_allclose(net.f(Z), fin.f(Z), rtol=1e-14)
    J = net.jacobian(Z)
    D = central_difference(net.f, Z, 1e-6)                      # (p, d, p, dr): d f(Z)[q, a] / d Z[p, k]
    rows = np.arange(Z.shape[0])
    fd = np.transpose(D[rows, :, rows, :], (0, 2, 1))          # (p, dr, d)
    np.testing.assert_allclose(J, fd, atol=1e-7)
    rebuilt = RandomNetwork.from_weights(net.weights(), Lg, Lf)
    np.testing.assert_array_equal(rebuilt.f(Z), net.f(Z))


def test_finite_network_gradients_with_biases_and_cross_entropy():
    Lg, Lf = K.architecture("relu", 1, 2, 1.1, 0.4, 0.8)
    net = FiniteNetwork.sample(3, 2, 3, width=7, seed=1, layers_g=Lg, layers_f=Lf, loss="ce")
    X = np.random.default_rng(1).standard_normal((4, 3))
    Y = np.eye(3)[[0, 1, 2, 1]]
    loss, gg, gf, gbg, gbf = net.gradients(X, Y, with_biases=True)
    for params, grads in ((net.f_weights, gf), (net._f.biases, gbf), (net._g.biases, gbg), (net.g_weights, gg)):
        for w, gw in zip(params, grads):
            k = np.unravel_index(np.argmax(np.abs(gw)), gw.shape)
            entry = w[k[:-1]] if len(k) > 1 else w                     # a 1-d view holding w[k]
            fd = central_difference(lambda: net.loss(X, Y), entry, 1e-6, inplace=True)[k[-1]]
            assert gw[k] == pytest.approx(fd, rel=1e-5, abs=1e-9)


def _theorem32_gap(layers_g, layers_f, loss, widths, steps=10, lr=0.1, dr=2):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((6, 3))
    Y = np.eye(dr)[rng.integers(0, dr, 6)] if loss == "ce" else rng.standard_normal((6, dr))
    gaps = []
    for n in widths:
        errs = []
        for seed in range(2):
            net = RandomNetwork.sample(3, 2, dr, width=n, seed=seed, layers_g=layers_g, layers_f=layers_f)
            fin = FiniteNetwork.from_random_network(net, loss=loss)
            sim = BottleneckSimulator(net, X, Y, lr=lr, loss=loss)
            for _ in range(steps):
                lf, ls = fin.step(X, Y, lr=lr), sim.step(np.arange(6))
                assert lf == pytest.approx(ls, rel=0.2)
            F = sim.outputs(X)
            errs.append(np.linalg.norm(fin.outputs(X) - F) / np.linalg.norm(F - net.f(net.g(X))))
        gaps.append(np.mean(errs))
    return gaps


@pytest.mark.parametrize("arch, loss, widths, ratio", [
    (("erf", 1, 2, 1.0, 0.2, 1.0), "mse", (48, 768), 0.5),
    (("relu", 1, 1, 1.0, 0.0, 1.0), "ce", (100, 1600), 0.6),
    pytest.param(("relu", 2, 1, 1.0, 0.3, 1.0), "mse", (100, 1600), 0.8,
                 marks=[pytest.mark.slow, pytest.mark.skipif(not os.environ.get("RUN_SLOW"),
                                                             reason="18 s; set RUN_SLOW=1")]),
])
def test_wide_finite_networks_approach_the_simulator(arch, loss, widths, ratio):
    """Theorem 3.2 for a deep f (erf), cross-entropy and a deep ReLU g with biases: the gap between
    finite network and simulator, relative to the change of F, falls with the width (verify
    theorem3.2 runs the full check).  ReLU's kinks crossed by moving embeddings make its gap fall
    more slowly (MATH §6)."""
    layers_g, layers_f = K.architecture(*arch)
    small, big = _theorem32_gap(layers_g, layers_f, loss, widths=widths)
    assert big < ratio * small, (small, big)
