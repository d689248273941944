"""What a sweep is: parsing, grid and random expansion, trial names and configs (pure)."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import files, rundir
from ..config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_file_dict,
    config_hash,
    load_config,
    parse_override,
    read_yaml,
)
from ..errors import did_you_mean
from .executors import check_options
from .plan import read_plan

SWEEP_KEYS = ("name", "base", "grid", "seeds", "random", "tpe", "overrides", "executor", "prune")
RANGES = ("uniform", "loguniform", "int")  # the ranges of random: and tpe:, each {kind: [lo, hi]}
MAX_TRIALS = 10_000  # a larger sweep is refused unless --max-trials raises the limit

@dataclass
class Sweep:
    """What to run: a base config, overrides for every trial, and the points to try."""

    name: str
    base: Path
    overrides: list[str] = field(default_factory=list)
    grid: dict[str, list] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    random: dict | None = None  # {"n": int, "seed": int, "space": {key: list | {kind: [lo, hi]}}}
    executor: dict = field(default_factory=dict)  # the executor: block, {engine: {setting: value}}
    prune: dict | None = None  # the prune: block as written (min_epochs, eta, metric); see prune.py
    typed: set[str] = field(default_factory=set)  # keys given on the command line (--grid, --seeds,
    # key=value), as errors name where a key came from
    # adaptive search, {"n": int, "seed": int, "startup": int, "space": {key: list | {kind: [lo, hi]}}};
    # its points are proposed while the sweep runs (tpe.py), none up front
    tpe: dict | None = None

    @property
    def keys(self) -> list[str]:
        """The swept keys, train.seed last when seeds are replicates."""
        keys = (list(self.grid) + list((self.random or {}).get("space", {}))
                + list((self.tpe or {}).get("space", {})))
        return keys + (["train.seed"] if self.seeds else [])


@dataclass
class Trial:
    name: str
    params: dict[str, Any]  # swept key -> value as the resolved config holds it
    overrides: list[str]  # the trial's own overrides, after the sweep's
    cfg: Config
    hash: str
    run_dir: Path  # its own, named by trial name and config hash: the same on every run of the sweep


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
    """A sweep file, a sweep directory (its sweep.yaml), or a plain config with --grid/--seeds;
    the command line adds to the file."""
    path = Path(path)
    if files.is_dir(path):
        if not (path / "sweep.yaml").is_file():
            raise ConfigError([f"{path}: is a directory without a sweep.yaml, so not a sweep made by "
                               "mnistlab sweep; give a sweep file, a config with --grid, or a "
                               "sweep directory such as runs/sweep-lr"])
        path = path / "sweep.yaml"
    raw = read_yaml(path)
    problems: list[str] = []
    if is_sweep_file(raw):
        sweep = _sweep_from_file(path, raw, problems)
    elif grid or seeds:
        sweep = Sweep(name=path.stem, base=path)  # the swept keys are added to the name below
    else:
        raise ConfigError([f"{path}: is a config, not a sweep file; sweep it with options, e.g. "
                           f"mnistlab sweep {path} --grid optim.lr=0.1,0.01 --seeds 0,1, or write "
                           "a sweep file with base: and grid: (see configs/sweep-lr.yaml)"])
    for text in grid:
        try:
            key, values = parse_grid_option(text)
        except ConfigError as e:
            problems += e.problems
            continue
        if key in sweep.typed:
            problems.append(f"--grid {key}: given twice; give all its values in one --grid, e.g. "
                            f"--grid {key}=V1,V2")
        sweep.grid[key] = values  # the command line wins over the file's grid:
        sweep.typed.add(key)
    if seeds is not None:
        try:
            sweep.seeds = parse_seeds(seeds)
            sweep.typed.add("train.seed")
        except ConfigError as e:
            problems += e.problems
    sweep.overrides += list(overrides)
    for text in overrides:
        sweep.typed.add(text.partition("=")[0].strip())
    if not is_sweep_file(raw) and not name:  # different --grid keys never share a directory
        sweep.name = "-".join([sweep.name] + [k.split(".")[-1] for k in sweep.keys])
    sweep.name = rundir.slug(name or sweep.name)
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
            hint = did_you_mean(key, SWEEP_KEYS, "valid keys: " + ", ".join(SWEEP_KEYS))
            problems.append(f"{path}: {key}: unknown sweep key, {hint}")
    base = Path(str(raw.get("base")))
    if not base.is_absolute():
        base = path.parent / base  # relative to the sweep file, like an include
    if not files.is_file(base):
        problems.append(f"{path}: base: {raw.get('base')} is not a file (looked for {base}); "
                        "give the config the trials start from, relative to the sweep file")
    sweep = Sweep(name=str(raw.get("name") or path.stem), base=base)
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        problems.append(f"{path}: grid: must map dotted keys to lists of values, "
                        "e.g. grid: {optim.lr: [0.1, 0.01]}")
        grid = {}
    for key, values in grid.items():
        if values is not None and not isinstance(values, (list, dict)):
            values = [values]  # one value: a one-point axis, as a scalar is a one-element list
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
    executor = raw.get("executor")
    problems += check_options(executor, f"{path}: executor")
    if isinstance(executor, dict) and not problems:
        sweep.executor = {str(k): dict(v or {}) for k, v in executor.items()}
    if raw.get("random") is not None:
        sweep.random = _random_block(path, raw["random"], problems)
        for key in sweep.random["space"]:
            if key in sweep.grid:
                problems.append(f"{path}: {key} is in both grid: and random:; keep one")
    if raw.get("tpe") is not None:
        sweep.tpe = _tpe_block(path, raw["tpe"], problems)
        for what in ("grid", "random", "seeds"):
            if raw.get(what):
                problems.append(f"{path}: {what}: and tpe: do not combine: tpe: proposes every point "
                                f"of its space itself; move the keys of {what}: into tpe: (a list of "
                                "values or a range), or fixed values into overrides:")
    if raw.get("prune") is not None:
        try:  # checked now, with the other problems; used by the command
            read_plan(raw["prune"], f"{path}: prune")
            sweep.prune = raw["prune"] if isinstance(raw["prune"], dict) else {}
        except ConfigError as e:
            problems += e.problems
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
    out["space"] = _space(where, {k: v for k, v in block.items() if k not in ("n", "seed")}, problems)
    return out


def _space(where: str, block: dict, problems: list[str]) -> dict:
    """The keys to sample (random:, tpe:): each a list of values or one range {kind: [lo, hi]}."""
    space = {}
    for key, spec in block.items():
        if isinstance(spec, list) and spec:
            space[str(key)] = spec
            continue
        one = isinstance(spec, dict) and len(spec) == 1
        kind, bounds = next(iter(spec.items())) if one else (None, None)
        try:
            lo, hi = (float(b) for b in bounds)
            ok = kind in RANGES and lo <= hi
            ok = ok and (kind != "loguniform" or lo > 0)
            ok = ok and (kind != "int" or (lo.is_integer() and hi.is_integer()))
        except (TypeError, ValueError, OverflowError):
            ok = False
        if ok:
            space[str(key)] = {kind: [lo, hi]}
        elif one and kind not in RANGES and isinstance(kind, str):
            hint = did_you_mean(kind, RANGES, "choose uniform, loguniform or int")
            problems.append(f"{where}.{key}: {kind}: unknown range, {hint}; e.g. "
                            "{loguniform: [1e-4, 1e-1]}")
        else:
            problems.append(f"{where}.{key}: give a list of values or one range: "
                            "{uniform: [lo, hi]}, {loguniform: [lo, hi]} (lo > 0) or {int: [lo, hi]}")
    if not space:
        problems.append(f"{where}: name at least one key to sample, "
                        "e.g. optim.lr: {loguniform: [1e-4, 1e-1]}")
    return space


TPE_KEYS = ("n", "seed", "startup")


def _tpe_block(path: Path, block: Any, problems: list[str]) -> dict:
    """tpe: the budget n, the sampler's seed, its random start-up trials, and the space (as random:)."""
    where = f"{path}: tpe"
    out = {"n": 0, "seed": 0, "startup": None, "space": {}}
    if not isinstance(block, dict):
        problems.append(f"{where}: give n: (the trial budget), seed: and the keys to search, e.g. "
                        "tpe: {n: 24, seed: 0, optim.lr: {loguniform: [1e-4, 1e-1]}, "
                        "optim.name: [sgd, adamw]}")
        return out
    for key in ("n", "seed", "startup"):
        value = block.get(key, 0 if key == "seed" else None)
        if value is None and key == "startup":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "n" else 0):
            what = {"n": "the trial budget, a positive integer, e.g. n: 24",
                    "seed": "an integer, the sampler's seed",
                    "startup": "how many trials are drawn at random before TPE models the results, "
                               "an integer of 0 or more"}[key]
            problems.append(f"{where}.{key}: {value!r}: give {what}")
        else:
            out[key] = value
    if out["startup"] is None:  # Optuna's default is 10; small budgets need TPE to start sooner
        out["startup"] = min(10, max(1, out["n"] // 3))
    space = {}
    for key, spec in block.items():
        if key in TPE_KEYS:
            continue
        if "." not in str(key):  # a sweep key is dotted: a bare word is most likely a typo
            hint = did_you_mean(key, TPE_KEYS, "")
            if hint:
                problems.append(f"{where}.{key}: unknown setting, {hint} (the settings are "
                                f"{', '.join(TPE_KEYS)}; the searched keys are dotted, e.g. optim.lr)")
                continue
        space[key] = spec
    out["space"] = _space(where, space, problems)
    for key, spec in out["space"].items():
        texts = [format_value(v) for v in spec] if isinstance(spec, list) else []
        if len(set(texts)) < len(texts):
            problems.append(f"{where}.{key}: a value is listed twice; list each choice once")
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


def count_points(sweep: Sweep) -> int:
    """How many points expand() makes, without making them (a tpe: sweep: its budget)."""
    if sweep.tpe:
        return sweep.tpe["n"]
    n = math.prod(len(v) for v in sweep.grid.values())
    return n * (sweep.random["n"] if sweep.random else 1) * (len(sweep.seeds) or 1)


def expand(sweep: Sweep, limit: int = MAX_TRIALS) -> list[dict]:
    """Every point: the grid's cartesian product, times the random points, times the seeds; none for tpe."""
    n = count_points(sweep)
    if n > limit:
        raise ConfigError([f"the sweep has {n:,} trials, more than the limit of {limit:,}; "
                           "sweep fewer values, or raise the limit with --max-trials "
                           f"{n} if you mean it"])
    if sweep.tpe:  # proposed one by one as results come in (tpe.py), none known up front
        return []
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
    return rundir.slug("_".join(parts))[:100] if parts else default


def sweep_dir(sweep: Sweep) -> Path:
    """runs_dir of the base config (with the sweep's overrides), then the sweep's name."""
    return Path(load_config(sweep.base, sweep.overrides).runs_dir) / sweep.name


def build_trials(sweep: Sweep, limit: int = MAX_TRIALS) -> tuple[Path, list[Trial]]:
    """Every trial's config, by the train command's own load_config; all problems raised together."""
    points = expand(sweep, limit)
    directory = sweep_dir(sweep)
    return directory, make_trials(sweep, points, directory)


def make_trials(sweep: Sweep, points: list[dict], directory: Path,
                skip_invalid: bool = False) -> list[Trial]:
    """The trials of these points (one per distinct config hash); problems raised together, or with
    skip_invalid, the points that have them left out."""
    # the base file and the sweep's overrides are read once; each point's values are set on a copy
    base, keys = apply_overrides(read_yaml(sweep.base), sweep.overrides)
    # "(from the command line)" in an error only for the keys typed there, not those of the file
    origins = {key: "the command line" if key in sweep.typed else "the sweep file"
               for key in keys | set(sweep.keys)}
    trials, seen, problems = [], set(), {}
    for point in points:
        name = _trial_name(point, sweep.name)
        own = [f"{key}={format_value(v)}" for key, v in point.items()]
        try:
            raw = _with_values(base, {**point, "runs_dir": str(directory), "name": name})
            if raw is None:  # a key that names a value as a section: load_config says so
                load_config(sweep.base, sweep.overrides + own)
            cfg = config_from_file_dict(raw, origins, sweep.base)
        except ConfigError as e:
            for p in e.problems:
                problems.setdefault(p, []).append(name)
            continue
        h = config_hash(cfg)
        if h in seen:  # two points resolving to one config (e.g. channels of a dense model) run once
            continue
        seen.add(h)
        trials.append(Trial(name, {k: _value(cfg, k) for k in point}, own, cfg, h,
                            directory / f"{name}-{h[:8]}"))
    if problems and not skip_invalid:
        raise ConfigError([p if len(names) == len(points) else
                           f"{p} (trial{'s' if len(names) > 1 else ''} {', '.join(names[:5])}"
                           f"{', ...' if len(names) > 5 else ''})" for p, names in problems.items()])
    return trials


def _value(cfg: Config, key: str):
    """The resolved value of a dotted key, e.g. optim.lr, as the config holds it."""
    value = cfg
    for part in key.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)  # model.args.c1
    return value


def _with_values(raw: dict, values: dict) -> dict | None:
    """A deep copy of raw with each dotted key set to its value; None if a key cannot be set."""
    out = json.loads(json.dumps(raw))
    for key, value in values.items():
        node, parts = out, key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                return None
            node = child
        node[parts[-1]] = value
    return out


PINNED = "trial.yaml"  # the trial's config as the sweep validated it, written when it is submitted


def train_command(sweep: Sweep, trial: Trial, until: int | None = None,
                  executed: bool = False) -> list[str]:
    """The train command of this trial: as a user types it (the base file and the overrides, paths
    relative to here), or, executed, as an executor runs it: this Python on the trial's pinned
    config (run_dir/trial.yaml, absolute paths: any cwd, any host), refusing any other config
    (--config-hash). With until (a rung of a pruned sweep) the trial stops after that epoch."""
    rung = ["--until-epoch", str(until)] if until is not None and until < trial.cfg.train.epochs else []
    if executed:
        run_dir = trial.run_dir.resolve()
        return [sys.executable, "-m", "mnistlab", "train", "--quiet", str(run_dir / PINNED),
                "--run-dir", str(run_dir), "--config-hash", trial.hash, *rung]
    return (["mnistlab", "train", _shown_path(sweep.base)] + sweep.overrides + trial.overrides
            + [f"runs_dir={trial.cfg.runs_dir}", f"name={trial.name}",
               "--run-dir", _shown_path(trial.run_dir)] + rung)


def _shown_path(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)
