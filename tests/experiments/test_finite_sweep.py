"""Appendix-F sweep of finite networks and the finite-against-infinite check (experiments/finite_sweep.py, cli.py)."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from refimpl.finite import FiniteNetwork
from experiments.finite_sweep import (
    PAPER_WIDTHS, SweepConfig, gap_check, gap_table, output_gap,
    parse_widths, relative_gap,
)
from experiments.evaluation import evaluate_network
from experiments.loop import batch_indices
from experiments.memory import finite_memory_estimate
from experiments.train import TrainError

TINY = ["--dataset", "synthetic", "--train-size", "40", "--test-size", "20", "--d0", "3", "--dr", "2",
        "--hidden", "200", "--steps", "10", "--batch-size", "5", "--eval-every", "4", "--lr", "0.5"]


def _invoke(args):
    return CliRunner().invoke(cli.cli, args, catch_exceptions=False)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_sweep_outputs_and_values(tmp_path):
    out = tmp_path / "sw"
    res = _invoke(["finite-sweep", *TINY, "--widths", "3,1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("config.json", "summary.json", "summary.csv", "finite-losses.png", "finite-final.png"):
        assert (out / name).is_file(), name
    for d in (1, 3):
        rows = _rows(out / f"width-{d:05d}" / "metrics.csv")
        assert list(rows[0]) == ["step", "train_loss", "test_loss", "train_err", "test_err", "wall_s"]
        assert [int(r["step"]) for r in rows] == [0, 4, 8, 10]
        assert all(r["train_err"] == "" for r in rows)            # regression: no error rate
        assert json.loads((out / f"width-{d:05d}" / "result.json").read_text())["status"] == "done"
    summary = json.loads((out / "summary.json").read_text())
    assert [r["width"] for r in summary["widths"]] == [1, 3]

    # the recorded metrics are those of the same network trained by hand on the same batches
    from experiments.data import load_dataset
    ds = load_dataset("synthetic", train_size=40, test_size=20, seed=0, d0=3, dr=2)
    net = FiniteNetwork.sample(3, 3, 2, width=200, seed=0)
    for t in range(10):
        idx = batch_indices(0, t, 40, 5)
        net.step(ds.X_train[idx], ds.Y_train[idx], lr=0.5)
    F = net.outputs(ds.X_test)
    want = 0.5 * np.mean(np.sum((F - ds.Y_test) ** 2, axis=1))
    got = float(_rows(out / "width-00003" / "metrics.csv")[-1]["test_loss"])
    assert got == pytest.approx(want, rel=1e-12)


def test_resume_skips_finished_widths(tmp_path):
    out = tmp_path / "sw"
    assert _invoke(["finite-sweep", *TINY, "--widths", "2", "--out", str(out)]).exit_code == 0
    done = out / "width-00002" / "result.json"
    before = (done.stat().st_mtime_ns, done.read_bytes(), (out / "width-00002" / "metrics.csv").read_bytes())
    # an interrupted size: metrics written but no result.json -> trained again from step 0
    (out / "width-00004").mkdir()
    (out / "width-00004" / "metrics.csv").write_text("step\n0\n")
    res = _invoke(["finite-sweep", "--resume", str(out), "--widths", "4"])
    assert res.exit_code == 0, res.output
    assert "d=2: already finished, skipped" in res.output
    after = (done.stat().st_mtime_ns, done.read_bytes(), (out / "width-00002" / "metrics.csv").read_bytes())
    assert after == before
    assert [int(r["step"]) for r in _rows(out / "width-00004" / "metrics.csv")] == [0, 4, 8, 10]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["width"] for r in summary["widths"]] == [2, 4]
    assert json.loads((out / "config.json").read_text())["config"]["widths"] == [2, 4]


def test_refuses_existing_sweep_and_force_restarts(tmp_path):
    out = tmp_path / "sw"
    assert _invoke(["finite-sweep", *TINY, "--widths", "2", "--out", str(out)]).exit_code == 0
    res = _invoke(["finite-sweep", *TINY, "--widths", "5", "--out", str(out)])
    assert res.exit_code != 0 and "--force" in res.output and "Traceback" not in res.output
    assert _invoke(["finite-sweep", *TINY, "--widths", "5", "--out", str(out), "--force"]).exit_code == 0
    assert not (out / "width-00002").exists() and (out / "width-00005" / "result.json").exists()


@pytest.mark.parametrize("args, needle", [
    (["--widths", "1,x"], "widths"),
    (["--widths", "0,2"], "widths"),
    (["--widths", ""], "widths"),
    (["--hidden", "0"], "hidden"),
    (["--lr", "-1"], "lr"),
    (["--batch-size", "100"], "batch_size"),
    (["--backend", "tpu"], "backend"),
])
def test_bad_options_one_line(tmp_path, args, needle):
    res = _invoke(["finite-sweep", *TINY, "--out", str(tmp_path / "x"), *args])
    assert res.exit_code != 0
    msg = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert len(msg) == 1 and needle in msg[0].replace("-", "_"), res.output
    assert "Traceback" not in res.output


def test_resume_rejects_other_options(tmp_path):
    out = tmp_path / "sw"
    assert _invoke(["finite-sweep", *TINY, "--widths", "2", "--out", str(out)]).exit_code == 0
    res = _invoke(["finite-sweep", "--resume", str(out), "--lr", "3"])
    assert res.exit_code != 0 and "--lr" in res.output
    res = _invoke(["finite-sweep", "--resume", str(tmp_path)])
    assert res.exit_code != 0 and "config.json" in res.output


def test_gpu_backend_absent_is_one_line(tmp_path, monkeypatch):
    """Without CuPy (hidden here, so the test runs where CuPy is installed too, as in CI)."""
    import sys
    from accel import gpu
    monkeypatch.delenv(gpu.STANDIN_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "cupy", None)
    gpu.reset()
    try:
        res = _invoke(["finite-sweep", *TINY, "--out", str(tmp_path / "g"), "--backend", "gpu"])
    finally:
        monkeypatch.undo()
        gpu.reset()
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "backend: 'gpu' is unavailable: CuPy is not installed" in res.output
    assert not (tmp_path / "g").exists()


def test_divergence_is_recorded_and_reported(tmp_path):
    out = tmp_path / "sw"
    res = _invoke(["finite-sweep", *TINY, "--widths", "2", "--lr", "1e6", "--out", str(out)])
    assert res.exit_code != 0 and "diverged" in res.output
    result = json.loads((out / "width-00002" / "result.json").read_text())
    assert result["status"] == "diverged"
    assert json.loads((out / "summary.json").read_text())["diverged"] == [2]


def test_error_rate_is_one_minus_accuracy():
    class Fixed:                      # a stand-in network whose outputs are given
        def __init__(self, F):
            self.F = F

        def outputs(self, X):
            return self.F[: len(X)]

    class Data:
        X_train = np.zeros((4, 1))
        Y_train = np.eye(3)[[0, 1, 2, 0]]
        labels_train = np.array([0, 1, 2, 0])
        X_test, Y_test, labels_test = X_train, Y_train, labels_train

    F = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 0, 2.0], [0.2, 0.1, 0]])
    m = evaluate_network(Fixed(F), Data, np.arange(4))
    assert m["test_err"] == pytest.approx(0.25)          # row 1 predicts class 2, label 1
    assert m["test_loss"] == pytest.approx(0.5 * np.mean(np.sum((F - Data.Y_test) ** 2, axis=1)))


def test_parse_widths_and_memory():
    assert parse_widths("8, 2,2,1") == (1, 2, 8)
    assert parse_widths("paper") == PAPER_WIDTHS and len(PAPER_WIDTHS) == 36 and PAPER_WIDTHS[-1] == 9000
    with pytest.raises(TrainError, match="widths"):
        parse_widths("1,-2")
    # theta1 of MNIST at n = 1e5 is 627 MB; weights + gradients of the whole network at d = 1 about 1.3 GB
    est = finite_memory_estimate(784, 1, 10, 100_000)
    assert 16 * 100_000 * 784 < est < 16 * 100_000 * 800 + 400e6
    assert finite_memory_estimate(784, 9000, 10, 100_000) > 24 * 2 ** 30       # the paper's widest does not fit in 24 GiB
    with pytest.raises(TrainError, match="widths"):
        SweepConfig(widths="a").validate()


# ---------------------------------------------------------------------------- finite vs infinite

def test_gap_computation_on_constructed_example():
    # two widths, three evaluated steps; losses chosen so every gap is known by hand
    recs = []
    for n, fin, out_gap in ((100, [1.0, 0.6, 0.33], [0.0, 0.2, 0.1]), (400, [1.0, 0.52, 0.3], [0.0, 0.05, 0.04])):
        for step, (lf, ls, og) in enumerate(zip(fin, [1.0, 0.5, 0.3], out_gap)):
            recs.append({"n": n, "step": 10 * step, "finite_train_loss": lf, "sim_train_loss": ls,
                         "finite_test_loss": 2 * lf, "sim_test_loss": 2 * ls, "output_gap": og})
    table = gap_table(recs[::-1])                        # order of the records does not matter
    assert [r["n"] for r in table] == [100, 400]
    assert table[0]["max_rel_gap_train"] == pytest.approx(0.2)      # |0.6 - 0.5| / 0.5
    assert table[0]["final_rel_gap_train"] == pytest.approx(0.1)    # |0.33 - 0.3| / 0.3
    assert table[1]["max_rel_gap_train"] == pytest.approx(0.04)
    assert table[1]["final_rel_gap_train"] == pytest.approx(0.0, abs=1e-15)
    assert table[0]["max_rel_gap_test"] == pytest.approx(0.2)
    assert table[0]["max_output_gap"] == pytest.approx(0.2) and table[1]["final_output_gap"] == pytest.approx(0.04)
    assert table[0]["finite_train_final"] == 0.33 and table[1]["sim_train_final"] == 0.3
    passed, ratio, slope = gap_check(table, 0.5)
    assert passed and ratio == pytest.approx(0.2) and slope == pytest.approx(np.log(0.2) / np.log(4))
    passed, ratio, _ = gap_check(table, 0.1)
    assert not passed
    assert relative_gap([2.0, 0.0], [1.0, 0.0]).tolist() == [1.0, 0.0]
    assert output_gap(np.array([[1.0, 1.0]]), np.array([[1.0, 2.0]])) == pytest.approx(1 / np.sqrt(5))


def test_finite_vs_infinite_tiny_run(tmp_path):
    out = tmp_path / "fvi"
    args = ["finite-vs-infinite", "--train-size", "30", "--test-size", "20", "--d0", "3", "--width", "2",
            "--hidden", "100,6000", "--limit-width", "500", "--steps", "12", "--batch-size", "10",
            "--eval-every", "4", "--out", str(out)]
    res = _invoke(args)
    assert res.exit_code == 0, res.output
    assert "check passed" in res.output
    for name in ("metrics.csv", "table.csv", "summary.json", "finite-vs-infinite.png"):
        assert (out / name).is_file(), name
    rows = _rows(out / "metrics.csv")
    fin = [r for r in rows if r["run"] == "finite"]
    assert sorted({int(r["step"]) for r in fin}) == [0, 4, 8, 12]
    assert {r["run"] for r in rows} == {"finite", "limit"}
    # step 0: the finite network and its simulator are the same functions
    for r in fin:
        if r["step"] == "0":
            assert float(r["output_gap"]) < 1e-12
    summary = json.loads((out / "summary.json").read_text())
    small, large = summary["table"]
    assert large["max_output_gap"] < small["max_output_gap"]
    # refuses to overwrite, and a too strict check fails with one line and exit status 1
    res = _invoke(args)
    assert res.exit_code != 0 and "--force" in res.output
    res = _invoke(args + ["--force", "--max-ratio", "1e-9"])
    assert res.exit_code == 3 and "does not shrink" in res.output


def test_finite_vs_infinite_bad_options(tmp_path):
    res = _invoke(["finite-vs-infinite", "--hidden", "100", "--out", str(tmp_path / "a")])
    assert res.exit_code != 0 and "hidden" in res.output and "Traceback" not in res.output
    res = _invoke(["finite-vs-infinite", "--hidden", "100,abc", "--out", str(tmp_path / "b")])
    assert res.exit_code != 0 and "hidden" in res.output


def test_refuses_a_network_that_does_not_fit_in_memory(tmp_path):
    # 16 bytes per weight: n = 1e12 hidden units need petabytes; refused before anything is written
    res = _invoke(["finite-sweep", *TINY, "--widths", "1,2", "--hidden", str(10 ** 12), "--out", str(tmp_path / "m")])
    assert res.exit_code != 0 and "hidden" in res.output and "widths up to none" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "m").exists()


def test_sweep_with_momentum_and_a_schedule(tmp_path):
    """--momentum/--nesterov/--lr-schedule reach the finite networks' optimiser (MATH §8.1) and config.json."""
    out = tmp_path / "sw"
    res = _invoke(["finite-sweep", *TINY, "--widths", "3", "--momentum", "0.6", "--nesterov", "--lr-schedule",
                   "cosine", "--out", str(out)])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert (cfg["momentum"], cfg["nesterov"], cfg["lr_schedule"]) == (0.6, True, "cosine:10")
    from experiments.data import load_dataset
    ds = load_dataset("synthetic", train_size=40, test_size=20, seed=0, d0=3, dr=2)
    losses = []
    for opt in (dict(momentum=0.6, nesterov=True, lr_schedule="cosine:10"), {}):
        net = FiniteNetwork.sample(3, 3, 2, width=200, seed=0)
        for t in range(10):
            idx = batch_indices(0, t, 40, 5)
            net.step(ds.X_train[idx], ds.Y_train[idx], lr=0.5, **opt)
        losses.append(0.5 * np.mean(np.sum((net.outputs(ds.X_test) - ds.Y_test) ** 2, axis=1)))
    got = float(_rows(out / "width-00003" / "metrics.csv")[-1]["test_loss"])
    assert got == pytest.approx(losses[0], rel=1e-12) and got != pytest.approx(losses[1], rel=1e-6)


def test_finite_vs_infinite_with_momentum_and_a_schedule(tmp_path):
    """The finite networks and the simulator share the optimiser (MATH §8): the output gap shrinks with n, and
    the run differs from plain SGD."""
    out = tmp_path / "fvi"
    args = ["finite-vs-infinite", "--train-size", "30", "--test-size", "20", "--d0", "3", "--width", "2",
            "--hidden", "100,6000", "--limit-width", "500", "--steps", "12", "--batch-size", "10",
            "--eval-every", "4", "--lr", "0.5", "--momentum", "0.6", "--nesterov", "--lr-schedule", "warmup:4"]
    res = _invoke(args + ["--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["config"]["momentum"], summary["config"]["lr_schedule"]) == (0.6, "warmup:4")
    small, large = summary["table"]
    assert large["max_output_gap"] < small["max_output_gap"]
    plain = tmp_path / "plain"
    assert _invoke(args[:-5] + ["--out", str(plain)]).exit_code in (0, 3)     # plain SGD; only its limit is read
    mom = json.loads((out / "summary.json").read_text())["limit"]["train_final"]
    assert mom != pytest.approx(json.loads((plain / "summary.json").read_text())["limit"]["train_final"], rel=1e-6)
