"""``bottleneck campaign``: a fixed, prioritised list of paper-scale runs that fits a time budget.

The list is a JSON file kept in the repository (:data:`PLAN_FILE`, ``experiments/campaign_plan.json``):
conditions in the order that settles the most per minute, each a set of :class:`experiments.train.TrainConfig`
options, run at every width and seed of the plan (within a condition seed by seed, widths in order), and
the parameters of the verdict rule (:func:`experiments.plots.acceleration_verdict`).

:func:`run` goes through the runs in that order.  Before each run it estimates the run's time from the
flop model (:func:`run_flops`) and the measured throughput (GFLOP/s): first a one-step calibration
(:func:`experiments.bench.measure`, halved: a run's early steps meet a short history), then the runs
finished in this folder (their flops over their wall time).  It starts only runs that fit the remaining
budget and skips the others (a cheaper one further down may still fit); with ``partial`` it also
starts the first run that does not fit.  Each run is :func:`experiments.train.train` in a subprocess
with the remaining budget as its time limit, checkpointed at every evaluation: a run cut by the budget
keeps its folder and its last checkpoint and continues from there next time (on the same backend;
:func:`experiments.train.resume`), so no work is lost between sessions.  The checkpoint (the history:
tens of MB to GB at paper scale) waits beside the output folder, in ``DIR.resume``
(:func:`resume_store`), so that ``DIR`` holds compact results only; without it the run starts again.  Outputs are compact: ``config.json``,
``metrics.csv``, ``summary.json`` and ``loss.png`` per run (the history checkpoint is removed when the
run ends), a ``sweep.json`` per condition, and ``campaign.json`` (every run's status, estimate and wall
time; the calibration; each session).  The same folder again skips what is done (finished or diverged
runs of the same options: a divergence is a result) and continues; a run stopped by another error (e.g. its
data missing) is tried again, and the rest of its condition is skipped for that session.  ``done_from``
(``--done-from``) takes the finished runs of another campaign folder first (:func:`import_done`).  On a gpu in
float64 the calibration also times the FP64 tensor cores, and the session's runs take them where they were
faster (:func:`choose_tensor_cores`; ``BOTTLENECK_TENSOR_CORES``, where set, decides instead).

:func:`report` writes, from whatever has run, each condition's tables and figures (the sweep tables of
:mod:`experiments.plots`) and ``report.md`` / ``report.json``: runs done, final losses and the verdict.

Layout of the output folder::

    DIR/campaign.json  DIR/report.md  DIR/report.json
    DIR/<condition>/sweep.json  DIR/<condition>/tables.md  DIR/<condition>/*.png
    DIR/<condition>/width-<w>/seed-<s>/{config.json, metrics.csv, summary.json, loss.png}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .fileio import atomic_write_text, read_csv, read_json
from .validate import TrainError

ROOT = Path(__file__).resolve().parent.parent
PLAN_FILE = Path(__file__).resolve().parent / "campaign_plan.json"
STATE_FILE = "campaign.json"

#: (d0, dr) of the image data sets (the generated ones take d0 from the options; dr = 1, or d0 for an
#: autoencoder).
IMAGE_SHAPES = {"mnist": (784, 10), "cifar": (3072, 2)}
#: Seconds a run costs besides its flops (a new Python process, imports, data, the device's start).
START_S = {"gpu": 8.0, "cpu": 4.0, "numpy": 3.0}
#: A run's flops are done at this fraction of the calibration's rate until runs of this folder are timed.
CALIBRATION_EFFICIENCY = 0.5


# ------------------------------------------------------------------------ plan

def load_plan(path=None):
    """The plan (dict) from ``path`` (default :data:`PLAN_FILE`), checked: conditions with unique
    names and valid options, widths, seeds, verdict parameters.  TrainError (one line) if not."""
    from .train import TrainConfig
    path = Path(path) if path else PLAN_FILE
    try:
        plan = read_json(path)
    except (OSError, ValueError) as exc:
        raise TrainError(f"plan: cannot read {path} ({exc})") from None
    for key, kind in (("conditions", list), ("widths", list), ("seeds", list), ("verdict", dict)):
        if not isinstance(plan.get(key), kind):
            raise TrainError(f"plan: {path}: {key!r} missing or not a JSON {'array' if kind is list else 'object'}")
    names = [c.get("name") for c in plan["conditions"]]
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n and "/" not in n for n in names):
        raise TrainError(f"plan: {path}: conditions need unique names without '/'")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for c in plan["conditions"]:
        bad = set(c.get("options", {})) - fields
        if bad:
            raise TrainError(f"plan: condition {c['name']}: unknown options {sorted(bad)}")
        for w in c.get("widths", plan["widths"]):
            cfg = TrainConfig(**{**plan.get("defaults", {}), **c["options"], "width": w, "seed": 0})
            cfg.validate()
    return plan


def planned_runs(plan, only=None, widths=None, seeds=None):
    """The runs in campaign order: [{id, condition, width, seed, dir, options}]."""
    from .sweep import run_subdir
    out = []
    for c in plan["conditions"]:
        if only and c["name"] not in only:
            continue
        c_widths = c.get("widths", plan["widths"])
        c_seeds = c.get("seeds", plan["seeds"])
        for s in c_seeds:
            if seeds is not None and s not in seeds:
                continue
            for w in c_widths:
                if widths is not None and w not in widths:
                    continue
                rel = f"{c['name']}/{run_subdir(w, s, len(c_seeds))}"
                out.append({"id": rel, "condition": c["name"], "width": w, "seed": s, "dir": rel,
                            "options": {**plan.get("defaults", {}), **c["options"], "width": w, "seed": s}})
    return out


def options_digest(options):
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------ cost model

def data_shape(options):
    """(n_train, n_test, d0, dr) of a run from its options (no data loaded)."""
    ds = options.get("dataset", "synthetic")
    if ds in IMAGE_SHAPES:
        d0, dr = IMAGE_SHAPES[ds]
    else:
        d0 = options.get("d0") or 16
        dr = options.get("dr") or 1
    if options.get("task") == "autoencoder":
        dr = d0
    return int(options.get("train_size") or 2000), int(options.get("test_size") or 2000), int(d0), int(dr)


def run_flops(options):
    """Work of one run by the flop model of docs/BENCHMARKS.md, extended to a whole run (MATH §4).

    Per step t (history of M = B t rows): the history pass for the batch, B M (4d + 2dr); the update of
    every tracked input's embedding and output against the batch, (N + N_test) B (2 d0 + 4d + 2dr);
    per evaluation, the history pass at (eval rows + N_test) queries.  ``inf`` (no bottleneck, no
    history of embeddings) costs only the update of the tracked outputs, (N + N_test) B (2 d0 + 2 dr) per
    step.  A model for planning; its constant is fitted by the measured throughput.
    """
    n_train, n_test, d0, dr = data_shape(options)
    B = int(options.get("batch_size", 20))
    T = int(options.get("steps", 600))
    E = int(options.get("eval_every", 50))
    q = min(int(options.get("eval_size", 1000)), n_train) + n_test
    w = options.get("width", 10)
    if w == "inf":                      # outputs only: every tracked input's kernel with the batch
        return float((n_train + n_test) * B * (2 * d0 + 2 * dr) * T)
    pair = 4 * int(w) + 2 * dr
    history = B * B * pair * T * (T + 1) / 2
    tracked = (n_train + n_test) * B * (2 * d0 + pair) * T
    evals = (T // E + 1) * q * (B * T / 2) * pair
    return float(history + tracked + evals)


def calibrate(backend, dtype="float64", log=print):
    """GFLOP/s of one step of ``backend`` (experiments.bench.measure at d = 100), times
    :data:`CALIBRATION_EFFICIENCY`; seconds it took; and on a gpu with FP64 tensor cores in float64 the step's
    ``tensor_core_speedup`` (the plain route's time over the tensor cores', both timed there), else None."""
    from accel import get_backend
    from . import bench
    t = time.perf_counter()
    M = 100_000 if backend == "gpu" else 20_000
    res = bench.measure(get_backend(backend, dtype), 100, M, reps=2)
    gf = res["gflops"] * CALIBRATION_EFFICIENCY
    speedup = res.get("tensor_core_speedup")
    log(f"campaign: calibration on {backend}/{dtype}: {res['gflops']:.3g} GFLOP/s at M = {M}, d = 100; "
        f"planning with {gf:.3g}" + (f"; FP64 tensor cores x{speedup:.2f}" if speedup else ""))
    return gf, time.perf_counter() - t, speedup


#: A gpu / float64 campaign takes the FP64 tensor cores when its calibration step ran at least this much faster
#: on them (and BOTTLENECK_TENSOR_CORES is not set: then that decides).
TENSOR_CORE_MIN_SPEEDUP = 1.05
#: Where campaign.json keeps the calibration's tensor-core speedup (under "calibration").
TENSOR_CORE_KEY = "gpu/float64/tensor_core_speedup"


def choose_tensor_cores(state, backend, dtype, env=None):
    """(use, why) for this session's runs: ``use`` True to run them with BOTTLENECK_TENSOR_CORES=1, None to leave
    the environment as it is (not gpu / float64, the variable already set, or no calibration of them)."""
    from accel.xpcore import TENSOR_CORES_ENV
    env = os.environ if env is None else env
    if (backend, dtype) != ("gpu", "float64"):
        return None, None
    if TENSOR_CORES_ENV in env:
        return None, f"FP64 tensor cores as {TENSOR_CORES_ENV}={env[TENSOR_CORES_ENV]} says"
    sp = state.get("calibration", {}).get(TENSOR_CORE_KEY)
    if sp is None:
        return None, None
    if sp >= TENSOR_CORE_MIN_SPEEDUP:
        return True, f"FP64 tensor cores on: the calibration step ran x{sp:.2f} faster on them"
    return None, (f"FP64 tensor cores off: the calibration step ran x{sp:.2f} on them "
                  f"(below x{TENSOR_CORE_MIN_SPEEDUP})")


def _timed(state, backend):
    return [r for r in state["runs"].values() if r.get("backend") == backend and r.get("status") == "done"
            and r.get("train_s")]


def throughput(state, backend, prior):
    """GFLOP/s for the estimates: the finished runs of this folder on ``backend`` (their flops over
    their training time, from metrics.csv), else ``prior``."""
    done = _timed(state, backend)
    if not done:
        return prior
    return sum(r["flops"] for r in done) / max(sum(r["train_s"] for r in done), 1e-9) / 1e9


def start_s(state, backend):
    """Seconds a run costs besides training (process start, imports, data): the median over this
    folder's finished runs, else :data:`START_S`."""
    done = _timed(state, backend)
    if not done:
        return START_S.get(backend, 5.0)
    return float(np.median([max(r["wall_s"] - r["train_s"], 0.0) for r in done]))


