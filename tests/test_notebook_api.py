"""mnistlab.train as a notebook uses it: the summary dict that also carries the model and history."""

from pathlib import Path

import pytest
import torch

import mnistlab
from conftest import tiny_config_dict
from mnistlab.errors import MnistlabError
from mnistlab.rundir import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def test_train_returns_the_summary_with_the_model_and_a_keras_like_history(tiny_data, tmp_path,
                                                                          capsys):
    config = tiny_config_dict(tiny_data, tmp_path / "runs")
    run = mnistlab.train(config, {"train.epochs": 2, "optim.lr": 0.02, "model.channels": [4, 4],
                                  "optim.name": "adamw"})
    assert isinstance(run, dict) and run["status"] == "completed" and run["final"]["test"]
    assert run["source"]["overrides"] == ["train.epochs=2", "optim.lr=0.02",
                                          "model.channels=[4, 4]", 'optim.name="adamw"']
    assert isinstance(run.model, torch.nn.Module)
    x = torch.zeros(3, 1, 12, 12)
    assert run.model.eval()(x).shape == (3, 4)  # the trained net itself, usable at once
    assert sorted(run.history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    epochs = [r for r in read_metrics(Path(run["run_dir"]) / "metrics.jsonl")
              if r["event"] == "epoch" and r["split"] == "val"]
    assert run.history["val_loss"] == [r["loss"] for r in epochs] and len(epochs) == 2
    assert run.history["val_accuracy"][-1] == run["final"]["val"]["accuracy"]
    out = capsys.readouterr().out
    assert "epoch 1/2" not in out and "completed:" in out  # quiet by default: the summary only
    mnistlab.train(config, ["train.epochs=1"], quiet=False)
    assert "epoch 1/1" in capsys.readouterr().out


def test_load_runs_tells_complete_runs_from_failed_ones_and_groups_by_lists(tmp_path):
    pandas = pytest.importorskip("pandas")
    config, runs = ROOT / "configs/quadratic.yaml", f"runs_dir={tmp_path / 'runs'}"
    for lr in (0.1, 0.3):
        mnistlab.train(config, [runs, f"optim.lr={lr}", "train.epochs=5"])
    with pytest.raises(MnistlabError):  # lr 1.5 diverges: failed with a partial f
        mnistlab.train(config, {"runs_dir": str(tmp_path / "runs"), "optim.lr": 1.5})
    frame = mnistlab.load_runs(tmp_path / "runs")
    assert sorted(frame["complete"]) == [False, True, True]
    failed = frame[~frame["complete"]].iloc[0]
    assert failed["status"] == "failed" and failed["f"] is not None
    assert frame.loc[frame["complete"], "f"].notna().all()
    assert frame["quadratic.x0"].iloc[0] == (3.0, -2.0)  # a tuple: hashable
    means = frame[frame["complete"]].groupby("quadratic.x0")["f"].mean()
    assert len(means) == 1


def test_the_model_of_a_jax_run_is_its_trained_parameters(tmp_path):
    pytest.importorskip("jax")
    run = mnistlab.train(ROOT / "configs/quadratic.yaml",
                         {"platform": "jax", "train.epochs": 3, "runs_dir": str(tmp_path / "runs")})
    assert list(run.model) == ["x"]
    assert [round(float(v), 4) for v in run.model["x"]] == [round(v, 4) for v in run["result"]["x"]]
    assert len(run.history["loss"]) == 3 and "accuracy" not in run.history
