"""Thin Typer commands: parse, load the config, call one function, turn user errors into exit codes."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from .errors import BUG_EXIT_CODE, MnistlabError

class Stderr(Console):
    """Errors and notes: wrapped between words on a terminal; in a pipe or log one line per
    paragraph, so that grep finds a message whole."""

    def print(self, *objects, **kwargs) -> None:
        kwargs.setdefault("soft_wrap", not self.is_terminal)
        super().print(*objects, **kwargs)


err = Stderr(stderr=True, highlight=False)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-paragraph error on stderr (as plain text, never markup); return the Exit."""
    err.print(Text.assemble(("error: ", "bold red"), message))
    return typer.Exit(code)


def _plain_flags(command, ctx) -> None:
    """No <bool> after a flag in --help: Typer shows every option's type, but a flag takes no value."""
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


def _click_exceptions() -> tuple[type, ...]:
    """Click's own exceptions (usage errors, exits), from the click that this Typer uses (its own
    copy in recent versions)."""
    import sys

    base = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    module = sys.modules[base.__module__]
    return (base, typer.Exit, typer.Abort, *(getattr(module, name) for name in ("Exit", "Abort")
                                             if hasattr(module, name)))


def is_bug(e: BaseException) -> bool:
    """An exception the error handler reports as a bug in mnistlab: neither a MnistlabError, nor
    Ctrl-C, nor Click's own (usage errors, exits)."""
    return isinstance(e, Exception) and not isinstance(e, (MnistlabError, *_click_exceptions()))


def _crash_context(e: BaseException) -> dict:
    """What the failing command was given and touched, read from the traceback's frames: the
    command, its main argument, the innermost file path and run directory in mnistlab's code."""
    out: dict = {"command": None, "argument": None, "file": getattr(e, "filename", None),
                 "run_dir": None}
    package = Path(__file__).resolve().parent
    tb = e.__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in frames:
        code = frame.f_code
        if code.co_argcount and any(c.callback is not None and c.callback.__code__ is code
                                    for c in app.registered_commands):
            out["command"] = (code.co_name.rstrip("_")).replace("_", "-")
            out["argument"] = frame.f_locals.get(code.co_varnames[0])
    for frame in reversed(frames):
        if not Path(frame.f_code.co_filename).resolve().is_relative_to(package):
            continue
        local = frame.f_locals
        if out["file"] is None and isinstance(local.get("path"), (str, Path)):
            out["file"] = local["path"]
        run_dir = local.get("run_dir")
        if out["run_dir"] is None and isinstance(run_dir, (str, Path)) and \
                (Path(run_dir) / "summary.json").is_file():
            out["run_dir"] = Path(run_dir)
    arg = out["argument"]
    if out["run_dir"] is None and isinstance(arg, (str, Path)) and (Path(arg) / "summary.json").is_file():
        out["run_dir"] = Path(arg)
    return out


def report_bug(e: BaseException, debug: bool) -> typer.Exit:
    """The one paragraph of an exception that is a bug: what was being done, the file involved,
    where the traceback was saved (the run directory, else ~/.cache/mnistlab/crashes); --debug or
    MNISTLAB_DEBUG=1 prints the traceback instead."""
    import platform
    import sys
    import traceback
    from datetime import datetime

    from . import __version__
    from .files import atomic_write_text, cache_root

    trace = "".join(traceback.format_exception(e))
    if debug:
        err.print(Text(trace.rstrip()))
        return fail(f"the traceback above is a bug in mnistlab {__version__}; please open an issue "
                    "with it.", BUG_EXIT_CODE)
    where = _crash_context(e)
    doing = f"mnistlab {where['command']}" if where["command"] else "mnistlab"
    arg = where["argument"]
    if isinstance(arg, (list, tuple)):
        arg = " ".join(map(str, arg))
    if arg not in (None, "", []):
        doing += f" {arg}"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    report = (f"mnistlab {__version__} crashed at {datetime.now().isoformat(timespec='seconds')}\n"
              f"command: {doing}\nargv: {sys.argv}\nfile: {where['file']}\n"
              f"python {platform.python_version()} on {platform.platform()}\n\n{trace}")
    saved = None
    for folder in ([where["run_dir"]] if where["run_dir"] else []) + [cache_root() / "crashes"]:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / f"crash-{stamp}.txt", report)
            saved = folder / f"crash-{stamp}.txt"
            break
        except (OSError, MnistlabError):
            continue
    what = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}" if str(e).strip() \
        else type(e).__name__
    involved = f" (file involved: {where['file']})" if where["file"] else ""
    kept = (f"the full traceback is saved in {saved}; please open an issue with this file"
            if saved else "the traceback could not be saved; run again with --debug and open an "
            "issue with what it prints")
    return fail(f"while running '{doing}'{involved}, mnistlab met an unexpected {what}. This is a "
                f"bug in mnistlab, not a problem with your input: {kept}. Run again with --debug "
                "(or MNISTLAB_DEBUG=1) to see the traceback here.", BUG_EXIT_CODE)


