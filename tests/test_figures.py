"""Figures tested by what they show: tick positions and labels, category order, markers of failed
and pruned trials, legends inside the canvas, labels naming what the runs read."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import matplotlib
import pytest
import yaml

matplotlib.use("Agg")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from mnistlab import report  # noqa: E402
from mnistlab.report.figures import sweep_figure  # noqa: E402
from mnistlab.sweep.spec import format_value  # noqa: E402
from mnistlab.sweep.summary import diverged, series_of  # noqa: E402


def row(params: dict, values: list[float], trials: int = 2, failed: int = 0, diverged: int = 0,
        pruned_at: int | None = None, epochs: int = 4) -> dict:
    """A configuration's row as sweep.summary.summarize gives it."""
    return {"params": params, "values": values, "trials": trials, "failed": failed,
            "diverged": diverged, "pruned_at": pruned_at, "epochs": epochs,
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None}


def draw(rows: list[dict], key: str, metric: str = "val_accuracy"):
    series, others = series_of(rows, key)
    fig = sweep_figure("sweep", key, metric, series, format_value, ", ".join(others), 4)
    FigureCanvasAgg(fig).draw()
    return fig, fig.axes[0]


def labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def series_lines(ax) -> dict:
    """The data line of each series (errorbar's), by its legend label."""
    return {c.get_label(): c.lines[0] for c in ax.containers}


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]


def inside_canvas(fig, artist) -> bool:
    box = artist.get_window_extent(fig.canvas.get_renderer())
    return box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width + 0.5 and box.y1 <= fig.bbox.height + 0.5


DENSE = [row({"model.hidden": [h], "optim.lr": lr}, [0.8 + h / 1e4 + lr, 0.81 + h / 1e4 + lr])
         for h in (1024, 256, 64) for lr in (0.03, 0.003, 0.0003)]


def test_categories_are_ordered_by_value_and_drawn_as_points():
    fig, ax = draw(DENSE, "model.hidden")
    assert labels(ax) == ["[64]", "[256]", "[1024]"]
    assert list(ax.get_xticks()) == [0, 1, 2]
    lines = series_lines(ax)
    assert set(lines) == {"lr=0.0003", "lr=0.003", "lr=0.03"}
    for line in lines.values():  # markers, no line joining the categories
        assert line.get_linestyle() == "None" and line.get_marker() == "o"
    conv = [row({"model.channels": c}, [0.9]) for c in ([32, 64], [8, 32], [16, 32], [8, 16])]
    _, ax = draw(conv, "model.channels")
    assert labels(ax) == ["[8,16]", "[8,32]", "[16,32]", "[32,64]"]


def test_categorical_points_sit_at_their_category():
    fig, ax = draw(DENSE, "model.hidden")
    for line in series_lines(ax).values():  # dodged a little, never into another category
        assert [round(x) for x in line.get_xdata()] == [0, 1, 2]
        assert [abs(x - round(x)) < 0.2 for x in line.get_xdata()] == [True] * 3


def test_log_lr_axis_has_its_ticks_at_the_swept_values():
    fig, ax = draw(DENSE, "optim.lr")
    assert ax.get_xscale() == "log"
    assert list(ax.get_xticks()) == pytest.approx([3e-4, 3e-3, 3e-2])
    assert labels(ax) == ["0.0003", "0.003", "0.03"]
    assert list(ax.xaxis.get_minorticklocs()) == []


def test_failed_and_diverged_trials_are_marked_at_the_worse_edge():
    rows = [row({"optim.lr": lr}, [1e-3 * lr], trials=1) for lr in (0.01, 0.1, 0.5)] + [
        row({"optim.lr": 1.1}, [], trials=1, failed=1, diverged=1),
        row({"optim.lr": 1.5}, [], trials=1, failed=1)]
    fig, ax = draw(rows, "optim.lr", metric="f")
    crosses = [line for line in ax.lines if line.get_marker() == "X"]
    assert sorted(line.get_xdata()[0] for line in crosses) == [1.1, 1.5]
    assert all(line.get_ydata()[0] > 0.9 for line in crosses)  # f: lower is better, so the top
    assert all(line.get_transform() != ax.transData for line in crosses)
    assert {"diverged", "failed"} <= set(texts(fig))
    assert 1.1 in list(ax.get_xticks()) and 1.5 in list(ax.get_xticks())
    legend = fig.legends[0]
    assert any("failed" in t.get_text() for t in legend.get_texts()) and inside_canvas(fig, legend)


def test_a_mean_over_fewer_seeds_says_so():
    rows = [row({"optim.lr": 0.1}, [0.9, 0.92]), row({"optim.lr": 0.01}, [0.85], failed=1)]
    fig, ax = draw(rows, "optim.lr")
    assert "n=1 of 2, 1 failed" in texts(fig)
    open_markers = [line for line in ax.lines if line.get_markerfacecolor() == "white"]
    assert [list(line.get_xdata()) for line in open_markers] == [[0.01]]


