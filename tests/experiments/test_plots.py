"""experiments.plots: the appendix D.4 procedure on curves with known answers, and `cli.py plot`."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from experiments.plots import (common_range, heatmap_table, load_sweep, loss_grid, moving_average, resample,
                           seed_stats, smooth_on_grid, train_vs_test)

PNG = b"\x89PNG\r\n\x1a\n"


def _run(train, test, steps=None, acc=False):
    train = np.asarray(train, dtype=float)
    steps = np.arange(train.size) * 10 if steps is None else np.asarray(steps)
    nan = np.full(train.size, np.nan)
    return {"step": steps, "train_loss": train, "test_loss": np.asarray(test, dtype=float),
            "train_acc": nan, "test_acc": nan, "feature_movement": nan, "kernel_alignment": nan}


def test_moving_average_known_values():
    assert np.allclose(moving_average(np.arange(10.0)), np.arange(2.0, 8.0))     # linear: the centre values
    assert np.allclose(moving_average([1, 1, 1, 6, 1, 1, 1]), [2, 2, 2])
    assert moving_average([1.0, 2.0]).size == 0


def test_common_range_and_grid():
    lo, hi = common_range([[0.5, 0.2, np.nan], [0.9, 0.3]])
    assert (lo, hi) == (0.2, 0.9)
    g = loss_grid(0.01, 1.0, 3)
    assert np.allclose(g, [0.01, 0.1, 1.0])


def test_resample_linear_relation_any_order_and_nan_outside():
    rng = np.random.default_rng(0)
    train = rng.uniform(0.2, 0.8, 30)
    test = 2.0 * train + 1.0                     # exactly linear: interpolation is exact
    grid = np.linspace(0.0, 1.0, 101)
    out = resample(train, test, grid)
    inside = (grid >= train.min()) & (grid <= train.max())
    assert np.allclose(out[inside], 2.0 * grid[inside] + 1.0)
    assert np.all(np.isnan(out[~inside]))        # never extrapolated
    # piecewise linear between recorded points, also when training loss is non-monotone in time
    out = resample([1.0, 0.5, 0.7, 0.2], [3.0, 2.0, 1.0, 0.0], [0.2, 0.35, 0.6, 0.85, 1.0])
    assert np.allclose(out, [0.0, 1.0, 1.5, 2.0, 3.0])


def test_smooth_on_grid_positions():
    grid = np.arange(10.0)
    vals = np.r_[np.nan, np.arange(1.0, 8.0), np.nan, np.nan]      # finite on indices 1..7
    sx, sy = smooth_on_grid(grid, vals)
    assert np.allclose(sx[3:6], [3, 4, 5]) and np.allclose(sy[3:6], [3, 4, 5])
    assert np.all(np.isnan(sx[[0, 1, 2, 6, 7, 8, 9]]))


def test_train_vs_test_known_answer_with_seeds_and_disjoint_ranges():
    t = np.geomspace(1.0, 0.1, 40)
    runs = {
        5: [_run(t, 3 * t + b) for b in (0.0, 0.2)],                 # two seeds
        "inf": [_run(np.geomspace(1.0, 0.5, 40), np.geomspace(1.0, 0.5, 40) + 1.0)],   # only high losses
    }
    res = train_vs_test(runs, n_grid=60)
    x, mean, lo, hi = res[5]
    grid = loss_grid(0.1, 1.0, 60)                                    # the range spans all widths
    # moving averages of a linear function of the grid: exactly that function of the smoothed grid
    assert np.allclose(mean, 3 * x + 0.1) and np.allclose(lo, 3 * x) and np.allclose(hi, 3 * x + 0.2)
    assert np.allclose(x, moving_average(grid))
    xi, mi, _, _ = res["inf"]
    assert xi.min() >= 0.5 and np.allclose(mi, xi + 1.0)         # a shorter curve, no extrapolation
    assert xi.size < x.size


def test_seed_stats_unequal_lengths_and_heatmap_table():
    a = _run([4.0, 2.0, 1.0], [0, 0, 0], steps=[0, 10, 20])
    b = _run([2.0, 1.0], [0, 0], steps=[0, 10])                     # a shorter (failed) seed
    steps, mean, lo, hi = seed_stats([a, b], "train_loss")
    assert list(steps) == [0, 10, 20]
    assert np.allclose(mean, [3.0, 1.5, 1.0]) and np.allclose(lo, [2, 1, 1]) and np.allclose(hi, [4, 2, 1])
    widths, edges, table = heatmap_table({2: [a, b], "inf": [a]}, "train_loss", max_steps=10)
    assert widths == [2, "inf"]
    assert np.allclose(edges, [-5, 5, 15])
    assert np.allclose(table, [[3.0, 1.5], [4.0, 2.0]])


def _write_run(path, width, seed, classification):
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    cols = ["step", "train_loss", "test_loss", "wall_s", "train_acc", "test_acc",
            "feature_movement", "kernel_alignment"]
    with open(path / "metrics.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for k, step in enumerate(range(0, 200, 20)):
            loss = (0.5 + 0.1 * rng.random()) * np.exp(-step / (50.0 if width == "inf" else 30.0))
            acc = [min(1.0, 0.5 + step / 400), min(1.0, 0.45 + step / 500)] if classification else ["", ""]
            feat = ["", ""] if width == "inf" else [0.01 * k, 0.2 + 0.05 * k]
            w.writerow([step, loss, 1.2 * loss + 0.05, 0.1 * k, *acc, *feat])


@pytest.mark.parametrize("classification", [False, True])
def test_plot_command_writes_small_pngs(tmp_path, classification):
    sweep = tmp_path / "sweep"
    runs = []
    for width in (4, 16, "inf"):
        for seed in (0, 1):
            d = f"width-{width}/seed-{seed}"
            _write_run(sweep / d, width, seed, classification)
            runs.append({"width": width, "seed": seed, "dir": d, "status": "done"})
    (sweep / "sweep.json").write_text(json.dumps({"widths": [4, 16, "inf"], "seeds": [0, 1], "runs": runs}))
    res = CliRunner().invoke(cli.cli, ["plot", str(sweep), "--out", str(tmp_path / "fig")])
    assert res.exit_code == 0, res.output
    names = {"loss.png", "heatmap.png", "heatmap_relative.png", "train_vs_test.png", "features.png", "tables.md"}
    if classification:
        names.add("accuracy.png")
    assert {p.name for p in (tmp_path / "fig").iterdir()} == names
    for p in (tmp_path / "fig").glob("*.png"):
        data = p.read_bytes()
        assert data[:8] == PNG and len(data) < 200_000, p.name
    assert "| 16 | 180 |" in (tmp_path / "fig" / "tables.md").read_text()     # final values per width
    # without sweep.json the runs are found by their directory names
    (sweep / "sweep.json").unlink()
    assert list(load_sweep(sweep)) == [4, 16, "inf"]             # finite widths ascending, then inf
    assert [len(v) for v in load_sweep(sweep).values()] == [2, 2, 2]


def test_plot_command_errors_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli.cli, ["plot", str(tmp_path / "empty")])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert [ln for ln in res.output.splitlines() if ln.startswith("Error")][0].count("metrics.csv") == 1


def test_tables_aggregate_thresholds_over_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    runs = []
    steps = {(4, 0): [20, 60, None], (4, 1): [40, 80, None], ("inf", 0): [40, None, None]}
    for (width, seed), hits in steps.items():
        d = f"width-{width}/seed-{seed}"
        _write_run(sweep / d, width, seed, False)
        th = [{"fraction": f, "loss": f * 0.5, "step": h} for f, h in zip((0.5, 0.2, 0.1), hits)]
        (sweep / d / "summary.json").write_text(json.dumps(
            {"steps": 180, "steps_to_threshold": {"loss_null": 0.5, "thresholds": th}}))
        runs.append({"width": width, "seed": seed, "dir": d, "status": "done"})
    (sweep / "sweep.json").write_text(json.dumps({"runs": runs}))
    res = CliRunner().invoke(cli.cli, ["plot", str(sweep)])
    assert res.exit_code == 0, res.output
    text = (sweep / "tables.md").read_text()
    assert "| 4 | 30 (20-40) | 70 (60-80) | not reached (0/2) |" in text
    assert "| inf | 40 | not reached (0/1) | not reached (0/1) |" in text


def test_tables_training_loss_at_selected_steps(tmp_path):
    sweep = tmp_path / "sweep"
    runs = []
    for seed in (0, 1):
        d = f"width-4/seed-{seed}"
        _write_run(sweep / d, 4, seed, False)
        runs.append({"width": 4, "seed": seed, "dir": d, "status": "done"})
    (sweep / "sweep.json").write_text(json.dumps({"runs": runs}))
    from experiments.plots import summary_tables
    text = summary_tables(sweep)
    losses = [load_sweep(sweep)[4][s]["train_loss"][1] for s in (0, 1)]          # step 20 of each seed
    header = [ln for ln in text.splitlines() if ln.startswith("| width | step 20")][0]
    assert header == "| width | step 20 | step 40 | step 80 | step 180 |"
    row = text.splitlines()[text.splitlines().index(header) + 2]
    assert row.startswith(f"| 4 | {np.mean(losses):.4g} ({min(losses):.3g}-{max(losses):.3g}) |")


# ---------------------------------------------------------------- relative heatmap, colour range

def test_relative_table_known_curves(tmp_path):
    from experiments.plots import colour_range, plot_heatmap_relative, relative_table
    steps = np.arange(0, 101, 10)
    ref = np.exp(-steps / 50.0) + 0.1
    runs = {5: [_run(0.5 * ref, ref, steps)],                                   # half of inf's loss throughout
            10: [_run(2.0 * ref, ref, steps), _run(4.0 * ref, ref, steps)],     # mean over seeds: 3x inf
            "inf": [_run(ref, 2 * ref, steps)]}
    widths, edges, ratio = relative_table(runs, "train_loss", 80)
    assert widths == [5, 10, "inf"]
    assert ratio.shape == (3, 9) and edges.size == 10                          # steps 0..80
    assert np.allclose(ratio[0], 0.5) and np.allclose(ratio[1], 3.0) and np.allclose(ratio[2], 1.0)
    _, _, test_ratio = relative_table(runs, "test_loss", 100)
    assert np.allclose(test_ratio[:2], 0.5)
    plot_heatmap_relative(runs, tmp_path / "rel.png")
    assert (tmp_path / "rel.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="reference"):
        relative_table({5: runs[5]}, "train_loss", 80)
    # the absolute heatmap's colour range leaves out step 0 (a large random initial loss)
    table = np.array([[50.0, 0.2, 0.1], [40.0, 0.3, 0.05]])
    assert colour_range(table) == (0.05, 0.3)
    assert colour_range(table[:, :1]) == (40.0, 50.0)


def test_relative_table_missing_steps_are_nan():
    from experiments.plots import relative_table
    runs = {3: [_run([1.0, 0.5, 0.25], [1, 1, 1], [0, 10, 20])],
            "inf": [_run([2.0, 1.0], [1, 1], [0, 10])]}
    _, _, ratio = relative_table(runs, "train_loss", 100)
    assert np.allclose(ratio[0, :2], 0.5) and np.isnan(ratio[0, 2]) and np.isnan(ratio[1, 2])


def test_relative_to_inf_relations():
    from experiments.plots import relative_to_inf
    steps = np.array([0, 10, 20])
    runs = {4: [_run([1.0, 0.2, 0.1], [1, 1, 1], steps), _run([1.0, 0.3, 0.3], [1, 1, 1], steps)],
            "inf": [_run([1.0, 0.4, 0.2], [1, 1, 1], steps), _run([1.0, 0.5, 0.25], [1, 1, 1], steps)]}
    cells = relative_to_inf(runs, [10, 20, 30])[4]
    assert cells[0][0] == pytest.approx(0.25 / 0.45) and cells[0][1:] == (0.2, 0.3, "below")
    assert cells[1][3] == "overlap" and cells[2] is None
    runs[4][1]["train_loss"][1] = 0.6
    assert relative_to_inf(runs, [10])[4][0][3] == "overlap"
    runs[4][0]["train_loss"][1] = 0.55
    assert relative_to_inf(runs, [10])[4][0][3] == "above"
    assert relative_to_inf({4: runs[4]}, [10]) == {}


def _verdict_runs(finite, inf, steps=(0, 10, 20)):
    """Runs per width from loss curves per seed: {width: [[loss at each step] per seed]}."""
    out = {w: [_run(c, [1] * len(c), np.array(steps)) for c in curves] for w, curves in finite.items()}
    out["inf"] = [_run(c, [1] * len(c), np.array(steps)) for c in inf]
    return out


def test_acceleration_verdict_on_known_curves():
    from experiments.plots import acceleration_verdict
    inf = [[1.0, 0.5, 0.4], [1.0, 0.55, 0.45]]
    # both widths below inf at both steps, narrower lower: confirmed
    runs = _verdict_runs({2: [[1.0, 0.1, 0.05], [1.0, 0.12, 0.06]], 8: [[1.0, 0.2, 0.1], [1.0, 0.25, 0.12]]}, inf)
    verdict, below = acceleration_verdict(runs, [10, 20])
    assert verdict == "confirmed" and below == {10: [2, 8], 20: [2, 8]}
    # same, but the wider width is lower than the narrower one: not in order -> mixed
    runs = _verdict_runs({2: [[1.0, 0.2, 0.1], [1.0, 0.25, 0.12]], 8: [[1.0, 0.1, 0.05], [1.0, 0.12, 0.06]]}, inf)
    assert acceleration_verdict(runs, [10, 20])[0] == "mixed"
    # one width below at one step only -> mixed
    runs = _verdict_runs({2: [[1.0, 0.6, 0.3], [1.0, 0.6, 0.35]], 8: [[1.0, 0.6, 0.5], [1.0, 0.7, 0.6]]}, inf)
    verdict, below = acceleration_verdict(runs, [10, 20])
    assert verdict == "mixed" and below == {10: [], 20: [2]}
    # overlapping or above everywhere -> not confirmed
    runs = _verdict_runs({2: [[1.0, 0.5, 0.41], [1.0, 0.6, 0.5]], 8: [[1.0, 0.9, 0.8], [1.0, 0.9, 0.8]]}, inf)
    assert acceleration_verdict(runs, [10, 20]) == ("not confirmed", {10: [], 20: []})
    # no inf, or a step without values: no verdict
    assert acceleration_verdict({2: runs[2]}, [10]) == (None, {})
    assert acceleration_verdict(runs, [10, 30]) == (None, {})


def test_summary_tables_state_the_verdict(tmp_path):
    from experiments.plots import _relative_lines
    inf = [[1.0, 0.5, 0.4], [1.0, 0.55, 0.45]]
    runs = _verdict_runs({2: [[1.0, 0.1, 0.05], [1.0, 0.12, 0.06]]}, inf, steps=(0, 30, 60))
    text = "\n".join(_relative_lines(runs))
    assert "**confirmed**" in text and "step 60: 2" in text
