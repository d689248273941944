"""mnistlab export: runs into TensorBoard's event files and an MLflow database, read back with
each tool's own classes; exporting again adds nothing; every bad input is one paragraph."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_hostile import mount_tmpfs, one_paragraph, read_only, snapshot
from typer.testing import CliRunner

import mnistlab.export
from mnistlab.cli import app
from mnistlab.rundir import read_metrics

runner = CliRunner()
SWEEP = "tiny-lr"  # the sweep of swept_runs: its config's stem and its swept key


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def runs(swept_runs) -> Path:
    return swept_runs


@pytest.fixture
def runs_copy(runs, tmp_path) -> Path:
    """A copy of the runs, for a test that changes them."""
    return Path(shutil.copytree(runs, tmp_path / "runs"))


def trials(runs: Path) -> dict[float, Path]:
    """The sweep's run directories by their learning rate."""
    return {yaml.safe_load((d / "config.yaml").read_text())["optim"]["lr"]: d
            for d in (runs / SWEEP).iterdir() if (d / "summary.json").is_file()}


def diverged(runs: Path) -> Path:
    (run,) = [d for d in runs.iterdir() if (d / "summary.json").is_file()]
    return run


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def epochs(run: Path, split: str) -> dict[int, dict]:
    return {r["epoch"]: r for r in read_metrics(run / "metrics.jsonl")
            if r.get("event") == "epoch" and r.get("split") == split}


# ---------------------------------------------------------------- TensorBoard


