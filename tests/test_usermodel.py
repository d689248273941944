"""model.kind: module: the user's own class is trained, probed, recorded, and its code run only when trusted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import FASHION_DIR, tiny_config_dict, write_dataset
from mnistlab.cli import app
from mnistlab.config import config_from_dict, config_hash, load_config
from mnistlab.training import fit

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "configs" / "models" / "lenet.py"
runner = CliRunner()

SMALL = '''import torch
from torch import nn


class Small(nn.Module):
    def __init__(self, c=8, num_classes=10, image_shape=(1, 28, 28)):
        super().__init__()
        channels, height, width = image_shape
        self.conv = nn.Conv2d(channels, c, 3, padding=1)
        self.fc = nn.Linear(c * (height // 2) * (width // 2), num_classes)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(torch.flatten(x, 1))
'''


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def small_config(tmp_path: Path, data: Path, source: str = SMALL, ref: str = "models/small.py:Small",
                 **model) -> Path:
    """tmp_path/models/small.py holding source, and tmp_path/small.yaml naming it."""
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "small.py").write_text(source)
    raw = tiny_config_dict(data, tmp_path / "runs",
                           model={"kind": "module", "module": ref, "args": {"c": 8}, **model})
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def the_run(tmp_path: Path) -> Path:
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    return run


def lenet_params(c1: int, c2: int, classes: int) -> int:
    return ((25 * c1 + c1) + (25 * c1 * c2 + c2) + (16 * c2 * 120 + 120) + (120 * 84 + 84)
            + (84 * classes + classes))


def test_shipped_lenet_trains_on_28x28_images_and_the_run_keeps_its_code(tmp_path):
    data = write_dataset(tmp_path / "d28", n_train=256, n_test=64, size=28)
    common = [f"data.name=idx", f"data.root={data}", f"runs_dir={tmp_path / 'runs'}",
              "train.epochs=2", "train.threads=1", "train.batch_size=32", "optim.lr=0.01"]
    result = cli("train", ROOT / "configs" / "lenet.yaml", *common, "--quiet")
    assert result.exit_code == 0, result.output
    run = the_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["params"] == lenet_params(6, 16, 4)  # num_classes came from the data
    assert summary["final"]["test"]["accuracy"] > 0.5  # 4 classes: chance is 0.25
    assert (run / "model_source.py").read_bytes() == LENET.read_bytes()
    recorded = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert recorded["module"] == f"{LENET}:Net" and recorded["args"] == {"c1": 6, "c2": 16}
    assert recorded["source_digest"] == hashlib.sha256(LENET.read_bytes()).hexdigest()

    result = cli("train", ROOT / "configs" / "lenet.yaml", *common, "model.args.c1=12",
                 "train.epochs=1", "name=wide", "--quiet")
    assert result.exit_code == 0, result.output
    (wide,) = (tmp_path / "runs").glob("*-wide")
    assert json.loads((wide / "summary.json").read_text())["params"] == lenet_params(12, 16, 4)

    result = cli("runs", tmp_path / "runs", "--format", "json")
    assert result.exit_code == 0, result.output
    assert {r["model.args.c1"] for r in json.loads(result.output)} == {6, 12}
    assert cli("compare", run, wide).exit_code == 0
    result = cli("plot", run, wide, "-o", tmp_path / "curves.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_a_changed_source_file_changes_the_config_hash(tmp_path, tiny_data):
    path = small_config(tmp_path, tiny_data)
    before = load_config(path)
    assert config_hash(load_config(path)) == config_hash(before)
    (tmp_path / "models" / "small.py").write_text(SMALL + "\n# a comment is a change too\n")
    after = load_config(path)
    assert after.model.source_digest != before.model.source_digest
    assert config_hash(after) != config_hash(before)


def test_the_module_path_is_relative_to_the_config_file_or_on_the_command_line_to_the_cwd(
        tmp_path, tiny_data, monkeypatch):
    path = small_config(tmp_path, tiny_data)
    monkeypatch.chdir(tiny_data)
    cfg = load_config(path)
    assert cfg.model.module == f"{tmp_path.resolve() / 'models' / 'small.py'}:Small"
    monkeypatch.chdir(tmp_path / "models")
    cfg = load_config(path, ["model.module=small.py:Small"])
    assert cfg.model.module == f"{tmp_path.resolve() / 'models' / 'small.py'}:Small"


def test_eval_refuses_a_run_whose_file_changed_and_runs_the_copy_only_when_trusted(tmp_path, tiny_data):
    path = small_config(tmp_path, tiny_data)
    summary = fit(load_config(path), until_epoch=1)  # paused: a resume has work left to do
    assert summary["status"] == "paused" and summary["epochs"] > 1
    run = Path(summary["run_dir"])
    result = cli("eval", run, "--json")
    assert result.exit_code == 0, result.output
    accuracy = json.loads(result.output)["accuracy"]

    source = tmp_path / "models" / "small.py"
    source.write_text(SMALL.replace("c=8", "c=9"))  # someone edits the file after training
    for command in (["eval", run], ["predict", run, tmp_path / "none.png"], ["train", "--resume", run]):
        result = cli(*command)
        assert result.exit_code == 2, (command, result.output)
        assert "has changed since the run was trained" in result.output
        assert "--trust-run-code" in result.output
    source.unlink()
    result = cli("eval", run)
    assert result.exit_code == 2 and "is missing" in result.output

    result = cli("eval", run, "--json", "--trust-run-code")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["accuracy"] == pytest.approx(accuracy)
    result = cli("train", "--resume", run, "--trust-run-code", "--quiet")
    assert result.exit_code == 0, result.output

    (run / "model_source.py").write_text(SMALL + "print('edited')\n")
    result = cli("eval", run, "--trust-run-code")
    assert result.exit_code == 2 and "does not have the sha256 the run recorded" in result.output


def test_plot_confusion_of_a_run_whose_file_changed_runs_the_copy_only_when_trusted(tmp_path, tiny_data):
    path = small_config(tmp_path, tiny_data)
    run = Path(fit(load_config(path, ["train.epochs=1"]))["run_dir"])
    (tmp_path / "models" / "small.py").write_text(SMALL.replace("c=8", "c=9"))
    figure = tmp_path / "confusion.png"
    result = cli("plot", run, "--confusion", "-o", figure)  # no saved eval: the model must run
    assert result.exit_code == 2 and "--trust-run-code" in result.output and not figure.exists()
    result = cli("plot", run, "-o", figure, "--trust-run-code")
    assert result.exit_code == 2 and "goes with --confusion" in result.output
    result = cli("plot", run, "--confusion", "-o", figure, "--trust-run-code")
    assert result.exit_code == 0, result.output
    assert figure.read_bytes().startswith(b"\x89PNG")


def test_trust_run_code_goes_only_with_resume(tmp_path, tiny_data):
    result = cli("train", small_config(tmp_path, tiny_data), "--trust-run-code")
    assert result.exit_code == 2 and "--resume RUN_DIR" in result.output


BROKEN = {
    "forward": ("    def forward(self, x):\n        return helper(x)\n",
                "def helper(x):\n    raise ValueError('boom in forward')\n",
                "in helper", "ValueError: boom in forward"),
    "constructor": ("    def __init__(self, c=8, num_classes=10):\n        super().__init__()\n"
                    "        self.fc = nn.Linear(1, c // 0)\n",
                    "", "in __init__", "ZeroDivisionError"),
    "import": ("", "undefined_name + 1\n", "in <module>", "NameError"),
}


@pytest.mark.parametrize("where", sorted(BROKEN))
def test_an_error_in_the_users_code_shows_their_frames_only_and_writes_nothing(
        tmp_path, tiny_data, where):
    method, extra, frame, error = BROKEN[where]
    source = "import torch\nfrom torch import nn\n\n\n" + extra + "\n\nclass Bad(nn.Module):\n" + (
        method or "    pass\n")
    config = small_config(tmp_path, tiny_data, source, ref="models/small.py:Bad", args={})
    result = cli("train", config)
    assert result.exit_code == 2, result.output
    assert f'File "{(tmp_path / "models" / "small.py").resolve()}"' in result.output
    assert frame in result.output and error in result.output
    assert str(ROOT / "mnistlab") not in result.output and "torch/nn" not in result.output
    assert "Traceback (most recent call last)" not in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("change, expected", [
    ({"ref": "models/nope.py:Small"}, ["nope.py: No such file", "the config file's directory"]),
    ({"ref": "models/small.py:Smal"}, ["Smal in", "does not exist", "models/small.py:Small"]),
    ({"ref": "models/small.py"}, ["does not name a class", "FILE.py:Class"]),
    ({"args": {"c": 8, "width": 3}}, ["rejects", "unexpected keyword argument 'width'",
                                      "Its parameters: c, num_classes, image_shape"]),
    ({"args": {"num_classes": 4}}, ["model.args.num_classes: comes from the data set"]),
    ({"source": SMALL.replace("num_classes)", "7)")},
     ["returns (32, 7) for a batch of shape (32, 1, 12, 12)", "tensor of (32, 4)"]),
])
def test_a_class_that_does_not_fit_is_a_one_paragraph_error_before_anything_is_written(
        tmp_path, tiny_data, change, expected):
    config = small_config(tmp_path, tiny_data, change.get("source", SMALL),
                          change.get("ref", "models/small.py:Small"),
                          **({"args": change["args"]} if "args" in change else {}))
    result = cli("train", config)
    assert result.exit_code == 2, result.output
    for text in expected:
        assert text in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_sweep_over_a_constructor_argument(tmp_path, tiny_data):
    config = small_config(tmp_path, tiny_data)
    result = cli("sweep", config, "train.epochs=1", "--grid", "model.args.c=4,8")
    assert result.exit_code == 0, result.output
    params = sorted(json.loads(p.read_text())["params"]
                    for p in (tmp_path / "runs").glob("*/*/summary.json"))
    assert params == [(9 * c + c) + (c * 36 * 4 + 4) for c in (4, 8)]
    dry_run = ["sweep", config, "train.epochs=1", "--grid", "model.args.c=4,8", "--dry-run"]
    assert cli(*dry_run).output.count(" completed ") == 2
    (tmp_path / "models" / "small.py").write_text(SMALL + "# changed\n")
    result = cli(*dry_run)
    assert result.exit_code == 0, result.output
    # the old results belong to the old code
    assert result.output.count(" completed ") == 0 and result.output.count(" new ") == 2


@pytest.mark.realdata
@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="no Fashion-MNIST in /usr/share/datasets")
def test_shipped_lenet_learns_fashion_mnist_briefly(tmp_path):
    result = cli("train", ROOT / "configs" / "lenet.yaml", "data.name=fashion-mnist",
                 "data.train_samples=4000", "data.test_samples=1000", "train.epochs=2",
                 "train.batch_size=64", "optim.lr=0.01", "train.threads=1",
                 f"runs_dir={tmp_path / 'runs'}", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads((the_run(tmp_path) / "summary.json").read_text())
    assert summary["final"]["test"]["accuracy"] > 0.7  # 10 classes: chance is 0.1


def test_a_class_of_an_importable_package_is_named_by_module_path(tmp_path, tiny_data, monkeypatch):
    package = tmp_path / "site" / "mymodels"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "small.py").write_text(SMALL)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cfg = load_config(small_config(tmp_path, tiny_data, ref="mymodels.small:Small"))
    assert cfg.model.module == "mymodels.small:Small"
    assert cfg.model.source_digest == hashlib.sha256(SMALL.encode()).hexdigest()
    summary = fit(cfg)
    assert summary["status"] == "completed" and summary["params"] == 9 * 8 + 8 + 8 * 36 * 4 + 4
    assert (Path(summary["run_dir"]) / "model_source.py").read_text() == SMALL


def test_model_args_must_be_a_mapping(tmp_path, tiny_data):
    result = cli("train", small_config(tmp_path, tiny_data), "model.args=[6, 16]")
    assert result.exit_code == 2
    assert "model.args: expected a mapping, e.g. {c1: 6, c2: 16}" in result.output


def test_a_config_made_in_python_is_resolved_and_digested_by_fit(tmp_path, tiny_data, monkeypatch):
    small_config(tmp_path, tiny_data)
    monkeypatch.chdir(tmp_path)
    cfg = config_from_dict(tiny_config_dict(tiny_data, tmp_path / "runs", model={
        "kind": "module", "module": "models/small.py:Small", "args": {"c": 8}}))
    summary = fit(cfg)
    recorded = yaml.safe_load((Path(summary["run_dir"]) / "config.yaml").read_text())["model"]
    assert recorded["source_digest"] == hashlib.sha256(SMALL.encode()).hexdigest()
    assert summary["config_hash"] == config_hash(load_config(tmp_path / "small.yaml"))


def test_eval_accepts_an_edit_of_comments_and_whitespace_and_shows_any_other(tmp_path, tiny_data):
    path = small_config(tmp_path, tiny_data)
    run = Path(fit(load_config(path))["run_dir"])
    before = json.loads(cli("eval", run, "--json").output)["accuracy"]
    source = tmp_path / "models" / "small.py"
    edited = ("# my LeNet-like net, tidied up\n" + SMALL.replace("    def forward", "\n    def forward")
              .replace("nn.Conv2d(channels, c, 3, padding=1)", "nn.Conv2d(channels,c,3,  padding=1)  # 3x3")
              .replace("        ", "\t\t").replace("    ", "\t"))  # tabs for spaces
    source.write_text(edited)
    result = cli("eval", run, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["accuracy"] == pytest.approx(before)
    source.write_text(edited.replace("padding=1", "padding=2"))
    result = cli("eval", run)
    assert result.exit_code == 2
    assert "What changed, beyond comments and whitespace" in result.output
    assert ("- line 9: self.conv = nn.Conv2d(channels, c, 3, padding=1)\n"
            "+ line 10: self.conv = nn.Conv2d(channels,c,3,  padding=2)  # 3x3\n") in result.output
    assert "self.fc" not in result.output  # only what changed


def test_train_resume_accepts_an_edit_of_comments_and_whitespace_as_eval_does(tmp_path, tiny_data):
    path = small_config(tmp_path, tiny_data)
    run = Path(fit(load_config(path), until_epoch=1)["run_dir"])  # paused: the resume has work left
    source = tmp_path / "models" / "small.py"
    edited = "# tidied up\n" + SMALL.replace("    def forward", "\n\n    def forward  ").replace(
        "return self.fc(torch.flatten(x, 1))", "return self.fc(torch.flatten(x,1))  # logits")
    source.write_text(edited.replace("c=8", "c=9"))  # a real change: refused, saying what changed
    result = cli("train", "--resume", run, "--quiet")
    assert result.exit_code == 2, result.output
    assert "What changed, beyond comments and whitespace" in result.output
    assert "- line 6:     def __init__(self, c=8" not in result.output  # statements, stripped
    assert "- line 6: def __init__(self, c=8, num_classes=10" in result.output
    assert "+ line 7: def __init__(self, c=9, num_classes=10" in result.output
    assert json.loads((run / "summary.json").read_text())["status"] == "paused"  # left as it was
    source.write_text(edited)
    result = cli("train", "--resume", run, "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == summary["epochs"]
    assert (run / "model_source.py").read_text() == SMALL  # the run keeps the code it was trained with
