"""The run directory: config.yaml, metrics.jsonl, summary.json, env.json, checkpoints/, written atomically."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import json
import os
import pickle
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError, RunBusy

CHECKPOINT_FORMAT = "mnistlab-checkpoint"


def _file_mode() -> int:
    """rw for everyone the umask allows (mkstemp alone would make files private)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside path, then rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"


def create_run_dir(runs_dir: str | Path, name: str, now: datetime | None = None) -> Path:
    """Make runs_dir/<date-time>-<name>/ anew; a name already taken gets a -2, -3... suffix."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    base = f"{(now or datetime.now()):%Y%m%d-%H%M%S}-{slug(name)}"
    for i in range(1, 1000):
        path = runs_dir / (base if i == 1 else f"{base}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        (path / "checkpoints").mkdir()
        return path
    raise FileExistsError(f"{runs_dir}: too many runs named {base}")


class MetricsLog:
    """metrics.jsonl: one JSON object a line, flushed as written; optionally TensorBoard too."""

    def __init__(self, path: Path, tensorboard=None):
        self.file = open(path, "a", encoding="utf-8")
        self.tensorboard = tensorboard  # a SummaryWriter, or None

    def write(self, record: dict) -> None:
        record = {**record, "time": round(time.time(), 3)}  # when, as a Unix timestamp
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for key in ("loss", "accuracy", "lr"):
                if key in record:
                    self.tensorboard.add_scalar(f"{key}/{record['split']}", record[key],
                                                record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def tensorboard_class():
    """TensorBoard's SummaryWriter; the tensorboard package is an optional extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError([
            "log.tensorboard: true needs the tensorboard package, which is not installed; "
            "install it with pip install tensorboard (or pip install -e \".[tensorboard]\"), "
            "or set log.tensorboard=false (metrics.jsonl holds the same numbers)"]) from None
    return SummaryWriter


def read_metrics(path: Path) -> list[dict]:
    """Every complete record of a metrics.jsonl (a line cut short by a kill is skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


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


def process_alive(owner: dict) -> bool | None:
    """Is the recorded process still running? None when it ran on another host."""
    if owner.get("host") != socket.gethostname() or not owner.get("pid"):
        return None
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    started = owner.get("pid_started")
    return started is None or _start_time(owner["pid"]) in (started, None)


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
    return {"name": name, "job_id": job_id}


def owner_alive(owner: dict, now: float | None = None) -> bool:
    """A lease holder lives: on this host by pid and start time, elsewhere by a fresh heartbeat."""
    same_host = process_alive(owner)
    if same_host is not None:
        return same_host
    beat = owner.get("heartbeat")
    return isinstance(beat, (int, float)) and (now or time.time()) - beat < LEASE_SECONDS


def live_owner(run_dir: Path) -> dict | None:
    """The live process writing run_dir (from owner.json, or a running summary.json), else None."""
    run_dir = Path(run_dir)
    try:
        owner = read_json(run_dir / "owner.json")
    except (OSError, ValueError):
        owner = None
    if isinstance(owner, dict):
        return owner if owner_alive(owner) else None
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

    def __init__(self):
        self.run_dir: Path | None = None
        self.record: dict = {}
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

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
        while not self.stop.wait(HEARTBEAT_SECONDS):
            self.record["heartbeat"] = time.time()
            with contextlib.suppress(OSError):
                write_json(self.run_dir / "owner.json", self.record)

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
    """An exclusive lock on directory/.lock, held for the block."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run_status(summary: dict) -> str:
    """The recorded status, except that a 'running' run whose process is gone is 'killed'."""
    status = summary.get("status", "unknown")
    if status == "running" and process_alive(summary) is False:
        return "killed"
    return status


def git_commit(directory: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=directory, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment(device, seed: int) -> dict:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": importlib.metadata.version("torchvision"),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seed": seed,
        "git_commit": git_commit(Path.cwd()),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
    }


def atomic_torch_save(path: Path, obj: Any) -> None:
    """torch.save to a temporary file beside path, then rename."""
    import torch

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: Path, payload: dict) -> None:
    atomic_torch_save(path, {"format": CHECKPOINT_FORMAT, **payload})


def load_checkpoint(path: Path) -> dict:
    """Load a mnistlab checkpoint without running any code it may hold (weights_only)."""
    import torch

    path = Path(path)
    fix = ("Point at a run directory or at checkpoints/last.pt or best.pt of a run made by "
           "'mnistlab train'.")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint. {fix}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # not a refused object: damaged bytes
            raise CheckpointError(f"{path}: is truncated or corrupt, not a readable PyTorch "
                                  f"file. {fix}") from None
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and plain data, so loading "
            f"it could run code; mnistlab checkpoints never do. {fix}") from None
    except Exception as e:  # torch reports damaged files through many exception classes
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: is truncated or corrupt, not a readable PyTorch file "
                              f"({detail}). {fix}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: is a PyTorch file but not a mnistlab checkpoint "
                              f"(it has no mnistlab format marker). {fix}")
    return ckpt
