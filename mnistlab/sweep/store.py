"""Trial states read from the run directories; sweep.json is only a cache of them."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from .. import files, lease, rundir
from ..errors import SweepError
from .spec import Sweep, Trial, train_command

INDEX_FORMAT = "mnistlab-sweep"
DEFINITION = "sweep.yaml"  # what was swept, so that --report on the folder needs nothing retyped
# states a trial can be in; "stopped" ran part-way (interrupted or killed) and continues from last.pt;
# "paused" stopped at a rung of a pruned sweep (summary status paused or pruned), also from last.pt
DONE, RUNNING, QUEUED, FAILED, STOPPED, NEW = "completed", "running", "queued", "failed", "stopped", "new"
PAUSED = "paused"


@dataclass
class TrialState:
    state: str
    run_dir: Path | None = None  # the run that decides the state (the trial's own, or an older one)
    summary: dict | None = None
    owner: dict | None = None  # the live lease (running) or job.json (queued)


def scan(directory: Path) -> dict[str, list[dict]]:
    """summary.json of every run in the sweep directory by config hash, oldest first (one listing)."""
    found: dict[str, list[dict]] = {}
    if not directory.is_dir():
        return found
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        try:
            summary = files.read_json(Path(entry.path) / "summary.json")
        except (OSError, ValueError):
            continue  # not a run, or a run killed while it was being created
        if isinstance(summary, dict):
            summary["run_dir"] = entry.path
            found.setdefault(rundir.trial_key(Path(entry.path), summary), []).append(summary)
    return found


def read_job(run_dir: Path) -> dict | None:
    """job.json: the driver's claim of a queued trial (executor, job id, driver, submitted; and the
    submission's name and the trial's index in it, claim and index, written before its job id)."""
    try:
        job = files.read_json(run_dir / "job.json")
    except (OSError, ValueError):
        return None
    return job if isinstance(job, dict) else None


def job_key(job: dict) -> str:
    """What names a job.json record's job: its job id, or for a claim whose driver has not yet
    written the id (or died first), the claim's submission name and index."""
    job_id = job.get("job_id")
    if isinstance(job_id, str) and job_id:
        return job_id
    return f"claim {job.get('claim')} {job.get('index')}"


def record_found(trials: list[Trial], states: dict[str, TrialState]) -> None:
    """Write into job.json the job id that jobs_alive found for a claim by its name (under the
    sweep's lock; only where job.json still holds that claim)."""
    for t in trials:
        st = states[t.hash]
        if st.state != QUEUED or not st.owner.pop("adopted", False):
            continue
        now = read_job(t.run_dir) or {}
        if (now.get("claim"), now.get("index"), job_key(now)) == (
                st.owner.get("claim"), st.owner.get("index"), job_key({**st.owner, "job_id": None})):
            files.write_json(t.run_dir / "job.json", st.owner)


def scan_trials(trials: list[Trial]) -> dict[str, list[dict]]:
    """Like scan, but only the trials' own run directories (to look again at a few trials)."""
    found: dict[str, list[dict]] = {}
    for t in trials:
        try:
            summary = files.read_json(t.run_dir / "summary.json")
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict):
            summary["run_dir"] = str(t.run_dir)
            found.setdefault(rundir.trial_key(t.run_dir, summary), []).append(summary)
    return found


def trial_states(trials: list[Trial], found: dict[str, list[dict]], jobs_alive) -> dict[str, TrialState]:
    """Each trial: done, running (a live lease), queued (a live job), failed, stopped, paused or new.

    found is scan()'s result; jobs_alive(job.json records) -> job_key of the jobs that still exist,
    asked once for all trials (one call to the scheduler).
    """
    states: dict[str, TrialState] = {}
    jobs: dict[str, dict] = {}
    for t in trials:
        summaries = found.get(t.hash, [])
        done = [s for s in summaries if s.get("status") == "completed"]
        if done:  # runs of older sweeps (timestamped directories) count too
            states[t.hash] = TrialState(DONE, Path(done[-1]["run_dir"]), done[-1])
            continue
        if not t.run_dir.is_dir():
            states[t.hash] = TrialState(NEW, t.run_dir)
            continue
        owner = lease.live_owner(t.run_dir)
        if owner is not None:
            states[t.hash] = TrialState(RUNNING, t.run_dir, None, owner)
            continue
        job = read_job(t.run_dir)
        if job is not None:
            jobs[t.hash] = job
        mine = [s for s in summaries if Path(s["run_dir"]) == t.run_dir]
        if mine:
            status = {"failed": FAILED, "paused": PAUSED, "pruned": PAUSED}.get(
                mine[-1].get("status"), STOPPED)
            states[t.hash] = TrialState(status, t.run_dir, mine[-1])
        else:
            states[t.hash] = TrialState(NEW, t.run_dir)
    alive = jobs_alive(list(jobs.values())) if jobs else set()
    for h, job in jobs.items():
        if job_key(job) in alive:
            states[h] = TrialState(QUEUED, states[h].run_dir, None, job)
    return states


