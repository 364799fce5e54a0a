"""Numerical checks of the theory against finite networks (paper appendix E, MATH §6).

The engine of ``cli.py verify``.  Each check writes ``<name>.json`` (every
number, the configuration and the pass/fail verdicts) and ``<name>.png`` (the
figure) into its output folder and returns the same report as a dict;
:func:`format_table` turns a report into a short text table.

:func:`lemma31` (paper fig 11)
    Monte Carlo over many random initialisations of the head f (width n):
    empirical covariances of f and J = df/dx at random input pairs against
    Sigma, Sigma_(1), Sigma_(2) (lemma 3.1, MATH §2), as relative Frobenius
    errors ``|cov_emp - cov_theory|_F / |cov_theory|_F`` per pair.
:func:`theorem32` (paper fig 12)
    A wide ReLU network (MATH §1) trained by full-batch GD with a small rate.
    Per step, the residual of the evolution equations 12-14 evaluated on the
    finite network's own trajectory with the limiting kernels,
    ``|(psi[t+1] - psi[t]) / lr - RHS_psi[t]| / |RHS_psi[t]|`` for psi = F, g
    (on the training inputs) and J (at fixed probe points of the bottleneck),
    and the distance between the finite network and the function-space
    simulator started from the same initial functions, for several widths.
:func:`lemma41` (paper figs 13, 14)
    Deep linear networks (depth 2 and 3) trained with rate mu against the
    effective two-layer network trained with rate L mu and the simulator with
    linear kernels; residuals of eqs 12-14 for both networks.
:func:`inf_limit` (MATH §5)
    The bottleneck kernel at initialisation, ``K(g, g~) + Theta J J~^T`` from
    a wide random network, against NTK_inf as the bottleneck width d grows.

Loss convention as everywhere (MATH §4): ``L = 1/(2B) sum |F_i - y_i|^2``,
``chi = (F - y) / B``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from accel.blas_threads import one_blas_thread
from refimpl import __version__, kernels
from refimpl.dynamics import BottleneckSimulator, check_loss, loss_and_chi
from refimpl.finite import FiniteNetwork
from refimpl.network import RandomNetwork
from refimpl.validate import positive_int, positive_number
from .config import VERIFY, check_defaults, checked
from .figures import pyplot, save_figure
from .fileio import atomic_write_text
from .loop import SGDLoop, full_batch
from .validate import TrainError

#: Largest temporary (float64 elements) of the Monte Carlo in :func:`lemma31`.
MC_BLOCK_ELEMENTS = 1 << 22
#: A Monte Carlo mean further than this many standard errors from the closed form fails lemma 3.1.
MC_MAX_Z = 5.0
#: Agreement required between the linear-kernel simulator and the effective network (lemma 4.1).
EXACT_TOL = 1e-9

#: theorem3.2's default widths when g or f has more than one hidden layer (n x n weight matrices).
DEEP_WIDTHS = (125, 320, 800, 2000)
#: theorem3.2's default widths and networks per width with a chain, momentum or a schedule (REPRODUCTION
#: Part 3: with 8 networks at 1000-64000 the chain's mean gap rose at the last width; with these every such
#: run passed), and the networks per width for heavy-ball momentum of FEATURE_HEAVY_BETA or more (16 failed
#: the slope band at 0.9, 32 passed).
FEATURE_WIDTHS, FEATURE_SAMPLES = (500, 2000, 8000, 32000), 16
FEATURE_HEAVY_BETA, FEATURE_HEAVY_SAMPLES = 0.9, 32
#: The exponent theorem3.2's final gaps in F and g should fall with (MATH §6, "Theorem 3.2's rate").
RATE_EXPECTED = -0.5
#: A rate is resolved by at least this many widths spanning at least this factor (below: reported as indicative).
RATE_MIN_WIDTHS, RATE_MIN_SPAN = 4, 16
#: Bootstrap resamples of the networks for the slope's interval.
RATE_RESAMPLES = 2000

#: The default of every option of each check (declared with its rule in experiments.config).
DEFAULTS = {name: check_defaults(composition) for name, composition in VERIFY.items()}


# ----------------------------------------------------------------------------- argument checks

def _config(name, given):
    """``DEFAULTS[name]`` updated with the ``given`` values that are not None, every option checked by its
    rule in :data:`experiments.config.VERIFY` (a one-line ValueError naming the first bad one)."""
    try:
        return checked(VERIFY[name], {**DEFAULTS[name], **given})
    except TrainError as exc:
        raise ValueError(str(exc)) from None


def _rel(a, b):
    nb = float(np.linalg.norm(b))
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b))) / nb if nb > 0 else float("inf")


def _check(name, value, threshold, text):
    """A verdict: passes when value <= threshold."""
    value, threshold = float(value), float(threshold)
    return {"name": name, "value": value, "threshold": threshold, "passed": bool(value <= threshold),
            "text": text}


# ----------------------------------------------------------------------------- output

def jsonable(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else str(v)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _prepare(out):
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _finish(name, out, config, results, checks, fig, started):
    """Write <name>.json and <name>.png atomically; return the report."""
    report = {"name": name, "version": __version__, "config": config, "results": results, "checks": checks,
              "passed": all(c["passed"] for c in checks), "wall_s": time.perf_counter() - started}
    save_figure(fig, out / f"{name}.png", dpi=100)
    atomic_write_text(out / f"{name}.json", json.dumps(jsonable(report), indent=1) + "\n")
    report["files"] = [str(out / f"{name}.json"), str(out / f"{name}.png")]
    return report


def _figure(rows, cols, size):
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    return fig, axes


def format_table(report):
    """Lines of text: the report's table followed by one line per check."""
    lines = list(report["table"]) if "table" in report else []
    for c in report["checks"]:
        verdict = "ok  " if c["passed"] else "FAIL"
        rel = "<=" if c["passed"] else ">"
        lines.append(f"{verdict} {c['name']}: {c['value']:.3g} {rel} {c['threshold']:.3g}  ({c['text']})")
    return lines


