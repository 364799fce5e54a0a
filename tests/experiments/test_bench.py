"""experiments.bench: the near-pairs measurement builds the geometry it claims and reports a ratio."""

import json

import pytest

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


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine where the gpu backend cannot run (no CuPy), whatever is installed here."""
    import sys
    from accel import gpu
    monkeypatch.delenv(gpu.STANDIN_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "cupy", None)
    gpu.reset()
    yield gpu.unavailable_reason()
    gpu.reset()


def test_bench_asked_for_an_unavailable_backend_says_why_and_exits_nonzero(tmp_path, no_gpu):
    from click.testing import CliRunner
    import cli
    out = tmp_path / "b.json"
    res = CliRunner().invoke(cli.cli, ["bench", "--backends", "cpu,gpu", "--sizes", "300", "--widths", "3",
                                       "--dtypes", "float64", "--reps", "1", "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "CuPy is not installed" in no_gpu and f"gpu: {no_gpu}" in res.output
    report = json.loads(out.read_text())
    assert [r["backend"] for r in report["results"]] == ["cpu"]           # the others still ran
    assert report["skipped"] == [{"backend": "gpu", "reason": no_gpu}]
    assert f"| gpu | | skipped: {no_gpu} |" in res.output
    # the default asks only for what can run here
    res = CliRunner().invoke(cli.cli, ["bench", "--sizes", "300", "--widths", "3", "--dtypes", "float64",
                                       "--reps", "1", "--out", str(out), "--force", "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads([line for line in res.output.splitlines() if line.startswith("{")][-1])
    assert obj["ok"] and obj["skipped"] == [] and [r["backend"] for r in obj["results"]] == ["numpy", "cpu"]


def test_golden_reports_the_gpu_target_as_skipped_with_its_reason(no_gpu):
    from click.testing import CliRunner
    import cli
    res = CliRunner().invoke(cli.cli, ["golden", "--cases", "kernels", "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads([line for line in res.output.splitlines() if line.startswith("{")][-1])
    assert obj["ok"] and obj["skipped"] == [{"target": "gpu", "reason": no_gpu}]
    res = CliRunner().invoke(cli.cli, ["golden", "--cases", "kernels"])
    assert res.exit_code == 0 and f"gpu/*" in res.output and f"skipped: {no_gpu}" in res.output


def test_mnist_step_compares_the_two_theta_routes(tmp_path):
    """bench --mnist-step on a tiny MNIST: both routes run the same steps (same test embeddings, and
    outputs without bottleneck), and the JSON carries both times and ratios for width 50 and inf."""
    from click.testing import CliRunner

    import cli
    from test_data import make_mnist
    make_mnist(tmp_path, n_train=80, n_test=20)
    out = tmp_path / "step.json"
    res = CliRunner().invoke(cli.cli, ["bench", "--mnist-step", str(tmp_path), "--reps", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())["mnist_step"]
    assert (r["train"], r["test"], r["d0"], r["dr"], r["steps"]) == (80, 20, 784, 10, 5)
    assert len(r["stored_all_seconds"]) == len(r["per_step_all_seconds"]) == 5
    assert r["per_step_over_stored"] == r["per_step_seconds"] / r["stored_seconds"] > 0
    assert r["max_embedding_difference"] < 1e-12
    r = json.loads(out.read_text())["mnist_step_inf"]
    assert r["d"] == "inf" and len(r["stored_all_seconds"]) == 5 and r["max_output_difference"] < 1e-12


def test_gpu_measure_reports_pass_traffic_bandwidth_and_the_host_head_route(monkeypatch):
    """On the gpu backend (here its NumPy stand-in) a step's measurement carries the bytes its fused passes
    request (from the launch plan), the bandwidth they imply and the host route of the head timed on the same
    batches; the peak bandwidth comes from the device attributes (None on the stand-in)."""
    import types

    import numpy as np
    from accel import fused_source, gpu, xpcore
    monkeypatch.setenv(gpu.STANDIN_ENV, "standin")
    gpu.reset()
    try:
        res = bench.measure(get_backend("gpu", "float64"), d=6, M=500, reps=1)
    finally:
        monkeypatch.delenv(gpu.STANDIN_ENV)
        gpu.reset()
    want = fused_source.pass_counts(bench.BATCH, 500, 6, bench.DR, 1, np.float64, "relu", 1,
                                    fused_source.SHARED_OPTIN_SM90)["bytes"]
    assert res["pass_bytes_per_step"] == want
    assert res["pass_bandwidth_gbs"] == pytest.approx(want / res["seconds_per_step"] / 1e9)
    assert res["bandwidth_fraction"] is None and res["peak_bandwidth_gbs"] is None
    assert res["host_head_seconds_per_step"] > 0
    assert res["host_head_over_device_step"] == res["host_head_seconds_per_step"] / res["seconds_per_step"]
    # the stand-in is a compute capability 9.0 device: the other route (tensor cores, off by default) on the same
    # batches, in the same run
    assert res["tensor_cores"] is False and res["plain_seconds_per_step"] == res["seconds_per_step"]
    assert res["tensor_core_speedup"] == res["plain_seconds_per_step"] / res["tensor_core_seconds_per_step"] > 0
    h100 = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=lambda: types.SimpleNamespace(
        attributes={"MemoryClockRate": 2619000, "GlobalMemoryBusWidth": 5120})))
    assert xpcore.XPEngine(h100).peak_bandwidth() == pytest.approx(3.352e12, rel=1e-3)   # H100 SXM: 3.35 TB/s
