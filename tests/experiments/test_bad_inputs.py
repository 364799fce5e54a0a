"""Bad input, as a table: every case must end in one clear line and a non-zero exit, write nothing
(no run or sweep directory, no partial file), and never show a traceback or advise unpickling.

Covers: every numeric option of train and sweep at 0, negative, nan, inf, text, empty and absurdly
large; damaged MNIST / CIFAR-10 files; damaged or edited run and sweep directories; wrong library calls.
"""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from clihelpers import one_line_error
from experiments import data as datamod
from experiments.fileio import load_npz, save_npz
from experiments.runfolder import digest_array, state_digest
from experiments.train import TrainConfig, train

TINY = ["--train-size", "60", "--test-size", "20", "--d0", "3", "--width", "2", "--init-width", "100",
        "--batch-size", "10", "--eval-every", "4", "--eval-size", "60", "--steps", "8", "-q"]
SWEEP_TINY = ["--train-size", "40", "--test-size", "20", "--d0", "3", "--init-width", "100", "--batch-size", "10",
              "--eval-every", "4", "--steps", "8", "--widths", "2", "--no-plot", "-j", "1"]
HUGE = "1" + "0" * 30


def _invoke(args):
    return CliRunner().invoke(cli.cli, args)


def _fails_cleanly(res, *words):
    line = one_line_error(res)
    assert "pickle" not in line and "Traceback" not in res.output
    for w in words:
        assert w.lower() in line.lower(), (w, line)
    return line


# ------------------------------------------------------------------------- numeric options of train and sweep

TRAIN_INT = ["--train-size", "--test-size", "--width", "--steps", "--batch-size", "--init-width", "--eval-every",
             "--eval-size", "--checkpoint-every", "--d0", "--dr"]
TRAIN_FLOAT = ["--lr", "--lr-f", "--lr-g"]
BAD_VALUES = ["0", "-1", "nan", "inf", "abc", ""]
#: integer options whose absurdly large value cannot fit in memory (the others, e.g. --eval-every, are fine)
TRAIN_HUGE = ["--train-size", "--test-size", "--width", "--steps", "--init-width", "--d0", "--dr", "--batch-size"]


def _numeric_cases():
    cases = []
    for opt in TRAIN_INT + TRAIN_FLOAT:
        for val in BAD_VALUES:
            if opt == "--width" and val == "inf":
                continue                                # 'inf' is the network without bottleneck
            if opt in TRAIN_FLOAT and val == "0":
                pass
            cases.append((opt, val))
    cases += [("--seed", v) for v in ("-1", "nan", "abc", "")]
    cases += [(opt, HUGE) for opt in TRAIN_HUGE] + [("--lr", "1e400")]
    return cases


@pytest.mark.parametrize("opt, val", _numeric_cases())
def test_train_bad_numbers(tmp_path, opt, val):
    out = tmp_path / "run"
    args = ["train", *TINY]
    if opt in args:                                  # replace the TINY value
        i = args.index(opt)
        args[i + 1] = val
    else:
        args += [opt, val]
    res = _invoke(args + ["--out", str(out)])
    _fails_cleanly(res)
    assert not out.exists() and list(tmp_path.iterdir()) == []        # nothing written


@pytest.mark.parametrize("opt, val", [(o, v) for o in ("--steps", "--batch-size", "--lr", "--jobs", "--eval-every")
                                      for v in ("0", "-1", "nan", "abc", "")]
                         + [("--widths", v) for v in ("0", "-3", "abc", "", "3,3", "nan")]
                         + [("--seeds", v) for v in ("-1", "abc", "", "1,1", "nan")]
                         + [("--steps", HUGE), ("--train-size", HUGE), ("--init-width", HUGE)])
def test_sweep_bad_numbers(tmp_path, opt, val):
    out = tmp_path / "sw"
    args = ["sweep", *SWEEP_TINY]
    if opt in args:
        args[args.index(opt) + 1] = val
    else:
        args += [opt, val]
    _fails_cleanly(_invoke(args + ["--out", str(out)]))
    assert not out.exists()


