"""The command line's promises to a new user: the --json contract for every error, one-line
usage errors, the last progress line once, the backend chosen by default (auto) and recorded."""

import io
import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from experiments import backends as BK
from experiments import train as T

TINY = ["--train-size", "40", "--test-size", "20", "--steps", "6", "--eval-every", "3", "--batch-size", "5",
        "--init-width", "64", "-q"]


def _invoke(args):
    return CliRunner().invoke(cli.cli, args)


def _json_error(result, exit_code):
    """stdout is exactly one JSON error object with this exit status; stderr one 'Error:' line."""
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    obj = json.loads(lines[0])
    assert obj["ok"] is False and obj["exit_code"] == exit_code and obj["error"], obj
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error:") and "Traceback" not in result.stderr, result.stderr
    return obj


#: Errors found by click while parsing (usage errors, exit status 2), for every command with --json.
USAGE_ERRORS = [
    ["train", "--width", "foo", "--json"],
    ["train", "--json", "--steps", "0"],
    ["train", "--json", "--no-such-option"],
    ["bench", "--sizes", "0", "--json"],
    ["golden", "--json", "--bogus"],
    ["verify", "inf-limit", "--json", "--samples", "0"],
    ["verify", "lemma3.1", "--json", "--samples", "1"],
    ["verify", "theorem3.2", "--widths", "x", "--json"],
    ["verify", "lemma4.1", "--json", "--steps", "-1"],
]


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=lambda a: " ".join(a))
def test_json_holds_for_usage_errors(args):
    obj = _json_error(_invoke(args), cli.EXIT_USAGE)
    assert "--" in obj["error"]                       # it names the option


@pytest.mark.parametrize("args", [
    ["golden", "--cases", "no-such-case", "--json"],
    ["bench", "--backends", "tpu", "--json", "--out", "IGNORED"],
    ["train", "--json", "--dataset", "synthetic", "--loss", "ce", *TINY],
    ["verify", "inf-limit", "--json", "-q", "--out", "BLOCKER"],
], ids=["golden", "bench", "train", "verify"])
def test_json_holds_for_errors_after_parsing(args, tmp_path):
    (tmp_path / "blocker").write_text("a file where the output folder should go")
    args = [str(tmp_path / "o.json") if a == "IGNORED" else str(tmp_path / "blocker") if a == "BLOCKER" else a
            for a in args]
    _json_error(_invoke(args), cli.EXIT_USAGE)


def test_usage_errors_are_one_line_naming_the_help():
    result = _invoke(["train", "--width", "foo"])
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'--width'" in lines[0] and "train --help" in lines[0], lines


def test_help_and_version_still_exit_0():
    assert _invoke(["--help"]).exit_code == 0
    assert _invoke(["train", "--help", "--json"]).exit_code == 0


def test_failed_verify_check_carries_exit_code_and_error(tmp_path):
    result = _invoke(["verify", "inf-limit", "--dims", "2,4", "--width", "50", "--samples", "1", "--points", "3",
                      "--threshold", "0", "--out", str(tmp_path / "v"), "--json", "-q"])
    assert result.exit_code == cli.EXIT_CHECK, result.stderr
    obj = json.loads(result.stdout)                   # exactly one object (the report, with the error)
    assert obj["ok"] is False and obj["exit_code"] == cli.EXIT_CHECK and "check gap failed" in obj["error"], obj["error"]
    assert obj["name"] == "inf-limit" and obj["config"]["threshold"] == 0


