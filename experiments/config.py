"""One config schema for every command: each option of a run is declared once, here.

A :class:`Field` declares one option: its section (``model``, ``data``, ``optimiser``, ``run``; MATH §2.2,
§3, §4, §7), its library default (the config class and the JSON it writes) and its command-line default, its
:class:`Rule` (the bound or the choices, from which come both the click type that parses the option and the
check that validates it), its help text, the rule saying when it applies (:func:`unused_options`) and the
value that runs saved before it existed had (:data:`LEGACY_DEFAULTS`).  :data:`FIELDS` holds them in the
order of the help texts and of ``config.json``.

A :class:`Composition` is what one command or driver uses: a set of fields (a whole section joins by
default, see ``Field.train``) and per-command changes (another default, another help text).  From it come

* the config classes :class:`TrainConfig` (train, sweep), :class:`SweepConfig` (finite-sweep) and
  :class:`CompareConfig` (finite-vs-infinite): dataclasses whose fields are the composition's, with one
  validation (:meth:`Config.check_fields`: every field's rule, then the rules that tie fields together),
  one :meth:`ModelConfig.layers` and one JSON reading (:meth:`Config.from_json`) and writing;
* the click options of the commands (:func:`cli_options`), in the order of :data:`FIELDS`.

Adding an option is one :class:`Field` in :data:`FIELDS`: a field of ``train`` (the default) is then a field
of TrainConfig, an option of ``train`` and ``sweep``, checked, and written to and read from config.json.
"""

from __future__ import annotations

import dataclasses
import math

import click
import numpy as np

from refimpl.dynamics import LOSSES
from refimpl.kernels import ACTIVATIONS, architecture
from . import validate as V
from .controls import EVAL_SUBSETS, LR_POLICIES, LR_SCALES
from .data import DATASETS, GENERATED, check_loss_fits_task, dataset_name
from .synthetic import SYNTHETIC_TEST_SIZE, SYNTHETIC_TRAIN_SIZE
from .tasks import TASKS
from .validate import TrainError

BACKENDS = ("numpy", "cpu", "gpu", "auto")
DTYPES = ("float64", "float32")
#: The array backends of the finite networks (the same code on NumPy or CuPy arrays).
FINITE_BACKENDS = ("numpy", "gpu", "auto")
SECTIONS = ("model", "data", "optimiser", "run")

#: Most hidden layers of g or of f (each layer of the random network of width n0 costs n0^2 floats).
MAX_DEPTH = 1000
#: Largest order of magnitude (decades) of the kernel values the scales may produce (float64 ends near 1e308;
#: products and squares inside the simulation need room).
MAX_KERNEL_LOG10 = 100

_SAME = object()        # "as the library default" (Field.cli_default) / "no legacy value" (Field.legacy)


# ============================================================================ click types

class Checked(click.ParamType):
    """A click type whose rule is a check of :mod:`experiments.validate` (so each rule is written once)."""

    def __init__(self, name, check):
        self.name = name
        self.check = check

    def convert(self, value, param, ctx):
        try:
            return self.check(value)
        except TrainError as exc:
            self.fail(str(exc).split(": ", 1)[-1], param, ctx)


def _positive(value):
    try:
        return V.positive_number("value", float(value))
    except (TypeError, ValueError, TrainError):
        raise TrainError(f"value: expected a positive finite number, got {value!r}") from None


def _scale(value):
    """A layer scale: one non-negative number, or two (g, f) separated by a comma."""
    if isinstance(value, (int, float, tuple)):
        return value
    parts = [p.strip() for p in str(value).split(",")]
    if len(parts) not in (1, 2):
        raise TrainError(f"value: expected one number or two (g,f), got {value!r}")
    try:
        nums = [V.positive_number("value", float(p), allow_zero=True) for p in parts]
    except (TypeError, ValueError, TrainError):
        raise TrainError(f"value: expected one non-negative number or two (g,f), got {value!r}") from None
    return nums[0] if len(nums) == 1 else tuple(nums)


class DatasetType(click.ParamType):
    """--dataset: one of the built-in data sets, or npz:PATH (the user's arrays; experiments.data.load_npz)."""

    name = "DATASET"

    def __init__(self, choices):
        self.choices = tuple(choices)

    def get_metavar(self, param, ctx=None):
        return "[" + "|".join(self.choices) + "|npz:PATH]"

    def convert(self, value, param, ctx):
        try:
            name = dataset_name(value)
        except ValueError as exc:
            self.fail(str(exc).split(": ", 1)[-1], param, ctx)
        if name not in self.choices and not name.startswith("npz:"):
            self.fail(f"expected one of {', '.join(self.choices)} or npz:PATH, got {value!r}", param, ctx)
        return name


WIDTH = Checked("WIDTH", lambda v: V.width("width", v))
POSITIVE = Checked("FLOAT", _positive)
POS_INT = click.IntRange(min=1)
SEED = click.IntRange(min=0)
SCALE = Checked("STD[,STD]", _scale)
INT_LIST = Checked("N,N,...", lambda v: v if isinstance(v, tuple) else tuple(V.parse_int_list(v, "value")))


# ============================================================================ rules

@dataclasses.dataclass(frozen=True)
class Rule:
    """What values a field takes: ``check(name, value)`` returns the value in its canonical type or raises a
    one-line TrainError naming the field (library callers, config.json); ``click_type`` parses the option
    on the command line by the same bound or choices (None: click's text).  ``flag``: an on/off option.
    ``canonical``: a config stores the checked value (a data set's absolute path, parsed widths, a schedule's
    canonical text), not only checks it."""

    check: object = None
    click_type: object = None
    flag: bool = False
    canonical: bool = False

    def __call__(self, name, value, optional=False):
        if self.check is None or (optional and value is None):
            return value
        return self.check(name, value)


