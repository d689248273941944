"""Adaptive search (tpe:): Optuna's TPE sampler, asked and told, over ordinary trials.

There is no study database: at every start, and before every proposal, the study is rebuilt from
the run directories (each proposed trial's proposal.json, its state and its summary). So a re-run
attaches, a killed driver loses nothing, and every executor runs the trials as it runs a grid's.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import display, files
from ..errors import SweepError
from ..metrics import METRICS
from ..metrics import value as metric_value
from . import store
from .plan import Decision, Plan, _count, rungs
from .prune import run_pruned
from .runner import jobs_alive, run_sweep
from .spec import Sweep, Trial, format_value, make_trials
from .store import DONE, FAILED, PAUSED, TrialState

PROPOSAL = "proposal.json"  # in each proposed trial's run directory: its number, bracket and point
RUNNING, COMPLETE, FAIL, PRUNED = "running", "complete", "fail", "pruned"  # as the study sees a trial


@dataclass
class Proposal:
    number: int  # the order of proposal, which is the order the study is told
    batch: int | None  # the halving bracket of a pruned search (None: proposed without --prune)
    point: dict  # swept key -> value, as proposed
    trial: Trial


# ---------------------------------------------------------------- the space, in Optuna's terms


def _optuna():
    try:
        import optuna
    except ModuleNotFoundError:
        raise SweepError("tpe: needs the Python package optuna, which is not installed; install "
                         "it with pip install -e \".[optuna]\" (or pip install optuna), or search "
                         "with grid: or random:.") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def distributions(space: dict) -> dict:
    """Each key's Optuna distribution: a list is categorical (over its values as override text)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            out[key] = CategoricalDistribution([format_value(v) for v in spec])
        elif "int" in spec:
            out[key] = IntDistribution(int(spec["int"][0]), int(spec["int"][1]))
        elif "loguniform" in spec:
            out[key] = FloatDistribution(*spec["loguniform"], log=True)
        else:
            out[key] = FloatDistribution(*spec["uniform"])
    return out


def to_params(space: dict, point: dict) -> dict | None:
    """A point as Optuna's params; None when it lies outside the space (the space was changed)."""
    params = {}
    for key, spec in space.items():
        value = point.get(key)
        if isinstance(spec, list):
            text = format_value(value)
            if text not in {format_value(v) for v in spec}:
                return None
            params[key] = text
        else:
            (lo, hi), = spec.values()
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                return None
            params[key] = int(value) if "int" in spec else float(value)
    return params


def from_params(space: dict, params: dict) -> dict:
    """Optuna's params as a point: floats to 3 significant digits, as random: draws them."""
    point = {}
    for key, spec in space.items():
        value = params[key]
        if isinstance(spec, list):
            point[key] = next(v for v in spec if format_value(v) == value)
        elif "int" in spec:
            point[key] = int(value)
        else:
            (lo, hi), = spec.values()
            point[key] = min(max(float(f"{value:.3g}"), lo), hi)
    return point


def propose(tpe: dict, higher: bool, history: list[tuple], k: int, exclude: list[dict] = ()) -> list[dict]:
    """k new points, given the trials so far as (point, state, value, step) in the order proposed.

    The finished ones are told (complete with their value, pruned with their value at the rung,
    failed); the unfinished ones are asked again with their own point and left running, so that
    TPE's constant liar counts them as bad and proposes elsewhere. Pure: a fresh sampler whose seed
    comes from the sweep's seed and the number of trials so far, so the same history gives the same
    points, in a driver that runs on or in one started again.
    """
    optuna = _optuna()
    space = tpe["space"]
    dists = distributions(space)
    seed = random.Random(f"{tpe['seed']}/{len(history)}").randrange(2 ** 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=tpe["startup"],
                                             constant_liar=True)
        study = optuna.create_study(sampler=sampler, direction="maximize" if higher else "minimize")
        seen = {json.dumps(p, sort_keys=True) for p in exclude}
        for point, state, value, step in history:
            seen.add(json.dumps(point, sort_keys=True))
            params = to_params(space, point)
            if params is None:
                continue
            if state == RUNNING:
                study.enqueue_trial(params)
                study.ask(dists)
            elif state == COMPLETE:
                study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                          value=value))
            elif state == PRUNED:
                study.add_trial(optuna.trial.create_trial(
                    state=optuna.trial.TrialState.PRUNED, params=params, distributions=dists,
                    intermediate_values={step: value} if value is not None and step else None))
            else:
                study.add_trial(optuna.trial.create_trial(
                    state=optuna.trial.TrialState.FAIL, params=params, distributions=dists))
        out = []
        for _ in range(100 * k):
            if len(out) == k:
                break
            trial = study.ask(dists)
            point = from_params(space, trial.params)
            text = json.dumps(point, sort_keys=True)
            if text in seen:  # tried already: told as a bad result, so TPE looks elsewhere
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                continue
            seen.add(text)
            out.append(point)  # left running: the next ask lies about it
    return out


