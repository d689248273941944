"""Sweeps: grids of train overrides, each trial an ordinary run in its own directory; the run
directories are the truth, any executor runs the trials, the summary compares them."""

from __future__ import annotations

import shlex

from rich.console import Console

from .. import display, metrics
from ..config import load_config
from ..errors import SweepError, TrialsMissed
from .executors import create_executor, executor_class
from .plan import rungs
from .prune import epochs_line, resolve_plan, run_pruned
from .runner import SweepInterrupted, jobs_alive, run_sweep
from .spec import (
    MAX_TRIALS,
    Sweep,
    Trial,
    build_trials,
    expand,
    format_value,
    parse_grid_option,
    read_sweep,
    sample_random,
    split_values,
    train_command,
)
from .store import DONE, check_definition, locked_index, read_index, scan, trial_states
from .summary import report_table, summarize, trial_table, write_report
from .tpe import describe, proposals, run_search

__all__ = ["MAX_TRIALS", "Sweep", "SweepInterrupted", "Trial", "build_trials", "expand",
           "format_value", "locked_index", "parse_grid_option", "read_index", "read_sweep",
           "sample_random", "split_values", "sweep_command", "train_command"]


def sweep_command(sweep: Sweep, out: Console, executor: str = "local", jobs: int = 1,
                  dry_run: bool = False, report_only: bool = False, fail_fast: bool = False,
                  retry_failed: bool = False, detach: bool = False, metric: str | None = None,
                  max_trials: int = MAX_TRIALS, prune: bool | None = None,
                  min_epochs: int | None = None, eta: int | None = None) -> None:
    """The sweep command: show the trials, or run them and report; say what did not complete.

    prune (--prune/--no-prune; None: as the file's prune: block says) runs successive halving.
    """
    from .. import tasks

    directory, trials = build_trials(sweep, max_trials)
    check_definition(sweep, directory)  # before anything runs or is written: one folder, one sweep
    base = trials[0].cfg if trials else load_config(sweep.base, sweep.overrides)
    if sweep.tpe:  # the trials proposed so far; the search proposes the rest
        trials = [p.trial for p in proposals(sweep, directory)]
    default = tasks.get(base.task).metric  # the task's own: val_accuracy, f, val_loss
    plan = resolve_plan(sweep, prune, min_epochs, eta, metric, default)
    metric = metric or default
    best = display.Best(metric)
    engine_class = executor_class(executor)
    if detach and not engine_class.detachable:
        raise SweepError(f"--detach: {engine_class.attached_because} and stop with it; detach "
                         "with --executor slurm, or run the sweep in tmux/nohup.")
    engine = None if report_only or dry_run else create_executor(
        executor, sweep.executor.get(executor) or {}, jobs)
    if engine is not None:  # the live display starts from the best of what is done
        before = trial_states(trials, scan(directory), lambda jobs: set())
        for t in trials:
            if before[t.hash].state == DONE:
                best.offer(t, before[t.hash].summary)
    try:
        if dry_run or report_only:
            states = trial_states(trials, scan(directory), lambda jobs: set())
            counts = None
        elif sweep.tpe:
            if detach:
                raise SweepError("--detach with tpe: each trial is proposed from the results of "
                                 "those before, so the sweep command has to wait for them; run it "
                                 "without --detach")
            counts = run_search(sweep, directory, engine, metric, plan, retry_failed, fail_fast,
                                lambda: display.sweep_progress(out, best),
                                lambda text: out.print(text, markup=False), base.train.epochs)
            trials = [p.trial for p in proposals(sweep, directory)]
            states = trial_states(trials, scan(directory), lambda jobs: jobs_alive(engine, jobs))
        elif plan is not None:
            if detach:
                raise SweepError("--detach with --prune: a rung is decided when its trials end, "
                                 "so the sweep command has to wait for them; run it without --detach")
            counts = run_pruned(sweep, directory, trials, plan, engine, fail_fast,
                                lambda: display.sweep_progress(out, best),
                                lambda text: out.print(text, markup=False))
            states = trial_states(trials, scan(directory), lambda jobs: jobs_alive(engine, jobs))
        else:
            counts = run_sweep(sweep, directory, trials, engine, retry_failed, fail_fast, detach,
                               display.sweep_progress(out, best))
            states = trial_states(trials, scan(directory), lambda jobs: jobs_alive(engine, jobs))
    finally:
        if engine is not None:
            engine.close()
    if dry_run:
        if sweep.tpe:
            for line in describe(sweep, metric, jobs, plan, base.train.epochs,
                                 proposals(sweep, directory), states):
                out.print(line, markup=False)
        elif plan is not None:
            epochs = trials[0].cfg.train.epochs
            out.print(f"prune: rungs at epochs {', '.join(map(str, rungs(plan.min_epochs, plan.eta, epochs)))}"
                      f"; the best 1/{plan.eta} by {plan.metric} go on at each", markup=False)
        if sweep.tpe and not trials:
            return
        out.print(trial_table(sweep, directory, trials, states))
        out.print("Each trial is the command:")
        for t in trials:
            out.print("  " + shlex.join(train_command(sweep, t)), markup=False)
        return
    if counts and counts.get("detached") is not None:
        out.print(f"submitted {counts['detached']} trials to {executor}; they run without this "
                  "command. Run the same command again to follow them and collect the results "
                  "(it submits nothing twice).", markup=False)
        return
    rows = summarize(sweep, trials, states, metric)
    if any(r["mean"] is not None for r in rows):
        out.print(report_table(sweep, rows, metric))
        files = write_report(sweep, directory, rows, metric)
        out.print(f"wrote {', '.join(str(p) for p in files)}", markup=False)
    else:
        out.print(f"sweep {sweep.name}: no completed trial yet, so no summary.", markup=False)
    if counts is None:
        return
    if plan is not None:
        if counts["ran"]:
            out.print(f"{counts['ran']} trial runs in {counts['seconds']:.1f}s: {counts['completed']} "
                      f"completed, {counts['paused']} paused at a rung, {counts['failed']} failed, "
                      f"{counts['interrupted']} interrupted", markup=False)
        else:
            out.print("nothing to run: every configuration is completed or pruned at a rung "
                      "(--no-prune trains the pruned ones to the end)", markup=False)
        if counts["configurations"]:
            out.print(epochs_line(counts), markup=False)
        missed = counts["failed"] + counts["interrupted"] + counts["undecided"]
    elif counts["ran"]:
        # the job slots' time that the trials of this command did not spend in their own runs:
        # each trial process's start-up, and slots left idle
        overhead = (f"; sweep overhead {(counts['seconds'] * counts['jobs'] - counts['trial_seconds']) / counts['own']:.1f}s "
                    "per trial beyond its own run" if counts["own"] else "")
        out.print(f"{counts['ran']} trials in {counts['seconds']:.1f}s: {counts['completed']} "
                  f"completed, {counts['failed']} failed, {counts['interrupted']} interrupted"
                  f"{overhead}", markup=False)
    else:
        failed = (f", {counts['failed_before']} failed before (--retry-failed runs them again)"
                  if counts["failed_before"] else "")
        out.print(f"nothing to run: {counts['done_before']} of {counts['total']} trials "
                  f"already completed{failed}", markup=False)
    if plan is None:
        missed = counts["failed_total"] + counts["interrupted"] + counts["not_run"]
    if missed:
        raise TrialsMissed(
            f"{missed} of {counts['total']} trials did not complete; each trial's run directory in "
            f"{directory} holds its trial.log, and {directory}/sweep.json lists the errors. Running "
            "the same command again continues interrupted trials; --retry-failed also re-runs the "
            "failed ones.")


def ranked_metrics() -> list[str]:
    return metrics.ranked()
