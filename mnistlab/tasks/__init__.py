"""What is learned, one file per task, and the registry the rest of the code reads.

A task's class is light: its columns, figure, checks, unread settings and default metric are read
without importing torch; building it (build_task) loads its data and builds its model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import Data, Task
from .classify import Classify
from .linreg import Linreg
from .quadratic import Quadratic

if TYPE_CHECKING:
    from ..config import Config

TASKS: dict[str, type[Task]] = {t.name: t for t in (Classify, Quadratic, Linreg)}
DEFAULT = Classify.name  # the task of a config that names none, and of runs that recorded none

__all__ = ["DEFAULT", "TASKS", "Data", "Task", "build_task", "get"]


def get(name: str | None) -> type[Task]:
    """The task class of a name; runs that recorded no task are classifiers."""
    return TASKS.get(name if isinstance(name, str) and name else DEFAULT, TASKS[DEFAULT])


def build_task(cfg: Config, model_source: Path | None = None, reference: Path | None = None) -> Task:
    """The task of a config, with its data loaded and its model built.

    model_source, reference: of a model.kind=module network, a run's trusted copy of its code, and
    the run's copy against which an edit of comments or whitespace only is accepted (run_code).
    """
    return TASKS[cfg.task](cfg, model_source, reference)
