"""The live display in a real (pseudo-)terminal at 80 columns: Ctrl-C, and what is shown."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
import yaml

from conftest import in_terminal, tiny_config_dict, write_dataset
from mnistlab.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_a_sweep_interrupted_with_ctrl_c_in_a_terminal_exits_130_without_a_traceback(tmp_path, tiny_config):
    shown = in_terminal(["sweep", str(tiny_config), "--grid", "optim.lr=0.05,0.02,0.01,0.005,0.002,0.001",
                         "--jobs", "2", "train.epochs=3"], tmp_path, interrupt_when="completed ")
    code, out = shown.code, shown.out
    assert "Traceback" not in out, out
    assert code == 130, out
    # two jobs: two trials run, the others wait as queued until a slot frees up
    running = {int(n) for n in re.findall(r"running (\d+)  queued", out)}
    assert running <= {0, 1, 2} and 2 in running, out
    assert "running 2  queued 4" in out
    message = " ".join(out[out.index("error: sweep interrupted"):].split())
    started = re.search(r"stopped the (\d) trials? of this sweep that had started", message)
    waiting = re.search(r"(\d) queued trials? had not started", message)
    assert started and waiting, message
    # at least one trial completed before the signal (on a loaded machine another may complete
    # as it lands): the rest are the started ones (at most the two jobs) and the queued ones
    assert 1 <= int(started.group(1)) <= 2 and int(waiting.group(1)) >= 1
    assert int(started.group(1)) + int(waiting.group(1)) <= 5


# Test-only: each chunk of the two stages before the first step takes a fixed extra time (seconds
# from the environment), so that a signal lands in the stage and a stop that waited for the stage's
# end would take the whole stage (about 9 s), far beyond the bound on the stop's latency
SLOW_STAGES = """
import os, time
import torch.nn.functional as F
from mnistlab import models

def slowed(f, seconds):
    def slow(*args, **kwargs):
        time.sleep(seconds)
        return f(*args, **kwargs)
    return slow

F.unfold = slowed(F.unfold, float(os.environ.get("SLOW_FIT", 0)))  # each chunk of the fit
models.WhitenedConv2d.forward = slowed(models.WhitenedConv2d.forward,
                                       float(os.environ.get("SLOW_HEAD", 0)))  # each batch
"""
BOOT = "import slow_stages; from mnistlab.cli import main; main()"
STOP_BOUND = 5.0  # seconds: generous for a loaded machine; each slowed chunk takes 0.5 s at most


@pytest.fixture
def staged(tmp_path) -> tuple[Path, dict]:
    """A config whose first conv is whitened, on 9,000 training images (18 chunks of the fit, 90
    batches of the frozen first stage), its runs under tmp_path/runs; and the environment that
    loads SLOW_STAGES."""
    (tmp_path / "slow_stages.py").write_text(SLOW_STAGES)
    data = write_dataset(tmp_path / "data", n_train=10_000, n_test=64)
    raw = tiny_config_dict(data, Path("runs"), model={"first_conv": "whitened", "batch_norm": False},
                           train={"batch_size": 100, "epochs": 2})
    config = tmp_path / "staged.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config, {"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}


def test_ctrl_c_while_the_first_conv_is_fitted_stops_at_once_and_writes_nothing(tmp_path, staged):
    config, env = staged
    shown = in_terminal(["train", str(config)], tmp_path, "fitting the whitened first convolution",
                        env={**env, "SLOW_FIT": "0.5"}, boot=BOOT)
    assert "Traceback" not in shown.out, shown.out
    assert shown.code == 130, shown.out
    assert shown.latency < STOP_BOUND, (shown.latency, shown.out)
    assert "loading the data and building the model" in shown.out  # each stage said as it starts
    assert "/9,000 images" in shown.out
    assert ("error: interrupted while fitting the whitened first convolution, before the run's "
            "first step; nothing was written. Run the same command to start it again.") \
        in " ".join(shown.out.split())
    assert not (tmp_path / "runs").exists()


def test_a_stop_while_the_frozen_first_stage_is_computed_is_prompt_and_resumable(tmp_path, staged):
    config, env = staged
    shown = in_terminal(["train", str(config)], tmp_path, "computing the frozen first stage",
                        env={**env, "SLOW_HEAD": "0.1"}, boot=BOOT)
    assert "Traceback" not in shown.out, shown.out
    assert shown.code == 130 and shown.latency < STOP_BOUND, (shown.latency, shown.out)
    (run,) = (tmp_path / "runs").iterdir()
    run = Path("runs") / run.name
    assert re.search(r"computing the frozen first stage .* [\d,]+/9,000 images", shown.out), shown.out
    assert (f"error: interrupted; the last checkpoint is saved. Continue with: mnistlab train "
            f"--resume {run}") in " ".join(shown.out.split())

    def saved() -> tuple[dict, dict]:
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        return summary, load_checkpoint(tmp_path / run / "checkpoints" / "last.pt")["state"]

    summary, state = saved()  # checked whole: a half-written checkpoint fails its digest
    assert summary["status"] == "interrupted" and summary["steps_completed"] == 0
    assert (state["epoch"], state["step"], state["global_step"]) == (0, 0, 0)

    # the resumed run computes the stage again: SIGTERM, as a scheduler sends it, stops it too
    shown = in_terminal(["train", "--resume", str(run)], tmp_path, "computing the frozen first stage",
                        sig=signal.SIGTERM, env={**env, "SLOW_HEAD": "0.1"}, boot=BOOT)
    assert shown.code == 130 and shown.latency < STOP_BOUND, (shown.latency, shown.out)
    assert "resuming at epoch 1/2 from its start" in shown.out
    summary, state = saved()
    assert summary["status"] == "interrupted" and len(summary["resumes"]) == 1
    assert state["global_step"] == 0

    shown = in_terminal(["train", "--resume", str(run)], tmp_path)  # at full speed, to its end
    assert shown.code == 0, shown.out
    summary, _ = saved()
    assert summary["status"] == "completed" and summary["steps_completed"] == 2 * 90
