"""cli.py gpu-check at toy sizes on the NumPy stand-in of the gpu backend: the command, its
table and its JSON work in CI (the numbers it prints on a real GPU are its purpose)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from accel import gpu, standin


@pytest.fixture(autouse=True)
def fresh_probe():
    gpu.reset()
    yield
    gpu.reset()


@pytest.mark.skipif(standin.compiler() is None, reason="needs a host C compiler (gcc)")
def test_gpu_check_tiny_on_the_standin(tmp_path, monkeypatch):
    monkeypatch.setenv(gpu.STANDIN_ENV, "standin")          # inherited by the subprocesses
    out = tmp_path / "check"
    res = CliRunner().invoke(cli.cli, ["gpu-check", "--tiny", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "gpucheck.json").read_text())
    table = (out / "table.md").read_text()
    assert report["ok"] and report["standin"]
    names = [s["step"] for s in report["steps"]]
    assert names == ["pytest -m gpu", "golden", "train gpu", "train cpu", "train numpy", "bench gpu",
                     "paper-scale gpu"]
    for s in report["steps"][1:]:
        assert s["ok"] and s["wall_s"] > 0, s
        assert f"| {s['step']} | ok |" in table
    losses = {s["step"]: s["test_loss"] for s in report["steps"] if s["step"].startswith("train")}
    np.testing.assert_allclose(losses["train gpu"], losses["train numpy"], rtol=1e-10)
    np.testing.assert_allclose(losses["train cpu"], losses["train numpy"], rtol=1e-10)
    bench = report["steps"][5]["results"]
    assert [(r["backend"], r["M"]) for r in bench] == [("gpu", 2000)] and bench[0]["seconds_per_step"] > 0
    assert "bench gpu/float64 d=5 M=2e+03" in table and "ON THE NUMPY STAND-IN" in table
    assert "overall: ok" in res.output


def test_gpu_check_reports_a_failed_step(tmp_path, monkeypatch):
    """Without the stand-in and without a GPU the gpu steps fail with their one-line reason,
    the others still run, and the report is not ok."""
    monkeypatch.delenv(gpu.STANDIN_ENV, raising=False)
    gpu.reset()
    if gpu.available():
        pytest.skip("a GPU is available here")
    from experiments import gpucheck
    config = dict(gpucheck.TINY, train_backends=["gpu", "numpy"], golden=None, bench=None)
    report = gpucheck.run(tmp_path / "c", config, log=lambda m: None)
    ok = {s["step"]: s["ok"] for s in report["steps"]}
    assert ok["golden"] is None and ok["bench gpu"] is None          # skipped by the config
    assert ok["train gpu"] is False and ok["train numpy"] is True and ok["paper-scale gpu"] is False
    assert not report["ok"]
    gpu_row = [s for s in report["steps"] if s["step"] == "train gpu"][0]
    assert any("CuPy" in line for line in gpu_row["output_tail"])
    assert "FAILED (exit" in gpucheck.table(report)
