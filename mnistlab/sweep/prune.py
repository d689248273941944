"""Successive halving over resumable trials: the rungs, and which configurations go on at each."""

from __future__ import annotations

import difflib
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import files, rundir
from ..errors import ConfigError, SweepError
from ..metrics import METRICS as METRIC_REGISTRY
from .runner import Progress, run_sweep
from .spec import Sweep, Trial
from .store import scan

PRUNE_KEYS = ("min_epochs", "eta", "metric")
# the metrics that exist at every epoch (metrics.jsonl), so a trial can be judged at a rung
EPOCH_METRICS = {"val_accuracy": ("val", "accuracy"), "val_loss": ("val", "loss"),
                 "best_val_accuracy": ("val", "accuracy"),
                 "train_accuracy": ("train", "accuracy"), "train_loss": ("train", "loss")}


@dataclass(frozen=True)
class Plan:
    """How to prune: first rung at min_epochs, each next rung eta times later, keep 1/eta."""

    min_epochs: int = 1
    # 2: halving. With course-size sweeps (10 or 20 configurations, a few epochs) a third keeps
    # too few after the first epoch, when slower-starting learning rates still rank low
    eta: int = 2
    metric: str | None = None  # None: the sweep's ranking metric


@dataclass
class Decision:
    """Where successive halving stands, recomputed from what the trials have reached."""

    rung: int | None  # the epoch the configurations in todo must reach next; None: all decided
    todo: list[str]
    pruned: dict[str, int]  # configuration -> the rung at which it stopped
    finished: list[str]  # the configurations that reached the last rung


def read_plan(block, where: str) -> Plan:
    """A prune: block (min_epochs, eta, metric) checked like every config; all problems at once."""
    if block is True or block is None:
        return Plan()
    if not isinstance(block, dict):
        raise ConfigError([f"{where}: give min_epochs:, eta: and metric:, "
                           "e.g. prune: {min_epochs: 1, eta: 2, metric: val_accuracy}"])
    problems = []
    for key in block:
        if key not in PRUNE_KEYS:
            close = difflib.get_close_matches(str(key), PRUNE_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "valid keys: " + ", ".join(PRUNE_KEYS)
            problems.append(f"{where}.{key}: unknown key, {hint}")
    plan = Plan(**{k: block[k] for k in PRUNE_KEYS if block.get(k) is not None})
    problems += check_plan(plan, where)
    if problems:
        raise ConfigError(problems)
    return plan


def check_plan(plan: Plan, where: str = "prune") -> list[str]:
    problems = []
    if not _int(plan.min_epochs) or plan.min_epochs < 1:
        problems.append(f"{where}.min_epochs: {plan.min_epochs!r}: give a whole number of epochs, 1 or more")
    if not _int(plan.eta) or plan.eta < 2:
        problems.append(f"{where}.eta: {plan.eta!r}: give a whole number, 2 or more "
                        "(each rung keeps 1/eta of the configurations)")
    if plan.metric is not None and plan.metric not in EPOCH_METRICS:
        close = difflib.get_close_matches(str(plan.metric), EPOCH_METRICS, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        problems.append(f"{where}.metric: {plan.metric!r} is not known at every epoch; {hint}"
                        f"choose one of: {', '.join(EPOCH_METRICS)}")
    return problems


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def rungs(min_epochs: int, eta: int, epochs: int) -> list[int]:
    """min_epochs, min_epochs * eta, ... below epochs, then epochs itself (always the last rung)."""
    out, r = [], min_epochs
    while r < epochs:
        out.append(r)
        r *= eta
    return out + [epochs]


def keep_count(n: int, eta: int) -> int:
    """How many of n configurations go on: n // eta, at least one."""
    return max(1, n // eta) if n else 0


def mean_score(values: list[float | None]) -> float | None:
    """The mean over seeds; None when any seed has no finite value (failed, diverged)."""
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return None
    return statistics.fmean(values)


def promote(scores: dict[str, list[float | None]], eta: int, higher: bool) -> list[str]:
    """The configurations that go on, in the order given: the best n // eta (at least 1) by mean.

    Ties go to the one given first; a configuration without a complete score never goes on.
    """
    order = list(scores)
    means = {c: mean_score(v) for c, v in scores.items()}
    ranked = sorted((c for c in order if means[c] is not None),
                    key=lambda c: (-means[c] if higher else means[c], order.index(c)))
    keep = set(ranked[:keep_count(len(order), eta)])
    return [c for c in order if c in keep]


def halve(configs: list[str], rung_list: list[int], eta: int, higher: bool,
          score: Callable[[str, int], list[float | None] | None]) -> Decision:
    """Replay successive halving on what the trials have reached so far.

    score(config, rung) gives the metric of each of the configuration's trials at that epoch
    (None for a trial that failed), or None when a trial has not reached the rung yet.
    """
    active, pruned = list(configs), {}
    for r in rung_list:
        scores = {c: score(c, r) for c in active}
        todo = [c for c in active if scores[c] is None]
        if todo:
            return Decision(r, todo, pruned, [])
        if r == rung_list[-1]:
            break
        keep = promote(scores, eta, higher)
        pruned.update({c: r for c in active if c not in keep})
        active = keep
    return Decision(None, [], pruned, active)


def epoch_metric(records: list[dict], metric: str, epoch: int) -> float | None:
    """The metric at the end of that epoch from a run's metrics.jsonl records; None if not logged."""
    split, name = EPOCH_METRICS[metric]
    values = {r["epoch"]: r.get(name) for r in records
              if r.get("event") == "epoch" and r.get("split") == split and r.get("epoch", 0) <= epoch}
    if epoch not in values or values[epoch] is None:
        return None
    if metric == "best_val_accuracy":
        return max(v for v in values.values() if v is not None)
    return values[epoch]


# ---------------------------------------------------------------- pruning a sweep's trials


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
               fail_fast: bool, progress: Callable[[], Progress], say: Callable[[str], None]) -> dict:
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
    """What pruning saved: epochs trained against those of the full grid, pruned configurations by rung."""
    spent, full = counts["epochs_spent"], counts["epochs_full"]
    pruned = counts["decision"].pruned
    at = ", ".join(f"{sum(r == rung for r in pruned.values())} at epoch {rung}"
                   for rung in counts["rungs"] if rung in pruned.values())
    return (f"epochs trained: {spent} of the {full} the full grid trains ({100 * spent / max(full, 1):.0f}%); "
            f"{len(pruned)} of {counts['configurations']} configurations pruned"
            + (f" ({at})" if at else ""))