def test_pruned_configurations_are_not_drawn_at_their_rung_value():
    rows = [row({"optim.name": "sgd", "optim.lr": 0.1}, [0.91], trials=1),
            row({"optim.name": "adamw", "optim.lr": 0.1}, [0.90], trials=1),
            row({"optim.name": "sgd", "optim.lr": 0.01}, [], trials=1, pruned_at=1),
            row({"optim.name": "adamw", "optim.lr": 0.01}, [], trials=1, pruned_at=2)]
    rows[2]["pruned_mean"] = 0.5  # its value at the rung: not on the axis of full-length values
    fig, ax = draw(rows, "optim.name")
    data_ys = [y for line in series_lines(ax).values() for y in line.get_ydata()]
    assert sorted(data_ys) == pytest.approx([90.0, 91.0])
    assert all(y > 50 for line in ax.lines if line.get_transform() == ax.transData for y in line.get_ydata())
    assert {"pruned at epoch 1", "pruned at epoch 2"} <= set(texts(fig))
    assert ax.get_ylabel() == "final validation accuracy (%) after 4 epochs"
    assert labels(ax) == ["adamw", "sgd"]


def test_many_series_get_distinct_styles_and_a_legend_inside_the_canvas():
    rows = [row({"optim.lr": lr, "model.hidden": [h]}, [0.9]) for lr in (0.1, 0.01) for h in range(1, 25)]
    fig, ax = draw(rows, "optim.lr")
    styles = {(str(line.get_color()), line.get_marker()) for line in series_lines(ax).values()}
    assert len(styles) == 24
    assert inside_canvas(fig, fig.legends[0])


def test_a_diverged_trial_is_told_from_its_summary():
    assert diverged({"status": "failed", "failure": "diverged"})
    assert diverged({"status": "failed", "error": "the training loss grew ...: the run diverged and stopped"})
    assert not diverged({"status": "failed", "error": "CUDA out of memory"})


def make_run(directory: Path, config: dict, losses: list[tuple[float, float]], status: str = "completed",
             accuracy: float = 0.9) -> Path:
    """A run directory as train writes it: config.yaml, summary.json, per-epoch records."""
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    (directory / "summary.json").write_text(json.dumps({
        "status": status, "task": config.get("task", "classify"), "started": "2025-01-01T00:00:00",
        "epochs_completed": len(losses), "final": {"val": {"accuracy": accuracy}},
        "test": {"accuracy": accuracy}}))
    lines = []
    for epoch, (train, val) in enumerate(losses, 1):
        lines.append({"event": "epoch", "split": "train", "epoch": epoch, "step": 10 * epoch,
                      "loss": train, "accuracy": accuracy})
        lines.append({"event": "epoch", "split": "val", "epoch": epoch, "step": 10 * epoch,
                      "loss": val, "accuracy": accuracy - 0.01})
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return directory


def net(kind: str, lr: float, smoothing: float = 0.0, **model) -> dict:
    return {"name": f"{kind}", "task": "classify", "platform": "torch",
            "model": {"kind": kind, "hidden": [256], "channels": [32, 64], **model},
            "optim": {"name": "adamw", "lr": lr, "schedule": "none"},
            "train": {"epochs": 2, "label_smoothing": smoothing}, "data": {"name": "fashion-mnist"}}


@pytest.fixture
def many_runs(tmp_path) -> list[Path]:
    dirs = [make_run(tmp_path / f"dense-{i:02d}", net("dense", 0.001 * (i + 1), hidden=[64 * (i + 1)]),
                     [(0.6 - 0.01 * i, 0.5 - 0.01 * i), (0.4, 0.45)]) for i in range(9)]
    dirs += [make_run(tmp_path / f"conv-{i:02d}", net("conv", 0.001 * (i + 1), 0.1, channels=[8 * (i + 1), 64]),
                      [(0.5, 0.4), (0.3 + 0.01 * i, 0.35)]) for i in range(9)]
    return dirs


def notes(fig) -> list:
    """The figure's texts under the axes, not its title."""
    return [t for f in (fig, *fig.subfigs) for t in f.texts if t is not fig._suptitle]


def legends(fig) -> list:
    return [legend for f in (fig, *fig.subfigs) for legend in f.legends]


def curves(dirs: list[Path]):
    fig = report.curves_figure([report.load_run(d) for d in dirs])
    FigureCanvasAgg(fig).draw()
    return fig


def test_curves_of_many_runs_keep_the_legend_whole_inside_the_canvas(many_runs):
    fig = curves(many_runs)
    (legend,) = legends(fig)
    assert len(legend.get_texts()) == 18 and inside_canvas(fig, legend)
    under = legend.get_window_extent(fig.canvas.get_renderer())
    for ax in fig.axes:  # not on the panels: under them
        assert ax.get_tightbbox(fig.canvas.get_renderer()).y0 >= under.y1
    for note in notes(fig):
        assert note.get_window_extent(fig.canvas.get_renderer()).y1 <= under.y0
    loss = fig.axes[0]
    styles = {(str(line.get_color()), line.get_marker()) for line in loss.lines
              if not line.get_label().startswith("_")}
    assert len(styles) == 18  # no colour repeats after ten


