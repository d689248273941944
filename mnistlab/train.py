"""The one shared loop: fit() trains, evaluates each epoch and writes the run directory."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import shutil
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Protocol

import torch

from . import precision, runs, usermodel
from .compute import as_input, evaluate, is_conv, resolve_device
from .config import (HASH_VERSION, Config, OptimConfig, config_from_dict, config_hash,
                     optimizer_settings, to_dict, to_yaml)
from .errors import (CheckpointError, Diverged, DiskError, Interrupted, MnistlabError,  # noqa: F401
                     RunError, TrainError)
from .models import count_parameters, fit_whitening, frozen_head
from .tasks import TASKS, Task, build_task


class RunInterrupted(Interrupted):
    """Ctrl-C or SIGTERM: the run stopped after saving its state."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        super().__init__(f"interrupted; the last checkpoint is saved. Continue with: "
                         f"mnistlab train --resume {run_dir}")


class Reporter(Protocol):
    shows_steps: bool  # step() is called (every 10 batches) only when True: it costs a device sync

    def start(self, info: dict) -> None: ...
    def step(self, epoch: int, step: int, steps: int, loss: float, accuracy: float,
             images_per_s: float) -> None: ...
    def epoch(self, train: dict, val: dict | None) -> None: ...
    def finish(self, summary: dict) -> None: ...


class Silent:
    """A reporter that shows nothing."""

    shows_steps = False

    def start(self, info): pass
    def step(self, *args): pass
    def epoch(self, train, val): pass
    def finish(self, summary): pass


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


class HandWrittenGD(torch.optim.Optimizer):
    """x <- x - lr * x.grad, written out: gradient descent as the course does it by hand."""

    def __init__(self, params, lr: float):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p -= group["lr"] * p.grad


def build_optimizer(cfg: OptimConfig, params) -> torch.optim.Optimizer:
    if cfg.name == "manual":
        return HandWrittenGD(params, cfg.lr)
    classes = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
               "adadelta": torch.optim.Adadelta, "rmsprop": torch.optim.RMSprop}
    return classes[cfg.name](params, lr=cfg.lr, **optimizer_settings(cfg))


def build_scheduler(cfg: OptimConfig, optimizer, epochs: int, steps_per_epoch: int):
    """The schedule, stepped after every batch (step decays every step_size epochs)."""
    total = epochs * steps_per_epoch
    if cfg.schedule == "none":
        return None
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size * steps_per_epoch, cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    if cfg.schedule == "onecycle":
        # cycle the momentum only where there is one: never turn plain SGD into momentum SGD
        cycle = cfg.name in ("adam", "adamw") or optimizer_settings(cfg).get("momentum", 0) > 0
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=total,
                                                   cycle_momentum=cycle)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")




