"""What is learned, one file per task, and the registry the rest of the code reads."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from .base import Data, Task
from .classify import Classify
from .linreg import Linreg
from .quadratic import Quadratic

TASKS: dict[str, type[Task]] = {"classify": Classify, "quadratic": Quadratic, "linreg": Linreg}

__all__ = ["TASKS", "Data", "Task", "build_task", "get"]


def get(name: str | None) -> type[Task]:
    """The task class of a name; runs that recorded no task are classifiers."""
    return TASKS[name or "classify"]


def build_task(cfg: Config, model_source: Path | None = None) -> Task:
    """The task of a config, with its data loaded and its model built.

    model_source: a run's trusted copy of the code of a model.kind=module network.
    """
    return TASKS[cfg.task](cfg, model_source)
