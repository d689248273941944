"""The result of a sweep: one row per configuration, tables, summary.csv/.md and plots."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from rich import box
from rich.table import Table

from .. import files, metrics, rundir
from ..errors import SweepError
from ..report.tables import as_csv, as_markdown, rich_table
from .spec import Sweep, Trial, format_value
from .store import DONE, FAILED, TrialState


def summarize(sweep: Sweep, trials: list[Trial], states: dict[str, TrialState],
              metric: str) -> list[dict]:
    """One row per configuration (seeds pooled): mean and std of the metric, best first."""
    keys = [k for k in sweep.keys if k != "train.seed" or not sweep.seeds]
    rows: dict[str, dict] = {}
    for t in trials:
        params = {k: t.params[k] for k in keys}
        row = rows.setdefault(json.dumps(params, sort_keys=True), {
            "params": params, "values": [], "test": [], "seconds": [], "trials": 0, "failed": 0,
            "diverged": 0, "epochs": t.cfg.train.epochs, "pruned_at": None, "pruned_values": [], "pruned_metric": None})
        row["trials"] += 1
        st = states[t.hash]
        if st.state != DONE:
            row["failed"] += st.state == FAILED
            row["diverged"] += st.state == FAILED and diverged(st.summary)
            _add_pruned(row, st.summary)
            continue
        value = metrics.value(st.summary, metric)
        if value is not None:
            row["values"].append(value)
            row["test"].append(metrics.value(st.summary, "test_accuracy"))
            row["seconds"].append(st.summary.get("train_seconds") or 0.0)
    out = []
    for row in rows.values():
        v = row["values"]
        row["mean"] = statistics.fmean(v) if v else None
        row["std"] = statistics.stdev(v) if len(v) > 1 else None
        tests = [x for x in row["test"] if x is not None]
        row["test_accuracy"] = statistics.fmean(tests) if tests else None
        row["train_seconds"] = statistics.fmean(row["seconds"]) if row["seconds"] else None
        pv = row["pruned_values"]
        row["pruned_mean"] = statistics.fmean(pv) if pv and row["pruned_metric"] == metric else None
        out.append(row)
    higher = metrics.METRICS[metric].higher

    def rank(r: dict) -> tuple:
        value = r["mean"] if r["mean"] is not None else r["pruned_mean"] or 0.0
        return (r["mean"] is None, r["pruned_at"] is None, -(r["pruned_at"] or 0),
                -value if higher else value)

    out.sort(key=rank)
    return out


def diverged(summary: dict | None) -> bool:
    """A failed trial whose loss blew up (runs before 'failure' was recorded say so in their error)."""
    summary = summary or {}
    return summary.get("failure") == "diverged" or "diverged" in str(summary.get("error") or "")


def _add_pruned(row: dict, summary: dict | None) -> None:
    """A trial a pruned sweep stopped at a rung: where, and its metric there."""
    if not summary or summary.get("status") != "pruned":
        return
    info = summary.get("pruned") or {}
    rung = info.get("rung") or summary.get("epochs_completed")
    row["pruned_at"] = min(rung, row["pruned_at"] or rung)
    row["pruned_metric"] = info.get("metric")
    if isinstance(info.get("value"), (int, float)):
        row["pruned_values"].append(info["value"])


def _show_test(rows: list[dict], metric: str) -> bool:
    """The test accuracy column: only when there is one, and not twice."""
    return metric != "test_accuracy" and any(r["test_accuracy"] is not None for r in rows)


def _over(sweep: Sweep) -> str:
    return "mean ± std over seeds" if sweep.seeds else "one run each"


def _num(x: float | None, metric: str) -> str:
    """A value in the unit its column shows: percent for accuracies (metrics.plotted)."""
    if x is None:
        return ""
    return f"{100 * x:.2f}" if metrics.METRICS[metric].kind == "percent" else f"{x:.4g}"


def _seconds(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _mean_std(row: dict, metric: str) -> str:
    if row["mean"] is None and row["pruned_at"] is not None:
        at = f" ({_num(row['pruned_mean'], metric)})" if row["pruned_mean"] is not None else ""
        return f"pruned at epoch {row['pruned_at']}{at}"
    if row["mean"] is None:
        return "failed" if row["failed"] else "not run"
    std = f" ± {_num(row['std'], metric)}" if row["std"] is not None else ""
    return _num(row["mean"], metric) + std


def _unit(metric: str) -> str:
    unit = metrics.UNITS.get(metrics.METRICS[metric].kind)
    return f"{metric} ({unit})" if unit else metric


def _shown(sweep: Sweep, rows: list[dict], metric: str) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """The columns and texts of the sweep's table: the swept keys, the metric, runs, test, time."""
    keys = list(rows[0]["params"]) if rows else []
    test = _show_test(rows, metric)
    columns = [(k, k) for k in keys] + [
        (f"{metric}_mean", _unit(metric) + (" mean ± std" if sweep.seeds else "")), ("runs", "runs")] + (
        [("test_accuracy_mean", "test acc (%)")] if test else []) + [("train_seconds_mean", "train s")]
    texts = [[format_value(r["params"][k]) for k in keys] + [
        _mean_std(r, metric), f"{len(r['values'])}/{r['trials']}"] + (
        [_num(r["test_accuracy"], "test_accuracy")] if test else []) + [_seconds(r["train_seconds"])]
        for r in rows]
    return columns, texts


