#!/usr/bin/env python
"""Command line of bottleneck-dynamics.  Click commands only: the math lives in refimpl/ and accel/.

    python cli.py train [OPTIONS]          train one model (the main job)
    python cli.py --help                   every command

Errors are one line on stderr with a non-zero exit status.  Set
BOTTLENECK_DEBUG=1 to see the full traceback of an unexpected error.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import click


class WidthType(click.ParamType):
    """A positive integer bottleneck width, or ``inf`` for no bottleneck."""

    name = "WIDTH"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            if value >= 1:
                return value
        elif str(value).strip().lower() in ("inf", "infinity"):
            return "inf"
        else:
            try:
                v = int(str(value))
                if v >= 1:
                    return v
            except ValueError:
                pass
        self.fail(f"expected a positive integer or 'inf', got {value!r}", param, ctx)


class PositiveFloat(click.ParamType):
    name = "FLOAT"

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"expected a positive number, got {value!r}", param, ctx)
        if not (v > 0 and v != float("inf")):
            self.fail(f"expected a positive number, got {value!r}", param, ctx)
        return v


WIDTH = WidthType()
POSITIVE = PositiveFloat()
POS_INT = click.IntRange(min=1)


def run_guarded(fn, *args, **kwargs):
    """Call ``fn``; turn expected failures into one-line errors with exit status 2 (1 for internal errors)."""
    from experiments.train import TrainError
    try:
        return fn(*args, **kwargs)
    except TrainError as exc:
        raise click.ClickException(str(exc)) from None
    except (ValueError, OSError) as exc:
        if os.environ.get("BOTTLENECK_DEBUG"):
            raise
        raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    except KeyboardInterrupt:
        raise click.ClickException("interrupted") from None
    except click.ClickException:
        raise
    except Exception as exc:   # noqa: BLE001 - last resort, one line unless debugging
        if os.environ.get("BOTTLENECK_DEBUG"):
            raise
        raise click.ClickException(f"internal error ({type(exc).__name__}): {exc}; "
                                   "rerun with BOTTLENECK_DEBUG=1 for the traceback") from None


@contextlib.contextmanager
def click_progress(total, start):
    """A progress bar on stderr (hidden when stderr is not a terminal)."""
    with click.progressbar(length=total, label="training", file=sys.stderr, show_eta=True,
                           show_pos=True) as bar:
        if start:
            bar.update(start)
        yield bar


def _given_options(skip=()):
    """Names of the options of the current command given on the command line."""
    ctx = click.get_current_context()
    return [p.name for p in ctx.command.params if p.name not in skip
            and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]


def _synthetic_defaults(options, given):
    """Sizes of the synthetic data; --d0 / --dr only when given for mnist / cifar (where they are checked)."""
    if options["dataset"] == "synthetic":
        options["train_size"] = options["train_size"] or 1000
        options["test_size"] = options["test_size"] or 500
    else:
        for name in ("d0", "dr"):
            if name not in given:
                options[name] = None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="bottleneck-dynamics", message="%(version)s")
def cli():
    """Exact function-space simulation of infinitely wide networks with a finite bottleneck."""


# ---------------------------------------------------------------------------- train

@cli.command()
@click.option("--dataset", type=click.Choice(["synthetic", "mnist", "cifar"]), default="synthetic",
              show_default=True, help="Data set (synthetic needs no download).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the MNIST / CIFAR-10 files (default: $BOTTLENECK_DATA, then the user cache).")
@click.option("--train-size", type=POS_INT, default=None,
              help="Number of training points (a fixed seeded subset). [default: 1000 synthetic, all otherwise]")
@click.option("--test-size", type=POS_INT, default=None,
              help="Number of test points (a fixed seeded subset). [default: 500 synthetic, all otherwise]")
@click.option("--width", type=WIDTH, default=10, show_default=True,
              help="Bottleneck width d, or 'inf' for the network without bottleneck.")
@click.option("--steps", type=POS_INT, default=None, help="Number of SGD steps.  [default: 600]")
@click.option("--batch-size", type=POS_INT, default=20, show_default=True, help="SGD batch size B.")
@click.option("--lr", type=POSITIVE, default=2.0, show_default=True,
              help="Learning rate mu (loss 1/(2B) sum |F - y|^2).")
@click.option("--lr-f", type=POSITIVE, default=None, help="Separate rate for f's weights (default --lr).")
@click.option("--lr-g", type=POSITIVE, default=None, help="Separate rate for g's weights (default --lr).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the initial functions and of the batch order.")
@click.option("--init-width", type=POS_INT, default=10_000, show_default=True,
              help="Width n0 of the random network that draws g0, f0, J0 (MATH §3).")
@click.option("--activation", type=click.Choice(["relu", "linear"]), default="relu", show_default=True)
@click.option("--eval-every", type=POS_INT, default=50, show_default=True,
              help="Evaluate train/test loss every this many steps.")
@click.option("--eval-size", type=POS_INT, default=1000, show_default=True,
              help="Training points (a fixed subset) on which the training loss is evaluated.")
@click.option("--checkpoint-every", type=POS_INT, default=None,
              help="Write the checkpoint every this many steps (default: every evaluation).")
@click.option("--backend", type=click.Choice(["numpy", "cpu", "gpu", "auto"]), default="numpy",
              show_default=True, help="numpy = reference; cpu = Numba; gpu = CuPy; auto = gpu if present, else cpu.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True)
@click.option("--d0", type=POS_INT, default=16, show_default=True, help="Input dimension (synthetic only).")
@click.option("--dr", type=POS_INT, default=1, show_default=True, help="Output dimension (synthetic only).")
@click.option("--out", type=click.Path(), default=None,
              help="Run directory. [default: runs/<dataset>-width<d>-seed<s>-<time>]")
@click.option("--force", is_flag=True, help="Overwrite an existing run directory.")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue the run in this directory (with its saved options) up to --steps.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def train(resume_dir, out, force, quiet, steps, **options):
    """Train one model and write a run directory.

    The run directory holds config.json, metrics.csv (step, train_loss,
    test_loss, wall_s, train_acc, test_acc, feature_movement,
    kernel_alignment), checkpoint.npz, loss.png and summary.json.  A run stopped for any reason continues with --resume.
    """
    from experiments.train import TrainConfig, resume as run_resume, train as run_train

    given = _given_options(("resume_dir", "quiet"))
    progress = None if quiet else click_progress
    say = lambda msg: click.echo(msg, err=True)   # noqa: E731
    if resume_dir is not None:
        values = {**options, "out": out, "force": force, "steps": steps}
        path = run_guarded(run_resume, resume_dir, {k: values[k] for k in given}, progress=progress, log=say)
    else:
        _synthetic_defaults(options, given)
        config = TrainConfig(steps=steps or 600, **options)
        target = out if out is not None else Path("runs") / (
            f"{config.dataset}-width{config.width}-seed{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
        path = run_guarded(run_train, config, target, force=force, progress=progress, log=say)
    summary = (path / "metrics.csv").read_text().strip().splitlines()
    click.echo(f"run directory: {path}")
    click.echo(f"last metrics:  {summary[-1] if len(summary) > 1 else '(none)'}  ({summary[0]})")


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
    from experiments.data import download as run_download, resolve_data_dir
    paths = run_guarded(run_download, dataset, data_dir, base_url=base_url,
                        progress=lambda msg: click.echo(msg, err=True))
    click.echo(f"{dataset}: {len(paths)} files verified in {resolve_data_dir(data_dir)}")


# ---------------------------------------------------------------------------- sweep, plot

@cli.command()
@click.option("--dataset", type=click.Choice(["synthetic", "mnist", "cifar"]), default="synthetic",
              show_default=True, help="Data set (the same data for every run).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the MNIST / CIFAR-10 files (default: $BOTTLENECK_DATA, then the user cache).")
@click.option("--train-size", type=POS_INT, default=None,
              help="Number of training points. [default: 1000 synthetic, all otherwise]")
@click.option("--test-size", type=POS_INT, default=None,
              help="Number of test points. [default: 500 synthetic, all otherwise]")
@click.option("--widths", default="inf,10,20,50,100,200,500", show_default=True,
              help="Comma-separated bottleneck widths; 'inf' = no bottleneck.")
@click.option("--seeds", default="0", show_default=True,
              help="Comma-separated seeds (initial functions and batch order) per width.")
@click.option("--steps", type=POS_INT, default=None, help="SGD steps per run.  [default: 600]")
@click.option("--batch-size", type=POS_INT, default=20, show_default=True, help="SGD batch size B.")
@click.option("--lr", type=POSITIVE, default=2.0, show_default=True, help="Learning rate mu.")
@click.option("--lr-f", type=POSITIVE, default=None, help="Separate rate for f's weights (default --lr).")
@click.option("--lr-g", type=POSITIVE, default=None, help="Separate rate for g's weights (default --lr).")
@click.option("--init-width", type=POS_INT, default=10_000, show_default=True,
              help="Width n0 of the random network that draws g0, f0, J0.")
@click.option("--eval-every", type=POS_INT, default=50, show_default=True, help="Steps between evaluations.")
@click.option("--eval-size", type=POS_INT, default=1000, show_default=True,
              help="Training points (a fixed subset) for the training loss and the bottleneck metrics.")
@click.option("--backend", type=click.Choice(["numpy", "cpu", "gpu", "auto"]), default="numpy",
              show_default=True, help="Simulator backend of every run.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True)
@click.option("--d0", type=POS_INT, default=16, show_default=True, help="Input dimension (synthetic only).")
@click.option("--dr", type=POS_INT, default=1, show_default=True, help="Output dimension (synthetic only).")
@click.option("--jobs", "-j", type=POS_INT, default=None,
              help="Local worker processes [default: number of cores]; threads per worker = cores // jobs.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on an existing Dask cluster (tcp://host:port); needs dask[distributed].")
@click.option("--out", type=click.Path(), default=None,
              help="Sweep directory. [default: runs/sweep-<dataset>-<time>]")
@click.option("--force", is_flag=True, help="Overwrite an existing sweep directory.")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue the sweep in this directory with its saved options (finished runs are kept).")
@click.option("--no-plot", is_flag=True, help="Do not write the combined figures at the end.")
def sweep(widths, seeds, jobs, scheduler, out, force, resume_dir, no_plot, steps, **options):
    """Train one model per width and seed, in parallel, into one sweep directory.

    Each run goes to SWEEP_DIR/width-<d> (one seed) or SWEEP_DIR/width-<d>/seed-<s>, with the same
    files as `cli.py train`; sweep.json records every run's status; the combined figures
    (as `cli.py plot`) are written at the end.  A failed run does not stop the others; the exit
    status is non-zero if any run failed.  --resume continues an interrupted sweep (with
    --steps: to a new length).
    """
    from experiments.sweep import parse_seeds, parse_widths, run_sweep
    from experiments.train import TrainConfig

    ctx = click.get_current_context()
    say = lambda msg: click.echo(msg, err=True)   # noqa: E731
    if resume_dir is not None:
        given = [name for name in ("widths", "seeds", *options)
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if given or out or force:
            flag = "--" + (given[0].replace("_", "-") if given else ("out" if out else "force"))
            raise click.UsageError(f"{flag}: a resumed sweep keeps its saved options (only --steps, --jobs "
                                   "and --scheduler may be given with --resume)")
        record = run_guarded(run_sweep, resume_dir, resume=True, steps=steps, jobs=jobs,
                             scheduler=scheduler, plot=not no_plot, log=say)
        target = Path(resume_dir)
    else:
        _synthetic_defaults(options, _given_options())
        width_list = run_guarded(parse_widths, widths)
        seed_list = run_guarded(parse_seeds, seeds)
        config = TrainConfig(steps=steps or 600, width=width_list[0], seed=seed_list[0], **options)
        target = out if out is not None else Path("runs") / f"sweep-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
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
def plot(sweep_dir, figdir, heatmap_steps):
    """Figures of a sweep: loss, accuracy, heatmap, test vs training loss (appendix D.4), features.

    Reads every run of SWEEP_DIR (also a partial or interrupted sweep) and writes PNG files.
    """
    from experiments.plots import plot_sweep
    written = run_guarded(plot_sweep, sweep_dir, figdir, heatmap_steps=heatmap_steps)
    for path in written:
        click.echo(str(path))


# ---------------------------------------------------------------------------- finite networks (appendix F)

@cli.command("finite-sweep")
@click.option("--dataset", type=click.Choice(["synthetic", "mnist", "cifar"]), default="mnist", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the MNIST / CIFAR-10 files (default: $BOTTLENECK_DATA, then the user cache).")
@click.option("--train-size", type=POS_INT, default=None,
              help="Training points (a fixed seeded subset). [default: 1000 synthetic, all otherwise]")
@click.option("--test-size", type=POS_INT, default=None,
              help="Test points (a fixed seeded subset). [default: 500 synthetic, all otherwise]")
@click.option("--widths", default="1,2,4,8,16,32,64,128", show_default=True,
              help="Bottleneck sizes d, comma-separated, or 'paper' for the paper's 36 (1..9, 10..90, ..., 9000).")
@click.option("--hidden", type=POS_INT, default=100_000, show_default=True,
              help="Hidden width n of both wide layers (the paper's 100,000; see README for memory).")
@click.option("--steps", type=POS_INT, default=2000, show_default=True, help="SGD steps per bottleneck size.")
@click.option("--batch-size", type=POS_INT, default=5, show_default=True, help="SGD batch size (the paper's 5).")
@click.option("--lr", type=POSITIVE, default=1.0, show_default=True, help="Learning rate (loss 1/(2B) sum |F - y|^2).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the weights and of the batch order.")
@click.option("--eval-every", type=POS_INT, default=100, show_default=True, help="Steps between evaluations.")
@click.option("--eval-size", type=POS_INT, default=1000, show_default=True,
              help="Training points (a fixed subset) for the training loss and error.")
@click.option("--d0", type=POS_INT, default=16, show_default=True, help="Input dimension (synthetic only).")
@click.option("--dr", type=POS_INT, default=1, show_default=True, help="Output dimension (synthetic only).")
@click.option("--backend", type=click.Choice(["numpy", "gpu"]), default="numpy", show_default=True,
              help="gpu runs the same networks with CuPy arrays.")
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
    if resume_dir is not None:
        ctx = click.get_current_context()
        given = [n for n in options if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
        if given or out or force:
            flag = "--" + (given[0].replace("_", "-") if given else ("out" if out else "force"))
            raise click.UsageError(f"{flag}: a resumed finite sweep keeps its saved options (only --widths may "
                                   "be given with --resume)")
        extra = widths if ctx.get_parameter_source("widths") == click.core.ParameterSource.COMMANDLINE else None
        summary = run_guarded(finite_sweep, None, resume_dir, resume=True, widths=extra, log=say)
        target = Path(resume_dir)
    else:
        if options["dataset"] == "synthetic":
            options["train_size"] = options["train_size"] or 1000
            options["test_size"] = options["test_size"] or 500
        target = Path(out) if out else Path("runs") / f"finite-{options['dataset']}-{time.strftime('%Y%m%d-%H%M%S')}"
        summary = run_guarded(finite_sweep, SweepConfig(widths=widths, **options), target, force=force, log=say)
    click.echo(f"sweep directory: {target}")
    for row in summary["widths"]:
        err = "" if row["test_err"] is None else f"  test_err {row['test_err']:.4f}"
        click.echo(f"d={row['width']}: {row['status']}  train_loss {row['train_loss']:.4g}  "
                   f"test_loss {row['test_loss']:.4g}{err}")
    if summary["diverged"]:
        raise click.ClickException(f"{len(summary['diverged'])} bottleneck size(s) diverged "
                                   f"({', '.join(map(str, summary['diverged']))}); lower --lr")


@cli.command("finite-vs-infinite")
@click.option("--dataset", type=click.Choice(["synthetic", "mnist", "cifar"]), default="synthetic", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Folder with MNIST / CIFAR-10.")
@click.option("--train-size", type=POS_INT, default=200, show_default=True, help="Training points.")
@click.option("--test-size", type=POS_INT, default=200, show_default=True, help="Test points.")
@click.option("--d0", type=POS_INT, default=16, show_default=True, help="Input dimension (synthetic only).")
@click.option("--dr", type=POS_INT, default=1, show_default=True, help="Output dimension (synthetic only).")
@click.option("--width", type=POS_INT, default=10, show_default=True, help="Bottleneck width d.")
@click.option("--hidden", default="500,2000,8000,32000", show_default=True,
              help="Hidden widths n of the finite networks, comma-separated (at least two).")
@click.option("--limit-width", type=POS_INT, default=10_000, show_default=True,
              help="Width n0 of the default initial functions of the 'limit' simulator run.")
@click.option("--steps", type=POS_INT, default=200, show_default=True, help="SGD steps.")
@click.option("--batch-size", type=POS_INT, default=20, show_default=True, help="SGD batch size.")
@click.option("--lr", type=POSITIVE, default=1.0, show_default=True, help="Learning rate (loss 1/(2B) sum |F - y|^2).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Weights and batch order.")
@click.option("--eval-every", type=POS_INT, default=10, show_default=True, help="Steps between evaluations.")
@click.option("--max-ratio", type=POSITIVE, default=0.5, show_default=True,
              help="Check: fail unless gap(largest n) <= MAX_RATIO * gap(smallest n).")
@click.option("--out", type=click.Path(), default=None, help="Output folder. [default: runs/finite-vs-infinite-<time>]")
@click.option("--force", is_flag=True, help="Overwrite an existing comparison in --out.")
def finite_vs_infinite_cmd(out, force, **options):
    """Finite networks of growing width against the simulator (the n -> infinity limit), same data and init.

    Each finite network and its simulator start from the same random network and see the same
    batches; the relative gap of their loss curves must shrink with n.  Writes metrics.csv,
    table.csv, summary.json and finite-vs-infinite.png; exit status 1 if the gap does not shrink.
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
        raise click.ClickException("the finite-to-simulator gap does not shrink with the width: " + "; ".join(lines))
    click.echo("check passed: " + "; ".join(lines))