class Sums:
    """Running sums on the device, read only at log points: loss x samples, task metrics, samples."""

    def __init__(self):
        self.values: dict[str, torch.Tensor] = {}
        self.seen = 0

    def add(self, n: int, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            self.values[key] = self.values[key] + value if key in self.values else value
        self.seen += n

    def means(self) -> dict[str, float]:
        return {key: value.item() / max(self.seen, 1) for key, value in self.values.items()}

    def state_dict(self) -> dict:
        return {"values": {k: v.detach().cpu() for k, v in self.values.items()}, "seen": self.seen}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.values = {k: v.to(device) for k, v in state["values"].items()}
        self.seen = state["seen"]


def rng_states() -> dict:
    """Every random number generator a run draws from: the CPU's and each CUDA device's."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["cpu"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class TrainState:
    """All a resume needs besides model, optimizer and scheduler; saved and loaded whole."""

    def __init__(self, seed: int):
        self.epoch = 0  # epochs completed
        self.step = 0  # batches done in the current epoch
        self.global_step = 0
        self.seconds = 0.0  # training seconds of the completed epochs
        self.epoch_seconds = 0.0  # of the current epoch, before the last interruption
        self.first_loss: float | None = None  # the divergence baseline
        self.best: dict | None = None
        self.shuffle = torch.Generator().manual_seed(seed)
        self.epoch_shuffle = self.shuffle.get_state()  # at the current epoch's start: redraws its order
        self.sums = Sums()  # of the current epoch
        self.window = Sums()  # since the last step record

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "global_step": self.global_step,
                "seconds": self.seconds, "epoch_seconds": self.epoch_seconds,
                "first_loss": self.first_loss, "best": self.best, "shuffle": self.epoch_shuffle,
                "rng": rng_states(), "sums": self.sums.state_dict(),
                "window": self.window.state_dict()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        for key in ("epoch", "step", "global_step", "seconds", "epoch_seconds", "first_loss", "best"):
            setattr(self, key, state[key])
        self.epoch_shuffle = state["shuffle"]
        self.shuffle.set_state(state["shuffle"])
        set_rng_states(state["rng"])
        self.sums.load_state_dict(state["sums"], device)
        self.window.load_state_dict(state["window"], device)


def legacy_state(ckpt: dict, steps_per_epoch: int) -> dict:
    """The state of a checkpoint written before TrainState (its partial sums were not saved)."""
    empty = {"values": {}, "seen": 0}
    return {"epoch": ckpt["epoch"], "step": ckpt["step"],
            "global_step": ckpt["epoch"] * steps_per_epoch + ckpt["step"],
            "seconds": ckpt.get("train_seconds", 0.0), "epoch_seconds": 0.0, "first_loss": None,
            "best": ckpt.get("best"), "shuffle": ckpt["shuffle_state"],
            "rng": {"cpu": ckpt["rng_state"], "cuda": []}, "sums": empty, "window": empty}


class Run:
    """What the loop writes to: the run directory, its summary and metrics log."""

    def __init__(self, run_dir: Path, summary: dict, log: runs.MetricsLog, reporter: Reporter):
        self.dir, self.summary, self.log, self.reporter = run_dir, summary, log, reporter
        self.t_start = time.perf_counter()

    def save_summary(self) -> None:
        runs.write_json(self.dir / "summary.json", self.summary)

    def finish(self, status: str, state: TrainState, error: str | None = None) -> dict:
        self.summary.update(status=status, error=error, best=state.best,
                            train_seconds=round(state.seconds + state.epoch_seconds, 3),
                            epochs_completed=state.epoch, steps_completed=state.global_step,
                            ended=datetime.now().isoformat(timespec="seconds"),
                            wall_seconds=round(self.summary.get("wall_seconds") or 0.0
                                               + time.perf_counter() - self.t_start, 3))
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


def fit(cfg: Config, reporter: Reporter | None = None, resume: Path | None = None,
        source: dict | None = None, run_dir: Path | None = None,
        until_epoch: int | None = None, trust_run_code: bool = False) -> dict:
    """Train cfg into a new run directory (or continue the run at resume); return its summary.

    With run_dir the run goes into that directory, idempotently: a new run there, the continuation
    of an interrupted one, or nothing at all for a completed one (its summary marked "untouched").
    With until_epoch the run stops after that epoch of its full schedule, saved and "paused";
    resuming it continues the same run as if it had never stopped. trust_run_code: a resumed
    model.kind=module run imports the copy of the code kept in its directory.
    Raises RunBusy when another live process writes the directory, RunError for a completed run
    at resume, Interrupted on Ctrl-C/SIGTERM and TrainError on divergence, both after saving.
    """
    if cfg.model.kind == "module" and cfg.model.source_digest is None:  # made without load_config
        cfg = dataclasses.replace(cfg, model=usermodel.resolve(cfg.model, Path.cwd()))
    if resume is not None and completed(resume):
        raise RunError(f"{resume}: the run has already completed; there is nothing to resume, "
                       "and it was left as it is. Train a new run with: mnistlab train "
                       f"{Path(resume) / 'config.yaml'}")
    threads = torch.get_num_threads()
    try:
        with stop_on_signals() as stop, runs.Lease() as lease:
            if resume is not None or run_dir is not None:
                lease.acquire(Path(resume or run_dir))  # before anything is read or written
            if run_dir is not None:
                resume, done = in_run_dir(cfg, Path(run_dir))
                if done is not None:
                    return {**done, "untouched": True}
            if resume is not None and until_epoch is not None:
                summary = runs.read_summary(Path(resume))
                if summary.get("status") in ("paused", "pruned") and \
                        summary.get("epochs_completed", 0) >= until_epoch:
                    return {**summary, "untouched": True}  # already there: nothing rewritten
            return _fit(cfg, reporter or Silent(), resume, source, stop, run_dir, lease, until_epoch,
                        trust_run_code)
    finally:
        torch.set_num_threads(threads)  # train.threads is this run's, not the caller's


def in_run_dir(cfg: Config, run_dir: Path) -> tuple[Path | None, dict | None]:
    """What training cfg into run_dir means: (run_dir to resume, None), (None, completed summary),
    or (None, None) for a new run; RunError when run_dir holds a run of another config."""
    try:
        summary = runs.read_json(run_dir / "summary.json")
    except FileNotFoundError:
        summary = None
    except (OSError, ValueError):
        summary = {}  # damaged: the checkpoint decides
    summary = summary if isinstance(summary, dict) else {}
    recorded = runs.trial_key(run_dir, summary) if summary else None
    if (run_dir / "checkpoints" / "last.pt").is_file() and recorded is None:
        recorded = config_hash(resume_config(run_dir))
    if recorded is not None and recorded != config_hash(cfg):
        raise RunError(f"{run_dir}: holds a run of another config (hash {recorded}, this config "
                       f"has {config_hash(cfg)}); give another --run-dir, or resume it with "
                       f"mnistlab train --resume {run_dir}")
    if summary.get("status") == "completed":
        return None, summary
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return run_dir, None
    return None, None


def new_run_dir(cfg: Config, run_dir: Path | None, lease: runs.Lease) -> Path:
    """A new timestamped run directory owned by lease, or the given (owned) one made ready."""
    if run_dir is None:
        run_dir = runs.create_run_dir(cfg.runs_dir, cfg.name or "run")
        lease.acquire(run_dir)
        return run_dir
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # of an attempt that failed before a checkpoint
    return run_dir


def completed(run_dir: Path) -> dict | None:
    """The summary of a run that has completed, else None."""
    try:
        summary = runs.read_json(Path(run_dir) / "summary.json")
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("status") == "completed" else None


def _fit(cfg: Config, reporter: Reporter, resume: Path | None, source: dict | None,
         stop: threading.Event, run_dir: Path | None, lease: runs.Lease,
         until_epoch: int | None = None, trust_run_code: bool = False) -> dict:
    device, task, optimizer, scheduler, chosen = setup(cfg, resume, trust_run_code)
    model, data = task.model, task.data
    batch, n_train = cfg.train.batch_size, len(data.train_x)
    steps_per_epoch = math.ceil(n_train / batch)
    state = TrainState(cfg.train.seed)
    if resume is None:
        run = new_run(cfg, task, device, chosen, source, reporter, run_dir, lease)
    else:
        run = resume_run(Path(resume), task, optimizer, scheduler, state, device, steps_per_epoch,
                         reporter)
    bf16 = run.summary.get("precision", chosen.name) == "bf16"  # a resumed run keeps its own
    reporter.start({"run_dir": str(run.dir), "params": run.summary["params"], "device": str(device),
                    "threads": torch.get_num_threads(), "describe": task.describe(),
                    "rate_unit": task.rate_unit, "epochs": cfg.train.epochs,
                    "steps_per_epoch": steps_per_epoch, "start_epoch": state.epoch})
    channels_last = is_conv(model)
    body, train_x = model, None  # the first epoch may find a fitted first stage to run once
    losses: list[tuple[int, int, torch.Tensor]] = []  # (epoch, step, loss) not yet checked
    model.train()
    t_epoch = time.perf_counter()
    try:
        for epoch in range(state.epoch, stop_after(cfg, until_epoch)):
            state.epoch_shuffle = state.shuffle.get_state()
            perm = torch.randperm(n_train, generator=state.shuffle).to(device)
            t_epoch = t_window = time.perf_counter()
            if train_x is None:  # inside the epoch's time: it is part of what training costs
                train_x, body = training_inputs(model, data.train_x, batch, device, bf16)
            for step in range(state.step, steps_per_epoch):
                if stop.is_set():
                    raise KeyboardInterrupt
                idx = perm[step * batch:(step + 1) * batch]
                xb, yb = as_input(train_x[idx], device, channels_last), data.train_y[idx]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = body(xb)
                    loss = task.loss(out, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                log_now = cfg.train.log_every and (step + 1) % cfg.train.log_every == 0
                extras = task.step_extras() if log_now else {}
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                n = min(batch, n_train - step * batch)
                # float64 sums of loss * n: the same numbers as summing Python floats
                sums = {"loss": loss.detach().double() * n, **task.batch_metrics(out, yb)}
                state.sums.add(n, sums)
                state.window.add(n, sums)
                state.step, state.global_step = step + 1, state.global_step + 1
                losses.append((epoch, step, loss.detach()))
                if log_now:
                    check_divergence(cfg, state, losses)
                    now = time.perf_counter()
                    run.log.write({"event": "step", "epoch": epoch + 1, "step": state.global_step,
                                   "split": "train", **state.window.means(),
                                   "lr": optimizer.param_groups[0]["lr"],
                                   "elapsed": round(state.seconds + state.epoch_seconds + now - t_epoch, 3),
                                   "images_per_s": round(state.window.seen / max(now - t_window, 1e-9), 1),
                                   **extras})
                    state.window = Sums()
                    t_window = now
                if getattr(reporter, "shows_steps", False) and (step % 10 == 0 or step == steps_per_epoch - 1):
                    seconds = state.epoch_seconds + time.perf_counter() - t_epoch
                    means = state.sums.means()
                    reporter.step(epoch + 1, step + 1, steps_per_epoch, means["loss"],
                                  means.get("accuracy"), state.sums.seen / max(seconds, 1e-9))
            check_divergence(cfg, state, losses)
            end_epoch(cfg, task, state, run, optimizer, scheduler, device, bf16,
                      state.epoch_seconds + time.perf_counter() - t_epoch)
    except KeyboardInterrupt:
        try:
            check_divergence(cfg, state, losses)  # a diverged run is failed, not resumable
        except Diverged as e:
            run.finish("failed", state, str(e))
            raise
        # the epoch in progress resumes from this very batch: same permutation, same RNG
        state.epoch_seconds += time.perf_counter() - t_epoch
        try:
            save_checkpoint(run, "last", cfg, task, optimizer, scheduler, state)
        except DiskError as e:
            run.finish("failed", state, e.message())
            raise
        run.finish("interrupted", state, "interrupted by a signal (Ctrl-C or SIGTERM); continue "
                   f"with 'mnistlab train --resume {run.dir}'")
        raise RunInterrupted(run.dir) from None
    except Diverged as e:
        run.finish("failed", state, str(e))
        raise
    except BaseException as e:
        run.finish("failed", state, e.message() if isinstance(e, MnistlabError) else f"{type(e).__name__}: {e}")
        raise
    if stop_after(cfg, until_epoch) < cfg.train.epochs:
        return run.finish("paused", state)  # last.pt is this epoch's: the schedule goes on from it
    try:
        if len(data.test_x):
            test = evaluate(model, task, data.test_x, data.test_y, cfg.train.eval_batch_size,
                            device, bf16=bf16)
            run.log.write({"event": "final", "epoch": cfg.train.epochs, "step": state.global_step,
                           "split": "test", **_metrics(test), "elapsed": round(state.seconds, 3)})
            run.summary["final"]["test"] = _metrics(test)
        run.summary["result"] = task.result()
    except DiskError as e:
        run.finish("failed", state, e.message())
        raise
    return run.finish("completed", state)


FEATURE_CACHE_BYTES = 2**30  # the most a first stage's output over the training set may take


def fits_cache(first: torch.Tensor, n_train: int) -> bool:
    """Whether a first stage's output over n_train images fits FEATURE_CACHE_BYTES (first: its
    output for one batch), so that training_inputs can run it once instead of in every step."""
    return n_train * first[0].numel() * first.element_size() <= FEATURE_CACHE_BYTES


@torch.no_grad()
def training_inputs(model: torch.nn.Module, x: torch.Tensor, batch_size: int, device: torch.device,
                    bf16: bool) -> tuple[torch.Tensor, torch.nn.Module]:
    """What the training steps feed to which layers: the training images to the whole model, or,
    where the model starts with a fitted first stage (a whitened conv, its pooling and activation),
    that stage's output for every image, computed once, to the layers above it. The same numbers
    either way, without running that stage in every step; at most FEATURE_CACHE_BYTES of them."""
    count = frozen_head(model)
    if not count:
        return x, model
    head, out = model[:count], None
    for i in range(0, len(x), batch_size):  # training-sized batches: they stay in the CPU's caches
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            part = head(as_input(x[i:i + batch_size], device, True))
        if out is None:
            if not fits_cache(part, len(x)):
                return x, model
            out = torch.empty((len(x), *part.shape[1:]), dtype=part.dtype, device=device,
                              memory_format=torch.channels_last)
        out[i:i + len(part)] = part
    return (x, model) if out is None else (out, model[count:])


@torch.no_grad()
def trained_part(model: torch.nn.Module, x: torch.Tensor,
                 n_train: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The layers a training step runs and their input for the batch x: those above a first stage
    that training_inputs runs once, or the whole model. What precision auto has to time."""
    count = frozen_head(model)
    if not count:
        return model, x
    first = model[:count](x)
    return (model[count:], first) if fits_cache(first, n_train) else (model, x)


