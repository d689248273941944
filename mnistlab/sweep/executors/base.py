"""What the runner knows about an engine: a trial to run (TrialSpec) and the Executor protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

STATES = ("pending", "running", "finished", "unknown")


@dataclass
class TrialSpec:
    """One trial as an engine sees it: a command that writes into its own run directory."""

    key: str  # the trial's config hash
    name: str  # e.g. lr-0.01_name-sgd_seed-0
    argv: list[str]  # [sys.executable, "-m", "mnistlab", "train", "--quiet", "--run-dir", ...]
    run_dir: Path  # deterministic; created (and claimed) by the driver before submit
    log: Path  # stdout and stderr of the trial: run_dir / "trial.log"
    threads: int  # CPU threads of the trial (cpus per trial on a cluster)
    env: dict[str, str] = field(default_factory=dict)  # extra environment of the trial process
    # the name of the submission this spec is part of, written in each trial's job.json before the
    # engine is asked: an engine that names its jobs after it finds them again (find) when the
    # driver died before it could write their ids
    claim: str = ""


class Executor(Protocol):
    """Submit trial commands, poll their state, cancel them; construction raises ExecutorUnavailable.

    The final status of a trial is read from its run directory, never from the executor; the
    executor adds MNISTLAB_EXECUTOR and MNISTLAB_JOB_ID to each trial's environment (or the trial
    reads the scheduler's own, e.g. SLURM_JOB_ID).
    """

    name: str
    jobs: int  # trials run at once (--jobs)
    # capabilities the runner and the command read, declared by each engine:
    detachable: bool  # its jobs run on after this command ends (--detach), else why not:
    attached_because: str  # e.g. "local trials are processes of this command"
    owns_threads: bool  # True: this machine's cores are shared among the jobs (local); False:
    # each trial gets cpus_per_trial of the engine's options, on nodes of its own

    def __init__(self, options: dict, jobs: int) -> None: ...

    def trial_threads(self, running: int) -> int:
        """CPU threads of each trial when `running` trials run at once."""

    def submit(self, specs: list[TrialSpec]) -> list[str]:
        """One job id per spec, in the same order."""

    def states(self, job_ids: list[str]) -> dict[str, str]:
        """id -> pending, running, finished or unknown (a job this executor cannot see)."""

    def prepare(self) -> None:
        """Trials will be submitted soon: start what they need now (the local warm process),
        while the command checks the data."""

    def wait(self, seconds: float) -> None:
        """Return after `seconds`, or sooner when a job may have changed state."""

    def cancel(self, job_ids: list[str]) -> None:
        """SIGTERM semantics: each trial saves its state and records itself interrupted."""

    def close(self) -> None:
        """Release the engine's resources; running trials of a detached sweep keep running."""

    # optional, for engines whose jobs outlive the driver (the runner asks with getattr):
    # find(claims) -> {(claim, index): job id} of the live jobs of submissions (TrialSpec.claim,
    #   the spec's index in that submit call) whose ids were never recorded;
    # describe(job_ids) -> {id: {"reason": why a pending job waits, "host": where it runs or ran,
    #   "end": how an ended job ended}}, each key when the engine knows it;
    # cancel_command(job_ids) -> the shell command that cancels these jobs.
