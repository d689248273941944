"""At 80 columns nothing is cut inside a word or a file name: tables fold between words or after a
'/', live bars shrink their bar, help texts keep their examples whole."""

from __future__ import annotations

import io
import re

from rich.cells import cell_len
from rich.console import Console
from typer.testing import CliRunner

from conftest import screen_lines
from mnistlab import display
from mnistlab.cli import app
from mnistlab.report import predictions_table

runner = CliRunner()


def terminal() -> tuple[Console, io.StringIO]:
    screen = io.StringIO()
    return Console(file=screen, force_terminal=True, width=80, highlight=False), screen


def fits(lines: list[str]) -> bool:
    """Every line within 80 cells, and none that Rich cut short with an ellipsis."""
    return all(cell_len(line) <= 80 and "…" not in line for line in lines)


def test_the_dry_run_table_keeps_every_trial_name_whole(tiny_config):
    result = runner.invoke(app, ["sweep", str(tiny_config), "--grid", "optim.lr=0.1,0.01,0.003",
                                 "--grid", "optim.name=sgd,adamw", "--seeds", "0,1", "--dry-run"],
                           env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    # the rows under the title (a pipe keeps the title, with its temporary path, on one line)
    table = result.stdout[:result.stdout.index("Each trial is the command")].splitlines()[1:]
    assert fits(table), result.stdout
    names = [f"lr-{lr}_name-{name}_seed-{seed}" for lr in ("0.1", "0.01", "0.003")
             for name in ("sgd", "adamw") for seed in (0, 1)]
    assert all(any(re.search(rf"\s{re.escape(n)}\s", line) for line in table) for n in names), \
        result.stdout  # before: lr-0.003_name-adamw_se / ed-1


def predictions(*paths: str) -> list[dict]:
    top = [{"name": name, "probability": p}
           for name, p in (("Ankle boot", 0.912), ("Sneaker", 0.061), ("T-shirt/top", 0.011))]
    return [{"file": path, "top": top} for path in paths]


def rendered(results: list[dict]) -> list[str]:
    out, screen = terminal()
    out.print(predictions_table(results, out.width))
    return [line.rstrip() for line in screen_lines(screen.getvalue())]


def test_predict_shows_short_paths_on_one_line_beside_their_classes():
    lines = rendered(predictions("shoe.jpg", "my-digit.png"))
    assert fits(lines)
    assert re.fullmatch(r"shoe\.jpg +Ankle boot 91\.2% +Sneaker 6\.1% +T-shirt/top 1\.1%", lines[1])
    assert lines[2].startswith("my-digit.png ")


def test_predict_breaks_a_long_path_after_a_slash_never_inside_a_file_name():
    long = "pictures/from-the-course/garments/trousers.png"
    longest = "pictures/from-the-course/garments/an-ankle-boot-photographed-on-a-table.png"
    lines = rendered(predictions("trousers.png", long, longest))
    assert fits(lines), lines
    first = [line.split("  ")[0].strip() for line in lines[1:]]  # the image column
    assert "trousers.png" in first and "an-ankle-boot-photographed-on-a-table.png" in first
    assert "pictures/from-the-course/garments/" in first  # before: garments/trou / sers.png
    assert "".join(first).replace("trousers.png", "", 1) == long + longest  # nothing lost between
    # each class's name and probability are still together or broken between them, never inside
    assert all(word in " ".join(lines) for word in ("Ankle", "boot", "91.2%", "T-shirt/top", "1.1%"))


def test_the_sweep_help_keeps_its_examples_whole():
    result = runner.invoke(app, ["sweep", "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert fits(lines), result.stdout  # before: model.channels=[8,16],[1…
    assert any(line.strip() == "mnistlab sweep configs/cnn.yaml --grid model.channels=[8,16],[16,32]"
               for line in lines)
    assert "--grid optim.lr=0.1,0.01;" in result.stdout


def test_a_header_breaks_between_parts_and_counts_the_separator():
    parts = ["run runs/20261204-185119-a-rather-long-run-name: 40,794 parameters", "cpu",
             "1 threads", "54,000 training and 6,000 validation samples from "
             "/usr/share/datasets/fashion-mnist"]
    assert len("run runs/20261204-185119-a-rather-long-run-name: 40,794 parameters, cpu,") == 72
    text = display.wrap_parts(parts, ",", 72)
    lines = text.splitlines()
    assert lines[0] == "run runs/20261204-185119-a-rather-long-run-name: 40,794 parameters, cpu,"
    text = display.wrap_parts(parts, ",", 71)  # the comma after cpu would be the 72nd cell
    lines = text.splitlines()
    assert lines[0] == "run runs/20261204-185119-a-rather-long-run-name: 40,794 parameters,"
    assert all(cell_len(line) <= 71 for line in lines), lines
    assert " ".join(text.split()) == ", ".join(parts)


def test_the_training_display_says_each_stage_within_80_columns():
    out, screen = terminal()
    live = display.Live(out)
    live.stage("loading the data and building the model")
    live.progress.refresh()
    live.stage("fitting the whitened first convolution", 9_500, 10_000)
    live.progress.refresh()
    live.stage(None)
    live.start({"run_dir": "runs/20261204-185119-cnn", "params": 40794, "device": "cpu",
                "threads": 2, "describe": "54,000 training and 6,000 validation samples",
                "rate_unit": "img/s", "epochs": 6, "task": "classify", "steps_per_epoch": 211,
                "start_epoch": 0, "resumed": False})
    live.stage("computing the frozen first stage", 53_248, 54_000)
    live.progress.refresh()
    live.step(1, 211, 211, 12.345678, 0.1234, 123456.0)
    live.progress.refresh()
    live.progress.stop()
    lines = screen_lines(screen.getvalue())
    assert fits(lines), lines
    shown = "\n".join(lines)
    for text in ("loading the data and building the model", "9,500/10,000 images",
                 "computing the frozen first stage", "53,248/54,000 images", "211/211",
                 "loss 12.35 acc 12.34%  123456 img/s"):
        assert text in shown, (text, lines)


def test_the_sweep_bar_keeps_its_line_whole_and_puts_the_best_below():
    from mnistlab.sweep import Trial

    out, screen = terminal()
    best = display.Best("val_accuracy")
    live = display.sweep_progress(out, best)
    counts = {"total": 20, "done_before": 0, "elsewhere": 0, "failed_before": 0, "to_run": 20}
    live.start("sweep-lr-fashion-mnist", 20, counts, "local", 2, 1)
    trial = Trial.__new__(Trial)
    trial.name, trial.overrides = "lr-0.003_name-adamw_seed-1", ["optim.lr=0.003", "optim.name=adamw",
                                                                "train.seed=1"]
    live.update(2, 16)
    live.finished(trial, "completed", {"final": {"val": {"accuracy": 0.9123}}, "wall_seconds": 12.0,
                                       "best": {"val_accuracy": 0.9123}}, None)
    live.bar.refresh()
    live.stop()
    lines = screen_lines(screen.getvalue())
    assert fits(lines), lines  # before: 'sweep sweep-lr-fa… ... 0:00:… ETA -:…'
    assert any(line.startswith("sweep sweep-lr-fashion-mnist ") and "1/20 trials" in line
               and "ETA" in line for line in lines), lines
    assert any("running 2  queued 16  failed 0  best optim.lr=0.003" in line for line in lines)


def test_a_report_table_wraps_its_headers_between_words():
    """A pruned TPE sweep's report at 80 columns: Rich narrows its widest columns together and cut
    `model.hidden` into `model.hidd`/`en`; the columns give way between words instead."""
    from mnistlab.report import rich_table

    columns = [("optim.lr", "optim.lr"), ("model.hidden", "model.hidden"), ("optim.name", "optim.name"),
               ("val_accuracy", "val_accuracy (%)"), ("runs", "runs"),
               ("test_accuracy", "test acc (%)"), ("train_seconds", "train s")]
    texts = [["0.00877", "[64]", "adamw", "87.90", "1/1", "86.76", "0.81"],
             ["0.000127", "[64]", "adamw", "pruned at epoch 1 (79.15)", "0/1", "", ""]]
    console, screen = terminal()
    console.print(rich_table("sweep tpe6: val_accuracy, one run each", columns, texts))
    lines = screen_lines(screen.getvalue())
    assert fits(lines), lines
    words = {w for line in lines for w in line.split()}
    for word in ("model.hidden", "optim.name", "val_accuracy", "0.000127", "pruned", "(79.15)"):
        assert word in words, lines
    # narrower than its words allow, the table still fits and folds (nothing is lost)
    narrow = Console(file=io.StringIO(), force_terminal=True, width=40, highlight=False)
    narrow.print(rich_table("t", columns, texts))
    assert all(cell_len(line) <= 40 for line in screen_lines(narrow.file.getvalue()))