# ---------------------------------------------------------------------------- verify (paper appendix E)

class IntListType(click.ParamType):
    """Comma-separated positive integers, e.g. ``1000,10000``."""

    name = "N,N,..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            out = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            out = ()
        if not out or min(out) < 1:
            self.fail(f"expected comma-separated positive integers, got {value!r}", param, ctx)
        return out


INT_LIST = IntListType()


def _verify_common(fn):
    """Options shared by every verify subcommand."""
    fn = click.option("--quiet", "-q", is_flag=True, help="No progress messages.")(fn)
    fn = click.option("--out", type=click.Path(file_okay=False), default=None,
                      help="Output folder for <name>.json and <name>.png.  [default: runs/verify/<name>]")(fn)
    fn = click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed.  [default: 0]")(fn)
    return fn


def _run_verify(name, out, quiet, **options):
    from experiments import verify as V
    target = Path(out) if out else Path("runs") / "verify" / name
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    report = run_guarded(V.CHECKS[name], target, log=log, **options)
    for line in V.format_table(report):
        click.echo(line)
    click.echo(f"wrote {report['files'][0]} and {report['files'][1]} ({report['wall_s']:.1f} s)")
    failure = V.first_failure(report)
    if failure:
        raise click.ClickException(failure)


@cli.group()
def verify():
    """Check the theory numerically against finite networks (paper appendix E, MATH §6).

    Each subcommand writes <name>.json (all numbers, the configuration, the verdicts) and
    <name>.png into --out, prints a table, and exits with status 1 and a one-line message when
    a check misses its threshold.  The defaults take well under a minute each on 2 cores
    (theorem3.2 about a minute); raise --samples, --widths, --steps for sharper numbers.
    """