# ---------------------------------------------------------------- the study, from the run directories


def proposals(sweep: Sweep, directory: Path) -> list[Proposal]:
    """The trials proposed so far, in the order proposed; one whose config is no longer this
    sweep's (base, overrides or space changed) is left out."""
    records = []
    if directory.is_dir():
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            try:
                rec = files.read_json(Path(entry.path) / PROPOSAL)
            except (OSError, ValueError):
                continue
            if (isinstance(rec, dict) and isinstance(rec.get("number"), int)
                    and isinstance(rec.get("params"), dict)
                    and set(rec["params"]) == set(sweep.tpe["space"])):
                records.append((rec, entry.name))
    out = []
    for rec, name in sorted(records, key=lambda r: r[0]["number"]):
        trials = make_trials(sweep, [rec["params"]], directory, skip_invalid=True)
        if trials and trials[0].run_dir.name == name:
            batch = rec.get("batch")
            out.append(Proposal(rec["number"], batch if isinstance(batch, int) else None,
                                rec["params"], trials[0]))
    return out


def observation(st: TrialState, metric: str) -> tuple[str, float | None, int | None]:
    """(state, value, step) of a trial as the study is told it."""
    summary = st.summary or {}
    if st.state == DONE:
        value = metric_value(summary, metric)
        return (COMPLETE, value, None) if value is not None else (FAIL, None, None)
    if st.state == FAILED:
        return FAIL, None, None
    if st.state == PAUSED and summary.get("status") == "pruned":
        info = summary.get("pruned") or {}
        value = info.get("value") if info.get("metric") == metric else None
        return PRUNED, value, info.get("rung") or summary.get("epochs_completed")
    return RUNNING, None, None


def finished(st: TrialState) -> bool:
    """Done, failed, or pruned: nothing more will run in this trial."""
    return st.state in (DONE, FAILED) or (
        st.state == PAUSED and (st.summary or {}).get("status") == "pruned")


def add_trials(sweep: Sweep, directory: Path, metric: str, alive: Callable, k: int,
               batch: int | None = None) -> list[Trial]:
    """Propose up to k trials (fewer when the budget ends), each written as its run directory's
    proposal.json under the sweep's lock, so two drivers never propose the same number."""
    higher = METRICS[metric].higher
    with store.locked(directory):
        props = proposals(sweep, directory)
        k = min(k, sweep.tpe["n"] - len(props))
        if k <= 0:
            return []
        states = store.trial_states([p.trial for p in props], store.scan(directory), alive)
        history = [(p.point, *observation(states[p.trial.hash], metric)) for p in props]
        hashes = {p.trial.hash for p in props}
        number = max((p.number for p in props), default=-1) + 1
        new: list[Trial] = []
        taken: list[dict] = []  # the points proposed here, and those whose config equals another's
        for _ in range(10):
            points = propose(sweep.tpe, higher, history, k - len(new), taken)
            if not points:
                break
            for point in points:
                (t,) = make_trials(sweep, [point], directory)
                taken.append(point)
                if t.hash in hashes:  # a key the model ignores (channels of a dense net): run once
                    continue
                hashes.add(t.hash)
                with files.writing(t.run_dir):
                    t.run_dir.mkdir(parents=True, exist_ok=True)
                files.write_json(t.run_dir / PROPOSAL, {
                    "number": number, "batch": batch, "params": point, "sampler": "tpe",
                    "seed": sweep.tpe["seed"]})
                number += 1
                new.append(t)
            if len(new) == k:
                break
        return new


# ---------------------------------------------------------------- running the search


def bracket_size(plan: Plan, epochs: int) -> int:
    """Configurations per halving bracket: enough for one to reach the last rung, eta^(rungs-1)."""
    return plan.eta ** (len(rungs(plan.min_epochs, plan.eta, epochs)) - 1)


