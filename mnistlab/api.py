"""The Python API for notebooks: train, load_runs and evaluate, the functions the CLI commands call."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load(config, overrides: list[str] = (), resume: str | Path | None = None):
    """The resolved config of a YAML file or a mapping with key=value overrides, or the one a
    run at resume was started with."""
    from .config import apply_overrides, config_from_dict, load_config
    from .training import resume_config

    if resume is not None:
        return resume_config(resume)
    if isinstance(config, dict):
        raw, keys = apply_overrides(config, list(overrides))
        return config_from_dict(raw, keys)
    return load_config(config, list(overrides))


def train(config, overrides: list[str] = (), quiet: bool = True,
          resume: str | Path | None = None, *, cfg=None, reporter=None, run_dir=None,
          until_epoch: int | None = None, trust_run_code: bool = False) -> dict:
    """Train a config (a YAML file or a mapping) with key=value overrides; return the run's summary.

    The summary's run_dir is the run directory. quiet=False prints a line per epoch.
    cfg: the config load() already resolved; reporter: what to show (the CLI's live display);
    run_dir, until_epoch, trust_run_code: as the train command's options.
    """
    from . import display
    from .training import fit

    cfg = cfg or load(config, overrides, resume)
    source = None if resume is not None else {
        "config": None if isinstance(config, dict) or config is None else str(config),
        "overrides": list(overrides)}
    return fit(cfg, reporter or display.Plain(quiet=quiet), resume=None if resume is None else Path(resume),
               source=source, run_dir=run_dir, until_epoch=until_epoch, trust_run_code=trust_run_code)


def load_runs(runs_dir: str | Path = "runs") -> Any:
    """Every run under runs_dir as one row each: its metrics, status and settings.

    A pandas DataFrame when pandas is installed, else a list of dicts.
    """
    from . import metrics, report

    rows = []
    for r in report.find_runs(Path(runs_dir)):
        summary = r["summary"]
        rows.append({"run": r["run"], "run_dir": str(r["dir"]), "status": r["status"],
                     "task": summary.get("task"), "started": summary.get("started"),
                     **{name: metrics.value(summary, name) for name in metrics.METRICS},
                     **r["config"]})
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