@verify.command("lemma3.1")
@click.option("--widths", type=INT_LIST, default=None, help="Hidden widths n of the heads.  [default: 100,1000]")
@click.option("--samples", type=click.IntRange(min=2), default=None,
              help="Random initialisations per width.  [default: 20000]")
@click.option("--pairs", type=POS_INT, default=None, help="Random input pairs.  [default: 20]")
@click.option("--dim", type=POS_INT, default=None, help="Input dimension of the head.  [default: 2]")
@click.option("--threshold", type=click.FloatRange(min=0), default=None,
              help="Largest relative Frobenius error of each covariance over all pairs.  [default: 0.05]")
@_verify_common
def verify_lemma31(out, quiet, **options):
    """Lemma 3.1: Monte Carlo covariances of (f, J) against Sigma, Sigma_(1), Sigma_(2) (fig 11)."""
    _run_verify("lemma3.1", out, quiet, **options)


@verify.command("theorem3.2")
@click.option("--widths", type=INT_LIST, default=None,
              help="Hidden widths n of the finite networks.  [default: 1000,10000,100000]")
@click.option("--steps", type=POS_INT, default=None, help="Full-batch GD steps.  [default: 40]")
@click.option("--lr", type=POSITIVE, default=None, help="Learning rate.  [default: 0.05]")
@click.option("--samples", type=POS_INT, default=None,
              help="Networks per width (the distances are averaged).  [default: 3]")
