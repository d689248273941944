"""mnistlab runs, compare and plot on a few tiny real runs."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tiny_config_dict, write_dataset
from mnistlab import files, metrics, report
from mnistlab.cli import app
from mnistlab.config import config_from_dict, load_config
from mnistlab.errors import TrainError
from mnistlab.training import fit

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """Two completed dense runs differing in optim.lr, one failed (diverged) and one interrupted."""
    base = tmp_path_factory.mktemp("report")
    data = write_dataset(base / "tiny")
    out = base / "runs"
    dense = {"kind": "dense", "hidden": [16]}
    for name, lr in (("fast", 0.01), ("slow", 0.001)):
        fit(config_from_dict(tiny_config_dict(data, out, name=name, model=dense,
                                              optim={"lr": lr}, train={"epochs": 3})))
    with pytest.raises(TrainError):
        fit(config_from_dict(tiny_config_dict(data, out, name="boom", model=dense,
                                              optim={"name": "sgd", "lr": 1e30})))
    fast = next(out.glob("*-fast"))
    stopped = out / (fast.name.replace("fast", "stopped"))
    shutil.copytree(fast, stopped)  # as a Ctrl-C during epoch 2 leaves it
    summary = files.read_json(stopped / "summary.json")
    summary.update(status="interrupted", epochs_completed=1, final={}, wall_seconds=None)
    files.write_json(stopped / "summary.json", summary)
    return out


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_runs_json_shows_varying_columns_and_every_status(runs_dir):
    result = cli("runs", runs_dir, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert sorted(r["status"] for r in rows) == ["completed", "completed", "failed", "interrupted"]
    assert {"optim.lr", "optim.name"} <= set(rows[0])  # sgd for the run that diverged
    assert "train.batch_size" not in rows[0] and "model.hidden" not in rows[0]
    assert {r["optim.lr"] for r in rows} == {0.01, 0.001, 1e30}
    everything = json.loads(cli("runs", runs_dir, "--format", "json", "--all-columns").output)
    assert everything[0]["train.batch_size"] == 32 and everything[0]["model.hidden"] == [16]


def test_runs_csv_parses_and_filters_sort(runs_dir):
    result = cli("runs", runs_dir, "--format", "csv", "--status", "completed",
                 "--sort", "test_accuracy")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) == 2 and "optim.lr" in rows[0]
    accs = [float(r["test_accuracy"]) for r in rows]
    assert accs == sorted(accs, reverse=True)
    slow = cli("runs", runs_dir, "--format", "json", "--filter", "optim.lr=0.001")
    assert [r["run"].split("-")[-1] for r in json.loads(slow.output)] == ["slow"]


def _shown(output: str, runs_dir: Path) -> None:
    """The table's key columns are there and every run's name and test accuracy appear whole."""
    assert "…" not in output
    lines = output.splitlines()
    header = next(line for line in lines if line.strip().startswith("run "))
    for column in ("status", "optim.lr", "test acc"):
        assert column in header
    for run in runs_dir.iterdir():
        line = next(line for line in lines if run.name in line)
        summary = files.read_json(run / "summary.json")
        assert summary["status"] in line
        if summary["status"] == "completed":
            assert metrics.text("test_accuracy", summary["final"]["test"]["accuracy"]) in line


def test_runs_table_fits_80_columns_and_cuts_nothing(runs_dir):
    result = runner.invoke(app, ["runs", str(runs_dir)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line.rstrip()) for line in result.output.splitlines()) <= 80
    _shown(result.output, runs_dir)
    assert "--all-columns" in result.output and "train.batch_size" not in result.output
    md = cli("runs", runs_dir, "--format", "markdown").output.splitlines()
    assert md[0].startswith("| run |") and len(md) == 2 + 4


def test_runs_table_in_a_pipe_follows_columns(runs_dir):
    env = {**os.environ, "COLUMNS": "120", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "mnistlab", "runs", str(runs_dir)], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 120
    _shown(out, runs_dir)
    assert "best val acc" in out  # room for more at 120 columns
    wide = cli("runs", runs_dir, "--all-columns").output
    assert "train.batch_size" in wide and "…" not in wide


def test_runs_columns_follow_the_listed_runs(runs_dir):
    everything = cli("runs", runs_dir, "--format", "csv").output.splitlines()[0].split(",")
    assert "optim.name" in everything  # only the run that diverged used sgd
    completed = cli("runs", runs_dir, "--format", "csv", "--status", "completed")
    assert "optim.name" not in completed.output.splitlines()[0].split(",")
    table = runner.invoke(app, ["runs", str(runs_dir), "--status", "completed"],
                          env={"COLUMNS": "200"}).output
    assert "optim.lr" in table and "optim.name" not in table and "val loss" not in table


@pytest.mark.parametrize("args, expected", [
    (["--sort", "test.accuracy"], "did you mean test_accuracy"),
    (["--filter", "model.knd=conv"], "did you mean model.kind"),
    (["--format", "xml"], "not a format"),
])
def test_runs_bad_options(runs_dir, args, expected):
    result = cli("runs", runs_dir, *args)
    assert result.exit_code == 2 and expected in result.output


def test_runs_missing_directory(tmp_path):
    result = cli("runs", tmp_path / "nothing")
    assert result.exit_code == 2 and "no such directory" in result.output


def test_compare_shows_differences_and_metrics(runs_dir):
    fast, slow = next(runs_dir.glob("*-fast")), next(runs_dir.glob("*-slow"))
    result = cli("compare", fast, slow, "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["config"]["optim.lr"] == [0.01, 0.001]
    assert "train.epochs" not in out["config"]
    tests = [files.read_json(r / "summary.json")["final"]["test"]["accuracy"] for r in (fast, slow)]
    assert out["metrics"]["test_accuracy"] == tests
    assert "f" not in out["metrics"] and "lstsq_gap" not in out["metrics"]  # not a classifier's
    table = cli("compare", fast, slow)
    assert "optim.lr" in table.output and "best_val_accuracy" in table.output
    assert cli("compare", fast).exit_code == 2
    assert cli("compare", fast, runs_dir / "nope").exit_code == 2


def test_curves_figure_has_a_train_and_val_curve_per_run(runs_dir):
    rows = [report.load_run(next(runs_dir.glob(f"*-{name}"))) for name in ("fast", "slow")]
    fig = report.curves_figure(rows)
    loss, acc = fig.axes[:2]
    assert len(loss.get_lines()) == len(acc.get_lines()) == 4
    assert len(loss.get_lines()[0].get_xdata()) == 3  # one point per epoch
    assert acc.get_ylabel() == "accuracy (%)" and loss.get_xlabel() == "epoch"
    (legend,) = fig.legends  # beside the panels, not on them
    assert [t.get_text() for t in legend.get_texts()] == ["optim.lr=0.01", "optim.lr=0.001"]


def test_plot_writes_png_and_svg(runs_dir, tmp_path):
    fast, slow = next(runs_dir.glob("*-fast")), next(runs_dir.glob("*-slow"))
    png, svg = tmp_path / "curves.png", tmp_path / "curves.svg"
    result = cli("plot", fast, slow, "-o", png)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert cli("plot", fast, "-o", svg).exit_code == 0
    assert b"<svg" in svg.read_bytes()[:500]
    conf = tmp_path / "confusion.png"
    assert cli("plot", fast, "--confusion", "-o", conf).exit_code == 0
    assert conf.stat().st_size > 5000
    bad = cli("plot", fast, "-o", tmp_path / "curves.gif")
    assert bad.exit_code == 2 and ".png" in bad.output
    assert not (tmp_path / "curves.gif").exists()


DAMAGE = {
    "truncated": lambda run: (run / "summary.json").write_text(
        (run / "summary.json").read_text()[:80]),
    "binary": lambda run: (run / "summary.json").write_bytes(bytes(range(256)) * 4),
    "a list": lambda run: (run / "summary.json").write_text("[1, 2, 3]\n"),
    "missing config": lambda run: (run / "config.yaml").unlink(),
}
REASONS = {"truncated": "summary.json is truncated", "binary": "summary.json is binary",
           "a list": "summary.json is a list", "missing config": "config.yaml is missing"}


@pytest.fixture
def damaged(runs_dir, tmp_path) -> Path:
    """A copy of runs_dir with a sweep-like logs/ folder, and a damaged run for each kind of damage."""
    out = tmp_path / "runs"
    shutil.copytree(runs_dir, out)
    fast = next(out.glob("*-fast"))
    for i, damage in enumerate(DAMAGE.values()):
        run = fast.with_name(fast.name.replace("fast", f"damaged{i}"))
        shutil.copytree(fast, run)
        damage(run)
    (out / "logs").mkdir()
    (out / "logs" / "trial.log").write_text("a log\n")
    return out


def test_runs_lists_damaged_runs_and_all_the_others(damaged):
    result = runner.invoke(app, ["runs", str(damaged)], env={"COLUMNS": "80"})
    assert result.exit_code == 0 and "Traceback" not in result.output
    for run in damaged.iterdir():
        if run.name != "logs":
            assert run.name in result.output
    for reason in REASONS.values():
        assert reason in result.output
    rows = json.loads(cli("runs", damaged, "--format", "json", "--status", "damaged").output)
    assert len(rows) == len(DAMAGE) and all(r["status"] == "damaged" and r["problem"] for r in rows)
    healthy = json.loads(cli("runs", damaged, "--format", "json", "--status", "completed").output)
    assert len(healthy) == 2


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_compare_and_plot_of_a_damaged_run_say_what_is_wrong(damaged, kind, tmp_path):
    run = next(damaged.glob(f"*-damaged{list(DAMAGE).index(kind)}"))
    fast = next(damaged.glob("*-fast"))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for args in (["compare", fast, run], ["plot", fast, run, "-o", tmp_path / "x.png"]):
        result = cli(*args)
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert str(run) in result.output and REASONS[kind] in result.output
        assert "delete the run directory" in result.output
    assert not (tmp_path / "x.png").exists()
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_plot_of_a_sweep_glob_skips_folders_that_are_not_runs(damaged, tmp_path):
    fast, slow = next(damaged.glob("*-fast")), next(damaged.glob("*-slow"))
    png = tmp_path / "curves.png"
    result = cli("plot", fast, slow, damaged / "logs", "-o", png)
    assert result.exit_code == 0, result.output
    assert f"skipped {damaged / 'logs'}: not a run directory" in result.output and png.is_file()
    alone = cli("plot", damaged / "logs", "-o", png)
    assert alone.exit_code == 2 and "not a run directory" in alone.output
    (damaged / "summary.csv").write_text("a,b\n")
    result = cli("compare", fast, slow, damaged / "summary.csv", "--format", "json")
    assert result.exit_code == 0 and "skipped" in result.output


def test_plot_skips_damaged_lines_of_metrics_jsonl(damaged, tmp_path):
    fast = next(damaged.glob("*-fast"))
    with open(fast / "metrics.jsonl", "ab") as f:
        f.write(b'\xff\xfe{"event": "epoch", "split"\n{"event": "epoch", "epoch": "x", "step": 1}\n[]\n')
    assert cli("plot", fast, "-o", tmp_path / "x.png").exit_code == 0


def test_runs_fill_each_task_metric_only_for_its_task(runs_dir, tmp_path):
    out = tmp_path / "runs"
    shutil.copytree(next(runs_dir.glob("*-fast")), out / next(runs_dir.glob("*-fast")).name)
    fit(load_config(ROOT / "configs/linreg.yaml", [f"runs_dir={out}", "train.epochs=2", "linreg.n=100"]))
    rows = {r["model"]: r for r in csv.DictReader(io.StringIO(cli("runs", out, "--format", "csv").output))}
    assert float(rows["linreg"]["val_loss"]) > 0 and rows["linreg"]["test_accuracy"] == ""
    assert rows["dense"]["val_loss"] == "" and float(rows["dense"]["test_accuracy"]) > 0
    table = runner.invoke(app, ["runs", str(out)], env={"COLUMNS": "80"}).output.splitlines()
    header = next(line for line in table if "val loss" in line)
    start = header.index("val loss")
    cells = {task: next(line for line in table if task in line)[start:start + len("val loss")]
             for task in ("-fast", "-linreg")}
    assert cells["-fast"].strip() == "" and float(cells["-linreg"]) == pytest.approx(
        float(rows["linreg"]["val_loss"]), rel=1e-3)


@pytest.mark.parametrize("values, scale", [
    ([0.8512, 0.8733, 0.8921], "linear"),  # accuracies
    ([2.582, 2.3e-7, 2.3e-7, 13.0], "log"),  # the quadratic sweep's f: ten orders of magnitude
    ([0.0, 2.582, 2.3e-7, 13.0], "symlog"),  # lr=0.5 reaches f = 0 exactly
    ([-1.0, 1e-6, 10.0], "linear"),  # a negative value has no place on a log axis
])
def test_metric_axis_goes_log_when_values_span_orders_of_magnitude(values, scale):
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    report.metric_axis(ax, "f", values)
    assert ax.get_yscale() == scale and ax.get_ylabel() == "final f(x)"
