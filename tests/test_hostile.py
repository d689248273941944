"""Faults, damaged files and hostile input: each ends in one paragraph, an exit code, and no lost data."""

from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config_dict, write_dataset, write_idx
from typer.testing import CliRunner

from mnistlab import checkpoint, files
from mnistlab.cli import app
from mnistlab.config import ConfigError, DataConfig, config_from_dict, load_config
from mnistlab.data import DataError, load_data, read_split
from mnistlab.errors import DiskError, RunError
from mnistlab.rundir import read_metrics
from mnistlab.training import RunInterrupted, fit

runner = CliRunner()
LINREG = Path(__file__).resolve().parents[1] / "configs" / "linreg.yaml"


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_paragraph(result, code: int, *phrases: str) -> str:
    """The result ended with code, printed one error paragraph holding the phrases, no traceback."""
    out = result.output
    assert result.exit_code == code, out
    assert "Traceback" not in out
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert out.count("error:") == 1 and "\n\n" not in out.strip(), out
    for phrase in phrases:
        assert phrase in out, out
    return out


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under a directory and its bytes, to prove nothing changed."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


class StopAfterFirstEpoch:
    """A reporter that presses Ctrl-C once the first epoch is saved."""

    def start(self, info): pass
    def step(self, *args): pass
    def finish(self, summary): pass

    def epoch(self, train, val):
        raise KeyboardInterrupt


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile")
    write_dataset(path / "tiny")
    return path


@pytest.fixture(scope="module")
def done_run(base) -> Path:
    """A completed tiny conv run, trained once for the module; tests copy it before changing it."""
    return Path(fit(config_from_dict(tiny_config_dict(base / "tiny", base / "runs")))["run_dir"])


@pytest.fixture
def run_copy(done_run, tmp_path) -> Path:
    copy = tmp_path / "runs" / done_run.name
    shutil.copytree(done_run, copy)
    return copy


@pytest.fixture
def interrupted_run(base, tmp_path) -> Path:
    """A run stopped after its first of two epochs, ready for --resume."""
    cfg = config_from_dict(tiny_config_dict(base / "tiny", tmp_path / "runs"))
    with pytest.raises(RunInterrupted) as info:
        fit(cfg, StopAfterFirstEpoch())
    return info.value.run_dir


def mount_tmpfs(directory: Path, size: str = "3m") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("a full or read-only disk needs a tmpfs, and mounting one is not allowed here "
                    f"({done.stderr.strip() or 'not root'})")


@pytest.fixture
def disk(tmp_path):
    """A 3 MB tmpfs (root only; skipped elsewhere), unmounted after the test."""
    path = tmp_path / "disk"
    mount_tmpfs(path)
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


# ---------------------------------------------------------------- the disk


def test_a_full_disk_mid_run_ends_failed_with_the_file_and_the_reason(base, disk):
    # a dense net whose checkpoint (weights and Adam's two moments) is 1.8 MB: the second does not fit
    cfg = tiny_config_dict(base / "tiny", disk / "runs", model={"kind": "dense", "hidden": [1024]})
    path = disk / "big.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = one_paragraph(cli("train", path), 1, "could not be written: the disk is full")
    (run,) = (disk / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "the disk is full" in summary["error"]
    assert "best.pt" in out and "best.pt" in summary["error"]
    assert checkpoint.load_checkpoint(run / "checkpoints" / "last.pt")["state"]["epoch"] == 1  # what was saved stays good
    assert not list(run.rglob("*.tmp"))


def test_when_even_the_summary_cannot_be_written_the_message_says_so(base, tmp_path, monkeypatch):
    real = files.atomic_write_bytes
    calls = {"summary.json": 0}

    def failing(path, data):
        path = Path(path)
        if path.name == "summary.json":
            calls["summary.json"] += 1
        if path.name == "last.pt" or (path.name == "summary.json" and calls["summary.json"] > 1):
            raise files.disk_error(path, OSError(errno.ENOSPC, "No space left on device"))
        real(path, data)

    monkeypatch.setattr(files, "atomic_write_bytes", failing)
    cfg = config_from_dict(tiny_config_dict(base / "tiny", tmp_path / "runs"))
    with pytest.raises(DiskError) as info:
        fit(cfg)
    assert "last.pt: could not be written: the disk is full" in info.value.message()
    assert "could not be marked failed either" in info.value.message()


def test_a_read_only_runs_directory_refuses_training_and_leaves_it_untouched(base, tmp_path, disk):
    (disk / "runs").mkdir()
    read_only(disk)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(base / "tiny", disk / "runs")))
    one_paragraph(cli("train", path), 1, "read-only", "runs_dir=DIR")
    assert list((disk / "runs").iterdir()) == []


