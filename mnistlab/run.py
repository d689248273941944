"""The run a platform writes through: its records, summary, progress and end, the same for every platform."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Protocol

from . import files, lease, rundir
from .config import HASH_VERSION, Config, config_hash, to_yaml
from .display import where_diverged
from .errors import DiskError, Diverged


class Reporter(Protocol):
    shows_steps: bool  # step() is called (every 10 batches) only when True: it costs a device sync

    def stage(self, text: str | None, done: int = 0, total: int | None = None) -> None: ...
    def start(self, info: dict) -> None: ...
    def step(self, epoch: int, step: int, steps: int, loss: float, accuracy: float,
             images_per_s: float) -> None: ...
    def epoch(self, train: dict, val: dict | None) -> None: ...
    def finish(self, summary: dict) -> None: ...


class TrainResult(dict):
    """A run's summary (the dict summary.json holds) with the trained model and its history.

    model: the trained model of this process (torch: the nn.Module; keras: the keras.Model;
    tensorflow: the Keras model of a network, None for quadratic and linreg; jax: the dict of
    parameter arrays), None when nothing was trained here (an untouched run directory).
    history: per-epoch metrics from metrics.jsonl, as Keras's History.history.
    """

    def __init__(self, summary: dict, model=None):
        super().__init__(summary)
        self.model = model

    @property
    def history(self) -> dict[str, list]:
        """{"loss": [...], "val_loss": [...], "accuracy": [...], "val_accuracy": [...]}, one value
        per epoch (accuracies of classifiers only), read from the run's metrics.jsonl."""
        return history(Path(self["run_dir"]))


def history(run_dir: Path) -> dict[str, list]:
    """A run's per-epoch train and val metrics by Keras's names: loss, accuracy, val_loss, ..."""
    path = Path(run_dir) / "metrics.jsonl"
    out: dict[str, list] = {}
    for rec in rundir.read_metrics(path) if path.is_file() else []:
        if rec.get("event") != "epoch" or rec.get("split") not in ("train", "val"):
            continue
        prefix = "val_" if rec["split"] == "val" else ""
        for key in ("loss", "accuracy"):
            if rec.get(key) is not None:
                out.setdefault(prefix + key, []).append(rec[key])
    return out


class Silent:
    """A reporter that shows nothing."""

    shows_steps = False

    def stage(self, text, done=0, total=None): pass
    def start(self, info): pass
    def step(self, *args): pass
    def epoch(self, train, val): pass
    def finish(self, summary): pass


class Progress:
    """Where a run is, on any platform: saved in every checkpoint, read back on resume."""

    KEYS = ("epoch", "step", "global_step", "seconds", "epoch_seconds", "first_loss", "best")

    def __init__(self):
        self.epoch = 0  # epochs completed
        self.step = 0  # batches done in the current epoch
        self.global_step = 0
        self.seconds = 0.0  # training seconds of the completed epochs
        self.epoch_seconds = 0.0  # of the current epoch, before the last interruption
        self.first_loss: float | None = None  # the divergence baseline
        self.best: dict | None = None

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.KEYS}

    def load_state_dict(self, state: dict) -> None:
        for key in self.KEYS:
            setattr(self, key, state[key])


