"""experiments.controls: centring (MATH §7.4) and the per-width learning-rate probe (MATH §7.5)."""

import csv
import dataclasses
import json

import numpy as np
import pytest

import experiments.train as train_mod
from experiments import runfolder
from experiments.controls import Centring
from experiments.lr_probe import probe_width
from experiments.evaluation import run_eval_rows, simulator_outputs
from experiments.fileio import load_npz
from experiments.loop import batch_indices
from experiments.sweep import run_sweep
from experiments.backends import resolve_backend
from experiments.train import TrainConfig, TrainError, build_simulator, load_data, train

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
    rows = run_eval_rows(cfg, data.X_train.shape[0])
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
    # the checkpoints too: the resumed simulator was shifted at step 0 and then loaded (MATH §7.4)
    ca, cb = (load_npz(p / "checkpoint.npz") for p in (a, b))
    sim_keys = sorted(k for k in ca if not k.startswith("driver_"))
    assert sim_keys == sorted(k for k in cb if not k.startswith("driver_")) and "A" in sim_keys
    assert all(np.array_equal(ca[k], cb[k]) for k in sim_keys)
    assert ca["driver_state_sha256"].tobytes() == cb["driver_state_sha256"].tobytes()


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("width", [3, "inf"])
def test_centred_simulator_is_the_uncentred_one_on_targets_y_plus_F0_exactly(width, backend):
    """The target shift inside the simulator (MATH §7.4): same losses, same state, bit for bit."""
    cfg = TrainConfig(width=width, center=True, backend=backend, **SMALL)
    data = load_data(cfg)
    be = resolve_backend(backend)
    centred, _ = build_simulator(cfg, data, be)
    centring = Centring(centred, data)
    shifted = dataclasses.replace(data, Y_train=data.Y_train + simulator_outputs(build_simulator(cfg, data, be)[0],
                                                                                   data.X_train))
    plain, _ = build_simulator(cfg, shifted, be)
    assert np.array_equal(centring.F0["train"] + data.Y_train, plain.Y)
    losses = [[sim.step(batch_indices(cfg.seed, t, data.X_train.shape[0], cfg.batch_size)) for t in range(8)]
              for sim in (centred, plain)]
    assert losses[0] == losses[1]
    a, b = centred.state_dict(), plain.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(simulator_outputs(centred, data.X_test), simulator_outputs(plain, data.X_test))


def test_a_target_shift_after_step_0_is_refused_in_one_line():
    cfg = TrainConfig(width=3, **SMALL)
    data = load_data(cfg)
    sim, _ = build_simulator(cfg, data, resolve_backend("numpy"))
    with pytest.raises(ValueError, match=r"S: expected shape \(120, 2\)"):
        sim.shift_targets(np.zeros((120, 3)))
    sim.step(np.arange(10))
    with pytest.raises(ValueError, match="only at step 0") as err:
        sim.shift_targets(np.zeros((120, 2)))
    assert "\n" not in str(err.value)
    assert np.array_equal(sim.Y, data.Y_train)                 # nothing changed


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
    (dict(dataset="multi-index", d0=4, dr=None, latent_dim=5), "latent_dim"),
    (dict(dataset="nope"), "dataset"), (dict(lr_probe_steps=0), "lr_probe_steps"),
    (dict(dataset="mnist", loss="ce", center=True), "center")])
def test_bad_control_options_name_the_option(tmp_path, change, argument):
    with pytest.raises(TrainError, match=f"^{argument}:"):
        train(TrainConfig(steps=5, **{**SMALL, **change}), tmp_path / "r", log=lambda m: None)
    assert not (tmp_path / "r").exists()


