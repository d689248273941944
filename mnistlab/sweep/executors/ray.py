"""Trials as Ray tasks, on a Ray cluster (address from the sweep file or RAY_ADDRESS) or a local one."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray

from ... import files
from ...errors import ConfigError, ExecutorLost, ExecutorUnavailable, Interrupted, first_line
from .base import TrialSpec
from .options import ray_problems
from ..warm import WarmServer
from .process import start_trial, stop_trial

CONNECT_TIMEOUT = 60.0  # seconds a cluster has to answer ray.init (executor.ray.connect_timeout)
REFUSED_SECONDS = 3.0  # connections refused this long while ray.init waits: nothing listens there
HEAD_GRACE = 10.0  # a head unreachable this long mid-sweep is lost (Ray ends the driver after 60 s)
PROBE_SECONDS = 1.0  # how often the head's port is tried, while ray.init waits and mid-sweep
# by default a Ray worker SIGKILLs its child processes as it exits (e.g. when its raylet dies);
# the trial has to outlive it to get SIGTERM (PR_SET_PDEATHSIG) and save its state
TASK_ENV = {"RAY_kill_child_processes_on_worker_exit": "false"}


_WARM: WarmServer | None = None  # this Ray worker's warm process, started by its first trial


def run_trial(argv: list[str], env: dict[str, str], log: str, warm: bool = True) -> int:
    """The Ray task of one trial: run its command; a cancelled task stops the trial with SIGTERM.

    Warm (the default), the trial is forked from a warm process that this Ray worker keeps for
    the trials it runs after the first (Ray reuses a worker for the tasks of one driver); the
    warm process and its trials get SIGTERM when the worker dies."""
    global _WARM
    if threading.current_thread() is threading.main_thread():
        # ray.cancel raises KeyboardInterrupt through SIGINT's handler (_thread.interrupt_main),
        # which does nothing where SIGINT is ignored: in the workers of a Ray started in the
        # background (nohup, or a job of a non-interactive shell)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if warm:  # the warm process and its trials have sessions of their own
        _WARM = _WARM or WarmServer(death_signal=True)
        proc = _WARM.start(env.get("MNISTLAB_JOB_ID", "trial"), argv, env, log,
                           int(env.get("OMP_NUM_THREADS", "1")))
    else:
        proc = start_trial(argv, env, log, own_session=True)  # Ray kills its worker's process group
    try:
        while True:
            try:
                return proc.wait(timeout=0.5)  # short waits let ray.cancel's KeyboardInterrupt in
            except subprocess.TimeoutExpired:
                pass
    except KeyboardInterrupt:
        stop_trial(proc)
        proc.wait()
        raise


class RayExecutor:
    """Launches queued trials as Ray tasks, at most jobs at once, topping up on each states() call.

    Ray tasks belong to this driver: when it ends, Ray stops them and each trial saves itself
    (it gets SIGTERM when its worker dies); the next sweep command continues them from last.pt.
    A head whose port no longer takes connections (it died, or its machine did) ends the sweep
    with ExecutorLost. When this executor connects to Ray, Ray's own messages go to .ray/driver.log
    in the sweep's folder, not between its lines.
    """

    name = "ray"
    detachable = False
    attached_because = "Ray tasks belong to the driver that submitted them"

    def trial_threads(self, running: int) -> int:
        """The cpus_per_trial of the sweep file's executor: block (1 when not given)."""
        return int(self.options.get("cpus_per_trial") or 1)

    def __init__(self, options: dict, jobs: int) -> None:
        self.options = check_ray_options(options or {})
        self.jobs = max(1, jobs)
        self.address = self.options.get("address") or os.environ.get("RAY_ADDRESS") or None
        self.owner = not ray.is_initialized()
        self.output = RayOutput() if self.owner else None
        if self.owner:
            connect(self.address, float(self.options.get("connect_timeout") or CONNECT_TIMEOUT),
                    self.output)
            ray._private.worker._worker_logs_enabled = False  # its "(raylet) ..." lines on stdout
        if self.owner and not self.address:  # a local instance: this machine is all it will ever have
            why = unplaceable(self.options)
            if why:
                self.close()
                raise ExecutorUnavailable(
                    f"--executor ray: {why}. A local Ray instance has only this machine, so the "
                    "trials would wait forever. Lower executor.ray.gpus_per_trial or cpus_per_trial "
                    "in the sweep file, or connect to a cluster that has such a node (executor: ray: "
                    "address, or RAY_ADDRESS).")
        self.head = ray.get_runtime_context().gcs_address
        self.probed = 0.0
        self.failing: float | None = None  # since when the head has not answered
        self.lost = False
        self.prefix = f"ray-{os.urandom(4).hex()}"
        self.count = 0
        self.queue: list[tuple[str, TrialSpec]] = []
        self.refs: dict[str, ray.ObjectRef] = {}
        self.names: dict[str, str] = {}
        self.done: set[str] = set()
        # one remote function for the whole sweep: Ray exports it to the head once, at the first
        # trial; a new one per trial would be exported again, and an export blocks, with no
        # timeout, once the head is gone
        self.task = ray.remote(run_trial)

    def submit(self, specs: list[TrialSpec]) -> list[str]:
        if specs and self.output is not None:  # the sweep's folder is known from here on
            self.output.keep(Path(specs[0].run_dir).parent / ".ray")
        ids = []
        for spec in specs:
            self.count += 1
            ids.append(f"{self.prefix}-{self.count}")
            self.names[ids[-1]] = spec.name
        self.queue += zip(ids, specs)
        self._start()
        return ids

    def _start(self) -> None:
        self._collect()
        room = self.queue and not self.lost and len(self.refs) - len(self.done) < self.jobs
        if room and self.refs and unreachable(self.head) is not None:
            return  # the head is gone: its trials wait until states() says so (ExecutorLost)
        while self.queue and not self.lost and len(self.refs) - len(self.done) < self.jobs:
            job_id, spec = self.queue.pop(0)
            cpus = self.options.get("cpus_per_trial") or spec.threads
            env = {"OMP_NUM_THREADS": str(cpus), **spec.env, "MNISTLAB_EXECUTOR": self.name,
                   "MNISTLAB_JOB_ID": job_id}
            task = self.task.options(num_cpus=cpus,
                                                 num_gpus=self.options.get("gpus_per_trial") or 0,
                                                 runtime_env={"env_vars": TASK_ENV})
            self.refs[job_id] = task.remote(list(spec.argv), env, str(spec.log),
                                            self.options.get("warm", True))

    def _collect(self) -> None:
        running = {ref: job_id for job_id, ref in self.refs.items() if job_id not in self.done}
        if running and not self.lost:
            ready, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
            self.done.update(running[ref] for ref in ready)

    def prepare(self) -> None:
        """Nothing to start ahead: each job starts its own warm process."""

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def states(self, job_ids: list[str]) -> dict[str, str]:
        self._check_head()
        self._start()
        queued = {job_id for job_id, _ in self.queue}
        return {job_id: ("pending" if job_id in queued else
                         "finished" if job_id in self.done or job_id in self.refs and self.lost else
                         "running" if job_id in self.refs else "unknown") for job_id in job_ids}

    def _check_head(self) -> None:
        """ExecutorLost once the head has not answered for HEAD_GRACE seconds: its tasks would
        never end in this driver's view, and Ray ends this process a minute after losing it."""
        now = time.monotonic()
        if self.lost or now - self.probed < PROBE_SECONDS:
            return
        self.probed = now
        why = unreachable(self.head)
        if why is None:
            self.failing = None
            return
        self.failing = self.failing or now
        if now - self.failing < HEAD_GRACE:
            return
        self._collect()  # a task that ended before the head is not one it ran
        self.lost = True
        running = [self.names[j] for j in self.refs if j not in self.done]
        queued, self.queue = [self.names[j] for j, _ in self.queue], []
        if len(running) == 1:
            what = (f"The trial it ran ({running[0]}) stops as its Ray worker ends: it gets SIGTERM "
                    "and saves its state")
        elif running:
            what = (f"The {len(running)} trials it ran ({', '.join(running)}) stop as their Ray "
                    "workers end: each gets SIGTERM and saves its state")
        else:
            what = "No trial of this command was running"
        if queued:
            what += f"; {', '.join(queued)} waited to start (again) and did not"
        path = self.output.path if self.output else None
        log = f" Ray's own messages are in {path}." if path else ""
        raise ExecutorLost(
            f"--executor ray: lost the Ray cluster at {self.address or self.head}: its head has not "
            f"answered for {now - self.failing:.0f}s ({why}). {what}. Once the cluster is back "
            "(ray start --head) or with the address of another (executor: ray: address in the sweep "
            "file, or RAY_ADDRESS), run the same command again: it continues each trial from its "
            f"last checkpoint.{log}")

    def cancel(self, job_ids: list[str], timeout: float = 60.0) -> None:
        """Each running task gets KeyboardInterrupt and stops its trial with SIGTERM; wait for them."""
        wanted = set(job_ids)
        self.queue = [(j, s) for j, s in self.queue if j not in wanted]
        if self.lost:  # nothing left to reach: the tasks ended with the head
            return
        self._collect()
        refs = [ref for j, ref in self.refs.items() if j in wanted and j not in self.done]
        for ref in refs:
            ray.cancel(ref)
        if refs:
            _, stuck = ray.wait(refs, num_returns=len(refs), timeout=timeout)
            for ref in stuck:  # the worker is killed; its trial still gets SIGTERM
                ray.cancel(ref, force=True)
        self._collect()

    def close(self) -> None:
        self.queue = []
        if self.owner and ray.is_initialized():
            ray.shutdown()
            ray._private.worker._worker_logs_enabled = True
        if self.output is not None:
            self.output.end()
            self.output = None


