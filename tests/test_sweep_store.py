"""The sweep's store and runner without training: states from run directories, the index as a
cache, claims, the trial limit, executor options, and the shared-filesystem check."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mnistlab import files, lease
from mnistlab.cli import app
from mnistlab.config import HASH_VERSION, ConfigError, config_hash, load_config
from mnistlab.errors import ExecutorUnavailable, RunBusy, SweepError
from mnistlab.sweep import build_trials, executors, read_sweep
from mnistlab.sweep.runner import run_sweep
from mnistlab.sweep.store import locked, read_index, scan, trial_states

runner = CliRunner()


class FakeExecutor:
    """Records what it is asked; every job reports the state given."""

    name = "fake"
    detachable, attached_because = True, ""

    def __init__(self, state: str = "finished"):
        self.state, self.submitted, self.cancelled = state, [], []
        self.jobs = 1

    def trial_threads(self, running):
        return 1

    def submit(self, specs):
        self.submitted += specs
        return [f"fake-{len(self.submitted) - len(specs) + i}" for i in range(len(specs))]

    def states(self, job_ids):
        return {i: self.state for i in job_ids}

    def cancel(self, job_ids):
        self.cancelled += job_ids

    def prepare(self):
        pass

    def wait(self, seconds):
        time.sleep(seconds)

    def close(self):
        pass


def big_sweep(tmp_path: Path, tiny_config: Path, n: int) -> Path:
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({"base": tiny_config.name, "name": "big",
                                    "grid": {"optim.lr": [round(1e-4 * (i + 1), 6) for i in range(n // 2)]},
                                    "seeds": [0, 1]}))
    return path


def complete(run_dir: Path, h: str, accuracy: float = 0.5) -> None:
    run_dir.mkdir(parents=True)
    files.write_json(run_dir / "summary.json", {"status": "completed", "config_hash": h,
                                               "hash_version": HASH_VERSION,
                                               "final": {"val": {"accuracy": accuracy}}})


def tree(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*") if p.is_dir()}


def test_2000_completed_trials_are_recognised_from_their_run_directories(tmp_path, tiny_config):
    path = big_sweep(tmp_path, tiny_config, 2000)
    directory, trials = build_trials(read_sweep(path))
    assert len(trials) == 2000
    for i, t in enumerate(trials):  # half in the trial's own directory, half made by older sweeps
        complete(t.run_dir if i % 2 else directory / f"20261129-120000-{t.name}", t.hash)
    before = tree(directory)
    t0 = time.perf_counter()
    sweep = read_sweep(path)
    directory, trials = build_trials(sweep)
    executor = FakeExecutor()
    counts = run_sweep(sweep, directory, trials, executor)
    seconds = time.perf_counter() - t0
    print(f"\nplanning and resume check of 2000 completed trials: {seconds:.2f}s")
    assert executor.submitted == [] and counts["done_before"] == 2000 and counts["not_run"] == 0
    assert tree(directory) == before  # nothing created
    index = read_index(directory)["trials"]
    assert len(index) == 2000 and {e["status"] for e in index.values()} == {"completed"}

    (directory / "sweep.json").write_bytes(b"\x00garbage{")  # a damaged cache is rebuilt
    run_sweep(sweep, directory, trials, executor)
    assert executor.submitted == [] and len(read_index(directory)["trials"]) == 2000
    (directory / "sweep.json").unlink()  # and a deleted one loses nothing
    assert run_sweep(sweep, directory, trials, executor)["done_before"] == 2000
    assert len(read_index(directory)["trials"]) == 2000


def test_states_come_from_lease_job_and_summary(tmp_path, tiny_config):
    path = big_sweep(tmp_path, tiny_config, 6)
    directory, trials = build_trials(read_sweep(path))
    done, live, dead, queued, failed, new = trials
    complete(done.run_dir, done.hash)
    for t in (live, dead):
        t.run_dir.mkdir(parents=True)
        files.write_json(t.run_dir / "summary.json", {"status": "running", "config_hash": t.hash,
                                                       "hash_version": HASH_VERSION})
    files.write_json(live.run_dir / "owner.json", {"host": "elsewhere", "pid": 1,
                                                  "heartbeat": time.time()})
    files.write_json(dead.run_dir / "owner.json", {"host": "elsewhere", "pid": 1,
                                                  "heartbeat": time.time() - 3600})
    queued.run_dir.mkdir(parents=True)
    files.write_json(queued.run_dir / "job.json", {"executor": "slurm", "job_id": "42"})
    failed.run_dir.mkdir(parents=True)
    files.write_json(failed.run_dir / "summary.json", {"status": "failed", "config_hash": failed.hash,
                                                      "hash_version": HASH_VERSION,
                                                      "error": "diverged"})
    states = trial_states(trials, scan(directory), lambda jobs: {"42"})
    assert [states[t.hash].state for t in trials] == [
        "completed", "running", "stopped", "queued", "failed", "new"]
    gone = trial_states(trials, scan(directory), lambda jobs: set())
    assert gone[queued.hash].state == "new"  # its job no longer exists



def test_a_trial_another_command_completes_before_this_one_submits_counts_as_completed(
        tmp_path, tiny_config):
    """Between reading the trials' states and claiming them, a sweep command checks the data
    (a second or two); another command of the same sweep may run a trial to its end meanwhile."""
    path = big_sweep(tmp_path, tiny_config, 2)
    sweep = read_sweep(path)
    directory, trials = build_trials(sweep)

    class Meanwhile(FakeExecutor):
        def prepare(self):  # called after the first look at the states, before the claims
            for t in trials:
                complete(t.run_dir, t.hash)

    executor = Meanwhile()
    counts = run_sweep(sweep, directory, trials, executor)
    assert executor.submitted == []
    assert counts["completed"] == 2 and counts["not_run"] == 0 and counts["failed"] == 0
    assert {e["status"] for e in read_index(directory)["trials"].values()} == {"completed"}


def test_finished_jobs_without_a_result_are_failed_not_retried_forever(tmp_path, tiny_config):
    path = big_sweep(tmp_path, tiny_config, 2)
    sweep = read_sweep(path)
    directory, trials = build_trials(sweep)
    executor = FakeExecutor("finished")  # every job "ends" at once and writes nothing
    counts = run_sweep(sweep, directory, trials, executor)
    assert len(executor.submitted) == 2 and counts["failed"] == 2
    for spec, t in zip(executor.submitted, trials):  # each trial trains its pinned config
        assert spec.argv[spec.argv.index("--run-dir") + 1] == str(t.run_dir.resolve())
        assert spec.argv[spec.argv.index("--config-hash") + 1] == t.hash
        assert config_hash(load_config(t.run_dir / "trial.yaml")) == t.hash
    assert all((t.run_dir / "job.json").is_file() for t in trials)


def test_a_job_that_never_shows_its_lease_means_the_disk_is_not_shared(tmp_path, tiny_config):
    path = big_sweep(tmp_path, tiny_config, 2)
    sweep = read_sweep(path)
    directory, trials = build_trials(sweep)
    executor = FakeExecutor("running")
    with pytest.raises(SweepError, match="not on a filesystem the workers share") as e:
        run_sweep(sweep, directory, trials, executor, lease_timeout=0.3)
    assert str(directory.resolve()) in str(e.value)
    assert sorted(executor.cancelled) == ["fake-0", "fake-1"]  # what it submitted is cancelled


def test_trial_count_limit_is_checked_before_expanding(tmp_path, tiny_config):
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump({"base": tiny_config.name, "random": {
        "n": 10**9, "optim.lr": {"loguniform": [1e-4, 1e-1]}}}))
    t0 = time.perf_counter()
    result = runner.invoke(app, ["sweep", str(path)])
    print(f"\nrefusing a billion trials took {time.perf_counter() - t0:.2f}s")
    assert result.exit_code == 2 and "1,000,000,000 trials" in result.stderr
    assert "--max-trials" in result.stderr
    sweep = read_sweep(path)
    sweep.random["n"] = 3
    assert len(build_trials(sweep, limit=3)[1]) == 3
    with pytest.raises(ConfigError, match="more than the limit of 2"):
        build_trials(sweep, limit=2)


def test_executor_block_is_validated_with_suggestions(tmp_path, tiny_config):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": tiny_config.name, "grid": {"optim.lr": [0.1]},
                                    "executor": {"slurm": {"partiton": "cpu", "time": 10},
                                                 "rayy": {}}}))
    result = runner.invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "executor.slurm.partiton: unknown setting, did you mean partition?" in result.stderr
    assert "executor.rayy: unknown executor, did you mean ray?" in result.stderr
    bad = runner.invoke(app, ["sweep", str(path), "--executor", "sge"])
    assert bad.exit_code == 2 and "--executor sge: unknown executor" in bad.stderr


def test_missing_engine_is_executor_unavailable(monkeypatch):
    def missing():
        import mnistlab.sweep.executors.no_such_engine  # noqa: F401

    monkeypatch.setitem(executors.EXECUTORS, "slurm", missing)
    with pytest.raises(ExecutorUnavailable, match="no slurm executor"):
        executors.create_executor("slurm", {}, 1)

    def no_package():
        import no_such_package_for_mnistlab  # noqa: F401

    monkeypatch.setitem(executors.EXECUTORS, "ray", no_package)
    with pytest.raises(ExecutorUnavailable, match=r"pip install -e \"\.\[ray\]\""):
        executors.create_executor("ray", {}, 1)


def test_grid_sweeps_of_a_config_get_their_own_directories(tiny_config):
    a = read_sweep(tiny_config, grid=["optim.lr=0.1,0.01"], seeds="0,1")
    b = read_sweep(tiny_config, grid=["model.channels=[4,8],[8,16]"])
    assert a.name == "tiny-lr-seed" and b.name == "tiny-channels"
    assert read_sweep(tiny_config, grid=["optim.lr=0.1"], name="mine").name == "mine"


def test_lease_of_another_host_lives_by_its_heartbeat(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    files.write_json(run / "owner.json", {"host": "elsewhere", "pid": 1, "heartbeat": time.time(),
                                         "executor": {"name": "slurm", "job_id": "7_1"}})
    taker = lease.Lease()
    with pytest.raises(RunBusy, match="pid 1 on host elsewhere \\(slurm job 7_1\\)"):
        taker.acquire(run)
    files.write_json(run / "owner.json", {"host": "elsewhere", "pid": 1,
                                         "heartbeat": time.time() - 2 * lease.LEASE_SECONDS})
    with lease.Lease() as taker:
        taker.acquire(run)  # a stale heartbeat: the owner is dead
        owner = json.loads((run / "owner.json").read_text())
        assert owner["host"] == socket.gethostname() and lease.live_owner(run)["token"] == owner["token"]
    assert not (run / "owner.json").exists()  # released


def test_missing_data_is_said_once_before_any_trial_starts(tmp_path, tiny_config):
    cfg = yaml.safe_load(tiny_config.read_text())
    cfg["data"]["root"] = str(tmp_path / "nowhere")
    offline = tmp_path / "offline.yaml"
    offline.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["sweep", str(offline), "--grid", "optim.lr=0.1,0.01"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.count("error:") == 1 and "nowhere" in result.stderr
    assert not (tmp_path / "runs").exists()  # no trial started, no folder made


def test_quadratic_table_has_no_empty_or_repeated_columns(tmp_path):
    from mnistlab.sweep import Sweep, Trial
    from mnistlab.sweep.store import TrialState
    from mnistlab.sweep.summary import report_table, summarize, write_report

    sweep = Sweep(name="q", base=tmp_path / "q.yaml", grid={"optim.lr": [0.1, 0.5]})
    from mnistlab.config import Config

    trials = [Trial(f"lr-{lr}", {"optim.lr": lr}, [], Config(task="quadratic"), f"h{lr}",
                    tmp_path / f"t{lr}") for lr in (0.1, 0.5)]
    states = {t.hash: TrialState("completed", t.run_dir, {"result": {"f": t.params["optim.lr"]},
                                                         "train_seconds": 0.1}) for t in trials}
    rows = summarize(sweep, trials, states, "f")
    table = report_table(sweep, rows, "f")
    headers = [c.header for c in table.columns]
    assert headers == ["optim.lr", "f", "runs", "train s"] and "seeds" not in table.title
    write_report(sweep, tmp_path, rows, "f")
    md = (tmp_path / "summary.md").read_text()
    assert "test acc" not in md and "over seeds" not in md and "one run each" in md

    for t in trials:
        states[t.hash].summary["final"] = {"test": {"accuracy": 0.9}}
    rows = summarize(sweep, trials, states, "test_accuracy")
    headers = [c.header for c in report_table(sweep, rows, "test_accuracy").columns]
    assert headers == ["optim.lr", "test_accuracy (%)", "runs", "train s"]  # not twice


def test_a_trial_trains_the_config_its_sweep_validated_even_if_the_base_changes(tmp_path,
                                                                               tiny_config):
    """The base file edited while trials wait in a queue: they train what was validated, in
    folders named after its hash (they trained the edited config before, and failed forever
    once the edit was reverted)."""
    path = big_sweep(tmp_path, tiny_config, 2)
    sweep = read_sweep(path)
    directory, trials = build_trials(sweep)
    base = yaml.safe_load(tiny_config.read_text())
    tiny_config.write_text(yaml.safe_dump({**base, "optim": {**base["optim"], "name": "sgd"}}))
    counts = run_sweep(sweep, directory, trials, executors.create_executor("local", {}, 1))
    assert counts["failed"] == 0
    for t in trials:
        summary = json.loads((t.run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["config_hash"] == t.hash
    pinned = t.run_dir / "trial.yaml"
    result = CliRunner().invoke(app, ["train", str(pinned), "--run-dir", str(t.run_dir),
                                      "--config-hash", "0" * 12])
    assert result.exit_code == 2 and "not the 000000000000 its sweep validated" in result.output


def test_a_lock_whose_release_a_ctrl_c_skipped_does_not_block_the_same_process(tmp_path):
    """Ctrl-C between taking the sweep lock and entering its block skips the release (contextlib's
    __enter__); the interrupted sweep then writes its index under the lock. Before, it waited on
    its own lock forever (seen once in 15 Ctrl-Cs of a SLURM sweep)."""
    directory = tmp_path / "s"
    skipped = locked(directory)
    skipped.__enter__()  # the block never entered, so never left
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a')\n"
             "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n"
             "    sys.exit(3)")
    other = [sys.executable, "-c", probe, str(directory / ".sweep.lock")]
    assert subprocess.run(other).returncode == 3  # another process still waits for it
    done = threading.Event()

    def again():
        with locked(directory):
            done.set()

    thread = threading.Thread(target=again, daemon=True)
    thread.start()
    thread.join(10)
    assert done.is_set()  # this process takes it again
    assert subprocess.run(other).returncode == 0  # and releases it at the end of that block
    shutil.rmtree(directory)  # a sweep folder removed and made again gets a lock file anew
    with locked(directory):
        assert subprocess.run(other).returncode == 3
