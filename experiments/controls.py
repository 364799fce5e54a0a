"""Controls of the bottleneck experiments: centring (MATH §7.4) and per-width learning rates (MATH §7.5).

Centring (``--center``)
    The model trained and reported is ``F_t - F_0``: every input's initial
    output ``F_0(xi) = f_0(g_0(xi))`` is subtracted from the prediction, in the
    loss and in every reported output.  Since F_0 is a fixed function, the loss
    ``|F_t - F_0 - y|^2`` is the loss of the uncentred model on the shifted
    targets ``y + F_0``: the kernel dynamics are unchanged, only the targets move
    (MATH §7.4).  :class:`Centring` does exactly that, on every backend: it
    evaluates F_0 on the training and test inputs of the fresh simulator, adds
    F_0 to the simulator's training targets, and subtracts F_0 from the outputs
    that are evaluated.  At step 0 the centred outputs are 0, so a centred run's
    curves start at the zero predictor's loss.

Per-width learning rates (``--lr-policy per-width --lr-fraction c``)
    Each width trains at ``c`` times its own largest stable rate.  The largest
    stable rate comes from a short deterministic probe (:func:`probe_width`):
    runs of ``lr_probe_steps`` SGD steps from the run's initial functions (the
    first seed of a sweep) on the rates ``2^j`` of a doubling grid, walking from
    ``2^0`` upwards while the rate is stable and downwards while it is not.  A
    rate is *stable* when no step diverges and the final training loss (on the
    evaluation rows; centred when the run is) is below the initial one.  The
    probe of a sweep is written to ``lr_probe.json`` in the sweep directory
    (every trial with its losses) and each run's rate to ``sweep.json``; a
    resumed sweep reads it back and never probes again.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from refimpl.dynamics import DivergenceError

LR_POLICIES = ("fixed", "per-width")
PROBE_FILE = "lr_probe.json"
#: The probe's grid: rates 2^j for j in this range.
GRID_EXPONENTS = (-12, 12)
PROBE_RULE = ("rates 2^j; walk from 2^0 up while stable, down while unstable; stable = no divergence and "
              "final training loss (evaluation rows, centred if the run is) below the initial one")


def validate_controls(config):
    """Raise ValueError (one line, naming the option) for bad control options of a TrainConfig."""
    from .tasks import TASKS
    if config.task not in TASKS:
        raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {config.task!r}")
    if config.lr_policy not in LR_POLICIES:
        raise ValueError(f"lr_policy: expected fixed or per-width, got {config.lr_policy!r}")
    frac = config.lr_fraction
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not (0 < frac <= 1):
        raise ValueError(f"lr_fraction: expected a number in (0, 1], got {frac!r}")
    if not isinstance(config.center, bool):
        raise ValueError(f"center: expected true or false, got {config.center!r}")
    if config.lr_policy == "per-width" and (config.lr_f is not None or config.lr_g is not None):
        raise ValueError("lr_policy: per-width sets one rate per width; it cannot be combined with lr_f / lr_g")
    if config.dataset in ("multi-index", "manifold") and config.latent_dim > config.d0:
        raise ValueError(f"latent_dim: expected at most d0 = {config.d0}, got {config.latent_dim}")


class Centring:
    """Train and report ``F - F0`` (module docstring; MATH §7.4).

    Build it from the fresh simulator (before any step or checkpoint): it
    stores F0 on the training and test inputs and shifts the simulator's
    training targets to ``Y + F0`` (the simulators read ``sim.Y`` at every step).

    Parameters
    ----------
    sim : simulator of any backend, at step 0
    data : Dataset (X_train (N, d0), X_test (M, d0))
    """

    def __init__(self, sim, data):
        from .train import _outputs
        if getattr(sim, "t", 0) != 0:
            raise ValueError("sim: centring needs the simulator at step 0")
        self.F0 = {"train": np.array(_outputs(sim, data.X_train), dtype=np.float64),
                   "test": np.array(_outputs(sim, data.X_test), dtype=np.float64)}
        sim.Y = np.asarray(sim.Y, dtype=np.float64) + self.F0["train"]

    def centred(self, split, F, rows=None):
        """``F - F0`` for the outputs ``F`` of ``split`` ("train" / "test") at ``rows`` (None: all)."""
        F0 = self.F0[split]
        return F - (F0 if rows is None else F0[rows])


# ----------------------------------------------------------------------------
# per-width learning rates
# ----------------------------------------------------------------------------

def _trial(config, data, backend, rate):
    """One probe run at ``rate``: (stable, initial loss, final loss, error or None)."""
    from .train import batch_indices, build_simulator, eval_rows, evaluate
    cfg = dataclasses.replace(config, lr=float(rate))
    sim, _ = build_simulator(cfg, data, backend)
    centring = Centring(sim, data) if cfg.center else None
    rows = eval_rows(cfg, data.X_train.shape[0])
    first = evaluate(sim, data, rows, centring)["train_loss"]
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            for step in range(cfg.lr_probe_steps):
                sim.step(batch_indices(cfg.seed, step, data.X_train.shape[0], cfg.batch_size))
            last = evaluate(sim, data, rows, centring)["train_loss"]
    except DivergenceError as exc:
        return False, first, None, str(exc).splitlines()[0]
    if not np.isfinite(last):
        return False, first, None, f"training loss {last} after {cfg.lr_probe_steps} steps"
    return bool(last < first), first, float(last), None


def probe_width(config, width, data=None, backend=None, log=None):
    """The largest stable rate of the doubling grid for one width (module docstring).

    Parameters
    ----------
    config : TrainConfig (its seed, data, steps of the probe ``lr_probe_steps``, centring, task)
    width : int or "inf"
    data, backend : the loaded data set and simulator backend (loaded from ``config`` when None)

    Returns
    -------
    dict: ``trials`` (list of {lr, stable, initial_loss, final_loss, error}, in the order run),
    ``largest_stable`` (float) and ``lr`` (= lr_fraction x largest_stable).  Deterministic.

    Raises
    ------
    TrainError when no rate of the grid is stable.
    """
    from .train import TrainError, load_data, resolve_backend
    config = dataclasses.replace(config, width=width, lr_policy="fixed")
    data = data if data is not None else load_data(config)
    backend = backend if backend is not None else resolve_backend(config.backend, config.dtype)
    lo, hi = GRID_EXPONENTS
    trials, cache = [], {}

    def stable(j):
        if j not in cache:
            ok, first, last, err = _trial(config, data, backend, 2.0 ** j)
            cache[j] = ok
            trials.append({"lr": 2.0 ** j, "stable": ok, "initial_loss": first, "final_loss": last, "error": err})
            if log:
                log(f"lr probe width {width}: lr {2.0 ** j:g} {'stable' if ok else 'unstable'}")
        return cache[j]

    j = 0
    if stable(j):
        while j < hi and stable(j + 1):
            j += 1
    else:
        while j > lo and not stable(j - 1):
            j -= 1
        j -= 1
        if j < lo or not cache.get(j, False):
            raise TrainError(f"lr_policy: no stable rate down to 2^{lo} for width {width}")
    best = 2.0 ** j
    return {"trials": trials, "largest_stable": best, "lr": float(config.lr_fraction * best)}


def _probe_key(config):
    """The options a probe result depends on (a resumed sweep reuses the probe only when they match)."""
    d = dataclasses.asdict(config)
    for k in ("width", "lr", "steps", "eval_every", "checkpoint_every"):
        d.pop(k, None)
    return d


def per_width_rates(out, config, widths, log=None, jobs=1):
    """Rates of a per-width sweep: read ``out/lr_probe.json`` if it matches, else probe and write it.

    Parameters
    ----------
    out : sweep directory;  config : TrainConfig of the sweep (its ``seed`` is the probe's seed)
    widths : list of int or "inf"
    jobs : probe the widths in this many spawned processes (the results do not depend on it)

    Returns
    -------
    dict {str(width): rate}
    """
    from .train import atomic_write_text, load_data, resolve_backend
    Path(out).mkdir(parents=True, exist_ok=True)
    path = Path(out) / PROBE_FILE
    key = _probe_key(config)
    record = None
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("options") == key:
            record = saved
    if record is None:
        record = {"rule": PROBE_RULE, "fraction": config.lr_fraction, "steps": config.lr_probe_steps,
                  "seed": config.seed, "options": key, "widths": {}}
    missing = [w for w in widths if str(w) not in record["widths"]]
    if missing and jobs > 1 and len(missing) > 1:      # one worker process per width (same results)
        import multiprocessing
        from .sweep import _thread_env, default_jobs
        n = min(jobs, len(missing))
        with _thread_env(max(1, default_jobs() // n)):
            with multiprocessing.get_context("spawn").Pool(n) as pool:
                results = pool.starmap(_probe_task, [(dataclasses.asdict(config), w) for w in missing])
        for w, res in zip(missing, results):
            record["widths"][str(w)] = res
            if log:
                log(f"lr probe width {w}: largest stable {res['largest_stable']:g}, rate {res['lr']:g}")
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    elif missing:
        data, backend = load_data(config), resolve_backend(config.backend, config.dtype)
        for w in missing:
            record["widths"][str(w)] = probe_width(config, w, data, backend, log)
            atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return {str(w): record["widths"][str(w)]["lr"] for w in widths}


def _probe_task(config_dict, width):
    from .train import TrainConfig
    return probe_width(TrainConfig.from_json(config_dict), width)


def probe_run(config, out, force=False, log=None):
    """Per-width rate of a single run (``cli.py train --lr-policy per-width``): probe, set ``config.lr``.

    The probe is written to ``out/lr_probe.json`` (the run directory; created here) in the format
    of a sweep's.  Bad options fail before anything is written.
    """
    from .train import atomic_write_text, check_run_dir
    config.validate()
    check_run_dir(out, force)
    result = probe_width(config, config.width, log=log)
    Path(out).mkdir(parents=True, exist_ok=True)
    record = {"rule": PROBE_RULE, "fraction": config.lr_fraction, "steps": config.lr_probe_steps,
              "seed": config.seed, "options": _probe_key(config), "widths": {str(config.width): result}}
    atomic_write_text(Path(out) / PROBE_FILE, json.dumps(record, indent=2) + "\n")
    config.lr = result["lr"]
    return result
