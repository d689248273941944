"""Successive halving over resumable trials: the rungs, and which configurations go on at each."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from .. import display, files, rundir
from ..errors import ConfigError, SweepError
from ..metrics import METRICS as METRIC_REGISTRY
from .plan import Plan, _count, check_plan, epoch_metric, halve, rungs
from .runner import run_sweep
from .spec import Sweep, Trial
from .store import scan


def resolve_plan(sweep: Sweep, on: bool | None, min_epochs: int | None, eta: int | None,
                 metric: str | None, default_metric: str) -> Plan | None:
    """The plan of this invocation: the file's prune: block, then the command line over it.

    None (no pruning) without --prune and without a prune: block, or with --no-prune.
    """
    if on is False or (on is None and sweep.prune is None):
        return None
    block = dict(sweep.prune or {})
    block.update({k: v for k, v in (("min_epochs", min_epochs), ("eta", eta), ("metric", metric))
                  if v is not None})
    plan = Plan(**block)
    plan = Plan(plan.min_epochs, plan.eta, plan.metric or default_metric)
    problems = check_plan(plan, "prune")
    if problems:
        raise ConfigError(problems)
    return plan


def config_key(sweep: Sweep, trial: Trial) -> str:
    """The configuration a trial belongs to: its swept values without the seed of a replicate."""
    return json.dumps({k: v for k, v in trial.params.items() if k != "train.seed" or not sweep.seeds},
                      sort_keys=True)


def latest(summaries: list[dict]) -> dict | None:
    """The run that speaks for a trial: its completed run, else its last one."""
    done = [s for s in summaries if s.get("status") == "completed"]
    return done[-1] if done else (summaries[-1] if summaries else None)


def trial_score(summary: dict | None, metric: str, rung: int) -> tuple[bool, float | None]:
    """(reached the rung, metric there); a failed trial has reached every rung without a value."""
    if summary is None:
        return False, None
    if summary.get("status") == "failed":
        return True, None
    if (summary.get("epochs_completed") or 0) < rung:
        return False, None
    records = rundir.read_metrics(Path(summary["run_dir"]) / "metrics.jsonl")
    return True, epoch_metric(records, metric, rung)


def mark_pruned(summary: dict, rung: int, metric: str, value: float | None) -> None:
    """A paused trial that did not go on: its run says pruned, where, and how to finish it."""
    if summary.get("status") != "paused":
        return
    run_dir = Path(summary["run_dir"])
    on_disk = files.read_json(run_dir / "summary.json")
    on_disk.update(status="pruned", pruned={
        "rung": rung, "metric": metric, "value": value,
        "continue": f"mnistlab train --resume {run_dir}"})
    files.write_json(run_dir / "summary.json", on_disk)


def run_pruned(sweep: Sweep, directory: Path, trials: list[Trial], plan: Plan, executor,
               fail_fast: bool, progress: Callable[[], display.SweepLines], say: Callable[[str], None]) -> dict:
    """Successive halving: run the trials rung by rung, the best 1/eta configurations going on.

    Every decision is replayed from the run directories, so a new invocation continues where the
    last one stood. Returns the runner's counts summed over rungs, with the epochs spent.
    """
    lengths = {t.cfg.train.epochs for t in trials}
    if len(lengths) > 1:
        raise SweepError(f"--prune needs one train.epochs for every trial, but the sweep has "
                         f"{sorted(lengths)}; sweep train.epochs without --prune, or fix it in "
                         "overrides:")
    epochs = lengths.pop()
    rung_list = rungs(plan.min_epochs, plan.eta, epochs)
    higher = METRIC_REGISTRY[plan.metric].higher
    groups: dict[str, list[Trial]] = {}
    for t in trials:
        groups.setdefault(config_key(sweep, t), []).append(t)
    say(f"prune: {len(groups)} configurations, rungs at epoch{'s' if len(rung_list) > 1 else ''} "
        f"{', '.join(map(str, rung_list))}; the best 1/{plan.eta} by {plan.metric} go on at each")
    totals = {k: 0 for k in ("completed", "failed", "interrupted", "paused", "skipped", "ran",
                             "trial_seconds", "not_run")}
    t0, stuck = time.perf_counter(), None
    while True:
        on_disk = scan(directory)
        def score(config: str, rung: int) -> list[float | None] | None:
            got = [trial_score(latest(on_disk.get(t.hash, [])), plan.metric, rung) for t in groups[config]]
            return None if not all(reached for reached, _ in got) else [v for _, v in got]

        decision = halve(list(groups), rung_list, plan.eta, higher, score)
        for config, rung in decision.pruned.items():
            for t in groups[config]:
                summary = latest(on_disk.get(t.hash, []))
                if summary is not None:
                    mark_pruned(summary, rung, plan.metric, trial_score(summary, plan.metric, rung)[1])
        if decision.rung is None or (decision.rung, decision.todo) == stuck:
            break
        stuck = (decision.rung, decision.todo)
        todo = [t for c in decision.todo for t in groups[c]
                if not trial_score(latest(on_disk.get(t.hash, [])), plan.metric, decision.rung)[0]]
        say(f"rung epoch {decision.rung}: {_count(len(decision.todo), 'configuration')}, "
            f"{_count(len(todo), 'trial')} to train")
        counts = run_sweep(sweep, directory, todo, executor, fail_fast=fail_fast, progress=progress(),
                           until=decision.rung)
        for k in totals:
            totals[k] += counts.get(k, 0)
        if fail_fast and counts["failed"]:
            break
    on_disk = scan(directory)
    spent = sum((latest(on_disk.get(t.hash, [])) or {}).get("epochs_completed") or 0 for t in trials)
    totals.update(
        total=len(trials), seconds=time.perf_counter() - t0,
        done_before=0, rungs=rung_list, decision=decision, epochs_spent=spent,
        epochs_full=len(trials) * epochs, configurations=len(groups),
        undecided=sum(len(groups[c]) for c in decision.todo))
    return totals


def epochs_line(counts: dict) -> str:
    """What pruning saved: epochs trained against those that training every configuration tried
    to its last epoch takes (a grid's, or a search's proposals), pruned configurations by rung."""
    spent, full = counts["epochs_spent"], counts["epochs_full"]
    pruned = counts["decision"].pruned
    at = ", ".join(f"{sum(r == rung for r in pruned.values())} at epoch {rung}"
                   for rung in counts["rungs"] if rung in pruned.values())
    return (f"epochs trained: {spent} of the {full} that training each configuration to the end takes "
            f"({100 * spent / max(full, 1):.0f}%); "
            f"{len(pruned)} of {counts['configurations']} configurations pruned"
            + (f" ({at})" if at else ""))
