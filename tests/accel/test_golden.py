"""Golden files (golden/, written by refimpl via `cli.py golden --regenerate`): integrity, and
refimpl plus every available backend against them (float64 to 1e-10, float32 to the measured
tolerance; error measures in experiments/golden.py)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import accel
import cli
from experiments import golden

TARGETS = accel.golden_targets()
TARGET_IDS = [t[0] for t in TARGETS]
# refimpl replays of these cases take ~8-10 s each on 2 cores; they run with RUN_SLOW=1 (and in
# `python cli.py golden`).  The backends replay every case.


def test_manifest_matches_files():
    manifest = golden.read_manifest()
    assert manifest["refimpl_version"]
    names = set(manifest["files"])
    assert names == {*golden.KERNEL_CASES, *golden.TRAJECTORIES}
    total = 0
    for name, entry in manifest["files"].items():
        path = golden.GOLDEN_DIR / entry["file"]
        assert golden._sha256(path) == entry["sha256"], name
        total += path.stat().st_size
        arrays = golden.load_case(name)
        assert sorted(arrays) == entry["arrays"]
    assert total < 5 * 2**20


def test_altered_file_is_detected(tmp_path):
    for entry in golden.read_manifest()["files"].values():
        (tmp_path / entry["file"]).write_bytes((golden.GOLDEN_DIR / entry["file"]).read_bytes())
    (tmp_path / golden.MANIFEST).write_text((golden.GOLDEN_DIR / golden.MANIFEST).read_text())
    data = bytearray((tmp_path / "infinite_mini.npz").read_bytes())
    data[-40] ^= 0xFF
    (tmp_path / "infinite_mini.npz").write_bytes(bytes(data))
    with pytest.raises(golden.GoldenError, match="sha256"):
        golden.load_case("infinite_mini", tmp_path)
    with pytest.raises(golden.GoldenError, match="manifest"):
        golden.read_manifest(tmp_path / "nowhere")


def test_golden_cases_cover_the_issue():
    cfgs = golden.TRAJECTORIES.values()
    bott = [c for c in cfgs if c["model"] == "bottleneck"]
    assert {c["d"] for c in bott} >= {3, 10, 50}
    assert any(c["B"] == c["N"] for c in bott) and any(c["B"] < c["N"] for c in bott)
    assert any(c["lr_f"] and c["lr_g"] and c["lr_f"] != c["lr_g"] for c in bott)
    assert any(c["model"] == "infinite" for c in cfgs) and any(c["model"] == "linear" for c in cfgs)
    chains = [c for c in cfgs if c["model"] == "chain"]                     # several bottlenecks (MATH §9)
    assert any(len(c["widths"]) == 2 for c in chains) and any(len(c["widths"]) >= 3 for c in chains)
    assert all(c["steps"] >= 200 for c in cfgs)
    X, Y = golden.load_case("kernels")["m10/X"], golden.load_case("kernels")["m10/Y"]
    theta = np.diag(golden.kernels.pair_angles(X, Y)[2])
    assert (theta < 1e-8).sum() >= 3 and (np.pi - theta < 1e-8).sum() >= 3    # (anti-)parallel
    assert ((theta > 1e-10) & (theta < 1e-3)).sum() >= 3                      # nearly parallel


@pytest.mark.parametrize("label,backend,dtype", TARGETS, ids=TARGET_IDS)
def test_kernels_against_golden(label, backend, dtype):
    errors = golden.compare_kernels(golden.load_case("kernels"), backend)
    for quantity, err in errors.items():
        assert err <= golden.tolerance(quantity, "float64"), (quantity, err)


@pytest.mark.parametrize("label,backend,dtype", TARGETS, ids=TARGET_IDS)
def test_arch_kernels_against_golden(label, backend, dtype):
    """erf, biases, scales, depth and their no-bottleneck kernels (MATH §2.2), every backend."""
    errors = golden.compare_arch_kernels(golden.load_case("kernels_arch"), backend)
    assert any(k.startswith("erf/") for k in errors) and any(k.startswith("inf_relu/") for k in errors)
    for quantity, err in errors.items():
        assert err <= golden.tolerance(quantity, "float64"), (quantity, err)


@pytest.mark.parametrize("case", list(golden.TRAJECTORIES))
@pytest.mark.parametrize("label,backend,dtype", TARGETS, ids=TARGET_IDS)
def test_trajectory_against_golden(case, label, backend, dtype):
    errors = golden.compare_trajectory(case, golden.load_case(case), backend)
    assert set(errors) >= {"losses", "F_eval"}
    for quantity, err in errors.items():
        assert err <= golden.tolerance(quantity, dtype), (quantity, err)


def test_float32_is_really_float32():
    """The float32 tolerance is not vacuous: float32 runs differ from refimpl by more than float64 ones."""
    case = "bottleneck_d10_mini"
    g = golden.load_case(case)
    e64 = golden.compare_trajectory(case, g, accel.get_backend("cpu", "float64"))["losses"]
    e32 = golden.compare_trajectory(case, g, accel.get_backend("cpu", "float32"))["losses"]
    assert e64 < 1e-12 < 1e-9 < e32 < golden.TOL_FLOAT32


def test_cli_golden_check_and_regenerate(tmp_path, monkeypatch):
    runner = CliRunner()
    res = runner.invoke(cli.cli, ["golden", "--cases", "infinite_mini,linear_d5_mini"])
    assert res.exit_code == 0, res.output
    assert "within tolerance" in res.output and "cpu/float32" in res.output
    res = runner.invoke(cli.cli, ["golden", "--cases", "nope"])
    assert res.exit_code != 0 and "unknown golden case" in res.output
    # --regenerate reproduces the stored files within the golden tolerances (not bit for bit: the
    # last bits depend on the machine's BLAS kernels); checked on a copy
    monkeypatch.setattr(golden, "TRAJECTORIES", {"linear_d5_mini": golden.TRAJECTORIES["linear_d5_mini"]})
    manifest = golden.regenerate(tmp_path, log=lambda m: None)
    ref = json.loads((golden.GOLDEN_DIR / golden.MANIFEST).read_text())
    for name in ("kernels", "linear_d5_mini"):
        a = golden.load_case(name, tmp_path)
        b = golden.load_case(name)
        assert sorted(a) == sorted(b)
        errors = golden.case_errors(name, a, b)
        assert errors["inputs"] <= 1e-14, name
        bad = {k: e for k, e in errors.items() if e > golden.tolerance(k)}
        assert not bad, (name, bad)
        assert manifest["files"][name]["config"] == ref["files"][name]["config"]


def test_case_errors_see_a_perturbed_case():
    ref = golden.load_case("linear_d5_mini")
    new = dict(ref)
    new["out/ckpt100/F_eval"] = ref["out/ckpt100/F_eval"] * (1 + 1e-8)
    errors = golden.case_errors("linear_d5_mini", new, ref)
    assert errors["F_eval"] == pytest.approx(1e-8, rel=1e-3) and errors["inputs"] == 0.0
