"""Reading runs: find run directories, read their summary, config and records into rows, select and sort them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from .. import metrics, rundir, tasks
from ..config import covers, flatten, unread_keys
from ..errors import RunError, did_you_mean

# keys every run has but that are not hyperparameters
NOT_PARAMS = ("name", "runs_dir", "model.kind")


def resolve_run(arg: str | Path, runs_dir: str | Path = "runs") -> Path:
    """A run directory given as a path, or by its name inside runs/."""
    path = Path(arg)
    if not path.exists() and not path.is_absolute() and (Path(runs_dir) / path).is_dir():
        path = Path(runs_dir) / path
    if not path.is_dir():
        raise RunError(f"{arg}: no such run directory. Give the path of a run made by "
                       "'mnistlab train'; 'mnistlab runs' lists them.")
    if not _is_run(path):
        raise RunError(f"{path}: is not a run directory (it has no summary.json). Give the path "
                       "of a run made by 'mnistlab train'; 'mnistlab runs' lists them.")
    return path


def _read_mapping(path: Path, parse) -> tuple[dict, str | None]:
    """A JSON or YAML file holding a mapping, or {} and a short reason why it cannot be used."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return {}, f"{path.name} is missing"
    except UnicodeDecodeError:
        return {}, f"{path.name} is binary, not text"
    except OSError as e:
        return {}, f"{path.name} cannot be read ({e.strerror or type(e).__name__})"
    try:
        data = parse(text)
    except (ValueError, RecursionError, yaml.YAMLError):
        return {}, f"{path.name} is truncated or not valid {path.suffix[1:].upper()}"
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        return {}, f"{path.name} is {what}"
    return data, None


def model_name(config: dict) -> str | None:
    """The model column: model.kind, or the task's name for tasks that have no model section."""
    return task_label(flatten(config))[0]


def read_run(path: Path) -> dict:
    """Summary, flat config, status and metrics of one run directory; never raises.

    A run whose summary.json or config.yaml cannot be used has status 'damaged' and a 'problem'."""
    path = Path(path)
    summary, problem = _read_mapping(path / "summary.json", json.loads)
    config, config_problem = _read_mapping(path / "config.yaml", yaml.safe_load)
    problem = problem or config_problem
    status = summary.get("status")
    if not problem and not isinstance(status, str):
        problem = "summary.json has no status"
    if not problem:
        try:
            status = rundir.run_status(summary)
        except (TypeError, ValueError, OverflowError):
            problem = "summary.json has an invalid pid"
    started = summary.get("started")
    if not isinstance(started, str):  # damaged: the time in the directory's name
        stamp = re.match(r"(\d{4})(\d\d)(\d\d)-(\d\d)(\d\d)(\d\d)", path.name)
        started = "{}-{}-{}T{}:{}:{}".format(*stamp.groups()) if stamp else None
    task = config.get("task") or summary.get("task") or tasks.DEFAULT
    row = {"dir": path, "run": path.name, "config": flatten(config), "summary": summary,
           "task": task if isinstance(task, str) else "?", "model": model_name(config),
           "started": started,
           "status": "damaged" if problem else status, "problem": problem}
    row.update({name: metrics.value(summary, name) for name in metrics.METRICS})
    return row


def load_run(path: Path) -> dict:
    """read_run of a run that compare or plot needs whole: a damaged one is a RunError."""
    row = read_run(path)
    if row["problem"]:
        raise RunError(f"{path}: {row['problem']}, so the run is damaged and cannot be shown. "
                       "Leave it out ('mnistlab runs' lists it as damaged), put back the file from "
                       "a copy if you have one, or delete the run directory.")
    return row


def _is_run(path: Path) -> bool:
    """A directory train wrote: it has a summary.json, or a config.yaml beside its log or checkpoints."""
    return (path / "summary.json").exists() or ((path / "config.yaml").exists() and (
        (path / "metrics.jsonl").exists() or (path / "checkpoints").is_dir()))


