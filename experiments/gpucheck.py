"""``cli.py gpu-check``: check a GPU machine in one command and print a summary table.

Steps (each a subprocess of this Python, with its own time limit, so one failure does not stop
the others):

1. ``pytest -m gpu tests/accel/test_gpu.py`` (the GPU suite);
2. ``cli.py golden`` (every backend against the golden files);
3. the default ``cli.py train`` on gpu, cpu and numpy, with wall times;
4. ``cli.py bench`` on the gpu at M = 1e5, 1e6, 1e7 (d = 100, float64 and float32);
5. the paper-scale timing: synthetic data, 2000 train and 2000 test points, width 10,
   4000 steps, evaluation every 100 steps, on the gpu.

Writes ``gpucheck.json`` (every step: command, exit status, wall time, the numbers it produced)
and ``table.md`` (the summary table, also printed) into the output directory.  The
:data:`TINY` configuration runs the same steps at toy sizes (tests run it on the NumPy stand-in
of the gpu backend, ``BOTTLENECK_GPU=standin``, so the command is exercised in CI).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .fileio import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent

#: The full check (about 3-4 minutes on an H200; most of it the numpy train and the golden files).
FULL = {
    "pytest": ["-m", "gpu", "tests/accel/test_gpu.py"],
    "golden": [],                                        # all cases
    "train": [],                                         # the default train
    "train_backends": ["gpu", "cpu", "numpy"],
    "bench": ["--sizes", "100000,1000000,10000000", "--widths", "100", "--backends", "gpu",
              "--dtypes", "float64,float32", "--reps", "5"],
    "paper": ["--dataset", "synthetic", "--train-size", "2000", "--test-size", "2000", "--width", "10",
              "--steps", "4000", "--eval-every", "100", "--backend", "gpu"],
    "timeout_s": {"pytest": 900, "golden": 600, "train": 600, "bench": 900, "paper": 900},
}

#: Toy sizes: the same steps in seconds (for tests; the numbers mean nothing).
TINY = {
    "pytest": None,
    "golden": ["--cases", "kernels"],
    "train": ["--train-size", "40", "--test-size", "10", "--steps", "4", "--eval-every", "2",
              "--width", "3", "--init-width", "200"],
    "train_backends": ["gpu", "cpu", "numpy"],
    "bench": ["--sizes", "2000", "--widths", "5", "--backends", "gpu", "--dtypes", "float64",
              "--reps", "1"],
    "paper": ["--dataset", "synthetic", "--train-size", "40", "--test-size", "40", "--width", "3",
              "--steps", "6", "--eval-every", "3", "--init-width", "200", "--backend", "gpu"],
    "timeout_s": {"pytest": 120, "golden": 120, "train": 120, "bench": 120, "paper": 120},
}


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
    return rc, time.perf_counter() - t, out.strip().splitlines()[-15:]


def _step(name, args, timeout, env, log, **extra):
    log(f"gpu-check: {name}: python {' '.join(args)}")
    rc, wall, tail = _run(args, timeout, env)
    row = {"step": name, "command": "python " + " ".join(args), "rc": rc, "ok": rc == 0,
           "wall_s": round(wall, 2), "output_tail": tail, **extra}
    log(f"gpu-check: {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {wall:.1f} s")
    return row


def _skipped(name):
    return {"step": name, "ok": None, "rc": None, "wall_s": None, "note": "skipped in this configuration"}


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


def run(out_dir, config=FULL, log=print, env=None):
    """Run every step of ``config``; write gpucheck.json and table.md into ``out_dir``.

    Returns the report (dict with ``machine``, ``steps`` and ``ok``).
    """
    from . import bench

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if env is None else env)
    tmo = config["timeout_s"]
    steps = []
    if config["pytest"] is not None:
        steps.append(_step("pytest -m gpu", ["-m", "pytest", "-q", *config["pytest"]], tmo["pytest"], env, log))
    else:
        steps.append(_skipped("pytest -m gpu"))
    if config["golden"] is not None:
        steps.append(_step("golden", ["cli.py", "golden", *config["golden"]], tmo["golden"], env, log))
    else:
        steps.append(_skipped("golden"))
    for be in config["train_backends"]:
        run_dir = out / f"train-{be}"
        row = _step(f"train {be}", ["cli.py", "train", *config["train"], "--backend", be, "--quiet",
                                    "--force", "--out", str(run_dir)], tmo["train"], env, log)
        row.update(_train_summary(run_dir))
        steps.append(row)
    bench_json = out / "bench.json"
    if config["bench"] is None:
        row = _skipped("bench gpu")
    else:
        row = _step("bench gpu", ["cli.py", "bench", *config["bench"], "--out", str(bench_json)],
                    tmo["bench"], env, log)
    if bench_json.exists():
        report = json.loads(bench_json.read_text())
        row["results"] = [{k: r.get(k) for k in ("backend", "dtype", "d", "M", "seconds_per_step",
                                                   "gflops", "device_peak_mib")}
                          for r in report.get("results", [])]
        row["machine"] = report.get("machine")
    steps.append(row)
    paper_dir = out / "paper-scale"
    row = _step("paper-scale gpu", ["cli.py", "train", *config["paper"], "--quiet", "--force",
                                    "--out", str(paper_dir)], tmo["paper"], env, log)
    row.update(_train_summary(paper_dir))
    steps.append(row)
    report = {"machine": bench.machine_info(), "config": config, "steps": steps,
              "ok": all(s["ok"] is not False for s in steps),
              "standin": env.get("BOTTLENECK_GPU", "") == "standin"}
    atomic_write_text(out / "gpucheck.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "table.md", table(report) + "\n")
    return report


def table(report):
    """The summary table (Markdown): one row per step, one per bench point."""
    m = report["machine"]
    head = [f"machine: {m.get('gpu', 'no gpu')} | CuPy {m.get('cupy', '-')} | "
            f"CUDA runtime {m.get('cuda_runtime', '-')} | NumPy {m.get('numpy')} | "
            f"{m.get('cpu_count')} CPUs" + (" | ON THE NUMPY STAND-IN" if report.get("standin") else ""),
            "", "| step | result | wall s | detail |", "|---|---|---:|---|"]
    for s in report["steps"]:
        status = "skipped" if s["ok"] is None else ("ok" if s["ok"] else f"FAILED (exit {s['rc']})")
        wall = "" if s.get("wall_s") is None else f"{s['wall_s']:.1f}"
        detail = s.get("note", "")
        if "test_loss" in s:
            detail = f"{s.get('steps')} steps, final test loss {s['test_loss']:.4g}"
            if "run_wall_s" in s:
                detail += f", training {s['run_wall_s']:.1f} s (without start-up)"
        if s["step"].startswith("pytest") and s.get("output_tail"):
            detail = s["output_tail"][-1]
        head.append(f"| {s['step']} | {status} | {wall} | {detail} |")
        for r in s.get("results", []):
            dev = r.get("device_peak_mib")
            head.append(f"| &nbsp; bench {r['backend']}/{r['dtype']} d={r['d']} M={r['M']:.0e} | "
                        f"{r['seconds_per_step'] * 1e3:.3g} ms/step | | {r['gflops']:.1f} GFLOP/s"
                        f"{'' if dev is None else f', device peak {dev:.0f} MiB'} |")
    head.append("")
    head.append("overall: " + ("ok" if report["ok"] else "FAILED"))
    return "\n".join(head)
