"""Sweeps: grids of train overrides, each trial an ordinary run; resumable, parallel, summarised."""

from __future__ import annotations

import contextlib
import csv
import difflib
import fcntl
import io
import itertools
import json
import math
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from . import runs
from .errors import Interrupted, SweepError, TrialsMissed
from .config import (Config, ConfigError, config_hash, flatten, load_config, parse_override,
                     read_yaml, to_dict)

SWEEP_KEYS = ("name", "base", "grid", "seeds", "random", "overrides")
INDEX_FORMAT = "mnistlab-sweep"
# metric name -> (where it is in summary.json, higher is better)
METRICS = {
    "val_accuracy": (("final", "val", "accuracy"), True),
    "val_loss": (("final", "val", "loss"), False),
    "best_val_accuracy": (("best", "val_accuracy"), True),
    "test_accuracy": (("final", "test", "accuracy"), True),
    "test_loss": (("final", "test", "loss"), False),
    "train_accuracy": (("final", "train", "accuracy"), True),
    "train_loss": (("final", "train", "loss"), False),
    "train_seconds": (("train_seconds",), False),
    "f": (("result", "f"), False),  # quadratic: f(x) at the end
    "lstsq_gap": (("result", "lstsq_gap"), False),  # linreg: MSE above least squares
}
DEFAULT_METRIC = {"classify": "val_accuracy", "linreg": "val_loss", "quadratic": "f"}


class SweepInterrupted(Interrupted):
    """Ctrl-C or SIGTERM stopped the sweep after its running trials saved themselves."""

    def __init__(self):
        super().__init__("sweep interrupted; the running trials saved their state. Run the same "
                         "command again to continue where it stopped.")


@dataclass
class Sweep:
    """What to run: a base config, overrides for every trial, and the points to try."""

    name: str
    base: Path
    overrides: list[str] = field(default_factory=list)
    grid: dict[str, list] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    random: dict | None = None  # {"n": int, "seed": int, "space": {key: list | {kind: [lo, hi]}}}

    @property
    def keys(self) -> list[str]:
        """The swept keys, train.seed last when seeds are replicates."""
        keys = list(self.grid) + list((self.random or {}).get("space", {}))
        return keys + (["train.seed"] if self.seeds else [])


@dataclass
class Trial:
    name: str
    params: dict[str, Any]  # swept key -> value as the resolved config holds it
    overrides: list[str]  # the trial's own overrides, after the sweep's
    cfg: Config
    hash: str


# ---------------------------------------------------------------- values on the command line


def format_value(value: Any) -> str:
    """A value as override text that reads back as the same value: 0.001, sgd, [16,32], true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    if isinstance(value, str):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def split_values(text: str) -> list[str]:
    """Split on the commas outside brackets and quotes: '[8,16],[16,32]' -> ['[8,16]', '[16,32]']."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_grid_option(text: str) -> tuple[str, list]:
    """'optim.lr=0.1,0.01' -> ('optim.lr', [0.1, 0.01]); each value read as a YAML scalar."""
    key, sep, values = text.partition("=")
    if not sep or not values.strip():
        raise ConfigError([f"--grid {text!r}: give a key and its values, e.g. "
                           "--grid optim.lr=0.1,0.01,0.001 or --grid model.channels=[8,16],[16,32]"])
    out = []
    for piece in split_values(values):
        if not piece:
            raise ConfigError([f"--grid {text!r}: an empty value between commas"])
        out.append(parse_override(f"{key.strip()}={piece}")[1])
    return key.strip(), out


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in split_values(text)]
    except ValueError:
        raise ConfigError([f"--seeds {text!r}: give integers separated by commas, "
                           "e.g. --seeds 0,1,2"]) from None
    return seeds


# ---------------------------------------------------------------- defining a sweep


def is_sweep_file(raw: dict) -> bool:
    return "base" in raw


