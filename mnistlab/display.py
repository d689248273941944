"""What a training run shows: a Rich live display on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _scores(rec: dict) -> str:
    text = f"loss {rec['loss']:.4g}"
    return text + (f" acc {_pct(rec['accuracy'])}" if rec.get("accuracy") is not None else "")


def epoch_line(train: dict, val: dict | None, epochs: int, rate_unit: str = "img/s") -> str:
    """One line per epoch, within 80 columns: the training scores unlabelled (as Keras prints them)."""
    text = f"epoch {train['epoch']}/{epochs}  {_scores(train)}"
    if val:
        text += f"  val {_scores(val)}"
    elapsed = train["elapsed"]
    return text + f"  {elapsed:.{0 if elapsed >= 100 else 1}f}s {train['images_per_s']:.0f} {rate_unit}"


def summary_line(s: dict) -> str:
    test = (s.get("final") or {}).get("test")
    best = s.get("best") or {}
    parts = [f"{s['status']}: {s['run_dir']}"]
    if test:
        parts.append(f"test {_scores(test)}")
    if s.get("result"):
        from . import tasks  # imported here: tables that only format lines need no torch

        parts += tasks.get(s.get("task")).show_result(s["result"])
    if best.get("val_accuracy") is not None:
        parts.append(f"best val acc {_pct(best['val_accuracy'])} at epoch {best['epoch']}")
    epochs = f"{s['epochs_completed']}/{s['epochs']} epochs"
    partial = (s.get("steps_completed") or 0) - s["epochs_completed"] * (s.get("steps_per_epoch") or 0)
    if partial > 0:  # an interrupted epoch counts too
        epochs += f" and {partial}/{s['steps_per_epoch']} steps of the next"
    parts.append(f"{epochs}, {s['train_seconds']:.1f}s training, {s['params']:,} parameters")
    if s["status"] in ("paused", "pruned"):
        parts.append(f"continue with: mnistlab train --resume {s['run_dir']}")
    return "; ".join(parts)


class Plain:
    """One line per epoch and a final summary, for pipes and CI logs; quiet keeps only the summary."""

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(highlight=False, soft_wrap=True, markup=False)  # paths may hold [x]
        self.epochs = 0
        self.rate_unit = "img/s"

    shows_steps = False

    def start(self, info: dict) -> None:
        self.epochs, self.rate_unit = info["epochs"], info["rate_unit"]
        if not self.quiet:
            self.console.print(
                f"run {info['run_dir']}: {info['params']:,} parameters, {info['device']}, "
                f"{info['threads']} threads, {info['describe']}")

    def step(self, *args) -> None:
        pass

    def epoch(self, train: dict, val: dict | None) -> None:
        if not self.quiet:
            self.console.print(epoch_line(train, val, self.epochs, self.rate_unit))

    def finish(self, summary: dict) -> None:
        self.console.print(summary_line(summary))


class Live(Plain):
    """A Rich progress bar per epoch with loss, accuracy and speed; epoch lines above it."""

    shows_steps = True

    def __init__(self, console: Console | None = None):
        super().__init__(False, console)
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[scores]}  {task.fields[ips]:.0f} {task.fields[unit]}"),
            TimeElapsedColumn(), console=self.console, transient=True)
        self.task = None

    def start(self, info: dict) -> None:
        super().start(info)
        self.progress.start()
        self.task = self.progress.add_task("train", total=info["steps_per_epoch"],
                                           epoch=f"{info['start_epoch'] + 1}/{self.epochs}",
                                           scores="", ips=0.0, unit=self.rate_unit)

    def step(self, epoch, step, steps, loss, accuracy, images_per_s) -> None:
        scores = _scores({"loss": loss, "accuracy": accuracy})
        self.progress.update(self.task, completed=step, epoch=f"{epoch}/{self.epochs}",
                             scores=scores, ips=images_per_s)

    def epoch(self, train: dict, val: dict | None) -> None:
        self.progress.console.print(epoch_line(train, val, self.epochs, self.rate_unit))
        self.progress.reset(self.task)

    def finish(self, summary: dict) -> None:
        self.progress.stop()
        super().finish(summary)


def reporter(quiet: bool):
    """Live display on a terminal; plain lines when stdout is a pipe or file."""
    if quiet:
        return Plain(quiet=True)
    return Live() if sys.stdout.isatty() else Plain()