def stop_after(cfg: Config, until_epoch: int | None) -> int:
    """The epoch this invocation trains up to; the schedule still spans all of train.epochs."""
    return cfg.train.epochs if until_epoch is None else min(until_epoch, cfg.train.epochs)


def setup(cfg: Config, resume: Path | None = None, trust_run_code: bool = False):
    """Threads, device and seed; the task (data on the device), optimizer, schedule and precision.

    A model.kind=module network meets one training batch here, before anything is written.
    """
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    if cfg.log.tensorboard:
        runs.tensorboard_class()  # a missing package is reported before anything is written
    own_model = cfg.model.kind == "module" and TASKS[cfg.task].builds_model
    task = build_task(cfg, usermodel.trusted_copy(resume, trust_run_code) if own_model else None)
    if resume is None:  # a resumed run's fitted layers come from its checkpoint
        fit_whitening(task.model, task.data.train_x)
    task.data = task.data.to(device)  # once: batches are index slices on the device
    task.model.to(device)
    if is_conv(task.model):
        task.model.to(memory_format=torch.channels_last)
    if own_model:
        first = as_input(task.data.train_x[:cfg.train.batch_size], device, is_conv(task.model))
        usermodel.probe(task.model, first, task.info["num_classes"])
    optimizer = build_optimizer(cfg.optim, [p for p in task.model.parameters() if p.requires_grad])
    steps_per_epoch = math.ceil(len(task.data.train_x) / cfg.train.batch_size)
    scheduler = build_scheduler(cfg.optim, optimizer, cfg.train.epochs, steps_per_epoch)
    n = min(cfg.train.batch_size, len(task.data.train_x))  # auto measures one training batch
    x = as_input(task.data.train_x[:n], device, is_conv(task.model))
    body, x = trained_part(task.model, x, len(task.data.train_x))  # of the layers the steps train
    chosen = precision.choose(cfg.train.precision, device, body, x, task.data.train_y[:n], task.loss)
    return device, task, optimizer, scheduler, chosen


