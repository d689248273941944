"""Runs and checkpoints written before the restructure (commit a20ae63) still load and resume."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import tiny_config_dict, write_dataset

from mnistlab.checkpoint import epoch_of, load_checkpoint
from mnistlab.config import config_from_dict
from mnistlab.evaluation import evaluate_run
from mnistlab.training import fit

FIXTURE = Path(__file__).parent / "fixtures" / "ckpt-v1" / "tiny"


def test_an_older_checkpoint_loads_evaluates_and_resumes_to_the_run_todays_code_trains(tmp_path):
    data = write_dataset(tmp_path / "data")  # the seeded images and labels the fixture trained on
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert epoch_of(ckpt) == 2 and ckpt["config"]["train"]["epochs"] == 3
    # its config names the data where it was made; data.root is not part of what is learned
    config = {**ckpt["config"], "data": {**ckpt["config"]["data"], "root": str(data)}}
    scored = evaluate_run(run, "last", "val", [f"data.root={data}"], save=False)
    val = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
    # eval reproduces the recorded val loss: to the last bit on the CPU that made the fixture, to
    # float32's rounding on another (an AMD EPYC's kernels add in another order than a Xeon's)
    assert scored["loss"] == pytest.approx(json.loads(val[-1])["loss"], rel=1e-5, abs=1e-7)

    resumed = fit(config_from_dict(config), resume=run)
    # the precision the fixture chose (auto measures both on a bf16 CPU, so under load it may
    # choose otherwise; a resumed run keeps its own)
    chosen = json.loads((run / "summary.json").read_text())["precision"]
    straight = fit(config_from_dict(tiny_config_dict(data, tmp_path / "runs",
                                                     train={"epochs": 3, "precision": chosen})))
    assert resumed["status"] == straight["status"] == "completed"
    # the same run: to the bit on the CPU that trained the fixture's first epochs, to float32's
    # rounding on another
    for key in ("final", "best"):
        assert resumed[key].keys() == straight[key].keys()
        for split, scores in straight[key].items():
            assert resumed[key][split] == pytest.approx(scores, rel=1e-4), (key, split)
