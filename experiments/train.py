"""The training driver every backend shares: batches, evaluation, metrics, checkpoints, resume.

A *run directory* holds

``config.json``
    Every option of the run, the data description and the backend (written once).
``metrics.csv``
    One row at step 0, every ``eval_every`` steps and at the last step.  The
    first columns are exactly ``step,train_loss,test_loss,wall_s``; then
    ``train_acc,test_acc`` (empty for regression), then ``feature_movement,
    kernel_alignment`` (the bottleneck metrics of :mod:`experiments.metrics`,
    empty for ``width = inf``).  ``train_loss`` is the mean
    of ``|F - y|^2 / 2`` (with ``loss="ce"``: the cross-entropy of MATH §4.x) over a fixed subset of at most ``eval_size`` training
    points (the first ``eval_size`` rows of a permutation drawn from
    ``seed``); ``test_loss`` is the same over the whole (possibly subsampled)
    test set.  ``wall_s`` is the training time in seconds since the start of
    the run, summed over resumed sessions.
``checkpoint.npz``
    The simulator state at the last checkpoint (no pickle), written atomically.
``loss.png``
    Training and test loss against steps.
``summary.json``
    Written when the run finishes: the final metrics, the wall time and the
    steps needed to reach a training loss of ``fraction * L_null`` for the
    fractions :data:`experiments.metrics.THRESHOLD_FRACTIONS` (``L_null`` is the
    loss of the zero predictor on the training set; see :mod:`experiments.metrics`).

Batches: epoch ``e`` uses the permutation ``default_rng((seed, 1, e))`` of the
training rows, cut into ``N // batch_size`` batches (the remainder is dropped).
Batch ``t`` is therefore a pure function of (seed, t), which is what makes a
resumed run identical, bit for bit, to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from refimpl import __version__
from refimpl.dynamics import DivergenceError
from refimpl.dynamics import LOSSES, pointwise_loss
from refimpl.kernels import ACTIVATIONS, architecture

#: The loss of a run, in words (config.json).
LOSS_TEXT = {"mse": "mean over points of |F - y|^2 / 2; batch loss 1/(2B) sum |F - y|^2",
             "ce": "mean over points of the cross-entropy -y . log softmax(F) (dr = 1: logistic, "
                   "softplus(F) - y F); batch loss its mean over the batch"}


def _pair(value):
    """A scale option: one number, or [g, f] (lists from config.json become tuples)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value
from .data import DATASETS
from .figures import PLOT_LOCK, pyplot, save_figure
from .fileio import (atomic_write_bytes, atomic_write_text, load_npz, read_csv,  # noqa: F401 (re-exported)
                     save_npz, write_csv)
from .metrics import THRESHOLD_FRACTIONS, FeatureProbe, null_loss, steps_to_thresholds
from .synthetic import SYNTHETIC_TEST_SIZE, SYNTHETIC_TRAIN_SIZE
from .validate import (RunFailed, TrainError, non_negative_int, one_of, optional, positive_int,
                       positive_number, positive_rate, width)

METRIC_COLUMNS = ["step", "train_loss", "test_loss", "wall_s", "train_acc", "test_acc",
                  "feature_movement", "kernel_alignment"]
BACKENDS = ("numpy", "cpu", "gpu", "auto")
DTYPES = ("float64", "float32")
RUN_FILES = ("config.json", "metrics.csv", "checkpoint.npz", "loss.png", "summary.json")




