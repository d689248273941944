"""Trials as processes of this machine, jobs at a time: forked from a warm process (the default,
sweep/warm.py) or started cold (executor: {local: {warm: false}})."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import time

from ... import files
from ...errors import ConfigError
from ..warm import WarmServer, WarmTrial
from .base import TrialSpec
from .options import local_problems


class LocalExecutor:
    """Starts queued trials as slots free up, on each call of states()."""

    name = "local"
    detachable = False
    attached_because = "local trials are processes of this command"

    def __init__(self, options: dict, jobs: int) -> None:
        problems = local_problems(options or {})
        if problems:
            raise ConfigError(problems)
        self.jobs = max(1, jobs)
        self.warm = WarmServer() if (options or {}).get("warm", True) else None
        self.prefix = f"local-{socket.gethostname()}-{os.getpid()}"
        self.ids = itertools.count(1)
        self.queue: list[tuple[str, TrialSpec]] = []
        self.procs: dict[str, subprocess.Popen | WarmTrial] = {}

    def trial_threads(self, running: int) -> int:
        """This machine's cores shared among the trials that run at once (at least one each)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // max(1, min(self.jobs, running)))

    def submit(self, specs: list[TrialSpec]) -> list[str]:
        ids = [f"{self.prefix}-{next(self.ids)}" for _ in specs]
        self.queue += zip(ids, specs)
        self._start()
        return ids

    def _start(self) -> None:
        while self.queue and sum(p.poll() is None for p in self.procs.values()) < self.jobs:
            job_id, spec = self.queue.pop(0)
            env = {"OMP_NUM_THREADS": str(spec.threads), **spec.env,
                   "MNISTLAB_EXECUTOR": self.name, "MNISTLAB_JOB_ID": job_id}
            with files.writing(spec.log):  # a disk problem is said here, not lost in a trial
                out = open(spec.log, "a")
            if self.warm is not None:
                out.close()
                self.procs[job_id] = self.warm.start(job_id, spec.argv, env, str(spec.log),
                                                     spec.threads)
                continue
            env = {**os.environ, **env}
            with out:
                # a session of its own: Ctrl-C reaches only the sweep, which stops each trial once
                self.procs[job_id] = subprocess.Popen(
                    spec.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=env, start_new_session=True)

    def states(self, job_ids: list[str]) -> dict[str, str]:
        self._start()
        queued = {job_id for job_id, _ in self.queue}
        out = {}
        for job_id in job_ids:
            proc = self.procs.get(job_id)
            if proc is not None:
                out[job_id] = "running" if proc.poll() is None else "finished"
            else:
                out[job_id] = "pending" if job_id in queued else "unknown"
        return out

    def prepare(self) -> None:
        if self.warm is not None:
            self.warm.prepare()

    def wait(self, seconds: float) -> None:
        if self.warm is not None and self.warm.proc is not None:
            self.warm.read(seconds)  # wakes up as soon as a trial started or ended
        else:
            time.sleep(seconds)

    def returncode(self, job_id: str) -> int | None:
        proc = self.procs.get(job_id)
        return None if proc is None else proc.poll()

    def describe(self, job_ids: list[str]) -> dict[str, dict]:
        """Where each trial runs (this host) and, once it ended, how."""
        out = {}
        for job_id in job_ids:
            out[job_id] = {"host": socket.gethostname()}
            code = self.returncode(job_id)
            if code is not None:
                out[job_id]["end"] = (f"killed by {signal.Signals(-code).name}" if code < 0
                                      else f"exit code {code}")
        return out

    def cancel(self, job_ids: list[str], timeout: float = 60.0) -> None:
        """SIGTERM each trial (it saves itself as interrupted), wait, then kill what still runs."""
        wanted = set(job_ids)
        self.queue = [(j, s) for j, s in self.queue if j not in wanted]
        procs = [p for j, p in self.procs.items() if j in wanted and p.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        try:
            for proc in procs:
                proc.wait(max(deadline - time.monotonic(), 0.1))
        except (subprocess.TimeoutExpired, KeyboardInterrupt):  # stuck, or a second Ctrl-C
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def close(self) -> None:
        self.queue = []
        if self.warm is not None:
            self.warm.close()