def estimate_s(options, gflops, startup):
    """Estimated seconds of one run: start-up plus its flops (:func:`run_flops`) at ``gflops``."""
    return startup + run_flops(options) / (gflops * 1e9)


def _train_seconds(run_dir):
    """The run's own training time (last wall_s of metrics.csv), or None."""
    rows = read_csv(Path(run_dir) / "metrics.csv")
    try:
        return float(rows[-1]["wall_s"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


# ------------------------------------------------------------------------ state

def _empty_state(plan):
    return {"plan": plan.get("name"), "plan_digest": options_digest(plan), "runs": {}, "sessions": []}


def read_state(out, plan):
    path = Path(out) / STATE_FILE
    if not path.exists():
        return _empty_state(plan)
    try:
        state = read_json(path)
    except ValueError as exc:
        raise TrainError(f"campaign: {path} is damaged ({exc}); move it away to start over") from None
    if not isinstance(state.get("runs"), dict):
        raise TrainError(f"campaign: {path} has no 'runs' object (damaged or edited)")
    state.setdefault("sessions", [])
    return state


def write_state(out, state):
    atomic_write_text(Path(out) / STATE_FILE, json.dumps(state, indent=1) + "\n")


def is_done(out, state, run):
    """Finished (or diverged: a divergence is a result) with the same options, and its files present.
    A run that stopped on an error (missing data, ...) is not done: it is tried again next time."""
    rec = state["runs"].get(run["id"])
    if not rec or rec.get("digest") != options_digest(run["options"]):
        return False
    if rec.get("status") == "diverged":
        return True
    return rec.get("status") == "done" and (Path(out) / run["dir"] / "summary.json").exists()


def import_done(out, state, src, runs, log=print):
    """Take the runs of ``runs`` finished in the campaign folder ``src`` (done or diverged, with the same options
    and their files; e.g. the repository's docs/campaign) into ``out``: each run's folder is copied (through a
    temporary name, then renamed) and its record added to ``state``.  A run ``out`` already has (finished, cut
    or its folder present) is left as it is.  Returns the ids taken."""
    src = Path(src)
    if not (src / STATE_FILE).is_file():
        raise TrainError(f"done-from: {src} holds no campaign ({STATE_FILE} not found)")
    if src.resolve() == Path(out).resolve():
        raise TrainError(f"done-from: {src} is the campaign folder itself (--out)")
    try:
        theirs = read_json(src / STATE_FILE)
    except ValueError as exc:
        raise TrainError(f"done-from: {src / STATE_FILE} is damaged ({exc})") from None
    if not isinstance(theirs.get("runs"), dict):
        raise TrainError(f"done-from: {src / STATE_FILE} has no 'runs' object (damaged or edited)")
    taken = []
    for r in runs:
        if r["id"] in state["runs"] or (Path(out) / r["dir"]).exists() or not is_done(src, theirs, r):
            continue
        dst = Path(out) / r["dir"]
        tmp = dst.with_name(dst.name + ".importing")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src / r["dir"], tmp)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dst)
        state["runs"][r["id"]] = dict(theirs["runs"][r["id"]], imported_from=str(src))
        taken.append(r["id"])
    if taken:
        write_state(out, state)
        log(f"campaign: {len(taken)} finished run(s) taken from {src}")
    return taken


