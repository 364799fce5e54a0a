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
    of ``|F - y|^2 / 2`` over a fixed subset of at most ``eval_size`` training
    points (the first ``eval_size`` rows of a permutation drawn from
    ``data_seed``, the same for every seed and width; runs made before
    ``eval_subset`` existed drew it from ``seed``); ``test_loss`` is the same over the whole (possibly subsampled)
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
    loss of the zero predictor on the training set; see :mod:`experiments.metrics`), and for
    classification the steps needed to reach the training accuracies
    :data:`experiments.metrics.ACCURACY_LEVELS`.

Batches and steps: :mod:`experiments.loop` (:func:`~experiments.loop.batch_indices`: batch ``t`` is a
pure function of (seed, t), which is what makes a resumed run identical, bit for bit, to an
uninterrupted one).
"""

from __future__ import annotations

import dataclasses
import csv
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from glob import escape as glob_escape
from pathlib import Path

import numpy as np

from refimpl import __version__
from refimpl.dynamics import DivergenceError
from refimpl.dynamics import LOSSES
from refimpl.kernels import ACTIVATIONS, architecture
from . import fileio
from .data import DATASETS, GENERATED, check_loss_fits_task, dataset_name, is_npz  # noqa: F401
from .figures import PLOT_LOCK, pyplot, save_figure
from .loop import BatchOrder, SGDLoop, due, every
from .fileio import (DirLock, atomic_write_bytes, atomic_write_text, fault_point, load_npz,  # noqa: F401
                     read_csv, read_json, remove_stale_temp_files, save_npz, write_csv)
from .evaluation import evaluate, evaluate_train_loss, null_loss_of, run_eval_rows
from .metrics import ACCURACY_LEVELS, THRESHOLD_FRACTIONS, FeatureProbe, steps_to_accuracies, steps_to_thresholds
from .synthetic import SYNTHETIC_TEST_SIZE, SYNTHETIC_TRAIN_SIZE
from .validate import (RunFailed, TrainError, non_negative_int, one_of, optional, positive_int,
                       positive_number, positive_rate, width)

METRIC_COLUMNS = ["step", "train_loss", "test_loss", "wall_s", "train_acc", "test_acc",
                  "feature_movement", "kernel_alignment"]
BACKENDS = ("numpy", "cpu", "gpu", "auto")
DTYPES = ("float64", "float32")
RUN_FILES = ("config.json", "metrics.csv", "checkpoint.npz", "loss.png", "summary.json",
             "lr_probe.json")              # the last: lr_policy "per-width" only




#: A checkpoint is "good" (kept, never overwritten by a worse state) when its arrays and its training loss are
#: finite and the loss is at most this factor times the loss at step 0; a run whose training loss grows past
#: it has diverged and stops (README, "Run directories").
GOOD_LOSS_FACTOR = 1000.0

#: The loss of a run, in words (config.json).
LOSS_TEXT = {"mse": "mean over points of |F - y|^2 / 2; batch loss 1/(2B) sum |F - y|^2",
             "ce": "mean over points of the cross-entropy -y . log softmax(F) (dr = 1: logistic, "
                   "softplus(F) - y F); batch loss its mean over the batch"}


#: Most hidden layers of g or of f (each layer of the random network of width n0 costs n0^2 floats).
MAX_DEPTH = 1000
#: Largest order of magnitude (decades) of the kernel values the scales may produce (float64 ends near 1e308;
#: products and squares inside the simulation need room).
MAX_KERNEL_LOG10 = 100


def _kernel_decades(config):
    """log10 of the size of the kernel the scales and depths give (MATH §2.2): each hidden layer multiplies the
    variance by about ``w_std^2 + b_std^2``, the last layer by ``out_std^2``: (decades, the option that
    contributes most), (None, None) for bad values."""
    try:
        hidden = last = 0.0
        for k, depth in enumerate((config.depth_g, config.depth_f)):
            w, b, o = (float(_pair(v)[k]) if isinstance(_pair(v), tuple) else float(v)
                       for v in (config.w_std, config.b_std, config.out_std))
            if math.hypot(w, b) > 0:                 # zero scales are the options' own business
                hidden += 2 * int(depth) * np.log10(math.hypot(w, b))
            if o > 0:
                last += 2 * np.log10(o)
        total = float(hidden + last)
        return total, ("out_std" if abs(last) > abs(hidden) else "w_std")
    except (TypeError, ValueError, IndexError, OverflowError):
        return None, None


#: Defaults of the options that apply to some runs only (None in config.json where they do not apply).
OPTION_DEFAULTS = {"dr": 1, "latent_dim": 2, "lr_fraction": 0.5, "lr_probe_steps": 100}


def unused_options(dataset, task, lr_policy):
    """{option: why it does not apply} for a run of ``dataset``, ``task`` and ``lr_policy``.

    ``dr`` is the synthetic data's output dimension (mnist / cifar / npz data fix it themselves: a given
    value is checked against them); ``latent_dim`` belongs to multi-index and manifold; ``lr_fraction`` and
    ``lr_probe_steps`` to ``lr_policy = "per-width"``, which sets ``lr`` itself.
    """
    out = {}
    if task == "autoencoder":
        out["dr"] = "with task autoencoder the targets are the inputs, dr = d0"
    elif dataset in ("multi-index", "manifold"):
        out["dr"] = f"the {dataset} data fix their outputs (multi-index: 1, manifold: latent_dim)"
    if dataset not in ("multi-index", "manifold"):
        out["latent_dim"] = "it belongs to --dataset multi-index and manifold"
    if lr_policy != "per-width":
        out["lr_fraction"] = out["lr_probe_steps"] = "it belongs to --lr-policy per-width"
    else:
        out["lr"] = "with --lr-policy per-width the rate is lr_fraction x the probed largest stable rate"
    return out


def _pair(value):
    """A scale option: one number, or [g, f] (lists from config.json become tuples)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


