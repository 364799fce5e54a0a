"""The command line as a tool: shared option sets, help texts, exit codes, --json, progress, console script."""

import io
import json
import re
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import cli

TINY = ["--train-size", "40", "--test-size", "20", "--steps", "6", "--eval-every", "3", "--batch-size", "5",
        "--init-width", "64", "-q"]


def _invoke(args):
    return CliRunner().invoke(cli.cli, args)


def _commands(group=cli.cli, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


def test_every_option_has_help():
    missing = [f"{' '.join(path)} {p.opts[0]}" for path, cmd in _commands() for p in cmd.params
               if isinstance(p, click.Option) and not p.help]
    assert not missing, missing


def test_train_sweep_and_finite_sweep_share_the_option_sets():
    params = {path[-1]: {p.name: p for p in cmd.params} for path, cmd in _commands()}
    for group in ("dataset", "data_dir", "train_size", "test_size", "d0", "dr", "steps", "batch_size", "lr",
                  "eval_every", "eval_size", "backend"):
        helps = {params[c][group].help for c in ("train", "sweep", "finite-sweep") if group in params[c]}
        assert all(group in params[c] for c in ("train", "sweep", "finite-sweep")), group
        assert len(helps) <= 2, (group, helps)     # one text, or one override in finite-sweep
    for name in ("activation", "init_width"):
        assert params["train"][name].help == params["sweep"][name].help
    # the synthetic default sizes come from one place
    from experiments.synthetic import SYNTHETIC_TEST_SIZE, SYNTHETIC_TRAIN_SIZE
    assert f"[default: {SYNTHETIC_TRAIN_SIZE} synthetic" in params["train"]["train_size"].help
    assert f"[default: {SYNTHETIC_TEST_SIZE} synthetic" in params["finite-sweep"]["test_size"].help


def test_option_set_factory_adds_skips_and_overrides():
    from experiments.config import cli_options

    @click.command()
    @cli_options("train", skip=("lr_f", "lr_g"), steps=7, lr={"help": "other"})
    def cmd(**kw):
        click.echo(json.dumps(kw))
    names = {p.name for p in cmd.params}
    assert "lr_f" not in names and {"steps", "lr", "batch_size", "backend"} <= names
    out = json.loads(CliRunner().invoke(cmd, []).output)
    assert out["steps"] == 7 and out["lr"] == 2.0
    assert next(p for p in cmd.params if p.name == "lr").help == "other"
    with pytest.raises(TypeError, match="unknown options"):
        cli_options("train", step=3)


def test_exit_codes_and_json_of_train(tmp_path):
    out = tmp_path / "run"
    res = _invoke(["train", *TINY, "--out", str(out), "--json"])
    assert res.exit_code == cli.EXIT_OK, res.output
    summary = json.loads(res.stdout)                     # exactly one JSON object on stdout
    assert summary["ok"] is True and summary["run_dir"] == str(out)
    assert summary["summary"]["steps"] == 6 and summary["metrics_columns"][0] == "step"
    # the run exists: bad input, exit 2, and under --json a JSON error object
    res = _invoke(["train", *TINY, "--out", str(out), "--json"])
    assert res.exit_code == cli.EXIT_USAGE
    err = json.loads(res.stdout)
    assert err == {"ok": False, "exit_code": 2, "error": err["error"]} and "--force" in err["error"]
    assert _invoke(["train", "--lr", "-1"]).exit_code == cli.EXIT_USAGE
    assert _invoke(["train", "--no-such-option"]).exit_code == cli.EXIT_USAGE
    # a diverging run: exit 1, one line
    res = _invoke(["train", *TINY, "--lr", "1e8", "--out", str(tmp_path / "div")])
    assert res.exit_code == cli.EXIT_FAILED and "diverged" in res.stderr and "Traceback" not in res.output


def test_check_failures_exit_3(monkeypatch):
    from experiments import golden
    row = {"label": "x", "case": "kernels", "errors": {"nngp": 1.0}, "worst": "nngp", "worst_error": 1.0,
           "tolerance": 1e-10, "ok": False, "seconds": 0.0}
    monkeypatch.setattr(golden, "check", lambda *a, **k: [row])
    res = _invoke(["golden", "--json"])
    assert res.exit_code == cli.EXIT_CHECK
    report = json.loads(res.stdout)
    assert report["ok"] is False and report["failed"] == 1


def test_bench_writes_under_runs_by_default():
    bench = dict(_commands())[("bench",)]
    out = next(p for p in bench.params if p.name == "out")
    assert Path(out.default).parts[0] == "runs"


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_without_a_terminal_prints_a_line_at_most_every_10_s(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    stream = io.StringIO()
    with cli.Progress(100, 0, stream=stream, tty=False) as bar:
        for step in range(100):
            clock.t += 0.5                                  # 2 steps/s: 50 s in all
            bar.update(1, loss=1.0 / (step + 1))
    lines = stream.getvalue().splitlines()
    assert 4 <= len(lines) <= 6                             # every 10 s, and the final line
    assert lines[-1].startswith("step 100/100") and "batch loss 0.01" in lines[-1]
    first = lines[0]
    assert re.search(r"step \d+/100  batch loss [\d.e-]+  2\.0 steps/s  ETA 0:\d\d", first), first
    assert "\r" not in stream.getvalue()


def test_progress_on_a_terminal_redraws_one_line(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    stream = io.StringIO()
    with cli.Progress(10, 0, stream=stream, tty=True) as bar:
        for _ in range(10):
            clock.t += 1.0
            bar.update(1, loss=0.5)
    text = stream.getvalue()
    assert text.count("\r") >= 10 and text.count("\n") == 1


def test_console_script_is_declared():
    text = (Path(cli.__file__).parent / "pyproject.toml").read_text()
    assert re.search(r'^\[project\.scripts\]\s*\n(#.*\n)*bottleneck = "cli:main"', text, re.M)
    assert callable(cli.main)