@click.option("--points", type=POS_INT, default=None, help="Training points.  [default: 8]")
@click.option("--threshold", type=click.FloatRange(min=0), default=None,
              help="Largest final distance in F and g and median g residual at the largest width.  "
                   "[default: 0.05]")
@_verify_common
def verify_theorem32(out, quiet, **options):
    """Theorem 3.2: wide finite networks vs the simulator; residuals of eqs 12-14 (fig 12)."""
    _run_verify("theorem3.2", out, quiet, **options)


@verify.command("lemma4.1")
@click.option("--widths", type=INT_LIST, default=None,
              help="Hidden widths n of the deep linear networks.  [default: 64,256,1024]")
@click.option("--depths", type=INT_LIST, default=None, help="Depths L = L_f = L_g.  [default: 2,3]")
@click.option("--steps", type=POS_INT, default=None, help="Full-batch GD steps.  [default: 40]")
@click.option("--lr", type=POSITIVE, default=None, help="Learning rate of the deep networks.  [default: 0.05]")
@click.option("--points", type=POS_INT, default=None, help="Training points.  [default: 8]")
@click.option("--threshold", type=click.FloatRange(min=0), default=None,
              help="Largest final distance in F between deep and effective network at the largest width.  "
                   "[default: 0.05]")
@_verify_common
def verify_lemma41(out, quiet, **options):
    """Lemma 4.1: deep linear networks vs the effective network and the simulator (figs 13, 14)."""
    _run_verify("lemma4.1", out, quiet, **options)


