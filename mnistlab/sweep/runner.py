"""Scheduling: claim each trial not done, submit it through an executor, watch, collect results."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.console import Console

from .. import display, files, lease
from ..config import to_dict, to_yaml
from ..errors import ExecutorUnavailable, Interrupted, MnistlabError, SweepError, some
from ..run import yaml_comment
from . import store
from .executors import Executor, TrialSpec, executor_class
from .spec import PINNED, Sweep, Trial, train_command
from .store import DONE, FAILED, NEW, PAUSED, QUEUED, RUNNING, STOPPED, TrialState

POLL_SECONDS = 0.1
RECHECK_SECONDS = 1.0  # how often trials that others run are looked at again
INDEX_SECONDS = 5.0  # sweep.json is rewritten at most this often while trials run
LEASE_TIMEOUT = 300.0  # a job running this long whose trial never showed its lease: no shared disk
MAX_ATTEMPTS = 3  # submissions of one trial by one sweep command (a trial killed again and again fails)


class SweepInterrupted(Interrupted):
    """Ctrl-C or SIGTERM stopped the sweep after cancelling the trials it had submitted."""

    def __init__(self, cancelled: int, executor: str, not_started: int = 0, completed: int = 0,
                 elsewhere: str = ""):
        they = "they saved their state" if cancelled != 1 else "it saved its state"
        what = (f"stopped the {cancelled} trial{'s' if cancelled != 1 else ''} of this sweep that "
                f"had started ({executor} executor); {they} as interrupted"
                if cancelled else "this command had no trial of its own running")
        if completed:
            what += (f"; {completed} trial{'s' if completed != 1 else ''} had completed before "
                     "the signal")
        if not_started:
            what += (f"; {not_started} queued trial{'s' if not_started != 1 else ''} had not "
                     f"started and {'were' if not_started != 1 else 'was'} withdrawn")
        if elsewhere:
            what += f"; {elsewhere}"
        super().__init__(f"sweep interrupted: {what}. Run the same command again to continue "
                         "where it stopped.")


@dataclass
class Job:
    trial: Trial
    job_id: str
    attempt: int
    running_since: float | None = None
    resumed: Path | None = None  # the run directory it continues, None for a new trial
    started: bool = False  # the executor has said it runs (before that it is queued)
    before: dict | None = None  # the trial's summary.json when it was submitted
    log_size: int | None = None  # the size of its trial.log then (None: there was none)


def check_data(trials: list[Trial]) -> None:
    """Build the data of each distinct data setting once, as train does; a DataError stops here."""
    from ..tasks import TASKS, build_task

    seen = set()
    for t in trials:
        d = to_dict(t.cfg)
        key = json.dumps([t.cfg.task] + [d.get(k) for k in TASKS[t.cfg.task].data_sections],
                         sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            build_task(t.cfg)


def attached(name: str | None) -> bool:
    """Whether jobs of this engine end with the command that submitted them."""
    try:
        return not executor_class(name).detachable
    except (KeyError, TypeError, ExecutorUnavailable):  # an engine this install lacks did not submit here
        return False


class Engines:
    """This command's executor, and the other engines whose jobs outlive their driver (SLURM), each
    created once when a job.json names it, to ask whether its jobs still exist."""

    def __init__(self, executor: Executor):
        self.executor = executor
        self.others: dict[str, Executor | None] = {}

    def get(self, name) -> Executor | None:
        if name == self.executor.name:
            return self.executor
        if not isinstance(name, str) or attached(name):
            return None  # attached jobs live while their driver does (see jobs_alive)
        if name not in self.others:
            try:
                self.others[name] = executor_class(name)({}, 1)
            except MnistlabError:  # not reachable from here: its jobs cannot be checked
                self.others[name] = None
        return self.others[name]


def jobs_alive(executor: Executor, jobs: list[dict], engines: Engines | None = None) -> set[str]:
    """The keys (store.job_key) of job.json records whose job still exists (pending or running),
    asked of the engine that holds it. A claim whose ids were never written (its driver died right
    after submitting) is found again by its name, and its record gets the job id and "adopted"."""
    engines = engines or Engines(executor)
    me = lease.process_identity()
    alive = set()
    by_engine: dict = {}
    for j in jobs:
        by_engine.setdefault(j.get("executor") if isinstance(j.get("executor"), str) else None,
                             []).append(j)
    for name, records in by_engine.items():
        engine = engines.get(name)
        unrecorded = [j for j in records if store.job_key(j) != j.get("job_id")
                      and isinstance(j.get("claim"), str) and isinstance(j.get("index"), int)]
        if unrecorded and hasattr(engine, "find"):
            found = engine.find([(j["claim"], j["index"]) for j in unrecorded])
            for j in unrecorded:
                if (j["claim"], j["index"]) in found:
                    j.update(job_id=found[j["claim"], j["index"]], adopted=True)
        ids = [store.job_key(j) for j in records if store.job_key(j) == j.get("job_id")]
        states = engine.states(ids) if engine is not None and ids else {}
        alive |= {i for i, s in states.items() if s in ("pending", "running")}
        for j in records:  # jobs of another live sweep command on this host: an attached engine's,
            # or a claim whose command is still submitting it
            driver = j.get("driver") if isinstance(j.get("driver"), dict) else {}
            if ((store.job_key(j) != j.get("job_id") or attached(name)
                 and states.get(j.get("job_id"), "unknown") == "unknown")
                    and driver.get("pid") != me["pid"] and lease.process_alive(driver) is True):
                alive.add(store.job_key(j))
    return alive


class Runner:
    """One sweep command's work: what it submitted, what it watches, what it counted."""

    def __init__(self, sweep: Sweep, directory: Path, trials: list[Trial], executor: Executor,
                 progress: display.SweepLines, threads: int, lease_timeout: float, until: int | None = None,
                 engines: Engines | None = None):
        self.sweep, self.directory, self.trials, self.executor = sweep, directory, trials, executor
        self.engines = engines or Engines(executor)
        self.until = until  # the rung this command trains up to (pruned sweeps), None: the end
        self.progress, self.threads, self.lease_timeout = progress, threads, lease_timeout
        self.jobs: dict[str, Job] = {}  # job id -> the trial this command submitted
        self.watched: dict[str, Trial] = {}  # hash -> trial that another command runs
        self.attempts: dict[str, int] = {}
        self.states: dict[str, TrialState] = {}
        self.errors: dict[str, str] = {}
        # trial_seconds: the time the trials this command ran spent in their own runs during it
        # (a resumed run's earlier sessions and other commands' trials left out); own: how many
        self.counts = {"completed": 0, "failed": 0, "interrupted": 0, "paused": 0, "trial_seconds": 0.0}
        self.own: set[str] = set()  # the trials this command ran (at least one of its jobs ended)
        self.index_written = self.rechecked = 0.0

    def alive(self, jobs: list[dict]) -> set[str]:
        return jobs_alive(self.executor, jobs, self.engines)

    def look(self, trials: list[Trial]) -> dict[str, TrialState]:
        """The current state of these trials, read from their own run directories."""
        return store.trial_states(trials, store.scan_trials(trials), self.alive)

    def submit(self, trials: list[Trial], retry_failed: bool = False) -> None:
        """Claim under the sweep lock each trial nobody else runs (job.json), then submit them."""
        with store.locked(self.directory):
            wanted = {NEW, STOPPED, PAUSED} | ({FAILED} if retry_failed else set())
            now = self.look(trials)
            store.record_found(trials, now)
            claim = [t for t in trials if now[t.hash].state in wanted]
            for t in trials:
                if now[t.hash].state in (RUNNING, QUEUED):
                    self.watched[t.hash] = t
            # ended since this command last looked (another command ran it meanwhile, e.g. while
            # this one checked the data): counted as such once the lock is released
            settled = [t for t in trials if now[t.hash].state not in wanted | {RUNNING, QUEUED}]
            # the claim is written before the engine is asked: a driver killed right after
            # submitting leaves job.json files that name the submission, and the next command
            # finds its jobs by that name instead of submitting them again
            name = f"mnistlab-{self.directory.name}-{os.urandom(4).hex()}"
            driver, specs, records = lease.process_identity(), [], []
            for index, t in enumerate(claim):
                with files.writing(t.run_dir):
                    t.run_dir.mkdir(parents=True, exist_ok=True)
                # what the trial trains is this validated config, whatever happens to the base
                # file while it waits in a queue
                files.atomic_write_text(t.run_dir / PINNED, yaml_comment([
                    f"the config of trial {t.name} as sweep {self.sweep.name} validated it"]) + to_yaml(t.cfg))
                records.append({"executor": self.executor.name, "job_id": None, "claim": name,
                                "index": index, "driver": driver, "submitted": time.time()})
                files.write_json(t.run_dir / "job.json", records[-1])
                specs.append(TrialSpec(t.hash, t.name, train_command(self.sweep, t, self.until, executed=True), t.run_dir,
                                       t.run_dir / "trial.log", self.threads, claim=name))
            ids = self.executor.submit(specs) if specs else []
            for t, job_id, record in zip(claim, ids, records):
                files.write_json(t.run_dir / "job.json", {**record, "job_id": job_id})
                self.attempts[t.hash] = self.attempts.get(t.hash, 0) + 1
                self.jobs[job_id] = Job(t, job_id, self.attempts[t.hash],
                                        resumed=t.run_dir if now[t.hash].state != NEW else None,
                                        before=now[t.hash].summary, log_size=_size(t.run_dir / "trial.log"))
                self.states[t.hash] = TrialState(QUEUED, t.run_dir, None, {"job_id": job_id})
                self.progress.queued(t)
        for t in settled:
            self.ended(t, mine=False, st=now[t.hash])

    def poll(self) -> None:
        """Collect finished jobs, check that running ones show their lease, look at watched trials."""
        states = self.executor.states(list(self.jobs)) if self.jobs else {}
        ended = []
        for job_id, job in list(self.jobs.items()):
            state = states.get(job_id, "unknown")
            if state in ("running", "finished") and not job.started:  # said when it really starts
                job.started = True
                self.progress.started(job.trial, job.resumed)
            if state == "running":
                self.check_shared(job)
            elif state == "pending" and job.running_since != float("inf"):
                job.running_since = None  # requeued before its lease: its clock starts again
            elif state in ("finished", "unknown"):
                ended.append(self.jobs.pop(job_id))
        for job in ended:
            self.ended(job.trial, mine=True, job=job)
        if self.watched and time.monotonic() - self.rechecked > RECHECK_SECONDS:
            self.rechecked = time.monotonic()
            now = self.look(list(self.watched.values()))
            for h, t in list(self.watched.items()):
                if now[h].state not in (RUNNING, QUEUED):
                    del self.watched[h]
                    self.ended(t, mine=False, st=now[h])
        running = sum(job.started for job in self.jobs.values())
        self.progress.update(running, len(self.jobs) - running, self.waiting())
        if time.monotonic() - self.index_written > INDEX_SECONDS:
            self.write_index()

    def waiting(self) -> dict[str, int]:
        """Why this command's queued jobs wait, as the engine says (SLURM's pending reasons): how
        many wait for each reason."""
        queued = [job_id for job_id, job in self.jobs.items() if not job.started]
        describe = getattr(self.executor, "describe", None)
        if not queued or describe is None:
            return {}
        return dict(Counter(i["reason"] for i in describe(queued).values() if i.get("reason")))

    def check_shared(self, job: Job) -> None:
        """A job the executor runs must show its lease (or its result) in the run directory; one
        that has not after lease_timeout seconds is stuck (its trial.log grew, or it runs on this
        host: the disk is shared) and fails alone, or runs where the runs directory is not shared."""
        now = time.monotonic()
        job.running_since = job.running_since or now
        run_dir = job.trial.run_dir
        if now - job.running_since < self.lease_timeout:
            return
        if (run_dir / "owner.json").exists() or (run_dir / "summary.json").exists():
            job.running_since = float("inf")  # seen once: the disk is shared
            return
        host = self.describe(job.job_id).get("host")
        wrote = (_size(run_dir / "trial.log") or 0) > (job.log_size or 0) or (
            job.log_size is None and _size(run_dir / "trial.log") is not None)
        if not wrote and (host is None or not lease.same_host(host)):
            on = f" on host {host}" if host else ""
            sharing = (f"that {host} shares with this host ({socket.gethostname()})" if host
                       else "the workers share")
            raise SweepError(
                f"trial {job.trial.name} has been running as {self.executor.name} job {job.job_id}"
                f"{on} for {self.lease_timeout:.0f}s, but neither its lease (owner.json) nor a line "
                f"of its trial.log appeared in {run_dir}: the runs directory "
                f"{self.directory.resolve()} is not on a filesystem {sharing}. Set runs_dir to a "
                "directory every node mounts (e.g. in your home or project space), or run the "
                "sweep with --executor local.")
        # the disk is shared: the trial's process is stopped or stuck before it took the lease
        self.jobs.pop(job.job_id)
        self.own.add(job.trial.hash)
        self.executor.cancel([job.job_id])
        where = f" on host {host}" if host else ""
        tail = _log_tail(run_dir / "trial.log")
        self.fail(job.trial, self.look([job.trial])[job.trial.hash], (
            f"its {self.executor.name} job {job.job_id} ran {self.lease_timeout:.0f}s{where} "
            "without the trial taking its lease (owner.json): the trial's process was stopped or "
            "stuck before training, so the job was cancelled" + (f"; trial.log ends: {tail}"
                                                                  if tail else "")))

    def describe(self, job_id: str) -> dict:
        """What the engine knows of a job (where it runs or ran, how it ended), if it says."""
        describe = getattr(self.executor, "describe", None)
        return (describe([job_id]) if describe else {}).get(job_id) or {}

    def ended(self, trial: Trial, mine: bool, st: TrialState | None = None, job: Job | None = None) -> None:
        """A trial's job ended (or another command's trial changed): read its run directory."""
        st = st or self.look([trial])[trial.hash]
        self.states[trial.hash] = st
        if job is not None:  # this command's session of the trial: what it added to wall_seconds
            self.own.add(trial.hash)
            self.counts["trial_seconds"] += _wall(st.summary) - _wall(job.before) if st.summary else 0.0
        if st.state in (RUNNING, QUEUED):  # another command's process or job holds it now
            self.watched[trial.hash] = trial
            return
        if st.state == DONE:
            self.counts["completed"] += 1
            self.progress.finished(trial, "completed", st.summary, None if mine else "another sweep ran it")
            return
        if st.state == PAUSED and (st.summary or {}).get("epochs_completed", 0) >= (self.until or 0):
            self.counts["paused"] += 1
            self.progress.finished(trial, "paused", st.summary, None)
            return
        if st.state in (STOPPED, PAUSED) and self.attempts.get(trial.hash, 0) < MAX_ATTEMPTS:
            self.submit([trial])  # killed or preempted: continue from its last.pt
            return
        if st.state in (NEW, STOPPED) and not mine:  # its owner died: take it over
            if self.attempts.get(trial.hash, 0) < MAX_ATTEMPTS:
                self.submit([trial])
                return
        error = (st.summary or {}).get("error") if st.state == FAILED else None
        self.fail(trial, st, error or self.why_stopped(trial, st, job))

    def why_stopped(self, trial: Trial, st: TrialState, job: Job | None) -> str:
        """Why a trial's job ended without a result: how the job ended, where, and trial.log's end."""
        times = self.attempts.get(trial.hash, 0)
        what = "the trial stopped without completing" + (f" {times} times" if times > 1 else "")
        if job is not None:
            info = self.describe(job.job_id)
            where = f" on host {info['host']}" if info.get("host") else ""
            how = f" ({info['end']})" if info.get("end") else ""
            if st.summary == job.before:  # its run never changed: the trial never got going
                what = (f"its {self.executor.name} job {job.job_id}{where} ended{how} before the "
                        "trial took its lease (owner.json)")
            else:
                what += f"; its {self.executor.name} job {job.job_id}{where} ended{how}"
        tail = _log_tail(trial.run_dir / "trial.log")
        return what + (f"; trial.log ends: {tail}" if tail else "")

    def fail(self, trial: Trial, st: TrialState, error: str) -> None:
        if st.state != FAILED:
            self.states[trial.hash] = TrialState(FAILED, trial.run_dir, st.summary)
        self.errors[trial.hash] = error
        self.counts["failed"] += 1
        self.progress.finished(trial, "failed", st.summary, error)

    def cancel(self) -> tuple[int, int]:
        """Cancel every job this command submitted: those that started save themselves as
        interrupted, the queued ones are withdrawn; one that ended on its own before (completed,
        failed, paused at its rung) counts as what it is. Returns (interrupted, not started)."""
        jobs = list(self.jobs.values())
        if jobs:
            self.executor.cancel([job.job_id for job in jobs])
        self.jobs.clear()
        interrupted = withdrawn = 0
        for job in jobs:
            st = self.look([job.trial])[job.trial.hash]
            ended = st.state == DONE or st.state == FAILED or (
                st.state == PAUSED and self.until is not None
                and (st.summary or {}).get("epochs_completed", 0) >= self.until)
            if ended and st.summary != job.before:  # its own end, written before the cancel
                self.ended(job.trial, mine=True, st=st, job=job)
            # one the executor started after the last look has written its summary by now
            elif job.started or (job.resumed is None and st.summary is not None):
                self.states[job.trial.hash] = st
                interrupted += 1
                self.progress.finished(job.trial, "interrupted", None,
                                       "cancelled; the next run of the sweep continues it")
            else:
                self.states[job.trial.hash] = st
                withdrawn += 1
        self.counts["interrupted"] += interrupted
        return interrupted, withdrawn

    def elsewhere(self) -> str:
        """What still runs of the trials this command watched (others submitted them), and how
        to stop it: they go on after this command ends."""
        now = self.look(list(self.watched.values()))
        by: dict[str, list[str]] = {}
        for st in now.values():
            if st.state in (RUNNING, QUEUED):
                name, job_id = job_of(st)
                by.setdefault(name or "", []).append(job_id or "")
        parts = []
        for name, ids in sorted(by.items()):
            n = f"{len(ids)} trial{'s' if len(ids) != 1 else ''} of this sweep"
            known = sorted(i for i in ids if i)
            if name and not attached(name):
                shown = f" ({some(known)})" if known else ""
                parts.append(f"{n} still {'run' if len(ids) != 1 else 'runs'} as {name} jobs{shown} that "
                             "another command submitted; this command leaves them running, "
                             f"cancel them with `{cancel_hint(name, known)}`")
            else:
                parts.append(f"{n} still {'run' if len(ids) != 1 else 'runs'} in another command "
                             f"({name or 'mnistlab train'}), which stops them when it is stopped")
        return "; ".join(parts)

    def write_index(self) -> None:
        self.index_written = time.monotonic()
        store.write_index(self.sweep, self.directory, self.trials, self.states, self.errors)


