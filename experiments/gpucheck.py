"""``cli.py gpu-check``: check a GPU machine in one command and print a summary table.

Steps:

0. the probe (in this process, seconds): can the gpu backend run here?  If not, nothing else runs;
   the report says why, worded for the case (CuPy not installed, no NVIDIA driver, a driver older than
   the wheel's CUDA, no device, kernels that fail), and the command exits with status 3;
1. ``pytest -m gpu tests/accel/test_gpu.py`` (the GPU suite);
2. ``cli.py golden`` (every backend against the golden files);
3. the default ``cli.py train`` on gpu (and, in the full check, cpu and numpy), with wall times;
4. ``cli.py bench --near-pairs`` on the gpu (full: M = 1e5, 1e6, 1e7; quick: M = 1e6; d = 100, float64
   and float32), with the cost of nearly parallel pairs at the smallest M;
5. the paper-scale timing: synthetic data, 2000 train and 2000 test points, width 10, 4000 steps,
   evaluation every 100 steps, on the gpu.

Steps 1-5 are subprocesses of this Python with their own time limits, so one failure does not stop
the others.  Every row of the table carries its own reason or result; a step is "ok" only when it
did what it is for: pytest with at least one test passed (all skipped is a failure, with the skip
reason), bench with results (and near-pair results), a train run with its metrics.

Writes ``gpucheck.json`` (every step: command, exit status, wall time, the numbers it produced) and
``table.md`` (the summary table, also printed) into the output directory.  :data:`QUICK` is the
check to run on a lent machine before ``cli.py campaign`` (about 2-3 minutes); :data:`TINY` runs
the same steps at toy sizes (tests run it on the NumPy stand-in of the gpu backend,
``BOTTLENECK_GPU=standin``, so the command is exercised in CI).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .fileio import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent

_PAPER = ["--dataset", "synthetic", "--train-size", "2000", "--test-size", "2000", "--width", "10",
          "--steps", "4000", "--eval-every", "100", "--backend", "gpu"]

#: The full check (several minutes; most of it the numpy train and the golden files).
FULL = {
    "name": "full",
    "pytest": ["-m", "gpu", "tests/accel/test_gpu.py"],
    "golden": [],                                        # all cases
    "train": [],                                         # the default train
    "train_backends": ["gpu", "cpu", "numpy"],
    "bench": ["--sizes", "100000,1000000,10000000", "--widths", "100", "--backends", "gpu",
              "--dtypes", "float64,float32", "--reps", "5", "--near-pairs"],
    "paper": _PAPER,
    "timeout_s": {"pytest": 900, "golden": 600, "train": 600, "bench": 900, "paper": 900},
}

#: The check before a campaign on a lent machine: the GPU suite, the golden kernels and three
#: trajectories, the default train on the gpu, bench at M = 1e6 with near pairs, the 4000-step timing.
QUICK = {
    "name": "quick",
    "pytest": ["-m", "gpu", "tests/accel/test_gpu.py"],
    "golden": ["--cases", "kernels,kernels_arch,bottleneck_d3_full,bottleneck_d10_mini,infinite_mini"],
    "train": [],
    "train_backends": ["gpu"],
    "bench": ["--sizes", "1000000", "--widths", "100", "--backends", "gpu", "--dtypes", "float64,float32",
              "--reps", "5", "--near-pairs"],
    "paper": _PAPER,
    "timeout_s": {"pytest": 240, "golden": 180, "train": 120, "bench": 180, "paper": 240},
}

#: Toy sizes: the same steps in seconds (for tests; the numbers mean nothing).
TINY = {
    "name": "tiny",
    "pytest": None,
    "golden": ["--cases", "kernels"],
    "train": ["--train-size", "40", "--test-size", "10", "--steps", "4", "--eval-every", "2",
              "--width", "3", "--init-width", "200"],
    "train_backends": ["gpu", "cpu", "numpy"],
    "bench": ["--sizes", "2000", "--widths", "5", "--backends", "gpu", "--dtypes", "float64",
              "--reps", "1", "--near-pairs"],
    "paper": ["--dataset", "synthetic", "--train-size", "40", "--test-size", "40", "--width", "3",
              "--steps", "6", "--eval-every", "3", "--init-width", "200", "--backend", "gpu"],
    "timeout_s": {"pytest": 120, "golden": 120, "train": 120, "bench": 120, "paper": 120},
}

CONFIGS = {"full": FULL, "quick": QUICK, "tiny": TINY}


def probe(env):
    """None when the gpu backend can run under ``env`` (the stand-in counts), else its one-line reason."""
    from accel import gpu
    if env.get(gpu.STANDIN_ENV, "").strip().lower() == "standin":
        return None
    if gpu.standin_requested():                  # this process has it, the steps' env does not
        old = os.environ.pop(gpu.STANDIN_ENV)
        gpu.reset()
        try:
            return gpu.unavailable_reason()
        finally:
            os.environ[gpu.STANDIN_ENV] = old
            gpu.reset()
    return gpu.unavailable_reason()


def _run(args, timeout, env=None):
    """Run ``python args...`` in the repository; (exit status, wall seconds, last output lines)."""
    t = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                             timeout=timeout, env=env)
        rc, out = res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as exc:
        rc = 124
        out = ((exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""))
        out += f"\n(timed out after {timeout} s)"
    return rc, time.perf_counter() - t, out.strip().splitlines()[-25:]


def last_error(tail):
    """The most telling line of a failed step's output: its one-line error, else the last line."""
    for line in reversed(tail):
        s = line.strip()
        if s.startswith(("Error:", "error:", "FAILED", "E ", "(timed out")) or "Error" in s.split(":")[0]:
            return s[:300]
    return (tail[-1].strip()[:300] if tail else "(no output)")


