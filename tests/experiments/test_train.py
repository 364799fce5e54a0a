"""The shared training driver (experiments/train.py) and `cli.py train`: run directories, resume, errors."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from clihelpers import one_line_error
from experiments.fileio import load_npz
from experiments.loop import batch_indices
from experiments.train import TrainConfig, TrainError, train

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


# ------------------------------------------------------------------- reliability: each reproduces a past failure

def _files(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def _same_arrays(a, b):
    sa, sb = load_npz(a / "checkpoint.npz"), load_npz(b / "checkpoint.npz")
    assert set(sa) == set(sb)
    for key in sa:
        if key != "driver_wall_s":
            assert np.array_equal(sa[key], sb[key]), key


def test_good_checkpoint_means_finite_state_and_finite_loss(tmp_path):
    # --lr 1000 with a checkpoint every step: the step-5 state (A ~ 1e122, loss inf) was called good
    cfg = TrainConfig(steps=60, **dict(SMALL, lr=1000.0, eval_every=50, checkpoint_every=1))
    with pytest.raises(TrainError, match="diverged") as err:
        train(cfg, tmp_path / "run", log=lambda m: None)
    state = load_npz(tmp_path / "run" / "checkpoint.npz")
    loss = float(state["driver_train_loss"])
    assert np.isfinite(loss) and all(np.all(np.isfinite(v)) for v in state.values())
    assert f"step {int(state['t'])}," in str(err.value) and f"{loss:.4g}" in str(err.value)
    assert int(state["t"]) < 60


def test_kill_before_first_checkpoint_resumes_from_step_0(tmp_path):
    ref = train(TrainConfig(steps=12, **SMALL), tmp_path / "ref", log=lambda m: None)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes((ref / "config.json").read_bytes())     # as a kill leaves it
    said = []
    train(TrainConfig(steps=None), run, resume=True, log=said.append)
    assert "from step 0" in said[-1]
    _same_arrays(run, ref)
    assert _rows(run) and [r["step"] for r in _rows(run)] == [r["step"] for r in _rows(ref)]


def test_interrupt_before_the_first_step_leaves_nothing(tmp_path, monkeypatch):
    from refimpl import BottleneckSimulator

    def interrupted(self, idx):
        raise KeyboardInterrupt
    monkeypatch.setattr(BottleneckSimulator, "step", interrupted)
    with pytest.raises(TrainError, match="nothing was written"):
        train(TrainConfig(steps=12, **SMALL), tmp_path / "run", log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_resume_at_step_0_checkpoint_has_one_step_0_row(tmp_path, monkeypatch):
    from experiments.runfolder import LOCK_FILE
    ref = train(TrainConfig(steps=12, **SMALL), tmp_path / "ref", log=lambda m: None)
    run = tmp_path / "run"
    calls = {"n": 0}
    real_step = None

    def dying_step(self, idx):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt            # after the first step: run committed, checkpoint at step 0
        return real_step(self, idx)
    from refimpl import BottleneckSimulator
    real_step = BottleneckSimulator.step
    monkeypatch.setattr(BottleneckSimulator, "step", dying_step)
    with pytest.raises(TrainError, match=f"--resume {run}"):        # the real path, not a placeholder
        train(TrainConfig(steps=12, **SMALL), run, log=lambda m: None)
    monkeypatch.setattr(BottleneckSimulator, "step", real_step)
    assert int(load_npz(run / "checkpoint.npz")["t"]) == 0
    train(TrainConfig(steps=None), run, resume=True, log=lambda m: None)
    steps = [r["step"] for r in _rows(run)]
    assert steps.count("0") == 1 and steps == [r["step"] for r in _rows(ref)]
    _same_arrays(run, ref)
    assert LOCK_FILE not in _files(run)


def test_failure_at_the_first_step_leaves_nothing(tmp_path, monkeypatch):
    from refimpl import BottleneckSimulator

    def broken(self, idx):
        raise RuntimeError("kernel launch failed")
    monkeypatch.setattr(BottleneckSimulator, "step", broken)
    with pytest.raises(RuntimeError):
        train(TrainConfig(steps=5, **SMALL), tmp_path / "a" / "b" / "run", log=lambda m: None)
    assert list(tmp_path.iterdir()) == []               # not even the parents it made
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError):
        train(TrainConfig(steps=5, **SMALL), tmp_path / "empty", log=lambda m: None)
    assert list((tmp_path / "empty").iterdir()) == []   # the user's empty folder stays, empty


def test_force_keeps_the_old_run_until_the_new_one_has_stepped(tmp_path, monkeypatch):
    out = train(TrainConfig(steps=6, **SMALL), tmp_path / "run", log=lambda m: None)
    (out / "notes.txt").write_text("mine")
    before = _files(out)
    # too big for memory: refused before anything is touched (it used to delete the old run first)
    with pytest.raises(TrainError, match="memory"):
        train(TrainConfig(steps=6, **dict(SMALL, width=100_000_000)), out, force=True, log=lambda m: None)
    assert _files(out) == before
    # the first step fails (a GPU kernel, say): the old run is still there, no staging folder left
    from refimpl import BottleneckSimulator
    from refimpl.dynamics import DivergenceError
    real = BottleneckSimulator.step
    for exc in (RuntimeError("kernel launch failed"), DivergenceError("loss is nan at step 0")):
        def broken(self, idx, exc=exc):
            raise exc
        monkeypatch.setattr(BottleneckSimulator, "step", broken)
        with pytest.raises((RuntimeError, TrainError)):
            train(TrainConfig(steps=6, **SMALL), out, force=True, log=lambda m: None)
        assert _files(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    monkeypatch.setattr(BottleneckSimulator, "step", real)
    # succeeds: replaced, and the user's other file moves into the new run
    train(TrainConfig(steps=4, **SMALL), out, force=True, log=lambda m: None)
    assert _rows(out)[-1]["step"] == "4" and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_memory_error_during_setup_leaves_nothing(tmp_path, monkeypatch):
    import experiments.train as T

    def oom(*a, **k):
        raise MemoryError
    monkeypatch.setattr(T, "build_simulator", oom)
    with pytest.raises(TrainError, match="memory"):
        train(TrainConfig(steps=4, **SMALL), tmp_path / "run", log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_files_are_removed_on_resume(tmp_path):
    out = train(TrainConfig(steps=6, **SMALL), tmp_path / "run", log=lambda m: None)
    for name in (".checkpoint.npz.abc123.tmp", ".metrics.csv.x.tmp", ".config.json.y.tmp"):
        (out / name).write_bytes(b"half")
    said = []
    train(TrainConfig(steps=9), out, resume=True, log=said.append)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert any("temporary" in m for m in said)


def test_failed_resume_rewrites_nothing(tmp_path):
    out = train(TrainConfig(steps=6, **SMALL), tmp_path / "run", log=lambda m: None)
    before = _files(out)
    with pytest.raises(TrainError, match="batch_size|data"):
        cfg = json.loads((out / "config.json").read_text())
        cfg["data"]["n_train"] = 999                            # the data found differ from the run's
        (out / "config.json").write_text(json.dumps(cfg))
        before = _files(out)
        train(TrainConfig(steps=20), out, resume=True, log=lambda m: None)
    assert _files(out) == before


def test_live_lock_is_honoured_and_stale_lock_taken_over(tmp_path):
    import os
    import socket
    from experiments.runfolder import LOCK_FILE
    out = train(TrainConfig(steps=4, **SMALL), tmp_path / "run", log=lambda m: None)
    (out / LOCK_FILE).write_text(f"{os.getppid()} None {socket.gethostname()}\n")
    with pytest.raises(TrainError, match="in use by process"):
        train(TrainConfig(steps=8), out, resume=True, log=lambda m: None)
    (out / LOCK_FILE).write_text(f"{2 ** 22 + 12345} None {socket.gethostname()}\n")   # no such process
    train(TrainConfig(steps=8), out, resume=True, log=lambda m: None)
    assert _rows(out)[-1]["step"] == "8" and not (out / LOCK_FILE).exists()


def test_config_digest_is_generic_over_fields():
    from experiments.runfolder import config_digest
    base = {"width": 3, "lr": 1.0, "steps": 10, "data_dir": "/a"}
    assert config_digest(base) == config_digest(dict(base, steps=99, data_dir="/b"))   # resume may change
    assert config_digest(base) != config_digest(dict(base, lr=2.0))
    assert config_digest(base) != config_digest(dict(base, some_new_option="x"))       # new fields count


@pytest.mark.parametrize("data", [dict(dataset="multi-index", d0=6, latent_dim=2),
                                  dict(dataset="manifold", d0=5, latent_dim=2, task="autoencoder")])
def test_generated_data_sets_resume_bit_exact(tmp_path, data):
    """A multi-index or manifold run stopped part-way resumes on the same data (its d0 and k come
    back from config.json) and ends where an uninterrupted run ends."""
    cfg = dict(SMALL, **data)
    cfg.pop("dr")
    a = train(TrainConfig(steps=12, **cfg), tmp_path / "a", log=lambda m: None)
    train(TrainConfig(steps=25), a, resume=True, log=lambda m: None)
    b = train(TrainConfig(steps=25, **cfg), tmp_path / "b", log=lambda m: None)
    sa, sb = load_npz(a / "checkpoint.npz"), load_npz(b / "checkpoint.npz")
    for key in sa:
        if key != "driver_wall_s":
            assert np.array_equal(sa[key], sb[key]), key
    assert json.loads((a / "config.json").read_text())["data"] == json.loads((b / "config.json").read_text())["data"]


# ---------------------------------------------------------------------------- schedules and momentum (MATH §8)

@pytest.mark.parametrize("width, opt", [(3, dict(momentum=0.9, nesterov=True, lr_schedule="cosine:40")),
                                        ("inf", dict(momentum=0.8, lr_schedule="step:10:0.5")),
                                        (3, dict(chain=[2], momentum=0.7, lr_schedule="warmup:5"))])
def test_momentum_and_schedule_resume_bit_exact(tmp_path, width, opt):
    """A run with momentum and a schedule stopped at step 23 and resumed to 40 equals the straight run (the
    velocities and the history's weights are in the checkpoint), and it differs from plain SGD."""
    cfg = dict(SMALL, width=width, lr=0.2, **opt)
    a = train(TrainConfig(steps=23, **cfg), tmp_path / "a", log=lambda m: None)
    train(TrainConfig(steps=40), a, resume=True, log=lambda m: None)
    b = train(TrainConfig(steps=40, **cfg), tmp_path / "b", log=lambda m: None)
    plain = train(TrainConfig(steps=40, **dict(SMALL, width=width, lr=0.2, chain=opt.get("chain"))), tmp_path / "p",
                  log=lambda m: None)
    sa, sb = load_npz(a / "checkpoint.npz"), load_npz(b / "checkpoint.npz")
    assert set(sa) == set(sb) and "velocity_A" in sa
    for key in sa:
        if key != "driver_wall_s":
            assert np.array_equal(sa[key], sb[key]), key
    strip = [[(r["step"], r["train_loss"], r["test_loss"]) for r in _rows(p)] for p in (a, b, plain)]
    assert strip[0] == strip[1] and strip[0][-1] != strip[2][-1]
    saved = json.loads((a / "config.json").read_text())["config"]
    assert {k: saved[k] for k in opt} == opt


def test_cli_records_the_optimiser_and_cosine_keeps_its_horizon(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(cli.cli, ["train", *ARGS, "--steps", "12", "--out", str(out), "--lr-schedule", "cosine",
                                       "--momentum", "0.5", "--nesterov", "--lr", "0.3", "-q"])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "config.json").read_text())["config"]
    assert (saved["lr_schedule"], saved["momentum"], saved["nesterov"]) == ("cosine:12", 0.5, True)
    res = CliRunner().invoke(cli.cli, ["train", "--resume", str(out), "--steps", "15", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["config"]["lr_schedule"] == "cosine:12"
    assert _rows(out)[-1]["step"] == "15"


@pytest.mark.parametrize("extra, word", [
    (["--lr-schedule", "linear"], "--lr-schedule"), (["--lr-schedule", "step:0:0.5"], "--lr-schedule"),
    (["--lr-schedule", "warmup:x"], "--lr-schedule"), (["--momentum", "1"], "--momentum"),
    (["--momentum", "-0.1"], "--momentum"), (["--momentum", "abc"], "--momentum"),
])
def test_cli_bad_optimiser_one_line(tmp_path, extra, word):
    res = CliRunner().invoke(cli.cli, ["train", *ARGS, "--out", str(tmp_path / "r"), *extra])
    assert word in one_line_error(res)
