"""The Python API for notebooks: train, load_runs and evaluate, the functions the CLI commands call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def override_list(overrides) -> list[str]:
    """key=value strings from a list of them or a mapping {"optim.lr": 0.01} (values as JSON,
    which YAML reads back unchanged: 0.01, "adam", [16, 32], true, null)."""
    if isinstance(overrides, dict):
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):  # one override, not its characters
        return [overrides]
    return list(overrides or ())


def load(config, overrides: list[str] | dict = (), resume: str | Path | None = None):
    """The resolved config of a YAML file or a mapping with overrides (key=value strings or a
    dict), or the one a run at resume was started with."""
    from .config import (
        apply_overrides,
        beneath,
        config_from_dict,
        load_config,
        user_defaults,
    )
    from .training import resume_config

    overrides = override_list(overrides)

    if resume is not None:
        return resume_config(resume)
    if isinstance(config, dict):  # the user's defaults beneath it, as beneath a file
        raw, keys = apply_overrides(beneath(user_defaults(), config), list(overrides))
        return config_from_dict(raw, keys)
    return load_config(config, list(overrides))


def defaults_in(config, overrides: list[str] | dict = ()) -> tuple[list[str], list[str]]:
    """The user's defaults a config (a YAML file or a mapping) with overrides leaves to the defaults
    file, and those it sets itself, as key=value."""
    from .config import apply_overrides, defaults_used, read_yaml

    raw = config if isinstance(config, dict) else read_yaml(config)
    return defaults_used(apply_overrides(raw, override_list(overrides))[0])


def train(config, overrides: list[str] | dict = (), quiet: bool = True,
          resume: str | Path | None = None, *, cfg=None, reporter=None, run_dir=None,
          until_epoch: int | None = None, trust_run_code: bool = False):
    """Train a config (a YAML file or a mapping) with overrides; return the run's TrainResult.

    overrides: key=value strings (["optim.lr=0.01"]) or a dict ({"optim.lr": 0.01}).
    Quiet by default: only the final summary line is printed; quiet=False prints a line per epoch.
    The result is the run's summary as a dict (result["run_dir"], result["final"]) with
    result.model, the trained model (torch: the nn.Module; keras: the keras.Model; tensorflow:
    a network's Keras model, else None; jax: the dict of parameter arrays), and result.history,
    the per-epoch metrics as Keras's History.history ({"loss": [...], "val_loss": [...], ...}).
    cfg: the config load() already resolved; reporter: what to show (the CLI's live display);
    run_dir, until_epoch, trust_run_code: as the train command's options.
    """
    from . import display
    from .training import fit

    overrides = override_list(overrides)
    cfg = cfg or load(config, overrides, resume)
    source = None if resume is not None else {
        "config": None if isinstance(config, dict) or config is None else str(config),
        "overrides": list(overrides)}
    return fit(cfg, reporter or display.Plain(quiet=quiet), resume=None if resume is None else Path(resume),
               source=source, run_dir=run_dir, until_epoch=until_epoch, trust_run_code=trust_run_code)


def cell(value: Any) -> Any:
    """A value pandas can group by: lists (and lists of lists) become tuples, mappings tuples of
    (key, value) pairs; numbers and strings stay as they are."""
    if isinstance(value, (list, tuple)):
        return tuple(cell(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, cell(v)) for k, v in value.items())
    return value


def load_runs(runs_dir: str | Path = "runs") -> Any:
    """Every run under runs_dir as one row each: its metrics, status and settings.

    A pandas DataFrame when pandas is installed, else a list of dicts. complete is True only for
    a run that completed its schedule: a failed, interrupted or paused run's metrics are those of
    its last epoch, so filter on it before a mean (runs[runs.complete]). List values (model.channels)
    are tuples, which pandas can group by.
    """
    from . import metrics, report

    rows = []
    for r in report.find_runs(Path(runs_dir)):
        summary = r["summary"]
        rows.append({"run": r["run"], "run_dir": str(r["dir"]), "status": r["status"],
                     "complete": r["status"] == "completed",
                     "epochs_completed": summary.get("epochs_completed"),
                     "task": summary.get("task"), "started": summary.get("started"),
                     **{name: metrics.value(summary, name) for name in metrics.METRICS},
                     **{key: cell(value) for key, value in r["config"].items()}})
    try:
        import pandas
    except ImportError:
        return rows
    return pandas.DataFrame(rows)


def evaluate(run: str | Path | dict, split: str = "test", ckpt: str | None = None,
             overrides: list[str] = (), save: bool = True) -> dict:
    """Score a run (a directory, a checkpoint file or the summary train returned) on one split."""
    from .evaluation import evaluate_run

    target = run["run_dir"] if isinstance(run, dict) else run
    return evaluate_run(Path(target), ckpt, split, list(overrides), save)