@dataclasses.dataclass
class TrainConfig:
    """All options of a training run (stored in ``config.json``)."""

    dataset: str = "synthetic"
    data_dir: str | None = None
    train_size: int | None = SYNTHETIC_TRAIN_SIZE
    test_size: int | None = SYNTHETIC_TEST_SIZE
    d0: int | None = None            # synthetic only (default 16); None for mnist / cifar
    dr: int | None = None            # synthetic only (default 1); None for mnist / cifar
    width: int | str = 10            # bottleneck width d, or "inf"
    chain: list | None = None        # widths d2, d3, ... of further bottlenecks after `width` (MATH §9); None: one
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
    loss: str = "mse"                # "mse" or "ce" (softmax / logistic cross-entropy, MATH §4.3)
    eval_every: int = 50
    eval_size: int = 1000
    checkpoint_every: int | None = None   # default: every evaluation
    backend: str = "numpy"           # after train(): what ran (numpy, cpu or gpu; "auto" is resolved)
    backend_requested: str | None = None   # what was asked (e.g. "auto"); None in runs made before it
    dtype: str = "float64"
    # controls of the experiments (experiments.controls, experiments.tasks; MATH §7.2-§7.4)
    task: str = "default"            # "autoencoder": targets = inputs
    latent_dim: int | None = None    # multi-index / manifold only (default 2); None where it does not apply
    center: bool = False             # train and report F - F0
    lr_policy: str = "fixed"         # "per-width": lr = lr_fraction x largest stable rate (set by the probe)
    lr_fraction: float | None = None      # per-width only (default 0.5); None otherwise
    lr_probe_steps: int | None = None     # per-width only (default 100); None otherwise
    lr_scale: str = "none"           # "matched": every rate divided by the kernel scale (MATH §7.7)
    eval_subset: str = "fixed"       # training rows of the training loss: "fixed" per data set, or "seed"

    def validate(self):
        """Raise TrainError with a one-line message for the first bad option (library callers; the
        command line checks the same rules, from :mod:`experiments.validate`, while parsing).

        Fills in the synthetic data's defaults ``d0 = 16``, ``dr = 1``; for mnist and cifar ``d0`` and
        ``dr`` stay None (given values are checked against the data by :func:`load_data`)."""
        try:
            self.dataset = dataset_name(self.dataset)        # npz:PATH with PATH made absolute
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        width("width", self.width)
        self._check_chain()
        if self.dataset in GENERATED:              # the generated data sets take d0 (and synthetic dr) as options
            self.d0 = 16 if self.d0 is None else self.d0
        self._applicable_only()
        for name in ("steps", "batch_size", "init_width", "eval_every", "eval_size"):
            positive_int(name, getattr(self, name))
        for name in ("latent_dim", "lr_probe_steps"):
            optional(positive_int, name, getattr(self, name))
        for name in ("d0", "dr"):
            optional(positive_int, name, getattr(self, name))
        from .controls import validate_controls
        try:
            validate_controls(self)
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        for name in ("train_size", "test_size", "checkpoint_every"):
            optional(positive_int, name, getattr(self, name))
        for name in ("seed", "data_seed"):
            non_negative_int(name, getattr(self, name))
        positive_number("lr", self.lr)
        for name in ("lr_f", "lr_g"):
            positive_rate(name, getattr(self, name))
        one_of("activation", self.activation, ACTIVATIONS)
        self.layers()
        from .controls import rate_factor
        try:
            rate_factor(self)
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        one_of("loss", self.loss, LOSSES)
        check_loss_fits_task(self.loss, self.dataset, self.task)
        one_of("backend", self.backend, BACKENDS)
        optional(one_of, "backend_requested", self.backend_requested, BACKENDS)
        one_of("dtype", self.dtype, DTYPES)
        if self.backend == "numpy" and self.dtype != "float64":
            raise TrainError("dtype: the numpy reference backend is float64 only")

    def _check_chain(self):
        """``chain``: None (one bottleneck) or a list of positive widths (MATH §9); one-line TrainError."""
        if self.chain is None:
            return
        from refimpl.chain import check_widths
        try:
            self.chain = list(check_widths(self.chain, "chain"))
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        if self.lr_scale != "none":
            raise TrainError(f"chain: --lr-scale {self.lr_scale} is defined for one bottleneck (MATH §7.7), not "
                             "for a chain of several; use --lr-scale none")

    @property
    def widths(self):
        """The bottleneck widths (d1, d2, ...) of the run: ``width`` then ``chain`` ("inf": every width infinite)."""
        return (self.width, *(self.chain or ()))

    def _applicable_only(self):
        """Fill in the defaults of the options that apply; refuse (one line) a value for one that does not
        (:func:`unused_options`), so that config.json records no value that was not used.  The old default
        of such an option (written by earlier versions) is kept as it is."""
        unused = unused_options(self.dataset, self.task, self.lr_policy)
        for name, reason in unused.items():
            value = getattr(self, name, None)
            if name != "lr" and value is not None and value != OPTION_DEFAULTS[name]:
                raise TrainError(f"{name}: does not apply here ({reason}); got {value!r}")
        for name in set(OPTION_DEFAULTS) - set(unused):
            if getattr(self, name) is None and (name != "dr" or self.dataset == "synthetic"):
                setattr(self, name, OPTION_DEFAULTS[name])

    def layers(self):
        """(Layers of g, Layers of f) of the run (MATH §2.2); TrainError for a bad option.

        Bounds where the math needs them: at most :data:`MAX_DEPTH` hidden layers, and scales whose
        kernel (about ``w_std^(2 depth) out_std^2``, MATH §2.2) stays within float64's range
        (:data:`MAX_KERNEL_LOG10` decades)."""
        for name in ("depth_g", "depth_f"):
            value = getattr(self, name)
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > MAX_DEPTH:
                raise TrainError(f"{name}: expected at most {MAX_DEPTH} hidden layers, got {value}")
        decades, culprit = _kernel_decades(self)
        if decades is not None and abs(decades) > MAX_KERNEL_LOG10:
            way = "lower" if decades > 0 else "raise"
            raise TrainError(f"{culprit}: with these scales and depths the kernel is about 1e{decades:.0f}, "
                             f"outside the range float64 computes with (1e-{MAX_KERNEL_LOG10} to "
                             f"1e{MAX_KERNEL_LOG10}); {way} --{culprit.replace('_', '-')} (or change the depth)")
        try:
            return architecture(self.activation, self.depth_g, self.depth_f, _pair(self.w_std),
                                _pair(self.b_std), _pair(self.out_std))
        except ValueError as exc:
            raise TrainError(str(exc)) from None

    @classmethod
    def from_json(cls, data):
        """The config saved in ``data`` (config.json / sweep.json); an option saved before it existed
        takes its value of :data:`LEGACY_DEFAULTS` (what such runs did), not the new default."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**LEGACY_DEFAULTS, **{k: v for k, v in data.items() if k in names}})

    def rates(self):
        """(lr, lr_f, lr_g) the simulator gets: the options times the ``lr_scale`` factor (MATH §7.7)."""
        from .controls import rate_factor
        c = rate_factor(self)
        return (self.lr * c, None if self.lr_f is None else self.lr_f * c,
                None if self.lr_g is None else self.lr_g * c)


#: Options added after runs were made, with the value that those runs had (a saved config without the key
#: means this): the training rows drawn from the run's seed, rates as given.
LEGACY_DEFAULTS = {"eval_subset": "seed", "lr_scale": "none"}


# ----------------------------------------------------------------------------
# helpers: atomic files, backends, data
# ----------------------------------------------------------------------------

def resolve_backend(name, dtype="float64"):
    """The module-like object that provides BottleneckSimulator and InfiniteSimulator ("auto": see
    :func:`auto_backend`)."""
    if name == "auto":
        name = auto_backend(dtype)
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


def auto_backend(dtype="float64"):
    """The backend ``auto`` stands for here: "gpu" where a usable GPU is present, else "cpu" (Numba), else
    "numpy" (the reference; also for a dtype the accelerated backends cannot give)."""
    try:
        import accel
        from accel import gpu
        if gpu.available():
            return "gpu"
        accel.get_backend("cpu", dtype=dtype)
        return "cpu"
    except Exception:          # noqa: BLE001 - no accelerated backend here: the reference always runs
        return "numpy"


def settle_backend(config, log=None):
    """Resolve ``config.backend == "auto"`` to the backend that will run, keeping what was asked in
    ``config.backend_requested``; ``log`` the choice once.  Returns the backend name."""
    if config.backend_requested is None:
        config.backend_requested = config.backend
    if config.backend == "auto":
        config.backend = auto_backend(config.dtype)
    if log is not None:
        asked = config.backend_requested
        log(f"backend: {config.backend}" + (f" ({asked}: "
            + {"gpu": "a usable GPU is present", "cpu": "no usable GPU; Numba on the CPU",
               "numpy": "no accelerated backend here; the NumPy reference"}[config.backend] + ")"
            if asked == "auto" else ""))
    return config.backend


def load_data(config):
    """The data set of a run (deterministic in the config)."""
    from .data import load_dataset, resolve_data_dir
    from .tasks import apply_task
    kwargs = {}
    if config.dataset == "synthetic":
        kwargs = {"d0": config.d0, "dr": config.dr or OPTION_DEFAULTS["dr"]}      # autoencoder: targets replaced
        _check_memory(config, config.train_size or 2000, config.test_size or 2000, config.d0, kwargs["dr"])
    elif config.dataset in GENERATED:
        kwargs = {"d0": config.d0, "latent_dim": config.latent_dim or OPTION_DEFAULTS["latent_dim"]}
        dr = config.d0 if config.task == "autoencoder" else 1 if config.dataset == "multi-index" else \
            kwargs["latent_dim"]
        _check_memory(config, config.train_size or 2000, config.test_size or 2000, config.d0, dr)
    elif is_npz(config.dataset):                       # the user's file (its path is absolute already)
        kwargs = {"loss": config.loss}
    else:                                              # stored as an absolute path (resume from anywhere)
        config.data_dir = str(resolve_data_dir(config.data_dir).resolve())
    try:
        data = apply_task(load_dataset(config.dataset, data_dir=config.data_dir, train_size=config.train_size,
                                       test_size=config.test_size, seed=config.data_seed, **kwargs),
                          config.task)
    except (ValueError, OSError) as exc:
        raise TrainError(str(exc).splitlines()[0]) from None
    if config.dataset not in GENERATED:
        for name, have in (("d0", data.X_train.shape[1]), ("dr", data.Y_train.shape[1])):
            given = getattr(config, name)
            if given is not None and given != have:
                applies = ("the generated data sets (synthetic, multi-index, manifold)" if name == "d0"
                           else "the synthetic data")
                raise TrainError(f"{name}: applies to {applies} only; the {config.dataset} data have "
                                 f"{name} = {have}, got {given}")
            setattr(config, name, None)
    return data


def build_simulator(config, data, backend):
    """Construct the simulator of a run from its config and data (the initial functions come from ``seed``)."""
    from refimpl.network import RandomNetwork
    lr, lr_f, lr_g = config.rates()
    common = dict(lr=lr, lr_f=lr_f, lr_g=lr_g, X_eval=data.X_test)
    layers_g, layers_f = config.layers()
    if config.loss != "mse":
        common["loss"] = config.loss
    if config.chain:
        return _build_chain(config, data, backend, layers_g, layers_f, common)
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


def _build_chain(config, data, backend, layers_g, layers_f, common):
    """The simulator of a run with several bottlenecks (MATH §9): ``width`` then ``chain``, each head with
    f's architecture; ``inf`` is the chain with every width infinite (MATH §9.3, reference engine)."""
    from refimpl.chain import RandomChain, infinite_chain_simulator
    n_heads = 1 + len(config.chain)
    if config.width == "inf":
        sim = infinite_chain_simulator(data.X_train, data.Y_train, n_heads, layers_g=layers_g, layers_f=layers_f,
                                       seed=config.seed, **common)
        return sim, {"f0_method": sim.f0_method}
    net = RandomChain.sample(data.X_train.shape[1], [int(config.width), *config.chain], data.Y_train.shape[1],
                             width=config.init_width, seed=config.seed, layers_g=layers_g, layers_f=layers_f)
    sim = backend.ChainSimulator(net, data.X_train, data.Y_train, **common)
    return sim, {"f0_method": f"random chain (width {config.init_width}, seed {config.seed})"}


