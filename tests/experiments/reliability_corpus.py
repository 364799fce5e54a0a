"""The reliability corpus: about 280 bad inputs through the command line (in process), classified.

Run from the repository root:  python tests/experiments/reliability_corpus.py  [--round-two: section 9 only]
Prints the counts (tracebacks, clear one-line errors, unclear errors, silent acceptances, data lost,
partial writes, legitimate values accepted, runs that diverged after their first step and kept their
last good checkpoint) and one line per problem.  The kills are in tests/experiments/test_faults.py.
"""
import json
import os
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

    only_round_two = "--round-two" in sys.argv
    if only_round_two:                     # the cases of section 9 only (with the base run and sweep they use)
        base = root / "base"; assert run(["train", *T.TINY, "--out", str(base)]).exit_code == 0
        sw = root / "sw"; assert run(["sweep", *T.SWEEP_TINY, "--steps", "8", "--out", str(sw)]).exit_code == 0
    if not only_round_two:
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
    # 9. round two: the classes of the second held-out set (symlinks, options, plan files, bounds, paths, ...)
    by_class = {}

    def section(name):
        by_class[name] = dict(counts)

    def close(name):
        by_class[name] = {k: counts.get(k, 0) - by_class[name].get(k, 0) for k in counts}

    def snap(folder):
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}

    def user_folder():
        f = fresh("user"); (f / "sub").mkdir(parents=True)
        for name in ("notes.txt", "config.json", "metrics.csv", "checkpoint.npz", "result.json", "sweep.json"):
            (f / name).write_text(f"the user's {name}\n")
        (f / "sub" / "data.bin").write_bytes(b"\x01" * 64)
        return f

    def kept(name, folder, before):
        if snap(folder) != before:
            counts["data_lost"] += 1; notes.append(("DATA LOST", name, str(folder)))

    section("symlinks")
    FS = ["--dataset", "synthetic", "--train-size", "40", "--test-size", "20", "--d0", "3", "--dr", "2", "--hidden", "50",
          "--steps", "4", "--batch-size", "5", "--eval-every", "2", "--lr", "0.5"]
    for extra in ([], ["--force"]):
        tgt = user_folder(); before = snap(tgt); link = fresh("l"); link.symlink_to(tgt)
        classify(f"train --out LINK {extra}", run(["train", *T.TINY, "--out", str(link), *extra]), None, words=("symbolic link",))
        kept(f"train --out LINK {extra}", tgt, before)
        tgt = user_folder(); before = snap(tgt); link = fresh("l"); link.symlink_to(tgt)
        classify(f"sweep --out LINK {extra}", run(["sweep", *T.SWEEP_TINY, "--out", str(link), *extra]), None, words=("symbolic link",))
        kept(f"sweep --out LINK {extra}", tgt, before)
    link = fresh("l"); link.symlink_to(root / "nowhere")
    classify("train --out dangling link", run(["train", *T.TINY, "--out", str(link)]), None, words=("out", "symbolic link"))
    for how in ("resume", "force"):
        s3 = fresh("sl"); shutil.copytree(sw, s3); tgt = user_folder(); before = snap(tgt)
        shutil.rmtree(s3 / "width-2"); (s3 / "width-2").symlink_to(tgt)
        args = ["sweep", "--resume", str(s3), "--steps", "12"] if how == "resume" else ["sweep", *T.SWEEP_TINY, "--steps", "8", "--out", str(s3), "--force"]
        classify(f"sweep {how} with a run folder linked outside", run(args), None, words=("width-2", "symbolic link"))
        kept(f"sweep {how} link", tgt, before)
    fsd = fresh("fs"); assert run(["finite-sweep", *FS, "--widths", "1,2", "--out", str(fsd)]).exit_code == 0
    for how in ("resume", "force"):
        f2 = fresh("fl"); shutil.copytree(fsd, f2); tgt = user_folder(); before = snap(tgt)
        shutil.rmtree(f2 / "width-00002"); (f2 / "width-00002").symlink_to(tgt)
        args = ["finite-sweep", "--resume", str(f2)] if how == "resume" else ["finite-sweep", *FS, "--widths", "1,2", "--out", str(f2), "--force"]
        classify(f"finite-sweep {how} with a size folder linked outside", run(args), None, words=("symbolic link",))
        kept(f"finite-sweep {how} link", tgt, before)
    for name in ("checkpoint.npz", "metrics.csv", "config.json"):
        r = fresh("rl"); shutil.copytree(base, r); outside = fresh("o"); shutil.move(r / name, outside); (r / name).symlink_to(outside)
        b = outside.read_bytes()
        classify(f"resume with {name} a link", run(["train", "-q", "--resume", str(r), "--steps", "12"]), None, words=(name, "symbolic link"))
        if outside.read_bytes() != b: counts["data_lost"] += 1; notes.append(("DATA LOST", name, ""))
    close("symlinks")

    section("options that do not apply")
    d = fresh("m"); make_mnist(d / "data")
    MN = ["--dataset", "mnist", "--data-dir", str(d / "data"), "--train-size", "20", "--test-size", "10"]
    for cmd, base_args in (("train", ["train", *T.TINY]), ("sweep", ["sweep", *T.SWEEP_TINY])):
        for extra, word in ((["--task", "autoencoder", "--dr", "2"], "--dr"), (["--dataset", "multi-index", "--dr", "2"], "--dr"),
                            (["--dataset", "manifold", "--dr", "2"], "--dr"), (["--latent-dim", "3"], "--latent-dim"),
                            ([*MN, "--latent-dim", "3"], "--latent-dim"), (["--lr-fraction", "0.3"], "--lr-fraction"),
                            (["--lr-probe-steps", "5"], "--lr-probe-steps"), (["--lr-policy", "per-width", "--lr", "0.5"], "--lr"),
                            ([*MN, "--dr", "3"], "dr")):
            out = fresh("op"); args = list(base_args)
            if "mnist" in extra and "--d0" in args:        # the tiny synthetic --d0 would be refused first
                k = args.index("--d0"); del args[k:k + 2]
            for i in range(0, len(extra), 2):
                if extra[i] in args: args[args.index(extra[i]) + 1] = extra[i + 1]
                else: args += extra[i:i + 2]
            classify(f"{cmd} {extra}", run(args + ["--out", str(out)]), out, words=(word,))
    # legitimate: config.json records no unused value
    out = fresh("ok"); res = run(["train", *T.TINY, "--task", "autoencoder", "--out", str(out)])
    cfg = json.loads((out / "config.json").read_text())["config"] if res.exit_code == 0 else {}
    if res.exit_code == 0 and all(cfg.get(k) is None for k in ("dr", "latent_dim", "lr_fraction", "lr_probe_steps")):
        counts["ok_accepted"] += 1
    else:
        counts["silent"] += 1; notes.append(("SILENT", "config.json records an unused value", str(cfg)[:200]))
    close("options that do not apply")

    section("several bottlenecks (--chain)")
    for val in ["0", "-1", "abc", "", "3,,4", "1.5", "nan", T.HUGE]:
        out = fresh("ch"); classify(f"train --chain {val!r}", run(["train", *T.TINY, "--chain", val, "--out", str(out)]), out,
                                    words=("chain",))
    out = fresh("ch"); classify("train --chain 2 --lr-scale matched",
                                run(["train", *T.TINY, "--chain", "2", "--lr-scale", "matched", "--out", str(out)]), out,
                                words=("chain", "lr-scale"))
    out = fresh("ch"); classify("sweep --chain abc", run(["sweep", *T.SWEEP_TINY, "--chain", "abc", "--out", str(out)]), out,
                                words=("chain",))
    out = fresh("ch"); res = run(["train", *T.TINY, "--chain", "2,2", "--out", str(out)])
    classify("train --chain 2,2 (legitimate)", res, None, expect_fail=False)
    if res.exit_code == 0:
        cfg_path = out / "config.json"; before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        doc = json.loads(cfg_path.read_text()); doc["config"]["chain"] = [3]; cfg_path.write_text(json.dumps(doc))
        before["config.json"] = cfg_path.read_bytes()
        classify("resume a chain run whose config.json chain was edited", run(["train", "-q", "--resume", str(out), "--steps", "12"]),
                 None, must_keep=out, before=before)
    close("several bottlenecks (--chain)")

    section("schedules and momentum (--lr-schedule, --momentum, --nesterov)")
    for cmd, base_args in (("train", ["train", *T.TINY]), ("sweep", ["sweep", *T.SWEEP_TINY])):
        for val in ["linear", "step:10", "step:0:0.5", "step:10:-1", "step:x:0.5", "warmup", "warmup:0", "warmup:2.5",
                    "cosine:0", "cosine:a", "", "constant:3", T.HUGE]:
            out = fresh("ls"); classify(f"{cmd} --lr-schedule {val!r}",
                                        run([*base_args, "--lr-schedule", val, "--out", str(out)]), out,
                                        words=("lr-schedule",))
        for val in ["1", "1.5", "-0.1", "nan", "inf", "abc", ""]:
            out = fresh("mo"); classify(f"{cmd} --momentum {val!r}", run([*base_args, "--momentum", val, "--out", str(out)]),
                                        out, words=("momentum",))
    out = fresh("mo"); classify("train --chain 2 --momentum 0.5 --lr 0.3 (legitimate)",
                                run(["train", *T.TINY, "--chain", "2", "--momentum", "0.5", "--lr", "0.3", "--out", str(out)]),
                                None, expect_fail=False)
    out = fresh("mo"); res = run(["train", *T.TINY, "--momentum", "0.5", "--nesterov", "--lr-schedule", "cosine",
                                  "--lr", "0.3", "--out", str(out)])
    classify("train --momentum 0.5 --nesterov --lr-schedule cosine (legitimate)", res, None, expect_fail=False)
    if res.exit_code == 0:
        cfg_path = out / "config.json"; before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        doc = json.loads(cfg_path.read_text()); doc["config"]["momentum"] = 0.0; cfg_path.write_text(json.dumps(doc))
        before["config.json"] = cfg_path.read_bytes()
        classify("resume a momentum run whose config.json momentum was edited to 0",
                 run(["train", "-q", "--resume", str(out), "--steps", "12"]), None, must_keep=out, before=before)
    close("schedules and momentum (--lr-schedule, --momentum, --nesterov)")

    section("sweep plan files")
    for case in ("width added", "widths empty", "activation edited", "rate NaN", "run record removed"):
        s2 = fresh(case); shutil.copytree(sw, s2); path = s2 / "sweep.json"; rec = json.loads(path.read_text())
        if case == "width added": rec["widths"].append(5)
        elif case == "widths empty": rec["widths"] = []
        elif case == "activation edited": rec["config"]["activation"] = "erf"
        elif case == "rate NaN": rec["runs"][0]["lr"] = float("nan")
        elif case == "run record removed": rec["runs"] = rec["runs"][1:]
        path.write_text(json.dumps(rec)); before = {p.name: p.read_bytes() for p in s2.iterdir() if p.is_file()}
        classify(f"sweep resume {case}", run(["sweep", "--resume", str(s2), "--steps", "12"]), None, words=("sweep.json",) if case != "activation edited" else ("config.json",), must_keep=s2, before=before)
    pw = fresh("pw"); args = ["sweep", *T.SWEEP_TINY]; args[args.index("--widths") + 1] = "2,3"
    assert run(args + ["--lr-policy", "per-width", "--lr-probe-steps", "3", "--out", str(pw)]).exit_code == 0
    for case in ("probe invalid JSON", "probe rate NaN", "probe rate tiny", "probe activation edited", "probe entry a list", "sweep rate edited", "policy edited"):
        s2 = fresh(case); shutil.copytree(pw, s2); pr, sj = s2 / "lr_probe.json", s2 / "sweep.json"
        p, rec = json.loads(pr.read_text()), json.loads(sj.read_text())
        if case == "probe invalid JSON": pr.write_text('{"widths": ')
        elif case == "probe rate NaN": p["widths"]["2"]["lr"] = float("nan")
        elif case == "probe rate tiny": p["widths"]["2"]["lr"] = 1e-300
        elif case == "probe activation edited": p["options"]["activation"] = "erf"
        elif case == "probe entry a list": p["widths"]["2"] = [1]
        elif case == "sweep rate edited": rec["runs"][0]["lr"] /= 2
        elif case == "policy edited": rec["config"]["lr_policy"] = "fixed"
        if case.startswith("probe") and case != "probe invalid JSON": pr.write_text(json.dumps(p))
        elif not case.startswith("probe"): sj.write_text(json.dumps(rec))
        before = {p.name: p.read_bytes() for p in s2.iterdir() if p.is_file()}
        classify(f"per-width sweep resume {case}", run(["sweep", "--resume", str(s2), "--steps", "12"]), None,
                 words=("lr_probe.json" if case.startswith("probe") else "sweep.json",), must_keep=s2, before=before)
    for case in ("metrics deleted", "result invalid JSON", "config invalid JSON", "result width edited"):
        f2 = fresh("fd"); shutil.copytree(fsd, f2); w2 = f2 / "width-00002"
        if case == "metrics deleted": (w2 / "metrics.csv").unlink()
        elif case == "result invalid JSON": (w2 / "result.json").write_text("{")
        elif case == "config invalid JSON": (f2 / "config.json").write_text("{")
        elif case == "result width edited":
            r2 = json.loads((w2 / "result.json").read_text()); r2["width"] = 20; (w2 / "result.json").write_text(json.dumps(r2))
        before = {p.name: p.read_bytes() for p in f2.iterdir() if p.is_file()}
        classify(f"finite-sweep resume {case}", run(["finite-sweep", "--resume", str(f2)]), None,
                 words=("config.json" if case.startswith("config") else "width-00002",), must_keep=f2, before=before)
    for edit in ("runs not a list", "dir outside"):
        s2 = fresh("pl"); shutil.copytree(sw, s2); rec = json.loads((s2 / "sweep.json").read_text())
        if edit == "runs not a list": rec["runs"] = "x"
        else: rec["runs"][0]["dir"] = "/etc"
        (s2 / "sweep.json").write_text(json.dumps(rec))
        classify(f"plot of a sweep.json with {edit}", run(["plot", str(s2)]), None, words=("sweep.json",))
    close("sweep plan files")

    section("memory and bounds")
    for extra, word in ((["--depth-f", "99999999999999999999"], "depth_f"), (["--w-std", "1e308"], "w_std"),
                        (["--out-std", "1e-200"], "out_std"), (["--out-std", "1e200"], "out_std"), (["--depth-g", "1000", "--init-width", "10000"], "memory"),
                        (["--dataset", "multi-index", "--d0", "16", "--train-size", "100000000"], "memory"),
                        (["--dataset", "manifold", "--d0", "100000000"], "memory"), (["--w-std", "1e30", "--depth-g", "5"], "w_std")):
        out = fresh("b"); args = ["train", *T.TINY]
        for i in range(0, len(extra), 2):
            if extra[i] in args: args[args.index(extra[i]) + 1] = extra[i + 1]
            else: args += extra[i:i + 2]
        classify(f"train {extra}", run(args + ["--out", str(out)]), out, words=(word,))
    out = fresh("tiny"); res = run(["train", *T.TINY, "--out-std", "1e-20", "--out", str(out)])
    if res.exit_code == 0 and "Warning" not in res.output and "nan" not in (out / "metrics.csv").read_text().lower():
        counts["ok_accepted"] += 1
    else:
        counts["unclear"] += 1; notes.append(("UNCLEAR", "tiny --out-std", res.output[-200:]))
    close("memory and bounds")

    section("long and odd paths, exit codes")
    out = root / ("n" * 255); res = run(["train", *T.TINY, "--out", str(out)])
    classify("train --out with a 255-byte name", res, None, expect_fail=False)
    odd = os.fsdecode(os.fsencode(str(root)) + b"/odd-\xff")
    for cmd in (["train", *T.TINY], ["sweep", *T.SWEEP_TINY], ["finite-sweep", *FS, "--widths", "1"],
                ["finite-vs-infinite", "--train-size", "20", "--test-size", "10", "--d0", "3", "--hidden", "50,100", "--steps", "2"]):
        res = run(cmd + ["--out", odd])
        classify(f"{cmd[0]} --out non-UTF-8", res, odd, words=("UTF-8",))
    blocker = fresh("blk"); blocker.write_text("x")
    for cmd in (["train", *T.TINY], ["train", *T.TINY, "--lr-policy", "per-width", "--lr-probe-steps", "2"], ["sweep", *T.SWEEP_TINY],
                ["finite-sweep", *FS, "--widths", "1"], ["finite-vs-infinite", "--train-size", "20", "--test-size", "10", "--d0", "3", "--hidden", "50,100", "--steps", "2"],
                ["verify", "lemma3.1", "--samples", "20", "--pairs", "2", "-q"], ["plot", str(sw)]):
        res = run(cmd + ["--out", str(blocker / "sub")])
        if res.exit_code not in (0, 2):
            counts["unclear"] += 1; notes.append(("EXIT", f"{cmd[0]} bad --out", f"exit {res.exit_code}"))
        else:
            classify(f"{cmd[0]} bad --out", res, None, words=("out",))
    res = run(["bench", "--sizes", "100", "--widths", "2", "--backends", "numpy", "--dtypes", "float64", "--reps", "1", "--out", str(blocker / "sub" / "b.json")])
    classify("bench bad --out", res, None, words=("out",))
    if res.exit_code != 2: counts["unclear"] += 1; notes.append(("EXIT", "bench bad --out", str(res.exit_code)))
    close("long and odd paths, exit codes")

    section("good checkpoint, disk full, kernel cache")
    out = fresh("dv"); res = run(["train", *T.TINY, "--steps", "60", "--lr", "20", "--out", str(out)])
    if res.exit_code == 1 and "diverged" in res.output:
        st = np.load(out / "checkpoint.npz"); init = float((out / "metrics.csv").read_text().splitlines()[1].split(",")[1])
        if float(st["driver_train_loss"]) <= 1000 * init: counts["diverged_kept"] = counts.get("diverged_kept", 0) + 1
        else: counts["silent"] += 1; notes.append(("FALSE", "good checkpoint", str(float(st["driver_train_loss"]))))
    else:
        counts["unclear"] += 1; notes.append(("UNCLEAR", "divergence", res.output[-200:]))
    import errno
    from experiments import fileio
    real = fileio._atomic_write_bytes; seen = [0]

    def full(path, data):
        if Path(path).name == "checkpoint.npz":
            seen[0] += 1
            if seen[0] >= 3: raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)
    fileio._atomic_write_bytes = full
    out = fresh("full")
    try:
        res = run(["train", *T.TINY, "--out", str(out)])
    finally:
        fileio._atomic_write_bytes = real
    classify("train with the disk full", res, None, words=("checkpoint.npz", "no space", "--resume"))
    from accel import standin
    xdg = fresh("xdg"); kdir = xdg / "bottleneck-dynamics" / "kernels"; kdir.mkdir(parents=True); os.chmod(kdir, 0o777)
    old_xdg = os.environ.get("XDG_CACHE_HOME"); os.environ["XDG_CACHE_HOME"] = str(xdg)
    try:
        standin.compile_shared("double f(double x) { return x; }\n", "f"); counts["silent"] += 1; notes.append(("SILENT", "world-writable kernel cache", ""))
    except standin.KernelCacheUnsafe as exc:
        counts["clear" if "writable by group or others" in str(exc) else "unclear"] += 1
    except standin.CompilerUnavailable:
        pass
    finally:
        if old_xdg is None: os.environ.pop("XDG_CACHE_HOME", None)
        else: os.environ["XDG_CACHE_HOME"] = old_xdg
    close("good checkpoint, disk full, kernel cache")
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
    print(json.dumps({"round two, per class": {k: {a: b for a, b in v.items() if b} for k, v in by_class.items()}}, indent=1))
    for n in notes: print(*n, sep=" | ")


if __name__ == "__main__":
    main()
