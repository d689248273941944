"""The user's defaults file (data.name once for all commands), the offline hint, eval on test files only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config_dict, write_dataset
from mnistlab import data
from mnistlab.cli import app
from mnistlab.config import ConfigError, DataConfig, config_from_dict, load_config
from mnistlab.errors import DataError
from mnistlab.training import fit

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def write_defaults(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "xdg-config" / "mnistlab" / "defaults.yaml"  # conftest's XDG_CONFIG_HOME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_defaults_file_sits_beneath_the_config_file_and_the_command_line(tmp_path):
    write_defaults(tmp_path, {"data": {"name": "idx", "root": "mydata"}, "train": {"threads": 1}})
    cnn = load_config(ROOT / "configs/cnn.yaml")  # names no data.name: the user's default
    assert cnn.data.name == "idx" and cnn.data.root == str(tmp_path / "xdg-config/mnistlab/mydata")
    assert load_config(ROOT / "configs/cnn.yaml", ["data.name=kmnist"]).data.name == "kmnist"
    own = tmp_path / "own.yaml"
    own.write_text("data:\n  name: fashion-mnist\n")
    assert load_config(own).data.name == "fashion-mnist"  # a config file that names it wins
    assert load_config(own).train.threads == 1


def test_print_config_names_the_defaults_file_and_leaves_out_what_the_task_never_reads(tmp_path):
    path = write_defaults(tmp_path, {"data": {"name": "fashion-mnist"}})
    out = runner.invoke(app, ["train", str(ROOT / "configs/cnn.yaml"), "--print-config"])
    assert out.exit_code == 0, out.output
    header = " ".join(line[1:].strip() for line in out.stdout.splitlines() if line.startswith("#"))
    assert f"defaults from {path}: taken: data.name=\"fashion-mnist\"" in header
    assert "\ndata:\n  name: fashion-mnist\n" in out.stdout
    quad = runner.invoke(app, ["train", str(ROOT / "configs/quadratic.yaml"), "--print-config"])
    header = " ".join(line[1:].strip() for line in quad.stdout.splitlines() if line.startswith("#"))
    body = yaml.safe_load(quad.stdout)
    assert "never read by this run: keras, model, data, linreg" in header
    assert "model" not in body and "data" not in body and body["quadratic"]["x0"] == [3.0, -2.0]
    assert "model.hidden" not in header  # a key of a section already left out is not repeated


def test_a_mistyped_key_in_the_defaults_file_names_the_file(tmp_path):
    path = write_defaults(tmp_path, {"data": {"nmae": "fashion-mnist"}})
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs/cnn.yaml")
    assert f"{path}: data.nmae: not a config key; did you mean data.name?" in e.value.message()


def test_offline_the_error_points_at_an_installed_fashion_mnist(tmp_path, monkeypatch):
    cfg = DataConfig(name="mnist", root=str(tmp_path / "nothing"), download=False)
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": [tmp_path / "none"]})
    with pytest.raises(DataError) as e:
        data.locate(cfg)
    assert "'apt-get install dataset-fashion-mnist'" in e.value.message()
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": [write_dataset(tmp_path / "fm")]})
    with pytest.raises(DataError) as e:
        data.locate(cfg)
    message = e.value.message()
    assert "apt-get" not in message
    assert f"it is installed here ({tmp_path / 'fm'}); add data.name=fashion-mnist" in message
    assert "defaults.yaml" in message


def test_eval_on_a_directory_with_only_the_two_test_files(tmp_path):
    tiny = write_dataset(tmp_path / "tiny")
    run = fit(config_from_dict(tiny_config_dict(tiny, tmp_path / "runs")))
    only = tmp_path / "only-test"
    only.mkdir()
    for name in data.FILES["test"]:
        shutil.copy(tiny / name, only / name)
    out = runner.invoke(app, ["eval", run["run_dir"], "data.name=idx", f"data.root={only}", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["n"] == 64 and result["data_source"] == str(only)
    assert result["accuracy"] == pytest.approx(run["final"]["test"]["accuracy"])
    val = runner.invoke(app, ["eval", run["run_dir"], "data.name=idx", f"data.root={only}",
                              "--split", "val"])
    assert val.exit_code == 2 and "train-images-idx3-ubyte" in val.output  # val needs them
