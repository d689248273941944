"""The metric registry: every name reads its number from the summary.json of a real tiny run."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import tiny_config_dict, write_dataset
from mnistlab import files, metrics
from mnistlab.config import config_from_dict, load_config
from mnistlab.training import fit

ROOT = Path(__file__).resolve().parent.parent
SWEEP_NAMES = ("val_accuracy", "val_loss", "best_val_accuracy", "test_accuracy", "test_loss",
               "train_accuracy", "train_loss", "train_seconds", "f", "lstsq_gap")


@pytest.fixture(scope="module")
def summaries(tmp_path_factory) -> dict[str, dict]:
    """summary.json of a tiny classify, quadratic and linreg run."""
    base = tmp_path_factory.mktemp("metrics")
    out = base / "runs"
    data = write_dataset(base / "tiny")
    cfgs = {
        "classify": config_from_dict(tiny_config_dict(data, out, model={"kind": "dense", "hidden": [8]})),
        "quadratic": load_config(ROOT / "configs/quadratic.yaml", [f"runs_dir={out}", "train.epochs=5"]),
        "linreg": load_config(ROOT / "configs/linreg.yaml", [f"runs_dir={out}", "train.epochs=2",
                                                              "linreg.n=100"]),
    }
    return {task: _summary(cfg) for task, cfg in cfgs.items()}


def _summary(cfg) -> dict:
    fit(cfg)
    return files.read_json(sorted(Path(cfg.runs_dir).glob(f"*-{cfg.name}"))[-1] / "summary.json")


def test_registry_keeps_the_sweep_names():
    assert set(SWEEP_NAMES) <= set(metrics.ranked())
    assert metrics.METRICS["val_accuracy"].path != metrics.METRICS["best_val_accuracy"].path


@pytest.mark.parametrize("name, task, expected", [
    ("val_accuracy", "classify", lambda s: s["final"]["val"]["accuracy"]),
    ("val_loss", "classify", lambda s: s["final"]["val"]["loss"]),
    ("best_val_accuracy", "classify", lambda s: s["best"]["val_accuracy"]),
    ("best_epoch", "classify", lambda s: s["best"]["epoch"]),
    ("test_accuracy", "classify", lambda s: s["final"]["test"]["accuracy"]),
    ("test_loss", "classify", lambda s: s["final"]["test"]["loss"]),
    ("train_accuracy", "classify", lambda s: s["final"]["train"]["accuracy"]),
    ("train_loss", "classify", lambda s: s["final"]["train"]["loss"]),
    ("train_seconds", "classify", lambda s: s["train_seconds"]),
    ("wall_seconds", "classify", lambda s: s["wall_seconds"]),
    ("epochs", "classify", lambda s: s["epochs_completed"]),
    ("params", "classify", lambda s: s["params"]),
    ("f", "quadratic", lambda s: s["result"]["f"]),
    ("x_norm", "quadratic", lambda s: s["result"]["norm"]),
    ("lstsq_gap", "linreg", lambda s: s["result"]["lstsq_gap"]),
    ("val_loss", "linreg", lambda s: s["final"]["val"]["loss"]),
])
def test_each_metric_is_read_from_a_real_summary(summaries, name, task, expected):
    got = metrics.value(summaries[task], name)
    assert isinstance(got, (int, float)) and got == expected(summaries[task])
    assert metrics.text(name, got) != "-"


def test_metrics_a_task_does_not_have_are_none(summaries):
    assert metrics.value(summaries["quadratic"], "test_accuracy") is None
    assert metrics.value(summaries["classify"], "f") is None
    assert metrics.value({"final": {"val": {"loss": float("nan")}}}, "val_loss") is None
    assert metrics.value({"final": "garbage"}, "val_loss") is None


def test_formats():
    assert metrics.text("test_accuracy", 0.9123) == "91.23%"
    assert metrics.text("params", 1234567) == "1,234,567"
    assert metrics.text("train_seconds", 75.2) == "1m15s"
    assert metrics.text("val_loss", 1.23e-9) == "1.23e-09"
    assert metrics.text("val_loss", None) == "-"
    assert metrics.axis_label("val_accuracy") == "final validation accuracy (%)"
    assert metrics.plotted("val_accuracy", 0.5) == 50
