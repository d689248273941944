"""Scheduling: run every trial not done yet through an executor, show progress, collect results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rich.console import Console

from .. import runs
from ..errors import Interrupted
from .spec import Sweep, Trial
from .store import _entry, _resumable, locked_index, runs_by_hash, trial_state

class SweepInterrupted(Interrupted):
    """Ctrl-C or SIGTERM stopped the sweep after its running trials saved themselves."""

    def __init__(self):
        super().__init__("sweep interrupted; the running trials saved their state. Run the same "
                         "command again to continue where it stopped.")



@dataclass
class Job:
    trial: Trial
    proc: subprocess.Popen
    log: Path
    before: set[str]  # run directories of this trial that existed before it started
    resumed: Path | None


def threads_per_job(jobs: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // jobs)


def run_sweep(sweep: Sweep, directory: Path, trials: list[Trial], jobs: int = 1,
              fail_fast: bool = False, progress: "Progress | None" = None,
              until: int | None = None) -> dict:
    """Run every trial not done yet, jobs at a time (with until: up to that epoch); return counts.

    Raises SweepInterrupted on Ctrl-C/SIGTERM after the running trials saved themselves.
    """
    progress = progress or Progress(Console(quiet=True))
    on_disk = runs_by_hash(directory)
    with locked_index(directory) as index:
        index.update(name=sweep.name, base=str(sweep.base), overrides=sweep.overrides, keys=sweep.keys)
        states = {t.hash: trial_state(on_disk.get(t.hash, []), index["trials"].get(t.hash))
                  for t in trials}
    pending = [t for t in trials if states[t.hash] not in ("done", "running")]
    counts = {"total": len(trials), "done_before": sum(s == "done" for s in states.values()),
              "elsewhere": sum(s == "running" for s in states.values()),
              "completed": 0, "failed": 0, "interrupted": 0, "paused": 0, "skipped": 0}
    threads = threads_per_job(min(jobs, max(len(pending), 1)))
    progress.start(sweep.name, len(pending), counts, jobs, threads)
    running: list[Job] = []
    stopping = False
    t0 = time.perf_counter()
    wall_seconds = 0.0

    def finish(job: Job, interrupted: bool) -> None:
        nonlocal stopping, wall_seconds
        status, run_dir, error, summary = _outcome(directory, job, interrupted)
        wall_seconds += (summary or {}).get("wall_seconds") or 0.0
        counts[status] += 1
        with locked_index(directory) as index:
            index["trials"][job.trial.hash] = _entry(
                sweep, job.trial, status=status, run_dir=run_dir, error=error, log=str(job.log),
                ended=datetime.now().isoformat(timespec="seconds"))
        progress.finished(job.trial, status, summary, error)
        if status == "failed" and fail_fast:
            stopping = True

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while (pending and not stopping) or running:
            while pending and not stopping and len(running) < jobs:
                job = _launch(sweep, directory, pending.pop(0), threads, until)
                if job is None:
                    counts["skipped"] += 1
                    continue
                running.append(job)
                progress.started(job.trial, job.resumed)
            for job in [j for j in running if j.proc.poll() is not None]:
                running.remove(job)
                finish(job, interrupted=False)
            if stopping:
                _stop(running)
            progress.update(len(running))
            time.sleep(0.05)
    except KeyboardInterrupt:
        _stop(running)
        for job in running:
            finish(job, interrupted=True)
        raise SweepInterrupted() from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        progress.stop()
    ran = counts["completed"] + counts["failed"] + counts["interrupted"] + counts["paused"]
    counts.update(ran=ran, seconds=time.perf_counter() - t0, trial_seconds=wall_seconds,
                  jobs=min(jobs, max(ran, 1)), not_run=len(pending))
    return counts


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _launch(sweep: Sweep, directory: Path, trial: Trial, threads: int,
            until: int | None = None) -> Job | None:
    """Claim the trial in the index and start its process; None when another sweep has it."""
    with locked_index(directory) as index:
        on_disk = runs_by_hash(directory).get(trial.hash, [])
        if trial_state(on_disk, index["trials"].get(trial.hash)) in ("done", "running"):
            return None
        resumed = _resumable(on_disk)
        if resumed is not None:
            args = ["--resume", str(resumed)]
        else:
            args = [str(sweep.base)] + sweep.overrides + trial.overrides + [
                f"runs_dir={directory}", f"name={trial.name}"]
        if until is not None and until < trial.cfg.train.epochs:  # a rung of a pruned sweep
            args += ["--until-epoch", str(until)]
        env = dict(os.environ)
        if not trial.cfg.train.threads:  # split the cores without touching the config (and its hash)
            env["OMP_NUM_THREADS"] = str(threads)
        logs = directory / "logs"
        logs.mkdir(exist_ok=True)
        log = logs / f"{trial.name}-{trial.hash}.log"
        with open(log, "w") as out:
            # a session of its own: Ctrl-C reaches only the sweep, which stops each trial once
            proc = subprocess.Popen([sys.executable, "-m", "mnistlab", "train", "--quiet", *args],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        index["trials"][trial.hash] = _entry(
            sweep, trial, status="running", run_dir=str(resumed) if resumed else None, error=None,
            log=str(log), pid=proc.pid, owner=runs.process_identity(),
            started=datetime.now().isoformat(timespec="seconds"))
    return Job(trial, proc, log, {s["run_dir"] for s in on_disk}, resumed)


def _stop(jobs: list[Job], timeout: float = 60.0) -> None:
    """SIGTERM each trial (it saves its run as interrupted), wait, then kill what still runs."""
    for job in jobs:
        if job.proc.poll() is None:
            job.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    try:
        for job in jobs:
            job.proc.wait(max(deadline - time.monotonic(), 0.1))
    except (subprocess.TimeoutExpired, KeyboardInterrupt):  # stuck, or a second Ctrl-C
        for job in jobs:
            if job.proc.poll() is None:
                job.proc.kill()
                job.proc.wait()


def _outcome(directory: Path, job: Job,
             interrupted: bool) -> tuple[str, str | None, str | None, dict | None]:
    """(status, run_dir, error, summary) of a finished trial process."""
    rc = job.proc.wait()
    run_dir = job.resumed
    if run_dir is None:
        new = [s for s in runs_by_hash(directory).get(job.trial.hash, [])
               if s["run_dir"] not in job.before]
        run_dir = Path(new[-1]["run_dir"]) if new else None
    summary = None
    if run_dir is not None:
        try:
            summary = runs.read_json(run_dir / "summary.json")
        except (OSError, ValueError):
            pass
    status = (summary or {}).get("status")
    shown = str(run_dir) if run_dir else None
    if rc == 0 and status == "completed":
        return "completed", shown, None, summary
    if rc == 0 and status in ("paused", "pruned"):
        return "paused", shown, None, summary
    if interrupted or status == "interrupted":
        return "interrupted", shown, "interrupted; the next run of the sweep continues it", summary
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
        return "failed", shown, f"the trial process was killed by {name}", summary
    if status == "failed" and summary.get("error"):
        return "failed", shown, summary["error"], summary
    return "failed", shown, _log_tail(job.log) or f"the trial process exited with code {rc}", summary


def _log_tail(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " ".join(lines[-3:])[:500]


# ---------------------------------------------------------------- what a sweep shows while it runs


class Progress:
    """Plain lines: one when a trial starts, one when it ends."""

    def __init__(self, console: Console):
        self.console = console
        self.total = self.done = 0
        self.counts: dict = {}

    def start(self, name: str, total: int, counts: dict, jobs: int, threads: int) -> None:
        self.total, self.counts = total, counts
        before = counts["done_before"]
        other = f", {counts['elsewhere']} running in another sweep" if counts["elsewhere"] else ""
        self.console.print(f"sweep {name}: {counts['total']} trials, {before} done before{other}, "
                           f"{total} to run; {jobs} job{'s' if jobs > 1 else ''} x {threads} thread"
                           f"{'s' if threads > 1 else ''}")

    def started(self, trial: Trial, resumed: Path | None) -> None:
        how = f"continuing {resumed}" if resumed else " ".join(trial.overrides)
        self.console.print(f"start {trial.name}: {how}")

    def finished(self, trial: Trial, status: str, summary: dict | None, error: str | None) -> None:
        self.done += 1
        self.console.print(f"[{self.done}/{self.total}] {result_line(trial, status, summary, error)}")

    def update(self, running: int) -> None:
        pass

    def stop(self) -> None:
        pass


class LiveProgress(Progress):
    """A Rich bar of trials done / total with running, failed and ETA; result lines above it."""

    def __init__(self, console: Console):
        from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        from rich.progress import Progress as Bar

        super().__init__(console)
        self.bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("running {task.fields[running]}  failed {task.fields[failed]}"),
                       TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                       console=console, transient=True)
        self.task = None

    def start(self, name, total, counts, jobs, threads) -> None:
        super().start(name, total, counts, jobs, threads)
        self.bar.start()
        self.task = self.bar.add_task(f"sweep {name}", total=total, running=0, failed=0)

    def started(self, trial, resumed) -> None:
        pass

    def finished(self, trial, status, summary, error) -> None:
        self.done += 1
        self.bar.console.print(result_line(trial, status, summary, error))
        self.bar.update(self.task, completed=self.done, failed=self.counts["failed"])

    def update(self, running: int) -> None:
        self.bar.update(self.task, running=running)

    def stop(self) -> None:
        self.bar.stop()


def progress_for(console: Console) -> Progress:
    """Live bar on a terminal, plain lines in a pipe or log file."""
    return LiveProgress(console) if console.is_terminal else Progress(console)


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
