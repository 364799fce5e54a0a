#!/usr/bin/env python
"""Command line of bottleneck-dynamics.  Click commands only: the math lives in refimpl/ and accel/,
the experiment drivers in experiments/.

    bottleneck train [OPTIONS]             train one model (the main job); also `python cli.py train`
    bottleneck --help                      every command

Exit status (the same for every command):

    0  ok
    1  a run failed: it diverged, was interrupted, some runs of a sweep failed, or an internal error
    2  usage or bad input: an unknown option, a bad value, missing data, an occupied output folder
    3  a check failed: `verify`, `golden`, `finite-vs-infinite`, `gpu-check`

Errors are one line on stderr, usage errors included.  SIGTERM is handled as Ctrl-C (SIGINT): exit status 1,
the last checkpoint kept, one line saying how to resume.  Set BOTTLENECK_DEBUG=1 to see the full traceback of
an unexpected error.  With --json (train, verify, golden, bench) stdout carries exactly one JSON object, also
on failure: {"ok": false, "exit_code": N, "error": "..."} (JsonContractGroup).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import click

from experiments import validate as V
# Every option of a run is declared once in experiments.config (its type, default, bounds, help text and when
# it applies); the commands below take theirs with cli_options(<command>).
from experiments.config import (BENCH, DEFAULT_STEPS, POS_INT, SWEEP, applied_options, checked, cli_options,
                                fill_sizes, given_on_command_line)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CHECK = 0, 1, 2, 3


# ============================================================================ errors and exit codes

class CommandError(click.ClickException):
    """A one-line error with its exit status; under --json also a JSON object on stdout (printed by
    :class:`JsonContractGroup`, unless ``json_printed``: the command already printed its one object)."""

    def __init__(self, message, exit_code=EXIT_FAILED):
        super().__init__(message)
        self.exit_code = exit_code
        self.json_printed = False


def error_object(exc):
    """The --json object of an error: ``{"ok": false, "exit_code": N, "error": "..."}``."""
    return {"ok": False, "exit_code": exc.exit_code, "error": exc.format_message()}


class JsonContractGroup(click.Group):
    """The command group: every error is one line on stderr, and with --json also one JSON object on stdout.

    click's own usage errors (an unknown option, a bad value: exit status 2) are reported here, in one
    line ending with where the help is, instead of click's three lines; errors raised by the commands
    (:class:`CommandError`) likewise.  ``--json`` anywhere on the command line adds the error object
    :func:`error_object` on stdout, so the --json promise holds for errors found while parsing too.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in argv[:argv.index("--")] if "--" in argv else "--json" in argv
        try:
            rv = super().main(argv, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            if isinstance(exc, click.UsageError):
                where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
                click.echo(f"Error: {exc.format_message()}{where}", err=True)
            else:
                exc.show()
            if as_json and not getattr(exc, "json_printed", False):
                click.echo(json.dumps(error_object(exc)))
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            if as_json:
                click.echo(json.dumps({"ok": False, "exit_code": EXIT_FAILED, "error": "aborted"}))
            sys.exit(EXIT_FAILED)
        sys.exit(rv if type(rv) is int else EXIT_OK)      # click.exceptions.Exit (--help, --version): its code


def _first_line(exc):
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def run_guarded(fn, *args, **kwargs):
    """Call ``fn``; turn its failures into one-line errors with the documented exit status.

    NumPy's RuntimeWarnings never reach the user: a value they would concern is checked where it is
    used (divergence, an undefined metric written as an empty cell)."""
    import warnings
    try:
        with warnings.catch_warnings():
            if not os.environ.get("BOTTLENECK_DEBUG"):
                warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"numpy(\.|$)")
            return fn(*args, **kwargs)
    except click.ClickException:
        raise
    except V.RunFailed as exc:
        raise CommandError(str(exc), EXIT_FAILED) from None
    except (V.TrainError, ValueError) as exc:          # bad options or input (DataError is a ValueError)
        if os.environ.get("BOTTLENECK_DEBUG") and not isinstance(exc, V.TrainError):
            raise
        raise CommandError(_first_line(exc), EXIT_USAGE) from None
    except KeyboardInterrupt:                           # the drivers say how to resume where there is something
        raise CommandError("interrupted before anything resumable was written", EXIT_FAILED) from None
    except Exception as exc:   # noqa: BLE001 - OSError, divergence, bugs: one line unless debugging
        if os.environ.get("BOTTLENECK_DEBUG"):
            raise
        if isinstance(exc, (OSError, FloatingPointError)):
            raise CommandError(_first_line(exc), EXIT_FAILED) from None
        raise CommandError(f"internal error ({type(exc).__name__}): {exc}; "
                           "rerun with BOTTLENECK_DEBUG=1 for the traceback", EXIT_FAILED) from None


