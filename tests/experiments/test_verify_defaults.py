"""Every `cli.py verify` subcommand passes its own checks at its default settings, in CI
time.  About 40 s in total on 2 cores; tests/experiments/test_verify.py covers the options and failures."""

import json

import pytest
from click.testing import CliRunner

import cli


@pytest.mark.parametrize("name", ["lemma3.1", "theorem3.2", "lemma4.1", "inf-limit"])
def test_verify_default_run_passes(tmp_path, name):
    res = CliRunner().invoke(cli.cli, ["verify", name, "--out", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / f"{name}.json").read_text())
    assert report["passed"] is True
    assert report["checks"] and all(c["passed"] for c in report["checks"])
    assert (tmp_path / f"{name}.png").stat().st_size > 0
