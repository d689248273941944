"""Figures of runs: learning curves, a task's own figure, the confusion matrix, saved atomically."""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

from .. import files, metrics, tasks
from ..errors import RunError
from .read import _number, epoch_curves, reads, records, task_label, varying_keys
from .tables import cell

PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def legend_labels(rows: list[dict], most: int = 4) -> list[str]:
    """Each run named by the settings that differ among the runs that read them (model.kind
    first), each run naming only those it reads; its directory name when none differ."""
    keys = varying_keys(rows, kind=True)[:most]
    labels = [", ".join(f"{k}={cell(r['config'].get(k))}" for k in keys if reads(r, k)) or r["run"]
              for r in rows]
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({r['run']})" if keys else label for label, r in zip(labels, rows)]
    return labels


def curves_figure(rows: list[dict]):
    """Loss and accuracy per epoch, train solid and val dashed, one colour per run."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    all_curves = [epoch_curves(r["dir"]) for r in rows]
    with_accuracy = any("accuracy" in rec for c in all_curves for rec in c["train"])
    labels = legend_labels(rows)
    kinds = {tasks.get(r["config"].get("task")) for r in rows}
    notes = [textwrap.fill(n, 120) for kind in kinds for n in kind.curve_notes(rows, labels)]
    below = len(rows) > 6  # a long legend goes under the panels, in two columns, not over them
    under = (0.19 * math.ceil(len(rows) / 2) + 0.5) * below + sum(
        0.17 * (n.count("\n") + 1) + 0.1 for n in notes)
    fig = Figure(figsize=(10, 4 + under), dpi=100, layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[4, under]) if under else (fig, None)
    ax_loss, ax_right = top.subplots(1, 2)
    ax_acc = ax_right if with_accuracy else None
    if not with_accuracy and not (len(kinds) == 1 and kinds.pop().draw_result(ax_right, rows, labels)):
        top.delaxes(ax_right)  # nothing beside the loss: a narrower figure
        fig.set_size_inches(5.5 + 4.5 * below, 4 + under)
    drawn = 0
    for i, (row, label, (color, marker)) in enumerate(zip(rows, labels, styles(len(rows)))):
        curves = all_curves[i]
        if row["status"] in ("paused", "pruned"):  # a sweep stopped it at a rung
            label += f" ({row['status']} at epoch {row['epochs']})"
        for split, style in (("train", "-"), ("val", "--")):
            recs = curves[split]
            if not recs:
                continue
            epochs = [r["epoch"] for r in recs]
            ax_loss.plot(epochs, [r["loss"] for r in recs], style, color=color, marker=marker,
                         markersize=3, label=label if split == "train" else None)
            if ax_acc is not None and all(_number(r.get("accuracy")) for r in recs):
                ax_acc.plot(epochs, [100 * r["accuracy"] for r in recs], style, color=color,
                            marker=marker, markersize=3)
            drawn += 1
        if ax_acc is not None and row["test_accuracy"] is not None and curves["train"]:
            ax_acc.scatter([curves["train"][-1]["epoch"]], [100 * row["test_accuracy"]],
                           marker="*", s=90, color=color, zorder=3)
    if not drawn:
        raise RunError("none of the runs has finished an epoch yet, so there is nothing to plot.")
    labels = {tasks.get(r["config"].get("task")).loss_label for r in rows}
    on = sorted({task_label(r["config"])[1] for r in rows})
    fig.suptitle(f"Learning curves on {', '.join(on)}")
    ax_loss.set(title="Loss", xlabel="epoch", ylabel=labels.pop() if len(labels) == 1 else "loss")
    split_styles = [Line2D([], [], color="gray", ls="-", label="train"),
              Line2D([], [], color="gray", ls="--", label="validation")]
    if ax_acc is None:
        ax_loss.add_artist(ax_loss.legend(handles=split_styles, fontsize="small", loc="center right"))
    else:
        ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
        ax_acc.legend(handles=split_styles + [Line2D([], [], color="gray", ls="", marker="*", markersize=9,
                                               label="test (end of training)")],
                      fontsize="small", loc="lower right")
    log_if_wide(ax_loss)
    for ax in (ax_loss, ax_acc):
        if ax is not None:
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
    handles = [line for line in ax_loss.lines if not line.get_label().startswith("_")]
    # a long legend has a panel of its own under the axes; a short one goes beside them
    if below:
        bottom.legend(handles=handles, title="run", fontsize="small", loc="upper center", ncols=2)
    else:
        top.legend(handles=handles, title="run", fontsize="small", loc="outside right upper")
    if notes:
        bottom.text(0.01, 0.03, "\n".join(notes), fontsize="small", va="bottom")
    return fig


def value_order(v) -> tuple:
    """Swept values in their natural order: numbers by size, lists by their elements, then text."""
    if v is None:
        return (0,)
    if isinstance(v, bool):
        return (1, v)
    if isinstance(v, (int, float)):
        return (2, v)
    if isinstance(v, (list, tuple)):
        return (3, tuple(value_order(i) for i in v))
    return (4, str(v))


MARKERS = ("o", "s", "^", "D", "v", "P")


def styles(n: int) -> list[tuple[str, str]]:
    """(colour, marker) of n series, all distinct: tab10, then tab20, then tab20 times markers."""
    if n <= 10:
        return [(f"C{i}", "o") for i in range(n)]
    from matplotlib import colormaps

    tab20 = colormaps["tab20"].colors
    return [(tab20[i % 20], MARKERS[(i // 20) % len(MARKERS)]) for i in range(n)]


def sweep_figure(title: str, key: str, metric: str, series: list[tuple[str, list[dict]]],
                 fmt=cell, legend_title: str = "", epochs: int | None = None):
    """The metric against one swept key, one series of configurations per label.

    series: (label, rows) with a sweep summary's rows (params, mean, std, values, trials, failed,
    diverged, pruned_at). Categories are ordered by value and drawn as points (never joined); a
    numeric axis has its ticks at the swept values. Failed and pruned configurations are marked
    at the worse edge of the axis, not at a value; a mean over fewer seeds than the others is an
    open marker annotated n=k of m. epochs: the full length, said on the axis when any were pruned.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullLocator

    xs: list = []
    for _, rows in series:
        for r in rows:
            if r["params"][key] not in xs:
                xs.append(r["params"][key])
    xs.sort(key=value_order)
    numeric = bool(xs) and all(_number(v) for v in xs)
    log = numeric and min(xs) > 0 and max(xs) / min(xs) >= 10
    fig = Figure(figsize=(8, 4.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    worse_edge = 0.0 if metrics.METRICS[metric].higher else 1.0
    edge = ax.get_xaxis_transform()  # x in data, y in axes: the edge whatever the values
    width = min(0.5 / max(len(series), 1), 0.12)

    def at(v, j: int) -> float:
        if numeric:
            return v
        return xs.index(v) + (j - (len(series) - 1) / 2) * width  # side by side, not on top

    shown, marks, notes = [], set(), []
    for j, ((label, rows), (color, marker)) in enumerate(zip(series, styles(len(series)))):
        done = sorted((r for r in rows if r["mean"] is not None), key=lambda r: value_order(r["params"][key]))
        x = [at(r["params"][key], j) for r in done]
        y = [metrics.plotted(metric, r["mean"]) for r in done]
        ax.errorbar(x, y, yerr=[metrics.plotted(metric, r["std"] or 0.0) for r in done],
                    color=color, marker=marker, ls="-" if numeric else "none", capsize=3,
                    label=label or None)
        shown += y
        for xi, yi, r in zip(x, y, done):
            if len(r["values"]) < r["trials"]:  # a mean over fewer seeds than the sweep has
                ax.plot([xi], [yi], marker=marker, ls="none", ms=10, mfc="white", mec=color,
                        zorder=4)
                why = f", {r['failed']} failed" if r["failed"] else ""
                ax.annotate(f"n={len(r['values'])} of {r['trials']}{why}", (xi, yi),
                            xytext=(6, 4), textcoords="offset points", fontsize="x-small",
                            color=color)
                marks.add("fewer")
        for r in rows:
            if r["mean"] is not None:
                continue
            xi = at(r["params"][key], j)
            inside = 0.03 if worse_edge == 0 else 0.97  # on the worse edge, inside the axes
            up = worse_edge == 0
            if r["failed"]:
                what = "diverged" if r["diverged"] == r["failed"] else "failed"
                ax.plot([xi], [inside], "X", color=color, mec="black", ms=10, transform=edge,
                        zorder=5)
            elif r["pruned_at"] is not None:
                what = f"pruned at epoch {r['pruned_at']}"
                ax.plot([xi], [inside], "v" if up else "^", color=color, ms=8, mfc="none",
                        transform=edge, zorder=5)
            else:
                continue
            ax.annotate(what, (xi, inside), xycoords=edge, color=color, fontsize="x-small",
                        rotation=90, ha="center", va="bottom" if up else "top",
                        xytext=(0, 10 if up else -10), textcoords="offset points")
            marks.add("failed" if r["failed"] else "pruned")
    if log:
        ax.set_xscale("log")
    if numeric and len(xs) <= 12:  # ticks at the swept values, not at powers of ten
        ax.set_xticks(xs, _spaced([math.log(v) if log else v for v in xs], [fmt(v) for v in xs]))
        ax.xaxis.set_minor_locator(NullLocator())
    elif not numeric:
        ax.set_xticks(range(len(xs)), [fmt(v) for v in xs])
        ax.set_xlim(-0.5, len(xs) - 0.5)
    if xs and max(len(fmt(v)) for v in xs) * len(xs) > 60:
        ax.tick_params(axis="x", labelrotation=30)
    ax.set_xlabel(key)
    metric_axis(ax, metric, shown)
    if "pruned" in marks and epochs:
        ax.set_ylabel(f"{metrics.axis_label(metric)} after {epochs} epochs")
    ax.set_title(f"{title}: {metric} vs {key}")
    ax.grid(True, alpha=0.3)
    handles = [h for h in ax.get_legend_handles_labels()[0]]
    if "failed" in marks:
        handles.append(Line2D([], [], color="gray", marker="X", mec="black", ls="none", ms=9,
                              label="failed or diverged: no value"))
    if "pruned" in marks:
        handles.append(Line2D([], [], color="gray", marker="v", mfc="none", ls="none",
                              label="pruned at a rung: not at full length"))
        notes.append("Pruned configurations stopped early; their values are not comparable and "
                     "are not drawn on this axis.")
    if "fewer" in marks:
        handles.append(Line2D([], [], color="gray", marker="o", mfc="white", ls="none", ms=9,
                              label="mean over fewer seeds"))
    if len(series) > 1:  # beside the axes; the figure grows to hold a long legend whole
        per_column = 18
        fig.set_size_inches(8, max(4.6, 0.2 * min(len(handles), per_column) + 1.4))
        fig.legend(handles=handles, title=legend_title or None, loc="outside right upper",
                   fontsize="small", title_fontsize="small", ncols=math.ceil(len(handles) / per_column))
    elif handles:  # only the marks: a row under the axes
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small")
    if notes:
        fig.text(0.01, 0.005, " ".join(notes), fontsize="x-small", va="bottom", wrap=True)
        fig.get_layout_engine().set(rect=(0, 0.05, 1, 0.95))
    return fig


def _spaced(positions: list[float], labels: list[str], gap: float = 0.045) -> list[str]:
    """Tick labels with those too close to the last kept one left blank (the tick stays)."""
    span = (max(positions) - min(positions)) or 1.0
    out, last = [], None
    for p, label in zip(positions, labels):
        if last is not None and (p - last) / span < gap * max(len(label), 3) / 4:
            out.append("")
        else:
            out.append(label)
            last = p
    return out


def log_if_wide(ax, span: float = 30) -> None:
    """A log y axis when the positive values drawn span more than a factor of span."""
    import math

    ys = [y for line in ax.lines for y in line.get_ydata() if isinstance(y, (int, float))
          and math.isfinite(y)]
    if ys and min(ys) > 0 and max(ys) / min(ys) > span:
        ax.set_yscale("log")


def metric_axis(ax, metric: str, values: list[float]) -> None:
    """Label the y axis by the metric registry; a log axis when the values span 1000x or more
    (symlog when one is exactly 0, which a log axis cannot show).

    values are in the unit the axis shows (metrics.plotted)."""
    import math

    ax.set_ylabel(metrics.axis_label(metric))
    finite = [v for v in values if v is not None and math.isfinite(v)]
    positive = [v for v in finite if v > 0]
    if any(v < 0 for v in finite) or len(positive) < 2 or max(positive) / min(positive) < 1000:
        return
    if 0 in finite:
        ax.set_yscale("symlog", linthresh=min(positive))
        ax.set_ylim(bottom=-0.3 * min(positive), top=max(positive) * 3)  # not down to -max
    else:
        ax.set_yscale("log")


def steps_figure(rows: list[dict]):
    """The task's own figure of the steps its runs logged (those with x: the gradient descent)."""
    traces = []
    for row, label in zip(rows, legend_labels(rows)):
        steps = [r for r in records(row["dir"], "step")
                 if isinstance(r.get("x"), list) and all(_number(v) for v in r["x"])]
        if steps:
            traces.append((row, label, [r["step"] for r in steps], [r["loss"] for r in steps],
                           [r["x"] for r in steps]))
    if not traces:
        raise RunError("none of the runs has logged its x at a step (train.log_every=1 logs each).")
    return tasks.get(rows[0]["config"].get("task")).steps_figure(traces)


def confusion_figure(result: dict):
    """The confusion matrix of an eval result: colour is the share of the true class, text the count."""
    from matplotlib.figure import Figure

    conf = result["confusion"]
    names = result["class_names"]
    k = len(names)
    shares = [[v / max(sum(row), 1) * 100 for v in row] for row in conf]
    size = max(4.5, 0.55 * k + 2.5)
    fig = Figure(figsize=(size + 1, size), dpi=100, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=100)
    for t in range(k):
        for p in range(k):
            if conf[t][p]:
                ax.text(p, t, str(conf[t][p]), ha="center", va="center", fontsize=8,
                        color="white" if shares[t][p] > 60 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"Confusion matrix: {Path(result['run_dir'] or result['checkpoint']).name}\n"
                 f"{result['split']} split, {Path(result['checkpoint']).name}, accuracy {metrics.percent(result['accuracy'])}")
    fig.colorbar(image, ax=ax, label="% of the true class", shrink=0.8)
    return fig


def save_figure(fig, path: Path) -> None:
    """PNG, SVG or PDF by the file's extension, written atomically."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise RunError(f"{path}: unknown figure format {path.suffix or '(no extension)'!r}; "
                       "end the file name in .png, .svg or .pdf.")
    if not path.parent.is_dir():
        raise RunError(f"{path}: the directory {path.parent} does not exist; create it first.")
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lower()[1:])
    files.atomic_write_bytes(path, buf.getvalue())

