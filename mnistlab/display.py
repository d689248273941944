"""What a training run and a sweep show: a Rich live display on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column
from rich.text import Text

from . import metrics

if TYPE_CHECKING:
    from .sweep.spec import Trial


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


def summary_line(s: dict, width: int | None = None) -> str:
    """The run's end in parts joined by '; ', broken into lines of width between parts when given."""
    test = (s.get("final") or {}).get("test")
    best = s.get("best") or {}
    parts = [f"{s['status']}: {s['run_dir']}"]
    if test:
        parts.append(f"test {_scores(test)}")
    if s.get("result"):
        from . import (
            tasks,  # imported here: tables that only format lines need no torch
        )

        parts += tasks.get(s.get("task")).show_result(s["result"])
    if best.get("val_accuracy") is not None:
        parts.append(f"best val acc {_pct(best['val_accuracy'])} at epoch {best['epoch']}")
    epochs = f"{s['epochs_completed']}/{s['epochs']} epochs"
    partial = (s.get("steps_completed") or 0) - s["epochs_completed"] * (s.get("steps_per_epoch") or 0)
    at = s.get("diverged_at")
    if at:  # the steps after it (up to the check) count for nothing
        parts.append(f"diverged at {where_diverged(at['epoch'], at['step'], s.get('steps_per_epoch'))}")
        epochs += " completed"
    elif partial > 0:  # an interrupted epoch counts too
        epochs += f" and {partial}/{s['steps_per_epoch']} steps of epoch {s['epochs_completed'] + 1}"
    parts.append(f"{epochs}, {s['train_seconds']:.1f}s training, {s['params']:,} parameters")
    if s["status"] in ("paused", "pruned"):
        parts.append(f"continue with: mnistlab train --resume {s['run_dir']}")
    return "; ".join(parts) if width is None else wrap_parts(parts, ";", width)


def where_diverged(epoch: int, step: int, steps_per_epoch: int | None) -> str:
    """'epoch 2, step 14 of 36' (1-based); 'epoch 7' where an epoch is one step (the exercises)."""
    if steps_per_epoch == 1:
        return f"epoch {epoch}"
    return f"epoch {epoch}, step {step}" + (f" of {steps_per_epoch}" if steps_per_epoch else "")


def wrap_parts(parts: list[str], sep: str, width: int) -> str:
    """Parts joined by sep and a space, a line broken between two parts (never inside one) before
    it grows past width, sep included; continuation lines are indented by two spaces."""
    lines: list[str] = []
    for i, part in enumerate(parts):
        piece = part + (sep if i < len(parts) - 1 else "")
        if lines and cell_len(lines[-1]) + 1 + cell_len(piece) <= width:
            lines[-1] += " " + piece
            continue
        # a part longer than a line is broken between words (a path has none to break at)
        lines += textwrap.wrap(piece, width, initial_indent="  " if lines else "",
                               subsequent_indent="  ", break_long_words=False,
                               break_on_hyphens=False) or ["  "]
    return "\n".join(lines)


def resumed_line(info: dict) -> str:
    """Where a resumed run continues: after which epoch, at which step."""
    epoch, step, steps = info["start_epoch"], info.get("start_step") or 0, info["steps_per_epoch"]
    where = (f"epoch {epoch + 1}/{info['epochs']} from its start" if not step else
             f"epoch {epoch + 1}/{info['epochs']} at step {step + 1}/{steps}")
    done = f"{epoch} epoch{'s' if epoch != 1 else ''}" + (f" and {step} steps" if step else "")
    return (f"resuming at {where} (after {done}, global step "
            f"{info.get('global_step', epoch * steps + step)}), from the last checkpoint")


def step_line(task: str | None, train: dict, width: int) -> str:
    """The task's line under an epoch's line: what the epoch's last step record shows ('': none)."""
    record = train.get("last_step")
    if not record:
        return ""
    from . import tasks  # light: a task's class, not its data or model

    text = tasks.get(task).show_step(record, width - 2)
    return "  " + text if text else ""