def count(minimum=1):
    """An integer >= ``minimum`` (click: IntRange)."""
    check = {1: V.positive_int, 0: V.non_negative_int}.get(minimum, lambda n, v: V.int_at_least(n, v, minimum))
    return Rule(check, POS_INT if minimum == 1 else SEED if minimum == 0 else click.IntRange(min=minimum))


def rate():
    """A positive finite number (a learning rate, a ratio)."""
    return Rule(V.positive_number, POSITIVE)


def choice(choices, message=None):
    """One of ``choices``; ``message``: the words after "expected" in the error (default "one of ...")."""
    choices = tuple(choices)

    def check(name, value):
        if value not in choices:
            if message is None:
                V.one_of(name, value, choices)
            raise TrainError(f"{name}: expected {message}, got {value!r}")
        return value
    return Rule(check, click.Choice(list(choices)))


def _is_number(text):
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def _schedule_form(name, value):
    """A learning-rate schedule's form (MATH §8.1); its horizon (cosine: the run's steps) is filled in by
    :meth:`Config.check_optimiser`."""
    V.lr_schedule(value, 1, name)
    return value.strip() if isinstance(value, str) else value


#: --lr-schedule: checked here for its form (cosine's horizon, the run's steps, is filled in by the config)
SCHEDULE = Checked("constant|step:EVERY:FACTOR|cosine|warmup:STEPS", lambda v: _schedule_form("lr_schedule", v))
MOMENTUM = Checked("BETA", lambda v: V.momentum(float(v) if _is_number(v) else v))


def _flag_check(name, value):
    if not isinstance(value, bool):
        raise TrainError(f"{name}: expected true or false, got {value!r}")
    return value


def _fraction_check(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value <= 1):
        raise TrainError(f"{name}: expected a number in (0, 1], got {value!r}")
    return value


def _dataset_check(name, value):
    try:
        return dataset_name(value)                # npz:PATH with PATH made absolute
    except ValueError as exc:
        raise TrainError(str(exc)) from None


def _int_tuple(name, values, minimum=1):
    """A non-empty list of integers >= ``minimum`` (verify's widths, depths, dims), as a tuple."""
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = (values,)
    try:
        values = list(values)
    except TypeError:
        raise TrainError(f"{name}: expected a list of integers, got {values!r}") from None
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum
                         for v in values):
        raise TrainError(f"{name}: expected a non-empty list of integers >= {minimum}, got {values!r}")
    return tuple(int(v) for v in values)


def listed(choices):
    """A comma-separated list of some of ``choices`` (parsed and checked by the command, not by click)."""
    choices = tuple(choices)

    def check(name, value):
        items = [x.strip() for x in value.split(",") if x.strip()] if isinstance(value, str) else list(value)
        for item in items:
            V.one_of(name, item, choices)
        return items
    return Rule(check, None)


def _chain_check(name, value):
    from refimpl.chain import check_widths
    try:
        return list(check_widths(value, name))
    except ValueError as exc:
        raise TrainError(str(exc)) from None


#: --chain D2[,D3...]: the widths of further bottlenecks after --width (MATH §9).
CHAIN = Checked("D2[,D3...]", lambda v: v if isinstance(v, list) else V.parse_chain(v))
FLAG = Rule(_flag_check, None, flag=True)
INTEGERS = Rule(_int_tuple, INT_LIST, canonical=True)
NON_NEGATIVE = Rule(lambda name, value: V.positive_number(name, value, allow_zero=True), click.FloatRange(min=0))
FRACTION = Rule(_fraction_check, click.FloatRange(min=0, max=1, min_open=True))
DATASET = Rule(_dataset_check, DatasetType(DATASETS), canonical=True)
BOTTLENECK = Rule(V.width, WIDTH)
LAYER_SCALE = Rule(None, SCALE)                  # checked with the architecture (refimpl.kernels.architecture)
HIDDEN_LAYERS = Rule(None, click.IntRange(min=0))   # at least 0 (1 unless linear): refimpl's architecture
FOLDER = Rule(None, click.Path(file_okay=False))
TEXT = Rule(None, None)


#: The paper's 36 bottleneck sizes of fig 16: 1..9, 10..90, 100..900, 1000..9000.
PAPER_WIDTHS = tuple(k * 10 ** e for e in range(4) for k in range(1, 10))


def finite_widths(value, name="widths"):
    """Bottleneck sizes of finite networks: ``"1,2,4"`` (or ``"paper"``, :data:`PAPER_WIDTHS`) -> the sorted
    tuple of the distinct positive integers."""
    return V.parse_widths(value, name, allow_inf=False, presets={"paper": PAPER_WIDTHS}, merge=True)


def _hidden_widths(name, value):
    """At least two hidden widths n of finite networks to compare (sorted, distinct)."""
    widths = finite_widths(value, name)
    if len(widths) < 2:
        raise TrainError(f"{name}: expected at least two widths to compare, got {list(widths)}")
    return widths


# ============================================================================ fields

@dataclasses.dataclass(frozen=True)
class Field:
    """One option, declared once (module docstring)."""

    name: str
    section: str                  # one of SECTIONS
    default: object               # library default: the config class, and config.json
    help: str
    rule: Rule = TEXT
    cli_default: object = _SAME   # the command line's default (``_SAME``: ``default``)
    optional: bool = False        # None is a value (not given / does not apply)
    applies: object = None        # (dataset, task, lr_policy) -> None, or why the option does not apply
    when_applies: object = None   # the default where it applies (None in config.json where it does not)
    legacy: object = _SAME        # the value of runs saved before the option existed
    train: bool = True            # a field of TrainConfig (so of train and sweep)
    cli: bool = True              # an option of the commands that use the field
    show_default: object = None   # None: when there is a default to show
    help_default: bool = False    # the command line's default is None, meaning ``default`` (said in the help)
    metavar: object = None        # the option's placeholder in the help (None: click's, from the type)

    def check(self, value):
        """``value`` checked by the field's rule (a one-line TrainError naming the field)."""
        return self.rule(self.name, value, self.optional)

    @property
    def cli_value(self):
        if self.help_default:
            return None
        return self.default if self.cli_default is _SAME else self.cli_default

    def option(self):
        """The click option of the field."""
        attrs = {"help": self.help}
        if self.help_default:
            shown = ",".join(map(str, self.default)) if isinstance(self.default, tuple) else self.default
            attrs["help"] = f"{self.help}  [default: {shown}]"
        if self.metavar is not None:
            attrs["metavar"] = self.metavar
        if self.rule.flag:
            attrs.update(is_flag=True, show_default=False)
        else:
            if self.rule.click_type is not None:
                attrs["type"] = self.rule.click_type
            attrs["default"] = self.cli_value
            if not self.help_default:
                attrs["show_default"] = (self.cli_value is not None if self.show_default is None
                                         else self.show_default)
        return SchemaOption(self, ["--" + self.name.replace("_", "-")], **attrs)


