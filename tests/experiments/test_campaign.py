"""bottleneck campaign: the plan kept in the repository, the flop model, and a tiny campaign on the gpu
backend's NumPy stand-in (BOTTLENECK_GPU=standin) and on cpu: a budget cut, a continue, then the report."""

import json
import math

import pytest
from click.testing import CliRunner

import cli
from accel import gpu, standin
from experiments import campaign as C
from experiments import plots

TINY_PLAN = {
    "name": "tiny", "widths": ["inf", 3], "seeds": [0, 1],
    "defaults": {"batch_size": 10, "eval_size": 40, "init_width": 200},
    "verdict": {"rule": "experiments.plots.acceleration_verdict", "key": "train_loss", "step_fractions": [0.5, 1.0]},
    "conditions": [
        {"name": "gp-A", "options": {"dataset": "synthetic", "train_size": 40, "test_size": 20, "steps": 8,
                                     "eval_every": 2, "lr": 1}},
        {"name": "gp-C", "seeds": [0], "options": {"dataset": "synthetic", "train_size": 40, "test_size": 20,
                                                   "steps": 8, "eval_every": 2, "lr": 2, "out_std": 0.5}},
    ]}


def test_the_repository_plan_is_the_issue_order():
    plan = C.load_plan()
    names = [c["name"] for c in plan["conditions"]]
    assert names[:9] == ["mnist-C0.3", "mnist-A", "mnist-B", "cifar-C0.3", "cifar-A", "mi2-32-C0.3", "mi2-32-A",
                         "gp-C0.3", "gp-A"]
    assert len(names) > 9                                       # then the rest of Part 5
    assert plan["widths"] == ["inf", 50, 100, 200, 500, 1000] and plan["seeds"] == [0, 1, 2, 3, 4]
    opts = {c["name"]: c["options"] for c in plan["conditions"]}
    assert opts["mnist-A"]["train_size"] == 60000 and opts["mnist-A"]["steps"] == 4000
    assert opts["mnist-B"]["center"] is True and opts["cifar-A"]["dataset"] == "cifar"
    for name, base in (("mnist-C0.3", "mnist-A"), ("mi2-32-C0.3", "mi2-32-A"), ("gp-C0.3", "gp-A")):
        # small initialisation: the (a) rate x out_std^-4 (the matched rate), times 1/4
        s = opts[name]["out_std"]
        assert math.isclose(opts[name]["lr"], opts[base]["lr"] * s ** -4 / 4, rel_tol=1e-6)
    module, fn = plan["verdict"]["rule"].rsplit(".", 1)
    assert module == "experiments.plots" and getattr(plots, fn) is plots.acceleration_verdict
    for part, fn in (("inconclusive", plots.inconclusive_sweep), ("descriptive", plots.first_step_all_below)):
        module, name = plan["verdict"][part]["function"].rsplit(".", 1)
        assert module == "experiments.plots" and getattr(plots, name) is fn
    assert plan["verdict"]["inconclusive"]["level"] == plots.INCONCLUSIVE_LEVEL
    runs = C.planned_runs(plan)
    assert len(runs) == sum(len(c.get("widths", plan["widths"])) * 5 for c in plan["conditions"])
    first = [(r["condition"], r["seed"], r["width"]) for r in runs[:7]]
    assert first == [("mnist-C0.3", 0, w) for w in plan["widths"]] + [("mnist-C0.3", 1, "inf")]


def test_flop_model():
    base = {"dataset": "mnist", "train_size": 60000, "test_size": 10000, "steps": 4000, "eval_every": 100,
            "eval_size": 2000, "batch_size": 20}
    f50 = C.run_flops({**base, "width": 50})
    # docs/REPRODUCTION.md: 1.3e13 for this run at d = 50
    assert 0.5 < f50 / 1.3e13 < 2
    assert C.run_flops({**base, "width": "inf"}) < f50 < C.run_flops({**base, "width": 200})
    short = C.run_flops({**base, "width": 50, "steps": 2000, "train_size": 1, "test_size": 1, "eval_size": 1})
    long_ = C.run_flops({**base, "width": 50, "steps": 4000, "train_size": 1, "test_size": 1, "eval_size": 1})
    assert 3.9 < long_ / short < 4.1                              # the history term grows with steps squared
    assert C.estimate_s({**base, "width": 50}, 1000.0, 5.0) == pytest.approx(5.0 + f50 / 1e12)


