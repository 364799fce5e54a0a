"""The training driver every backend shares: batches, evaluation, metrics, checkpoints, resume.

The run directory it writes (config.json, metrics.csv, checkpoint.npz, loss.png, summary.json), its
staging, lock, digests and the checks of a resume are :mod:`experiments.runfolder`'s.

Batches and steps: :mod:`experiments.loop` (:func:`~experiments.loop.batch_indices`: batch ``t`` is a
pure function of (seed, t), which is what makes a resumed run identical, bit for bit, to an
uninterrupted one).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from refimpl import __version__
from refimpl.dynamics import DivergenceError
from . import fileio
# the options of a run: one schema (experiments.config); TrainConfig is its composition for train and sweep
from .config import (BACKENDS, DTYPES, LEGACY_DEFAULTS, OPTION_DEFAULTS, TrainConfig,  # noqa: F401
                     unused_options)
from .data import GENERATED, is_npz  # noqa: F401
from .loop import BatchOrder, SGDLoop, due, every
from .fileio import atomic_write_text, fault_point, write_csv
from .evaluation import evaluate, evaluate_train_loss, null_loss_of, run_eval_rows
from .memory import check_memory
from .metrics import FeatureProbe, accuracy_summary, threshold_summary
from .plots import plot_run_loss
from .runfolder import (LOCK_FILE, METRIC_COLUMNS, RESUME_FIELDS, Workspace, check_out, check_run_dir,
                        check_run_entries, check_same_data, config_digest, good_checkpoint, lock_folder,
                        read_run_json, refuse_resume_options, remove_interrupted_writes, require_record,
                        resume_point, write_checkpoint)
from .backends import auto_backend, resolve_backend, settle_backend
from .validate import RunFailed, TrainError, optimiser_kwargs

#: A checkpoint is "good" (kept, never overwritten by a worse state) when its arrays and its training loss are
#: finite and the loss is at most this factor times the loss at step 0; a run whose training loss grows past
#: it has diverged and stops (README, "Run directories").
GOOD_LOSS_FACTOR = 1000.0

#: The loss of a run, in words (config.json).
LOSS_TEXT = {"mse": "mean over points of |F - y|^2 / 2; batch loss 1/(2B) sum |F - y|^2",
             "ce": "mean over points of the cross-entropy -y . log softmax(F) (dr = 1: logistic, "
                   "softplus(F) - y F); batch loss its mean over the batch"}


# ----------------------------------------------------------------------------
# helpers: data and the simulator
# ----------------------------------------------------------------------------

def load_data(config):
    """The data set of a run (deterministic in the config)."""
    from .data import load_dataset, resolve_data_dir
    from .tasks import apply_task
    kwargs = {}
    if config.dataset == "synthetic":
        kwargs = {"d0": config.d0, "dr": config.dr or OPTION_DEFAULTS["dr"]}      # autoencoder: targets replaced
        check_memory(config, config.train_size or 2000, config.test_size or 2000, config.d0, kwargs["dr"])
    elif config.dataset in GENERATED:
        kwargs = {"d0": config.d0, "latent_dim": config.latent_dim or OPTION_DEFAULTS["latent_dim"]}
        dr = config.d0 if config.task == "autoencoder" else 1 if config.dataset == "multi-index" else \
            kwargs["latent_dim"]
        check_memory(config, config.train_size or 2000, config.test_size or 2000, config.d0, dr)
    elif is_npz(config.dataset):                       # the user's file (its path is absolute already)
        kwargs = {"loss": config.loss}
    else:                                              # stored as an absolute path (resume from anywhere)
        config.data_dir = str(resolve_data_dir(config.data_dir).resolve())
    try:
        data = apply_task(load_dataset(config.dataset, data_dir=config.data_dir, train_size=config.train_size,
                                       test_size=config.test_size, seed=config.data_seed, **kwargs),
                          config.task)
    except (ValueError, OSError) as exc:
        raise TrainError(str(exc).splitlines()[0]) from None
    if config.dataset not in GENERATED:
        for name, have in (("d0", data.X_train.shape[1]), ("dr", data.Y_train.shape[1])):
            given = getattr(config, name)
            if given is not None and given != have:
                applies = ("the generated data sets (synthetic, multi-index, manifold)" if name == "d0"
                           else "the synthetic data")
                raise TrainError(f"{name}: applies to {applies} only; the {config.dataset} data have "
                                 f"{name} = {have}, got {given}")
            setattr(config, name, None)
    return data


def build_simulator(config, data, backend):
    """Construct the simulator of a run from its config and data (the initial functions come from ``seed``)."""
    from refimpl.network import RandomNetwork
    lr, lr_f, lr_g = config.rates()
    common = dict(lr=lr, lr_f=lr_f, lr_g=lr_g, X_eval=data.X_test)
    layers_g, layers_f = config.layers()
    if config.loss != "mse":
        common["loss"] = config.loss
    common.update(optimiser_kwargs(config))
    if config.chain:
        return _build_chain(config, data, backend, layers_g, layers_f, common)
    if config.width == "inf":
        sim = backend.InfiniteSimulator(data.X_train, data.Y_train, seed=config.seed,
                                        layers_g=layers_g, layers_f=layers_f, **common)
        info = {"f0_method": sim.f0_method}
    else:
        net = RandomNetwork.sample(data.X_train.shape[1], int(config.width), data.Y_train.shape[1],
                                   width=config.init_width, seed=config.seed, layers_g=layers_g,
                                   layers_f=layers_f)
        sim = backend.BottleneckSimulator(net, data.X_train, data.Y_train, **common)
        info = {"f0_method": f"random network (width {config.init_width}, seed {config.seed})"}
    return sim, info


def _build_chain(config, data, backend, layers_g, layers_f, common):
    """The simulator of a run with several bottlenecks (MATH §9): ``width`` then ``chain``, each head with
    f's architecture; ``inf`` is the chain with every width infinite (MATH §9.3, reference engine)."""
    from refimpl.chain import RandomChain, infinite_chain_simulator
    n_heads = 1 + len(config.chain)
    if config.width == "inf":
        sim = infinite_chain_simulator(data.X_train, data.Y_train, n_heads, layers_g=layers_g, layers_f=layers_f,
                                       seed=config.seed, **common)
        return sim, {"f0_method": sim.f0_method}
    net = RandomChain.sample(data.X_train.shape[1], [int(config.width), *config.chain], data.Y_train.shape[1],
                             width=config.init_width, seed=config.seed, layers_g=layers_g, layers_f=layers_f)
    sim = backend.ChainSimulator(net, data.X_train, data.Y_train, **common)
    return sim, {"f0_method": f"random chain (width {config.init_width}, seed {config.seed})"}


