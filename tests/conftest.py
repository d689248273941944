"""Shared fixtures: synthetic MNIST-format data written by the tests, and tiny configs on it."""

from __future__ import annotations

import fcntl
import gzip
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, settings

# property tests (tests/test_fuzz.py): few examples in CI, many in a nightly run, chosen with
# HYPOTHESIS_PROFILE=nightly python -m pytest -q tests/test_fuzz.py
_FUZZ = dict(deadline=5000, print_blob=True,  # ms per example: a reader that hangs fails
             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                    HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("ci", max_examples=60, **_FUZZ)
settings.register_profile("nightly", max_examples=2000, **_FUZZ)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def write_idx(path: Path, tensor: torch.Tensor) -> Path:
    """Write a uint8 tensor as an IDX file (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, tensor.dim()]) + struct.pack(f">{tensor.dim()}I", *tensor.shape)
    data = header + tensor.to(torch.uint8).contiguous().numpy().tobytes()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def synthetic_split(n: int, size: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable images: each class lights its own horizontal band, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    images = torch.randint(0, 150, (n, size, size), generator=g)
    band = max(size // classes, 1)
    for c in range(classes):
        rows = slice((c * band) % size, (c * band) % size + band)
        images[labels == c, rows, :] += 70
    return images.clamp(0, 255).to(torch.uint8), labels.to(torch.uint8)


def write_dataset(directory: Path, n_train: int = 256, n_test: int = 64, size: int = 12,
                  classes: int = 4, gz: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = synthetic_split(n, size, classes, seed)
        write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return directory


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Downloads, the parsed-data cache and the user's defaults file go to a temporary directory,
    also in subprocesses."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))  # no user defaults file


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """A directory with the four IDX files of a small synthetic 4-class data set of 12x12 images."""
    return write_dataset(tmp_path / "tiny")


def tiny_config_dict(data_dir: Path, runs_dir: Path, **sections) -> dict:
    cfg = {
        "name": "tiny",
        "runs_dir": str(runs_dir),
        "model": {"kind": "conv", "channels": [4, 8], "kernel_size": 3},
        "optim": {"name": "adam", "lr": 0.01, "schedule": "none"},
        # fp32: precision auto times fp32 against bf16 on a bf16 CPU, and under load two processes
        # (a trial and the test's own reference run) may choose differently
        "train": {"epochs": 2, "batch_size": 32, "seed": 0, "threads": 1, "log_every": 2,
                  "precision": "fp32"},
        "data": {"name": "idx", "root": str(data_dir)},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


@pytest.fixture
def tiny_config(tmp_path, tiny_data) -> Path:
    """A YAML config training a small conv net for 2 epochs on tiny_data, runs under tmp_path/runs."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tiny_data, tmp_path / "runs")))
    return path


@dataclass
class Terminal:
    code: int
    out: str  # the output without escape codes
    latency: float | None  # seconds from the signal to the process's end
    raw: str = ""  # the output as the terminal got it


def in_terminal(args: list[str], cwd: Path, interrupt_when: str | None = None,
                timeout: float = 240, sig: int = signal.SIGINT, env: dict | None = None,
                boot: str | None = None) -> Terminal:
    """Run mnistlab in a pseudo-terminal of 80 columns; once the output shows interrupt_when, send
    sig: SIGINT to its process group, as the terminal's Ctrl-C does, another signal to the process
    only (as kill does). boot: Python code run as the command instead of python -m mnistlab."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**os.environ, "COLUMNS": "80", "LINES": "24", "TERM": "xterm-256color",
           "PYTHONPATH": str(ROOT), **(env or {})}
    command = ["-c", boot] if boot else ["-m", "mnistlab"]
    proc = subprocess.Popen([sys.executable, *command, *args], stdin=slave, stdout=slave,
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
            if sig == signal.SIGINT:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            sent = time.monotonic()
        if proc.poll() is not None and not ready:
            break
    try:
        code = proc.wait(timeout=max(end - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"still running after {timeout}s:\n{out.decode(errors='replace')}")
    ended = time.monotonic()
    os.close(master)
    raw = out.decode(errors="replace")
    return Terminal(code, ANSI.sub("", raw), None if sent is None else ended - sent, raw)


# what ends a line on the screen or moves the cursor to another: each piece after one starts a line
MOVES = re.compile(r"\r|\n|\x1b\[[0-9;]*[A-HJKf]")
STYLE = re.compile(r"\x1b\[[0-9;]*m|\x1b\[\?[0-9;]*[hl]|\x1b\][^\x07]*\x07")  # colours, cursor hidden


def screen_lines(raw: str) -> list[str]:
    """The lines the terminal showed, each live-display refresh one of them, without styles."""
    return [line for line in MOVES.split(STYLE.sub("", raw)) if line.strip()]


def wait_for(condition, timeout: float = 300.0):
    """condition()'s first truthy value, polled every 50 ms; AssertionError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture(scope="session")
def swept_runs(tmp_path_factory) -> Path:
    """A runs folder made once per session through the real commands: runs/tiny-lr, a sweep of two
    tiny conv nets (lr 0.01 and 0.003, 2 epochs), and a quadratic run that diverged, so failed.
    A test that changes it works on a copy."""
    from typer.testing import CliRunner

    from mnistlab.cli import app

    root = tmp_path_factory.mktemp("swept")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(write_dataset(root / "tiny"), root / "runs")))
    quadratic = Path(__file__).resolve().parents[1] / "configs" / "quadratic.yaml"
    with pytest.MonkeyPatch.context() as env:  # as private_cache does for each test
        env.setenv("XDG_CACHE_HOME", str(root / "xdg-cache"))
        env.setenv("XDG_CONFIG_HOME", str(root / "xdg-config"))
        swept = CliRunner().invoke(app, ["sweep", str(config), "--grid", "optim.lr=0.01,0.003"])
        assert swept.exit_code == 0, swept.output
        failed = CliRunner().invoke(app, ["train", str(quadratic), "optim.lr=1.5",
                                          f"runs_dir={root / 'runs'}", "--quiet"])
        assert failed.exit_code == 1, failed.output
    return root / "runs"