def _metrics_log(cfg: Config, run_dir: Path) -> runs.MetricsLog:
    writer = runs.tensorboard_class()(str(run_dir / "tensorboard")) if cfg.log.tensorboard else None
    return runs.MetricsLog(run_dir / "metrics.jsonl", writer)


def new_run(cfg: Config, task: Task, device: torch.device, chosen: precision.Choice,
            source: dict | None, reporter: Reporter, run_dir: Path | None, lease: runs.Lease) -> Run:
    """A new run directory with its config.yaml, env.json and a running summary.json."""
    made_here = run_dir is None
    run_dir = new_run_dir(cfg, run_dir, lease)
    header = [f"resolved config of this run; train it again with: mnistlab train {run_dir}/config.yaml"]
    if source and source.get("overrides"):
        header.append(f"made from {source.get('config')} with overrides: {' '.join(source['overrides'])}")
    data = task.data
    summary = {
        "name": cfg.name, "run_dir": str(run_dir), "task": cfg.task, "status": "running",
        "started": datetime.now().isoformat(timespec="seconds"), "ended": None,
        **runs.process_identity(), "executor": runs.executor_identity(), "config_hash": config_hash(cfg), "hash_version": HASH_VERSION,
        "source": source or {}, "params": count_parameters(task.model),
        "params_learned": count_parameters(task.model, learned_only=True), "device": str(device),
        "precision": chosen.name, "precision_reason": chosen.reason, "epochs": cfg.train.epochs,
        "epochs_completed": 0, "steps_completed": 0,
        "steps_per_epoch": math.ceil(len(data.train_x) / cfg.train.batch_size),
        "train_samples": len(data.train_x), "val_samples": len(data.val_x),
        "test_samples": len(data.test_x), "final": {}, "best": None, "result": None,
        "error": None, "wall_seconds": None, "train_seconds": 0.0, "resumes": [],
    }
    try:
        runs.atomic_write_text(run_dir / "config.yaml", yaml_comment(header) + to_yaml(cfg))
        if cfg.model.kind == "module" and task.builds_model:
            usermodel.save_copy(cfg.model, run_dir)
        runs.write_json(run_dir / "env.json", runs.environment(device, cfg.train.seed))
        run = Run(run_dir, summary, _metrics_log(cfg, run_dir), reporter)
        run.save_summary()
    except DiskError:
        if made_here:  # a new run that could not even be set up leaves nothing
            lease.release()
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run