def write_report(sweep: Sweep, directory: Path, rows: list[dict], metric: str) -> list[Path]:
    """summary.csv, summary.md and one plot per swept key, written into the sweep directory."""
    keys = list(rows[0]["params"]) if rows else []
    extra = ["test_accuracy", "train_seconds"] if metric != "test_accuracy" else ["train_seconds"]
    columns = [(k, k) for k in keys] + [(c, c) for c in (
        f"{metric}_mean", f"{metric}_std", "runs", "trials", "failed",
        *(f"{m}_mean" for m in extra), "pruned_at")]
    values = [{**{k: format_value(r["params"][k]) for k in keys}, f"{metric}_mean": r["mean"],
               f"{metric}_std": r["std"], "runs": len(r["values"]), "trials": r["trials"],
               "failed": r["failed"], **{f"{m}_mean": r[m] for m in extra}, "pruned_at": r["pruned_at"]}
              for r in rows]
    files.atomic_write_text(directory / "summary.csv", as_csv(columns, values))
    shown, texts = _shown(sweep, rows, metric)
    best = bool(rows) and rows[0]["mean"] is not None
    head = (f"# Sweep {sweep.name}\n\n{len(rows)} configurations, sorted by {metric} "
            f"({'higher' if metrics.METRICS[metric].higher else 'lower'} is better); "
            f"{_over(sweep)}; the best in bold.\n\n")
    files.atomic_write_text(directory / "summary.md", head + as_markdown(shown, texts, best))
    return [directory / "summary.csv", directory / "summary.md"] + plot(sweep, directory, rows, metric)


def report_table(sweep: Sweep, rows: list[dict], metric: str):
    shown, texts = _shown(sweep, rows, metric)
    return rich_table(f"sweep {sweep.name}: {metric}, {_over(sweep)}", shown, texts,
                      first_best=bool(rows) and rows[0]["mean"] is not None)


def series_of(rows: list[dict], key: str) -> tuple[list[tuple[str, list[dict]]], list[str]]:
    """The rows in one series per value of the other swept keys (in value order), and those keys."""
    from ..report.figures import value_order

    keys = list(rows[0]["params"]) if rows else []
    others = [k for k in keys if k != key]
    groups: dict[str, list[dict]] = {}
    order: dict[str, tuple] = {}
    for r in rows:
        label = ", ".join(f"{k.split('.')[-1]}={format_value(r['params'][k])}" for k in others)
        groups.setdefault(label, []).append(r)
        order[label] = tuple(value_order(r["params"][k]) for k in others)
    return [(label, groups[label]) for label in sorted(groups, key=order.__getitem__)], others


