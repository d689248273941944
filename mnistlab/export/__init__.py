"""Runs exported to the tools the field looks at sweeps with: TensorBoard's HParams dashboard and
MLflow. What a run shows (its settings, its numbers per epoch and at the end, its tags) is read
by record.py, once for every tool; each tool's module writes it in its own format."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import report
from ..errors import ExportError, did_you_mean
from .record import Exported, exported


def _tensorboard():
    from . import tensorboard
    return tensorboard


def _mlflow():
    from . import mlflow
    return mlflow


FORMATS = {"tensorboard": _tensorboard, "mlflow": _mlflow}


def format_module(name: str):
    """The module that writes one tool's format; ExportError when its extra is not installed."""
    if name not in FORMATS:
        hint = did_you_mean(name, FORMATS)
        raise ExportError(f"export {name}: not a format mnistlab exports to; choose "
                          f"{' or '.join(FORMATS)}{'; ' + hint if hint else '.'}")
    try:
        return FORMATS[name]()
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith(__name__):
            raise
        raise ExportError(
            f"export {name}: needs the Python package {e.name}, which is not installed; install "
            f"it with pip install \"mnistlab[{name}]\" (or pip install -e \".[{name}]\" in the "
            "mnistlab checkout).") from None


def check_target(to: Path, runs: list[Exported], default: Path) -> None:
    """Refuse a target that would write into runs or their sweep folders."""
    where = to.resolve()
    for run in runs:
        folder = run.dir.resolve().parent
        if where.is_relative_to(run.dir.resolve()) or (where.is_relative_to(folder) and (
                run.sweep or where == folder)):
            raise ExportError(f"--to {to}: is inside the folder of the runs ({folder}); an export "
                              f"is kept beside the runs, not among them. Give another --to, or "
                              f"none for ./{default}.")


@dataclass
class Outcome:
    """What an export did, for the command to say."""

    to: Path
    new: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # notes on what could not be exported
    open_with: str = ""  # the command that shows the export


def export(name: str, args: list[str], to: Path | None = None) -> Outcome:
    """Export the runs of args (runs, sweep folders, folders of runs) into to, in the format of
    the tool named; a run exported before is written again only when its files changed."""
    module = format_module(name)
    dirs, skipped = report.runs_of(args, folders=True)
    runs = []
    for d in dict.fromkeys(dirs):
        row = report.read_run(d)
        if row["problem"]:
            skipped.append(f"skipped {d}: {row['problem']}, so the run is damaged")
        else:
            runs.append(exported(row))
    to = Path(to if to is not None else module.DEFAULT)
    check_target(to, runs, module.DEFAULT)
    outcome = Outcome(to, skipped=skipped, open_with=module.open_with(to))
    with module.Target(to) as target:
        for run in runs:
            before = target.digest(run)
            if before == run.digest:
                outcome.unchanged.append(run.path)
                continue
            target.write(run)
            (outcome.updated if before is not None else outcome.new).append(run.path)
    return outcome
