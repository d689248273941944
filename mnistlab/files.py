"""Atomic files: every write lands whole or not at all, a failed one is a one-paragraph DiskError; digests of saved content."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import DiskError


def _file_mode() -> int:
    """rw for everyone the umask allows (mkstemp alone would make files private)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


# why a write failed, and what to do about it
ELSEWHERE = "write elsewhere (runs_dir=DIR for runs, -o FILE for a figure, --to for an export)"


DISK_REASONS = {
    errno.ENOSPC: ("the disk is full", f"free some space, or {ELSEWHERE}"),
    errno.EDQUOT: ("the disk quota is exceeded", f"free some space, or {ELSEWHERE}"),
    errno.EROFS: ("the file system is read-only", f"remount it read-write, or {ELSEWHERE}"),
    errno.EACCES: ("permission denied", f"make the directory writable for this user, or {ELSEWHERE}"),
    errno.EPERM: ("permission denied", f"make the directory writable for this user, or {ELSEWHERE}"),
}


def cache_root() -> Path:
    """$XDG_CACHE_HOME/mnistlab or ~/.cache/mnistlab: downloads, caches and crash reports."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "mnistlab"


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

    Called by the run's one writer before it writes, so every such file is a dead writer's, but
    for owner.json's: the writer's own lease may be writing it right now.
    """
    removed = []
    for directory in (run_dir, run_dir / "checkpoints"):
        for tmp in Path(directory).glob(".*.tmp"):
            if tmp.name.startswith(".owner.json."):
                continue
            with contextlib.suppress(FileNotFoundError):
                with writing(tmp):
                    tmp.unlink()
                removed.append(tmp)
    return removed


def is_file(path: Path) -> bool:
    """Path.is_file, but False for a path no file can have (too long, a NUL byte, a loop)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def is_dir(path: Path) -> bool:
    """Path.is_dir, but False for a path no directory can have."""
    try:
        return Path(path).is_dir()
    except (OSError, ValueError):
        return False


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def parse_json(text: str | bytes) -> Any:
    """json.loads, except that JSON nested too deeply for Python is a ValueError like other bad JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_json(path: Path) -> Any:
    """A JSON file; OSError when it cannot be read, ValueError when it is not UTF-8 JSON."""
    return parse_json(Path(path).read_bytes().decode("utf-8"))


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


def defaults_path() -> Path:
    """The user's defaults file: $XDG_CONFIG_HOME/mnistlab/defaults.yaml, or ~/.config/mnistlab/."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser() / "mnistlab" / "defaults.yaml"
