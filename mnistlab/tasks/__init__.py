"""What is learned, one file per task, and the registry the rest of the code reads."""

from __future__ import annotations

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


def build_task(cfg: Config) -> Task:
    """The task of a config, with its data loaded and its model built."""
    return TASKS[cfg.task](cfg)
