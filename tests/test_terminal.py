"""The live display in a real (pseudo-)terminal at 80 columns: Ctrl-C, and what is shown."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def in_terminal(args: list[str], cwd: Path, interrupt_when: str | None = None,
                timeout: float = 240) -> tuple[int, str]:
    """Run mnistlab in a pseudo-terminal of 80 columns; send Ctrl-C (SIGINT to its process group,
    as the terminal does) once the output shows interrupt_when. Returns the exit code and the
    output without escape codes."""
    master, slave = os.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**os.environ, "COLUMNS": "80", "LINES": "24", "TERM": "xterm-256color",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "mnistlab", *args], stdin=slave, stdout=slave,
                            stderr=slave, cwd=cwd, env=env, start_new_session=True)
    os.close(slave)
    out, sent, end = b"", None, time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed: the process ended
                break
            if not chunk:
                break
            out += chunk
        if interrupt_when and sent is None and interrupt_when in ANSI.sub("", out.decode(errors="replace")):
            os.killpg(proc.pid, signal.SIGINT)
            sent = time.monotonic()
        if proc.poll() is not None and not ready:
            break
    try:
        code = proc.wait(timeout=max(end - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"still running after {timeout}s:\n{out.decode(errors='replace')}")
    os.close(master)
    return code, ANSI.sub("", out.decode(errors="replace"))


def test_a_sweep_interrupted_with_ctrl_c_in_a_terminal_exits_130_without_a_traceback(tmp_path, tiny_config):
    code, out = in_terminal(["sweep", str(tiny_config), "--grid", "optim.lr=0.05,0.02,0.01,0.005,0.002,0.001",
                             "--jobs", "2", "train.epochs=3"], tmp_path, interrupt_when="completed ")
    assert "Traceback" not in out, out
    assert code == 130, out
    # two jobs: two trials run, the others wait as queued until a slot frees up
    running = {int(n) for n in re.findall(r"running (\d+)  queued", out)}
    assert running <= {0, 1, 2} and 2 in running, out
    assert "running 2  queued 4" in out
    message = " ".join(out[out.index("error: sweep interrupted"):].split())
    started = re.search(r"stopped the (\d) trials? of this sweep that had started", message)
    waiting = re.search(r"(\d) queued trials? had not started", message)
    assert started and waiting, message
    # at least one trial completed before the signal (on a loaded machine another may complete
    # as it lands): the rest are the started ones (at most the two jobs) and the queued ones
    assert 1 <= int(started.group(1)) <= 2 and int(waiting.group(1)) >= 1
    assert int(started.group(1)) + int(waiting.group(1)) <= 5
