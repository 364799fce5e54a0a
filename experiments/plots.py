"""Figures of a sweep (paper appendix D.4, figs 2-10), as small PNG files, and the loss.png of one run
(:func:`plot_run_loss`).

:func:`plot_sweep` reads every run of a sweep directory (:mod:`experiments.sweep`)
and writes into it (or into ``figdir``):

``loss.png``
    Training and test loss against steps, one curve per width, log scale
    (paper figs 2, 5, 8).  With several seeds: the mean over seeds, and a band
    from the smallest to the largest seed at each step.
``accuracy.png``
    Training and test accuracy against steps (classification only; figs 5, 8).
``heatmap.png``
    Loss (mean over seeds) over width x step for the first ``heatmap_steps``
    steps (4000, or the run length if shorter), log colour scale (figs 3, 6, 9)
    spanning the losses after step 0 (the random initial losses would otherwise
    set the scale and leave the rest in one colour; step 0 is clipped).
``heatmap_relative.png``
    Each width's mean loss divided by ``inf``'s at the same step, log colour
    scale symmetric about 1 (blue: lower loss than ``inf``, red: higher); only
    when the sweep has ``inf`` (:func:`relative_table`).
``train_vs_test.png``
    Test loss against training loss by the procedure of appendix D.4 (figs 4, 7,
    10), left with all widths, right with the finite widths only (as fig 4).
``features.png``
    The bottleneck metrics of :mod:`experiments.metrics` against steps (not in the paper).
``tables.md``
    Markdown tables (:func:`summary_tables`): steps to reach training-loss thresholds per width,
    final metrics, and the test loss at matched training losses (needs ``sweep.json``).

Test loss against training loss (appendix D.4), as implemented by
:func:`train_vs_test`:

1. range: ``[lo, hi]`` = the minimum and the maximum of the recorded training
   losses over all runs of all widths shown (the paper's words: "the minimum
   and maximum recorded training losses across all bottleneck widths");
2. a common grid of ``n_grid`` training losses in that range; the paper does not
   say how they are spaced: here geometrically (losses span decades);
3. per run, the test loss at each grid training loss by linear interpolation in
   the recorded (training loss, test loss) pairs, sorted by training loss (SGD
   makes the training loss non-monotone in the steps; sorting is what an
   interpolation routine that accepts unsorted data does).  A run has no
   data outside its own recorded training-loss range: grid points there are
   left out (NaN), never extrapolated.  This is how non-overlapping ranges are
   handled: a width whose losses never come down to the lowest grid values
   simply has a shorter curve;
4. both the grid training losses and the interpolated test losses are smoothed
   by a moving average of length 5 (``"valid"`` mode, over each run's
   contiguous stretch of grid points, so a curve loses 2 points at each end);
5. with several seeds: the mean over seeds at the grid points where every seed
   has a value, and a band from the smallest to the largest seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .figures import PLOT_LOCK, pyplot, save_figure
from .fileio import SWEEP_FILE, atomic_write_text, read_csv
from .validate import TrainError, width_key

DPI = 90
MA_LENGTH = 5
FIGURES = ("loss.png", "accuracy.png", "heatmap.png", "heatmap_relative.png", "train_vs_test.png", "features.png")
#: Every file :func:`plot_sweep` may write (``cli.py plot`` refuses to overwrite them without --force).
SWEEP_FIGURE_FILES = FIGURES + ("tables.md",)
_COLUMNS = ("step", "train_loss", "test_loss", "train_acc", "test_acc", "feature_movement", "kernel_alignment")


# ----------------------------------------------------------------------------
# one run
# ----------------------------------------------------------------------------

def plot_run_loss(out, metrics):
    """Write a run's loss.png: training and test loss against steps, log scale (``metrics``: the rows of its
    metrics.csv, values as numbers or strings)."""
    if not metrics:
        return
    with PLOT_LOCK:
        plt = pyplot()
        steps = [int(r["step"]) for r in metrics]
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label in (("train_loss", "train"), ("test_loss", "test")):
            ax.plot(steps, [float(r[key]) for r in metrics], marker=".", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss  (the trained loss, see config.json)")
        ax.set_title(out.name)
        ax.legend()
        fig.tight_layout()
        save_figure(fig, out / "loss.png", dpi=100)


# ----------------------------------------------------------------------------
# reading a sweep
# ----------------------------------------------------------------------------

def metrics_columns(path):
    """metrics.csv -> dict of float arrays (empty cells and missing columns -> NaN)."""
    rows = read_csv(path)
    out = {}
    for col in _COLUMNS:
        out[col] = np.array([float(r[col]) if r.get(col) not in (None, "") else np.nan for r in rows])
    return out


def _width_of(name):
    w = name.split("-", 1)[1]
    return "inf" if w == "inf" else int(w)


def load_sweep(sweep_dir):
    """Every run of a sweep: ``{width: [metrics dict per seed, ...]}`` with the seeds as a list.

    Uses ``sweep.json`` when present, otherwise the ``width-*/metrics.csv`` and
    ``width-*/seed-*/metrics.csv`` files found.  Runs without metrics are skipped.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise TrainError(f"sweep_dir: {sweep_dir} is not a directory")
    found = []
    if (sweep_dir / SWEEP_FILE).exists():
        record = json.loads((sweep_dir / SWEEP_FILE).read_text())
        found = [(r["width"], r["seed"], sweep_dir / r["dir"]) for r in record["runs"]]
    else:
        for p in sorted(sweep_dir.glob("width-*")):
            if (p / "metrics.csv").exists():
                found.append((_width_of(p.name), 0, p))
            for q in sorted(p.glob("seed-*")):
                found.append((_width_of(p.name), int(q.name.split("-", 1)[1]), q))
    runs = {}
    for width, seed, path in found:
        if (path / "metrics.csv").exists():
            m = metrics_columns(path / "metrics.csv")
            if m["step"].size:
                m["seed"] = seed
                runs.setdefault(width, []).append(m)
    if not runs:
        raise TrainError(f"sweep_dir: no run with a metrics.csv in {sweep_dir}")
    return dict(sorted(runs.items(), key=lambda kv: width_key(kv[0])))