def test_eval_and_plot_on_a_read_only_run(done_run, disk, tmp_path):
    run = disk / done_run.name
    shutil.copytree(done_run, run)
    before = snapshot(run)
    read_only(disk)
    result = cli("eval", run, "--json")
    assert result.exit_code == 0, result.output
    assert "not saved" in result.stderr and "read-only" in result.stderr
    scored = json.loads(result.stdout)
    assert scored["saved"] is None and 0 <= scored["accuracy"] <= 1
    one_paragraph(cli("plot", run, "-o", disk / "curves.png"), 1, "curves.png", "read-only")
    assert cli("plot", run, "-o", tmp_path / "curves.png").exit_code == 0
    assert snapshot(run) == before


def test_a_sweep_into_a_read_only_directory_is_a_disk_error(tiny_config, disk):
    read_only(disk)
    one_paragraph(cli("sweep", tiny_config, "--grid", "optim.lr=0.1,0.01", f"runs_dir={disk}"),
                  1, str(disk), "read-only")


def test_resume_removes_the_temporary_files_of_killed_writes(interrupted_run):
    stale = [interrupted_run / ".summary.json.abc123.tmp",
             interrupted_run / "checkpoints" / ".last.pt.def456.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    assert cli("train", "--resume", interrupted_run).exit_code == 0
    assert not any(p.exists() for p in stale)
    assert json.loads((interrupted_run / "summary.json").read_text())["status"] == "completed"


# ---------------------------------------------------------------- damaged and crafted files


def flip_tensor_bytes(path: Path, count: int = 50) -> None:
    """Flip bytes inside the largest tensor record of a torch zip file (not its zip structure)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    for i in range(count):
        raw[start + (i * 97) % info.file_size] ^= 0xFF
    path.write_bytes(bytes(raw))


def as_interrupted(run: Path) -> None:
    """Mark a completed run interrupted, so that --resume reads its checkpoint (a completed run's it leaves alone)."""
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))


def test_a_checkpoint_with_flipped_bytes_is_refused_and_the_run_is_not_touched(run_copy):
    flip_tensor_bytes(run_copy / "checkpoints" / "last.pt")
    as_interrupted(run_copy)
    before = snapshot(run_copy)
    one_paragraph(cli("eval", run_copy, "--json"), 2, "last.pt", "no longer matches the digest")
    one_paragraph(cli("train", "--resume", run_copy), 2, "last.pt", "no longer matches the digest")
    assert snapshot(run_copy) == before
    assert cli("eval", run_copy, "--ckpt", "best", "--json").exit_code == 0  # the other one is good


def crafted(ckpt: dict, kind: str) -> dict:
    ckpt = {k: v for k, v in ckpt.items() if k != "digest"}
    if kind == "rng-list":
        ckpt["state"] = {**ckpt["state"], "rng": {**ckpt["state"]["rng"],
                                                  "cpu": ckpt["state"]["rng"]["cpu"].tolist()}}
    elif kind == "data-no-classes":
        ckpt["data"] = {k: v for k, v in ckpt["data"].items() if k != "class_names"}
    else:
        ckpt.pop(kind.removeprefix("no-"))
    return ckpt


@pytest.mark.parametrize("kind", ["no-config", "no-state", "no-data", "rng-list", "data-no-classes"])
def test_crafted_checkpoints_are_refused_in_resume_eval_and_predict(run_copy, tmp_path, kind):
    last = run_copy / "checkpoints" / "last.pt"
    good = torch.load(last, weights_only=True)
    checkpoint.write(last, crafted(good, kind))  # a valid digest: the schema check must catch it
    as_interrupted(run_copy)
    before = snapshot(run_copy)
    image = tmp_path / "x.png"
    from PIL import Image
    Image.new("L", (20, 20), 255).save(image)
    for args in (["train", "--resume", run_copy], ["eval", run_copy], ["predict", run_copy, image]):
        one_paragraph(cli(*args), 2, "last.pt", "not a complete one")
    assert snapshot(run_copy) == before