class SchemaOption(click.Option):
    """A click option made from a schema :class:`Field` (``.field``)."""

    def __init__(self, field, decls, **attrs):
        super().__init__(decls, **attrs)
        self.field = field


def _not_dr(dataset, task, lr_policy):
    if task == "autoencoder":
        return "with task autoencoder the targets are the inputs, dr = d0"
    if dataset in ("multi-index", "manifold"):
        return f"the {dataset} data fix their outputs (multi-index: 1, manifold: latent_dim)"
    return None


def _not_latent(dataset, task, lr_policy):
    return None if dataset in ("multi-index", "manifold") else "it belongs to --dataset multi-index and manifold"


def _not_per_width(dataset, task, lr_policy):
    return None if lr_policy == "per-width" else "it belongs to --lr-policy per-width"


def _not_lr(dataset, task, lr_policy):
    return ("with --lr-policy per-width the rate is lr_fraction x the probed largest stable rate"
            if lr_policy == "per-width" else None)


_SYNTH = "[default: {} synthetic, all otherwise]"
_TRAIN_STEPS = 600

#: Every option, in the order of the help texts and of config.json.
FIELDS = (
    # ---- data (MATH §7)
    Field("dataset", "data", "synthetic", rule=DATASET,
          help="Data set (synthetic needs no download; MATH §7), or npz:PATH, your own arrays X_train, Y_train "
               "[, X_test, Y_test] (README 'Your own data')."),
    Field("data_dir", "data", None, rule=FOLDER, optional=True,
          help="Folder with the MNIST / CIFAR-10 files (default: $BOTTLENECK_DATA, then the user cache)."),
    Field("train_size", "data", SYNTHETIC_TRAIN_SIZE, rule=count(1), optional=True, cli_default=None,
          help="Training points (a fixed seeded subset). " + _SYNTH.format(SYNTHETIC_TRAIN_SIZE)),
    Field("test_size", "data", SYNTHETIC_TEST_SIZE, rule=count(1), optional=True, cli_default=None,
          help="Test points (a fixed seeded subset). " + _SYNTH.format(SYNTHETIC_TEST_SIZE)),
    Field("d0", "data", None, rule=count(1), optional=True, cli_default=16,       # None: the data's own
          help="Input dimension (synthetic, multi-index, manifold)."),
    Field("dr", "data", None, rule=count(1), optional=True, cli_default=1, applies=_not_dr, when_applies=1,
          help="Output dimension (synthetic only)."),
    Field("latent_dim", "data", None, rule=count(1), optional=True, cli_default=2, applies=_not_latent,
          when_applies=2, help="Latent dimension k of --dataset multi-index / manifold (MATH §7.2, §7.3)."),
    Field("task", "data", "default", rule=choice(TASKS),
          help="autoencoder: the targets are the inputs, dr = d0 (MATH §7.3)."),
    # ---- model: the bottleneck and the two wide halves (MATH §1, §2.2, §3, §5)
    Field("width", "model", 10, rule=BOTTLENECK,
          help="Bottleneck width d, or 'inf' for the network without bottleneck (MATH §5)."),
    Field("widths", "model", (1, 2, 4, 8, 16, 32, 64, 128), train=False,     # sweep, finite-sweep
          help="Bottleneck widths d, comma-separated."),
    Field("seeds", "run", "0", rule=Rule(lambda name, value: V.parse_seeds(value, name)), train=False,   # sweep
          help="Comma-separated seeds (initial functions and batch order) per width."),
    Field("hidden", "model", 100_000, rule=count(1), train=False,             # finite-sweep, finite-vs-infinite
          help="Hidden width n of both wide layers (the paper's 100,000; see README for memory)."),
    Field("limit_width", "model", 10_000, rule=count(1), train=False,         # finite-vs-infinite
          help="Width n0 of the default initial functions of the 'limit' simulator run."),
    Field("activation", "model", "relu", rule=choice(ACTIVATIONS), help="Activation of both wide layers (MATH §1)."),
    Field("init_width", "model", 10_000, rule=count(1),
          help="Width n0 of the random network that draws g0, f0, J0 (MATH §3)."),
    Field("chain", "model", None, rule=Rule(_chain_check, CHAIN, canonical=True), optional=True,
          help="Further bottlenecks after --width (MATH §9): g -> d1 -> f_1 -> D2 -> f_2 -> ...; every head has "
               "f's architecture.  With --width inf every width is infinite.  [default: one bottleneck]"),
    Field("depth_g", "model", 1, rule=HIDDEN_LAYERS,
          help="Hidden layers of g (1: the paper's network; 0 only for linear)."),
    Field("depth_f", "model", 1, rule=HIDDEN_LAYERS, help="Hidden layers of f."),
    Field("w_std", "model", 1.0, rule=LAYER_SCALE, cli_default="1.0",
          help="Weight std of the hidden layers, Dense(W_std, b_std): one value, or G,F for g and f."),
    Field("b_std", "model", 0.0, rule=LAYER_SCALE, cli_default="0.0",
          help="Bias std of every layer (0: no biases); or G,F."),
    Field("out_std", "model", 1.0, rule=LAYER_SCALE, cli_default="1.0",
          help="Weight std of the last layer of g and of f (small f: the paper's footnote 3); or G,F."),
    Field("loss", "model", "mse", rule=choice(LOSSES),
          help="mse, or ce: softmax cross-entropy on one-hot targets (logistic for one output)."),
    # ---- optimiser: SGD (MATH §4)
    Field("steps", "optimiser", _TRAIN_STEPS, rule=count(1), cli_default=None,
          help=f"Number of SGD steps.  [default: {_TRAIN_STEPS}; with --resume: the saved value]"),
    Field("batch_size", "optimiser", 20, rule=count(1), help="SGD batch size B."),
    Field("lr", "optimiser", 2.0, rule=rate(), applies=_not_lr,
          help="Learning rate mu (loss 1/(2B) sum |F - y|^2)."),
    Field("lr_f", "optimiser", None, rule=rate(), optional=True,
          help="Separate rate for f's weights (default --lr)."),
    Field("lr_g", "optimiser", None, rule=rate(), optional=True,
          help="Separate rate for g's weights (default --lr)."),
    # the optimiser (MATH §8): schedule of every rate, heavy-ball / Nesterov momentum
    Field("lr_schedule", "optimiser", "constant", rule=Rule(_schedule_form, SCHEDULE, canonical=True),
          legacy="constant",
          help="Multiplier of every rate at step t (MATH §8.1): constant; step:EVERY:FACTOR (times FACTOR every "
               "EVERY steps); cosine ((1 + cos(pi t / steps)) / 2 over the run's steps, recorded as cosine:STEPS); "
               "warmup:STEPS (linear from 1/STEPS to 1)."),
    Field("momentum", "optimiser", 0.0,
          rule=Rule(lambda name, value: V.momentum(value, name), MOMENTUM, canonical=True),
          legacy=0.0,
          help="Heavy-ball momentum beta in [0, 1) of every weight (MATH §8; exact in function space)."),
    Field("nesterov", "optimiser", False, rule=FLAG, legacy=False,
          help="Nesterov momentum (PyTorch convention: step along grad + beta v) instead of heavy ball."),
    # ---- run: seed, evaluation, checkpoints, backend
    Field("seed", "run", 0, rule=count(0), help="Seed of the initial functions and of the batch order."),
    Field("eval_every", "run", 50, rule=count(1), help="Evaluate the losses every this many steps."),
    Field("eval_size", "run", 1000, rule=count(1),
          help="Training points (a fixed subset) for the training loss and the bottleneck metrics."),
    Field("checkpoint_every", "run", None, rule=count(1), optional=True,
          help="Write the checkpoint every this many steps (default: every evaluation)."),
    Field("backend", "run", "numpy", rule=choice(BACKENDS), cli_default="auto",   # after train(): what ran
          help="auto = gpu if usable, else cpu, else numpy (what ran is printed and recorded); "
               "numpy = reference; cpu = Numba; gpu = CuPy."),
    Field("backend_requested", "run", None, rule=choice(BACKENDS), optional=True, cli=False,
          help="The backend asked for (e.g. auto); None in runs made before it was recorded."),
    Field("dtype", "run", "float64", rule=choice(DTYPES),
          help="Precision of the cpu / gpu backends (numpy is float64 only)."),
    # ---- controls of the bottleneck experiments (experiments.controls; MATH §7.4, §7.5, §7.7)
    Field("center", "model", False, rule=FLAG,
          help="Train and report F - F0 (subtract each input's initial output)."),
    Field("lr_policy", "optimiser", "fixed", rule=choice(LR_POLICIES, "fixed or per-width"),
          help="fixed: --lr for every width; per-width: --lr-fraction x the width's largest stable rate from "
               "a short recorded probe (lr_probe.json)."),
    Field("lr_fraction", "optimiser", None, rule=FRACTION, optional=True, cli_default=0.5,
          applies=_not_per_width, when_applies=0.5,
          help="per-width: the fraction of each width's largest stable rate."),
    Field("lr_probe_steps", "optimiser", None, rule=count(1), optional=True, cli_default=100,
          applies=_not_per_width, when_applies=100, help="Steps of each probe run of --lr-policy per-width."),
    Field("lr_scale", "optimiser", "none", rule=choice(LR_SCALES, "none or matched"), legacy="none",
          help="matched: divide every rate (and the probe's grid) by the factor c_g c_f by which --w-std and "
               "--out-std scale the kernel, so a small initialisation trains at the standard one's effective "
               "rate (MATH §7.7; relu / linear without biases)."),
    Field("data_seed", "data", 0, rule=count(0),
          help="Seed of the data draw (synthetic, multi-index, manifold) or subset (mnist, cifar); "
               "the same for every run of a sweep."),
    Field("eval_subset", "run", "fixed", rule=choice(EVAL_SUBSETS, "fixed or seed"), legacy="seed", cli=False,
          help="Training rows of the training loss: fixed (one subset per data set) or seed (drawn from the "
               "run's seed: runs made before the option existed)."),
    Field("max_ratio", "run", 0.5, rule=rate(), train=False,                  # finite-vs-infinite
          help="Check: fail unless gap(largest n) <= MAX_RATIO * gap(smallest n)."),
    # ---- the numerical checks of the theory (verify; paper appendix E, MATH §6)
    Field("widths_chain", "model", None, rule=Rule(None, INT_LIST), optional=True, train=False,
          help="Several bottlenecks (MATH §9): their widths d1,d2,... (d1 replaces d = 3); finite chains against "
               "the chain simulator, J of the first head, only the g residual.  [default: one bottleneck of "
               "width 3]"),
    Field("depths", "model", (2, 3), rule=INTEGERS, train=False, help="Depths L = L_f = L_g."),
    Field("dims", "model", (4, 16, 64, 256), rule=INTEGERS, train=False, help="Bottleneck widths d."),
    Field("samples", "run", 3, rule=count(1), train=False, help="Random initialisations per width."),
    Field("pairs", "data", 20, rule=count(1), train=False, help="Random input pairs."),
    Field("dim", "data", 2, rule=count(1), train=False, help="Input dimension of the head."),
    Field("points", "data", 8, rule=count(1), train=False, help="Training points."),
    Field("threshold", "run", 0.05, rule=NON_NEGATIVE, train=False,
          help="Largest distance the check allows."),
    Field("slope_band", "run", 0.25, rule=NON_NEGATIVE, train=False,
          help="Largest distance of the fitted log-log slope of the mean gap in F and g from -1/2."),
    # ---- the benchmark (bench; docs/BENCHMARKS.md)
    Field("sizes", "run", (10_000, 100_000, 1_000_000), rule=INTEGERS, cli_default="10000,100000,1000000",
          train=False, help="History lengths M."),
    Field("backends", "run", None, rule=listed(("numpy", "cpu", "gpu")), optional=True, train=False,
          help="Comma-separated backends: each must be available (else its reason is reported, the others "
               "still run, and the exit status is 2).  [default: numpy,cpu, and gpu where it can run]"),
    Field("dtypes", "run", DTYPES, rule=listed(DTYPES), cli_default="float64,float32", train=False,
          help="Precisions of cpu/gpu."),
    Field("reps", "run", 3, rule=count(1), train=False, help="Timed steps per point (median)."),
    Field("numpy_max_m", "run", 1_000_000, rule=count(1), train=False,
          help="Skip refimpl above this M (it is slow there)."),
    Field("near_pairs", "run", False, rule=FLAG, train=False,
          help="Also time one history pass with every pair nearly parallel against one with spread "
               "directions, at the smallest M (JSON key near_pairs; docs/BENCHMARKS.md)."),
    Field("mnist_step", "data", None, rule=Rule(None, click.Path(file_okay=False, exists=True)), optional=True,
          train=False,
          help="Folder with MNIST: instead, time the cpu step at full-MNIST size (60,000 + 10,000 tracked "
               "inputs, width 50 and inf) with the kernels from inputs stored once against the per-step "
               "route (JSON keys mnist_step, mnist_step_inf; docs/BENCHMARKS.md)."),
)
BY_NAME = {f.name: f for f in FIELDS}
assert len(BY_NAME) == len(FIELDS) and all(f.section in SECTIONS for f in FIELDS)


