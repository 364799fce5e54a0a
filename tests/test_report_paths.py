"""Every file the reproduction report names is in the repository (docs/REPRODUCTION.md and the detail files it
moved beside the figures): markdown links and images (with their #anchors), repository paths in the text, and
the lr_probe.json of every per-width sweep of Part 5."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ["docs/REPRODUCTION.md", "docs/figures/controls/PART4.md", "docs/figures/controls5/PART5.md",
           "docs/figures/controls5/statistics.md", "docs/figures/controls6/PART6.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")
PATH = re.compile(r"(?<![\w/.-])((?:docs|experiments|tests|refimpl|accel|golden)/[\w./<>-]*[\w/>])")


def slug(heading):
    """GitHub's anchor of a markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    return {slug(line.lstrip("#")) for line in path.read_text().splitlines() if line.startswith("#")}


@pytest.mark.parametrize("report", REPORTS)
def test_links_and_images_resolve(report):
    path = ROOT / report
    text = path.read_text()
    missing = []
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            missing.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            missing.append(target + " (no such heading)")
    assert not missing, f"{report}: {missing}"


@pytest.mark.parametrize("report", REPORTS)
def test_repository_paths_in_the_text_exist(report):
    text = (ROOT / report).read_text()
    missing = []
    for name in set(PATH.findall(text)):
        if "<" in name:                                   # a template: its fixed folder must exist
            name = name.split("<", 1)[0]
        if not (ROOT / name.rstrip(".")).exists():
            missing.append(name)
    assert not missing, f"{report}: {sorted(missing)}"


def test_every_per_width_sweep_of_part5_keeps_its_probe():
    """Every per-width sweep's lr_probe.json is beside its figures, or the report says it is lost and why
    (a line "`<sweep>/lr_probe.json` is lost: ...")."""
    text = (ROOT / "docs/REPRODUCTION.md").read_text()
    table = text.split("### Verdicts at a glance (Part 5)", 1)[1].split("\n\n**", 1)[0]
    sweeps = re.findall(r"^\|[^|]*per-width[^|]*\|[^|]*\| `([^`]+)` \|", table, flags=re.M)
    assert len(sweeps) >= 5, sweeps
    missing = [s for s in sweeps if not (ROOT / "docs/figures/controls5" / s / "lr_probe.json").is_file()
               and f"`{s}/lr_probe.json` is lost:" not in text]
    assert not missing, missing


def test_the_checks_can_fail(tmp_path):
    assert slug("Part 1. The paper's experiments (appendix D) at a small scale") == \
        "part-1-the-papers-experiments-appendix-d-at-a-small-scale"
    assert PATH.findall("see `docs/nowhere.md` and docs/figures/controls5/<sweep>/ and experiments/plots.py.") == \
        ["docs/nowhere.md", "docs/figures/controls5/<sweep>/", "experiments/plots.py"]
    assert not (ROOT / "docs/nowhere.md").exists()
