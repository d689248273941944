"""The Ray executor under faults, against real Ray: a head that nothing listens at, a head that
does not answer (SIGSTOP), a Ray worker killed under a trial, a head that dies mid-sweep.

The tests start a head of their own (ray start, on free ports, in a temporary directory), so
that what they do to it touches no other Ray on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import wait_for
from test_executors import LONG, data_dir, engine_module, summary, sweep_file, trial_dirs  # noqa: F401

# the head's own ports; left to Ray, some of them are fixed and collide with another Ray here
PORTS = ("port", "ray-client-server-port", "dashboard-port", "dashboard-agent-listen-port",
         "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        out[int(entry.name)] = (int(stat.rpartition(")")[2].split()[1]), cmdline)
    return out


def kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Head:
    """A Ray head started for these tests; its processes are found by its directory and port."""

    def __init__(self, temp_dir: str, port: int):
        self.temp_dir, self.port = temp_dir, port
        self.address = f"127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env = {**env, "RAY_AUTH_MODE": "disabled"}  # a token of ~/.ray would switch it on
        self.seen: dict[int, str] = {}

    def own(self) -> dict[int, str]:
        """Its processes (GCS, raylet, its agents, monitors, client server), not its workers;
        those seen before count while they live (the agents outlive the raylet)."""
        table = processes()
        found = {pid: cmd for pid, (_, cmd) in table.items()
                 if (self.temp_dir in cmd or f":{self.port} " in cmd) and pid != os.getpid()}
        found |= {pid: cmd for pid, (up, cmd) in table.items() if up in found and "Agent" in cmd}
        self.seen |= found
        return {pid: cmd for pid, cmd in self.seen.items() if table.get(pid, (0, ""))[1] == cmd}

    def gcs(self) -> int:
        return next(pid for pid, cmd in self.own().items() if "gcs_server" in cmd)

    def kill(self) -> None:
        """kill -9 of the head's processes; its workers notice and end by themselves."""
        kill(self.own())

    def kill_all(self) -> None:
        """kill -9 of the head and everything it started (workers, trials)."""
        doomed = set(self.own())
        table = processes()
        while True:
            more = {pid for pid, (up, _) in table.items() if up in doomed} - doomed
            if not more:
                break
            doomed |= more
        kill(doomed)


@pytest.fixture(scope="module")
def head():
    engine_module("ray")  # skipped without Ray, failed in CI
    for attempt in range(3):  # a loaded machine can miss Ray's own start-up deadline
        ports = free_ports(len(PORTS))
        started = Head(tempfile.mkdtemp(prefix="mnl-ray-"), ports[0])  # short: socket paths
        done = subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={started.temp_dir}",
             *(f"--{name}={port}" for name, port in zip(PORTS, ports))],
            env=started.env, capture_output=True, text=True, timeout=300)
        if done.returncode == 0:
            started.own()  # its agents, while the raylet is their parent
            break
        started.kill_all()
        shutil.rmtree(started.temp_dir, ignore_errors=True)
        if attempt == 2:
            pytest.fail(f"ray start failed: {done.stdout}{done.stderr}")
    yield started
    started.kill_all()
    shutil.rmtree(started.temp_dir, ignore_errors=True)


def with_executor(path: Path, **ray_options) -> Path:
    definition = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**definition, "executor": {"ray": ray_options}}))
    return path


def sweep(path: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mnistlab", "sweep", str(path), "--executor",
                             "ray", "--jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def paragraph(text: str) -> str:
    return " ".join(text.split())


def connects_to(pid: int, port: int) -> bool:
    """Whether process pid holds a TCP connection to port (Linux)."""
    try:
        mine = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and f"socket:[{fields[9]}]" in mine:
                return True
    return False


def live_trials(directory: Path, min_epochs: int) -> dict[Path, int]:
    """run dir -> pid of the trials that hold their lease, past min_epochs epochs."""
    out = {}
    for owner in directory.glob("*/owner.json"):
        try:
            pid = json.loads(owner.read_text())["pid"]
            done = summary(owner.parent)
        except (OSError, ValueError, KeyError):
            continue
        if done["status"] == "running" and done["epochs_completed"] >= min_epochs:
            out[owner.parent] = pid
    return out


def parent(pid: int) -> int:
    return processes()[pid][0]


def test_an_address_where_nothing_listens_is_refused_at_once(tmp_path, data_dir):
    engine_module("ray")
    [port] = free_ports(1)
    path = with_executor(sweep_file(tmp_path, data_dir, epochs=1), address=f"127.0.0.1:{port}")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "mnistlab", "sweep", str(path), "--executor", "ray"],
                          capture_output=True, text=True, env=env, timeout=120)  # Ray alone: minutes
    assert done.returncode == 2, done.stdout + done.stderr
    error = paragraph(done.stderr)
    assert f"cannot connect to the Ray cluster at 127.0.0.1:{port} (nothing listens there" in error
    assert "ray start --head" in error and "Traceback" not in error
    assert not (tmp_path / "runs" / "s").exists()


