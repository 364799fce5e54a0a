"""The kernels (MATH §2, §5) against finite differences, the paper's closed forms (tests/refimpl/oracles.py),
Monte Carlo over random networks (lemma 3.1), and the argument convention of the kernel API."""

import numpy as np
import pytest
from hypothesis import assume, example, given, settings, strategies as st

import oracles
from fdiff import central_difference
from refimpl import kernels as K
from refimpl.network import RandomNetwork

RNG = np.random.default_rng(20240611)


def _rotate_towards(x, angle, rng):
    """A vector of the same length as x at the given angle from x."""
    r = rng.standard_normal(x.shape)
    r -= (r @ x) / (x @ x) * x
    r *= np.linalg.norm(x) / np.linalg.norm(r)
    return np.cos(angle) * x + np.sin(angle) * r


def _pairs(m, rng):
    """(x, y) pairs: random, nearly parallel (angle 1e-3), parallel, anti-parallel, nearly anti-parallel."""
    out = []
    for _ in range(4):
        out.append((rng.standard_normal(m), rng.standard_normal(m)))
    x = rng.standard_normal(m)
    out.append((x, 1.7 * _rotate_towards(x, 1e-3, rng)))
    out.append((x, 0.6 * x))                    # exactly parallel (the ridge of K)
    out.append((x, -2.3 * x))                   # exactly anti-parallel
    out.append((x, -0.8 * _rotate_towards(x, 1e-3, rng)))
    return out


# --------------------------------------------------------------------------- Xi = dK/dx

@pytest.mark.parametrize("m", [2, 3, 8])
def test_xi_matches_central_differences_of_K(m):
    rng = np.random.default_rng(m)
    worst = 0.0
    for x, y in _pairs(m, rng):
        xi = K.xi(x[None], y[None])[0, 0]
        h = 1e-7 * np.linalg.norm(x)      # << |x| * angle for the nearly parallel pairs
        fd = central_difference(lambda z: K.ntk(z[None], y[None])[0, 0], x, h)
        err = np.linalg.norm(xi - fd) / np.linalg.norm(y) * m
        worst = max(worst, err)
        assert err < 1e-7, (x, y, xi, fd)
    assert worst < 1e-7


