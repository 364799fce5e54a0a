"""experiments.controls: centring (MATH §7.4) and the per-width learning-rate probe (MATH §7.5)."""

import csv
import dataclasses
import json

import numpy as np
import pytest

import experiments.train as train_mod
from experiments.controls import Centring
from experiments.lr_probe import probe_width
from experiments.metrics import simulator_outputs
from experiments.sweep import run_sweep
from experiments.train import TrainConfig, TrainError, build_simulator, load_data, resolve_backend, train

SMALL = dict(train_size=120, test_size=40, d0=4, dr=2, init_width=400, batch_size=10,
             eval_every=5, eval_size=60, lr=1.0)


def _rows(path):
    with open(path / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _cols(path, *keys):
    return np.array([[float(r[k]) for k in keys] for r in _rows(path)])


@pytest.mark.parametrize("width", [3, "inf"])
def test_centring_equals_uncentred_run_on_shifted_targets(tmp_path, monkeypatch, width):
    cfg = TrainConfig(steps=20, width=width, center=True, **SMALL)
    centred = train(cfg, tmp_path / "centred", log=lambda m: None)
    # the uncentred simulator on targets y + F0 (F0 = the initial outputs of the same seed's simulator)
    data = load_data(cfg)
    sim, _ = build_simulator(cfg, data, resolve_backend("numpy"))
    F0_train = simulator_outputs(sim, data.X_train)
    F0_test = simulator_outputs(sim, data.X_test)
    shifted = dataclasses.replace(data, Y_train=data.Y_train + F0_train, Y_test=data.Y_test + F0_test)
    monkeypatch.setattr(train_mod, "load_data", lambda config: shifted)
    plain = train(dataclasses.replace(cfg, center=False), tmp_path / "plain", log=lambda m: None)
    a, b = _cols(centred, "train_loss", "test_loss"), _cols(plain, "train_loss", "test_loss")
    assert a.shape == b.shape == (5, 2)
    assert np.allclose(a, b, rtol=1e-12, atol=1e-14)
    # the centred curve starts at the zero predictor's loss on the evaluation rows
    rows = train_mod.eval_rows(cfg.seed, data.X_train.shape[0], cfg.eval_size)
    assert a[0, 0] == pytest.approx(0.5 * np.mean(np.sum(data.Y_train[rows] ** 2, axis=1)), abs=1e-15)
    assert a[0, 1] == pytest.approx(0.5 * np.mean(np.sum(data.Y_test ** 2, axis=1)), abs=1e-15)
    monkeypatch.undo()
    uncentred = train(dataclasses.replace(cfg, center=False), tmp_path / "orig", log=lambda m: None)
    assert not np.allclose(_cols(uncentred, "train_loss")[0], a[0, 0])    # the random initial loss differs


def test_centred_resume_is_bit_exact(tmp_path):
    cfg = dict(SMALL, width=3, center=True)
    a = train(TrainConfig(steps=12, **cfg), tmp_path / "a", log=lambda m: None)
    train(TrainConfig(steps=20), a, resume=True, log=lambda m: None)
    b = train(TrainConfig(steps=20, **cfg), tmp_path / "b", log=lambda m: None)
    strip = [[(r["step"], r["train_loss"], r["test_loss"]) for r in _rows(p)] for p in (a, b)]
    assert strip[0] == strip[1]


def test_centring_refuses_a_trained_simulator():
    cfg = TrainConfig(width=3, **SMALL)
    data = load_data(cfg)
    sim, _ = build_simulator(cfg, data, resolve_backend("numpy"))
    sim.step(np.arange(10))
    with pytest.raises(ValueError, match="step 0"):
        Centring(sim, data)


def test_probe_is_deterministic_and_finds_the_edge():
    cfg = TrainConfig(width=3, lr_policy="per-width", lr_fraction=0.5, lr_probe_steps=15, **SMALL)
    a = probe_width(cfg, 3)
    b = probe_width(cfg, 3)
    assert a == b
    rates = [t["lr"] for t in a["trials"]]
    assert rates[0] == 1.0 and all(r in [2.0 ** j for j in range(-12, 13)] for r in rates)
    best = a["largest_stable"]
    assert any(t["lr"] == best and t["stable"] for t in a["trials"])
    assert any(t["lr"] == 2 * best and not t["stable"] for t in a["trials"])      # the next rate is not
    assert a["lr"] == 0.5 * best
    # an unstable start walks down
    inf = probe_width(dataclasses.replace(cfg, lr_probe_steps=15), "inf")
    assert inf["lr"] == 0.5 * inf["largest_stable"]


def test_per_width_sweep_records_the_probe_and_uses_it(tmp_path):
    cfg = TrainConfig(steps=10, lr_policy="per-width", lr_fraction=0.25, lr_probe_steps=15, **SMALL)
    run_sweep(tmp_path / "s", cfg, widths=[3, "inf"], seeds=[0, 1], jobs=1, plot=False, log=lambda m: None)
    probe = json.loads((tmp_path / "s" / "lr_probe.json").read_text())
    assert probe["fraction"] == 0.25 and probe["steps"] == 15 and probe["seed"] == 0
    record = json.loads((tmp_path / "s" / "sweep.json").read_text())
    for r in record["runs"]:
        expect = probe["widths"][str(r["width"])]["lr"]
        assert r["lr"] == expect == 0.25 * probe["widths"][str(r["width"])]["largest_stable"]
        saved = json.loads((tmp_path / "s" / r["dir"] / "config.json").read_text())["config"]
        assert saved["lr"] == expect and saved["lr_policy"] == "per-width"
    # a second sweep with the same options writes the same probe (deterministic)
    run_sweep(tmp_path / "t", cfg, widths=[3, "inf"], seeds=[0, 1], jobs=1, plot=False, log=lambda m: None)
    assert json.loads((tmp_path / "t" / "lr_probe.json").read_text()) == probe
    # resuming to more steps reuses the recorded probe (no new trials) and the same rates
    said = []
    run_sweep(tmp_path / "s", resume=True, steps=15, jobs=1, plot=False, log=said.append)
    assert not any("lr probe" in m for m in said)
    assert all(r["status"] == "done" for r in json.loads((tmp_path / "s" / "sweep.json").read_text())["runs"])


@pytest.mark.parametrize("change,argument", [
    (dict(task="denoise"), "task"), (dict(lr_policy="adaptive"), "lr_policy"),
    (dict(lr_fraction=1.5), "lr_fraction"), (dict(lr_fraction=0), "lr_fraction"),
    (dict(lr_policy="per-width", lr_f=1.0), "lr_policy"),
    (dict(dataset="multi-index", d0=4, latent_dim=5), "latent_dim"),
    (dict(dataset="nope"), "dataset"), (dict(lr_probe_steps=0), "lr_probe_steps"),
    (dict(dataset="mnist", loss="ce", center=True), "center")])
def test_bad_control_options_name_the_option(tmp_path, change, argument):
    with pytest.raises(TrainError, match=f"^{argument}:"):
        train(TrainConfig(steps=5, **{**SMALL, **change}), tmp_path / "r", log=lambda m: None)
    assert not (tmp_path / "r").exists()


def test_train_on_multi_index_and_autoencoder_manifold(tmp_path):
    out = train(TrainConfig(steps=10, **{**SMALL, "dataset": "multi-index", "d0": 8, "latent_dim": 2}),
                tmp_path / "mi", log=lambda m: None)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["dataset"] == "multi-index" and cfg["data"]["latent_dim"] == 2
    out = train(TrainConfig(steps=10, **{**SMALL, "dataset": "manifold", "task": "autoencoder", "d0": 6,
                                         "latent_dim": 2, "width": 2}), tmp_path / "ae", log=lambda m: None)
    loss = _cols(out, "train_loss")[:, 0]
    assert loss[-1] < loss[0]
    assert json.loads((out / "config.json").read_text())["data"]["dr"] == 6


# ---------------------------------------------------------------- command line

TINY = ["--train-size", "60", "--test-size", "20", "--d0", "4", "--batch-size", "10", "--eval-every", "5",
        "--eval-size", "30", "--init-width", "300"]


def test_cli_train_per_width_and_centred(tmp_path):
    from click.testing import CliRunner
    import cli
    out = tmp_path / "run"
    res = CliRunner().invoke(cli.cli, ["train", *TINY, "--width", "3", "--steps", "10", "--center",
                                       "--lr-policy", "per-width", "--lr-fraction", "0.5", "--lr-probe-steps", "10",
                                       "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    probe = json.loads((out / "lr_probe.json").read_text())
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["lr"] == probe["widths"]["3"]["lr"] == 0.5 * probe["widths"]["3"]["largest_stable"]
    assert cfg["center"] is True and cfg["lr_policy"] == "per-width"


def test_cli_sweep_multi_index_autoencoder_and_finite_sweep(tmp_path):
    from click.testing import CliRunner
    import cli
    res = CliRunner().invoke(cli.cli, ["sweep", *TINY, "--dataset", "multi-index", "--latent-dim", "1",
                                       "--widths", "2,inf", "--seeds", "0", "--steps", "10", "-j", "1",
                                       "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s" / "heatmap_relative.png").is_file()
    res = CliRunner().invoke(cli.cli, ["finite-sweep", "--dataset", "manifold", "--task", "autoencoder", "--d0", "5",
                                       "--latent-dim", "2", "--train-size", "30", "--test-size", "10",
                                       "--hidden", "100", "--steps", "5", "--eval-every", "5", "--widths", "2",
                                       "--lr", "0.2", "--out", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output


def test_cli_bad_control_option_one_line(tmp_path):
    from click.testing import CliRunner
    import cli
    from clihelpers import one_line_error
    res = CliRunner().invoke(cli.cli, ["train", *TINY, "--lr-fraction", "2", "--out", str(tmp_path / "r")])
    assert "--lr-fraction" in one_line_error(res)
    res = CliRunner().invoke(cli.cli, ["train", *TINY, "--dataset", "multi-index", "--latent-dim", "9",
                                       "--out", str(tmp_path / "r")])
    assert "latent_dim" in one_line_error(res)
    assert not (tmp_path / "r").exists()


def test_probe_in_parallel_gives_the_serial_result(tmp_path):
    from experiments.lr_probe import per_width_rates
    from experiments.sweep import _pool_starmap, thread_env
    cfg = TrainConfig(lr_policy="per-width", lr_probe_steps=10, **SMALL)
    serial = per_width_rates(tmp_path / "a", cfg, [3, "inf"])
    parallel = per_width_rates(tmp_path / "b", cfg, [3, "inf"], starmap=lambda f, a: _pool_starmap(f, a, 2, thread_env(2)))
    assert serial == parallel
    a = json.loads((tmp_path / "a" / "lr_probe.json").read_text())["widths"]
    b = json.loads((tmp_path / "b" / "lr_probe.json").read_text())["widths"]
    for w in a:       # same decisions; losses equal up to the rounding of another BLAS thread count
        assert [(t["lr"], t["stable"]) for t in a[w]["trials"]] == [(t["lr"], t["stable"]) for t in b[w]["trials"]]
        for ta, tb in zip(a[w]["trials"], b[w]["trials"]):
            assert ta["initial_loss"] == pytest.approx(tb["initial_loss"], rel=1e-10)
            if ta["final_loss"] is not None:
                assert ta["final_loss"] == pytest.approx(tb["final_loss"], rel=1e-10)
