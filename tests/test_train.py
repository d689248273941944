"""The loop and the run directory, end to end through the CLI on tiny synthetic data."""

import importlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import FASHION_DIR
from mnistlab.cli import app
from mnistlab.config import load_config
from mnistlab.checkpoint import load_checkpoint
from mnistlab.rundir import read_metrics
from mnistlab.training import fit

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def only_run(runs_dir: Path) -> Path:
    (run,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    return run


def test_train_through_the_cli_writes_a_complete_run_directory(tiny_config, tmp_path):
    result = runner.invoke(app, ["train", str(tiny_config), "train.epochs=3", "optim.lr=0.02"])
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "runs")
    assert run.name.endswith("-tiny")
    assert sorted(p.name for p in run.iterdir()) == [  # the lease leaves neither owner.json nor a lock file
        "checkpoints", "config.yaml", "env.json", "metrics.jsonl", "summary.json"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    # plain lines when stdout is not a terminal: one per epoch, then the summary
    assert result.stdout.count("\nepoch ") == 3 and "completed:" in result.stdout

    config_text = (run / "config.yaml").read_text()
    assert "train.epochs=3 optim.lr=0.02" in config_text  # the overrides as typed
    resolved = yaml.safe_load(config_text)
    assert resolved["optim"]["lr"] == 0.02 and resolved["train"]["epochs"] == 3
    assert resolved["train"]["val_split"] == 0.1  # fully resolved, defaults included

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 3
    assert summary["params"] == (9 * 4 + 2 * 4) + (4 * 8 * 9 + 2 * 8) + (8 * 3 * 3 * 4 + 4)
    assert summary["final"]["test"]["accuracy"] > 0.5  # 4 classes: chance is 0.25
    assert summary["best"]["epoch"] in (1, 2, 3) and summary["wall_seconds"] > 0
    assert summary["source"]["overrides"] == ["train.epochs=3", "optim.lr=0.02"]

    records = read_metrics(run / "metrics.jsonl")
    keys = {"event", "epoch", "step", "split", "loss", "accuracy", "lr", "elapsed", "images_per_s"}
    steps = [r for r in records if r["event"] == "step"]
    assert steps and all(keys <= set(r) for r in steps)
    epochs = [(r["epoch"], r["split"]) for r in records if r["event"] == "epoch"]
    assert epochs == [(e, s) for e in (1, 2, 3) for s in ("train", "val")]
    (final,) = [r for r in records if r["event"] == "final"]
    assert final["split"] == "test" and final["accuracy"] == summary["final"]["test"]["accuracy"]

    env = json.loads((run / "env.json").read_text())
    assert {"python", "torch", "torchvision", "device", "threads", "seed", "git_commit", "host"} <= set(env)
    assert env["threads"] == 1 and env["seed"] == 0

    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["state"]["epoch"] == 3 and ckpt["config"]["optim"]["lr"] == 0.02
    assert {"model", "optimizer", "scheduler", "data"} <= set(ckpt)
    assert ckpt["data"]["num_classes"] == 4 and ckpt["data"]["image_shape"] == [1, 12, 12]
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["state"]["epoch"] == summary["best"]["epoch"]


def test_runs_never_overwrite_each_other(tiny_config, tmp_path):
    for _ in range(2):
        assert runner.invoke(app, ["train", str(tiny_config), "train.epochs=1", "-q"]).exit_code == 0
    assert len({p.name for p in (tmp_path / "runs").iterdir()}) == 2


def test_same_config_and_seed_give_identical_metrics(tiny_config):
    cfg = load_config(tiny_config, ["model.dropout=0.3", "optim.schedule=onecycle"])
    first, second = fit(cfg), fit(cfg)
    assert first["final"] == second["final"]
    metrics = [read_metrics(Path(s["run_dir"]) / "metrics.jsonl") for s in (first, second)]
    strip = lambda rs: [(r["loss"], r["accuracy"]) for r in rs]  # noqa: E731
    assert strip(metrics[0]) == strip(metrics[1])
    other = fit(load_config(tiny_config, ["model.dropout=0.3", "optim.schedule=onecycle",
                                          "train.seed=1"]))
    assert other["final"] != first["final"]


def test_diverging_loss_fails_the_run_with_advice(tiny_config, tmp_path):
    # losses checked at the epoch's end only: the whole epoch ran before the divergence was seen
    result = runner.invoke(app, ["train", str(tiny_config), "model.kind=dense", "optim.name=sgd",
                                 "optim.lr=1e12", "train.log_every=100"])
    assert result.exit_code == 1
    assert "lower learning rate" in result.stderr and "optim.lr=1e+11" in result.stderr
    summary = json.loads((only_run(tmp_path / "runs") / "summary.json").read_text())
    assert summary["status"] == "failed" and "the run diverged" in summary["error"]
    at = summary["diverged_at"]
    assert at["epoch"] == 1 and 1 <= at["step"] < 8 and summary["steps_completed"] == 8
    assert f"at epoch 1, step {at['step']} of 8 (optim.lr=1e+12), with 0 of 2 epochs completed" \
        in " ".join(result.stderr.split())
    shown = " ".join(result.stdout.split())
    assert f"diverged at epoch 1, step {at['step']} of 8; 0/2 epochs completed," in shown
    assert "steps of" not in shown  # the steps run after it, up to the check, count for nothing


def test_a_divergence_found_late_says_where_it_happened_and_what_was_completed():
    from mnistlab.display import summary_line
    from mnistlab.errors import Diverged
    from mnistlab.run import Progress, check_divergence

    cfg = load_config(ROOT / "configs" / "dense.yaml", ["train.epochs=3", "optim.lr=0.5"])
    progress = Progress()
    progress.epoch, progress.first_loss = 1, 2.3  # epoch 1 completed and saved
    losses = [(1, step, 2.0 if step < 13 else float("nan")) for step in range(36)]
    with pytest.raises(Diverged) as e:
        check_divergence(cfg, progress, losses, 36)
    assert (e.value.epoch, e.value.step) == (2, 14)
    assert e.value.message() == (
        "the training loss became nan at epoch 2, step 14 of 36 (optim.lr=0.5), with 1 of 3 "
        "epochs completed: the run diverged and stopped as failed. Try a lower learning rate in "
        "a new run, e.g. optim.lr=0.05.")
    summary = {"status": "failed", "run_dir": "runs/x", "epochs": 3, "epochs_completed": 1,
               "steps_completed": 72, "steps_per_epoch": 36, "train_seconds": 1.0, "params": 10,
               "diverged_at": {"epoch": 2, "step": 14}}
    assert summary_line(summary) == ("failed: runs/x; diverged at epoch 2, step 14 of 36; "
                                     "1/3 epochs completed, 1.0s training, 10 parameters")
    del summary["diverged_at"]  # any other stop within an epoch names the epoch of its steps
    assert "1/3 epochs and 36/36 steps of epoch 2," in summary_line(summary)


def test_missing_data_is_a_clear_error_and_writes_nothing(tiny_config, tmp_path):
    result = runner.invoke(app, ["train", str(tiny_config), f"data.root={tmp_path / 'nowhere'}"])
    assert result.exit_code == 2
    assert "was not found" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_sigterm_saves_a_resumable_run_that_finishes_like_an_uninterrupted_one(tiny_config, tmp_path):
    overrides = ["train.epochs=40", "optim.schedule=onecycle", "model.dropout=0.2"]
    proc = subprocess.Popen([sys.executable, "-m", "mnistlab", "train", str(tiny_config), *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs_dir = tmp_path / "runs"
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until the first epoch is logged, then stop it mid-run
        logs = list(runs_dir.glob("*/metrics.jsonl"))
        if logs and '"event": "epoch"' in logs[0].read_text():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "mnistlab train --resume" in err and "Traceback" not in err
    run = only_run(runs_dir)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] < 40
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["train"]["epochs"] == 40
    assert not [p for p in run.rglob(".*.tmp")], "no temporary file is left behind"

    resumed = runner.invoke(app, ["train", "--resume", str(run), "-q"])
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 40
    reference = fit(load_config(tiny_config, overrides + [f"runs_dir={tmp_path / 'ref'}"]))
    assert summary["final"] == reference["final"]


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_subset_trains_well_above_chance(tmp_path):
    root = Path(__file__).resolve().parents[1]
    result = runner.invoke(app, [
        "train", str(root / "configs" / "cnn.yaml"), "data.name=fashion-mnist",
        "data.train_samples=6000", "data.test_samples=2000", "train.epochs=1",
        f"runs_dir={tmp_path / 'runs'}", "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads((only_run(tmp_path / "runs") / "summary.json").read_text())
    assert summary["final"]["test"]["accuracy"] > 0.7  # chance is 0.1


def test_a_killed_run_is_listed_as_killed(tiny_config, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "mnistlab", "train", str(tiny_config),
                             "train.epochs=1000", "-q"])
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "runs").glob("*/checkpoints/last.pt")):
        time.sleep(0.05)
    listing = runner.invoke(app, ["runs", str(tmp_path / "runs"), "--format", "json"])
    assert json.loads(listing.stdout)[0]["status"] == "running"
    proc.kill()  # SIGKILL: no chance to record anything
    proc.wait()
    listing = runner.invoke(app, ["runs", str(tmp_path / "runs"), "--format", "json"])
    assert json.loads(listing.stdout)[0]["status"] == "killed"
    run = only_run(tmp_path / "runs")
    assert json.loads((run / "summary.json").read_text())["status"] == "running"  # as left on disk


def test_tensorboard_logging_writes_event_files(tiny_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = runner.invoke(app, ["train", str(tiny_config), "log.tensorboard=true", "-q"])
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(only_run(tmp_path / "runs") / "tensorboard"))
    events.Reload()
    assert {"loss/train", "accuracy/val", "accuracy/test", "lr/train"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("accuracy/val")] == [8, 16]  # 2 epochs of 8 batches


def test_tensorboard_missing_is_a_clear_error(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    result = runner.invoke(app, ["train", str(tiny_config), "log.tensorboard=true"])
    assert result.exit_code == 2
    assert "pip install tensorboard" in result.stderr and "log.tensorboard=false" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_fit_leaves_the_callers_thread_count_alone(tiny_config):
    import torch

    before = torch.get_num_threads()
    fit(load_config(tiny_config, ["train.threads=1"]))
    assert torch.get_num_threads() == before


def test_cuda_without_a_gpu_is_a_config_error(tiny_config, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = runner.invoke(app, ["train", str(tiny_config), "train.device=cuda"])
    assert result.exit_code == 2 and "sees no CUDA GPU" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_reused_pid_does_not_make_a_dead_run_look_alive():
    from mnistlab.lease import process_alive, process_identity
    from mnistlab.rundir import run_status

    me = process_identity()
    assert process_alive(me) is True
    assert run_status({"status": "running", **me}) == "running"
    if me["pid_started"] is not None:  # Linux: the start time tells a reused pid apart
        reused = {**me, "pid_started": me["pid_started"] - 1}
        assert run_status({"status": "running", **reused}) == "killed"
    assert process_alive({**me, "host": "elsewhere"}) is None


def test_a_whitened_first_conv_is_fitted_once_kept_frozen_and_resumes_exactly(tiny_config):
    overrides = ["model.first_conv=whitened", "model.channels=[4,8]", "model.batch_norm=false",
                 "optim.name=sgd", "optim.momentum=0.9", "optim.weight_decay=0.01"]
    cfg = load_config(tiny_config, overrides)
    straight = fit(cfg)
    paused = fit(cfg, until_epoch=1)
    first = load_checkpoint(Path(paused["run_dir"]) / "checkpoints" / "last.pt")["model"]["0.weight"]
    resumed = fit(cfg, resume=Path(paused["run_dir"]))
    assert resumed["final"] == straight["final"]
    assert straight["params"] - straight["params_learned"] == 4 * 9
    # the fitted filters, untouched by two epochs of weight decay and momentum
    last = load_checkpoint(Path(straight["run_dir"]) / "checkpoints" / "last.pt")["model"]["0.weight"]
    assert torch.equal(first, last) and first.abs().sum() > 0
    learned = fit(load_config(tiny_config, overrides[1:]))
    assert learned["final"] != straight["final"]


def test_a_fitted_first_stage_run_once_gives_the_same_run_as_running_it_every_step(tiny_config,
                                                                                   monkeypatch):
    cfg = load_config(tiny_config, ["model.first_conv=whitened", "model.channels=[4,8]",
                                    "model.batch_norm=false", "optim.name=sgd", "optim.momentum=0.9"])
    train_module = importlib.import_module("mnistlab.platforms.pytorch")
    bodies = []  # the layers each run's steps trained
    real = train_module.training_inputs

    def spy(*args):
        inputs, body = real(*args)
        bodies.append(body)
        return inputs, body

    monkeypatch.setattr(train_module, "training_inputs", spy)
    once = fit(cfg)
    monkeypatch.setattr(train_module, "FEATURE_CACHE_BYTES", 0)  # too big to keep: every step runs it
    every_step = fit(cfg)
    assert len(bodies[0]) < len(bodies[1])  # the first run did train on the kept output
    assert once["final"] == every_step["final"] and once["best"] == every_step["best"]
    metrics = [read_metrics(Path(s["run_dir"]) / "metrics.jsonl") for s in (once, every_step)]
    assert [r.get("loss") for r in metrics[0]] == [r.get("loss") for r in metrics[1]]


def test_an_epoch_line_fits_an_80_column_terminal():
    from mnistlab.display import epoch_line

    train_rec = {"epoch": 10, "loss": 0.913731, "accuracy": 0.83931, "elapsed": 157.31,
                 "images_per_s": 3959.2}
    line = epoch_line(train_rec, {"loss": 0.399121, "accuracy": 0.896}, 12)
    assert line == "epoch 10/12  loss 0.9137 acc 83.93%  val loss 0.3991 acc 89.60%  157s 3959 img/s"
    assert len(line) <= 80
    assert epoch_line({**train_rec, "elapsed": 13.62}, None, 12).endswith("  13.6s 3959 img/s")