def section(name):
    """The names of the fields of one section, in declaration order."""
    return tuple(f.name for f in FIELDS if f.section == name)


# ============================================================================ compositions

class Composition:
    """The fields one command or driver uses, with its own defaults and help texts.

    Parameters
    ----------
    name : the command
    names : the field names it takes (kept in the order of :data:`FIELDS`, or with ``ordered`` in this order)
    **changes : field name -> dict of :class:`Field` attributes that differ for this command
    """

    def __init__(self, name, names, ordered=False, **changes):
        unknown = (set(names) | set(changes)) - set(BY_NAME)
        if unknown:
            raise TypeError(f"{name}: unknown fields {sorted(unknown)}")
        self.name = name
        order = list(names) if ordered else [f.name for f in FIELDS if f.name in names]
        self.fields = tuple(dataclasses.replace(BY_NAME[n], **changes.get(n, {})) for n in order)
        self.by_name = {f.name: f for f in self.fields}

    def names(self):
        return tuple(f.name for f in self.fields)

    def defaults(self):
        """{name: library default}."""
        return {f.name: f.default for f in self.fields}


def train_fields():
    """The fields of a training run of the simulator (TrainConfig): every field with ``train`` set."""
    return tuple(f.name for f in FIELDS if f.train)


TRAIN = Composition("train", train_fields())
#: sweep: train's options, but many widths and seeds (its own --widths, --seeds) and no --checkpoint-every.
SWEEP = Composition("sweep", (set(train_fields()) - {"width", "seed", "checkpoint_every"}) | {"widths", "seeds"},
                    dataset={"help": "Data set (the same data for every run)."},
                    widths={"rule": Rule(lambda name, value: V.parse_widths(value, name)),
                            "cli_default": "inf,10,20,50,100,200,500", "show_default": True,
                            "help": "Comma-separated bottleneck widths; 'inf' = no bottleneck."})
