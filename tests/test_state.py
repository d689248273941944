"""Training state saved whole: interrupted and resumed runs log exactly what uninterrupted ones do."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mnistlab import checkpoint, display
from mnistlab.cli import app
from mnistlab.config import load_config
from mnistlab.checkpoint import load_checkpoint
from mnistlab.rundir import read_metrics
from mnistlab.tasks import build_task
from mnistlab.training import RunInterrupted, fit
from mnistlab.run import Silent
from mnistlab.platforms.pytorch import build_optimizer

runner = CliRunner()
TIMING = ("elapsed", "images_per_s", "eval_seconds", "time")


def untimed(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


class SignalAt(Silent):
    """Sends this process SIGTERM after a given batch, as a user or a scheduler would mid-epoch."""

    shows_steps = True

    def __init__(self, epoch: int, step: int):
        self.at = (epoch, step)

    def step(self, epoch, step, *args):
        if (epoch, step) == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_mid_epoch_then_resume_logs_the_same_records_as_an_uninterrupted_run(tiny_config, tmp_path):
    overrides = ["train.epochs=3", "model.dropout=0.3", "optim.schedule=onecycle", "train.log_every=3"]
    cfg = load_config(tiny_config, overrides)
    with pytest.raises(RunInterrupted) as stopped:
        fit(cfg, SignalAt(epoch=2, step=1))  # step() is called after batch 1, the 1st of 8
    run = stopped.value.run_dir
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] == 1
    assert summary["steps_completed"] == 8 + 1  # stopped before the next batch
    assert "1/3 epochs and 1/8 steps of epoch 2" in display.summary_line(summary)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["step"] == 1
    env = (run / "env.json").read_bytes()
    # kill -9 after the checkpoint: the steps redone after the resume must not be logged twice
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"event": "step", "epoch": 2, "step": 12, "split": "train", "loss": 1.0}) + "\n")
        f.write('{"event": "step", "epo')  # a line cut short by the kill

    resumed = fit(cfg, resume=run)
    reference = fit(cfg)
    assert untimed(run) == untimed(reference["run_dir"])  # record by record, timing aside
    assert resumed["final"] == reference["final"]
    assert resumed["train_seconds"] >= summary["train_seconds"]
    assert (run / "env.json").read_bytes() == env  # the original argv and source stay
    (resume,) = resumed["resumes"]
    assert resume["step"] == 9 and resume["epoch"] == 1
    assert resumed["source"] == summary["source"] and resumed["started"] == summary["started"]


def test_resuming_a_completed_run_leaves_every_file_byte_identical(tiny_config, tmp_path):
    run = Path(fit(load_config(tiny_config, ["train.epochs=1"]))["run_dir"])
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = runner.invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0
    assert "already completed" in result.stderr and "left as they are" in result.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def old_loop(cfg) -> list[tuple[float, float]]:
    """The loop as it was before sums stayed on the device: a .item() per step, Python sums."""
    torch.manual_seed(cfg.train.seed)
    task = build_task(cfg)
    model, (x, y) = task.model, (task.data.train_x, task.data.train_y)
    optimizer = build_optimizer(cfg.optim, model.parameters())
    shuffle = torch.Generator().manual_seed(cfg.train.seed)
    batch, epochs = cfg.train.batch_size, []
    model.train()
    for _ in range(cfg.train.epochs):
        perm = torch.randperm(len(x), generator=shuffle)
        loss_sum = correct = seen = 0
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            out = model(x[idx])
            loss = task.loss(out, y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            correct += (out.argmax(1) == y[idx]).sum().item()
            seen += len(idx)
        epochs.append((loss_sum / seen, correct / seen))
    return epochs


def test_device_side_sums_give_exactly_the_numbers_of_per_step_python_sums(tiny_config):
    cfg = load_config(tiny_config, ["model.kind=dense", "model.hidden=[16]", "model.dropout=0.2",
                                    "train.precision=fp32", "train.epochs=3", "optim.lr=0.003"])
    records = read_metrics(Path(fit(cfg)["run_dir"]) / "metrics.jsonl")
    logged = [(r["loss"], r["accuracy"]) for r in records
              if r["event"] == "epoch" and r["split"] == "train"]
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.train.threads)  # as fit does: the same reduction order
    try:
        assert logged == old_loop(cfg)
    finally:
        torch.set_num_threads(threads)


def test_a_checkpoint_written_before_train_state_still_resumes(tiny_config):
    cfg = load_config(tiny_config, ["train.epochs=2"])
    with pytest.raises(RunInterrupted) as stopped:
        fit(cfg, SignalAt(epoch=2, step=1))
    run = stopped.value.run_dir
    path = run / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)
    state = ckpt.pop("state")  # the layout of the code of its day: the state packed by hand
    ckpt.update(epoch=state["epoch"], step=state["step"], shuffle_state=state["shuffle"],
                rng_state=state["rng"]["cpu"], best=state["best"], train_seconds=state["seconds"])
    for key in ("format", "digest"):
        ckpt.pop(key, None)
    checkpoint.write(path, ckpt)  # with the digest of its new content
    resumed = fit(cfg, resume=run)
    reference = fit(cfg)
    assert resumed["status"] == "completed" and resumed["final"]["test"] == reference["final"]["test"]
