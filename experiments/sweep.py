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

Execution (:mod:`experiments.pool`): local worker processes (``jobs``, started with ``spawn``; every run
executes in a worker, also with ``jobs = 1``; a script that calls :func:`run_sweep` needs the usual
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

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

from refimpl import __version__
from . import devices, fileio
from .pool import dask_client, default_jobs, pool_starmap, run_dask, run_local, thread_env
from .fileio import SWEEP_FILE
from .fileio import atomic_write_text
from .runfolder import (LOCK_FILE, RESUME_FIELDS, RUN_FILES, check_out, lock_folder, read_metrics, read_run_json,
                        refuse_existing, refuse_links, require_record, run_state)
from .backends import resolve_backend, settle_backend
from .train import LEGACY_DEFAULTS, TrainConfig, load_data, train
from .validate import RunFailed, TrainError, parse_seeds, parse_widths, width_key  # noqa: F401 (re-exported)

class SweepFailed(RunFailed):
    """Some runs of the sweep failed; the message is a one-line summary."""


# ----------------------------------------------------------------------------
# options
# ----------------------------------------------------------------------------

def run_subdir(width, seed, n_seeds):
    """Relative directory of the run (width, seed): ``width-<d>`` or ``width-<d>/seed-<s>``."""
    base = f"width-{width}"
    return base if n_seeds == 1 else f"{base}/seed-{seed}"


# ----------------------------------------------------------------------------
# one run (executed in a worker)
# ----------------------------------------------------------------------------

def _quiet(_msg):
    pass


def _other_options(out, config):
    """Options (names) in which the run in ``out`` differs from ``config``, besides steps and locations."""
    saved = read_run_json(out / "config.json").get("config")
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
        rows = read_metrics(Path(out) / "metrics.csv")
    except TrainError:
        return None
    return rows[-1] if rows else None


# ----------------------------------------------------------------------------
# the sweep
# ----------------------------------------------------------------------------

def _write_sweep(out, record):
    atomic_write_text(Path(out) / SWEEP_FILE, json.dumps(record, indent=2) + "\n")


def read_sweep(out, need_config=True):
    """The parsed ``sweep.json`` of a sweep directory (TrainError naming the file if missing or damaged).

    ``need_config=False`` (the figures, which also read a partial record): only the run records are checked."""
    path = require_record(out, SWEEP_FILE, "sweep", prefix="sweep") / SWEEP_FILE
    record = read_run_json(path)
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
    out = check_out(out)
    if scheduler is not None and not str(scheduler).strip():
        raise TrainError("scheduler: expected the address of a Dask scheduler (tcp://host:port), got ''")
    if resume:
        record = read_sweep(out)
        refuse_links(out, _sweep_entries(record))     # before any run file is read
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
            refuse_existing(out, "sweep")
        config = dataclasses.replace(config)
        config.validate()
        if not scheduler:             # "auto" -> what runs here, recorded beside what was asked
            settle_backend(config, log)
        record = new_sweep_record(config, widths, seeds)
        if not force:
            taken = [r["dir"] for r in record["runs"] if (out / r["dir"] / "config.json").exists()]
            if taken:
                refuse_existing(out / taken[0], "run", hint="use --force to overwrite it")
    refuse_links(out, _sweep_entries(record))
    probe = TrainConfig.from_json({**record["config"], "width": record["widths"][0],
                                   "seed": record["seeds"][0]})
    probe = _check_before_start(probe, scheduler)
    record["config"]["data_dir"] = probe.data_dir            # absolute, as the runs record it
    if not resume or not record.get("thread_env"):
        record["thread_env"] = thread_env(_jobs(jobs, record))
    client = dask_client(scheduler) if scheduler else None   # connected before anything is written

    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = lock_folder(out)
    except (OSError, TrainError) as exc:
        if client is not None:
            client.close()
        raise TrainError(str(exc) if isinstance(exc, TrainError) else
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


def _sweep_entries(record):
    """The entries of a sweep directory that may not be symbolic links (:func:`experiments.runfolder.refuse_links`):
    its own files, every run folder (and the folders on the way to it) and the run's files; a sweep moves,
    clears and writes only inside its directory."""
    from .lr_probe import PROBE_FILE
    return [SWEEP_FILE, PROBE_FILE, LOCK_FILE, *(str(Path(r["dir"]) / f) for r in record["runs"]
                                                 for f in (*RUN_FILES, LOCK_FILE, "."))]


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
                                starmap=(lambda fn, args: pool_starmap(fn, args, n, record["thread_env"]))
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

    def on_death(i, error):                   # its worker process died: the run is resumable
        on_result(i, {"status": "interrupted", "action": None, "final": _final_row(tasks[i]["dir"]),
                      "seconds": None, "traceback": None, "error": error})

    t0 = time.perf_counter()
    try:
        if client is not None:
            run_dask(run_one, tasks, client, on_result)
        else:
            run_local(run_one, tasks, jobs, record["thread_env"], on_result, on_death,
                      backend=record["config"]["backend"])
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