def test_train_on_multi_index_and_autoencoder_manifold(tmp_path):
    out = train(TrainConfig(steps=10, **{**SMALL, "dataset": "multi-index", "d0": 8, "dr": None, "latent_dim": 2}),
                tmp_path / "mi", log=lambda m: None)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["dataset"] == "multi-index" and cfg["data"]["latent_dim"] == 2
    out = train(TrainConfig(steps=10, **{**SMALL, "dataset": "manifold", "task": "autoencoder", "d0": 6, "dr": None,
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
    from experiments.pool import pool_starmap, thread_env
    cfg = TrainConfig(lr_policy="per-width", lr_probe_steps=10, **SMALL)
    serial = per_width_rates(tmp_path / "a", cfg, [3, "inf"])
    parallel = per_width_rates(tmp_path / "b", cfg, [3, "inf"], starmap=lambda f, a: pool_starmap(f, a, 2, thread_env(2)))
    assert serial == parallel
    a = json.loads((tmp_path / "a" / "lr_probe.json").read_text())["widths"]
    b = json.loads((tmp_path / "b" / "lr_probe.json").read_text())["widths"]
    for w in a:       # same decisions; losses equal up to the rounding of another BLAS thread count
        assert [(t["lr"], t["stable"]) for t in a[w]["trials"]] == [(t["lr"], t["stable"]) for t in b[w]["trials"]]
        for ta, tb in zip(a[w]["trials"], b[w]["trials"]):
            assert ta["initial_loss"] == pytest.approx(tb["initial_loss"], rel=1e-10)
            if ta["final_loss"] is not None:
                assert ta["final_loss"] == pytest.approx(tb["final_loss"], rel=1e-10)


# ---------------------------------------------------------------- matched effective rates (MATH §7.7)

def _outputs_after(cfg, steps, centred):
    """Outputs (F - F0 if ``centred``) on the test inputs after ``steps`` SGD steps, and F0."""
    data = load_data(cfg)
    sim, _ = build_simulator(cfg, data, resolve_backend("numpy"))
    if centred:
        Centring(sim, data)
    F0 = simulator_outputs(sim, data.X_test)
    for t in range(steps):
        sim.step(batch_indices(cfg.seed, t, data.X_train.shape[0], cfg.batch_size))
    F = simulator_outputs(sim, data.X_test)
    return (F - F0 if centred else F), F0, data


@pytest.mark.parametrize("scales", [dict(out_std=0.3), dict(out_std=0.1),
                                    dict(out_std=(0.5, 0.2), w_std=(0.7, 1.3)),
                                    dict(out_std=0.4, w_std=0.8, depth_g=2, depth_f=2),
                                    dict(out_std=0.3, activation="linear")])
def test_matched_rate_reproduces_the_standard_inf_run(tmp_path, scales):
    """inf is linear in function space (MATH §5) and its kernel scales by c_g c_f (MATH §7.7): centred, the
    run at lr / c from the small start is the standard run at lr, to rounding (the residual obeys the same
    recursion from -y; measured 2e-16 relative)."""
    from experiments.controls import rate_scale
    base = dict(SMALL, width="inf", center=True, lr=0.25)
    extra = {k: v for k, v in scales.items() if k in ("depth_g", "depth_f", "activation")}
    std = train(TrainConfig(steps=20, **base, **extra), tmp_path / "std", log=lambda m: None)
    cfg = TrainConfig(steps=20, **base, **scales, lr_scale="matched")
    small = train(cfg, tmp_path / "small", log=lambda m: None)
    a, b = _cols(std, "train_loss", "test_loss"), _cols(small, "train_loss", "test_loss")
    assert a.shape == (5, 2) and a[-1, 0] < 0.95 * a[0, 0]          # it learned
    assert np.allclose(a, b, rtol=1e-12, atol=0)
    c = rate_scale(*cfg.layers())
    saved = json.loads((small / "config.json").read_text())
    assert saved["config"]["lr_scale"] == "matched" and saved["config"]["lr"] == 0.25
    assert saved["effective_rates"]["lr"] == pytest.approx(0.25 / c, rel=1e-15)
    # without the scaling the small start trains at c times the rate: far slower
    slow = train(TrainConfig(steps=20, **base, **scales), tmp_path / "slow", log=lambda m: None)
    drop = _cols(slow, "train_loss")[[0, -1], 0]
    assert drop[0] - drop[1] < 0.2 * (a[0, 0] - a[-1, 0])


def test_matched_rate_inf_uncentred_differs_only_through_f0():
    """Uncentred, the residual r = F - y obeys r_t = P_t r_0 with the same P_t at the matched rate; F0 of the
    small start is a b F0 of the standard one (the same draw), so r_t(small) = ab r_t(std) + (1 - ab) r_t(centred)."""
    s = 0.3
    base = dict(SMALL, width="inf", lr=1.0)
    F_std, F0_std, data = _outputs_after(TrainConfig(**base), 15, centred=False)
    F_small, F0_small, _ = _outputs_after(TrainConfig(**base, out_std=s, lr_scale="matched"), 15, centred=False)
    dF_c, _, _ = _outputs_after(TrainConfig(**base, center=True), 15, centred=True)
    ab = s * s
    # F0 is drawn by Cholesky with a jitter of 1e-10 x max(1, diagonal): an absolute floor, 1.2e-8 of the small
    # start's covariance, which the ill-conditioned draw turns into 3.6e-6 of F0 (measured): 2e-5 here; in the
    # outputs after 15 steps it is 1.4e-7 of the residual (measured): 1e-6
    assert np.allclose(F0_small, ab * F0_std, rtol=0, atol=2e-5 * np.abs(ab * F0_std).max())
    Y = data.Y_test
    predicted = ab * (F_std - Y) + (1 - ab) * (dF_c - Y)
    assert np.allclose(F_small - Y, predicted, rtol=0, atol=1e-6 * np.abs(predicted).max())
    assert not np.allclose(F_small, F_std, rtol=1e-3)          # F0 does matter without centring


@pytest.mark.parametrize("width", [3, 10, 100])
def test_matched_rate_finite_width_agrees_to_first_order(width):
    """A finite bottleneck at the matched rate has the standard kernel at initialisation, so one step's change
    in F agrees to first order in the rate; the second-order terms (the embedding moves 1/(ab) times further
    relative to its size) are amplified by 1/(ab) (MATH §7.7): |dF_s - dF_1| = (1/(ab) - 1) Q mu^2 + O(mu^3).
    The ratio at out-std 0.3 and 0.6 must be (1/0.09 - 1)/(1/0.36 - 1) = 5.6875 (measured 5.6875-5.6876 at
    mu = 1e-4; at mu = 1e-3 a ReLU unit of the initial network flips for widths 3 and 10 and the ratio is off)."""
    mu = 1e-4
    base = dict(SMALL, width=width, lr=mu, center=True, lr_scale="matched")
    d1, F0_1, _ = _outputs_after(TrainConfig(**base), 1, centred=True)
    gap = {}
    for s in (0.3, 0.6):
        ds, F0_s, _ = _outputs_after(TrainConfig(**base, out_std=s), 1, centred=True)
        assert np.allclose(F0_s, s * s * F0_1, rtol=1e-12, atol=1e-15)      # the same draw, scaled
        gap[s] = np.linalg.norm(ds - d1) / np.linalg.norm(d1)
    assert 1e-7 < gap[0.3] < 1e-3                    # first order agrees; not identical (the finite width is nonlinear)
    assert gap[0.3] / gap[0.6] == pytest.approx((1 / 0.09 - 1) / (1 / 0.36 - 1), rel=1e-2)


def test_matched_probe_is_in_units_of_the_matched_rate(tmp_path):
    """The probe's grid scales with the rate: centred inf from out-std 0.3 makes the standard run's decisions."""
    cfg = TrainConfig(width="inf", center=True, lr_policy="per-width", lr_probe_steps=15, **SMALL)
    a = probe_width(cfg, "inf")
    b = probe_width(dataclasses.replace(cfg, out_std=0.3, lr_scale="matched"), "inf")
    assert [(t["lr"], t["stable"]) for t in a["trials"]] == [(t["lr"], t["stable"]) for t in b["trials"]]
    assert a["largest_stable"] == b["largest_stable"]
    from experiments.lr_probe import per_width_rates
    per_width_rates(tmp_path, dataclasses.replace(cfg, out_std=0.3, lr_scale="matched"), ["inf"])
    assert "matched" in json.loads((tmp_path / "lr_probe.json").read_text())["rate_unit"]


@pytest.mark.parametrize("change", [dict(activation="erf"), dict(b_std=0.1), dict(b_std=(0.0, 0.2)),
                                    dict(lr_scale="double")])
def test_matched_rate_refused_where_the_scales_do_not_factor_out(tmp_path, change):
    with pytest.raises(TrainError, match="^lr_scale:"):
        train(TrainConfig(steps=5, **{**SMALL, "lr_scale": "matched", **change}), tmp_path / "r", log=lambda m: None)
    assert not (tmp_path / "r").exists()


def test_cli_lr_scale_and_data_seed(tmp_path):
    from click.testing import CliRunner
    import cli
    from clihelpers import one_line_error
    res = CliRunner().invoke(cli.cli, ["train", *TINY, "--width", "inf", "--steps", "5", "--out-std", "0.5",
                                       "--lr-scale", "matched", "--data-seed", "3", "--out", str(tmp_path / "a"), "-q"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["config"]["lr_scale"] == "matched" and saved["config"]["data_seed"] == 3
    assert saved["effective_rates"]["lr"] == pytest.approx(2.0 / 0.5 ** 4)
    res = CliRunner().invoke(cli.cli, ["train", *TINY, "--activation", "erf", "--lr-scale", "matched",
                                       "--out", str(tmp_path / "b")])
    assert "lr_scale" in one_line_error(res) and not (tmp_path / "b").exists()


# ---------------------------------------------------------------- the evaluation subset and the data draw

def test_eval_subset_is_fixed_across_seeds_and_widths():
    n = 300
    rows = {(seed, w): run_eval_rows(TrainConfig(seed=seed, width=w, eval_size=100), n)
            for seed in (0, 1, 7) for w in (3, "inf")}
    first = rows[(0, 3)]
    assert first.size == 100 and all(np.array_equal(r, first) for r in rows.values())
    # the old rule drew the rows from the run's seed: different for different seeds
    old = [run_eval_rows(TrainConfig(seed=seed, eval_size=100, eval_subset="seed"), n) for seed in (0, 1)]
    assert not np.array_equal(old[0], old[1])
    # another data draw, another subset
    assert not np.array_equal(first, run_eval_rows(TrainConfig(data_seed=1, eval_size=100), n))


def test_two_seeds_start_from_the_same_null_loss_on_the_fixed_subset(tmp_path):
    """Centred runs start at the zero predictor's loss on the evaluation rows: equal for every seed now."""
    cfg = dict(SMALL, width=3, center=True, train_size=200, eval_size=50)
    first = [_cols(train(TrainConfig(steps=5, seed=s, **cfg), tmp_path / f"s{s}", log=lambda m: None),
                   "train_loss")[0, 0] for s in (0, 1)]
    assert first[0] == first[1]
    old = [_cols(train(TrainConfig(steps=5, seed=s, eval_subset="seed", **cfg), tmp_path / f"o{s}",
                       log=lambda m: None), "train_loss")[0, 0] for s in (0, 1)]
    assert old[0] != old[1]


def test_data_seed_draws_other_synthetic_data():
    for ds in ("synthetic", "multi-index"):
        a = load_data(TrainConfig(dataset=ds, **{**SMALL, "data_seed": 0}))
        b = load_data(TrainConfig(dataset=ds, **{**SMALL, "data_seed": 1}))
        assert a.X_train.shape == b.X_train.shape and not np.allclose(a.Y_train, b.Y_train)


def test_a_run_made_before_the_new_options_resumes_as_it_was(tmp_path):
    """config.json without eval_subset / lr_scale (runs made before them): resumed with the seed's rows and
    the rates as given, identical to an uninterrupted run made that way."""
    from experiments.fileio import load_npz, save_npz
    cfg = dict(SMALL, width=3, train_size=200, eval_size=50, seed=1)
    ref = train(TrainConfig(steps=20, eval_subset="seed", **cfg), tmp_path / "ref", log=lambda m: None)
    old = train(TrainConfig(steps=10, eval_subset="seed", **cfg), tmp_path / "old", log=lambda m: None)
    meta = json.loads((old / "config.json").read_text())
    for key in ("eval_subset", "lr_scale"):
        del meta["config"][key]
    (old / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    state = dict(load_npz(old / "checkpoint.npz"))
    state["driver_config_sha256"] = runfolder.digest_array(runfolder.config_digest(meta["config"]))
    save_npz(old / "checkpoint.npz", state)
    train(TrainConfig(steps=20), old, resume=True, log=lambda m: None)
    assert _cols(old, "train_loss", "test_loss").tolist() == _cols(ref, "train_loss", "test_loss").tolist()
    # a sweep resuming such a run does not see other options
    from experiments.sweep import _other_options
    assert _other_options(old, TrainConfig.from_json(meta["config"])) == []
