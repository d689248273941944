"""Runs and checkpoints written before the restructure (commit a20ae63) still load and resume."""

import shutil
from pathlib import Path

from conftest import tiny_config_dict, write_dataset

from mnistlab.checkpoint import epoch_of, load_checkpoint
from mnistlab.config import config_from_dict
from mnistlab.evaluation import evaluate_run
from mnistlab.training import fit

FIXTURE = Path(__file__).parent / "fixtures" / "ckpt-v1" / "tiny"
DATA = Path("/tmp/mnistlab-fixture-data")  # where the fixture's config found its synthetic data


def test_an_older_checkpoint_loads_evaluates_and_resumes_to_the_run_todays_code_trains(tmp_path):
    write_dataset(DATA)  # the same seeded images and labels the fixture was trained on
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert epoch_of(ckpt) == 2 and ckpt["config"]["train"]["epochs"] == 3
    scored = evaluate_run(run, "last", "val", save=False)
    val = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
    assert f'"loss": {scored["loss"]}' in val[-1]  # eval reproduces the recorded val loss

    resumed = fit(config_from_dict(ckpt["config"]), resume=run)
    straight = fit(config_from_dict(tiny_config_dict(DATA, tmp_path / "runs", train={"epochs": 3})))
    assert resumed["status"] == straight["status"] == "completed"
    assert resumed["final"] == straight["final"] and resumed["best"] == straight["best"]