@verify.command("inf-limit")
@click.option("--dims", type=INT_LIST, default=None, help="Bottleneck widths d.  [default: 4,16,64,256]")
@click.option("--width", type=POS_INT, default=None, help="Hidden width of the random networks.  [default: 2000]")
@click.option("--samples", type=POS_INT, default=None, help="Random networks per d.  [default: 4]")
@click.option("--points", type=click.IntRange(min=2), default=None, help="Input points.  [default: 10]")
@click.option("--threshold", type=click.FloatRange(min=0), default=None,
              help="Largest mean relative gap to NTK_inf at the largest d.  [default: 0.1]")
@_verify_common
def verify_inf_limit(out, quiet, **options):
    """Bottleneck kernel at initialisation vs NTK_inf as the bottleneck widens (MATH §5)."""
    _run_verify("inf-limit", out, quiet, **options)


# ---------------------------------------------------------------------------- golden, bench (accel)

@cli.command()
@click.option("--regenerate", is_flag=True,
              help="Rewrite golden/ with refimpl (the only way golden files are written).")
@click.option("--cases", default=None, help="Comma-separated golden cases to check.  [default: all]")
def golden(regenerate, cases):
    """Check every available backend against the golden files (or --regenerate them with refimpl)."""
    def go():
        from experiments import golden as gold
        if regenerate:
            gold.regenerate(log=click.echo)
            return
        import accel
        names = None if cases is None else [c.strip() for c in cases.split(",") if c.strip()]
        known = ["kernels", *gold.TRAJECTORIES]
        for c in names or []:
            if c not in known:
                raise ValueError(f"cases: unknown golden case {c!r}; expected some of {', '.join(known)}")
        click.echo(f"{'target':<24} {'case':<20} {'worst quantity':<22} {'error':>9} {'tol':>7}")
        try:
            rows = gold.check(accel.golden_targets(), cases=names, log=click.echo)
        except gold.GoldenError as exc:
            raise ValueError(str(exc)) from None
        bad = [r for r in rows if not r["ok"]]
        if bad:
            raise click.ClickException(f"{len(bad)} of {len(rows)} golden checks failed")
        click.echo(f"all {len(rows)} golden checks within tolerance")
    run_guarded(go)


