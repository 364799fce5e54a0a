"""cli.py gpu-check at toy sizes on the NumPy stand-in of the gpu backend: the command, its
table and its JSON work in CI (the numbers it prints on a real GPU are its purpose)."""

import json
import sys
import types

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
    assert names == ["gpu probe", "pytest -m gpu", "golden", "train gpu", "train cpu", "train numpy", "bench gpu",
                     "paper-scale gpu"]
    assert report["steps"][1]["ok"] is None and "| pytest -m gpu | skipped |" in table
    for s in report["steps"][2:]:
        assert s["ok"] and s["wall_s"] > 0 and s["note"], s
        assert f"| {s['step']} | ok |" in table
    losses = {s["step"]: s["test_loss"] for s in report["steps"] if s["step"].startswith("train")}
    np.testing.assert_allclose(losses["train gpu"], losses["train numpy"], rtol=1e-10)
    np.testing.assert_allclose(losses["train cpu"], losses["train numpy"], rtol=1e-10)
    bench = report["steps"][6]["results"]
    assert [(r["backend"], r["M"]) for r in bench] == [("gpu", 2000)] and bench[0]["seconds_per_step"] > 0
    near = report["steps"][6]["near_pairs"]
    assert [(n["backend"], n["M"]) for n in near] == [("gpu", 2000)] and near[0]["aligned_seconds"] > 0
    assert "bench gpu/float64 d=5 M=2e+03" in table and "near pairs gpu/float64" in table
    assert "ON THE NUMPY STAND-IN" in table
    assert "overall: ok" in res.output


def _fake_runtime(count, driver):
    ns = types.SimpleNamespace(getDeviceCount=count, runtimeGetVersion=lambda: 12090,
                               driverGetVersion=lambda: driver)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=ns))


def _insufficient():
    raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version")


@pytest.mark.parametrize("case, module, wording", [
    ("no cupy", None, "CuPy is not installed"),
    ("no driver", _fake_runtime(_insufficient, 0), "no NVIDIA driver found"),
    ("old driver", _fake_runtime(_insufficient, 11080), "driver supports CUDA 11.8"),
    ("no device", _fake_runtime(lambda: 0, 12090), "sees no CUDA device"),
])
def test_gpu_check_without_a_gpu_stops_at_the_probe(tmp_path, monkeypatch, case, module, wording):
    """No usable GPU: exit 3 with the reason worded for the case; no step is started (no subprocess),
    every row says it was not run and why."""
    from experiments import gpucheck
    monkeypatch.delenv(gpu.STANDIN_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "cupy", module)
    gpu.reset()

    def no_subprocess(*args, **kwargs):
        raise AssertionError("a step was started without a usable GPU")
    monkeypatch.setattr(gpucheck, "_run", no_subprocess)
    out = tmp_path / "c"
    res = CliRunner().invoke(cli.cli, ["gpu-check", "--quick", "--out", str(out)])
    assert res.exit_code == 3, res.output
    assert wording in res.output and "Traceback" not in res.output
    if case == "no driver":
        assert "insufficient" not in res.output
    report = json.loads((out / "gpucheck.json").read_text())
    assert wording in report["reason"] and not report["ok"]
    probe, *rest = report["steps"]
    assert probe["step"] == "gpu probe" and probe["ok"] is False and wording in probe["note"]
    assert rest and all(s["ok"] is False and s["note"].startswith("not run: no usable GPU") for s in rest)
    table = (out / "table.md").read_text()
    assert "| ok |" not in table and f"overall: FAILED ({report['reason']})" in table


