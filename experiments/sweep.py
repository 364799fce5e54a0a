"""Sweeps: one training run per (bottleneck width, seed), run in parallel, resumable.

A *sweep directory* holds

``sweep.json``
    The shared options of every run (a :class:`~experiments.train.TrainConfig`
    without ``width`` and ``seed``), the widths, the seeds, and one record per
    run: its subdirectory, ``status`` (``pending``, ``done``, ``failed``,
    ``interrupted``), the error message of a failed run, and its final metrics.
    Rewritten atomically after every finished run.
``lr_probe.json``
    With ``lr_policy = "per-width"`` only: the learning-rate probe of every width
    (:mod:`experiments.controls`); each run's rate is then also in its record (``lr``).
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

Execution: local worker processes (``jobs``, started with ``spawn``; every run executes in a worker,
also with ``jobs = 1``; a script that calls :func:`run_sweep` needs the usual
``if __name__ == "__main__":`` guard of multiprocessing).  The workers' thread variables
(``OMP_NUM_THREADS`` etc.: the user's, else ``cores // jobs``) are fixed in ``sweep.json`` when the sweep
is made and applied again on every resume, whatever ``jobs`` then is, so that the BLAS rounding, and
with it every number, is the same.  A worker that dies is noticed at once (its run is recorded as
``interrupted``); workers die with the sweep process (``PR_SET_PDEATHSIG`` on Linux, a watchdog on the
parent pid elsewhere).  The sweep directory and every run directory hold a lock file ``.lock`` (the
writer's pid) that other sweeps and resumes honour.  Or an existing Dask cluster
(``scheduler="tcp://host:port"``, needs the optional ``dask[distributed]``, connected before anything
is written; the workers must be able to import ``refimpl`` and to read and write the sweep directory,
e.g. on a shared file system, and set their own thread variables).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path

from refimpl import __version__
from . import devices, fileio
from .fileio import SWEEP_FILE, DirLock, read_json
from .train import (LEGACY_DEFAULTS, RESUME_FIELDS, TrainConfig, _read_metrics, atomic_write_text, load_data,
                    resolve_backend, settle_backend, train)
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
    rows = fileio.read_csv(Path(out) / "metrics.csv")
    return int(rows[-1]["step"]) if rows else None


def run_state(out, steps):
    """What a run directory needs to reach ``steps``: ``"done"``, ``"resume"`` or ``"fresh"``.

    Finished: ``summary.json`` says at least ``steps`` steps, or the checkpoint and
    ``metrics.csv`` both reached ``steps`` (a run stopped between its last
    checkpoint and its summary).  Resumable: ``config.json`` exists (a run without
    a checkpoint yet resumes from step 0).  Anything else starts afresh.
    """
    out = Path(out)
    summary = out / "summary.json"
    if summary.exists():
        try:
            if int(json.loads(summary.read_text())["steps"]) >= steps:
                return "done"
        except (ValueError, KeyError, TypeError):
            pass
    if (out / "config.json").exists():
        if (out / "checkpoint.npz").exists():
            from .train import _checkpoint_step
            t = _checkpoint_step(out)
            try:
                last = _last_metrics_step(out)
            except (ValueError, KeyError, TypeError):
                last = None
            if t is not None and t >= steps and last is not None and last >= steps:
                return "done"
        return "resume"
    return "fresh"


def _quiet(_msg):
    pass


def _other_options(out, config):
    """Options (names) in which the run in ``out`` differs from ``config``, besides steps and locations."""
    try:
        saved = read_json(out / "config.json").get("config")
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    if not isinstance(saved, dict):
        raise TrainError(f"{out / 'config.json'}: no 'config' object (damaged)")
    expected = dataclasses.asdict(config)
    return sorted(k for k in expected if k not in RESUME_FIELDS
                  and saved.get(k, LEGACY_DEFAULTS.get(k)) != expected[k])


def run_one(task):
    """Bring one run directory to its final step; never raises for a failed run.

    Parameters
    ----------
    task : dict with ``config`` (a TrainConfig as a dict), ``dir`` (the run directory) and
        ``overwrite`` (True: a run made with other options is replaced, as with ``train --force``)

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
        state = run_state(out, config.steps)
        if state != "fresh":
            diff = _other_options(out, config)
            if diff and task.get("overwrite"):
                state = "fresh"
            elif diff:
                raise TrainError(f"{out}: the run was made with other options ({', '.join(diff)}) than the sweep's")
        action = {"done": "skipped", "resume": "resumed", "fresh": "started"}[state]
        if action == "resumed":
            train(TrainConfig(steps=config.steps), out, resume=True, log=_quiet)
        elif action == "started":
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
    return {"status": status, "action": action, "error": error, "final": _final_row(out),
            "seconds": round(time.perf_counter() - t0, 3), "traceback": trace}


