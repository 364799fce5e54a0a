"""Long and odd output paths: a legal 255-byte name works (the hidden staging names stay within the name
limit), a non-UTF-8 path is refused at the start, and a bad output folder gives exit status 2 on every
command that writes."""

import os
import sys

import pytest
from click.testing import CliRunner

import cli
from clihelpers import one_line_error

TRAIN = ["train", "-q", "--train-size", "40", "--test-size", "20", "--d0", "3", "--width", "2", "--init-width", "50",
         "--batch-size", "10", "--eval-every", "2", "--steps", "4", "--backend", "numpy"]
SWEEP = ["sweep", "--train-size", "40", "--test-size", "20", "--d0", "3", "--init-width", "50", "--batch-size", "10",
         "--eval-every", "2", "--steps", "4", "--widths", "2", "--no-plot", "-j", "1", "--backend", "numpy"]
FINITE = ["finite-sweep", "--dataset", "synthetic", "--train-size", "40", "--test-size", "20", "--d0", "3", "--dr",
          "2", "--hidden", "50", "--steps", "2", "--batch-size", "5", "--eval-every", "1", "--widths", "1"]
COMPARE = ["finite-vs-infinite", "--train-size", "20", "--test-size", "10", "--d0", "3", "--width", "2",
           "--hidden", "50,100", "--steps", "2"]


def _invoke(args):
    return CliRunner().invoke(cli.cli, args)


@pytest.mark.parametrize("force", [False, True])
def test_a_255_byte_out_name_works(tmp_path, force):
    out = tmp_path / ("r" * 255)
    if force:
        assert _invoke(TRAIN + ["--out", str(out)]).exit_code == 0
    res = _invoke(TRAIN + ["--out", str(out)] + (["--force", "--steps", "6"] if force else []))
    assert res.exit_code == 0, res.output
    assert (out / "summary.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]              # no staging folder left


def test_a_255_byte_sweep_name_works(tmp_path):
    out = tmp_path / ("s" * 255)
    res = _invoke(SWEEP + ["--out", str(out)])
    assert res.exit_code == 0, res.output


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse non-UTF-8 names themselves")
@pytest.mark.parametrize("command", [TRAIN, SWEEP, FINITE, COMPARE])
def test_non_utf8_out_is_refused_at_the_start(tmp_path, command):
    out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/run-\xff")
    res = _invoke(command + ["--out", out])
    line = one_line_error(res)
    assert res.exit_code == 2 and "UTF-8" in line and "out" in line
    assert list(tmp_path.iterdir()) == []


def _bad_out(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way\n")
    return blocker / "sub"


COMMANDS = {
    "train": TRAIN, "sweep": SWEEP, "finite-sweep": FINITE, "finite-vs-infinite": COMPARE,
    "train per-width": TRAIN + ["--lr-policy", "per-width", "--lr-probe-steps", "2"],
    "verify lemma3.1": ["verify", "lemma3.1", "--samples", "20", "--pairs", "2", "-q"],
    "verify inf-limit": ["verify", "inf-limit", "--dims", "2,4", "--width", "50", "--samples", "2", "-q"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_bad_output_folder_exits_2_on_every_command(tmp_path, name):
    res = _invoke(COMMANDS[name] + ["--out", str(_bad_out(tmp_path))])
    line = one_line_error(res)
    assert res.exit_code == 2, (res.exit_code, line)
    assert "out" in line and "a-file" in line


def test_bench_bad_output_folder_exits_2(tmp_path):
    res = _invoke(["bench", "--sizes", "100", "--widths", "2", "--backends", "numpy", "--dtypes", "float64",
                   "--reps", "1", "--out", str(_bad_out(tmp_path) / "bench.json")])
    assert res.exit_code == 2 and "a-file" in one_line_error(res)


def test_plot_bad_output_folder_exits_2(tmp_path):
    sweep = tmp_path / "sw"
    assert _invoke(SWEEP + ["--out", str(sweep)]).exit_code == 0
    res = _invoke(["plot", str(sweep), "--out", str(_bad_out(tmp_path))])
    assert res.exit_code == 2 and "a-file" in one_line_error(res)


def test_quiet_silences_the_probe_and_the_probe_lands_in_the_run(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(cli.cli, TRAIN + ["--lr-policy", "per-width", "--lr-probe-steps", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "lr probe" not in res.output
    assert (out / "lr_probe.json").is_file() and (out / "summary.json").is_file()
    loud = CliRunner().invoke(cli.cli, [a for a in TRAIN if a != "-q"] + [
        "--lr-policy", "per-width", "--lr-probe-steps", "2", "--out", str(tmp_path / "loud")])
    assert loud.exit_code == 0 and "lr probe" in loud.output


def test_finite_vs_infinite_bad_generated_data_leaves_no_folder_and_names_its_option(tmp_path):
    out = tmp_path / "cmp"
    res = _invoke(["finite-vs-infinite", "--dataset", "multi-index", "--d0", "1", "--train-size", "20",
                   "--test-size", "10", "--hidden", "50,100", "--steps", "2", "--out", str(out)])
    line = one_line_error(res)
    assert res.exit_code == 2 and "d0" in line and "latent_dim" not in line, line
    assert not out.exists()
