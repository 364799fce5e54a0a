"""Measure one BLAS thread against BLAS's default threads on the project's own paths, in one run.

    PYTHONPATH=. python docs/blas_threads_bench.py [--reps 2] [--out docs/benchmarks-blas.json]

For each path the same work is timed alternately with ``accel.blas_threads.limit`` active (one thread,
what the code does) and replaced by a no-op (BLAS's default threads, what it did before), ``--reps``
times each; the JSON records every time, the medians, their ratio and the load average around each path.
Paths: the README's main job on the numpy backend (``train`` with its defaults, fewer steps),
``verify lemma4.1`` at its defaults, and SGD steps of a finite network at MNIST's d0 (finite-sweep).
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import accel.blas_threads as bt
from experiments import train as T
from experiments import verify as V
from refimpl.finite import FiniteNetwork


def _main_job(steps):
    with tempfile.TemporaryDirectory() as tmp:
        T.train(T.TrainConfig(steps=steps, backend="numpy"), Path(tmp) / "r", log=lambda m: None)


def _lemma41():
    with tempfile.TemporaryDirectory() as tmp:
        V.CHECKS["lemma4.1"](Path(tmp))


def _finite(steps, n=20_000, d0=784, d=16, batch=5):
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((200, d0)), rng.standard_normal((200, 10))
    net = FiniteNetwork.sample(d0, d, 10, width=n, seed=0)
    for t in range(steps):
        idx = np.arange(t * batch % 200, t * batch % 200 + batch)
        net.step(X[idx], Y[idx], lr=0.1)


def _timed(fn, one_thread):
    real = bt.limit
    if not one_thread:
        bt.limit = lambda n: contextlib.nullcontext()
    try:
        t0 = time.perf_counter()
        if one_thread:
            with real(1):
                fn()
        else:
            fn()
        return time.perf_counter() - t0
    finally:
        bt.limit = real


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="docs/benchmarks-blas.json")
    a = ap.parse_args()
    paths = {"train numpy (README main job, %d steps)" % a.steps: lambda: _main_job(a.steps),
             "verify lemma4.1 (defaults)": _lemma41,
             "finite network, 30 SGD steps (n=20000, d0=784, d=16, B=5)": lambda: _finite(30)}
    _finite(1)                     # warm up imports
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "blas_threads_default": bt.current()}, "paths": []}
    for name, fn in paths.items():
        load0 = os.getloadavg()[0]
        times = {"one": [], "default": []}
        for r in range(a.reps):
            for mode in (("one", "default") if r % 2 == 0 else ("default", "one")):
                times[mode].append(round(_timed(fn, mode == "one"), 3))
                print(name, mode, times[mode][-1], flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        report["paths"].append({"path": name, "seconds": times, "median": med,
                                "default_over_one": round(med["default"] / med["one"], 2),
                                "loadavg_1min": [round(load0, 1), round(os.getloadavg()[0], 1)]})
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    for p in report["paths"]:
        print(f"{p['path']}: one thread {p['median']['one']:.2f} s, default {p['median']['default']:.2f} s, "
              f"ratio {p['default_over_one']}")


if __name__ == "__main__":
    main()