def _final_row(out):
    try:
        rows = _read_metrics(Path(out) / "metrics.csv")
    except TrainError:
        return None
    return rows[-1] if rows else None


# ----------------------------------------------------------------------------
# executors
# ----------------------------------------------------------------------------

def thread_env(jobs):
    """The thread variables of every worker of a new sweep: the user's where set, else ``cores // jobs``.

    They are stored in sweep.json and applied again on resume, whatever ``--jobs`` then is, because
    the number of BLAS threads changes the rounding of the results.
    """
    threads = str(max(1, default_jobs() // jobs))
    return {k: os.environ.get(k) or threads for k in THREAD_VARS}


@contextlib.contextmanager
def _environ(values):
    """Set environment variables for the worker processes about to be spawned."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _die_with_parent(parent_pid):
    """Make this worker die when the sweep process does (Linux: PR_SET_PDEATHSIG; elsewhere a watchdog)."""
    import signal
    import threading
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is the parent's; it stops the workers
    signal.signal(signal.SIGTERM, signal.SIG_IGN)     # so is SIGTERM (cli.py handles it as Ctrl-C)
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:                    # the parent died before prctl took effect
        os._exit(1)

    def watchdog():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)
    threading.Thread(target=watchdog, daemon=True, name="parent-watchdog").start()


def _worker_init(device_slots=None):
    """Workers leave Ctrl-C to the parent, which terminates them (no traceback per worker);
    with a GPU backend each takes its own device (experiments.devices)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    devices.claim(device_slots)


def _worker_main(conn, parent_pid, device_slots=None):
    """A local worker: runs the tasks the parent sends until it sends None."""
    _die_with_parent(parent_pid)
    _worker_init(device_slots)
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        i, task = item
        conn.send((i, run_one(task)))


def _dead_worker_result(task, proc):
    code = proc.exitcode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
    return {"status": "interrupted", "action": None, "final": _final_row(task["dir"]), "seconds": None,
            "traceback": None,
            "error": f"its worker process {proc.pid} died ({how}); continue it with --resume"}


def _pool_starmap(fn, args, jobs, env):
    """``[fn(*a) for a in args]`` in ``jobs`` spawned worker processes with the sweep's thread variables."""
    import multiprocessing
    with _environ(env):
        with multiprocessing.get_context("spawn").Pool(processes=jobs) as pool:
            return pool.starmap(fn, args)


def _run_local(tasks, jobs, env, on_result):
    """Run the tasks in ``jobs`` spawned worker processes; ``on_result(i, result)`` as each finishes.

    Every worker gets the thread variables ``env``.  A worker that dies (killed, out of memory) is
    noticed at once: its run is reported as ``interrupted`` and a new worker takes the next task.
    Workers die with this process (so none goes on writing into a run directory), and on any
    interruption here they are killed before this function returns.
    """
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")
    slots = devices.worker_slots(tasks[0]["config"]["backend"], context=ctx) if tasks else None
    queue = list(enumerate(tasks))
    workers = {}                                   # conn -> [process, current index or None]

    def start():
        parent, child = ctx.Pipe()
        with _environ(env):
            proc = ctx.Process(target=_worker_main, args=(child, os.getpid(), slots), daemon=True)
            proc.start()
        child.close()
        workers[parent] = [proc, None]
        return parent

    def give(conn):
        if queue:
            workers[conn][1] = queue[0][0]
            conn.send(queue.pop(0))
        else:
            conn.send(None)
            workers[conn][0].join()
            del workers[conn]

    try:
        for _ in range(min(jobs, len(queue))):
            give(start())
        while workers:
            sentinels = {w[0].sentinel: c for c, w in workers.items()}
            for ready in wait(list(workers) + list(sentinels)):
                conn = sentinels.get(ready, ready)
                if conn not in workers:
                    continue
                proc, current = workers[conn]
                try:
                    msg = conn.recv() if conn.poll() else None
                except (EOFError, OSError):
                    msg = None
                if msg is not None:
                    workers[conn][1] = None
                    on_result(*msg)
                    give(conn)
                elif not proc.is_alive():
                    proc.join()
                    del workers[conn]
                    if current is not None:
                        on_result(current, _dead_worker_result(tasks[current], proc))
                    if queue:
                        give(start())
    finally:
        for conn, (proc, _) in list(workers.items()):
            if proc.is_alive():
                proc.kill()
            proc.join()
            conn.close()


def _dask_client(scheduler):
    """A connected Dask client, or a one-line TrainError (checked before anything is written)."""
    try:
        from distributed import Client
    except ImportError:
        raise TrainError("scheduler: Dask is not installed; pip install 'bottleneck-dynamics[dask]' "
                         "(dask[distributed])") from None
    try:
        return Client(scheduler, timeout=DASK_CONNECT_TIMEOUT)
    except Exception as exc:   # noqa: BLE001 - OSError, TimeoutError, ValueError for a bad address, ...
        raise TrainError(f"scheduler: cannot connect to {scheduler!r}: {exc}".splitlines()[0]) from None


def _run_dask(tasks, client, on_result):
    """Run the tasks on the connected Dask ``client``."""
    from distributed import as_completed
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


# ----------------------------------------------------------------------------
# the sweep
# ----------------------------------------------------------------------------

def _write_sweep(out, record):
    atomic_write_text(Path(out) / SWEEP_FILE, json.dumps(record, indent=2) + "\n")


def read_sweep(out, need_config=True):
    """The parsed ``sweep.json`` of a sweep directory (TrainError naming the file if missing or damaged).

    ``need_config=False`` (the figures, which also read a partial record): only the run records are checked."""
    path = Path(out) / SWEEP_FILE
    if not path.exists():
        raise TrainError(f"sweep: {out} holds no sweep ({SWEEP_FILE} expected)")
    try:
        record = read_json(path)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    for key, kind in (("config", dict), ("widths", list), ("seeds", list), ("runs", list)):
        if key != "runs" and not need_config:
            continue
        if not isinstance(record.get(key), kind):
            what = "missing" if key not in record else f"not a JSON {kind.__name__.replace('dict', 'object')}"
            raise TrainError(f"{path}: {key!r} is {what} (damaged or edited)")
    for k, run in enumerate(record["runs"]):
        if not isinstance(run, dict) or any(key not in run for key in ("width", "seed", "dir", "status")):
            raise TrainError(f"{path}: run record {k} lacks width, seed, dir or status (damaged or edited)")
        if Path(run["dir"]).is_absolute() or ".." in Path(run["dir"]).parts:
            raise TrainError(f"{path}: run record {k} has a directory outside the sweep: {run['dir']!r}")
    if not need_config:
        return record
    try:
        widths = parse_widths(record["widths"], "widths")
        seeds = parse_seeds(record["seeds"], "seeds")
    except TrainError as exc:
        raise TrainError(f"{path}: {exc} (damaged or edited)") from None
    want = {(str(w), s, run_subdir(w, s, len(seeds))) for w in widths for s in seeds}
    have = [(str(r["width"]), r["seed"], r["dir"]) for r in record["runs"]]
    if sorted(have, key=str) != sorted(want, key=str):
        extra = sorted(set(have) - want, key=str) or sorted(want - set(have), key=str)
        raise TrainError(f"{path}: the run records do not match the widths {widths} and seeds {seeds} (first "
                         f"difference: width {extra[0][0]}, seed {extra[0][1]}); sweep.json was edited")
    for k, run in enumerate(record["runs"]):
        if "lr" in run and not (isinstance(run["lr"], (int, float)) and math.isfinite(run["lr"]) and run["lr"] > 0):
            raise TrainError(f"{path}: run record {k} has the rate {run['lr']!r}, not a finite positive number "
                             "(edited)")
    try:
        cfg = TrainConfig.from_json({**record["config"], "width": widths[0], "seed": seeds[0]})
        cfg.validate()
    except (TrainError, TypeError) as exc:
        raise TrainError(f"{path}: {exc}") from None
    return record


def check_resumable(out, record):
    """Before a resume writes anything: every run folder's config.json and lr_probe.json must agree with
    sweep.json (TrainError, one line naming the file, otherwise)."""
    path = Path(out) / SWEEP_FILE
    if record["config"].get("lr_policy") == "per-width" and (Path(out) / "lr_probe.json").exists():
        from .lr_probe import read_probe_file
        probe = TrainConfig.from_json({**record["config"], "width": record["widths"][0],
                                       "seed": record["seeds"][0]})
        saved = read_probe_file(Path(out) / "lr_probe.json", probe)
        for r in record["runs"]:
            entry = saved["widths"].get(str(r["width"]))
            if "lr" in r and entry is not None and float(entry["lr"]) != float(r["lr"]):
                raise TrainError(f"{path}: run {r['dir']} has the rate {r['lr']!r} but lr_probe.json gives "
                                 f"{entry['lr']!r} (edited)")
    for r in record["runs"]:
        run = Path(out) / r["dir"]
        if not (run / "config.json").exists():
            continue
        cfg = TrainConfig.from_json({**record["config"], "width": r["width"], "seed": r["seed"],
                                     **({"lr": r["lr"]} if "lr" in r else {})})
        diff = [k for k in _other_options(run, cfg) if not (k == "lr" and "lr" not in r)]
        if diff:
            raise TrainError(f"{path}: its options differ from those of {run / 'config.json'} "
                             f"({', '.join(diff[:3])}); one of them was edited")


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
    """Fail fast, once, on problems every run would hit (bad options, missing data, backend).

    Returns the config as the runs record it (synthetic defaults filled in, absolute data_dir).
    """
    config.validate()
    if scheduler:                     # the workers' environment may differ from ours
        return config
    resolve_backend(config.backend, config.dtype)
    data = load_data(config)
    if config.batch_size > data.X_train.shape[0]:
        raise TrainError(f"batch_size: expected at most the number of training points "
                         f"({data.X_train.shape[0]}), got {config.batch_size}")
    return config


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
        Local worker processes (default: the number of cores).  Every run executes in a worker
        process with the thread variables fixed when the sweep was made (``thread_env`` in
        sweep.json), so that a resume with another ``jobs`` gives the same numbers.
    scheduler : str, optional
        Address of a Dask scheduler (``tcp://host:port``); overrides ``jobs``.
    force : overwrite an existing sweep (each old run is replaced once its new run has made a step)
    resume : continue the sweep in ``out`` with its saved options
    steps : for ``resume``, a new number of steps (default: the saved one; never fewer)
    plot : write the combined figures at the end
    log : callable for one-line progress messages

    Raises
    ------
    TrainError for bad options (nothing is written then); SweepFailed (after finishing every other
    run and the figures) when some runs failed or were interrupted.
    """
    if str(out).strip() == "":
        raise TrainError("out: expected a directory path, got ''")
    out = Path(out)
    try:
        fileio.check_output_folder(out)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    if scheduler is not None and not str(scheduler).strip():
        raise TrainError("scheduler: expected the address of a Dask scheduler (tcp://host:port), got ''")
    if resume:
        record = read_sweep(out)
        _refuse_links(out, record)                # before any run file is read
        check_resumable(out, record)
        saved_steps = int(record["config"]["steps"])
        if steps is not None:
            if int(steps) < saved_steps:
                raise TrainError(f"steps: the sweep in {out} runs to {saved_steps} steps; ask for at least that many")
            record["config"]["steps"] = int(steps)
    else:
        if config is None or not widths or not seeds:
            raise TrainError("sweep: expected a config, widths and seeds for a new sweep")
        if (out / SWEEP_FILE).exists() and not force:
            raise TrainError(f"out: {out} already holds a sweep; use --force to overwrite it "
                             "or --resume to continue it")
        config = dataclasses.replace(config)
        config.validate()
        if not scheduler:             # "auto" -> what runs here, recorded beside what was asked
            settle_backend(config, log)
        record = new_sweep_record(config, widths, seeds)
        if not force:
            taken = [r["dir"] for r in record["runs"] if (out / r["dir"] / "config.json").exists()]
            if taken:
                raise TrainError(f"out: {out / taken[0]} already holds a run; use --force to overwrite it")
    _refuse_links(out, record)
    probe = TrainConfig.from_json({**record["config"], "width": record["widths"][0],
                                   "seed": record["seeds"][0]})
    probe = _check_before_start(probe, scheduler)
    record["config"]["data_dir"] = probe.data_dir            # absolute, as the runs record it
    if not resume or not record.get("thread_env"):
        record["thread_env"] = thread_env(_jobs(jobs, record))
    client = _dask_client(scheduler) if scheduler else None   # connected before anything is written

    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = DirLock(out, ".lock").acquire()
    except (OSError, ValueError) as exc:
        if client is not None:
            client.close()
        raise TrainError(str(exc) if isinstance(exc, ValueError) else
                         f"out: cannot create {out} ({exc.strerror or exc})") from None
    try:
        try:
            return _run_sweep_locked(out, record, jobs, client, scheduler, force and not resume, plot, log)
        except KeyboardInterrupt:           # before the runs started (probe, set-up): the runs say the rest
            if resume or not made or any((out / r["dir"]).exists() for r in record["runs"]):
                raise RunFailed(f"interrupted before the runs started; continue with --resume {out}") from None
            raise RunFailed("interrupted before the sweep started; nothing to resume; start it again") from None
        except fileio.DiskFull as exc:
            raise RunFailed(f"{exc}; finished runs are kept; free some space and continue with --resume {out}") \
                from None
    except BaseException as exc:
        if made and not isinstance(exc, SweepFailed) and not any((out / r["dir"]).exists() for r in record["runs"]):
            lock.release()
            shutil.rmtree(out, ignore_errors=True)     # a failed start leaves nothing behind
        raise
    finally:
        lock.release()


def _refuse_links(out, record):
    """TrainError (one line) if the sweep directory, its own files, a run folder (or a folder on the way
    to it) or a run's files are symbolic links: a sweep moves, clears and writes only inside ``out``."""
    from .lr_probe import PROBE_FILE
    from .train import LOCK_FILE, RUN_FILES
    try:
        fileio.refuse_link(out)
        if record is not None:
            fileio.refuse_links_inside(out, (SWEEP_FILE, PROBE_FILE, LOCK_FILE))
            fileio.refuse_links_inside(out, [str(Path(r["dir"]) / f) for r in record["runs"]
                                             for f in (*RUN_FILES, LOCK_FILE, ".")])
    except ValueError as exc:
        raise TrainError(str(exc)) from None


def _jobs(jobs, record):
    """Local workers: ``jobs``, else one per GPU (GPU backend) or per core; at most one per run."""
    default = devices.default_jobs(record["config"]["backend"], default_jobs())
    return max(1, min(jobs or default, len(record["runs"])))


def _run_sweep_locked(out, record, jobs, client, scheduler, force, plot, log):
    if record["config"].get("lr_policy") == "per-width":   # one rate per width from a recorded probe
        from .lr_probe import PROBE_FILE, per_width_rates
        if force and (out / PROBE_FILE).exists():
            (out / PROBE_FILE).unlink()
        probe = TrainConfig.from_json({**record["config"], "width": record["widths"][0],
                                       "seed": record["seeds"][0]})
        n = 1 if scheduler else min(_jobs(jobs, record), len(record["widths"]))
        rates = per_width_rates(out, probe, record["widths"], log=log,
                                starmap=(lambda fn, args: _pool_starmap(fn, args, n, record["thread_env"]))
                                if n > 1 else None)
        for r in record["runs"]:
            r["lr"] = rates[str(r["width"])]
    tasks = []
    for r in record["runs"]:
        cfg = {**record["config"], "width": r["width"], "seed": r["seed"], **({"lr": r["lr"]} if "lr" in r else {})}
        if force:
            r["status"], r["overwrite"] = "pending", True
        tasks.append({"config": cfg, "dir": str(out / r["dir"]), "overwrite": bool(r.get("overwrite"))})
    _write_sweep(out, record)

    n = len(tasks)
    jobs = _jobs(jobs, record)
    where = f"Dask scheduler {scheduler}" if scheduler else f"{jobs} local worker(s)"
    log(f"sweep {out}: {n} runs ({len(record['widths'])} widths x {len(record['seeds'])} seeds, "
        f"{record['config']['steps']} steps) on {where}")
    finished = [0]

    def on_result(i, res):
        run = record["runs"][i]
        run.update(status=res["status"], error=res["error"], final=res["final"], action=res["action"])
        if res["status"] == "done":
            run.pop("overwrite", None)
        if res.get("traceback"):          # an unexpected error: keep the details for the user
            run["traceback"] = res["traceback"]
        else:
            run.pop("traceback", None)
        finished[0] += 1
        extra = (f"train_loss {float(res['final']['train_loss']):.4g} at step {res['final']['step']}"
                 if res["final"] else "")
        what = ({"started": "done,", "resumed": "resumed and done,", "skipped": "already done,"}[res["action"]]
                if res["status"] == "done" else f"{res['status'].upper()}: {res['error']}")
        log(f"[{finished[0]}/{n}] {run['dir']}: {what} {extra}".rstrip())
        _write_sweep(out, record)

    t0 = time.perf_counter()
    try:
        if client is not None:
            _run_dask(tasks, client, on_result)
        else:
            _run_local(tasks, jobs, record["thread_env"], on_result)
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
        raise SweepFailed(f"{len(failed)} of {n} runs failed or were interrupted (first: {first['dir']}: "
                          f"{first['error']}); details in {out / SWEEP_FILE}; continue with --resume {out}")
    return record
