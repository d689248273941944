"""The driver of a training run on any platform: the lease, the run directory's idempotency, the
signals, and the end of the run (completed, paused, interrupted or failed)."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from pathlib import Path

import torch

from . import checkpoint, files, platforms, rundir, usermodel
from .config import Config, config_from_dict, config_hash
from .errors import ConfigError, Diverged, Interrupted, MnistlabError, RunError
from .lease import Lease
from .run import Reporter, Session, Silent, TrainResult


class RunInterrupted(Interrupted):
    """Ctrl-C or SIGTERM: the run stopped after saving its state."""

    def __init__(self, run_dir: Path, lost: str | None = None):
        self.run_dir = run_dir
        why = f"stopped: the run's lease was lost ({lost})" if lost else "interrupted"
        super().__init__(f"{why}; the last checkpoint is saved. Continue with: "
                         f"mnistlab train --resume {run_dir}")


class SetupInterrupted(Interrupted):
    """Ctrl-C or SIGTERM before the run's first step, while it was being set up: nothing written."""

    def __init__(self, doing: str, resume: Path | None, lost: str | None = None):
        why = f"stopped: the run's lease was lost ({lost})" if lost else "interrupted"
        then = (f"{resume} is left as it was. Continue with: mnistlab train --resume {resume}"
                if resume is not None else "nothing was written. Run the same command to start it "
                "again.")
        super().__init__(f"{why} while {doing}, before the run's first step; {then}")


@contextlib.contextmanager
def stop_on_signals():
    """Ctrl-C and SIGTERM set the yielded event; the loop stops at the next batch boundary.

    A second Ctrl-C raises KeyboardInterrupt at once. A repeated SIGTERM is the same request again:
    a scheduler signals every process of a job, and the job's own process passes it on too.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def fit(cfg: Config, reporter: Reporter | None = None, resume: Path | None = None,
        source: dict | None = None, run_dir: Path | None = None,
        until_epoch: int | None = None, trust_run_code: bool = False) -> TrainResult:
    """Train cfg into a new run directory (or continue the run at resume); return its summary
    (a TrainResult: also the trained model and the history).

    With run_dir the run goes into that directory, idempotently: a new run there, the continuation
    of an interrupted one, or nothing at all for a completed one (its summary marked "untouched").
    With until_epoch the run stops after that epoch of its full schedule, saved and "paused";
    resuming it continues the same run as if it had never stopped. trust_run_code: a resumed
    model.kind=module run imports the copy of the code kept in its directory.
    Raises RunBusy when another live process writes the directory, RunError for a completed run
    at resume, Interrupted on Ctrl-C/SIGTERM and TrainError on divergence, both after saving.
    """
    platform = platforms.get(cfg.platform)
    problems = platform.problems(cfg)
    if problems:
        raise ConfigError(problems)
    if cfg.model.kind == "module" and cfg.model.source_digest is None:  # made without load_config
        cfg = dataclasses.replace(cfg, model=usermodel.resolve(cfg.model, Path.cwd()))
    if resume is not None and completed(resume):
        raise RunError(f"{resume}: the run has already completed; there is nothing to resume, "
                       "and it was left as it is. Train a new run with: mnistlab train "
                       f"{Path(resume) / 'config.yaml'}")
    with stop_on_signals() as stop, Lease(on_lost=lambda: stop.set()) as lease:
        if resume is not None or run_dir is not None:
            lease.acquire(Path(resume or run_dir))  # before anything is read or written
        if run_dir is not None:
            resume, done = in_run_dir(cfg, Path(run_dir))
            if done is not None:
                return TrainResult({**done, "untouched": True})
        if resume is not None and until_epoch is not None:
            summary = rundir.read_summary(Path(resume))
            if summary.get("status") in ("paused", "pruned") and \
                    summary.get("epochs_completed", 0) >= until_epoch:
                return TrainResult({**summary, "untouched": True})  # already there: nothing rewritten
        until = cfg.train.epochs if until_epoch is None else min(until_epoch, cfg.train.epochs)
        session = Session(cfg, reporter or Silent(), resume, source, stop, run_dir, lease, until,
                          trust_run_code)
        threads = torch.get_num_threads()  # train.threads is this run's, not the caller's
        try:
            platform.train(session)
        except KeyboardInterrupt:
            if session.run is None:  # still setting up: nothing of the run was written
                session.show(None)
                raise SetupInterrupted(session.doing, resume, lease.lost) from None
            why = (f"stopped because the run's lease was lost: {lease.lost}" if lease.lost else
                   "interrupted by a signal (Ctrl-C or SIGTERM)")
            session.run.finish("interrupted", f"{why}; continue with 'mnistlab train --resume "
                               f"{session.run.dir}'")
            raise RunInterrupted(session.run.dir, lease.lost) from None
        except BaseException as e:
            if session.run is None:
                session.show(None)  # the error is printed on a clear screen
            else:
                if isinstance(e, Diverged):  # what a sweep's plot marks apart from other failures
                    session.run.summary.update(failure="diverged",
                                               diverged_at={"epoch": e.epoch, "step": e.step})
                session.run.finish("failed", e.message() if isinstance(e, MnistlabError)
                                   else f"{type(e).__name__}: {e}")
            raise
        finally:
            torch.set_num_threads(threads)
        return TrainResult(session.run.finish("paused" if until < cfg.train.epochs else "completed"),
                           session.model)


def has_checkpoint(run_dir: Path) -> bool:
    """A last checkpoint: last.pt of a torch run, last.json of a Keras, TensorFlow or JAX run."""
    folder = Path(run_dir) / "checkpoints"
    return (folder / "last.pt").is_file() or (folder / "last.json").is_file()


def in_run_dir(cfg: Config, run_dir: Path) -> tuple[Path | None, dict | None]:
    """What training cfg into run_dir means: (run_dir to resume, None), (None, completed summary),
    or (None, None) for a new run; RunError when run_dir holds a run of another config."""
    try:
        summary = files.read_json(run_dir / "summary.json")
    except FileNotFoundError:
        summary = None
    except (OSError, ValueError):
        summary = {}  # damaged: the checkpoint decides
    summary = summary if isinstance(summary, dict) else {}
    recorded = rundir.trial_key(run_dir, summary) if summary else None
    if has_checkpoint(run_dir) and recorded is None:
        recorded = config_hash(resume_config(run_dir))
    if recorded is not None and recorded != config_hash(cfg):
        raise RunError(f"{run_dir}: holds a run of another config (hash {recorded}, this config "
                       f"has {config_hash(cfg)}); give another --run-dir, or resume it with "
                       f"mnistlab train --resume {run_dir}")
    if summary.get("status") == "completed":
        return None, summary
    if has_checkpoint(run_dir):
        return run_dir, None
    return None, None


def completed(run_dir: Path) -> dict | None:
    """The summary of a run that has completed, else None."""
    try:
        summary = files.read_json(Path(run_dir) / "summary.json")
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("status") == "completed" else None


def resume_config(run_dir: Path) -> Config:
    """The resolved config a run was started with, read back from its last checkpoint."""
    folder = Path(run_dir) / "checkpoints"
    if not (folder / "last.pt").is_file() and (folder / "last.json").is_file():
        from .platforms import saved

        return saved.config_of(saved.load(folder / "last.json"))
    ckpt = checkpoint.load_checkpoint(folder / "last.pt")
    return config_from_dict(ckpt["config"])
