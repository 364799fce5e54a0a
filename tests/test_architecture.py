"""The shape of the code base, read from the source with ast (nothing is imported).

- Imports run one way: cli.py -> experiments -> accel -> refimpl.  refimpl imports nothing else of
  the project; accel imports only refimpl's public names; nothing below cli.py imports experiments'
  callers; nothing imports cli.
- accel runs refimpl through its public interface (engines of refimpl.engine): no accel class derived
  from a refimpl class defines an underscore name, and accel reads or calls no underscore name that
  refimpl defines (and accel does not define itself).
- No import cycle between the project's modules.
- Inside experiments the modules stand on floors (EXPERIMENT_FLOORS: primitives, the run model's parts,
  what is built on them, one run, drivers, sweeps, the campaign); a module imports lower floors only.
- The repository is self-contained: no citation of a file outside it or of an issue number.
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("refimpl", "accel", "experiments")
#: rank of each layer: a module may import modules of the same or a lower rank only
RANK = {"refimpl": 0, "accel": 1, "experiments": 2, "cli": 3}


def _project_modules():
    """{dotted module name: path} of every module of the packages, and cli."""
    mods = {"cli": ROOT / "cli.py"}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


MODULES = _project_modules()


def _resolve_relative(module, node):
    """The absolute module named by a relative ``from . import`` in ``module``."""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module):
    """[(imported project module, imported names or None, line)] of ``module``, from its ast."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((alias.name, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve_relative(module, node) if node.level else node.module
            names = [a.name for a in node.names]
            # "from pkg import submodule" imports the submodule
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            out.append((target, [n for n in names if f"{target}.{n}" not in MODULES], node.lineno))
            out.extend((s, None, node.lineno) for s in subs)
    return [(t, names, line) for t, names, line in out if t.split(".")[0] in RANK]


def _layer(module):
    return module.split(".")[0]


def private_attribute_uses(module, layer="refimpl"):
    """[(line, text)] where ``module`` reads a private attribute (``x._name``) of a ``layer`` module."""
    tree = ast.parse(MODULES[module].read_text())
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {(a.asname or a.name.split(".")[0]) for a in node.names if _layer(a.name) == layer}
        elif isinstance(node, ast.ImportFrom):
            target = _resolve_relative(module, node) if node.level else (node.module or "")
            if _layer(target) == layer:
                aliases |= {a.asname or a.name for a in node.names if f"{target}.{a.name}" in MODULES}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in aliases:
                found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_module_list_is_complete():
    assert {"cli", "refimpl", "refimpl.kernels", "refimpl.dynamics", "accel", "accel.cpu",
            "experiments", "experiments.train", "experiments.validate"} <= set(MODULES)


def test_imports_run_one_way():
    bad = []
    for module in MODULES:
        for target, names, line in imports_of(module):
            src, dst = _layer(module), _layer(target)
            where = f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}"
            if dst == "cli":
                bad.append(f"{where}: nothing imports cli")
            elif RANK[dst] > RANK[src]:
                bad.append(f"{where}: against cli.py -> experiments -> accel -> refimpl")
            elif src == "accel" and dst == "refimpl":
                private = [n for n in (names or []) if n.startswith("_")]
                if any(part.startswith("_") for part in target.split(".")[1:]) or private:
                    bad.append(f"{where} {private or ''}: accel uses refimpl's public API only")
    assert not bad, "\n".join(bad)


def test_accel_reads_no_private_refimpl_attribute():
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line}: {text}"
           for m in MODULES if _layer(m) == "accel" for line, text in private_attribute_uses(m)]
    assert not bad, "accel uses refimpl's public API only:\n" + "\n".join(bad)