@dataclasses.dataclass
class TrainConfig:
    """All options of a training run (stored in ``config.json``)."""

    dataset: str = "synthetic"
    data_dir: str | None = None
    train_size: int | None = SYNTHETIC_TRAIN_SIZE
    test_size: int | None = SYNTHETIC_TEST_SIZE
    d0: int = 16                     # synthetic only
    dr: int = 1                      # synthetic only
    width: int | str = 10            # bottleneck width d, or "inf"
    steps: int = 600
    batch_size: int = 20
    lr: float = 2.0
    lr_f: float | None = None
    lr_g: float | None = None
    seed: int = 0                    # initial functions and batch order
    data_seed: int = 0               # synthetic draw / data subset (the data stay the same across seeds)
    init_width: int = 10_000         # width n0 of the network that draws g0, f0, J0 (MATH §3)
    activation: str = "relu"
    depth_g: int = 1                 # hidden layers of g (MATH §2.2)
    depth_f: int = 1                 # hidden layers of f
    w_std: float | list = 1.0        # weight std of the hidden layers: one number, or [g, f]
    b_std: float | list = 0.0        # bias std of every layer: one number, or [g, f]
    out_std: float | list = 1.0      # weight std of the last layer of g and of f: one number, or [g, f]
    loss: str = "mse"                # "mse" or "ce" (softmax / logistic cross-entropy, MATH §4.x)
    eval_every: int = 50
    eval_size: int = 1000
    checkpoint_every: int | None = None   # default: every evaluation
    backend: str = "numpy"
    dtype: str = "float64"

    def validate(self):
        """Raise TrainError with a one-line message for the first bad option (library callers; the
        command line checks the same rules, from :mod:`experiments.validate`, while parsing)."""
        one_of("dataset", self.dataset, DATASETS)
        width("width", self.width)
        for name in ("steps", "batch_size", "init_width", "eval_every", "eval_size", "d0", "dr"):
            positive_int(name, getattr(self, name))
        for name in ("train_size", "test_size", "checkpoint_every"):
            optional(positive_int, name, getattr(self, name))
        for name in ("seed", "data_seed"):
            non_negative_int(name, getattr(self, name))
        positive_number("lr", self.lr)
        for name in ("lr_f", "lr_g"):
            positive_rate(name, getattr(self, name))
        one_of("activation", self.activation, ACTIVATIONS)
        self.layers()
        one_of("loss", self.loss, LOSSES)
        if self.loss == "ce" and self.dataset == "synthetic":
            raise TrainError("loss: 'ce' needs a classification data set (mnist or cifar); synthetic is "
                             "regression (use --loss mse)")
        one_of("backend", self.backend, BACKENDS)
        one_of("dtype", self.dtype, DTYPES)
        if self.backend == "numpy" and self.dtype != "float64":
            raise TrainError("dtype: the numpy reference backend is float64 only")

    def layers(self):
        """(Layers of g, Layers of f) of the run (MATH §2.2); TrainError for a bad option."""
        try:
            return architecture(self.activation, self.depth_g, self.depth_f, _pair(self.w_std),
                                _pair(self.b_std), _pair(self.out_std))
        except ValueError as exc:
            raise TrainError(str(exc)) from None

    @classmethod
    def from_json(cls, data):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# ----------------------------------------------------------------------------
# helpers: atomic files, backends, data
# ----------------------------------------------------------------------------

def resolve_backend(name, dtype="float64"):
    """The module-like object that provides BottleneckSimulator and InfiniteSimulator."""
    if name == "numpy":
        import refimpl
        return refimpl
    try:
        import accel
        get_backend = accel.get_backend
    except (ImportError, AttributeError):
        raise TrainError(f"backend: {name!r} is not available in this installation "
                         "(the accelerated backends are not built); use --backend numpy") from None
    try:
        return get_backend(name, dtype=dtype)
    except (accel.BackendUnavailable, ValueError) as exc:   # the backend's own one-line reason
        raise TrainError(f"backend: {name!r} is unavailable: {exc}") from None


def load_data(config):
    """The data set of a run (deterministic in the config)."""
    from .data import load_dataset
    kwargs = {}
    if config.dataset == "synthetic":
        kwargs = {"d0": config.d0, "dr": config.dr}
    try:
        return load_dataset(config.dataset, data_dir=config.data_dir, train_size=config.train_size,
                            test_size=config.test_size, seed=config.data_seed,
                            **kwargs)
    except (ValueError, OSError) as exc:
        raise TrainError(str(exc)) from None


def batch_indices(seed, step, n, batch_size):
    """Row indices of SGD batch number ``step`` (0-based): a pure function of (seed, step)."""
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise TrainError(f"batch_size: expected at most the number of training points ({n}), got {batch_size}")
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng((seed, 1, epoch)).permutation(n)
    return np.sort(perm[k * batch_size:(k + 1) * batch_size])


def build_simulator(config, data, backend):
    """Construct the simulator of a run from its config and data (the initial functions come from ``seed``)."""
    from refimpl.network import RandomNetwork
    common = dict(lr=config.lr, lr_f=config.lr_f, lr_g=config.lr_g, X_eval=data.X_test)
    layers_g, layers_f = config.layers()
    if config.loss != "mse":
        common["loss"] = config.loss
    if config.width == "inf":
        sim = backend.InfiniteSimulator(data.X_train, data.Y_train, seed=config.seed,
                                        layers_g=layers_g, layers_f=layers_f, **common)
        info = {"f0_method": sim.f0_method}
    else:
        net = RandomNetwork.sample(data.X_train.shape[1], int(config.width), data.Y_train.shape[1],
                                   width=config.init_width, seed=config.seed, layers_g=layers_g,
                                   layers_f=layers_f)
        sim = backend.BottleneckSimulator(net, data.X_train, data.Y_train, **common)
        info = {"f0_method": f"random network (width {config.init_width}, seed {config.seed})"}
    return sim, info


# ----------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------

