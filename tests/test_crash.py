"""The guard at the edge: an exception that is not a MnistlabError is a bug, told in one paragraph
with the command, the file, where the traceback was saved, and exit code 70."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from mnistlab.cli import app
from mnistlab.errors import BUG_EXIT_CODE

runner = CliRunner()


def crashes(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "xdg-cache" / "mnistlab" / "crashes").glob("crash-*.txt"))


def broken(*args, **kwargs):
    return {}["status"]


def test_an_unexpected_exception_is_one_paragraph_with_the_traceback_saved(tmp_path, monkeypatch):
    import mnistlab.report.read

    run = tmp_path / "runs" / "damaged"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": "completed"}))
    monkeypatch.setattr(mnistlab.report.read, "task_label", broken)  # read_run(path) calls it
    result = runner.invoke(app, ["runs", str(tmp_path / "runs")])
    assert result.exit_code == BUG_EXIT_CODE == 70
    out = result.output
    assert out.count("error:") == 1 and "\n\n" not in out.strip() and "Traceback" not in out
    (saved,) = crashes(tmp_path)
    for phrase in (f"mnistlab runs {tmp_path / 'runs'}", "KeyError", "bug in mnistlab",
                   "open an issue", str(saved), f"file involved: {run}", "--debug"):
        assert phrase in out, out
    text = saved.read_text()
    assert "Traceback" in text and "in broken" in text and "mnistlab runs" in text


def test_the_traceback_of_a_command_on_a_run_goes_into_the_run_directory(tmp_path, monkeypatch):
    import mnistlab.evaluation

    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"status": "completed"}))
    monkeypatch.setattr(mnistlab.evaluation, "evaluate_run", broken)
    result = runner.invoke(app, ["eval", str(run)])
    assert result.exit_code == 70
    (saved,) = run.glob("crash-*.txt")
    assert str(saved) in result.output and not crashes(tmp_path)


def test_debug_shows_the_traceback_instead(tmp_path, monkeypatch):
    import mnistlab.report

    monkeypatch.setattr(mnistlab.report, "find_runs", broken)
    for args, env in ((["--debug", "runs", str(tmp_path)], {}),
                      (["runs", str(tmp_path)], {"MNISTLAB_DEBUG": "1"})):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 70
        assert "Traceback" in result.output and "in broken" in result.output
    assert not crashes(tmp_path)


def test_usage_errors_and_user_errors_are_not_bugs(tmp_path):
    assert runner.invoke(app, ["runs", "--format"]).exit_code == 2  # Click's own usage error
    result = runner.invoke(app, ["runs", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "bug" not in result.output
    assert not crashes(tmp_path)


def test_the_guard_in_a_real_process(tmp_path):
    script = ("import sys, mnistlab.report as r\n"
              "def broken(*a, **k): raise ZeroDivisionError('division by zero')\n"
              "r.find_runs = broken\n"
              "from mnistlab.cli import main\n"
              f"sys.argv = ['mnistlab', 'runs', {str(tmp_path)!r}]\n"
              "main()\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg-cache")}
    env.pop("MNISTLAB_DEBUG", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 70, done.stderr
    assert "Traceback" not in done.stderr and "ZeroDivisionError" in done.stderr
    (saved,) = crashes(tmp_path)
    assert str(saved) in " ".join(done.stderr.split()) and "Traceback" in saved.read_text()


def test_a_reader_that_goes_away_is_not_a_bug(tmp_path, monkeypatch):
    """mnistlab runs | head: the pipe closes while the command still writes (EPIPE); no bug
    report and no crash file, the exit status of a broken pipe (141, as a shell shows it)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))

    def closed(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(importlib.import_module("mnistlab.report"), "find_runs", closed)
    done = runner.invoke(app, ["runs", str(tmp_path)])
    assert done.exit_code == 141 and "bug" not in done.output, done.output
    assert crashes(tmp_path) == []