def resume_run(run_dir: Path, task: Task, optimizer, scheduler, state: TrainState,
               device: torch.device, steps_per_epoch: int, reporter: Reporter) -> Run:
    """Load the last checkpoint whole, drop the records written after it, record the resume."""
    ckpt = runs.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    runs.remove_stale_tmp(run_dir)
    try:
        task.model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler"):
            scheduler.load_state_dict(ckpt["scheduler"])
        state.load_state_dict(ckpt.get("state") or legacy_state(ckpt, steps_per_epoch), device)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{run_dir}/checkpoints/last.pt: its saved state does not fit "
                              f"the model and optimizer its config describes ({first}); the "
                              "file was edited or mixed up, so the run cannot be resumed. "
                              "Train it again.") from None
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():  # steps redone after a kill -9 are logged once, by the resumed run
        lines = metrics.read_text(encoding="utf-8").splitlines()
        kept = [r for r in runs.read_metrics(metrics)
                if r.get("event") != "final" and r.get("step", 0) <= state.global_step]
        if len(kept) != len(lines):
            runs.atomic_write_text(metrics, "".join(json.dumps(r) + "\n" for r in kept))
    summary = runs.read_summary(run_dir)
    summary.setdefault("resumes", []).append({
        "at": datetime.now().isoformat(timespec="seconds"), "epoch": state.epoch,
        "step": state.global_step, "argv": sys.argv, **runs.process_identity()})
    summary.update(status="running", ended=None, error=None, **runs.process_identity(),
                   executor=runs.executor_identity())
    cfg = config_from_dict(ckpt["config"])
    run = Run(run_dir, summary, _metrics_log(cfg, run_dir), reporter)
    run.save_summary()
    return run


