"""A run as the tools show it: its settings, its numbers per epoch and at its end, its tags,
and what tells an export already made apart from one to make again."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .. import metrics, report
from ..config import NOT_LEARNED, covers

# what a new version of the export writes differently: runs exported before are written again
VERSION = 1

# the per-epoch curves, by the names of the metric registry: (split, key in metrics.jsonl) -> name
CURVES = {("train", "loss"): "train_loss", ("train", "accuracy"): "train_accuracy",
          ("val", "loss"): "val_loss", ("val", "accuracy"): "val_accuracy", ("train", "lr"): "lr"}

Point = tuple[str, int, float, float | None]  # a metric's name, epoch, value and Unix time


@dataclass
class Exported:
    """A run as the tools show it."""

    dir: Path
    name: str  # the run directory's name
    sweep: str | None  # the sweep whose folder holds it
    identity: str  # the same run, wherever its directory is: its name and start time
    digest: str  # changes when the run's files do: an export already made is kept or redone
    status: str
    started: float | None  # Unix time
    ended: float | None
    hparams: dict = field(default_factory=dict)  # dotted key -> bool, number or text
    points: list[Point] = field(default_factory=list)
    tags: dict = field(default_factory=dict)

    @property
    def path(self) -> str:
        """sweep/run, or run: where the run goes in a tool that lays runs out as folders."""
        return f"{self.sweep}/{self.name}" if self.sweep else self.name


def hparams(row: dict) -> dict:
    """The settings the run reads that can change what it learns (the task's, its model kind's,
    its optimizer's), as TensorBoard and MLflow take them: lists and mappings as JSON text."""
    out = {}
    for key, value in row["config"].items():
        if value is None or covers(NOT_LEARNED, key) or not report.reads(row, key):
            continue
        out[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return out


def _seconds(stamp) -> float | None:
    """An ISO time of summary.json as Unix time."""
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except (TypeError, ValueError):
        return None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def points(row: dict) -> list[Point]:
    """(name, epoch, value, Unix time) of the run's per-epoch curves, and of the metrics of its
    summary at its last epoch (the final value of a curve replaces the curve's last point)."""
    series: dict[str, dict[int, tuple[float, float | None]]] = {}
    curves = report.epoch_curves(row["dir"])
    for (split, key), name in CURVES.items():
        for rec in curves[split]:
            if _number(rec.get(key)):
                time = rec.get("time") if _number(rec.get("time")) else None
                series.setdefault(name, {})[int(rec["epoch"])] = (float(rec[key]), time)
    summary = row["summary"]
    last = summary.get("epochs_completed")
    if not isinstance(last, int) or isinstance(last, bool):
        last = max((e for s in series.values() for e in s), default=0)
    ended = _seconds(summary.get("ended"))
    for name in metrics.ranked():  # the numbers runs are compared by, not counts (epochs, params)
        if row[name] is not None:
            series.setdefault(name, {})[last] = (float(row[name]), ended)
    return [(name, step, value, time) for name, steps in series.items()
            for step, (value, time) in sorted(steps.items())]


def _digest(run_dir: Path) -> str:
    h = hashlib.sha256(f"mnistlab export {VERSION}".encode())
    for name in ("config.yaml", "summary.json", "metrics.jsonl"):
        path = run_dir / name
        try:
            h.update(path.read_bytes())
        except OSError:  # missing, or unreadable (reading its records says why)
            h.update(b"-")
    return h.hexdigest()[:16]


def exported(row: dict) -> Exported:
    """What the tools show of a run read by report.read_run."""
    summary = row["summary"]
    platform = summary.get("platform")
    sweep = row["dir"].parent.name if report.is_sweep(row["dir"].parent) else None
    tags = {"status": row["status"], "task": row["task"],
            "platform": platform.get("name") if isinstance(platform, dict) else
            row["config"].get("platform"), "sweep": sweep,
            "mnistlab.run_dir": str(row["dir"].resolve())}
    return Exported(
        dir=row["dir"], name=row["run"], sweep=sweep,
        identity=f"{row['run']}@{summary.get('started') or row['started']}",
        digest=_digest(row["dir"]), status=row["status"], started=_seconds(row["started"]),
        ended=_seconds(summary.get("ended")), hparams=hparams(row), points=points(row),
        tags={k: str(v) for k, v in tags.items() if v})