# ----------------------------------------------------------------------------
# the run directory: digests, checks of run files, staging, lock
# ----------------------------------------------------------------------------

#: Options that only say where things are: a resume may change them (they are recorded) and they are
#: not part of the config digest.
LOCATION_FIELDS = ("data_dir",)
#: Options a resume may change besides the location ones.
RESUME_FIELDS = ("steps", *LOCATION_FIELDS)
#: The lock file of a run directory (pid of the process that writes into it).
LOCK_FILE = ".lock"
#: Files a run writes atomically (their stale ``.<name>.*.tmp`` files are removed on resume).
ATOMIC_FILES = RUN_FILES


def config_digest(config_dict):
    """sha256 of a run's options as stored in config.json, without ``steps`` and the location options.

    Generic over the fields of :class:`TrainConfig`: every option that changes the model or the run
    is in the digest, whatever fields the config grows.
    """
    fixed = {k: v for k, v in config_dict.items() if k not in RESUME_FIELDS}
    text = json.dumps(fixed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def state_digest(state):
    """sha256 over the names, dtypes, shapes and bytes of the simulator's arrays (not ``driver_*``)."""
    h = hashlib.sha256()
    for key in sorted(k for k in state if not k.startswith("driver_")):
        arr = np.ascontiguousarray(state[key])
        h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _digest_array(hexdigest):
    """A sha256 hex digest as the (32,) uint8 array stored in checkpoints (all checkpoint arrays are numeric)."""
    return np.frombuffer(bytes.fromhex(hexdigest), dtype=np.uint8).copy()


def _digest_text(arr):
    if arr is None or arr.dtype != np.uint8 or arr.shape != (32,):
        return None
    return arr.tobytes().hex()


def _read_metrics(path):
    """Rows of metrics.csv as dicts of strings; TrainError naming the file for anything damaged."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise TrainError(f"{path}: not a text CSV file (damaged)") from None
    except OSError as exc:
        raise TrainError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not text:
        return []
    if not text.endswith("\n"):
        raise TrainError(f"{path}: truncated (the last line is incomplete)")
    lines = text.splitlines()
    if lines[0].split(",")[:4] != METRIC_COLUMNS[:4]:
        raise TrainError(f"{path}: line 1 is not the metrics header ({','.join(METRIC_COLUMNS[:4])},...)")
    header = lines[0].split(",")
    rows, last = [], None
    for lineno, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        if None in row or any(v is None for v in row.values()):
            raise TrainError(f"{path}: line {lineno} has {len(lines[lineno - 1].split(','))} fields, "
                             f"expected {len(header)} (damaged)")
        try:
            step = int(row["step"])
            values = [float(row[key]) for key in ("train_loss", "test_loss", "wall_s")]
            for key in METRIC_COLUMNS[4:]:
                if row.get(key) not in (None, ""):
                    float(row[key])
        except ValueError:
            raise TrainError(f"{path}: line {lineno} is not a row of numbers (damaged)") from None
        if not all(np.isfinite(values)) or step < 0:
            raise TrainError(f"{path}: line {lineno} holds a NaN, inf or negative step where a run writes finite "
                             "values (edited or damaged)")
        if last is not None and step <= last:
            raise TrainError(f"{path}: line {lineno}: step {step} does not follow step {last} (damaged)")
        last = step
        rows.append(row)
    return rows


def _check_out(out):
    if str(out).strip() == "":
        raise TrainError("out: expected a directory path, got ''")
    out = Path(out)
    try:
        fileio.check_output_folder(out)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    return out


def check_run_entries(out):
    """Refuse (TrainError) a run directory whose own files (:data:`RUN_FILES`, the lock)
    are symbolic links: a resume reads and rewrites them."""
    try:
        fileio.refuse_links_inside(out, (*RUN_FILES, LOCK_FILE))
    except ValueError as exc:
        raise TrainError(str(exc)) from None


def check_run_dir(out, force):
    """Refuse an ``out`` that is a file, or that holds a run unless ``force``; return the run files found."""
    out = _check_out(out)
    existing = [f for f in RUN_FILES if (out / f).exists()]
    if existing and not force:
        raise TrainError(f"out: {out} already holds a run ({', '.join(existing)}); "
                         "use --force to overwrite it or --resume to continue it")
    if existing:
        owner = DirLock(out, LOCK_FILE).owner()
        if owner is not None and owner[0] != os.getpid() and fileio._alive(owner[0], owner[1]):
            raise TrainError(f"out: {out} is in use by process {owner[0]} (lock file {out / LOCK_FILE})")
    return existing


def memory_estimate(config, n_train, n_test, d0, dr):
    """Peak bytes (float64) of a run: initial network, embeddings, history and evaluation blocks.

    A bound good to a factor of about two; it only serves to refuse runs that cannot fit.
    """
    from refimpl.dynamics import HISTORY_BLOCK, QUERY_BLOCK
    n = n_train + n_test
    steps_rows = config.steps * config.batch_size
    # hidden-to-hidden weights of the deeper random networks (depth > 1): n0 x n0 per extra layer
    extra = max(int(config.depth_g) - 1, 0) + max(int(config.depth_f) - 1, 0)
    if config.width == "inf":
        # Cholesky draw of F0 on all inputs (a few n x n matrices), or a network of width 2048
        draw = 4 * n * n if n <= 4000 else 2048 * (d0 + 2 * 2048 + dr) + 3 * 2048 * min(n, 4096)
        core = draw + n * (d0 + 3 * dr) + 4 * n * config.batch_size + extra * 2048 * 2048
    else:
        d = int(config.width)
        core = (config.init_width * (d0 + 2 * d + dr)             # the random network g0, f0, J0
                + 3 * config.init_width * max(config.batch_size, min(n, 512))   # its hidden activations
                + n * (d0 + 3 * d + dr)                            # inputs, tracked embeddings, A
                + 3 * steps_rows * (d + dr + 1)                    # history (grows by doubling)
                + 4 * QUERY_BLOCK * HISTORY_BLOCK                 # kernel blocks
                + 4 * min(steps_rows, HISTORY_BLOCK) * d * QUERY_BLOCK // 64
                + 2 * extra * config.init_width * config.init_width)
        for k, dk in enumerate(config.chain or ()):       # each further head: its network and history (MATH §9)
            d_in = d if k == 0 else config.chain[k - 1]
            core += (config.init_width * (d_in + dk) + 3 * steps_rows * (d_in + dk + 1)
                     + max(int(config.depth_f) - 1, 0) * config.init_width * config.init_width)
    return 8 * int(core)


def available_memory(xp):
    """Bytes of memory the run can use: GPU memory for cupy, physical memory otherwise (None if unknown)."""
    if xp is not np:
        try:
            free, total = xp.cuda.runtime.memGetInfo()
            return int(total)
        except Exception:   # noqa: BLE001
            return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(config, n_train, n_test, d0, dr):
    """Refuse (one line) a run whose :func:`memory_estimate` exceeds this machine's memory."""
    need = memory_estimate(config, n_train, n_test, d0, dr) + 8 * 4 * (n_train + n_test) * (d0 + dr)
    have = available_memory(np)
    if have is not None and need > have:
        sizes = ", ".join(f"{k} {v}" for k, v in (
            ("train_size", n_train), ("test_size", n_test), ("d0", d0), ("dr", dr), ("width", config.width),
            *((("chain", ",".join(map(str, config.chain))),) if config.chain else ()),
            ("init_width", config.init_width), ("steps", config.steps), ("batch_size", config.batch_size),
            ("depth_g", config.depth_g), ("depth_f", config.depth_f)))
        raise TrainError(f"memory: the run needs about {need / 2**30:.3g} GiB ({sizes}) but this machine has "
                         f"{have / 2**30:.3g} GiB; lower one of these")
    return need


def _check_state(path, state, config_dict):
    """Refuse a checkpoint whose digests, step or values do not fit (TrainError naming ``path``)."""
    if "t" not in state or state["t"].shape != () or not np.issubdtype(state["t"].dtype, np.integer):
        raise TrainError(f"{path}: no integer step 't' (not a checkpoint of this program, or damaged)")
    missing = [k for k in DIGEST_KEYS if _digest_text(state.get(k)) is None]
    if missing:
        raise TrainError(f"{path}: its digest {missing[0]!r} is missing or damaged; without it the checkpoint "
                         "cannot be checked against config.json and metrics.csv (edited?); start over with --force")
    if _digest_text(state["driver_config_sha256"]) != config_digest(config_dict):
        raise TrainError(f"{path}: was written for other options than those in config.json "
                         "(config.json was edited, or the files come from different runs)")
    if _digest_text(state["driver_state_sha256"]) != state_digest(state):
        raise TrainError(f"{path}: its arrays do not match their recorded digest (the file was modified)")
    loss = state.get("driver_train_loss")
    if loss is None or loss.shape != () or not np.isfinite(loss):
        raise TrainError(f"{path}: no finite training loss 'driver_train_loss' (damaged or edited)")
    t = int(state["t"])
    if t < 0 or t > int(config_dict.get("steps", t)):
        raise TrainError(f"{path}: step {t} is outside 0..{config_dict.get('steps')} (damaged)")
    for key, arr in state.items():
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            raise TrainError(f"{path}: array {key!r} holds NaN or inf (not a good checkpoint)")
    return t


#: The digests every checkpoint carries: of config.json's options, of its own arrays, of metrics.csv's rows.
DIGEST_KEYS = ("driver_config_sha256", "driver_state_sha256", "driver_metrics_sha256")


def metrics_digest(rows, t, eval_every):
    """sha256 of the metrics rows a resume at step ``t`` keeps (steps <= t that are multiples of
    ``eval_every``), every value but the wall time as metrics.csv writes it (so an interrupted run's
    checkpoint equals an uninterrupted one's); ``rows`` as numbers or as strings read back."""
    def text(v):
        return "" if v is None else repr(float(v)) if isinstance(v, float) else str(v)
    h = hashlib.sha256()
    for row in rows:
        step = int(row["step"])
        if step <= t and step % eval_every == 0:
            h.update((",".join(text(row.get(k)) for k in METRIC_COLUMNS if k != "wall_s") + "\n").encode())
    return h.hexdigest()


def _check_metrics_digest(path, rows, state, t, eval_every):
    """Refuse metrics.csv rows (up to the checkpoint's step) that are not those the checkpoint saw."""
    if _digest_text(state["driver_metrics_sha256"]) != metrics_digest(rows, t, eval_every):
        raise TrainError(f"{path}: its rows up to step {t} are not those recorded with the checkpoint "
                         "(edited, replaced or from another run); restore it, or start over with --force")
    at_t = [r for r in rows if int(r["step"]) == t]
    if at_t and t % eval_every == 0 and float(at_t[0]["train_loss"]) != float(state["driver_train_loss"]):
        raise TrainError(f"{path}: train_loss at step {t} differs from the checkpoint's (edited)")


def _checkpoint_bounds(path, config_dict, data_meta):
    """A check for :func:`experiments.fileio.load_npz`: every array's header against the shapes the run's
    options allow, before anything is loaded (a header may claim any size)."""
    data_meta = data_meta if isinstance(data_meta, dict) else {}

    def num(value, default):
        try:
            value = int(value)
        except (TypeError, ValueError):
            return default
        return value if value > 0 else default
    n_rows = max(num(data_meta.get("n_train"), 0), num(data_meta.get("n_test"), 0)) or 100_000
    width = config_dict.get("width")
    dr = num(data_meta.get("dr"), 0) or num(config_dict.get("dr"), 0) or num(config_dict.get("d0"), 3072)
    chain = config_dict.get("chain") if isinstance(config_dict.get("chain"), list) else []
    cols = max(num(width, 0) if width != "inf" else 0, dr, 1, *(num(c, 0) for c in chain))
    heads = {f"history_{w}_{k}" for k in range(1 + len(chain)) for w in "PC"} if chain else set()
    history = num(config_dict.get("steps"), 1) * num(config_dict.get("batch_size"), 1)
    allowed = {"t": 0, "driver_train_loss": 0, "driver_wall_s": 0}

    def check(name, shape, dtype):
        if name in DIGEST_KEYS:
            ok = shape == (32,)
        elif name in allowed:
            ok = shape == ()
        elif name == "A" or name.startswith("tracked_"):
            ok = len(shape) == 2 and shape[0] <= n_rows and shape[1] <= cols
        elif name in ("history_P", "history_C") or name in heads:
            ok = len(shape) == 2 and shape[0] <= history and shape[1] <= cols
        else:
            raise ValueError(f"{path}: holds an unknown array {name!r} (not a checkpoint of this program, or crafted)")
        if not ok:
            raise ValueError(f"{path}: array {name!r} has the shape {shape}, which the run's options in config.json "
                             f"do not allow (damaged or crafted); nothing was loaded")
    return check


def _check_metrics(path, rows, t, eval_every):
    """The rows of metrics.csv to keep when resuming at step ``t``; TrainError if rows up to ``t`` are missing."""
    if t > 0 and not path.exists():
        raise TrainError(f"{path}: missing, but the checkpoint is at step {t} (the metrics history would be "
                         "lost); restore the file, or start over with --force")
    kept = [r for r in rows if int(r["step"]) < t or (int(r["step"]) == t and t % eval_every == 0)]
    have = {int(r["step"]) for r in kept}
    missing = [s for s in range(0, t + 1, eval_every) if s not in have]
    if missing:
        raise TrainError(f"{path}: has no row for step {missing[0]} although the checkpoint is at step {t} "
                         "(truncated or edited)")
    return [r for r in kept if int(r["step"]) % eval_every == 0]


def _created_parents(folder):
    """Create ``folder`` and its missing parents; return those created (deepest last)."""
    folder = Path(folder)
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainError(f"out: cannot create {folder} ({exc.strerror or exc})") from None
    return list(reversed(missing))


class _Workspace:
    """Where a new run is written until its first step, and how it becomes the run directory.

    The run is first written into a hidden ``.<name>.new-*`` folder next to ``out``.  If ``out`` does
    not exist (or is an empty folder) the folder is renamed to ``out`` at once, with its complete
    config.json, so a run killed before its first checkpoint resumes from step 0.  Otherwise (``out``
    holds an old run, with ``--force``, or other files) the old files stay untouched until the new
    run has made its first step after its first checkpoint; then the folders are swapped (other
    files move into the new run) and the old run is deleted.  ``abort`` removes everything the new
    run wrote, so a failed start leaves nothing behind.
    """

    def __init__(self, out):
        self.out = Path(out)
        self.parents = _created_parents(self.out.parent)
        self.out_existed = self.out.exists()
        _remove_dead_staging(self.out)
        try:
            self.dir = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=fileio.staging_name(self.out, "new")))
            os.chmod(self.dir, 0o777 & ~fileio._UMASK)      # mkdtemp makes 0700; the run gets the usual mode
        except OSError as exc:
            self._remove_parents()
            raise TrainError(f"out: cannot write in {self.out.parent} ({exc.strerror or exc})") from None
        self.lock = DirLock(self.dir, LOCK_FILE).acquire()
        self.swap_pending = True

    def publish_early(self):
        """Rename the staging folder to ``out`` now if ``out`` is missing or empty."""
        if self.out.exists() and any(self.out.iterdir()):
            return
        os.replace(self.dir, self.out)          # rename(2) replaces an empty directory
        self.dir = self.out
        self.lock.path = self.out / LOCK_FILE
        self.swap_pending = False

    def commit(self):
        """Make the staged run the run directory (the old run is deleted only now)."""
        if not self.swap_pending:
            return
        if not self.out.exists():
            os.replace(self.dir, self.out)
            self.dir, self.lock.path, self.swap_pending = self.out, self.out / LOCK_FILE, False
            return
        aside = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=fileio.staging_name(self.out, "old")))
        os.replace(self.out, aside / "run")
        os.replace(self.dir, self.out)
        self.dir = self.out
        self.lock.path = self.out / LOCK_FILE
        self.swap_pending = False
        for entry in (aside / "run").iterdir():           # keep whatever else the user had there
            if entry.name not in RUN_FILES and entry.name != LOCK_FILE and not entry.name.endswith(".tmp"):
                os.replace(entry, self.out / entry.name)
        shutil.rmtree(aside, ignore_errors=True)

    def abort(self):
        """Remove what this run wrote (a failed start leaves nothing behind)."""
        self.lock.release()
        if self.dir == self.out and self.out_existed:       # an empty folder the user made: keep it empty
            for entry in self.out.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        self._remove_parents()

    def _remove_parents(self):
        for p in reversed(self.parents):
            try:
                p.rmdir()
            except OSError:
                break


