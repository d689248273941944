"""mnistlab sweep: expansion, validation, parallel runs, resume, failures, signals and the report."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import yaml
from conftest import wait_for
from typer.testing import CliRunner

from mnistlab.cli import app
from mnistlab.config import ConfigError, load_config, parse_override
from mnistlab.sweep import (
    Sweep,
    build_trials,
    expand,
    format_value,
    locked_index,
    parse_grid_option,
    read_sweep,
    sample_random,
    split_values,
)

runner = CliRunner()
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def sweep_dirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if (p / "summary.json").is_file())


def index(directory: Path) -> dict:
    return json.loads((directory / "sweep.json").read_text())["trials"]


def test_grid_expands_to_the_cartesian_product_times_seeds():
    sweep = Sweep(name="s", base=Path("x.yaml"), grid={"optim.lr": [0.1, 0.01, 1e-3],
                                                       "model.channels": [[8, 16], [16, 32]]},
                  seeds=[0, 1])
    points = expand(sweep)
    assert len(points) == 3 * 2 * 2
    assert len({json.dumps(p, sort_keys=True) for p in points}) == 12
    assert points[0] == {"optim.lr": 0.1, "model.channels": [8, 16], "train.seed": 0}
    assert sweep.keys == ["optim.lr", "model.channels", "train.seed"]


@pytest.mark.parametrize("value", [0.1, 1e-05, 1e12, 3, True, None, "sgd", "1e-3", "yes", [16, 32],
                                   "a,b"])
def test_format_value_reads_back_as_the_same_value(value):
    text = format_value(value)
    parsed = parse_override(f"k={text}")[1]
    assert parsed == value or (isinstance(value, float) and float(parsed) == value)


def test_grid_option_splits_only_outside_brackets():
    assert split_values("[8,16],[16,32]") == ["[8,16]", "[16,32]"]
    assert parse_grid_option("model.channels=[8,16],[16,32]") == ("model.channels", [[8, 16], [16, 32]])
    assert parse_grid_option("optim.name=sgd,adamw") == ("optim.name", ["sgd", "adamw"])
    with pytest.raises(ConfigError):
        parse_grid_option("optim.lr")


def test_random_sampling_counts_no_repeats_reproducible():
    space = {"optim.lr": {"loguniform": [1e-4, 1e-1]}, "optim.name": ["sgd", "adamw"],
             "train.batch_size": {"int": [16, 64]}}
    a = sample_random(space, 20, seed=3)
    assert len(a) == 20 and len({json.dumps(p, sort_keys=True) for p in a}) == 20
    assert a == sample_random(space, 20, seed=3)
    assert a != sample_random(space, 20, seed=4)
    assert sample_random(space, 25, seed=3)[:20] == a  # growing n keeps the points already run
    assert all(1e-4 <= p["optim.lr"] <= 1e-1 and 16 <= p["train.batch_size"] <= 64 for p in a)
    small = {"optim.name": ["sgd", "adamw"], "train.batch_size": {"int": [1, 2]}}
    assert len(sample_random(small, 4, seed=0)) == 4  # the whole space, each point once
    with pytest.raises(ConfigError, match="only 4 distinct"):
        sample_random(small, 5, seed=0)


def test_shipped_sweep_files_expand_into_valid_trials():
    for name, count in (("sweep-lr.yaml", 20), ("sweep-dense.yaml", 18)):
        sweep = read_sweep(CONFIGS / name)
        directory, trials = build_trials(sweep)
        assert len(trials) == count and directory.name == sweep.name
        assert len({t.hash for t in trials}) == count


def test_sweep_file_with_random_block(tmp_path, tiny_config):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "base": tiny_config.name, "grid": {"optim.name": ["sgd", "adam"]},
        "random": {"n": 3, "seed": 1, "optim.lr": {"loguniform": [1e-3, 1e-1]}},
        "overrides": {"train.epochs": 1}}))
    sweep = read_sweep(path, seeds="0,1")
    directory, trials = build_trials(sweep)
    assert sweep.name == "s" and directory == tmp_path / "runs" / "s"
    assert len(trials) == 2 * 3 * 2
    for t in trials:  # each trial is exactly what the train command would build
        again = load_config(tiny_config, sweep.overrides + t.overrides +
                            [f"runs_dir={directory}", f"name={t.name}"])
        assert again == t.cfg and t.cfg.train.epochs == 1


def test_invalid_points_are_reported_together_before_anything_runs(tmp_path, tiny_config):
    result = runner.invoke(app, ["sweep", str(tiny_config), "--grid", "optim.lr=0.1,-1",
                                 "--grid", "model.kind=dense,convv", "--grid", "model.widht=1"])
    assert result.exit_code == 2
    assert "optim.lr: -1.0 is out of range" in result.stderr
    assert "convv" in result.stderr and "did you mean conv" in result.stderr
    assert "model.widht: unknown key" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_broken_sweep_file_reports_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: nowhere.yaml\ngrid: {optim.lr: []}\nseed: [0]\n")
    result = runner.invoke(app, ["sweep", str(bad)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    for part in ("nowhere.yaml is not a file", "grid.optim.lr: give a non-empty list",
                 "seed: unknown sweep key, did you mean seeds?"):
        assert part in result.stderr


def test_plain_config_without_grid_is_a_clear_error(tiny_config):
    result = runner.invoke(app, ["sweep", str(tiny_config)])
    assert result.exit_code == 2 and "is a config, not a sweep file" in result.stderr


def _add_entries(directory: Path, prefix: str, n: int) -> None:
    for i in range(n):
        with locked_index(directory) as idx:
            idx["trials"][f"{prefix}{i}"] = {"status": "completed"}


def test_index_updates_from_two_processes_are_never_lost(tmp_path):
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_add_entries, args=(tmp_path, p, 40)) for p in "ab"]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert len(index(tmp_path)) == 80


def test_sweep_runs_in_parallel_resumes_and_extends(tmp_path, tiny_config):
    args = ["sweep", str(tiny_config), "--grid", "optim.lr=0.05,0.01", "--seeds", "0,1",
            "--jobs", "2", "train.epochs=1"]
    directory = tmp_path / "runs" / "tiny-lr-seed"
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(sweep_dirs(directory)) == 4
    trials = index(directory)
    assert len(trials) == 4 and {t["status"] for t in trials.values()} == {"completed"}
    for h, t in trials.items():
        summary = json.loads((Path(t["run_dir"]) / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["config_hash"] == h
        assert summary["executor"]["name"] == "local" and summary["executor"]["job_id"]
        assert t["job"] == summary["executor"] and (Path(t["run_dir"]) / "trial.log").is_file()

    rows = list(csv.DictReader((directory / "summary.csv").open()))
    assert [r["optim.lr"] for r in sorted(rows, key=lambda r: r["optim.lr"])] == ["0.01", "0.05"]
    assert all(r["runs"] == "2" and 0 <= float(r["val_accuracy_mean"]) <= 1 for r in rows)
    best = max(float(r["val_accuracy_mean"]) for r in rows)
    assert float(rows[0]["val_accuracy_mean"]) == best  # sorted, best first
    md = (directory / "summary.md").read_text()
    assert md.count("\n| ") == 3 and "**" in md and "±" in md
    for key in ("optim.lr",):
        image = matplotlib.image.imread(directory / f"plot-{key}-val_accuracy.png")
        assert image.ndim == 3 and image.shape[0] > 100

    files = sorted(directory.rglob("*"))
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "nothing to run: 4 of 4" in again.output
    assert [p for p in sorted(directory.rglob("*")) if p.is_dir()] == [p for p in files if p.is_dir()]

    wider = ["sweep", str(tiny_config), "--grid", "optim.lr=0.05,0.01,0.02", "--seeds", "0,1"]
    dry = runner.invoke(app, wider + ["train.epochs=1", "--dry-run"])
    assert dry.exit_code == 0 and dry.output.count(" completed ") == 4 and dry.output.count(" new ") == 2
    assert "mnistlab train" in dry.output and "optim.lr=0.02 train.seed=1" in dry.output

    more = runner.invoke(app, wider + ["--jobs", "2", "train.epochs=1"])
    assert more.exit_code == 0, more.output
    assert "6 trials, 4 done before" in more.output and "2 to run" in more.output
    assert len(sweep_dirs(directory)) == 6
    assert len(list(csv.DictReader((directory / "summary.csv").open()))) == 3

    report = runner.invoke(app, ["sweep", str(directory), "--report", "--metric", "val_loss"])
    assert report.exit_code == 0 and len(sweep_dirs(directory)) == 6  # the folder alone suffices
    rows = list(csv.DictReader((directory / "summary.csv").open()))
    losses = [float(r["val_loss_mean"]) for r in rows]
    assert len(rows) == 3 and losses == sorted(losses)


def test_failing_trial_is_recorded_and_the_others_complete(tmp_path, tiny_config):
    base = ["sweep", str(tiny_config), "--grid", "optim.lr=1e12,0.01", "optim.name=sgd",
            "train.epochs=20", "--name", "diverge"]
    directory = tmp_path / "runs" / "diverge"
    first = runner.invoke(app, base + ["--fail-fast"])
    assert first.exit_code == 1
    trials = list(index(directory).values())
    # fail-fast: the second trial did not run on (a warm trial starts within the poll after the
    # first ended, so it may have started; then it was stopped at once)
    assert trials[0]["status"] == "failed" and trials[1]["status"] in ("new", "interrupted")
    assert "learning rate" in trials[0]["error"]  # the Diverged message of fit

    result = runner.invoke(app, base + ["--jobs", "2"])
    assert result.exit_code == 1 and "did not complete" in result.stderr
    assert "1 trials in" in result.output  # the failed one is not run again
    by_name = {t["name"]: t for t in index(directory).values()}
    assert by_name["lr-1e12"]["status"] == "failed" and "learning rate" in by_name["lr-1e12"]["error"]
    assert by_name["lr-0.01"]["status"] == "completed"
    md = (directory / "summary.md").read_text()
    assert "| failed |" in md and "0/1" in md

    failed_dir = Path(by_name["lr-1e12"]["run_dir"])
    stamp = (failed_dir / "summary.json").stat().st_mtime_ns
    dirs = sorted(p for p in directory.rglob("*") if p.is_dir())
    again = runner.invoke(app, base)  # finished: submits nothing, creates nothing
    assert again.exit_code == 1 and "nothing to run: 1 of 2" in again.output
    assert "1 failed before (--retry-failed runs them again)" in again.output
    assert sorted(p for p in directory.rglob("*") if p.is_dir()) == dirs
    assert (failed_dir / "summary.json").stat().st_mtime_ns == stamp

    retry = runner.invoke(app, base + ["--retry-failed"])
    assert retry.exit_code == 1 and "1 trials in" in retry.output  # run again, on purpose
    assert (failed_dir / "summary.json").stat().st_mtime_ns != stamp
    assert sorted(p for p in directory.rglob("*") if p.is_dir()) == dirs


def _running_trial(directory: Path):
    """(pid of a trial process, its run dir) once it holds its lease and finished an epoch."""
    for owner in directory.glob("*/owner.json"):
        run_dir = owner.parent
        try:
            pid = json.loads(owner.read_text())["pid"]
            summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError, KeyError):
            continue
        if summary["status"] == "running" and summary["epochs_completed"]:
            return pid, run_dir
    return None


def test_ctrl_c_and_killed_trial_are_continued(tmp_path, tiny_config):
    args = ["sweep", str(tiny_config), "--seeds", "0", "train.epochs=150", "train.log_every=0"]
    directory = tmp_path / "runs" / "tiny-seed"
    # as from a terminal: a test run started in the background (`pytest &`) inherits an ignored
    # SIGINT, which the sweep would keep, as a background job should
    command = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, "
               "signal.SIG_DFL); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
               "-m", "mnistlab", *args]

    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, run_dir = wait_for(lambda: _running_trial(directory))
    sweep.send_signal(signal.SIGINT)  # Ctrl-C: the trial is cancelled and saves itself
    out, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 130, out + stderr
    assert "stopped the 1 trial of this sweep that had started" in stderr and "it saved its state" in stderr
    assert next(iter(index(directory).values()))["status"] == "stopped"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"

    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid, _ = wait_for(lambda: _running_trial(directory))
    os.kill(pid, signal.SIGKILL)  # the trial dies without saving: the sweep continues it
    out, err = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, out + err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 150
    assert sweep_dirs(directory) == [run_dir]  # continued from its checkpoint, not started over


def test_the_live_sweep_bar_counts_failed_trials_without_a_traceback():
    """On a terminal a failed (or interrupted) trial once ended the sweep in KeyError: 'failed'."""
    import io

    from rich.console import Console

    from mnistlab import display
    from mnistlab.sweep import Trial

    screen = io.StringIO()
    live = display.sweep_progress(Console(file=screen, force_terminal=True, width=80,
                                          highlight=False))
    assert isinstance(live, display.SweepLive)
    counts = {"total": 2, "done_before": 0, "elsewhere": 0, "failed_before": 0, "to_run": 2}
    live.start("s", 2, counts, "local", 1, 2)
    trial = Trial.__new__(Trial)
    trial.name = "lr-1.5"
    live.finished(trial, "failed", None, "the run diverged")
    live.finished(trial, "interrupted", None, "saved")
    live.stop()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    assert live.failed == 1 and live.done == 2
    assert "local executor, 1 job x 2 threads" in text and "failed 1" in text
    assert "failed lr-1.5: the run diverged" in text
