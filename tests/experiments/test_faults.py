"""Fault injection: `cli.py train` and `cli.py sweep` killed with SIGKILL at seeded random moments, then resumed.

Train: at least ten kills (before the first checkpoint, in the middle of checkpoint and metrics writes,
between steps, and from outside at random times); each run is resumed and must end with checkpoint
arrays and metric columns bit-identical to an uninterrupted run, and leave no temporary file, lock or
staging folder behind.  Sweep: the parent killed three times (its workers must die with it), resumed
each time, identical results at the end; one worker killed (the parent must notice, not hang).
The kills inside a write come from the BOTTLENECK_FAULT hook of experiments/fileio.py.
"""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from experiments.fileio import load_npz

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, str(ROOT / "cli.py")]
TRAIN = ["train", "-q", "--train-size", "200", "--test-size", "50", "--d0", "4", "--width", "3",
         "--init-width", "200", "--steps", "30", "--eval-every", "5", "--checkpoint-every", "3",
         "--batch-size", "10", "--eval-size", "100", "--backend", "numpy"]
SWEEP = ["sweep", "--train-size", "60", "--test-size", "20", "--d0", "3", "--init-width", "200",
         "--batch-size", "10", "--eval-every", "4", "--eval-size", "60", "--widths", "2,inf", "--seeds", "0,1",
         "--steps", "40", "--no-plot", "--backend", "numpy"]
KEYS = ["step", "train_loss", "test_loss", "train_acc", "test_acc", "feature_movement", "kernel_alignment"]

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL, /proc and prctl: Linux")