FINITE_SWEEP = Composition(
    "finite-sweep",
    ("dataset", "data_dir", "train_size", "test_size", "d0", "dr", "latent_dim", "task", "widths", "hidden",
     "activation", "depth_g", "depth_f", "w_std", "b_std", "out_std", "loss", "steps", "batch_size", "lr",
     "lr_schedule", "momentum", "nesterov", "seed", "data_seed", "eval_every", "eval_size", "backend",
     "backend_requested"),
    dataset={"default": "mnist"},
    train_size={"default": None},            # None: every training row (mnist, cifar); 1000 for synthetic
    test_size={"default": None},
    d0={"default": 16, "optional": False},   # synthetic only
    dr={"default": 1, "optional": False, "applies": None},
    latent_dim={"default": 2, "optional": False, "applies": None},
    widths={"rule": Rule(lambda name, value: finite_widths(value, name), canonical=True),
            "cli_default": "1,2,4,8,16,32,64,128",
            "show_default": True,
            "help": "Bottleneck sizes d, comma-separated, or 'paper' for the paper's 36 (1..9, 10..90, ..., 9000)."},
    activation={"help": "Activation of the hidden layers.", "show_default": True},
    steps={"default": 2000, "cli_default": _SAME, "help": "SGD steps per bottleneck size."},
    batch_size={"default": 5, "help": "SGD batch size B (the paper's 5)."},
    lr={"default": 1.0, "applies": None},
    seed={"help": "Seed of the weights and of the batch order."},
    data_seed={"cli": False},
    eval_every={"default": 100},
    eval_size={"help": "Training points (a fixed subset) for the training loss and error."},
    backend={"rule": choice(FINITE_BACKENDS),
             "help": "auto = gpu if usable, else numpy; numpy; or gpu: the same networks with CuPy arrays."},
)
COMPARE = Composition(
    "finite-vs-infinite",
    ("dataset", "data_dir", "train_size", "test_size", "d0", "dr", "width", "chain", "hidden", "limit_width",
     "steps", "batch_size", "lr", "lr_schedule", "momentum", "nesterov", "seed", "data_seed", "eval_every",
     "max_ratio"), ordered=True,
    train_size={"default": 200, "cli_default": _SAME, "optional": False,
                "help": "Training points (a fixed seeded subset)."},
    test_size={"default": 200, "cli_default": _SAME, "optional": False, "help": "Test points (a fixed seeded subset)."},
    d0={"default": 16, "optional": False},
    dr={"default": 1, "optional": False, "applies": None},
    width={"rule": count(1), "help": "Bottleneck width d."},
    chain={"rule": Rule(lambda name, value: V.parse_chain(value, name), CHAIN, canonical=True),
           "help": "Further bottlenecks after --width (MATH §9): finite chains against the chain simulator.  "
                   "[default: one bottleneck]"},
    hidden={"default": (500, 2000, 8000, 32000), "rule": Rule(_hidden_widths, canonical=True),
            "cli_default": "500,2000,8000,32000",
            "show_default": True, "help": "Hidden widths n of the finite networks, comma-separated (at least two)."},
    steps={"default": 300, "cli_default": 200, "help": "Number of SGD steps."},
    batch_size={"help": "SGD batch size B."},
    lr={"default": 1.0, "applies": None},
    seed={"help": "Seed of the weights and of the batch order."},
    data_seed={"cli": False},
    eval_every={"default": 5, "cli_default": 10},
)
#: verify: every option of a check defaults to None on the command line, meaning the check's default (in the help)
_CHECK = {"help_default": True}
_VERIFY_BACKEND = {"cli_default": "auto", "show_default": True}
_SEED = {**_CHECK, "help": "Seed."}
VERIFY_LEMMA31 = Composition(
    "verify lemma3.1", ("widths", "samples", "pairs", "dim", "threshold", "seed"), ordered=True,
    widths={**_CHECK, "default": (100, 1000), "rule": INTEGERS, "help": "Hidden widths n of the heads."},
    samples={**_CHECK, "default": 20_000, "rule": count(2)}, pairs=_CHECK, dim=_CHECK,
    threshold={**_CHECK, "help": "Largest relative Frobenius error of each covariance over all pairs."},
    seed=_SEED)