def test_xi_on_the_ridge_follows_the_spec_convention():
    x = np.array([[0.3, -1.2, 2.0]])
    for c in (0.5, 3.0):
        np.testing.assert_allclose(K.xi(x, c * x)[0, 0], c * x[0] / 3, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(K.xi(x, -c * x)[0, 0], np.zeros(3), atol=1e-15)


def _xi_direct(x, y, m):
    """MATH §2's stable form of Xi, written out independently of the library."""
    xh, yh = x / np.linalg.norm(x), y / np.linalg.norm(y)
    angle = 2 * np.arctan2(np.linalg.norm(xh - yh), np.linalg.norm(xh + yh))
    s, lam = np.sin(angle), np.cos(angle)
    sigmadot = (np.pi - angle) / (2 * np.pi)
    a = y - (y @ xh) * xh
    a = a / np.linalg.norm(a) if s >= 1e-10 else np.zeros_like(x)
    return (2 * sigmadot * y + np.linalg.norm(y) / (2 * np.pi) * (s * xh + lam * a)) / m


@pytest.mark.parametrize("m", [2, 5])
def test_xi_coefficient_form_equals_the_direct_formula(m):
    rng = np.random.default_rng(100 + m)
    pairs = _pairs(m, rng)
    X = np.array([p[0] for p in pairs])
    Y = np.array([p[1] for p in pairs])
    alpha, beta = K.xi_coefficients(X, Y)
    full = K.xi(X, Y)
    Xh = X / np.linalg.norm(X, axis=1, keepdims=True)
    for i in range(len(X)):
        for j in range(len(Y)):
            want = _xi_direct(X[i], Y[j], m)
            scale = np.linalg.norm(Y[j]) / m
            assert np.linalg.norm(alpha[i, j] * Y[j] + beta[i, j] * Xh[i] - want) < 1e-9 * scale
            assert np.linalg.norm(full[i, j] - want) < 1e-9 * scale


# --------------------------------------------------------------------------- lemma 3.1 covariances

def test_sigma1_is_the_derivative_of_sigma_in_its_second_argument():
    rng = np.random.default_rng(7)
    for x, y in _pairs(3, rng)[:5]:
        fd = central_difference(lambda b: K.nngp(x[None], b[None])[0, 0], y, 1e-7 * np.linalg.norm(y))
        np.testing.assert_allclose(K.sigma1(x[None], y[None])[0, 0], fd, atol=1e-7 * np.linalg.norm(x))


def test_sigma2_is_the_mixed_second_derivative_of_sigma():
    rng = np.random.default_rng(8)
    for x, y in _pairs(3, rng)[:5]:
        # Sigma_(2)^{bc}(x, y) = d/dx_b [dSigma(x, y)/dy_c] = d/dx_b Sigma_(1)_c(x, y)
        fd = central_difference(lambda a: K.sigma1(a[None], y[None])[0, 0], x, 1e-7 * np.linalg.norm(x))
        np.testing.assert_allclose(K.sigma2(x[None], y[None])[0, 0], fd, atol=1e-7)


def test_sigma2_identities():
    X = RNG.standard_normal((6, 4))
    X[5] = 0.01 * X[0]
    S2 = K.sigma2(X, X)
    for i in range(6):
        np.testing.assert_allclose(S2[i, i], np.eye(4) / 8, atol=1e-15)          # I / (2m)
    np.testing.assert_allclose(np.trace(S2, axis1=2, axis2=3), K.sigmadot(X, X), atol=1e-14)
    np.testing.assert_allclose(S2, np.transpose(S2, (1, 0, 3, 2)), atol=1e-15)   # S2(x,y) = S2(y,x)^T
    np.testing.assert_allclose(K.nngp(X, X), K.nngp(X, X).T, atol=1e-15)
    np.testing.assert_allclose(K.ntk(X, X), K.ntk(X, X).T, atol=1e-15)


def _mc_head_covariances(points, samples, width, dr=2):
    """Per-network products of (f, J) of RandomNetwork heads, averaged over the dr independent rows of v.

    Returns per-sample arrays ff (S, p, p), fJ (S, p, p, d), JJ (S, p, p, d, d).
    """
    p, d = points.shape
    ff = np.empty((samples, p, p))
    fJ = np.empty((samples, p, p, d))
    JJ = np.empty((samples, p, p, d, d))
    for s in range(samples):
        net = RandomNetwork.sample(1, d, dr, width=width, seed=s)
        f = net.f(points)                       # (p, dr)
        J = net.jacobian(points)                # (p, dr, d)
        ff[s] = f @ f.T / dr
        fJ[s] = np.einsum("ia,jab->ijb", f, J) / dr
        JJ[s] = np.einsum("iab,jac->ijbc", J, J) / dr
    return ff, fJ, JJ


def test_lemma_3_1_monte_carlo_over_random_networks():
    """E[f f] = Sigma, E[f J] = Sigma_(1), E[J J] = Sigma_(2) (paper eqs 8-11).

    For the two-layer head these hold exactly at every width (a mean of n
    i.i.d. unit terms), so the only error is Monte Carlo: the empirical
    means must lie within 5 standard errors (estimated from the same
    samples) of the closed forms, in Frobenius norm.
    """
    rng = np.random.default_rng(3)
    x1, x2 = rng.standard_normal(3), rng.standard_normal(3)
    pts = np.array([x1, x2, 1.3 * _rotate_towards(x1, 0.05, rng), -0.7 * x2])
    S = 10_000
    ff, fJ, JJ = _mc_head_covariances(pts, S, width=64)
    theory = {"Sigma": K.nngp(pts, pts), "Sigma_(1)": K.sigma1(pts, pts), "Sigma_(2)": K.sigma2(pts, pts)}
    for (name, th), samples in zip(theory.items(), (ff, fJ, JJ)):
        mean = samples.mean(axis=0)
        se = np.sqrt(np.sum(samples.var(axis=0, ddof=1)) / S)      # Frobenius norm of the standard errors
        err = np.linalg.norm(mean - th)
        rel, rel_se = err / np.linalg.norm(th), se / np.linalg.norm(th)
        print(f"{name}: relative Frobenius error {rel:.2e} (standard error {rel_se:.2e}, {S} networks)")
        assert err < 5 * se, (name, rel, rel_se)
        assert rel < 0.1, name                                   # and the samples are informative


def test_ntk_is_the_limit_of_the_empirical_ntk_of_one_wide_network():
    """K = lim (1/n) sum_k [relu(u_k.x/sqrt d) relu(u_k.y/sqrt d) + v_k^2 1[u_k.x>0] 1[u_k.y>0] x.y/d].

    The empirical kernel of one network of width n is a mean of n i.i.d. unit terms; it must lie
    within 5 standard errors (estimated from the units) of the closed form.  Theta likewise for g.
    """
    n = 200_000
    net = RandomNetwork.sample(4, 3, 1, width=n, seed=11)
    rng = np.random.default_rng(5)
    for W_in, W_out, m in ((net.u, net.v, 3), (net.theta1, net.theta2[:1], 4)):
        P = rng.standard_normal((4, m))
        P[3] = 2.0 * _rotate_towards(P[0], 0.02, rng)
        pre = P @ W_in.T / np.sqrt(m)                              # (p, n)
        act, mask = np.maximum(pre, 0), (pre > 0).astype(float)
        units = (act[:, None, :] * act[None, :, :]
                 + W_out[0] ** 2 * mask[:, None, :] * mask[None, :, :] * (P @ P.T / m)[:, :, None])
        emp = units.mean(axis=2)
        se = np.sqrt(np.sum(units.var(axis=2, ddof=1)) / n)
        th = K.ntk(P, P)
        err = np.linalg.norm(emp - th)
        print(f"NTK m={m}: relative error {err / np.linalg.norm(th):.2e} (standard error "
              f"{se / np.linalg.norm(th):.2e}, width {n})")
        assert err < 5 * se


# --------------------------------------------------------------------------- linear kernels, ntk_inf

@pytest.mark.parametrize("depth", [1, 2, 3])
def test_linear_kernels(depth):
    X, Y = RNG.standard_normal((5, 3)), RNG.standard_normal((4, 3))
    np.testing.assert_allclose(K.nngp(X, Y, "linear", depth), X @ Y.T / 3)
    np.testing.assert_allclose(K.ntk(X, Y, "linear", depth), depth * X @ Y.T / 3)
    np.testing.assert_array_equal(K.sigmadot(X, Y, "linear", depth), np.ones((5, 4)))
    np.testing.assert_allclose(K.xi(X, Y, "linear", depth), np.broadcast_to(depth * Y / 3, (5, 4, 3)))
    np.testing.assert_allclose(K.sigma1(X, Y, "linear", depth), np.broadcast_to(X[:, None] / 3, (5, 4, 3)))
    np.testing.assert_allclose(K.sigma2(X, Y, "linear", depth), np.broadcast_to(np.eye(3) / 3, (5, 4, 3, 3)))
    fd = central_difference(lambda z: K.ntk(z[None], Y[:1], "linear", depth)[0, 0], X[0], 1e-6)
    np.testing.assert_allclose(K.xi(X[:1], Y[:1], "linear", depth)[0, 0], fd, atol=1e-9)
    Lin = K.ntk_inf(X, Y, K.Layers.make("linear", 2), K.Layers.make("linear", depth), lr_g=2.0, lr_f=0.5)
    np.testing.assert_allclose(Lin, 0.5 * depth * X @ Y.T / 3 + 2.0 * 2 * X @ Y.T / 3)


def test_ntk_inf_properties():
    X = RNG.standard_normal((7, 5))
    T = K.ntk_inf(X, X)
    np.testing.assert_allclose(T, T.T, atol=1e-15)
    assert np.linalg.eigvalsh(T).min() > -1e-12                               # positive semi-definite
    # diagonal closed form: Sigma_g = |x|^2/(2 d0), Sigma_F = Sigma_g/2, Sigmadot_F = 1/2, Theta_g = |x|^2/d0
    np.testing.assert_allclose(np.diag(T), np.sum(X * X, axis=1) / 5, rtol=1e-13)
    # the rates weight the two parameter groups linearly
    f_part = K.ntk_inf(X, X, lr_f=1.0, lr_g=0.0)
    g_part = K.ntk_inf(X, X, lr_f=0.0, lr_g=1.0)
    np.testing.assert_allclose(f_part + g_part, T, rtol=1e-14)
    np.testing.assert_allclose(K.ntk_inf(X, X, lr_f=0.3, lr_g=1.7), 0.3 * f_part + 1.7 * g_part, rtol=1e-13)
    # g's part is Sigmadot_F Theta_g with 0 <= Sigmadot_F <= 1/2
    ratio = g_part / K.ntk(X, X)
    assert np.all(ratio >= 0) and np.all(ratio <= 0.5 + 1e-14)
    # homogeneous of degree one in each argument
    np.testing.assert_allclose(K.ntk_inf(3.0 * X[:2], 0.5 * X), 1.5 * T[:2], rtol=1e-13)


def test_ntk_inf_diagonal_to_full_precision():
    """A point with itself (lam = 1) keeps every digit (MATH §2.1): NTK_inf(x, x) = |x|^2 / d0."""
    X = np.random.default_rng(1).standard_normal((20, 5))
    np.testing.assert_allclose(np.diag(K.ntk_inf(X, X)), np.sum(X * X, axis=1) / 5, rtol=1e-13)


# --------------------------------------------------------------------------- properties (hypothesis)

finite_vec = st.lists(st.floats(-10, 10, allow_nan=False, allow_infinity=False), min_size=3, max_size=3)


@settings(max_examples=60, deadline=None)
@given(x=finite_vec, c=st.floats(-1e3, 1e3, allow_nan=False), y=finite_vec)
def test_kernels_are_finite_everywhere(x, c, y):
    """No NaN or inf for scaled copies (the ridge), zero vectors and arbitrary pairs."""
    x = np.array(x)
    P = np.array([x, c * x, y, np.zeros(3)])
    for fn in (K.nngp, K.sigmadot, K.ntk, K.xi, K.sigma1, K.sigma2, K.ntk_inf):
        assert np.all(np.isfinite(fn(P, P))), fn.__name__
    alpha, beta = K.xi_coefficients(P, P)
    assert np.all(np.isfinite(alpha)) and np.all(np.isfinite(beta))


@settings(max_examples=40, deadline=None)
@given(x=finite_vec, y=finite_vec, a=st.floats(1e-2, 1e2), b=st.floats(1e-2, 1e2))
@example(x=[0.0, 1.0, 0.0], y=[0.0, 1.0, 4.0060576874606326e-10], a=1.0, b=0.01171875)
def test_homogeneity(x, y, a, b):
    """K(a x, b y) = a b K(x, y); Xi(a x, b y) = b Xi(x, y) (Xi is the gradient of a degree-1 function).

    Points of norm below 1e-140 are left out: the recursion works with variances |x|^2 / m, which are
    subnormal there (MATH §2.1), and keeps only about 8 digits (finiteness: the test above)."""
    x, y = np.array([x]), np.array([y])
    for v in (x, y):
        assume(np.linalg.norm(v) == 0.0 or np.linalg.norm(v) > 1e-140)
    scale = np.linalg.norm(x) * np.linalg.norm(y)
    np.testing.assert_allclose(K.ntk(a * x, b * y), a * b * K.ntk(x, y), rtol=1e-10, atol=1e-13 * a * b * scale)
    # Xi is evaluated in the coefficient form alpha y + beta x^ the backends share (MATH §2): its two
    # terms grow like 1/sin(theta) near parallel inputs and cancel, so rounding costs eps/sin(theta)
    # relative there (1e-6 at theta = 1e-10); the bound below allows exactly that much.
    s = float(K.pair_angles(x, y)[4][0, 0])
    cond = np.finfo(float).eps / max(s, K.XI_SIN_THRESHOLD) if s > 0 else 0.0
    np.testing.assert_allclose(K.xi(a * x, b * y), b * K.xi(x, y), rtol=1e-9,
                               atol=(1e-12 + cond) * b * (1 + np.linalg.norm(y)))


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, name", [
    (lambda: K.ntk(np.ones(3), np.ones((2, 3))), "X"),
    (lambda: K.ntk(np.ones((2, 3)), np.ones((2, 4))), "Y"),
    (lambda: K.xi(np.full((2, 3), np.nan), np.ones((2, 3))), "X"),
    (lambda: K.sigma2(np.ones((2, 3)), np.array([[1.0, np.inf, 0.0]])), "Y"),
    (lambda: K.ntk(np.ones((2, 3)), np.ones((2, 3)), activation="tanh"), "activation"),
    (lambda: K.ntk(np.ones((2, 3)), np.ones((2, 3)), depth=1), "depth"),
    (lambda: K.ntk(np.ones((2, 3)), np.ones((2, 3)), b_std=-1.0), "b_std"),
    (lambda: K.ntk(np.ones((2, 3)), np.ones((2, 3)), "erf", w_std=0.0), "w_std"),
    (lambda: K.ntk(np.ones((2, 3)), np.ones((2, 3)), "linear", depth=0), "depth"),
    (lambda: K.ntk_inf(np.ones((2, 3)), np.ones((2, 3)), K.Layers.make("erf")), "layers_f"),
    (lambda: K.ntk_inf(np.ones((2, 3)), np.ones((2, 3)), layers_f=K.Layers.make("erf")), "layers_g"),
    (lambda: K.nngp_inf(np.ones((2, 3)), np.ones((2, 3)), "relu", "relu"), "layers_g"),
    (lambda: K.ntk(np.ones((2, 3)), np.ones((2, 3)), K.Layers.make("erf"), depth=3), "depth"),
    (lambda: K.xi(np.ones((2, 3)), np.ones((2, 3)), K.Layers.make("relu"), w_std=2.0), "w_std"),
    (lambda: K.sigma2(np.ones((2, 3)), np.ones((2, 3)), K.Layers.make("relu"), out_std=0.5), "out_std"),
    (lambda: K.architecture("relu", 0, 1), "depth_g"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        call()


# --------------------------------------------------------------------------- the paper's closed forms as oracles

def _regular_pairs(m, seed):
    from experiments.golden import kernel_inputs
    X, Y = kernel_inputs(m, seed)
    theta = oracles.geometry(X, Y)[2]
    return X, Y, (theta > 1e-5) & (np.pi - theta > 1e-5)


def _rel(a, b, mask):
    return np.max((np.abs(a - b) / (np.abs(b) + 1e-6 * np.abs(b).max()))[mask])


@pytest.mark.parametrize("m", [3, 16])
def test_the_recursion_reproduces_the_papers_closed_forms(m):
    """The layer recursion (the only path in refimpl) against the written-out ReLU kernels of MATH §2,
    §5 and lemma 4.1's linear ones, on the golden pair sets (random, parallel, anti-parallel, nearly
    parallel, zero vectors); pairs within 1e-5 of the ridges are compared below.  The tolerance 1e-10 is
    the oracles' own: near anti-parallel pairs lam (pi - theta) + sin theta cancels in them (measured
    with mpmath at theta = pi - 0.01: oracle 3.7e-10 off, recursion 4.4e-12)."""
    X, Y, regular = _regular_pairs(m, 100 + m)
    sigma, sigmadot, ntk = oracles.relu(X, Y)
    alpha, beta = oracles.relu_xi_coefficients(X, Y)
    assert _rel(K.nngp(X, Y), sigma, regular) < 1e-10
    assert _rel(K.sigmadot(X, Y), sigmadot, regular) < 1e-10
    assert _rel(K.ntk(X, Y), ntk, regular) < 1e-10
    a, b = K.xi_coefficients(X, Y)
    assert _rel(a, alpha, regular) < 1e-10 and _rel(b, beta, regular) < 1e-10
    for lr_g, lr_f in ((1.0, 1.0), (1.9, 0.7)):
        assert _rel(K.ntk_inf(X, Y, lr_g=lr_g, lr_f=lr_f), oracles.relu_ntk_inf(X, Y, lr_g, lr_f), regular) < 1e-10
    assert _rel(K.nngp_inf(X, Y), oracles.relu_composed(X, Y)[0], regular) < 1e-10
    S1, S2 = K.sigma1(X, Y), K.sigma2(X, Y)
    np.testing.assert_allclose(S1[regular], oracles.relu_sigma1(X, Y)[regular], rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(S2[regular], oracles.relu_sigma2(X, Y)[regular], rtol=1e-10, atol=1e-12)
    for L in (1, 2, 3):
        want = oracles.linear(X, Y, L)
        for got, ref in zip((K.nngp(X, Y, "linear", L), K.sigmadot(X, Y, "linear", L), K.ntk(X, Y, "linear", L)),
                            want):
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14 * np.abs(ref).max())
        a, b = K.xi_coefficients(X, Y, "linear", L)
        np.testing.assert_allclose(a, L / m, rtol=1e-13)
        np.testing.assert_allclose(b, 0.0, atol=1e-15)


def test_the_ridges_give_the_closed_forms_limits():
    """Exactly parallel and anti-parallel pairs (theta = 0, pi) and zero vectors: the recursion returns
    the closed forms' values there (MATH §2: Xi(x, c x) = c x / m, or 0 for c < 0)."""
    x = np.array([[0.3, -1.2, 2.0], [0.0, 0.0, 0.0]])
    for c in (0.5, 3.0, -0.7):
        Y = np.array([c * x[0], [1.0, 2.0, -1.0]])
        for got, want in zip((K.nngp(x, Y), K.sigmadot(x, Y), K.ntk(x, Y)), oracles.relu(x, Y)):
            np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(K.xi(x[:1], Y[:1])[0, 0], max(c, 0) * x[0] / 3, rtol=1e-14, atol=1e-15)


# --------------------------------------------------------------------------- mixed architectures

#: NTK_inf(x, x) of an erf g (one hidden layer) feeding a ReLU f (one hidden layer) at x = (0.5, 0.5): the
#: value of neural-tangents 0.6.5 in float64 (stax Dense/Erf/Relu, W_std = 1, b_std = 0, the composed
#: network's NTK), recorded in the project's issue on the external cross-check and recomputed with
#: neural-tangents 0.6.5 on jax 0.4.30 (jax_enable_x64) for the values below.
NT_ERF_RELU_DIAGONAL = 0.43705988342781654


def test_mixed_architecture_is_exact_on_the_diagonal():
    """erf g then ReLU f: erf's dual forms sqrt(Vx Vy) -+ V without cancellation, so the ReLU layer
    after it sees angle 0 for a point with itself (it used to see a negative dlt and return NaN)."""
    g, f = K.Layers.make("erf", 2), K.Layers.make("relu", 2)
    x = np.array([[0.5, 0.5]])
    assert K.ntk_inf(x, x, g, f)[0, 0] == pytest.approx(NT_ERF_RELU_DIAGONAL, rel=1e-14)
    X = np.random.default_rng(3).standard_normal((12, 4))
    for gg, ff in ((g, f), (K.Layers.make("erf", 3, 1.2, 0.4, 0.8), K.Layers.make("relu", 3, 1.0, 0.3, 0.9)),
                   (K.Layers.make("relu", 3, 1.1, 0.2, 1.0), K.Layers.make("erf", 2))):
        T = K.ntk_inf(X, X, gg, ff)
        S = K.nngp_inf(X, X, gg, ff)
        assert np.all(np.isfinite(T)) and np.all(np.isfinite(S))
        # on the diagonal the composed kernel is the kernel of f at g's (parallel) output: recompute it
        # through pair_terms with angle exactly 0
        for i in range(len(X)):
            nx = np.linalg.norm(X[i])
            want = K.composed_terms(np.array(nx), np.array(nx), np.array(0.0), np.array(1.0), np.array(1.0), gg, ff, 4)[1]
            assert T[i, i] == pytest.approx(float(want), rel=1e-14)


def _mp_erf_relu_ntk_inf(x, y, mp):
    """NTK_inf of erf g (depth 2) then ReLU f (depth 2), unit scales, in mpmath (MATH §2.2, §5)."""
    x, y = [mp.mpf(float(v)) for v in x], [mp.mpf(float(v)) for v in y]
    m = len(x)
    q, qt, c = (sum(a * a for a in x) / m, sum(b * b for b in y) / m, sum(a * b for a, b in zip(x, y)) / m)

    def erf_v(q1, q2, cc):
        return 2 / mp.pi * mp.asin(2 * cc / mp.sqrt((1 + 2 * q1) * (1 + 2 * q2)))

    Sg = erf_v(q, qt, c)
    Sgx, Sgy = erf_v(q, q, q), erf_v(qt, qt, qt)
    Vd = 4 / (mp.pi * mp.sqrt((1 + 2 * q) * (1 + 2 * qt) - 4 * c * c))
    Tg = Sg + Vd * c
    lam = Sg / mp.sqrt(Sgx * Sgy)
    t = mp.acos(min(lam, mp.mpf(1)))
    SF = mp.sqrt(Sgx * Sgy) * (mp.sin(t) + (mp.pi - t) * mp.cos(t)) / (2 * mp.pi)
    return SF + (mp.pi - t) / (2 * mp.pi) * (Sg + Tg)


def test_mixed_architecture_near_the_diagonal_against_mpmath():
    """Near-diagonal pairs of an erf g and a ReLU f against a 50-digit evaluation of the same formulas."""
    mp = pytest.importorskip("mpmath").mp
    mp.dps = 50
    g, f = K.Layers.make("erf", 2), K.Layers.make("relu", 2)
    rng = np.random.default_rng(5)
    worst = 0.0
    for scale in (0.05, 1.0, 20.0):                            # erf's nearly linear and saturated ranges
        x = scale * rng.standard_normal(3)
        for ratio in (1.0, 1.0 + 1e-8, 1.3):                   # |y| / |x|
            for angle in (1e-2, 1e-4, 1e-6, 1e-8, 1e-10, 0.0):
                r = rng.standard_normal(3)
                r -= (r @ x) / (x @ x) * x
                r *= np.linalg.norm(x) / np.linalg.norm(r)
                y = ratio * (np.cos(angle) * x + np.sin(angle) * r)
                got = K.ntk_inf(x[None], y[None], g, f)[0, 0]
                want = float(_mp_erf_relu_ntk_inf(x, y, mp))
                worst = max(worst, abs(got - want) / abs(want))
    assert worst < 1e-14, worst


def test_neural_tangents_if_installed():
    """Optional live cross-check against neural-tangents (not a dependency; skipped without it)."""
    nt = pytest.importorskip("neural_tangents")
    import jax
    jax.config.update("jax_enable_x64", True)
    stax = nt.stax
    _, _, kfn = stax.serial(stax.Dense(1), stax.Erf(), stax.Dense(1), stax.Dense(1), stax.Relu(), stax.Dense(1))
    x = np.array([[0.5, 0.5]])
    assert float(kfn(x, x, "ntk")[0, 0]) == pytest.approx(NT_ERF_RELU_DIAGONAL, rel=1e-12)


#: Sigma and the NTK computed by neural-tangents 0.6.5 (jax 0.4.30, float64: jax_enable_x64) on the pairs
#: (NT_X[i], NT_Y[j]): ``stax.serial`` of Dense(W_std=w, b_std=b) [+ Relu/Erf] per hidden layer and a last
#: Dense(W_std=out, b_std=b) (NTK parametrisation); composed rows stack g's layers and then f's (no
#: bottleneck, MATH §5).  Keys: (activation, depth, w_std, b_std, out_std), or (g, f).
NT_X = [[0.3, -1.2, 2.0], [1.1, 0.4, -0.7]]
NT_Y = [[0.5, 0.9, -0.2], [0.31, -1.19, 2.02]]
NT_VALUES = [
    (('relu', 2, 1.0, 0.0, 1.0),
     [[0.03954383082406081, 0.9268333987655066], [0.1849477944773702, 0.06216383873612162]],
     [[-0.03110279447613848, 1.851091196037911], [0.3183644395921823, -0.025751626998419902]]),
    (('relu', 3, 1.4, 0.3, 0.7),
     [[0.27048534862399204, 1.005987242145443], [0.3143384163346956, 0.3171317225244449]],
     [[0.27531038578133155, 2.8085000213632405], [0.6031278271154974, 0.32537399597345174]]),
    (('erf', 2, 1.0, 0.0, 1.0),
     [[-0.20138872622268653, 0.5772910070822332], [0.2312079101622284, -0.20555683071426825]],
     [[-0.4097754586573895, 1.3908441898888175], [0.47314784930778936, -0.4185682447697532]]),
    (('erf', 4, 1.3, 0.4, 0.8),
     [[0.17926278627653994, 0.4604292029889288], [0.38232949635057034, 0.17787346178048766]],
     [[0.11532569016623473, 1.8221656586140829], [1.0305564656055044, 0.1131861792369582]]),
    (('linear', 3, 0.9, 0.6, 1.2),
     [[0.87944976, 3.049618608], [1.6289783999999998, 0.810480528]],
     [[1.39994928, 7.910455824], [3.6485352, 1.193041584]]),
    ((('erf', 2, 1.0, 0.0, 1.0), ('relu', 2, 1.0, 0.0, 1.0)),
     [[0.021617200241253312, 0.28864553881443594], [0.1229757085922458, 0.02993611099229622]],
     [[-0.07990317630480069, 1.2694297691243965], [0.38875639262831585, -0.08058349770360873]]),
    ((('relu', 3, 1.1, 0.2, 1.0), ('erf', 2, 1.0, 0.0, 1.0)),
     [[0.12242242962995308, 0.4098035993288747], [0.18274210030665358, 0.13829568312357965]],
     [[0.3725772984708599, 2.25323172050676], [0.7528055386208483, 0.42311915785070875]]),
]


@pytest.mark.parametrize("case, sigma, ntk", NT_VALUES, ids=[str(v[0]) for v in NT_VALUES])
def test_recorded_neural_tangents_values(case, sigma, ntk):
    """relu, erf and linear at depths 2-4 with scales and biases, and mixed composed networks, against
    neural-tangents' values (worst 6.3e-15 relative when recorded)."""
    X, Y = np.array(NT_X), np.array(NT_Y)
    if isinstance(case[0], tuple):
        g, f = K.Layers.make(*case[0]), K.Layers.make(*case[1])
        got = K.nngp_inf(X, Y, g, f), K.ntk_inf(X, Y, g, f)
    else:
        spec = K.Layers.make(*case)
        got = K.nngp(X, Y, spec), K.ntk(X, Y, spec)
    np.testing.assert_allclose(got[0], sigma, rtol=1e-13)
    np.testing.assert_allclose(got[1], ntk, rtol=1e-13)


# --------------------------------------------------------------------------- the argument convention

def test_one_argument_convention():
    """g before f everywhere; ``depth`` counts weight matrices in the kernel API and ``architecture``
    takes hidden layers (the command line's --depth-g/--depth-f), one more than a Layers' depth."""
    g, f = K.architecture("erf", 2, 1, (1.2, 0.9), (0.3, 0.1), 0.7)
    assert (g.depth, f.depth, g.w_std, f.w_std, g.b_std, f.b_std) == (3, 2, 1.2, 0.9, 0.3, 0.1)
    X = np.random.default_rng(2).standard_normal((4, 3))
    # the composed kernel depends on which half is g: the order is honoured
    assert not np.allclose(K.ntk_inf(X, X, g, f), K.ntk_inf(X, X, f, g))
    np.testing.assert_array_equal(K.ntk(X, X, g), K.ntk(X, X, "erf", 3, 1.2, 0.3, 0.7))
    np.testing.assert_array_equal(K.ntk_inf(X, X, K.Layers(), K.Layers()), K.ntk_inf(X, X))
    # positional rates: lr_g then lr_f
    np.testing.assert_array_equal(K.ntk_inf(X, X, g, f, 2.0, 0.5), K.ntk_inf(X, X, g, f, lr_f=0.5, lr_g=2.0))


# --------------------------------------------------------------------------- Sigma_(2): what it covers

def test_sigma2_symmetry_holds_for_one_hidden_layer_only():
    """Sigma_(2)(x, y) = E[J(x)^T J(y)] is a symmetric matrix for one hidden layer (any activation,
    scales, biases) and for linear networks, not for deeper nonlinear ones (README, MATH §2.2); the
    identity Sigma_(2)(y, x) = Sigma_(2)(x, y)^T holds for all."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((30, 4)), rng.standard_normal((30, 4))
    idx = np.arange(30)

    def asymmetry(spec):
        S = K.sigma2(X, Y, spec)[idx, idx]
        return np.max(np.linalg.norm(S - np.transpose(S, (0, 2, 1)), axis=(1, 2)) / np.linalg.norm(S, axis=(1, 2)))

    for spec in (K.Layers.make("relu"), K.Layers.make("erf", 2, 1.3, 0.5, 0.7), K.Layers.make("relu", 2, 1, 0.5, 1),
                 K.Layers.make("linear", 3, 1.0, 0.5, 1.0)):
        assert asymmetry(spec) < 1e-14, spec
    assert asymmetry(K.Layers.make("relu", 3)) > 0.5
    assert asymmetry(K.Layers.make("erf", 3)) > 0.05
    for spec in (K.Layers.make("relu", 3), K.Layers.make("erf", 4, 1.0, 0.3, 1.0)):
        np.testing.assert_allclose(K.sigma2(Y, X, spec), np.transpose(K.sigma2(X, Y, spec), (1, 0, 3, 2)),
                                   rtol=1e-10, atol=1e-14)


def test_the_recursion_runs_on_another_array_module():
    """pair_terms with ``xp`` (CuPy on the GPU backend) uses that module's functions throughout, the
    angle formula included (refimpl.angles.on_module), and gives NumPy's results."""
    import types
    from refimpl import angles
    calls = []
    xp = types.ModuleType("counting_numpy")
    xp.__dict__.update({k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    xp.where = lambda *a: calls.append("where") or np.where(*a)
    xp.arcsin = lambda a: calls.append("arcsin") or np.arcsin(a)
    X = np.random.default_rng(0).standard_normal((6, 3))
    nx, ny, hu, hv, lam = angles.pair_halves(X, X)
    spec = K.Layers.make("relu", 3, 1.1, 0.2, 0.9)
    want = K.pair_terms(nx[:, None], ny[None, :], hu, hv, lam, spec, 3)
    got = K.pair_terms(nx[:, None], ny[None, :], hu, hv, lam, spec, 3, xp=xp)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    assert "arcsin" in calls and calls.count("where") > 10