@pytest.mark.parametrize("address", ["notanaddress", ""])
def test_sweep_bad_scheduler_writes_nothing(tmp_path, address):
    out = tmp_path / "sw"
    args = ["sweep", *SWEEP_TINY, "--scheduler", address, "--out", str(out)]
    _fails_cleanly(_invoke(args), "scheduler")
    assert not out.exists()
    _fails_cleanly(_invoke(args), "scheduler")          # the same command: same error, not 'use --force'


@pytest.mark.parametrize("args, words", [
    (["--out", ""], ["out"]),
    (["--dataset", "mnist", "--d0", "5"], ["d0", "784"]),
    (["--dataset", "mnist", "--dr", "3"], ["dr", "10"]),
])
def test_train_silent_acceptances_are_refused(tmp_path, monkeypatch, args, words):
    from test_data import make_mnist
    make_mnist(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    base = [a for a in TINY if a not in ("--d0", "3")]
    res = _invoke(["train", *base, "--data-dir", str(tmp_path / "data"), *args]
                  + ([] if "--out" in args else ["--out", "run"]))
    _fails_cleanly(res, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_mnist_defaults_do_not_record_synthetic_dims(tmp_path):
    from test_data import make_mnist
    make_mnist(tmp_path / "data")
    res = _invoke(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--train-size", "20",
                   "--test-size", "10", "--width", "2", "--init-width", "100", "--steps", "2", "--batch-size", "5",
                   "-q", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["config"]["d0"] is None and cfg["config"]["dr"] is None and cfg["data"]["d0"] == 784
    assert cfg["config"]["data_dir"] == str((tmp_path / "data").resolve())


# ------------------------------------------------------------------------------------ damaged data files

def _mnist_case(root, case):
    from test_data import idx_bytes, make_mnist, write
    make_mnist(root, gz=False)
    img = root / "mnist" / datamod.MNIST_FILES["train"][0]
    raw = img.read_bytes()
    if case == "wrong magic (valid idx type, 4 dims)":
        img.write_bytes(raw[:3] + b"\x04" + raw[4:])
    elif case == "labels magic in the images file":
        img.write_bytes((0x00000801).to_bytes(4, "big") + raw[4:])
    elif case == "truncated":
        img.write_bytes(raw[:len(raw) // 2])
    elif case == "random bytes":
        img.write_bytes(np.random.default_rng(0).bytes(5000))
    elif case == "empty":
        img.write_bytes(b"")
    elif case == "float pixels":
        write(img, idx_bytes(np.zeros((60, 28, 28), dtype=np.float32)))


@pytest.mark.parametrize("case, word", [("wrong magic (valid idx type, 4 dims)", "magic"),
                                        ("labels magic in the images file", "magic"),
                                        ("truncated", "truncated"), ("random bytes", "magic"),
                                        ("empty", "truncated"), ("float pixels", "magic")])
def test_damaged_mnist(tmp_path, case, word):
    _mnist_case(tmp_path / "data", case)
    res = _invoke(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--train-size", "20",
                   "--test-size", "10", "-q", "--out", str(tmp_path / "run")])
    line = _fails_cleanly(res, word)
    assert datamod.MNIST_FILES["train"][0] in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case, word", [("10001 records", "10,000"), ("unequal training files", "records"),
                                        ("half a record", "record size"), ("label 10", "label")])
def test_damaged_cifar(tmp_path, case, word):
    from test_data import cifar_bytes, make_cifar
    make_cifar(tmp_path / "data")
    folder = tmp_path / "data" / "cifar-10-batches-bin"
    first = folder / datamod.CIFAR_TRAIN_FILES[0]
    if case == "10001 records":
        n = 10_001
        (folder / datamod.CIFAR_TEST_FILE).write_bytes(
            cifar_bytes(np.zeros((n, 3, 32, 32), np.uint8), np.arange(n) % 10))
    elif case == "unequal training files":
        first.write_bytes(first.read_bytes()[:-3073])
    elif case == "half a record":
        first.write_bytes(first.read_bytes()[:-1500])
    elif case == "label 10":
        raw = bytearray(first.read_bytes())
        raw[0] = 10
        first.write_bytes(bytes(raw))
    res = _invoke(["train", "--dataset", "cifar", "--data-dir", str(tmp_path / "data"), "-q",
                   "--out", str(tmp_path / "run")])
    _fails_cleanly(res, word)
    assert not (tmp_path / "run").exists()


# -------------------------------------------------------------------------- damaged run directories (resume)

@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    res = _invoke(["train", *TINY, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def _edit_config(run, **changes):
    cfg = json.loads((run / "config.json").read_text())
    for k, v in changes.items():
        if v is KeyError:
            del cfg["config"][k]
        else:
            cfg["config"][k] = v
    (run / "config.json").write_text(json.dumps(cfg))


def _edit_state(run, rehash=False, **changes):
    state = load_npz(run / "checkpoint.npz")
    for k, fn in changes.items():
        state[k] = fn(state[k])
    if rehash:
        state["driver_state_sha256"] = digest_array(state_digest(state))
    save_npz(run / "checkpoint.npz", state)


def _damage(run, case):
    ck, me, cf = run / "checkpoint.npz", run / "metrics.csv", run / "config.json"
    if case == "width edited to inf":
        _edit_config(run, width="inf")
    elif case == "width edited to 20":
        _edit_config(run, width=20)
    elif case == "lr edited":
        _edit_config(run, lr=3.0)
    elif case == "seed edited":
        _edit_config(run, seed=5)
    elif case == "config key missing":
        _edit_config(run, width=KeyError)
    elif case == "config invalid JSON":
        cf.write_text('{"config": {')
    elif case == "config not an object":
        cf.write_text("[1, 2]")
    elif case == "config binary":
        cf.write_bytes(b"\xff\xfe\x00garbage")
    elif case == "config option of wrong type":
        _edit_config(run, eval_every="often")
    elif case == "checkpoint t changed":
        _edit_state(run, t=lambda t: t - 1)
    elif case == "checkpoint A NaN":
        _edit_state(run, A=lambda a: a * np.nan)
    elif case == "checkpoint A NaN, digest recomputed":
        _edit_state(run, rehash=True, A=lambda a: a * np.nan)
    elif case == "checkpoint A wrong shape, digest recomputed":
        _edit_state(run, rehash=True, A=lambda a: a[:-1])
    elif case == "checkpoint random bytes":
        ck.write_bytes(np.random.default_rng(1).bytes(4000))
    elif case == "checkpoint truncated":
        ck.write_bytes(ck.read_bytes()[:700])
    elif case == "checkpoint is a pickle":
        ck.write_bytes(b"\x80\x04\x95" + b"\x00" * 50)
    elif case == "metrics truncated":
        me.write_bytes(me.read_bytes()[:-30])
    elif case == "metrics deleted":
        me.unlink()
    elif case == "metrics binary":
        me.write_bytes(b"\xff\xfe\xfa" * 40)
    elif case == "metrics row removed":
        lines = me.read_text().splitlines(keepends=True)
        me.write_text("".join(lines[:2] + lines[3:]))
    elif case == "checkpoint deleted, metrics kept":
        ck.unlink()
    elif case == "metrics NaN row":
        lines = me.read_text().splitlines(keepends=True)
        f = lines[2].split(",")
        f[1] = "nan"
        lines[2] = ",".join(f)
        me.write_text("".join(lines))
    elif case == "metrics loss edited":
        lines = me.read_text().splitlines(keepends=True)
        f = lines[2].split(",")
        f[1] = repr(float(f[1]) * 0.5)
        lines[2] = ",".join(f)
        me.write_text("".join(lines))
    elif case == "digests deleted, activation edited":
        state = load_npz(ck)
        save_npz(ck, {k: v for k, v in state.items() if not k.endswith("sha256")})
        _edit_config(run, activation="erf")
    elif case == "out_std edited":
        _edit_config(run, out_std=0.5)
    elif case == "checkpoint header claims 1e11 floats":
        import io, zipfile
        state = load_npz(ck)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for k, v in state.items():
                with zf.open(f"{k}.npy", "w") as fh:
                    if k == "history_P":
                        np.lib.format.write_array_header_1_0(
                            fh, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 11, 2)})
                        fh.write(b"\0" * 30_000)
                    else:
                        np.lib.format.write_array(fh, v)
        ck.write_bytes(buf.getvalue())
    elif case == "metrics garbled row":
        lines = me.read_text().splitlines(keepends=True)
        lines[2] = "4,abc,0.1,0.2,,,0.1,0.2\n"
        me.write_text("".join(lines))


RUN_DAMAGE = [
    ("width edited to inf", "config.json"), ("width edited to 20", "config.json"), ("lr edited", "config.json"),
    ("seed edited", "config.json"), ("config key missing", "width"), ("config invalid JSON", "config.json"),
    ("config not an object", "config.json"), ("config binary", "config.json"),
    ("config option of wrong type", "eval_every"),
    ("checkpoint t changed", "checkpoint.npz"), ("checkpoint A NaN", "checkpoint.npz"),
    ("checkpoint A NaN, digest recomputed", "checkpoint.npz"),
    ("checkpoint A wrong shape, digest recomputed", "checkpoint.npz"),
    ("checkpoint random bytes", "checkpoint.npz"), ("checkpoint truncated", "checkpoint.npz"),
    ("checkpoint is a pickle", "checkpoint.npz"),
    ("metrics truncated", "metrics.csv"), ("metrics deleted", "metrics.csv"), ("metrics binary", "metrics.csv"),
    ("metrics row removed", "metrics.csv"), ("metrics garbled row", "metrics.csv"),
    ("checkpoint deleted, metrics kept", "checkpoint.npz: missing"), ("metrics NaN row", "metrics.csv"),
    ("metrics loss edited", "metrics.csv"), ("digests deleted, activation edited", "digest"),
    ("out_std edited", "config.json"), ("checkpoint header claims 1e11 floats", "shape"),
]


@pytest.mark.parametrize("case, word", RUN_DAMAGE)
def test_damaged_run_directory_is_refused_naming_the_file(tmp_path, base_run, case, word):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    _damage(run, case)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    res = _invoke(["train", "-q", "--resume", str(run), "--steps", "12"])
    _fails_cleanly(res, word)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before     # nothing rewritten


@pytest.mark.parametrize("opts", [["--lr", "3"], ["--width", "4"], ["--out", "x"], ["--force"], ["--seed", "2"],
                                  ["--backend", "numpy"], ["--eval-every", "3"]])
def test_resume_refuses_model_changing_options(tmp_path, base_run, opts):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    before = (run / "config.json").read_bytes()
    line = _fails_cleanly(_invoke(["train", "-q", "--resume", str(run), *opts]), opts[0], "--resume")
    assert "--steps" in line and "--data-dir" in line
    assert (run / "config.json").read_bytes() == before


def test_resume_from_elsewhere_with_new_data_dir_is_recorded(tmp_path, monkeypatch):
    from test_data import make_mnist
    make_mnist(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    args = ["--dataset", "mnist", "--data-dir", "data", "--train-size", "20", "--test-size", "10", "--width", "2",
            "--init-width", "100", "--steps", "4", "--batch-size", "5", "--eval-every", "2", "-q"]
    assert _invoke(["train", *args, "--out", "run"]).exit_code == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert cfg["data_dir"] == str((tmp_path / "data").resolve())              # absolute
    shutil.move(tmp_path / "data", tmp_path / "moved")
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _fails_cleanly(_invoke(["train", "-q", "--resume", "../run", "--steps", "6"]), "--data-dir")
    res = _invoke(["train", "-q", "--resume", "../run", "--steps", "6", "--data-dir", "../moved"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert cfg["data_dir"] == str((tmp_path / "moved").resolve()) and cfg["steps"] == 6


def test_run_in_use_is_refused(tmp_path, base_run):
    import os
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    (run / ".lock").write_text(f"{os.getppid()} None {__import__('socket').gethostname()}\n")   # a live process
    _fails_cleanly(_invoke(["train", "-q", "--resume", str(run), "--steps", "12"]), "in use", ".lock")
    _fails_cleanly(_invoke(["train", *TINY, "--force", "--out", str(run)]), "in use")


# ---------------------------------------------------------------------------------- damaged sweep directories

@pytest.mark.parametrize("case, word", [("invalid JSON", "sweep.json"), ("runs missing", "runs"),
                                        ("config missing", "config"), ("run without dir", "run record"),
                                        ("bad option", "sweep.json"), ("fewer steps", "steps"),
                                        ("width added", "run records"), ("widths empty", "sweep.json"),
                                        ("activation edited", "width-2/config.json"),
                                        ("rate NaN", "sweep.json"), ("run record removed", "run records")])
def test_damaged_sweep_is_refused(tmp_path, case, word):
    out = tmp_path / "sw"
    assert _invoke(["sweep", *SWEEP_TINY, "--out", str(out)]).exit_code == 0
    path = out / "sweep.json"
    rec = json.loads(path.read_text())
    extra = []
    if case == "invalid JSON":
        path.write_text("{'runs': ")
    elif case == "runs missing":
        del rec["runs"]
    elif case == "config missing":
        del rec["config"]
    elif case == "run without dir":
        del rec["runs"][0]["dir"]
    elif case == "bad option":
        rec["config"]["lr"] = -1
    elif case == "fewer steps":
        extra = ["--steps", "4"]
    elif case == "width added":
        rec["widths"].append(5)
    elif case == "widths empty":
        rec["widths"] = []
    elif case == "activation edited":
        rec["config"]["activation"] = "erf"
    elif case == "rate NaN":
        rec["runs"][0]["lr"] = float("nan")
    elif case == "run record removed":
        rec["runs"] = []
    if case != "invalid JSON":
        path.write_text(json.dumps(rec))
    before = path.read_bytes()
    _fails_cleanly(_invoke(["sweep", "--resume", str(out), *extra]), word)
    assert path.read_bytes() == before


@pytest.fixture(scope="module")
def per_width_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("pw") / "sw"
    args = [a for a in SWEEP_TINY if a != "2"]
    args[args.index("--widths") + 1] = "2,3"
    res = _invoke(["sweep", *args, "--lr-policy", "per-width", "--lr-probe-steps", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("case, word", [("probe invalid JSON", "lr_probe.json"), ("probe rate NaN", "lr_probe.json"),
                                        ("probe rate tiny", "lr_probe.json"),
                                        ("probe activation edited", "lr_probe.json"),
                                        ("probe entry not an object", "lr_probe.json"),
                                        ("sweep rate edited", "sweep.json"), ("policy edited", "sweep.json")])
def test_edited_per_width_sweep_is_refused_up_front(tmp_path, per_width_sweep, case, word):
    out = tmp_path / "sw"
    shutil.copytree(per_width_sweep, out)
    probe, sweep = out / "lr_probe.json", out / "sweep.json"
    p, rec = json.loads(probe.read_text()), json.loads(sweep.read_text())
    if case == "probe invalid JSON":
        probe.write_text('{"widths": ')
    elif case == "probe rate NaN":
        p["widths"]["2"]["lr"] = float("nan")
    elif case == "probe rate tiny":
        p["widths"]["2"]["lr"] = 1e-300
    elif case == "probe activation edited":
        p["options"]["activation"] = "erf"
    elif case == "probe entry not an object":
        p["widths"]["2"] = [1, 2]
    elif case == "sweep rate edited":
        rec["runs"][0]["lr"] = rec["runs"][0]["lr"] / 2
    elif case == "policy edited":
        rec["config"]["lr_policy"] = "fixed"
    if case.startswith("probe") and case != "probe invalid JSON":
        probe.write_text(json.dumps(p))
    elif not case.startswith("probe"):
        sweep.write_text(json.dumps(rec))
    before = {f: (out / f).read_bytes() for f in ("lr_probe.json", "sweep.json", "width-2/metrics.csv")}
    _fails_cleanly(_invoke(["sweep", "--resume", str(out), "--steps", "12"]), word)
    assert {f: (out / f).read_bytes() for f in before} == before


# -------------------------------------------------------------------------------------- library calls

def _sim(**kw):
    from refimpl import BottleneckSimulator
    from refimpl.network import RandomNetwork
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((8, 3)), rng.standard_normal((8, 1))
    net = RandomNetwork.sample(3, 2, 1, width=50, seed=0)
    return BottleneckSimulator(net, kw.get("X", X), kw.get("Y", Y))


@pytest.mark.parametrize("call, word", [
    (lambda: _sim(X=np.zeros((0, 3)), Y=np.zeros((0, 1))), "at least one"),
    (lambda: _sim(X=np.ones((8, 3)) * 1j), "complex"),
    (lambda: _sim(Y=np.ones((8, 1)) + 1j), "complex"),
    (lambda: __import__("refimpl").kernels.ntk(np.ones((2, 3)) + 0j, np.ones((2, 3))), "complex"),
    (lambda: __import__("refimpl").kernels.nngp(np.ones((2, 3)), np.ones((2, 3)) * 1j), "complex"),
    (lambda: _sim().load_state_dict({**_sim().state_dict(), "A": np.zeros((7, 2))}), "shape"),
    (lambda: _sim().load_state_dict({**_sim().state_dict(), "history_P": np.zeros((3, 2))}), "shape"),
    (lambda: _sim().load_state_dict({**_sim().state_dict(), "tracked_0": np.zeros((8, 5))}), "shape"),
    (lambda: _sim().load_state_dict({**_sim().state_dict(), "A": np.full((8, 2), np.nan)}), "finite"),
    (lambda: _sim().load_state_dict({**_sim().state_dict(), "t": np.array(-1)}), "t"),
    (lambda: _sim().load_state_dict({**_sim().state_dict(), "t": np.array(5)}), "history"),
])
def test_library_refuses_with_one_line_value_error(call, word):
    with pytest.raises(ValueError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg and word in msg, msg


def test_library_infinite_simulator_state_shapes():
    from refimpl import InfiniteSimulator
    rng = np.random.default_rng(0)
    sim = InfiniteSimulator(rng.standard_normal((6, 2)), rng.standard_normal((6, 1)))
    with pytest.raises(ValueError, match="shape"):
        sim.load_state_dict({**sim.state_dict(), "A": np.zeros((6, 3))})
    with pytest.raises(ValueError, match="at least one"):
        InfiniteSimulator(np.zeros((0, 2)), np.zeros((0, 1)))


def test_library_train_with_bad_out(tmp_path):
    from experiments.train import TrainError
    with pytest.raises(TrainError, match="out"):
        train(TrainConfig(steps=2), "", log=lambda m: None)


@pytest.mark.parametrize("lr, every", [("20", "4"), ("6", "1")])
def test_divergence_keeps_a_checkpoint_a_user_calls_good(tmp_path, lr, every):
    """A finite but huge training loss is divergence too: the kept checkpoint's loss is at most
    GOOD_LOSS_FACTOR times the initial loss, and the message gives the step where it diverged."""
    import re
    from experiments.train import GOOD_LOSS_FACTOR
    out = tmp_path / "run"
    res = _invoke(["train", *TINY, "--steps", "60", "--lr", lr, "--checkpoint-every", every, "--out", str(out)])
    line = _fails_cleanly(res, "diverged", "last good checkpoint")
    assert res.exit_code == 1
    step = int(re.search(r"at step (\d+)", line).group(1))
    state = load_npz(out / "checkpoint.npz")
    initial = float((out / "metrics.csv").read_text().splitlines()[1].split(",")[1])
    assert int(state["t"]) < step
    assert np.isfinite(state["driver_train_loss"]) and float(state["driver_train_loss"]) <= GOOD_LOSS_FACTOR * initial
    assert f"step {int(state['t'])}" in line


FINITE_TINY = ["--dataset", "synthetic", "--train-size", "40", "--test-size", "20", "--d0", "3", "--dr", "2",
               "--hidden", "50", "--steps", "4", "--batch-size", "5", "--eval-every", "2", "--lr", "0.5"]


@pytest.fixture(scope="module")
def finite_sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fs") / "fs"
    res = _invoke(["finite-sweep", *FINITE_TINY, "--widths", "1,2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("case, word", [
    ("metrics deleted", "width-00002/metrics.csv: missing"), ("metrics truncated", "width-00002/metrics.csv"),
    ("metrics NaN", "width-00002/metrics.csv"), ("result invalid JSON", "width-00002/result.json"),
    ("result width edited", "width-00002/result.json"), ("result a list", "width-00002/result.json"),
    ("config invalid JSON", "config.json"), ("config option text", "config.json"),
    ("config not an object", "config.json")])
def test_damaged_finite_sweep_is_refused_before_anything_is_written(tmp_path, finite_sweep_dir, case, word):
    out = tmp_path / "fs"
    shutil.copytree(finite_sweep_dir, out)
    w2 = out / "width-00002"
    if case == "metrics deleted":
        (w2 / "metrics.csv").unlink()
    elif case == "metrics truncated":
        lines = (w2 / "metrics.csv").read_text().splitlines(keepends=True)
        (w2 / "metrics.csv").write_text("".join(lines[:2]))
    elif case == "metrics NaN":
        lines = (w2 / "metrics.csv").read_text().splitlines(keepends=True)
        lines[-1] = "4,nan,nan,,,0.1\n"
        (w2 / "metrics.csv").write_text("".join(lines))
    elif case == "result invalid JSON":
        (w2 / "result.json").write_text("{")
    elif case == "result width edited":
        res = json.loads((w2 / "result.json").read_text())
        res["width"] = 20
        (w2 / "result.json").write_text(json.dumps(res))
    elif case == "result a list":
        (w2 / "result.json").write_text("[1]")
    elif case == "config invalid JSON":
        (out / "config.json").write_text("{")
    elif case == "config option text":
        cfg = json.loads((out / "config.json").read_text())
        cfg["config"]["hidden"] = "wide"
        (out / "config.json").write_text(json.dumps(cfg))
    elif case == "config not an object":
        (out / "config.json").write_text('{"config": [1]}')
    before = {str(p): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    _fails_cleanly(_invoke(["finite-sweep", "--resume", str(out)]), word)
    assert {str(p): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


@pytest.mark.parametrize("edit", [lambda rec: rec["runs"][0].update(dir="/etc"), lambda rec: rec["runs"][0].pop("dir"),
                                  lambda rec: rec.update(runs="x")])
def test_plot_of_an_edited_sweep_names_sweep_json(tmp_path, edit):
    out = tmp_path / "sw"
    assert _invoke(["sweep", *SWEEP_TINY, "--out", str(out)]).exit_code == 0
    rec = json.loads((out / "sweep.json").read_text())
    edit(rec)
    (out / "sweep.json").write_text(json.dumps(rec))
    res = _invoke(["plot", str(out)])
    _fails_cleanly(res, "sweep.json")
    assert res.exit_code == 2


# ------------------------------------------------------------------------------ memory and numeric bounds

@pytest.mark.parametrize("args, words", [
    (["--depth-f", "99999999999999999999"], ["depth_f", "at most"]),
    (["--depth-g", "1000"], ["memory", "depth_g"]),                               # n0 x n0 weights per layer
    (["--w-std", "1e308"], ["w_std", "float64"]),
    (["--out-std", "1e-200"], ["out_std", "raise"]),
    (["--out-std", "1e200"], ["out_std"]),
    (["--w-std", "1e30", "--depth-g", "5"], ["w_std", "depth"]),
    (["--dataset", "multi-index", "--train-size", "100000000"], ["memory", "train_size"]),
    (["--dataset", "manifold", "--d0", "100000000"], ["memory", "d0"]),
    (["--dataset", "multi-index", "--task", "autoencoder", "--d0", "10000000"], ["memory", "d0"]),
])
def test_out_of_bounds_is_refused_before_anything_is_allocated(tmp_path, args, words):
    import time
    t0 = time.perf_counter()
    res = _invoke(["train", "-q", "--width", "2", "--steps", "2", "--backend", "numpy", *args,
                   "--out", str(tmp_path / "run")])
    _fails_cleanly(res, *words)
    assert res.exit_code == 2 and not (tmp_path / "run").exists()
    assert time.perf_counter() - t0 < 60          # refused up front, not after churning (generous: shared CI)


@pytest.mark.parametrize("out_std", ["1e-20", "1e-24"])
def test_tiny_output_scale_leaks_no_warning_and_writes_no_nan(tmp_path, out_std):
    import warnings
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # a NumPy RuntimeWarning would fail the run
        res = _invoke(["train", *TINY, "--out-std", out_std, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "Warning" not in res.output
    text = (out / "metrics.csv").read_text().lower()
    assert "nan" not in text and "inf" not in text