def end_epoch(cfg: Config, task: Task, state: TrainState, run: Run, optimizer, scheduler,
              device: torch.device, bf16: bool, epoch_seconds: float) -> None:
    """Log the epoch's train and val records, then checkpoint (last, and best when it improved)."""
    epoch, data = state.epoch + 1, task.data
    state.seconds += epoch_seconds
    state.epoch_seconds = 0.0
    lr = optimizer.param_groups[0]["lr"]
    train_rec = {"event": "epoch", "epoch": epoch, "step": state.global_step, "split": "train",
                 **state.sums.means(), "lr": lr, "elapsed": round(state.seconds, 3),
                 "images_per_s": round(state.sums.seen / max(epoch_seconds, 1e-9), 1)}
    run.log.write(train_rec)
    val_rec = None
    if len(data.val_x):
        t_eval = time.perf_counter()
        val = evaluate(task.model, task, data.val_x, data.val_y, cfg.train.eval_batch_size, device,
                       bf16=bf16)
        val_rec = {"event": "epoch", "epoch": epoch, "step": state.global_step, "split": "val",
                   **_metrics(val), "lr": lr, "elapsed": round(state.seconds, 3),
                   "eval_seconds": round(time.perf_counter() - t_eval, 3)}
        run.log.write(val_rec)
    state.epoch, state.step = epoch, 0
    state.sums, state.window = Sums(), Sums()
    state.epoch_shuffle = state.shuffle.get_state()
    improved = is_better(val_rec or train_rec, state.best)
    if improved:
        state.best = {"epoch": epoch, "val_accuracy": val_rec.get("accuracy") if val_rec else None,
                      "val_loss": val_rec["loss"] if val_rec else None,
                      "loss": (val_rec or train_rec)["loss"]}
    save_checkpoint(run, "last", cfg, task, optimizer, scheduler, state)
    if improved:
        save_checkpoint(run, "best", cfg, task, optimizer, scheduler, state)
    run.summary.update(final={"train": _metrics(train_rec), "val": _metrics(val_rec)},
                       epochs_completed=epoch, steps_completed=state.global_step,
                       train_seconds=round(state.seconds, 3), best=state.best)
    run.save_summary()
    run.reporter.epoch(train_rec, val_rec)