@cli.command()
@click.option("--out", type=click.Path(dir_okay=False), default="bench.json", show_default=True,
              help="JSON file for the results.")
@click.option("--sizes", type=INT_LIST, default="10000,100000,1000000", show_default=True,
              help="History lengths M.")
@click.option("--widths", type=INT_LIST, default="10,100", show_default=True, help="Bottleneck widths d.")
@click.option("--backends", default="numpy,cpu,gpu", show_default=True,
              help="Comma-separated backends (unavailable ones are skipped with their reason).")
@click.option("--dtypes", default="float64,float32", show_default=True, help="Precisions of cpu/gpu.")
@click.option("--reps", type=POS_INT, default=3, show_default=True, help="Timed steps per point (median).")
@click.option("--numpy-max-m", type=POS_INT, default=1_000_000, show_default=True,
              help="Skip refimpl above this M (it is slow there).")
def bench(out, sizes, widths, backends, dtypes, reps, numpy_max_m):
    """Seconds per step, GFLOP/s and peak memory against M and d for each backend; JSON + table."""
    def go():
        from accel import BACKENDS
        from experiments import bench as b
        names = [x.strip() for x in backends.split(",") if x.strip()]
        for n in names:
            if n not in BACKENDS or n == "auto":
                raise ValueError(f"backends: expected some of numpy, cpu, gpu, got {n!r}")
        dts = [x.strip() for x in dtypes.split(",") if x.strip()]
        for dt in dts:
            if dt not in ("float64", "float32"):
                raise ValueError(f"dtypes: expected float64 and/or float32, got {dt!r}")
        report = b.run(sizes=sizes, widths=widths, backends=names, dtypes=dts, reps=reps,
                       numpy_max_M=numpy_max_m, log=lambda m: click.echo(m, err=True))
        b.write(report, out)
        click.echo(b.table(report))
        click.echo(f"wrote {out}", err=True)
    run_guarded(go)


if __name__ == "__main__":
    cli()
