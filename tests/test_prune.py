"""Successive halving on synthetic metrics: rungs, promotions, ties, seeds, failures, replay."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.image
import pytest
import yaml
from typer.testing import CliRunner

from mnistlab.cli import app
from mnistlab.config import load_config
from mnistlab.errors import ConfigError
from mnistlab.checkpoint import load_checkpoint
from mnistlab.rundir import read_metrics
from mnistlab.sweep import build_trials, read_sweep
from mnistlab.sweep.plan import (Plan, epoch_metric, halve, keep_count, mean_score, promote, read_plan,
                                 rungs)
from mnistlab.sweep.prune import config_key
from mnistlab.training import fit

runner = CliRunner()


@pytest.mark.parametrize("min_epochs, eta, epochs, expected", [
    (1, 3, 10, [1, 3, 9, 10]),
    (1, 3, 9, [1, 3, 9]),
    (1, 3, 6, [1, 3, 6]),
    (1, 2, 8, [1, 2, 4, 8]),
    (2, 2, 7, [2, 4, 7]),
    (1, 3, 2, [1, 2]),
    (1, 3, 1, [1]),
    (5, 3, 3, [3]),  # a first rung past the end: one rung, nothing pruned
])
def test_rungs_grow_by_eta_and_end_at_the_full_run(min_epochs, eta, epochs, expected):
    assert rungs(min_epochs, eta, epochs) == expected


@pytest.mark.parametrize("n, eta, kept", [(0, 3, 0), (1, 3, 1), (2, 3, 1), (3, 3, 1), (8, 3, 2),
                                          (9, 3, 3), (10, 3, 3), (10, 2, 5), (7, 2, 3)])
def test_keep_count_is_one_eta_th_at_least_one(n, eta, kept):
    assert keep_count(n, eta) == kept


def test_promote_keeps_the_best_by_direction_in_the_given_order():
    scores = {"a": [0.5], "b": [0.9], "c": [0.7], "d": [0.1], "e": [0.8], "f": [0.2]}
    assert promote(scores, 3, higher=True) == ["b", "e"]
    assert promote(scores, 3, higher=False) == ["d", "f"]
    assert promote(scores, 2, higher=True) == ["b", "c", "e"]


def test_promote_pools_seeds_by_their_mean():
    # a has the single best seed, but b is better on average: the configuration goes on as a whole
    scores = {"a": [0.99, 0.40], "b": [0.80, 0.82], "c": [0.60, 0.61]}
    assert promote(scores, 3, higher=True) == ["b"]


def test_ties_go_to_the_configuration_given_first():
    scores = {"x": [0.5, 0.7], "y": [0.6, 0.6], "z": [0.7, 0.5]}
    assert promote(scores, 3, higher=True) == ["x"]
    assert promote(dict(reversed(scores.items())), 3, higher=True) == ["z"]
    assert promote(scores, 3, higher=False) == ["x"]


def test_a_failed_seed_ranks_the_configuration_last_and_never_promotes_it():
    assert mean_score([0.9, None]) is None and mean_score([0.9, float("nan")]) is None
    assert mean_score([]) is None and mean_score([0.2, 0.4]) == pytest.approx(0.3)
    scores = {"a": [0.99, None], "b": [0.1, 0.1], "c": [0.2, 0.2]}
    assert promote(scores, 3, higher=True) == ["c"]
    assert promote({"a": [None], "b": [float("inf")]}, 3, higher=True) == []


def synthetic(table: dict[str, dict[int, list]], reached: dict[str, int]):
    """score(config, rung) from per-epoch values, for trials that have reached `reached[config]`."""
    def score(config, rung):
        return table[config][rung] if reached[config] >= rung else None
    return score


def test_halve_walks_the_rungs_and_asks_for_what_is_missing():
    configs = [f"c{i}" for i in range(9)]
    rung_list = rungs(1, 3, 9)  # [1, 3, 9]
    # c4 is best at every rung; c1, c4, c7 lead at epoch 1, c4 alone goes on from epoch 3
    table = {c: {1: [0.1 * i], 3: [0.1 * i + 0.05], 9: [0.1 * i + 0.1]} for i, c in enumerate(configs)}
    for c, v in (("c1", 0.95), ("c4", 0.99), ("c7", 0.97)):
        table[c][1] = [v]
    table["c4"][3], table["c1"][3], table["c7"][3] = [0.995], [0.5], [0.6]
    reached = dict.fromkeys(configs, 0)

    d = halve(configs, rung_list, 3, True, synthetic(table, reached))
    assert (d.rung, d.todo, d.pruned) == (1, configs, {})
    reached.update(dict.fromkeys(configs, 1))
    d = halve(configs, rung_list, 3, True, synthetic(table, reached))
    assert (d.rung, d.todo) == (3, ["c1", "c4", "c7"])
    assert d.pruned == {c: 1 for c in configs if c not in ("c1", "c4", "c7")}
    reached.update(c1=3, c4=3)  # c7 still running: nothing is decided at rung 3 yet
    d = halve(configs, rung_list, 3, True, synthetic(table, reached))
    assert (d.rung, d.todo) == (3, ["c7"])
    reached["c7"] = 3
    d = halve(configs, rung_list, 3, True, synthetic(table, reached))
    assert (d.rung, d.todo) == (9, ["c4"]) and d.pruned["c1"] == 3 and d.pruned["c7"] == 3
    reached["c4"] = 9
    d = halve(configs, rung_list, 3, True, synthetic(table, reached))
    assert (d.rung, d.todo, d.finished) == (None, [], ["c4"]) and len(d.pruned) == 8


def test_halve_replays_the_same_decisions_whatever_was_run_beyond_them():
    # a configuration completed earlier (e.g. by a sweep without --prune) is still judged at each rung
    configs = ["a", "b", "c"]
    table = {"a": {1: [0.2], 2: [0.9]}, "b": {1: [0.8], 2: [0.85]}, "c": {1: [0.5], 2: [0.6]}}
    reached = {"a": 2, "b": 2, "c": 1}
    d = halve(configs, [1, 2], 3, True, synthetic(table, reached))
    assert d.rung is None and d.finished == ["b"] and d.pruned == {"a": 1, "c": 1}


def test_halve_with_one_rung_prunes_nothing():
    d = halve(["a", "b"], [2], 3, True, lambda c, r: [0.5])
    assert d.rung is None and d.finished == ["a", "b"] and d.pruned == {}


def test_lower_is_better_metric_prunes_the_high_losses():
    table = {"a": {1: [2.3], 2: [2.3]}, "b": {1: [0.4], 2: [0.3]}, "c": {1: [0.9], 2: [0.8]}}
    d = halve(list(table), [1, 2], 2, False, synthetic(table, dict.fromkeys(table, 2)))
    assert d.finished == ["b"] and d.pruned == {"a": 1, "c": 1}


def test_epoch_metric_reads_the_records_of_that_epoch():
    records = [{"event": "step", "epoch": 1, "split": "train", "loss": 9.0},
               {"event": "epoch", "epoch": 1, "split": "train", "loss": 1.0, "accuracy": 0.5},
               {"event": "epoch", "epoch": 1, "split": "val", "loss": 0.9, "accuracy": 0.7},
               {"event": "epoch", "epoch": 2, "split": "train", "loss": 0.8, "accuracy": 0.6},
               {"event": "epoch", "epoch": 2, "split": "val", "loss": 1.1, "accuracy": 0.6}]
    assert epoch_metric(records, "val_accuracy", 1) == 0.7
    assert epoch_metric(records, "val_accuracy", 2) == 0.6
    assert epoch_metric(records, "best_val_accuracy", 2) == 0.7
    assert epoch_metric(records, "val_loss", 2) == 1.1
    assert epoch_metric(records, "train_loss", 1) == 1.0
    assert epoch_metric(records, "val_accuracy", 3) is None


def test_prune_block_is_checked_with_did_you_mean():
    assert read_plan(None, "s.yaml: prune") == Plan()
    assert read_plan({"min_epochs": 2, "eta": 2, "metric": "val_loss"}, "p") == Plan(2, 2, "val_loss")
    with pytest.raises(ConfigError) as e:
        read_plan({"min_epoch": 1, "eta": 1, "metric": "val_acuracy"}, "s.yaml: prune")
    text = e.value.message()
    assert "s.yaml: prune.min_epoch: unknown key, did you mean min_epochs?" in text
    assert "prune.eta: 1: give a whole number, 2 or more" in text
    assert "did you mean val_accuracy?" in text
    with pytest.raises(ConfigError, match="not known at every epoch"):
        read_plan({"metric": "test_accuracy"}, "p")
    with pytest.raises(ConfigError, match="min_epochs: 0"):
        read_plan({"min_epochs": 0}, "p")
    with pytest.raises(ConfigError, match="give min_epochs"):
        read_plan([1, 3], "p")


# ---------------------------------------------------------------- a trial that stops at a rung


def _scores(records: list[dict]) -> list[tuple]:
    """Every logged number that training decides (no timings)."""
    return [(r["event"], r["epoch"], r["step"], r["split"], r["loss"], r.get("accuracy"), r.get("lr"))
            for r in records]


def test_until_epoch_pauses_on_the_full_schedule_and_resume_ends_like_an_uninterrupted_run(
        tiny_config, tmp_path):
    overrides = ["train.epochs=4", "optim.schedule=onecycle", "model.dropout=0.2"]
    paused = runner.invoke(app, ["train", str(tiny_config), *overrides, "--until-epoch", "1", "-q"])
    assert paused.exit_code == 0, paused.output
    assert "paused" in paused.output and "mnistlab train --resume" in paused.output
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "paused" and summary["epochs_completed"] == 1
    assert summary["epochs"] == 4 and "test" not in summary["final"] and summary["final"]["val"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["epoch"] == 1

    listed = runner.invoke(app, ["runs", str(tmp_path / "runs"), "--format", "json"])
    assert json.loads(listed.output)[0]["status"] == "paused"
    figure = tmp_path / "curves.png"
    drawn = runner.invoke(app, ["plot", str(run), "-o", str(figure)])
    assert drawn.exit_code == 0, drawn.output
    assert matplotlib.image.imread(figure).shape[0] > 100

    again = runner.invoke(app, ["train", "--resume", str(run), "--until-epoch", "1", "-q"])
    assert again.exit_code == 0 and json.loads((run / "summary.json").read_text()) == summary
    further = runner.invoke(app, ["train", "--resume", str(run), "--until-epoch", "3", "-q"])
    assert further.exit_code == 0, further.output
    assert json.loads((run / "summary.json").read_text())["epochs_completed"] == 3
    done = runner.invoke(app, ["train", "--resume", str(run), "-q"])
    assert done.exit_code == 0, done.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 4

    reference = fit(load_config(tiny_config, overrides + [f"runs_dir={tmp_path / 'ref'}"]))
    assert summary["final"] == reference["final"] and summary["best"] == reference["best"]
    assert _scores(read_metrics(run / "metrics.jsonl")) == _scores(
        read_metrics(Path(reference["run_dir"]) / "metrics.jsonl"))


def test_until_epoch_at_or_past_the_end_is_an_ordinary_run(tiny_config, tmp_path):
    summary = fit(load_config(tiny_config, ["train.epochs=2"]), until_epoch=5)
    assert summary["status"] == "completed" and summary["final"]["test"]


# ---------------------------------------------------------------- a pruned sweep


def _summaries(directory: Path) -> dict[str, dict]:
    """Each trial's run by its learning rate and seed."""
    out = {}
    for path in directory.glob("*/summary.json"):
        s = json.loads(path.read_text())
        cfg = yaml.safe_load((path.parent / "config.yaml").read_text())
        out[(cfg["optim"]["lr"], cfg["train"]["seed"])] = s
    return out