VERIFY_THEOREM32 = Composition(
    "verify theorem3.2", ("widths", "steps", "lr", "samples", "points", "threshold", "slope_band", "activation",
                          "depth_g", "depth_f", "w_std", "b_std", "out_std", "loss", "backend", "momentum", "nesterov",
                          "lr_schedule", "widths_chain", "seed"),
    ordered=True,
    widths={**_CHECK, "default": (1_000, 4_000, 16_000, 64_000), "rule": INTEGERS,
            "help": "Hidden widths n of the finite networks, increasing (a rate needs 4 or more spanning 16x)."},
    steps={**_CHECK, "default": 40, "help": "Full-batch GD steps."},
    lr={**_CHECK, "default": 0.05, "help": "Learning rate."},
    samples={**_CHECK, "default": 8, "help": "Networks per width (seeds seed, seed+1, ...): the gaps are averaged "
                                             "and the slope's interval is a bootstrap over them (with a chain, "
                                             "momentum or a schedule the default is 16, and the widths "
                                             "500,2000,8000,32000; heavy-ball momentum >= 0.9: 32)."},
    points=_CHECK, slope_band=_CHECK,
    threshold={**_CHECK, "help": "Largest final distance in F and g and median g residual at the largest width."},
    activation={"help": "Activation of the hidden layers of g and f.", "show_default": True},
    depth_f={"help": "Hidden layers of f (with more than one hidden layer in g or f the widths default to "
                     "125,320,800,2000)."},
    backend={**_VERIFY_BACKEND, "help": "Backend of the simulator the finite networks are compared with (auto: "
                                        "gpu, else cpu, else numpy; recorded in the report)."},
    momentum={"rule": Rule(lambda name, value: V.momentum(value, name),
                           click.FloatRange(min=0, max=1, max_open=True)),
              "help": "Heavy-ball momentum beta of the finite networks and of the simulator alike (MATH §8)."},
    nesterov={"help": "Nesterov momentum (needs --momentum > 0)."},
    lr_schedule={"rule": TEXT, "cli_default": None, "metavar": "SCHEDULE",
                 "help": "Learning-rate schedule of both models: constant, step:EVERY:FACTOR, cosine or "
                         "warmup:STEPS (MATH §8).  With momentum or a schedule the residuals of eqs 12-14 (plain "
                         "GD) are not computed.  [default: constant]"},
    seed=_SEED)
VERIFY_LEMMA41 = Composition(
    "verify lemma4.1", ("widths", "depths", "steps", "lr", "points", "threshold", "backend", "seed"), ordered=True,
    widths={**_CHECK, "default": (64, 256, 1024), "rule": INTEGERS,
            "help": "Hidden widths n of the deep linear networks."},
    depths=_CHECK, steps={**_CHECK, "default": 40, "help": "Full-batch GD steps."},
    lr={**_CHECK, "default": 0.05, "help": "Learning rate of the deep networks."}, points=_CHECK,
    threshold={**_CHECK, "help": "Largest final distance in F between deep and effective network at the largest "
                                 "width."},
    backend={**_VERIFY_BACKEND, "help": "Backend of the linear-kernel simulator (auto: gpu, else cpu, else numpy; "
                                        "recorded in the report)."},
    seed=_SEED)
