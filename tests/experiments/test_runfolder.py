"""Run folders (experiments/runfolder.py): the resume point and its refusals, the refusal of options a resume
cannot change, digests and staging; the same functions serve train, sweep and finite-sweep."""

import json

import numpy as np
import pytest

from experiments import runfolder as RF
from experiments.fileio import load_npz, save_npz
from experiments.train import TrainConfig, TrainError, train

SMALL = dict(train_size=60, test_size=20, d0=3, dr=1, width=2, init_width=200, batch_size=10,
             eval_every=4, eval_size=30, lr=1.0)


def _run(tmp_path, steps=8, name="run"):
    return train(TrainConfig(steps=steps, **SMALL), tmp_path / name, log=lambda m: None)


def _point(out, steps):
    saved = json.loads((out / "config.json").read_text())
    return RF.resume_point(out, saved["config"], saved["data"], steps, SMALL["eval_every"])


def test_resume_point_of_a_finished_run(tmp_path):
    out = _run(tmp_path)
    state, done, metrics = _point(out, 12)
    assert done == 8 and int(state["t"]) == 8
    assert [int(r["step"]) for r in metrics] == [0, 4, 8]
    assert set(RF.DIGEST_KEYS) <= set(state)
    # the checkpoint's digests are those of its arrays, of config.json's options and of the rows it saw
    assert state["driver_state_sha256"].tobytes().hex() == RF.state_digest(state)
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert state["driver_config_sha256"].tobytes().hex() == RF.config_digest(cfg)
    assert state["driver_metrics_sha256"].tobytes().hex() == RF.metrics_digest(metrics, 8, 4)
    assert RF.checkpoint_step(out) == 8 and RF.good_checkpoint(out)[0] == 8
    with pytest.raises(TrainError, match="already at step 8"):
        _point(out, 7)


def test_resume_point_refuses_what_does_not_belong_to_the_run(tmp_path):
    out = _run(tmp_path)
    rows = (out / "metrics.csv").read_text().splitlines()
    (out / "metrics.csv").write_text("\n".join(rows[:-1]) + "\n")           # the row of step 8 lost
    with pytest.raises(TrainError, match="metrics.csv: its rows up to step 8 are not those recorded"):
        _point(out, 8)
    (out / "metrics.csv").write_text("\n".join(rows) + "\n")
    state = dict(load_npz(out / "checkpoint.npz"))
    state["A"] = state["A"] + 1.0                                             # edited arrays, old digest
    save_npz(out / "checkpoint.npz", state)
    with pytest.raises(TrainError, match="do not match their recorded digest"):
        _point(out, 8)
    (out / "checkpoint.npz").unlink()                                         # lost, though metrics go on
    with pytest.raises(TrainError, match="checkpoint.npz: missing, but metrics.csv has rows up to step 8"):
        _point(out, 8)


def test_the_digest_of_options_ignores_steps_and_locations_only():
    base = {"width": 3, "lr": 1.0, "steps": 10, "data_dir": "/a"}
    assert RF.config_digest(base) == RF.config_digest(dict(base, steps=99, data_dir="/b"))
    assert RF.config_digest(base) != RF.config_digest(dict(base, width=4))
    digest = RF.state_digest({"A": np.zeros((2, 2))})
    assert RF.digest_array(digest).tobytes().hex() == digest and RF.digest_array(digest).shape == (32,)


def test_one_refusal_of_options_a_resume_cannot_change():
    RF.refuse_resume_options(["steps", "data_dir"], "run", RF.RESUME_FIELDS)      # allowed: no error
    with pytest.raises(TrainError) as exc:
        RF.refuse_resume_options(["lr_f", "steps", "out"], "run", RF.RESUME_FIELDS)
    assert str(exc.value) == ("--lr-f, --out: a resumed run keeps its saved options (only --steps and --data-dir "
                              "may be given with --resume)")
    with pytest.raises(TrainError, match=r"^--seeds: a resumed sweep keeps its saved options \(only --steps, "
                                         r"--jobs and --scheduler may be given"):
        RF.refuse_resume_options(["seeds"], "sweep", ("steps", "jobs", "scheduler"))
    with pytest.raises(TrainError, match=r"\(only --widths may be given with --resume\)"):
        RF.refuse_resume_options(["force"], "finite sweep", ("widths",))


def test_folder_refusals(tmp_path):
    out = _run(tmp_path)
    with pytest.raises(TrainError, match="already holds a run .*config.json.*use --force"):
        RF.check_run_dir(out, force=False)
    assert "checkpoint.npz" in RF.check_run_dir(out, force=True)
    with pytest.raises(TrainError, match=r"^resume: .* holds no sweep \(sweep.json expected\)"):
        RF.require_record(out, "sweep.json", "sweep")
    (tmp_path / "elsewhere.csv").write_text("x\n")
    (out / "summary.json").unlink()
    (out / "summary.json").symlink_to(tmp_path / "elsewhere.csv")
    with pytest.raises(TrainError, match="summary.json: is a symbolic link inside"):
        RF.check_run_entries(out)
    with pytest.raises(TrainError, match="out: expected a directory path"):
        RF.check_out("  ")
    with RF.lock_folder(out):
        assert (out / RF.LOCK_FILE).read_text().split()[0].isdigit()
    assert not (out / RF.LOCK_FILE).exists()


def test_a_failed_start_leaves_nothing_and_an_old_run_stays_until_the_new_one_commits(tmp_path):
    ws = RF.Workspace(tmp_path / "a" / "b" / "run")
    (ws.dir / "config.json").write_text("{}")
    ws.abort()
    assert list(tmp_path.iterdir()) == []                           # created parents removed again
    out = _run(tmp_path)
    old = (out / "metrics.csv").read_bytes()
    (out / "notes.txt").write_text("mine")
    ws = RF.Workspace(out)
    (ws.dir / "metrics.csv").write_text("new")
    ws.publish_early()                                              # out holds a run: nothing is swapped yet
    assert (out / "metrics.csv").read_bytes() == old
    ws.commit()
    ws.lock.release()
    assert (out / "metrics.csv").read_text() == "new" and (out / "notes.txt").read_text() == "mine"
    assert not (out / "config.json").exists()                       # the old run's files went with it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]    # no staging folder left