def plot(sweep: Sweep, directory: Path, rows: list[dict], metric: str) -> list[Path]:
    """The metric against each swept key: one series per value of the other keys, std as error bars;
    failed and pruned configurations marked at the axis edge."""
    from ..report.figures import save_figure, sweep_figure

    rows = [r for r in rows if r["mean"] is not None or r["failed"] or r["pruned_at"] is not None]
    keys = list(rows[0]["params"]) if rows else []
    epochs = max((r["epochs"] for r in rows), default=None)
    paths = []
    for key in keys:
        series, others = series_of(rows, key)
        fig = sweep_figure(sweep.name, key, metric, series, format_value, ", ".join(others), epochs)
        path = directory / f"plot-{rundir.slug(key)}-{metric}.png"  # one per metric: none overwritten
        save_figure(fig, path)
        paths.append(path)
    return paths


def sweep_rows(directory: Path, metric: str | None = None) -> tuple[Sweep, list[dict], str]:
    """A sweep folder's definition and its summary rows by the metric (the task's by default)."""
    from .. import tasks
    from .spec import build_trials, read_sweep
    from .store import scan, trial_states

    sweep = read_sweep(Path(directory))
    _, trials = build_trials(sweep)
    metric = metric or tasks.get(trials[0].cfg.task).metric
    states = trial_states(trials, scan(Path(directory)), lambda jobs: set())
    return sweep, summarize(sweep, trials, states, metric), metric


def best_per_value(rows: list[dict], key: str, metric: str) -> list[dict]:
    """For each value of key, the best configuration there (a failed or pruned one where none completed)."""
    higher = metrics.METRICS[metric].higher
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(json.dumps(r["params"][key], sort_keys=True), []).append(r)
    out = []
    for group in groups.values():
        done = [r for r in group if r["mean"] is not None]
        if done:
            out.append((max if higher else min)(done, key=lambda r: r["mean"]))
        else:
            out += [r for r in group if r["failed"] or r["pruned_at"] is not None][:1]
    return out


def compare_figure(directories: list[Path], metric: str | None = None):
    """Two or more sweeps side by side: the metric against the first swept key they share, one
    series per sweep (its best configuration at each value when it sweeps other keys too)."""
    from ..report.figures import sweep_figure

    first, rows, metric = sweep_rows(directories[0], metric)
    loaded = [(first, rows)] + [sweep_rows(d, metric)[:2] for d in directories[1:]]
    params = [set(k for k in sweep.keys if k != "train.seed" or not sweep.seeds) for sweep, _ in loaded]
    shared = [k for k in first.keys if all(k in p for p in params)]
    if not shared:
        what = "; ".join(f"{d} sweeps {', '.join(sorted(p)) or 'only seeds'}"
                         for d, p in zip(directories, params))
        raise SweepError(f"the sweeps share no swept key, so there is no common axis to draw them "
                         f"on: {what}. Plot each one alone (mnistlab sweep DIR --report), or sweep "
                         "a common key in both.")
    key = shared[0]
    series = []
    for sweep, rows in loaded:
        others = [k for k in (rows[0]["params"] if rows else []) if k != key]
        label = sweep.name + (f" (best over {', '.join(others)})" if others else "")
        series.append((label, best_per_value(rows, key, metric)))
    epochs = max((r["epochs"] for _, rows in loaded for r in rows), default=None)
    return sweep_figure(" vs ".join(s.name for s, _ in loaded), key, metric, series, format_value,
                        "sweep", epochs)


def trial_table(sweep: Sweep, directory: Path, trials: list[Trial],
                states: dict[str, TrialState]) -> Table:
    """What --dry-run shows: each trial's overrides, hash, and its state on disk."""
    table = Table(title=f"sweep {sweep.name}: {len(trials)} trials in {directory}",
                  title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("#", "trial", "overrides", "hash", "state"):  # only overrides break, between them
        table.add_column(col, no_wrap=col != "overrides", overflow="fold")
    for i, t in enumerate(trials, 1):
        state = states[t.hash].state
        if state == "paused" and (states[t.hash].summary or {}).get("status") == "pruned":
            state = "pruned"
        style = {"completed": "green", "failed": "red", "stopped": "yellow", "paused": "yellow",
                 "pruned": "magenta"}.get(state)
        table.add_row(str(i), t.name, " ".join(t.overrides), t.hash, state, style=style)
    return table