def refuse_overwrite(paths, force, hint="use --force to overwrite"):
    """CommandError (exit 2) naming the first of ``paths`` that exists, unless ``force``: nothing a user
    made is overwritten without --force."""
    taken = [Path(p) for p in paths if Path(p).exists()]
    if taken and not force:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise CommandError(f"out: {taken[0]} already exists{more}; {hint}", EXIT_USAGE)


def check_out_folder(path, what="out"):
    """Exit status 2 with one line unless ``path`` can be an output folder (experiments.fileio.check_output_folder:
    UTF-8, no link, a folder or creatable in a writable parent); checked before any work starts."""
    from experiments.fileio import check_output_folder
    return run_guarded(check_output_folder, path, what)


def emit_json(obj):
    """The one JSON object of a --json command, on stdout."""
    click.echo(json.dumps(obj, default=float))


# ============================================================================ options

def dataset_label(dataset):
    from experiments.data import dataset_label as label
    return label(dataset)


def _refuse_on_resume(ctx, names, out, force, what, allowed):
    """Usage error (exit 2, one line naming them) for the options among ``names``, ``--out`` and ``--force``
    given on the command line that a resumed ``what`` cannot change (experiments.runfolder.refuse_resume_options)."""
    from experiments.runfolder import refuse_resume_options
    given = given_on_command_line(ctx, names) + ["out"] * bool(out) + ["force"] * bool(force)
    try:
        refuse_resume_options(given, what, allowed)
    except V.TrainError as exc:
        raise click.UsageError(str(exc)) from None


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON summary on stdout (and only that); messages go to stderr.")


# ============================================================================ progress