def test_a_bad_learning_rate_is_pruned_at_the_first_rung_and_finished_later_without_prune(
        tiny_config, tmp_path):
    args = ["sweep", str(tiny_config), "--grid", "optim.lr=1e-5,0.01", "--jobs", "2",
            "train.epochs=3", "train.seed=1", "--name", "pruned"]
    directory = tmp_path / "runs" / "pruned"
    result = runner.invoke(app, args + ["--prune"])  # the default eta, 2: one of two goes on
    assert result.exit_code == 0, result.output
    runs_ = _summaries(directory)
    assert len(runs_) == 2
    bad, good = runs_[(1e-5, 1)], runs_[(0.01, 1)]
    assert bad["status"] == "pruned" and bad["epochs_completed"] == 1
    assert bad["pruned"]["rung"] == 1 and bad["pruned"]["metric"] == "val_accuracy"
    assert "test" not in bad["final"]
    assert good["status"] == "completed" and good["epochs_completed"] == 3
    assert "rungs at epochs 1, 2, 3" in result.output
    assert "rung epoch 1: 2 configurations, 2 trials to train" in result.output
    assert "rung epoch 2: 1 configuration, 1 trial to train" in result.output
    assert "epochs trained: 4 of the 6 that training each configuration to the end takes (67%)" in result.output
    assert "1 of 2 configurations pruned (1 at epoch 1)" in result.output
    md = (directory / "summary.md").read_text()
    assert "pruned at epoch 1" in md and "| **0.01** |" in md
    rows = {r["optim.lr"]: r for r in csv.DictReader((directory / "summary.csv").open())}
    assert rows["1e-05"]["pruned_at"] == "1" and rows["0.01"]["pruned_at"] == ""
    assert matplotlib.image.imread(directory / "plot-optim.lr-val_accuracy.png").shape[0] > 100
    listed = runner.invoke(app, ["runs", str(directory), "--status", "pruned", "--format", "json"])
    assert len(json.loads(listed.output)) == 1

    again = runner.invoke(app, args + ["--prune"])
    assert again.exit_code == 0, again.output
    assert "nothing to run: every configuration is completed or pruned" in again.output
    assert "epochs trained: 4 of the 6" in again.output
    assert _summaries(directory)[(1e-5, 1)]["status"] == "pruned"

    finish = runner.invoke(app, args)  # without --prune: the pruned trials go on from their rung
    assert finish.exit_code == 0, finish.output
    assert "2 trials, 1 done before" in finish.output and "1 to run" in finish.output
    after = _summaries(directory)
    assert len(list(directory.glob("*/summary.json"))) == 2  # continued, not started again
    bad = after[(1e-5, 1)]
    assert bad["status"] == "completed" and bad["epochs_completed"] == 3
    reference = fit(load_config(tiny_config, ["optim.lr=1e-5", "train.seed=1", "train.epochs=3",
                                              f"runs_dir={tmp_path / 'ref'}"]))
    assert bad["final"] == reference["final"] and bad["best"] == reference["best"]
    assert _scores(read_metrics(Path(bad["run_dir"]) / "metrics.jsonl")) == _scores(
        read_metrics(Path(reference["run_dir"]) / "metrics.jsonl"))


