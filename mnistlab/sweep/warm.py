"""Warm trials: one process imports torch and mnistlab (and reads the data) once, then forks each
trial from itself, so a trial starts in milliseconds instead of seconds.

A trial stays a process of its own: its own run directory, lease, exit status and signals. A
trial that crashes, even in native code, takes nothing else down, and a killed trial is found by
its lease as before. What the trial no longer pays is the start-up that every trial repeats:
Python, `import torch` (1-3 s), mnistlab's modules and the reading of the data files.

This is the sweep's side: `WarmServer` starts the warm process (mnistlab/forkserver.py) on the first
trial and talks to it; `WarmTrial` is one trial, used like a Popen. The local executor holds one
server, and so does each Ray worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time


class WarmTrial:
    """One trial of a warm server, as a sweep sees it: poll, signal, wait (like a Popen)."""

    def __init__(self, server: WarmServer, job: str):
        self.server, self.job = server, job

    @property
    def pid(self) -> int | None:
        return self.server.pids.get(self.job)

    def poll(self) -> int | None:
        self.server.read()
        return self.server.exit_of(self.job)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            self.server.signal(self.job, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"trial {self.job}", timeout)
            self.server.read(0.05)
        return self.server.exit_of(self.job)


class WarmServer:
    """A warm server process and the trials it started; the server starts on the first trial."""

    def __init__(self, death_signal: bool = False):
        self.death_signal = death_signal  # the server gets SIGTERM when its parent dies
        self.proc: subprocess.Popen | None = None
        self.pids: dict[str, int] = {}
        self.exits: dict[str, int] = {}
        self.buffer = b""
        self.asked: set[str] = set()  # trials of the server that runs now
        self.orphans: set[str] = set()  # trials of a server that died before it reported them

    def _start(self) -> None:
        from .executors.process import death_signal_setup

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mnistlab.forkserver"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
            preexec_fn=death_signal_setup() if self.death_signal else None)
        os.set_blocking(self.proc.stdout.fileno(), False)

    def prepare(self) -> None:
        """Start the warm process now, so that it imports while the sweep command does its checks."""
        if self.proc is None:
            self._start()

    def start(self, job: str, argv: list[str], env: dict[str, str], log: str,
              threads: int) -> WarmTrial:
        if self.proc is None:
            self._start()
        if not self._send({"job": job, "argv": list(argv), "env": env, "log": str(log),
                           "threads": threads}):
            self.exits[job] = -signal.SIGKILL  # never started
        self.asked.add(job)
        return WarmTrial(self, job)

    def signal(self, job: str, sig: int) -> None:
        """Signal a trial through its server, which has started it by the time it reads this (or
        directly, a trial whose server died)."""
        if job in self.orphans:
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(self.pids.get(job), sig)
            return
        self._send({"job": job, "signal": int(sig)})

    def _send(self, message: dict) -> bool:
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (OSError, AttributeError):  # the server died (or was closed) just now
            return False

    def read(self, timeout: float = 0.0) -> None:
        """Take in the server's events, waiting up to timeout for the first."""
        if self.proc is None:
            return
        if timeout:
            sel = selectors.DefaultSelector()
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            sel.select(timeout)
            sel.close()
        while True:
            try:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
            except BlockingIOError:
                break
            if not chunk:  # the server is gone: whatever it had not reported ended with it
                self._events()
                self.lost()
                return
            self.buffer += chunk
        self._events()

    def _events(self) -> None:
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            event = json.loads(line)
            if "pid" in event:
                self.pids[event["job"]] = event["pid"]
            elif "exit" in event:
                self.exits[event["job"]] = event["exit"]
                self.asked.discard(event["job"])

    def lost(self) -> None:
        """The server ended without reporting some of its trials (it was killed): they got
        SIGTERM from its death and stop by themselves; trials it never started count as killed."""
        self.orphans |= {job for job in self.asked if job not in self.exits}
        self.asked.clear()
        self.proc.poll()
        self.proc = None

    def exit_of(self, job: str) -> int | None:
        """The trial's exit code, None while it runs."""
        if job in self.exits or job not in self.orphans:
            return self.exits.get(job)
        pid = self.pids.get(job)
        if pid:
            try:
                os.kill(pid, 0)
                return None  # stopping after its server's death; no longer our child to wait for
            except ProcessLookupError:
                pass
        self.exits[job] = -signal.SIGKILL
        return self.exits[job]

    def close(self, wait: float = 10.0) -> None:
        """No more trials: the server waits for the running ones, then exits by itself; wait up
        to `wait` seconds for that."""
        if self.proc is None:
            return
        if not (self.asked or self.pids or self.exits):  # started ahead by prepare, never asked
            self.proc.kill()  # (a check failed): it has no trial to wait for
            self.proc.wait()
            self.proc = None
            return
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(wait)
