"""Ownership of a run directory: owner.json under a lock, a heartbeat, and who is alive."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from .errors import MnistlabError, RunBusy
from .files import read_json, write_json, writing


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name may hold spaces


def process_identity() -> dict:
    """This process as other processes can check it later: pid, host and start time."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "pid_started": _start_time(pid)}


def same_host(host: str) -> bool:
    """Whether a host name (a scheduler's node name, short or full) is this machine."""
    short = socket.gethostname().split(".")[0]
    return host.split(".")[0] in (short, "localhost")


def process_alive(owner: dict) -> bool | None:
    """Is the recorded process still running? None when it ran on another host."""
    if owner.get("host") != socket.gethostname() or not owner.get("pid"):
        return None
    pid = owner["pid"]
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2 ** 31:
        return False  # a damaged record: kill(-1, 0) would ask about every process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    started = owner.get("pid_started")
    return started is None or _start_time(pid) in (started, None)


HEARTBEAT_SECONDS = 5.0  # how often a run's owner refreshes owner.json


LEASE_SECONDS = 60.0  # an owner on another host whose heartbeat is older is dead


def executor_identity() -> dict | None:
    """Which executor and job ran this process: MNISTLAB_EXECUTOR/_JOB_ID, else SLURM's own ids."""
    env = os.environ
    name = env.get("MNISTLAB_EXECUTOR") or ("slurm" if env.get("SLURM_JOB_ID") else None)
    if name is None:
        return None
    job_id = env.get("MNISTLAB_JOB_ID")
    if not job_id and name == "slurm":
        array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
        job_id = f"{array}_{task}" if array and task else env.get("SLURM_JOB_ID")
    out = {"name": name, "job_id": job_id}
    if env.get("MNISTLAB_WARM", "").isdigit():  # forked from a warm sweep process (sweep/warm.py)
        out["forked_from"] = int(env["MNISTLAB_WARM"])
    return out


def owner_alive(owner: dict, now: float | None = None, written: float | None = None) -> bool:
    """A lease holder lives: on this host by pid and start time, elsewhere by a fresh heartbeat.

    A heartbeat from the future (a host whose clock runs ahead) is judged by when owner.json was
    last written (written: its modification time) instead, or it would hold the run forever."""
    same_host = process_alive(owner)
    if same_host is not None:
        return same_host
    beat, now = owner.get("heartbeat"), now or time.time()
    if isinstance(beat, bool) or not isinstance(beat, (int, float)) or not -2 ** 53 < beat < 2 ** 53:
        return False  # no time: a damaged record (a huge int would not even become a float)
    if beat - now > LEASE_SECONDS and written is not None:
        beat = written
    return now - beat < LEASE_SECONDS


def live_owner(run_dir: Path) -> dict | None:
    """The live process writing run_dir (from owner.json, or a running summary.json), else None."""
    run_dir = Path(run_dir)
    try:
        owner = read_json(run_dir / "owner.json")
        written = (run_dir / "owner.json").stat().st_mtime
    except (OSError, ValueError):
        owner = written = None
    if isinstance(owner, dict):
        return owner if owner_alive(owner, written=written) else None
    try:  # a run made before leases existed records its process in summary.json
        summary = read_json(run_dir / "summary.json")
    except (OSError, ValueError):
        return None
    if isinstance(summary, dict) and summary.get("status") == "running" and process_alive(summary):
        return summary
    return None


def describe_owner(owner: dict) -> str:
    """'pid 123 on host h (slurm job 45_6)': enough to find the process."""
    job = owner.get("executor") or {}
    where = f"pid {owner.get('pid')} on host {owner.get('host')}"
    return where + (f" ({job.get('name')} job {job.get('job_id')})" if job.get("job_id") else "")


class Lease:
    """Ownership of a run directory: owner.json written under a lock, refreshed by a heartbeat thread."""

    def __init__(self, on_lost=None):
        self.run_dir: Path | None = None
        self.record: dict = {}
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.on_lost = on_lost  # called (from the heartbeat thread) when the lease cannot be held
        self.lost: str | None = None  # why

    def acquire(self, run_dir: Path) -> None:
        """Own run_dir, or raise RunBusy naming the live writer; a dead owner is replaced."""
        run_dir = Path(run_dir)
        with _dir_lock(run_dir):
            owner = live_owner(run_dir)
            if owner is not None:
                raise RunBusy(
                    f"{run_dir}: is being written by another live process, {describe_owner(owner)}; "
                    "two writers would mix their records. Wait for it to end (or stop it: it saves "
                    f"and can be continued with mnistlab train --resume {run_dir}).")
            self.record = {**process_identity(), "token": uuid.uuid4().hex,
                           "executor": executor_identity(), "acquired": time.time(),
                           "heartbeat": time.time()}
            write_json(run_dir / "owner.json", self.record)
        self.run_dir = run_dir
        self.thread = threading.Thread(target=self._beat, name="mnistlab-lease", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        """Refresh owner.json; a write that fails is tried again at the next beat, but a lease
        not refreshed for half of LEASE_SECONDS, or taken over, is given up (on_lost): another
        host would soon take it, and two writers must never train one run."""
        written = time.time()
        path = self.run_dir / "owner.json"
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                with _dir_lock(self.run_dir):
                    try:
                        current = read_json(path)
                    except (OSError, ValueError):
                        current = None
                    token = current.get("token") if isinstance(current, dict) else None
                    if token is not None and token != self.record["token"]:
                        return self._lose(f"another process took it over, {describe_owner(current)}")
                    self.record["heartbeat"] = time.time()
                    write_json(path, self.record)
                written = time.time()
            except (OSError, MnistlabError):
                if time.time() - written > LEASE_SECONDS / 2:
                    return self._lose(f"its heartbeat in {path} could not be written for "
                                      f"{time.time() - written:.0f} s")

    def _lose(self, why: str) -> None:
        self.lost = why
        if self.on_lost is not None:
            self.on_lost()

    def release(self) -> None:
        """Stop the heartbeat and remove owner.json if it is still ours."""
        if self.run_dir is None:
            return
        self.stop.set()
        self.thread.join()
        with contextlib.suppress(OSError), _dir_lock(self.run_dir):
            try:
                mine = read_json(self.run_dir / "owner.json").get("token") == self.record["token"]
            except (OSError, ValueError, AttributeError):
                mine = False
            if mine:
                (self.run_dir / "owner.json").unlink()
        self.run_dir = None

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def _dir_lock(directory: Path):
    """An exclusive lock on the directory itself (no lock file left in the run), held for the block."""
    with writing(directory / "owner.json"):
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