def _remove_dead_staging(out):
    """Remove ``.<name>.new-*`` folders of new runs into ``out`` whose process is gone (killed at the start)."""
    for folder in out.parent.glob(glob_escape(fileio.staging_name(out, "new")) + "*"):
        owner = DirLock(folder, LOCK_FILE).owner()
        if folder.is_dir() and (owner is None or not fileio._alive(owner[0], owner[1])):
            shutil.rmtree(folder, ignore_errors=True)


def _resume_config(out, overrides):
    """The saved config of the run in ``out`` with the allowed ``overrides``; (config, saved meta)."""
    saved = _read_run_json(out / "config.json")
    cfg_dict = saved.get("config")
    if not isinstance(cfg_dict, dict):
        raise TrainError(f"{out / 'config.json'}: no 'config' object (damaged)")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if "steps" not in cfg_dict or "width" not in cfg_dict:
        missing = [k for k in ("width", "steps") if k not in cfg_dict]
        raise TrainError(f"{out / 'config.json'}: the option {missing[0]!r} is missing (damaged or edited)")
    try:
        config = TrainConfig(**{**LEGACY_DEFAULTS, **{k: v for k, v in cfg_dict.items() if k in names}})
        config.validate()
    except (TrainError, TypeError) as exc:
        raise TrainError(f"{out / 'config.json'}: {exc}") from None
    if config.dataset not in GENERATED:         # the generated data sets need their d0 (and k) back
        config.d0 = config.dr = None             # runs written before these were checked
    if overrides.get("steps") is not None:
        config.steps = int(overrides["steps"])
    if overrides.get("data_dir") is not None:
        config.data_dir = str(overrides["data_dir"])
    return config, saved, cfg_dict


