"""Warm trials (sweep/warm.py): forked from one process that has imported torch and read the data,
and still each a process of its own: run directory, lease, exit status, signals, crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from typer.testing import CliRunner

from conftest import tiny_config_dict, wait_for
from mnistlab.cli import app
from mnistlab.sweep.warm import WarmServer

runner = CliRunner()

NETS = '''import os
import signal

import torch
from torch import nn


class Fine(nn.Module):
    def __init__(self, num_classes=10, image_shape=(1, 28, 28)):
        super().__init__()
        self.fc = nn.Linear(image_shape[0] * image_shape[1] * image_shape[2], num_classes)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(torch.flatten(x, 1))


class Crash(Fine):
    """Dies in native fashion (SIGSEGV) on its fifth forward pass, in the middle of training."""

    def forward(self, x):
        if self.calls >= 4 and self.training:
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().forward(x)
'''


def summaries(directory: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*/summary.json"))]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_local_sweep_forks_each_trial_from_one_warm_process(tmp_path, tiny_config):
    result = runner.invoke(app, ["sweep", str(tiny_config), "--grid", "optim.lr=0.02,0.01,0.005",
                                 "train.epochs=1"])
    assert result.exit_code == 0, result.output
    done = summaries(tmp_path / "runs" / "tiny-lr")
    assert [s["status"] for s in done] == ["completed"] * 3
    pids = {s["pid"] for s in done}
    forked = {s["executor"]["forked_from"] for s in done}
    assert len(pids) == 3 and len(forked) == 1 and not pids & forked  # three processes, one parent
    assert gone(forked.pop())  # the warm process ended with the sweep


def test_warm_false_starts_each_trial_as_a_fresh_python(tmp_path, tiny_data):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict(tiny_data, tmp_path / "runs")))
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"name": "cold", "base": "tiny.yaml", "grid": {"optim.lr": [0.02, 0.01]},
                                    "overrides": ["train.epochs=1"],
                                    "executor": {"local": {"warm": False}}}))
    result = runner.invoke(app, ["sweep", str(spec)])
    assert result.exit_code == 0, result.output
    done = summaries(tmp_path / "runs" / "cold")
    assert [s["status"] for s in done] == ["completed"] * 2
    assert all("forked_from" not in s["executor"] for s in done)

    spec.write_text(spec.read_text().replace("warm: false", "warm: sometimes"))
    bad = runner.invoke(app, ["sweep", str(spec), "--dry-run"])
    assert bad.exit_code == 2 and "executor.local.warm: give true" in bad.output
    assert "Traceback" not in bad.output


def test_a_trial_that_crashes_takes_no_other_trial_down(tmp_path, tiny_data):
    (tmp_path / "nets.py").write_text(NETS)
    cfg = tiny_config_dict(tiny_data, tmp_path / "runs", model={"kind": "module", "module": "nets.py:Fine"})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["sweep", str(tmp_path / "tiny.yaml"), "--grid",
                                 f"model.module={tmp_path}/nets.py:Fine,{tmp_path}/nets.py:Crash",
                                 "--seeds", "0,1", "train.epochs=1", "--name", "crash"])
    assert result.exit_code == 1, result.output  # the crashed trial failed, and the sweep says so
    assert "did not complete" in result.output + result.stderr
    directory = tmp_path / "runs" / "crash"
    index = json.loads((directory / "sweep.json").read_text())["trials"]
    statuses = sorted(t["status"] for t in index.values())
    assert statuses == ["completed"] * 2 + ["failed"] * 2, index  # Crash with each seed
    done = [s for s in summaries(directory) if s["status"] == "completed"]
    # the trials after the crash still came from the same warm process: it outlived the crash
    assert len({s["executor"]["forked_from"] for s in done}) == 1
    assert [t["error"].endswith("the trial process was killed by SIGSEGV")
            for t in index.values() if t["status"] == "failed"] == [True, True]


def test_a_killed_warm_process_stops_its_trial_which_the_sweep_continues(tmp_path, tiny_config):
    command = [sys.executable, "-m", "mnistlab", "sweep", str(tiny_config), "--grid",
               "optim.lr=0.02", "train.epochs=30", "train.log_every=0"]
    directory = tmp_path / "runs" / "tiny-lr"
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def running_trial():
        for path in directory.glob("*/summary.json"):
            try:
                summary = json.loads(path.read_text())
            except ValueError:
                continue
            if summary["status"] == "running" and summary["epochs_completed"] >= 2:
                return summary
        return None

    trial = wait_for(running_trial, timeout=120)
    server = trial["executor"]["forked_from"]
    os.kill(server, signal.SIGKILL)  # the warm process dies; its trial gets SIGTERM and saves
    out, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, out
    [summary] = summaries(directory)
    assert summary["status"] == "completed" and summary["resumes"], summary
    assert summary["executor"]["forked_from"] != server  # continued from a new warm process
    epochs = [json.loads(line)["epoch"] for line in
              (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()
              if '"event": "epoch"' in line and '"split": "train"' in line]
    assert epochs == list(range(1, 31))  # each epoch trained once: stopped, then continued


def test_the_server_runs_any_command_and_reports_exit_codes_and_signals(tmp_path):
    server = WarmServer()
    try:
        ok = server.start("a", ["/bin/sh", "-c", "echo hello; exit 3"], {}, str(tmp_path / "a.log"), 1)
        slow = server.start("b", ["/bin/sh", "-c", "sleep 30"], {}, str(tmp_path / "b.log"), 1)
        slow.send_signal(signal.SIGTERM)  # reaches it even if the server has not started it yet
        assert ok.wait(60) == 3 and (tmp_path / "a.log").read_text() == "hello\n"
        assert slow.wait(60) == -signal.SIGTERM
    finally:
        server.close()
    assert server.proc is None or server.proc.wait(30) == 0


def test_prepare_starts_the_warm_process_ahead_and_close_ends_it_unused(tmp_path):
    from mnistlab.sweep.executors.local import LocalExecutor

    executor = LocalExecutor({}, 1)
    executor.prepare()  # the sweep command does so before it checks the data
    proc = executor.warm.proc
    assert proc is not None and proc.poll() is None  # importing torch meanwhile
    executor.prepare()
    assert executor.warm.proc is proc  # one warm process, however often asked
    executor.close()  # a check failed: no trial will come, and none is waited for
    assert proc.poll() is not None and executor.warm.proc is None


def test_wait_returns_when_a_warm_trial_ends_not_at_its_timeout(tmp_path):
    from mnistlab.sweep.executors.base import TrialSpec
    from mnistlab.sweep.executors.local import LocalExecutor

    executor = LocalExecutor({}, 1)
    try:
        spec = TrialSpec("t", "t", ["/bin/sh", "-c", "exit 0"], tmp_path, tmp_path / "t.log", 1, {})
        t0 = time.monotonic()
        [job] = executor.submit([spec])
        # a trial that ends at once ends a long wait: the server reports the trial's start and
        # end as they happen, and wait returns on each report
        while executor.states([job])[job] != "finished":
            executor.wait(300)
        assert time.monotonic() - t0 < 150
    finally:
        executor.close()


def test_a_warm_trial_imports_nothing_its_server_has_not(tmp_path, tiny_config):
    """What a trial imports after the fork, each trial pays again: the server imports it once."""
    code = f"""
import json
import sys
from mnistlab import forkserver
forkserver.preload()
argv = ["mnistlab", "train", {str(tiny_config)!r}, "--quiet", "train.epochs=1"]
forkserver.warm_data(["python", "-m", *argv])
before = set(sys.modules)
sys.argv = argv
from mnistlab.cli import main
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
print(json.dumps(sorted(set(sys.modules) - before)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    new = json.loads(out.stdout.strip().splitlines()[-1])
    # torch._dynamo is the stand-in that the torch platform puts in place, a module object only
    assert set(new) <= {"torch._dynamo"}, new