def _resume_config(out, overrides):
    """The saved config of the run in ``out`` with the allowed ``overrides``; (config, saved meta)."""
    saved = read_run_json(out / "config.json")
    cfg_dict = saved.get("config")
    if not isinstance(cfg_dict, dict):
        raise TrainError(f"{out / 'config.json'}: no 'config' object (damaged)")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if "steps" not in cfg_dict or "width" not in cfg_dict:
        missing = [k for k in ("width", "steps") if k not in cfg_dict]
        raise TrainError(f"{out / 'config.json'}: the option {missing[0]!r} is missing (damaged or edited)")
    try:
        config = TrainConfig(**{**LEGACY_DEFAULTS, **{k: v for k, v in cfg_dict.items() if k in names}})
        config.validate()
    except (TrainError, TypeError) as exc:
        raise TrainError(f"{out / 'config.json'}: {exc}") from None
    if config.dataset not in GENERATED:         # the generated data sets need their d0 (and k) back
        config.d0 = config.dr = None             # runs written before these were checked
    if overrides.get("steps") is not None:
        config.steps = int(overrides["steps"])
    if overrides.get("data_dir") is not None:
        config.data_dir = str(overrides["data_dir"])
    return config, saved, cfg_dict


def resume(out, overrides=None, progress=None, log=print):
    """Continue the run in ``out``; ``overrides`` are the options given again (name -> value).

    Only ``steps`` (a new total, at least the checkpoint's step) and the location options
    (:data:`experiments.runfolder.LOCATION_FIELDS`: ``data_dir``, recorded in config.json) may be given; any
    other option would change the model or the run and is refused in one line naming them all.
    """
    overrides = dict(overrides or {})
    refuse_resume_options(overrides, "run", RESUME_FIELDS)
    return train(TrainConfig(steps=overrides.get("steps")), out, resume=True, progress=progress, log=log,
                 data_dir=overrides.get("data_dir"))


