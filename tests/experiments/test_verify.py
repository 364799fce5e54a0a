"""`cli.py verify` (experiments/verify.py) at a tiny scale: outputs, verdicts and exit codes."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from experiments import verify

TINY = {
    "lemma3.1": ["--widths", "20,50", "--samples", "400", "--pairs", "3", "--threshold", "1"],
    "theorem3.2": ["--widths", "300", "--steps", "4", "--samples", "1", "--points", "4", "--threshold", "1"],
    "lemma4.1": ["--widths", "16,32", "--depths", "2", "--steps", "3", "--points", "4", "--threshold", "1"],
    "inf-limit": ["--dims", "4,256", "--width", "300", "--samples", "2", "--points", "4", "--threshold", "1"],
}


def _invoke(args):
    return CliRunner().invoke(cli.cli, args, catch_exceptions=False)


@pytest.mark.parametrize("name", sorted(TINY))
def test_verify_subcommand_writes_outputs_and_passes(tmp_path, name):
    out = tmp_path / name
    res = _invoke(["verify", name, "--out", str(out), "-q", *TINY[name]])
    assert res.exit_code == 0, res.output
    report = json.loads((out / f"{name}.json").read_text())
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["name"] == name and report["passed"] is True
    assert report["checks"] and all(c["passed"] for c in report["checks"])
    assert "ok   " in res.stdout and f"{name}.json" in res.stdout
    assert not list(out.glob("*.tmp"))                      # atomic writes leave nothing behind


@pytest.mark.parametrize("name", sorted(TINY))
def test_impossible_threshold_fails_with_one_line(tmp_path, name):
    args = [a for a in TINY[name]]
    args[args.index("--threshold") + 1] = "0"
    res = _invoke(["verify", name, "--out", str(tmp_path), "-q", *args])
    assert res.exit_code == 3
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"Error: {name}: check ") and "failed" in err[0]
    assert "Traceback" not in res.output
    report = json.loads((tmp_path / f"{name}.json").read_text())
    assert report["passed"] is False                        # the numbers are still written


def test_bad_options_give_one_line_errors(tmp_path):
    res = _invoke(["verify", "theorem3.2", "--widths", "100,0"])
    assert res.exit_code == 2 and "--widths" in res.stderr
    res = _invoke(["verify", "lemma3.1", "--samples", "1"])
    assert res.exit_code == 2 and "--samples" in res.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = _invoke(["verify", "inf-limit", "--out", str(blocker), "-q", *TINY["inf-limit"]])
    assert res.exit_code == 2 and "--out" in res.stderr and "Traceback" not in res.output
    with pytest.raises(ValueError, match="^out: .* exists and is not a directory"):
        verify.inf_limit(blocker, dims=[4], width=10, samples=1, points=3)


def test_library_checks_and_argument_errors(tmp_path):
    rep = verify.lemma41(tmp_path, widths=[16], depths=[1, 3], steps=3, points=4)
    exact = next(c for c in rep["checks"] if c["name"] == "simulator_exact")
    assert exact["value"] < 1e-12                            # lemma 4.1 holds exactly for the simulator
    assert rep["results"]["depth1_n16"]["err_F"].max() < 1e-12   # depth 1: the net is its own effective net
    for kwargs, name in ((dict(widths=[0]), "widths"), (dict(widths="12"), "widths"), (dict(lr=-1.0), "lr"),
                         (dict(steps=0), "steps"), (dict(threshold=float("nan")), "threshold")):
        with pytest.raises(ValueError, match=rf"^{name}:"):
            verify.theorem32(tmp_path, **kwargs)


def test_help_states_the_library_defaults():
    """The [default: ...] texts of the CLI must match verify.DEFAULTS."""
    for name, defaults in verify.DEFAULTS.items():
        text = _invoke(["verify", name, "--help"]).output.replace("\n", " ")
        text = " ".join(text.split())
        for key, value in defaults.items():
            shown = ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
            assert f"[default: {shown}]" in text, (name, key, shown)


def test_rate_recovers_a_known_power_law_and_its_spread():
    """_rate on synthetic gaps c n^-1/2 (1 + noise): the slope, its bootstrap interval and the monotone ratio."""
    rng = np.random.default_rng(1)
    widths = (1000, 4000, 16000, 64000)
    per = np.array([[0.3 * n ** -0.5 * (1 + 0.3 * rng.standard_normal()) for _ in range(16)] for n in widths])
    r = verify._rate(widths, per, -0.5, np.random.default_rng(2))
    assert abs(r["slope"] + 0.5) < 0.1 and r["slope_ci"][0] < -0.5 < r["slope_ci"][1]
    assert r["slope_ci"][1] - r["slope_ci"][0] < 0.3
    assert r["max_ratio"] < 1 and r["n_networks"] == 16
    np.testing.assert_allclose(r["mean"], per.mean(axis=1))
    np.testing.assert_allclose(r["median"], np.median(per, axis=1))
    assert abs(r["slope_of_median"] + 0.5) < 0.15
    np.testing.assert_allclose(r["sem"], per.std(axis=1, ddof=1) / 4)
    flat = verify._rate(widths, np.ones((4, 3)) * [[1.0], [1.2], [0.9], [1.1]], -0.5, np.random.default_rng(2))
    assert abs(flat["slope"]) < 0.05 and flat["max_ratio"] > 1         # no fall: both criteria would fail
    one = verify._rate((100,), [[0.1, 0.2]], -0.5, np.random.default_rng(2))
    assert np.isnan(one["slope"]) and one["n_networks"] == 2


def test_theorem32_reports_the_rate_and_fails_a_zero_slope_band(tmp_path):
    rep = verify.theorem32(tmp_path, widths=(100, 400), steps=3, samples=2, points=4, threshold=1.0,
                           slope_band=0.0)
    rate = rep["results"]["rate"]
    for k in ("F", "g", "J"):
        finals = [rep["results"][str(n)][f"err_{k}_per_network"][:, -1] for n in (100, 400)]
        np.testing.assert_allclose(rate[k]["mean"], np.mean(finals, axis=1))
        assert rate[k]["n_networks"] == 2 and np.isfinite(rate[k]["slope"])
    names = {c["name"]: c for c in rep["checks"]}
    assert {"err_F_monotone", "err_F_slope", "err_F_slope_ci", "err_g_monotone", "err_g_slope"} <= set(names)
    assert names["err_F_slope"]["passed"] is False and rep["passed"] is False    # |slope + 1/2| > 0
    assert names["err_F_slope"]["value"] == pytest.approx(abs(rate["F"]["slope"] + 0.5))
    assert rep["config"]["rate_resolved"] is False                               # 2 widths, 4x
    assert any("indicative only" in line for line in rep["table"])
    with pytest.raises(ValueError, match="^widths: expected increasing"):
        verify.theorem32(tmp_path, widths=(400, 100))


def test_theorem32_chain_of_one_head_is_the_single_bottleneck_check(tmp_path):
    """--widths-chain 3 runs FiniteChain against ChainSimulator: the same numbers as the default d = 3 path."""
    kw = dict(widths=(60, 120), steps=3, samples=1, points=4, threshold=1.0, backend="numpy")
    single = verify.theorem32(tmp_path / "one", **kw)
    chain = verify.theorem32(tmp_path / "chain", widths_chain=(3,), **kw)
    for n in ("60", "120"):
        for k in ("err_F", "err_g", "err_J", "resid_g"):
            np.testing.assert_allclose(chain["results"][n][k], single["results"][n][k], rtol=1e-12, atol=1e-15)
    two = verify.theorem32(tmp_path / "two", widths_chain=(3, 2), **kw)
    assert two["config"]["widths_chain"] == (3, 2) and two["config"]["d"] == 3
    assert np.isnan(two["results"]["60"]["resid_F"]).all() and np.isfinite(two["results"]["60"]["resid_g"]).all()
    assert all(np.isfinite(two["results"]["rate"][k]["slope"]) for k in ("F", "g", "J"))
    with pytest.raises(ValueError, match="^widths_chain:"):
        verify.theorem32(tmp_path, widths_chain=(3, 0))


def test_theorem32_defaults_for_features_and_depth():
    """The widths and networks per width theorem3.2 takes where they are not given: those with which
    REPRODUCTION Part 3's runs of each feature passed (a chain with 8 networks at 1000-64000 did not)."""
    D = verify.theorem32_defaults
    none = dict(widths=None, samples=None)
    assert D(none, False, None, 0.0, False, None) == {}
    assert D(none, False, None, 0.0, False, "constant") == {}
    assert D(none, True, None, 0.0, False, None) == {"widths": verify.DEEP_WIDTHS}
    feature = {"widths": (500, 2000, 8000, 32000), "samples": 16}
    for args in (((3, 2), 0.0, False, None), (None, 0.5, False, None), (None, 0.9, True, None),
                 (None, 0.0, False, "cosine")):
        assert D(none, False, *args) == feature, args
    assert D(none, False, None, 0.9, False, None) == {**feature, "samples": 32}
    assert D(none, True, (3, 2), 0.0, False, None) == {"widths": verify.DEEP_WIDTHS, "samples": 16}
    assert D(dict(widths=(10, 20), samples=2), False, (3, 2), 0.9, False, None) == {}   # given values stay


