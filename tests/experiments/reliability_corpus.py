"""The reliability corpus: about 280 bad inputs through the command line (in process), classified.

Run from the repository root:  python tests/experiments/reliability_corpus.py
Prints the counts (tracebacks, clear one-line errors, unclear errors, silent acceptances, data lost,
partial writes, legitimate values accepted, runs that diverged after their first step and kept their
last good checkpoint) and one line per problem.  The kills are in tests/experiments/test_faults.py.
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent), str(HERE)]
import numpy as np
from click.testing import CliRunner
import cli
import test_bad_inputs as T
from test_data import make_mnist, make_cifar, cifar_bytes, idx_bytes, write


def main():
    counts = {"traceback": 0, "clear": 0, "unclear": 0, "silent": 0, "data_lost": 0, "partial": 0, "ok_accepted": 0}
    notes = []
    root = Path(tempfile.mkdtemp())

    def run(args):
        return CliRunner().invoke(cli.cli, args)

    def classify(name, res, out=None, expect_fail=True, words=(), must_keep=None, before=None):
        tb = res.exception is not None and not isinstance(res.exception, SystemExit) or "Traceback" in res.output
        if tb:
            counts["traceback"] += 1; notes.append(("TRACEBACK", name, repr(res.exception))); return
        if res.exit_code == 0:
            if expect_fail:
                counts["silent"] += 1; notes.append(("SILENT", name, res.output[-200:]))
            else:
                counts["ok_accepted"] += 1
            return
        lines = [l for l in res.output.splitlines() if l.startswith("Error")]
        line = lines[0] if lines else ""
        good = len(lines) == 1 and all(w.lower() in line.lower() for w in words) and "pickle" not in line
        counts["clear" if good else "unclear"] += 1
        if not good:
            notes.append(("UNCLEAR", name, res.output.strip()[-300:]))
        if out is not None and Path(out).exists() and before is None:
            counts["partial"] += 1; notes.append(("PARTIAL", name, str(list(Path(out).iterdir()))))
        if must_keep is not None:
            now = {p.name: p.read_bytes() for p in Path(must_keep).iterdir() if p.is_file()}
            if now != before:
                counts["data_lost" if set(before) - set(now) else "partial"] += 1
                notes.append(("CHANGED", name, str(sorted(set(before) ^ set(now)))))

    K = [0]

    def fresh(name):
        K[0] += 1
        return root / f"c{K[0]}"

    # 1. numeric options of train: 0, -1, nan, inf, huge, text, empty
    INT_OPTS = T.TRAIN_INT + ["--seed"]
    for opt in INT_OPTS + T.TRAIN_FLOAT:
        for val in ["0", "-1", "nan", "inf", T.HUGE, "abc", "", "1.5"]:
            if opt == "--width" and val == "inf": continue
            legit = (opt == "--seed" and val in ("0", T.HUGE)) or (opt in ("--eval-every", "--checkpoint-every", "--eval-size") and val == T.HUGE) \
                or (opt in T.TRAIN_FLOAT and val == "1.5")
            args = ["train", *T.TINY]
            if opt in args: args[args.index(opt) + 1] = val
            else: args += [opt, val]
            out = fresh(opt)
            res = run(args + ["--out", str(out)])
            if res.exit_code != 0 and "diverged" in res.output and "last good checkpoint" in res.output:
                counts["diverged_kept"] = counts.get("diverged_kept", 0) + 1; continue
            classify(f"train {opt}={val!r}", res, out if not legit else None, expect_fail=not legit, words=(opt.lstrip("-").split("-")[0],))
    # lr huge finite: must diverge with a clear message
    out = fresh("lr"); classify("train --lr 1e300", run(["train", *T.TINY, "--lr", "1e300", "--out", str(out)]), None, words=("diverged",))
    # 2. sweep options
    for opt in ["--steps", "--batch-size", "--lr", "--jobs", "--eval-every", "--init-width", "--train-size", "--test-size", "--eval-size", "--d0", "--dr"]:
        for val in ["0", "-1", "nan", "inf", T.HUGE, "abc", ""]:
            legit = opt in ("--jobs", "--eval-every", "--eval-size") and val == T.HUGE
            args = ["sweep", *T.SWEEP_TINY]
            if opt in args: args[args.index(opt) + 1] = val
            else: args += [opt, val]
            out = fresh(opt)
            res = run(args + ["--out", str(out)])
            if res.exit_code != 0 and "diverged" in res.output:
                counts["diverged_kept"] = counts.get("diverged_kept", 0) + 1; continue
            classify(f"sweep {opt}={val!r}", res, out if not legit else None, expect_fail=not legit)
    for opt, vals in (("--widths", ["0", "-3", "abc", "", "3,3", "nan", "inf,inf", T.HUGE]), ("--seeds", ["-1", "abc", "", "1,1", "nan", "1.5"])):
        for val in vals:
            args = ["sweep", *T.SWEEP_TINY]
            if opt in args: args[args.index(opt) + 1] = val
            else: args += [opt, val]
            out = fresh(opt)
            classify(f"sweep {opt}={val!r}", run(args + ["--out", str(out)]), out, words=(opt.lstrip("-").rstrip("s"),))
    for sched in ["notanaddress", "tcp://127.0.0.1:1", ""]:
        out = fresh("s")
        classify(f"sweep --scheduler {sched!r}", run(["sweep", *T.SWEEP_TINY, "--scheduler", sched, "--out", str(out)]), out, words=("scheduler",))
    # 3. out
    for val in ["", "/proc/nope/run", "/dev/null"]:
        classify(f"train --out {val!r}", run(["train", *T.TINY, "--out", val]), None, words=("out",))
        classify(f"sweep --out {val!r}", run(["sweep", *T.SWEEP_TINY, "--out", val]), None, words=("out",))
    # 4. data files
    for case, word in [("wrong magic (valid idx type, 4 dims)", "magic"), ("labels magic in the images file", "magic"),
                       ("truncated", "truncated"), ("random bytes", "magic"), ("empty", "truncated"), ("float pixels", "magic")]:
        d = fresh("m"); T._mnist_case(d / "data", case); out = d / "run"
        classify(f"mnist {case}", run(["train", "--dataset", "mnist", "--data-dir", str(d / "data"), "--train-size", "20", "--test-size", "10", "-q", "--out", str(out)]), out, words=(word,))
    for case, word in [("10001 records", "10,000"), ("unequal training files", "records"), ("half a record", "record size"), ("label 10", "label"), ("missing", "not found")]:
        d = fresh("c"); make_cifar(d / "data"); folder = d / "data" / "cifar-10-batches-bin"; first = folder / "data_batch_1.bin"
        if case == "10001 records":
            (folder / "test_batch.bin").write_bytes(cifar_bytes(np.zeros((10001, 3, 32, 32), np.uint8), np.arange(10001) % 10))
        elif case == "unequal training files": first.write_bytes(first.read_bytes()[:-3073])
        elif case == "half a record": first.write_bytes(first.read_bytes()[:-1500])
        elif case == "label 10":
            raw = bytearray(first.read_bytes()); raw[0] = 10; first.write_bytes(bytes(raw))
        elif case == "missing": first.unlink()
        out = d / "run"
        classify(f"cifar {case}", run(["train", "--dataset", "cifar", "--data-dir", str(d / "data"), "-q", "--out", str(out)]), out, words=(word,))
    d = fresh("m"); make_mnist(d / "data")
    for args, w in ((["--d0", "5"], "d0"), (["--dr", "3"], "dr")):
        out = d / f"run{args[0]}"
        classify(f"mnist {args}", run(["train", "--dataset", "mnist", "--data-dir", str(d / "data"), "--train-size", "20", "--test-size", "10", "-q", *args, "--out", str(out)]), out, words=(w,))
    # 5. damaged run directories
    base = root / "base"; assert run(["train", *T.TINY, "--out", str(base)]).exit_code == 0
    for case, word in T.RUN_DAMAGE:
        r = fresh(case); shutil.copytree(base, r); T._damage(r, case)
        before = {p.name: p.read_bytes() for p in r.iterdir() if p.is_file()}
        classify(f"resume {case}", run(["train", "-q", "--resume", str(r), "--steps", "12"]), None, words=(word,), must_keep=r, before=before)
    for opts in (["--lr", "3"], ["--width", "4"], ["--out", "x"], ["--force"], ["--seed", "2"], ["--dataset", "mnist"], ["--steps", "4"], ["--steps", "0"]):
        r = fresh("o"); shutil.copytree(base, r); before = {p.name: p.read_bytes() for p in r.iterdir() if p.is_file()}
        classify(f"resume with {opts}", run(["train", "-q", "--resume", str(r), *opts]), None, must_keep=r, before=before)
    for name in ("nonexistent", "empty"):
        r = fresh(name)
        if name == "empty": r.mkdir()
        classify(f"resume {name} dir", run(["train", "-q", "--resume", str(r)]), None)
    # 6. data loss: --force with impossible runs over an existing run
    for extra in (["--width", "100000000"], ["--init-width", "100000000000"], ["--train-size", T.HUGE], ["--batch-size", "1000"], ["--dataset", "mnist", "--data-dir", "/nonexistent"]):
        r = fresh("f"); shutil.copytree(base, r); before = {p.name: p.read_bytes() for p in r.iterdir() if p.is_file()}
        args = ["train", *T.TINY]
        for i in range(0, len(extra), 2):
            if extra[i] in args: args[args.index(extra[i]) + 1] = extra[i + 1]
            else: args += extra[i:i + 2]
        classify(f"--force {extra} over a run", run(args + ["--force", "--out", str(r)]), None, must_keep=r, before=before)
        if list(r.parent.glob(f".{r.name}.*")): counts["partial"] += 1; notes.append(("PARTIAL staging", str(extra), ""))
    # 7. sweep damage
    sw = root / "sw"; assert run(["sweep", *T.SWEEP_TINY, "--steps", "8", "--out", str(sw)]).exit_code == 0
    for case in ("invalid JSON", "runs missing", "config missing", "run without dir", "bad option", "fewer steps", "binary", "runs not a list", "dir outside"):
        s2 = fresh(case); shutil.copytree(sw, s2); path = s2 / "sweep.json"; rec = json.loads(path.read_text()); extra = []
        if case == "invalid JSON": path.write_text("{'runs': ")
        elif case == "binary": path.write_bytes(b"\xff\xfe\x00")
        elif case == "runs missing": del rec["runs"]
        elif case == "runs not a list": rec["runs"] = 3
        elif case == "config missing": del rec["config"]
        elif case == "run without dir": del rec["runs"][0]["dir"]
        elif case == "dir outside": rec["runs"][0]["dir"] = "../../etc"
        elif case == "bad option": rec["config"]["lr"] = -1
        elif case == "fewer steps": extra = ["--steps", "4"]
        if case not in ("invalid JSON", "binary"): path.write_text(json.dumps(rec))
        before = {p.name: p.read_bytes() for p in s2.iterdir() if p.is_file()}
        classify(f"sweep resume {case}", run(["sweep", "--resume", str(s2), *extra]), None, must_keep=s2, before=before)
    # 8. library
    for call, word in [(c, w) for c, w in [
        (lambda: T._sim(X=np.zeros((0, 3)), Y=np.zeros((0, 1))), "at least one"),
        (lambda: T._sim(X=np.ones((8, 3)) * 1j), "complex"),
        (lambda: T._sim().load_state_dict({**T._sim().state_dict(), "A": np.zeros((7, 2))}), "shape"),
        (lambda: T._sim().load_state_dict({**T._sim().state_dict(), "A": np.full((8, 2), np.nan)}), "finite"),
        (lambda: __import__("refimpl").kernels.ntk(np.ones((2, 3)) + 0j, np.ones((2, 3))), "complex"),
    ]]:
        try:
            call(); counts["silent"] += 1; notes.append(("SILENT", "library", word))
        except ValueError as exc:
            counts["clear" if word in str(exc) and "\n" not in str(exc) else "unclear"] += 1
        except Exception as exc:
            counts["traceback"] += 1; notes.append(("TRACEBACK", "library " + word, repr(exc)))
    shutil.rmtree(root, ignore_errors=True)
    total = sum(counts.values())
    print(json.dumps({"cases": total, **counts}, indent=1))
    for n in notes: print(*n, sep=" | ")


if __name__ == "__main__":
    main()