def eval_rows(seed, n, eval_size):
    """The fixed training subset (sorted row indices, at most ``eval_size`` of ``n``) on which the training
    metrics are evaluated: the first rows of the permutation ``default_rng((seed, 2))``."""
    if n <= eval_size:
        return np.arange(n)
    return np.sort(np.random.default_rng((seed, 2)).permutation(n)[:eval_size])


def _outputs(sim, X, rows=None):
    if hasattr(sim, "f"):                          # bottleneck: F = f_t(g_t(X))
        G = sim.embeddings(X)
        return sim.f(G if rows is None else G[rows])
    F = sim.outputs(X)
    return F if rows is None else F[rows]


def evaluate(sim, data, rows):
    """Losses (the trained one: mean |F - y|^2 / 2, or the cross-entropy) and accuracies (classification)."""
    out = {}
    for split, X, Y, labels, r in (("train", data.X_train, data.Y_train, data.labels_train, rows),
                                   ("test", data.X_test, data.Y_test, data.labels_test, None)):
        F = _outputs(sim, X, r)
        Yr = Y if r is None else Y[r]
        loss = getattr(sim, "loss", "mse")
        if loss == "mse":
            out[f"{split}_loss"] = 0.5 * float(np.mean(np.sum((F - Yr) ** 2, axis=1)))
        else:
            out[f"{split}_loss"] = float(np.mean(pointwise_loss(F, Yr, loss)))
        if labels is not None:
            lab = labels if r is None else labels[r]
            out[f"{split}_acc"] = float(np.mean(np.argmax(F, axis=1) == lab))
        else:
            out[f"{split}_acc"] = None
    return out


# ----------------------------------------------------------------------------
# the run directory
# ----------------------------------------------------------------------------

