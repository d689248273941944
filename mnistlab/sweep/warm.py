"""Warm trials: one process imports torch and mnistlab (and reads the data) once, then forks each
trial from itself, so a trial starts in milliseconds instead of seconds.

A trial stays a process of its own: its own run directory, lease, exit status and signals. A
trial that crashes, even in native code, takes nothing else down, and a killed trial is found by
its lease as before. What the trial no longer pays is the start-up that every trial repeats:
Python, `import torch` (1-3 s), mnistlab's modules and the parsing of the data files.

The server (`python -m mnistlab.sweep.warm`) is single-threaded and never runs a parallel torch
operation itself (one thread), so forking it is safe: each trial sets its own thread count and
builds its own thread pool. It reads one JSON line per trial on stdin and writes one JSON line per
event on stdout ({"job", "pid"} when a trial started, {"job", "exit"} when it ended). When its
stdin closes (the sweep command ended, or was killed) it starts nothing more, waits for its trials
and exits; SIGTERM passes SIGTERM on to its trials (which save and stop) before it exits.

`WarmServer` is the client: the local executor holds one, and so does each Ray worker and each
SLURM job that runs several trials.
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
from pathlib import Path

# what a trial of any task on the torch platform imports before its first step
PRELOAD = ("torch", "mnistlab.cli", "mnistlab.api", "mnistlab.training", "mnistlab.run",
           "mnistlab.platforms.pytorch", "mnistlab.tasks", "mnistlab.data", "mnistlab.models",
           "mnistlab.checkpoint", "mnistlab.precision", "mnistlab.display", "mnistlab.usermodel")
MNISTLAB = ("-m", "mnistlab")  # argv[1:3] of a trial command that can run in the warm process


def preload() -> None:
    """Import what trials need, with torch on one thread: no OpenMP pool exists at any fork."""
    import importlib

    import torch

    torch.set_num_threads(1)
    for name in PRELOAD:
        importlib.import_module(name)


def warm_data(argv: list[str]) -> None:
    """Read the data of this trial's config in this process, so that the forked trial finds it
    read (data.read_all keeps it). Any problem is the trial's to report, in its run directory."""
    if tuple(argv[1:3]) != MNISTLAB or "train" not in argv:
        return
    with contextlib.suppress(Exception):
        from ..config import load_config
        from ..data import prepare
        from ..tasks import TASKS

        path = next(a for a in argv[argv.index("train") + 1:] if not a.startswith("-"))
        cfg = load_config(Path(path))
        if "data" in TASKS[cfg.task].data_sections:  # the MNIST family's files
            prepare(cfg.data, cfg.train.val_split, cfg.train.seed)


def _child(argv: list[str], env: dict[str, str], log: str, threads: int, death_signal,
           held: set) -> int:
    """In the forked trial: a session and signals of its own, output to its log, then the command."""
    os.setsid()  # Ctrl-C in the terminal reaches the sweep command, which stops each trial once
    if death_signal is not None:
        death_signal()  # the server died (killed, or its Ray worker or SLURM job did): save and stop
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # SLURM's time-limit warning is for its job
    signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a SIGTERM that came meanwhile ends it now
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    os.environ.update(env)
    os.environ["MNISTLAB_WARM"] = str(os.getppid())  # the run says it was forked warm, and from what
    if tuple(argv[1:3]) != MNISTLAB:
        os.execvpe(argv[0], argv, os.environ)
    import torch

    torch.set_num_threads(max(1, threads))
    from ..cli import main

    sys.argv = ["mnistlab", *argv[3:]]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    return code


def fork_trial(argv: list[str], env: dict[str, str], log: str, threads: int, death_signal=None) -> int:
    """Start one trial as a child of this process; its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    # a signal for the trial that comes before it has its own handlers must not run the server's
    # handlers in it (the server's SIGTERM handler stops every trial)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    else:  # the trial: never return into the server's loop
        code = 1
        try:
            code = _child(argv, env, log, threads, death_signal, held)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    return pid


def serve() -> None:
    """The server's loop: start each trial asked for, report starts and exits, until stdin ends."""
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but events goes to the client
    children: dict[int, tuple[str, str]] = {}  # pid -> (job, log)
    stopping = []

    def on_term(signum, frame):
        stopping.append(signum)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the sweep command decides what Ctrl-C does
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        preload()
        broken = None
    except Exception:  # each trial's log says why, and the trial fails
        import traceback

        broken = "the warm trial process could not start:\n" + traceback.format_exc()
    from .executors.process import death_signal_setup

    death_signal = death_signal_setup()

    def send(event: dict) -> None:
        with contextlib.suppress(OSError, ValueError):
            out.write(json.dumps(event) + "\n")
            out.flush()

    def reap(block: bool) -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            job, log = children.pop(pid, (None, None))
            code = os.waitstatus_to_exitcode(status)
            if code < 0:  # what the trial could not write itself, for the sweep's error message
                with contextlib.suppress(OSError, ValueError), open(log, "a") as out:
                    out.write(f"\nthe trial process was killed by {signal.Signals(-code).name}\n")
            if job is not None:
                send({"job": job, "exit": code})

    send({"ready": os.getpid()})
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    pending = b""
    while not stopping:
        if sel.select(timeout=0.05):
            chunk = os.read(0, 65536)
            if not chunk:  # the client is gone: start nothing more
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in filter(bytes.strip, lines):
                ask = json.loads(line)
                if "signal" in ask:  # for a trial not reaped yet: its pid cannot be another's
                    for pid, (job, _) in children.items():
                        if job == ask["job"]:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, ask["signal"])
                    continue
                if broken:
                    with open(ask["log"], "a") as log:
                        log.write(broken)
                    send({"job": ask["job"], "exit": 1})
                    continue
                warm_data(ask["argv"])
                pid = fork_trial(ask["argv"], ask["env"], ask["log"], ask["threads"], death_signal)
                children[pid] = (ask["job"], ask["log"])
                send({"job": ask["job"], "pid": pid})
        reap(block=False)
    reap(block=True)


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
            [sys.executable, "-m", "mnistlab.sweep.warm"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
            preexec_fn=death_signal_setup() if self.death_signal else None)
        os.set_blocking(self.proc.stdout.fileno(), False)

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
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(wait)


if __name__ == "__main__":
    serve()
