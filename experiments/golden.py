"""Golden files: reference results written by refimpl, against which every backend is checked.

``python cli.py golden --regenerate`` writes ``golden/*.npz`` and
``golden/manifest.json`` (atomically); nothing else writes them.  Plain
``python cli.py golden`` replays them on every available backend and prints a
table of errors.  The tests (tests/accel/test_golden.py) do the same.

Cases
-----
``kernels``
    Pair sets for m = 3, 10, 50 (bottleneck widths) and m = 16 (an input
    dimension): random pairs, parallel, anti-parallel, nearly parallel and
    nearly anti-parallel pairs (angles 1e-2 ... 1e-9 and pi minus those),
    orthogonal pairs and a zero vector.  Outputs: nngp, sigmadot, ntk, the Xi
    coefficients alpha and beta, xi, ntk_inf (ReLU), and ntk, xi (linear, depth 2 and 3).
``bottleneck_*``, ``infinite_*``, ``linear_*``, ``chain_*`` (several bottlenecks, MATH §9)
    Trajectories of a few hundred SGD steps (MATH §4, §5) from recorded initial
    networks, data and batches: the batch loss of every step, and at
    checkpoints the embeddings g_t on the training set and F_t on X_eval.

Error measures (what the tolerances refer to)
---------------------------------------------
* kernel arrays, and the per-step losses: elementwise relative error
  ``max_i |a_i - b_i| / (|b_i| + 1e-6 max_j |b_j|)`` (entries below 1e-6 of the
  largest, e.g. Sigma at anti-parallel pairs where it vanishes like angle^3, are
  compared absolutely); singular pairs separately, see SINGULAR and TOL_SINGULAR;
* ``xi``: the same with the scale ``|alpha| |y| + |beta|`` in place of ``|b_i|``,
  because Xi = alpha y + beta x^ cancels for nearly parallel pairs (alpha and
  beta grow like 1/sin) and no implementation resolves the sum better than that;
* trajectory checkpoints (embeddings, F): relative Frobenius error
  ``|a - b|_F / |b|_F`` per array.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np

from refimpl import kernels
from refimpl.chain import RandomChain
from refimpl.network import RandomNetwork

from .fileio import atomic_write_bytes
from .loop import SGDLoop, every

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "golden"
MANIFEST = "manifest.json"
FORMAT = 1

#: float64 tolerance of the issue: every backend against refimpl's golden files.
TOL_FLOAT64 = 1e-10
#: float32 tolerance (history stored and summed in float32), measured on the golden
#: trajectories: rounding differences grow along a trajectory, worst 6.1e-4 (the per-step loss
#: of bottleneck_d3_mini near step 255, cpu and array-module path alike), typically 1e-7..2e-5;
#: see docs/BENCHMARKS.md.
TOL_FLOAT32 = 2e-3

#: Trajectory cases: name -> config.  Widths of the initial networks are small
#: (the initial function is any fixed network; its width does not matter here).
TRAJECTORIES = {
    "bottleneck_d3_full": dict(model="bottleneck", d=3, d0=6, dr=1, N=24, B=24, steps=300,
                               lr=1.0, lr_f=None, lr_g=None, seed=11, n_eval=8),
    "bottleneck_d3_mini": dict(model="bottleneck", d=3, d0=6, dr=2, N=60, B=10, steps=300,
                               lr=1.0, lr_f=1.5, lr_g=0.5, seed=12, n_eval=8),
    "bottleneck_d10_mini": dict(model="bottleneck", d=10, d0=8, dr=1, N=80, B=8, steps=300,
                                lr=2.0, lr_f=3.0, lr_g=1.0, seed=13, n_eval=10),
    "bottleneck_d10_full": dict(model="bottleneck", d=10, d0=8, dr=3, N=20, B=20, steps=200,
                                lr=1.0, lr_f=None, lr_g=None, seed=14, n_eval=10),
    "bottleneck_d50_mini": dict(model="bottleneck", d=50, d0=12, dr=1, N=100, B=10, steps=250,
                                lr=2.0, lr_f=1.0, lr_g=4.0, seed=15, n_eval=10),
    "infinite_mini": dict(model="infinite", d=None, d0=8, dr=2, N=80, B=8, steps=300,
                          lr=1.0, lr_f=1.0, lr_g=2.0, seed=16, n_eval=10),
    "linear_d5_mini": dict(model="linear", d=5, d0=6, dr=2, N=40, B=8, steps=300,
                           lr=0.5, lr_f=0.7, lr_g=0.3, seed=17, n_eval=8),
    # architectures of MATH §2.2 and the cross-entropy of MATH §4.3 ("layers_g"/"layers_f":
    # activation, depth (weight matrices), w_std, b_std, out_std; "loss": mse or ce)
    "erf_d3_mini": dict(model="bottleneck", d=3, d0=6, dr=2, N=24, B=6, steps=200, lr=1.0, lr_f=None,
                        lr_g=None, seed=21, n_eval=6, init_width=64, layers_g=["erf", 2, 1.0, 0.0, 1.0],
                        layers_f=["erf", 2, 1.0, 0.0, 1.0]),
    "bias_d3_mini": dict(model="bottleneck", d=3, d0=6, dr=1, N=24, B=6, steps=200, lr=1.0, lr_f=1.5,
                         lr_g=0.5, seed=22, n_eval=6, init_width=64, layers_g=["relu", 2, 1.2, 0.5, 0.9],
                         layers_f=["relu", 2, 1.0, 0.3, 0.8]),
    "deep_d4_mini": dict(model="bottleneck", d=4, d0=6, dr=2, N=24, B=6, steps=200, lr=1.0, lr_f=None,
                         lr_g=None, seed=23, n_eval=6, init_width=64, layers_g=["relu", 3, 1.0, 0.0, 1.0],
                         layers_f=["relu", 3, 1.0, 0.0, 1.0]),
    "erf_deep_d3_full": dict(model="bottleneck", d=3, d0=5, dr=1, N=8, B=8, steps=200, lr=1.0, lr_f=None,
                             lr_g=None, seed=24, n_eval=6, init_width=64, layers_g=["erf", 3, 1.3, 0.4, 1.0],
                             layers_f=["erf", 3, 1.1, 0.2, 0.8]),
    "ce_d3_mini": dict(model="bottleneck", d=3, d0=6, dr=3, N=24, B=6, steps=200, lr=2.0, lr_f=None,
                       lr_g=None, seed=25, n_eval=6, init_width=64, loss="ce"),
    "ce_logistic_d3_mini": dict(model="bottleneck", d=3, d0=6, dr=1, N=24, B=6, steps=200, lr=2.0,
                                lr_f=None, lr_g=None, seed=26, n_eval=6, loss="ce", init_width=64,
                                layers_g=["erf", 2, 1.0, 0.2, 1.0], layers_f=["erf", 3, 1.0, 0.2, 1.0]),
    "infinite_arch_ce_mini": dict(model="infinite", d=None, d0=6, dr=3, N=24, B=6, steps=200, lr=1.0,
                                  lr_f=1.0, lr_g=2.0, seed=27, n_eval=6, loss="ce",
                                  layers_g=["erf", 3, 1.3, 0.4, 0.8], layers_f=["erf", 2, 1.0, 0.3, 1.0]),
    # layer scales that factor out of the closed forms (Layers.kernel_scale: the fast history pass)
    "scaled_d4_mini": dict(model="bottleneck", d=4, d0=6, dr=2, N=24, B=6, steps=200, lr=2.0, lr_f=None,
                           lr_g=None, seed=29, n_eval=6, init_width=64, layers_g=["relu", 2, 1.0, 0.0, 0.3],
                           layers_f=["relu", 2, 1.5, 0.0, 0.3]),
    "linear_scaled_d3_mini": dict(model="linear", d=3, d0=6, dr=2, N=24, B=6, steps=200, lr=0.5, lr_f=None,
                                  lr_g=None, seed=30, n_eval=6, init_width=64,
                                  layers_g=["linear", 2, 1.0, 0.0, 0.6], layers_f=["linear", 3, 0.8, 0.0, 0.5]),
    "infinite_deep_mini": dict(model="infinite", d=None, d0=6, dr=1, N=24, B=6, steps=200, lr=1.0,
                               lr_f=None, lr_g=None, seed=28, n_eval=6,
                               layers_g=["relu", 3, 1.0, 0.0, 1.0], layers_f=["relu", 4, 1.4, 0.3, 0.7]),
    # chains of several bottlenecks (MATH §9): "widths" d_1 ... d_L; heads with 3 outputs take the
    # fused pass of the accelerated engines, those with 5 the two-pass one
    "chain_d3_d2_mini": dict(model="chain", widths=[3, 2], d0=6, dr=1, N=40, B=8, steps=200, lr=1.0, lr_f=1.5,
                             lr_g=0.7, seed=31, n_eval=8, init_width=64),
    "chain_erf_d4_d5_d3_mini": dict(model="chain", widths=[4, 5, 3], d0=6, dr=2, N=24, B=6, steps=200, lr=1.0,
                                    lr_f=None, lr_g=None, seed=32, n_eval=6, init_width=64,
                                    layers_g=["erf", 2, 1.0, 0.2, 1.0], layers_f=["erf", 2, 1.0, 0.2, 1.0]),
    # schedules and momentum (MATH §8: "lr_schedule" over the case's steps, "momentum", "nesterov")
    "momentum_d3_mini": dict(model="bottleneck", d=3, d0=6, dr=2, N=24, B=6, steps=200, lr=0.2, lr_f=None,
                             lr_g=None, seed=31, n_eval=6, init_width=64, momentum=0.9, lr_schedule="cosine"),
    "nesterov_d4_mini": dict(model="bottleneck", d=4, d0=6, dr=1, N=24, B=6, steps=200, lr=0.3, lr_f=0.4,
                             lr_g=0.2, seed=32, n_eval=6, init_width=64, momentum=0.8, nesterov=True,
                             lr_schedule="warmup:20"),
    "schedule_d3_mini": dict(model="bottleneck", d=3, d0=6, dr=2, N=24, B=6, steps=200, lr=2.0, lr_f=None,
                             lr_g=None, seed=33, n_eval=6, init_width=64, lr_schedule="step:50:0.5"),
    "chain_momentum_d3_d4_mini": dict(model="chain", widths=[3, 4], d0=6, dr=1, N=24, B=6, steps=200, lr=0.3,
                                      lr_f=None, lr_g=None, seed=35, n_eval=6, init_width=64, momentum=0.9,
                                      nesterov=True, lr_schedule="cosine"),
    "infinite_momentum_mini": dict(model="infinite", d=None, d0=6, dr=2, N=24, B=6, steps=200, lr=0.3,
                                   lr_f=0.3, lr_g=0.6, seed=34, n_eval=6, momentum=0.9, nesterov=True,
                                   lr_schedule="step:60:0.5"),
}
#: Steps after which embeddings and F_t(X_eval) are recorded (and the last step).
CHECKPOINT_EVERY = 50
INIT_WIDTH = 256


class GoldenError(RuntimeError):
    """A golden file is missing, altered (sha256) or from another format."""


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------

def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _npz_bytes(arrays):
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def read_manifest(directory=GOLDEN_DIR):
    """The manifest of the golden directory (raises GoldenError if absent or unreadable)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise GoldenError(f"{path}: no golden manifest; write it with `python cli.py golden --regenerate`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GoldenError(f"{path}: not valid JSON ({exc.msg})") from None
    if manifest.get("format") != FORMAT:
        raise GoldenError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest


def load_case(name, directory=GOLDEN_DIR):
    """The arrays of golden case ``name``, after checking its sha256 against the manifest."""
    manifest = read_manifest(directory)
    entry = manifest["files"].get(name)
    if entry is None:
        raise GoldenError(f"golden case {name!r} is not in the manifest")
    path = Path(directory) / entry["file"]
    if not path.is_file():
        raise GoldenError(f"{path}: missing golden file")
    digest = _sha256(path)
    if digest != entry["sha256"]:
        raise GoldenError(f"{path}: sha256 {digest[:12]}... does not match the manifest "
                          f"({entry['sha256'][:12]}...); regenerate or restore it")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------
# kernel case
# ---------------------------------------------------------------------------

def _rotate_towards(x, angle, rng):
    """A vector at exactly-specified ``angle`` from x (in the plane of x and a random direction)."""
    xh = x / np.linalg.norm(x)
    u = rng.standard_normal(x.shape)
    u -= (u @ xh) * xh
    u /= np.linalg.norm(u)
    return (np.cos(angle) * xh + np.sin(angle) * u) * rng.uniform(0.5, 2.0)


def kernel_inputs(m, seed):
    """Pairs (X[i], Y[i]) of dimension m covering the regimes of MATH §2.1, as two (p, m) arrays."""
    rng = np.random.default_rng(seed)
    X, Y = [], []
    for _ in range(12):                                     # random pairs
        X.append(rng.standard_normal(m))
        Y.append(rng.standard_normal(m))
    for c in (1.0, 2.5, 0.3, -1.0, -0.7):                   # parallel and anti-parallel
        x = rng.standard_normal(m)
        X.append(x)
        Y.append(c * x)
    for a in (1e-2, 1e-4, 1e-6, 1e-8, 1e-9, 3e-11):       # nearly parallel / anti-parallel
        x = rng.standard_normal(m)
        X.append(x)
        Y.append(_rotate_towards(x, a, rng))
        X.append(x)
        Y.append(_rotate_towards(x, np.pi - a, rng))
    x = rng.standard_normal(m)                              # orthogonal
    X.append(x)
    Y.append(_rotate_towards(x, np.pi / 2, rng))
    X.append(np.zeros(m))                                   # zero vectors
    Y.append(rng.standard_normal(m))
    X.append(rng.standard_normal(m))
    Y.append(np.zeros(m))
    return np.array(X), np.array(Y)


def kernel_outputs(kern, X, Y):
    """Every kernel of ``kern`` (a module or backend with refimpl's kernel functions) on X x Y."""
    out = {}
    out["nngp"] = kern.nngp(X, Y)
    out["sigmadot"] = kern.sigmadot(X, Y)
    out["ntk"] = kern.ntk(X, Y)
    out["alpha"], out["beta"] = kern.xi_coefficients(X, Y)
    out["xi"] = kern.xi(X, Y)
    out["ntk_inf"] = kern.ntk_inf(X, Y)
    out["ntk_inf_rates"] = kern.ntk_inf(X, Y, lr_f=0.7, lr_g=1.9)
    out["linear_ntk"] = kern.ntk(X, Y, "linear", 3)
    out["linear_xi"] = kern.xi(X, Y, "linear", 2)
    out["linear_ntk_inf"] = kern.ntk_inf(X, Y, kernels.Layers.make("linear", 3), kernels.Layers.make("linear", 2),
                                         lr_g=2.0, lr_f=0.5)
    return out


KERNEL_DIMS = (3, 10, 16, 50)

#: Architectures of the ``kernels_arch`` case (MATH §2.2): name -> (activation, depth, w_std, b_std, out_std).
ARCH_SPECS = {
    "erf": ("erf", 2, 1.0, 0.0, 1.0),
    "erf_deep_bias": ("erf", 3, 1.3, 0.4, 0.8),
    "relu_bias": ("relu", 2, 1.2, 0.5, 0.9),
    "relu_deep": ("relu", 3, 1.0, 0.0, 1.0),
    "relu_deep_bias": ("relu", 4, 1.4, 0.3, 0.7),
    "linear_bias": ("linear", 2, 0.9, 0.6, 1.2),
}
#: No-bottleneck kernels of the ``kernels_arch`` case: name -> (spec of g, spec of f, lr_f, lr_g).
ARCH_INF = {
    "inf_erf": ("erf", "erf_deep_bias", 1.0, 1.0),
    "inf_relu": ("relu_deep_bias", "relu_bias", 0.7, 1.9),
}


def layers_of(spec):
    """A :class:`refimpl.kernels.Layers` from a (activation, depth, w_std, b_std, out_std) list."""
    return kernels.Layers.make(*spec)


def arch_kernel_outputs(kern, X, Y):
    """The kernels of every architecture in ARCH_SPECS and ARCH_INF, computed by ``kern``."""
    out = {}
    for name, spec in ARCH_SPECS.items():
        L = layers_of(spec)
        out[f"{name}/nngp"] = kern.nngp(X, Y, L)
        out[f"{name}/sigmadot"] = kern.sigmadot(X, Y, L)
        out[f"{name}/ntk"] = kern.ntk(X, Y, L)
        out[f"{name}/alpha"], out[f"{name}/beta"] = kern.xi_coefficients(X, Y, L)
        out[f"{name}/xi"] = kern.xi(X, Y, L)
    for name, (g, f, lr_f, lr_g) in ARCH_INF.items():
        out[f"{name}/ntk_inf"] = kern.ntk_inf(X, Y, lr_f=lr_f, lr_g=lr_g, layers_g=layers_of(ARCH_SPECS[g]),
                                              layers_f=layers_of(ARCH_SPECS[f]))
    return out


#: Kernel cases: name -> function (kern, X, Y) -> {quantity: array}.
KERNEL_CASES = {"kernels": kernel_outputs, "kernels_arch": arch_kernel_outputs}


#: Input dimensions of the ``kernels_arch`` case (fewer than KERNEL_DIMS: it has six architectures).
ARCH_KERNEL_DIMS = (3, 10)


def _kernel_dims(golden):
    return [m for m in KERNEL_DIMS if f"m{m}/X" in golden]


def make_kernel_case(name="kernels"):
    arrays = {}
    for m in (KERNEL_DIMS if name == "kernels" else ARCH_KERNEL_DIMS):
        X, Y = kernel_inputs(m, seed=100 + m)
        arrays[f"m{m}/X"], arrays[f"m{m}/Y"] = X, Y
        for k, v in KERNEL_CASES[name](kernels, X, Y).items():
            arrays[f"m{m}/{k}"] = v
    return arrays


# ---------------------------------------------------------------------------
# trajectory cases
# ---------------------------------------------------------------------------

def trajectory_inputs(cfg):
    """Data, initial network weights and batches of a trajectory case (deterministic in its seed)."""
    rng = np.random.default_rng(cfg["seed"])
    X = rng.standard_normal((cfg["N"], cfg["d0"]))
    Y = np.tanh(X[:, :cfg["dr"]] + 0.5 * X[:, 1:cfg["dr"] + 1] ** 2) - 0.3
    if cfg.get("loss") == "ce":          # classes: the largest coordinate (one-hot), or its sign (dr = 1)
        Y = (Y > 0).astype(float) if cfg["dr"] == 1 else np.eye(cfg["dr"])[np.argmax(Y, axis=1)]
    X_eval = rng.standard_normal((cfg["n_eval"], cfg["d0"]))
    batches = np.array([np.arange(cfg["N"]) if cfg["B"] == cfg["N"]
                        else np.sort(rng.permutation(cfg["N"])[:cfg["B"]])
                        for _ in range(cfg["steps"])])
    arrays = {"X": X, "Y": Y, "X_eval": X_eval, "batches": batches}
    if cfg["model"] == "chain":
        net = RandomChain.sample(cfg["d0"], cfg["widths"], cfg["dr"], width=cfg.get("init_width", INIT_WIDTH),
                                 seed=cfg["seed"] + 1000, **_layers(cfg))
        arrays.update({f"net/{k}": v for k, v in net.weights().items()})
    elif cfg["model"] != "infinite":
        net = RandomNetwork.sample(cfg["d0"], cfg["d"], cfg["dr"], width=cfg.get("init_width", INIT_WIDTH),
                                   seed=cfg["seed"] + 1000, **_layers(cfg))
        arrays.update({f"net/{k}": v for k, v in net.weights().items()})
    return arrays


def _layers(cfg):
    """layers_g, layers_f of a case (the default network of its model when not given)."""
    act = "linear" if cfg["model"] == "linear" else "relu"
    return {k: layers_of(cfg[k]) if k in cfg else kernels.Layers.make(act) for k in ("layers_g", "layers_f")}


def build_simulator(cfg, arrays, backend):
    """The simulator of a case from the recorded inputs, with ``backend``'s classes."""
    rates = dict(lr=cfg["lr"], lr_f=cfg["lr_f"], lr_g=cfg["lr_g"], X_eval=arrays["X_eval"])
    if "loss" in cfg:
        rates["loss"] = cfg["loss"]
    for key in ("momentum", "nesterov", "lr_schedule"):
        if key in cfg:
            rates[key] = cfg[key]
    if "lr_schedule" in cfg:
        rates["total_steps"] = cfg["steps"]
    specs = _layers(cfg)
    if cfg["model"] == "infinite":
        if "layers_g" in cfg:
            rates.update(specs)
        return backend.InfiniteSimulator(arrays["X"], arrays["Y"], init="cholesky",
                                         seed=cfg["seed"] + 2000, **rates)
    weights = {k[len("net/"):]: v for k, v in arrays.items() if k.startswith("net/")}
    if cfg["model"] == "chain":
        net = RandomChain.from_weights(weights, specs["layers_g"], (specs["layers_f"],) * len(cfg["widths"]))
        return backend.ChainSimulator(net, arrays["X"], arrays["Y"], **rates)
    net = RandomNetwork.from_weights(weights, **specs)
    return backend.BottleneckSimulator(net, arrays["X"], arrays["Y"], **rates)


def replay(cfg, arrays, backend):
    """Run a case on ``backend``: per-step losses and the checkpoint arrays."""
    sim = build_simulator(cfg, arrays, backend)
    losses = np.empty(cfg["steps"])
    out = {}

    def snapshot(done):
        out[f"ckpt{done}/F_eval"] = sim.outputs(arrays["X_eval"])
        if cfg["model"] != "infinite":
            out[f"ckpt{done}/embeddings"] = sim.embeddings(arrays["X"])

    def keep_loss(done, loss):
        losses[done - 1] = loss
    SGDLoop(sim.step, lambda t: arrays["batches"][t],
            after=[keep_loss, every(CHECKPOINT_EVERY, snapshot, cfg["steps"])]).run(0, len(arrays["batches"]))
    out["losses"] = losses
    return out


# ---------------------------------------------------------------------------
# regenerate / compare
# ---------------------------------------------------------------------------

def regenerate(directory=GOLDEN_DIR, log=print, cases=None):
    """Write golden cases with refimpl and the manifest (each file atomically).

    ``cases``: names of the cases to write (default all); the manifest keeps the
    entries of the other cases, so new cases can be added without rewriting the
    existing files (whose last bits depend on the machine's libm and BLAS).
    """
    import refimpl
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = {}
    if cases is not None:
        known = [*KERNEL_CASES, *TRAJECTORIES]
        unknown = [c for c in cases if c not in known]
        if unknown:
            raise GoldenError(f"cases: unknown golden case {unknown[0]!r}; known: {', '.join(known)}")
        try:
            entries = {k: v for k, v in read_manifest(directory)["files"].items() if k in known}
        except GoldenError:
            entries = {}
    t0 = time.perf_counter()
    cases_ = [(k, None) for k in KERNEL_CASES] + list(TRAJECTORIES.items())
    for name, cfg in cases_:
        if cases is not None and name not in cases:
            continue
        t = time.perf_counter()
        if cfg is None:
            arrays = make_kernel_case(name)
            config = {"dims": list(KERNEL_DIMS)}
            if name == "kernels_arch":
                config.update(dims=list(ARCH_KERNEL_DIMS), specs=ARCH_SPECS, inf=ARCH_INF)
        else:
            arrays = trajectory_inputs(cfg)
            arrays.update({f"out/{k}": v for k, v in replay(cfg, arrays, refimpl).items()})
            config = dict(cfg, init_width=cfg.get("init_width", INIT_WIDTH), checkpoint_every=CHECKPOINT_EVERY)
        fname = f"{name}.npz"
        atomic_write_bytes(directory / fname, _npz_bytes(arrays))
        entries[name] = {"file": fname, "sha256": _sha256(directory / fname), "config": config,
                         "arrays": sorted(arrays)}
        log(f"{name}: {time.perf_counter() - t:.1f} s, {(directory / fname).stat().st_size / 1024:.0f} KiB")
    manifest = {
        "format": FORMAT,
        "written_by": "python cli.py golden --regenerate (experiments.golden.regenerate)",
        "refimpl_version": refimpl.__version__,
        "numpy_version": np.__version__,
        "error_measures": "see experiments/golden.py docstring",
        "tolerance_float64": TOL_FLOAT64,
        "files": entries,
    }
    atomic_write_bytes(directory / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    log(f"golden files written to {directory} in {time.perf_counter() - t0:.1f} s")
    return manifest


def rel_elementwise(a, b, scale=None, floor=1e-6, scale_max=None):
    """max_i |a_i - b_i| / (s_i + floor * S) with s = |b| (or ``scale``), S = max s (or ``scale_max``)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not b.size:
        return 0.0
    s = np.abs(b) if scale is None else np.asarray(scale, dtype=np.float64)
    den = s + floor * (float(np.max(s)) if scale_max is None else scale_max)
    return float(np.max(np.abs(a - b) / np.where(den > 0, den, 1.0)))


def rel_frobenius(a, b):
    """|a - b|_F / |b|_F."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / (nb if nb > 0 else 1.0))


#: Pairs within this angle of anti-parallel (and, for ntk_inf and the Xi coefficients alpha and
#: beta, of parallel) are compared separately, under "<quantity>@singular".
SINGULAR = 1e-5
#: Their tolerance.  The stored files are ill-conditioned there, not the backends: the reference
#: that wrote them held theta ~ pi with an absolute error of ulp(pi) = 4.4e-16, so its sin(theta)
#: and pi - theta carry a relative error up to 4.4e-16 / (pi - theta) (4.4e-7 at 1e-9), where the
#: backends (and refimpl since MATH §2.1's shared angle formula) take them from the half-angles;
#: and the closed-form NTK_inf takes arccos of a correlation that is 1 to within a few ulps for
#: (nearly) parallel inputs, which turns an ulp of Sigma_g into ~1e-8 in the angle (the backends'
#: fast path, accel.formulas.ntk_inf_from_g, shares that code but not the last bit of Sigma_g).
#: alpha and beta grow like 1/theta at parallel pairs, so an ulp in the inputs' dot products
#: moves them by ~1e-9 relative at theta = 1e-8 (measured between two OpenBLAS kernels); only
#: their combination Xi, compared on its own scale, is well conditioned.
TOL_SINGULAR = 1e-6


def compare_kernels(golden, kern):
    """{quantity: error} of the kernel functions of ``kern`` against the golden kernel case.

    Elementwise relative errors with a floor of 1e-6 of the array's largest
    entry (values that vanish, e.g. Sigma at anti-parallel pairs, are compared
    absolutely).  Singular pairs (see SINGULAR) are reported under
    ``<quantity>@singular``.
    """
    return _kernel_errors(golden, lambda m, X, Y: kernel_outputs(kern, X, Y))


def compare_arch_kernels(golden, kern):
    """:func:`compare_kernels` for the ``kernels_arch`` case (architectures of MATH §2.2)."""
    return _kernel_errors(golden, lambda m, X, Y: arch_kernel_outputs(kern, X, Y))


def _kernel_errors(golden, outputs):
    """:func:`compare_kernels` for the outputs ``outputs(m, X, Y) -> {quantity: array}``."""
    errors = {}
    for m in _kernel_dims(golden):
        X, Y = golden[f"m{m}/X"], golden[f"m{m}/Y"]
        theta = kernels.pair_angles(X, Y)[2]
        anti = (np.pi - theta) < SINGULAR
        para = theta < SINGULAR
        for k, v in outputs(m, X, Y).items():
            ref = golden[f"m{m}/{k}"]
            scale = np.abs(ref)
            leaf, prefix = k.rsplit("/", 1)[-1], k[:len(k) - len(k.rsplit("/", 1)[-1])]
            if leaf == "xi":
                scale = np.broadcast_to((np.abs(golden[f"m{m}/{prefix}alpha"]) * np.linalg.norm(Y, axis=1)[None, :]
                                         + np.abs(golden[f"m{m}/{prefix}beta"]))[:, :, None], ref.shape)
            singular = (anti | para) if leaf.startswith("ntk_inf") or leaf in ("alpha", "beta") else anti
            top = float(np.max(scale))
            for key, mask in ((k, ~singular), (f"{k}@singular", singular)):
                if mask.any():
                    err = rel_elementwise(v[mask], ref[mask], scale[mask], scale_max=top)
                    errors[key] = max(errors.get(key, 0.0), err)
    return errors


def case_errors(name, new, ref):
    """{quantity: error} between two versions of golden case ``name`` (e.g. regenerated and stored).

    The same measures and quantity names as the checks of the backends (:func:`compare_kernels`,
    :func:`compare_trajectory`, so :func:`tolerance` applies), plus ``inputs``: the largest
    elementwise relative error of the recorded inputs (data, networks, batches).
    """
    if name in KERNEL_CASES:
        inputs = [k for k in ref if k.rsplit("/", 1)[-1] in ("X", "Y")]
        errors = _kernel_errors(ref, lambda m, X, Y: {k.split("/", 1)[1]: new[k] for k in new
                                                     if k.startswith(f"m{m}/") and k not in inputs})
    else:
        inputs = [k for k in ref if not k.startswith("out/")]
        got = {k[len("out/"):]: v for k, v in new.items() if k.startswith("out/")}
        errors = _trajectory_errors(got, ref)
    errors["inputs"] = max(rel_elementwise(new[k], ref[k]) for k in inputs)
    return errors


def tolerance(quantity, dtype="float64"):
    """The documented tolerance of an error reported by :func:`compare_kernels` / :func:`compare_trajectory`."""
    if quantity.endswith("@singular"):
        return TOL_SINGULAR
    return TOL_FLOAT64 if dtype == "float64" else TOL_FLOAT32


def compare_trajectory(name, golden, backend, directory=GOLDEN_DIR):
    """{"losses": err, "embeddings": err, "F_eval": err} of ``backend`` on trajectory ``name``."""
    return _trajectory_errors(replay(TRAJECTORIES[name], golden, backend), golden)


def _trajectory_errors(got, golden):
    """:func:`compare_trajectory` for the replayed outputs ``got`` (keys as ``out/...`` without ``out/``)."""
    errors = {"losses": rel_elementwise(got["losses"], golden["out/losses"], floor=0.0)}
    for key in got:
        if key.startswith("ckpt"):
            kind = key.split("/")[1]
            errors[kind] = max(errors.get(kind, 0.0), rel_frobenius(got[key], golden[f"out/{key}"]))
    return errors


def skipped_targets():
    """[{"target", "reason"}] for the backends that cannot run here and so are not checked
    (:func:`accel.golden_targets` lists only the available ones): the gpu backend without CuPy
    or device, with its one-line reason."""
    from accel import gpu
    reason = gpu.unavailable_reason()
    return [] if reason is None else [{"target": "gpu", "reason": reason}]


def check(targets, directory=GOLDEN_DIR, cases=None, log=print):
    """Replay golden cases on each target; return a list of result dicts.

    ``targets``: (label, backend, dtype) with ``backend`` anything that has
    refimpl's simulator classes and kernel functions.  Each result has label,
    case, errors ({quantity: error}), worst (the largest error relative to its
    tolerance, as error / tolerance), ok, seconds.
    """
    rows = []
    compare = {"kernels": compare_kernels, "kernels_arch": compare_arch_kernels}
    for name in cases or (list(KERNEL_CASES) + list(TRAJECTORIES)):
        golden = load_case(name, directory)
        for label, backend, dtype in targets:
            t = time.perf_counter()
            errs = compare[name](golden, backend) if name in compare else \
                compare_trajectory(name, golden, backend, directory)
            ratio = {k: v / tolerance(k, dtype) for k, v in errs.items()}
            worst = max(ratio, key=ratio.get)
            row = {"label": label, "case": name, "errors": errs, "worst": worst,
                   "worst_error": errs[worst], "tolerance": tolerance(worst, dtype),
                   "ok": all(r <= 1.0 for r in ratio.values()), "seconds": time.perf_counter() - t}
            rows.append(row)
            if log:
                log(f"{label:<24} {name:<20} {row['worst']:<22} {row['worst_error']:9.2e} "
                    f"{row['tolerance']:7.0e}  {'ok' if row['ok'] else 'FAIL':<4} {row['seconds']:5.1f} s")
    return rows
