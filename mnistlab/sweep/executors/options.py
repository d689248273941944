"""The values of a sweep file's executor: block, checked without importing the engines' packages,
so that --dry-run checks them too."""

from __future__ import annotations

import math
import re

# the keys of each engine in a sweep file's executor: block
OPTIONS = {
    "local": ("warm",),
    "slurm": ("partition", "time", "cpus_per_trial", "mem_gb", "gpus_per_trial", "account", "qos",
              "sbatch", "trials_per_job"),
    "ray": ("address", "cpus_per_trial", "gpus_per_trial", "connect_timeout", "warm"),
}

# sbatch flags that submitit or mnistlab set for each job array; given again in sbatch: they would
# replace ours (--array=0-3 makes four tasks of one trial) or break submitit's reading of sbatch
SET_BY_SUBMITIT = ("array", "output", "error", "open-mode", "signal", "wckey", "job-name", "wrap",
                   "parsable", "requeue", "no-requeue", "dependency")
SET_BY_OPTIONS = {"partition": "partition", "time": "time", "account": "account", "qos": "qos",
                  "cpus-per-task": "cpus_per_trial", "mem": "mem_gb", "gpus-per-node": "gpus_per_trial"}
MIN_MEM_GB = 1 / 1024  # 1 MB: SLURM reads --mem=0 as all of a node's memory
MAX_MEM_GB = 1 << 20  # a petabyte: more is a typo


def _count(value, lo: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lo


def slurm_problems(options: dict, where: str = "executor.slurm") -> list[str]:
    """The problems of the executor: slurm: settings, each naming its key."""
    problems = []
    for key in ("time", "cpus_per_trial", "gpus_per_trial"):
        value = options.get(key)
        if value is not None and not _count(value):
            problems.append(f"{where}.{key}: give a whole number of at least 1, not {value!r}")
    shared = options.get("trials_per_job")
    if shared is not None and not _count(shared):
        problems.append(f"{where}.trials_per_job: give how many trials one job runs, one after "
                        f"another from one warm process, e.g. 4 (1: a job per trial), not {shared!r}")
    mem = options.get("mem_gb")
    if mem is not None and (isinstance(mem, bool) or not isinstance(mem, (int, float))
                            or not MIN_MEM_GB <= mem <= MAX_MEM_GB):
        problems.append(f"{where}.mem_gb: give the memory per trial in GB, e.g. 4 (at least "
                        f"{MIN_MEM_GB:.4f}, 1 MB), not {mem!r}")
    for key in ("partition", "account", "qos"):
        value = options.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(f"{where}.{key}: give a name, not {value!r}")
    flags = options.get("sbatch")
    if flags is not None:
        if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            problems.append(f"{where}.sbatch: give a list of sbatch flags, e.g. "
                            "[--constraint=avx512, --exclusive]")
        else:
            problems += [sbatch_problem(flag, where) for flag in flags]
    return [p for p in problems if p]


def sbatch_problem(flag: str, where: str) -> str | None:
    """Why an extra sbatch flag cannot be given, or None; sbatch takes any unique prefix of a flag."""
    if not re.fullmatch(r"--[a-z][a-z0-9-]*(=.+)?", flag):
        return (f"{where}.sbatch: {flag!r} is not a long sbatch flag; write it as --name=value "
                "(e.g. --constraint=avx512)")
    name = flag[2:].partition("=")[0]
    ours = [f for f in SET_BY_OPTIONS if f.startswith(name)]
    if ours:
        return (f"{where}.sbatch: {flag!r} is set from {where}.{SET_BY_OPTIONS[ours[0]]}; "
                f"give it there instead")
    theirs = [f for f in SET_BY_SUBMITIT if f.startswith(name)]
    if theirs:
        return (f"{where}.sbatch: {flag!r} is set by mnistlab for each job array (--{theirs[0]}); "
                "leave it out (each trial is one task of the array, and its log is trial.log "
                "in its run directory)")
    return None


def local_problems(options: dict, where: str = "executor.local") -> list[str]:
    """The problems of the executor: local: settings, each naming its key."""
    return warm_problems(options, where)


def warm_problems(options: dict, where: str) -> list[str]:
    warm = options.get("warm")
    if warm is not None and not isinstance(warm, bool):
        return [f"{where}.warm: give true (trials forked from one process that has imported torch "
                f"and read the data) or false (each trial a fresh Python), not {warm!r}"]
    return []


def ray_problems(options: dict, where: str = "executor.ray") -> list[str]:
    """The problems of the executor: ray: settings, each naming its key."""
    problems = warm_problems(options, where)
    address = options.get("address")
    if address is not None and not isinstance(address, str):
        problems.append(f"{where}.address: give the cluster's address, e.g. 10.0.0.5:6379 or "
                        f"auto, not {address!r}")
    cpus = options.get("cpus_per_trial")
    if cpus is not None and not _count(cpus):
        problems.append(f"{where}.cpus_per_trial: give a whole number of at least 1, not {cpus!r}")
    gpus = options.get("gpus_per_trial")
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, (int, float))
                             or not 0 <= gpus < math.inf):
        problems.append(f"{where}.gpus_per_trial: give a number of GPUs (fractions allowed), "
                        f"not {gpus!r}")
    wait = options.get("connect_timeout")
    if wait is not None and (isinstance(wait, bool) or not isinstance(wait, (int, float))
                             or not 0 < wait < math.inf):
        problems.append(f"{where}.connect_timeout: give the seconds to wait for the cluster to "
                        f"answer, e.g. 60, not {wait!r}")
    return problems


VALUES = {"local": local_problems, "slurm": slurm_problems, "ray": ray_problems}