def test_a_pytest_step_with_every_test_skipped_is_not_ok():
    from experiments import gpucheck
    tail = ["ssssssss                                        [100%]",
            "SKIPPED [8] tests/accel/test_gpu.py:23: gpu backend: no NVIDIA driver found (...)",
            "8 skipped in 1.25s"]
    row = {"rc": 0, "ok": True, "note": "", "output_tail": tail}
    gpucheck._judge_pytest(row)
    assert row["ok"] is False and row["note"].startswith("no test ran (8 skipped: gpu backend: no NVIDIA driver")
    row = {"rc": 0, "ok": True, "note": "", "output_tail": ["8 passed, 1 skipped in 3.2s"]}
    gpucheck._judge_pytest(row)
    assert row["ok"] is True and row["note"] == "8 passed, 1 skipped"
    row = {"rc": 1, "ok": False, "note": "", "output_tail": ["E   assert 1 == 2", "1 failed, 7 passed in 3.2s"]}
    gpucheck._judge_pytest(row)
    assert row["ok"] is False and "1 failed" in row["note"] and "assert 1 == 2" in row["note"]


def test_a_bench_step_without_results_is_not_ok(tmp_path):
    from experiments import gpucheck
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"results": [], "skipped": [{"backend": "gpu", "reason": "no NVIDIA driver found"}]}))
    row = {"rc": 2, "ok": False, "note": "Error: bench: asked-for backend(s) unavailable", "output_tail": []}
    gpucheck._judge_bench(path, near=True)(row)
    assert row["ok"] is False and row["note"] == "no results (gpu: no NVIDIA driver found)"
    res = [{"backend": "gpu", "dtype": "float64", "d": 5, "M": 10, "seconds_per_step": 1.0, "gflops": 1.0}]
    path.write_text(json.dumps({"results": res}))
    row = {"rc": 0, "ok": True, "note": "", "output_tail": []}
    gpucheck._judge_bench(path, near=True)(row)
    assert row["ok"] is False and row["note"].startswith("no near-pair results")
    missing = tmp_path / "none.json"
    row = {"rc": 124, "ok": False, "note": "(timed out after 5 s)", "output_tail": []}
    gpucheck._judge_bench(missing, near=False)(row)
    assert row["ok"] is False and row["note"] == "no results ((timed out after 5 s))"


def test_a_golden_step_that_skipped_the_gpu_is_not_ok():
    """golden exits 0 when it leaves the gpu target out (here: no usable GPU); gpu-check's row then fails
    with golden's own reason, and a golden run with the gpu target stays ok."""
    from accel import gpu
    from experiments import gpucheck
    if gpu.available():
        pytest.skip("a usable GPU: golden runs the gpu target here")
    rc, wall, tail = gpucheck._run(["cli.py", "golden", "--cases", "kernels"], 300)
    row = {"rc": rc, "ok": rc == 0, "note": "", "output_tail": tail}
    gpucheck._judge_golden(row)
    assert rc == 0 and row["ok"] is False, (rc, tail[-3:])
    assert row["note"].startswith("the gpu target was skipped: ") and gpu.unavailable_reason() in row["note"]
    ok_tail = ["gpu/float64              kernels              nngp                    3.06e-12   1e-10  ok     0.1 s",
               "all 7 golden checks within tolerance"]
    row = {"rc": 0, "ok": True, "note": "", "output_tail": ok_tail}
    gpucheck._judge_golden(row)
    assert row["ok"] is True


def test_a_failed_step_row_carries_its_own_error(tmp_path, monkeypatch):
    """A step that fails on a working probe: its row gives the step's one-line error."""
    from experiments import gpucheck
    monkeypatch.setattr(gpucheck, "probe", lambda env: None)
    monkeypatch.setattr(gpucheck, "_run", lambda args, timeout, env=None: (
        (2, 0.1, ["Error: backend: 'gpu' is unavailable: CuPy sees no CUDA device"]) if "train" in args
        else (0, 0.1, ["3 passed in 1.0s"])))
    config = dict(gpucheck.TINY, train_backends=["gpu"], golden=None, bench=None)
    report = gpucheck.run(tmp_path / "c", config, log=lambda m: None)
    rows = {s["step"]: s for s in report["steps"]}
    assert rows["train gpu"]["ok"] is False and "CuPy sees no CUDA device" in rows["train gpu"]["note"]
    assert rows["golden"]["ok"] is None and "not part of the --tiny check" in rows["golden"]["note"]
    assert not report["ok"] and "| train gpu | FAILED (exit 2) |" in gpucheck.table(report)
