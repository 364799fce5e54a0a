"""Sweeps: one training run per (bottleneck width, seed), run in parallel, resumable.

A *sweep directory* holds

``sweep.json``
    The shared options of every run (a :class:`~experiments.train.TrainConfig`
    without ``width`` and ``seed``), the widths, the seeds, and one record per
    run: its subdirectory, ``status`` (``pending``, ``done``, ``failed``,
    ``interrupted``), the error message of a failed run, and its final metrics.
    Rewritten atomically after every finished run.
``width-<d>/`` (one seed) or ``width-<d>/seed-<s>/`` (several seeds)
    One run directory each, exactly as written by ``cli.py train``
    (:func:`experiments.train.train`): ``width-inf``, ``width-10``, ...
``loss.png``, ``heatmap.png``, ``train_vs_test.png``, ``features.png``, ``accuracy.png``
    The combined figures (:mod:`experiments.plots`).

A seed fixes the initial functions and the batch order; the data (``data_seed``)
are the same for every run.  Every run is resumable on its own: a finished run
(its ``summary.json`` or its ``metrics.csv`` reaches the final step) is skipped,
an unfinished one continues from its checkpoint (bit for bit as if it had never
stopped), and a run that fails (diverges, or anything else) is recorded as
``failed`` without stopping the others.  :func:`run_sweep` raises
:class:`SweepFailed` at the end when any run failed.

Execution: local worker processes (``jobs``; started with ``spawn``, each with
``OMP_NUM_THREADS`` etc. set to ``cores // jobs`` unless already set, so that
parallel runs do not oversubscribe the cores), or an existing Dask cluster
(``scheduler="tcp://host:port"``, needs the optional ``dask[distributed]``;
the workers must be able to import ``refimpl`` and to read and write the sweep
directory, e.g. on a shared file system).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import time
from pathlib import Path

from refimpl import __version__
from . import devices
from .train import TrainConfig, atomic_write_text, load_data, resolve_backend, train
from .fileio import SWEEP_FILE
from .validate import RunFailed, TrainError, parse_seeds, parse_widths, width_key  # noqa: F401 (re-exported)

#: Environment variables that set the thread count of BLAS / OpenMP / Numba in a worker.
#: How long to wait for a Dask scheduler before giving up.
DASK_CONNECT_TIMEOUT = "10s"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


class SweepFailed(RunFailed):
    """Some runs of the sweep failed; the message is a one-line summary."""


# ----------------------------------------------------------------------------
# options
# ----------------------------------------------------------------------------

def run_subdir(width, seed, n_seeds):
    """Relative directory of the run (width, seed): ``width-<d>`` or ``width-<d>/seed-<s>``."""
    base = f"width-{width}"
    return base if n_seeds == 1 else f"{base}/seed-{seed}"


def default_jobs():
    """Number of cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not on Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------
# one run (executed in a worker)
# ----------------------------------------------------------------------------

def _last_metrics_step(out):
    path = Path(out) / "metrics.csv"
    if not path.exists():
        return None
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return int(rows[-1]["step"]) if rows else None


def run_state(out, steps):
    """What a run directory needs to reach ``steps``: ``"done"``, ``"resume"`` or ``"fresh"``.

    Finished: ``summary.json`` says at least ``steps`` steps, or the checkpoint and
    ``metrics.csv`` both reached ``steps`` (a run stopped between its last
    checkpoint and its summary).  Resumable: ``config.json`` and ``checkpoint.npz``
    exist.  Anything else starts afresh (overwriting leftovers).
    """
    out = Path(out)
    summary = out / "summary.json"
    if summary.exists():
        try:
            if int(json.loads(summary.read_text())["steps"]) >= steps:
                return "done"
        except (ValueError, KeyError, TypeError):
            pass
    if (out / "config.json").exists() and (out / "checkpoint.npz").exists():
        from .train import _checkpoint_step
        t = _checkpoint_step(out)
        last = _last_metrics_step(out)
        if t is not None and t >= steps and last is not None and last >= steps:
            return "done"
        return "resume"
    return "fresh"


def _quiet(_msg):
    pass


