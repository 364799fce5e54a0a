"""experiments.bench: the near-pairs measurement builds the geometry it claims and reports a ratio."""

import json

from accel import get_backend
from experiments import bench


def test_near_pairs_builds_aligned_and_spread_histories(tmp_path):
    res = bench.near_pairs(get_backend("cpu", "float64"), d=6, M=400, reps=1)
    assert res["aligned_near_fraction"] == 1.0          # every pair takes the explicit-difference route
    assert res["spread_near_fraction"] < 0.2
    assert res["aligned_seconds"] > 0 and res["spread_seconds"] > 0
    assert res["aligned_over_spread"] == res["aligned_seconds"] / res["spread_seconds"]


def test_run_with_near_pairs_writes_them(tmp_path):
    report = bench.run(sizes=(300,), widths=(4,), backends=("cpu",), dtypes=("float64",), reps=1, near=True,
                       log=lambda m: None)
    bench.write(report, tmp_path / "b.json")
    got = json.loads((tmp_path / "b.json").read_text())
    assert [(r["backend"], r["d"], r["M"]) for r in got["near_pairs"]] == [("cpu", 4, 300)]