class _System:
    """Unpickling this would run a shell command (os.system's module is on torch's block list)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch", "raw-pickle"])
def test_a_checkpoint_that_would_run_code_says_so(tmp_path, how):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    payload = {"format": "mnistlab-checkpoint", "model": _System(marker)}
    if how == "torch":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=4))
    one_paragraph(cli("eval", evil), 2, "would run code")
    assert not marker.exists()


@pytest.mark.parametrize("damage, expected", [
    (b'{"status": "interr', "not valid JSON"), (bytes(range(256)), "is binary"),
    (b"[1, 2]", "holds a JSON list, not an object"),
])
def test_a_damaged_summary_makes_resume_say_what_is_wrong(interrupted_run, damage, expected):
    (interrupted_run / "summary.json").write_bytes(damage)
    before = snapshot(interrupted_run)
    one_paragraph(cli("train", "--resume", interrupted_run), 2, "summary.json", expected)
    assert snapshot(interrupted_run) == before


def test_a_damaged_data_cache_is_rebuilt_from_the_files(tmp_path):
    directory = write_dataset(tmp_path / "d")
    cfg = DataConfig(name="idx", root=str(directory))
    first = load_data(cfg, 0.0, 0)
    (cache,) = (tmp_path / "xdg-cache" / "mnistlab" / "cache").glob("*.pt")
    flip_tensor_bytes(cache)
    again = load_data(cfg, 0.0, 0)
    assert torch.equal(again.train_x, first.train_x) and torch.equal(again.train_y, first.train_y)
    assert files.digest_ok(torch.load(cache, weights_only=True))  # and the cache was written anew


def test_a_gzip_file_that_inflates_past_its_header_is_refused_without_inflating_it(tmp_path):
    images = tmp_path / "train-images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 10, 12, 12)
    images.write_bytes(gzip.compress(header + bytes(64 << 20), compresslevel=1))  # 64 MB of zeros
    write_idx(tmp_path / "train-labels-idx1-ubyte", torch.zeros(10))
    with pytest.raises(DataError, match="longer than its header says"):
        read_split("idx", tmp_path, "train")
    huge = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 2**31, 2**31)
    images.write_bytes(gzip.compress(huge + bytes(1000)))
    with pytest.raises(DataError, match="more than half of this machine's memory"):
        read_split("idx", tmp_path, "train")


# ---------------------------------------------------------------- hostile and odd values


def test_an_override_with_a_line_break_keeps_the_runs_config_readable(tiny_config, tmp_path):
    result = cli("train", tiny_config, "name=a\nb", "--quiet")
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    text = (run / "config.yaml").read_text()
    assert "name=a\\nb" in text.splitlines()[1]  # escaped on its comment line
    again = load_config(run / "config.yaml")
    assert again.name == "a b" and again.train.epochs == 2


def test_markup_in_user_text_is_printed_as_text(base, tmp_path):
    runs_dir = tmp_path / "[bold]runs[/x]"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(base / "tiny", runs_dir, train={"epochs": 1})))
    result = cli("train", path)
    assert result.exit_code == 0, result.output
    assert "[bold]runs[/x]" in result.stdout
    csv = tmp_path / "d.csv"
    csv.write_text("x1,x2,y\n1,2,3\n2,3,5\n")
    out = one_paragraph(cli("train", LINREG, f"linreg.csv={csv}", f"runs_dir={tmp_path}",
                            "linreg.x_columns=[x1,x3]", "linreg.y_columns=[y]"), 2, "'x3'")
    assert "e.g. linreg.x_columns=[x1,x2] linreg.y_columns=[y]" in out


def test_markup_in_an_image_name_is_printed_as_text(done_run, tmp_path):
    one_paragraph(cli("predict", done_run, tmp_path / "[red]a[/red].png"), 2,
                  "[red]a[/red].png: no such file")


@pytest.mark.parametrize("override", [
    "optim.lr=nan", "optim.lr=inf", "optim.lr=-.inf", "model.dropout=.nan", "train.val_split=NaN",
    "quadratic.x0=[1.0, .inf]", "optim.lr=1e999",
])
def test_every_number_must_be_finite(tmp_path, override):
    path = tmp_path / "c.yaml"
    path.write_text("task: quadratic\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert "is not a finite number" in info.value.message()


@pytest.mark.parametrize("override, key", [
    ("train.seed=18446744073709551616", "train.seed"), ("model.hidden=[100000000]", "model.hidden"),
    ("model.channels=[8,1000000]", "model.channels"), ("train.threads=100000", "train.threads"),
    ("linreg.n=100000000", "linreg.n"), ("linreg.n=2", "linreg.n"),
    ("data.train_samples=2", "data.train_samples"),
])
def test_sizes_that_cannot_be_allocated_or_leave_no_training_sample_are_refused(tmp_path, override, key):
    path = tmp_path / "c.yaml"
    path.write_text("task: linreg\ntrain: {val_split: 0.75}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert any(p.startswith(key) for p in info.value.problems), info.value.problems


def test_an_empty_training_split_from_a_csv_is_refused_before_a_run_starts(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("x,y\n1,2\n2,4\n")
    one_paragraph(cli("train", LINREG, f"linreg.csv={csv}", "linreg.x_columns=[x]",
                      "linreg.y_columns=[y]", "train.val_split=0.9", f"runs_dir={tmp_path / 'runs'}"),
                  2, "leaves no training sample")
    assert not (tmp_path / "runs").exists()


def test_yaml_alias_bombs_are_refused_quickly(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    one_paragraph(cli("train", path), 2, "laughs.yaml", "expand to", "100,000")
    bomb = "optim.lr=[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], " + ", ".join(
        [f"&{c} [" + ",".join([f"*{p}"] * 10) + "]" for p, c in zip("bcde", "cdef")]) + "]"
    one_paragraph(cli("train", LINREG, bomb), 2, "expand to")


def test_runs_dir_in_a_system_directory_is_refused_and_outside_the_cwd_announced(tiny_config, tmp_path):
    one_paragraph(cli("train", tiny_config, "runs_dir=/etc/mnistlab"), 2, "/etc/mnistlab",
                  "system directory")
    assert not Path("/etc/mnistlab").exists()
    result = cli("train", tiny_config, "train.epochs=1", "--quiet")
    assert result.exit_code == 0 and f"runs go to {tmp_path / 'runs'}" in result.stderr


# ---------------------------------------------------------------- the command line


def test_version_completion_and_help_without_type_noise():
    from mnistlab import __version__

    assert cli("--version").stdout.strip() == f"mnistlab {__version__}"
    top = cli("--help").stdout
    assert "--install-completion" in top and "--show-completion" in top
    for command in ("train", "sweep", "eval"):
        text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "120"}).stdout
        assert "<bool>" not in text and "int range" not in text and "x>=1" not in text, text


def test_a_bare_key_suggests_its_section_and_all_problems_come_at_once(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {kind: conv}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["lr=0.01"])
    assert info.value.problems == ["lr: unknown key (from the command line), did you mean optim.lr?"]
    if torch.cuda.is_available():
        pytest.skip("the cuda problem needs a machine without a GPU")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train.epochs=abc", "optim.lr=-1", "train.device=cuda"])
    assert [p.split(":")[0] for p in sorted(info.value.problems)] == [
        "optim.lr", "train.device", "train.epochs"]


def test_relative_paths_are_stored_absolute(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "c.yaml"
    path.write_text("data: {root: data}\nlinreg: {csv: ../x.csv}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path)
    assert cfg.data.root == str(tmp_path / "conf" / "data")  # against the file
    assert cfg.linreg.csv == str(tmp_path / "x.csv")
    cfg = load_config(path, ["data.root=here"])
    assert cfg.data.root == str(tmp_path / "here")  # against the working directory


def test_a_completed_trial_with_a_damaged_summary_keeps_its_result(run_copy, base):
    """Its re-run (a sweep's) failed on the summary only after rewriting metrics.jsonl without
    the final test record; now everything is read before anything is touched."""
    cfg = config_from_dict(tiny_config_dict(base / "tiny", run_copy.parent))
    (run_copy / "summary.json").write_bytes(b'{"status": "compl')
    before = snapshot(run_copy)
    with pytest.raises(RunError, match="summary.json: is not valid JSON"):
        fit(cfg, run_dir=run_copy)
    assert snapshot(run_copy) == before
    assert any(r["event"] == "final" for r in read_metrics(run_copy / "metrics.jsonl"))


def test_resume_drops_damaged_lines_of_the_metrics_log(interrupted_run):
    """Binary bytes or a record whose step is not a number in metrics.jsonl made resume raise
    UnicodeDecodeError or TypeError; the damaged lines are dropped and the run goes on."""
    with open(interrupted_run / "metrics.jsonl", "ab") as f:
        f.write(b'\xff\xfe\x00garbage\n{"event": "step", "step": "7"}\n')
    result = cli("train", "--resume", interrupted_run, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((interrupted_run / "summary.json").read_text())["status"] == "completed"
    assert b"garbage" not in (interrupted_run / "metrics.jsonl").read_bytes()