def config_text(cfg, source: str | None, defaults_file: Path | None = None,
                defaults: tuple[list[str], list[str]] = ([], [])) -> str:
    """--print-config: the resolved config as YAML without what the run never reads, under a header
    that names its source, the user's defaults it took (and those it set itself), and what is left out."""
    from .config import flatten, to_dict, to_yaml, unread_keys

    unread = unread_keys(flatten(to_dict(cfg)))
    unread = [key for key in dict.fromkeys(unread)  # model.hidden goes with model
              if not any(key.startswith(section + ".") for section in unread)]
    lines = [f"resolved config of {source}" if source else "resolved config"]
    used, overruled = defaults
    if used or overruled:
        lines.append(f"defaults from {defaults_file}:")
        if used:
            lines.append(f"  taken: {' '.join(used)}")
        if overruled:
            lines.append(f"  set by the config or command line instead: {' '.join(overruled)}")
    if unread:
        lines.append("left out, never read by this run: " + ", ".join(unread))
    header = "\n".join(textwrap.fill(line, 78, subsequent_indent="  ", break_long_words=False,
                                      break_on_hyphens=False) for line in lines)
    return "".join(f"# {line}\n" for line in header.splitlines()) + to_yaml(cfg, unread)


def whole(text_format: str, style: str = "") -> TextColumn:
    """A column of a live bar's line whose text is never cut or wrapped: the bar beside it (of no
    fixed width) takes what is left of the line."""
    return TextColumn(text_format, style=style, markup=False, table_column=Column(no_wrap=True))


class Plain:
    """One line per epoch and a final summary, for pipes and CI logs; quiet keeps only the summary."""

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self.console = console or Console(highlight=False, soft_wrap=True, markup=False)  # paths may hold [x]
        self.epochs = 0
        self.rate_unit = "img/s"
        self.task_name: str | None = None

    shows_steps = False

    def stage(self, text: str | None, done: int = 0, total: int | None = None) -> None:
        pass  # a log gets the header line once the run is set up

    def start(self, info: dict) -> None:
        self.epochs, self.rate_unit = info["epochs"], info["rate_unit"]
        self.task_name = info.get("task")
        if not self.quiet:
            self.console.print(wrap_parts(
                [f"run {info['run_dir']}: {info['params']:,} parameters", info["device"],
                 f"{info['threads']} threads", info["describe"]], ",", self.console.width))
            if info.get("resumed"):
                self.console.print(textwrap.fill(resumed_line(info), self.console.width,
                                                 subsequent_indent="  ", break_long_words=False,
                                                 break_on_hyphens=False))

    def step(self, *args) -> None:
        pass

    def epoch(self, train: dict, val: dict | None) -> None:
        if not self.quiet:
            self.console.print(epoch_line(train, val, self.epochs, self.rate_unit))
            extra = step_line(self.task_name, train, min(self.console.width, 80))
            if extra:
                self.console.print(extra)

    def finish(self, summary: dict) -> None:
        self.console.print(summary_line(summary, self.console.width))