def read_sweep(path: Path, grid: list[str] = (), seeds: str | None = None,
               overrides: list[str] = (), name: str | None = None) -> Sweep:
    """A sweep file, or a plain config with --grid/--seeds; the command line adds to the file."""
    path = Path(path)
    raw = read_yaml(path)
    problems: list[str] = []
    if is_sweep_file(raw):
        sweep = _sweep_from_file(path, raw, problems)
    elif grid or seeds:
        sweep = Sweep(name=f"{path.stem}-sweep", base=path)
    else:
        raise ConfigError([f"{path}: is a config, not a sweep file; sweep it with options, e.g. "
                           f"mnistlab sweep {path} --grid optim.lr=0.1,0.01 --seeds 0,1, or write "
                           "a sweep file with base: and grid: (see configs/sweep-lr.yaml)"])
    for text in grid:
        try:
            key, values = parse_grid_option(text)
            sweep.grid[key] = values
        except ConfigError as e:
            problems += e.problems
    if seeds is not None:
        try:
            sweep.seeds = parse_seeds(seeds)
        except ConfigError as e:
            problems += e.problems
    sweep.overrides += list(overrides)
    sweep.name = runs.slug(name or sweep.name)
    if "train.seed" in sweep.keys[:-1] and sweep.seeds:
        problems.append("train.seed is both swept and given as seeds:; keep one of them")
    if not sweep.keys and not problems:
        problems.append(f"{path}: the sweep has no points; add grid:, random: or seeds:")
    if problems:
        raise ConfigError(problems)
    return sweep


def _sweep_from_file(path: Path, raw: dict, problems: list[str]) -> Sweep:
    for key in raw:
        if key not in SWEEP_KEYS:
            close = difflib.get_close_matches(str(key), SWEEP_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "valid keys: " + ", ".join(SWEEP_KEYS)
            problems.append(f"{path}: {key}: unknown sweep key, {hint}")
    base = Path(str(raw.get("base")))
    if not base.is_absolute():
        base = path.parent / base  # relative to the sweep file, like an include
    if not base.is_file():
        problems.append(f"{path}: base: {raw.get('base')} is not a file (looked for {base}); "
                        "give the config the trials start from, relative to the sweep file")
    sweep = Sweep(name=str(raw.get("name") or path.stem), base=base)
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        problems.append(f"{path}: grid: must map dotted keys to lists of values, "
                        "e.g. grid: {optim.lr: [0.1, 0.01]}")
        grid = {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            problems.append(f"{path}: grid.{key}: give a non-empty list of values, e.g. [0.1, 0.01] "
                            "(a fixed value belongs in overrides:)")
        else:
            sweep.grid[str(key)] = values
    seeds = raw.get("seeds")
    if seeds is not None:
        if isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool)
                                                     for s in seeds):
            sweep.seeds = seeds
        else:
            problems.append(f"{path}: seeds: give a list of integers, e.g. [0, 1, 2]")
    overrides = raw.get("overrides") or []
    if isinstance(overrides, dict):
        overrides = [f"{k}={format_value(v)}" for k, v in overrides.items()]
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        problems.append(f"{path}: overrides: give key=value strings, e.g. [train.epochs=5], "
                        "or a mapping of dotted keys")
    else:
        sweep.overrides = overrides
    if raw.get("random") is not None:
        sweep.random = _random_block(path, raw["random"], problems)
        for key in sweep.random["space"]:
            if key in sweep.grid:
                problems.append(f"{path}: {key} is in both grid: and random:; keep one")
    return sweep


def _random_block(path: Path, block: Any, problems: list[str]) -> dict:
    where = f"{path}: random"
    out = {"n": 0, "seed": 0, "space": {}}
    if not isinstance(block, dict):
        problems.append(f"{where}: give n:, seed: and the keys to sample, e.g. "
                        "random: {n: 8, seed: 0, optim.lr: {loguniform: [1e-4, 1e-1]}}")
        return out
    n, seed = block.get("n"), block.get("seed", 0)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        problems.append(f"{where}.n: give the number of points to sample, a positive integer")
    else:
        out["n"] = n
    if not isinstance(seed, int) or isinstance(seed, bool):
        problems.append(f"{where}.seed: give an integer")
    else:
        out["seed"] = seed
    for key, spec in block.items():
        if key in ("n", "seed"):
            continue
        if isinstance(spec, list) and spec:
            out["space"][str(key)] = spec
            continue
        one = isinstance(spec, dict) and len(spec) == 1
        kind, bounds = next(iter(spec.items())) if one else (None, None)
        try:
            lo, hi = (float(b) for b in bounds)
            ok = kind in ("uniform", "loguniform", "int") and lo <= hi
            ok = ok and (kind != "loguniform" or lo > 0)
            ok = ok and (kind != "int" or (lo.is_integer() and hi.is_integer()))
        except (TypeError, ValueError):
            ok = False
        if ok:
            out["space"][str(key)] = {kind: [lo, hi]}
        else:
            problems.append(f"{where}.{key}: give a list of values or one range: "
                            "{uniform: [lo, hi]}, {loguniform: [lo, hi]} (lo > 0) or {int: [lo, hi]}")
    if not out["space"]:
        problems.append(f"{where}: name at least one key to sample, "
                        "e.g. optim.lr: {loguniform: [1e-4, 1e-1]}")
    return out