def _read_run_json(path):
    try:
        return read_json(path)
    except ValueError as exc:
        raise TrainError(str(exc)) from None


def _check_same_data(out, saved_meta, data):
    """Refuse data that differ from the run's (other sizes, subset or source)."""
    ignore = ("data_dir", "source_files")
    old = {k: v for k, v in (saved_meta or {}).items() if k not in ignore}
    if old.get("sha256") and old["sha256"] != data.meta.get("sha256"):
        raise TrainError(f"data: {data.meta.get('file')} has changed since the run was made (sha256 "
                         f"{str(data.meta.get('sha256'))[:12]}..., recorded {old['sha256'][:12]}... in "
                         f"{out / 'config.json'}); a run resumes only on its own data")
    new = json.loads(json.dumps({k: v for k, v in data.meta.items() if k not in ignore}, default=float))
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if old and diff:
        raise TrainError(f"data: the data found now differ from the run's in {out / 'config.json'} "
                         f"({', '.join(diff[:3])}); point --data-dir at the run's data")


def resume(out, overrides=None, progress=None, log=print):
    """Continue the run in ``out``; ``overrides`` are the options given again (name -> value).

    Only ``steps`` (a new total, at least the checkpoint's step) and the location options
    (:data:`LOCATION_FIELDS`: ``data_dir``, recorded in config.json) may be given; any other option
    would change the model or the run and is refused in one line naming them all.
    """
    overrides = dict(overrides or {})
    bad = [k for k in overrides if k not in RESUME_FIELDS]
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        raise TrainError(f"{flags}: a resumed run keeps its saved options; only --steps and --data-dir may be "
                         "given with --resume")
    return train(TrainConfig(steps=overrides.get("steps")), out, resume=True, progress=progress, log=log,
                 data_dir=overrides.get("data_dir"))


