"""Trials as SLURM jobs through submitit: one job array per submit, at most --jobs running at once."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import submitit

from ...errors import ConfigError, ExecutorUnavailable, SweepError, first_line, some
from .base import TrialSpec
from .options import slurm_problems
from .process import start_trial, stop_trial

# squeue's job states by what they mean for a trial; a job squeue no longer lists has ended
PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
           "SUSPENDED", "STOPPED"}
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"}
# a job's id in squeue (ARRAY_TASK), with +K for the K-th trial of a shared job (trials_per_job)
JOB_ID = re.compile(r"\d+(_\d+)?(\+\d+)?")
SHARED = "mnistlab-trial:"  # a shared job's Comment: the index of the trial it runs now
# squeue's pending reasons that no amount of waiting meets: the job asks for more than its
# partition, QOS or account allows per job, or for what no node has; what each means
NEVER = {
    "PartitionConfig": "asks for more than partition {partition} allows a job: CPUs, memory or "
                       "nodes, set by executor.slurm.cpus_per_trial, mem_gb, gpus_per_trial or sbatch:",
    "PartitionNodeLimit": "asks for more nodes than partition {partition} has or allows "
                          "(sbatch: --nodes), or every node it could use is down or drained",
    "PartitionTimeLimit": "asks for a longer time than partition {partition} allows "
                          "(executor.slurm.time)",
    "BadConstraints": "asks for features no node has (sbatch: --constraint)",
    "InvalidAccount": "names an account SLURM does not know (executor.slurm.account)",
    "InvalidQOS": "names a QOS SLURM does not know or allow (executor.slurm.qos)",
}
# the common reasons a job waits, in words, for the live display
WAITS = {"Resources": "free CPUs or memory", "Priority": "jobs ahead of it",
         "JobArrayTaskLimit": "a free --jobs slot", "Dependency": "the job array before it",
         "BeginTime": "its start time (a requeued job waits about two minutes)",
         "JobHeldUser": "held: scontrol release", "JobHeldAdmin": "held by an admin",
         "ReqNodeNotAvail": "nodes that are down, drained or reserved",
         "SharedJob": "the trials before it in its job (trials_per_job)"}
PER_JOB_LIMIT = re.compile(r"(QOS|Assoc)\w*PerJob\w*")  # e.g. QOSMaxCpuPerJobLimit


class SlurmTrial(submitit.helpers.Checkpointable):
    """The SLURM job of one trial: runs the trial command and stops it the way SLURM asks.

    SIGTERM (scancel, preemption, the time limit) is passed on so the trial saves and stops.
    SIGUSR2, submitit's warning before the time limit, does the same and then requeues the job,
    which runs the same command again: the trial continues from its last.pt.
    """

    def __call__(self, argv: list[str], env: dict[str, str], log: str) -> int:
        job_id = slurm_job_id(os.environ)
        # a first line from the node: the driver sees that the runs directory is shared, and a
        # trial that never gets going leaves where and how in its log
        note(log, f"[slurm job {job_id} on host {socket.gethostname()}] starting the trial")
        proc = start_trial(argv, {**env, "MNISTLAB_EXECUTOR": "slurm", "MNISTLAB_JOB_ID": job_id},
                           log)
        warned = threading.Event()

        def on_term(signum, frame):
            stop_trial(proc)

        def on_warning(signum, frame):
            warned.set()
            stop_trial(proc)

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGUSR2, on_warning)
        code = proc.wait()
        if code != 0:
            note(log, f"[slurm job {job_id}] the trial {how_ended(code)}")
        if warned.is_set() and code != 0:
            subprocess.run(["scontrol", "requeue", job_id], check=False)
        return code


class SlurmTrials(submitit.helpers.Checkpointable):
    """The SLURM job of several trials (executor.slurm.trials_per_job): runs them one after another,
    each forked from one warm process that imports torch and mnistlab once (sweep/warm.py).

    Each trial keeps its own run directory, lease and log, and its id is the job's with +K (K-th
    trial of the job), which the job writes in its Comment as it starts each one, so that squeue
    tells which trial runs. SIGTERM stops the running trial (it saves) and starts no other;
    SIGUSR2 does the same and requeues the job, which runs its trials again: a completed one ends
    at once, the stopped one continues from its last.pt.
    """

    def __call__(self, trials: list[tuple[list[str], dict[str, str], str]]) -> int:
        from ..warm import WarmServer

        base, host = slurm_job_id(os.environ), socket.gethostname()
        stop, warned = threading.Event(), threading.Event()

        def on_term(signum, frame):
            stop.set()

        def on_warning(signum, frame):
            warned.set()
            stop.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGUSR2, on_warning)
        server, worst = WarmServer(death_signal=True), 0
        try:
            for k, (argv, env, log) in enumerate(trials):
                if stop.is_set():
                    break
                job_id = f"{base}+{k}"
                _run(["scontrol", "update", f"JobId={base}", f"Comment={SHARED}{k}"])
                note(log, f"[slurm job {job_id} on host {host}] starting the trial")
                env = {**env, "MNISTLAB_EXECUTOR": "slurm", "MNISTLAB_JOB_ID": job_id}
                proc = server.start(job_id, argv, env, log, int(env.get("OMP_NUM_THREADS", "1")))
                stopped = False
                while proc.poll() is None:  # the signal handlers only set flags: one reader here
                    if stop.is_set() and not stopped:
                        proc.send_signal(signal.SIGTERM)
                        stopped = True
                    server.read(0.2)
                code = proc.poll()
                if code != 0:
                    note(log, f"[slurm job {job_id}] the trial {how_ended(code)}")
                worst = worst or code
        finally:
            server.close()
        if warned.is_set():  # run again from its first trial: a completed one ends at once
            _run(["scontrol", "update", f"JobId={base}", f"Comment={SHARED}0"])
            subprocess.run(["scontrol", "requeue", base], check=False)
        return worst


def how_ended(code: int) -> str:
    return (f"was killed by {signal.Signals(-code).name}" if code < 0 and -code in
            signal.valid_signals() else f"exited with code {code}")


def note(log: str, line: str) -> None:
    """A line of the job's own in the trial's log."""
    with open(log, "a") as out:
        out.write(line + "\n")


def slurm_job_id(environ) -> str:
    """The id squeue shows for this job: ARRAYJOB_TASK inside an array, else the job id."""
    if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ.get("SLURM_JOB_ID", "")


class SlurmExecutor:
    """Submits each batch of trials as one job array with the %N limit; polls squeue."""

    name = "slurm"
    detachable = True
    attached_because = ""

    def trial_threads(self, running: int) -> int:
        """The cpus_per_trial of the sweep file's executor: block (1 when not given)."""
        return int(self.options.get("cpus_per_trial") or 1)

    def __init__(self, options: dict, jobs: int) -> None:
        self.options = check_slurm_options(options or {})
        self.jobs = max(1, jobs)
        missing = [cmd for cmd in ("sbatch", "squeue", "scancel", "scontrol") if not shutil.which(cmd)]
        if missing:
            raise ExecutorUnavailable(
                f"--executor slurm: {', '.join(missing)} not found on PATH, so SLURM cannot be "
                "reached from this machine. Run the sweep on a login node of your cluster (where "
                "sbatch works), or use --executor local or ray.")
        answer = _run(["scontrol", "show", "config"])
        if answer.returncode != 0:
            raise ExecutorUnavailable(
                "--executor slurm: the SLURM controller does not answer "
                f"({first_line(answer.stderr) or 'scontrol show config failed'}). Check that "
                "slurmctld runs (scontrol ping), or use --executor local or ray.")
        found = re.search(r"^MaxArraySize\s*=\s*(\d+)", answer.stdout, re.MULTILINE)
        self.max_array = int(found.group(1)) if found else 1001
        self.seen: dict[str, dict[str, str]] = {}  # job id -> squeue's state, reason, host, partition
        self.shared = int(self.options.get("trials_per_job") or 1)  # trials per job
        self._check_fits()

    def _check_fits(self) -> None:
        """A trial that asks for more CPUs or memory than any node of its partition has would wait
        in the queue forever (SLURM accepts such a job): refused before anything is submitted."""
        answer = _run(["sinfo", "--noheader", "--Node", "--format", "%P|%c|%m"])
        nodes = [line.split("|") for line in answer.stdout.splitlines() if line.count("|") == 2]
        want = self.options.get("partition")
        nodes = [(p.rstrip("*"), c, m) for p, c, m in nodes
                 if (p.rstrip("*") == want if want else p.endswith("*"))]
        if answer.returncode != 0 or not nodes:
            return  # no sinfo, or a partition it does not list: sbatch says what is wrong
        partition = nodes[0][0]
        asks = [("cpus_per_trial", self.options.get("cpus_per_trial"), 1, "CPUs", 1),
                ("mem_gb", self.options.get("mem_gb"), 2, "MB of memory", 1024)]
        problems = []
        for key, value, column, what, scale in asks:
            sizes = [int(n[column]) for n in nodes if n[column].isdigit()]
            if value and sizes and value * scale > max(sizes):
                problems.append(
                    f"executor.slurm.{key}: each trial asks for {value * scale:g} {what}, but the "
                    f"largest node of partition {partition} has {max(sizes)} (sinfo), so its jobs "
                    f"would wait in the queue forever; ask for at most {max(sizes) / scale:g}, or "
                    "choose a partition with larger nodes (executor.slurm.partition)")
        if problems:
            raise ConfigError(problems)

    def submit(self, specs: list[TrialSpec]) -> list[str]:
        if not specs:
            return []
        folder = Path(specs[0].run_dir).parent / ".slurm"  # a dot-folder: not a run directory
        cpus = self.options.get("cpus_per_trial") or max(spec.threads for spec in specs)
        claim = specs[0].claim or f"mnistlab-{Path(specs[0].run_dir).parent.name}"
        shared = self.shared
        # a job per trial, or per `shared` trials (its tasks); trial i is in task i // shared
        tasks = [specs[i:i + shared] for i in range(0, len(specs), shared)]
        executor = submitit.SlurmExecutor(folder=folder)
        executor.update_parameters(**self._parameters(cpus, array_name(claim, 0, self.max_array)))
        ids: list[str] = []
        previous = None
        chunk = self.max_array  # array indices must stay below MaxArraySize
        for start in range(0, len(tasks), chunk):
            part = tasks[start:start + chunk]
            # named after the claim and its first index, so that find() maps each task to its trials
            executor.update_parameters(job_name=array_name(claim, start, chunk))
            if previous:  # one array at a time keeps the --jobs limit across arrays
                executor.update_parameters(dependency=f"afterany:{previous}")
            try:
                with executor.batch():
                    jobs = [self._submit_task(executor, task, cpus) for task in part]
            except Exception as e:  # submitit raises what sbatch said, as several exception types
                raise SweepError(f"--executor slurm: sbatch refused the trials: {first_line(str(e))}. "
                                 "Check the executor: slurm: settings of the sweep file (partition, "
                                 "time, account, qos, sbatch).") from None
            for job, task in zip(jobs, part):
                ids += ([str(job.job_id)] if shared == 1 else
                        [f"{job.job_id}+{k}" for k in range(len(task))])
            previous = str(jobs[-1].job_id).split("_")[0]
        return ids

    def _submit_task(self, executor, task: list[TrialSpec], cpus: int):
        env = [{"OMP_NUM_THREADS": str(cpus), **spec.env} for spec in task]
        if self.shared == 1:
            return executor.submit(SlurmTrial(), list(task[0].argv), env[0], str(task[0].log))
        return executor.submit(SlurmTrials(), [(list(spec.argv), e, str(spec.log))
                                               for spec, e in zip(task, env)])

    def _parameters(self, cpus: int, job_name: str) -> dict:
        o = self.options
        extra = {"requeue": True}
        for flag in o.get("sbatch") or []:
            key, _, value = flag[2:].partition("=")
            extra[key] = value if value else True
        params = {"job_name": job_name, "cpus_per_task": cpus,
                  "array_parallelism": self.jobs, "additional_parameters": extra,
                  "partition": o.get("partition"), "time": o.get("time"), "account": o.get("account"),
                  "qos": o.get("qos"), "gpus_per_node": o.get("gpus_per_trial"),
                  "mem": f"{math.ceil(o['mem_gb'] * 1024)}M" if o.get("mem_gb") else None}
        return {k: v for k, v in params.items() if v is not None}

    def prepare(self) -> None:
        """Nothing to start ahead: each job starts its own warm process."""

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def states(self, job_ids: list[str]) -> dict[str, str]:
        """Each job's state; SweepError for jobs that can never start, after cancelling them."""
        out = self._states(job_ids)
        self._refuse_never([j for j, state in out.items() if state == "pending"])
        return out

    def _states(self, job_ids: list[str]) -> dict[str, str]:
        ours = [j for j in job_ids if JOB_ID.fullmatch(j)]
        out = {j: "unknown" for j in job_ids}
        if not ours:
            return out
        jobs = {job_of(j) for j in ours}
        listed = self._squeue(sorted({j.split("_")[0] for j in jobs}))
        for j in jobs:  # one squeue no longer lists has ended; where it ran is still worth saying
            self.seen[j] = listed.get(j) or {"host": self.seen.get(j, {}).get("host", "")}
        for j in ours:
            out[j] = self._trial_state(j)
        return out

    def _trial_state(self, job_id: str) -> str:
        """finished, pending or running, from what squeue said last of the trial's job; the trials
        of a shared job run one after another, in the order of their +K."""
        state = self.seen.get(job_of(job_id), {}).get("state", "")
        if not state or state in ENDED:
            return "finished"
        if state in PENDING:
            return "pending"
        if "+" not in job_id:
            return "running"
        comment = self.seen[job_of(job_id)].get("comment", "")
        now = comment[len(SHARED):] if comment.startswith(SHARED) else ""
        now = int(now) if now.isdigit() else 0  # no Comment yet: the job starts its first trial
        k = int(job_id.partition("+")[2])
        return "finished" if k < now else "running" if k == now else "pending"

    def _refuse_never(self, pending: list[str]) -> None:
        """Jobs whose pending reason no wait meets are cancelled, and the sweep stops saying why."""
        never = sorted({job_of(j) for j in pending
                        if self.seen[job_of(j)].get("reason", "") in NEVER
                        or PER_JOB_LIMIT.fullmatch(self.seen[job_of(j)].get("reason", ""))})
        if not never:
            return
        _run(["scancel", *never])
        first = self.seen[never[0]]
        why = NEVER.get(first["reason"], "asks for more than a per-job limit of its QOS or account "
                        "allows (executor.slurm.qos or account)").format(partition=first["partition"])
        many = len(never) > 1
        raise SweepError(
            f"--executor slurm: SLURM will never start job{'s' if many else ''} {some(never)}: "
            f"{'they wait' if many else 'it waits'} with the reason {first['reason']} (each "
            f"{why}), which no wait meets, so {'they were' if many else 'it was'} cancelled. "
            f"`scontrol show job {never[0]}` shows what it asked for; change those settings in "
            "the executor: slurm: block of the sweep file (or ask your admin about the partition's "
            "limits) and run the command again.")

    def describe(self, job_ids: list[str]) -> dict[str, dict]:
        """What squeue said at the last states(): why a pending job waits, where one runs."""
        out = {}
        for j in job_ids:
            seen = self.seen.get(job_of(j), {})
            state, reason, host = seen.get("state", ""), seen.get("reason", ""), seen.get("host", "")
            if "+" in j and state and state not in PENDING | ENDED and \
                    self._trial_state(j) == "pending":  # its job runs the trials before it first
                state, reason = "PENDING", "SharedJob"
            info = {}
            if state in PENDING and reason and reason != "None":
                word = WAITS.get(reason.split(",")[0])
                info["reason"] = f"{reason.split(',')[0]} ({word})" if word else reason
            if host and host not in ("n/a", "(null)"):
                info["host"] = host
            if not state or state in ENDED:
                info.update(self._ended(job_of(j)))
            out[j] = info
        return out

    def _ended(self, job_id: str) -> dict[str, str]:
        """How an ended job ended and where, from scontrol (jobs ended in the last MinJobAge) or
        sacct (when the cluster keeps accounting)."""
        answer = _run(["scontrol", "show", "job", "--oneliner", job_id])
        found = dict(re.findall(r"\b(JobState|ExitCode|BatchHost)=(\S+)", answer.stdout))
        if answer.returncode != 0 or "JobState" not in found:
            answer = _run(["sacct", "--allocations", "--noheader", "--parsable2", "--jobs", job_id,
                           "--format", "State,ExitCode,NodeList"])
            row = answer.stdout.strip().splitlines()[0].split("|") if answer.stdout.strip() else []
            if answer.returncode != 0 or len(row) != 3:
                return {}
            found = {"JobState": row[0], "ExitCode": row[1], "BatchHost": row[2]}
        info = {"end": f"{found['JobState']}, exit code {found.get('ExitCode', '?')}"}
        if found.get("BatchHost") not in (None, "", "(null)", "None assigned"):
            info["host"] = found["BatchHost"]
        return info

    def find(self, claims: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
        """The jobs SLURM still lists of submissions whose ids were never recorded (the driver was
        killed right after sbatch): (claim, index) -> job id, found by the arrays' names."""
        n = self.shared
        names = {(c, i): array_name(c, i // n, self.max_array) for c, i in claims}
        if not names:
            return {}
        answer = self._ask(["squeue", "--noheader", "--array", "--name", ",".join(set(names.values())),
                            "--format", "%i|%j"])
        tasks = {}
        for line in answer.stdout.splitlines():
            job_id, _, name = line.strip().partition("|")
            task = job_id.split("_")[1] if "_" in job_id else "0"  # one task: a plain job
            if task.isdigit():
                tasks[name, int(task)] = job_id
        found = {}
        for c, i in claims:
            job = tasks.get((names[c, i], i // n % self.max_array))
            if job:
                found[c, i] = job if n == 1 else f"{job}+{i % n}"
        return found

    @staticmethod
    def cancel_command(job_ids: list[str]) -> str:
        return "scancel " + " ".join(sorted({job_of(j) for j in job_ids}))

    def _squeue(self, array_ids: list[str]) -> dict[str, dict[str, str]]:
        """Job id -> squeue's state, pending reason, batch host and partition of the jobs of these
        arrays that SLURM still lists."""
        answer = self._ask(["squeue", "--noheader", "--array", "--jobs", ",".join(array_ids),
                            "--format", "%i|%T|%r|%B|%P|%k"])
        rows = [line.strip().split("|", 5) for line in answer.stdout.splitlines()]
        return {row[0]: dict(zip(("state", "reason", "host", "partition", "comment"), row[1:]))
                for row in rows if len(row) == 6}

    def _ask(self, argv: list[str]) -> subprocess.CompletedProcess:
        """squeue's answer, asked up to three times; SweepError when it keeps failing."""
        for attempt in range(3):
            answer = _run(argv)
            if answer.returncode == 0:
                return answer
            if "Invalid job id" in answer.stderr:  # every one of them ended and was forgotten
                return subprocess.CompletedProcess(argv, 0, "", "")
            time.sleep(2 * (attempt + 1))
        raise SweepError(f"--executor slurm: squeue failed ({first_line(answer.stderr)}); the "
                         "submitted trials keep running. Run the same sweep command again to "
                         "attach to them.")

    def cancel(self, job_ids: list[str], timeout: float = 120.0) -> None:
        """scancel: SLURM sends SIGTERM (the trial saves) and SIGKILL after its KillWait."""
        ours = sorted({job_of(j) for j in job_ids if JOB_ID.fullmatch(j)})  # a shared job once
        for start in range(0, len(ours), 500):
            _run(["scancel", *ours[start:start + 500]])
        deadline = time.monotonic() + timeout
        while ours and time.monotonic() < deadline:
            if all(s == "finished" for s in self._states(ours).values()):
                return
            time.sleep(0.5)

    def close(self) -> None:
        pass


def check_slurm_options(options: dict) -> dict:
    """The executor: slurm: settings, each value checked (the keys are checked by the sweep file)."""
    problems = slurm_problems(options)
    if problems:
        raise ConfigError(problems)
    return options


def job_of(job_id: str) -> str:
    """The SLURM job of a trial's id: 1234_5 of 1234_5+2 (the third trial of a shared job)."""
    return job_id.partition("+")[0]


def array_name(claim: str, index: int, chunk: int) -> str:
    """The SLURM job name of the array holding trial index of a submission (chunk: MaxArraySize)."""
    return f"{claim}-{index // chunk * chunk}"


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(argv, 1, "", str(e))