def private_names_defined(sources):
    """Underscore names (not dunder) defined in the given module sources: module-level functions,
    classes and assignments, methods and class attributes, and attributes set as ``self._x``."""
    names = set()
    for text in sources:
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def refimpl_private_uses(text, refimpl_privates, own_privates):
    """[(line, text)] where the module source ``text`` (of accel) overrides or calls refimpl's private names.

    Overrides: a class derived from a refimpl class (a name imported from refimpl, or an attribute
    of an imported refimpl module) defines any underscore name.  Calls and reads: ``x._name`` where
    refimpl defines ``_name`` and the accel module does not define it itself.
    """
    tree = ast.parse(text)
    from_refimpl, modules = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name.split(".")[0] for a in node.names if _layer(a.name) == "refimpl"}
        elif isinstance(node, ast.ImportFrom) and not node.level and _layer(node.module or "") == "refimpl":
            from_refimpl |= {a.asname or a.name for a in node.names}

    def is_refimpl(expr):
        root = expr
        while isinstance(root, ast.Attribute):
            root = root.value
        return isinstance(root, ast.Name) and (root.id in modules or root.id in from_refimpl)

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(is_refimpl(b) for b in node.bases):
            for item in node.body:
                defined = [item.name] if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) else \
                    [t.id for t in getattr(item, "targets", [getattr(item, "target", None)]) if isinstance(t, ast.Name)]
                found += [(item.lineno, f"class {node.name} overrides {n}") for n in defined
                          if n.startswith("_") and not n.startswith("__")]
        elif isinstance(node, ast.Attribute) and node.attr in refimpl_privates and node.attr not in own_privates:
            found.append((node.lineno, ast.unparse(node)))
    return found


def _refimpl_privates():
    return private_names_defined(path.read_text() for m, path in MODULES.items() if _layer(m) == "refimpl")


def test_accel_neither_overrides_nor_calls_refimpl_privates():
    theirs = _refimpl_privates()
    bad = []
    for module, path in MODULES.items():
        if _layer(module) == "accel":
            text = path.read_text()
            bad += [f"{path.relative_to(ROOT)}:{line}: {what}"
                    for line, what in refimpl_private_uses(text, theirs, private_names_defined([text]))]
    assert not bad, "accel runs refimpl through its public interface (engines), never its private names:\n" + \
        "\n".join(bad)


def test_the_refimpl_private_check_can_fail():
    planted = (
        "import refimpl\n"
        "from refimpl.dynamics import BottleneckSimulator as Base\n"
        "class Sim(refimpl.BottleneckSimulator):\n"
        "    def _check_z(self, Z):\n"
        "        return Z\n"
        "class Other(Base):\n"
        "    _tracked = ()\n"
        "    def public(self):\n"
        "        return 1\n"
        "def f(sim):\n"
        "    return sim._history_terms(None, 0)\n"
        "def g(own):\n"
        "    return own._mine\n"
        "_mine = 1\n")
    theirs = _refimpl_privates()
    assert {"_check_z", "_history_terms", "_tracked"} <= theirs
    found = refimpl_private_uses(planted, theirs, private_names_defined([planted]))
    assert sorted(line for line, _ in found) == [4, 7, 11], found


#: Standard-library modules refimpl may not use (no file I/O, formats or network: the spec computes).
REFIMPL_BANNED_STDLIB = {"json", "csv", "pathlib", "urllib", "pickle", "shelve", "sqlite3", "subprocess", "socket"}


def refimpl_import_violations(source, filename="<source>"):
    """[(line, name)] of the imports in ``source`` that refimpl may not make: anything but NumPy, the
    standard library (less REFIMPL_BANNED_STDLIB) and refimpl's own modules (relative imports)."""
    import sys
    bad = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            allowed = top in ("numpy", "__future__", "refimpl") or (
                top in sys.stdlib_module_names and top not in REFIMPL_BANNED_STDLIB)
            if not allowed:
                bad.append((node.lineno, name))
    return bad


def test_refimpl_is_numpy_only():
    """The executable spec imports NumPy and the standard library only (no file I/O, plotting, CLI,
    Numba, CuPy or any other package, however deep the import sits, e.g. inside a function)."""
    bad = [f"{path.relative_to(ROOT)}:{line} imports {name}" for module, path in MODULES.items()
           if _layer(module) == "refimpl" for line, name in refimpl_import_violations(path.read_text(), str(path))]
    assert not bad, "\n".join(bad)


def test_the_numpy_only_check_can_fail():
    planted = ("import math\nimport numpy as np\nfrom . import angles\n"
               "def phi(a):\n    import cupyx.scipy.special as sp\n    return sp.erf(a)\n"
               "import scipy\nfrom json import dumps\nimport matplotlib.pyplot\n")
    assert sorted(name for _, name in refimpl_import_violations(planted)) == [
        "cupyx.scipy.special", "json", "matplotlib.pyplot", "scipy"]