def _env(fault=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("BOTTLENECK_FAULT", None)
    if fault:
        env["BOTTLENECK_FAULT"] = fault
    return env


def _run(args, fault=None, timeout=120):
    return subprocess.run(CLI + args, env=_env(fault), capture_output=True, text=True, timeout=timeout)


def _columns(run):
    with open(run / "metrics.csv", newline="") as fh:
        return [[row[k] for k in KEYS] for row in csv.DictReader(fh)]


def _arrays(run):
    return {k: v for k, v in load_npz(run / "checkpoint.npz").items() if k != "driver_wall_s"}


def _assert_same_run(run, ref):
    a, b = _arrays(run), _arrays(ref)
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
    assert _columns(run) == _columns(ref)
    assert (run / "summary.json").is_file()
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers
    assert not list(run.parent.glob(f".{run.name}.*")), "staging folder left behind"


def _train_scenarios(seed=20261129):
    """(name, BOTTLENECK_FAULT or None, rows to wait for before an outside kill or None)."""
    rng = random.Random(seed)
    return [
        ("first config.json write (nothing published yet)", "write:config.json:1", None),
        ("after config.json, before the simulator", "train:config-written:1", None),
        ("inside the step-0 metrics write", "write:metrics.csv:1", None),
        ("inside the step-0 checkpoint write (first checkpoint)", "write:checkpoint.npz:1", None),
        ("right after the step-0 checkpoint", "train:checkpoint:1", None),
        ("inside a later checkpoint write", f"write:checkpoint.npz:{rng.randint(2, 10)}", None),
        ("inside a later metrics write", f"write:metrics.csv:{rng.randint(2, 6)}", None),
        ("between steps", f"train:step:{rng.randint(1, 29)}", None),
        ("right after a later checkpoint", f"train:checkpoint:{rng.randint(2, 10)}", None),
        ("inside the config.json rewrite after the initial functions", "write:config.json:2", None),
        ("from outside, while training", None, rng.randint(2, 4)),
        ("from outside, near the end", None, rng.randint(5, 6)),
    ]


def _kill_when_rows(args, run, rows):
    """Start a child and SIGKILL it once metrics.csv has ``rows`` data rows (an outside kill -9)."""
    proc = subprocess.Popen(CLI + args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if len((run / "metrics.csv").read_text().splitlines()) > rows:
                break
        except OSError:
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def _one_train_kill(tmp_path, k, name, fault, rows):
    run = tmp_path / f"kill{k}"
    args = TRAIN + ["--out", str(run)]
    if fault:
        res = _run(args, fault=fault)
        code = res.returncode
        assert code == -signal.SIGKILL, (name, code, res.stderr)
    else:
        code = _kill_when_rows(args, run, rows)
    if run.exists():                 # resume (from step 0 if there was no checkpoint yet)
        res = _run(["train", "-q", "--resume", str(run)])
    else:                            # killed before the run directory appeared: the same command again
        res = _run(args)
    assert res.returncode == 0, (name, res.stderr)
    return run, code


def test_train_killed_at_random_moments_resumes_bit_identical(tmp_path):
    ref = tmp_path / "ref"
    assert _run(TRAIN + ["--out", str(ref)]).returncode == 0
    scenarios = _train_scenarios()
    assert len(scenarios) >= 10
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(_one_train_kill, tmp_path, k, *sc) for k, sc in enumerate(scenarios)]
        results = [f.result() for f in futures]
    killed = 0
    for (run, code), (name, *_rest) in zip(results, scenarios):
        killed += code == -signal.SIGKILL
        _assert_same_run(run, ref)
        steps = [r[0] for r in _columns(run)]
        assert len(steps) == len(set(steps)), (name, steps)      # no duplicate row (step 0 included)
    assert killed >= 10


# ----------------------------------------------------------------------------------------------- sweep

def _children(pid):
    """Pids of the live processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _workers(pid):
    """The sweep's worker processes (its children other than multiprocessing's resource tracker)."""
    out = []
    for child in _children(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "resource_tracker" not in cmd:
            out.append(child)
    return out


def _alive(pid):
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def _sweep_final(out):
    rec = json.loads((out / "sweep.json").read_text())
    return {r["dir"]: (r["status"], _columns(out / r["dir"]), _arrays(out / r["dir"])) for r in rec["runs"]}


def test_sweep_parent_killed_three_times_no_orphans_and_identical_result(tmp_path):
    ref = tmp_path / "ref"
    res = _run(SWEEP + ["-j", "2", "--out", str(ref)])
    assert res.returncode == 0, res.stderr
    out = tmp_path / "sw"
    rng = random.Random(7)
    args = SWEEP + ["-j", "2", "--out", str(out)]
    for kill in range(3):
        proc = subprocess.Popen(CLI + args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not _workers(proc.pid) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.1, 0.5))          # workers are importing or training
        workers = _workers(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert workers and proc.returncode == -signal.SIGKILL, "the sweep ended before the kill"
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(w) for w in workers), "orphaned worker still running after its parent died"
        args = ["sweep", "--resume", str(out), "-j", str(1 + kill % 2), "--no-plot"]
    res = _run(args)                                  # the last resume runs to the end
    assert res.returncode == 0, res.stderr
    got, want = _sweep_final(out), _sweep_final(ref)
    assert set(got) == set(want)
    for d in want:
        assert got[d][0] == "done" and got[d][1] == want[d][1], d
        for key in want[d][2]:
            assert np.array_equal(got[d][2][key], want[d][2][key]), (d, key)


def test_sweep_worker_killed_is_reported_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "sw"
    proc = subprocess.Popen(CLI + SWEEP + ["-j", "2", "--out", str(out)], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    victim, deadline = None, time.monotonic() + 60
    while victim is None and time.monotonic() < deadline:        # a worker that holds a run's lock
        for lock in out.glob("width-*/seed-*/.lock"):
            try:
                pid = int(lock.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            if pid != proc.pid:
                victim = pid
                break
        time.sleep(0.005)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)            # no hang
    assert proc.returncode not in (0, None)
    assert "INTERRUPTED" in err and "died" in err and "Traceback" not in err, err
    rec = json.loads((out / "sweep.json").read_text())
    assert sorted(r["status"] for r in rec["runs"]).count("interrupted") == 1
    res = _run(["sweep", "--resume", str(out), "-j", "1", "--no-plot"])   # the stale lock is taken over
    assert res.returncode == 0, res.stderr
    assert all(r["status"] == "done" for r in json.loads((out / "sweep.json").read_text())["runs"])


def test_lock_of_an_unreaped_dead_process_is_stale(tmp_path):
    """A killed worker whose parent died too stays a zombie where init does not reap it; os.kill(pid, 0)
    still succeeds for it, but its lock must be taken over (this made resumed sweeps refuse their runs)."""
    import socket
    from experiments.fileio import DirLock, LockedError, _start_time
    child = os.fork()
    if child == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while not _alive_state_is(child, "Z") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _alive_state_is(child, "Z")
        (tmp_path / ".lock").write_text(f"{child} {_start_time(child)} {socket.gethostname()}\n")
        assert DirLock(tmp_path).acquire().held
        # a live owner is still refused
        (tmp_path / ".lock").write_text(f"{os.getppid()} {_start_time(os.getppid())} {socket.gethostname()}\n")
        with pytest.raises(LockedError):
            DirLock(tmp_path).acquire()
    finally:
        os.waitpid(child, 0)


def _alive_state_is(pid, state):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == state
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------- SIGTERM

def _lock_files(folder):
    return [p for p in Path(folder).rglob(".lock")] if Path(folder).exists() else []


def _term_env(fault):
    env = _env(fault)
    env["BOTTLENECK_FAULT_SIGNAL"] = "TERM"
    return env


@pytest.mark.parametrize("fault", ["train:checkpoint:4", "train:step:17"])
def test_train_sigterm_keeps_the_checkpoint_releases_the_lock_and_resumes_bit_identical(tmp_path, fault):
    ref = tmp_path / "ref"
    assert _run(TRAIN + ["--out", str(ref)]).returncode == 0
    run = tmp_path / "run"
    res = subprocess.run(CLI + TRAIN + ["--out", str(run)], env=_term_env(fault), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "interrupted at step" in errors[0] and f"--resume {run}" in errors[0], errors[0]
    assert "checkpoint at step" in errors[0]
    assert _lock_files(run) == [] and (run / "checkpoint.npz").is_file()
    assert not (run / "summary.json").exists()
    res = _run(["train", "-q", "--resume", str(run)])
    assert res.returncode == 0, res.stderr
    _assert_same_run(run, ref)


def test_train_sigterm_whose_interrupt_is_swallowed_stops_at_the_next_step(tmp_path):
    """A SIGTERM arriving where its KeyboardInterrupt is swallowed (as in a ctypes callback of Numba's
    compiler) is not lost: the run stops at its next step, keeps its checkpoint and resumes bit-identical."""
    ref = tmp_path / "ref"
    assert _run(TRAIN + ["--out", str(ref)]).returncode == 0
    run = tmp_path / "run"
    env = {**_term_env("train:step:17"), "BOTTLENECK_FAULT_SWALLOW": "1"}
    res = subprocess.run(CLI + TRAIN + ["--out", str(run)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "interrupted at step 17" in errors[0] and f"--resume {run}" in errors[0], errors[0]
    assert _lock_files(run) == [] and (run / "checkpoint.npz").is_file()
    assert _run(["train", "-q", "--resume", str(run)]).returncode == 0
    _assert_same_run(run, ref)


def test_sigterm_handler_grace_then_honoured_again(monkeypatch):
    """Within the grace period a second SIGTERM is ignored (the clean-up runs); after it, honoured again."""
    from experiments import stop
    stop.clear()
    try:
        with pytest.raises(KeyboardInterrupt):
            stop.on_sigterm(signal.SIGTERM, None)
        assert stop.requested() == "SIGTERM"
        stop.on_sigterm(signal.SIGTERM, None)                 # ignored: no exception
        with pytest.raises(KeyboardInterrupt):
            stop.raise_if_requested()
        assert stop.requested() is None
        monkeypatch.setattr(stop, "GRACE_S", 0.0)
        with pytest.raises(KeyboardInterrupt):
            stop.on_sigterm(signal.SIGTERM, None)
    finally:
        stop.clear()


def test_train_sigterm_from_outside_while_training(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(CLI + TRAIN + ["--out", str(run)], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if len((run / "metrics.csv").read_text().splitlines()) > 2:
                break
        except OSError:
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 1 and "--resume" in err and "Traceback" not in err, err
    assert _lock_files(run) == []
    assert _run(["train", "-q", "--resume", str(run)]).returncode == 0


@pytest.mark.parametrize("fault, extra", [("train:config-written:1", []),
                                          ("probe:trial:2", ["--lr-policy", "per-width", "--lr-probe-steps", "3"])])
def test_train_sigterm_during_start_up_or_probe_says_there_is_nothing_to_resume(tmp_path, fault, extra):
    run = tmp_path / "run"
    res = subprocess.run(CLI + TRAIN + extra + ["--out", str(run)], env=_term_env(fault), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "nothing to resume" in errors[0] and "--resume" not in errors[0], errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []            # nothing left: no run, no staging


def test_sweep_sigterm_stops_the_workers_and_resumes(tmp_path):
    out = tmp_path / "sw"
    proc = subprocess.Popen(CLI + SWEEP + ["-j", "2", "--out", str(out)], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not list(out.glob("width-*/seed-*/metrics.csv")):
        time.sleep(0.01)
    workers = _workers(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert workers and proc.returncode == 1, (proc.returncode, err)
    errors = [ln for ln in err.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in err and f"--resume {out}" in errors[0], err
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "worker still running after SIGTERM to the sweep"
    assert not (out / ".lock").exists()
    res = _run(["sweep", "--resume", str(out), "-j", "2", "--no-plot"])
    assert res.returncode == 0, res.stderr
    assert all(r["status"] == "done" for r in json.loads((out / "sweep.json").read_text())["runs"])


# ----------------------------------------------------------------------------------------------- disk full

def _disk_fills_at(monkeypatch, name, nth):
    """From the ``nth`` write of the file ``name`` on, every write raises OSError(ENOSPC) (a full disk)."""
    import errno
    from experiments import fileio
    real, seen = fileio._atomic_write_bytes, {"n": 0}

    def write(path, data):
        if Path(path).name == name:
            seen["n"] += 1
            if seen["n"] >= nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)
    monkeypatch.setattr(fileio, "_atomic_write_bytes", write)


def test_train_disk_full_names_the_file_says_resumable_and_resumes(tmp_path, monkeypatch):
    from click.testing import CliRunner
    import cli
    run = tmp_path / "run"
    _disk_fills_at(monkeypatch, "checkpoint.npz", 4)
    res = CliRunner().invoke(cli.cli, TRAIN + ["--out", str(run)])
    assert res.exit_code == 1, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    line = errors[0]
    assert str(run / "checkpoint.npz") in line and "no space left" in line, line
    assert "resumable" in line and f"--resume {run}" in line and "checkpoint at step 6" in line, line
    assert int(load_npz(run / "checkpoint.npz")["t"]) == 6
    assert not (run / ".lock").exists() and not list(run.glob(".*.tmp"))
    monkeypatch.undo()
    res = CliRunner().invoke(cli.cli, ["train", "-q", "--resume", str(run)])
    assert res.exit_code == 0, res.output
    assert int(load_npz(run / "checkpoint.npz")["t"]) == 30


def test_train_disk_full_at_the_start_leaves_nothing(tmp_path, monkeypatch):
    from click.testing import CliRunner
    import cli
    _disk_fills_at(monkeypatch, "config.json", 1)
    res = CliRunner().invoke(cli.cli, TRAIN + ["--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and "no space left" in res.output and "nothing was written" in res.output, res.output
    assert list(tmp_path.iterdir()) == []


def test_finite_sweep_disk_full_says_resumable(tmp_path, monkeypatch):
    from click.testing import CliRunner
    import cli
    out = tmp_path / "fs"
    _disk_fills_at(monkeypatch, "result.json", 2)
    res = CliRunner().invoke(cli.cli, ["finite-sweep", "--dataset", "synthetic", "--train-size", "40", "--test-size",
                                       "20", "--d0", "3", "--dr", "2", "--hidden", "50", "--steps", "4",
                                       "--batch-size", "5", "--eval-every", "2", "--widths", "1,2",
                                       "--out", str(out)])
    assert res.exit_code == 1, res.output
    line = [ln for ln in res.output.splitlines() if ln.startswith("Error")][0]
    assert "width-00002" in line and "no space left" in line and f"--resume {out}" in line, line
    monkeypatch.undo()
    res = CliRunner().invoke(cli.cli, ["finite-sweep", "--resume", str(out)])
    assert res.exit_code == 0, res.output
