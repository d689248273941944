"""Trials as Ray tasks, on a Ray cluster (address from the sweep file or RAY_ADDRESS) or a local one."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading

import ray

from ...errors import ConfigError, ExecutorUnavailable, first_line
from .base import TrialSpec
from .options import ray_problems
from ..warm import WarmServer
from .process import start_trial, stop_trial


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
    if warm:
        _WARM = _WARM or WarmServer(death_signal=True)
        proc = _WARM.start(env.get("MNISTLAB_JOB_ID", "trial"), argv, env, log,
                           int(env.get("OMP_NUM_THREADS", "1")))
    else:
        proc = start_trial(argv, env, log)
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
        address = self.options.get("address") or os.environ.get("RAY_ADDRESS") or None
        self.owner = not ray.is_initialized()
        if self.owner:
            extra = {} if address else {"include_dashboard": False}
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, **extra)
            except Exception as e:  # ray raises ConnectionError, RuntimeError, ValueError here
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise ExecutorUnavailable(
                    f"--executor ray: cannot connect to {where} ({first_line(str(e))}). Start the "
                    "cluster (ray start --head), fix the address (executor: ray: address in the sweep "
                    "file, or RAY_ADDRESS), or leave both unset for a local instance.") from None
        if self.owner and not address:  # a local instance: this machine is all it will ever have
            why = unplaceable(self.options)
            if why:
                self.close()
                raise ExecutorUnavailable(
                    f"--executor ray: {why}. A local Ray instance has only this machine, so the "
                    "trials would wait forever. Lower executor.ray.gpus_per_trial or cpus_per_trial "
                    "in the sweep file, or connect to a cluster that has such a node (executor: ray: "
                    "address, or RAY_ADDRESS).")
        self.prefix = f"ray-{os.urandom(4).hex()}"
        self.count = 0
        self.queue: list[tuple[str, TrialSpec]] = []
        self.refs: dict[str, ray.ObjectRef] = {}
        self.done: set[str] = set()

    def submit(self, specs: list[TrialSpec]) -> list[str]:
        ids = []
        for spec in specs:
            self.count += 1
            ids.append(f"{self.prefix}-{self.count}")
        self.queue += zip(ids, specs)
        self._start()
        return ids

    def _start(self) -> None:
        self._collect()
        while self.queue and len(self.refs) - len(self.done) < self.jobs:
            job_id, spec = self.queue.pop(0)
            cpus = self.options.get("cpus_per_trial") or spec.threads
            env = {"OMP_NUM_THREADS": str(cpus), **spec.env, "MNISTLAB_EXECUTOR": self.name,
                   "MNISTLAB_JOB_ID": job_id}
            task = ray.remote(run_trial).options(num_cpus=cpus,
                                                 num_gpus=self.options.get("gpus_per_trial") or 0)
            self.refs[job_id] = task.remote(list(spec.argv), env, str(spec.log),
                                            self.options.get("warm", True))

    def _collect(self) -> None:
        running = {ref: job_id for job_id, ref in self.refs.items() if job_id not in self.done}
        if running:
            ready, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
            self.done.update(running[ref] for ref in ready)

    def states(self, job_ids: list[str]) -> dict[str, str]:
        self._start()
        queued = {job_id for job_id, _ in self.queue}
        return {job_id: ("pending" if job_id in queued else
                         "finished" if job_id in self.done else
                         "running" if job_id in self.refs else "unknown") for job_id in job_ids}

    def cancel(self, job_ids: list[str], timeout: float = 60.0) -> None:
        """Each running task gets KeyboardInterrupt and stops its trial with SIGTERM; wait for them."""
        wanted = set(job_ids)
        self.queue = [(j, s) for j, s in self.queue if j not in wanted]
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
