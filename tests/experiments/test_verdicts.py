"""experiments.plots: the statistics of the acceleration study: the "inconclusive" label, the first
step from which every finite width stays below inf, paired per-seed ratios, and reading committed tables."""

import numpy as np
import pytest

from experiments.plots import (INCONCLUSIVE_LEVEL, acceleration_verdict, describe_first_step, first_step_all_below,
                               inconclusive_sweep, paired_ratios, parse_table_ranges, seed_ranges, summary_tables)


def _runs(curves, steps=(0, 10, 20, 30)):
    """{width: [[loss per step] per seed]} -> runs as load_sweep returns them (seed = position)."""
    nan = np.full(len(steps), np.nan)
    return {w: [{"step": np.array(steps), "train_loss": np.array(c, dtype=float), "test_loss": nan,
                 "train_acc": nan, "test_acc": nan, "feature_movement": nan, "kernel_alignment": nan, "seed": i}
                for i, c in enumerate(cs)] for w, cs in curves.items()}


INF = [[1.0, 0.6, 0.5, 0.4], [1.0, 0.65, 0.55, 0.45]]


def test_first_step_all_below_known_cases():
    # below from step 20 on (at step 10 width 8's seed 1 is above inf's seed 0)
    runs = _runs({2: [[1, 0.5, 0.3, 0.2], [1, 0.55, 0.35, 0.25]], 8: [[1, 0.55, 0.4, 0.3], [1, 0.61, 0.45, 0.35]],
                  "inf": INF})
    stat = first_step_all_below(seed_ranges(runs))
    assert stat["step"] == 20 and stat["steps"] == [10, 20, 30]
    assert stat["ordering_at_step"] == "2 < 8 < inf" and stat["ordering_at_horizon"] == "2 < 8 < inf"
    assert describe_first_step(stat).startswith("from step 20 of 30")
    # below at step 10 and 20 but not at the horizon: never (it must hold from the step on)
    runs[8][1]["train_loss"][3] = 0.41
    stat = first_step_all_below(seed_ranges(runs))
    assert stat["step"] is None and describe_first_step(stat).startswith("never")
    # one seed of a finite width stopped (diverged) after step 10: not below from then on
    runs = _runs({2: [[1, 0.5, 0.3, 0.2], [1, 0.5, 0.3, 0.2]], "inf": INF})
    runs[2][1] = {k: (v[:2] if isinstance(v, np.ndarray) else v) for k, v in runs[2][1].items()}
    assert first_step_all_below(seed_ranges(runs))["step"] is None
    assert first_step_all_below(seed_ranges({2: runs[2]})) is None
    # a whole width diverged at the start (only step 0 recorded): never, and the tables say which
    from experiments.plots import stopped_runs
    runs = _runs({2: [[1, 0.5, 0.3, 0.2]] * 2, 8: [[1, 0.5, 0.3, 0.2]] * 2, "inf": INF})
    for r in runs[8]:
        for k, v in list(r.items()):
            if isinstance(v, np.ndarray):
                r[k] = v[:1]
    assert first_step_all_below(seed_ranges(runs))["step"] is None
    assert stopped_runs(runs) == {8: [0, 0]}
    whole = {w: c for w, c in seed_ranges(runs).items() if w != 8}
    assert first_step_all_below(whole)["step"] == 10


def test_the_statistic_is_unchanged_by_the_old_verdict_and_beside_it():
    # the old rule says "mixed" (not ordered), the statistic still gives its step and the order
    runs = _runs({2: [[1, 0.55, 0.45, 0.35], [1, 0.55, 0.45, 0.36]], 8: [[1, 0.5, 0.4, 0.3], [1, 0.5, 0.4, 0.3]],
                  "inf": INF})
    assert acceleration_verdict(runs, [10, 20, 30])[0] == "mixed"
    stat = first_step_all_below(seed_ranges(runs))
    assert stat["step"] == 10 and stat["ordering_at_horizon"] == "8 < 2 < inf"


def test_inconclusive_when_no_width_learned():
    flat = _runs({2: [[0.5, 0.49, 0.48, 0.47]] * 2, "inf": [[0.5, 0.5, 0.5, 0.5]] * 2})
    assert inconclusive_sweep(flat, loss_null=0.5)
    flat[2][0]["train_loss"][3] = 2 * 0.44 - 0.47
    assert not inconclusive_sweep(flat, loss_null=0.5)
    assert not inconclusive_sweep(_runs({2: INF, "inf": INF}), loss_null=1.0)
    assert not inconclusive_sweep(flat, loss_null=None)
    # a width that diverged at the start does not make a sweep in which the others learned inconclusive
    learned = _runs({2: [[0.5, 0.3, 0.2, 0.1]] * 2, 8: [[0.5, 0.3, 0.2, 0.1]] * 2, "inf": INF})
    for r in learned[8]:
        for k, v in list(r.items()):
            if isinstance(v, np.ndarray):
                r[k] = v[:1]
    assert not inconclusive_sweep(learned, loss_null=0.5)