def train(config, out, force=False, resume=False, progress=None, log=print, data_dir=None, probe=None,
          probe_log=None):
    """Run (or resume) a training run; returns the path of the run directory.

    Parameters
    ----------
    config : TrainConfig
        Options of a new run; for ``resume`` only ``steps`` is read from it
        (``None`` keeps the saved value) and everything else comes from the run.
    out : path of the run directory
    force : overwrite an existing run directory (only once the new run has made its first step)
    resume : continue the run in ``out`` from its checkpoint (from step 0 if it has none yet)
    progress : callable(total, start) -> context manager with ``update(n, loss=batch_loss)``, called
        after every step (the command line's progress display), or None
    log : callable for one-line messages
    data_dir : for ``resume``, a new location of the data (recorded in config.json)
    probe : None, or ``probe(config, folder, data, backend, log=probe_log)`` run in the new run's staging
        folder (after the output folder was checked, before config.json is written; it may set options):
        :func:`experiments.lr_probe.probe_into` for ``lr_policy = "per-width"``
    probe_log : callable for the probe's one-line messages, or None (silent)

    Raises
    ------
    TrainError (one line) for bad options, damaged run files, a run directory in use, a diverged or
    interrupted run.  A failed start leaves nothing behind; a failure later keeps the last good
    checkpoint.
    """
    if resume:
        out = _check_out(out)
        check_run_entries(out)
        if not (out / "config.json").exists():
            raise TrainError(f"resume: {out} holds no run (config.json expected)")
        lock = DirLock(out, LOCK_FILE)
        try:
            lock.acquire()
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        try:
            return _resume_locked(out, config.steps if config is not None else None, data_dir, lock,
                                  progress, log)
        except KeyboardInterrupt:           # before its first step (the loop says where it stopped)
            raise RunFailed(f"interrupted before the resumed run made a step; the run is as it was; continue "
                            f"with: python cli.py train --resume {out}") from None
        except fileio.DiskFull as exc:
            raise RunFailed(f"{exc}; the run is as it was; free some space and continue with: "
                            f"python cli.py train --resume {out}") from None
        finally:
            lock.release()
    config.validate()
    out = _check_out(out)
    check_run_dir(out, force)
    # everything that can be checked is checked before anything is written
    settle_backend(config, log)
    backend = resolve_backend(config.backend, config.dtype)
    data = load_data(config)
    _check_batch_size(config, data)
    _check_memory(config, data.X_train.shape[0], data.X_test.shape[0], data.X_train.shape[1], data.Y_train.shape[1])
    ws = _Workspace(out)
    started = False
    try:
        if probe is not None:             # e.g. the per-width rate probe (lr_probe.json), in the checked folder
            probe(config, ws.dir, data, backend, log=probe_log)
        meta = {"config": dataclasses.asdict(config), "data": data.meta, "refimpl_version": __version__,
                "loss": LOSS_TEXT[config.loss]}
        if config.lr_scale != "none":                # the rates the simulator gets (MATH §7.7)
            lr, lr_f, lr_g = config.rates()
            meta["effective_rates"] = {"lr": lr, "lr_f": lr_f, "lr_g": lr_g, "factor": lr / config.lr}
        atomic_write_text(ws.dir / "config.json", json.dumps(meta, indent=2) + "\n")
        ws.publish_early()
        fault_point("train:config-written")
        sim, info = build_simulator(config, data, backend)
        meta["initial_functions"] = info
        atomic_write_text(ws.dir / "config.json", json.dumps(meta, indent=2) + "\n")
        run = _Run(config, data, sim, ws.dir, wall0=0.0, metrics=[], log=log)
        try:
            run.record(0)
            run.checkpoint(evaluated=True)
        except DivergenceError as exc:
            raise RunFailed(f"{exc}; nothing was written") from None

        def first_step_done():
            nonlocal started
            ws.commit()
            run.out = ws.dir
            started = True
        return run.loop(0, progress, on_first_step=first_step_done)
    except BaseException as exc:
        if not started:
            ws.abort()
            if isinstance(exc, KeyboardInterrupt):
                raise RunFailed("interrupted before the first step; nothing was written, nothing to resume; "
                                "start the run again") from None
            if isinstance(exc, MemoryError):
                raise TrainError(f"memory: out of memory while setting up the run (width {config.width}, "
                                 f"init_width {config.init_width}); nothing was written") from None
            if isinstance(exc, fileio.DiskFull):
                raise RunFailed(f"{exc}; nothing was written; free some space and start the run again") from None
        raise
    finally:
        ws.lock.release()


