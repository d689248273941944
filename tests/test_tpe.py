"""Sweeps with tpe: parsing, seeded proposals, real searches that attach, survive kills, and prune."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import wait_for
from typer.testing import CliRunner

from mnistlab import rundir
from mnistlab.cli import app
from mnistlab.config import ConfigError
from mnistlab.sweep import read_sweep
from mnistlab.sweep.tpe import PROPOSAL, propose

runner = CliRunner()
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SPACE = {"optim.lr": {"loguniform": [1e-3, 1e-1]}, "optim.name": ["sgd", "adam"],
         "train.batch_size": {"int": [16, 64]}}


def tpe_file(tmp_path: Path, base: Path, n: int, **extra) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"base": base.name, "tpe": {"n": n, "seed": 0, **SPACE},
                                    "overrides": {"train.log_every": 0}, **extra}))
    return path


def proposed(directory: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) | {"run_dir": p.parent}
                   for p in directory.glob(f"*/{PROPOSAL}")), key=lambda r: r["number"])


def train_epochs(run_dir: Path) -> list[int]:
    if not (run_dir / "metrics.jsonl").is_file():
        return []
    return [r["epoch"] for r in rundir.read_metrics(run_dir / "metrics.jsonl")
            if r.get("event") == "epoch" and r.get("split") == "train"]


def test_tpe_block_parses_and_every_problem_is_named(tmp_path, tiny_config):
    sweep = read_sweep(tpe_file(tmp_path, tiny_config, 6))
    assert sweep.tpe == {"n": 6, "seed": 0, "startup": 2,
                         "space": {"optim.lr": {"loguniform": [1e-3, 1e-1]},
                                   "optim.name": ["sgd", "adam"],
                                   "train.batch_size": {"int": [16.0, 64.0]}}}
    assert sweep.keys == ["optim.lr", "optim.name", "train.batch_size"]
    shipped = read_sweep(CONFIGS / "sweep-tpe.yaml")
    assert shipped.tpe["n"] == 24 and len(shipped.tpe["space"]) == 4

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": tiny_config.name, "grid": {"model.hidden": [[8]]},
                                   "tpe": {"n": 0, "sed": 1, "optim.lr": {"logunifrom": [1e-3, 1]},
                                           "optim.name": ["sgd", "sgd"]}}))
    with pytest.raises(ConfigError) as e:
        read_sweep(bad)
    text = str(e.value)
    for part in ("tpe.n: 0: give the trial budget", "tpe.sed: unknown setting, did you mean seed?",
                 "tpe.optim.lr: logunifrom: unknown range, did you mean loguniform?",
                 "tpe.optim.name: a value is listed twice", "grid: and tpe: do not combine"):
        assert part in text
    result = runner.invoke(app, ["sweep", str(bad)])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_the_same_seed_and_results_propose_the_same_points():
    tpe = {"n": 10, "seed": 3, "startup": 2, "space": SPACE}
    history = [({"optim.lr": 0.01, "optim.name": "adam", "train.batch_size": 32}, "complete", 0.9, None),
               ({"optim.lr": 0.002, "optim.name": "sgd", "train.batch_size": 60}, "complete", 0.4, None),
               ({"optim.lr": 0.05, "optim.name": "sgd", "train.batch_size": 20}, "pruned", 0.3, 1),
               ({"optim.lr": 0.09, "optim.name": "adam", "train.batch_size": 16}, "fail", None, None),
               ({"optim.lr": 0.02, "optim.name": "adam", "train.batch_size": 40}, "running", None, None)]
    first = propose(tpe, True, history, 3)
    assert first == propose(tpe, True, history, 3)  # two fresh proposal steps, the same next points
    assert len({json.dumps(p, sort_keys=True) for p in first + [h[0] for h in history]}) == 8
    for p in first:
        assert 1e-3 <= p["optim.lr"] <= 1e-1 and p["optim.lr"] == float(f"{p['optim.lr']:.3g}")
        assert p["optim.name"] in ("sgd", "adam") and 16 <= p["train.batch_size"] <= 64
    assert first != propose({**tpe, "seed": 4}, True, history, 3)
    assert propose(tpe, True, [], 2) == propose(tpe, True, [], 2)
    tiny = {"n": 4, "seed": 0, "startup": 1, "space": {"optim.name": ["sgd", "adam"]}}
    assert len(propose(tiny, True, [({"optim.name": "sgd"}, "complete", 0.5, None)], 3)) == 1


def test_a_search_completes_its_budget_and_a_rerun_submits_nothing(tmp_path, tiny_config):
    args = ["sweep", str(tpe_file(tmp_path, tiny_config, 4)), "train.epochs=1"]
    directory = tmp_path / "runs" / "search"
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = proposed(directory)
    assert [r["number"] for r in records] == [0, 1, 2, 3]
    for r in records:
        summary = json.loads((r["run_dir"] / "summary.json").read_text())
        config = yaml.safe_load((r["run_dir"] / "config.yaml").read_text())
        assert summary["status"] == "completed" and config["optim"]["lr"] == r["params"]["optim.lr"]
    assert len(list(csv.DictReader((directory / "summary.csv").open()))) == 4
    assert "best so far: optim.lr=" in result.output and "4 completed" in result.output

    (directory / "sweep.json").unlink()  # a cache: the study comes from the run directories
    stamps = {p: p.stat().st_mtime_ns for p in directory.glob("*/summary.json")}
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "nothing to run: 4 of 4" in again.output
    assert {p: p.stat().st_mtime_ns for p in directory.glob("*/summary.json")} == stamps
    dry = runner.invoke(app, args + ["--dry-run"])
    assert dry.exit_code == 0, dry.output
    for part in ("a budget of 4 trials", "TPESampler (seed 0)", "maximizing val_accuracy",
                 "optim.lr: log-uniform in [0.001, 0.1]", "4 proposed, 4 finished, 0 to propose",
                 "best so far optim.lr="):
        assert part in dry.output


def test_a_killed_driver_loses_nothing_and_each_trial_trains_once(tmp_path, tiny_config):
    epochs = 40
    path = tpe_file(tmp_path, tiny_config, 4)
    command = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, "
               "signal.SIG_DFL); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
               "-m", "mnistlab", "sweep", str(path), f"train.epochs={epochs}"]
    directory = tmp_path / "runs" / "search"
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def running(number: int):  # a trial proposed as this number has trained an epoch
        records = proposed(directory)
        if len(records) <= number:
            return None
        return train_epochs(records[number]["run_dir"]) and (records[number]["run_dir"] / "owner.json").exists()

    driver = subprocess.Popen(command, **pipes)
    wait_for(lambda: running(0))
    driver.send_signal(signal.SIGTERM)  # as Ctrl-C: the trial saves, the driver exits 130
    out, _ = driver.communicate(timeout=300)
    assert driver.returncode == 130, out
    assert len(proposed(directory)) == 1

    driver = subprocess.Popen(command, **pipes)
    wait_for(lambda: running(1))
    driver.kill()  # kill -9 mid-study: its trial lives on, the next driver attaches to it
    driver.wait()
    final = subprocess.run(command, timeout=900, **pipes)
    assert final.returncode == 0, final.stdout
    records = proposed(directory)
    assert [r["number"] for r in records] == [0, 1, 2, 3]
    assert len({r["run_dir"] for r in records}) == 4 == len(list(directory.glob("*/summary.json")))
    for r in records:  # every epoch once: continued from its checkpoint, never trained twice
        summary = json.loads((r["run_dir"] / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert train_epochs(r["run_dir"]) == list(range(1, epochs + 1))


def test_tpe_with_prune_halves_brackets_of_proposals(tmp_path, tiny_config):
    args = ["sweep", str(tpe_file(tmp_path, tiny_config, 4)), "train.epochs=2", "--prune"]
    directory = tmp_path / "runs" / "search"
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "tpe: bracket 1, 2 configurations proposed" in result.output
    records = proposed(directory)
    assert [r["batch"] for r in records] == [0, 0, 1, 1]
    for batch in (0, 1):  # rungs 1 and 2: one of each pair goes on, the other stays pruned
        statuses = sorted(json.loads((r["run_dir"] / "summary.json").read_text())["status"]
                          for r in records if r["batch"] == batch)
        assert statuses == ["completed", "pruned"]
    rows = list(csv.DictReader((directory / "summary.csv").open()))
    assert sorted(r["pruned_at"] for r in rows) == ["", "", "1", "1"]
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "rung epoch" not in again.output and len(proposed(directory)) == 4
    # a finished search says so, not "0 trial runs ... 0 of the 0 epochs (0%)"
    assert "nothing to run: every configuration is completed or pruned" in again.output
    assert "0 trial runs" not in again.output and "of the 0" not in again.output