def test_a_head_that_does_not_answer_is_given_up_and_sigterm_ends_the_wait(tmp_path, data_dir, head):
    path = with_executor(sweep_file(tmp_path, data_dir, epochs=1), address=head.address,
                         connect_timeout=3)
    gcs = head.gcs()
    os.kill(gcs, signal.SIGSTOP)  # it still accepts connections, and never answers
    try:
        done = subprocess.run([sys.executable, "-m", "mnistlab", "sweep", str(path), "--executor",
                               "ray"], capture_output=True, text=True, env=head.env, timeout=120)
        assert done.returncode == 2, done.stdout + done.stderr
        error = paragraph(done.stderr)
        assert f"cannot connect to the Ray cluster at {head.address} (no answer within 3s" in error
        assert "connect_timeout, now 3s" in error and "Traceback" not in error
        assert done.stdout == ""

        waiting = sweep(with_executor(path, address=head.address), head.env)  # Ray's 60 s default
        wait_for(lambda: connects_to(waiting.pid, head.port) or waiting.poll() is not None, 120)
        signalled = time.monotonic()
        waiting.send_signal(signal.SIGTERM)
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 130, out + err
        assert time.monotonic() - signalled < 30  # Ray alone: 16 s, then exit code 15
        assert (f"interrupted while waiting for the Ray cluster at {head.address} to answer; "
                "nothing was submitted or written") in paragraph(err)
        assert "Traceback" not in err and out == ""
    finally:
        os.kill(gcs, signal.SIGCONT)
    assert not (tmp_path / "runs" / "s").exists()


def test_a_killed_ray_worker_keeps_the_output_clean_and_its_trial_saves_then_continues(
        tmp_path, data_dir, head):
    path = sweep_file(tmp_path, data_dir, epochs=LONG, lrs=(0.01,))
    directory = tmp_path / "runs" / "s"
    driver = sweep(path, {**head.env, "RAY_ADDRESS": head.address})
    [(run_dir, pid)] = wait_for(lambda: live_trials(directory, 1), 600).items()
    os.kill(parent(pid), signal.SIGKILL)  # the Ray worker running the trial's task
    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, out + err
    # Ray prints "(raylet) A worker died ..." in yellow between the sweep's lines unless told not to
    assert "(raylet)" not in out and "\x1b[" not in out and err == "", out + err
    log = (run_dir / "trial.log").read_text()
    assert "interrupted:" in log, log  # SIGTERM when its worker died: it saved, not SIGKILLed
    assert log.count("completed:") == 1 and summary(run_dir)["epochs_completed"] == LONG
    assert (directory / ".ray" / "driver.log").is_file()  # Ray's own messages, apart


def test_a_head_that_dies_mid_sweep_is_named_and_the_same_command_continues(tmp_path, data_dir, head):
    path = sweep_file(tmp_path, data_dir, epochs=LONG)
    directory = tmp_path / "runs" / "s"
    driver = sweep(path, {**head.env, "RAY_ADDRESS": head.address})
    trials = wait_for(lambda: len(live_trials(directory, 1)) == 2 and live_trials(directory, 1), 600)
    (saved, _), (killed, pid) = sorted(trials.items())
    # one trial is lost without a word, with its worker, as on a node that dies; then the head
    # dies, and the other workers end with its raylet
    kill([pid, parent(pid)])
    head.kill()
    out, err = driver.communicate(timeout=300)  # Ray alone: exit 1 after 60 s, its own message
    assert driver.returncode == 1, out + err
    error = paragraph(err)
    assert f"lost the Ray cluster at {head.address}: its head has not answered" in error, error
    assert all(d.name.rsplit("-", 1)[0] in error for d in (saved, killed)), error  # lr-0.01, ...
    assert "run the same command again: it continues each trial" in error
    assert f"{directory / '.ray' / 'driver.log'}" in error and "Traceback" not in error
    assert "(raylet)" not in out and "\x1b[" not in out
    wait_for(lambda: summary(saved)["status"] != "running", 120)
    assert summary(saved)["status"] == "interrupted"  # SIGTERM as its worker ended: it saved
    assert summary(killed)["status"] == "running"  # kill -9: nothing could save it

    env = {k: v for k, v in head.env.items() if k != "RAY_ADDRESS"}  # the same command, another Ray
    again = subprocess.run([sys.executable, "-m", "mnistlab", "sweep", str(path), "--executor", "ray",
                            "--jobs", "2"], capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert trial_dirs(directory) == sorted([saved, killed])
    for run_dir in (saved, killed):
        done = summary(run_dir)
        assert done["status"] == "completed" and done["epochs_completed"] == LONG
        assert (run_dir / "trial.log").read_text().count("completed:") == 1