class RayOutput:
    """Ray's own messages, kept out of the sweep's output: its C++ core writes them to file
    descriptor 2 and its logger to sys.stderr, so while this command is connected that descriptor
    is a file: a temporary one until the sweep's folder is known, then .ray/driver.log there."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self.file = tempfile.TemporaryFile()
        self.path: Path | None = None
        self.terminal = os.dup(2)
        os.dup2(self.file.fileno(), 2)

    def keep(self, folder: Path) -> None:
        """Go on in folder/driver.log, starting with what Ray said so far."""
        if self.path is not None:
            return
        with files.writing(folder):
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "driver.log", "ab") as out:
                self.file.seek(0)
                shutil.copyfileobj(self.file, out)
                out.flush()
                os.dup2(out.fileno(), 2)
        self.file.close()
        self.path = folder / "driver.log"

    def said(self) -> str:
        """Ray's last message, without its time stamp and source line."""
        try:
            if self.path is not None:
                text = self.path.read_bytes()[-8192:]
            else:
                self.file.seek(0)
                text = self.file.read()[-8192:]
        except (OSError, ValueError):
            return ""
        lines = [RAY_PREFIX.sub("", line).strip() for line in
                 text.decode(errors="replace").splitlines() if line.strip()]
        return lines[-1][:300] if lines else ""

    def end(self, abandon: bool = False) -> None:
        """Give the terminal back. abandon: Ray still runs in this process (a thread blocked in
        ray.init), so its descriptor stays on the file and only sys.stderr returns."""
        sys.stderr.flush()
        if abandon:
            sys.stderr = open(self.terminal, "w", buffering=1, errors="backslashreplace")
            return
        os.dup2(self.terminal, 2)
        os.close(self.terminal)
        if self.path is None:
            self.file.close()