def train(config, out, force=False, resume=False, progress=None, log=print, data_dir=None, probe=None,
          probe_log=None):
    """Run (or resume) a training run; returns the path of the run directory.

    Parameters
    ----------
    config : TrainConfig
        Options of a new run; for ``resume`` only ``steps`` is read from it
        (``None`` keeps the saved value) and everything else comes from the run.
    out : path of the run directory
    force : overwrite an existing run directory (only once the new run has made its first step)
    resume : continue the run in ``out`` from its checkpoint (from step 0 if it has none yet)
    progress : callable(total, start) -> context manager with ``update(n, loss=batch_loss)``, called
        after every step (the command line's progress display), or None
    log : callable for one-line messages
    data_dir : for ``resume``, a new location of the data (recorded in config.json)
    probe : None, or ``probe(config, folder, data, backend, log=probe_log)`` run in the new run's staging
        folder (after the output folder was checked, before config.json is written; it may set options):
        :func:`experiments.lr_probe.probe_into` for ``lr_policy = "per-width"``
    probe_log : callable for the probe's one-line messages, or None (silent)

    Raises
    ------
    TrainError (one line) for bad options, damaged run files, a run directory in use, a diverged or
    interrupted run.  A failed start leaves nothing behind; a failure later keeps the last good
    checkpoint.
    """
    if resume:
        out = check_out(out)
        check_run_entries(out)
        require_record(out, "config.json", "run")
        lock = lock_folder(out, LOCK_FILE)
        try:
            return _resume_locked(out, config.steps if config is not None else None, data_dir, lock,
                                  progress, log)
        except KeyboardInterrupt:           # before its first step (the loop says where it stopped)
            raise RunFailed(f"interrupted before the resumed run made a step; the run is as it was; continue "
                            f"with: python cli.py train --resume {out}") from None
        except fileio.DiskFull as exc:
            raise RunFailed(f"{exc}; the run is as it was; free some space and continue with: "
                            f"python cli.py train --resume {out}") from None
        finally:
            lock.release()
    config.validate()
    out = check_out(out)
    check_run_dir(out, force)
    # everything that can be checked is checked before anything is written
    settle_backend(config, log)
    backend = resolve_backend(config.backend, config.dtype)
    data = load_data(config)
    _check_batch_size(config, data)
    check_memory(config, data.X_train.shape[0], data.X_test.shape[0], data.X_train.shape[1], data.Y_train.shape[1])
    ws = Workspace(out)
    started = False
    try:
        if probe is not None:             # e.g. the per-width rate probe (lr_probe.json), in the checked folder
            probe(config, ws.dir, data, backend, log=probe_log)
        meta = {"config": dataclasses.asdict(config), "data": data.meta, "refimpl_version": __version__,
                "loss": LOSS_TEXT[config.loss]}
        if config.lr_scale != "none":                # the rates the simulator gets (MATH §7.7)
            lr, lr_f, lr_g = config.rates()
            meta["effective_rates"] = {"lr": lr, "lr_f": lr_f, "lr_g": lr_g, "factor": lr / config.lr}
        atomic_write_text(ws.dir / "config.json", json.dumps(meta, indent=2) + "\n")
        ws.publish_early()
        fault_point("train:config-written")
        sim, info = build_simulator(config, data, backend)
        meta["initial_functions"] = info
        device = getattr(getattr(sim, "engine", None), "device", None)
        if device is not None and hasattr(device, "uses_tensor_cores"):      # the gpu backend: which FP64 route
            meta["engine"] = {"fp64_tensor_cores": device.uses_tensor_cores(config.dtype)}
        atomic_write_text(ws.dir / "config.json", json.dumps(meta, indent=2) + "\n")
        run = _Run(config, data, sim, ws.dir, wall0=0.0, metrics=[], log=log)
        try:
            run.record(0)
            run.checkpoint(evaluated=True)
        except DivergenceError as exc:
            raise RunFailed(f"{exc}; nothing was written") from None

        def first_step_done():
            nonlocal started
            ws.commit()
            run.out = ws.dir
            started = True
        return run.loop(0, progress, on_first_step=first_step_done)
    except BaseException as exc:
        if not started:
            ws.abort()
            if isinstance(exc, KeyboardInterrupt):
                raise RunFailed("interrupted before the first step; nothing was written, nothing to resume; "
                                "start the run again") from None
            if isinstance(exc, MemoryError):
                raise TrainError(f"memory: out of memory while setting up the run (width {config.width}, "
                                 f"init_width {config.init_width}); nothing was written") from None
            if isinstance(exc, fileio.DiskFull):
                raise RunFailed(f"{exc}; nothing was written; free some space and start the run again") from None
        raise
    finally:
        ws.lock.release()


def _check_batch_size(config, data):
    if config.batch_size > data.X_train.shape[0]:
        raise TrainError(f"batch_size: expected at most the number of training points "
                         f"({data.X_train.shape[0]}), got {config.batch_size}")


