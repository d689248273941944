"""The semantic config hash, older runs' trial keys, and each optimizer's own defaults."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_config_dict
from mnistlab import rundir
from mnistlab.config import ConfigError, HASH_VERSION, config_from_dict, config_hash, load_config
from mnistlab.platforms.pytorch import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "runs-v1" / "20261130-000140-tiny"


def cfg(**overrides):
    raw = tiny_config_dict(Path("/data"), Path("/runs"))
    del raw["train"]["precision"]  # the keys below were computed with the default (auto)
    for key, value in overrides.items():
        section, name = key.split("__") if "__" in key else (None, key)
        target = raw.setdefault(section, {}) if section else raw
        target[name] = value
    return config_from_dict(raw)


@pytest.mark.parametrize("change", [
    {"name": "other"}, {"runs_dir": "elsewhere"}, {"train__threads": 2}, {"train__device": "cpu"},
    {"train__eval_batch_size": 7}, {"log__tensorboard": True}, {"data__root": "/other"},
    {"data__download": False}, {"data__mirror": "http://m"}, {"optim__nesterov": False},
    {"linreg__n": 50}, {"quadratic__x0": [1.0]}, {"optim__gamma": 0.5},
])
def test_settings_that_cannot_change_what_is_learned_leave_the_hash_alone(change):
    assert config_hash(cfg(**change)) == config_hash(cfg())


def test_settings_of_another_model_kind_or_optimizer_do_not_enter_the_hash():
    dense = config_hash(cfg(model={"kind": "dense", "channels": [4, 8]}))
    assert config_hash(cfg(model={"kind": "dense", "channels": [16, 32]})) == dense
    assert config_hash(cfg(model={"kind": "dense", "hidden": [64]})) != dense
    conv = config_hash(cfg())
    assert config_hash(cfg(model={"kind": "conv", "channels": [4, 8], "hidden": [9]})) == conv
    assert config_hash(cfg(model={"kind": "conv", "channels": [4, 16]})) != conv
    # a null momentum is the optimizer's default: the same training as writing that default
    sgd = {"name": "sgd", "lr": 0.01, "schedule": "none"}
    assert config_hash(cfg(optim=sgd)) == config_hash(cfg(optim={**sgd, "momentum": 0.0}))
    assert config_hash(cfg(optim={**sgd, "momentum": 0.9})) != config_hash(cfg(optim=sgd))
    assert config_hash(cfg(optim__lr=0.02)) != config_hash(cfg())


def test_a_run_made_before_the_semantic_hash_gets_the_key_of_an_equivalent_new_config(tmp_path):
    old = json.loads((FIXTURE / "summary.json").read_text())
    assert "hash_version" not in old  # written by the code of its day, with every key in its config
    new = tiny_config_dict(tmp_path / "data", tmp_path / "runs")  # other directories, same training
    del new["train"]["precision"]  # the fixture's run trained with the default, auto
    new["optim"]["lr"] = 0.02
    new["train"]["epochs"] = 1
    key = config_hash(config_from_dict(new))
    assert rundir.trial_key(FIXTURE, old) == key != old["config_hash"]
    # new summaries carry their version, so their recorded hash is used as it is
    assert rundir.trial_key(tmp_path, {"hash_version": HASH_VERSION, "config_hash": "abc"}) == "abc"
    # an unreadable config.yaml gives no key rather than an error
    damaged = tmp_path / "damaged"
    shutil.copytree(FIXTURE, damaged)
    (damaged / "config.yaml").write_text("optim: [")
    assert rundir.trial_key(damaged, old) is None


def test_each_optimizer_has_its_own_defaults(tiny_config):
    params = [torch.nn.Parameter(torch.zeros(2))]
    rmsprop = build_optimizer(load_config(tiny_config, ["optim.name=rmsprop"]).optim, params)
    assert rmsprop.defaults["momentum"] == 0  # PyTorch's, not SGD's 0.9
    sgd = build_optimizer(load_config(tiny_config, ["optim.name=sgd"]).optim, params)
    assert sgd.defaults["momentum"] == 0 and sgd.defaults["nesterov"] is False
    chosen = build_optimizer(load_config(tiny_config, ["optim.name=sgd", "optim.momentum=0.9",
                                                       "optim.nesterov=true"]).optim, params)
    assert chosen.defaults["momentum"] == 0.9 and chosen.defaults["nesterov"] is True


def test_a_setting_the_optimizer_does_not_use_is_an_error_with_a_hint(tiny_config):
    with pytest.raises(ConfigError) as info:
        load_config(tiny_config, ["optim.name=adam", "optim.momentum=0.9", "optim.nesterov=true"])
    momentum, nesterov = info.value.problems
    assert momentum.startswith("optim.momentum: adam does not use it")
    assert "read by sgd, rmsprop" in momentum and "optim.momentum=null" in momentum
    assert nesterov.startswith("optim.nesterov: adam does not use it") and "=false" in nesterov
    with pytest.raises(ConfigError) as info:
        load_config(tiny_config, ["optim.name=sgd", "optim.nesterov=true"])
    assert "needs a momentum" in info.value.problems[0]


def test_unread_settings_from_a_file_are_dropped_so_old_run_configs_and_sweeps_load(tmp_path):
    raw = yaml.safe_load((FIXTURE / "config.yaml").read_text())
    assert raw["optim"]["name"] == "adam" and raw["optim"]["momentum"] == 0.9
    with pytest.raises(ConfigError):
        config_from_dict(raw, {"optim.momentum"})  # typed on the command line, it is refused
    stored = config_from_dict(raw)
    assert stored.optim.momentum is None and stored.optim.lr == 0.02
    # a base config with SGD momentum serves a sweep over optimizers: adamw simply has none
    swept = load_config(ROOT / "configs" / "cnn.yaml", ["optim.name=adamw"])
    assert swept.optim.momentum is None and swept.optim.nesterov is False
    assert "momentum: null" in yaml.safe_dump({"momentum": swept.optim.momentum})


def test_a_setting_added_later_keeps_the_hash_of_runs_that_do_not_use_it():
    # the key of this conv config as computed before model.stride existed (commit c57dce6)
    assert config_hash(cfg()) == "3d2d3693982f"
    assert config_hash(cfg(model={"kind": "conv", "channels": [4, 8], "stride": [2, 1]})) != "3d2d3693982f"