def seed_stats(runs, key):
    """Mean, min and max over seeds of column ``key`` on the union of their steps.

    Returns (steps, mean, lo, hi); at a step where some seed has no value (a shorter or
    failed run) the statistics use the seeds that have one.
    """
    steps = np.unique(np.concatenate([r["step"] for r in runs]))
    table = np.full((len(runs), steps.size), np.nan)
    for i, r in enumerate(runs):
        table[i, np.searchsorted(steps, r["step"])] = r[key]
    with np.errstate(all="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return steps, np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0)


# ----------------------------------------------------------------------------
# appendix D.4: test loss against training loss
# ----------------------------------------------------------------------------

def common_range(train_curves):
    """``(lo, hi)``: the minimum and maximum recorded training loss over all curves (NaN ignored)."""
    vals = np.concatenate([np.asarray(c, dtype=np.float64).ravel() for c in train_curves])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        raise ValueError("train_curves: no finite training loss")
    return float(vals.min()), float(vals.max())


def loss_grid(lo, hi, n_grid=100):
    """``n_grid`` training losses from ``lo`` to ``hi``, geometrically spaced (both ends included)."""
    if not (0 < lo <= hi):
        raise ValueError(f"lo, hi: expected 0 < lo <= hi, got {lo}, {hi}")
    return np.geomspace(lo, hi, n_grid)


def resample(train_loss, test_loss, grid):
    """Test loss at the grid training losses by linear interpolation (step 3 of the procedure).

    Parameters
    ----------
    train_loss, test_loss : (k,) recorded pairs of one run (any order; NaN pairs dropped)
    grid : (g,) training losses

    Returns
    -------
    (g,) array: interpolated test losses, NaN outside ``[min(train_loss), max(train_loss)]``.
    """
    x = np.asarray(train_loss, dtype=np.float64)
    y = np.asarray(test_loss, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    grid = np.asarray(grid, dtype=np.float64)
    out = np.full(grid.shape, np.nan)
    if x.size == 0:
        return out
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    inside = (grid >= x[0]) & (grid <= x[-1])
    out[inside] = np.interp(grid[inside], x, y)
    return out


def moving_average(values, length=MA_LENGTH):
    """Moving average of ``length`` points in "valid" mode: (k,) -> (k - length + 1,)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < length:
        return np.empty(0)
    return np.convolve(values, np.ones(length) / length, mode="valid")


def _longest_finite_run(mask):
    """(start, stop) of the longest stretch of True in ``mask`` (0, 0 if none)."""
    best, start = (0, 0), None
    for i, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


def smooth_on_grid(grid, values, length=MA_LENGTH):
    """Steps 4 of the procedure for one run: moving averages of the grid and of the values.

    Both are smoothed over the run's longest contiguous stretch of finite values and put back
    at the grid positions that the "valid" window centres on; everything else is NaN.
    Returns (smoothed grid, smoothed values), both shaped like ``grid``.
    """
    grid = np.asarray(grid, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    sx, sy = np.full(grid.shape, np.nan), np.full(grid.shape, np.nan)
    a, b = _longest_finite_run(np.isfinite(values))
    if b - a >= length:
        h = (length - 1) // 2
        sx[a + h:b - (length - 1 - h)] = moving_average(grid[a:b], length)
        sy[a + h:b - (length - 1 - h)] = moving_average(values[a:b], length)
    return sx, sy


def train_vs_test(runs_by_width, n_grid=100, length=MA_LENGTH):
    """Appendix D.4 for a set of widths: ``{width: (x, mean, lo, hi)}`` (see the module docstring).

    ``runs_by_width`` maps a width to a list of metrics dicts (one per seed).  The
    range comes from every run given.  ``x`` is the smoothed grid; ``mean``, ``lo``,
    ``hi`` are the mean, minimum and maximum over seeds of the smoothed test loss,
    at the grid points where every seed has a value.
    """
    lo, hi = common_range([r["train_loss"] for runs in runs_by_width.values() for r in runs])
    grid = loss_grid(lo, hi, n_grid)
    out = {}
    for width, runs in runs_by_width.items():
        xs, ys = [], []
        for r in runs:
            sx, sy = smooth_on_grid(grid, resample(r["train_loss"], r["test_loss"], grid), length)
            xs.append(sx)
            ys.append(sy)
        Y = np.array(ys)
        keep = np.all(np.isfinite(Y), axis=0)
        out[width] = (np.asarray(xs[0])[keep], Y[:, keep].mean(0), Y[:, keep].min(0), Y[:, keep].max(0))
    return out


# ----------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------

def _colours(widths):
    plt = pyplot()
    cmap = plt.get_cmap("viridis")
    finite = [w for w in widths if w != "inf"]
    col = {w: cmap(i / max(1, len(finite) - 1) * 0.9) for i, w in enumerate(finite)}
    col["inf"] = "black"
    return col


def _label(width, runs):
    return f"{width}" + (f" ({len(runs)} seeds)" if len(runs) > 1 else "")


def _curves(ax, runs_by_width, key, col, log=True):
    for width, runs in runs_by_width.items():
        steps, mean, lo, hi = seed_stats(runs, key)
        if not np.any(np.isfinite(mean)):
            continue
        ax.plot(steps, mean, color=col[width], lw=1.4, label=_label(width, runs))
        if len(runs) > 1:
            ax.fill_between(steps, lo, hi, color=col[width], alpha=0.2, lw=0)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")


def _title(sweep_dir, runs_by_width, band=True):
    n_seeds = max(len(r) for r in runs_by_width.values())
    what = ("; mean over seeds, band = min..max over seeds" if band else "; mean over seeds") if n_seeds > 1 else ""
    return f"{Path(sweep_dir).resolve().name}{what}"


def plot_loss(runs_by_width, path, title=""):
    plt = pyplot()
    col = _colours(list(runs_by_width))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key in zip(axes, ("train_loss", "test_loss")):
        _curves(ax, runs_by_width, key, col)
        ax.set_ylabel(key.replace("_", " "))
        ax.set_title(key.replace("_", " ") + " against steps", fontsize=TITLE_SIZE)
    axes[1].legend(title="width", fontsize=7, title_fontsize=7)
    fig.suptitle(title, fontsize=SUPTITLE_SIZE)
    fig.tight_layout()
    save_figure(fig, path, dpi=DPI)


def plot_accuracy(runs_by_width, path, title=""):
    plt = pyplot()
    col = _colours(list(runs_by_width))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key in zip(axes, ("train_acc", "test_acc")):
        _curves(ax, runs_by_width, key, col, log=False)
        ax.set_ylabel(key.replace("_", " ").replace("acc", "accuracy"))
        ax.set_title(key.replace("_", " ").replace("acc", "accuracy") + " against steps", fontsize=TITLE_SIZE)
    axes[1].legend(title="width", fontsize=7, title_fontsize=7)
    fig.suptitle(title, fontsize=SUPTITLE_SIZE)
    fig.tight_layout()
    save_figure(fig, path, dpi=DPI)


def heatmap_table(runs_by_width, key, max_steps):
    """(widths, step edges, table) for the heatmap: mean over seeds, steps <= max_steps.

    The table has one row per width (order of ``runs_by_width``) and one column per
    evaluation step of the union of all runs; missing cells are NaN.
    """
    stats = {w: seed_stats(r, key) for w, r in runs_by_width.items()}
    steps = np.unique(np.concatenate([s[0] for s in stats.values()]))
    steps = steps[steps <= max_steps]
    table = np.full((len(stats), steps.size), np.nan)
    for i, (steps_w, mean, _, _) in enumerate(stats.values()):
        sel = steps_w <= max_steps
        table[i, np.searchsorted(steps, steps_w[sel])] = mean[sel]
    mids = (steps[1:] + steps[:-1]) / 2
    edges = np.concatenate([[steps[0] - (mids[0] - steps[0]) if mids.size else steps[0] - 0.5], mids,
                            [steps[-1] + (steps[-1] - mids[-1]) if mids.size else steps[0] + 0.5]])
    return list(stats), edges, table


def relative_table(runs_by_width, key, max_steps, reference="inf"):
    """(widths, step edges, ratio): each width's mean loss divided by ``reference``'s at the same step.

    Same layout as :func:`heatmap_table` (the reference row is all ones where it has a value);
    NaN where either value is missing or the reference is not positive.

    Raises
    ------
    ValueError when the sweep has no run of width ``reference``.
    """
    widths, edges, table = heatmap_table(runs_by_width, key, max_steps)
    if reference not in widths:
        raise ValueError(f"reference: the sweep has no width {reference!r} to divide by")
    ref = table[widths.index(reference)]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(ref > 0, table / ref, np.nan)
    return widths, edges, ratio


def colour_range(table, skip_first=True):
    """(vmin, vmax) of the positive finite cells, leaving out the first column (step 0) if there are others.

    Step 0 holds the random initial losses, which can lie far above everything after it; a colour
    scale stretched to include them leaves the rest of the map in one colour.  Returns None if empty.
    """
    body = table[:, 1:] if skip_first and table.shape[1] > 1 else table
    vals = body[np.isfinite(body) & (body > 0)]
    return (float(vals.min()), float(vals.max())) if vals.size else None


#: The ratios labelled on the relative heatmap's colour bar; ratios outside are clipped to its ends.
RATIO_TICKS = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Font sizes of the sweep figures: suptitle, panel titles.
SUPTITLE_SIZE, TITLE_SIZE = 11, 10


def log_ticks(vmin, vmax, most=7):
    """Tick values for a log colour scale over [vmin, vmax] (0 < vmin < vmax): the round values inside the
    range (decades first; 1-2-5, 1-2-3-5 or more mantissas when that gives too few; evenly spaced on the
    log scale for a narrow range), thinned to at most ``most``, always with the two ends, so the whole
    range carries at least three labelled ticks however narrow it is."""
    lo, hi = np.floor(np.log10(vmin)), np.ceil(np.log10(vmax))
    span = np.log(vmax / vmin) or 1.0
    keep = [vmin, vmax]
    for digits in (2, 3, 4, 6):
        rnd = lambda v: float(f"{v:.{digits}g}")          # noqa: E731
        ticks = []
        for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 4, 5, 6, 8)):
            ticks = [rnd(m * 10.0 ** e) for e in np.arange(lo, hi + 1) for m in mantissas
                     if vmin <= m * 10.0 ** e <= vmax]
            if len(ticks) >= 3:
                break
        if len(ticks) < 2:               # a narrow range: evenly spaced on the log scale
            ticks = sorted({rnd(v) for v in np.geomspace(vmin, vmax, 5)[1:-1]})
        while len(ticks) > most - 2:
            ticks = ticks[::2]
        ends = [min(max(rnd(vmin), vmin), vmax), max(min(rnd(vmax), vmax), vmin)]
        out = sorted(set([ends[0], *[t for t in ticks if vmin <= t <= vmax], ends[1]]))
        keep = [out[0]]                  # no tick closer than 12 % of the range (log scale) to the previous one
        for t in out[1:]:
            if np.log(t / keep[-1]) > 0.12 * span:
                keep.append(t)
            elif t == out[-1]:
                keep[-1] = t if len(keep) > 1 else keep[-1]
                if len(keep) == 1:
                    keep.append(t)
        if len(keep) >= 3:
            return keep
    return keep


def _tick_text(v):
    return f"{v:.3g}"


def _heatmap_axes(fig, ax, widths, edges, table, norm, cmap, title, label, ticks=None, extend="neither"):
    mesh = ax.pcolormesh(edges, np.arange(len(widths) + 1), np.ma.masked_invalid(table),
                         norm=norm, cmap=cmap, shading="flat")
    ax.set_yticks(np.arange(len(widths)) + 0.5)
    ax.set_yticklabels([str(w) for w in widths])
    ax.invert_yaxis()
    ax.set_xlabel("step")
    ax.set_ylabel("bottleneck width")
    ax.set_title(title, fontsize=TITLE_SIZE)
    bar = fig.colorbar(mesh, ax=ax, label=label, extend=extend)
    if ticks is None and norm is not None and norm.vmin and norm.vmax and norm.vmax > norm.vmin:
        ticks = log_ticks(norm.vmin, norm.vmax)
    if ticks is not None:
        bar.minorticks_off()
        bar.set_ticks(list(ticks))
        bar.set_ticklabels([_tick_text(t) for t in ticks])
    return bar


def plot_heatmap_relative(runs_by_width, path, max_steps=4000, title=""):
    """Each width's loss divided by inf's at the same step; log colour scale centred at 1 (blue = faster)."""
    plt = pyplot()
    from matplotlib.colors import LogNorm
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.9 + 0.32 * len(runs_by_width) + 1.6))
    for ax, key in zip(axes, ("train_loss", "test_loss")):
        widths, edges, ratio = relative_table(runs_by_width, key, max_steps)
        # a fixed scale, 1/4 .. 4 on a log axis centred at 1, every cell (step 0 too) clipped into it
        _heatmap_axes(fig, ax, widths, edges, ratio, LogNorm(vmin=RATIO_TICKS[0], vmax=RATIO_TICKS[-1], clip=True),
                      "RdBu_r", key.replace("_", " ") + " / inf's", "ratio to inf (< 1: lower; clipped to 0.25..4)",
                      ticks=RATIO_TICKS, extend="both")
    fig.suptitle(title, fontsize=SUPTITLE_SIZE)
    fig.tight_layout()
    save_figure(fig, path, dpi=DPI)


def plot_heatmap(runs_by_width, path, max_steps=4000, title=""):
    """Loss over width x step, log colour scale over the steps after step 0 (step 0 clipped to the top)."""
    plt = pyplot()
    from matplotlib.colors import LogNorm
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.9 + 0.32 * len(runs_by_width) + 1.2))
    for ax, key in zip(axes, ("train_loss", "test_loss")):
        widths, edges, table = heatmap_table(runs_by_width, key, max_steps)
        rng = colour_range(table)
        norm = LogNorm(vmin=rng[0], vmax=rng[1], clip=True) if rng else None
        _heatmap_axes(fig, ax, widths, edges, table, norm, "viridis", key.replace("_", " "),
                      "loss (colour range: steps > 0)", extend="max")
    fig.suptitle(title, fontsize=SUPTITLE_SIZE)
    fig.tight_layout()
    save_figure(fig, path, dpi=DPI)


def plot_train_vs_test(runs_by_width, path, title=""):
    plt = pyplot()
    col = _colours(list(runs_by_width))
    finite = {w: r for w, r in runs_by_width.items() if w != "inf"}
    panels = [("all widths", runs_by_width)]
    if finite and len(finite) < len(runs_by_width):
        panels.append(("finite widths only", finite))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, (name, group) in zip(axes[0], panels):
        for width, (x, mean, lo, hi) in train_vs_test(group).items():
            if x.size == 0:
                continue
            ax.plot(x, mean, color=col[width], lw=1.4, label=_label(width, group[width]))
            if len(group[width]) > 1:
                ax.fill_between(x, lo, hi, color=col[width], alpha=0.2, lw=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        from matplotlib.ticker import FormatStrFormatter, LogLocator
        for axis in (ax.xaxis, ax.yaxis):                   # plain labels at 1, 2, 5 x 10^k
            axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            axis.set_minor_formatter(FormatStrFormatter("%g"))
            axis.set_major_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel("training loss")
        ax.set_ylabel("test loss")
        ax.set_title(f"test loss against training loss, {name}", fontsize=TITLE_SIZE)
        ax.legend(title="width", fontsize=7, title_fontsize=7)
    fig.suptitle(title + "\n(appendix D.4: common training-loss grid, linear interpolation, "
                 "moving average of 5)", fontsize=SUPTITLE_SIZE - 1)
    fig.tight_layout()
    save_figure(fig, path, dpi=DPI)


def plot_features(runs_by_width, path, title=""):
    finite = {w: r for w, r in runs_by_width.items() if w != "inf"}
    if not finite:
        return False
    plt = pyplot()
    col = _colours(list(runs_by_width))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    _curves(axes[0], finite, "feature_movement", col, log=False)
    axes[0].set_ylabel("|G_t - G_0|_F / |G_0|_F")
    axes[0].set_title("feature movement", fontsize=TITLE_SIZE)
    _curves(axes[1], finite, "kernel_alignment", col, log=False)
    axes[1].set_ylabel("centred alignment of G G^T with Y Y^T")
    axes[1].set_title("kernel alignment", fontsize=TITLE_SIZE)
    axes[1].legend(title="width", fontsize=7, title_fontsize=7)
    fig.suptitle(title + "\n(on the training-loss evaluation rows; no bottleneck for width inf)",
                 fontsize=SUPTITLE_SIZE - 1)
    fig.tight_layout()
    save_figure(fig, path, dpi=DPI)
    return True


def plot_sweep(sweep_dir, figdir=None, heatmap_steps=4000):
    """Write the figures of a sweep; returns the list of files written."""
    with PLOT_LOCK:
        return _plot_sweep(sweep_dir, figdir, heatmap_steps)


def _plot_sweep(sweep_dir, figdir, heatmap_steps):
    runs = load_sweep(sweep_dir)
    figdir = Path(figdir) if figdir else Path(sweep_dir)
    figdir.mkdir(parents=True, exist_ok=True)
    title = _title(sweep_dir, runs)
    written = []
    plot_loss(runs, figdir / "loss.png", title)
    written.append(figdir / "loss.png")
    if any(np.any(np.isfinite(r["train_acc"])) for rs in runs.values() for r in rs):
        plot_accuracy(runs, figdir / "accuracy.png", title)
        written.append(figdir / "accuracy.png")
    plot_heatmap(runs, figdir / "heatmap.png", heatmap_steps, _title(sweep_dir, runs, band=False))
    written.append(figdir / "heatmap.png")
    if "inf" in runs and len(runs) > 1:
        plot_heatmap_relative(runs, figdir / "heatmap_relative.png", heatmap_steps,
                              _title(sweep_dir, runs, band=False))
        written.append(figdir / "heatmap_relative.png")
    plot_train_vs_test(runs, figdir / "train_vs_test.png", title)
    written.append(figdir / "train_vs_test.png")
    if plot_features(runs, figdir / "features.png", title):
        written.append(figdir / "features.png")
    if (Path(sweep_dir) / SWEEP_FILE).exists():
        atomic_write_text(figdir / "tables.md", summary_tables(sweep_dir) + "\n")
        written.append(figdir / "tables.md")
    return written


# ----------------------------------------------------------------------------
# tables (markdown) for reports
# ----------------------------------------------------------------------------

def _fmt_steps(values):
    """'mean (min-max)' over the seeds that reached a threshold, with 'k/n' when some did not."""
    hit = [v for v in values if v is not None]
    if not hit:
        return f"not reached (0/{len(values)})"
    text = f"{np.mean(hit):.0f} ({min(hit)}-{max(hit)})" if len(hit) > 1 else f"{hit[0]}"
    return text + (f" [{len(hit)}/{len(values)}]" if len(hit) < len(values) else "")


def threshold_rows(sweep_dir):
    """Steps to reach each training-loss threshold, per width, from the runs' summary.json.

    Returns (fractions, loss_null, {width: [[step per seed] per fraction]}); runs without a
    summary (unfinished, failed) are left out.
    """
    sweep_dir = Path(sweep_dir)
    record = json.loads((sweep_dir / SWEEP_FILE).read_text())
    table, fractions, loss_null = {}, None, None
    for r in record["runs"]:
        path = sweep_dir / r["dir"] / "summary.json"
        if not path.exists():
            continue
        st = json.loads(path.read_text()).get("steps_to_threshold")
        if not st:
            continue
        fractions = [t["fraction"] for t in st["thresholds"]]
        loss_null = st["loss_null"]
        cols = table.setdefault(r["width"], [[] for _ in fractions])
        for k, t in enumerate(st["thresholds"]):
            cols[k].append(t["step"])
    return fractions, loss_null, dict(sorted(table.items(), key=lambda kv: width_key(kv[0])))


def accuracy_rows(sweep_dir):
    """Steps to reach each training accuracy, per width, from the runs' summary.json.

    Returns (levels, {width: [[step per seed] per level]}); ({} when no run has accuracies).
    """
    sweep_dir = Path(sweep_dir)
    record = json.loads((sweep_dir / SWEEP_FILE).read_text())
    table, levels = {}, None
    for r in record["runs"]:
        path = sweep_dir / r["dir"] / "summary.json"
        if not path.exists():
            continue
        st = json.loads(path.read_text()).get("steps_to_accuracy")
        if not st:
            continue
        levels = [t["accuracy"] for t in st["levels"]]
        cols = table.setdefault(r["width"], [[] for _ in levels])
        for k, t in enumerate(st["levels"]):
            cols[k].append(t["step"])
    return levels, dict(sorted(table.items(), key=lambda kv: width_key(kv[0])))


def _loss_at_steps(runs, fractions=(0.05, 0.125, 0.25, 0.5, 1.0)):
    """Table lines: training loss per width at evaluation steps spread over the run (mean (min-max))."""
    all_steps = np.unique(np.concatenate([r["step"] for rs in runs.values() for r in rs]))
    last = all_steps.max()
    chosen = sorted({int(all_steps[np.argmin(np.abs(all_steps - f * last))]) for f in fractions} - {0})
    if not chosen:
        return []
    lines = ["Training loss at selected steps, mean (min-max) over seeds:", "",
             "| width | " + " | ".join(f"step {c}" for c in chosen) + " |", "|---|" + "---|" * len(chosen)]
    for width, rs in runs.items():
        cells = []
        for c in chosen:
            v = np.array([r["train_loss"][r["step"] == c][0] for r in rs if np.any(r["step"] == c)])
            cells.append(f"{v.mean():.4g} ({v.min():.3g}-{v.max():.3g})" if v.size > 1
                         else (f"{v[0]:.4g}" if v.size else ""))
        lines.append(f"| {width} | " + " | ".join(cells) + " |")
    return lines + [""]


def relative_to_inf(runs, steps, key="train_loss"):
    """Each finite width's loss against ``inf``'s at the given steps (for verdicts on acceleration).

    Returns {width: [(ratio of means, lo, hi, relation) per step]} with ``lo``/``hi`` the width's
    min/max over seeds, and ``relation`` "below" when every seed of the width is below every seed of
    ``inf`` (seed ranges disjoint), "above" in the opposite case, "overlap" otherwise; None where a
    width or ``inf`` has no value at that step.  {} without ``inf``.
    """
    if "inf" not in runs:
        return {}

    def at(rs, step):
        return np.array([r[key][r["step"] == step][0] for r in rs if np.any(r["step"] == step)])

    out = {}
    for width, rs in runs.items():
        if width == "inf":
            continue
        cells = []
        for step in steps:
            v, ref = at(rs, step), at(runs["inf"], step)
            if not v.size or not ref.size:
                cells.append(None)
                continue
            rel = "below" if v.max() < ref.min() else ("above" if v.min() > ref.max() else "overlap")
            cells.append((float(v.mean() / ref.mean()), float(v.min()), float(v.max()), rel))
        out[width] = cells
    return out


def acceleration_verdict(runs, steps, key="train_loss"):
    """The verdict on "narrower bottlenecks train faster; ``inf`` is slowest" at the given steps.

    The rule (fixed before the runs of docs/REPRODUCTION.md, Parts 4 and 5), from
    :func:`relative_to_inf` over the seeds:

    * ``"confirmed"``: at every step every finite width is *below* ``inf`` (all its seeds under
      all of ``inf``'s) and the mean loss rises strictly with the width among the finite widths;
    * ``"not confirmed"``: at no step is any finite width below ``inf``;
    * ``"mixed"``: anything else.

    Returns ``(verdict, below)`` with ``below`` = {step: [finite widths below inf there]}, or
    ``(None, {})`` without ``inf``, without a finite width, or where a width lacks a value at a step.
    """
    rel = relative_to_inf(runs, steps, key)
    widths = sorted((w for w in rel), key=width_key)
    if not widths or any(c is None for w in widths for c in rel[w]):
        return None, {}
    below = {int(step): [w for w in widths if rel[w][i][3] == "below"] for i, step in enumerate(steps)}
    ordered = all(all(rel[a][i][0] < rel[b][i][0] for a, b in zip(widths, widths[1:]))
                  for i in range(len(steps)))
    if all(len(v) == len(widths) for v in below.values()) and ordered:
        return "confirmed", below
    if not any(below.values()):
        return "not confirmed", below
    return "mixed", below


#: The "inconclusive" criterion (fixed before the runs of REPRODUCTION Part 6): a sweep in
#: which, at the horizon, every width's mean training loss (inf's included) is above this fraction of L_null
#: learned nothing that could order the widths; it gets no verdict and is left out of every count.
INCONCLUSIVE_LEVEL = 0.9


def inconclusive_sweep(runs, loss_null, key="train_loss", level=INCONCLUSIVE_LEVEL):
    """True when no width learned: at the sweep's last evaluated step every width's mean loss over its seeds
    that reached it is above ``level * loss_null`` (module constant :data:`INCONCLUSIVE_LEVEL`); a width none of
    whose seeds reached it (diverged) did not learn.

    Parameters
    ----------
    runs : {width: [metrics dict per seed]} (:func:`load_sweep`);  loss_null : float, the zero predictor's loss
    """
    if loss_null is None or not runs:
        return False
    horizon = max(r["step"].max() for rs in runs.values() for r in rs)    # a stopped (diverged) width: not learned
    for rs in runs.values():
        v = np.array([r[key][r["step"] == horizon][0] for r in rs if np.any(r["step"] == horizon)])
        if v.size and v.mean() <= level * loss_null:
            return False
    return True


def seed_ranges(runs, key="train_loss"):
    """{width: {step: (mean, lo, hi)}} over the seeds at every evaluated step after step 0.

    A seed without a value at a step that other seeds of the width reached (a diverged or stopped run) makes
    ``hi`` infinite there: that width is not below anything at that step.
    """
    out = {}
    for width, rs in runs.items():
        steps = np.unique(np.concatenate([r["step"] for r in rs]))
        cells = {}
        for st in steps[steps > 0]:
            v = np.array([r[key][r["step"] == st][0] for r in rs if np.any(r["step"] == st)])
            hi = float(v.max()) if v.size == len(rs) and np.all(np.isfinite(v)) else np.inf
            cells[int(st)] = (float(np.mean(v)), float(v.min()), hi)
        out[width] = cells
    return out


def _ordering(ranges, step):
    widths = [w for w in ranges if step in ranges[w]]
    return " < ".join(str(w) for w in sorted(widths, key=lambda w: ranges[w][step][0]))


def first_step_all_below(ranges, reference="inf"):
    """The descriptive statistic of the acceleration study (fixed before the runs of REPRODUCTION Part 6), beside the rule of
    :func:`acceleration_verdict`: the first evaluated step from which, at every later evaluated step too, every
    seed of every finite width is below every seed of ``inf`` (the largest loss over the finite widths' seeds
    under the smallest of ``inf``'s), or None ("never").

    Parameters
    ----------
    ranges : {width: {step: (mean, lo, hi)}} (:func:`seed_ranges`, or a committed table's min-max over seeds)

    Returns
    -------
    dict with ``step`` (int or None), ``steps`` (the steps compared: ``inf``'s), ``ordering_at_step``
    and ``ordering_at_horizon`` (the widths by mean loss, "a < b < ..."), or None without ``inf`` or a finite
    width.
    """
    if reference not in ranges or len(ranges) < 2:
        return None
    steps = sorted(ranges[reference])          # a width without a value at one of them (diverged) is not below
    if not steps:
        return None
    finite = [w for w in ranges if w != reference]
    ok = [max(ranges[w].get(st, (0, 0, np.inf))[2] for w in finite) < ranges[reference][st][1] for st in steps]
    first = None
    for i in range(len(steps) - 1, -1, -1):
        if not ok[i]:
            break
        first = steps[i]
    return {"step": first, "steps": steps,
            "ordering_at_step": _ordering(ranges, first) if first is not None else None,
            "ordering_at_horizon": _ordering(ranges, steps[-1])}


def stopped_runs(runs):
    """{width: [last evaluated step per stopped seed]} for the seeds that end before the sweep's last step
    (a diverged run keeps its metrics up to its last good evaluation; an unfinished one up to where it is)."""
    horizon = max(r["step"].max() for rs in runs.values() for r in rs)
    out = {}
    for w, rs in runs.items():
        short = [int(r["step"].max()) for r in rs if r["step"].max() < horizon]
        if short:
            out[w] = short
    return out


def describe_first_step(stat):
    """One line for :func:`first_step_all_below`'s result."""
    if stat is None:
        return "n/a"
    if stat["step"] is None:
        return f"never (at step {stat['steps'][-1]}: {stat['ordering_at_horizon']})"
    return (f"from step {stat['step']} of {stat['steps'][-1]} (order there: {stat['ordering_at_step']}; "
            f"at step {stat['steps'][-1]}: {stat['ordering_at_horizon']})")


def paired_ratios(runs, steps, key="train_loss", reference="inf"):
    """Per-seed ratios of each finite width's loss to ``inf``'s on the same seed (same batches and evaluation
    rows), at the given steps.

    Returns {width: [(median, min, max, below, n) per step]}: the median, min and max over the seeds that
    both have a value there, ``below`` of them with ratio < 1; None where no seed pairs.  {} without ``inf``.
    """
    if reference not in runs:
        return {}

    def by_seed(rs, step):
        return {r.get("seed", i): float(r[key][r["step"] == step][0])       # runs without "seed": by position
                for i, r in enumerate(rs) if np.any(r["step"] == step)}

    out = {}
    for width, rs in runs.items():
        if width == reference:
            continue
        cells = []
        for step in steps:
            mine, ref = by_seed(rs, step), by_seed(runs[reference], step)
            q = np.array([mine[sd] / ref[sd] for sd in mine if sd in ref])
            cells.append(None if not q.size else
                         (float(np.median(q)), float(q.min()), float(q.max()), int(np.sum(q < 1)), int(q.size)))
        out[width] = cells
    return out


def parse_table_ranges(text):
    """{width: {step: (mean, lo, hi)}} from a sweep's tables.md (:func:`summary_tables`): the "Training loss at
    selected steps" table and the "relative to inf" table (its width min-max; inf's "1 (lo-hi)" row gives
    no mean, so inf's mean there is the middle of its range, used for ordering only).  For sweeps whose
    per-step curves are not kept."""
    import re
    out = {}
    cell = re.compile(r"^\s*([0-9.eE+-]+) \(([0-9.eE+-]+)-([0-9.eE+-]+)(?:, (below|above|overlap))?\)\s*$")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        rel = line.startswith("Training loss relative to inf")
        if not (line.startswith("Training loss at selected steps") or rel):
            continue
        header = next(l for l in lines[i + 1:] if l.startswith("| width"))
        steps = [int(h.split()[1]) for h in header.strip("| \n").split("|")[1:]]
        j = lines.index(header, i) + 2
        while j < len(lines) and lines[j].startswith("|"):
            parts = [p.strip() for p in lines[j].strip().strip("|").split("|")]
            width = parts[0] if parts[0] == "inf" else int(parts[0])
            for st, c in zip(steps, parts[1:]):
                m = cell.match(c)
                if not m:
                    continue
                lo, hi = float(m.group(2)), float(m.group(3))
                if rel and width == "inf":
                    mean = 0.5 * (lo + hi)
                elif rel:
                    mean = None                   # a ratio, not a loss: keep a mean from the other table
                else:
                    mean = float(m.group(1))
                have = out.setdefault(width, {}).get(st)
                out[width][st] = (mean if mean is not None else (have[0] if have else 0.5 * (lo + hi)), lo, hi)
            j += 1
    return out


def _below_where(below):
    """``{step: [widths below inf]}`` as "step 150: 10, 50; step 500: none"."""
    return "; ".join(f"step {st}: {', '.join(str(w) for w in ws) or 'none'}" for st, ws in below.items())


def _relative_lines(runs, fractions=(1 / 6, 0.5, 1.0), loss_null=None):
    if "inf" not in runs:
        return []
    all_steps = np.unique(np.concatenate([r["step"] for rs in runs.values() for r in rs]))
    chosen = sorted({int(all_steps[np.argmin(np.abs(all_steps - f * all_steps.max()))]) for f in fractions} - {0})
    table = relative_to_inf(runs, chosen)
    lines = ["Training loss relative to inf: ratio of the means over seeds, the width's min-max over seeds, and "
             "whether every seed is below / above every seed of inf (disjoint ranges) or they overlap:", "",
             "| width | " + " | ".join(f"step {c}" for c in chosen) + " |", "|---|" + "---|" * len(chosen)]
    for width, cells in table.items():
        lines.append(f"| {width} | " + " | ".join("" if c is None else f"{c[0]:.3g} ({c[1]:.3g}-{c[2]:.3g}, {c[3]})"
                                                  for c in cells) + " |")
    ref = seed_stats(runs["inf"], "train_loss")
    cells = []
    for c in chosen:
        i = np.nonzero(ref[0] == c)[0]
        cells.append(f"1 ({ref[2][i[0]]:.3g}-{ref[3][i[0]]:.3g})" if i.size else "")
    lines.append("| inf | " + " | ".join(cells) + " |")
    verdict, below = acceleration_verdict(runs, chosen)
    if verdict is not None:
        where = _below_where(below)
        lines += ["", f"Verdict on \"narrower trains faster, inf slowest\" (training loss at these steps; "
                  f"confirmed / not confirmed / mixed, rule of `experiments.plots.acceleration_verdict`): "
                  f"**{verdict}**. Widths below inf: {where}."]
    if inconclusive_sweep(runs, loss_null):
        lines += ["", f"**Inconclusive** (`experiments.plots.inconclusive_sweep`): at the horizon every width's mean "
                  f"training loss is above {INCONCLUSIVE_LEVEL:g} L_null; nothing was learned that could order the "
                  "widths, and the sweep is left out of every count."]
    ranges = seed_ranges(runs)
    lines += ["", "First evaluated step from which every seed of every finite width stays below every seed of inf "
              "(`experiments.plots.first_step_all_below`): " + describe_first_step(first_step_all_below(ranges)) + "."]
    stopped = stopped_runs(runs)
    if stopped:
        lines += ["", "Stopped before the horizon (diverged or unfinished): " + "; ".join(
            f"width {w}: {len(v)}/{len(runs[w])} seeds (last evaluated steps {', '.join(str(x) for x in v)})"
            for w, v in stopped.items()) + "."]
        whole = {w: c for w, c in ranges.items() if w not in stopped}
        if len(whole) > 1 and "inf" in whole:
            lines += ["", "The same statistic over the widths whose every seed reached the horizon: "
                      + describe_first_step(first_step_all_below(whole)) + "."]
            kept = {w: rs for w, rs in runs.items() if w not in stopped}
            verdict, below = acceleration_verdict(kept, chosen) if len(kept) > 1 else (None, {})
            if verdict is not None:
                where = _below_where(below)
                lines += ["", "The rule over the same widths (the rule itself gives no verdict when a width stopped "
                          f"early): **{verdict}**. Widths below inf: {where}."]
    paired = paired_ratios(runs, chosen)
    if paired:
        lines += ["", "Paired ratios: each seed's loss over inf's loss on the same seed (same batches and "
                  "evaluation rows); median (min-max) over the seeds, and how many of them are below 1:", "",
                  "| width | " + " | ".join(f"step {c}" for c in chosen) + " |", "|---|" + "---|" * len(chosen)]
        for width, cells in paired.items():
            lines.append(f"| {width} | " + " | ".join("" if c is None else f"{c[0]:.3g} ({c[1]:.3g}-{c[2]:.3g}; "
                                                      f"{c[3]}/{c[4]} below)" for c in cells) + " |")
    return lines + [""]


def summary_tables(sweep_dir, matched=None):
    """Markdown tables of a sweep: steps to training-loss thresholds, final metrics, and the
    test loss at matched training losses (from the appendix D.4 curves, all widths)."""
    runs = load_sweep(sweep_dir)
    lines = []
    fractions, loss_null, table = threshold_rows(sweep_dir)
    if table:
        lines += [f"Steps to reach training loss <= fraction x L_null (L_null = {loss_null:.4g}); "
                  "mean (min-max) over seeds, [k/n] = seeds that reached it:", "",
                  "| width | " + " | ".join(f"{f:g} ({f * loss_null:.3g})" for f in fractions) + " |",
                  "|---|" + "---|" * len(fractions)]
        for width, cols in table.items():
            lines.append(f"| {width} | " + " | ".join(_fmt_steps(c) for c in cols) + " |")
        lines.append("")
    levels, acc_table = accuracy_rows(sweep_dir)
    if acc_table:
        lines += ["Steps to reach training accuracy >= level; mean (min-max) over seeds, [k/n] = seeds that "
                  "reached it:", "", "| width | " + " | ".join(f"{a:g}" for a in levels) + " |",
                  "|---|" + "---|" * len(levels)]
        for width, cols in acc_table.items():
            lines.append(f"| {width} | " + " | ".join(_fmt_steps(c) for c in cols) + " |")
        lines.append("")
    lines += _loss_at_steps(runs)
    lines += _relative_lines(runs, loss_null=loss_null)
    keys = [k for k in ("train_loss", "test_loss", "train_acc", "test_acc", "feature_movement",
                        "kernel_alignment") if any(np.any(np.isfinite(r[k])) for rs in runs.values() for r in rs)]
    lines += ["Final values, mean +- standard deviation over seeds:", "",
              "| width | step | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for width, rs in runs.items():
        cells = []
        for k in keys:
            v = np.array([r[k][-1] for r in rs])
            v = v[np.isfinite(v)]
            cells.append(f"{v.mean():.4g} +- {v.std():.2g}" if v.size else "")
        lines.append(f"| {width} | {int(max(r['step'][-1] for r in rs))} | " + " | ".join(cells) + " |")
    lines.append("")
    curves = train_vs_test(runs)
    if matched is None:       # three training losses inside every width's curve, if there are any
        lo = max(c[0].min() for c in curves.values() if c[0].size) if all(c[0].size for c in curves.values()) else None
        hi = min(c[0].max() for c in curves.values() if c[0].size) if lo is not None else None
        matched = list(np.geomspace(lo, hi, 3)) if lo is not None and lo < hi else []
    if matched:
        lines += ["Test loss at matched training loss (appendix D.4 curves, mean over seeds; "
                  "min-max over seeds in brackets):", "",
                  "| width | " + " | ".join(f"train {m:.3g}" for m in matched) + " |", "|---|" + "---|" * len(matched)]
        for width, (x, mean, lo_, hi_) in curves.items():
            cells = []
            for m in matched:
                if x.size and x.min() <= m <= x.max():
                    cells.append(f"{np.interp(m, x, mean):.4g} ({np.interp(m, x, lo_):.3g}-{np.interp(m, x, hi_):.3g})")
                else:
                    cells.append("n/a")
            lines.append(f"| {width} | " + " | ".join(cells) + " |")
        lines.append("")
    else:
        lines += ["Test loss at matched training loss: the widths' training-loss ranges do not overlap.", ""]
    return "\n".join(lines)