def check_run_dir(out, force):
    """Refuse an ``out`` that is a file, or that holds a run unless ``force``; return the run files found."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrainError(f"out: {out} exists and is not a directory")
    existing = [f for f in RUN_FILES if (out / f).exists()]
    if existing and not force:
        raise TrainError(f"out: {out} already holds a run ({', '.join(existing)}); "
                         "use --force to overwrite it or --resume to continue it")
    return existing


def prepare_run_dir(out, force):
    """Create the run directory; refuse to overwrite an existing run unless ``force``."""
    out = Path(out)
    existing = check_run_dir(out, force)
    out.mkdir(parents=True, exist_ok=True)
    for f in existing:
        (out / f).unlink()
    return out


def train(config, out, force=False, resume=False, progress=None, log=print):
    """Run (or resume) a training run; returns the path of the run directory.

    Parameters
    ----------
    config : TrainConfig
        Options of a new run; for ``resume`` only ``steps`` is read from it
        (``None`` keeps the saved value) and everything else comes from the run.
    out : path of the run directory
    force : overwrite an existing run directory
    resume : continue the run in ``out`` from its checkpoint
    progress : callable(total, start) -> context manager with ``update(n, loss=batch_loss)``, called
        after every step (the command line's progress display), or None
    log : callable for one-line messages
    """
    out = Path(out)
    if resume:
        cfg_path = out / "config.json"
        if not cfg_path.exists() or not (out / "checkpoint.npz").exists():
            raise TrainError(f"resume: {out} holds no resumable run (config.json and checkpoint.npz expected)")
        saved = json.loads(cfg_path.read_text())
        steps = config.steps if config is not None and config.steps is not None else saved["config"]["steps"]
        config = TrainConfig.from_json(saved["config"])
        config.steps = steps
        config.validate()
    else:
        config.validate()
        check_run_dir(out, force)

    # everything that can fail on bad input fails before a new run directory is made
    backend = resolve_backend(config.backend, config.dtype)
    data = load_data(config)
    if config.batch_size > data.X_train.shape[0]:
        raise TrainError(f"batch_size: expected at most the number of training points "
                         f"({data.X_train.shape[0]}), got {config.batch_size}")
    if not resume:
        out = prepare_run_dir(out, force)
    sim, info = build_simulator(config, data, backend)
    rows = eval_rows(config.seed, data.X_train.shape[0], config.eval_size)
    probe = FeatureProbe(sim, data.X_train, data.Y_train, rows)   # captures G_0 before any step/resume
    ckpt_every = config.checkpoint_every or config.eval_every

    if resume:
        state = load_npz(out / "checkpoint.npz")
        wall0 = float(state.pop("driver_wall_s"))
        done = int(state["t"])
        if config.steps < done:
            raise TrainError(f"steps: the run in {out} is already at step {done}; ask for at least that many")
        if config.steps == done:
            log(f"nothing to do: the run is already at step {done} (ask for more with --steps)")
            return out
        saved_meta = json.loads(out.joinpath("config.json").read_text())
        saved_meta["config"]["steps"] = config.steps
        atomic_write_text(out / "config.json", json.dumps(saved_meta, indent=2) + "\n")
        sim.load_state_dict(state)
        start = sim.t
        # drop rows written after the checkpoint, and a final-step row that is off the eval grid
        metrics = [r for r in read_csv(out / "metrics.csv")
                   if int(r["step"]) < start or (int(r["step"]) == start and start % config.eval_every == 0)]
        log(f"resuming {out} at step {start} of {config.steps}")
    else:
        meta = {"config": dataclasses.asdict(config), "data": data.meta, "refimpl_version": __version__,
                "initial_functions": info, "eval_train_rows": len(rows),
                "loss": LOSS_TEXT[config.loss]}
        atomic_write_text(out / "config.json", json.dumps(meta, indent=2) + "\n")
        wall0, start, metrics = 0.0, 0, []

    t0 = time.perf_counter()

    def wall():
        return wall0 + time.perf_counter() - t0

    def checkpoint():
        state = sim.state_dict()
        state["driver_wall_s"] = np.array(wall())
        save_npz(out / "checkpoint.npz", state)

    def record(step):
        row = {"step": step, **evaluate(sim, data, rows), "wall_s": round(wall(), 3), **probe(sim)}
        for key in ("train_loss", "test_loss"):
            if not np.isfinite(row[key]):
                raise DivergenceError(f"{key} is {row[key]} at step {step}: the run diverged")
        metrics.append(row)
        write_csv(out / "metrics.csv", METRIC_COLUMNS, metrics)
        return row

    if start == 0:
        record(0)
        checkpoint()
    last = None
    try:
        ctx = progress(config.steps, start) if progress else _NullProgress()
        # overflow inside a diverging step is reported as DivergenceError, not as numpy warnings
        with ctx as bar, np.errstate(over="ignore", invalid="ignore"):
            for step in range(start, config.steps):
                idx = batch_indices(config.seed, step, data.X_train.shape[0], config.batch_size)
                last = sim.step(idx)
                done = step + 1
                if done % config.eval_every == 0 or done == config.steps:
                    record(done)
                if done % ckpt_every == 0 or done == config.steps:
                    checkpoint()
                bar.update(1, loss=last)
    except DivergenceError as exc:
        checkpoint_step = _checkpoint_step(out)
        _plot(out, metrics)
        raise RunFailed(f"{exc}; the last good checkpoint (step {checkpoint_step}) is kept in "
                         f"{out / 'checkpoint.npz'}") from None
    _plot(out, metrics)
    summary = {"steps": config.steps, "final": metrics[-1] if metrics else None, "last_batch_loss": last,
               "wall_s": round(wall(), 3),
               "steps_to_threshold": threshold_summary(metrics, _null_loss(config, data.Y_train))}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    return out


def _null_loss(config, Y):
    """The trained loss of the zero predictor on Y (mean |y|^2 / 2 for mse; log k or log 2 for ce)."""
    if config.loss == "mse":
        return null_loss(Y)
    return float(np.mean(pointwise_loss(np.zeros_like(Y), Y, config.loss)))


def threshold_summary(metrics, loss_null, fractions=THRESHOLD_FRACTIONS):
    """Steps to reach the training losses ``fraction * loss_null`` (see :mod:`experiments.metrics`).

    ``metrics`` are the rows of metrics.csv (values as numbers or strings).  The step is the first
    evaluation at or below the threshold (an upper bound; resolution ``eval_every``), None if never.
    """
    steps = [int(r["step"]) for r in metrics]
    losses = [float(r["train_loss"]) for r in metrics]
    thresholds = [f * loss_null for f in fractions]
    hits = steps_to_thresholds(steps, losses, thresholds)
    return {"loss_null": loss_null, "definition": "first evaluated step with train_loss <= fraction * loss_null",
            "thresholds": [{"fraction": f, "loss": t, "step": h} for f, t, h in zip(fractions, thresholds, hits)]}


def _checkpoint_step(out):
    try:
        with np.load(out / "checkpoint.npz", allow_pickle=False) as z:
            return int(z["t"])
    except (OSError, KeyError, ValueError):
        return None


class _NullProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1, loss=None):
        pass


def _plot(out, metrics):
    """Write loss.png (training and test loss against steps, log scale)."""
    if not metrics:
        return
    with PLOT_LOCK:
        plt = pyplot()
        steps = [int(r["step"]) for r in metrics]
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label in (("train_loss", "train"), ("test_loss", "test")):
            ax.plot(steps, [float(r[key]) for r in metrics], marker=".", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss  (the trained loss, see config.json)")
        ax.set_title(out.name)
        ax.legend()
        fig.tight_layout()
        save_figure(fig, out / "loss.png", dpi=100)