class Progress:
    """Progress of a training run on stderr: step, current batch loss, steps/s and ETA.

    On a terminal one line is redrawn in place (at most ten times a second); otherwise (a log file, a
    pipe, a batch job) a plain line is printed at most every ``interval`` seconds and once at the end.
    Protocol of :func:`experiments.train.train`: ``progress(total, start)`` returns a context manager
    whose ``update(n, loss=None)`` is called after every step.
    """

    def __init__(self, total, start=0, stream=None, interval=10.0, tty=None):
        self.total, self.step, self.start = total, start, start
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = 0.1 if self.tty else interval
        self.loss = None
        self.shown = None                 # the step of the last line written
        self.t0 = self.last = time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.step > self.start and (self.tty or self.shown != self.step):   # the last line once
            self._show(final=True)
        return False

    def update(self, n=1, loss=None):
        self.step += n
        if loss is not None:
            self.loss = float(loss)
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self._show()

    def line(self):
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = (self.step - self.start) / elapsed
        eta = (self.total - self.step) / rate if rate > 0 else float("inf")
        loss = "" if self.loss is None else f"  batch loss {self.loss:.4g}"
        return (f"step {self.step}/{self.total}{loss}  {rate:.1f} steps/s  "
                f"ETA {_duration(eta)}  elapsed {_duration(elapsed)}")

    def _show(self, final=False):
        self.shown = self.step
        if self.tty:
            self.stream.write("\r" + self.line() + "\033[K" + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


def _duration(seconds):
    if seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


# ============================================================================ the group

@click.group(cls=JsonContractGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="bottleneck-dynamics", message="%(version)s")
def cli():
    """Exact function-space simulation of infinitely wide networks with a finite bottleneck.

    Exit status: 0 ok; 1 a run failed or diverged; 2 usage or bad input; 3 a check failed
    (verify, golden, finite-vs-infinite, gpu-check).
    """


def _on_sigterm(signum, frame):
    """SIGTERM (sent by batch systems before they kill a job) is handled exactly as Ctrl-C: the drivers keep
    the last checkpoint, release their locks and say how to resume.  Further SIGTERMs within 30 s are ignored
    so that this clean-up is not cut short; the request is also recorded, so that a run whose interrupt was
    swallowed (e.g. inside Numba's compiler callbacks) still stops at its next step (:mod:`experiments.stop`)."""
    from experiments import stop
    stop.on_sigterm(signum, frame)


def main():
    """Entry point of the ``bottleneck`` console script (and of ``python cli.py``)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    cli()


# ---------------------------------------------------------------------------- train

@cli.command()
@cli_options("train")
@click.option("--out", type=click.Path(), default=None,
              help="Run directory. [default: runs/<dataset>-width<d>-seed<s>-<time>]")
@click.option("--force", is_flag=True, help="Overwrite an existing run directory.")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue the run in this directory (with its saved options) up to --steps.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@json_option
def train(resume_dir, out, force, quiet, as_json, steps, **options):
    """Train one model and write a run directory.

    The run directory holds config.json, metrics.csv (step, train_loss, test_loss, wall_s,
    train_acc, test_acc, feature_movement, kernel_alignment), checkpoint.npz, loss.png and
    summary.json.  A run stopped for any reason continues with --resume.
    """
    from experiments.train import TrainConfig, resume as run_resume, train as run_train

    ctx = click.get_current_context()
    progress, say = None if quiet else Progress, lambda msg: click.echo(msg, err=True)
    if resume_dir is not None:        # experiments.train.resume refuses the options a resume cannot change
        values = {**options, "out": out, "force": force, "steps": steps}
        given = given_on_command_line(ctx, values)
        path = run_guarded(run_resume, resume_dir, {k: values[k] for k in given}, progress=progress, log=say)
    else:
        config = TrainConfig(steps=steps or DEFAULT_STEPS, **run_guarded(applied_options, ctx, fill_sizes(options)))
        target = out if out is not None else Path("runs") / (
            f"{dataset_label(config.dataset)}-width{config.width}-seed{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
        # with --lr-policy per-width the run probes its rate first (lr_probe.json; silent with -q)
        from experiments.lr_probe import probe_into
        path = run_guarded(run_train, config, target, force=force, progress=progress, log=say,
                           probe=probe_into if config.lr_policy == "per-width" else None,
                           probe_log=None if quiet else say)
    rows = (path / "metrics.csv").read_text().strip().splitlines()
    if as_json:
        summary_file = path / "summary.json"
        emit_json({"ok": True, "run_dir": str(path), "metrics_columns": rows[0].split(","),
                   "last_metrics": rows[-1].split(",") if len(rows) > 1 else None,
                   "summary": json.loads(summary_file.read_text()) if summary_file.exists() else None})
        return
    click.echo(f"run directory: {path}")
    click.echo(f"last metrics:  {rows[-1] if len(rows) > 1 else '(none)'}  ({rows[0]})")


# ---------------------------------------------------------------------------- download

@cli.command()
@click.argument("dataset", type=click.Choice(["mnist", "cifar"]))
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Target folder [default: $BOTTLENECK_DATA, else ~/.cache/bottleneck-dynamics].")
@click.option("--base-url", default=None,
              help="URL prefix serving the official file names [default: the public mirrors].")
def download(dataset, data_dir, base_url):
    """Fetch the official MNIST or CIFAR-10 (binary) files; every sha256 is checked before use.

    MNIST goes to DATA_DIR/mnist/, CIFAR-10 to DATA_DIR/cifar-10-batches-bin/.  Files already present
    with the right checksum are kept.
    """
    from experiments.data import resolve_data_dir
    from experiments.download import download as run_download
    paths = run_guarded(run_download, dataset, data_dir, base_url=base_url,
                        progress=lambda msg: click.echo(msg, err=True))
    click.echo(f"{dataset}: {len(paths)} files verified in {resolve_data_dir(data_dir)}")


# ---------------------------------------------------------------------------- sweep, plot

@cli.command()
@cli_options("sweep")
@click.option("--jobs", "-j", type=POS_INT, default=None,
              help="Local worker processes [default: number of cores; with --backend gpu one per GPU, "
                   "each seeing only its own device]; threads per worker = cores // jobs.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on an existing Dask cluster (tcp://host:port); needs dask[distributed].")
@click.option("--out", type=click.Path(), default=None,
              help="Sweep directory. [default: runs/sweep-<dataset>-<time>]")
@click.option("--force", is_flag=True,
              help="Make a new sweep in an existing sweep directory: runs made with other options are replaced, "
                   "runs with the same options kept (finished: skipped; unfinished: resumed).")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue the sweep in this directory with its saved options (finished runs are kept).")
@click.option("--no-plot", is_flag=True, help="Do not write the combined figures at the end.")
def sweep(widths, seeds, jobs, scheduler, out, force, resume_dir, no_plot, steps, **options):
    """Train one model per width and seed, in parallel, into one sweep directory.

    Each run goes to SWEEP_DIR/width-<d> (one seed) or SWEEP_DIR/width-<d>/seed-<s>, with the same
    files as `train`; sweep.json records every run's status; the combined figures (as `plot`) are
    written at the end.  A failed run does not stop the others; the exit status is 1 if any run
    failed.  --resume continues an interrupted sweep (with --steps: to a new length).
    """
    from experiments.sweep import run_sweep
    from experiments.train import TrainConfig

    ctx = click.get_current_context()
    say = lambda msg: click.echo(msg, err=True)   # noqa: E731
    if resume_dir is not None:
        _refuse_on_resume(ctx, ("widths", "seeds", *options), out, force, "sweep", ("steps", "jobs", "scheduler"))
        record = run_guarded(run_sweep, resume_dir, resume=True, steps=steps, jobs=jobs,
                             scheduler=scheduler, plot=not no_plot, log=say)
        target = Path(resume_dir)
    else:
        width_list, seed_list = run_guarded(checked, SWEEP, {"widths": widths, "seeds": seeds}).values()
        config = TrainConfig(steps=steps or DEFAULT_STEPS, width=width_list[0], seed=seed_list[0],
                             **run_guarded(applied_options, ctx, fill_sizes(options)))
        target = out if out is not None else Path("runs") / f"sweep-{dataset_label(config.dataset)}-{time.strftime('%Y%m%d-%H%M%S')}"
        record = run_guarded(run_sweep, target, config, width_list, seed_list, jobs=jobs,
                             scheduler=scheduler, force=force, plot=not no_plot, log=say)
    skipped = sum(1 for r in record["runs"] if r.get("action") == "skipped")
    click.echo(f"sweep directory: {target}  ({len(record['runs'])} runs done"
               + (f", {skipped} already finished" if skipped else "") + ")")


@cli.command()
@click.argument("sweep_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "figdir", type=click.Path(file_okay=False), default=None,
              help="Folder for the PNG files [default: SWEEP_DIR].")
@click.option("--heatmap-steps", type=POS_INT, default=4000, show_default=True,
              help="Steps shown in the width x step heatmap.")
@click.option("--force", is_flag=True, help="Overwrite figures already in the output folder (e.g. the sweep's own).")
def plot(sweep_dir, figdir, heatmap_steps, force):
    """Figures of a sweep: loss, accuracy, heatmap, test vs training loss (appendix D.4), features.

    Reads every run of SWEEP_DIR (also a partial or interrupted sweep) and writes loss.png,
    accuracy.png (classification), heatmap.png, train_vs_test.png, features.png and tables.md.
    """
    from experiments.plots import SWEEP_FIGURE_FILES, plot_sweep
    from experiments.sweep import SWEEP_FILE, read_sweep
    if (Path(sweep_dir) / SWEEP_FILE).exists():
        run_guarded(read_sweep, sweep_dir, need_config=False)     # damaged or edited: one line naming it
    if figdir is not None:
        check_out_folder(figdir)
    refuse_overwrite([Path(figdir or sweep_dir) / name for name in SWEEP_FIGURE_FILES], force,
                     "use --force to overwrite the figures, or --out another folder")
    written = run_guarded(plot_sweep, sweep_dir, figdir, heatmap_steps=heatmap_steps)
    for path in written:
        click.echo(str(path))


# ---------------------------------------------------------------------------- finite networks (appendix F)

@cli.command("finite-sweep")
@cli_options("finite-sweep")
@click.option("--out", type=click.Path(), default=None, help="Sweep directory. [default: runs/finite-<dataset>-<time>]")
@click.option("--force", is_flag=True, help="Start over in an existing sweep directory.")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Finish the sweep in this directory with its saved options (finished sizes are skipped; "
                   "--widths adds sizes).")
def finite_sweep_cmd(out, force, resume_dir, widths, **options):
    """Appendix F: finite networks of hidden width n across bottleneck sizes, trained by SGD.

    Writes per size OUT/width-DDDDD/metrics.csv (step, train_loss, test_loss, train_err, test_err,
    wall_s) and result.json, then summary.json, summary.csv, finite-losses.png (paper fig 15) and
    finite-final.png (fig 16).  Exit status 1 if a size diverged.
    """
    from experiments.finite_sweep import SweepConfig, finite_sweep
    say = lambda msg: click.echo(msg, err=True)   # noqa: E731
    ctx = click.get_current_context()
    if resume_dir is not None:
        _refuse_on_resume(ctx, options, out, force, "finite sweep", ("widths",))
        extra = widths if given_on_command_line(ctx, ["widths"]) else None
        summary = run_guarded(finite_sweep, None, resume_dir, resume=True, widths=extra, log=say)
        target = Path(resume_dir)
    else:
        target = Path(out) if out else Path("runs") / f"finite-{dataset_label(options['dataset'])}-{time.strftime('%Y%m%d-%H%M%S')}"
        summary = run_guarded(finite_sweep, SweepConfig(widths=widths, **fill_sizes(options)), target, force=force,
                              log=say)
    click.echo(f"sweep directory: {target}")
    for row in summary["widths"]:
        err = "" if row["test_err"] is None else f"  test_err {row['test_err']:.4f}"
        click.echo(f"d={row['width']}: {row['status']}  train_loss {row['train_loss']:.4g}  "
                   f"test_loss {row['test_loss']:.4g}{err}")
    if summary["diverged"]:
        raise CommandError(f"{len(summary['diverged'])} bottleneck size(s) diverged "
                           f"({', '.join(map(str, summary['diverged']))}); lower --lr", EXIT_FAILED)


@cli.command("finite-vs-infinite")
@cli_options("finite-vs-infinite")
@click.option("--out", type=click.Path(), default=None, help="Output folder. [default: runs/finite-vs-infinite-<time>]")
@click.option("--force", is_flag=True, help="Overwrite an existing comparison in --out.")
def finite_vs_infinite_cmd(out, force, **options):
    """Finite networks of growing width against the simulator (the n -> infinity limit), same data and init.

    Each finite network and its simulator start from the same random network and see the same
    batches; the relative gap of their loss curves must shrink with n.  Writes metrics.csv,
    table.csv, summary.json and finite-vs-infinite.png; exit status 3 if the gap does not shrink.
    """
    from experiments.finite_sweep import CompareConfig, finite_vs_infinite, markdown_table
    target = Path(out) if out else Path("runs") / f"finite-vs-infinite-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = run_guarded(finite_vs_infinite, CompareConfig(**options), target, force=force,
                          log=lambda msg: click.echo(msg, err=True))
    click.echo(f"output directory: {target}")
    click.echo(markdown_table(summary["table"], summary["limit"]))
    chk, hidden = summary["check"], summary["config"]["hidden"]
    lines = []
    for name in ("loss", "output"):
        c = chk[name]
        slope = "n/a" if c["loglog_slope"] is None else f"{c['loglog_slope']:.2f}"
        lines.append(f"{name} gap(n={max(hidden)}) / gap(n={min(hidden)}) = {c['ratio']:.3g} "
                     f"(max {chk['max_ratio']}), log-log slope {slope}")
    if not chk["passed"]:
        raise CommandError("the finite-to-simulator gap does not shrink with the width: " + "; ".join(lines),
                           EXIT_CHECK)
    click.echo("check passed: " + "; ".join(lines))


# ---------------------------------------------------------------------------- verify (paper appendix E)

def _verify_common(fn):
    """Options shared by every verify subcommand."""
    fn = json_option(fn)
    fn = click.option("--quiet", "-q", is_flag=True, help="No progress messages.")(fn)
    fn = click.option("--force", is_flag=True, help="Overwrite <name>.json and <name>.png already in --out.")(fn)
    fn = click.option("--out", type=click.Path(file_okay=False), default=None,
                      help="Output folder for <name>.json and <name>.png.  [default: runs/verify/<name>]")(fn)
    return fn


def _run_verify(name, out, quiet, as_json, force=False, **options):
    from experiments import verify as checks
    target = Path(out) if out else Path("runs") / "verify" / name
    check_out_folder(target)
    refuse_overwrite([target / f"{name}.json", target / f"{name}.png"], force)
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    report = run_guarded(checks.CHECKS[name], target, log=log, **options)
    failure = checks.first_failure(report)
    if as_json:
        emit_json({"ok": failure is None, **({"exit_code": EXIT_CHECK, "error": failure} if failure else {}),
                   **checks.jsonable(report)})
    else:
        for line in checks.format_table(report):
            click.echo(line)
        click.echo(f"wrote {report['files'][0]} and {report['files'][1]} ({report['wall_s']:.1f} s)")
    if failure:
        error = CommandError(failure, EXIT_CHECK)
        error.json_printed = as_json                # the report above is the JSON object
        raise error


@cli.group()
def verify():
    """Check the theory numerically against finite networks (paper appendix E, MATH §6).

    Each subcommand writes <name>.json (all numbers, the configuration, the verdicts) and
    <name>.png into --out, prints a table, and exits with status 3 and a one-line message when
    a check misses its threshold.  The defaults take well under a minute each on 2 cores
    (theorem3.2 about a minute); raise --samples, --widths, --steps for sharper numbers.
    """


@verify.command("lemma3.1")
@cli_options("verify lemma3.1")
@_verify_common
def verify_lemma31(out, quiet, as_json, force, **options):
    """Lemma 3.1: Monte Carlo covariances of (f, J) against Sigma, Sigma_(1), Sigma_(2) (fig 11)."""
    _run_verify("lemma3.1", out, quiet, as_json, force, **options)


@verify.command("theorem3.2")
@cli_options("verify theorem3.2")
@_verify_common
def verify_theorem32(out, quiet, as_json, force, **options):
    """Theorem 3.2: wide finite networks vs the simulator; residuals of eqs 12-14 (fig 12)."""
    _run_verify("theorem3.2", out, quiet, as_json, force, **options)


@verify.command("lemma4.1")
@cli_options("verify lemma4.1")
@_verify_common
def verify_lemma41(out, quiet, as_json, force, **options):
    """Lemma 4.1: deep linear networks vs the effective network and the simulator (figs 13, 14)."""
    _run_verify("lemma4.1", out, quiet, as_json, force, **options)


@verify.command("inf-limit")
@cli_options("verify inf-limit")
@_verify_common
def verify_inf_limit(out, quiet, as_json, force, **options):
    """Bottleneck kernel at initialisation vs NTK_inf as the bottleneck widens (MATH §5)."""
    _run_verify("inf-limit", out, quiet, as_json, force, **options)


# ---------------------------------------------------------------------------- golden, bench (accel)

@cli.command()
@click.option("--regenerate", is_flag=True,
              help="Rewrite golden/ with refimpl (the only way golden files are written).")
@click.option("--cases", default=None,
              help="Comma-separated golden cases to check (or to --regenerate, keeping the others).  [default: all]")
@json_option
def golden(regenerate, cases, as_json):
    """Check every available backend against the golden files (or --regenerate them with refimpl).

    Exit status 3 if a backend misses a tolerance.
    """
    say = (lambda msg: click.echo(msg, err=True)) if as_json else click.echo

    def go():
        from experiments import golden as gold
        names = None if cases is None else [c.strip() for c in cases.split(",") if c.strip()]
        known = [*gold.KERNEL_CASES, *gold.TRAJECTORIES]
        for c in names or []:
            if c not in known:
                raise ValueError(f"cases: unknown golden case {c!r}; expected some of {', '.join(known)}")
        if regenerate:
            gold.regenerate(log=say, cases=names)
            return None
        import accel
        skipped = gold.skipped_targets()
        for sk in skipped:
            say(f"{sk['target'] + '/*':<24} skipped: {sk['reason']}")
        say(f"{'target':<24} {'case':<20} {'worst quantity':<22} {'error':>9} {'tol':>7}")
        try:
            return gold.check(accel.golden_targets(), cases=names, log=say), skipped
        except gold.GoldenError as exc:
            raise ValueError(str(exc)) from None

    rows = run_guarded(go)
    if rows is None:
        if as_json:
            emit_json({"ok": True, "regenerated": True})
        return
    rows, skipped = rows
    bad = [r for r in rows if not r["ok"]]
    if as_json:
        failed = {"exit_code": EXIT_CHECK, "error": f"{len(bad)} of {len(rows)} golden checks failed"} if bad else {}
        emit_json({"ok": not bad, **failed, "checks": len(rows), "failed": len(bad), "rows": rows,
                   "skipped": skipped})
    if bad:
        error = CommandError(f"{len(bad)} of {len(rows)} golden checks failed", EXIT_CHECK)
        error.json_printed = as_json
        raise error
    say(f"all {len(rows)} golden checks within tolerance"
        + "".join(f"; {sk['target']} skipped ({sk['reason']})" for sk in skipped))


@cli.command()
@click.option("--out", type=click.Path(dir_okay=False), default=str(Path("runs") / "bench.json"),
              show_default=True, help="JSON file for the results.")
@cli_options("bench", skip=("mnist_step",))
@click.option("--force", is_flag=True, help="Overwrite an existing --out file.")
@cli_options("bench", only=("mnist_step",))
@json_option
def bench(out, sizes, widths, backends, dtypes, reps, numpy_max_m, near_pairs, force, mnist_step, as_json):
    """Seconds per step, GFLOP/s and peak memory against M and d for each backend; JSON + table."""
    check_out_folder(Path(out).parent)
    if Path(out).is_dir():
        raise CommandError(f"out: {out} is a directory; give a file name for the JSON results", EXIT_USAGE)
    refuse_overwrite([out], force)

    def go():
        from experiments import bench as b
        names, dts = checked(BENCH, {"backends": backends, "dtypes": dtypes}).values()
        if names is None:
            from accel import gpu
            names = ["numpy", "cpu"] + (["gpu"] if gpu.available() else [])
        if mnist_step is not None:
            report = {"machine": b.machine_info(), "mnist_step": b.tracked_step(mnist_step, steps=max(reps, 5)),
                      "mnist_step_inf": b.tracked_step(mnist_step, width="inf", steps=max(reps, 5))}
            b.write(report, out)
            return report, "\n".join(
                f"full-MNIST cpu step, width {r['d']}: stored inputs {r['stored_seconds']:.4f} s "
                f"(CPU {r['stored_cpu_seconds']:.4f} s), per-step route {r['per_step_seconds']:.4f} s "
                f"(CPU {r['per_step_cpu_seconds']:.4f} s): x{r['per_step_over_stored']:.2f} "
                f"(CPU x{r['cpu_per_step_over_stored']:.2f})" for r in (report["mnist_step"], report["mnist_step_inf"])), out
        report = b.run(sizes=sizes, widths=widths, backends=names, dtypes=dts, reps=reps,
                       numpy_max_M=numpy_max_m, near=near_pairs, log=lambda m: click.echo(m, err=True))
        path = out
        b.write(report, path)
        return report, b.table(report), path

    report, table, path = run_guarded(go)
    skipped = report.get("skipped", [])
    missing = (f"asked-for backend(s) unavailable: " + "; ".join(f"{x['backend']}: {x['reason']}" for x in skipped)
               if skipped else None)
    if as_json:
        emit_json({"ok": not skipped, "file": str(path), **({"exit_code": EXIT_USAGE, "error": missing}
                                                           if skipped else {}), **report})
    else:
        click.echo(table)
    click.echo(f"wrote {path}", err=True)
    if skipped:                       # the other backends' results are written; the exit status says what is missing
        error = CommandError(f"bench: {missing}", EXIT_USAGE)
        error.json_printed = as_json
        raise error


@cli.command("gpu-check")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for gpucheck.json, table.md and the runs [default: runs/gpu-check-<date>-<time>].")
@click.option("--quick", is_flag=True,
              help="The check before a campaign on a lent GPU (2-3 minutes): GPU suite, golden kernels and three "
                   "trajectories, default train on the gpu, bench at M = 1e6 with near pairs, the 4000-step timing.")
@click.option("--tiny", is_flag=True, help="Toy sizes (seconds; checks the command, not the machine).")
@click.option("--force", is_flag=True, help="Overwrite an earlier check in --out.")
def gpu_check(out, quick, tiny, force):
    """Check a GPU machine: probe, pytest -m gpu, golden, default train, bench --near-pairs, 4000-step
    timing; prints a summary table, one reason per row.  Without a usable GPU it stops within seconds
    with the reason (exit status 3, as when a step fails)."""
    if quick and tiny:
        raise CommandError("--quick and --tiny: choose one", EXIT_USAGE)
    if out is not None:
        check_out_folder(out)
    if out is not None and Path(out).is_dir() and any(Path(out).iterdir()):
        refuse_overwrite([out], force, "use --force to overwrite the check in it, or --out a new folder")

    def go():
        import time
        from experiments import gpucheck
        path = out or str(Path("runs") / f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}")
        config = gpucheck.TINY if tiny else gpucheck.QUICK if quick else gpucheck.FULL
        report = gpucheck.run(path, config, log=lambda m: click.echo(m, err=True))
        return report, gpucheck.table(report), path

    report, table, path = run_guarded(go)
    click.echo(table)
    click.echo(f"wrote {path}/gpucheck.json and {path}/table.md", err=True)
    if report.get("reason"):
        raise CommandError(f"gpu-check: no usable GPU: {report['reason']}", EXIT_CHECK)
    failed = [s["step"] for s in report["steps"] if s["ok"] is False]
    if failed:
        raise CommandError(f"gpu-check: {len(failed)} step(s) failed: {', '.join(failed)}", EXIT_CHECK)


@cli.group(invoke_without_command=True)
@click.option("--budget", type=float, default=None,
              help="Seconds this session may take (runs that do not fit their estimate are not started; "
                   "one running at the end is cut and starts again next time).  Required to run.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Campaign folder (created; given again, what is done is skipped).  Required to run.")
@click.option("--backend", type=click.Choice(["auto", "gpu", "cpu", "numpy"]), default="auto", show_default=True,
              help="auto: the gpu where it can run, else cpu.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True)
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), default=None,
              help="Plan file [default: experiments/campaign_plan.json, the campaign of the paper].")
@click.option("--data-dir", default=None, help="Folder of the MNIST / CIFAR-10 files (as for train).")
@click.option("--only", default=None, help="Comma-separated condition names of the plan to run (default: all, in order).")
@click.option("--widths", default=None, help="Comma-separated widths of the plan to run (default: all).")
@click.option("--seeds", default=None, help="Comma-separated seeds of the plan to run (default: all).")
@click.option("--max-runs", type=POS_INT, default=None, help="Start at most this many runs.")
@click.option("--gflops", type=float, default=None,
              help="Plan with this throughput (GFLOP/s) instead of the calibration and the timed runs.")
@click.option("--partial", is_flag=True,
              help="Also start the first run that does not fit the budget (on a CPU, a paper-scale run spans "
                   "sessions): the budget cuts it and it continues from its last checkpoint next time.")
@click.option("--done-from", type=click.Path(file_okay=False), default=None,
              help="A campaign folder (e.g. docs/campaign, the runs committed so far) whose finished runs count "
                   "as done: copied into --out first, so only the rest runs.")
@click.pass_context
def campaign(ctx, budget, out, backend, dtype, plan_path, data_dir, only, widths, seeds, max_runs, gflops,
             partial, done_from):
    """Run the paper-scale campaign (a fixed, prioritised plan) within --budget SECONDS into --out DIR.

    `bottleneck campaign report DIR` writes the tables and verdicts from whatever has run.
    """
    if ctx.invoked_subcommand is not None:
        return
    if budget is None or out is None:
        raise CommandError("campaign: --budget SECONDS and --out DIR are required (or: campaign report DIR)",
                           EXIT_USAGE)
    if not budget > 0:
        raise CommandError(f"budget: expected a positive number of seconds, got {budget}", EXIT_USAGE)
    if gflops is not None and not gflops > 0:
        raise CommandError(f"gflops: expected a positive number, got {gflops}", EXIT_USAGE)

    def go():
        from experiments import campaign as C
        wl = None if widths is None else list(V.parse_widths(widths))
        sl = None if seeds is None else list(V.parse_int_list(seeds, "seeds", minimum=0))
        ol = None if only is None else [x.strip() for x in only.split(",") if x.strip()]
        session = C.run(out, float(budget), backend=backend, dtype=dtype, plan_path=plan_path,
                        data_dir=data_dir, gflops=gflops, only=ol, widths=wl, seeds=sl, max_runs=max_runs,
                        partial=partial, done_from=done_from, log=lambda m: click.echo(m, err=True))
        C.report(out, plan_path, log=lambda m: click.echo(m, err=True), figures=False)
        return session

    session = run_guarded(go)
    click.echo(f"campaign: ran {len(session['ran'])} run(s) ({len(session['cut'])} cut by the budget), "
               f"{session['left']} left; report: {Path(out) / 'report.md'}")


@campaign.command("report")
@click.argument("campaign_dir", type=click.Path(file_okay=False))
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), default=None,
              help="Plan file the campaign used [default: experiments/campaign_plan.json].")
@click.option("--no-figures", is_flag=True, help="Tables and verdicts only.")
def campaign_report(campaign_dir, plan_path, no_figures):
    """Tables and verdicts from whatever has run in CAMPAIGN_DIR (report.md, report.json, per condition
    tables.md and figures)."""
    def go():
        from experiments import campaign as C
        return C.report(campaign_dir, plan_path, log=lambda m: click.echo(m, err=True), figures=not no_figures)

    run_guarded(go)
    click.echo((Path(campaign_dir) / "report.md").read_text())


if __name__ == "__main__":
    main()