def _check_batch_size(config, data):
    if config.batch_size > data.X_train.shape[0]:
        raise TrainError(f"batch_size: expected at most the number of training points "
                         f"({data.X_train.shape[0]}), got {config.batch_size}")


def _resume_locked(out, steps, data_dir, lock, progress, log):
    removed = remove_stale_temp_files(out, ATOMIC_FILES)
    if removed:
        log(f"removed {len(removed)} temporary file(s) left by an interrupted write")
    if data_dir is not None:
        data_dir = str(Path(data_dir).expanduser().resolve())
    config, saved, cfg_dict = _resume_config(out, {"steps": steps, "data_dir": data_dir})
    ckpt = out / "checkpoint.npz"
    state = None
    rows = _read_metrics(out / "metrics.csv")
    if ckpt.exists():
        try:
            state = load_npz(ckpt, check=_checkpoint_bounds(ckpt, cfg_dict, saved.get("data")))
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        done = _check_state(ckpt, state, cfg_dict)
        _check_metrics_digest(out / "metrics.csv", rows, state, done, config.eval_every)
    else:
        later = [int(r["step"]) for r in rows if int(r["step"]) > 0]
        if later or (out / "summary.json").exists():
            where = f"metrics.csv has rows up to step {max(later)}" if later else "summary.json exists"
            raise TrainError(f"{ckpt}: missing, but {where} (the checkpoint was deleted or lost); restore it, "
                             "or start over with --force")
        done = 0
    if config.steps < done:
        raise TrainError(f"steps: the run in {out} is already at step {done}; ask for at least that many")
    metrics = _check_metrics(out / "metrics.csv", rows, done, config.eval_every) if state is not None else []
    if state is not None and config.steps == done and (out / "summary.json").exists() and data_dir is None:
        log(f"nothing to do: the run is already at step {done} (ask for more with --steps)")
        return out
    if config.backend == "auto":      # a run made before the resolved backend was recorded
        log(f"backend: {auto_backend(config.dtype)} (the run asked for auto and did not record what ran; "
            "bit-exact only if that was the same backend)")
    backend = resolve_backend(config.backend, config.dtype)
    try:
        data = load_data(config)
    except TrainError as exc:
        if config.dataset == "synthetic" or is_npz(config.dataset):
            raise
        raise TrainError(f"data: cannot read the run's data in {config.data_dir} ({str(exc).split('; ')[0]}); "
                         f"give their folder with --data-dir (recorded in {out / 'config.json'})") from None
    _check_same_data(out, saved.get("data"), data)
    _check_batch_size(config, data)
    sim, _ = build_simulator(config, data, backend)
    run = _Run(config, data, sim, out, wall0=0.0, metrics=metrics, log=log)   # captures G_0 first
    if state is not None:
        run.wall0 = float(state.pop("driver_wall_s", 0.0))
        sim_state = {k: v for k, v in state.items() if not k.startswith("driver_")}
        try:
            sim.load_state_dict(sim_state)
        except ValueError as exc:
            raise TrainError(f"{ckpt}: does not fit the run's options ({exc})") from None
    # only now, with every check passed, is anything rewritten
    saved["config"]["steps"] = config.steps
    if data_dir is not None:
        saved["config"]["data_dir"] = data_dir
    atomic_write_text(out / "config.json", json.dumps(saved, indent=2) + "\n")
    if state is None:
        log(f"resuming {out} from step 0 (it had no checkpoint yet)")
        try:
            run.record(0)
            run.checkpoint(evaluated=True)
        except DivergenceError as exc:
            raise RunFailed(f"{exc}") from None
    else:
        log(f"resuming {out} at step {done} of {config.steps}")
        if done == config.steps:          # the summary was missing: write it
            return run.finish(None)
    return run.loop(done, progress)