def find_runs(runs_dir: Path) -> list[dict]:
    """Every run under runs_dir (a run directory itself counts), damaged ones too, oldest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise RunError(f"{runs_dir}: no such directory. Give the directory that holds your runs "
                       "(runs_dir in the config, 'runs' by default).")
    found = {p.parent for name in ("summary.json", "config.yaml") for p in runs_dir.rglob(name)}
    out = [read_run(p) for p in sorted(found) if _is_run(p)]
    out.sort(key=lambda r: (r["started"] or "", r["run"]))
    return out


def runs_of(args: list[str], runs_dir: str | Path = "runs",
            folders: bool = False) -> tuple[list[Path], list[str]]:
    """The run directories among args (as a shell glob gives them), and notes on what was skipped.

    Files and folders that are not runs (a sweep's logs/ or summary.csv) are skipped when other
    arguments are runs; a path that does not exist is an error (a typo). folders: a folder that
    holds runs (runs/) stands for every run beneath it."""
    dirs, skipped = [], []
    for arg in args:
        path = Path(arg)
        if is_sweep(path):  # a sweep's folder stands for its trials
            dirs += [p for p in sorted(path.iterdir()) if p.is_dir() and _is_run(p)]
            continue
        if folders and path.is_dir() and not _is_run(path) and (found := find_runs(path)):
            dirs += [r["dir"] for r in found]
            continue
        if len(args) > 1 and path.exists() and not (path.is_dir() and _is_run(path)):
            skipped.append(f"skipped {arg}: not a run directory")
        else:
            dirs.append(resolve_run(arg, runs_dir))
    if not dirs:
        raise RunError(f"none of {', '.join(args)} is a run directory. Give run directories made "
                       "by 'mnistlab train' (e.g. runs/SWEEP/*/); 'mnistlab runs' lists them.")
    return dirs, skipped


def reads(row: dict, key: str) -> bool:
    """Whether the run reads the setting: not one its task, model kind or optimizer ignores."""
    if "unread" not in row:
        row["unread"] = unread_keys(row["config"])
    return not covers(row["unread"], key)


def is_sweep(path: Path) -> bool:
    """A folder made by mnistlab sweep: its sweep.yaml or sweep.json, and not itself a run."""
    path = Path(path)
    return path.is_dir() and not _is_run(path) and (
        (path / "sweep.yaml").is_file() or (path / "sweep.json").is_file())


def varying_keys(rows: list[dict], kind: bool = False) -> list[str]:
    """Config keys whose values differ among the runs that read them, in config order (damaged
    runs without a config are left out of the comparison); kind: model.kind too, first."""
    rows = [r for r in rows if r["config"]]
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r["config"]))
    out = [k for k in keys if k not in NOT_PARAMS and len(
        {json.dumps(r["config"].get(k), sort_keys=True) for r in rows if reads(r, k)}) > 1]
    if kind and len({r["config"].get("model.kind") for r in rows if reads(r, "model.kind")}) > 1:
        out.insert(0, "model.kind")
    return out


def swept_keys(directory: Path) -> list[str]:
    """The keys a sweep folder's sweep.yaml sweeps (none for a folder that is not a sweep's)."""
    definition, problem = _read_mapping(Path(directory) / "sweep.yaml", yaml.safe_load)
    if problem:
        return []
    keys = [k for k in (definition.get("grid") or {}) if isinstance(k, str)]
    keys += [k for k in (definition.get("random") or {}) if isinstance(k, str) and "." in k]
    return keys + ["train.seed"] * bool(definition.get("seeds"))


def all_keys(rows: list[dict]) -> list[str]:
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(k for k in r["config"] if k not in NOT_PARAMS))
    return list(keys)


ROW_KEYS = ("run", "started", "status", "problem", "task", "model", *metrics.METRICS)


def value_of(row: dict, key: str):
    return row[key] if key in ROW_KEYS else row["config"].get(key)


def _known(rows: list[dict]) -> list[str]:
    return [*ROW_KEYS, "model.kind", *all_keys(rows)]


def _unknown_key(key: str, rows: list[dict], what: str) -> RunError:
    known = _known(rows)
    hint = did_you_mean(key, known, "use a column such as test_accuracy, status, started, or a "
                        "config key such as optim.lr")
    return RunError(f"{what}: {key!r} is not a column or config key of these runs; {hint}")


def select(rows: list[dict], filters: list[str], statuses: list[str]) -> list[dict]:
    """Rows matching every key=value filter and one of the statuses (all when none given)."""
    for text in filters:
        key, sep, want = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RunError(f"--filter {text!r}: a filter is key=value, e.g. model.kind=conv")
        if rows and key not in _known(rows):
            raise _unknown_key(key, rows, "--filter")
        try:
            parsed = yaml.safe_load(want) if want.strip() else None
        except yaml.YAMLError:
            parsed = want
        rows = [r for r in rows if value_of(r, key) == parsed or str(value_of(r, key)) == want]
    if statuses:
        rows = [r for r in rows if r["status"] in statuses]
    return rows


def sort_rows(rows: list[dict], key: str, reverse: bool = False) -> list[dict]:
    """Metrics best first, everything else ascending; runs without the value go last."""
    if rows and key not in _known(rows):
        raise _unknown_key(key, rows, "--sort")
    high_first = key in metrics.METRICS and metrics.METRICS[key].higher is True
    present = [r for r in rows if value_of(r, key) is not None]
    absent = [r for r in rows if value_of(r, key) is None]
    present.sort(key=lambda r: _sortable(value_of(r, key)), reverse=high_first != reverse)
    return present + absent


def _sortable(v):
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def records(run_dir: Path, event: str) -> list[dict]:
    """The run's metrics.jsonl records of one event that have a numeric epoch, step and loss.

    Read by rundir.read_metrics, which skips lines that a kill cut short or that were damaged."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [rec for rec in rundir.read_metrics(path) if rec.get("event") == event
            and all(_number(rec.get(k)) for k in ("epoch", "step", "loss"))]


def epoch_curves(run_dir: Path) -> dict[str, list[dict]]:
    """Per-epoch train and val records of a run (the last record of an epoch wins, for resumed runs)."""
    out: dict[str, dict[int, dict]] = {"train": {}, "val": {}}
    for rec in records(run_dir, "epoch"):
        if rec.get("split") in out:
            out[rec["split"]][rec["epoch"]] = rec
    return {split: [recs[e] for e in sorted(recs)] for split, recs in out.items()}


def task_label(config: dict) -> tuple[str, str]:
    """(model, data) of a run from its flat config: the task's name where it reads no such section."""
    task = config.get("task") or tasks.DEFAULT
    unread = tasks.get(task).unread
    return tuple(task if section in unread else str(config.get(f"{section}.{key}"))
                 for section, key in (("model", "kind"), ("data", "name")))

