"""Run folders: what a run directory holds, how it is staged, locked, checked and resumed.

A *run directory* (``cli.py train``, every run of a sweep) holds

``config.json``
    Every option of the run, the data description and the backend (written once).
``metrics.csv``
    One row at step 0, every ``eval_every`` steps and at the last step.  The
    first columns are exactly ``step,train_loss,test_loss,wall_s``; then
    ``train_acc,test_acc`` (empty for regression), then ``feature_movement,
    kernel_alignment`` (the bottleneck metrics of :mod:`experiments.metrics`,
    empty for ``width = inf``).  ``train_loss`` is the mean
    of ``|F - y|^2 / 2`` over a fixed subset of at most ``eval_size`` training
    points (the first ``eval_size`` rows of a permutation drawn from
    ``data_seed``, the same for every seed and width; runs made before
    ``eval_subset`` existed drew it from ``seed``); ``test_loss`` is the same over the whole (possibly subsampled)
    test set.  ``wall_s`` is the training time in seconds since the start of
    the run, summed over resumed sessions.
``checkpoint.npz``
    The simulator state at the last checkpoint (no pickle), written atomically, with the digests
    :data:`DIGEST_KEYS` of config.json's options, of its own arrays and of metrics.csv's rows
    (:func:`write_checkpoint`), checked before a resume trusts any of it (:func:`resume_point`).
``loss.png``
    Training and test loss against steps.
``summary.json``
    Written when the run finishes: the final metrics, the wall time and the
    steps needed to reach a training loss of ``fraction * L_null`` for the
    fractions :data:`experiments.metrics.THRESHOLD_FRACTIONS` (``L_null`` is the
    loss of the zero predictor on the training set; see :mod:`experiments.metrics`), and for
    classification the steps needed to reach the training accuracies
    :data:`experiments.metrics.ACCURACY_LEVELS`.
``.lock``
    The pid of the process writing into the folder (:class:`experiments.fileio.DirLock`).

A new run is staged (:class:`Workspace`) so that a failed start leaves nothing behind and an old run
is replaced only once the new one has made a step.  The same module serves the folders of
:mod:`experiments.sweep` and :mod:`experiments.finite_sweep`: the output folder checks
(:func:`check_out`, :func:`refuse_links`), the refusal to overwrite without ``--force``
(:func:`refuse_existing`), the refusal of options a resume cannot change
(:func:`refuse_resume_options`), and whether a run is finished, resumable or new (:func:`run_state`).
The files themselves are written by :mod:`experiments.fileio`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from glob import escape as glob_escape
from pathlib import Path

import numpy as np

from . import fileio
from .fileio import DirLock, load_npz, read_json, remove_stale_temp_files, save_npz
from .validate import TrainError

#: The columns of metrics.csv.
METRIC_COLUMNS = ["step", "train_loss", "test_loss", "wall_s", "train_acc", "test_acc",
                  "feature_movement", "kernel_alignment"]
#: The files of a run directory.
RUN_FILES = ("config.json", "metrics.csv", "checkpoint.npz", "loss.png", "summary.json",
             "lr_probe.json")              # the last: lr_policy "per-width" only
#: Options that only say where things are: a resume may change them (they are recorded) and they are
#: not part of the config digest.
LOCATION_FIELDS = ("data_dir",)
#: Options a resume may change besides the location ones.
RESUME_FIELDS = ("steps", *LOCATION_FIELDS)
#: The lock file of a run directory (pid of the process that writes into it).
LOCK_FILE = ".lock"
#: Files a run writes atomically (their stale ``.<name>.*.tmp`` files are removed on resume).
ATOMIC_FILES = RUN_FILES
#: The digests every checkpoint carries: of config.json's options, of its own arrays, of metrics.csv's rows.
DIGEST_KEYS = ("driver_config_sha256", "driver_state_sha256", "driver_metrics_sha256")


# ----------------------------------------------------------------------------
# output folders: checks and refusals (runs, sweeps, finite sweeps)
# ----------------------------------------------------------------------------

def check_out(out):
    """``out`` as a Path, refused (TrainError, one line) unless it can be an output folder (not '', not a
    link or a file, creatable: :func:`experiments.fileio.check_output_folder`); nothing is created."""
    if str(out).strip() == "":
        raise TrainError("out: expected a directory path, got ''")
    out = Path(out)
    try:
        fileio.check_output_folder(out)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    return out


def check_run_entries(out):
    """Refuse (TrainError) a run directory whose own files (:data:`RUN_FILES`, the lock)
    are symbolic links: a resume reads and rewrites them."""
    refuse_links(out, (*RUN_FILES, LOCK_FILE))


def check_run_dir(out, force):
    """Refuse an ``out`` that is a file, or that holds a run unless ``force``; return the run files found."""
    out = check_out(out)
    existing = [f for f in RUN_FILES if (out / f).exists()]
    if existing and not force:
        refuse_existing(out, "run", existing)
    if existing:
        owner = DirLock(out, LOCK_FILE).live_owner()
        if owner is not None and owner[0] != os.getpid():
            raise TrainError(f"out: {out} is in use by process {owner[0]} (lock file {out / LOCK_FILE})")
    return existing


def refuse_links(out, entries=()):
    """Refuse (TrainError, one line) an ``out`` that cannot be an output folder
    (:func:`experiments.fileio.check_output_folder`: a link, a file, not writable), or one of whose
    ``entries`` (paths relative to ``out``: its own files, its run folders and their files) is, or lies
    below, a symbolic link: nothing is read, moved, written or deleted through a link."""
    try:
        fileio.check_output_folder(out)
        if Path(out).is_dir():
            fileio.refuse_links_inside(out, entries)
    except ValueError as exc:
        raise TrainError(str(exc)) from None


def refuse_existing(out, what, held=None, hint="use --force to overwrite it or --resume to continue it"):
    """Refuse (TrainError) to start a new ``what`` (run, sweep) in ``out``, which already holds one; ``held``
    names its files."""
    found = f" ({', '.join(held)})" if held else ""
    raise TrainError(f"out: {out} already holds a {what}{found}; {hint}")


def require_record(out, record, what, prefix="resume"):
    """Refuse (TrainError) to resume a ``what`` in ``out`` that lacks its ``record`` file (config.json,
    sweep.json); return ``out`` as a Path."""
    out = Path(out)
    if not (out / record).exists():
        raise TrainError(f"{prefix}: {out} holds no {what} ({record} expected)")
    return out


def refuse_resume_options(given, what, allowed):
    """Refuse (TrainError, one line naming them all) the options in ``given`` (names, as ``"lr_f"``) that a
    resumed ``what`` (run, sweep, finite sweep) may not change: it keeps its saved options; only those in
    ``allowed`` (names) may be given with ``--resume``."""
    bad = [k for k in given if k not in allowed]
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        only = [f"--{k.replace('_', '-')}" for k in allowed]
        only = only[0] if len(only) == 1 else ", ".join(only[:-1]) + " and " + only[-1]
        raise TrainError(f"{flags}: a resumed {what} keeps its saved options (only {only} may be given with "
                         "--resume)")


def lock_folder(out, name=LOCK_FILE):
    """Take the lock of the folder ``out`` (:class:`experiments.fileio.DirLock`), TrainError (one line) while
    another live process holds it."""
    lock = DirLock(out, name)
    try:
        return lock.acquire()
    except ValueError as exc:
        raise TrainError(str(exc)) from None


# ----------------------------------------------------------------------------
# digests
# ----------------------------------------------------------------------------

def config_digest(config_dict):
    """sha256 of a run's options as stored in config.json, without ``steps`` and the location options.

    Generic over the fields of :class:`experiments.train.TrainConfig`: every option that changes the model or the run
    is in the digest, whatever fields the config grows.
    """
    fixed = {k: v for k, v in config_dict.items() if k not in RESUME_FIELDS}
    text = json.dumps(fixed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def state_digest(state):
    """sha256 over the names, dtypes, shapes and bytes of the simulator's arrays (not ``driver_*``)."""
    h = hashlib.sha256()
    for key in sorted(k for k in state if not k.startswith("driver_")):
        arr = np.ascontiguousarray(state[key])
        h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def digest_array(hexdigest):
    """A sha256 hex digest as the (32,) uint8 array stored in checkpoints (all checkpoint arrays are numeric)."""
    return np.frombuffer(bytes.fromhex(hexdigest), dtype=np.uint8).copy()


