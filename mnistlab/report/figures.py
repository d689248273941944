"""Figures of runs: learning curves, a task's own figure, the confusion matrix, saved atomically."""

from __future__ import annotations

import io
from pathlib import Path

from .. import files, metrics, tasks
from ..errors import RunError
from .read import _number, epoch_curves, records, task_label, varying_keys
from .tables import cell

PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def legend_labels(rows: list[dict]) -> list[str]:
    """Each run named by the hyperparameters that differ (its directory name when none do)."""
    keys = varying_keys(rows)[:3]
    labels = [", ".join(f"{k}={cell(r['config'].get(k))}" for k in keys) or r["run"] for r in rows]
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({r['run']})" if keys else label for label, r in zip(labels, rows)]
    return labels


def curves_figure(rows: list[dict]):
    """Loss and accuracy per epoch, train solid and val dashed, one colour per run."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    all_curves = [epoch_curves(r["dir"]) for r in rows]
    with_accuracy = any("accuracy" in rec for c in all_curves for rec in c["train"])
    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    ax_loss, ax_right = fig.subplots(1, 2)
    ax_acc = ax_right if with_accuracy else None
    labels = legend_labels(rows)
    kinds = {tasks.get(r["config"].get("task")) for r in rows}
    if not with_accuracy and not (len(kinds) == 1 and kinds.pop().draw_result(ax_right, rows, labels)):
        fig.delaxes(ax_right)  # nothing beside the loss: a narrower figure
        fig.set_size_inches(5.5, 4)
    drawn = 0
    for i, (row, label) in enumerate(zip(rows, labels)):
        color = f"C{i % 10}"
        curves = all_curves[i]
        if row["status"] in ("paused", "pruned"):  # a sweep stopped it at a rung
            label += f" ({row['status']} at epoch {row['epochs']})"
        for split, style in (("train", "-"), ("val", "--")):
            recs = curves[split]
            if not recs:
                continue
            epochs = [r["epoch"] for r in recs]
            ax_loss.plot(epochs, [r["loss"] for r in recs], style, color=color, marker="o",
                         markersize=3, label=label if split == "train" else None)
            if ax_acc is not None and all(_number(r.get("accuracy")) for r in recs):
                ax_acc.plot(epochs, [100 * r["accuracy"] for r in recs], style, color=color,
                            marker="o", markersize=3)
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
    styles = [Line2D([], [], color="gray", ls="-", label="train"),
              Line2D([], [], color="gray", ls="--", label="validation")]
    if ax_acc is None:
        ax_loss.add_artist(ax_loss.legend(handles=styles, fontsize="small", loc="center right"))
    else:
        ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
        ax_acc.legend(handles=styles + [Line2D([], [], color="gray", ls="", marker="*", markersize=9,
                                               label="test (end of training)")],
                      fontsize="small", loc="lower right")
    log_if_wide(ax_loss)
    for ax in (ax_loss, ax_acc):
        if ax is not None:
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
    ax_loss.legend(title="run", fontsize="small")
    return fig


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