def first_failure(report):
    """One line describing the first failed check, or None."""
    for c in report["checks"]:
        if not c["passed"]:
            return (f"{report['name']}: check {c['name']} failed: {c['value']:.3g} > {c['threshold']:.3g} "
                    f"({c['text']}); see {report['files'][0]}")
    return None


def _silent(msg):
    pass


# ============================================================================= lemma 3.1

def _mc_heads(points, width, samples, rng):
    """f and J = df/dx of ``samples`` independent heads f(x) = v relu(u x / sqrt(m)) / sqrt(n) (dr = 1).

    Returns f (S, p) and J (S, p, m); the weights are i.i.d. N(0, 1) as in
    :meth:`RandomNetwork.sample`.  Memory is bounded by MC_BLOCK_ELEMENTS.
    """
    p, m = points.shape
    f = np.empty((samples, p))
    J = np.empty((samples, p, m))
    chunk = max(1, MC_BLOCK_ELEMENTS // (width * max(p, m)))
    for s in range(0, samples, chunk):
        c = min(chunk, samples - s)
        u = rng.standard_normal((c, width, m))
        v = rng.standard_normal((c, width))
        pre = u @ points.T / math.sqrt(m)                                  # (c, n, p)
        f[s:s + c] = np.einsum("cn,cnp->cp", v, np.maximum(pre, 0.0)) / math.sqrt(width)
        J[s:s + c] = np.einsum("cnp,cnk->cpk", (pre > 0) * v[:, :, None], u) / math.sqrt(width * m)
    return f, J


def lemma31(out, widths=None, samples=None, pairs=None, dim=None, seed=None, threshold=None, log=_silent):
    """Lemma 3.1 by Monte Carlo (paper appendix E, fig 11).

    For ``pairs`` random input pairs (x, y) in R^dim (i.i.d. N(0, I)) and each
    width n, draw ``samples`` independent heads and compare

        E[f(x) f(y)]   with Sigma(x, y)          ("ff")
        E[f(x) J(y)]   with Sigma_(1)(x, y)      ("Jf")
        E[J(x)^T J(y)] with Sigma_(2)(x, y)      ("JJ")

    For a two-layer head these expectations equal the closed forms at every
    width, so the only error is Monte Carlo error of order samples^-1/2.

    Checks: the relative Frobenius error over all pairs, per covariance and
    width, is at most ``threshold``; and every pair's error is within
    MC_MAX_Z standard errors (estimated from the samples).

    Returns
    -------
    dict report (also written to ``out/lemma3.1.json``; figure ``out/lemma3.1.png``)
    """
    cfg = _config("lemma3.1", dict(widths=widths, samples=samples, pairs=pairs, dim=dim, seed=seed,
                                   threshold=threshold))
    out = _prepare(out)
    started = time.perf_counter()
    rng = np.random.default_rng(cfg["seed"])
    m, S = cfg["dim"], cfg["samples"]
    P = rng.standard_normal((2 * cfg["pairs"], m))
    Xp, Yp = P[0::2], P[1::2]
    idx = np.arange(cfg["pairs"])
    theory = {"ff": kernels.nngp(Xp, Yp)[idx, idx],
              "Jf": kernels.sigma1(Xp, Yp)[idx, idx],
              "JJ": kernels.sigma2(Xp, Yp)[idx, idx]}
    results, checks, table = {}, [], [f"{'width':>8} {'cov':>4} {'rel.err (all pairs)':>20} "
                                      f"{'median per pair':>16} {'max z':>6}"]
    for n in cfg["widths"]:
        log(f"lemma3.1: width {n}, {S} networks")
        f, J = _mc_heads(P, n, S, rng)
        fx, fy, Jx, Jy = f[:, 0::2], f[:, 1::2], J[:, 0::2], J[:, 1::2]
        prods = {"ff": fx * fy,                                            # (S, pairs)
                 "Jf": fx[:, :, None] * Jy,                                # (S, pairs, m)
                 "JJ": Jx[:, :, :, None] * Jy[:, :, None, :]}              # (S, pairs, m, m)
        res = {}
        for key, pr in prods.items():
            emp = pr.mean(axis=0)
            diff = (emp - theory[key]).reshape(cfg["pairs"], -1)
            th = theory[key].reshape(cfg["pairs"], -1)
            var = pr.var(axis=0, ddof=1).reshape(cfg["pairs"], -1) / S
            err = np.linalg.norm(diff, axis=1)
            per_pair = err / np.linalg.norm(th, axis=1)
            z = err / np.sqrt(np.sum(var, axis=1))
            agg = float(np.linalg.norm(diff) / np.linalg.norm(th))
            res[key] = {"rel_error_per_pair": per_pair, "z_per_pair": z, "rel_error_all_pairs": agg,
                        "standard_error_all_pairs": float(np.sqrt(np.sum(var)) / np.linalg.norm(th))}
            table.append(f"{n:>8} {key:>4} {agg:>20.3e} {np.median(per_pair):>16.3e} {z.max():>6.2f}")
            checks.append(_check(f"{key}_rel_error_n{n}", agg, cfg["threshold"],
                                 f"relative Frobenius error of cov_{key} over {cfg['pairs']} pairs, width {n}"))
            checks.append(_check(f"{key}_max_z_n{n}", z.max(), MC_MAX_Z,
                                 f"largest error in Monte Carlo standard errors, width {n}"))
        results[str(n)] = res

    fig, axes = _figure(1, 3, (14, 4))
    titles = {"JJ": "(a) cov JJ vs Sigma_(2)", "ff": "(b) cov ff vs Sigma", "Jf": "(c) cov Jf vs Sigma_(1)"}
    for ax, key in zip(axes[0], ("JJ", "ff", "Jf")):
        for n in cfg["widths"]:
            line, = ax.plot(idx, results[str(n)][key]["rel_error_per_pair"], "o", ms=4, label=f"n = {n}, per pair")
            ax.axhline(results[str(n)][key]["rel_error_all_pairs"], color=line.get_color(), lw=1.2, ls="--",
                       label=f"n = {n}, all pairs (checked)")
        ax.axhline(cfg["threshold"], color="red", lw=1, ls=":", label=f"threshold {cfg['threshold']:g}")
        ax.set_yscale("log")
        ax.set_xlabel("input pair")
        ax.set_ylabel("|cov_emp - cov_theory|_F / |cov_theory|_F")
        ax.set_title(titles[key])
        ax.legend(fontsize=7)
    fig.suptitle(f"lemma 3.1: {S} random initialisations per width, inputs in R^{m}.  Criterion: the error over all "
                 f"{cfg['pairs']} pairs (dashed) <= {cfg['threshold']:g} (dotted) and every pair within "
                 f"{MC_MAX_Z:g} Monte Carlo\nstandard errors.  A single pair's relative error can be large where "
                 "|cov_theory| is small (nearly orthogonal inputs): the noise is then relative to a small number",
                 fontsize=10)
    fig.tight_layout()
    report = _finish("lemma3.1", out, cfg, results, checks, fig, started)
    report["table"] = table
    return report


# ============================================================================= eqs 12-14 residuals

def _fstate(net, X, probes):
    """g on the inputs, F = f(g), and J at the probes of a FiniteNetwork."""
    G = net.g(X)
    return G, net.f(G), net.jacobian(probes)


def _rhs(net, G, F, Y, probes, theta, layers_f, depth_f=None, loss="mse"):
    """Right-hand sides of eqs 12-14 at the network's current state, with the limiting kernels.

    RHS_g(xi_j) = -sum_i Theta(xi_j, xi_i) J(g_i)^T chi_i
    RHS_F(xi_j) = -sum_i [K(g_j, g_i) chi_i + Theta(xi_j, xi_i) J(g_j) J(g_i)^T chi_i]
    RHS_J(p)    = -sum_i chi_i Xi(p, g_i)^T
    """
    chi = loss_and_chi(F, Y, loss)[1]
    TV = theta @ net.jacobian_t_dot(G, chi)
    rhs_g = -TV
    rhs_F = -(kernels.ntk(G, G, layers_f, depth_f) @ chi) - np.einsum("jab,jb->ja", net.jacobian(G), TV)
    rhs_J = -np.einsum("ia,pib->pab", chi, kernels.xi(probes, G, layers_f, depth_f))
    return {"F": rhs_F, "g": rhs_g, "J": rhs_J}


def _simulators(backend, chain=False):
    """(the simulator class of ``backend``, its name): "auto" is what :func:`experiments.backends.auto_backend`
    picks here (gpu, cpu, numpy); the finite networks stay NumPy (float64).  ``chain``: the backend's
    ChainSimulator (several bottlenecks, MATH §9) instead of its BottleneckSimulator."""
    from .backends import auto_backend, resolve_backend
    name = auto_backend() if backend == "auto" else backend
    try:
        module = resolve_backend(name)
    except Exception as exc:    # noqa: BLE001 - TrainError with the backend's one-line reason
        raise ValueError(str(exc)) from None
    cls = getattr(module, "ChainSimulator" if chain else "BottleneckSimulator", None)
    if cls is None:
        raise ValueError(f"backend: {name!r} has no {'chain ' if chain else ''}simulator")
    return cls, name


def _residuals(before, after, rhs, lr):
    """|(psi[t+1] - psi[t]) / lr - RHS[t]| / |RHS[t]| for psi = g, F, J."""
    out = {}
    for k, (a, b) in zip(("g", "F", "J"), zip(after, before)):
        out[k] = _rel((a - b) / lr, rhs[k]) if np.linalg.norm(rhs[k]) > 0 else 0.0
    return out


# ============================================================================= theorem 3.2

def _head_jacobian(model, P, d_out):
    """J_1(P) of a chain's first head, (p, d_out, d_1), from its J^T c (MATH §9): one product per output."""
    eye = np.eye(d_out)
    return np.stack([model.head_jacobian_t_dot(0, P, np.repeat(eye[j:j + 1], P.shape[0], axis=0))
                     for j in range(d_out)], axis=1)


def _chain_rhs_g(finite, X, Y, theta, loss):
    """RHS of eq 12 for a chain (MATH §9.1): -Theta J_1^T ... J_L^T chi at the finite chain's state."""
    Z = finite.features(X)
    u = loss_and_chi(Z[-1], Y, loss)[1]
    for k in range(finite.n_heads - 1, -1, -1):
        u = finite.head_jacobian_t_dot(k, Z[k], u)
    return -(theta @ u)


def _theorem32_run(n, seed, X, Y, probes, theta, cfg, residuals):
    """One finite network of width n and its simulator; per-step errors (and residuals if asked).

    With ``cfg["widths_chain"]`` the pair is a FiniteChain and the backend's ChainSimulator (MATH §9; J is the
    first head's, and only the g residual is computed); with ``cfg["optimizer"]`` (momentum, nesterov,
    lr_schedule: MATH §8) both are trained with the same optimiser and the residuals are not computed.
    """
    d0, d, dr = cfg["d0"], cfg["d"], cfg["dr"]
    lr = cfg["lr"]
    layers_g, layers_f, loss = cfg["layers_g"], cfg["layers_f"], cfg["loss"]
    chain, opt = cfg.get("widths_chain"), dict(cfg.get("optimizer") or {})
    if opt.get("lr_schedule") is not None:
        opt["total_steps"] = cfg["steps"]
    try:
        if chain:
            from refimpl.chain import RandomChain
            from refimpl.finite import FiniteChain
            net = RandomChain.sample(d0, chain, dr, width=n, seed=seed, layers_g=layers_g, layers_f=layers_f)
            finite = FiniteChain.from_random_chain(net, loss=loss)
            out_1 = (list(chain) + [dr])[1]
            fstate = lambda: (finite.embeddings(X), finite.outputs(X), _head_jacobian(finite, probes, out_1))
            sstate = lambda: (sim.embeddings(X), sim.outputs(X), _head_jacobian(sim, probes, out_1))
        else:
            net = RandomNetwork.sample(d0, d, dr, width=n, seed=seed, layers_g=layers_g, layers_f=layers_f)
            finite = FiniteNetwork.from_random_network(net, loss=loss)
            fstate = lambda: _fstate(finite, X, probes)
            sstate = lambda: (sim.embeddings(X), sim.outputs(X), sim.jacobian(probes))
        sim = cfg["simulator"](net, X, Y, lr=lr, loss=loss, **opt)
    except TypeError as exc:
        if opt:
            raise ValueError(f"optimizer: {', '.join(sorted(cfg['optimizer']))} not supported by the "
                             f"{'chain ' if chain else ''}simulator on this version ({exc})") from None
        raise
    keys = ["err_F", "err_g", "err_J", "loss_finite", "loss_sim"]
    if residuals:
        keys += ["resid_F", "resid_g", "resid_J"]
    rec = {k: [] for k in keys}
    state, rhs = fstate(), None

    def right_hand_sides(step):              # before the step: the RHS of eqs 12-14 at the current state
        nonlocal rhs
        if residuals and chain:
            rhs = {"g": _chain_rhs_g(finite, X, Y, theta, loss)}
        elif residuals:
            rhs = _rhs(finite, state[0], state[1], Y, probes, theta, layers_f, loss=loss)

    def step_both(idx):                     # full-batch GD: the same step for the network and the simulator
        rec["loss_finite"].append(finite.step(X, Y, lr=lr, **opt))
        rec["loss_sim"].append(sim.step(idx))

    def errors(done, loss):
        nonlocal state
        new = fstate()
        if residuals:
            got = _residuals(state, new, rhs, lr) if not chain else {"g": _rel((new[0] - state[0]) / lr, rhs["g"])}
            for k in ("F", "g", "J"):
                rec[f"resid_{k}"].append(got.get(k, np.nan))
        state = new
        sim_g, sim_F, sim_J = sstate()
        rec["err_g"].append(_rel(state[0], sim_g))
        rec["err_F"].append(_rel(state[1], sim_F))
        rec["err_J"].append(_rel(state[2], sim_J))
    SGDLoop(step_both, full_batch(X.shape[0]), before=[right_hand_sides], after=[errors]).run(0, cfg["steps"])
    return {k: np.array(v) for k, v in rec.items()}


def _optimizer(momentum, nesterov, lr_schedule, steps):
    """The optimiser options that differ from plain GD at a constant rate (MATH §8), checked: a dict of the
    keyword arguments given alike to the simulator and to every step of the finite network."""
    from refimpl.optim import check_momentum, parse_schedule
    beta, nesterov = check_momentum(momentum, bool(nesterov) if isinstance(nesterov, (bool, np.bool_)) else nesterov)
    if nesterov and beta == 0.0:
        raise ValueError("nesterov: expected --momentum > 0 with Nesterov momentum, got momentum 0")
    opt = {"momentum": beta, "nesterov": nesterov} if beta > 0 else {}
    if lr_schedule is not None and not parse_schedule(lr_schedule, steps).is_constant:
        opt["lr_schedule"] = lr_schedule
    return opt


def _rate(widths, per_network, expected, rng, resamples=RATE_RESAMPLES):
    """The rate of a gap over the widths (MATH §6, "Theorem 3.2's rate").

    Parameters
    ----------
    widths : sequence of W ints, increasing
    per_network : array (W, S)
        The final gap of each of the S networks at each width.
    expected : float
        The exponent the gap should fall with (-1/2).
    rng : numpy Generator
        For the bootstrap over the networks.

    Returns
    -------
    dict: per width the mean, standard deviation (ddof 1; 0 for one network), standard error and number of
    networks, and the median; ``slope``, the least-squares slope of log(mean gap) against log(n) (and
    ``slope_of_median``, that of the median, reported only: robust to a few networks whose gap the
    dynamics amplified); ``slope_ci``, the 2.5 and
    97.5 percentiles of that slope when each width's networks are resampled with replacement
    (``resamples`` times); ``max_ratio``, the largest mean gap over the mean gap at the next smaller width
    (< 1: the mean falls monotonically).  With a single width the slope and ratio are NaN.
    """
    widths = np.asarray(widths, dtype=float)
    per_network = np.asarray(per_network, dtype=float)
    n_nets = per_network.shape[1]
    mean = per_network.mean(axis=1)
    sd = per_network.std(axis=1, ddof=1) if n_nets > 1 else np.zeros_like(mean)
    median = np.median(per_network, axis=1)
    out = {"widths": widths.astype(int), "mean": mean, "sd": sd, "sem": sd / math.sqrt(n_nets), "median": median,
           "n_networks": n_nets, "expected_slope": float(expected), "slope": float("nan"),
           "slope_ci": [float("nan"), float("nan")], "max_ratio": float("nan"), "slope_of_median": float("nan")}
    if len(widths) < 2:
        return out
    logn = np.log(widths)
    out["slope"] = float(np.polyfit(logn, np.log(mean), 1)[0])
    out["slope_of_median"] = float(np.polyfit(logn, np.log(median), 1)[0])
    pick = rng.integers(0, n_nets, size=(resamples, len(widths), n_nets))
    boot = per_network[np.arange(len(widths))[None, :, None], pick].mean(axis=2)       # (resamples, W)
    centred = logn - logn.mean()
    slopes = (np.log(boot) - np.log(boot).mean(axis=1, keepdims=True)) @ centred / (centred @ centred)
    out["slope_ci"] = [float(v) for v in np.percentile(slopes, [2.5, 97.5])]
    out["max_ratio"] = float(np.max(mean[1:] / mean[:-1]))
    return out


def theorem32_defaults(given, deep, widths_chain, momentum, nesterov, lr_schedule):
    """The widths and networks per width theorem3.2 uses where ``given`` leaves them None (MATH §6): DEEP_WIDTHS
    for a half with more than one hidden layer; with a chain, momentum or a schedule FEATURE_WIDTHS (unless
    deep) and FEATURE_SAMPLES networks, FEATURE_HEAVY_SAMPLES for heavy ball at beta >= FEATURE_HEAVY_BETA."""
    out = {}
    beta = float(momentum) if isinstance(momentum, (int, float)) and not isinstance(momentum, bool) else 0.0
    feature = widths_chain is not None or beta > 0 or lr_schedule not in (None, "constant")
    if given.get("widths") is None and (deep or feature):
        out["widths"] = DEEP_WIDTHS if deep else FEATURE_WIDTHS
    if given.get("samples") is None and feature:
        out["samples"] = FEATURE_HEAVY_SAMPLES if beta >= FEATURE_HEAVY_BETA and not nesterov else FEATURE_SAMPLES
    return out


def theorem32(out, widths=None, steps=None, lr=None, samples=None, points=None, seed=None, threshold=None,
              slope_band=None, d0=4, d=3, dr=2, activation="relu", depth_g=1, depth_f=1, w_std=1.0, b_std=0.0,
              out_std=1.0, loss="mse", backend="numpy", widths_chain=None, momentum=0.0, nesterov=False,
              lr_schedule=None, log=_silent):
    """Theorem 3.2: wide finite networks against the function-space dynamics (paper fig 12), and the rate.

    Data: ``points`` inputs xi ~ N(0, I_d0) with targets y ~ N(0, I_dr) (with
    ``loss="ce"``: one-hot rows of random classes, or random 0/1 for dr = 1)
    (drawn from ``seed``) and 4 fixed probe points of the bottleneck.
    The architecture (MATH §2.2): ``activation``, ``depth_g``, ``depth_f``
    (hidden layers), ``w_std``, ``b_std``, ``out_std`` (a number, or a pair g, f),
    as :func:`refimpl.kernels.architecture`; the widths default to
    DEEP_WIDTHS when a half has more than one hidden layer (its n x n
    matrices limit the width).  For
    each width n and each of ``samples`` networks (seeds ``seed``,
    ``seed + 1``, ...), a RandomNetwork gives the initial functions of both a
    FiniteNetwork, trained by full-batch GD with rate ``lr``, and a
    BottleneckSimulator run on the same data.  Recorded per step:

    - the relative distance (the gap) between finite network and simulator in F, g
      (training inputs) and J (probes), per network and averaged over the networks;
    - for the first network, the residuals of eqs 12-14 along the finite
      network's own trajectory, ``|(psi[t+1] - psi[t]) / lr - RHS[t]| / |RHS[t]|``
      for psi = F, g on the inputs and J at the probes (paper fig 12).

    The rate (MATH §6): for F, g and J, the final gap's mean, spread and standard
    error over the networks per width, the least-squares slope of log(mean gap)
    against log(n) and its 95 % bootstrap interval over the networks
    (:func:`_rate`); the expected slope of F and g is RATE_EXPECTED = -1/2.

    Only the g residual is a test of the width: g's inputs are fixed, so
    units of g flip only through O(n^-1/2) weight changes.  F = f(g) is
    evaluated at points that move by O(lr) per step, so the kinks of f's
    ReLUs crossed in one step add a term of relative size about
    sqrt(lr |RHS_g| / |g|) that does not shrink with n (the simulator
    reproduces it exactly, because it evaluates the same f0 at the moving
    points; it vanishes in the gradient-flow limit lr -> 0); and J's flips
    add noise of relative size about (lr)^-1/2 n^-1/4.  Both are reported,
    not checked.

    Checks: at the largest width, the mean final gap in F and in g and the
    median g residual are at most ``threshold``; with several widths, the
    median g residual at the largest width is below that at the smallest, and
    for F and g: the mean final gap falls from each width to the next
    (``*_monotone``: the largest ratio of consecutive means <= 1), the fitted
    slope is within ``slope_band`` of -1/2 (``*_slope``), and the upper end of
    its bootstrap interval is below 0 (``*_slope_ci``: the fall is not the
    networks' spread).
    """
    layers_g, layers_f = kernels.architecture(activation, depth_g, depth_f, w_std, b_std, out_std)
    check_loss(loss)
    given = dict(widths=widths, steps=steps, lr=lr, samples=samples, points=points, seed=seed, threshold=threshold,
                 slope_band=slope_band)
    given.update(theorem32_defaults(given, max(layers_g.depth, layers_f.depth) > 2, widths_chain, momentum,
                                    nesterov, lr_schedule))
    cfg = _config("theorem3.2", given)
    if list(cfg["widths"]) != sorted(set(cfg["widths"])):
        raise ValueError(f"widths: expected increasing widths without repeats, got {list(cfg['widths'])!r}")
    if widths_chain is not None:
        from refimpl.chain import check_widths
        widths_chain = check_widths(widths_chain, "widths_chain")
        d = widths_chain[0]
    cfg.update(d0=positive_int("d0", d0), d=positive_int("d", d), dr=positive_int("dr", dr),
               widths_chain=widths_chain, optimizer=_optimizer(momentum, nesterov, lr_schedule, cfg["steps"]))
    with_residuals = not cfg["optimizer"]
    out = _prepare(out)
    started = time.perf_counter()
    rng = np.random.default_rng(cfg["seed"])
    X = rng.standard_normal((cfg["points"], d0))
    Y = rng.standard_normal((cfg["points"], dr))
    if loss == "ce":
        Y = (Y > 0).astype(float) if dr == 1 else np.eye(dr)[rng.integers(0, dr, cfg["points"])]
    probes = rng.standard_normal((4, d))
    theta = kernels.ntk(X, X, layers_g)
    simulator, ran = _simulators(backend, chain=widths_chain is not None)
    cfg.update(layers_g=layers_g, layers_f=layers_f, loss=loss, simulator=simulator)
    results = {}
    for n in cfg["widths"]:
        runs = []
        for s in range(cfg["samples"]):
            log(f"theorem3.2: width {n}, network {s + 1}/{cfg['samples']}, {cfg['steps']} steps")
            runs.append(_theorem32_run(n, cfg["seed"] + s, X, Y, probes, theta, cfg,
                                       residuals=(s == 0 and with_residuals)))
        nan = np.full(cfg["steps"], np.nan)
        rec = {k: runs[0].get(k, nan) for k in ("resid_F", "resid_g", "resid_J")}
        for k in ("err_F", "err_g", "err_J", "loss_finite", "loss_sim"):
            rec[f"{k}_per_network"] = np.array([r[k] for r in runs])
            rec[k] = rec[f"{k}_per_network"].mean(axis=0)
        rec["summary"] = {"resid_F": float(np.median(rec["resid_F"])), "resid_g": float(np.median(rec["resid_g"])),
                          "resid_J": float(np.median(rec["resid_J"])), "err_F": float(rec["err_F"][-1]),
                          "err_g": float(rec["err_g"][-1]), "err_J": float(rec["err_J"][-1])}
        results[str(n)] = rec

    boot = np.random.default_rng([cfg["seed"], 32])
    rates = {k: _rate(cfg["widths"], [results[str(n)][f"err_{k}_per_network"][:, -1] for n in cfg["widths"]],
                      RATE_EXPECTED, boot) for k in ("F", "g", "J")}
    results["rate"] = rates
    span = max(cfg["widths"]) / min(cfg["widths"])
    sharp = len(cfg["widths"]) >= RATE_MIN_WIDTHS and span >= RATE_MIN_SPAN

    S = cfg["samples"]
    table = [f"{'width':>8} {'resid F':>9} {'resid g':>9} {'resid J':>9} {'err F':>9} {'+-se':>8} {'err g':>9} "
             f"{'+-se':>8} {'err J':>9}"]
    for i, n in enumerate(cfg["widths"]):
        s = results[str(n)]["summary"]
        table.append(f"{n:>8} {s['resid_F']:>9.2e} {s['resid_g']:>9.2e} {s['resid_J']:>9.2e} "
                     f"{s['err_F']:>9.2e} {rates['F']['sem'][i]:>8.1e} {s['err_g']:>9.2e} {rates['g']['sem'][i]:>8.1e} "
                     f"{s['err_J']:>9.2e}")
    table.append(f"         (resid: median over steps, first network; err: finite vs simulator at the last step, "
                 f"mean over {S} networks, +- its standard error)")
    if len(cfg["widths"]) > 1:
        for k in ("F", "g", "J"):
            r = rates[k]
            table.append(f"err {k} ~ n^{r['slope']:.2f}, 95% interval [{r['slope_ci'][0]:.2f}, {r['slope_ci'][1]:.2f}]"
                         f", median n^{r['slope_of_median']:.2f} (bootstrap over {S} networks per width; expected "
                         f"{'-0.5' if k != 'J' else '-0.5 smooth, -0.25 ReLU; not checked'})")
        if not sharp:
            table.append(f"(fewer than {RATE_MIN_WIDTHS} widths or a span under {RATE_MIN_SPAN}x: the slopes are "
                         "indicative only)")
    big, small = max(cfg["widths"]), min(cfg["widths"])
    sb, ss = results[str(big)]["summary"], results[str(small)]["summary"]
    checks = [
        _check("err_F", sb["err_F"], cfg["threshold"], f"finite vs simulator in F at the last step, width {big}"),
        _check("err_g", sb["err_g"], cfg["threshold"], f"finite vs simulator in g at the last step, width {big}"),
        _check("resid_g", sb["resid_g"], cfg["threshold"], f"median residual of eq 12 (g), width {big}"),
    ]
    if not with_residuals:
        checks.pop()                        # eqs 12-14 are gradient-flow equations: no residual under momentum
        table.append("(residuals of eqs 12-14 not computed: they describe plain gradient descent at a constant rate)")
    if big != small and with_residuals:
        checks.append(_check("resid_g_falls", sb["resid_g"] / ss["resid_g"], 1.0,
                             f"resid g at width {big} over resid g at width {small}"))
    if big != small:
        for k in ("F", "g"):
            r = rates[k]
            checks.append(_check(f"err_{k}_monotone", r["max_ratio"], 1.0,
                                 f"largest mean final gap in {k} over that at the next smaller width"))
            checks.append(_check(f"err_{k}_slope", abs(r["slope"] - RATE_EXPECTED), cfg["slope_band"],
                                 f"|slope + 1/2| of log mean gap in {k} vs log n, slope {r['slope']:.2f}"))
            checks.append(_check(f"err_{k}_slope_ci", r["slope_ci"][1], 0.0,
                                 f"upper end of the slope's 95% bootstrap interval, {k}"))

    fig, axes = _figure(2, 4, (18, 7.5))
    steps_ax = np.arange(1, cfg["steps"] + 1)
    for col, key in enumerate(("F", "g", "J")):
        for n in cfg["widths"]:
            axes[0, col].plot(steps_ax, results[str(n)][f"resid_{key}"], lw=1, label=f"n = {n}")
            axes[1, col].plot(steps_ax, results[str(n)][f"err_{key}"], lw=1, label=f"n = {n}")
        axes[0, col].set_title(f"residual of the {key} equation per step")
        axes[1, col].set_title(f"finite network vs simulator: {key}")
        for row in range(2):
            axes[row, col].set_yscale("log")
            axes[row, col].set_xlabel("step")
            axes[row, col].legend(fontsize=8)
    for col, key in enumerate(("F", "g", "J")):
        axes[0, col].set_ylabel(f"|({key}[t+1]-{key}[t])/lr - RHS| / |RHS|")
        axes[1, col].set_ylabel(f"|{key}_finite - {key}_sim| / |{key}_sim| (mean of {S})")
    wn = np.array(cfg["widths"], dtype=float)
    ax = axes[0, 3]
    for key in ("F", "g", "J"):
        r = rates[key]
        ax.errorbar(wn, r["mean"], yerr=r["sem"], fmt="o-", ms=4, capsize=3,
                    label=f"{key}: n^{r['slope']:.2f} [{r['slope_ci'][0]:.2f}, {r['slope_ci'][1]:.2f}]")
    ax.plot(wn, rates["F"]["mean"][0] * np.sqrt(wn[0] / wn), "k:", label="n^-1/2 (from F's first mean)")
    ax.set_title("rate: mean final gap +- standard error")
    ax = axes[1, 3]
    for key, mark in (("F", "o"), ("g", "s")):
        per = np.array([results[str(n)][f"err_{key}_per_network"][:, -1] for n in cfg["widths"]])
        ax.plot(np.repeat(wn, per.shape[1]), per.ravel(), mark, ms=3, alpha=0.5, label=f"{key}, each network")
    ax.set_title(f"final gap of each of the {S} networks per width")
    for ax in axes[:, 3]:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("hidden width n")
        ax.set_ylabel("|psi_finite - psi_sim| / |psi_sim| at the last step")
        ax.legend(fontsize=7)
    what = ", ".join([f"bottlenecks {','.join(map(str, widths_chain))}" if widths_chain else f"d = {d}"]
                     + [f"{k} {v}" for k, v in cfg["optimizer"].items()])
    fig.suptitle(f"theorem 3.2: full-batch GD, lr = {cfg['lr']}, d0 = {d0}, {what}, dr = {dr}, "
                 f"{cfg['points']} points, {S} networks per width; criterion: mean gap in F and g falls at every "
                 f"width, slope within {cfg['slope_band']:g} of -1/2", fontsize=10)
    fig.tight_layout()
    cfg.pop("simulator")
    cfg.update(backend=ran, backend_requested=backend, rate_resolved=sharp)
    report = _finish("theorem3.2", out, cfg, results, checks, fig, started)
    report["table"] = table
    return report


# ============================================================================= lemma 4.1

def lemma41(out, widths=None, depths=None, steps=None, lr=None, points=None, seed=None, threshold=None,
            d0=4, d=3, dr=2, backend="numpy", log=_silent):
    """Lemma 4.1: deep linear networks against the effective network (paper figs 13, 14).

    For each depth L (= L_f = L_g) and width n: a deep linear FiniteNetwork
    trained by full-batch GD with rate ``lr``; its effective two-layer network
    (same initial functions) trained with rate L lr; and the simulator with
    linear kernels of depth L started from the same functions.  Recorded per
    step: residuals of eqs 12-14 (linear kernels of depth L) for the deep and
    for the effective network, and the relative distances deep vs effective
    and simulator vs effective in F and g.

    Checks: the simulator equals the effective network to EXACT_TOL at every
    step; the final distance in F between the deep and the effective network
    at the largest width is at most ``threshold`` for every depth, and below
    that at the smallest width.
    """
    cfg = _config("lemma4.1", dict(widths=widths, depths=depths, steps=steps, lr=lr, points=points, seed=seed,
                                   threshold=threshold))
    cfg.update(d0=positive_int("d0", d0), d=positive_int("d", d), dr=positive_int("dr", dr))
    simulator, cfg["backend"] = _simulators(backend)
    cfg["backend_requested"] = backend
    out = _prepare(out)
    started = time.perf_counter()
    rng = np.random.default_rng(cfg["seed"])
    X = rng.standard_normal((cfg["points"], d0))
    Y = rng.standard_normal((cfg["points"], dr))
    probes = rng.standard_normal((4, d))
    lr_ = cfg["lr"]
    results, checks = {}, []
    table = [f"{'depth':>5} {'width':>7} {'deep vs eff F':>14} {'deep vs eff g':>14} {'sim vs eff':>11} "
             f"{'resid F deep':>13} {'resid F eff':>12}"]
    for L in cfg["depths"]:
        theta = kernels.ntk(X, X, "linear", L)
        for n in cfg["widths"]:
            log(f"lemma4.1: depth {L}, width {n}, {cfg['steps']} steps")
            deep = FiniteNetwork.sample(d0, d, dr, width=n, seed=cfg["seed"], activation="linear",
                                        depth_g=L, depth_f=L)
            eff = deep.effective()
            sim = simulator(deep.as_random_network(), X, Y, lr=lr_, activation="linear", depth_f=L, depth_g=L)
            rec = {k: [] for k in ("resid_F_deep", "resid_g_deep", "resid_J_deep", "resid_F_eff", "resid_g_eff",
                                   "resid_J_eff", "err_F", "err_g", "sim_err")}
            st = {"deep": _fstate(deep, X, probes), "eff": _fstate(eff, X, probes)}
            rhs = {}

            def right_hand_sides(step):
                for tag, net in (("deep", deep), ("eff", eff)):
                    rhs[tag] = _rhs(net, st[tag][0], st[tag][1], Y, probes, theta, "linear", L)

            def step_all(idx):          # full-batch GD: the deep and the effective network and the simulator
                deep.step(X, Y, lr=lr_)
                eff.step(X, Y, lr=L * lr_)
                sim.step(idx)

            def errors(done, loss):
                for tag, net in (("deep", deep), ("eff", eff)):
                    new = _fstate(net, X, probes)
                    for k, v in _residuals(st[tag], new, rhs[tag], lr_).items():
                        rec[f"resid_{k}_{tag}"].append(v)
                    st[tag] = new
                rec["err_F"].append(_rel(st["deep"][1], st["eff"][1]))
                rec["err_g"].append(_rel(st["deep"][0], st["eff"][0]))
                rec["sim_err"].append(max(_rel(sim.outputs(X), st["eff"][1]), _rel(sim.embeddings(X), st["eff"][0]),
                                          _rel(sim.jacobian(probes), st["eff"][2])))
            SGDLoop(step_all, full_batch(cfg["points"]), before=[right_hand_sides], after=[errors]).run(0, cfg["steps"])
            rec = {k: np.array(v) for k, v in rec.items()}
            results[f"depth{L}_n{n}"] = rec
            table.append(f"{L:>5} {n:>7} {rec['err_F'][-1]:>14.2e} {rec['err_g'][-1]:>14.2e} "
                         f"{rec['sim_err'].max():>11.1e} {np.median(rec['resid_F_deep']):>13.2e} "
                         f"{np.median(rec['resid_F_eff']):>12.2e}")
        big, small = max(cfg["widths"]), min(cfg["widths"])
        e_big = results[f"depth{L}_n{big}"]["err_F"][-1]
        e_small = results[f"depth{L}_n{small}"]["err_F"][-1]
        checks.append(_check(f"err_F_depth{L}", e_big, cfg["threshold"],
                             f"deep (depth {L}, width {big}) vs effective network in F at the last step"))
        if big != small:
            checks.append(_check(f"err_F_falls_depth{L}", e_big / e_small, 1.0,
                                 f"err F at width {big} over err F at width {small}, depth {L}"))
    sim_err = max(float(r["sim_err"].max()) for r in results.values())
    checks.insert(0, _check("simulator_exact", sim_err, EXACT_TOL,
                            "simulator with linear kernels vs effective network, largest relative distance"))

    fig, axes = _figure(2, 3, (14, 7.5))
    steps_ax = np.arange(1, cfg["steps"] + 1)
    for key, r in results.items():
        axes[0, 0].plot(steps_ax, r["err_F"], lw=1, label=key)
        axes[0, 1].plot(steps_ax, r["err_g"], lw=1, label=key)
        axes[0, 2].plot(steps_ax, np.maximum(r["sim_err"], 1e-17), lw=1, label=key)
        for col, k in enumerate(("F", "g", "J")):
            line, = axes[1, col].plot(steps_ax, np.maximum(r[f"resid_{k}_deep"], 1e-17), lw=1, label=f"{key} deep")
            axes[1, col].plot(steps_ax, np.maximum(r[f"resid_{k}_eff"], 1e-17), lw=1, ls="--",
                              color=line.get_color(), label=f"{key} effective")
    titles = ("deep vs effective network: F", "deep vs effective network: g",
              "linear-kernel simulator vs effective network",
              "residual of the F equation", "residual of the g equation", "residual of the J equation")
    ylabels = ("|F_deep - F_eff| / |F_eff|", "|g_deep - g_eff| / |g_eff|", "max over F, g, J of |sim - eff| / |eff|",
               "|(F[t+1]-F[t])/lr - RHS| / |RHS|", "|(g[t+1]-g[t])/lr - RHS| / |RHS|",
               "|(J[t+1]-J[t])/lr - RHS| / |RHS|")
    for ax, title, ylabel in zip(axes.ravel(), titles, ylabels):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=6)
    fig.suptitle(f"lemma 4.1: linear networks, GD with lr = {lr_} (effective network: L lr)")
    fig.tight_layout()
    report = _finish("lemma4.1", out, cfg, results, checks, fig, started)
    report["table"] = table
    return report


