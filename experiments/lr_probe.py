"""The per-width learning-rate probe (MATH §7.5; the rule is in :mod:`experiments.controls`).

:func:`probe_width` finds one width's largest stable rate of the doubling grid; :func:`per_width_rates`
does it for the widths of a sweep and records every trial in ``lr_probe.json``; :func:`probe_into` does it
for a single ``cli.py train`` run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from refimpl.dynamics import DivergenceError
from .controls import Centring
from .fileio import atomic_write_text, fault_point, read_json
from .evaluation import evaluate, run_eval_rows
from .loop import BatchOrder, SGDLoop, every
from .backends import resolve_backend
from .train import LEGACY_DEFAULTS, OPTION_DEFAULTS, TrainConfig, TrainError, build_simulator, load_data

PROBE_FILE = "lr_probe.json"
#: The probe's grid: rates 2^j for j in this range.
GRID_EXPONENTS = (-12, 12)
PROBE_RULE = ("rates 2^j; walk from 2^0 up while stable, down while unstable; stable = no divergence and "
              "final training loss (evaluation rows, centred if the run is) below the initial one")

def _filled(config):
    """``config`` with the per-width options' defaults where they are None (a config not yet validated)."""
    return dataclasses.replace(config, **{k: OPTION_DEFAULTS[k] for k in ("lr_fraction", "lr_probe_steps")
                                          if getattr(config, k) is None})


def _trial(config, data, backend, rate):
    """One probe run at ``rate``: (stable, initial loss, final loss, error or None)."""
    cfg = dataclasses.replace(config, lr=float(rate))
    fault_point("probe:trial")
    sim, _ = build_simulator(cfg, data, backend)
    centring = Centring(sim, data) if cfg.center else None
    rows = run_eval_rows(cfg, data.X_train.shape[0])
    first = evaluate(sim, data, rows, centring)["train_loss"]
    final = {}

    def evaluate_last(done):
        final["loss"] = evaluate(sim, data, rows, centring)["train_loss"]
    try:
        SGDLoop(sim.step, BatchOrder(cfg.seed, data.X_train.shape[0], cfg.batch_size),
                after=[every(cfg.lr_probe_steps, evaluate_last)]).run(0, cfg.lr_probe_steps)
        last = final["loss"]
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
    config = dataclasses.replace(_filled(config), width=width, lr_policy="fixed")
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


def read_probe_file(path, config):
    """The record in ``path`` (lr_probe.json) checked against ``config``; TrainError (one line naming the file)
    for a damaged or edited file: not JSON, other options than the run's, a rate that is not finite and
    positive or not ``lr_fraction`` x the largest stable rate."""
    path, config = Path(path), _filled(config)
    try:
        record = read_json(path)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    if not isinstance(record.get("options"), dict) or not isinstance(record.get("widths"), dict):
        raise TrainError(f"{path}: 'options' or 'widths' is missing or not a JSON object (damaged or edited)")
    key = json.loads(json.dumps(_probe_key(config)))
    saved = {**LEGACY_DEFAULTS, **record["options"]}      # a probe saved before an option existed: its legacy value
    diff = sorted(k for k in set(key) | set(saved) if key.get(k) != saved.get(k))
    if diff:
        raise TrainError(f"{path}: made for other options than the sweep's ({', '.join(diff[:3])}); "
                         "lr_probe.json or sweep.json was edited")
    for width, entry in record["widths"].items():
        try:
            lr, best = float(entry["lr"]), float(entry["largest_stable"])
        except (TypeError, KeyError, ValueError):
            raise TrainError(f"{path}: the entry of width {width} lacks a numeric 'lr' or 'largest_stable' "
                             "(damaged or edited)") from None
        if not (np.isfinite(lr) and np.isfinite(best) and lr > 0 and best > 0
                and lr == float(config.lr_fraction * best)):
            raise TrainError(f"{path}: width {width}: rate {lr!r} is not a finite positive lr_fraction x largest "
                             f"stable rate ({best!r}) (edited)")
    return record


def per_width_rates(out, config, widths, log=None, starmap=None):
    """Rates of a per-width sweep: read ``out/lr_probe.json`` if it matches, else probe and write it.

    Parameters
    ----------
    out : sweep directory;  config : TrainConfig of the sweep (its ``seed`` is the probe's seed)
    widths : list of int or "inf"
    starmap : optional ``starmap(fn, list of argument tuples) -> list`` that runs the widths' probes
        (e.g. in worker processes; the sweep passes its pool); default: one after the other here

    Returns
    -------
    dict {str(width): rate}
    """
    config = _filled(config)
    Path(out).mkdir(parents=True, exist_ok=True)
    path = Path(out) / PROBE_FILE
    key = _probe_key(config)
    record = None
    if path.exists():
        try:
            record = read_probe_file(path, config)
        except TrainError:                 # a probe of other options (a new sweep): probed again
            record = None
    if record is None:
        record = {"rule": PROBE_RULE, "fraction": config.lr_fraction, "steps": config.lr_probe_steps,
                  "seed": config.seed, "options": key, "rate_unit": _rate_unit(config), "widths": {}}
    missing = [w for w in widths if str(w) not in record["widths"]]
    if missing and starmap is not None and len(missing) > 1:      # e.g. one worker process per width
        results = starmap(_probe_task, [(dataclasses.asdict(config), w) for w in missing])
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


def _rate_unit(config):
    """What the probe's rates are in: the simulator's rate, or multiples of the matched rate (MATH §7.7)."""
    if config.lr_scale == "matched":
        from .controls import rate_factor
        return (f"multiples of the matched rate: the simulator's rate is the rate here times "
                f"{rate_factor(config):.6g} (lr_scale matched, MATH §7.7)")
    return "the simulator's rate"


def _probe_task(config_dict, width):
    return probe_width(TrainConfig.from_json(config_dict), width)


def probe_into(config, folder, data=None, backend=None, log=None):
    """Per-width rate of a single run (``cli.py train --lr-policy per-width``): probe, set ``config.lr``.

    Called by :func:`experiments.train.train` inside the run's staging folder ``folder``, after the output
    folder was checked and before config.json is written: ``folder/lr_probe.json`` holds the probe in the
    format of a sweep's, and an interrupted or failed probe leaves nothing behind.
    """
    result = probe_width(config, config.width, data, backend, log=log)
    record = {"rule": PROBE_RULE, "fraction": config.lr_fraction, "steps": config.lr_probe_steps,
              "seed": config.seed, "options": _probe_key(config), "rate_unit": _rate_unit(config),
              "widths": {str(config.width): result}}
    atomic_write_text(Path(folder) / PROBE_FILE, json.dumps(record, indent=2) + "\n")
    config.lr = result["lr"]
    return result