def run_sweep(sweep: Sweep, directory: Path, trials: list[Trial], executor: Executor,
              retry_failed: bool = False, fail_fast: bool = False, detach: bool = False,
              progress: display.SweepLines | None = None, lease_timeout: float = LEASE_TIMEOUT,
              until: int | None = None, more: Callable[[int], list[Trial]] | None = None,
              planned: int = 0) -> dict:
    """Run every trial not done yet through the executor (with until: up to that epoch); return counts.

    more(free) (adaptive search) gives up to free new trials whenever a slot is free and a trial
    has ended since it was last asked, [] when it has none; planned says how many it may give.

    The run directories decide each trial's state; sweep.json is rewritten from them. Raises
    SweepInterrupted on Ctrl-C/SIGTERM after cancelling what this command submitted.
    """
    progress = progress or display.SweepLines(Console(quiet=True))
    engines = Engines(executor)
    states = store.trial_states(trials, store.scan(directory),
                                lambda jobs: jobs_alive(executor, jobs, engines))
    refuse_other_engine(sweep, executor, [states[t.hash] for t in trials])
    if any(st.state == QUEUED and st.owner.get("adopted") for st in states.values()):
        with store.locked(directory):
            store.record_found(trials, states)
    todo = [t for t in trials if states[t.hash].state in (NEW, STOPPED)
            or (retry_failed and states[t.hash].state == FAILED)
            or (states[t.hash].state == PAUSED and (until is None or (
                states[t.hash].summary or {}).get("epochs_completed", 0) < until))]
    by_state = {s: sum(st.state == s for st in states.values()) for s in (DONE, RUNNING, QUEUED, FAILED)}
    counts = {"total": len(trials) + planned, "done_before": by_state[DONE],
              "elsewhere": by_state[RUNNING] + by_state[QUEUED],
              "failed_before": 0 if retry_failed else by_state[FAILED], "to_run": len(todo)}
    if todo:
        executor.prepare()  # a warm process imports torch meanwhile, on the other core
        check_data(todo)  # a data problem said once, before any trial starts
    jobs = executor.jobs
    threads = executor.trial_threads(max(len(todo), 1))
    runner = Runner(sweep, directory, trials, executor, progress, threads, lease_timeout, until,
                    engines)
    runner.states = states
    runner.errors = {h: st.summary.get("error") for h, st in states.items()
                     if st.state == FAILED and st.summary}
    store.write_definition(sweep, directory)
    t0 = time.perf_counter()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        runner.watched = {t.hash: t for t in trials if states[t.hash].state in (RUNNING, QUEUED)}
        progress.start(sweep.name, len(todo) + counts["elsewhere"] + planned, counts, executor.name,
                       jobs, threads)
        runner.submit(todo, retry_failed)
        if detach:  # the jobs run on without this command; the next one attaches to them
            counts["detached"] = len(runner.jobs)
            runner.jobs.clear()
            runner.watched.clear()
        asked = None  # trials ended when more() was last asked
        while True:
            ended = sum(runner.counts[k] for k in ("completed", "failed", "paused"))
            free = jobs - len(runner.jobs) - len(runner.watched)
            if more is not None and not detach and free > 0 and ended != asked:
                asked = ended
                new = more(free)
                if new:
                    runner.trials = runner.trials + new
                    runner.states.update({t.hash: TrialState(NEW, t.run_dir) for t in new})
                    runner.submit(new)
            if not (runner.jobs or runner.watched):
                break
            executor.wait(POLL_SECONDS)
            runner.poll()
            if fail_fast and runner.counts["failed"]:
                runner.cancel()
                runner.watched.clear()
                more = None
    except KeyboardInterrupt:
        cancelled, not_started = runner.cancel()
        runner.write_index()
        raise SweepInterrupted(cancelled, executor.name, not_started, runner.counts["completed"],
                               runner.elsewhere()) from None
    except BaseException:
        runner.cancel()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        progress.stop()
    runner.write_index()
    c = runner.counts
    ran = c["completed"] + c["failed"] + c["interrupted"] + c["paused"]
    counts.update(c, ran=ran, seconds=time.perf_counter() - t0, own=len(runner.own),
                  jobs=min(jobs, max(len(runner.own), 1)),
                  not_run=sum(runner.states[t.hash].state in (NEW, STOPPED) for t in runner.trials))
    counts["failed_total"] = sum(runner.states[t.hash].state == FAILED for t in runner.trials)
    return counts


