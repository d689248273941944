"""The halving plan of a pruned sweep, pure: its settings, its rungs, and which configurations go on."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError, did_you_mean

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
            hint = did_you_mean(key, PRUNE_KEYS, "valid keys: " + ", ".join(PRUNE_KEYS))
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
        hint = did_you_mean(plan.metric, EPOCH_METRICS)
        hint = f"{hint} " if hint else ""
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

