"""`cli.py sweep` and experiments.sweep: layout, parallel workers, resume, failures, Dask."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from clihelpers import one_line_error
from experiments.fileio import load_npz
from experiments.runfolder import run_state
from experiments.train import TrainConfig, TrainError, train
from experiments.validate import parse_seeds, parse_widths

TINY = ["--train-size", "40", "--test-size", "20", "--d0", "3", "--init-width", "200", "--batch-size", "10",
        "--eval-every", "3", "--eval-size", "40", "--lr", "1.0"]


def _sweep(*args):
    return CliRunner().invoke(cli.cli, ["sweep", *TINY, *args])


def _rows(path):
    with open(path / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _record(out):
    return json.loads((out / "sweep.json").read_text())


def test_sweep_layout_seeds_and_figures(tmp_path):
    out = tmp_path / "sw"
    res = _sweep("--widths", "inf,3", "--seeds", "0,1", "--steps", "7", "-j", "1", "--out", str(out))
    assert res.exit_code == 0, res.output
    rec = _record(out)
    assert [(r["width"], r["seed"], r["dir"], r["status"]) for r in rec["runs"]] == [
        (3, 0, "width-3/seed-0", "done"), (3, 1, "width-3/seed-1", "done"),
        ("inf", 0, "width-inf/seed-0", "done"), ("inf", 1, "width-inf/seed-1", "done")]
    for r in rec["runs"]:
        run = out / r["dir"]
        for name in ("config.json", "metrics.csv", "checkpoint.npz", "summary.json"):
            assert (run / name).is_file(), (r["dir"], name)
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["config"]["width"] == r["width"] and cfg["config"]["seed"] == r["seed"]
        assert _rows(run)[-1]["step"] == "7"
    # a seed changes the initial functions, not the data
    cfg0, cfg1 = (json.loads((out / f"width-3/seed-{s}/config.json").read_text()) for s in (0, 1))
    assert cfg0["data"] == cfg1["data"]
    assert _rows(out / "width-3/seed-0")[0]["train_loss"] != _rows(out / "width-3/seed-1")[0]["train_loss"]
    for name in ("loss.png", "heatmap.png", "train_vs_test.png", "features.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_single_seed_layout_and_parallel_workers_match_serial(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--widths", "2,inf", "--seeds", "3", "--steps", "5", "--no-plot"]
    assert _sweep(*common, "-j", "2", "--out", str(a)).exit_code == 0      # spawned worker processes
    assert _sweep(*common, "-j", "1", "--out", str(b)).exit_code == 0      # in this process
    assert sorted(p.name for p in a.iterdir()) == ["sweep.json", "width-2", "width-inf"]
    for w in ("width-2", "width-inf"):
        sa, sb = load_npz(a / w / "checkpoint.npz"), load_npz(b / w / "checkpoint.npz")
        for key in sa:
            if key != "driver_wall_s":
                assert np.array_equal(sa[key], sb[key]), (w, key)


def test_resume_skips_finished_runs_and_continues_the_others(tmp_path):
    out = tmp_path / "sw"
    assert _sweep("--widths", "2,4", "--seeds", "0,1", "--steps", "6", "-j", "1", "--no-plot",
                  "--out", str(out)).exit_code == 0
    done = out / "width-2/seed-0"
    stamp = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in done.iterdir()}
    # one run interrupted at step 3: rewrite it as the same run stopped there
    cut = out / "width-4/seed-1"
    saved = json.loads((cut / "config.json").read_text())["config"]
    train(TrainConfig.from_json(dict(saved, steps=3)), cut, force=True, log=lambda m: None)
    assert run_state(cut, 6) == "resume"
    res = CliRunner().invoke(cli.cli, ["sweep", "--resume", str(out), "--no-plot", "-j", "1"])
    assert res.exit_code == 0, res.output
    assert "1 already finished" not in res.output and "3 already finished" in res.output
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in done.iterdir()} == stamp   # not rerun
    actions = {r["dir"]: r["action"] for r in _record(out)["runs"]}
    assert actions == {"width-2/seed-0": "skipped", "width-2/seed-1": "skipped",
                       "width-4/seed-0": "skipped", "width-4/seed-1": "resumed"}
    # extend the whole sweep: every run continues from its checkpoint, bit for bit as a fresh 9-step sweep
    assert CliRunner().invoke(cli.cli, ["sweep", "--resume", str(out), "--steps", "9", "--no-plot",
                                        "-j", "1"]).exit_code == 0
    fresh = tmp_path / "fresh"
    assert _sweep("--widths", "2,4", "--seeds", "0,1", "--steps", "9", "-j", "1", "--no-plot",
                  "--out", str(fresh)).exit_code == 0
    for r in _record(out)["runs"]:
        sa, sb = load_npz(out / r["dir"] / "checkpoint.npz"), load_npz(fresh / r["dir"] / "checkpoint.npz")
        assert int(sa["t"]) == 9
        for key in sa:
            if key != "driver_wall_s":
                assert np.array_equal(sa[key], sb[key]), (r["dir"], key)
        keys = ("step", "train_loss", "test_loss", "feature_movement")
        assert [[x[k] for k in keys] for x in _rows(out / r["dir"])] == \
               [[x[k] for k in keys] for x in _rows(fresh / r["dir"])]


def test_failed_run_is_recorded_and_does_not_stop_the_sweep(tmp_path):
    out = tmp_path / "sw"
    assert _sweep("--widths", "2,inf", "--seeds", "0", "--steps", "4", "-j", "1", "--no-plot",
                  "--out", str(out)).exit_code == 0
    broken = out / "width-2"
    (broken / "summary.json").unlink()
    (broken / "checkpoint.npz").write_bytes(b"not an npz file")
    res = CliRunner().invoke(cli.cli, ["sweep", "--resume", str(out), "--steps", "8", "-j", "1"])
    line = one_line_error(res)
    assert "1 of 2 runs failed" in line and "width-2" in line
    rec = {r["dir"]: r for r in _record(out)["runs"]}
    assert rec["width-2"]["status"] == "failed" and rec["width-2"]["error"]
    assert rec["width-inf"]["status"] == "done"
    assert _rows(out / "width-inf")[-1]["step"] == "8"       # the other run went on
    assert (out / "loss.png").exists()                       # and the figures were still made


def test_diverging_runs_fail_without_traceback(tmp_path):
    res = _sweep("--widths", "2", "--seeds", "0,1", "--steps", "40", "--lr", "1e7", "-j", "1", "--no-plot",
                 "--out", str(tmp_path / "sw"))
    line = one_line_error(res)
    assert "2 of 2 runs failed" in line and "diverged" in line


@pytest.mark.parametrize("args, word", [
    (["--widths", "0,3"], "widths"), (["--widths", "3,abc"], "widths"), (["--widths", "3,3"], "widths"),
    (["--seeds", "-1"], "seeds"), (["--seeds", ""], "seeds"), (["--batch-size", "1000"], "batch_size"),
])
def test_bad_options_one_line(tmp_path, args, word):
    res = _sweep("--steps", "2", "--out", str(tmp_path / "sw"), *args)
    assert word in one_line_error(res)


def test_existing_sweep_needs_force_and_resume_keeps_options(tmp_path):
    out = str(tmp_path / "sw")
    base = ["--widths", "2", "--steps", "3", "-j", "1", "--no-plot", "--out", out]
    assert _sweep(*base).exit_code == 0
    assert "--force" in one_line_error(_sweep(*base))
    assert _sweep(*base, "--force").exit_code == 0
    res = CliRunner().invoke(cli.cli, ["sweep", "--resume", out, "--lr", "3"])
    assert "--lr" in one_line_error(res)


def test_parsers_and_run_state(tmp_path):
    assert parse_widths("inf, 10,2") == ["inf", 10, 2]
    assert parse_seeds("0,2") == [0, 2]
    with pytest.raises(TrainError, match="widths"):
        parse_widths("1.5")
    assert run_state(tmp_path / "nothing", 5) == "fresh"


def test_dask_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                                  host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        res = _sweep("--widths", "2,inf", "--seeds", "0", "--steps", "4", "--no-plot",
                     "--scheduler", cluster.scheduler_address, "--out", str(tmp_path / "sw"))
    assert res.exit_code == 0, res.output
    rec = _record(tmp_path / "sw")
    assert [r["status"] for r in rec["runs"]] == ["done", "done"]
    assert _rows(tmp_path / "sw" / "width-2")[-1]["step"] == "4"


def test_dask_unreachable_scheduler_one_line(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr("experiments.pool.DASK_CONNECT_TIMEOUT", "1s")
    res = _sweep("--widths", "2", "--steps", "2", "--scheduler", "tcp://127.0.0.1:9",
                 "--out", str(tmp_path / "sw"))
    assert "scheduler" in one_line_error(res)


def test_thread_env_is_fixed_at_creation_and_kept_on_resume(tmp_path, monkeypatch):
    # -j 2 then a resume with -j 1 gave different last digits: BLAS threads change the rounding
    from experiments.pool import THREAD_VARS, default_jobs
    for var in THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")        # the user's setting is kept as given
    out = tmp_path / "sw"
    assert _sweep("--widths", "2", "--steps", "3", "-j", "2", "--no-plot", "--out", str(out)).exit_code == 0
    env = _record(out)["thread_env"]
    assert env["NUMBA_NUM_THREADS"] == "1"
    assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] == str(max(1, default_jobs() // 1))  # 1 run
    monkeypatch.setenv("NUMBA_NUM_THREADS", "7")
    res = CliRunner().invoke(cli.cli, ["sweep", "--resume", str(out), "--steps", "5", "-j", "1", "--no-plot"])
    assert res.exit_code == 0, res.output
    assert _record(out)["thread_env"] == env


def test_a_run_saved_before_the_optimiser_options_matches_its_sweep(tmp_path):
    """A config.json written before --momentum / --nesterov / --lr-schedule existed (no such keys) is the
    plain SGD run: the sweep's resume check takes the legacy values, not a difference (it refused every
    sweep made before those options)."""
    import dataclasses

    from experiments.sweep import _other_options
    cfg = TrainConfig(steps=8, width=4, d0=3, train_size=60, test_size=20)
    cfg.validate()
    old = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("momentum", "nesterov", "lr_schedule")}
    (tmp_path / "config.json").write_text(json.dumps({"config": old}))
    assert _other_options(tmp_path, cfg) == []
    (tmp_path / "config.json").write_text(json.dumps({"config": dict(old, momentum=0.5)}))
    assert _other_options(tmp_path, cfg) == ["momentum"]