# "[2026-12-04 18:36:13,364 W 6946 6946] gcs_client.cc:210: " of Ray's C++ lines, and
# "2026-12-04 18:37:17,327\tERROR worker.py:1841 -- " of its Python ones
RAY_PREFIX = re.compile(r"^(\[[^\]]*\]\s*[\w./-]+:\d+:|\S+ \S+\s+[A-Z]+ [\w./-]+:\d+ --)\s*")


def connect(address: str | None, timeout: float, output: RayOutput) -> None:
    """ray.init, given up after timeout when the cluster at address does not answer: Ray would wait
    for minutes, blocked in C++ where Ctrl-C and SIGTERM do not reach it, so it runs in a thread
    this command can leave behind. A local instance (no address) starts in this thread, as its
    processes die with the thread that started them (PR_SET_PDEATHSIG); Ray's deadlines bound it."""
    outcome: dict = {}

    def init() -> None:
        extra = {} if address else {"include_dashboard": False}
        try:  # "local", not a cluster that `ray start` left on this machine, which Ray would find
            ray.init(address=address or "local", log_to_driver=False,
                     logging_level=logging.ERROR, **extra)
        except Exception as e:  # ConnectionError, RuntimeError, ValueError, ...
            outcome["error"] = e

    where = f"the Ray cluster at {address}" if address else "a local Ray instance"
    thread = threading.Thread(target=init, name="mnistlab-ray-init", daemon=True) if address else None
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    start = probed = time.monotonic()
    refused: float | None = None  # since when the address has refused connections
    why = None
    try:
        if thread is None:
            init()
        else:
            thread.start()
        while thread is not None and thread.is_alive() and why is None:
            thread.join(0.2)  # short waits: Ctrl-C and SIGTERM land at once
            now = time.monotonic()
            if now - start > timeout:
                why = f"no answer within {timeout:g}s"
            elif thread.is_alive() and now - probed >= PROBE_SECONDS:
                probed = now
                refused = (refused or now) if unreachable(address) == "connection refused" else None
                if refused is not None and now - refused >= REFUSED_SECONDS:
                    why = "nothing listens there: connection refused"
    except (KeyboardInterrupt, SystemExit):  # SystemExit: Ray's own SIGTERM handler, in ray.init
        output.end(abandon=thread is not None and thread.is_alive())
        raise Interrupted(f"interrupted while waiting for {where} to answer; nothing was "
                          "submitted or written.") from None
    finally:
        if main:  # also instead of the handler that ray.init sets in the main thread
            signal.signal(signal.SIGTERM, previous)
    if why is None and ray.is_initialized():
        return
    said = output.said()
    output.end(abandon=thread is not None and thread.is_alive())
    why = why or first_line(str(outcome.get("error") or "")) or "ray.init gave no reason"
    if said and said not in why:
        why += f"; Ray said: {said}"
    fix = ("Start the cluster (ray start --head)" if not why.startswith("no answer") else
           "Check that its head is running and reachable from here (a stopped or overloaded head "
           f"does not answer), or give it longer (executor: ray: connect_timeout, now {timeout:g}s)")
    raise ExecutorUnavailable(
        f"--executor ray: cannot connect to {where} ({why}). {fix}, fix the address (executor: "
        "ray: address in the sweep file, or RAY_ADDRESS), or leave both unset for a local "
        "instance. Nothing was submitted.")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def unreachable(address: str, timeout: float = 1.0) -> str | None:
    """Why nothing answers a TCP connection at host:port, or None when something does."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return None  # not host:port (ray://..., auto): Ray's own errors tell
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except ConnectionRefusedError:
        return "connection refused"
    except OSError as e:
        return str(e) or type(e).__name__
    return None


def check_ray_options(options: dict) -> dict:
    """The executor: ray: settings, each value checked (the keys are checked by the sweep file)."""
    problems = ray_problems(options)
    if problems:
        raise ConfigError(problems)
    return options


def unplaceable(options: dict) -> str | None:
    """Why no live node of the connected cluster can run one trial, or None: Ray places a task on
    one node, so a trial asking for more GPUs or CPUs than the largest node has never starts."""
    need = {"GPU": options.get("gpus_per_trial") or 0, "CPU": options.get("cpus_per_trial") or 0}
    need = {kind: n for kind, n in need.items() if n}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not need or any(all(r.get(k, 0) >= n for k, n in need.items()) for r in nodes):
        return None
    asks = " and ".join(f"{n:g} {kind}(s)" for kind, n in need.items())
    has = "; ".join(f"{r.get('CPU', 0):g} CPU(s), {r.get('GPU', 0):g} GPU(s)" for r in nodes)
    return f"each trial asks for {asks}, more than any node of the Ray cluster has ({has or 'no live node'})"
