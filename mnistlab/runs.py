"""The run directory: config.yaml, metrics.jsonl, summary.json, env.json, checkpoints/, written atomically."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.metadata
import io
import json
import os
import pickle
import pickletools
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError, DiskError, RunBusy, RunError

CHECKPOINT_FORMAT = "mnistlab-checkpoint"


def _file_mode() -> int:
    """rw for everyone the umask allows (mkstemp alone would make files private)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


# why a write failed, and what to do about it
DISK_REASONS = {
    errno.ENOSPC: ("the disk is full", "free some space, or point runs_dir=DIR at a disk with room"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space, or point runs_dir=DIR elsewhere"),
    errno.EROFS: ("the file system is read-only",
                  "point runs_dir=DIR at a writable directory, or remount it read-write"),
    errno.EACCES: ("permission denied", "make the directory writable for this user, or point "
                   "runs_dir=DIR at one that is"),
    errno.EPERM: ("permission denied", "make the directory writable for this user, or point "
                  "runs_dir=DIR at one that is"),
}


def disk_error(path: Path, e: OSError) -> DiskError:
    """The one translation of a failed write into a one-paragraph DiskError."""
    reason, fix = DISK_REASONS.get(e.errno, (e.strerror or type(e).__name__,
                                             "check the disk and the directory's permissions"))
    return DiskError(f"{path}: could not be written: {reason}. Nothing was half-written; {fix}.")


@contextlib.contextmanager
def writing(path: Path):
    """Turn any OSError raised while writing path into a DiskError that names it."""
    try:
        yield
    except OSError as e:
        raise disk_error(path, e) from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside path, then rename: readers never see half a file."""
    path = Path(path)
    with writing(path):
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


def remove_stale_tmp(run_dir: Path) -> list[Path]:
    """Delete the temporary files of atomic writes a killed process left in a run directory.

    Called by the run's one writer before it writes, so every such file is a dead writer's.
    """
    removed = []
    for directory in (run_dir, run_dir / "checkpoints"):
        for tmp in Path(directory).glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                with writing(tmp):
                    tmp.unlink()
                removed.append(tmp)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def read_summary(run_dir: Path) -> dict:
    """A run's summary.json as a dict, or a RunError saying what is wrong with it."""
    path = Path(run_dir) / "summary.json"
    fix = ("It was damaged outside mnistlab (a full disk, an editor, a copy cut short); restore it "
           "from a backup or train the run again.")
    try:
        summary = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: no such file, so {run_dir} is not a run directory made by "
                       "'mnistlab train' (list runs with 'mnistlab runs').") from None
    except OSError as e:
        raise RunError(f"{path}: cannot be read ({e.strerror}).") from None
    except UnicodeDecodeError:
        raise RunError(f"{path}: is binary, not JSON text. {fix}") from None
    except json.JSONDecodeError as e:
        raise RunError(f"{path}: is not valid JSON ({e.msg} at line {e.lineno}, column "
                       f"{e.colno}); it is probably truncated. {fix}") from None
    if not isinstance(summary, dict):
        raise RunError(f"{path}: holds a JSON {type(summary).__name__}, not an object. {fix}")
    return summary


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"


def create_run_dir(runs_dir: str | Path, name: str, now: datetime | None = None) -> Path:
    """Make runs_dir/<date-time>-<name>/ anew; a name already taken gets a -2, -3... suffix."""
    runs_dir = Path(runs_dir)
    with writing(runs_dir):
        runs_dir.mkdir(parents=True, exist_ok=True)
    base = f"{(now or datetime.now()):%Y%m%d-%H%M%S}-{slug(name)}"
    for i in range(1, 1000):
        path = runs_dir / (base if i == 1 else f"{base}-{i}")
        try:
            with writing(path):
                path.mkdir()
        except DiskError as e:
            if not path.exists():
                raise e
            continue  # taken by another run started in the same second
        with writing(path):
            (path / "checkpoints").mkdir()
        return path
    raise RunError(f"{runs_dir}: too many runs named {base}; give the run another name.")


class MetricsLog:
    """metrics.jsonl: one JSON object a line, flushed as written; optionally TensorBoard too."""

    def __init__(self, path: Path, tensorboard=None):
        self.path = Path(path)
        with writing(self.path):
            self.file = open(path, "a", encoding="utf-8")
        self.tensorboard = tensorboard  # a SummaryWriter, or None

    def write(self, record: dict) -> None:
        record = {**record, "time": round(time.time(), 3)}  # when, as a Unix timestamp
        with writing(self.path):
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.tensorboard is not None:
            for key in ("loss", "accuracy", "lr"):
                if key in record:
                    self.tensorboard.add_scalar(f"{key}/{record['split']}", record[key],
                                                record["step"])

    def close(self) -> None:
        with contextlib.suppress(OSError):  # what could not be flushed was already reported
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


def content_digest(obj: Any) -> str:
    """A hash of what a checkpoint or cache holds (tensors by their bytes), to notice damage."""
    import torch

    h = hashlib.sha256()  # with the CPU's SHA instructions: ~0.1 s for MNIST

    def feed(x: Any) -> None:
        if isinstance(x, dict):
            h.update(b"{%d" % len(x))
            for key in sorted(x, key=repr):
                feed(key)
                feed(x[key])
        elif isinstance(x, (list, tuple)):
            h.update(b"[%d" % len(x))
            for v in x:
                feed(v)
        elif isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # no copy
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    feed(obj)
    return h.hexdigest()[:32]


