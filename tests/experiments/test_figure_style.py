"""Figures a researcher can read: labelled colour-bar ticks over the whole range, the relative heatmap
clipped and labelled in ratios, titles and axis labels on every panel, lemma 3.1's criterion on its figure."""

import csv
import json

import numpy as np
import pytest

from experiments import plots, verify


def _write_run(path, width, scale):
    path.mkdir(parents=True)
    with open(path / "metrics.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "train_loss", "test_loss", "wall_s", "train_acc", "test_acc", "feature_movement",
                    "kernel_alignment"])
        for k, step in enumerate(range(0, 200, 20)):
            loss = 5.0 if step == 0 else scale * np.exp(-step / 60.0)       # a huge step 0, as from a random init
            feat = ["", ""] if width == "inf" else [0.01 * k, 0.2 + 0.05 * k]
            w.writerow([step, loss, 1.1 * loss, 0.1 * k, "", "", *feat])


@pytest.fixture
def figures(tmp_path, monkeypatch):
    """Every figure plot_sweep draws, by file name, kept open instead of only written."""
    sweep = tmp_path / "sweep"
    runs = []
    for width, scale in ((2, 0.05), (8, 0.3), ("inf", 0.2)):      # ratios to inf: 0.25 and 1.5
        _write_run(sweep / f"width-{width}", width, scale)
        runs.append({"width": width, "seed": 0, "dir": f"width-{width}", "status": "done"})
    (sweep / "sweep.json").write_text(json.dumps({"widths": [2, 8, "inf"], "seeds": [0], "runs": runs}))
    kept = {}
    real = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **kw: (kept.__setitem__(path.name, fig),
                                                                       real(fig, path, **kw)))
    plots.plot_sweep(sweep)
    return kept


def _colourbars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_log_ticks_cover_every_range():
    for vmin, vmax in [(0.17, 0.279), (0.0844, 0.25), (0.08, 0.11), (1e-4, 0.5), (0.01, 10.0), (0.3, 0.31),
                       (2.0, 3e4)]:
        ticks = plots.log_ticks(vmin, vmax)
        assert len(ticks) >= 3 and all(a < b for a, b in zip(ticks, ticks[1:])), (vmin, vmax, ticks)
        assert vmin <= ticks[0] <= vmin * 1.06 and vmax / 1.06 <= ticks[-1] <= vmax, (vmin, vmax, ticks)


def test_every_colour_bar_has_labelled_ticks_over_its_range(figures):
    for name in ("heatmap.png", "heatmap_relative.png"):
        for bar in _colourbars(figures[name]):
            ticks = [t for t in bar.get_yticks() if bar.get_ylim()[0] * 0.999 <= t <= bar.get_ylim()[1] * 1.001]
            labels = [t.get_text() for t in bar.get_yticklabels() if t.get_text()]
            assert len(ticks) >= 3 and len(labels) >= 3, (name, ticks, labels)
            lo, hi = bar.get_ylim()
            assert np.log(ticks[-1] / ticks[0]) >= 0.9 * np.log(hi / lo), (name, ticks, (lo, hi))


def test_relative_heatmap_is_clipped_and_labelled_in_ratios(figures):
    fig = figures["heatmap_relative.png"]
    for bar in _colourbars(fig):
        assert [t.get_text() for t in bar.get_yticklabels()] == ["0.25", "0.5", "1", "2", "4"]
    from matplotlib.collections import QuadMesh
    meshes = [c for ax in fig.axes if ax.get_label() != "<colorbar>" for c in ax.collections
              if isinstance(c, QuadMesh)]
    assert meshes and all(m.norm.vmin == 0.25 and m.norm.vmax == 4.0 and m.norm.clip for m in meshes)


def test_every_panel_has_axis_labels_and_a_readable_title(figures):
    for name, fig in figures.items():
        assert fig._suptitle is not None and fig._suptitle.get_fontsize() >= 10, name
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                assert ax.get_ylabel(), name
                continue
            assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), (name, ax.get_title())


def test_lemma41_panels_have_y_labels_and_lemma31_states_its_criterion(tmp_path, monkeypatch):
    kept = {}
    real = verify.save_figure
    monkeypatch.setattr(verify, "save_figure", lambda fig, path, **kw: (kept.__setitem__(path.name, fig),
                                                                        real(fig, path, **kw)))
    verify.lemma41(tmp_path, widths=(16, 32), depths=(2,), steps=3, points=4)
    verify.lemma31(tmp_path, widths=(10,), samples=50, pairs=3)
    for ax in kept["lemma4.1.png"].axes:
        assert ax.get_ylabel() and ax.get_xlabel(), ax.get_title()
    text = kept["lemma3.1.png"]._suptitle.get_text()
    assert "Criterion" in text and "<= 0.05" in text and "standard errors" in text
    for ax in kept["lemma3.1.png"].axes:
        assert any(line.get_ydata()[0] == 0.05 for line in ax.get_lines() if len(line.get_ydata()) == 2)


def test_theorem32_and_finite_network_panels_have_axis_labels(tmp_path, monkeypatch):
    from experiments import finite_sweep as FS
    kept = {}
    for module in (verify, FS):
        real = module.save_figure
        monkeypatch.setattr(module, "save_figure", lambda fig, path, _real=real, **kw: (
            kept.__setitem__(path.name, fig), _real(fig, path, **kw)))
    verify.theorem32(tmp_path / "v", widths=(50, 100), steps=2, samples=1, points=4)
    FS.finite_sweep(FS.SweepConfig(dataset="synthetic", train_size=30, test_size=10, widths=(1, 4), hidden=16,
                                   steps=4, eval_every=2), tmp_path / "f", log=lambda m: None)
    FS.finite_vs_infinite(FS.CompareConfig(train_size=30, test_size=10, hidden="20,40", steps=2, eval_every=1,
                                           limit_width=30), tmp_path / "c", log=lambda m: None)
    assert {"theorem3.2.png", "finite-losses.png", "finite-final.png", "finite-vs-infinite.png"} <= set(kept)
    for name, fig in kept.items():
        assert fig._suptitle is not None and fig._suptitle.get_fontsize() >= 10, name
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), (name, ax.get_title())