def _resume_locked(out, steps, data_dir, lock, progress, log):
    remove_interrupted_writes(out, log)
    if data_dir is not None:
        data_dir = str(Path(data_dir).expanduser().resolve())
    config, saved, cfg_dict = _resume_config(out, {"steps": steps, "data_dir": data_dir})
    ckpt = out / "checkpoint.npz"
    state, done, metrics = resume_point(out, cfg_dict, saved.get("data"), config.steps, config.eval_every)
    if state is not None and config.steps == done and (out / "summary.json").exists() and data_dir is None:
        log(f"nothing to do: the run is already at step {done} (ask for more with --steps)")
        return out
    if config.backend == "auto":      # a run made before the resolved backend was recorded
        log(f"backend: {auto_backend(config.dtype)} (the run asked for auto and did not record what ran; "
            "bit-exact only if that was the same backend)")
    backend = resolve_backend(config.backend, config.dtype)
    try:
        data = load_data(config)
    except TrainError as exc:
        if config.dataset == "synthetic" or is_npz(config.dataset):
            raise
        raise TrainError(f"data: cannot read the run's data in {config.data_dir} ({str(exc).split('; ')[0]}); "
                         f"give their folder with --data-dir (recorded in {out / 'config.json'})") from None
    check_same_data(out, saved.get("data"), data)
    _check_batch_size(config, data)
    sim, _ = build_simulator(config, data, backend)
    run = _Run(config, data, sim, out, wall0=0.0, metrics=metrics, log=log)   # captures G_0 first
    if state is not None:
        run.wall0 = float(state.pop("driver_wall_s", 0.0))
        sim_state = {k: v for k, v in state.items() if not k.startswith("driver_")}
        try:
            sim.load_state_dict(sim_state)
        except ValueError as exc:
            raise TrainError(f"{ckpt}: does not fit the run's options ({exc})") from None
    # only now, with every check passed, is anything rewritten
    saved["config"]["steps"] = config.steps
    if data_dir is not None:
        saved["config"]["data_dir"] = data_dir
    atomic_write_text(out / "config.json", json.dumps(saved, indent=2) + "\n")
    if state is None:
        log(f"resuming {out} from step 0 (it had no checkpoint yet)")
        try:
            run.record(0)
            run.checkpoint(evaluated=True)
        except DivergenceError as exc:
            raise RunFailed(f"{exc}") from None
    else:
        log(f"resuming {out} at step {done} of {config.steps}")
        if done == config.steps:          # the summary was missing: write it
            return run.finish(None)
    return run.loop(done, progress)


