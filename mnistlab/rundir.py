"""The run directory: config.yaml, metrics.jsonl, summary.json, env.json, checkpoints/, written atomically."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from .errors import ConfigError, DiskError, RunError
from .files import parse_json, writing
from .lease import process_alive


def read_summary(run_dir: Path) -> dict:
    """A run's summary.json as a dict, or a RunError saying what is wrong with it."""
    path = Path(run_dir) / "summary.json"
    fix = ("It was damaged outside mnistlab (a full disk, an editor, a copy cut short); restore it "
           "from a backup or train the run again.")
    try:
        summary = parse_json(path.read_bytes().decode("utf-8"))
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
    except ValueError as e:
        raise RunError(f"{path}: is not usable JSON ({e}). {fix}") from None
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
    """Every complete record of a metrics.jsonl (a line cut short by a kill, or damaged, is skipped)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise RunError(f"{path}: cannot be read ({e.strerror or type(e).__name__}); check that "
                       "the run directory is complete and readable.") from None
    records = []
    for line in text.splitlines():
        try:
            record = parse_json(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


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


def trial_key(run_dir: Path, summary: dict) -> str | None:
    """The semantic config hash of a run: the one in its summary, or, for runs written before
    hash_version 2, recomputed from its config.yaml, so sweeps recognise their older trials."""
    import yaml

    from .config import HASH_VERSION, config_from_dict, config_hash

    if summary.get("hash_version") == HASH_VERSION:
        return summary.get("config_hash")
    try:
        raw = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
        return config_hash(config_from_dict(raw))
    except (OSError, ValueError, RecursionError, ConfigError, yaml.YAMLError):
        return None