def run_search(sweep: Sweep, directory: Path, executor, metric: str, plan: Plan | None,
               retry_failed: bool, fail_fast: bool, progress: Callable[[], display.SweepLines],
               say: Callable[[str], None], epochs: int) -> dict:
    """Run the search to its budget: continue what was proposed, then propose as slots free up
    (without --prune), or bracket by bracket of successive halving (with --prune)."""
    alive = lambda jobs: jobs_alive(executor, jobs)  # noqa: E731
    with store.locked(directory):
        props = proposals(sweep, directory)
    if plan is None:
        def more(free: int) -> list[Trial]:
            return add_trials(sweep, directory, metric, alive, free)

        return run_sweep(sweep, directory, [p.trial for p in props], executor, retry_failed,
                         fail_fast, False, progress(), more=more,
                         planned=max(0, sweep.tpe["n"] - len(props)))
    size = bracket_size(plan, epochs)
    totals: dict = {}
    pruned: dict[str, int] = {}
    while True:
        with store.locked(directory):
            props = proposals(sweep, directory)
        states = store.trial_states([p.trial for p in props], store.scan(directory), alive)
        brackets: dict[int, list[Trial]] = {}
        for p in props:
            brackets.setdefault(-1 if p.batch is None else p.batch, []).append(p.trial)
        open_ = [b for b in sorted(brackets) if not all(finished(states[t.hash]) for t in brackets[b])]
        if open_:
            batch, trials = open_[0], brackets[open_[0]]
        else:
            batch = max(brackets, default=-1) + 1
            trials = add_trials(sweep, directory, metric, alive, min(size, sweep.tpe["n"] - len(props)),
                                batch)
            if not trials:
                break
        say(f"tpe: bracket {batch + 1}, {_count(len(trials), 'configuration')} proposed "
            f"({len(props) + (0 if open_ else len(trials))} of the budget of {sweep.tpe['n']})")
        counts = run_pruned(sweep, directory, trials, plan, executor, fail_fast, progress, say)
        for k, v in counts.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                totals[k] = totals.get(k, 0) + v
        totals["rungs"] = counts["rungs"]
        pruned.update(counts["decision"].pruned)
        if counts["undecided"] or (fail_fast and counts["failed"]):
            break
    totals.setdefault("rungs", rungs(plan.min_epochs, plan.eta, epochs))
    for k in ("completed", "failed", "interrupted", "paused", "ran", "seconds", "epochs_spent",
              "epochs_full", "configurations", "undecided", "total"):
        totals.setdefault(k, 0)
    totals["decision"] = Decision(None, [], pruned, [])
    return totals


def describe(sweep: Sweep, metric: str, jobs: int, plan: Plan | None, epochs: int,
             props: list[Proposal], states: dict[str, TrialState]) -> list[str]:
    """What --dry-run says of a tpe: search: budget, space, sampler, seed, metric, what is done."""
    tpe = sweep.tpe
    higher = METRICS[metric].higher
    space = []
    for key, spec in tpe["space"].items():
        if isinstance(spec, list):
            space.append(f"  {key}: one of {', '.join(format_value(v) for v in spec)}")
        else:
            (kind, (lo, hi)), = spec.items()
            how = {"loguniform": "log-uniform", "uniform": "uniform", "int": "integers"}[kind]
            space.append(f"  {key}: {how} in [{format_value(int(lo) if kind == 'int' else lo)}, "
                         f"{format_value(int(hi) if kind == 'int' else hi)}]")
    done = sum(finished(states[p.trial.hash]) for p in props)
    best = best_so_far(props, states, metric)
    lines = [f"tpe: a budget of {tpe['n']} trials, proposed by Optuna's TPESampler (seed "
             f"{tpe['seed']}): the first {tpe['startup']} at random, then each from the results so far, "
             f"{'maximizing' if higher else 'minimizing'} {metric}", "space:", *space]
    if plan is None:
        lines.append(f"with --jobs {jobs}: up to {jobs} trial{'s' if jobs > 1 else ''} run at once; a "
                     "new one is proposed as each ends, the running ones counted as bad (constant liar)")
    else:
        size = bracket_size(plan, epochs)
        lines.append(f"with --prune: brackets of {size} configurations, each halved at epochs "
                     f"{', '.join(map(str, rungs(plan.min_epochs, plan.eta, epochs)))} (the best "
                     f"1/{plan.eta} by {plan.metric} go on); TPE proposes each bracket from every "
                     "result so far, pruned trials told at their rung")
    lines.append(f"so far: {len(props)} proposed, {done} finished, {tpe['n'] - len(props)} to propose"
                 + (f"; best so far {' '.join(best[0].trial.overrides)}: "
                    f"{display.best_text(metric, best[1])}" if best else ""))
    return lines


def best_so_far(props: list[Proposal], states: dict[str, TrialState], metric: str):
    """(proposal, value) of the best completed trial, or None."""
    higher = METRICS[metric].higher
    scored = [(p, metric_value(states[p.trial.hash].summary or {}, metric)) for p in props
              if states[p.trial.hash].state == DONE]
    scored = [(p, v) for p, v in scored if v is not None]
    if not scored:
        return None
    return (max if higher else min)(scored, key=lambda pv: pv[1])