def _invoke(args):
    return CliRunner().invoke(cli.cli, args)


@pytest.fixture
def plan_file(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(TINY_PLAN))
    return str(path)


@pytest.fixture
def standin_gpu(monkeypatch):
    """--backend gpu on the NumPy stand-in, here and in the subprocesses; the probe forgotten after
    (a cached stand-in probe would make "auto" pick the gpu in later tests)."""
    monkeypatch.setenv(gpu.STANDIN_ENV, "standin")
    gpu.reset()
    yield
    monkeypatch.delenv(gpu.STANDIN_ENV, raising=False)
    gpu.reset()


@pytest.mark.skipif(standin.compiler() is None, reason="needs a host C compiler (gcc)")
def test_tiny_campaign_budget_cut_continue_and_report(tmp_path, plan_file, standin_gpu):
    out = tmp_path / "camp"
    common = ["campaign", "--out", str(out), "--plan", plan_file, "--backend", "gpu"]
    # 1. nothing fits: at 1e-9 GFLOP/s every estimate exceeds the budget; no run starts
    res = _invoke([*common, "--budget", "30", "--gflops", "1e-9"])
    assert res.exit_code == 0, res.output
    state = json.loads((out / "campaign.json").read_text())
    assert state["runs"] == {} and len(state["sessions"][0]["skipped"]) == 6
    assert all("estimate" in s["why"] for s in state["sessions"][0]["skipped"])
    # 2. a session cut after three runs
    res = _invoke([*common, "--budget", "600", "--max-runs", "3"])
    assert res.exit_code == 0, res.output
    state = json.loads((out / "campaign.json").read_text())
    first = state["sessions"][-1]["ran"]
    assert first == ["gp-A/width-inf/seed-0", "gp-A/width-3/seed-0", "gp-A/width-inf/seed-1"]
    for rid in first:
        rec = state["runs"][rid]
        assert rec["status"] == "done" and rec["backend"] == "gpu" and rec["wall_s"] > 0 and rec["train_s"] > 0
        assert (out / rid / "summary.json").exists() and (out / rid / "metrics.csv").exists()
        assert not (out / rid / "checkpoint.npz").exists()
    assert json.loads((out / first[0] / "config.json").read_text())["config"]["backend"] == "gpu"
    mtimes = {rid: (out / rid / "summary.json").stat().st_mtime_ns for rid in first}
    # 3. the same folder again: what is done is skipped, the rest runs
    res = _invoke([*common, "--budget", "600"])
    assert res.exit_code == 0, res.output
    state = json.loads((out / "campaign.json").read_text())
    again = state["sessions"][-1]["ran"]
    assert len(again) == 3 and not set(again) & set(first) and state["sessions"][-1]["left"] == 0
    assert all((out / rid / "summary.json").stat().st_mtime_ns == t for rid, t in mtimes.items())
    assert not list(out.rglob("checkpoint.npz"))
    # 4. the report, from what has run
    res = _invoke(["campaign", "report", str(out), "--plan", plan_file])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    by = {c["condition"]: c for c in rep["conditions"]}
    runs = plots.load_sweep(out / "gp-A")
    steps = C._verdict_steps(runs, [0.5, 1.0])
    assert steps == [4, 8] and by["gp-A"]["steps"] == steps
    assert by["gp-A"]["verdict"] == plots.acceleration_verdict(runs, steps)[0]
    assert by["gp-A"]["done"] == 4 and by["gp-C"]["done"] == 2 and by["gp-C"]["widths"] == {"3": 1, "inf": 1}
    md = (out / "report.md").read_text()
    assert f"| gp-A | 4/4 | 3 (2), inf (2) | {by['gp-A']['verdict']} |" in md
    # the plan's label and descriptive statistic, as experiments.plots computes them
    assert by["gp-A"]["first_step_all_below"] == plots.first_step_all_below(plots.seed_ranges(runs))
    assert by["gp-A"]["inconclusive"] is False and "| learned |" in md
    for cond in ("gp-A", "gp-C"):
        assert (out / cond / "tables.md").exists() and (out / cond / "loss.png").exists()
    size = C.folder_bytes(out)
    assert size == rep["output_bytes"] and size < 5 * 2**20       # compact: well under 50 MB at paper scale
    print(f"tiny stand-in campaign: 6 runs, output {size / 1024:.0f} KiB")