# ============================================================================= d -> infinity

def inf_limit(out, dims=None, width=None, samples=None, points=None, seed=None, threshold=None, d0=5,
              log=_silent):
    """The bottleneck kernel at initialisation approaches NTK_inf as d grows (MATH §5).

    For each bottleneck width d and each of ``samples`` random networks of
    hidden width ``width`` (seeds ``seed``, ``seed + 1``, ...), on ``points``
    inputs xi ~ N(0, I_d0): the gap
    ``|K(g, g~) + Theta J J~^T - NTK_inf|_F / |NTK_inf|_F`` (dr = 1).
    MATH §5 measured 0.50, 0.28, 0.12, 0.062 for d = 4, 16, 64, 256.

    Checks: the mean gap at the largest d is at most ``threshold``, and (with
    several d) below the mean gap at the smallest d.
    """
    cfg = _config("inf-limit", dict(dims=dims, width=width, samples=samples, points=points, seed=seed,
                                    threshold=threshold))
    cfg["d0"] = positive_int("d0", d0)
    out = _prepare(out)
    started = time.perf_counter()
    X = np.random.default_rng(cfg["seed"]).standard_normal((cfg["points"], d0))
    target = kernels.ntk_inf(X, X)
    theta = kernels.ntk(X, X)
    results = {}
    table = [f"{'d':>6} {'mean gap':>9} {'min':>9} {'max':>9}"]
    for d in cfg["dims"]:
        log(f"inf-limit: d = {d}, {cfg['samples']} networks of width {cfg['width']}")
        gaps = []
        for s in range(cfg["samples"]):
            net = RandomNetwork.sample(d0, d, 1, width=cfg["width"], seed=cfg["seed"] + s)
            G = net.g(X)
            J = net.jacobian(G)[:, 0, :]
            gaps.append(_rel(kernels.ntk(G, G) + theta * (J @ J.T), target))
        gaps = np.array(gaps)
        results[str(d)] = {"gaps": gaps, "mean_gap": float(gaps.mean())}
        table.append(f"{d:>6} {gaps.mean():>9.3f} {gaps.min():>9.3f} {gaps.max():>9.3f}")
    dims_ = np.array(cfg["dims"], dtype=float)
    means = np.array([results[str(d)]["mean_gap"] for d in cfg["dims"]])
    slope = float(np.polyfit(np.log(dims_), np.log(means), 1)[0]) if len(set(cfg["dims"])) > 1 else float("nan")
    results["slope_log_gap_vs_log_d"] = slope
    if math.isfinite(slope):
        table.append(f"fitted gap ~ d^{slope:.2f}")
    big, small = max(cfg["dims"]), min(cfg["dims"])
    checks = [_check("gap", results[str(big)]["mean_gap"], cfg["threshold"], f"mean gap at d = {big}")]
    if big != small:
        checks.append(_check("gap_falls", results[str(big)]["mean_gap"] / results[str(small)]["mean_gap"], 1.0,
                             f"mean gap at d = {big} over mean gap at d = {small}"))

    fig, axes = _figure(1, 1, (6, 4.5))
    ax = axes[0, 0]
    for d in cfg["dims"]:
        g = results[str(d)]["gaps"]
        ax.plot(np.full(g.shape, d), g, "o", color="0.6", ms=4)
    ax.plot(dims_, means, "o-", label="mean over networks")
    ax.plot(dims_, means[0] * np.sqrt(dims_[0] / dims_), "k:", label="d^-1/2")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bottleneck width d")
    ax.set_ylabel("|K + Theta J J^T - NTK_inf|_F / |NTK_inf|_F")
    ax.set_title(f"bottleneck kernel at init vs NTK_inf (width {cfg['width']})")
    ax.legend()
    fig.tight_layout()
    report = _finish("inf-limit", out, cfg, results, checks, fig, started)
    report["table"] = table
    return report


#: Subcommand name -> function.
#: Each runs with one BLAS thread: OpenBLAS's threads oversubscribe a busy machine, e.g. lemma4.1 took 5.8x
#: as long with its default threads beside other jobs (docs/BENCHMARKS.md, "BLAS threads").
CHECKS = {name: one_blas_thread(fn) for name, fn in
          {"lemma3.1": lemma31, "theorem3.2": theorem32, "lemma4.1": lemma41, "inf-limit": inf_limit}.items()}