def run_one(task):
    """Bring one run directory to its final step; never raises for a failed run.

    Parameters
    ----------
    task : dict with ``config`` (a TrainConfig as a dict) and ``dir`` (the run directory)

    Returns
    -------
    dict: ``status`` ("done" or "failed"), ``action`` ("skipped", "resumed", "started"),
    ``error`` (one line or None), ``final`` (the last metrics row or None), ``seconds``.
    """
    config = TrainConfig.from_json(task["config"])
    out = Path(task["dir"])
    t0 = time.perf_counter()
    action, trace = None, None
    try:
        action = {"done": "skipped", "resume": "resumed", "fresh": "started"}[run_state(out, config.steps)]
        if action == "resumed":
            saved = json.loads((out / "config.json").read_text())["config"]
            expected = dataclasses.asdict(config)
            diff = sorted(k for k in expected if k != "steps" and saved.get(k) != expected[k])
            if diff:
                raise TrainError(f"{out}: the run was made with other options ({', '.join(diff)}) than the sweep's")
            train(TrainConfig(steps=config.steps), out, resume=True, log=_quiet)
        elif action == "started":
            out.mkdir(parents=True, exist_ok=True)
            train(config, out, force=True, log=_quiet)
        status, error = "done", None
    except TrainError as exc:
        status, error = "failed", str(exc)
    except Exception as exc:  # noqa: BLE001 - a failed run must not stop the sweep
        import traceback
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        status = "failed"
        error = (f"{type(exc).__name__}: {exc}".splitlines()[0]
                 + f" (at {Path(frame.filename).name}:{frame.lineno})")
        trace = traceback.format_exc()
    final = None
    path = out / "metrics.csv"
    if path.exists():
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        final = rows[-1] if rows else None
    return {"status": status, "action": action, "error": error, "final": final,
            "seconds": round(time.perf_counter() - t0, 3), "traceback": trace}


# ----------------------------------------------------------------------------
# executors
# ----------------------------------------------------------------------------