def job_of(st: TrialState) -> tuple[str | None, str | None]:
    """(engine, job id) of a queued trial's job.json or a running trial's lease, as far as known."""
    owner = st.owner or {}
    if st.state == QUEUED:
        name, job_id = owner.get("executor"), owner.get("job_id")
    else:
        job = owner.get("executor") if isinstance(owner.get("executor"), dict) else {}
        name, job_id = job.get("name"), job.get("job_id")
    return (name if isinstance(name, str) else None), (job_id if isinstance(job_id, str) else None)


def cancel_hint(name: str, job_ids: list[str]) -> str:
    """How to cancel these jobs of a detachable engine from a shell."""
    try:
        return executor_class(name).cancel_command(job_ids)
    except (AttributeError, KeyError, ExecutorUnavailable):
        return f"the {name} engine's own command"


def refuse_other_engine(sweep: Sweep, executor: Executor, states: list[TrialState]) -> None:
    """A driver runs nothing while trials of its sweep are queued or running as jobs of another
    engine that outlives its driver (SLURM): it would run them a second time, beside them."""
    other = [(st, *job_of(st)) for st in states if st.state in (QUEUED, RUNNING)]
    other = [(st, name, job_id) for st, name, job_id in other
             if name and name != executor.name and not attached(name)]
    if not other:
        return
    name = other[0][1]
    ids = sorted(job_id for _, n, job_id in other if n == name and job_id)
    drivers = {json.dumps(st.owner["driver"], sort_keys=True) for st, n, _ in other
               if n == name and st.state == QUEUED and isinstance(st.owner.get("driver"), dict)}
    by = ""
    if len(drivers) == 1:
        driver = json.loads(drivers.pop())
        alive = lease.process_alive(driver)
        by = (f", submitted by the sweep command pid {driver.get('pid')} on host {driver.get('host')}"
              + (", which still runs" if alive else ", which has ended (--detach, or it was stopped)"
                 if alive is False else ""))
    raise SweepError(
        f"sweep {sweep.name}: {len(other)} of its trials are queued or running as {name} jobs "
        f"({some(ids) or 'ids not recorded'}){by}; a {executor.name} driver would run them a second "
        f"time beside them, so it started nothing. Follow them with the same command and "
        f"--executor {name} (it attaches to them and submits only what is missing), or cancel them "
        f"with `{cancel_hint(name, ids)}` and run this command again.")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _wall(summary: dict | None) -> float:
    """A run's wall_seconds (every session so far), 0 when it has none."""
    value = (summary or {}).get("wall_seconds")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _log_tail(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " ".join(lines[-3:])[:500]


# ---------------------------------------------------------------- what a sweep shows while it runs
