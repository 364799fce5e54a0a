"""Symbolic links never lead a run out of its folder: an output folder that is a link, and a link in place
of a run's own files or of a sweep's run folders, are refused in one line, and the link's target (a folder
full of the user's files) is left exactly as it was."""

import shutil

import pytest
from click.testing import CliRunner

import cli
from clihelpers import one_line_error

TRAIN = ["--train-size", "40", "--test-size", "20", "--d0", "3", "--width", "2", "--init-width", "100",
         "--batch-size", "10", "--eval-every", "4", "--eval-size", "40", "--steps", "8", "-q"]
SWEEP = ["--train-size", "40", "--test-size", "20", "--d0", "3", "--init-width", "100", "--batch-size", "10",
         "--eval-every", "4", "--steps", "8", "--widths", "2,3", "--no-plot", "-j", "1"]
FINITE = ["--dataset", "synthetic", "--train-size", "40", "--test-size", "20", "--d0", "3", "--dr", "2",
          "--hidden", "50", "--steps", "4", "--batch-size", "5", "--eval-every", "2", "--lr", "0.5"]


def _invoke(args):
    return CliRunner().invoke(cli.cli, args)


def _user_folder(tmp_path):
    """A folder of the user's files (some named like run files) and a sub-folder."""
    folder = tmp_path / "precious"
    (folder / "sub").mkdir(parents=True)
    for name in ("notes.txt", "config.json", "metrics.csv", "checkpoint.npz", "result.json", "sweep.json"):
        (folder / name).write_text(f"the user's {name}\n")
    (folder / "sub" / "data.bin").write_bytes(b"\x00\x01" * 100)
    return folder


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(res, *words):
    line = one_line_error(res)
    assert res.exit_code == 2, res.output
    for w in words:
        assert w in line, line
    return line


@pytest.mark.parametrize("extra", [[], ["--force"]])
def test_train_out_link_to_a_full_folder_is_refused(tmp_path, extra):
    target = _user_folder(tmp_path)
    before = _snapshot(target)
    link = tmp_path / "link"
    link.symlink_to(target)
    _refused(_invoke(["train", *TRAIN, "--out", str(link), *extra]), "out:", "symbolic link")
    assert link.is_symlink() and _snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "precious"]     # no staging folder left


def test_train_out_dangling_link_is_refused_naming_the_option(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    line = _refused(_invoke(["train", *TRAIN, "--out", str(link)]), "out:", "symbolic link")
    assert ".new-" not in line
    assert not (tmp_path / "nowhere").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    res = _invoke(["train", *TRAIN, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("name", ["checkpoint.npz", "metrics.csv", "config.json"])
def test_resume_refuses_a_run_file_that_is_a_link(tmp_path, finished_run, name):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    outside = tmp_path / f"outside-{name}"
    shutil.move(run / name, outside)
    (run / name).symlink_to(outside)
    before = outside.read_bytes()
    _refused(_invoke(["train", "-q", "--resume", str(run), "--steps", "12"]), name, "symbolic link")
    assert outside.read_bytes() == before and (run / name).is_symlink()


def test_resume_refuses_a_run_folder_that_is_a_link(tmp_path, finished_run):
    shutil.copytree(finished_run, tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    before = _snapshot(tmp_path / "real")
    _refused(_invoke(["train", "-q", "--resume", str(tmp_path / "link"), "--steps", "12"]), "symbolic link")
    assert _snapshot(tmp_path / "real") == before


@pytest.mark.parametrize("how", ["resume", "force"])
def test_sweep_with_a_run_folder_replaced_by_a_link_is_refused(tmp_path, how):
    out = tmp_path / "sweep"
    res = _invoke(["sweep", *SWEEP, "--out", str(out)])
    assert res.exit_code == 0, res.output
    target = _user_folder(tmp_path)
    before, sweep_before = _snapshot(target), (out / "sweep.json").read_bytes()
    shutil.rmtree(out / "width-3")
    (out / "width-3").symlink_to(target)
    args = ["sweep", "--resume", str(out), "--steps", "12"] if how == "resume" else \
        ["sweep", *SWEEP, "--out", str(out), "--force"]
    _refused(_invoke(args), "width-3", "symbolic link")
    assert _snapshot(target) == before and (out / "width-3").is_symlink()
    assert (out / "sweep.json").read_bytes() == sweep_before


def test_sweep_out_link_is_refused(tmp_path):
    target = _user_folder(tmp_path)
    before = _snapshot(target)
    (tmp_path / "link").symlink_to(target)
    _refused(_invoke(["sweep", *SWEEP, "--out", str(tmp_path / "link")]), "out:", "symbolic link")
    assert _snapshot(target) == before


@pytest.mark.parametrize("how", ["resume", "force"])
def test_finite_sweep_with_a_size_folder_replaced_by_a_link_is_refused(tmp_path, how):
    out = tmp_path / "fs"
    res = _invoke(["finite-sweep", *FINITE, "--widths", "1,2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    target = _user_folder(tmp_path)
    before = _snapshot(target)
    shutil.rmtree(out / "width-00002")
    (out / "width-00002").symlink_to(target)
    args = ["finite-sweep", "--resume", str(out)] if how == "resume" else \
        ["finite-sweep", *FINITE, "--widths", "1,2", "--out", str(out), "--force"]
    _refused(_invoke(args), "width-00002", "symbolic link")
    assert _snapshot(target) == before and (out / "width-00002").is_symlink()


@pytest.mark.parametrize("command", [["finite-sweep", *FINITE, "--widths", "1"],
                                     ["finite-vs-infinite", "--train-size", "20", "--test-size", "10", "--d0", "3",
                                      "--width", "2", "--hidden", "50,100", "--steps", "2"]])
def test_finite_commands_refuse_an_out_link(tmp_path, command):
    target = _user_folder(tmp_path)
    before = _snapshot(target)
    (tmp_path / "link").symlink_to(target)
    _refused(_invoke([*command, "--out", str(tmp_path / "link"), "--force"]), "symbolic link")
    assert _snapshot(target) == before