def _digest_text(arr):
    if arr is None or arr.dtype != np.uint8 or arr.shape != (32,):
        return None
    return arr.tobytes().hex()


def metrics_digest(rows, t, eval_every):
    """sha256 of the metrics rows a resume at step ``t`` keeps (steps <= t that are multiples of
    ``eval_every``), every value but the wall time as metrics.csv writes it (so an interrupted run's
    checkpoint equals an uninterrupted one's); ``rows`` as numbers or as strings read back."""
    def text(v):
        return "" if v is None else repr(float(v)) if isinstance(v, float) else str(v)
    h = hashlib.sha256()
    for row in rows:
        step = int(row["step"])
        if step <= t and step % eval_every == 0:
            h.update((",".join(text(row.get(k)) for k in METRIC_COLUMNS if k != "wall_s") + "\n").encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------
# run files: reading and checking them, checkpoints, the resume point
# ----------------------------------------------------------------------------

def read_run_json(path):
    """The JSON object in ``path`` (config.json, sweep.json, ...); TrainError naming the file if missing or damaged."""
    try:
        return read_json(path)
    except ValueError as exc:
        raise TrainError(str(exc)) from None


def read_metrics(path):
    """Rows of metrics.csv as dicts of strings; TrainError naming the file for anything damaged."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise TrainError(f"{path}: not a text CSV file (damaged)") from None
    except OSError as exc:
        raise TrainError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not text:
        return []
    if not text.endswith("\n"):
        raise TrainError(f"{path}: truncated (the last line is incomplete)")
    lines = text.splitlines()
    if lines[0].split(",")[:4] != METRIC_COLUMNS[:4]:
        raise TrainError(f"{path}: line 1 is not the metrics header ({','.join(METRIC_COLUMNS[:4])},...)")
    header = lines[0].split(",")
    rows, last = [], None
    for lineno, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        if None in row or any(v is None for v in row.values()):
            raise TrainError(f"{path}: line {lineno} has {len(lines[lineno - 1].split(','))} fields, "
                             f"expected {len(header)} (damaged)")
        try:
            step = int(row["step"])
            values = [float(row[key]) for key in ("train_loss", "test_loss", "wall_s")]
            for key in METRIC_COLUMNS[4:]:
                if row.get(key) not in (None, ""):
                    float(row[key])
        except ValueError:
            raise TrainError(f"{path}: line {lineno} is not a row of numbers (damaged)") from None
        if not all(np.isfinite(values)) or step < 0:
            raise TrainError(f"{path}: line {lineno} holds a NaN, inf or negative step where a run writes finite "
                             "values (edited or damaged)")
        if last is not None and step <= last:
            raise TrainError(f"{path}: line {lineno}: step {step} does not follow step {last} (damaged)")
        last = step
        rows.append(row)
    return rows


def checkpoint_step(out):
    """The step of the checkpoint in ``out``, or None if it cannot be read (nothing else is checked)."""
    try:
        with np.load(out / "checkpoint.npz", allow_pickle=False) as z:
            return int(z["t"])
    except (OSError, KeyError, ValueError):
        return None


def good_checkpoint(out):
    """(step, training loss) of the checkpoint in ``out`` (a run's last good state), or None if it cannot be read."""
    try:
        state = load_npz(Path(out) / "checkpoint.npz")
        return int(state["t"]), float(state.get("driver_train_loss", np.nan))
    except (ValueError, KeyError):
        return None


def _check_state(path, state, config_dict):
    """Refuse a checkpoint whose digests, step or values do not fit (TrainError naming ``path``)."""
    if "t" not in state or state["t"].shape != () or not np.issubdtype(state["t"].dtype, np.integer):
        raise TrainError(f"{path}: no integer step 't' (not a checkpoint of this program, or damaged)")
    missing = [k for k in DIGEST_KEYS if _digest_text(state.get(k)) is None]
    if missing:
        raise TrainError(f"{path}: its digest {missing[0]!r} is missing or damaged; without it the checkpoint "
                         "cannot be checked against config.json and metrics.csv (edited?); start over with --force")
    if _digest_text(state["driver_config_sha256"]) != config_digest(config_dict):
        raise TrainError(f"{path}: was written for other options than those in config.json "
                         "(config.json was edited, or the files come from different runs)")
    if _digest_text(state["driver_state_sha256"]) != state_digest(state):
        raise TrainError(f"{path}: its arrays do not match their recorded digest (the file was modified)")
    loss = state.get("driver_train_loss")
    if loss is None or loss.shape != () or not np.isfinite(loss):
        raise TrainError(f"{path}: no finite training loss 'driver_train_loss' (damaged or edited)")
    t = int(state["t"])
    if t < 0 or t > int(config_dict.get("steps", t)):
        raise TrainError(f"{path}: step {t} is outside 0..{config_dict.get('steps')} (damaged)")
    for key, arr in state.items():
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            raise TrainError(f"{path}: array {key!r} holds NaN or inf (not a good checkpoint)")
    return t


def _check_metrics_digest(path, rows, state, t, eval_every):
    """Refuse metrics.csv rows (up to the checkpoint's step) that are not those the checkpoint saw."""
    if _digest_text(state["driver_metrics_sha256"]) != metrics_digest(rows, t, eval_every):
        raise TrainError(f"{path}: its rows up to step {t} are not those recorded with the checkpoint "
                         "(edited, replaced or from another run); restore it, or start over with --force")
    at_t = [r for r in rows if int(r["step"]) == t]
    if at_t and t % eval_every == 0 and float(at_t[0]["train_loss"]) != float(state["driver_train_loss"]):
        raise TrainError(f"{path}: train_loss at step {t} differs from the checkpoint's (edited)")


def _checkpoint_bounds(path, config_dict, data_meta):
    """A check for :func:`experiments.fileio.load_npz`: every array's header against the shapes the run's
    options allow, before anything is loaded (a header may claim any size)."""
    data_meta = data_meta if isinstance(data_meta, dict) else {}

    def num(value, default):
        try:
            value = int(value)
        except (TypeError, ValueError):
            return default
        return value if value > 0 else default
    n_rows = max(num(data_meta.get("n_train"), 0), num(data_meta.get("n_test"), 0)) or 100_000
    width = config_dict.get("width")
    dr = num(data_meta.get("dr"), 0) or num(config_dict.get("dr"), 0) or num(config_dict.get("d0"), 3072)
    chain = config_dict.get("chain") if isinstance(config_dict.get("chain"), list) else []
    cols = max(num(width, 0) if width != "inf" else 0, dr, 1, *(num(c, 0) for c in chain))
    heads = {f"history_{w}_{k}" for k in range(1 + len(chain)) for w in "PCD"} if chain else set()
    history = num(config_dict.get("steps"), 1) * num(config_dict.get("batch_size"), 1)
    allowed = {"t": 0, "driver_train_loss": 0, "driver_wall_s": 0}

    def check(name, shape, dtype):
        if name in DIGEST_KEYS:
            ok = shape == (32,)
        elif name in allowed:
            ok = shape == ()
        elif name in ("A", "velocity_A") or name.startswith(("tracked_", "velocity_tracked_")):
            ok = len(shape) == 2 and shape[0] <= n_rows and shape[1] <= cols
        elif name in ("history_P", "history_C", "history_D") or name in heads:
            ok = len(shape) == 2 and shape[0] <= history and shape[1] <= cols
        else:
            raise ValueError(f"{path}: holds an unknown array {name!r} (not a checkpoint of this program, or crafted)")
        if not ok:
            raise ValueError(f"{path}: array {name!r} has the shape {shape}, which the run's options in config.json "
                             f"do not allow (damaged or crafted); nothing was loaded")
    return check


def _check_metrics(path, rows, t, eval_every):
    """The rows of metrics.csv to keep when resuming at step ``t``; TrainError if rows up to ``t`` are missing."""
    if t > 0 and not path.exists():
        raise TrainError(f"{path}: missing, but the checkpoint is at step {t} (the metrics history would be "
                         "lost); restore the file, or start over with --force")
    kept = [r for r in rows if int(r["step"]) < t or (int(r["step"]) == t and t % eval_every == 0)]
    have = {int(r["step"]) for r in kept}
    missing = [s for s in range(0, t + 1, eval_every) if s not in have]
    if missing:
        raise TrainError(f"{path}: has no row for step {missing[0]} although the checkpoint is at step {t} "
                         "(truncated or edited)")
    return [r for r in kept if int(r["step"]) % eval_every == 0]


def check_same_data(out, saved_meta, data):
    """Refuse data that differ from the run's (other sizes, subset or source)."""
    ignore = ("data_dir", "source_files")
    old = {k: v for k, v in (saved_meta or {}).items() if k not in ignore}
    if old.get("sha256") and old["sha256"] != data.meta.get("sha256"):
        raise TrainError(f"data: {data.meta.get('file')} has changed since the run was made (sha256 "
                         f"{str(data.meta.get('sha256'))[:12]}..., recorded {old['sha256'][:12]}... in "
                         f"{out / 'config.json'}); a run resumes only on its own data")
    new = json.loads(json.dumps({k: v for k, v in data.meta.items() if k not in ignore}, default=float))
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if old and diff:
        raise TrainError(f"data: the data found now differ from the run's in {out / 'config.json'} "
                         f"({', '.join(diff[:3])}); point --data-dir at the run's data")


def write_checkpoint(path, state, config_sha256, metrics, eval_every, train_loss, wall_s):
    """Write ``state`` (the simulator's arrays) as checkpoint.npz with its digests (:data:`DIGEST_KEYS`:
    ``config_sha256`` of config.json's options, of the arrays, of the ``metrics`` rows up to the state's
    step), its training loss and the wall time (``driver_*``); atomic."""
    state["driver_config_sha256"] = digest_array(config_sha256)
    state["driver_state_sha256"] = digest_array(state_digest(state))
    state["driver_metrics_sha256"] = digest_array(metrics_digest(metrics, int(state["t"]), eval_every))
    state["driver_train_loss"] = np.array(train_loss)
    state["driver_wall_s"] = np.array(wall_s)
    save_npz(path, state)


def resume_point(out, cfg_dict, data_meta, steps, eval_every):
    """Where the run in ``out`` resumes: ``(state, done, metrics)``, after every check of its files.

    ``state`` is the checkpoint's arrays (``None`` if the run has no checkpoint yet: it resumes from step
    0), ``done`` its step and ``metrics`` the rows of metrics.csv to keep.  Refused (TrainError, one line
    naming the file): a damaged, crafted or edited checkpoint or metrics.csv, a checkpoint that does not
    belong to config.json's options (``cfg_dict``, ``data_meta``), a lost checkpoint, and ``steps`` below
    the checkpoint's step.
    """
    out = Path(out)
    ckpt = out / "checkpoint.npz"
    state = None
    rows = read_metrics(out / "metrics.csv")
    if ckpt.exists():
        try:
            state = load_npz(ckpt, check=_checkpoint_bounds(ckpt, cfg_dict, data_meta))
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        done = _check_state(ckpt, state, cfg_dict)
        _check_metrics_digest(out / "metrics.csv", rows, state, done, eval_every)
    else:
        later = [int(r["step"]) for r in rows if int(r["step"]) > 0]
        if later or (out / "summary.json").exists():
            where = f"metrics.csv has rows up to step {max(later)}" if later else "summary.json exists"
            raise TrainError(f"{ckpt}: missing, but {where} (the checkpoint was deleted or lost); restore it, "
                             "or start over with --force")
        done = 0
    if steps < done:
        raise TrainError(f"steps: the run in {out} is already at step {done}; ask for at least that many")
    metrics = _check_metrics(out / "metrics.csv", rows, done, eval_every) if state is not None else []
    return state, done, metrics


def remove_interrupted_writes(out, log):
    """Remove the temporary files of writes into the run in ``out`` that were interrupted (and say so)."""
    removed = remove_stale_temp_files(out, ATOMIC_FILES)
    if removed:
        log(f"removed {len(removed)} temporary file(s) left by an interrupted write")


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
            t = checkpoint_step(out)
            try:
                last = _last_metrics_step(out)
            except (ValueError, KeyError, TypeError):
                last = None
            if t is not None and t >= steps and last is not None and last >= steps:
                return "done"
        return "resume"
    return "fresh"


# ----------------------------------------------------------------------------
# staging a new run
# ----------------------------------------------------------------------------

def _created_parents(folder):
    """Create ``folder`` and its missing parents; return those created (deepest last)."""
    folder = Path(folder)
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainError(f"out: cannot create {folder} ({exc.strerror or exc})") from None
    return list(reversed(missing))


class Workspace:
    """Where a new run is written until its first step, and how it becomes the run directory.

    The run is first written into a hidden ``.<name>.new-*`` folder next to ``out``.  If ``out`` does
    not exist (or is an empty folder) the folder is renamed to ``out`` at once, with its complete
    config.json, so a run killed before its first checkpoint resumes from step 0.  Otherwise (``out``
    holds an old run, with ``--force``, or other files) the old files stay untouched until the new
    run has made its first step after its first checkpoint; then the folders are swapped (other
    files move into the new run) and the old run is deleted.  ``abort`` removes everything the new
    run wrote, so a failed start leaves nothing behind.
    """

    def __init__(self, out):
        self.out = Path(out)
        self.parents = _created_parents(self.out.parent)
        self.out_existed = self.out.exists()
        _remove_dead_staging(self.out)
        try:
            self.dir = fileio.make_folder_beside(self.out.parent, fileio.staging_name(self.out, "new"))
        except OSError as exc:
            self._remove_parents()
            raise TrainError(f"out: cannot write in {self.out.parent} ({exc.strerror or exc})") from None
        self.lock = DirLock(self.dir, LOCK_FILE).acquire()
        self.swap_pending = True

    def publish_early(self):
        """Rename the staging folder to ``out`` now if ``out`` is missing or empty."""
        if self.out.exists() and any(self.out.iterdir()):
            return
        os.replace(self.dir, self.out)          # rename(2) replaces an empty directory
        self.dir = self.out
        self.lock.path = self.out / LOCK_FILE
        self.swap_pending = False

    def commit(self):
        """Make the staged run the run directory (the old run is deleted only now)."""
        if not self.swap_pending:
            return
        if not self.out.exists():
            os.replace(self.dir, self.out)
            self.dir, self.lock.path, self.swap_pending = self.out, self.out / LOCK_FILE, False
            return
        aside = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=fileio.staging_name(self.out, "old")))
        os.replace(self.out, aside / "run")
        os.replace(self.dir, self.out)
        self.dir = self.out
        self.lock.path = self.out / LOCK_FILE
        self.swap_pending = False
        for entry in (aside / "run").iterdir():           # keep whatever else the user had there
            if entry.name not in RUN_FILES and entry.name != LOCK_FILE and not entry.name.endswith(".tmp"):
                os.replace(entry, self.out / entry.name)
        shutil.rmtree(aside, ignore_errors=True)

    def abort(self):
        """Remove what this run wrote (a failed start leaves nothing behind)."""
        self.lock.release()
        if self.dir == self.out and self.out_existed:       # an empty folder the user made: keep it empty
            for entry in self.out.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        self._remove_parents()

    def _remove_parents(self):
        for p in reversed(self.parents):
            try:
                p.rmdir()
            except OSError:
                break


def _remove_dead_staging(out):
    """Remove ``.<name>.new-*`` folders of new runs into ``out`` whose process is gone (killed at the start)."""
    for folder in out.parent.glob(glob_escape(fileio.staging_name(out, "new")) + "*"):
        if folder.is_dir() and DirLock(folder, LOCK_FILE).live_owner() is None:
            shutil.rmtree(folder, ignore_errors=True)