def sample_random(space: dict, n: int, seed: int) -> list[dict]:
    """n distinct points drawn with the seed; a larger n keeps the first points (resume-friendly)."""
    size = 1
    for spec in space.values():
        if isinstance(spec, list):
            size *= len({json.dumps(v, sort_keys=True) for v in spec})
        elif "int" in spec:
            size *= int(spec["int"][1] - spec["int"][0]) + 1
        else:
            size = math.inf
    if n > size:
        raise ConfigError([f"random.n is {n} but the sampled keys have only {size} distinct "
                           "points; lower n or widen the ranges"])
    rng = random.Random(seed)
    points, seen = [], set()
    for _ in range(1000 * n):
        if len(points) == n:
            break
        point = {}
        for key, spec in space.items():
            if isinstance(spec, list):
                point[key] = spec[rng.randrange(len(spec))]
            elif "int" in spec:
                point[key] = rng.randint(int(spec["int"][0]), int(spec["int"][1]))
            elif "uniform" in spec:
                point[key] = float(f"{rng.uniform(*spec['uniform']):.3g}")
            else:
                lo, hi = spec["loguniform"]
                point[key] = float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.3g}")
        text = json.dumps(point, sort_keys=True)
        if text not in seen:
            seen.add(text)
            points.append(point)
    if len(points) < n:
        raise ConfigError([f"random: found only {len(points)} distinct points of the {n} asked "
                           "(values are rounded to 3 significant digits); widen the ranges or lower n"])
    return points


def expand(sweep: Sweep) -> list[dict]:
    """Every point: the grid's cartesian product, times the random points, times the seeds."""
    points = [dict(zip(sweep.grid, values)) for values in itertools.product(*sweep.grid.values())]
    if sweep.random:
        sampled = sample_random(sweep.random["space"], sweep.random["n"], sweep.random["seed"])
        points = [{**p, **q} for p in points for q in sampled]
    if sweep.seeds:
        points = [{**p, "train.seed": s} for p in points for s in sweep.seeds]
    return points