def test_seeds_of_a_configuration_are_pruned_together(tiny_config):
    sweep = read_sweep(tiny_config, grid=["optim.lr=0.1,0.01"], seeds="0,1,2")
    _, trials = build_trials(sweep)
    groups = {}
    for t in trials:
        groups.setdefault(config_key(sweep, t), []).append(t.cfg.train.seed)
    assert sorted(groups.values()) == [[0, 1, 2], [0, 1, 2]]
    swept = read_sweep(tiny_config, grid=["optim.lr=0.1,0.01", "train.seed=0,1"])
    assert len({config_key(swept, t) for t in build_trials(swept)[1]}) == 4  # a swept seed is a key


def test_prune_block_in_the_sweep_file(tiny_config, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": tiny_config.name, "grid": {"optim.lr": [0.01]},
                                    "prune": {"min_epoch": 1, "eta": 1}}))
    result = runner.invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "prune.min_epoch: unknown key, did you mean min_epochs?" in result.stderr
    assert "prune.eta: 1: give a whole number, 2 or more" in result.stderr
    path.write_text(yaml.safe_dump({"base": tiny_config.name, "grid": {"optim.lr": [0.01, 0.001]},
                                    "overrides": ["train.epochs=9"],
                                    "prune": {"min_epochs": 1, "eta": 3, "metric": "val_loss"}}))
    dry = runner.invoke(app, ["sweep", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "rungs at epochs 1, 3, 9; the best 1/3 by val_loss" in dry.output
    dry = runner.invoke(app, ["sweep", str(path), "--dry-run", "--eta", "2", "--metric", "val_accuracy"])
    assert "rungs at epochs 1, 2, 4, 8, 9; the best 1/2 by val_accuracy" in dry.output
    dry = runner.invoke(app, ["sweep", str(path), "--dry-run", "--no-prune"])
    assert dry.exit_code == 0 and "rungs" not in dry.output
    bad = runner.invoke(app, ["sweep", str(path), "--dry-run", "--metric", "test_accuracy"])
    assert bad.exit_code == 2 and "not known at every epoch" in bad.stderr