VERIFY_INF_LIMIT = Composition(
    "verify inf-limit", ("dims", "width", "samples", "points", "threshold", "seed"), ordered=True,
    dims=_CHECK, width={**_CHECK, "default": 2000, "rule": count(1), "help": "Hidden width of the random networks."},
    samples={**_CHECK, "default": 4, "help": "Random networks per d."},
    points={**_CHECK, "default": 10, "rule": count(2), "help": "Input points."},
    threshold={**_CHECK, "default": 0.1, "help": "Largest mean relative gap to NTK_inf at the largest d."},
    seed=_SEED)
#: The checks of ``verify``: their compositions.
VERIFY = {c.name.split()[1]: c for c in (VERIFY_LEMMA31, VERIFY_THEOREM32, VERIFY_LEMMA41, VERIFY_INF_LIMIT)}
BENCH = Composition(
    "bench", ("sizes", "widths", "backends", "dtypes", "reps", "numpy_max_m", "near_pairs", "mnist_step"),
    ordered=True,
    widths={"default": (10, 100), "rule": INTEGERS, "cli_default": "10,100", "show_default": True,
            "help": "Bottleneck widths d."})
COMPOSITIONS = {c.name: c for c in (TRAIN, SWEEP, FINITE_SWEEP, COMPARE, *VERIFY.values(), BENCH)}


def check_defaults(composition):
    """{name: default} of the options of a check that default to None on the command line (verify)."""
    return {f.name: f.default for f in composition.fields if f.help_default}


def checked(composition, given):
    """The options of ``composition`` named in ``given``: each value (None: the field's default) checked by
    its field's rule, in the composition's order (a one-line TrainError naming the first bad one)."""
    out = {}
    for f in composition.fields:
        if f.name in given:
            value = given[f.name]
            out[f.name] = f.check(f.default if value is None else value)
    return out


# ============================================================================ the click options

def cli_options(command, *, skip=(), only=None, **overrides):
    """A decorator adding the options of ``command`` (a :class:`Composition` or its name) to a click command.

    ``skip``: options left out (``only``: all but these); an override is a new default, or a dict of
    click.option attributes (help, type, ...) for that option.
    """
    comp = COMPOSITIONS[command] if isinstance(command, str) else command
    fields = [f for f in comp.fields if f.cli]
    names = [f.name for f in fields]
    if only is not None:
        skip = tuple(skip) + tuple(n for n in names if n not in only)
    unknown = (set(skip) | set(overrides)) - set(names)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}; this set has {names}")

    def decorate(fn):
        for f in reversed(fields):
            if f.name in skip:
                continue
            change = overrides.get(f.name, _SAME)
            if isinstance(change, dict):
                attrs = {_OPTION_ATTRS.get(k, k): v for k, v in change.items()}
                if "type" in change:
                    attrs["rule"] = dataclasses.replace(f.rule, click_type=attrs.pop("type"))
                f = dataclasses.replace(f, **attrs)
            elif change is not _SAME:
                f = dataclasses.replace(f, cli_default=change, show_default=True)
            fn.__click_params__ = [*getattr(fn, "__click_params__", []), f.option()]
        return fn
    return decorate


#: click.option's attribute names that are named otherwise in a Field.
_OPTION_ATTRS = {"default": "cli_default"}


def given_on_command_line(ctx, names):
    """The ``names`` of the parameters of ``ctx`` given on the command line (not defaults)."""
    return [n for n in names if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]


def fill_sizes(options):
    """Fill in the synthetic data set's default sizes (the one place the commands do so)."""
    from .synthetic import default_sizes
    options["train_size"], options["test_size"] = default_sizes(
        options["dataset"], options["train_size"], options["test_size"])
    return options


def applied_options(ctx, options):
    """The options of train / sweep as the run uses them: every option takes effect or is refused.

    --d0 / --dr apply to the synthetic data (for mnist / cifar they are passed only when given, then checked
    against the data); an option that does not apply to the data set, task or rate policy
    (:func:`unused_options`) is refused when given (TrainError, one line), and left out (None in
    config.json) otherwise."""
    if options["dataset"] != "synthetic":
        for name in ("d0", "dr"):
            if not given_on_command_line(ctx, [name]):
                options[name] = None
    unused = unused_options(options["dataset"], options.get("task", "default"), options.get("lr_policy", "fixed"))
    for name, reason in unused.items():
        if name not in options:
            continue
        if given_on_command_line(ctx, [name]):
            raise TrainError(f"--{name.replace('_', '-')}: does not apply here: {reason}; leave it out")
        if BY_NAME[name].when_applies is not None:
            options[name] = None
    return options


# ============================================================================ "applies when"

#: Defaults of the options that apply to some runs only (None in config.json where they do not apply).
OPTION_DEFAULTS = {f.name: f.when_applies for f in FIELDS if f.when_applies is not None}
#: Options added after runs were made, with the value that those runs had (a saved config without the key
#: means this): the training rows drawn from the run's seed, rates as given.
LEGACY_DEFAULTS = {f.name: f.legacy for f in FIELDS if f.legacy is not _SAME}


def unused_options(dataset, task, lr_policy, fields=FIELDS):
    """{option: why it does not apply} for a run of ``dataset``, ``task`` and ``lr_policy`` (each field's
    ``applies`` rule).

    ``dr`` is the synthetic data's output dimension (mnist / cifar / npz data fix it themselves: a given
    value is checked against them); ``latent_dim`` belongs to multi-index and manifold; ``lr_fraction`` and
    ``lr_probe_steps`` to ``lr_policy = "per-width"``, which sets ``lr`` itself.
    """
    out = {}
    for f in fields:
        reason = f.applies(dataset, task, lr_policy) if f.applies is not None else None
        if reason is not None:
            out[f.name] = reason
    return out


# ============================================================================ the config classes

