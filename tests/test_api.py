"""The Python API for notebooks: the same runs as the CLI, in a few calls."""

import subprocess
import sys

import pytest

import mnistlab
from conftest import tiny_config_dict


def test_train_load_runs_and_evaluate_from_python(tiny_data, tmp_path, monkeypatch):
    config = tiny_config_dict(tiny_data, tmp_path / "runs")
    summary = mnistlab.train(config, ["train.epochs=1", "optim.lr=0.02"])
    assert summary["status"] == "completed" and summary["source"]["overrides"][1] == "optim.lr=0.02"
    result = mnistlab.evaluate(summary, split="val")
    assert result["split"] == "val" and result["n"] == summary["val_samples"]
    pandas = pytest.importorskip("pandas")
    frame = mnistlab.load_runs(tmp_path / "runs")
    assert isinstance(frame, pandas.DataFrame) and len(frame) == 1
    row = frame.iloc[0]
    assert row["optim.lr"] == 0.02 and row["status"] == "completed"
    assert row["test_accuracy"] == summary["final"]["test"]["accuracy"]
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed: plain rows
    (plain,) = mnistlab.load_runs(tmp_path / "runs")
    assert plain["run_dir"] == summary["run_dir"]


def test_import_mnistlab_stays_light():
    code = "import sys, mnistlab; print('torch' in sys.modules, 'typer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