def test_curve_labels_name_what_each_run_reads_and_the_model_kind(many_runs):
    texts_ = [t.get_text() for t in legends(curves(many_runs))[0].get_texts()]
    dense = [t for t in texts_ if "kind=dense" in t]
    conv = [t for t in texts_ if "kind=conv" in t]
    assert len(dense) == 9 and len(conv) == 9
    assert all("channels" not in t and "hidden=" in t for t in dense)
    assert all("hidden" not in t and "channels=" in t for t in conv)
    assert all("lr=" in t for t in texts_)


def test_label_smoothing_is_said_on_the_curves(tmp_path):
    smooth = make_run(tmp_path / "cnn", net("conv", 0.2, smoothing=0.1), [(0.7, 0.35), (0.6, 0.3)])
    plain = make_run(tmp_path / "dense", net("dense", 0.003), [(0.5, 0.45), (0.4, 0.42)])
    fig = curves([smooth])
    (note,) = notes(fig)
    assert "Label smoothing 0.1 is on" in note.get_text() and "above the validation" in note.get_text()
    assert inside_canvas(fig, note)
    assert not notes(curves([plain]))
    mixed = " ".join(t.get_text() for t in notes(curves([smooth, plain])))
    assert "in 1 of 2 runs (model.kind=conv" in mixed and "model.kind=dense" not in mixed


def test_plot_of_sweep_folders_draws_them_side_by_side(tmp_path, tiny_config):
    from typer.testing import CliRunner

    from mnistlab.cli import app

    runner = CliRunner()
    for name, kind in (("dense-lr", "dense"), ("conv-lr", "conv")):
        done = runner.invoke(app, ["sweep", str(tiny_config), "--grid", "optim.lr=0.05,0.005",
                                   "--name", name, f"model.kind={kind}", "train.epochs=1"])
        assert done.exit_code == 0, done.output
    sweeps = [tmp_path / "runs" / "dense-lr", tmp_path / "runs" / "conv-lr"]
    out = tmp_path / "sweeps.png"
    result = runner.invoke(app, ["plot", *map(str, sweeps), "-o", str(out)])
    assert result.exit_code == 0, result.output
    from mnistlab.sweep.summary import compare_figure

    fig = compare_figure(sweeps)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "optim.lr" and labels(ax) == ["0.005", "0.05"]
    assert set(series_lines(ax)) == {"dense-lr", "conv-lr"}
    assert all(len(line.get_xdata()) == 2 for line in series_lines(ax).values())

    alone = runner.invoke(app, ["plot", str(sweeps[0]), "-o", str(tmp_path / "curves.png")])
    assert alone.exit_code == 0, alone.output  # a sweep folder stands for its trials
    fig = report.curves_figure([report.load_run(d) for d in report.runs_of([str(sweeps[0])])[0]])
    assert [t.get_text() for t in legends(fig)[0].get_texts()] == ["optim.lr=0.005", "optim.lr=0.05"]


def test_compare_names_the_model_kind_and_not_what_a_dense_net_never_reads(tmp_path, capsys):
    from rich.console import Console

    conv = make_run(tmp_path / "cnn", net("conv", 0.2, channels=[16, 64]), [(0.5, 0.4)])
    dense = make_run(tmp_path / "dense", net("dense", 0.003, hidden=[512]), [(0.5, 0.4)])
    out = Console(width=80, record=True)
    report.compare([report.load_run(conv), report.load_run(dense)], "table", False, out)
    text = out.export_text()
    assert "model.kind" in text and "optim.lr" in text
    assert "model.channels" not in text and "model.hidden" not in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_runs_of_a_sweep_folder_keep_its_swept_key_at_80_columns(tmp_path):
    from rich.console import Console

    folder = tmp_path / "sweep-wd"
    folder.mkdir()
    (folder / "sweep.yaml").write_text("name: sweep-wd\nbase: /x.yaml\ngrid:\n  optim.weight_decay: [0.0, 0.1]\n")
    for i in range(4):  # many settings differ; the swept one must not be the one left out
        cfg = net("dense", 0.001 * (i + 1), hidden=[64 * (i + 1)])
        cfg["optim"]["weight_decay"] = 0.1 * (i % 2)
        cfg["train"].update(batch_size=32 * (i + 1), val_split=0.1 + 0.01 * i, seed=i, epochs=i + 1)
        make_run(folder / f"wd-{i}-{'x' * 12}", cfg, [(0.5, 0.4)])
    out = Console(width=80, record=True)
    rows = report.find_runs(folder)
    report.runs_table(rows, "table", False, out, tuple(report.swept_keys(folder)))
    text = out.export_text()
    header = next(line for line in text.splitlines() if line.strip().startswith("run "))
    assert "optim.weight_decay" in header and "optim.lr" in header, text
    assert "model.hidden" in text.split("Left out")[1]  # the unswept ones go first
