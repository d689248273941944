"""The result of a sweep: one row per configuration, tables, summary.csv/.md and plots."""

from __future__ import annotations

import io
import json
import statistics
from pathlib import Path

from rich.table import Table

from .. import files, metrics, rundir
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
            "pruned_at": None, "pruned_values": [], "pruned_metric": None})
        row["trials"] += 1
        st = states[t.hash]
        if st.state != DONE:
            row["failed"] += st.state == FAILED
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


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot(sweep: Sweep, directory: Path, rows: list[dict], metric: str) -> list[Path]:
    """The metric against each swept key: one line per value of the other keys, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report import metric_axis

    pruned = [r for r in rows if r["mean"] is None and r["pruned_mean"] is not None]
    rows = [r for r in rows if r["mean"] is not None]
    keys = list(rows[0]["params"]) if rows else []
    scale = 100 if metric.endswith("accuracy") else 1
    paths = []
    for key in keys:
        xs = []
        for r in rows + pruned:
            if r["params"][key] not in xs:
                xs.append(r["params"][key])
        numeric = _numeric(xs)
        if numeric:
            xs.sort()
        others = [k for k in keys if k != key]
        lines: dict[str, list[dict]] = {}
        for r in rows:
            label = ", ".join(f"{k.split('.')[-1]}={format_value(r['params'][k])}" for k in others)
            lines.setdefault(label, []).append(r)
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for label, members in lines.items():
            members.sort(key=lambda r: xs.index(r["params"][key]))
            x = [r["params"][key] if numeric else xs.index(r["params"][key]) for r in members]
            ax.errorbar(x, [scale * r["mean"] for r in members],
                        yerr=[scale * (r["std"] or 0.0) for r in members],
                        marker="o", capsize=3, label=label or None)
        if pruned:  # where the pruned configurations stood at their rung, not at the end
            ax.scatter([r["params"][key] if numeric else xs.index(r["params"][key]) for r in pruned],
                       [scale * r["pruned_mean"] for r in pruned], marker="x", color="grey",
                       label="pruned (value at its rung)", zorder=3)
        if numeric and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(xs)), [format_value(v) for v in xs])
        ax.set_xlabel(key)
        # a log axis when the values span 1000x or more (the quadratic's f spans ten orders)
        metric_axis(ax, metric, [scale * r["mean"] for r in rows] +
                    [scale * r["pruned_mean"] for r in pruned])
        ax.set_title(f"{sweep.name}: {metric} vs {key}")
        ax.grid(True, alpha=0.3)
        if len(lines) > 1 or pruned:
            ax.legend(title=", ".join(others), fontsize="small")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        plt.close(fig)
        path = directory / f"plot-{rundir.slug(key)}-{metric}.png"  # one per metric: none overwritten
        files.atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def trial_table(sweep: Sweep, directory: Path, trials: list[Trial],
                states: dict[str, TrialState]) -> Table:
    """What --dry-run shows: each trial's overrides, hash, and its state on disk."""
    table = Table(title=f"sweep {sweep.name}: {len(trials)} trials in {directory}", title_justify="left")
    for col in ("#", "trial", "overrides", "hash", "state"):
        table.add_column(col, overflow="fold")
    for i, t in enumerate(trials, 1):
        state = states[t.hash].state
        if state == "paused" and (states[t.hash].summary or {}).get("status") == "pruned":
            state = "pruned"
        style = {"completed": "green", "failed": "red", "stopped": "yellow", "paused": "yellow",
                 "pruned": "magenta"}.get(state)
        table.add_row(str(i), t.name, " ".join(t.overrides), t.hash, state, style=style)
    return table