def _long_plan(tmp_path, eval_every, checkpoint_every=None):
    """One run of 100,000 steps: every session's budget cuts it."""
    options = {"dataset": "synthetic", "train_size": 40, "test_size": 20, "steps": 100000, "eval_every": eval_every,
               "lr": 1, **({"checkpoint_every": checkpoint_every} if checkpoint_every else {})}
    plan = dict(TINY_PLAN, widths=[3], seeds=[0], conditions=[{"name": "long", "options": options}])
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return str(path)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("gpu", marks=pytest.mark.skipif(
    standin.compiler() is None, reason="needs a host C compiler (gcc)"))])
def test_a_cut_run_continues_from_its_checkpoint_next_session(tmp_path, backend, request):
    """A run longer than the budget (started by --partial although its estimate exceeds it) is cut,
    keeps its folder and checkpoint, and the next session continues it from there: no step is redone.
    On the cpu and on the gpu backend (the NumPy stand-in): a budget cut, a continue, then the report."""
    if backend == "gpu":
        request.getfixturevalue("standin_gpu")
    # on the gpu a campaign checkpoints every quarter of a run unless the plan says otherwise (here: 25)
    path, out = _long_plan(tmp_path, eval_every=25, checkpoint_every=25 if backend == "gpu" else None), tmp_path / "c"
    reached = []
    for session in range(2):
        res = _invoke(["campaign", "--out", str(out), "--plan", path, "--backend", backend, "--budget", "10",
                       "--gflops", "1e-6", "--partial"])
        assert res.exit_code == 0, res.output
        state = json.loads((out / "campaign.json").read_text())
        rec = state["runs"]["long/width-3"]
        assert state["sessions"][-1]["cut"] == ["long/width-3"] and rec["status"] == "cut"
        assert rec["step"] > 0 and rec["step"] % 25 == 0
        # the history checkpoint waits beside the output folder, which holds compact results only
        assert not list(out.rglob("checkpoint.npz")) and (tmp_path / "c.resume/long/width-3/checkpoint.npz").exists()
        assert C.resume_store(out) == tmp_path / "c.resume" and str(C.resume_store(out)) in res.output
        reached.append(rec["step"])
        if session == 1:
            assert f"from step {reached[0]}" in res.output and "continues from its checkpoint" in res.output
    assert reached[1] > reached[0]
    steps = [int(r["step"]) for r in C.read_csv(out / "long/width-3/metrics.csv")]
    assert steps == sorted(set(steps)) and steps[0] == 0          # continued, not restarted
    assert state["runs"]["long/width-3"]["backend"] == backend
    res = _invoke(["campaign", "report", str(out), "--plan", path, "--no-figures"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["conditions"][0]["done"] == 0 and "long" in (out / "report.md").read_text()
    # the cut run is not a result: the condition's tables and figures leave it out
    assert json.loads((out / "long" / "sweep.json").read_text())["runs"] == []
    assert rep["conditions"][0]["verdict"] is None and not (out / "long" / "tables.md").exists()
    assert not C.is_done(out, state, {"id": "long/width-3", "dir": "long/width-3", "options": {}})
    # without its parked checkpoint the cut run starts again from step 0
    (tmp_path / "c.resume/long/width-3/checkpoint.npz").unlink()
    res = _invoke(["campaign", "--out", str(out), "--plan", path, "--backend", "cpu", "--budget", "8",
                   "--gflops", "1e-6", "--partial"])
    assert res.exit_code == 0 and "from the start" in res.output, res.output
    # without --partial the estimate (1e-6 GFLOP/s) keeps it from starting
    res = _invoke(["campaign", "--out", str(out), "--plan", path, "--backend", "cpu", "--budget", "6",
                   "--gflops", "1e-6"])
    assert res.exit_code == 0 and "skip long/width-3: estimate" in res.output


def test_a_run_that_outlasts_the_budget_before_its_first_checkpoint_is_removed(tmp_path):
    path = _long_plan(tmp_path, eval_every=50000)
    out = tmp_path / "c"
    # estimated at start-up time only (1e6 GFLOP/s), so it starts; the budget then stops it
    res = _invoke(["campaign", "--out", str(out), "--plan", path, "--backend", "cpu", "--budget", "8",
                   "--gflops", "1e6"])
    assert res.exit_code == 0, res.output
    state = json.loads((out / "campaign.json").read_text())
    assert state["sessions"][0]["cut"] == ["long/width-3"] and state["runs"] == {}
    assert not (out / "long" / "width-3").exists()
    assert "1 cut by the budget" in res.output


def test_checkpoints_every_evaluation_on_the_cpu_and_every_quarter_on_the_gpu():
    opts = {"steps": 4000, "eval_every": 100}
    assert C.checkpoint_every(opts, "cpu") is None and C.checkpoint_every(opts, "numpy") is None
    assert C.checkpoint_every(opts, "gpu") == 1000
    assert C.checkpoint_every({"steps": 15000, "eval_every": 100}, "gpu") == 3700
    assert C.checkpoint_every({"steps": 8, "eval_every": 4}, "gpu") == 4
    assert C.checkpoint_every({**opts, "checkpoint_every": 300}, "gpu") == 300


def test_campaign_bad_input_is_one_line(tmp_path, plan_file):
    res = _invoke(["campaign", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--budget SECONDS and --out DIR are required" in res.output
    res = _invoke(["campaign", "--out", str(tmp_path / "x"), "--budget", "-1"])
    assert res.exit_code == 2 and "budget: expected a positive number" in res.output
    res = _invoke(["campaign", "--out", str(tmp_path / "x"), "--budget", "5", "--plan", plan_file,
                   "--only", "nope", "--backend", "cpu"])
    assert res.exit_code == 2 and "only: unknown conditions ['nope']" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(TINY_PLAN, conditions=[{"name": "a", "options": {"lr": 1, "colour": 3}}])))
    res = _invoke(["campaign", "--out", str(tmp_path / "x"), "--budget", "5", "--plan", str(bad)])
    assert res.exit_code == 2 and "unknown options ['colour']" in res.output
    res = _invoke(["campaign", "report", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "holds no campaign" in res.output
    assert "Traceback" not in res.output


def test_done_from_takes_the_finished_runs_of_another_campaign_folder(tmp_path, plan_file):
    """--done-from DIR: the runs finished there are copied in (files and records) and not run again; a run the
    output already has is left alone; a folder that is no campaign, or --out itself, is a one-line error."""
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--plan", plan_file, "--backend", "cpu", "--gflops", "1e6"]
    res = _invoke(["campaign", "--out", str(first), "--budget", "300", "--max-runs", "2", *common])
    assert res.exit_code == 0, res.output
    done = json.loads((first / "campaign.json").read_text())["sessions"][-1]["ran"]
    assert len(done) == 2
    res = _invoke(["campaign", "--out", str(second), "--budget", "300", "--max-runs", "1", "--done-from", str(first),
                   *common])
    assert res.exit_code == 0, res.output
    assert "2 finished run(s) taken from" in res.output
    state = json.loads((second / "campaign.json").read_text())
    session = state["sessions"][-1]
    assert session["imported"] == 2 and session["done_before"] == 2 and len(session["ran"]) == 1
    assert not set(session["ran"]) & set(done)
    for rid in done:
        assert state["runs"][rid]["status"] == "done" and state["runs"][rid]["imported_from"] == str(first)
        assert (second / rid / "summary.json").read_bytes() == (first / rid / "summary.json").read_bytes()
    assert not list(second.rglob("*.importing"))
    res = _invoke(["campaign", "--out", str(second), "--budget", "300", "--max-runs", "1", "--done-from", str(first),
                   *common])                                  # again: nothing more to take, the next run runs
    assert res.exit_code == 0 and "taken from" not in res.output
    assert json.loads((second / "campaign.json").read_text())["sessions"][-1]["imported"] == 0
    for bad, why in ((tmp_path / "nothing", "holds no campaign"), (second, "is the campaign folder itself")):
        res = _invoke(["campaign", "--out", str(second), "--budget", "5", "--done-from", str(bad), *common])
        assert res.exit_code == 2 and f"done-from: {bad} {why}" in res.output and "Traceback" not in res.output


def test_the_tensor_cores_follow_the_calibration_unless_the_variable_is_set():
    """A gpu / float64 session takes the FP64 tensor cores when its calibration step ran at least x1.05 faster on
    them; BOTTLENECK_TENSOR_CORES, where set, decides instead; other backends and dtypes are left alone."""
    state = {"calibration": {"gpu/float64/tensor_core_speedup": 1.4}}
    assert C.choose_tensor_cores(state, "gpu", "float64", env={})[0] is True
    assert C.choose_tensor_cores(state, "gpu", "float32", env={}) == (None, None)
    assert C.choose_tensor_cores(state, "cpu", "float64", env={}) == (None, None)
    use, why = C.choose_tensor_cores(state, "gpu", "float64", env={"BOTTLENECK_TENSOR_CORES": "0"})
    assert use is None and "BOTTLENECK_TENSOR_CORES=0" in why
    slow = {"calibration": {"gpu/float64/tensor_core_speedup": 1.02}}
    use, why = C.choose_tensor_cores(slow, "gpu", "float64", env={})
    assert use is None and "off" in why and "x1.02" in why
    assert C.choose_tensor_cores({}, "gpu", "float64", env={}) == (None, None)


@pytest.mark.skipif(standin.compiler() is None, reason="needs a host C compiler (gcc)")
def test_a_gpu_campaign_runs_on_the_tensor_cores_its_calibration_chose(tmp_path, plan_file, standin_gpu,
                                                                       monkeypatch):
    """The calibration (here a stand-in of it reporting x1.5) makes the session's runs use the tensor cores: their
    config.json says so, and campaign.json keeps the speedup and the session's reason."""
    monkeypatch.delenv("BOTTLENECK_TENSOR_CORES", raising=False)
    monkeypatch.setattr(C, "calibrate", lambda backend, dtype="float64", log=print: (50.0, 0.01, 1.5))
    out = tmp_path / "camp"
    res = _invoke(["campaign", "--out", str(out), "--plan", plan_file, "--backend", "gpu", "--budget", "300",
                   "--max-runs", "1"])
    assert res.exit_code == 0, res.output
    assert "FP64 tensor cores on: the calibration step ran x1.50 faster on them" in res.output
    state = json.loads((out / "campaign.json").read_text())
    assert state["calibration"]["gpu/float64/tensor_core_speedup"] == 1.5
    assert state["sessions"][-1]["tensor_cores"].startswith("FP64 tensor cores on")
    rid = state["sessions"][-1]["ran"][0]
    assert json.loads((out / rid / "config.json").read_text())["engine"] == {"fp64_tensor_cores": True}


def test_a_divergence_is_a_result_an_error_is_retried(tmp_path):
    plan = dict(TINY_PLAN, widths=[3], seeds=[0, 1], conditions=[
        {"name": "boom", "options": {"dataset": "synthetic", "train_size": 40, "test_size": 20, "steps": 6,
                                     "eval_every": 2, "lr": 1e9}},
        {"name": "nodata", "options": {"dataset": "mnist", "train_size": 40, "test_size": 20, "steps": 6,
                                       "eval_every": 2, "lr": 1}}])
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    out = tmp_path / "c"
    common = ["campaign", "--out", str(out), "--plan", str(path), "--backend", "cpu", "--budget", "300",
              "--gflops", "1e6", "--data-dir", str(tmp_path / "no-data")]
    res = _invoke(common)
    assert res.exit_code == 0, res.output
    state = json.loads((out / "campaign.json").read_text())
    runs = state["runs"]
    assert runs["boom/width-3/seed-0"]["status"] == runs["boom/width-3/seed-1"]["status"] == "diverged"
    assert "diverged" in runs["boom/width-3/seed-0"]["error"]
    assert runs["nodata/width-3/seed-0"]["status"] == "error" and "nodata/width-3/seed-1" not in runs
    assert "mnist" in runs["nodata/width-3/seed-0"]["error"].lower()
    skipped = {s["id"]: s["why"] for s in state["sessions"][0]["skipped"]}
    assert skipped["nodata/width-3/seed-1"].startswith("its condition failed")
    res = _invoke(common)                                        # again: the divergences stay, the error is retried
    state = json.loads((out / "campaign.json").read_text())
    assert state["sessions"][-1]["ran"] == ["nodata/width-3/seed-0"]
    rep = json.loads((out / "report.json").read_text())
    assert len(rep["diverged"]) == 2 and [e[0] for e in rep["errors"]] == ["nodata/width-3/seed-0"]
    assert not list(out.rglob("checkpoint.npz"))
