"""Sweeps: grids of train overrides, each trial an ordinary run; resumable, parallel, summarised."""

from __future__ import annotations

import shlex
from pathlib import Path

from rich.console import Console

from ..errors import TrialsMissed
from .runner import SweepInterrupted, progress_for, run_sweep
from .prune import epochs_line, resolve_plan, rungs, run_pruned
from .spec import (Sweep, Trial, build_trials, expand, format_value, parse_grid_option, read_sweep,
                   sample_random, split_values, train_command)
from .store import locked_index, read_index, runs_by_hash
from .summary import DEFAULT_METRIC, METRICS, report_table, summarize, trial_table, write_report

def sweep_command(sweep: Sweep, jobs: int, dry_run: bool, report_only: bool, fail_fast: bool,
                  metric: str | None, out: Console, prune: bool | None = None,
                  min_epochs: int | None = None, eta: int | None = None) -> str | None:
    """The sweep command: show the trials, or run them and report; say what did not complete.

    prune (--prune/--no-prune; None: as the file's prune: block says) runs successive halving.
    """
    directory, trials = build_trials(sweep)
    plan = resolve_plan(sweep, prune, min_epochs, eta, metric, DEFAULT_METRIC[trials[0].cfg.task])
    metric = metric or DEFAULT_METRIC[trials[0].cfg.task]
    if dry_run:
        if plan is not None:
            epochs = trials[0].cfg.train.epochs
            out.print(f"prune: rungs at epochs {', '.join(map(str, rungs(plan.min_epochs, plan.eta, epochs)))}"
                      f"; the best 1/{plan.eta} by {plan.metric} go on at each", markup=False)
        out.print(trial_table(sweep, directory, trials))
        out.print("Each trial is the command:")
        for t in trials:
            out.print("  " + shlex.join(train_command(sweep, t)), markup=False)
        return None
    if report_only:
        counts = None
    elif plan is not None:
        counts = run_pruned(sweep, directory, trials, plan, jobs, fail_fast,
                            lambda: progress_for(out), lambda text: out.print(text, markup=False))
    else:
        counts = run_sweep(sweep, directory, trials, jobs, fail_fast, progress_for(out))
    rows = summarize(sweep, directory, trials, metric)
    if any(r["mean"] is not None for r in rows):
        out.print(report_table(sweep, rows, metric))
        files = write_report(sweep, directory, rows, metric)
        out.print(f"wrote {', '.join(str(p) for p in files)}", markup=False)
    else:
        out.print(f"sweep {sweep.name}: no completed trial yet, so no summary.")
    if counts is None:
        return None
    if plan is not None:
        out.print(f"{counts['ran']} trial runs in {counts['seconds']:.1f}s: {counts['completed']} "
                  f"completed, {counts['paused']} paused at a rung, {counts['failed']} failed, "
                  f"{counts['interrupted']} interrupted", markup=False)
        out.print(epochs_line(counts), markup=False)
    elif counts["ran"]:
        overhead = (counts["seconds"] * counts["jobs"] - counts["trial_seconds"]) / counts["ran"]
        out.print(f"{counts['ran']} trials in {counts['seconds']:.1f}s: {counts['completed']} "
                  f"completed, {counts['failed']} failed, {counts['interrupted']} interrupted; "
                  f"sweep overhead {overhead:.1f}s per trial beyond its own run")
    else:
        out.print(f"nothing to run: {counts['done_before']} of {counts['total']} trials "
                  "already completed")
    missed = counts["failed"] + counts["interrupted"] + counts["not_run"] + counts.get("undecided", 0)
    if missed:
        raise TrialsMissed(f"{missed} of {counts['total']} trials did not complete; see {directory}/sweep.json "
            f"and the logs in {directory}/logs. Running the same command again re-runs them.")
    return None