def read_events(folder: Path) -> list:
    """The events of the folder's one event file, checked record by record as TensorBoard's
    reader checks them (length and data each behind a masked CRC-32C)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    (path,) = folder.glob("events.out.tfevents.*")
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        header, (length_crc,) = data[i:i + 8], struct.unpack("<I", data[i + 8:i + 12])
        (length,) = struct.unpack("<Q", header)
        body = data[i + 12:i + 12 + length]
        (body_crc,) = struct.unpack("<I", data[i + 12 + length:i + 16 + length])
        assert masked_crc32c(header) == length_crc and masked_crc32c(body) == body_crc
        out.append(Event.FromString(body))
        i += 16 + length
    assert out[0].file_version == "brain.Event:2"
    return out


def scalars(events: list) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for e in events:
        for v in e.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, {})[e.step] = v.simple_value
    return out


def hparams_of(events: list) -> tuple[dict, str]:
    """The settings of the session start info, and the status of the session end info."""
    from google.protobuf.json_format import MessageToDict
    from tensorboard.plugins.hparams import api_pb2, metadata

    settings, status = {}, None
    for e in events:
        for v in e.summary.value:
            if v.tag == metadata.SESSION_START_INFO_TAG:
                content = v.metadata.plugin_data.content
                info = metadata.parse_session_start_info_plugin_data(content)
                settings = {k: MessageToDict(value) for k, value in info.hparams.items()}
            elif v.tag == metadata.SESSION_END_INFO_TAG:
                info = metadata.parse_session_end_info_plugin_data(v.metadata.plugin_data.content)
                status = api_pb2.Status.Name(info.status)
    return settings, status


def test_tensorboard_holds_the_settings_each_run_reads_its_metrics_and_its_curves(runs, tmp_path):
    to = tmp_path / "tb"
    result = cli("export", "tensorboard", runs, "--to", to)
    assert result.exit_code == 0, result.output
    assert "exported 3 runs" in result.stdout and f"tensorboard --logdir {to}" in result.stdout
    for lr, run in trials(runs).items():
        folder = to / SWEEP / run.name
        settings, status = hparams_of(read_events(folder))
        assert settings["optim.lr"] == lr and settings["model.kind"] == "conv"
        assert settings["model.channels"] == "[4, 8]" and settings["model.batch_norm"] is True
        # what a conv classifier never reads, and what cannot change what is learned, is left out
        assert not [k for k in settings if k.split(".")[0] in ("quadratic", "linreg", "log",
                                                               "name", "runs_dir")]
        assert "model.hidden" not in settings and "data.root" not in settings
        assert status == "STATUS_SUCCESS"
        final = scalars(read_events(folder))
        done = summary(run)
        assert final["test_accuracy"] == {2: pytest.approx(done["final"]["test"]["accuracy"])}
        for split in ("train", "val"):  # curves per epoch beside, as Keras lays them out
            curves = scalars(read_events(folder / split))
            want = epochs(run, split)
            assert curves["accuracy"] == {e: pytest.approx(r["accuracy"]) for e, r in want.items()}
            assert curves["loss"] == {e: pytest.approx(r["loss"]) for e, r in want.items()}
    quadratic = diverged(runs)
    settings, status = hparams_of(read_events(to / quadratic.name))
    assert settings["quadratic.x0"] == "[3.0, -2.0]" and settings["optim.lr"] == 1.5
    assert not [k for k in settings if k.startswith(("model.", "data."))]
    assert status == "STATUS_FAILURE"


def test_exporting_again_adds_nothing_and_rewrites_only_a_run_that_changed(runs_copy, tmp_path):
    to = tmp_path / "tb"
    one = next(iter(trials(runs_copy).values()))
    first = cli("export", "tensorboard", one, "--to", to)  # a run alone goes where its sweep puts it
    assert first.exit_code == 0 and "(1 new)" in first.stdout, first.output
    whole = cli("export", "tensorboard", runs_copy, "--to", to)
    assert "(2 new, 1 unchanged)" in whole.stdout, whole.output
    before = snapshot(to)
    again = cli("export", "tensorboard", runs_copy / SWEEP, runs_copy, "--to", to)
    assert "exported 3 runs" in again.stdout and "(3 unchanged)" in again.stdout, again.output
    assert snapshot(to) == before
    (one / "summary.json").write_text(json.dumps({**summary(one), "wall_seconds": 99.0}))
    changed = cli("export", "tensorboard", runs_copy, "--to", to)
    assert "(1 updated, 2 unchanged)" in changed.stdout, changed.output
    after = snapshot(to)
    mine = f"{SWEEP}/{one.name}/"
    assert {k: v for k, v in after.items() if not k.startswith(mine)} == \
        {k: v for k, v in before.items() if not k.startswith(mine)}
    assert scalars(read_events(to / SWEEP / one.name))["wall_seconds"] == {2: 99.0}
    assert len(list((to / SWEEP / one.name).rglob("events.out.tfevents.*"))) == 3  # ., train, val


# ---------------------------------------------------------------- MLflow


def mlflow_client(db: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{db}")


def test_mlflow_has_one_run_per_run_with_its_settings_metrics_by_epoch_and_tags(runs, tmp_path):
    db = tmp_path / "mlflow.db"
    result = cli("export", "mlflow", runs, "--to", db)
    assert result.exit_code == 0, result.output
    assert f"mlflow ui --backend-store-uri sqlite:///{db}" in result.stdout
    client = mlflow_client(db)
    sweep = client.get_experiment_by_name(SWEEP)
    exported = {r.info.run_name: r for r in client.search_runs([sweep.experiment_id])}
    assert set(exported) == {run.name for run in trials(runs).values()}
    for lr, run in trials(runs).items():
        got, done = exported[run.name], summary(run)
        assert got.data.params["optim.lr"] == str(lr) and got.data.params["model.kind"] == "conv"
        assert "model.hidden" not in got.data.params and "data.root" not in got.data.params
        assert got.info.status == "FINISHED"
        assert {k: got.data.tags[k] for k in ("status", "platform", "sweep")} == \
            {"status": "completed", "platform": "torch", "sweep": SWEEP}
        assert got.data.metrics["test_accuracy"] == pytest.approx(done["final"]["test"]["accuracy"])
        history = client.get_metric_history(got.info.run_id, "val_accuracy")
        assert {m.step: m.value for m in history} == \
            {e: pytest.approx(r["accuracy"]) for e, r in epochs(run, "val").items()}
    outside = client.get_experiment_by_name("Default")  # a run made outside a sweep
    (failed,) = client.search_runs([outside.experiment_id])
    assert failed.info.run_name == diverged(runs).name and failed.info.status == "FAILED"
    assert failed.data.tags["status"] == "failed" and failed.data.params["optim.lr"] == "1.5"
    assert not [k for k in failed.data.params if k.startswith("model.")]


def test_mlflow_export_again_adds_nothing_and_replaces_a_run_that_changed(runs_copy, tmp_path):
    from mlflow.entities import ViewType

    db = tmp_path / "mlflow.db"
    assert "(3 new)" in cli("export", "mlflow", runs_copy, "--to", db).stdout
    again = cli("export", "mlflow", runs_copy, "--to", db)
    assert "(3 unchanged)" in again.stdout, again.output
    client = mlflow_client(db)
    sweep = client.get_experiment_by_name(SWEEP).experiment_id
    assert len(client.search_runs([sweep], run_view_type=ViewType.ALL)) == 2
    one = trials(runs_copy)[0.01]
    (one / "summary.json").write_text(json.dumps({**summary(one), "wall_seconds": 99.0}))
    changed = cli("export", "mlflow", runs_copy, "--to", db)
    assert "(1 updated, 2 unchanged)" in changed.stdout, changed.output
    active = {r.info.run_name: r for r in client.search_runs([sweep])}
    assert len(active) == 2 and active[one.name].data.metrics["wall_seconds"] == 99.0
    assert len(client.search_runs([sweep], run_view_type=ViewType.DELETED_ONLY)) == 1


# ---------------------------------------------------------------- what goes wrong


@pytest.mark.parametrize("tool", ["tensorboard", "mlflow"])
def test_a_missing_extra_names_the_extra_to_install(runs, tmp_path, monkeypatch, tool):
    monkeypatch.delitem(sys.modules, f"mnistlab.export.{tool}", raising=False)
    monkeypatch.delattr(mnistlab.export, tool, raising=False)
    for name in [m for m in sys.modules if m.split(".")[0] == tool] or [tool]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    to = tmp_path / "out.db"
    one_paragraph(cli("export", tool, runs, "--to", to), 2,
                  f"needs the Python package {tool}", f'pip install "mnistlab[{tool}]"')
    assert not to.exists()


def test_a_damaged_run_is_skipped_with_a_note_and_the_others_exported(runs_copy, tmp_path):
    broken = trials(runs_copy)[0.01]
    (broken / "summary.json").write_text('{"status": "compl')
    result = cli("export", "tensorboard", runs_copy, "--to", tmp_path / "tb")
    assert result.exit_code == 0, result.output
    assert f"skipped {broken}: summary.json is truncated" in result.stderr
    assert "exported 2 runs" in result.stdout and not (tmp_path / "tb" / SWEEP / broken.name).exists()


@pytest.fixture
def paths(runs, tmp_path) -> dict[str, Path]:
    (tmp_path / "notes.txt").write_text("not a folder")
    (tmp_path / "notes.db").write_text("not a database")
    (tmp_path / "damaged.db").write_bytes(b"SQLite format 3\0" + b"not the rest of one" * 10)
    return {"runs": runs, "sweep": runs / SWEEP, "nowhere": tmp_path / "nowhere",
            "data": runs.parent / "tiny", "file": tmp_path / "notes.txt",
            "text.db": tmp_path / "notes.db", "damaged.db": tmp_path / "damaged.db",
            "under a file": tmp_path / "notes.txt" / "tb", "folder": tmp_path / "mlruns",
            "in the sweep": runs / SWEEP / "tb", "in a run": trials(runs)[0.01] / "mlflow.db"}


@pytest.mark.parametrize("args, code, phrases", [
    (["tensorboard", "nowhere"], 2, ["nowhere: no such run directory"]),
    (["mlflow", "data"], 2, ["tiny: is not a run directory"]),
    (["wandb", "runs"], 2, ["export wandb: not a format", "tensorboard or mlflow"]),
    (["mlfow", "runs"], 2, ["did you mean mlflow?"]),
    (["tensorboard", "runs", "--to", "file"], 2, ["notes.txt: is a file, not a folder"]),
    (["tensorboard", "runs", "--to", "under a file"], 1, ["could not be written: Not a directory"]),
    (["mlflow", "runs", "--to", "folder"], 2, ["mlruns: give a database file such as mlflow.db"]),
    (["mlflow", "runs", "--to", "text.db"], 2, ["notes.db: is a file but not an SQLite database"]),
    (["mlflow", "runs", "--to", "damaged.db"], 2, ["MLflow could not read or write it"]),
    (["tensorboard", "sweep", "--to", "in the sweep"], 2, ["is inside the folder of the runs"]),
    (["mlflow", "runs", "--to", "in a run"], 2, ["is inside the folder of the runs"]),
])
def test_bad_input_is_one_paragraph_and_writes_nothing(paths, args, code, phrases):
    before = snapshot(paths["runs"])
    one_paragraph(cli("export", *[str(paths.get(a, a)) for a in args]), code, *phrases)
    assert snapshot(paths["runs"]) == before
    assert not paths["folder"].exists() and not (paths["sweep"] / "tb").exists()


@pytest.mark.parametrize("tool, to", [("tensorboard", "tb"), ("mlflow", "mlflow.db")])
def test_a_read_only_target_is_a_disk_error_that_says_how_to_export_elsewhere(runs, tmp_path, tool,
                                                                              to):
    disk = tmp_path / "disk"
    mount_tmpfs(disk)
    try:
        read_only(disk)
        one_paragraph(cli("export", tool, runs, "--to", disk / to), 1, "read-only",
                      "--to for an export")
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