def _cycles(graph):
    """Every strongly connected component of more than one module (Tarjan), and self-imports."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def module_graph():
    """{module: set of project modules it imports} (a package's import of its own __init__ excluded)."""
    graph = defaultdict(set)
    for module in MODULES:
        graph[module]
        for target, _, _ in imports_of(module):
            if target in MODULES and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    return graph


def test_no_import_cycles():
    assert _cycles(module_graph()) == []


def test_the_cycle_and_direction_checks_can_fail():
    """The checks above see a planted cycle and a planted upward import."""
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(g) == [["a", "b", "c"]]
    tree = ast.parse("from experiments.train import train\nfrom .kernels import _pair\n")
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert _resolve_relative("accel.cpu", nodes[1]) == "accel.kernels"
    assert RANK[_layer(nodes[0].module)] > RANK["accel"]


# ---------------------------------------------------------------------------- self-contained

#: Files checked for citations outside the repository (tracked and new files; data and figures excluded).
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".json", ""}
#: The project machine's data folder is a location, not a citation: tests read the real data sets there
#: when present (and skip otherwise), and docs/ records the commands that made the published results.
#: The README, the user's manual, uses generic paths.
DATA_PATH = re.compile(r"\.\./shared/datasets|/work/shared/datasets")
DATA_PATH_ALLOWED = ("tests/", "docs/")

CITATIONS = [
    (re.compile(r"\bSPEC\b"), "cites SPEC (the project's math is docs/MATH.md)"),
    (re.compile(r"\.\./shared|/work/shared"), "points at a path outside the repository"),
    (re.compile(r"(?i)\bissues?\s*#?\d+\b|(?<![\w&/])#\d{1,4}\b(?!\w)"), "cites an issue number"),
]


def _repository_files():
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / f for f in listed if (ROOT / f).suffix in TEXT_SUFFIXES and (ROOT / f).is_file()
            and not f.startswith(("golden/", "docs/figures/")) and f != "tests/test_architecture.py"]


def citation_problems(text, data_path_allowed=True):
    """[(line number, what)] for every citation outside the repository in ``text``."""
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        if data_path_allowed:
            line = DATA_PATH.sub("", line)
        for pattern, what in CITATIONS:
            if pattern.search(line):
                problems.append((n, what))
    return problems


def test_nothing_cites_outside_the_repository():
    bad = []
    for path in _repository_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        rel = path.relative_to(ROOT).as_posix()
        bad += [f"{rel}:{n}: {what}" for n, what in citation_problems(text, rel.startswith(DATA_PATH_ALLOWED))]
    assert not bad, "\n".join(bad)


def test_the_citation_check_can_fail():
    assert citation_problems("see SPEC §4") and citation_problems("(issue 12)")
    assert citation_problems("fixed in #7.") and citation_problems("open ../shared/paper.txt")
    assert not citation_problems("MATH §4; paper eq 44; np.float64; data in ../shared/datasets")
    assert citation_problems("--data-dir ../shared/datasets", data_path_allowed=False)


# ---------------------------------------------------------------------------- MATH § citations

def math_sections():
    """The section numbers of docs/MATH.md."""
    docs = [ROOT / "docs" / "MATH.md", *sorted((ROOT / "docs" / "math").glob("*.md"))]
    heading = re.compile(r"^#+\s*§(\d+(?:\.\d+)*)\b", re.M)
    return {n for path in docs if path.exists() for n in heading.findall(path.read_text())}


def test_every_math_citation_names_a_section():
    sections = math_sections()
    assert {"1", "2", "2.1", "3", "4", "5", "6", "7"} <= sections
    cite = re.compile(r"MATH\s+§(\d+(?:\.\d+)*)")
    bad = []
    for path in _repository_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            bad += [f"{path.relative_to(ROOT)}:{n}: MATH §{s}" for s in cite.findall(line) if s not in sections]
    assert not bad, "cited sections missing from docs/MATH.md:\n" + "\n".join(bad)


def experiments_private_uses(module, source=None):
    """[(line, text)] where the experiments module ``module`` imports an underscore name of another experiments
    module or reads one (``fileio._x``): each module's private helpers are its own."""
    tree = ast.parse(source if source is not None else MODULES[module].read_text())
    found = [(line, f"imports {target}.{name}") for target, names, line in imports_of_tree(module, tree)
             if _layer(target) == "experiments" and target != module for name in (names or [])
             if name.startswith("_") and not name.startswith("__")]
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve_relative(module, node) if node.level else (node.module or "")
            aliases |= {a.asname or a.name for a in node.names
                        if f"{target}.{a.name}" in MODULES and _layer(target) == "experiments"}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.asname and _layer(a.name) == "experiments"}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append((node.lineno, ast.unparse(node)))
    return found