def test_theorem32_optimizer_arguments_are_checked(tmp_path):
    for kwargs, name in ((dict(momentum=1.0), "momentum"), (dict(momentum=-0.1), "momentum"),
                         (dict(nesterov=True), "nesterov"), (dict(lr_schedule=3), "lr_schedule"),
                         (dict(lr_schedule="step:0:0.5"), "lr_schedule"), (dict(lr_schedule="fast"), "lr_schedule")):
        with pytest.raises(ValueError, match=rf"^{name}\b"):
            verify.theorem32(tmp_path, **kwargs)


def test_theorem32_trains_both_models_with_the_same_optimiser(tmp_path):
    """--momentum / --lr-schedule reach the finite network and the simulator alike: the trajectory changes
    (losses differ from plain GD by far more than the gap) while the finite network still follows the simulator."""
    kw = dict(widths=(4000,), steps=12, samples=1, points=4, threshold=1.0, backend="numpy")
    plain = verify.theorem32(tmp_path / "plain", **kw)["results"]["4000"]
    for opt in (dict(momentum=0.8), dict(momentum=0.8, nesterov=True), dict(lr_schedule="step:4:0.25")):
        rep = verify.theorem32(tmp_path / str(len(opt)), **kw, **opt)
        res = rep["results"]["4000"]
        moved = np.abs(res["loss_sim"][-1] - plain["loss_sim"][-1]) / plain["loss_sim"][-1]
        assert moved > 0.05, opt
        assert res["err_F"][-1] < 0.2 * moved and res["err_g"][-1] < 0.05, opt
        assert np.isnan(res["resid_g"]).all() and "resid_g" not in {c["name"] for c in rep["checks"]}
        assert rep["config"]["optimizer"] == {**({"momentum": 0.8, "nesterov": False} if "momentum" in opt else {}),
                                              **opt}
    res = _invoke(["verify", "theorem3.2", "--nesterov", "--out", str(tmp_path / "n"), "-q"])
    assert res.exit_code == 2 and "nesterov" in res.stderr and len(res.stderr.strip().splitlines()) == 1