def test_failed_golden_check_carries_exit_code_and_error(monkeypatch):
    from experiments import golden as gold
    monkeypatch.setattr(gold, "check", lambda targets, cases=None, log=None: [
        {"label": "cpu/float64", "case": "x", "ok": False}, {"label": "numpy", "case": "x", "ok": True}])
    result = _invoke(["golden", "--json"])
    assert result.exit_code == cli.EXIT_CHECK
    obj = json.loads(result.stdout)
    assert obj["ok"] is False and obj["exit_code"] == 3 and obj["error"] == "1 of 2 golden checks failed"


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_prints_the_last_line_once(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    stream = io.StringIO()
    with cli.Progress(20, 0, stream=stream, tty=False, interval=10.0) as bar:
        for _ in range(20):
            clock.t += 1.0                                # a line at steps 10 and 20
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert [ln.split()[1] for ln in lines] == ["10/20", "20/20"], lines


# ---------------------------------------------------------------------------- backend auto (the default)

def test_train_defaults_to_auto_and_records_what_ran(tmp_path):
    result = _invoke(["train", *TINY, "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.stderr
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert cfg["backend_requested"] == "auto"
    assert cfg["backend"] == BK.auto_backend("float64") and cfg["backend"] in ("numpy", "cpu", "gpu")
    said = [ln for ln in result.stderr.splitlines() if ln.startswith("backend:")]
    assert said == [f"backend: {cfg['backend']} (auto: " + said[0].split("(auto: ")[1]]   # printed once


def test_explicit_backend_is_recorded_as_asked(tmp_path):
    result = _invoke(["train", *TINY, "--backend", "numpy", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.stderr
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert (cfg["backend"], cfg["backend_requested"]) == ("numpy", "numpy")
    assert "backend: numpy" in result.stderr


def test_auto_falls_back_to_numpy_without_accelerated_backends(monkeypatch):
    import accel
    from accel import gpu

    def unavailable(name, dtype="float64"):
        raise accel.BackendUnavailable("Numba cannot be imported (test)")
    monkeypatch.setattr(gpu, "available", lambda: False)
    monkeypatch.setattr(accel, "get_backend", unavailable)
    assert BK.auto_backend() == "numpy"
    config = T.TrainConfig(backend="auto")
    assert BK.settle_backend(config) == "numpy" and config.backend_requested == "auto"


def test_auto_prefers_a_usable_gpu(monkeypatch):
    from accel import gpu
    monkeypatch.setattr(gpu, "available", lambda: True)
    assert BK.auto_backend() == "gpu"


def test_resume_keeps_the_resolved_backend(tmp_path):
    out = tmp_path / "r"
    assert _invoke(["train", *TINY, "--out", str(out)]).exit_code == 0
    ran = json.loads((out / "config.json").read_text())["config"]["backend"]
    result = _invoke(["train", "--resume", str(out), "--steps", "9", "-q"])
    assert result.exit_code == 0, result.stderr
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert (cfg["backend"], cfg["backend_requested"], cfg["steps"]) == (ran, "auto", 9)
    refused = _invoke(["train", "--resume", str(out), "--steps", "12", "--backend", "numpy", "-q"])
    assert refused.exit_code == 2 and "--backend" in refused.stderr


def test_resume_of_a_run_that_recorded_only_auto(tmp_path, monkeypatch):
    """A run made before the resolved backend was recorded ("backend": "auto") still resumes, bit for bit
    the same as an uninterrupted run when auto means the same backend."""
    monkeypatch.setattr(T, "settle_backend", lambda config, log=None: config.backend)
    base = dict(train_size=40, test_size=20, eval_every=3, batch_size=5, init_width=64, backend="auto")
    T.train(T.TrainConfig(steps=3, **base), tmp_path / "old", log=lambda m: None)
    assert json.loads((tmp_path / "old" / "config.json").read_text())["config"]["backend"] == "auto"
    said = []
    T.train(T.TrainConfig(steps=6, **base), tmp_path / "old", resume=True, log=said.append)
    T.train(T.TrainConfig(steps=6, **base), tmp_path / "whole", log=lambda m: None)
    assert any("asked for auto" in m for m in said), said
    old = (tmp_path / "old" / "metrics.csv").read_text().splitlines()
    whole = (tmp_path / "whole" / "metrics.csv").read_text().splitlines()
    strip = lambda rows: [r.split(",")[:3] for r in rows]     # noqa: E731 - wall_s differs
    assert strip(old) == strip(whole)


def test_finite_sweep_auto_resolves_and_records(tmp_path):
    result = _invoke(["finite-sweep", "--dataset", "synthetic", "--train-size", "20", "--test-size", "10",
                      "--widths", "2", "--hidden", "16", "--steps", "4", "--eval-every", "2",
                      "--out", str(tmp_path / "f")])
    assert result.exit_code == 0, result.stderr
    cfg = json.loads((tmp_path / "f" / "config.json").read_text())["config"]
    assert cfg["backend_requested"] == "auto" and cfg["backend"] in ("numpy", "gpu")
    assert "backend: " + cfg["backend"] in result.stderr


def test_finite_sweep_gpu_error_is_worded_as_train(monkeypatch):
    from accel import gpu
    monkeypatch.setattr(gpu, "_probe", lambda: (None, "no CUDA device (test)"))
    from experiments import finite_sweep as FS
    with pytest.raises(T.TrainError) as info:
        FS.array_module("gpu")
    with pytest.raises(T.TrainError) as same:
        BK.resolve_backend("gpu")
    assert str(info.value) == str(same.value) and str(info.value).startswith("backend: 'gpu' is unavailable: ")


# ---------------------------------------------------------------------------- nothing overwritten without --force

def test_bench_refuses_an_existing_out_file(tmp_path):
    out = tmp_path / "bench.json"
    out.write_text("mine")
    args = ["bench", "--sizes", "50", "--widths", "2", "--backends", "numpy", "--dtypes", "float64", "--reps", "1",
            "--out", str(out)]
    result = _invoke(args)
    assert result.exit_code == 2 and "--force" in result.stderr and out.read_text() == "mine"
    assert _invoke([*args, "--force"]).exit_code == 0
    assert json.loads(out.read_text())["results"]


def test_verify_refuses_to_overwrite_its_report(tmp_path):
    args = ["verify", "inf-limit", "--dims", "2,4", "--width", "50", "--samples", "1", "--points", "3",
            "--threshold", "10", "--out", str(tmp_path), "-q"]
    assert _invoke(args).exit_code == 0
    before = (tmp_path / "inf-limit.json").read_bytes()
    again = _invoke([*args, "--seed", "1"])
    assert again.exit_code == 2 and "inf-limit.json" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "inf-limit.json").read_bytes() == before
    assert _invoke([*args, "--seed", "1", "--force"]).exit_code == 0
    assert (tmp_path / "inf-limit.json").read_bytes() != before


def test_plot_refuses_existing_figures(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "heatmap.png").write_bytes(b"mine")
    result = _invoke(["plot", str(tmp_path / "s")])
    assert result.exit_code == 2 and "heatmap.png" in result.stderr and "--force" in result.stderr
    assert (tmp_path / "s" / "heatmap.png").read_bytes() == b"mine"
    forced = _invoke(["plot", str(tmp_path / "s"), "--force"])       # gets past the check: no runs to plot
    assert forced.exit_code != 0 and "already exists" not in forced.stderr


def test_gpu_check_refuses_a_non_empty_out(tmp_path):
    (tmp_path / "gpucheck.json").write_text("{}")
    result = _invoke(["gpu-check", "--tiny", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--force" in result.stderr
    assert (tmp_path / "gpucheck.json").read_text() == "{}"


def test_finite_vs_infinite_refuses_an_existing_comparison(tmp_path):
    args = ["finite-vs-infinite", "--hidden", "20,40", "--steps", "2", "--train-size", "20", "--test-size", "10",
            "--eval-every", "1", "--limit-width", "30", "--out", str(tmp_path / "c")]
    first = _invoke(args)
    assert first.exit_code in (0, 3), first.stderr
    again = _invoke(args)
    assert again.exit_code == 2 and "--force" in again.stderr


# ---------------------------------------------------------------------------- smaller things

def test_finite_vs_infinite_help_has_no_placeholders():
    text = _invoke(["finite-vs-infinite", "--help"]).stdout
    assert "{" not in text and "synthetic, all otherwise" not in text
    blocks = text.split("\n  -")                      # one block per option
    assert all(b.count("[default") <= 1 for b in blocks), [b for b in blocks if b.count("[default") > 1]
    assert sum("-train-size" in b and "[default: 200; x>=1]" in " ".join(b.split()) for b in blocks) == 1


def test_top_level_help_lists_gpu_check_under_exit_3():
    text = " ".join(_invoke(["--help"]).stdout.split())
    assert "3 a check failed (verify, golden, finite-vs-infinite, gpu-check)" in text


def test_d0_message_names_every_data_set_that_takes_it(tmp_path, monkeypatch):
    from experiments import data
    fake = data.Dataset(name="mnist", X_train=np.zeros((10, 7)),
                        Y_train=np.zeros((10, 2)), X_test=np.zeros((4, 7)),
                        Y_test=np.zeros((4, 2)), meta={"dataset": "mnist"})
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: fake)
    with pytest.raises(T.TrainError) as info:
        T.load_data(T.TrainConfig(dataset="mnist", d0=5, data_dir=str(tmp_path), train_size=None, test_size=None))
    assert "synthetic, multi-index, manifold" in str(info.value) and "d0 = 7" in str(info.value)


def test_verify_simulator_backend_defaults_to_auto_and_agrees_with_numpy(tmp_path):
    reports = {}
    for backend in (None, "numpy"):
        args = ["verify", "lemma4.1", "--widths", "16,32", "--depths", "2", "--steps", "4", "--json", "-q",
                "--out", str(tmp_path / str(backend))] + ([] if backend is None else ["--backend", backend])
        result = _invoke(args)
        assert result.exit_code in (0, 3), result.stderr
        reports[backend] = json.loads(result.stdout)
    auto = reports[None]["config"]
    assert auto["backend_requested"] == "auto" and auto["backend"] == BK.auto_backend()
    assert reports["numpy"]["config"]["backend"] == "numpy"
    for a, b in zip(reports[None]["checks"], reports["numpy"]["checks"]):
        assert a["name"] == b["name"] and abs(a["value"] - b["value"]) <= 1e-9 * max(1.0, abs(b["value"]))


def test_sweep_force_does_what_the_readme_says(tmp_path):
    """--force: runs with the same options are kept (finished: skipped), runs made with other options replaced."""
    out = tmp_path / "sw"
    base = ["sweep", "--train-size", "40", "--test-size", "20", "--init-width", "64", "--batch-size", "10",
            "--eval-every", "3", "--widths", "2", "--steps", "3", "-j", "1", "--no-plot", "--out", str(out)]
    assert _invoke(base).exit_code == 0
    before = (out / "width-2" / "checkpoint.npz").read_bytes()
    same = _invoke([*base, "--force"])
    assert same.exit_code == 0, same.stderr
    record = json.loads((out / "sweep.json").read_text())
    assert [r["action"] for r in record["runs"]] == ["skipped"]
    assert (out / "width-2" / "checkpoint.npz").read_bytes() == before
    other = _invoke([*base, "--force", "--lr", "0.5"])
    assert other.exit_code == 0, other.stderr
    record = json.loads((out / "sweep.json").read_text())
    assert [r["action"] for r in record["runs"]] == ["started"]
    assert json.loads((out / "width-2" / "config.json").read_text())["config"]["lr"] == 0.5
    assert (out / "width-2" / "checkpoint.npz").read_bytes() != before