def imports_of_tree(module, tree):
    """:func:`imports_of` for an already parsed ``tree`` of ``module``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve_relative(module, node) if node.level else node.module
            out.append((target, [a.name for a in node.names], node.lineno))
    return [(t, names, line) for t, names, line in out if t and t.split(".")[0] in RANK]


def test_experiments_modules_use_no_private_name_of_another():
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line}: {text}"
           for m in MODULES if _layer(m) == "experiments" for line, text in experiments_private_uses(m)]
    assert not bad, "experiments modules share public names only:\n" + "\n".join(bad)


def test_the_experiments_private_check_can_fail():
    found = experiments_private_uses("experiments.sweep", "from .train import _read_metrics, train\n"
                                     "from . import fileio\nfileio._alive(1, None)\nfrom .pool import run_local\n")
    assert [text for _, text in found] == ["imports experiments.train._read_metrics", "fileio._alive"]


# ------------------------------------------------------------------ the floors inside experiments

#: The floors of experiments, bottom up (MATH-free plumbing first, the commands' drivers last).  A module
#: imports modules of lower floors only (not of its own floor: the floors fix the order, not just the
#: absence of cycles).  A new module must be given a floor here.
EXPERIMENT_FLOORS = (
    # 0. primitives: validation rules, atomic files, stop requests, devices, data generators, evaluation,
    #    comparison metrics
    ("validate", "fileio", "stop", "devices", "synthetic", "tasks", "evaluation", "metrics"),
    # 1. the run model's parts: data readers, controls, memory estimates, run folders, the SGD loop,
    #    the process pool, the choice of backend, figure files
    ("data", "controls", "memory", "runfolder", "loop", "pool", "backends", "figures"),
    # 2. built on the parts: the config schema, downloads, the plots of runs and sweeps
    ("config", "download", "plots"),
    # 3. one run of something: train, benchmarks, golden files
    ("train", "bench", "golden"),
    # 4. drivers built on one run: the learning-rate probe, finite networks, verify, the GPU check
    ("lr_probe", "finite_sweep", "verify", "gpucheck"),
    # 5. many runs
    ("sweep",),
    # 6. a plan of sweeps in a time budget
    ("campaign",),
)


def _floor_of():
    return {f"experiments.{m}": k for k, floor in enumerate(EXPERIMENT_FLOORS) for m in floor}


def floor_violations(floors, imports):
    """[text] for each import of ``imports`` ({module: [(target, names, line)]}) that does not go to a
    lower floor of ``floors`` ({module: floor})."""
    bad = []
    for module, found in imports.items():
        for target, _, line in found:
            if target in floors and target != module and floors[target] >= floors[module]:
                bad.append(f"{module}:{line} imports {target} (floor {floors[target]} >= {floors[module]})")
    return sorted(bad)


def test_every_experiments_module_has_a_floor():
    floors = _floor_of()
    mods = [m for m in MODULES if _layer(m) == "experiments" and m != "experiments"]
    missing = sorted(m for m in mods if m not in floors)
    gone = sorted(m for m in floors if m not in MODULES)
    assert not missing and not gone, f"give these a floor: {missing}; no such module: {gone}"


def test_experiments_floors_run_one_way():
    floors = _floor_of()
    imports = {m: imports_of(m) for m in floors if m in MODULES}
    bad = floor_violations(floors, imports)
    assert not bad, "experiments modules import lower floors only:\n" + "\n".join(bad)


def test_the_floor_check_can_fail():
    floors = {"experiments.loop": 1, "experiments.train": 3, "experiments.runfolder": 1}
    imports = {"experiments.loop": [("experiments.train", ["train"], 7), ("experiments.runfolder", None, 8)],
               "experiments.train": [("experiments.loop", ["SGDLoop"], 3)]}
    assert floor_violations(floors, imports) == [
        "experiments.loop:7 imports experiments.train (floor 3 >= 1)",
        "experiments.loop:8 imports experiments.runfolder (floor 1 >= 1)"]
