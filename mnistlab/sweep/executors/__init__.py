"""The engines that run trials, by name; each is imported only when asked for."""

from __future__ import annotations

from ...errors import ExecutorUnavailable, did_you_mean
from .base import Executor, TrialSpec
from .options import OPTIONS, VALUES

EXTRAS = {"slurm": "submitit", "ray": "ray"}


def _local():
    from .local import LocalExecutor
    return LocalExecutor


def _slurm():
    from .slurm import SlurmExecutor
    return SlurmExecutor


def _ray():
    from .ray import RayExecutor
    return RayExecutor


EXECUTORS = {"local": _local, "slurm": _slurm, "ray": _ray}


def executor_class(name: str):
    """The class of an engine; ExecutorUnavailable when this install of mnistlab lacks it."""
    try:
        return EXECUTORS[name]()
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith(__name__):
            raise ExecutorUnavailable(
                f"--executor {name}: this version of mnistlab has no {name} executor "
                f"({e.name} is missing); update mnistlab, or run the sweep with --executor local."
            ) from None
        raise ExecutorUnavailable(
            f"--executor {name}: needs the Python package {e.name}, which is not installed; "
            f"install it with pip install -e \".[{name}]\" (or pip install {EXTRAS[name]}), "
            "or run the sweep with --executor local.") from None


def create_executor(name: str, options: dict, jobs: int) -> Executor:
    return executor_class(name)(options, jobs)


def check_options(block, where: str) -> list[str]:
    """Problems of a sweep file's executor: block, each naming its key (did you mean ...), and
    of its values (checked here, not only when the engine starts, so --dry-run checks them)."""
    if block is None:
        return []
    if not isinstance(block, dict):
        return [f"{where}: give one mapping per engine, e.g. executor: {{slurm: {{partition: cpu, "
                "time: 60}}}}"]
    problems = []
    for engine, options in block.items():
        if engine not in OPTIONS:
            hint = did_you_mean(engine, OPTIONS, "choose one of: " + ", ".join(OPTIONS), 0.5)
            problems.append(f"{where}.{engine}: unknown executor, {hint}")
            continue
        if options is None:
            continue
        if not isinstance(options, dict):
            problems.append(f"{where}.{engine}: give a mapping of settings, e.g. "
                            f"{engine}: {{{(OPTIONS[engine] or ('...',))[0]}: ...}}")
            continue
        for key in options:
            if key not in OPTIONS[engine]:
                hint = did_you_mean(key, OPTIONS[engine],
                                    "valid keys: " + (", ".join(OPTIONS[engine]) or "none"))
                problems.append(f"{where}.{engine}.{key}: unknown setting, {hint}")
        if engine in VALUES:
            problems += VALUES[engine](options, f"{where}.{engine}")
    return problems


__all__ = ["EXECUTORS", "OPTIONS", "Executor", "TrialSpec", "check_options", "create_executor",
           "executor_class"]
