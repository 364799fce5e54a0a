"""The shared training driver (experiments/train.py) and `cli.py train`: run directories, resume, errors."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from clihelpers import one_line_error
from experiments.train import TrainConfig, TrainError, batch_indices, load_npz, train

SMALL = dict(train_size=120, test_size=40, d0=4, dr=2, width=3, init_width=400, batch_size=10,
             eval_every=7, eval_size=60, lr=1.0)


def _rows(path):
    with open(path / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_directory_contents(tmp_path):
    out = train(TrainConfig(steps=20, **SMALL), tmp_path / "run", progress=None, log=lambda m: None)
    for name in ("config.json", "metrics.csv", "checkpoint.npz", "loss.png", "summary.json"):
        assert (out / name).is_file(), name
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["step", "train_loss", "test_loss", "wall_s"]
    steps = [int(r["step"]) for r in _rows(out)]
    assert steps == [0, 7, 14, 20]            # step 0, every eval_every, and the last step
    losses = [float(r["train_loss"]) for r in _rows(out)]
    assert losses[-1] < losses[0]              # it learns
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["width"] == 3 and cfg["data"]["n_train"] == 120
    with np.load(out / "checkpoint.npz", allow_pickle=False) as z:
        assert int(z["t"]) == 20


@pytest.mark.parametrize("width", [3, "inf"])
def test_resume_is_bit_exact(tmp_path, width):
    cfg = dict(SMALL, width=width)
    a = train(TrainConfig(steps=23, **cfg), tmp_path / "a", log=lambda m: None)
    train(TrainConfig(steps=40), a, resume=True, log=lambda m: None)          # longer than before
    b = train(TrainConfig(steps=40, **cfg), tmp_path / "b", log=lambda m: None)
    sa, sb = load_npz(a / "checkpoint.npz"), load_npz(b / "checkpoint.npz")
    assert set(sa) == set(sb)
    for key in sa:
        if key != "driver_wall_s":
            assert np.array_equal(sa[key], sb[key]), key
    strip = [[(r["step"], r["train_loss"], r["test_loss"]) for r in _rows(p)] for p in (a, b)]
    assert strip[0] == strip[1]


def test_resume_to_fewer_steps_is_refused_and_changes_nothing(tmp_path):
    out = train(TrainConfig(steps=10, **SMALL), tmp_path / "run", log=lambda m: None)
    before = {f: (out / f).read_bytes() for f in ("config.json", "metrics.csv", "checkpoint.npz")}
    with pytest.raises(TrainError, match="steps"):
        train(TrainConfig(steps=5), out, resume=True, log=lambda m: None)
    said = []
    train(TrainConfig(steps=10), out, resume=True, log=said.append)       # already there: nothing to do
    assert said and "nothing to do" in said[0]
    assert before == {f: (out / f).read_bytes() for f in before}


def test_refuses_to_overwrite_without_force(tmp_path):
    out = train(TrainConfig(steps=3, **SMALL), tmp_path / "run", log=lambda m: None)
    with pytest.raises(TrainError, match="--force"):
        train(TrainConfig(steps=3, **SMALL), out, log=lambda m: None)
    train(TrainConfig(steps=5, **SMALL), out, force=True, log=lambda m: None)
    assert _rows(out)[-1]["step"] == "5"


def test_divergence_keeps_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(steps=60, **dict(SMALL, lr=1e7, eval_every=1, checkpoint_every=1))
    with pytest.raises(TrainError, match="diverged") as err:
        train(cfg, tmp_path / "run", log=lambda m: None)
    assert "checkpoint" in str(err.value) and "\n" not in str(err.value)
    state = load_npz(tmp_path / "run" / "checkpoint.npz")
    for key, arr in state.items():
        assert np.all(np.isfinite(arr)), key


def test_bad_input_leaves_no_run_directory(tmp_path):
    with pytest.raises(TrainError, match="batch_size"):
        train(TrainConfig(steps=2, **dict(SMALL, batch_size=500)), tmp_path / "run", log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_batches_are_a_function_of_seed_and_step():
    n, B = 53, 10
    first = [batch_indices(4, t, n, B) for t in range(5)]
    again = [batch_indices(4, t, n, B) for t in range(5)]
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    epoch = np.concatenate(first)                      # one epoch: distinct rows
    assert len(np.unique(epoch)) == 50
    assert not np.array_equal(batch_indices(5, 0, n, B), first[0])


@pytest.mark.parametrize("bad, key", [
    (dict(width=0), "width"), (dict(lr=-1.0), "lr"), (dict(batch_size=0), "batch_size"),
    (dict(backend="tpu"), "backend"), (dict(dataset="imagenet"), "dataset"),
])
def test_bad_config_names_the_option(tmp_path, bad, key):
    with pytest.raises(TrainError, match=key):
        train(TrainConfig(steps=2, **dict(SMALL, **bad)), tmp_path / "run", log=lambda m: None)


# ------------------------------------------------------------------------------------------ CLI

ARGS = ["--train-size", "120", "--test-size", "40", "--d0", "4", "--dr", "2", "--width", "3",
        "--init-width", "400", "--batch-size", "10", "--eval-every", "5", "-q"]


def test_cli_train_and_resume(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(cli.cli, ["train", *ARGS, "--steps", "10", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "run directory" in res.output
    res = runner.invoke(cli.cli, ["train", "--resume", str(out), "--steps", "15", "-q"])
    assert res.exit_code == 0, res.output
    assert _rows(out)[-1]["step"] == "15"


@pytest.mark.parametrize("extra, word", [
    (["--width", "-3"], "--width"), (["--width", "abc"], "--width"), (["--lr", "0"], "--lr"),
    (["--backend", "tpu"], "--backend"), (["--steps", "-1"], "--steps"),
])
def test_cli_bad_input_one_line(tmp_path, extra, word):
    res = CliRunner().invoke(cli.cli, ["train", *ARGS, "--out", str(tmp_path / "r"), *extra])
    assert word in one_line_error(res)


def test_cli_existing_run_needs_force(tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "run")
    assert runner.invoke(cli.cli, ["train", *ARGS, "--steps", "2", "--out", out]).exit_code == 0
    line = one_line_error(runner.invoke(cli.cli, ["train", *ARGS, "--steps", "2", "--out", out]))
    assert "--force" in line
    assert runner.invoke(cli.cli, ["train", *ARGS, "--steps", "2", "--out", out, "--force"]).exit_code == 0


def test_cli_divergence_message(tmp_path):
    res = CliRunner().invoke(cli.cli, ["train", *ARGS, "--steps", "40", "--lr", "1e7",
                                       "--out", str(tmp_path / "r")])
    assert "diverged" in one_line_error(res)
