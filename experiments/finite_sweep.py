"""Finite networks across bottleneck sizes (paper appendix F) and finite against infinite width.

Two experiments built on :class:`~refimpl.finite.FiniteNetwork` (weight-space SGD
with hand-written backprop, MATH §1):

:func:`finite_sweep` (paper appendix F, figs 15 and 16)
    For every bottleneck size d in ``widths``, train a finite network of
    hidden width n (``hidden``; the paper's n = 100,000) by SGD with batch 5 on
    MNIST (multi-output regression on one-hot targets), and record training
    and test loss and error rate (1 - accuracy) against steps.  Figures: loss
    against steps per bottleneck size (fig 15) and final loss and error rate
    against bottleneck size (fig 16).

:func:`finite_vs_infinite` (the infinite-width check, MATH §6 / paper appendix E)
    On one small data set, train finite networks of growing hidden width n and,
    for each, the function-space simulation
    :class:`~refimpl.dynamics.BottleneckSimulator` started from the *same*
    random network (so the two share g0, f0, J0 exactly and differ only in
    their dynamics), on the same batches.  The gap between the finite and the
    simulated loss curves must shrink as n grows (theorem 3.2).

Loss convention (MATH §4, the same as the simulators and ``train.py``): a step
on a batch of B points minimises ``L = 1/(2B) sum_i |F_i - y_i|^2``; reported
losses are the mean over points of ``|F - y|^2 / 2`` (with ``loss="ce"``: the cross-entropy of
MATH §4.3, trained and reported).  Batch t is
:func:`experiments.loop.batch_indices` ``(seed, t, N, B)``, the same batches as
``cli.py train`` with the same seed.

Memory (float64, :func:`experiments.memory.finite_memory_estimate`): a network holds
``P = n (d0 + 2 d + dr)`` weights; SGD needs the weights and one gradient of
every matrix (16 P bytes), constructing a network holds a second copy for a
moment (also 16 P bytes), and a forward pass forms hidden blocks of
:data:`refimpl.finite.ROW_BLOCK_ELEMENTS` float64.  For MNIST (d0 = 784,
dr = 10) and n = 100,000, theta1 alone is 627 MB; the estimate is 1.4 GiB at
d = 1, 4.4 GiB at d = 1000 and 28 GiB at d = 9000, so n = 100,000 fits in
24 GiB up to d of about 7,500 (6,780 with the 10% margin that
:func:`finite_sweep` keeps).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from accel.blas_threads import one_blas_thread
from refimpl import __version__
from refimpl.chain import ChainSimulator, RandomChain
from refimpl.dynamics import BottleneckSimulator, DivergenceError
from refimpl.finite import FiniteChain, FiniteNetwork
from refimpl.network import RandomNetwork
# the options: one schema (experiments.config); SweepConfig and CompareConfig are its compositions
from .config import FINITE_BACKENDS, PAPER_WIDTHS, CompareConfig, SweepConfig, finite_widths  # noqa: F401
from .figures import PLOT_LOCK, pyplot, save_figure
from .fileio import DiskFull, atomic_write_text, read_csv, read_json, write_csv
from .evaluation import eval_rows, evaluate_network, mean_loss, to_numpy
from .loop import BatchOrder, SGDLoop, every
from .runfolder import read_run_json, refuse_existing, refuse_links, require_record
from .memory import available_memory, finite_memory_estimate
from .validate import RunFailed, TrainError, one_of, optimiser_kwargs

SWEEP_COLUMNS = ["step", "train_loss", "test_loss", "train_err", "test_err", "wall_s"]
SWEEP_FIGURES = ("finite-losses.png", "finite-final.png")
SWEEP_FILES = ("config.json", "summary.json", "summary.csv") + SWEEP_FIGURES
#: The files of a finite-vs-infinite comparison.
COMPARE_FILES = ("metrics.csv", "table.csv", "summary.json", "finite-vs-infinite.png")


# ----------------------------------------------------------------------------
# small shared helpers
# ----------------------------------------------------------------------------

def parse_widths(text, name="widths"):
    """Parse ``"1,2,4"`` (or ``"paper"``, the paper's 36 sizes) into a sorted tuple of distinct positive ints."""
    return finite_widths(text, name)


def resolve_finite_backend(backend):
    """The array backend that runs: "auto" is "gpu" where CuPy sees a usable GPU, else "numpy"."""
    one_of("backend", backend, FINITE_BACKENDS)
    if backend != "auto":
        return backend
    try:
        from accel import gpu
        return "gpu" if gpu.available() else "numpy"
    except Exception:          # noqa: BLE001 - no accelerated backend here
        return "numpy"


def array_module(backend):
    """The array module for ``backend``: numpy, or cupy for "gpu" (TrainError with the reason if unusable,
    worded as ``train --backend gpu`` words it)."""
    backend = resolve_finite_backend(backend)
    if backend == "numpy":
        return np
    from .backends import resolve_backend
    resolve_backend("gpu")                 # TrainError "backend: 'gpu' is unavailable: <reason>"
    import cupy
    from accel.devicemath import with_special_functions
    return with_special_functions(cupy)    # erf for --activation erf (refimpl is NumPy only)


def _gib(b):
    return f"{b / 2 ** 30:.1f} GiB"


def _load(dataset, data_dir, train_size, test_size, seed, d0, dr, task="default", latent_dim=2):
    from .data import load_dataset
    from .tasks import apply_task
    kwargs = {"d0": d0, "dr": dr} if dataset == "synthetic" else {}
    if dataset in ("multi-index", "manifold"):
        kwargs = {"d0": d0, "latent_dim": latent_dim}
    try:
        return apply_task(load_dataset(dataset, data_dir=data_dir, train_size=train_size, test_size=test_size,
                                       seed=seed, **kwargs), task)
    except (ValueError, OSError) as exc:
        raise TrainError(str(exc).splitlines()[0]) from None


# ----------------------------------------------------------------------------
# appendix F: bottleneck sweep of finite networks
# ----------------------------------------------------------------------------



def width_dir(out, d):
    """Folder of one bottleneck size inside a sweep directory."""
    return Path(out) / f"width-{d:05d}"


def _sweep_entries(out):
    """The entries of a finite-sweep directory that may not be symbolic links
    (:func:`experiments.runfolder.refuse_links`): its files, every size's folder and that folder's files."""
    entries = list(SWEEP_FILES)
    if Path(out).is_dir() and not Path(out).is_symlink():
        for folder in sorted(Path(out).glob("width-*")):
            entries += [folder.name, *(f"{folder.name}/{f}" for f in ("metrics.csv", "result.json"))]
    return entries


def prepare_sweep_dir(out, force, resume):
    """Create the sweep directory; refuse to overwrite a sweep unless ``force``; clear it with ``force``."""
    out = Path(out)
    refuse_links(out, _sweep_entries(out))
    held = out.is_dir() and ((out / "config.json").exists() or any(out.glob("width-*")))
    if resume:
        return require_record(out, "config.json", "finite-sweep run")
    if held and not force:
        refuse_existing(out, "sweep", hint="use --resume to finish it or --force to start over")
    out.mkdir(parents=True, exist_ok=True)
    if held:
        for f in SWEEP_FILES:
            if (out / f).exists():
                (out / f).unlink()
        for w in out.glob("width-*"):
            if w.is_dir():
                shutil.rmtree(w)
    return out


def _train_width(config, data, rows, d, folder, xp, log):
    """Train one bottleneck size; write metrics.csv as it goes and result.json (atomically) at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    layers_g, layers_f = config.layers()
    net = FiniteNetwork.sample(data.d0, d, data.dr, width=config.hidden, seed=config.seed, xp=xp,
                               layers_g=layers_g, layers_f=layers_f, loss=config.loss)
    metrics, status, message = [], "done", None
    N = data.n_train

    def record(step):
        row = {"step": step, **evaluate_network(net, data, rows), "wall_s": round(time.perf_counter() - t0, 3)}
        metrics.append(row)
        write_csv(folder / "metrics.csv", SWEEP_COLUMNS, metrics)
        for key in ("train_loss", "test_loss"):
            if not math.isfinite(row[key]):
                raise DivergenceError(f"{key} is {row[key]} at step {step}")
        return row

    def record_and_log(done):
        row = record(done)
        log(f"  d={d} step {done}/{config.steps}: train_loss {row['train_loss']:.4g} "
            f"test_loss {row['test_loss']:.4g}" +
            ("" if row["test_err"] is None else f" test_err {row['test_err']:.3f}") +
            f" ({row['wall_s']:.0f} s)")

    opt = optimiser_kwargs(config)
    sgd = SGDLoop(lambda idx: net.step(data.X_train[idx], data.Y_train[idx], lr=config.lr, **opt),
                  BatchOrder(config.seed, N, config.batch_size),
                  after=[every(config.eval_every, record_and_log, config.steps)])
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            record(0)
        sgd.run(0, config.steps)
    except DivergenceError as exc:
        status, message = "diverged", str(exc)
        log(f"  d={d}: diverged: {message}")
    result = {"width": d, "status": status, "message": message, "steps_done": int(net.t),
              "final": metrics[-1] if metrics else None, "last_batch_loss": sgd.last,
              "wall_s": round(time.perf_counter() - t0, 3)}
    atomic_write_text(folder / "result.json", json.dumps(result, indent=2) + "\n")
    del net
    return result


@one_blas_thread      # the (B x n) @ (n x d) products of a step: threads only oversubscribe (BENCHMARKS.md)
def finite_sweep(config, out, force=False, resume=False, widths=None, log=print):
    """Train finite networks of hidden width ``config.hidden`` for every bottleneck size (appendix F).

    Parameters
    ----------
    config : SweepConfig, or None with ``resume``
    out : path of the sweep directory
    force : start over in an existing sweep directory (its sweep files are removed)
    resume : continue the sweep in ``out`` with its saved options (``config`` is ignored):
        sizes already finished are skipped, the others are trained (a size interrupted
        midway starts again from step 0)
    widths : with ``resume``, extra bottleneck sizes to add to the saved ones
    log : callable for one-line progress messages

    Writes, in ``out``: ``config.json``; ``width-DDDDD/metrics.csv`` (step, train_loss,
    test_loss, train_err, test_err, wall_s) and ``width-DDDDD/result.json`` (written last,
    atomically: its presence marks the size as finished); ``summary.json`` and ``summary.csv``
    (final metrics per size); ``finite-losses.png`` (fig 15) and ``finite-final.png`` (fig 16).

    Returns
    -------
    dict : the summary (also in ``summary.json``)
    """
    if resume:
        out = prepare_sweep_dir(out, force=False, resume=True)
        path = out / "config.json"
        saved = read_run_json(path).get("config")
        if not isinstance(saved, dict):
            raise TrainError(f"{path}: no 'config' object (damaged or edited)")
        names = {f.name for f in dataclasses.fields(SweepConfig)}
        try:
            config = SweepConfig(**{k: v for k, v in saved.items() if k in names})
            config.validate()
        except (TrainError, TypeError, ValueError) as exc:
            raise TrainError(f"{path}: {str(exc).splitlines()[0]} (damaged or edited)") from None
        check_finished_sizes(out, config)
        if widths is not None:
            config.widths = tuple(sorted(set(parse_widths(config.widths)) | set(parse_widths(widths))))
    elif config is None:
        raise TrainError("config: expected a SweepConfig for a new sweep")
    config.validate()
    if config.backend_requested is None and not resume:
        config.backend_requested = config.backend
    if config.backend == "auto":         # resolved once; recorded beside what was asked
        config.backend = resolve_finite_backend("auto")
        log(f"backend: {config.backend} (auto: " + ("a usable GPU is present)" if config.backend == "gpu"
                                                     else "no usable GPU; NumPy on the CPU)"))
    xp = array_module(config.backend)
    data = _load(config.dataset, config.data_dir, config.train_size, config.test_size, config.data_seed,
                 config.d0, config.dr, config.task, config.latent_dim)
    if config.batch_size > data.n_train:
        raise TrainError(f"batch_size: expected at most the number of training points ({data.n_train}), "
                         f"got {config.batch_size}")
    need = finite_memory_estimate(data.d0, max(config.widths), data.dr, config.hidden, config.batch_size)
    have = available_memory(xp)
    if have is not None and need > 0.9 * have:
        fits = [d for d in config.widths
                if finite_memory_estimate(data.d0, d, data.dr, config.hidden, config.batch_size) <= 0.9 * have]
        raise TrainError(f"hidden: n={config.hidden} with bottleneck {max(config.widths)} needs about "
                         f"{_gib(need)}, more than this machine's {_gib(have)}; lower --hidden or keep the "
                         f"widths up to {max(fits) if fits else 'none'}")
    if not resume:
        out = prepare_sweep_dir(out, force, resume=False)
    all_widths = config.widths
    meta = {"config": {**config.as_json(), "widths": list(all_widths)}, "data": data.meta,
            "refimpl_version": __version__,
            "memory_estimate_bytes": {str(d): finite_memory_estimate(data.d0, d, data.dr, config.hidden,
                                                                     config.batch_size) for d in all_widths},
            "loss": ("mean over points of |F - y|^2 / 2; SGD on 1/(2B) sum |F - y|^2" if config.loss == "mse"
                     else "mean over points of the cross-entropy -y . log softmax(F) (dr = 1: logistic); "
                          "SGD on its mean over the batch"),
            "error": "1 - accuracy (argmax of F against the label); empty for regression",
            "train_metrics_rows": int(min(config.eval_size, data.n_train))}
    atomic_write_text(out / "config.json", json.dumps(meta, indent=2) + "\n")
    rows = eval_rows(config.seed, data.n_train, config.eval_size)

    d = None
    try:
        for d in config.widths:
            folder = width_dir(out, d)
            if (folder / "result.json").exists():
                log(f"d={d}: already finished, skipped")
                continue
            log(f"d={d}: n={config.hidden}, {config.steps} steps of batch {config.batch_size} "
                f"(about {_gib(finite_memory_estimate(data.d0, d, data.dr, config.hidden, config.batch_size))})")
            _train_width(config, data, rows, d, folder, xp, log)
        return write_finite_summary(out)
    except KeyboardInterrupt:
        raise RunFailed(f"interrupted at bottleneck size {d}; finished sizes are kept; continue with: "
                        f"python cli.py finite-sweep --resume {out}") from None
    except DiskFull as exc:
        raise RunFailed(f"{exc}; finished sizes are kept; free some space and continue with: "
                        f"python cli.py finite-sweep --resume {out}") from None


def check_finished_sizes(out, config):
    """Before a resume trains anything: every size marked finished (its result.json) must have a result.json
    that fits the sweep and a metrics.csv of finite rows up to the step it records (TrainError naming the
    file otherwise; delete the size's folder to train it again)."""
    for folder in sorted(Path(out).glob("width-*")):
        result = folder / "result.json"
        if not result.exists():
            continue
        hint = f"delete {folder} to train that size again"
        try:
            res = read_json(result)
        except ValueError as exc:
            raise TrainError(f"{exc}; {hint}") from None
        d, done = res.get("width"), res.get("steps_done")
        if (not isinstance(d, int) or folder.name != width_dir(out, d).name or res.get("status") not in
                ("done", "diverged") or not isinstance(done, int) or not 0 <= done <= config.steps):
            raise TrainError(f"{result}: its width, status or steps_done do not fit the sweep (damaged or "
                             f"edited); {hint}")
        metrics = folder / "metrics.csv"
        if not metrics.is_file():
            raise TrainError(f"{metrics}: missing, but {result.name} says the size finished; {hint}")
        try:
            rows = read_csv(metrics)
            steps = [int(r["step"]) for r in rows]
            losses = [float(r["train_loss"]) for r in rows] + [float(r["test_loss"]) for r in rows]
        except Exception:   # noqa: BLE001 - KeyError, ValueError, UnicodeDecodeError, csv.Error: damaged
            raise TrainError(f"{metrics}: not the metrics of a finished size (damaged); {hint}") from None
        finite = all(math.isfinite(v) for v in losses)
        if not steps or steps[0] != 0 or steps != sorted(set(steps)) or \
                (res["status"] == "done" and (steps[-1] != done or not finite)):
            raise TrainError(f"{metrics}: its rows do not reach step {done} that {result.name} records "
                             f"(truncated or edited); {hint}")


def load_finite_sweep(out):
    """Per finished bottleneck size: (result dict, metrics rows as floats), sorted by size."""
    results = []
    for folder in sorted(Path(out).glob("width-*")):
        if not (folder / "result.json").exists():
            continue
        res = json.loads((folder / "result.json").read_text())
        rows = [{k: (float(v) if v not in ("", None) else None) for k, v in r.items()}
                for r in read_csv(folder / "metrics.csv")]
        results.append((res, rows))
    results.sort(key=lambda r: r[0]["width"])
    return results


def write_finite_summary(out):
    """Write summary.json, summary.csv and the two figures from the finished sizes in ``out``."""
    out = Path(out)
    cfg = json.loads((out / "config.json").read_text())
    results = load_finite_sweep(out)
    table = []
    for res, _ in results:
        fin = res.get("final") or {}
        table.append({"width": res["width"], "status": res["status"], "steps_done": res["steps_done"],
                      **{k: fin.get(k) for k in SWEEP_COLUMNS[1:5]}, "wall_s": res["wall_s"]})
    summary = {"config": cfg["config"], "data": {k: cfg["data"].get(k) for k in ("dataset", "n_train", "n_test",
                                                                                 "d0", "dr")},
               "final_is": "the last evaluation (step = steps, or the last good one of a diverged size)",
               "widths": table,
               "diverged": [r["width"] for r in table if r["status"] != "done"],
               "missing": [d for d in cfg["config"]["widths"] if d not in {r["width"] for r in table}]}
    done = [r for r in table if r["status"] == "done" and r["test_loss"] is not None]
    if done:
        summary["best_test_loss_width"] = min(done, key=lambda r: r["test_loss"])["width"]
        if done[0]["test_err"] is not None:
            summary["best_test_err_width"] = min(done, key=lambda r: r["test_err"])["width"]
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_csv(out / "summary.csv", ["width", "status", "steps_done", "train_loss", "test_loss", "train_err",
                                     "test_err", "wall_s"], table)
    if results:
        plot_finite_sweep(out, results, cfg["config"])
    return summary


def plot_finite_sweep(out, results, config):
    """fig 15 (loss against steps per bottleneck size) and fig 16 (final loss and error against size)."""
    with PLOT_LOCK:
        _plot_finite_sweep(out, results, config)


def _plot_finite_sweep(out, results, config):
    plt = pyplot()
    cmap = plt.get_cmap("viridis")
    ws = [r[0]["width"] for r in results]
    lw = np.log(ws)
    span = (lw.max() - lw.min()) or 1.0
    title = (f"{config['dataset']}, n={config['hidden']:,}, batch {config['batch_size']}, lr {config['lr']}")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for (res, rows), l in zip(results, lw):
        colour = cmap(0.9 * (l - lw.min()) / span)
        steps = [r["step"] for r in rows]
        for ax, key in zip(axes, ("train_loss", "test_loss")):
            ax.plot(steps, [r[key] for r in rows], color=colour, lw=1.2,
                    label=f"d={res['width']}" + ("" if res["status"] == "done" else " (diverged)"))
    for ax, name in zip(axes, ("training loss", "test loss")):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss (the trained loss, see config.json)")
    axes[1].set_ylabel("loss (the trained loss, see config.json)")
    axes[1].yaxis.set_tick_params(labelleft=True)
    axes[1].legend(fontsize=7, ncol=2 if len(results) > 8 else 1, title="bottleneck")
    fig.suptitle(f"finite networks: {title}", fontsize=11)
    fig.tight_layout()
    save_figure(fig, out / "finite-losses.png", dpi=90)

    done = [(res, rows) for res, rows in results if res["status"] == "done"]
    has_err = bool(done) and done[0][0]["final"].get("test_err") is not None
    fig, axes = plt.subplots(1, 2 if has_err else 1, figsize=(10 if has_err else 5.5, 4), squeeze=False)
    axes = axes[0]
    x = [res["width"] for res, _ in done]
    for key, label, style in (("train_loss", "train", "o-"), ("test_loss", "test", "s-")):
        axes[0].plot(x, [res["final"][key] for res, _ in done], style, ms=4, label=label)
    axes[0].set_ylabel("final loss")
    axes[0].set_title("final loss against the bottleneck size")
    if has_err:
        for key, label, style in (("train_err", "train", "o-"), ("test_err", "test", "s-")):
            axes[1].plot(x, [res["final"][key] for res, _ in done], style, ms=4, label=label)
        axes[1].set_ylabel("final error rate (1 - accuracy)")
        axes[1].set_title("final error rate against the bottleneck size")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("bottleneck size d")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle(f"end of training ({config['steps']} steps): {title}", fontsize=11)
    fig.tight_layout()
    save_figure(fig, out / "finite-final.png", dpi=90)


# ----------------------------------------------------------------------------
# finite against infinite width
# ----------------------------------------------------------------------------

COMPARE_COLUMNS = ["run", "n", "step", "finite_train_loss", "finite_test_loss", "sim_train_loss", "sim_test_loss",
                   "rel_gap_train", "rel_gap_test", "output_gap"]
TABLE_COLUMNS = ["n", "finite_train_final", "sim_train_final", "finite_test_final", "sim_test_final",
                 "max_rel_gap_train", "final_rel_gap_train", "max_rel_gap_test", "final_rel_gap_test",
                 "max_output_gap", "final_output_gap"]


def relative_gap(a, b):
    """|a - b| / |b| elementwise (0 where both are 0): the gap of finite losses ``a`` to simulated losses ``b``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    diff = np.abs(a - b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(diff == 0, 0.0, diff / np.abs(b))


def output_gap(F_fin, F_sim):
    """Relative distance of the outputs, ``||F_fin - F_sim||_F / ||F_sim||_F`` (0 when equal)."""
    diff = float(np.linalg.norm(np.asarray(F_fin) - np.asarray(F_sim)))
    ref = float(np.linalg.norm(F_sim))
    return 0.0 if diff == 0 else diff / ref


def gap_table(records):
    """One row per width from the per-step records of :func:`finite_vs_infinite`.

    ``records``: dicts with keys n, step, finite_/sim_ train/test losses and output_gap
    (the ``run == "finite"`` rows of metrics.csv).  Max is over the evaluated steps, final
    is the last step.
    """
    table = []
    for n in sorted({int(r["n"]) for r in records}):
        rs = sorted((r for r in records if int(r["n"]) == n), key=lambda r: int(r["step"]))
        row = {"n": n}
        for split in ("train", "test"):
            fin = np.array([float(r[f"finite_{split}_loss"]) for r in rs])
            sim = np.array([float(r[f"sim_{split}_loss"]) for r in rs])
            rel = relative_gap(fin, sim)
            row[f"finite_{split}_final"] = float(fin[-1])
            row[f"sim_{split}_final"] = float(sim[-1])
            row[f"max_rel_gap_{split}"] = float(rel.max())
            row[f"final_rel_gap_{split}"] = float(rel[-1])
        og = np.array([float(r["output_gap"]) for r in rs])
        row["max_output_gap"] = float(og.max())
        row["final_output_gap"] = float(og[-1])
        table.append(row)
    return table


def gap_check(table, max_ratio, key="max_rel_gap_train"):
    """(passed, ratio, slope): does the gap shrink from the smallest to the largest width?

    ``ratio = gap(largest n) / gap(smallest n)``, passed when ``ratio <= max_ratio``; ``slope``
    is the least-squares exponent of gap against n on log-log axes (about -0.5 expected).
    """
    ns = np.array([r["n"] for r in table], dtype=np.float64)
    gaps = np.array([r[key] for r in table], dtype=np.float64)
    small, large = gaps[np.argmin(ns)], gaps[np.argmax(ns)]
    ratio = 0.0 if large == 0 else (math.inf if small == 0 else float(large / small))
    ok = np.all(gaps > 0)
    slope = float(np.polyfit(np.log(ns[gaps > 0]), np.log(gaps[gaps > 0]), 1)[0]) if ok and len(ns) > 1 else None
    return ratio <= max_ratio, ratio, slope


@one_blas_thread
def finite_vs_infinite(config, out, force=False, log=print):
    """Loss curves of finite networks of growing width against the function-space simulation.

    For each hidden width n in ``config.hidden``: ``net = RandomNetwork.sample(d0, d, dr, n, seed)``,
    ``finite = FiniteNetwork.from_random_network(net)`` and ``sim = BottleneckSimulator(net, ...)``
    (the same g0, f0, J0), trained on the same batches with the same rate.  The training loss is
    evaluated on all training points, the test loss on all test points, every ``eval_every`` steps.
    A reference simulation from the default initial functions (width ``limit_width``) is run as "limit".

    Writes, in ``out``: ``metrics.csv`` (columns :data:`COMPARE_COLUMNS`; run = finite or limit),
    ``table.csv`` (columns :data:`TABLE_COLUMNS`), ``summary.json`` (options, table, check) and
    ``finite-vs-infinite.png``.

    Returns
    -------
    dict : the summary; ``check["passed"]`` is true when both the loss gap and the output gap of the
    largest n are at most ``max_ratio`` times those of the smallest n
    """
    config.validate()
    out = Path(out)
    refuse_links(out, COMPARE_FILES)
    existing = [f for f in COMPARE_FILES if (out / f).exists()]
    if existing and not force:
        refuse_existing(out, "comparison", existing, hint="use --force to overwrite it")
    if config.dataset in ("multi-index", "manifold") and config.d0 is not None and config.d0 < 2:
        raise TrainError(f"d0: expected at least 2 for --dataset {config.dataset} (its latent dimension is 2 "
                         f"here), got {config.d0}")
    data = _load(config.dataset, config.data_dir, config.train_size, config.test_size, config.data_seed,
                 config.d0, config.dr)
    if config.batch_size > data.n_train:
        raise TrainError(f"batch_size: expected at most the number of training points ({data.n_train}), "
                         f"got {config.batch_size}")
    out.mkdir(parents=True, exist_ok=True)                 # only once everything was checked
    X, Y, Xt, Yt = data.X_train, data.Y_train, data.X_test, data.Y_test
    N = data.n_train
    records = []
    t0 = time.perf_counter()

    def run(kind, n, net, finite):
        simulator = ChainSimulator if config.chain else BottleneckSimulator
        opt = optimiser_kwargs(config)           # the same optimiser for both (MATH §8)
        sim = simulator(net, X, Y, lr=config.lr, X_eval=Xt, **opt)

        def record(step):
            Fs, Fst = sim.outputs(X), sim.outputs(Xt)
            rec = {"run": kind, "n": n, "step": step, "sim_train_loss": mean_loss(Fs, Y),
                   "sim_test_loss": mean_loss(Fst, Yt)}
            if finite is not None:
                Ff, Fft = to_numpy(finite.outputs(X)), to_numpy(finite.outputs(Xt))
                rec.update(finite_train_loss=mean_loss(Ff, Y), finite_test_loss=mean_loss(Fft, Yt),
                           output_gap=output_gap(np.vstack([Ff, Fft]), np.vstack([Fs, Fst])))
                rec["rel_gap_train"] = float(relative_gap(rec["finite_train_loss"], rec["sim_train_loss"]))
                rec["rel_gap_test"] = float(relative_gap(rec["finite_test_loss"], rec["sim_test_loss"]))
            for k in ("sim_train_loss", "finite_train_loss"):
                if k in rec and not math.isfinite(rec[k]):
                    raise DivergenceError(f"{k} is {rec[k]} at step {step}")
            records.append(rec)

        def step_both(idx):             # the same batch for the finite network and its simulation
            if finite is not None:
                finite.step(X[idx], Y[idx], lr=config.lr, **opt)
            return sim.step(idx)
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                record(0)
            SGDLoop(step_both, BatchOrder(config.seed, N, config.batch_size),
                    after=[every(config.eval_every, record, config.steps)]).run(0, config.steps)
        except DivergenceError as exc:
            raise RunFailed(f"lr: the {kind} run with n={n} diverged ({exc}); lower --lr") from None

    def initial(n):                     # the random network (a chain with --chain, MATH §9) of hidden width n
        if config.chain:
            return RandomChain.sample(data.d0, [config.width, *config.chain], data.dr, width=n, seed=config.seed)
        return RandomNetwork.sample(data.d0, config.width, data.dr, width=n, seed=config.seed)

    for n in config.hidden:
        net = initial(n)
        run("finite", n, net, FiniteChain.from_random_chain(net) if config.chain
            else FiniteNetwork.from_random_network(net))
        last = records[-1]
        log(f"n={n}: finite train loss {last['finite_train_loss']:.5g}, simulator {last['sim_train_loss']:.5g}, "
            f"output gap {last['output_gap']:.3g} ({time.perf_counter() - t0:.0f} s)")
    run("limit", config.limit_width, initial(config.limit_width), None)

    write_csv(out / "metrics.csv", COMPARE_COLUMNS, records)
    table = gap_table([r for r in records if r["run"] == "finite"])
    write_csv(out / "table.csv", TABLE_COLUMNS, table)
    checks = {}
    for name, key, what in (("loss", "max_rel_gap_train", "max over steps of |L_finite - L_sim| / L_sim (training loss)"),
                            ("output", "max_output_gap", "max over steps of ||F_finite - F_sim|| / ||F_sim||")):
        ok, ratio, slope = gap_check(table, config.max_ratio, key)
        checks[name] = {"quantity": what, "ratio": ratio, "passed": bool(ok), "loglog_slope": slope}
    limit_final = [r for r in records if r["run"] == "limit"][-1]
    summary = {"config": config.as_json(),
               "data": {k: data.meta.get(k) for k in ("dataset", "n_train", "n_test", "d0", "dr")},
               "refimpl_version": __version__,
               "table": table,
               "limit": {"n0": config.limit_width, "train_final": limit_final["sim_train_loss"],
                         "test_final": limit_final["sim_test_loss"]},
               "check": {"max_ratio": config.max_ratio, "passed": all(c["passed"] for c in checks.values()),
                         "rule": "gap(largest n) <= max_ratio * gap(smallest n) for both gaps", **checks},
               "definitions": {
                   "rel_gap": "|L_finite - L_sim| / L_sim at one step, L the mean of |F - y|^2 / 2",
                   "output_gap": "||F_finite - F_sim||_F / ||F_sim||_F over the train and test points",
                   "sim": "BottleneckSimulator (ChainSimulator with a chain, MATH §9) started from the same "
                          "random network as the finite network",
                   "limit": "BottleneckSimulator from the default initial functions (width limit_width)"},
               "wall_s": round(time.perf_counter() - t0, 2)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    plot_comparison(out, records, table, config)
    return summary


def plot_comparison(out, records, table, config):
    """One figure: training and test loss, finite (solid) and simulator (dashed) per n, limit in black."""
    with PLOT_LOCK:
        _plot_comparison(out, records, table, config)


def _plot_comparison(out, records, table, config):
    plt = pyplot()
    cmap = plt.get_cmap("plasma")
    ns = sorted({r["n"] for r in records if r["run"] == "finite"})
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for i, n in enumerate(ns):
        colour = cmap(0.85 * i / max(len(ns) - 1, 1))
        rs = [r for r in records if r["run"] == "finite" and r["n"] == n]
        steps = [r["step"] for r in rs]
        for ax, split in zip(axes[:2], ("train", "test")):
            ax.plot(steps, [r[f"finite_{split}_loss"] for r in rs], "-", color=colour, lw=1.3, label=f"finite n={n}")
            ax.plot(steps, [r[f"sim_{split}_loss"] for r in rs], "--", color=colour, lw=1.3,
                    label="simulator, same init" if i == len(ns) - 1 else None)
        axes[2].plot(steps[1:], [r["output_gap"] for r in rs][1:], "o-", ms=3, color=colour, label=f"n={n}")
    lim = [r for r in records if r["run"] == "limit"]
    for ax, split in zip(axes[:2], ("train", "test")):
        ax.plot([r["step"] for r in lim], [r[f"sim_{split}_loss"] for r in lim], ":", color="k", lw=1.5,
                label=f"limit (simulator, n0={config.limit_width})")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{split} loss")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("training loss (mean |F - y|^2 / 2)")
    axes[1].set_ylabel("test loss (mean |F - y|^2 / 2)")
    axes[0].legend(fontsize=7)
    axes[2].set_yscale("log")
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("||F_finite - F_sim|| / ||F_sim||")
    axes[2].set_title("output gap ||F_finite - F_sim|| / ||F_sim||")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    fig.suptitle(f"finite vs infinite width: {config.dataset}, d={config.width}, batch {config.batch_size}, "
                 f"lr {config.lr}", fontsize=11)
    fig.tight_layout()
    save_figure(fig, out / "finite-vs-infinite.png", dpi=90)


def markdown_table(table, limit=None):
    """The gap table as GitHub markdown (for docs)."""
    lines = ["| n | finite train (end) | simulator train (end) | max rel. gap train | end rel. gap train | "
             "max rel. gap test | max output gap |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['n']:,} | {r['finite_train_final']:.4g} | {r['sim_train_final']:.4g} | "
                     f"{r['max_rel_gap_train']:.3g} | {r['final_rel_gap_train']:.3g} | "
                     f"{r['max_rel_gap_test']:.3g} | {r['max_output_gap']:.3g} |")
    if limit is not None:
        lines.append(f"| limit (n0={limit['n0']:,}) | | {limit['train_final']:.4g} | | | | |")
    return "\n".join(lines)
