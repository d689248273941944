"""mnistlab eval: rebuilds the model from the checkpoint, matches training's test metric, refuses bad files."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config_dict, write_dataset
from mnistlab import checkpoint
from mnistlab.cli import app
from mnistlab.config import config_from_dict
from mnistlab.training import fit

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One tiny conv run, trained once for the whole module."""
    base = tmp_path_factory.mktemp("eval")
    data = write_dataset(base / "tiny")
    cfg = config_from_dict(tiny_config_dict(data, base / "runs"))
    return Path(fit(cfg)["run_dir"])


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_eval_matches_the_runs_own_test_metric_and_saves_beside_it(run_dir):
    summary_before = (run_dir / "summary.json").read_bytes()
    metrics_before = (run_dir / "metrics.jsonl").read_bytes()
    result = cli("eval", run_dir, "--ckpt", "last", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    final = json.loads(summary_before)["final"]["test"]
    assert out["accuracy"] == final["accuracy"]
    assert out["loss"] == pytest.approx(final["loss"], rel=1e-5)
    assert out["n"] == 64 == sum(c["n"] for c in out["per_class"])
    assert sum(map(sum, out["confusion"])) == 64
    assert sum(c["correct"] for c in out["per_class"]) == round(out["accuracy"] * 64)
    saved = run_dir / "evals" / "test-last.json"
    assert json.loads(saved.read_text())["accuracy"] == out["accuracy"]
    assert (run_dir / "summary.json").read_bytes() == summary_before
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics_before


def test_eval_tables_and_other_splits(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    result = cli("eval", run_dir, "--split", "val", "--ckpt", "best")
    assert result.exit_code == 0, result.output
    assert "per-class accuracy" in result.output and "confusion matrix" in result.output
    assert f"{summary['val_samples']} images" in result.output
    assert (run_dir / "evals" / "val-best.json").is_file()
    # the checkpoint file itself works too, and the train split has the training images
    out = json.loads(cli("eval", run_dir / "checkpoints" / "last.pt", "--split", "train",
                         "--json").output)
    assert out["n"] == summary["train_samples"]


def test_eval_only_overrides_are_applied_and_saved_apart(run_dir):
    result = cli("eval", run_dir, "data.test_samples=10", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["n"] == 10
    assert (run_dir / "evals" / "test-last-test-samples-10.json").is_file()


@pytest.mark.parametrize("override, expected", [
    ("model.kind=dense", "is a training setting"),
    ("optim.lr=0.1", "is a training setting"),
    ("data.nmae=mnist", "did you mean data.name"),
    ("--split=bogus", "not a split"),
])
def test_training_keys_and_typos_are_refused(run_dir, override, expected):
    result = cli("eval", run_dir, override)
    assert result.exit_code == 2
    assert expected in result.output
    assert "Traceback" not in result.output


def test_missing_run_is_a_clear_error(tmp_path):
    result = cli("eval", tmp_path / "nope")
    assert result.exit_code == 2 and "no such run directory" in result.output
    result = cli("eval", tmp_path)
    assert result.exit_code == 2 and "not a run directory" in result.output


def _bad_checkpoints(run_dir: Path, tmp_path: Path) -> dict[str, Path]:
    good = (run_dir / "checkpoints" / "last.pt").read_bytes()
    files = {}
    files["truncated"] = tmp_path / "truncated.pt"
    files["truncated"].write_bytes(good[: len(good) // 2])
    files["garbage"] = tmp_path / "garbage.pt"
    files["garbage"].write_bytes(bytes(range(256)) * 40)
    files["foreign"] = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, files["foreign"])
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    ckpt["config"]["model"]["channels"] = [6, 8]  # weights no longer fit the config
    files["mismatch"] = tmp_path / "mismatch.pt"
    checkpoint.write(files["mismatch"], {k: v for k, v in ckpt.items() if k != "digest"})
    return files


@pytest.mark.parametrize("kind, expected", [
    ("truncated", "is truncated or corrupt"), ("garbage", "garbage.pt: is truncated or corrupt"),
    ("foreign", "not a mnistlab checkpoint"), ("mismatch", "do not match"),
])
def test_bad_checkpoints_are_refused(run_dir, tmp_path, kind, expected):
    path = _bad_checkpoints(run_dir, tmp_path)[kind]
    result = cli("eval", path)
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output


class _Payload:
    """Unpickling this creates a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "mnistlab-checkpoint", "model": _Payload(marker)}, evil)
    torch.load(evil, weights_only=False)  # proves the file does run code when trusted
    assert marker.exists()
    marker.unlink()
    result = cli("eval", evil)
    assert result.exit_code == 2
    assert "refused: it holds objects other than tensors" in result.output
    assert "would run code" in result.output
    assert not marker.exists()
    assert zipfile.is_zipfile(evil)
