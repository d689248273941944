"""One sweep folder, one definition: a sweep name re-run with other overrides is refused."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from mnistlab.cli import app
from mnistlab.sweep import build_trials, read_sweep
from mnistlab.sweep.store import write_definition

runner = CliRunner()


def test_a_sweep_name_rerun_with_other_overrides_is_refused_and_its_definition_kept(tiny_config,
                                                                                  tmp_path):
    first = read_sweep(tiny_config, ["optim.lr=0.01,0.02"], None, ["train.epochs=1"], "lr")
    directory, _ = build_trials(first)
    write_definition(first, directory)  # as the first sweep's run leaves it
    before = (directory / "sweep.yaml").read_text()
    again = runner.invoke(app, ["sweep", str(tiny_config), "train.epochs=1", "--grid",
                                "optim.lr=0.01,0.02", "--name", "lr", "--dry-run"])
    assert again.exit_code == 0, again.output  # the same definition: fine
    other = runner.invoke(app, ["sweep", str(tiny_config), "train.epochs=2", "--grid",
                                "optim.lr=0.01,0.02", "--name", "lr"])
    assert other.exit_code == 2, other.output
    message = " ".join(other.output.split())
    assert "overrides: train.epochs=1 there, train.epochs=2 now" in message
    assert "another name (--name NAME" in message and f"mnistlab sweep {directory}" in message
    assert (directory / "sweep.yaml").read_text() == before
    assert [p.name for p in directory.iterdir()] == ["sweep.yaml"]  # no trial ran
    grid = runner.invoke(app, ["sweep", str(tiny_config), "train.epochs=1", "--grid",
                               "optim.lr=0.01,0.02,0.05", "--name", "lr", "--dry-run"])
    assert grid.exit_code == 0, grid.output  # a grid extended: the same experiment, more points
    elsewhere = runner.invoke(app, ["sweep", str(tiny_config), "train.epochs=2", "--grid",
                                    "optim.lr=0.01,0.02", "--name", "lr-2epochs", "--dry-run"])
    assert elsewhere.exit_code == 0, elsewhere.output
    assert Path(directory / "sweep.yaml").is_file()