@contextlib.contextmanager
def locked(directory: Path):
    """An exclusive lock on the sweep directory: claims and index updates happen one at a time.

    A Ctrl-C that lands between taking the lock and entering the block (in contextlib's __enter__)
    skips the release: the lock file then stays open and locked, and the next lock this process
    takes, e.g. as the interrupted sweep writes its index, takes the same open file's lock again
    instead of waiting on itself forever."""
    path = directory / ".sweep.lock"
    with files.writing(path):
        directory.mkdir(parents=True, exist_ok=True)
        lock = _LOCKS.get(str(path.absolute()))
        if lock is None or not path.exists() or _inode(os.fstat(lock.fileno())) != _inode(path.stat()):
            if lock is not None:  # the sweep's folder was removed and made again
                _HOLDER.pop(lock, None)
                lock.close()
            lock = _LOCKS[str(path.absolute())] = open(path, "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    _HOLDER[lock] = token = object()
    try:
        yield
    finally:  # a block whose release was skipped (and ends later, when collected) is not the holder
        if _HOLDER.get(lock) is token:
            del _HOLDER[lock]
            _LOCKS.pop(str(path.absolute()), None)
            lock.close()  # releases the lock


_LOCKS: dict[str, object] = {}  # the lock files this process holds open, by path
_HOLDER: dict[object, object] = {}  # lock file -> the block that holds it now


def _inode(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def locked_index(directory: Path):
    """sweep.json under the lock; written back atomically when the block ends cleanly."""
    with locked(directory):
        index = read_index(directory)
        yield index
        index["updated"] = datetime.now().isoformat(timespec="seconds")
        files.write_json(directory / "sweep.json", index)


def read_index(directory: Path) -> dict:
    """The cached index; a missing or damaged one is an empty index (the runs rebuild it)."""
    try:
        index = files.read_json(directory / "sweep.json")
    except (OSError, ValueError):
        index = None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT \
            or not isinstance(index.get("trials"), dict):
        return {"format": INDEX_FORMAT, "trials": {}}
    return index


def entry(sweep: Sweep, trial: Trial, st: TrialState, error: str | None = None) -> dict:
    """What sweep.json says about a trial: all of it read back from its run directory."""
    summary = st.summary or {}
    if st.state == QUEUED:
        job = {"name": st.owner.get("executor"), "job_id": st.owner.get("job_id")}
    else:
        job = (st.owner or summary).get("executor")
    return {"name": trial.name, "overrides": trial.overrides, "params": trial.params,
            "command": shlex.join(train_command(sweep, trial)), "status": st.state,
            "run_dir": str(st.run_dir) if st.run_dir else None,
            "error": error or summary.get("error"), "job": job}


def write_index(sweep: Sweep, directory: Path, trials: list[Trial], states: dict[str, TrialState],
                errors: dict[str, str] | None = None) -> None:
    """Rebuild sweep.json from the trial states (entries of trials outside this sweep are kept)."""
    with locked_index(directory) as index:
        index.update(name=sweep.name, base=str(sweep.base), overrides=sweep.overrides, keys=sweep.keys)
        for t in trials:
            index["trials"][t.hash] = entry(sweep, t, states[t.hash], (errors or {}).get(t.hash))


def definition(sweep: Sweep) -> dict:
    """What sweep.yaml holds of a sweep: a sweep file that repeats it from anywhere."""
    raw = {"name": sweep.name, "base": str(Path(sweep.base).resolve())}
    if sweep.grid:
        raw["grid"] = sweep.grid
    if sweep.random:
        raw["random"] = {"n": sweep.random["n"], "seed": sweep.random["seed"],
                         **sweep.random["space"]}
    if sweep.tpe:
        raw["tpe"] = {k: sweep.tpe[k] for k in ("n", "seed", "startup")} | sweep.tpe["space"]
    if sweep.seeds:
        raw["seeds"] = sweep.seeds
    if sweep.overrides:
        raw["overrides"] = list(sweep.overrides)
    if sweep.executor:
        raw["executor"] = sweep.executor
    return raw


# what every trial of a sweep shares: a folder holds the trials of one base and overrides (a grid,
# its seeds or a random block may grow or change: the sweep is extended, its trials stay apart)
DEFINING = ("base", "overrides")


def check_definition(sweep: Sweep, directory: Path) -> None:
    """Refuse a sweep whose folder holds the trials of another base config or other overrides
    (its sweep.yaml says which): two experiments would mix in one folder."""
    path = directory / DEFINITION
    try:
        old = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # none yet (or unreadable): this sweep's definition is written
    if not isinstance(old, dict):
        return
    new = yaml.safe_load(yaml.safe_dump(definition(sweep)))  # as it would read back
    differ = [key for key in DEFINING if old.get(key) != new.get(key)]
    if not differ:
        return
    what = "; ".join(f"{key}: {_shown(old.get(key))} there, {_shown(new.get(key))} now"
                     for key in differ)
    raise SweepError(
        f"{directory}: already holds the trials of sweep {old.get('name', sweep.name)!r} as its "
        f"{DEFINITION} defines it, and this sweep differs ({what}). Its trials would mix with "
        f"those in one folder, and {DEFINITION} would be overwritten, so nothing was run. Give "
        "this sweep another name (--name NAME, or name: in the sweep file), or run the one there "
        f"again with: mnistlab sweep {directory}")


def _shown(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value) or "none"
    return json.dumps(value)


def write_definition(sweep: Sweep, directory: Path) -> None:
    """sweep.yaml in the sweep directory: a sweep file that repeats this sweep from anywhere."""
    check_definition(sweep, directory)
    head = "# written by mnistlab sweep: the definition run here; repeat or report it with\n" \
           f"#   mnistlab sweep {directory} --report\n"
    text = head + yaml.safe_dump(definition(sweep), sort_keys=False, default_flow_style=None)
    with files.writing(directory):
        directory.mkdir(parents=True, exist_ok=True)
    path = directory / DEFINITION
    if not path.is_file() or path.read_text() != text:
        files.atomic_write_text(path, text)
