"""The warm trial process (`python -m mnistlab.forkserver`): it imports torch and mnistlab once,
reads each trial's data once, then forks each trial from itself. The sweep's side, which starts it
and talks to it, is sweep/warm.py; the protocol and what a trial keeps are described there.

The server is single-threaded and never runs a parallel torch operation itself (one thread), so
forking it is safe: each trial sets its own thread count and builds its own thread pool. It reads
one JSON line per request on stdin (a trial to start, or a signal for one) and writes one JSON line
per event on stdout ({"job", "pid"} when a trial started, {"job", "exit"} when it ended). When its
stdin closes (the sweep command ended, or was killed) it starts nothing more, waits for its trials
and exits; SIGTERM passes SIGTERM on to its trials (which save and stop) before it exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import sys
from pathlib import Path

# what a trial of any task on the torch platform imports before its first step
PRELOAD = ("torch", "mnistlab.cli", "mnistlab.api", "mnistlab.training", "mnistlab.run",
           "mnistlab.platforms.pytorch", "mnistlab.tasks", "mnistlab.data", "mnistlab.models",
           "mnistlab.checkpoint", "mnistlab.precision", "mnistlab.display", "mnistlab.usermodel")
# what the command line's parsing imports on first use (typer's pydantic adapters, about 0.1 s per
# trial otherwise); internals of other packages, so a release without them costs only that time
PARSING = ("typer._adapters", "typer._click.decorators", "rich._emoji_codes",
           "pydantic.plugin._loader")
MNISTLAB = ("-m", "mnistlab")  # argv[1:3] of a trial command that can run in the warm process


def preload() -> None:
    """Import what trials need, with torch on one thread: no OpenMP pool exists at any fork."""
    import importlib

    import torch

    torch.set_num_threads(1)
    for name in PRELOAD:
        importlib.import_module(name)
    for name in PARSING:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def warm_data(argv: list[str]) -> None:
    """Read the data of this trial's config in this process, so that the forked trial finds it
    read (data.read_all keeps it). Any problem is the trial's to report, in its run directory."""
    if tuple(argv[1:3]) != MNISTLAB or "train" not in argv:
        return
    with contextlib.suppress(Exception):
        from .config import load_config
        from .data import prepare
        from .tasks import TASKS

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
    from .cli import main

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
    from .sweep.executors.process import death_signal_setup

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
            watch_end(pid)
            code = os.waitstatus_to_exitcode(status)
            if code < 0:  # what the trial could not write itself, for the sweep's error message
                with contextlib.suppress(OSError, ValueError), open(log, "a") as out:
                    out.write(f"\nthe trial process was killed by {signal.Signals(-code).name}\n")
            if job is not None:
                send({"job": job, "exit": code})

    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    exits: dict[int, int] = {}  # pid -> a file descriptor readable once the trial has ended

    def watch(pid: int) -> None:
        """Wake up the moment the trial ends, not at the next tick (Linux 5.3 and later)."""
        with contextlib.suppress(AttributeError, OSError):
            exits[pid] = os.pidfd_open(pid)
            sel.register(exits[pid], selectors.EVENT_READ)

    def watch_end(pid: int) -> None:
        fd = exits.pop(pid, None)
        if fd is not None:
            sel.unregister(fd)
            os.close(fd)

    send({"ready": os.getpid()})
    pending = b""
    while not stopping:
        if any(key.fd == 0 for key, _ in sel.select(timeout=0.05)):
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
                watch(pid)
                send({"job": ask["job"], "pid": pid})
        reap(block=False)
    reap(block=True)


if __name__ == "__main__":
    serve()
    # every event is written and flushed, every trial reaped: skip the interpreter's teardown of
    # torch's modules (0.3 s or more), which the sweep would wait for at its end
    os._exit(0)