class _Run:
    """A simulator bound to its run directory: evaluation rows, checkpoints, the step loop."""

    def __init__(self, config, data, sim, out, wall0, metrics, log):
        self.config, self.data, self.sim, self.out, self.log = config, data, sim, Path(out), log
        from .controls import Centring                 # F0 of the fresh simulator, before any step or resume
        self.centring = Centring(sim, data) if config.center else None
        self.rows = run_eval_rows(config, data.X_train.shape[0])
        self.probe = FeatureProbe(sim, data.X_train, data.Y_train, self.rows)   # G_0 before any step
        self.metrics = metrics
        self.ckpt_every = config.checkpoint_every or config.eval_every
        self.good = None                  # (step, train loss) of the last good checkpoint
        self.t0, self.wall0 = time.perf_counter(), wall0
        self.digest = config_digest(_read_run_json(self.out / "config.json")["config"])

    def wall(self):
        return self.wall0 + time.perf_counter() - self.t0

    def record(self, step):
        row = {"step": step, **evaluate(self.sim, self.data, self.rows, self.centring),
               "wall_s": round(self.wall(), 3), **self.probe(self.sim)}
        for key in ("train_loss", "test_loss"):
            if not np.isfinite(row[key]):
                raise DivergenceError(f"{key} is {row[key]} at step {step}: the run diverged")
        if self.metrics:
            self._check_not_blown_up(row["train_loss"], step)
        self.metrics.append(row)
        write_csv(self.out / "metrics.csv", METRIC_COLUMNS, self.metrics)
        return row

    def checkpoint(self, evaluated):
        """Write checkpoint.npz if the state is good: finite arrays and a finite training loss."""
        state = self.sim.state_dict()
        for key, arr in state.items():
            if not np.all(np.isfinite(arr)):
                raise DivergenceError(f"the state ({key}) is not finite at step {self.sim.t}: the run diverged")
        if evaluated:
            loss = float(self.metrics[-1]["train_loss"])
        else:
            loss = evaluate_train_loss(self.sim, self.data, self.rows, self.centring)
            if not np.isfinite(loss):
                raise DivergenceError(f"train_loss is {loss} at step {self.sim.t}: the run diverged")
            self._check_not_blown_up(loss, int(self.sim.t))
        state["driver_config_sha256"] = _digest_array(self.digest)
        state["driver_state_sha256"] = _digest_array(state_digest(state))
        state["driver_metrics_sha256"] = _digest_array(metrics_digest(self.metrics, int(self.sim.t),
                                                                      self.config.eval_every))
        state["driver_train_loss"] = np.array(loss)
        state["driver_wall_s"] = np.array(self.wall())
        save_npz(self.out / "checkpoint.npz", state)
        self.good = (int(self.sim.t), loss)
        fault_point("train:checkpoint")

    def initial_loss(self):
        """The training loss at step 0 (the first metrics row)."""
        return float(self.metrics[0]["train_loss"])

    def _check_not_blown_up(self, loss, step):
        """DivergenceError when the training loss exceeds :data:`GOOD_LOSS_FACTOR` x the initial loss."""
        limit = GOOD_LOSS_FACTOR * self.initial_loss()
        if loss > limit:
            raise DivergenceError(f"train_loss is {loss:.4g} at step {step}, more than {GOOD_LOSS_FACTOR:g} times "
                                  f"the initial {self.initial_loss():.4g}: the run diverged")

    def loop(self, start, progress, on_first_step=None):
        """Steps ``start .. steps - 1`` through :class:`experiments.loop.SGDLoop`: evaluation rows every
        ``eval_every`` steps, checkpoints every ``checkpoint_every``, the summary at the end; a diverged,
        interrupted or full-disk run stops with a one-line RunFailed that says what was kept."""
        config = self.config
        first = {"pending": on_first_step}

        def first_step(done, loss):
            if first["pending"] is not None:
                first["pending"]()
                first["pending"] = None

        def checkpoint(done):
            self.checkpoint(due(done, config.eval_every, config.steps))
        sgd = SGDLoop(self.sim.step, BatchOrder(config.seed, self.data.X_train.shape[0], config.batch_size),
                      after=[first_step, lambda done, loss: fault_point("train:step"),
                             every(config.eval_every, self.record, config.steps),
                             every(self.ckpt_every, checkpoint, config.steps)],
                      # one BLAS thread: a step's products are small (batch B), and threads oversubscribe the
                      # cores (numpy backend 4.1x faster on a busy 2-core machine; docs/BENCHMARKS.md)
                      blas_one_thread=True)
        try:
            if progress:
                sgd.progress = progress(config.steps, start)
            last = sgd.run(start, config.steps)
            return self.finish(last)
        except DivergenceError as exc:
            if first["pending"] is not None:
                raise RunFailed(f"{exc}; nothing was written (it diverged at the first step)") from None
            out = self.out
            _plot(out, self.metrics)
            good = self.good or _good_checkpoint(out)
            where = (f"the last good checkpoint (step {good[0]}, train loss {good[1]:.4g}, finite and within "
                     f"{GOOD_LOSS_FACTOR:g} x the initial loss) is kept in {out / 'checkpoint.npz'}") if good \
                else "no good checkpoint was written"
            raise RunFailed(f"{exc}; {where}; lower --lr and start over with --force") from None
        except KeyboardInterrupt:
            if first["pending"] is not None:
                raise
            out = self.out
            good = self.good or _good_checkpoint(out)
            kept = f"the checkpoint at step {good[0]} is kept" if good else "no checkpoint was written yet"
            raise RunFailed(f"interrupted at step {sgd.step}; {kept}; continue with: python cli.py train "
                            f"--resume {out}") from None
        except fileio.DiskFull as exc:
            if first["pending"] is not None:
                raise
            out = self.out
            good = self.good or _good_checkpoint(out)
            kept = f"the checkpoint at step {good[0]} is kept" if good else "no checkpoint was written yet"
            raise RunFailed(f"{exc}; {kept}; the run is resumable: free some space and continue with: "
                            f"python cli.py train --resume {out}") from None

    def finish(self, last):
        out, metrics = self.out, self.metrics
        _plot(out, metrics)
        summary = {"steps": self.config.steps, "final": metrics[-1] if metrics else None, "last_batch_loss": last,
                   "wall_s": round(self.wall(), 3),
                   "steps_to_threshold": threshold_summary(metrics, null_loss_of(self.data.Y_train, self.config.loss)),
                   "steps_to_accuracy": accuracy_summary(metrics)}
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
        return out


def _good_checkpoint(out):
    try:
        state = load_npz(Path(out) / "checkpoint.npz")
        return int(state["t"]), float(state.get("driver_train_loss", np.nan))
    except (ValueError, KeyError):
        return None


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


def accuracy_summary(metrics, levels=ACCURACY_LEVELS):
    """Steps to reach the training accuracies ``levels`` (None for regression; see :mod:`experiments.metrics`)."""
    acc = [r.get("train_acc") for r in metrics]
    if not acc or any(a in (None, "") for a in acc):
        return None
    hits = steps_to_accuracies([int(r["step"]) for r in metrics], [float(a) for a in acc], levels)
    return {"definition": "first evaluated step with train_acc >= level",
            "levels": [{"accuracy": a, "step": h} for a, h in zip(levels, hits)]}


def _checkpoint_step(out):
    try:
        with np.load(out / "checkpoint.npz", allow_pickle=False) as z:
            return int(z["t"])
    except (OSError, KeyError, ValueError):
        return None


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