_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def pytest_summary(tail):
    """(counts {passed, failed, skipped, ...}, first skip reason or None) from pytest -q -rs output."""
    counts = {}
    for line in tail:
        if re.search(r"\d+ (passed|failed|skipped|errors?|deselected)", line) and (" in " in line or "=" in line):
            counts = {k.rstrip("s") if k.startswith("error") else k: int(n) for n, k in _COUNT.findall(line)}
    reason = None
    for line in tail:
        if line.startswith("SKIPPED"):
            reason = line.split(": ", 1)[-1].strip()
            break
    return counts, reason


def _step(name, args, timeout, env, log, judge=None, **extra):
    """Run one step; its row with ``ok`` and ``note`` (the reason or the result, always set)."""
    log(f"gpu-check: {name}: python {' '.join(args)}")
    rc, wall, tail = _run(args, timeout, env)
    row = {"step": name, "command": "python " + " ".join(args), "rc": rc, "ok": rc == 0,
           "wall_s": round(wall, 2), "output_tail": tail, **extra}
    row["note"] = (tail[-1].strip()[:300] if tail else "") if rc == 0 else last_error(tail)
    if judge is not None:
        judge(row)
    log(f"gpu-check: {name}: {'ok' if row['ok'] else 'FAILED'} in {wall:.1f} s"
        + (f": {row['note']}" if row["note"] else ""))
    return row


def _judge_pytest(row):
    counts, reason = pytest_summary(row["output_tail"])
    row["tests"] = counts
    passed = counts.get("passed", 0)
    if row["rc"] == 0 and passed == 0:
        row["ok"] = False
        row["note"] = (f"no test ran ({counts.get('skipped', 0)} skipped"
                       + (f": {reason}" if reason else "") + ")")
    elif row["rc"] == 0:
        row["note"] = ", ".join(f"{n} {k}" for k, n in counts.items())
    elif counts:
        row["note"] = ", ".join(f"{n} {k}" for k, n in counts.items()) + f"; {last_error(row['output_tail'])}"


_GOLDEN_GPU_SKIPPED = re.compile(r"gpu skipped \((.*)\)\s*$")


def _judge_golden(row):
    """golden exits 0 when it leaves out a gpu target it cannot run; here that is a failure, with the reason."""
    last = row["output_tail"][-1] if row["output_tail"] else ""
    m = _GOLDEN_GPU_SKIPPED.search(last)
    if row["rc"] == 0 and m:
        row["ok"] = False
        row["note"] = f"the gpu target was skipped: {m.group(1)}"


