"""Several bottlenecks on the command line and in the run model (--chain, MATH §9): recorded in
config.json, resumed bit for bit, 'inf' is the all-infinite chain, the sweep varies the first width,
bad values are one-line errors that write nothing."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from clihelpers import one_line_error
from experiments.fileio import load_npz
from experiments.train import TrainConfig, TrainError, build_simulator, load_data, train

SMALL = dict(train_size=80, test_size=30, d0=4, dr=2, width=3, chain=[2, 4], init_width=300, batch_size=10,
             eval_every=5, eval_size=60, lr=0.5)
TINY = ["--train-size", "60", "--test-size", "20", "--d0", "3", "--width", "2", "--init-width", "100",
        "--batch-size", "10", "--eval-every", "4", "--eval-size", "60", "--steps", "8", "-q"]


def _rows(path):
    with open(path / "metrics.csv", newline="") as fh:
        return [(r["step"], r["train_loss"], r["test_loss"], r["feature_movement"]) for r in csv.DictReader(fh)]


def test_chain_run_is_recorded_and_resumes_bit_exact(tmp_path):
    a = train(TrainConfig(steps=12, **SMALL), tmp_path / "a", log=lambda m: None)
    train(TrainConfig(steps=20), a, resume=True, log=lambda m: None)
    b = train(TrainConfig(steps=20, **SMALL), tmp_path / "b", log=lambda m: None)
    assert json.loads((a / "config.json").read_text())["config"]["chain"] == [2, 4]
    sa, sb = load_npz(a / "checkpoint.npz"), load_npz(b / "checkpoint.npz")
    assert {"history_P_2", "history_C_2"} <= set(sa) and set(sa) == set(sb)
    assert sa["history_C_0"].shape[1] == 2 and sa["history_C_1"].shape[1] == 4 and sa["history_C_2"].shape[1] == 2
    for key in sa:
        if key != "driver_wall_s":
            assert np.array_equal(sa[key], sb[key]), key
    assert _rows(a) == _rows(b) and len(_rows(a)) == 5


def test_the_run_builds_the_chain_and_inf_is_every_width_infinite():
    from refimpl.chain import ChainSimulator, ntk_inf_chain
    cfg = TrainConfig(steps=5, **SMALL)
    cfg.validate()
    data = load_data(cfg)
    sim, info = build_simulator(cfg, data, __import__("refimpl"))
    assert isinstance(sim, ChainSimulator) and sim.widths == (3, 2, 4) and "random chain" in info["f0_method"]
    cfg = TrainConfig(steps=5, **dict(SMALL, width="inf"))
    cfg.validate()
    sim, info = build_simulator(cfg, data, __import__("refimpl"))
    assert info["f0_method"] == "cholesky"
    X = data.X_train[:4]
    np.testing.assert_allclose(sim.engine.ntk(X, sim._tracked[0])[:, :4],
                               ntk_inf_chain(X, X, *cfg.layers()[:1], (cfg.layers()[1],) * 3, lr_g=0.5, lr_f=0.5),
                               rtol=1e-13)


def test_sweep_varies_the_first_width_and_keeps_the_chain(tmp_path):
    out = tmp_path / "sw"
    res = CliRunner().invoke(cli.cli, ["sweep", "--train-size", "40", "--test-size", "20", "--d0", "3",
                                       "--init-width", "100", "--batch-size", "10", "--eval-every", "4", "--steps",
                                       "8", "--widths", "2,inf", "--chain", "3", "--no-plot", "-j", "1",
                                       "--backend", "numpy", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for sub, width in (("width-2", 2), ("width-inf", "inf")):
        cfg = json.loads((out / sub / "config.json").read_text())["config"]
        assert cfg["chain"] == [3] and cfg["width"] == width


@pytest.mark.parametrize("value", ["0", "-1", "abc", "", "3,,4", "1.5"])
def test_bad_chain_values_are_one_line_errors_that_write_nothing(tmp_path, value):
    out = tmp_path / "run"
    line = one_line_error(CliRunner().invoke(cli.cli, ["train", *TINY, "--chain", value, "--out", str(out)]))
    assert "--chain" in line and not out.exists()


def test_chain_with_matched_rates_is_refused(tmp_path):
    out = tmp_path / "run"
    line = one_line_error(CliRunner().invoke(cli.cli, ["train", *TINY, "--chain", "2", "--lr-scale", "matched",
                                                       "--out", str(out)]))
    assert "chain" in line and "lr-scale" in line and not out.exists()
    with pytest.raises(TrainError, match="^chain: expected"):
        TrainConfig(chain=[3, 0]).validate()


def test_finite_vs_infinite_compares_finite_chains_with_the_chain_simulator(tmp_path):
    out = tmp_path / "fvi"
    res = CliRunner().invoke(cli.cli, ["finite-vs-infinite", "--width", "3", "--chain", "2", "--d0", "4",
                                       "--train-size", "24", "--test-size", "10", "--hidden", "200,6000",
                                       "--steps", "20", "--batch-size", "8", "--lr", "0.5", "--eval-every", "10",
                                       "--limit-width", "200", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["chain"] == [2] and summary["check"]["passed"]
    gaps = {row["n"]: row["max_output_gap"] for row in summary["table"]}
    assert gaps[6000] < 0.5 * gaps[200], gaps