def test_paired_ratios_pair_the_same_seed():
    # width 2 is below inf on each seed, though its worst seed is above inf's best (unpaired: overlap)
    runs = _runs({2: [[1, 0.5, 0.5, 0.5], [1, 0.6, 0.6, 0.6]], "inf": [[1, 0.55, 0.55, 0.55], [1, 0.7, 0.7, 0.7]]})
    cells = paired_ratios(runs, [10, 30])[2]
    assert cells[0][3:] == (2, 2)
    assert cells[0][1] == pytest.approx(0.6 / 0.7) and cells[0][2] == pytest.approx(0.5 / 0.55)
    assert cells[0][0] == pytest.approx(np.median([0.5 / 0.55, 0.6 / 0.7]))
    assert first_step_all_below(seed_ranges(runs))["step"] is None          # the unpaired statistic does not see it
    assert paired_ratios({2: runs[2]}, [10]) == {}


def _write_sweep(sweep, runs):
    """A sweep folder (sweep.json, per-run metrics.csv and summary.json) holding ``runs``."""
    import json
    record = {"runs": []}
    for w, rs in runs.items():
        for r in rs:
            d = sweep / f"width-{w}" / f"seed-{r['seed']}"
            d.mkdir(parents=True)
            with open(d / "metrics.csv", "w") as fh:
                fh.write("step,train_loss,test_loss,wall_s,train_acc,test_acc,feature_movement,kernel_alignment\n")
                for st, v in zip(r["step"], r["train_loss"]):
                    fh.write(f"{st},{float(v)!r},{float(v)!r},0,,,,\n")
            (d / "summary.json").write_text(json.dumps({"steps_to_threshold": {"loss_null": 0.5, "thresholds": [
                {"fraction": 0.5, "step": None}]}}))
            record["runs"].append({"width": w, "seed": r["seed"], "dir": f"width-{w}/seed-{r['seed']}"})
    (sweep / "sweep.json").write_text(json.dumps(record))
    return sweep


def test_tables_give_the_rule_over_the_widths_that_reached_the_horizon(tmp_path):
    # width 2 diverged after step 10 in every seed: the rule gives no verdict over all widths; over 8, 16 and
    # inf it is "confirmed" (all below at every step, means 8 < 16 < inf), then "mixed" once 16 overtakes 8
    steps = (0, 10, 20, 30, 40, 50, 60)
    curves = {2: [[1, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1]] * 2, 8: [[1, 0.4, 0.3, 0.2, 0.15, 0.12, 0.1]] * 2,
              16: [[1, 0.45, 0.35, 0.25, 0.2, 0.15, 0.12]] * 2, "inf": [[1, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]] * 2}
    runs = _runs(curves, steps)
    for r in runs[2]:
        for k, v in list(r.items()):
            if isinstance(v, np.ndarray):
                r[k] = v[:2]
    text = summary_tables(_write_sweep(tmp_path / "a", runs))
    assert "Verdict on" not in text
    assert "The rule over the same widths" in text and "**confirmed**" in text
    assert "step 10: 8, 16; step 30: 8, 16; step 60: 8, 16" in text
    runs[16][0]["train_loss"][-1] = runs[16][1]["train_loss"][-1] = 0.09
    text = summary_tables(_write_sweep(tmp_path / "b", runs))
    assert "The rule over the same widths" in text and "**mixed**" in text and "**confirmed**" not in text


def test_tables_round_trip(tmp_path):
    """parse_table_ranges reads back what summary_tables writes, and the statistic computed from the table is
    the one computed from the runs at the tabled steps."""
    import json
    steps = list(range(0, 1001, 50))
    rng = np.random.default_rng(0)
    curves = {}
    for w, rate in ((10, 3.0), (50, 2.5), ("inf", 2.0)):
        curves[w] = [list(0.5 * np.exp(-rate * np.array(steps) / 1000) * (1 + 0.02 * rng.standard_normal(len(steps))))
                     for _ in range(3)]
    runs = _runs(curves, steps)
    text = summary_tables(_write_sweep(tmp_path / "s", runs))
    assert "First evaluated step from which" in text and "Paired ratios" in text and "Inconclusive" not in text
    parsed = parse_table_ranges(text)
    full = seed_ranges(runs)
    for w in parsed:
        for st, (mean, lo, hi) in parsed[w].items():
            assert lo == pytest.approx(full[w][st][1], rel=5e-3) and hi == pytest.approx(full[w][st][2], rel=5e-3)   # 3 digits
    tabled = {w: {st: full[w][st] for st in parsed[w]} for w in full}
    assert first_step_all_below(parsed)["step"] == first_step_all_below(tabled)["step"]