class Live(Plain):
    """A Rich progress bar per epoch with loss, accuracy and speed; epoch lines above it. Before the
    first step, the stage being set up in its place, with its own count and time."""

    shows_steps = True

    def __init__(self, console: Console | None = None):
        super().__init__(False, console)
        self.progress = Progress(
            whole("{task.description}", style="bold"), BarColumn(bar_width=None),
            whole("{task.fields[count]}"), whole("{task.fields[scores]}"), TimeElapsedColumn(),
            console=self.console, transient=True)
        self.task = None  # the epoch's bar
        self.staged: tuple[str, object] | None = None  # the stage shown: its text and its bar

    def stage(self, text: str | None, done: int = 0, total: int | None = None) -> None:
        if self.staged is not None and self.staged[0] != text:
            self.progress.remove_task(self.staged[1])
            self.staged = None
        if self.task is not None:
            self.progress.update(self.task, visible=not text)
        if not text:
            if self.task is None:
                self.progress.stop()
            return
        count = f"{done:,}/{total:,} images" if total else ""
        if self.staged is None:
            self.progress.start()
            self.staged = text, self.progress.add_task(text, total=total, completed=done,
                                                       count=count, scores="")
        else:
            self.progress.update(self.staged[1], completed=done, count=count)

    def start(self, info: dict) -> None:
        self.stage(None)
        super().start(info)
        self.progress.start()
        steps = info["steps_per_epoch"]
        self.task = self.progress.add_task(f"epoch {info['start_epoch'] + 1}/{self.epochs}",
                                           total=steps, count=f"{0:>{len(str(steps))}}/{steps}",
                                           scores="")

    def step(self, epoch, step, steps, loss, accuracy, images_per_s) -> None:
        if self.staged is not None:
            self.stage(None)
        scores = _scores({"loss": loss, "accuracy": accuracy})
        self.progress.update(self.task, completed=step, description=f"epoch {epoch}/{self.epochs}",
                             count=f"{step:>{len(str(steps))}}/{steps}",
                             scores=f"{scores}  {images_per_s:.0f} {self.rate_unit}")

    def epoch(self, train: dict, val: dict | None) -> None:
        self.progress.console.print(epoch_line(train, val, self.epochs, self.rate_unit))
        extra = step_line(self.task_name, train, min(self.console.width, 80))
        if extra:
            self.progress.console.print(extra)
        self.progress.reset(self.task)

    def finish(self, summary: dict) -> None:
        self.progress.stop()
        super().finish(summary)


def reporter(quiet: bool):
    """Live display on a terminal; plain lines when stdout is a pipe or file."""
    if quiet:
        return Plain(quiet=True)
    return Live() if sys.stdout.isatty() else Plain()


def best_text(metric: str, value: float) -> str:
    """val acc 97.12%: a metric's label and value as the tables show it."""
    return f"{metrics.METRICS[metric].label} {metrics.text(metric, value)}"


class Best:
    """The best completed configuration so far by the sweep's metric; shared by the displays of
    the rungs and brackets of one sweep command."""

    def __init__(self, metric: str | None = None):
        self.metric = metric
        self.value: float | None = None
        self.trial: Trial | None = None

    def offer(self, trial: Trial, summary: dict | None) -> bool:
        """Whether this completed trial is the best so far (and now remembered as such)."""
        if self.metric is None or not summary:
            return False
        value = metrics.value(summary, self.metric)
        if value is None:
            return False
        better = self.value is None or (
            value > self.value if metrics.METRICS[self.metric].higher else value < self.value)
        if better:
            self.value, self.trial = value, trial
        return better

    def text(self) -> str:
        if self.trial is None:
            return "-"
        return f"{' '.join(self.trial.overrides) or self.trial.name}: {best_text(self.metric, self.value)}"


class SweepLines:
    """A sweep in plain lines: one when a trial starts, one when it ends, one when the best changes."""

    def __init__(self, console: Console, best: Best | None = None):
        self.console = console
        self.total = self.done = self.failed = 0
        self.counts: dict = {}
        self.best = best or Best()
        self.waits: dict[str, int] = {}  # why queued trials wait, as last said

    def start(self, name: str, total: int, counts: dict, executor: str, jobs: int,
              threads: int) -> None:
        self.total, self.counts = total, counts
        before = counts["done_before"]
        # total counts the trials of other commands that this one follows to their end, too
        other = f", {counts['elsewhere']} running in another sweep" if counts["elsewhere"] else ""
        trials = f"{counts['total']} trial{'s' * (counts['total'] != 1)}"
        self.console.print(f"sweep {name}: {trials}, {before} done before{other}, "
                           f"{total - counts['elsewhere']} to run; {executor} executor, "
                           f"{jobs} job{'s' if jobs > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}")

    def queued(self, trial: Trial) -> None:
        """Submitted: it waits for a free job slot (or the scheduler) before it starts."""

    def started(self, trial: Trial, resumed: Path | None) -> None:
        how = f"continuing {resumed}" if resumed else " ".join(trial.overrides)
        self.console.print(f"start {trial.name}: {how}")

    def finished(self, trial: Trial, status: str, summary: dict | None, error: str | None) -> None:
        self.done += 1
        self.failed += status == "failed"
        self.console.print(f"[{self.done}/{self.total}] {result_line(trial, status, summary, error)}")
        if status == "completed" and self.best.offer(trial, summary):
            self.console.print(f"best so far: {self.best.text()}")

    def update(self, running: int, queued: int = 0, waits: dict[str, int] | None = None) -> None:
        """waits: how many queued trials wait for each reason the scheduler gives; a line when
        the reasons change."""
        if waits and set(waits) != set(self.waits):
            self.console.print(f"queued trials wait: {waits_text(waits)}", markup=False)
        self.waits = waits or {}

    def stop(self) -> None:
        pass