class Commands(TyperGroup):
    """The one error handler: a MnistlabError becomes its message and its exit code; any other
    exception is a bug, reported as one paragraph with exit code 70 (report_bug)."""

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None:
            _plain_flags(command, ctx)
        return command

    def format_help(self, ctx, formatter):
        _plain_flags(self, ctx)
        return super().format_help(ctx, formatter)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MnistlabError as e:
            raise fail(e.message(), e.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted; nothing more was written.", 130) from None
        except BrokenPipeError:  # the reader went away (mnistlab ... | head): stop quietly, as
            with contextlib.suppress(OSError, ValueError):  # other tools do
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
            raise typer.Exit(141) from None
        except OSError as e:  # a write no files.writing() wrapped: still a disk error, not a traceback
            from .files import DISK_REASONS, disk_error

            if e.errno not in DISK_REASONS:
                raise report_bug(e, _debug(ctx)) from None
            error = disk_error(Path(e.filename or "a file"), e)
            raise fail(error.message(), error.exit_code) from None
        except Exception as e:
            if hasattr(e, "option_name") and hasattr(e, "possibilities"):  # (Typer's) NoSuchOption
                setting_hint(e, sys.argv)
            if not is_bug(e):
                raise
            raise report_bug(e, _debug(ctx)) from None


def setting_hint(e: Exception, argv: list[str]) -> None:
    """An option that is a config setting (--epochs 3) points at its override (train.epochs=3),
    not at an option whose name looks alike (--until-epoch)."""
    from .config import ALL_KEYS

    name = e.option_name.lstrip("-").split("=")[0].replace("-", "_")
    keys = [k for k in ALL_KEYS if k.rsplit(".", 1)[-1] == name or k == name]
    if len(keys) != 1:
        return
    given = next((a.split("=", 1)[1] for a in argv if a.startswith(e.option_name + "=")), None)
    if given is None and e.option_name in argv and argv.index(e.option_name) + 1 < len(argv):
        given = argv[argv.index(e.option_name) + 1]
    e.possibilities = []
    e.message = (f"No such option: {e.option_name}. Settings are key=value overrides after the "
                 f"config: {keys[0]}={given if given and not given.startswith('-') else 'VALUE'}")


def _debug(ctx) -> bool:
    """--debug, or MNISTLAB_DEBUG set to anything but empty or 0."""
    return bool(ctx.meta.get("mnistlab.debug")) or os.environ.get("MNISTLAB_DEBUG", "") not in ("", "0")


app = typer.Typer(
    cls=Commands, help="Train, sweep and evaluate dense and convolutional networks on the MNIST family.",
    no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False)


TRUST = typer.Option(False, "--trust-run-code",
                     help="For a run of your own model class (model.kind: module) whose file has "
                          "changed or is gone: import the copy of the code kept in the run "
                          "directory. This executes that Python file; use it only for runs you trust.")

OVERRIDES = typer.Argument(None, help="key=value overrides, e.g. optim.lr=0.01 train.epochs=3",
                           show_default=False)


@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="YAML config, e.g. configs/cnn.yaml",
                                            show_default=False),
    overrides: Optional[List[str]] = OVERRIDES,
    print_config: bool = typer.Option(False, "--print-config",
                                      help="Show the fully resolved config and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the final summary."),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN_DIR",
                                          help="Continue an interrupted run from its last.pt."),
    until_epoch: Optional[int] = typer.Option(
        None, "--until-epoch", metavar="K", show_default=False,
        help="Stop after epoch K of the full schedule, saved as paused; --resume continues it."),
    run_dir: Optional[Path] = typer.Option(
        None, "--run-dir", metavar="DIR",
        help="Write the run into DIR: a new run, the continuation of an interrupted one, or "
             "nothing for a completed one (what sweep trials use)."),
    trust_run_code: bool = TRUST,
    config_hash: Optional[str] = typer.Option(
        None, "--config-hash", hidden=True,
        help="Refuse to train unless the config has this hash (what a sweep trial was validated as)."),
) -> None:
    """Train the model a YAML config describes; write the run into runs/."""
    from . import api, display
    from .training import completed

    overrides = overrides or []
    if until_epoch is not None and until_epoch < 1:
        raise fail(f"--until-epoch: {until_epoch} is before the first epoch; give 1 or more.")
    if resume is not None:
        if config is not None or overrides or run_dir is not None:
            raise fail("--resume continues a run with the config it was started with; "
                       "give only the run directory: mnistlab train --resume RUN_DIR")
        if completed(resume):  # exit 0: resuming a finished run is a no-op, not a failure
            err.print(Text(f"{resume}: the run has already completed; nothing to resume, "
                           "its files are left as they are."))
            return
        cfg = api.load(None, resume=resume)
    elif trust_run_code:
        raise fail("--trust-run-code runs the model code kept in a run directory, so it goes with "
                   "--resume RUN_DIR; a new run imports the file its config names.")
    elif config is None:
        raise fail("give a config file, e.g. mnistlab train configs/cnn.yaml "
                   "(or --resume RUN_DIR)")
    else:
        cfg = api.load(config, overrides)
    if config_hash is not None:
        from .config import config_hash as hash_of

        if hash_of(cfg) != config_hash:
            raise fail(f"{config}: the trial's config now has hash {hash_of(cfg)}, not the "
                       f"{config_hash} its sweep validated: the file, or the model code it names, "
                       "changed after the sweep submitted it, so the trial was not trained. Run the "
                       "sweep command again to validate the current files.")
    if print_config:
        from .config import defaults_path

        defaults = api.defaults_in(config, overrides) if resume is None else ([], [])
        typer.echo(display.config_text(cfg, str(resume or config), defaults_path(), defaults),
                   nl=False)
        return
    where = Path(os.path.abspath(Path(cfg.runs_dir).expanduser()))
    if resume is None and run_dir is None and not where.is_relative_to(Path.cwd()):
        err.print(Text(f"note: runs go to {where}, outside the working directory."))
    summary = api.train(config, overrides, resume=resume, cfg=cfg, reporter=display.reporter(quiet),
                        run_dir=run_dir, until_epoch=until_epoch, trust_run_code=trust_run_code)
    if summary.get("untouched"):
        typer.echo(f"{run_dir or resume}: already {summary.get('status')} at epoch "
                   f"{summary.get('epochs_completed')}; nothing to do.")


