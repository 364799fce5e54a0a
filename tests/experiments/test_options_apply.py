"""Every option takes effect or is refused in one line, as a property over the table
option x data set x task x command (train, sweep): where an option does not apply it is refused when
given (exit 2, one line naming it), and never recorded in config.json when not given; where it applies,
config.json records the value given."""

import json

import pytest
from click.testing import CliRunner

import cli
from clihelpers import one_line_error
from test_data import make_mnist

DATASETS = ["synthetic", "multi-index", "manifold", "mnist"]
TASKS = ["default", "autoencoder"]
GENERATED = ("synthetic", "multi-index", "manifold")

#: (option, value, extra arguments, does it apply to (dataset, task)?) -- written here independently of the code
OPTIONS = [
    ("--dr", "2", [], lambda ds, task: ds == "synthetic" and task == "default"),
    ("--latent-dim", "3", [], lambda ds, task: ds in ("multi-index", "manifold")),
    ("--d0", "5", [], lambda ds, task: ds in GENERATED),
    ("--lr-fraction", "0.25", [], lambda ds, task: False),                        # --lr-policy fixed
    ("--lr-probe-steps", "2", [], lambda ds, task: False),
    ("--lr-fraction", "0.25", ["--lr-policy", "per-width", "--lr-probe-steps", "2"], lambda ds, task: True),
    ("--lr", "0.5", ["--lr-policy", "per-width", "--lr-probe-steps", "2"], lambda ds, task: False),
    ("--lr", "0.002", [], lambda ds, task: True),
]
#: options that apply to some runs only: their config.json key, and when they apply
SOMETIMES = {"dr": lambda ds, task, pw: ds == "synthetic" and task == "default",
             "latent_dim": lambda ds, task, pw: ds in ("multi-index", "manifold"),
             "lr_fraction": lambda ds, task, pw: pw, "lr_probe_steps": lambda ds, task, pw: pw}


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_mnist(root)
    return root


def _base(ds, task, mnist_dir, command):
    args = ["--dataset", ds, "--task", task, "--train-size", "20", "--test-size", "10", "--init-width", "50",
            "--batch-size", "5", "--steps", "2", "--eval-every", "1", "--backend", "numpy"]
    if ds in GENERATED:
        args += ["--d0", "4"]
    if ds == "mnist":
        args += ["--data-dir", str(mnist_dir)]
    if command == "train":
        return ["train", "-q", "--width", "2", *args]
    return ["sweep", "--widths", "2", "-j", "1", "--no-plot", *args]


def _with(args, opt, value):
    args = list(args)
    if opt in args:
        args[args.index(opt) + 1] = value
    else:
        args += [opt, value]
    return args


def _recorded(out, command):
    if command == "train":
        return json.loads((out / "config.json").read_text())["config"]
    return json.loads((out / "sweep.json").read_text())["config"]


CELLS = [(ds, task, k, command) for ds in DATASETS for task in TASKS for k in range(len(OPTIONS))
         for command in ("train", "sweep")
         # a sweep cell that applies runs a sweep: only those of the synthetic data (the rest are train's)
         if command == "train" or not OPTIONS[k][3](ds, task) or ds == "synthetic"]


@pytest.mark.parametrize("ds, task, k, command", CELLS)
def test_option_takes_effect_or_is_refused(tmp_path, mnist_dir, ds, task, k, command):
    opt, value, extra, applies = OPTIONS[k]
    out = tmp_path / "out"
    rate = [] if "--lr-policy" in extra else ["--lr", "0.001"]          # small: mnist autoencoder
    args = _with(_base(ds, task, mnist_dir, command) + rate + extra, opt, value) + ["--out", str(out)]
    res = CliRunner().invoke(cli.cli, args)
    if applies(ds, task):
        assert res.exit_code == 0, res.output
        got = _recorded(out, command)[opt.lstrip("-").replace("-", "_")]
        assert got == type(got)(value), (opt, got)
    else:
        line = one_line_error(res)
        assert res.exit_code == 2 and opt.lstrip("-").split("-")[0] in line, line
        assert not out.exists()


@pytest.mark.parametrize("ds, task, per_width", [(ds, task, pw) for ds in DATASETS for task in TASKS
                                                 for pw in (False, True) if not pw or task == "default"])
def test_config_json_never_records_an_unused_option(tmp_path, mnist_dir, ds, task, per_width):
    out = tmp_path / "out"
    extra = ["--lr-policy", "per-width", "--lr-probe-steps", "2"] if per_width else ["--lr", "0.001"]
    res = CliRunner().invoke(cli.cli, _base(ds, task, mnist_dir, "train") + extra + ["--out", str(out)])
    assert res.exit_code == 0, res.output
    cfg = _recorded(out, "train")
    for name, applies in SOMETIMES.items():
        if name == "lr_probe_steps" and per_width:
            assert cfg[name] == 2
        elif applies(ds, task, per_width):
            assert cfg[name] is not None, name
        else:
            assert cfg[name] is None, (name, cfg[name])


def test_sweep_records_no_unused_option(tmp_path, mnist_dir):
    out = tmp_path / "sw"
    res = CliRunner().invoke(cli.cli, _base("synthetic", "autoencoder", mnist_dir, "sweep") + ["--lr", "0.01", "--out",
                                                                                                str(out)])
    assert res.exit_code == 0, res.output
    cfg = _recorded(out, "sweep")
    assert cfg["dr"] is None and cfg["latent_dim"] is None and cfg["lr_fraction"] is None
    run = json.loads((out / "width-2" / "config.json").read_text())["config"]
    assert run["dr"] is None and run["latent_dim"] is None