def atomic_torch_save(path: Path, obj: Any) -> None:
    """torch.save into memory, then written atomically (so a full disk is a DiskError)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_verified(path: Path, obj: dict) -> None:
    """Save a dict with the digest of its content inside, checked by load_verified."""
    atomic_torch_save(path, {**obj, "digest": content_digest(obj)})


def digest_ok(obj: dict) -> bool:
    """Does the content match the digest saved in it? Files written before digests pass."""
    if "digest" not in obj:
        return True
    body = {k: v for k, v in obj.items() if k != "digest"}
    return obj["digest"] == content_digest(body)


def save_checkpoint(path: Path, payload: dict) -> None:
    save_verified(path, {"format": CHECKPOINT_FORMAT, **payload})


# torch's words (2.x) for a global it refused to import
_REFUSED = re.compile(r"GLOBAL \S+|Can only (build|create)")
_CODE_OPS = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"}


def _calls_code(path: Path) -> bool:
    """Does a complete pickle in the file import or call something? Read with pickletools, never run."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        else:
            data = path.read_bytes()
    except (OSError, StopIteration, zipfile.BadZipFile, RuntimeError):
        return False
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):  # the legacy format holds several pickles in a row
            if any(op.name in _CODE_OPS for op, _, _ in pickletools.genops(stream)):
                return True
    except Exception:  # the rest is damaged, or raw tensor bytes: not a pickle
        pass
    return False


# the checkpoint's fields and their types; checked in one place so a crafted file fails here
CHECKPOINT_FIELDS = {
    "model": dict, "optimizer": dict, "scheduler": (dict, type(None)), "epoch": int,
    "step": int, "shuffle_state": "tensor", "rng_state": "tensor", "best": (dict, type(None)),
    "train_seconds": (int, float), "config": dict, "data": dict,
}
# what eval and predict read of a classifier's data description
CLASSIFY_DATA_FIELDS = {"dataset": str, "mean": (int, float), "std": (int, float),
                        "image_shape": (list, tuple), "num_classes": int, "class_names": (list, tuple)}


def _schema_problems(ckpt: dict) -> list[str]:
    import torch

    problems = []
    for key, kind in CHECKPOINT_FIELDS.items():
        value = ckpt.get(key)
        if key not in ckpt:
            problems.append(f"no {key}")
        elif kind == "tensor":
            if not (isinstance(value, torch.Tensor) and value.dtype == torch.uint8):
                problems.append(f"{key} is a {type(value).__name__}, not a byte tensor")
        elif isinstance(value, bool) or not isinstance(value, kind):
            problems.append(f"{key} is a {type(value).__name__}")
    if isinstance(ckpt.get("model"), dict) and not all(
            isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        problems.append("model is not a dict of tensors")
    for key in ("epoch", "step"):
        if isinstance(ckpt.get(key), int) and ckpt[key] < 0:
            problems.append(f"{key} is negative")
    config = ckpt.get("config")
    if isinstance(config, dict) and config.get("task", "classify") == "classify" and isinstance(
            ckpt.get("data"), dict):
        data = ckpt["data"]
        for key, kind in CLASSIFY_DATA_FIELDS.items():
            if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
                problems.append(f"data.{key} is missing or a {type(data.get(key)).__name__}")
        shape, names, n = data.get("image_shape"), data.get("class_names"), data.get("num_classes")
        if isinstance(shape, (list, tuple)) and (
                len(shape) != 3 or not all(isinstance(d, int) and 0 < d <= 4096 for d in shape)):
            problems.append("data.image_shape is not three positive sizes")
        if isinstance(names, (list, tuple)) and isinstance(n, int) and (
                len(names) != n or not all(isinstance(c, str) for c in names)):
            problems.append("data.class_names does not name num_classes classes")
    return problems


def load_checkpoint(path: Path) -> dict:
    """Load a mnistlab checkpoint without running any code it may hold, checked whole.

    Refused with a CheckpointError: damaged bytes, content that no longer matches its digest,
    objects that would run code, and a file that lacks a field or has one of the wrong type.
    """
    import torch

    from .config import config_from_dict

    path = Path(path)
    fix = ("Point at a run directory or at checkpoints/last.pt or best.pt of a run made by "
           "'mnistlab train'.")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint. {fix}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols of foreign files
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _REFUSED.search(str(e)) or _calls_code(path):
            raise CheckpointError(
                f"{path}: refused: it holds objects other than tensors and plain data, so "
                f"loading it would run code; mnistlab checkpoints never do. Do not load it "
                f"elsewhere either unless you trust its source. {fix}") from None
        raise CheckpointError(f"{path}: is truncated or corrupt, not a readable PyTorch "
                              f"file. {fix}") from None
    except Exception as e:  # torch reports damaged files through many exception classes
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: is truncated or corrupt, not a readable PyTorch file "
                              f"({detail}). {fix}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: is a PyTorch file but not a mnistlab checkpoint "
                              f"(it has no mnistlab format marker). {fix}")
    if not digest_ok(ckpt):
        raise CheckpointError(
            f"{path}: its content no longer matches the digest written with it: the file was "
            "damaged (bit flips, a bad copy) or edited after it was saved, so it is not used. "
            "Use the run's other checkpoint (--ckpt best or last), or train the run again.")
    problems = _schema_problems(ckpt)
    if not problems:
        try:
            config_from_dict(ckpt["config"])
        except ConfigError as e:
            problems.append(f"its config is not valid ({e.problems[0]})")
    if problems:
        raise CheckpointError(
            f"{path}: is marked as a mnistlab checkpoint but is not a complete one: "
            f"{'; '.join(problems[:4])}. It was written by another program or version, or "
            "crafted. Use checkpoints/last.pt or best.pt of a run made by this version.")
    return ckpt