@app.command("eval")
def eval_(
    target: Path = typer.Argument(..., metavar="RUN_DIR_OR_CHECKPOINT",
                                  help="A run directory, or a checkpoint file (.pt) of one."),
    overrides: Optional[List[str]] = typer.Argument(
        None, show_default=False,
        help="Evaluation-only key=value overrides, e.g. data.name=kmnist data.root=DIR"),
    ckpt: Optional[str] = typer.Option(None, "--ckpt", metavar="best|last",
                                       help="Checkpoint of a run directory: last (default) or best."),
    split: str = typer.Option("test", "--split", metavar="test|val|train", help="Split to score."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    trust_run_code: bool = TRUST,
) -> None:
    """Score a trained model: loss, accuracy, per-class accuracy, confusion matrix."""
    import json

    from . import report
    from .evaluation import CKPTS, evaluate_run

    if ckpt is not None and ckpt not in CKPTS:
        raise fail(f"--ckpt: {ckpt!r} is not a checkpoint name; choose best or last.")
    result = evaluate_run(target, ckpt, split, overrides or [], trust_run_code=trust_run_code)
    if result.get("not_saved"):
        err.print(Text(f"note: the result is shown but not saved: {result['not_saved']}"))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        report.eval_tables(result, report.console())


FORMAT = typer.Option("table", "--format", metavar="table|csv|markdown|json", help="Output format.")


def _format(fmt: str) -> str:
    from .report import FORMATS

    if fmt not in FORMATS:
        raise fail(f"--format: {fmt!r} is not a format; choose one of: {', '.join(FORMATS)}")
    return fmt


@app.command("runs")
def runs_(
    runs_dir: Path = typer.Argument(Path("runs"), metavar="RUNS_DIR",
                                    help="Directory holding the runs."),
    sort: str = typer.Option("started", "--sort", metavar="KEY",
                             help="Column or config key; accuracies sort best first."),
    reverse: bool = typer.Option(False, "--reverse", help="Reverse the order."),
    filters: Optional[List[str]] = typer.Option(None, "--filter", metavar="KEY=VALUE",
                                                help="Keep matching runs, e.g. model.kind=conv (repeatable)."),
    status: Optional[List[str]] = typer.Option(None, "--status", metavar="STATUS",
                                               help="completed, running, paused, pruned, interrupted, failed, killed or damaged (repeatable)."),
    all_columns: bool = typer.Option(False, "--all-columns",
                                     help="Also show settings that are the same in every run."),
    fmt: str = FORMAT,
) -> None:
    """List runs with the hyperparameters that differ and their accuracies."""
    from . import report

    fmt = _format(fmt)
    rows = report.find_runs(runs_dir)
    rows = report.sort_rows(report.select(rows, filters or [], status or []), sort, reverse)
    if not rows and fmt == "table":
        err.print(Text(f"no runs{' match' if filters or status else ''} in {runs_dir}."))
        return
    report.runs_table(rows, fmt, all_columns, report.console(), tuple(report.swept_keys(runs_dir)))


@app.command()
def compare(
    run_dirs: List[str] = typer.Argument(..., metavar="RUN RUN ...", help="Two or more run directories."),
    all_keys: bool = typer.Option(False, "--all", help="Show every setting, not only those that differ."),
    fmt: str = typer.Option("table", "--format", metavar="table|markdown|json", help="Output format."),
) -> None:
    """Show the config differences and the metrics of runs side by side."""
    from . import report

    if _format(fmt) == "csv":
        raise fail("--format: compare prints table, markdown or json.")
    dirs, skipped = report.runs_of(run_dirs)
    for note in skipped:
        err.print(note, markup=False)
    if len(dirs) < 2:
        raise fail("give two or more runs to compare, e.g. mnistlab compare runs/A runs/B")
    rows = [report.load_run(d) for d in dirs]
    report.compare(rows, fmt, all_keys, report.console())


@app.command()
def plot(
    run_dirs: List[str] = typer.Argument(..., metavar="RUN [RUN ...]", help="Run directories."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", metavar="FILE",
                                          help="Figure file: .png, .svg or .pdf; learning-curves.png "
                                               "or confusion.png when not given."),
    confusion: bool = typer.Option(False, "--confusion",
                                   help="Draw the run's test confusion matrix instead of curves."),
    ckpt: str = typer.Option("last", "--ckpt", metavar="best|last",
                             help="Checkpoint for --confusion."),
    trust_run_code: bool = TRUST,
    metric: Optional[str] = typer.Option(
        None, "--metric", metavar="METRIC", show_default=False,
        help="For two or more sweep folders: the metric drawn (the task's by default)."),
) -> None:
    """Draw learning curves of runs overlaid, a run's confusion matrix, or sweeps side by side.

    A sweep folder stands for its trials; two or more sweep folders are drawn side by side
    against the swept key they share."""
    import matplotlib

    matplotlib.use("Agg")
    from . import report, tasks
    from .evaluation import saved_or_evaluate

    if len(run_dirs) > 1 and all(report.is_sweep(Path(a)) for a in run_dirs) and not confusion:
        from .sweep import ranked_metrics
        from .sweep.summary import compare_figure

        if metric is not None and metric not in ranked_metrics():
            raise fail(f"--metric {metric}: unknown metric; choose one of: {', '.join(ranked_metrics())}")
        output = output or Path("sweeps.png")
        report.save_figure(compare_figure([Path(a) for a in run_dirs], metric), output)
        typer.echo(f"wrote {output}")
        return
    if metric is not None:
        raise fail("--metric goes with two or more sweep folders, drawn side by side; learning "
                   "curves show every metric per epoch.")
    dirs, skipped = report.runs_of(run_dirs)
    for note in skipped:
        err.print(note, markup=False)
    rows = [report.load_run(d) for d in dirs]
    if trust_run_code and not confusion:
        raise fail("--trust-run-code goes with --confusion, the only plot that runs a model; "
                   "learning curves are drawn from the runs' logs.")
    if confusion:
        if ckpt not in ("best", "last"):
            raise fail(f"--ckpt: {ckpt!r} is not a checkpoint name; choose best or last.")
        if len(rows) != 1:
            raise fail("--confusion draws one run's confusion matrix; give a single run.")
        fig = report.confusion_figure(saved_or_evaluate(rows[0]["dir"], ckpt, trust_run_code))
        output = output or Path("confusion.png")
    elif len(kinds := {tasks.get(r["config"].get("task")) for r in rows}) == 1 and \
            (task := kinds.pop()).figure == "steps":
        fig = report.steps_figure(rows)
        output = output or Path(f"{task.name}.png")
    else:
        fig = report.curves_figure(rows)
        output = output or Path("learning-curves.png")
    report.save_figure(fig, output)
    typer.echo(f"wrote {output}")


@app.command()
def export(
    tool: str = typer.Argument(..., metavar="tensorboard|mlflow",
                               help="TensorBoard's HParams dashboard, or MLflow's tracking UI."),
    run_dirs: List[str] = typer.Argument(..., metavar="RUN [RUN ...]",
                                         help="Runs, sweep folders or folders of runs, e.g. "
                                              "runs/sweep-lr."),
    to: Optional[Path] = typer.Option(None, "--to", metavar="PATH", show_default=False,
                                      help="A folder for tensorboard (./tensorboard by default), "
                                           "a database file for mlflow (./mlflow.db)."),
) -> None:
    """Export runs to TensorBoard or MLflow: settings and metrics, run by run.

    Exporting again adds nothing: a run is written again only when its files changed."""
    from .export import export as export_runs

    done = export_runs(tool, run_dirs, to)
    for note in done.skipped:
        err.print(note, markup=False)
    counts = [f"{len(names)} {what}" for names, what in (
        (done.new, "new"), (done.updated, "updated"), (done.unchanged, "unchanged")) if names]
    n = len(done.new) + len(done.updated) + len(done.unchanged)
    typer.echo(f"exported {n} run{'s' * (n != 1)} to {done.to}"
               f"{' (' + ', '.join(counts) + ')' if counts else ''}; see them with:\n"
               f"  {done.open_with}")


@app.command()
def predict(
    target: Path = typer.Argument(..., metavar="RUN", help="A run directory or checkpoint file."),
    images: List[Path] = typer.Argument(..., metavar="IMAGE [IMAGE ...]",
                                        help="PNG or JPEG images, any size, either polarity."),
    ckpt: Optional[str] = typer.Option(None, "--ckpt", metavar="best|last",
                                       help="Checkpoint of a run directory: last (default) or best."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    trust_run_code: bool = TRUST,
) -> None:
    """Classify your own images of digits or garments; print the top-3 classes."""
    import json

    from . import report
    from .predict import predict as run_predict

    results = run_predict(target, images, ckpt, trust_run_code=trust_run_code)
    failed = [r for r in results if "error" in r]
    for r in failed:
        fail(r["error"])
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    elif len(failed) < len(results):
        out = report.console()
        out.print(report.predictions_table(results, out.width))
    if failed:
        raise typer.Exit(2)


SWEEP_EXAMPLES = """Examples (every trial is an ordinary run under runs/NAME/):

mnistlab sweep configs/sweep-lr.yaml --jobs 2

mnistlab sweep configs/cnn.yaml --grid optim.lr=0.1,0.01 --seeds 0,1

mnistlab sweep configs/cnn.yaml --grid model.channels=[8,16],[16,32]

mnistlab sweep configs/sweep-lr.yaml --dry-run"""


@app.command(epilog=SWEEP_EXAMPLES)
def sweep(
    spec: Path = typer.Argument(..., metavar="SWEEP_FILE_OR_CONFIG", show_default=False,
                                help="A sweep file (base: and grid:/random:), e.g. "
                                     "configs/sweep-lr.yaml, a config with --grid/--seeds, or a "
                                     "sweep directory, e.g. runs/sweep-lr."),
    overrides: Optional[List[str]] = typer.Argument(
        None, show_default=False, help="key=value overrides for every trial, e.g. train.epochs=1"),
    grid: Optional[List[str]] = typer.Option(
        None, "--grid", metavar="KEY=V1,V2", show_default=False,
        help="Sweep a key over values (YAML scalars), e.g. --grid optim.lr=0.1,0.01; repeat "
             "it for a cartesian product (examples below)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", metavar="0,1,2", show_default=False,
                                        help="Replicates of every point (train.seed=N)."),
    name: Optional[str] = typer.Option(
        None, "--name", metavar="NAME", show_default=False,
        help="Sweep name, the directory under runs_dir (default: the file's name: or stem; for a "
             "config, its stem and the swept keys)."),
    executor: str = typer.Option("local", "--executor", metavar="local|slurm|ray",
                                 help="What runs the trials: subprocesses here, SLURM job arrays "
                                      "(submitit) or Ray tasks."),
    jobs: int = typer.Option(1, "--jobs", "-j", metavar="N", help="Trials run at once; locally the "
                                                                   "cores are split between them."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the trials and exit."),
    report_only: bool = typer.Option(False, "--report", help="Write the summary and plots of "
                                                             "what has completed, run nothing."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failed trial."),
    retry_failed: bool = typer.Option(False, "--retry-failed",
                                      help="Run the trials that failed before again."),
    detach: bool = typer.Option(False, "--detach", help="Submit and return at once (slurm, ray); "
                                                        "the same command later collects."),
    max_trials: int = typer.Option(10_000, "--max-trials", metavar="N",
                                   help="Refuse sweeps of more trials than this."),
    metric: Optional[str] = typer.Option(
        None, "--metric", metavar="METRIC", show_default=False,
        help="Ranks the configurations: val_accuracy (the default; val_loss for linreg, f for "
             "quadratic), val_loss, best_val_accuracy, test_accuracy, test_loss, train_accuracy, "
             "train_loss, train_seconds, f or lstsq_gap."),
    prune: Optional[bool] = typer.Option(
        None, "--prune/--no-prune", show_default=False,
        help="Successive halving: train every configuration to --min-epochs, continue the best "
             "1/--eta of them, and so on to train.epochs; the others stay paused as pruned. "
             "--no-prune ignores a prune: block and finishes the pruned trials."),
    min_epochs: Optional[int] = typer.Option(None, "--min-epochs", metavar="N", show_default=False,
                                             help="First rung of --prune (default 1)."),
    eta: Optional[int] = typer.Option(None, "--eta", metavar="N", show_default=False,
                                      help="Each rung of --prune keeps 1/eta (default 2: halving)."),
) -> None:
    """Run a grid of trials, each an ordinary run; resume what is done, then compare them."""
    import sys

    from . import sweep as sw
    from .sweep.executors import EXECUTORS

    if jobs < 1:
        raise fail(f"--jobs: {jobs} trials at a time is not possible; give 1 or more, e.g. --jobs 2.")
    if max_trials < 1:
        raise fail(f"--max-trials: {max_trials} allows no trial; give 1 or more.")
    if min_epochs is not None and min_epochs < 1:
        raise fail(f"--min-epochs: {min_epochs} is not a rung; give 1 or more, e.g. --min-epochs 1.")
    if eta is not None and eta < 2:
        raise fail(f"--eta: {eta} would keep every trial; give 2 or more, e.g. --eta 3.")
    tty = sys.stdout.isatty()
    # markup=False: trial names, overrides and errors are the user's text, printed as typed
    import os

    wide = None if tty or os.environ.get("COLUMNS") else 160  # a pipe: as wide as COLUMNS says
    out = Console(highlight=False, width=wide, soft_wrap=not tty, markup=False)
    ranked = sw.ranked_metrics()
    if metric is not None and metric not in ranked:
        raise fail(f"--metric {metric}: unknown metric; choose one of: {', '.join(ranked)}")
    if executor not in EXECUTORS:
        from .errors import did_you_mean

        hint = did_you_mean(executor, EXECUTORS)
        raise fail(f"--executor {executor}: unknown executor; choose one of: "
                   f"{', '.join(EXECUTORS)}{'; ' + hint if hint else ''}")
    definition = sw.read_sweep(spec, grid or [], seeds, overrides or [], name)
    sw.sweep_command(definition, out, executor, jobs, dry_run, report_only, fail_fast,
                     retry_failed, detach, metric, max_trials, prune, min_epochs, eta)


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"mnistlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Show the version and exit."),
    debug: bool = typer.Option(False, "--debug",
                               help="On an unexpected error (a bug), show the traceback instead of "
                                    "saving it; also MNISTLAB_DEBUG=1."),
) -> None:
    """Train, sweep and evaluate dense and convolutional networks on the MNIST family."""
    ctx.meta["mnistlab.debug"] = debug


def main() -> None:
    try:
        app()
    finally:
        # Python's last garbage collection at exit walks every object that importing torch made
        # (about 0.3 s after every command on a 2-core Xeon); frozen, they are left to the OS.
        # Exit handlers and the closing of files still run.
        gc.freeze()
