"""TensorBoard: a folder per run (sweep/run) with event files that hold the run's settings as the
HParams dashboard reads them and its numbers as scalars per epoch.

Written with TensorBoard's own protocol buffers and record format, not its summary writers,
which import TensorFlow whenever it is installed."""

from __future__ import annotations

import io
import shlex
import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from ..errors import ExportError
from ..files import atomic_write_bytes, is_file, read_json, write_json, writing
from .record import CURVES, Exported

DEFAULT = Path("tensorboard")
STAMP = "mnistlab-export.json"  # beside the event file: the run and the digest it was written from
SUFFIX = ".mnistlab"  # the event files this export wrote, and replaces
STATUS = {"completed": api_pb2.STATUS_SUCCESS, "failed": api_pb2.STATUS_FAILURE}  # else unknown


def open_with(to: Path) -> str:
    return f"tensorboard --logdir {shlex.quote(str(to))}"


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data),
                                        tensor=metadata.NULL_TENSOR)])


def session_start(run: Exported) -> Summary:
    """The run's settings, as the HParams dashboard reads them: one session per run."""
    info = plugin_data_pb2.SessionStartInfo(group_name=run.path, start_time_secs=run.started or 0)
    for key, value in run.hparams.items():
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[key].number_value = value
        else:
            info.hparams[key].string_value = value
    return _summary(metadata.SESSION_START_INFO_TAG,
                    plugin_data_pb2.HParamsPluginData(session_start_info=info))


def session_end(run: Exported) -> Summary:
    """How the run ended (a running run has no end yet)."""
    info = plugin_data_pb2.SessionEndInfo(status=STATUS.get(run.status, api_pb2.STATUS_UNKNOWN),
                                          end_time_secs=run.ended or 0)
    return _summary(metadata.SESSION_END_INFO_TAG,
                    plugin_data_pb2.HParamsPluginData(session_end_info=info))


def _record(out: RecordWriter, event: Event) -> None:
    out.write(event.SerializeToString())


def event_files(run: Exported) -> dict[str, bytes]:
    """The run's event files by subfolder: its settings, end and final numbers in its own folder,
    its curves per epoch in train/ and val/ as Keras lays them out; so TensorBoard draws a run's
    training and validation curves in one chart, and the HParams table names them train.accuracy,
    val.accuracy, ..., which sort first among the metrics it shows at the start."""
    start = run.started or time.time()
    buffers = {folder: io.BytesIO() for folder in ("", *sorted({s for s, _ in CURVES}))}
    writers = {folder: RecordWriter(b) for folder, b in buffers.items()}
    for out in writers.values():
        _record(out, Event(wall_time=start, file_version="brain.Event:2"))
    _record(writers[""], Event(wall_time=start, step=0, summary=session_start(run)))
    curves = {name: key for key, name in CURVES.items()}
    used = {""}
    for name, step, value, when in run.points:
        folder, tag = curves.get(name, ("", name))
        scalar = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
        _record(writers[folder], Event(wall_time=when or start, step=step, summary=scalar))
        used.add(folder)
    if run.status != "running":
        last = max((p[1] for p in run.points), default=0)
        _record(writers[""], Event(wall_time=run.ended or start, step=last, summary=session_end(run)))
    return {folder: b.getvalue() for folder, b in buffers.items() if folder in used}


class Target:
    """A TensorBoard log directory: TO/sweep/run/ for each run."""

    def __init__(self, to: Path):
        if to.exists() and not to.is_dir():
            raise ExportError(f"--to {to}: is a file, not a folder; give a folder to export "
                              "into (it is made when missing).")
        self.to = to

    def __enter__(self) -> "Target":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def digest(self, run: Exported) -> str | None:
        """The digest of the run's files when it was exported here; '' for another run's folder."""
        folder = self.to / run.path
        try:
            stamp = read_json(folder / STAMP)
        except (OSError, ValueError):
            return None
        if not isinstance(stamp, dict) or not any(folder.glob(f"events.out.tfevents.*{SUFFIX}")):
            return None
        return stamp.get("digest") if stamp.get("run") == run.identity else ""

    def write(self, run: Exported) -> None:
        folder = self.to / run.path
        name = f"events.out.tfevents.{int(time.time()):010d}{SUFFIX}"
        for sub, data in event_files(run).items():
            with writing(folder / sub):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(folder / sub / name, data)
        for old in folder.rglob(f"events.out.tfevents.*{SUFFIX}"):
            if old.name != name and is_file(old):
                with writing(old):
                    old.unlink()
        write_json(folder / STAMP, {"run": run.identity, "digest": run.digest,
                                    "run_dir": str(run.dir.resolve())})