def folder_bytes(path):
    """Total size of the files under ``path``."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


# ------------------------------------------------------------------------ running

#: Exit status of the worker for a run that diverged (a result: recorded, not rerun).
EXIT_DIVERGED = 3

_WORKER = ("import json, signal, sys\n"
           "from experiments.train import TrainConfig, train, resume\n"
           "from experiments import stop\n"   # the budget's SIGTERM stops the run as Ctrl-C: checkpoint kept
           "signal.signal(signal.SIGTERM, stop.on_sigterm)\n"
           "spec = json.loads(sys.argv[1])\n"
           "try:\n"
           "    if spec['resume']:\n"
           "        resume(spec['out'], log=lambda m: None)\n"
           "    else:\n"
           "        train(TrainConfig(**spec['options']), spec['out'], force=True, log=lambda m: None)\n"
           "except Exception as exc:\n"
           "    text = str(exc).splitlines()[0] if str(exc) else ''\n"
           "    print(f'{type(exc).__name__}: {text}', file=sys.stderr)\n"
           "    sys.exit(3 if 'Divergence' in type(exc).__name__ or 'diverged' in text else 1)\n")


def _run_one(options, out, timeout, resume=False, env=None):
    """Train one run (or continue it: ``resume``) in a subprocess (the shared training loop; environment ``env``,
    default this process's); (status, wall s, error line)."""
    spec = json.dumps({"options": options, "out": str(out), "resume": bool(resume)})
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, spec], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        _, err = proc.communicate(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        proc.terminate()                       # SIGTERM: the run stops as on Ctrl-C
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        return "cut", time.perf_counter() - t, "cut by the budget"
    wall = time.perf_counter() - t
    if proc.returncode == 0:
        return "done", wall, None
    lines = [x for x in (err or "").strip().splitlines() if x.strip()]
    return ("diverged" if proc.returncode == EXIT_DIVERGED else "error"), wall, \
        (lines[-1] if lines else f"exit {proc.returncode}")


def _compact(run_dir):
    """Remove what is not a compact result (the history checkpoint, staging leftovers)."""
    run_dir = Path(run_dir)
    for name in ("checkpoint.npz",):
        p = run_dir / name
        if p.exists():
            p.unlink()


def resume_store(out):
    """The folder beside the output, ``DIR.resume``, where a run cut by the budget keeps its history
    checkpoint between sessions: ``DIR`` itself holds compact results only."""
    out = Path(out)
    return out.parent / (out.name + ".resume")


def _park(out, rel):
    """Move a cut run's checkpoint from its run folder into :func:`resume_store` (one rename)."""
    src = Path(out) / rel / "checkpoint.npz"
    if src.exists():
        dst = resume_store(out) / rel / "checkpoint.npz"
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


def _unpark(out, rel):
    """Put a parked checkpoint back into its run folder, to continue the run (one rename)."""
    src = resume_store(out) / rel / "checkpoint.npz"
    dst = Path(out) / rel / "checkpoint.npz"
    if src.exists() and dst.parent.is_dir() and not dst.exists():
        os.replace(src, dst)


def _drop_parked(out, rel):
    """Remove a run's parked checkpoint (the run finished, restarts or was removed)."""
    p = resume_store(out) / rel / "checkpoint.npz"
    if p.exists():
        p.unlink()
    for d in [p.parent, *p.parent.parents]:
        if d == resume_store(out).parent:
            break
        try:
            d.rmdir()                               # only empty folders
        except OSError:
            break


def checkpoint_every(options, backend):
    """Steps between a campaign run's checkpoints: every evaluation on the CPU (a paper-scale run there
    spans sessions: a cut loses at most one interval); on the gpu a quarter of the run, rounded to
    evaluations: there a run takes a minute or so, while a checkpoint of the history at paper scale is
    hundreds of MB (width 1000, 80,000 rows: 640 MB), so checkpoints at every evaluation would cost more
    than the steps, and a lent machine's ``DIR.resume`` rarely outlives the session anyway.  A plan
    whose options give ``checkpoint_every`` keeps it."""
    if options.get("checkpoint_every"):
        return int(options["checkpoint_every"])
    if backend != "gpu":
        return None
    E = int(options.get("eval_every", 50))
    return max(E, (int(options.get("steps", 600)) // 4) // E * E)


def _cut_step(run_dir):
    """The step a cut run continues from: its checkpoint's (:func:`experiments.runfolder.run_state` says
    "resume" and ``metrics.csv`` reached it), else None (nothing to continue: it starts again)."""
    from .runfolder import run_state
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoint.npz").exists() or run_state(run_dir, 1 << 62) != "resume":
        return None
    rows = read_csv(run_dir / "metrics.csv")
    try:
        step = int(rows[-1]["step"]) if rows else 0
    except (KeyError, TypeError, ValueError):
        return None
    return step or None                         # a checkpoint at step 0 saves nothing


def remaining_flops(options, step):
    """Flops left after ``step`` of a run (:func:`run_flops` of the whole run less that of its first
    ``step`` steps; the model's cost grows with the history, so the late steps cost the most)."""
    if not step:
        return run_flops(options)
    done = run_flops({**options, "steps": step})
    return max(run_flops(options) - done, 0.0)


def _write_sweep_records(out, plan, runs, state):
    """A sweep.json per condition (what experiments.plots reads) listing the condition's results: its
    finished and diverged runs (statuses from the campaign state); a run cut by the budget, still
    going, or stopped by an error is left out until it finishes."""
    from .sweep import new_sweep_record
    from .train import TrainConfig
    for c in plan["conditions"]:
        mine = [r for r in runs if r["condition"] == c["name"]]
        if not mine or not (Path(out) / c["name"]).exists():
            continue
        base = TrainConfig(**{**plan.get("defaults", {}), **c["options"], "width": mine[0]["width"], "seed": 0})
        base.validate()
        rec = new_sweep_record(base, c.get("widths", plan["widths"]), c.get("seeds", plan["seeds"]))
        kept = []
        for r in rec["runs"]:
            st = state["runs"].get(f"{c['name']}/{r['dir']}", {})
            if st.get("status") not in ("done", "diverged"):
                continue                    # results only: a run cut, still going or stopped by an error is not one
            r["status"] = {"done": "done", "diverged": "failed"}[st["status"]]
            r["error"] = st.get("error")
            kept.append(r)
        rec["runs"] = kept
        atomic_write_text(Path(out) / c["name"] / "sweep.json", json.dumps(rec, indent=2) + "\n")


def run(out, budget_s, backend="auto", dtype="float64", plan_path=None, data_dir=None, gflops=None,
        only=None, widths=None, seeds=None, max_runs=None, partial=False, done_from=None, log=print):
    """Run the plan's runs that fit ``budget_s`` seconds into ``out``; returns the session record.

    ``backend`` "auto" is the gpu where it can run, else cpu.  ``gflops`` sets the planning throughput
    instead of the calibration.  ``only`` (condition names), ``widths``, ``seeds`` restrict the plan;
    ``max_runs`` caps the runs started.  ``partial``: also start (or continue) the first run whose
    estimate exceeds what is left; the budget cuts it and it continues from its checkpoint next time.
    ``done_from``: a campaign folder whose finished runs count as done here (:func:`import_done`: copied in
    first), so that a short GPU window starts where the CPU sessions left off.  A run cut earlier continues from
    its checkpoint when this session's backend is the one it ran on; on another backend it starts again.
    """
    from .backends import auto_backend, resolve_backend
    t0 = time.perf_counter()
    plan = load_plan(plan_path)
    if only:
        unknown = set(only) - {c["name"] for c in plan["conditions"]}
        if unknown:
            raise TrainError(f"only: unknown conditions {sorted(unknown)}; the plan has "
                             + ", ".join(c["name"] for c in plan["conditions"]))
    if backend == "auto":
        backend = auto_backend(dtype)
    else:
        resolve_backend(backend, dtype)         # fails now, with the reason, if unavailable
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = read_state(out, plan)
    runs = planned_runs(plan, only, widths, seeds)
    imported = import_done(out, state, done_from, runs, log) if done_from else []
    todo = [r for r in runs if not is_done(out, state, r)]
    session = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "budget_s": budget_s, "backend": backend,
               "dtype": dtype, "planned": len(runs), "done_before": len(runs) - len(todo), "ran": [],
               "skipped": [], "cut": [], **({"imported": len(imported)} if done_from else {})}
    log(f"campaign: {len(runs)} runs in the plan, {len(runs) - len(todo)} done, {len(todo)} to go; "
        f"budget {budget_s:.0f} s on {backend}/{dtype}")
    if todo and gflops is None:
        prior = state.get("calibration", {}).get(f"{backend}/{dtype}")
        if prior is None and not any(r.get("backend") == backend for r in state["runs"].values()):
            prior, secs, speedup = calibrate(backend, dtype, log)
            state.setdefault("calibration", {})[f"{backend}/{dtype}"] = prior
            if speedup is not None:                # only gpu / float64 times the tensor cores
                state["calibration"][TENSOR_CORE_KEY] = speedup
            session["calibration_s"] = round(secs, 2)
        gflops_prior = prior if prior is not None else 1.0
    else:
        gflops_prior = gflops
    use_tc, why = choose_tensor_cores(state, backend, dtype)
    env = None
    if use_tc:
        from accel.xpcore import TENSOR_CORES_ENV
        env = dict(os.environ, **{TENSOR_CORES_ENV: "1"})
        if gflops is None:                      # the calibration timed the plain route
            gflops_prior *= state["calibration"][TENSOR_CORE_KEY]
    if why:
        session["tensor_cores"] = why
        log(f"campaign: {why}")
    started = 0
    broken = {}                                 # condition -> the error of its first failed run this session
    for r in todo:
        if r["condition"] in broken:
            session["skipped"].append({"id": r["id"], "why": f"its condition failed: {broken[r['condition']]}"})
            continue
        left = budget_s - (time.perf_counter() - t0)
        if left <= 1.0 or (max_runs is not None and started >= max_runs):
            session["skipped"] += [{"id": x["id"], "why": "budget spent" if left <= 1.0 else "max runs reached"}
                                   for x in todo[todo.index(r):]]
            break
        run_dir = out / r["dir"]
        prev = state["runs"].get(r["id"]) or {}
        step = None
        if prev.get("status") == "cut" and prev.get("digest") == options_digest(r["options"]):
            _unpark(out, r["dir"])
            step = _cut_step(run_dir) if (prev.get("backend"), prev.get("dtype")) == (backend, dtype) else None
            if step is None:
                log(f"campaign: {r['id']} was cut on {prev.get('backend')}/{prev.get('dtype')}; "
                    f"it starts again on {backend}/{dtype}")
        gf = gflops if gflops is not None else throughput(state, backend, gflops_prior)
        est = start_s(state, backend) + remaining_flops(r["options"], step) / (gf * 1e9)
        if est > left and not (partial and started == 0):
            session["skipped"].append({"id": r["id"], "why": f"estimate {est:.0f} s > {left:.0f} s left"})
            log(f"campaign: skip {r['id']}: estimate {est:.0f} s > {left:.0f} s left")
            continue
        options = {**r["options"], "backend": backend, "dtype": dtype, "data_dir": data_dir,
                   "checkpoint_every": checkpoint_every(r["options"], backend)}
        where = f"from step {step}" if step else "from the start"
        log(f"campaign: run {r['id']} {where} (estimate {est:.0f} s, {left:.0f} s left)")
        status, wall, err = _run_one(options, run_dir, left, resume=bool(step), env=env)
        started += 1
        wall_before = float(prev.get("wall_s") or 0.0) if step else 0.0
        if status == "cut":
            reached = _cut_step(run_dir)
            session["cut"].append(r["id"])
            if reached is None:
                shutil.rmtree(run_dir, ignore_errors=True)
                _drop_parked(out, r["dir"])
                state["runs"].pop(r["id"], None)
                log(f"campaign: {r['id']} cut by the budget after {wall:.0f} s before its first checkpoint "
                    "(removed; it starts again next time)")
            else:
                state["runs"][r["id"]] = {"status": "cut", "step": reached, "backend": backend, "dtype": dtype,
                                          "digest": options_digest(r["options"]), "flops": run_flops(r["options"]),
                                          "wall_s": round(wall_before + wall, 2)}
                _park(out, r["dir"])
                log(f"campaign: {r['id']} cut by the budget after {wall:.0f} s at step {reached} of "
                    f"{r['options'].get('steps')} (kept; it continues from its checkpoint next time, which "
                    f"waits in {resume_store(out)})")
            break
        _compact(run_dir)
        _drop_parked(out, r["dir"])
        state["runs"][r["id"]] = {"status": status, "backend": backend, "dtype": dtype,
                                  "digest": options_digest(r["options"]), "flops": run_flops(r["options"]),
                                  "estimate_s": round(est, 2), "wall_s": round(wall_before + wall, 2),
                                  "train_s": _train_seconds(run_dir) if status == "done" else None, "error": err}
        if step:
            state["runs"][r["id"]]["continued_from"] = step
        session["ran"].append(r["id"])
        if status == "error":
            broken[r["condition"]] = err
            session.setdefault("errors", []).append({"id": r["id"], "error": err})
            log(f"campaign: {r['id']} stopped on an error; the rest of {r['condition']} is skipped this session")
        write_state(out, state)
        log(f"campaign: {r['id']} {status} in {wall:.0f} s" + (f": {err}" if err else ""))
    session["used_s"] = round(time.perf_counter() - t0, 2)
    session["left"] = sum(1 for r in runs if not is_done(out, state, r))
    state["sessions"].append(session)
    _write_sweep_records(out, plan, runs, state)
    state["output_bytes"] = folder_bytes(out)
    write_state(out, state)
    log(f"campaign: {len(session['ran'])} run(s) this session, {session['left']} left; "
        f"output {state['output_bytes'] / 2**20:.2f} MiB in {out}")
    return session


# ------------------------------------------------------------------------ report

def _verdict_steps(runs, fractions):
    """The evaluation steps common to every run nearest the fractions of the horizon (0 left out)."""
    common = None
    for rs in runs.values():
        for r in rs:
            s = set(int(x) for x in r["step"])
            common = s if common is None else common & s
    if not common:
        return []
    steps = np.array(sorted(common))
    return sorted({int(steps[np.argmin(np.abs(steps - f * steps.max()))]) for f in fractions} - {0})


def report(out, plan_path=None, log=print, figures=True):
    """Tables and verdicts from whatever has run in ``out``: per condition tables.md (and figures),
    and report.md / report.json.  Returns the report dict."""
    from . import plots
    out = Path(out)
    if not (out / STATE_FILE).exists():
        raise TrainError(f"campaign report: {out} holds no campaign ({STATE_FILE} expected)")
    plan = load_plan(plan_path)
    state = read_state(out, plan)
    runs = planned_runs(plan)
    _write_sweep_records(out, plan, runs, state)      # the tables and figures read the finished runs only
    vd = plan["verdict"]
    conds = []
    lines = [f"# Campaign report: {plan.get('name', '')}", "",
             f"Folder `{out}`; {sum(1 for r in runs if is_done(out, state, r))} of {len(runs)} planned runs done. "
             f"Verdict rule: `{vd['rule']}` on `{vd['key']}` ({vd.get('text', '')})", "",
             "| condition | runs done | widths with runs (seeds) | verdict | steps | finite widths below inf | "
             "label | first step all below inf |",
             "|---|---:|---|---|---|---|---|---|"]
    for c in plan["conditions"]:
        mine = [r for r in runs if r["condition"] == c["name"]]
        done = [r for r in mine if is_done(out, state, r)]
        entry = {"condition": c["name"], "planned": len(mine), "done": len(done), "verdict": None,
                 "steps": [], "below": {}, "widths": {}}
        cdir = out / c["name"]
        if done and any((out / r["dir"] / "metrics.csv").exists() for r in done):
            loaded = plots.load_sweep(cdir)
            entry["widths"] = {str(w): len(rs) for w, rs in loaded.items()}
            steps = _verdict_steps(loaded, vd["step_fractions"])
            verdict, below = plots.acceleration_verdict(loaded, steps, vd["key"]) if steps else (None, {})
            entry.update(verdict=verdict, steps=steps, below={str(k): [str(x) for x in v] for k, v in below.items()})
            entry["final_train_loss"] = {str(w): float(np.mean([r["train_loss"][-1] for r in rs]))
                                         for w, rs in loaded.items()}
            # the plan's inconclusive label and descriptive statistic (experiments.plots; fixed before the runs)
            try:
                loss_null = plots.threshold_rows(cdir)[1]
            except (OSError, ValueError, KeyError):
                loss_null = None
            entry["inconclusive"] = (None if loss_null is None       # no summary.json yet: not decidable
                                     else bool(plots.inconclusive_sweep(loaded, loss_null, vd["key"])))
            entry["first_step_all_below"] = plots.first_step_all_below(plots.seed_ranges(loaded, vd["key"]))
            if figures:
                try:
                    plots.plot_sweep(cdir, cdir, heatmap_steps=max(steps) if steps else 4000)
                except Exception as exc:           # noqa: BLE001 - a figure must not lose the report
                    entry["figures_error"] = f"{type(exc).__name__}: {exc}"
        wtext = ", ".join(f"{w} ({n})" for w, n in entry["widths"].items()) or "-"
        vtext = entry["verdict"] or ("no runs yet" if not done else "not decidable (needs inf and a finite width "
                                                                 "at every chosen step)")
        btext = "; ".join(f"{k}: {', '.join(v) or '-'}" for k, v in entry["below"].items()) or "-"
        label = {True: "inconclusive", False: "learned"}.get(entry.get("inconclusive"), "-")
        first = plots.describe_first_step(entry["first_step_all_below"]) if entry.get("first_step_all_below") else "-"
        lines.append(f"| {c['name']} | {len(done)}/{len(mine)} | {wtext} | {vtext} | "
                     f"{', '.join(map(str, entry['steps'])) or '-'} | {btext} | {label} | {first} |")
        conds.append(entry)
    failed = [(k, v.get("error")) for k, v in state["runs"].items() if v.get("status") == "diverged"]
    if failed:
        lines += ["", "Diverged runs (a divergence is a result; they are not rerun):", ""]
        lines += [f"- `{k}`: {e}" for k, e in failed]
    errors = [(k, v.get("error")) for k, v in state["runs"].items() if v.get("status") == "error"]
    if errors:
        lines += ["", "Runs stopped by an error (tried again next time):", ""]
        lines += [f"- `{k}`: {e}" for k, e in errors]
    size = folder_bytes(out)
    lines += ["", f"Output size: {size / 2**20:.2f} MiB ({len(state['sessions'])} session(s)). "
              "Per condition: `tables.md` and figures in its folder.", ""]
    rep = {"plan": plan.get("name"), "conditions": conds, "output_bytes": size, "diverged": failed,
           "errors": errors}
    atomic_write_text(out / "report.md", "\n".join(lines))
    atomic_write_text(out / "report.json", json.dumps(rep, indent=1) + "\n")
    log(f"campaign report: wrote {out / 'report.md'} and {out / 'report.json'}")
    return rep