def _pair(value):
    """A scale option: one number, or [g, f] (lists from config.json become tuples)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _kernel_decades(config):
    """log10 of the size of the kernel the scales and depths give (MATH §2.2): each hidden layer multiplies the
    variance by about ``w_std^2 + b_std^2``, the last layer by ``out_std^2``: (decades, the option that
    contributes most), (None, None) for bad values."""
    try:
        hidden = last = 0.0
        for k, depth in enumerate((config.depth_g, config.depth_f)):
            w, b, o = (float(_pair(v)[k]) if isinstance(_pair(v), tuple) else float(v)
                       for v in (config.w_std, config.b_std, config.out_std))
            if not (math.isfinite(w) and math.isfinite(b) and math.isfinite(o)):
                return None, None                    # refused by the architecture's own check
            if math.hypot(w, b) > 0:                 # zero scales are the options' own business
                hidden += 2 * int(depth) * np.log10(math.hypot(w, b))
            if o > 0:
                last += 2 * np.log10(o)
        total = float(hidden + last)
        return total, ("out_std" if abs(last) > abs(hidden) else "w_std")
    except (TypeError, ValueError, IndexError, OverflowError):
        return None, None


def composed(composition):
    """Class decorator: the dataclass whose fields are ``composition``'s, with their library defaults."""
    def make(cls):
        cls.__annotations__ = {f.name: object for f in composition.fields}
        for f in composition.fields:
            setattr(cls, f.name, f.default)
        cls.COMPOSITION = composition
        return dataclasses.dataclass(cls)
    return make


class Config:
    """What every composed config does: check its fields, read and write JSON."""

    COMPOSITION = None

    def check_fields(self, names=None):
        """Every field's rule (declaration order; ``names``: those only); a canonical rule's value is stored."""
        for f in self.COMPOSITION.fields:
            if names is None or f.name in names:
                value = f.check(getattr(self, f.name))
                if f.rule.canonical:
                    setattr(self, f.name, value)

    def check_optimiser(self):
        """The schedule's horizon: plain ``cosine`` becomes ``cosine:STEPS`` with the run's steps (MATH §8.1), so
        that a resumed or extended run keeps the horizon it started with (the fields' own rules: check_fields)."""
        self.lr_schedule = V.lr_schedule(self.lr_schedule, self.steps)

    def check_dataset(self):
        self.dataset = self.COMPOSITION.by_name["dataset"].check(self.dataset)

    @classmethod
    def from_json(cls, data):
        """The config saved in ``data`` (config.json / sweep.json); an option saved before it existed
        takes its value of :data:`LEGACY_DEFAULTS` (what such runs did), not the new default."""
        names = set(cls.COMPOSITION.names())
        legacy = {k: v for k, v in LEGACY_DEFAULTS.items() if k in names}
        return cls(**{**legacy, **{k: v for k, v in data.items() if k in names}})

    def as_json(self):
        """The config as a JSON object (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) and k in ("widths", "hidden") else v
                for k, v in dataclasses.asdict(self).items()}


class ModelConfig(Config):
    """A config with the architecture fields (activation, depths, scales; MATH §2.2)."""

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


@composed(TRAIN)
class TrainConfig(ModelConfig):
    """All options of a training run (stored in ``config.json``): the fields of :data:`TRAIN`."""

    def validate(self):
        """Raise TrainError with a one-line message for the first bad option (library callers; the
        command line parses the same rules, from :data:`FIELDS`, while parsing).

        Fills in the synthetic data's defaults ``d0 = 16``, ``dr = 1``; for mnist and cifar ``d0`` and
        ``dr`` stay None (given values are checked against the data by :func:`experiments.train.load_data`)."""
        self.check_dataset()
        V.width("width", self.width)
        if self.dataset in GENERATED:              # the generated data sets take d0 (and synthetic dr) as options
            self.d0 = 16 if self.d0 is None else self.d0
        self._applicable_only()
        self.check_fields()
        self.check_optimiser()
        if self.chain is not None and self.lr_scale != "none":
            raise TrainError(f"chain: --lr-scale {self.lr_scale} is defined for one bottleneck (MATH §7.7), not "
                             "for a chain of several; use --lr-scale none")
        from .controls import rate_factor, validate_controls
        try:
            validate_controls(self)
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        self.layers()
        try:
            rate_factor(self)
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        check_loss_fits_task(self.loss, self.dataset, self.task)
        if self.backend == "numpy" and self.dtype != "float64":
            raise TrainError("dtype: the numpy reference backend is float64 only")

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
            if name in OPTION_DEFAULTS and value is not None and value != OPTION_DEFAULTS[name]:
                raise TrainError(f"{name}: does not apply here ({reason}); got {value!r}")
        for name in set(OPTION_DEFAULTS) - set(unused):
            if getattr(self, name) is None and (name != "dr" or self.dataset == "synthetic"):
                setattr(self, name, OPTION_DEFAULTS[name])

    def rates(self):
        """(lr, lr_f, lr_g) the simulator gets: the options times the ``lr_scale`` factor (MATH §7.7)."""
        from .controls import rate_factor
        c = rate_factor(self)
        return (self.lr * c, None if self.lr_f is None else self.lr_f * c,
                None if self.lr_g is None else self.lr_g * c)


#: The default number of steps of a training run (``train --steps``).
DEFAULT_STEPS = TrainConfig.steps


@composed(FINITE_SWEEP)
class SweepConfig(ModelConfig):
    """Options of :func:`experiments.finite_sweep.finite_sweep` (stored in ``config.json``): :data:`FINITE_SWEEP`."""

    def validate(self):
        """Raise TrainError with a one-line message for the first bad option."""
        self.check_dataset()
        self.check_fields()
        self.check_optimiser()
        self.layers()
        check_loss_fits_task(self.loss, self.dataset, self.task)


@composed(COMPARE)
class CompareConfig(Config):
    """Options of :func:`experiments.finite_sweep.finite_vs_infinite` (stored in ``summary.json``):
    :data:`COMPARE`."""

    def validate(self):
        """Raise TrainError with a one-line message for the first bad option."""
        self.check_dataset()
        self.check_fields()
        self.check_optimiser()