class SweepBar(Progress):
    """A sweep's bar on one line (its name, trials done, elapsed time and ETA, never cut); under it
    the trials running, queued and failed and the best so far, broken between words."""

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            f = task.fields
            yield Text(f"running {f['running']}  queued {f['queued']}{f['waiting']}  "
                       f"failed {f['failed']}"
                       + (f"  best {f['best']}" if f["best"] else ""))


class SweepLive(SweepLines):
    """A sweep as a Rich bar of trials done / total with running, failed and ETA; result lines above it."""

    def __init__(self, console: Console, best: Best | None = None):
        from rich.progress import TimeRemainingColumn

        super().__init__(console, best)
        self.bar = SweepBar(whole("{task.description}", style="bold"), BarColumn(bar_width=None),
                            whole("{task.completed}/{task.total} trials"), TimeElapsedColumn(),
                            whole("ETA"), TimeRemainingColumn(), console=console, transient=True)
        self.task = None

    def start(self, name, total, counts, executor, jobs, threads) -> None:
        super().start(name, total, counts, executor, jobs, threads)
        self.bar.start()
        self.task = self.bar.add_task(f"sweep {name}", total=total, running=0, queued=0, waiting="",
                                      failed=0, best=self._best())

    def _best(self) -> str:
        return self.best.text() if self.best.trial is not None else ""

    def started(self, trial, resumed) -> None:
        pass

    def finished(self, trial, status, summary, error) -> None:
        self.done += 1
        self.failed += status == "failed"
        self.bar.console.print(result_line(trial, status, summary, error))
        if status == "completed" and self.best.offer(trial, summary):
            self.bar.console.print(f"best so far: {self.best.text()}")
        self.bar.update(self.task, completed=self.done, failed=self.failed, best=self._best())

    def update(self, running: int, queued: int = 0, waits: dict[str, int] | None = None) -> None:
        self.bar.update(self.task, running=running, queued=queued,
                        waiting=f", waiting: {waits_text(waits)}" if waits else "")

    def stop(self) -> None:
        self.bar.stop()


def waits_text(waits: dict[str, int]) -> str:
    """'2 for Resources (free CPUs or memory), 1 for Priority (jobs ahead of it)'."""
    return ", ".join(f"{n} for {reason}" for reason, n in sorted(waits.items()))


def sweep_progress(console: Console, best: Best | None = None) -> SweepLines:
    """A sweep's live bar on a terminal, plain lines in a pipe or log file; best: what the sweep has
    found so far (shared by every display of one sweep command)."""
    return SweepLive(console, best) if console.is_terminal else SweepLines(console, best)


def result_line(trial: Trial, status: str, summary: dict | None, error: str | None) -> str:
    if status == "completed":
        val = ((summary.get("final") or {}).get("val") or {}).get("accuracy")
        acc = f"val acc {100 * val:.2f}%, " if val is not None else ""
        return f"completed {trial.name}: {acc}{summary.get('wall_seconds') or 0:.1f}s"
    if status == "paused":
        val = ((summary.get("final") or {}).get("val") or {}).get("accuracy")
        acc = f", val acc {100 * val:.2f}%" if val is not None else ""
        return f"paused {trial.name} at epoch {summary.get('epochs_completed')}{acc}"
    return f"{status} {trial.name}: {error}"