def _name_part(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(_name_part(v) for v in value)
    return format_value(value).replace("e+", "e")


def _trial_name(point: dict, default: str) -> str:
    """lr-0.01_name-sgd_seed-0: the last part of each key with its value."""
    parts = [f"{key.split('.')[-1]}-{_name_part(v)}" for key, v in point.items()]
    return runs.slug("_".join(parts))[:100] if parts else default


def sweep_dir(sweep: Sweep) -> Path:
    """runs_dir of the base config (with the sweep's overrides), then the sweep's name."""
    return Path(load_config(sweep.base, sweep.overrides).runs_dir) / sweep.name


def build_trials(sweep: Sweep) -> tuple[Path, list[Trial]]:
    """Every trial's config, by the train command's own load_config; all problems raised together."""
    directory = sweep_dir(sweep)
    trials, seen, problems = [], set(), {}
    points = expand(sweep)
    for point in points:
        name = _trial_name(point, sweep.name)
        own = [f"{key}={format_value(v)}" for key, v in point.items()]
        try:
            cfg = load_config(sweep.base, sweep.overrides + own +
                              [f"runs_dir={directory}", f"name={name}"])
        except ConfigError as e:
            for p in e.problems:
                problems.setdefault(p, []).append(name)
            continue
        h = config_hash(cfg)
        if h in seen:  # two points resolving to one config (e.g. channels of a dense model) run once
            continue
        seen.add(h)
        values = flatten(to_dict(cfg))
        trials.append(Trial(name, {k: values[k] for k in point}, own, cfg, h))
    if problems:
        raise ConfigError([p if len(names) == len(points) else
                           f"{p} (trial{'s' if len(names) > 1 else ''} {', '.join(names[:5])}"
                           f"{', ...' if len(names) > 5 else ''})" for p, names in problems.items()])
    return directory, trials


def train_command(sweep: Sweep, trial: Trial) -> list[str]:
    """The command that runs this trial by hand."""
    return (["mnistlab", "train", _shown_path(sweep.base)] + sweep.overrides + trial.overrides
            + [f"runs_dir={trial.cfg.runs_dir}", f"name={trial.name}"])


def _shown_path(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- the index and the runs on disk


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
    """done, running (by another live sweep), failed, interrupted or new."""
    if any(s.get("status") == "completed" for s in summaries):
        return "done"
    if entry and entry.get("status") == "running" and _alive(entry.get("owner")):
        return "running"
    if entry and entry.get("status") in ("failed", "interrupted"):
        return entry["status"]
    if summaries:
        return "failed" if summaries[-1].get("status") == "failed" else "interrupted"
    return "new"


def completed_run(summaries: list[dict]) -> dict | None:
    done = [s for s in summaries if s.get("status") == "completed"]
    return done[-1] if done else None


def _resumable(summaries: list[dict]) -> Path | None:
    """The last run of a trial if it stopped mid-way (interrupted or killed) with a checkpoint."""
    if summaries and summaries[-1].get("status") in ("interrupted", "running"):
        run_dir = Path(summaries[-1]["run_dir"])
        if (run_dir / "checkpoints" / "last.pt").is_file():
            return run_dir
    return None


def _entry(sweep: Sweep, trial: Trial, **fields) -> dict:
    return {"name": trial.name, "overrides": trial.overrides, "params": trial.params,
            "command": shlex.join(train_command(sweep, trial)), **fields}


# ---------------------------------------------------------------- running


@dataclass
class Job:
    trial: Trial
    proc: subprocess.Popen
    log: Path
    before: set[str]  # run directories of this trial that existed before it started
    resumed: Path | None


def threads_per_job(jobs: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // jobs)


def run_sweep(sweep: Sweep, directory: Path, trials: list[Trial], jobs: int = 1,
              fail_fast: bool = False, progress: "Progress | None" = None) -> dict:
    """Run every trial not done yet, jobs at a time; return counts and timings.

    Raises SweepInterrupted on Ctrl-C/SIGTERM after the running trials saved themselves.
    """
    progress = progress or Progress(Console(quiet=True))
    on_disk = runs_by_hash(directory)
    with locked_index(directory) as index:
        index.update(name=sweep.name, base=str(sweep.base), overrides=sweep.overrides, keys=sweep.keys)
        states = {t.hash: trial_state(on_disk.get(t.hash, []), index["trials"].get(t.hash))
                  for t in trials}
    pending = [t for t in trials if states[t.hash] not in ("done", "running")]
    counts = {"total": len(trials), "done_before": sum(s == "done" for s in states.values()),
              "elsewhere": sum(s == "running" for s in states.values()),
              "completed": 0, "failed": 0, "interrupted": 0, "skipped": 0}
    threads = threads_per_job(min(jobs, max(len(pending), 1)))
    progress.start(sweep.name, len(pending), counts, jobs, threads)
    running: list[Job] = []
    stopping = False
    t0 = time.perf_counter()
    wall_seconds = 0.0

    def finish(job: Job, interrupted: bool) -> None:
        nonlocal stopping, wall_seconds
        status, run_dir, error, summary = _outcome(directory, job, interrupted)
        wall_seconds += (summary or {}).get("wall_seconds") or 0.0
        counts[status] += 1
        with locked_index(directory) as index:
            index["trials"][job.trial.hash] = _entry(
                sweep, job.trial, status=status, run_dir=run_dir, error=error, log=str(job.log),
                ended=datetime.now().isoformat(timespec="seconds"))
        progress.finished(job.trial, status, summary, error)
        if status == "failed" and fail_fast:
            stopping = True

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while (pending and not stopping) or running:
            while pending and not stopping and len(running) < jobs:
                job = _launch(sweep, directory, pending.pop(0), threads)
                if job is None:
                    counts["skipped"] += 1
                    continue
                running.append(job)
                progress.started(job.trial, job.resumed)
            for job in [j for j in running if j.proc.poll() is not None]:
                running.remove(job)
                finish(job, interrupted=False)
            if stopping:
                _stop(running)
            progress.update(len(running))
            time.sleep(0.05)
    except KeyboardInterrupt:
        _stop(running)
        for job in running:
            finish(job, interrupted=True)
        raise SweepInterrupted() from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        progress.stop()
    ran = counts["completed"] + counts["failed"] + counts["interrupted"]
    counts.update(ran=ran, seconds=time.perf_counter() - t0, trial_seconds=wall_seconds,
                  jobs=min(jobs, max(ran, 1)), not_run=len(pending))
    return counts


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _launch(sweep: Sweep, directory: Path, trial: Trial, threads: int) -> Job | None:
    """Claim the trial in the index and start its process; None when another sweep has it."""
    with locked_index(directory) as index:
        on_disk = runs_by_hash(directory).get(trial.hash, [])
        if trial_state(on_disk, index["trials"].get(trial.hash)) in ("done", "running"):
            return None
        resumed = _resumable(on_disk)
        if resumed is not None:
            args = ["--resume", str(resumed)]
        else:
            args = [str(sweep.base)] + sweep.overrides + trial.overrides + [
                f"runs_dir={directory}", f"name={trial.name}"]
        env = dict(os.environ)
        if not trial.cfg.train.threads:  # split the cores without touching the config (and its hash)
            env["OMP_NUM_THREADS"] = str(threads)
        logs = directory / "logs"
        logs.mkdir(exist_ok=True)
        log = logs / f"{trial.name}-{trial.hash}.log"
        with open(log, "w") as out:
            # a session of its own: Ctrl-C reaches only the sweep, which stops each trial once
            proc = subprocess.Popen([sys.executable, "-m", "mnistlab", "train", "--quiet", *args],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        index["trials"][trial.hash] = _entry(
            sweep, trial, status="running", run_dir=str(resumed) if resumed else None, error=None,
            log=str(log), pid=proc.pid, owner=runs.process_identity(),
            started=datetime.now().isoformat(timespec="seconds"))
    return Job(trial, proc, log, {s["run_dir"] for s in on_disk}, resumed)


def _stop(jobs: list[Job], timeout: float = 60.0) -> None:
    """SIGTERM each trial (it saves its run as interrupted), wait, then kill what still runs."""
    for job in jobs:
        if job.proc.poll() is None:
            job.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    try:
        for job in jobs:
            job.proc.wait(max(deadline - time.monotonic(), 0.1))
    except (subprocess.TimeoutExpired, KeyboardInterrupt):  # stuck, or a second Ctrl-C
        for job in jobs:
            if job.proc.poll() is None:
                job.proc.kill()
                job.proc.wait()


def _outcome(directory: Path, job: Job,
             interrupted: bool) -> tuple[str, str | None, str | None, dict | None]:
    """(status, run_dir, error, summary) of a finished trial process."""
    rc = job.proc.wait()
    run_dir = job.resumed
    if run_dir is None:
        new = [s for s in runs_by_hash(directory).get(job.trial.hash, [])
               if s["run_dir"] not in job.before]
        run_dir = Path(new[-1]["run_dir"]) if new else None
    summary = None
    if run_dir is not None:
        try:
            summary = runs.read_json(run_dir / "summary.json")
        except (OSError, ValueError):
            pass
    status = (summary or {}).get("status")
    shown = str(run_dir) if run_dir else None
    if rc == 0 and status == "completed":
        return "completed", shown, None, summary
    if interrupted or status == "interrupted":
        return "interrupted", shown, "interrupted; the next run of the sweep continues it", summary
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
        return "failed", shown, f"the trial process was killed by {name}", summary
    if status == "failed" and summary.get("error"):
        return "failed", shown, summary["error"], summary
    return "failed", shown, _log_tail(job.log) or f"the trial process exited with code {rc}", summary


def _log_tail(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " ".join(lines[-3:])[:500]


# ---------------------------------------------------------------- what a sweep shows while it runs


class Progress:
    """Plain lines: one when a trial starts, one when it ends."""

    def __init__(self, console: Console):
        self.console = console
        self.total = self.done = 0
        self.counts: dict = {}

    def start(self, name: str, total: int, counts: dict, jobs: int, threads: int) -> None:
        self.total, self.counts = total, counts
        before = counts["done_before"]
        other = f", {counts['elsewhere']} running in another sweep" if counts["elsewhere"] else ""
        self.console.print(f"sweep {name}: {counts['total']} trials, {before} done before{other}, "
                           f"{total} to run; {jobs} job{'s' if jobs > 1 else ''} x {threads} thread"
                           f"{'s' if threads > 1 else ''}")

    def started(self, trial: Trial, resumed: Path | None) -> None:
        how = f"continuing {resumed}" if resumed else " ".join(trial.overrides)
        self.console.print(f"start {trial.name}: {how}")

    def finished(self, trial: Trial, status: str, summary: dict | None, error: str | None) -> None:
        self.done += 1
        self.console.print(f"[{self.done}/{self.total}] {result_line(trial, status, summary, error)}")

    def update(self, running: int) -> None:
        pass

    def stop(self) -> None:
        pass


class LiveProgress(Progress):
    """A Rich bar of trials done / total with running, failed and ETA; result lines above it."""

    def __init__(self, console: Console):
        from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        from rich.progress import Progress as Bar

        super().__init__(console)
        self.bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("running {task.fields[running]}  failed {task.fields[failed]}"),
                       TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                       console=console, transient=True)
        self.task = None

    def start(self, name, total, counts, jobs, threads) -> None:
        super().start(name, total, counts, jobs, threads)
        self.bar.start()
        self.task = self.bar.add_task(f"sweep {name}", total=total, running=0, failed=0)

    def started(self, trial, resumed) -> None:
        pass

    def finished(self, trial, status, summary, error) -> None:
        self.done += 1
        self.bar.console.print(result_line(trial, status, summary, error))
        self.bar.update(self.task, completed=self.done, failed=self.counts["failed"])

    def update(self, running: int) -> None:
        self.bar.update(self.task, running=running)

    def stop(self) -> None:
        self.bar.stop()


def progress_for(console: Console) -> Progress:
    """Live bar on a terminal, plain lines in a pipe or log file."""
    return LiveProgress(console) if console.is_terminal else Progress(console)


def result_line(trial: Trial, status: str, summary: dict | None, error: str | None) -> str:
    if status == "completed":
        val = ((summary.get("final") or {}).get("val") or {}).get("accuracy")
        acc = f"val acc {100 * val:.2f}%, " if val is not None else ""
        return f"completed {trial.name}: {acc}{summary.get('wall_seconds') or 0:.1f}s"
    return f"{status} {trial.name}: {error}"


# ---------------------------------------------------------------- the result


def metric_of(summary: dict, metric: str) -> float | None:
    value: Any = summary
    for part in METRICS[metric][0]:
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def summarize(sweep: Sweep, directory: Path, trials: list[Trial], metric: str) -> list[dict]:
    """One row per configuration (seeds pooled): mean and std of the metric, best first."""
    on_disk = runs_by_hash(directory)
    index = read_index(directory)["trials"]
    keys = [k for k in sweep.keys if k != "train.seed" or not sweep.seeds]
    rows: dict[str, dict] = {}
    for t in trials:
        params = {k: t.params[k] for k in keys}
        row = rows.setdefault(json.dumps(params, sort_keys=True), {
            "params": params, "values": [], "test": [], "seconds": [], "trials": 0, "failed": 0})
        row["trials"] += 1
        summary = completed_run(on_disk.get(t.hash, []))
        if summary is None:
            row["failed"] += trial_state(on_disk.get(t.hash, []), index.get(t.hash)) == "failed"
            continue
        value = metric_of(summary, metric)
        if value is not None:
            row["values"].append(value)
            row["test"].append(metric_of(summary, "test_accuracy"))
            row["seconds"].append(summary.get("train_seconds") or 0.0)
    out = []
    for row in rows.values():
        v = row["values"]
        row["mean"] = statistics.fmean(v) if v else None
        row["std"] = statistics.stdev(v) if len(v) > 1 else None
        tests = [x for x in row["test"] if x is not None]
        row["test_accuracy"] = statistics.fmean(tests) if tests else None
        row["train_seconds"] = statistics.fmean(row["seconds"]) if row["seconds"] else None
        out.append(row)
    higher = METRICS[metric][1]
    out.sort(key=lambda r: (r["mean"] is None, -(r["mean"] or 0) if higher else (r["mean"] or 0)))
    return out


def _num(x: float | None, metric: str) -> str:
    if x is None:
        return ""
    return f"{100 * x:.2f}" if metric.endswith("accuracy") else f"{x:.4g}"


def _seconds(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _mean_std(row: dict, metric: str) -> str:
    if row["mean"] is None:
        return "failed" if row["failed"] else "not run"
    std = f" ± {_num(row['std'], metric)}" if row["std"] is not None else ""
    return _num(row["mean"], metric) + std


def _unit(metric: str) -> str:
    return f"{metric} (%)" if metric.endswith("accuracy") else metric


def write_report(sweep: Sweep, directory: Path, rows: list[dict], metric: str) -> list[Path]:
    """summary.csv, summary.md and one plot per swept key, written into the sweep directory."""
    keys = list(rows[0]["params"]) if rows else []
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys + [f"{metric}_mean", f"{metric}_std", "runs", "trials", "failed",
                            "test_accuracy_mean", "train_seconds_mean"])
    for r in rows:
        writer.writerow([format_value(r["params"][k]) for k in keys] + [
            "" if r[c] is None else r[c] for c in ("mean", "std")] + [
            len(r["values"]), r["trials"], r["failed"]] + [
            "" if r[c] is None else r[c] for c in ("test_accuracy", "train_seconds")])
    runs.atomic_write_text(directory / "summary.csv", buf.getvalue())

    head = keys + [_unit(metric) + " mean ± std", "runs", "test acc (%)", "train s"]
    lines = [f"# Sweep {sweep.name}", "",
             f"{len(rows)} configurations, sorted by {metric} "
             f"({'higher' if METRICS[metric][1] else 'lower'} is better); mean ± std over seeds; "
             "the best in bold.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows):
        cells = [format_value(r["params"][k]) for k in keys] + [
            _mean_std(r, metric), f"{len(r['values'])}/{r['trials']}",
            _num(r["test_accuracy"], "test_accuracy"), _seconds(r["train_seconds"])]
        if i == 0 and r["mean"] is not None:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    runs.atomic_write_text(directory / "summary.md", "\n".join(lines) + "\n")
    return [directory / "summary.csv", directory / "summary.md"] + plot(sweep, directory, rows, metric)


def report_table(sweep: Sweep, rows: list[dict], metric: str) -> Table:
    keys = list(rows[0]["params"]) if rows else []
    table = Table(title=f"sweep {sweep.name}: {metric}, mean ± std over seeds", title_justify="left")
    for key in keys:
        table.add_column(key)
    table.add_column(_unit(metric), justify="right")
    table.add_column("runs", justify="right")
    table.add_column("test acc (%)", justify="right")
    table.add_column("train s", justify="right")
    for i, r in enumerate(rows):
        table.add_row(*[format_value(r["params"][k]) for k in keys], _mean_std(r, metric),
                      f"{len(r['values'])}/{r['trials']}", _num(r["test_accuracy"], "test_accuracy"),
                      _seconds(r["train_seconds"]),
                      style="bold green" if i == 0 and r["mean"] is not None else None)
    return table


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot(sweep: Sweep, directory: Path, rows: list[dict], metric: str) -> list[Path]:
    """The metric against each swept key: one line per value of the other keys, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["mean"] is not None]
    keys = list(rows[0]["params"]) if rows else []
    scale = 100 if metric.endswith("accuracy") else 1
    paths = []
    for key in keys:
        xs = []
        for r in rows:
            if r["params"][key] not in xs:
                xs.append(r["params"][key])
        numeric = _numeric(xs)
        if numeric:
            xs.sort()
        others = [k for k in keys if k != key]
        lines: dict[str, list[dict]] = {}
        for r in rows:
            label = ", ".join(f"{k.split('.')[-1]}={format_value(r['params'][k])}" for k in others)
            lines.setdefault(label, []).append(r)
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for label, members in lines.items():
            members.sort(key=lambda r: xs.index(r["params"][key]))
            x = [r["params"][key] if numeric else xs.index(r["params"][key]) for r in members]
            ax.errorbar(x, [scale * r["mean"] for r in members],
                        yerr=[scale * (r["std"] or 0.0) for r in members],
                        marker="o", capsize=3, label=label or None)
        if numeric and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(xs)), [format_value(v) for v in xs])
        ax.set_xlabel(key)
        ax.set_ylabel(_unit(metric))
        ax.set_title(f"sweep {sweep.name}: {metric} vs {key}")
        ax.grid(True, alpha=0.3)
        if len(lines) > 1:
            ax.legend(title=", ".join(others), fontsize="small")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        plt.close(fig)
        path = directory / f"plot-{runs.slug(key)}-{metric}.png"  # one per metric: none overwritten
        runs.atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def trial_table(sweep: Sweep, directory: Path, trials: list[Trial]) -> Table:
    """What --dry-run shows: each trial's overrides, hash, and whether it is done."""
    on_disk = runs_by_hash(directory)
    index = read_index(directory)["trials"]
    table = Table(title=f"sweep {sweep.name}: {len(trials)} trials in {directory}", title_justify="left")
    for col in ("#", "trial", "overrides", "hash", "state"):
        table.add_column(col, overflow="fold")
    for i, t in enumerate(trials, 1):
        state = trial_state(on_disk.get(t.hash, []), index.get(t.hash))
        style = {"done": "green", "failed": "red", "interrupted": "yellow"}.get(state)
        table.add_row(str(i), t.name, " ".join(t.overrides), t.hash, state, style=style)
    return table


def sweep_command(sweep: Sweep, jobs: int, dry_run: bool, report_only: bool, fail_fast: bool,
                  metric: str | None, out: Console) -> str | None:
    """The sweep command: show the trials, or run them and report; say what did not complete."""
    directory, trials = build_trials(sweep)
    metric = metric or DEFAULT_METRIC[trials[0].cfg.task]
    if dry_run:
        out.print(trial_table(sweep, directory, trials))
        out.print("Each trial is the command:")
        for t in trials:
            out.print("  " + shlex.join(train_command(sweep, t)), markup=False)
        return None
    counts = None if report_only else run_sweep(sweep, directory, trials, jobs, fail_fast,
                                                progress_for(out))
    rows = summarize(sweep, directory, trials, metric)
    if any(r["mean"] is not None for r in rows):
        out.print(report_table(sweep, rows, metric))
        files = write_report(sweep, directory, rows, metric)
        out.print(f"wrote {', '.join(str(p) for p in files)}", markup=False)
    else:
        out.print(f"sweep {sweep.name}: no completed trial yet, so no summary.")
    if counts is None:
        return None
    if counts["ran"]:
        overhead = (counts["seconds"] * counts["jobs"] - counts["trial_seconds"]) / counts["ran"]
        out.print(f"{counts['ran']} trials in {counts['seconds']:.1f}s: {counts['completed']} "
                  f"completed, {counts['failed']} failed, {counts['interrupted']} interrupted; "
                  f"sweep overhead {overhead:.1f}s per trial beyond its own run")
    else:
        out.print(f"nothing to run: {counts['done_before']} of {counts['total']} trials "
                  "already completed")
    missed = counts["failed"] + counts["interrupted"] + counts["not_run"]
    if missed:
        raise TrialsMissed(f"{missed} of {counts['total']} trials did not complete; see {directory}/sweep.json "
            f"and the logs in {directory}/logs. Running the same command again re-runs them.")
    return None