@contextlib.contextmanager
def _thread_env(threads):
    """Set the thread variables (unless the user set them) for the workers about to be spawned."""
    saved = {k: os.environ.get(k) for k in THREAD_VARS}
    for k in THREAD_VARS:
        if saved[k] is None:
            os.environ[k] = str(threads)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def _worker_init(device_slots=None):
    """Workers leave Ctrl-C to the parent, which terminates them (no traceback per worker);
    with a GPU backend each takes its own device (experiments.devices)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    devices.claim(device_slots)


def _indexed_run(item):
    i, task = item
    return i, run_one(task)


def _run_local(tasks, jobs, on_result):
    """Run the tasks in ``jobs`` spawned worker processes; ``on_result(i, result)`` as each finishes.

    On any interruption the workers are terminated at once, so that no orphaned worker goes on
    writing into a run directory that a later ``--resume`` may be using.
    """
    import multiprocessing

    cores = default_jobs()
    with _thread_env(max(1, cores // jobs)):       # also for workers the pool restarts
        slots = devices.worker_slots(tasks[0]["config"]["backend"])
        pool = multiprocessing.get_context("spawn").Pool(processes=jobs, initializer=_worker_init,
                                                         initargs=(slots,))
        try:
            for i, res in pool.imap_unordered(_indexed_run, list(enumerate(tasks))):
                on_result(i, res)
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()


def _run_dask(tasks, scheduler, on_result):
    """Run the tasks on the Dask cluster at ``scheduler`` (optional dependency, imported here)."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise TrainError("scheduler: Dask is not installed; pip install 'bottleneck-dynamics[dask]' "
                         "(dask[distributed])") from None
    try:
        client = Client(scheduler, timeout=DASK_CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise TrainError(f"scheduler: cannot connect to {scheduler}: {exc}".splitlines()[0]) from None
    try:
        futures = client.map(run_one, tasks, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for fut in as_completed(futures):
                on_result(index[fut.key], fut.result())
        except BaseException:
            client.cancel(futures)
            raise
    finally:
        client.close()


def _run_serial(tasks, on_result):
    for i, t in enumerate(tasks):
        on_result(i, run_one(t))


# ----------------------------------------------------------------------------
# the sweep
# ----------------------------------------------------------------------------

def _write_sweep(out, record):
    atomic_write_text(Path(out) / SWEEP_FILE, json.dumps(record, indent=2) + "\n")


def read_sweep(out):
    """The parsed ``sweep.json`` of a sweep directory (TrainError if missing or damaged)."""
    path = Path(out) / SWEEP_FILE
    if not path.exists():
        raise TrainError(f"sweep: {out} holds no sweep ({SWEEP_FILE} expected)")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise TrainError(f"sweep: {path} is not valid JSON: {exc}") from None


def new_sweep_record(config, widths, seeds):
    """The initial ``sweep.json`` content of a sweep (all runs pending)."""
    base = dataclasses.asdict(config)
    base.pop("width")
    base.pop("seed")
    runs = [{"width": w, "seed": s, "dir": run_subdir(w, s, len(seeds)), "status": "pending",
             "error": None, "final": None}
            for w in sorted(widths, key=width_key) for s in seeds]
    return {"refimpl_version": __version__, "config": base, "widths": sorted(widths, key=width_key),
            "seeds": list(seeds), "runs": runs}


def _check_before_start(config, scheduler):
    """Fail fast, once, on problems every run would hit (bad options, missing data, backend)."""
    config.validate()
    if scheduler:                     # the workers' environment may differ from ours
        return
    resolve_backend(config.backend, config.dtype)
    data = load_data(config)
    if config.batch_size > data.X_train.shape[0]:
        raise TrainError(f"batch_size: expected at most the number of training points "
                         f"({data.X_train.shape[0]}), got {config.batch_size}")


def run_sweep(out, config=None, widths=None, seeds=None, jobs=None, scheduler=None, force=False,
              resume=False, steps=None, plot=True, log=print):
    """Run (or resume) a sweep; returns the final ``sweep.json`` record.

    Parameters
    ----------
    out : path of the sweep directory
    config : TrainConfig
        Shared options of a new sweep (``width`` and ``seed`` are ignored).
    widths : list of int or "inf";  seeds : list of int
    jobs : int, optional
        Local worker processes (default: the number of cores; 1 runs in this process).
    scheduler : str, optional
        Address of a Dask scheduler (``tcp://host:port``); overrides ``jobs``.
    force : overwrite an existing sweep (its run directories are overwritten run by run)
    resume : continue the sweep in ``out`` with its saved options
    steps : for ``resume``, a new number of steps (default: the saved one)
    plot : write the combined figures at the end
    log : callable for one-line progress messages

    Raises
    ------
    TrainError for bad options; SweepFailed (after finishing every other run and the
    figures) when some runs failed.
    """
    out = Path(out)
    if resume:
        record = read_sweep(out)
        if steps is not None:
            record["config"]["steps"] = int(steps)
        config = TrainConfig.from_json(record["config"])
    else:
        if config is None or not widths or not seeds:
            raise TrainError("sweep: expected a config, widths and seeds for a new sweep")
        if out.exists() and not out.is_dir():
            raise TrainError(f"out: {out} exists and is not a directory")
        if (out / SWEEP_FILE).exists() and not force:
            raise TrainError(f"out: {out} already holds a sweep; use --force to overwrite it "
                             "or --resume to continue it")
        record = new_sweep_record(config, widths, seeds)
        if not force:
            taken = [r["dir"] for r in record["runs"] if (out / r["dir"] / "config.json").exists()]
            if taken:
                raise TrainError(f"out: {out / taken[0]} already holds a run; use --force to overwrite it")
    probe = TrainConfig.from_json({**record["config"], "width": record["widths"][0],
                                   "seed": record["seeds"][0]})
    _check_before_start(probe, scheduler)
    out.mkdir(parents=True, exist_ok=True)

    tasks = []
    for r in record["runs"]:
        cfg = {**record["config"], "width": r["width"], "seed": r["seed"]}
        tasks.append({"config": cfg, "dir": str(out / r["dir"])})
        if force and not resume:
            r["status"] = "pending"
            target = out / r["dir"]
            for name in ("summary.json", "checkpoint.npz"):   # so that the run starts afresh
                if (target / name).exists():
                    (target / name).unlink()
    _write_sweep(out, record)

    n = len(tasks)
    jobs = max(1, min(jobs or devices.default_jobs(record["config"]["backend"], default_jobs()), n))
    where = f"Dask scheduler {scheduler}" if scheduler else f"{jobs} local worker(s)"
    log(f"sweep {out}: {n} runs ({len(record['widths'])} widths x {len(record['seeds'])} seeds, "
        f"{record['config']['steps']} steps) on {where}")
    finished = [0]

    def on_result(i, res):
        run = record["runs"][i]
        run.update(status=res["status"], error=res["error"], final=res["final"], action=res["action"])
        if res.get("traceback"):          # an unexpected error: keep the details for the user
            run["traceback"] = res["traceback"]
        else:
            run.pop("traceback", None)
        finished[0] += 1
        extra = (f"train_loss {float(res['final']['train_loss']):.4g} at step {res['final']['step']}"
                 if res["final"] else "")
        what = ({"started": "done,", "resumed": "resumed and done,", "skipped": "already done,"}[res["action"]]
                if res["status"] == "done" else f"FAILED: {res['error']}")
        log(f"[{finished[0]}/{n}] {run['dir']}: {what} {extra}".rstrip())
        _write_sweep(out, record)

    t0 = time.perf_counter()
    try:
        if scheduler:
            _run_dask(tasks, scheduler, on_result)
        elif jobs == 1:
            _run_serial(tasks, on_result)
        else:
            _run_local(tasks, jobs, on_result)
    except KeyboardInterrupt:
        for r in record["runs"]:
            if r["status"] == "pending":
                r["status"] = "interrupted"
        _write_sweep(out, record)
        raise RunFailed(f"interrupted; finished runs are kept, continue with --resume {out}") from None
    record["seconds"] = round(time.perf_counter() - t0, 3)
    _write_sweep(out, record)

    if plot:
        from .plots import plot_sweep
        try:
            plot_sweep(out)
        except (TrainError, ValueError) as exc:
            log(f"figures not written: {exc}")
    failed = [r for r in record["runs"] if r["status"] != "done"]
    if failed:
        first = failed[0]
        raise SweepFailed(f"{len(failed)} of {n} runs failed (first: {first['dir']}: {first['error']}); "
                          f"details in {out / SWEEP_FILE}")
    return record
