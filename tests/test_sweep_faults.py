"""Sweeps and runs under faults, with real processes: drivers racing or killed with kill -9, a
trial stopped by SIGTERM, a second writer of a live run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from conftest import wait_for

from mnistlab import lease, rundir
from mnistlab.cli import app

runner = CliRunner()


def live_trial(directory: Path, min_epochs: int = 0):
    """(pid, run dir) of a trial that holds its lease and has completed min_epochs epochs."""
    for owner in directory.glob("*/owner.json"):
        try:
            pid = json.loads(owner.read_text())["pid"]
            summary = json.loads((owner.parent / "summary.json").read_text())
        except (OSError, ValueError, KeyError):
            continue
        if summary["status"] == "running" and summary["epochs_completed"] >= min_epochs:
            return pid, owner.parent
    return None


def train_epochs(run_dir: Path) -> list[int]:
    return [r["epoch"] for r in rundir.read_metrics(run_dir / "metrics.jsonl")
            if r.get("event") == "epoch" and r.get("split") == "train"]


def test_racing_drivers_and_a_killed_driver_run_each_trial_once(tmp_path, tiny_config):
    epochs = 25
    command = [sys.executable, "-m", "mnistlab", "sweep", str(tiny_config), "--grid",
               "optim.lr=0.02,0.01,0.005", f"train.epochs={epochs}", "train.log_every=0"]
    directory = tmp_path / "runs" / "tiny-lr"
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = subprocess.Popen(command, **pipes)
    second = subprocess.Popen(command, **pipes)  # two drivers at once
    wait_for(lambda: live_trial(directory))
    first.kill()  # kill -9 of a driver mid-sweep; its trial processes live on
    first.wait()
    again = subprocess.Popen(command, **pipes)  # started again: attaches, submits what is missing
    outputs = [p.communicate(timeout=900)[0] for p in (second, again)]
    assert [second.returncode, again.returncode] == [0, 0], "\n=====\n".join(outputs)
    trial_dirs = sorted(p.parent for p in directory.glob("*/summary.json"))
    assert len(trial_dirs) == 3
    for run_dir in trial_dirs:  # each trial completed once: no second writer, no second run
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert train_epochs(run_dir) == list(range(1, epochs + 1))


def test_trial_stopped_by_sigterm_continues_to_the_exact_metrics(tmp_path, tiny_config):
    args = ["--seeds", "0", "train.epochs=30", "train.log_every=0"]
    directory = tmp_path / "runs" / "tiny-seed"
    sweep = subprocess.Popen([sys.executable, "-m", "mnistlab", "sweep", str(tiny_config), *args],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pid, run_dir = wait_for(lambda: live_trial(directory, 1))
    os.kill(pid, signal.SIGTERM)  # preemption: the trial saves, the sweep submits it again
    out, _ = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, out
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["status"] == "completed" and train_epochs(run_dir)[-1] == 30

    reference = tmp_path / "reference"
    result = subprocess.run([sys.executable, "-m", "mnistlab", "train", str(tiny_config),
                             "train.seed=0", "train.epochs=30", "train.log_every=0",
                             "--run-dir", str(reference), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    uninterrupted = json.loads((reference / "summary.json").read_text())
    assert uninterrupted["config_hash"] == resumed["config_hash"]
    assert resumed["final"] == uninterrupted["final"] and resumed["best"] == uninterrupted["best"]


def test_second_writer_of_a_live_run_is_refused(tmp_path, tiny_config):
    run_dir = tmp_path / "live"
    trainer = subprocess.Popen([sys.executable, "-m", "mnistlab", "train", str(tiny_config),
                                "train.epochs=100000", "train.log_every=0", "--run-dir", str(run_dir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: live_trial(tmp_path, 1))
        summary = (run_dir / "summary.json").read_bytes()
        result = runner.invoke(app, ["train", "--resume", str(run_dir)])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert f"is being written by another live process, pid {trainer.pid}" in result.stderr
        again = runner.invoke(app, ["train", str(tiny_config), "--run-dir", str(run_dir)])
        assert again.exit_code == 2 and "another live process" in again.stderr
        assert json.loads(summary)["pid"] == trainer.pid
    finally:
        trainer.kill()  # kill -9: the owner dies without releasing its lease
        trainer.wait()
    assert (run_dir / "owner.json").exists() and lease.live_owner(run_dir) is None  # known dead
    taker = lease.Lease()
    taker.acquire(run_dir)  # so the next writer may take it over
    taker.release()


def overhead(out: str) -> float | None:
    found = re.search(r"sweep overhead (-?[\d.]+)s per trial", out)
    return None if found is None else float(found.group(1))


def test_a_trial_another_driver_started_is_no_overhead_of_the_one_that_follows_it(tmp_path, tiny_config):
    # half of its 150 epochs (a second or two) trained before the next driver starts
    command = [sys.executable, "-m", "mnistlab", "sweep", str(tiny_config), "--grid", "optim.lr=0.01",
               "train.epochs=150", "train.log_every=0"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid, _ = wait_for(lambda: live_trial(tmp_path / "runs" / "tiny-lr", 75))
    first.kill()  # its trial trains on; the next driver follows it to its end
    first.wait()
    os.kill(pid, signal.SIGSTOP)  # until the next driver has started: it must find the trial running
    follower = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # nothing of its own to run: it follows the other driver's trial
        assert "1 running in another sweep, 0 to run" in follower.stdout.readline()
    finally:
        os.kill(pid, signal.SIGCONT)
    out, err = follower.communicate(timeout=900)
    assert follower.returncode == 0, out + err
    assert "1 trials in" in out and "1 completed" in out
    # it ran no trial of its own: the trial's wall time began before it did
    assert overhead(out) is None, out


def test_the_overhead_of_a_resumed_trial_counts_only_its_session_in_this_sweep(tmp_path, tiny_config):
    command = [sys.executable, "-m", "mnistlab", "sweep", str(tiny_config), "--grid", "optim.lr=0.01",
               "train.epochs=40", "train.log_every=0"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, run_dir = wait_for(lambda: live_trial(tmp_path / "runs" / "tiny-lr", 1))
    first.send_signal(signal.SIGTERM)  # the trial saves and records itself interrupted
    assert first.wait(timeout=300) == 130
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    # as if its first session had lasted 1000 s longer: the wall time of a resumed run sums its sessions
    summary["wall_seconds"] += 1000
    (run_dir / "summary.json").write_text(json.dumps(summary))
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    done = json.loads((run_dir / "summary.json").read_text())
    assert done["status"] == "completed" and done["wall_seconds"] > 1000
    seconds = float(re.search(r"1 trials in ([\d.]+)s", again.stdout).group(1))
    assert 0 <= overhead(again.stdout) <= seconds, again.stdout  # this sweep's time, not 1000 s before it