class Run:
    """What a platform's loop writes to: the run directory, its summary and metrics log."""

    def __init__(self, cfg: Config, run_dir: Path, summary: dict, reporter: Reporter,
                 progress: Progress, t_start: float | None = None):
        self.cfg, self.dir, self.summary, self.reporter = cfg, run_dir, summary, reporter
        self.progress = progress
        writer = rundir.tensorboard_class()(str(run_dir / "tensorboard")) if cfg.log.tensorboard else None
        self.log = rundir.MetricsLog(run_dir / "metrics.jsonl", writer)
        # this session's start (before its data and model were set up) and the earlier sessions' time
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.wall_before = summary.get("wall_seconds") or 0.0
        self.last_step: dict | None = None  # what the epoch's line shows of its last step

    def save_summary(self) -> None:
        files.write_json(self.dir / "summary.json", self.summary)

    def step(self, record: dict) -> None:
        """A step record: the mean loss (and task metrics) since the last one, lr, speed."""
        self.log.write({"event": "step", "split": "train", **record})
        self.last_step = record

    def epoch_end(self, train: dict, val: dict | None, epoch_seconds: float) -> bool:
        """Log an epoch's train and val records and move progress on; True when it is the best.

        train: its mean loss (and accuracy), lr and images_per_s; val: the val split's scores.
        """
        p = self.progress
        epoch = p.epoch + 1
        p.seconds += epoch_seconds
        p.epoch_seconds = 0.0
        where = {"event": "epoch", "epoch": epoch, "step": p.global_step}
        train_rec = {**where, "split": "train", **train, "elapsed": round(p.seconds, 3)}
        self.log.write(train_rec)
        val_rec = None
        if val is not None:
            val_rec = {**where, "split": "val", **val, "lr": train.get("lr"),
                       "elapsed": round(p.seconds, 3)}
            self.log.write(val_rec)
        p.epoch, p.step = epoch, 0
        improved = is_better(val_rec or train_rec, p.best)
        if improved:
            p.best = {"epoch": epoch, "val_accuracy": val_rec.get("accuracy") if val_rec else None,
                      "val_loss": val_rec["loss"] if val_rec else None,
                      "loss": (val_rec or train_rec)["loss"]}
        self.last_records = train_rec, val_rec
        return improved

    def epoch_saved(self) -> None:
        """After the epoch's checkpoints: the summary says how far the run is, the screen shows it."""
        p, (train_rec, val_rec) = self.progress, self.last_records
        self.summary.update(final={"train": scores(train_rec), "val": scores(val_rec)},
                            epochs_completed=p.epoch, steps_completed=p.global_step,
                            train_seconds=round(p.seconds, 3), best=p.best,
                            wall_seconds=self.wall_seconds())  # a killed session counts to here
        self.save_summary()
        shown = train_rec
        if self.last_step is not None and self.last_step.get("epoch") == train_rec["epoch"]:
            shown = {**train_rec, "last_step": self.last_step}  # for the screen, not the log
        self.reporter.epoch(shown, val_rec)

    def test(self, test: dict) -> None:
        """The test split's scores at the end of training."""
        p = self.progress
        self.log.write({"event": "final", "epoch": self.cfg.train.epochs, "step": p.global_step,
                        "split": "test", **scores(test), "elapsed": round(p.seconds, 3)})
        self.summary["final"]["test"] = scores(test)

    def wall_seconds(self) -> float:
        """The wall time of every session of the run so far, each from its start."""
        return round(self.wall_before + time.perf_counter() - self.t_start, 3)

    def finish(self, status: str, error: str | None = None) -> dict:
        p = self.progress
        self.summary.update(status=status, error=error, best=p.best,
                            train_seconds=round(p.seconds + p.epoch_seconds, 3),
                            epochs_completed=p.epoch, steps_completed=p.global_step,
                            ended=datetime.now().isoformat(timespec="seconds"),
                            wall_seconds=self.wall_seconds())
        try:
            self.save_summary()
        except DiskError as e:
            if error is None:
                raise
            raise DiskError(f"{error} The summary could not be marked {status} either "
                            f"({e.message()}), so the run will be listed as killed.") from None
        finally:
            self.log.close()
        self.reporter.finish(self.summary)
        return self.summary


def new_run_dir(cfg: Config, run_dir: Path | None, owner: lease.Lease) -> Path:
    """A new timestamped run directory owned by the lease, or the given (owned) one made ready."""
    if run_dir is None:
        run_dir = rundir.create_run_dir(cfg.runs_dir, cfg.name or "run")
        owner.acquire(run_dir)
        return run_dir
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # of an attempt that failed before a checkpoint
    return run_dir


def new_run(cfg: Config, facts: dict, source: dict | None, reporter: Reporter, run_dir: Path | None,
            owner: lease.Lease, progress: Progress, env: dict, extra=None,
            t_start: float | None = None) -> Run:
    """A new run directory with its config.yaml, env.json and a running summary.json.

    facts: what the platform set up (platform, params, device, precision, sample counts...);
    extra(run_dir): a platform's own files written with these (e.g. a copy of the model code).
    """
    made_here = run_dir is None
    run_dir = new_run_dir(cfg, run_dir, owner)
    header = [f"resolved config of this run; train it again with: mnistlab train {run_dir}/config.yaml"]
    if source and source.get("overrides"):
        header.append(f"made from {source.get('config')} with overrides: {' '.join(source['overrides'])}")
    summary = {
        "name": cfg.name, "run_dir": str(run_dir), "task": cfg.task, "status": "running",
        "started": datetime.now().isoformat(timespec="seconds"), "ended": None,
        **lease.process_identity(), "executor": lease.executor_identity(),
        "config_hash": config_hash(cfg), "hash_version": HASH_VERSION, "source": source or {},
        **facts, "epochs": cfg.train.epochs, "epochs_completed": 0, "steps_completed": 0,
        "final": {}, "best": None, "result": None, "error": None, "wall_seconds": None,
        "train_seconds": 0.0, "resumes": [],
    }
    try:
        files.atomic_write_text(run_dir / "config.yaml", yaml_comment(header) + to_yaml(cfg))
        if extra is not None:
            extra(run_dir)
        files.write_json(run_dir / "env.json", env)
        run = Run(cfg, run_dir, summary, reporter, progress, t_start)
        run.save_summary()
    except DiskError:
        if made_here:  # a new run that could not even be set up leaves nothing
            owner.release()
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run


