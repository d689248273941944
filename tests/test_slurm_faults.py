"""SLURM sweeps under faults, against the one-node cluster of scripts/slurm-local.sh (and the local
executor where the fault is the same): a driver killed right after sbatch, a local driver beside
SLURM jobs, jobs that can never start, Ctrl-C over a detached sweep, a trial stopped, requeued or
killed before it takes its lease."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from test_executors import data_dir, ran_once, slurm_cluster, sweep_file, trial_dirs  # noqa: F401

# the driver, killed with SIGKILL the moment sbatch has accepted its job array: before it can
# write a single job id
KILLED_AFTER_SBATCH = """
import os, signal, sys
from mnistlab.sweep.executors import slurm
submit = slurm.SlurmExecutor.submit
def submit_then_die(self, specs):
    ids = submit(self, specs)
    print("submitted", *ids, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
slurm.SlurmExecutor.submit = submit_then_die
from mnistlab.cli import main
sys.argv = ["mnistlab", *sys.argv[1:]]
main()
"""


def sweep(path: Path, *extra: str, code: str | None = None, timeout: float = 600):
    prefix = ["-c", code] if code else ["-m", "mnistlab"]
    return subprocess.run([sys.executable, *prefix, "sweep", str(path), "--executor", "slurm",
                           *extra], capture_output=True, text=True, timeout=timeout)


def arrays(directory: Path) -> set[str]:
    """The job arrays submitit submitted for this sweep (its files in .slurm/ begin with the id)."""
    return {m.group(1) for p in (directory / ".slurm").iterdir()
            if (m := re.match(r"(\d+)_", p.name))}


def test_a_driver_killed_right_after_sbatch_is_followed_not_submitted_again(
        tmp_path, data_dir, slurm_cluster):  # noqa: F811
    path = sweep_file(tmp_path, data_dir, epochs=1, lrs=(0.01, 0.02, 0.03, 0.04))
    directory = tmp_path / "runs" / "s"
    killed = sweep(path, "--jobs", "2", code=KILLED_AFTER_SBATCH)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    [line] = [line for line in killed.stdout.splitlines() if line.startswith("submitted ")]
    submitted = line.split()[1:]
    assert len(submitted) == 4
    again = sweep(path, "--jobs", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 running in another sweep" in again.stdout  # it follows the 4 jobs
    dirs = trial_dirs(directory)
    assert len(dirs) == 4
    assert sorted(ran_once(d)["executor"]["job_id"] for d in dirs) == sorted(submitted)
    assert arrays(directory) == {submitted[0].split("_")[0]}  # no second array
    for d in dirs:  # the job ids the killed driver could not write are recorded now
        assert json.loads((d / "job.json").read_text())["job_id"] in submitted


def held(path: Path) -> Path:
    """The sweep file with its jobs submitted held (sbatch --hold): they wait in the queue."""
    definition = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**definition, "executor": {"slurm": {"sbatch": ["--hold"]}}}))
    return path


def test_a_local_driver_refuses_a_sweep_whose_trials_are_slurm_jobs(tmp_path, data_dir, slurm_cluster):  # noqa: F811
    path = held(sweep_file(tmp_path, data_dir, epochs=1))
    directory = tmp_path / "runs" / "s"
    detached = sweep(path, "--detach")
    assert detached.returncode == 0, detached.stdout + detached.stderr
    claims = {d: (d / "job.json").read_text() for d in trial_dirs(directory)}
    ids = [json.loads(text)["job_id"] for text in claims.values()]
    try:
        local = subprocess.run([sys.executable, "-m", "mnistlab", "sweep", str(path)],
                               capture_output=True, text=True, timeout=300)
        message = " ".join(local.stderr.split())
        assert local.returncode == 2 and "Traceback" not in local.stderr, local.stdout + local.stderr
        assert "2 of its trials are queued or running as slurm jobs" in message
        assert "which has ended" in message  # the detached driver
        assert "--executor slurm" in message and "scancel " + " ".join(sorted(ids)) in message
        assert {d: (d / "job.json").read_text() for d in trial_dirs(directory)} == claims
        assert not list(directory.glob("*/trial.log"))  # no local process started
    finally:
        subprocess.run(["scancel", *ids], check=True)


def start(path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mnistlab", "sweep", str(path), "--executor",
                             "slurm", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def interrupted(driver: subprocess.Popen) -> tuple[str, str]:
    """Ctrl-C: (stdout, the error message on one line); the driver exits 130 without a traceback."""
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 130 and "Traceback" not in err, out + err
    return out, " ".join(err.split())


def test_ctrl_c_of_a_driver_following_a_detached_sweep_says_which_jobs_still_run(
        tmp_path, data_dir, slurm_cluster):  # noqa: F811
    path = held(sweep_file(tmp_path, data_dir, epochs=1))
    assert sweep(path, "--detach").returncode == 0
    directory = tmp_path / "runs" / "s"
    ids = sorted(json.loads((d / "job.json").read_text())["job_id"] for d in trial_dirs(directory))
    try:
        driver = start(path)
        assert "2 running in another sweep" in driver.stdout.readline()  # it follows them
        _, message = interrupted(driver)
        assert "this command had no trial of its own running" in message
        assert (f"2 trials of this sweep still run as slurm jobs ({', '.join(ids)}) that another "
                "command submitted; this command leaves them running, cancel them with "
                f"`scancel {' '.join(ids)}`") in message
        queue = subprocess.run(["squeue", "--noheader", "--array", "--jobs", ids[0].split("_")[0],
                                "--format", "%i"], capture_output=True, text=True).stdout.split()
        assert sorted(queue) == ids  # left as they were
    finally:
        subprocess.run(["scancel", *ids], check=True)


def test_ctrl_c_counts_a_trial_that_completed_before_it_as_completed(tmp_path, data_dir, slurm_cluster):  # noqa: F811
    path = sweep_file(tmp_path, data_dir, epochs=1)
    directory = tmp_path / "runs" / "s"
    driver = start(path, "--jobs", "1")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # the first trial has written its result; its job may
        done = [d for d in directory.glob("*/summary.json")  # not have ended yet
                if json.loads(d.read_text() or "{}").get("status") == "completed"]
        if done:
            break
        time.sleep(0.05)
    out, message = interrupted(driver)
    assert "1 trial had completed before the signal" in message
    trial = done[0].parent.name.split("-")[:2]
    assert f"interrupted {'-'.join(trial)}" not in out, out
    started = re.search(r"stopped the (\d) trials? of this sweep that had started", message)
    withdrawn = "1 queued trial had not started and was withdrawn" in message
    assert (started is not None) + withdrawn == 1, message  # the other trial, either way


def with_slurm(path: Path, **options) -> Path:
    definition = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**definition, "executor": {"slurm": options}}))
    return path


def node_cpus() -> int:
    return max(int(n) for n in subprocess.run(["sinfo", "--noheader", "--Node", "--format", "%c"],
                                              capture_output=True, text=True).stdout.split())


def test_a_trial_asking_more_cpus_than_any_node_is_refused_before_submitting(
        tmp_path, data_dir, slurm_cluster):  # noqa: F811
    cpus = node_cpus()
    path = with_slurm(sweep_file(tmp_path, data_dir, epochs=1), cpus_per_trial=cpus + 2)
    done = sweep(path, timeout=120)
    message = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert (f"executor.slurm.cpus_per_trial: each trial asks for {cpus + 2} CPUs, but the largest "
            f"node of partition") in message and f"has {cpus} (sinfo)" in message
    assert "wait in the queue forever" in message
    assert not (tmp_path / "runs" / "s").exists()  # nothing submitted, nothing written


def test_jobs_that_can_never_start_end_the_sweep_saying_why(tmp_path, data_dir, slurm_cluster):  # noqa: F811
    # two nodes of a one-node partition: SLURM accepts the jobs, which wait forever (the reason is
    # PartitionConfig or PartitionNodeLimit)
    path = with_slurm(sweep_file(tmp_path, data_dir, epochs=1), sbatch=["--nodes=2"])
    done = sweep(path, timeout=120)
    message = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stdout + done.stderr
    job = re.search(r"SLURM will never start jobs (\d+_\d+), \d+_\d+: they wait with the reason "
                    r"Partition(Config|NodeLimit) \(each asks for more", message).group(1)
    assert "sbatch:" in message and "which no wait meets, so they were cancelled" in message
    assert f"scontrol show job {job}" in message
    queue = subprocess.run(["squeue", "--noheader", "--jobs", job.split("_")[0], "--format", "%T"],
                           capture_output=True, text=True).stdout.split()
    assert set(queue) <= {"CANCELLED"}  # withdrawn, not left pending
    assert not list((tmp_path / "runs" / "s").glob("*/summary.json"))


def line_with(driver: subprocess.Popen, text: str, timeout: float = 120) -> str:
    """The first line of the driver's output holding text ("" after timeout seconds)."""
    found = queue.Queue()

    def read():
        for line in driver.stdout:
            if text in line:
                found.put(line)
                return
    threading.Thread(target=read, daemon=True).start()
    try:
        return found.get(timeout=timeout)
    except queue.Empty:
        return ""


def test_the_display_says_why_queued_trials_wait(tmp_path, data_dir, slurm_cluster):  # noqa: F811
    driver = start(held(sweep_file(tmp_path, data_dir, epochs=1)))
    line = line_with(driver, "queued trials wait")
    _, message = interrupted(driver)
    assert "queued trials wait: 2 for JobHeldUser (held: scontrol release)" in line, line
    assert "2 queued trials had not started and were withdrawn" in message


def trial_process(run_dir: Path, timeout: float = 120) -> int:
    """The pid of the trial process training in run_dir, as soon as it has started (its imports
    take seconds: long before it takes its lease)."""
    wanted = str(run_dir.resolve()).encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"train" in argv and wanted in argv:
                return int(proc.name)
        time.sleep(0.02)
    raise AssertionError(f"no trial process for {run_dir}")


def one_trial(tmp_path: Path, data_dir: Path):  # noqa: F811
    """(sweep, directory, trial) of a one-trial sweep; a second trial, slow to start on a loaded
    machine, would also meet the short lease timeout of these tests."""
    from mnistlab.sweep import build_trials, read_sweep

    sweep_ = read_sweep(sweep_file(tmp_path, data_dir, epochs=1, lrs=(0.01,)))
    directory, [trial] = build_trials(sweep_)
    return sweep_, directory, trial


def in_background(fault) -> threading.Thread:
    """The fault runs beside the sweep, which needs the main thread (it handles SIGTERM)."""
    thread = threading.Thread(target=fault, daemon=True)
    thread.start()
    return thread


def test_a_trial_requeued_before_its_lease_is_not_taken_for_an_unshared_disk(
        tmp_path, data_dir, slurm_cluster):  # noqa: F811
    from mnistlab.sweep.executors import create_executor
    from mnistlab.sweep.runner import run_sweep

    sweep_, directory, trial = one_trial(tmp_path, data_dir)
    timeout = 5.0

    def requeue():  # preempted before its lease, held in the queue longer than the timeout
        trial_process(trial.run_dir)
        job = json.loads((trial.run_dir / "job.json").read_text())["job_id"]
        subprocess.run(["scontrol", "requeue", job], check=True)
        time.sleep(timeout + 1)  # (SLURM holds a requeued job two minutes; it may go sooner)
        subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"], check=True)

    fault = in_background(requeue)
    executor = create_executor("slurm", {}, 1)
    try:
        counts = run_sweep(sweep_, directory, [trial], executor, lease_timeout=timeout)
    finally:
        executor.close()
    fault.join()
    assert counts["completed"] == 1, (trial.run_dir / "trial.log").read_text()
    assert (trial.run_dir / "trial.log").read_text().count("starting the trial") == 2


def test_a_trial_stopped_before_its_lease_fails_alone_and_says_so(tmp_path, data_dir, slurm_cluster):  # noqa: F811
    from mnistlab.sweep import read_index
    from mnistlab.sweep.executors import create_executor
    from mnistlab.sweep.runner import run_sweep

    sweep_, directory, trial = one_trial(tmp_path, data_dir)
    stopped = []
    fault = in_background(lambda: stopped.append(os.kill(pid := trial_process(trial.run_dir),
                                                        signal.SIGSTOP) or pid))
    executor = create_executor("slurm", {}, 1)
    try:
        counts = run_sweep(sweep_, directory, [trial], executor, lease_timeout=5.0)
    finally:
        executor.close()
        fault.join()
        for pid in stopped:  # SLURM has ended it with its job; if not, no stopped process is left
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert stopped and counts["failed"] == 1
    job = json.loads((trial.run_dir / "job.json").read_text())["job_id"]
    error = read_index(directory)["trials"][trial.hash]["error"]
    assert error.startswith(f"its slurm job {job} ran 5s on host ")
    assert ("without the trial taking its lease (owner.json): the trial's process was stopped or "
            "stuck before training, so the job was cancelled; trial.log ends: [slurm job "
            f"{job} on host ") in error
    assert "filesystem" not in error


@pytest.mark.parametrize("engine", ["local", "slurm"])
def test_a_trial_killed_before_its_lease_says_its_job_ended_and_how(tmp_path, data_dir, engine, request):  # noqa: F811
    if engine == "slurm":
        request.getfixturevalue("slurm_cluster")
    _, _, trial = one_trial(tmp_path, data_dir)
    if engine == "local":  # cold: a trial process of its own to find and kill before its lease
        # (a warm trial, forked, takes its lease within milliseconds; tests/test_warm.py kills it)
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()),
                                        "executor": {"local": {"warm": False}}}))
    driver = subprocess.Popen([sys.executable, "-m", "mnistlab", "sweep", str(tmp_path / "sweep.yaml"),
                               "--executor", engine], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    os.kill(trial_process(trial.run_dir), signal.SIGKILL)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 1 and "Traceback" not in err, out + err
    text = " ".join(out.split())
    if engine == "local":
        assert re.search(r"failed lr-0\.01: its local job \S+ on host \S+ ended \(killed by SIGKILL\) "
                         r"before the trial took its lease \(owner\.json\)", text), text
        return
    job = re.search(r"failed lr-0\.01: its slurm job (\d+) on host \S+ ended \(COMPLETED, exit code "
                    r"0:0\) before the trial took its lease \(owner\.json\); trial\.log ends: "
                    r"\[slurm job (\d+) on host \S+\] starting the trial \[slurm job \d+\] the "
                    r"trial was killed by SIGKILL", text)
    assert job is not None and job.group(1) == job.group(2), text
