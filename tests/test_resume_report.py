"""A resumed run: its wall time sums its sessions, and --resume says where it continues from."""

import time
from pathlib import Path

from typer.testing import CliRunner

from conftest import tiny_config_dict
from mnistlab.cli import app
from mnistlab.config import config_from_dict
from mnistlab.files import read_json
from mnistlab.training import fit

runner = CliRunner()


def test_wall_seconds_of_a_resumed_run_sum_its_sessions(tiny_data, tmp_path):
    cfg = config_from_dict(tiny_config_dict(tiny_data, tmp_path / "runs",
                                            train={"epochs": 2, "precision": "auto"}))
    t0 = time.perf_counter()
    first = fit(cfg, until_epoch=1)
    t1 = time.perf_counter()
    run_dir = Path(first["run_dir"])
    paused = read_json(run_dir / "summary.json")["wall_seconds"]
    second = fit(cfg, resume=run_dir)
    t2 = time.perf_counter()
    sessions = (t1 - t0) + (t2 - t1)
    assert paused <= t1 - t0
    assert second["status"] == "completed"
    # each session from its start (data, model, precision) to its end; no session lost
    assert 0.8 * sessions <= second["wall_seconds"] <= sessions  # before: 3% of it, setup left out
    assert second["wall_seconds"] - paused >= 0.8 * (t2 - t1)


def test_resume_says_where_it_continues(tiny_config, tmp_path):
    paused = runner.invoke(app, ["train", str(tiny_config), "--until-epoch", "1"])
    assert paused.exit_code == 0, paused.output
    run_dir = next((tmp_path / "runs").iterdir())
    resumed = runner.invoke(app, ["train", "--resume", str(run_dir)])
    assert resumed.exit_code == 0, resumed.output
    # 256 images less a tenth for validation, batches of 32: 8 steps an epoch
    assert ("resuming at epoch 2/2 from its start (after 1 epoch, global step 8), from the last "
            "checkpoint") in " ".join(resumed.stdout.split())  # broken between words at 80 columns
    assert "resuming" not in paused.stdout