def resume_run(cfg: Config, run_dir: Path, reporter: Reporter, progress: Progress,
               t_start: float | None = None) -> Run:
    """Continue a run whose progress the platform has loaded from its last checkpoint: drop the
    records written after that checkpoint and record the resume. Everything is read and checked
    before anything is rewritten, so a damaged summary leaves the run as it was."""
    summary = rundir.read_summary(run_dir)
    files.remove_stale_tmp(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():  # steps redone after a kill -9 are logged once, by the resumed run
        lines = metrics.read_bytes().splitlines()
        kept = [r for r in rundir.read_metrics(metrics)
                if r.get("event") != "final" and isinstance(r.get("step", 0), (int, float))
                and r.get("step", 0) <= progress.global_step]
        if len(kept) != len(lines):
            files.atomic_write_text(metrics, "".join(json.dumps(r) + "\n" for r in kept))
    summary.setdefault("resumes", []).append({
        "at": datetime.now().isoformat(timespec="seconds"), "epoch": progress.epoch,
        "step": progress.global_step, "argv": sys.argv, **lease.process_identity()})
    summary.update(status="running", ended=None, error=None, **lease.process_identity(),
                   executor=lease.executor_identity())
    run = Run(cfg, run_dir, summary, reporter, progress, t_start)
    run.save_summary()
    return run


def yaml_comment(lines: list[str]) -> str:
    """Lines as YAML comments; a line break or control character the user typed is escaped."""
    return "".join("# " + re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]",
                                 lambda m: repr(m.group())[1:-1], line) + "\n" for line in lines)


def check_divergence(cfg: Config, progress: Progress, losses: list[tuple[int, int, float]],
                     steps_per_epoch: int) -> None:
    """A NaN or infinite loss, or one grown a million-fold, ends the run as failed.

    losses: (epoch index, step index, loss) of the steps since the last check.
    """
    if not losses:
        return
    if progress.first_loss is None:
        progress.first_loss = losses[0][2]
    for epoch, step, loss in losses:
        if math.isfinite(loss) and loss <= 1e6 * max(progress.first_loss, 1e-6):
            continue
        at = f"at {where_diverged(epoch + 1, step + 1, steps_per_epoch)} (optim.lr={cfg.optim.lr:g})"
        if not math.isfinite(loss):
            what = f"the training loss became {loss} {at}"
        else:
            what = f"the training loss grew from {progress.first_loss:.4g} to {loss:.4g} {at}"
        done = progress.epoch  # the epochs whose checkpoints were saved before it
        raise Diverged(f"{what}, with {done} of {cfg.train.epochs} epochs completed: the run "
                       f"diverged and stopped as failed. Try a lower learning rate in a new run, "
                       f"e.g. optim.lr={cfg.optim.lr / 10:g}.", epoch + 1, step + 1)


def is_better(rec: dict, best: dict | None) -> bool:
    """Higher accuracy when there is one, else lower loss."""
    if best is None:
        return True
    if "accuracy" in rec and best.get("val_accuracy") is not None:
        return rec["accuracy"] > best["val_accuracy"]
    return rec["loss"] < best["loss"]


def scores(rec: dict | None) -> dict | None:
    """The scores of a record: its loss and, for classifiers, accuracy."""
    return None if rec is None else {k: rec[k] for k in ("loss", "accuracy") if k in rec}


LOADING = "loading the data and building the model"  # the first stage of every platform


class Session:
    """What the driver hands a platform: the config, where the run goes, and when to stop.

    The platform sets up its framework, telling each stage before the first step (stage), then
    opens the run (new) or reopens it (resume) with its progress, trains up to `until`, and
    returns; the driver ends the run.
    """

    def __init__(self, cfg: Config, reporter: Reporter, resume: Path | None, source: dict | None,
                 stop, run_dir: Path | None, owner: lease.Lease, until: int, trust_run_code: bool):
        self.cfg, self.reporter, self.resume, self.source = cfg, reporter, resume, source
        self.stop, self.run_dir, self.owner, self.until = stop, run_dir, owner, until
        self.trust_run_code = trust_run_code
        self.run: Run | None = None
        self.model = None  # the platform's trained model, handed to TrainResult
        self.t_start = time.perf_counter()  # the session's wall time counts its setup too
        self.doing = "setting up"  # the stage a stop request before the first step ends

    def stage(self, text: str | None, done: int = 0, total: int | None = None) -> None:
        """What the run is doing before its first step (done of total images, when counted),
        shown while it lasts; None: that is over. A stop request (Ctrl-C, SIGTERM) ends it here, raising
        KeyboardInterrupt: platforms call this between chunks of any long stage."""
        if self.stop.is_set():
            raise KeyboardInterrupt
        if text is not None:
            self.doing = text
        self.show(text, done, total)

    def show(self, text: str | None, done: int = 0, total: int | None = None) -> None:
        """The stage on the reporter's display (a reporter written before stages shows none)."""
        shown = getattr(self.reporter, "stage", None)
        if shown is not None:
            shown(text, done, total)

    def open(self, facts: dict, progress: Progress, env: dict, extra=None) -> Run:
        """A new run: its directory, config.yaml, env.json and running summary."""
        self.run = new_run(self.cfg, facts, self.source, self.reporter, self.run_dir, self.owner,
                           progress, env, extra, self.t_start)
        return self.run

    def reopen(self, progress: Progress) -> Run:
        """The resumed run, at the progress the platform read from its last checkpoint."""
        self.run = resume_run(self.cfg, Path(self.resume), self.reporter, progress, self.t_start)
        return self.run