class _Run:
    """A simulator bound to its run directory: evaluation rows, checkpoints, the step loop."""

    def __init__(self, config, data, sim, out, wall0, metrics, log):
        self.config, self.data, self.sim, self.out, self.log = config, data, sim, Path(out), log
        from .controls import Centring                 # F0 of the fresh simulator, before any step or resume
        self.centring = Centring(sim, data) if config.center else None
        self.rows = run_eval_rows(config, data.X_train.shape[0])
        self.probe = FeatureProbe(sim, data.X_train, data.Y_train, self.rows)   # G_0 before any step
        self.metrics = metrics
        self.ckpt_every = config.checkpoint_every or config.eval_every
        self.good = None                  # (step, train loss) of the last good checkpoint
        self.t0, self.wall0 = time.perf_counter(), wall0
        self.digest = config_digest(read_run_json(self.out / "config.json")["config"])

    def wall(self):
        return self.wall0 + time.perf_counter() - self.t0

    def record(self, step):
        row = {"step": step, **evaluate(self.sim, self.data, self.rows, self.centring),
               "wall_s": round(self.wall(), 3), **self.probe(self.sim)}
        for key in ("train_loss", "test_loss"):
            if not np.isfinite(row[key]):
                raise DivergenceError(f"{key} is {row[key]} at step {step}: the run diverged")
        if self.metrics:
            self._check_not_blown_up(row["train_loss"], step)
        self.metrics.append(row)
        write_csv(self.out / "metrics.csv", METRIC_COLUMNS, self.metrics)
        return row

    def checkpoint(self, evaluated):
        """Write checkpoint.npz if the state is good: finite arrays and a finite training loss."""
        state = self.sim.state_dict()
        for key, arr in state.items():
            if not np.all(np.isfinite(arr)):
                raise DivergenceError(f"the state ({key}) is not finite at step {self.sim.t}: the run diverged")
        if evaluated:
            loss = float(self.metrics[-1]["train_loss"])
        else:
            loss = evaluate_train_loss(self.sim, self.data, self.rows, self.centring)
            if not np.isfinite(loss):
                raise DivergenceError(f"train_loss is {loss} at step {self.sim.t}: the run diverged")
            self._check_not_blown_up(loss, int(self.sim.t))
        write_checkpoint(self.out / "checkpoint.npz", state, self.digest, self.metrics, self.config.eval_every,
                         loss, self.wall())
        self.good = (int(self.sim.t), loss)
        fault_point("train:checkpoint")

    def initial_loss(self):
        """The training loss at step 0 (the first metrics row)."""
        return float(self.metrics[0]["train_loss"])

    def _check_not_blown_up(self, loss, step):
        """DivergenceError when the training loss exceeds :data:`GOOD_LOSS_FACTOR` x the initial loss."""
        limit = GOOD_LOSS_FACTOR * self.initial_loss()
        if loss > limit:
            raise DivergenceError(f"train_loss is {loss:.4g} at step {step}, more than {GOOD_LOSS_FACTOR:g} times "
                                  f"the initial {self.initial_loss():.4g}: the run diverged")

    def loop(self, start, progress, on_first_step=None):
        """Steps ``start .. steps - 1`` through :class:`experiments.loop.SGDLoop`: evaluation rows every
        ``eval_every`` steps, checkpoints every ``checkpoint_every``, the summary at the end; a diverged,
        interrupted or full-disk run stops with a one-line RunFailed that says what was kept."""
        config = self.config
        first = {"pending": on_first_step}

        def first_step(done, loss):
            if first["pending"] is not None:
                first["pending"]()
                first["pending"] = None

        def checkpoint(done):
            self.checkpoint(due(done, config.eval_every, config.steps))
        sgd = SGDLoop(self.sim.step, BatchOrder(config.seed, self.data.X_train.shape[0], config.batch_size),
                      after=[first_step, lambda done, loss: fault_point("train:step"),
                             every(config.eval_every, self.record, config.steps),
                             every(self.ckpt_every, checkpoint, config.steps)],
                      # one BLAS thread: a step's products are small (batch B), and threads oversubscribe the
                      # cores (numpy backend 4.1x faster on a busy 2-core machine; docs/BENCHMARKS.md)
                      blas_one_thread=True)
        sgd.step = sgd.done = start              # where an interrupt before the first step leaves the run
        try:
            if progress:
                sgd.progress = progress(config.steps, start)
            last = sgd.run(start, config.steps)
            return self.finish(last)
        except DivergenceError as exc:
            if first["pending"] is not None:
                raise RunFailed(f"{exc}; nothing was written (it diverged at the first step)") from None
            out = self.out
            plot_run_loss(out, self.metrics)
            good = self.good or good_checkpoint(out)
            where = (f"the last good checkpoint (step {good[0]}, train loss {good[1]:.4g}, finite and within "
                     f"{GOOD_LOSS_FACTOR:g} x the initial loss) is kept in {out / 'checkpoint.npz'}") if good \
                else "no good checkpoint was written"
            raise RunFailed(f"{exc}; {where}; lower --lr and start over with --force") from None
        except KeyboardInterrupt:
            if first["pending"] is not None:
                raise
            out = self.out
            good = self.good or good_checkpoint(out)
            kept = f"the checkpoint at step {good[0]} is kept" if good else "no checkpoint was written yet"
            raise RunFailed(f"interrupted at step {sgd.step}; {kept}; continue with: python cli.py train "
                            f"--resume {out}") from None
        except fileio.DiskFull as exc:
            if first["pending"] is not None:
                raise
            out = self.out
            good = self.good or good_checkpoint(out)
            kept = f"the checkpoint at step {good[0]} is kept" if good else "no checkpoint was written yet"
            raise RunFailed(f"{exc}; {kept}; the run is resumable: free some space and continue with: "
                            f"python cli.py train --resume {out}") from None

    def finish(self, last):
        out, metrics = self.out, self.metrics
        plot_run_loss(out, metrics)
        summary = {"steps": self.config.steps, "final": metrics[-1] if metrics else None, "last_batch_loss": last,
                   "wall_s": round(self.wall(), 3),
                   "steps_to_threshold": threshold_summary(metrics, null_loss_of(self.data.Y_train, self.config.loss)),
                   "steps_to_accuracy": accuracy_summary(metrics)}
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
        return out
