"""One registry of metric names: where each is read in summary.json, which way is better, how it is shown."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """A number of a run: its place in summary.json, its direction, its label and its format."""

    name: str
    path: tuple[str, ...]  # keys into summary.json
    higher: bool | None  # True: higher is better; False: lower; None: not something to rank by
    label: str  # short, for table headers
    title: str  # long, for comparisons and plot axes
    kind: str  # a key of FORMATS


def _loss(x: float) -> str:
    return f"{x:.4f}" if 1e-3 <= abs(x) < 1e4 else f"{x:.3g}"


def _seconds(x: float) -> str:
    return f"{x:.1f}s" if x < 60 else f"{int(x // 60)}m{int(x % 60):02d}s"


FORMATS = {
    "percent": lambda x: f"{100 * x:.2f}%",
    "loss": _loss,
    "seconds": _seconds,
    "count": lambda x: f"{int(x):,}",
    "number": lambda x: f"{x:.4g}",
}
UNITS = {"percent": "%", "seconds": "s"}

METRICS = {m.name: m for m in (
    Metric("val_accuracy", ("final", "val", "accuracy"), True, "val acc",
           "final validation accuracy", "percent"),
    Metric("val_loss", ("final", "val", "loss"), False, "val loss", "final validation loss", "loss"),
    Metric("best_val_accuracy", ("best", "val_accuracy"), True, "best val acc",
           "best validation accuracy", "percent"),
    Metric("best_epoch", ("best", "epoch"), None, "best epoch", "epoch of the best validation score",
           "count"),
    Metric("test_accuracy", ("final", "test", "accuracy"), True, "test acc", "test accuracy",
           "percent"),
    Metric("test_loss", ("final", "test", "loss"), False, "test loss", "test loss", "loss"),
    Metric("train_accuracy", ("final", "train", "accuracy"), True, "train acc",
           "final training accuracy", "percent"),
    Metric("train_loss", ("final", "train", "loss"), False, "train loss", "final training loss",
           "loss"),
    Metric("train_seconds", ("train_seconds",), False, "train time", "training time", "seconds"),
    Metric("wall_seconds", ("wall_seconds",), False, "wall time", "wall time of the whole run",
           "seconds"),
    Metric("epochs", ("epochs_completed",), None, "epochs", "epochs completed", "count"),
    Metric("params", ("params",), None, "params", "parameters", "count"),
    # quadratic: f(x) = sum(x^2) at the end, and |x|
    Metric("f", ("result", "f"), False, "f(x)", "final f(x)", "number"),
    Metric("x_norm", ("result", "norm"), False, "|x|", "final distance to the minimum |x|", "number"),
    # linreg: training MSE above the least-squares optimum
    Metric("lstsq_gap", ("result", "lstsq_gap"), False, "lstsq gap",
           "training MSE above least squares", "number"),
)}


def ranked() -> list[str]:
    """Names a sweep can rank configurations by (those with a better direction)."""
    return [name for name, m in METRICS.items() if m.higher is not None]


def value(summary: dict, name: str) -> float | None:
    """The metric read from a summary.json mapping; None when absent, not a number or not finite."""
    v = summary
    for part in METRICS[name].path:
        v = v.get(part) if isinstance(v, dict) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return v


def text(name: str, v: float | None) -> str:
    """The value as a table shows it: accuracies in %, times in s or m:s, counts with separators."""
    return "-" if v is None else FORMATS[METRICS[name].kind](v)


def percent(x: float | None) -> str:
    """A share as a percentage, e.g. 91.23%."""
    return "-" if x is None else FORMATS["percent"](x)


def axis_label(name: str) -> str:
    """Long label with its unit, for plot axes, e.g. 'final validation accuracy (%)'."""
    m = METRICS[name]
    unit = UNITS.get(m.kind)
    return f"{m.title} ({unit})" if unit else m.title


def plotted(name: str, v: float) -> float:
    """The value in the unit of axis_label: accuracies in percent."""
    return 100 * v if METRICS[name].kind == "percent" else v