def save_checkpoint(run: Run, name: str, cfg: Config, task: Task, optimizer, scheduler,
                    state: TrainState) -> None:
    """checkpoints/<name>.pt: weights, optimizer, schedule and the whole TrainState."""
    runs.save_checkpoint(run.dir / "checkpoints" / f"{name}.pt", {
        "model": task.model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "state": state.state_dict(), "epoch": state.epoch, "config": to_dict(cfg),
        "data": task.info, "precision": run.summary["precision"]})


def yaml_comment(lines: list[str]) -> str:
    """Lines as YAML comments; a line break or control character the user typed is escaped."""
    return "".join("# " + re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]",
                                 lambda m: repr(m.group())[1:-1], line) + "\n" for line in lines)


def check_divergence(cfg: Config, state: TrainState, losses: list) -> None:
    """A NaN or infinite loss, or one grown a million-fold, ends the run as failed.

    The losses of the steps since the last check are read in one transfer, not one per step.
    """
    if not losses:
        return
    values = torch.stack([loss.float() for _, _, loss in losses]).tolist()
    where = [(epoch, step) for epoch, step, _ in losses]
    losses.clear()
    if state.first_loss is None:
        state.first_loss = values[0]
    for (epoch, step), loss in zip(where, values):
        if math.isfinite(loss) and loss <= 1e6 * max(state.first_loss, 1e-6):
            continue
        at = f"at epoch {epoch + 1}, step {step + 1} (optim.lr={cfg.optim.lr:g})"
        if not math.isfinite(loss):
            what = f"the training loss became {loss} {at}"
        else:
            what = f"the training loss grew from {state.first_loss:.4g} to {loss:.4g} {at}"
        raise Diverged(f"{what}: the run diverged and stopped as failed. Try a lower learning "
                       f"rate, e.g. optim.lr={cfg.optim.lr / 10:g}.")


def is_better(rec: dict, best: dict | None) -> bool:
    """Higher accuracy when there is one, else lower loss."""
    if best is None:
        return True
    if "accuracy" in rec and best.get("val_accuracy") is not None:
        return rec["accuracy"] > best["val_accuracy"]
    return rec["loss"] < best["loss"]


def _metrics(rec: dict | None) -> dict | None:
    return None if rec is None else {k: rec[k] for k in ("loss", "accuracy") if k in rec}


def resume_config(run_dir: Path) -> Config:
    """The resolved config a run was started with, read back from its last checkpoint."""
    ckpt = runs.load_checkpoint(Path(run_dir) / "checkpoints" / "last.pt")
    return config_from_dict(ckpt["config"])


# `import mnistlab.train` replaces the package's train() with this module: calling it still works
from .api import callable_module, train as _train  # noqa: E402

callable_module(__name__, _train)
