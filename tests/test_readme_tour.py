"""The README's tour as a user takes it: every `mnistlab` command of its code blocks, read from
README.md itself, run in an 80-column pseudo-terminal on tiny synthetic data. Each must exit 0
without a traceback, and nothing it shows may be wider than the terminal or cut short by Rich."""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
from glob import glob
from pathlib import Path

from PIL import Image, ImageDraw
from rich.cells import cell_len

from conftest import in_terminal, screen_lines, write_dataset

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 80


def readme_commands() -> list[list[str]]:
    """Every mnistlab command of README.md's bash blocks, in order and once each: continued lines
    joined, comments dropped, the command after `&&` of an install line."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while "&&" in words:
                words = words[words.index("&&") + 1:]
            if words[:1] == ["mnistlab"] and words[1:] not in commands:
                commands.append(words[1:])
    return commands


def problems(command: list[str], shown) -> list[str]:
    """What is wrong with what a command showed: its exit code, a traceback, a line wider than the
    terminal (in cells: a wide character takes two), a word Rich cut short with an ellipsis. A
    Markdown, CSV or JSON table is data to copy, whose rows are as long as their values."""
    where = f"mnistlab {shlex.join(command)}"
    out = []
    if shown.code != 0:
        out.append(f"{where}: exit {shown.code}\n{shown.out}")
    if "Traceback" in shown.out:
        out.append(f"{where}: a traceback\n{shown.out}")
    data = "--json" in command or any(a == "--format" and b != "table"
                                      for a, b in itertools.pairwise(command))
    out += [f"{where}: {cell_len(line)} cells: {line!r}" for line in screen_lines(shown.raw)
            if cell_len(line) > WIDTH and not data]
    out += [f"{where}: cut short: {line!r}" for line in screen_lines(shown.raw) if "…" in line]
    return out


def test_the_readme_tour_in_an_80_column_terminal(tmp_path):
    commands = readme_commands()
    # the README's code blocks as this test knows them: a command added there is run here too
    assert ["train", "configs/cnn.yaml", "--print-config"] in commands
    assert ["sweep", "configs/sweep-lr.yaml", "--dry-run"] in commands
    assert len(commands) >= 25, commands

    shutil.copytree(ROOT / "configs", tmp_path / "configs")  # sweep files name their base beside them
    data = write_dataset(tmp_path / "data", n_train=160, n_test=40)
    for name, size in (("shoe.jpg", (40, 30)), ("my-digit.png", (28, 28))):  # the README's images
        image = Image.new("L", size, 10)
        ImageDraw.Draw(image).rectangle((6, 6, size[0] - 8, size[1] - 6), fill=230)
        image.save(tmp_path / name)
    # the tiny data instead of Fashion-MNIST; one short epoch; the runs of its training commands
    tiny = ["data.name=idx", f"data.root={data}", "train.epochs=1"]
    one_thread = ["train.threads=1"]  # a sweep's trials share the cores themselves

    def run_dir(suffix: str, status: str = "completed") -> str:
        """A run of the tour (relative, as the README writes it) whose name ends in suffix."""
        for path in sorted((tmp_path / "runs").glob(f"*-{suffix}")):
            summary = (path / "summary.json").read_text()
            if f'"status": "{status}"' in summary:
                return f"runs/{path.name}"
        raise AssertionError(f"no {status} run *-{suffix} yet")

    found: list[str] = []

    def run(command: list[str]) -> None:
        shown = in_terminal(command, tmp_path, timeout=120)
        found.extend(problems(command, shown))

    # a paused run for `train --resume runs/...-cnn` (the README's example run directory)
    run(["train", "configs/cnn.yaml", *tiny, *one_thread, "train.epochs=2", "--until-epoch", "1"])
    paused = run_dir("cnn", "paused")
    ran: list[list[str]] = []
    for command in commands:
        if any(word.startswith("platform=") for word in command):
            continue  # Keras, TensorFlow and JAX: their imports would double the tour's time, and
            # tests/test_platforms.py trains each of them (the display is the same code)
        command = [{"runs/20261129-101500-cnn": paused, "runs/SWEEP": "runs"}.get(word, word)
                   for word in command]  # SWEEP: the README's placeholder for a sweep's folder
        if "runs/A" in command or "runs/B" in command:
            command = [{"runs/A": run_dir("cnn"), "runs/B": run_dir("dense")}.get(word, word)
                       for word in command]
        command = [match for word in command
                   for match in (sorted(glob(word, root_dir=tmp_path)) if "*" in word else [word])]
        if command[0] == "train" and "--resume" not in command:
            command = [w for w in command if w != "data.name=fashion-mnist"] + tiny + one_thread
        elif command[0] == "sweep":
            command = [w for w in command if w != "data.name=fashion-mnist"] + tiny
            if command[1].startswith("configs/sweep-") and not {"--report", "--dry-run"} & set(command):
                command.append("--dry-run")  # its 18 or 20 trials: the grid sweep below runs for real
            elif "--grid" in command and "--jobs" not in command:
                command += ["--jobs", "2"]  # its 4 trials two at a time
        if command in ran:  # the same once the data is overridden (data.name=fashion-mnist)
            continue
        ran.append(command)
        run(command)
    assert {"train", "runs", "compare", "plot", "eval", "predict", "sweep"} <= {c[0] for c in ran}
    assert ["train", "--resume", paused] in ran and ["train", "configs/cnn.yaml", "--print-config",
                                                     *tiny, *one_thread] in ran
    assert any("--grid" in c and "--dry-run" not in c for c in ran)  # a sweep that trains
    for command in (["--version"], ["--help"],
                    *([name, "--help"] for name in ("train", "eval", "runs", "compare", "plot",
                                                    "predict", "sweep"))):
        run(command)
    assert not found, "\n\n".join(found)