def _skipped(name, why):
    return {"step": name, "ok": None, "rc": None, "wall_s": None, "note": why}


def _not_run(name, why):
    return {"step": name, "ok": False, "rc": None, "wall_s": None, "note": f"not run: {why}"}


def _train_summary(run_dir):
    """Final test loss and the run's own wall time (metrics.csv) of a finished run."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return {}
    rows = list(csv.DictReader(path.open()))
    if not rows:
        return {}
    last = rows[-1]
    out = {"steps": int(last["step"])}
    for key, name in (("test_loss", "test_loss"), ("wall_s", "run_wall_s")):
        try:
            out[name] = float(last[key])
        except (KeyError, ValueError):
            pass
    return out


def _judge_train(run_dir):
    def judge(row):
        row.update(_train_summary(run_dir))
        if row["ok"] and "test_loss" not in row:
            row["ok"] = False
            row["note"] = f"exit 0 but no metrics in {run_dir}/metrics.csv"
        elif row["ok"]:
            row["note"] = f"{row.get('steps')} steps, final test loss {row['test_loss']:.4g}"
            if "run_wall_s" in row:
                row["note"] += f", training {row['run_wall_s']:.1f} s (without start-up)"
    return judge


def _judge_bench(bench_json, near):
    def judge(row):
        report = json.loads(bench_json.read_text()) if bench_json.exists() else {}
        row["results"] = [{k: r.get(k) for k in ("backend", "dtype", "d", "M", "seconds_per_step",
                                                 "gflops", "device_peak_mib", "pass_bandwidth_gbs",
                                                 "bandwidth_fraction", "host_head_over_device_step",
                                                 "tensor_cores", "tensor_core_speedup")}
                          for r in report.get("results", [])]
        row["near_pairs"] = report.get("near_pairs", [])
        row["machine"] = report.get("machine")
        skipped = report.get("skipped", [])
        if not row["results"]:
            row["ok"] = False
            row["note"] = "no results" + (f" ({skipped[0]['backend']}: {skipped[0]['reason']})" if skipped
                                          else f" ({row['note']})" if row["note"] else "")
        elif near and not row["near_pairs"]:
            row["ok"] = False
            row["note"] = "no near-pair results" + (f" ({row['note']})" if row["note"] else "")
        elif row["ok"]:
            row["note"] = f"{len(row['results'])} points" + "".join(
                f"; {r['dtype']} M={r['M']:.0e}: {1e3 * r['seconds_per_step']:.3g} ms/step"
                + (f", {r['bandwidth_fraction']:.0%} of peak bandwidth" if r.get("bandwidth_fraction") else "")
                + (f", FP64 tensor cores x{r['tensor_core_speedup']:.2f}" if r.get("tensor_core_speedup") else "")
                for r in row["results"] if r["backend"] == "gpu") + (
                "".join(f"; near pairs {n['backend']}/{n['dtype']}: aligned x{n['aligned_over_spread']:.2f} of spread"
                        for n in row["near_pairs"]))
    return judge


def run(out_dir, config=FULL, log=print, env=None):
    """Run every step of ``config``; write gpucheck.json and table.md into ``out_dir``.

    Returns the report (dict with ``machine``, ``steps`` and ``ok``).  Without a usable gpu the
    probe row says why and no other step runs (each row: "not run").
    """
    from . import bench

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if env is None else env)
    tmo = config["timeout_s"]
    standin = env.get("BOTTLENECK_GPU", "").strip().lower() == "standin"
    t0 = time.perf_counter()
    reason = probe(env)
    probe_row = {"step": "gpu probe", "rc": None, "wall_s": round(time.perf_counter() - t0, 2),
                 "ok": reason is None,
                 "note": reason or ("NumPy stand-in (BOTTLENECK_GPU=standin)" if standin else "CuPy runs the kernels on the device")}
    log(f"gpu-check: gpu probe: {'ok' if reason is None else 'FAILED: ' + reason}")
    steps = [probe_row]
    names = ["pytest -m gpu", "golden", *[f"train {be}" for be in config["train_backends"]], "bench gpu",
             "paper-scale gpu"]
    if reason is not None:
        steps += [_not_run(n, "no usable GPU (see the probe)") for n in names]
    else:
        if config["pytest"] is not None:
            steps.append(_step("pytest -m gpu", ["-m", "pytest", "-q", "-rs", *config["pytest"]], tmo["pytest"],
                               env, log, judge=_judge_pytest))
        else:
            steps.append(_skipped("pytest -m gpu", f"not part of the --{config.get('name', 'tiny')} check"))
        if config["golden"] is not None:
            steps.append(_step("golden", ["cli.py", "golden", *config["golden"]], tmo["golden"], env, log,
                               judge=_judge_golden))
        else:
            steps.append(_skipped("golden", f"not part of the --{config.get('name', 'tiny')} check"))
        for be in config["train_backends"]:
            run_dir = out / f"train-{be}"
            steps.append(_step(f"train {be}", ["cli.py", "train", *config["train"], "--backend", be, "--quiet",
                                               "--force", "--out", str(run_dir)], tmo["train"], env, log,
                               judge=_judge_train(run_dir)))
        bench_json = out / "bench.json"
        if config["bench"] is None:
            steps.append(_skipped("bench gpu", f"not part of the --{config.get('name', 'tiny')} check"))
        else:
            if bench_json.exists():
                bench_json.unlink()
            steps.append(_step("bench gpu", ["cli.py", "bench", *config["bench"], "--out", str(bench_json)],
                               tmo["bench"], env, log,
                               judge=_judge_bench(bench_json, "--near-pairs" in config["bench"])))
        paper_dir = out / "paper-scale"
        steps.append(_step("paper-scale gpu", ["cli.py", "train", *config["paper"], "--quiet", "--force",
                                               "--out", str(paper_dir)], tmo["paper"], env, log,
                           judge=_judge_train(paper_dir)))
    report = {"machine": bench.machine_info(), "config": config, "steps": steps,
              "ok": all(s["ok"] is not False for s in steps), "standin": standin,
              "reason": reason}
    atomic_write_text(out / "gpucheck.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "table.md", table(report) + "\n")
    return report


def table(report):
    """The summary table (Markdown): one row per step (each with its reason or result), one per
    bench point."""
    m = report["machine"]
    head = [f"machine: {m.get('gpu', 'no gpu')} | CuPy {m.get('cupy', '-')} | "
            f"CUDA runtime {m.get('cuda_runtime', '-')} | NumPy {m.get('numpy')} | "
            f"{m.get('cpu_count')} CPUs" + (" | ON THE NUMPY STAND-IN" if report.get("standin") else ""),
            "", "| step | result | wall s | detail |", "|---|---|---:|---|"]
    for s in report["steps"]:
        if s["ok"] is None:
            status = "skipped"
        elif s["ok"]:
            status = "ok"
        elif s.get("rc") is None:
            status = "FAILED" if s["step"] == "gpu probe" else "not run"
        else:
            status = f"FAILED (exit {s['rc']})"
        wall = "" if s.get("wall_s") is None else f"{s['wall_s']:.1f}"
        detail = (s.get("note") or "").replace("|", "/")
        head.append(f"| {s['step']} | {status} | {wall} | {detail} |")
        for r in s.get("results", []):
            dev = r.get("device_peak_mib")
            head.append(f"| &nbsp; bench {r['backend']}/{r['dtype']} d={r['d']} M={r['M']:.0e} | "
                        f"{r['seconds_per_step'] * 1e3:.3g} ms/step | | {r['gflops']:.1f} GFLOP/s"
                        f"{'' if dev is None else f', device peak {dev:.0f} MiB'} |")
        for n in s.get("near_pairs", []):
            head.append(f"| &nbsp; near pairs {n['backend']}/{n['dtype']} d={n['d']} M={n['M']:.0e} | "
                        f"x{n['aligned_over_spread']:.2f} | | aligned {n['aligned_seconds'] * 1e3:.3g} ms, "
                        f"spread {n['spread_seconds'] * 1e3:.3g} ms per pass |")
    head.append("")
    head.append("overall: " + ("ok" if report["ok"] else
                               f"FAILED ({report['reason']})" if report.get("reason") else "FAILED"))
    return "\n".join(head)
