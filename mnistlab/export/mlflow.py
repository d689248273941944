"""MLflow: a tracking database (SQLite, what MLflow 3 keeps its runs in and `mlflow ui` opens by
default) with one MLflow run per run, in the experiment named after its sweep; a tag with the
run's identity finds it again, so exporting twice adds nothing, and a run whose files changed is
replaced."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError  # what MLflow's database store lets through

from ..errors import ExportError, first_line
from ..files import writing
from .record import Exported

DEFAULT = Path("mlflow.db")  # where `mlflow ui` looks when given nothing
SUFFIXES = (".db", ".sqlite")
EXPERIMENT = "Default"  # the experiment of runs made outside a sweep: MLflow's own
RUN_TAG = "mnistlab.run"  # the run's identity: its name and start time
DIGEST_TAG = "mnistlab.digest"  # the digest of the run's files when it was exported
STATUS = {"completed": "FINISHED", "failed": "FAILED"}  # paused, pruned, killed...: KILLED
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"  # training, not GenAI
FAILURES = (MlflowException, SQLAlchemyError)
BATCH = 100  # MLflow takes at most 100 params and 1000 metrics a call


def uri(to: Path) -> str:
    """The tracking URI of a database file: sqlite:/// and its path, relative or absolute."""
    return f"sqlite:///{to.as_posix()}"


def open_with(to: Path) -> str:
    return f"mlflow ui --backend-store-uri {shlex.quote(uri(to))}"


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def check(to: Path) -> None:
    """Refuse a target that is not an SQLite file, or one that cannot be written."""
    if to.suffix not in SUFFIXES or to.is_dir():
        raise ExportError(f"--to {to}: give a database file such as mlflow.db: MLflow keeps its "
                          "runs in SQLite (its file store, a folder like mlruns/, is in "
                          "maintenance mode).")
    with writing(to):
        to.parent.mkdir(parents=True, exist_ok=True)
        with open(to, "ab"):  # an empty file is an empty SQLite database
            pass
    with open(to, "rb") as f:
        head = f.read(16)
    if head and head != b"SQLite format 3\0":
        raise ExportError(f"--to {to}: is a file but not an SQLite database; give a new file "
                          "name, or an MLflow database (mlflow.db).")


def failed(to: Path, e: Exception) -> ExportError:
    return ExportError(f"--to {to}: MLflow could not read or write it: {first_line(str(e))}. "
                       "Give another file, e.g. --to mlflow.db.")


class Target:
    """An MLflow tracking database, written through MLflow's client."""

    def __init__(self, to: Path):
        check(to)
        self.to = to
        self.experiments: dict[str, str] = {}  # name -> id
        self.found: dict[str, dict] = {}  # experiment id -> identity -> MLflow run

    def __enter__(self) -> "Target":
        quiet = logging.getLogger("mlflow.store.db.utils")  # its notes on making the tables
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            self.client = MlflowClient(tracking_uri=uri(self.to.resolve()))
            self.client.search_experiments(max_results=1)  # the tables are made on first use
        except FAILURES as e:
            raise failed(self.to, e) from None
        finally:
            quiet.setLevel(level)
        return self

    def __exit__(self, kind, e, tb) -> None:
        if isinstance(e, FAILURES):
            raise failed(self.to, e) from None

    def _experiment(self, run: Exported) -> str:
        name = run.sweep or EXPERIMENT
        if name not in self.experiments:
            found = self.client.get_experiment_by_name(name)
            self.experiments[name] = found.experiment_id if found else \
                self.client.create_experiment(name)
            if found is not None and found.lifecycle_stage == "deleted":  # exported to be seen
                self.client.restore_experiment(found.experiment_id)
            if found is None or KIND_TAG not in found.tags:  # opens on its runs, not on traces
                self.client.set_experiment_tag(self.experiments[name], KIND_TAG, KIND)
        return self.experiments[name]

    def _exported(self, experiment: str) -> dict:
        """identity -> MLflow run of the runs exported into the experiment before."""
        if experiment not in self.found:
            runs, token = {}, None
            while True:
                page = self.client.search_runs([experiment], max_results=1000, page_token=token)
                runs.update({r.data.tags[RUN_TAG]: r for r in page if RUN_TAG in r.data.tags})
                token = page.token
                if not token:
                    break
            self.found[experiment] = runs
        return self.found[experiment]

    def digest(self, run: Exported) -> str | None:
        before = self._exported(self._experiment(run)).get(run.identity)
        return None if before is None else before.data.tags.get(DIGEST_TAG, "")

    def write(self, run: Exported) -> None:
        experiment = self._experiment(run)
        before = self._exported(experiment).pop(run.identity, None)
        if before is not None:  # metrics cannot be rewritten in place: the old run goes
            self.client.delete_run(before.info.run_id)
        tags = {**run.tags, RUN_TAG: run.identity, DIGEST_TAG: run.digest}
        created = self.client.create_run(experiment, start_time=_ms(run.started), tags=tags,
                                         run_name=run.name)
        run_id = created.info.run_id
        params = [Param(k, str(v).lower() if isinstance(v, bool) else str(v))
                  for k, v in run.hparams.items()]
        points = [Metric(name, value, _ms(when or run.started) or 0, step)
                  for name, step, value, when in run.points]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(run_id, params=params[i:i + BATCH])
        for i in range(0, len(points), 10 * BATCH):
            self.client.log_batch(run_id, metrics=points[i:i + 10 * BATCH])
        if run.status != "running":
            self.client.set_terminated(run_id, STATUS.get(run.status, "KILLED"),
                                       end_time=_ms(run.ended))
        self.found[experiment][run.identity] = created  # tagged with its digest
