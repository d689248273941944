"""Trial states read from the run directories; sweep.json is only a cache of them."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
from datetime import datetime
from pathlib import Path

from .. import runs
from ..errors import SweepError
from .spec import Sweep, Trial, train_command

INDEX_FORMAT = "mnistlab-sweep"


@contextlib.contextmanager
def locked_index(directory: Path):
    """sweep.json under an exclusive lock; written back atomically when the block ends cleanly."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".sweep.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        index = read_index(directory)
        yield index
        index["updated"] = datetime.now().isoformat(timespec="seconds")
        runs.write_json(directory / "sweep.json", index)


def read_index(directory: Path) -> dict:
    path = directory / "sweep.json"
    if not path.exists():
        return {"format": INDEX_FORMAT, "trials": {}}
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SweepError(f"{path}: cannot be read as a sweep index ({type(e).__name__}). It only "
                         "caches what the run directories say: delete it and run the sweep again "
                         "to rebuild it.") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise SweepError(f"{path}: is not a mnistlab sweep index; delete it, or give the sweep "
                         "another name (--name) so that it gets its own directory.")
    return index


def runs_by_hash(directory: Path) -> dict[str, list[dict]]:
    """The summary.json of every run under the sweep directory, oldest first, by config hash."""
    found: dict[str, list[dict]] = {}
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob("*/summary.json")):
        try:
            summary = runs.read_json(path)
        except (OSError, ValueError):
            continue  # a run killed while it was being created
        summary["run_dir"] = str(path.parent)
        found.setdefault(summary.get("config_hash"), []).append(summary)
    return found


def _alive(owner: dict | None) -> bool:
    """Whether another sweep process that claimed a trial still runs (on this host)."""
    if not owner or owner.get("pid") == os.getpid():
        return False
    return runs.process_alive(owner) is True


def trial_state(summaries: list[dict], entry: dict | None) -> str:
    """done, running (by another live sweep), failed, interrupted, paused or pruned (at a rung), or new."""
    if any(s.get("status") == "completed" for s in summaries):
        return "done"
    if entry and entry.get("status") == "running" and _alive(entry.get("owner")):
        return "running"
    if entry and entry.get("status") in ("failed", "interrupted"):
        return entry["status"]
    if summaries:
        last = summaries[-1].get("status")
        return last if last in ("failed", "paused", "pruned") else "interrupted"
    return "new"


def completed_run(summaries: list[dict]) -> dict | None:
    done = [s for s in summaries if s.get("status") == "completed"]
    return done[-1] if done else None


def _resumable(summaries: list[dict]) -> Path | None:
    """The last run of a trial if it stopped mid-way (interrupted, killed, at a rung) with a checkpoint."""
    if summaries and summaries[-1].get("status") in ("interrupted", "running", "paused", "pruned"):
        run_dir = Path(summaries[-1]["run_dir"])
        if (run_dir / "checkpoints" / "last.pt").is_file():
            return run_dir
    return None


def _entry(sweep: Sweep, trial: Trial, **fields) -> dict:
    return {"name": trial.name, "overrides": trial.overrides, "params": trial.params,
            "command": shlex.join(train_command(sweep, trial)), **fields}
