"""Config loading, overrides and the errors a user sees."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mnistlab.cli import app
from mnistlab.config import (
    ConfigError,
    apply_overrides,
    config_hash,
    load_config,
    to_yaml,
)

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def problems(path, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return info.value.problems


def test_file_then_overrides_command_line_wins(tmp_path):
    path = write(tmp_path, "optim: {lr: 0.5}\ntrain: {epochs: 7}\n")
    cfg = load_config(path, ["optim.lr=1e-3", "model.kind=dense", "model.channels=[8, 16]",
                             "data.download=false", "optim.lr=2e-3"])
    assert cfg.optim.lr == 0.002 and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 7
    assert cfg.model.kind == "dense" and cfg.model.channels == [8, 16]
    assert cfg.data.download is False
    assert cfg.name == "c"  # the file's stem when the YAML gives none


def test_unknown_keys_suggest_the_closest_valid_key(tmp_path):
    path = write(tmp_path, "optim:\n  lrr: 0.1\nmodle:\n  kind: conv\n")
    found = problems(path, ["train.epoch=3"])
    assert "optim.lrr: unknown key, did you mean optim.lr?" in found
    assert "modle: unknown key, did you mean model?" in found
    assert "train.epoch: unknown key (from the command line), did you mean train.epochs?" in found


def test_wrong_types_and_choices_name_key_value_and_what_is_allowed(tmp_path):
    path = write(tmp_path, "model: {kind: cnn, channels: [32]}\ntrain: {epochs: three, val_split: 1.5}\n"
                           "optim: {name: adamw, nesterov: maybe}\n")
    found = "\n".join(problems(path))
    assert "model.kind: 'cnn' (str) is not allowed; choose one of: dense, conv, module; did you mean conv?" in found
    assert "train.epochs: expected an integer, got 'three' (str)" in found
    assert "train.val_split: 1.5 is out of range" in found
    assert "optim.nesterov: expected true or false, got 'maybe' (str)" in found
    assert "model.channels: the conv network has exactly two conv layers" in found


def test_invalid_yaml_reports_file_line_and_column(tmp_path):
    path = write(tmp_path, "model:\n  kind: conv\n  channels: [32, 64\n")
    (message,) = problems(path)
    assert message.startswith(f"{path}:4:1: invalid YAML")


def test_override_syntax_errors_are_all_reported(tmp_path):
    path = write(tmp_path, "optim: {lr: 0.1}\n")
    found = problems(path, ["optim.lr", "=3", "train.epochs=[1", "optim.lr.x=1"])
    assert len(found) == 4
    assert any("'optim.lr': an override is key=value" in p for p in found)
    assert any("'optim.lr.x=1': optim.lr is a value, not a section" in p for p in found)


def test_overrides_do_not_modify_the_loaded_mapping():
    raw = {"optim": {"lr": 1.0}}
    out, keys = apply_overrides(raw, ["optim.lr=2"])
    assert raw == {"optim": {"lr": 1.0}} and out == {"optim": {"lr": 2}} and keys == {"optim.lr"}


def test_resolved_yaml_round_trips_and_hash_ignores_name(tmp_path):
    cfg = load_config(write(tmp_path, "model: {kind: dense, hidden: [64, 32]}\n"))
    again = load_config(write(tmp_path, to_yaml(cfg)))
    assert again == cfg
    renamed = load_config(tmp_path / "c.yaml", ["name=other", "runs_dir=elsewhere"])
    assert config_hash(renamed) == config_hash(cfg)
    assert config_hash(load_config(tmp_path / "c.yaml", ["optim.lr=0.1"])) != config_hash(cfg)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_documents_itself_and_validates(path):
    text = path.read_text()
    assert text.startswith("#"), "each config starts with a comment"
    assert f"mnistlab {'sweep' if 'sweep' in path.name else 'train'} configs/{path.name}" in text
    if "base" not in yaml.safe_load(text):  # sweep files are checked by the sweep tests
        load_config(path)


def test_cli_print_config_shows_resolved_values_and_exits():
    result = runner.invoke(app, ["train", str(ROOT / "configs/cnn.yaml"), "optim.lr=0.05",
                                 "--print-config"])
    assert result.exit_code == 0
    printed = yaml.safe_load(result.stdout)
    assert printed["optim"]["lr"] == 0.05 and printed["model"]["kind"] == "conv"
    assert printed["train"]["val_split"] == 0.1  # defaults are shown too


def test_cli_config_errors_exit_2_without_traceback(tmp_path):
    result = runner.invoke(app, ["train", str(ROOT / "configs/cnn.yaml"), "optim.lrr=0.1",
                                 "model.kind=mlp"])
    assert result.exit_code == 2
    assert "2 problems" in result.stderr and "did you mean optim.lr?" in result.stderr
    assert "Traceback" not in result.output
    missing = runner.invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "no such file" in missing.stderr


def test_a_sweep_file_given_to_train_points_at_mnistlab_sweep():
    result = runner.invoke(app, ["train", str(ROOT / "configs/sweep-lr.yaml")])
    assert result.exit_code == 2
    assert "is a sweep file" in result.stderr and "mnistlab sweep" in result.stderr


def test_a_stride_other_than_one_or_two_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {kind: conv, stride: [3, 1]}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "model.stride" in str(err.value) and "[2, 1]" in str(err.value)


def test_a_scalar_where_a_list_belongs_is_one_element_and_checked_as_such(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {kind: conv, stride: 2, hidden: 5}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "model.stride: give the stride of each of the two conv layers" in str(err.value)
    assert "[2, 1]; got [2]" in str(err.value) and "model.hidden" not in str(err.value)
    path.write_text("model: {kind: dense, hidden: 5}\n")
    assert load_config(path).model.hidden == [5]


@pytest.mark.parametrize("overrides, fix", [
    (["model.first_conv=whitened"], "model.channels=[18, 64]"),  # cnn.yaml's 32 learned filters
    (["model.first_conv=whitened", "model.channels=[7,64]"], "model.channels=[18, 64]"),
    (["model.first_conv=whitened", "model.kernel_size=5", "model.channels=[52,32]"],
     "model.channels=[50, 32]"),
])
def test_a_whitened_first_conv_with_filters_it_cannot_make_is_refused(overrides, fix):
    result = runner.invoke(app, ["train", str(ROOT / "configs/cnn.yaml"), "model.channels=[32,64]",
                                 *overrides])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "a whitened first conv" in result.stderr and fix in result.stderr


def test_a_scalar_where_a_list_is_expected_is_a_one_element_list(tmp_path):
    from mnistlab.config import config_from_dict

    cfg = config_from_dict({"task": "quadratic", "quadratic": {"x0": 5}, "model": {"hidden": 64}})
    assert cfg.quadratic.x0 == [5.0] and cfg.model.hidden == [64]
    with pytest.raises(ConfigError, match="expected a list"):
        config_from_dict({"model": {"hidden": {"a": 1}}})


def test_a_scalar_grid_value_is_one_point_and_list_elements_are_values(tmp_path):
    from mnistlab.sweep import build_trials, read_sweep

    base = tmp_path / "base.yaml"
    base.write_text("task: quadratic\nquadratic: {x0: [1.0]}\n")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"base: {base}\ngrid:\n  quadratic.x0: 5\n  optim.lr: [0.1, 0.2]\n")
    _, trials = build_trials(read_sweep(spec))
    assert sorted((t.cfg.quadratic.x0, t.cfg.optim.lr) for t in trials) == [([5.0], 0.1), ([5.0], 0.2)]


def test_a_setting_typed_as_an_option_points_at_its_override(tmp_path):
    """`train ... --epochs 3` suggested --until-epoch; it is the setting train.epochs."""
    config = ROOT / "configs" / "dense.yaml"
    for args, hint in ((["--epochs", "3"], "train.epochs=3"), (["--lr=0.1"], "optim.lr=0.1"),
                       (["--batch-size", "64"], "train.batch_size=64")):
        result = subprocess.run([sys.executable, "-m", "mnistlab", "train", str(config), *args],
                                capture_output=True, text=True, cwd=tmp_path, timeout=120,
                                env={**os.environ, "COLUMNS": "200"})
        assert result.returncode == 2 and hint in result.stderr, result.stderr
        assert "--until-epoch" not in result.stderr and "Traceback" not in result.stderr
