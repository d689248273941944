"""The one shared loop: fit() trains, evaluates each epoch and writes the run directory."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import shutil
import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from . import precision, runs, usermodel
from .config import Config, ConfigError, OptimConfig, config_from_dict, config_hash, to_dict, to_yaml
from .errors import CheckpointError, Diverged, DiskError, Interrupted, MnistlabError, RunError, TrainError
from .models import count_parameters
from .tasks import build_task, final_result, step_extras


class RunInterrupted(Interrupted):
    """Ctrl-C or SIGTERM: the run stopped after saving its state."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        super().__init__(f"interrupted; the last checkpoint is saved. Continue with: "
                         f"mnistlab train --resume {run_dir}")


class Reporter(Protocol):
    def start(self, info: dict) -> None: ...
    def step(self, epoch: int, step: int, steps: int, loss: float, accuracy: float,
             images_per_s: float) -> None: ...
    def epoch(self, train: dict, val: dict | None) -> None: ...
    def finish(self, summary: dict) -> None: ...


class Silent:
    """A reporter that shows nothing."""

    def start(self, info): pass
    def step(self, *args): pass
    def epoch(self, train, val): pass
    def finish(self, summary): pass


@contextlib.contextmanager
def stop_on_signals():
    """Ctrl-C and SIGTERM set the yielded event; the loop stops at the next batch boundary.

    A second signal raises KeyboardInterrupt at once.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def choose_precision(cfg: Config, device: torch.device, model: nn.Module, task,
                     channels_last: bool) -> precision.Choice:
    """fp32 or bf16 autocast, measured on one training batch of this very model when auto."""
    n = min(cfg.train.batch_size, len(task.data.train_x))
    x = as_input(task.data.train_x[:n], device, channels_last)
    return precision.choose(cfg.train.precision, device, model, x, task.data.train_y[:n].to(device),
                            task.loss)


def is_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def as_input(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch on the device, channels-last for conv nets (1.25x faster on CPU)."""
    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(["train.device: cuda, but PyTorch sees no CUDA GPU on this machine; "
                           "use train.device=cpu (or auto, which picks the GPU when there is one)"])
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adadelta":
        return torch.optim.Adadelta(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


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
        cycle = cfg.name in ("adam", "adamw") or (cfg.name in ("sgd", "rmsprop") and cfg.momentum > 0)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=total,
                                                   cycle_momentum=cycle)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             device: torch.device, num_classes: int | None = None, loss_fn=None,
             bf16: bool = False) -> dict:
    """Mean loss and accuracy on (x, y); with num_classes also the confusion matrix.

    With loss_fn (regression) only the mean loss is computed; bf16 as in training.
    """
    was_training = model.training
    model.eval()
    channels_last = is_conv(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loss_sum, correct = 0.0, 0
    confusion = torch.zeros(num_classes or 1, num_classes or 1, dtype=torch.long)
    for i in range(0, len(x), batch_size):
        xb, yb = as_input(x[i:i + batch_size], device, channels_last), y[i:i + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(xb).float()
        if loss_fn is not None:
            loss_sum += loss_fn(out, yb).item() * len(xb)
            continue
        loss_sum += F.cross_entropy(out, yb, reduction="sum").item()
        pred = out.argmax(1)
        correct += (pred == yb).sum().item()
        if num_classes:
            confusion += torch.bincount(yb.cpu() * num_classes + pred.cpu(),
                                        minlength=num_classes ** 2).view(num_classes, num_classes)
    model.train(was_training)
    out = {"loss": loss_sum / max(len(x), 1), "n": len(x)}
    if loss_fn is None:
        out["accuracy"] = correct / max(len(x), 1)
    if num_classes:
        out["confusion"] = confusion.tolist()
    return out


def fit(cfg: Config, reporter: Reporter | None = None, resume: Path | None = None,
        source: dict | None = None, run_dir: Path | None = None,
        trust_run_code: bool = False) -> dict:
    """Train cfg into a new run directory (or continue the run at resume); return its summary.

    With run_dir the run goes into that directory, idempotently: a new run there, the continuation
    of an interrupted one, or nothing at all for a completed one (its summary marked "untouched").
    Raises RunBusy when another live process writes the directory, Interrupted on Ctrl-C/SIGTERM
    and TrainError on divergence, both after saving. trust_run_code: a resumed model.kind=module
    run imports the copy of the code kept in its directory.
    """
    if cfg.model.kind == "module" and cfg.model.source_digest is None:  # made without load_config
        cfg = dataclasses.replace(cfg, model=usermodel.resolve(cfg.model, Path.cwd()))
    threads = torch.get_num_threads()
    try:
        with stop_on_signals() as stop, runs.Lease() as lease:
            if resume is not None or run_dir is not None:
                lease.acquire(Path(resume or run_dir))  # before anything is read or written
            if run_dir is not None:
                resume, done = in_run_dir(cfg, Path(run_dir))
                if done is not None:
                    return {**done, "untouched": True}
            return _fit(cfg, reporter, resume, source, stop, run_dir, lease, trust_run_code)
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
    recorded = summary.get("config_hash")
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


def _fit(cfg: Config, reporter: Reporter | None, resume: Path | None, source: dict | None,
         stop: threading.Event, run_dir: Path | None, lease: runs.Lease,
         trust_run_code: bool = False) -> dict:
    reporter = reporter or Silent()
    t_start = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    writer_class = runs.tensorboard_class() if cfg.log.tensorboard else None
    own_model = cfg.model.kind == "module" and cfg.task == "classify"
    task = build_task(cfg, usermodel.trusted_copy(resume, trust_run_code) if own_model else None)
    data, model = task.data, task.model.to(device)
    channels_last = is_conv(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if own_model:  # the user's class meets one batch before anything is written
        first = as_input(data.train_x[:cfg.train.batch_size], device, channels_last)
        usermodel.probe(model, first, data.num_classes)
    chosen = choose_precision(cfg, device, model, task, channels_last)
    bf16 = chosen.bf16
    loss_fn = None if task.classify else task.loss  # for evaluate()
    optimizer = build_optimizer(cfg.optim, model.parameters())
    batch = cfg.train.batch_size
    n_train = len(data.train_x)
    steps_per_epoch = math.ceil(n_train / batch)
    scheduler = build_scheduler(cfg.optim, optimizer, cfg.train.epochs, steps_per_epoch)
    shuffle = torch.Generator().manual_seed(cfg.train.seed)

    start_epoch, skip_steps, best, train_seconds = 0, 0, None, 0.0
    made_here = False
    if resume is None:
        made_here = run_dir is None
        run_dir = new_run_dir(cfg, run_dir, lease)
        header = [f"resolved config of this run; train it again with: mnistlab train {run_dir}/config.yaml"]
        if source and source.get("overrides"):
            header.append(f"made from {source.get('config')} with overrides: {' '.join(source['overrides'])}")
        started = datetime.now().isoformat(timespec="seconds")
    else:
        run_dir = Path(resume)
        started = runs.read_summary(run_dir).get("started")
        ckpt = runs.load_checkpoint(run_dir / "checkpoints" / "last.pt")
        runs.remove_stale_tmp(run_dir)
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if scheduler is not None and ckpt.get("scheduler"):
                scheduler.load_state_dict(ckpt["scheduler"])
            shuffle.set_state(ckpt["shuffle_state"])
            torch.set_rng_state(ckpt["rng_state"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{run_dir}/checkpoints/last.pt: its saved state does not fit "
                                  f"the model and optimizer its config describes ({first}); the "
                                  "file was edited or mixed up, so the run cannot be resumed. "
                                  "Train it again.") from None
        start_epoch, skip_steps = ckpt["epoch"], ckpt["step"]
        best, train_seconds = ckpt.get("best"), ckpt.get("train_seconds", 0.0)

    try:
        if resume is None:
            runs.atomic_write_text(run_dir / "config.yaml", yaml_comment(header) + to_yaml(cfg))
            if own_model:
                usermodel.save_copy(cfg.model, run_dir)
        runs.write_json(run_dir / "env.json", runs.environment(device, cfg.train.seed))
        log = runs.MetricsLog(run_dir / "metrics.jsonl",
                              writer_class(str(run_dir / "tensorboard")) if writer_class else None)
        summary = {
            "name": cfg.name, "run_dir": str(run_dir), "task": cfg.task, "status": "running",
            "started": started, "ended": None, **runs.process_identity(),
            "executor": runs.executor_identity(),
            "config_hash": config_hash(cfg), "source": source or {},
            "params": count_parameters(model), "device": str(device),
            "precision": chosen.name, "precision_reason": chosen.reason, "epochs": cfg.train.epochs,
            "epochs_completed": start_epoch, "train_samples": n_train, "val_samples": len(data.val_x),
            "test_samples": len(data.test_x), "final": {}, "best": best, "result": None,
            "error": None, "wall_seconds": None, "train_seconds": train_seconds,
        }
        runs.write_json(run_dir / "summary.json", summary)
    except DiskError:
        if resume is None and made_here:  # a new run that could not even be set up leaves nothing
            lease.release()
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    reporter.start({"run_dir": str(run_dir), "params": summary["params"], "device": str(device),
                    "threads": torch.get_num_threads(), "train_samples": n_train,
                    "val_samples": len(data.val_x), "epochs": cfg.train.epochs,
                    "steps_per_epoch": steps_per_epoch, "start_epoch": start_epoch,
                    "data": data.source, "name": cfg.name})

    def checkpoint(epoch: int, step: int, epoch_state: torch.Tensor) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "epoch": epoch, "step": step, "shuffle_state": epoch_state,
                "rng_state": torch.get_rng_state(), "best": best, "train_seconds": train_seconds,
                "config": to_dict(cfg), "data": task.info, "precision": chosen.name}

    def finish(status: str, error: str | None = None) -> dict:
        summary.update(status=status, error=error, best=best, train_seconds=train_seconds,
                       ended=datetime.now().isoformat(timespec="seconds"),
                       wall_seconds=round(time.perf_counter() - t_start, 3))
        try:
            runs.write_json(run_dir / "summary.json", summary)
        except DiskError as e:
            if error is None:
                raise
            raise DiskError(f"{error} The summary could not be marked {status} either "
                            f"({e.message()}), so the run will be listed as killed.") from None
        finally:
            log.close()
        reporter.finish(summary)
        return summary

    epoch, step, epoch_state = start_epoch, skip_steps, shuffle.get_state()
    global_step = start_epoch * steps_per_epoch + skip_steps
    first_loss = None
    model.train()
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            epoch_state = shuffle.get_state()
            perm = torch.randperm(n_train, generator=shuffle)
            first = skip_steps if epoch == start_epoch else 0
            t_epoch = time.perf_counter()
            loss_sum = correct = seen = 0
            w_loss = w_correct = w_seen = 0
            t_window = t_epoch
            for step in range(first, steps_per_epoch):
                if stop.is_set():
                    raise KeyboardInterrupt
                idx = perm[step * batch:(step + 1) * batch]
                xb, yb = as_input(data.train_x[idx], device, channels_last), data.train_y[idx].to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = model(xb)
                    loss = task.loss(out, yb)
                loss_value = loss.item()
                first_loss = loss_value if first_loss is None else first_loss
                check_divergence(cfg, loss_value, first_loss, epoch, step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                log_now = cfg.train.log_every and (step + 1) % cfg.train.log_every == 0
                extras = step_extras(cfg, task) if log_now else {}
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                global_step += 1
                n = len(idx)
                hits = (out.argmax(1) == yb).sum().item() if task.classify else 0
                loss_sum += loss_value * n; correct += hits; seen += n
                w_loss += loss_value * n; w_correct += hits; w_seen += n
                if log_now:
                    now = time.perf_counter()
                    log.write({"event": "step", "epoch": epoch + 1, "step": global_step,
                               "split": "train", "loss": w_loss / w_seen,
                               **({"accuracy": w_correct / w_seen} if task.classify else {}),
                               "lr": optimizer.param_groups[0]["lr"],
                               "elapsed": round(train_seconds + now - t_epoch, 3),
                               "images_per_s": round(w_seen / max(now - t_window, 1e-9), 1),
                               **extras})
                    w_loss = w_correct = w_seen = 0
                    t_window = now
                if step % 10 == 0 or step == steps_per_epoch - 1:
                    elapsed = time.perf_counter() - t_epoch
                    reporter.step(epoch + 1, step + 1, steps_per_epoch, loss_sum / seen,
                                  correct / seen if task.classify else None,
                                  seen / max(elapsed, 1e-9))
            epoch_seconds = time.perf_counter() - t_epoch
            train_seconds += epoch_seconds
            skip_steps = 0
            train_rec = {"event": "epoch", "epoch": epoch + 1, "step": global_step, "split": "train",
                         "loss": loss_sum / max(seen, 1),
                         **({"accuracy": correct / max(seen, 1)} if task.classify else {}),
                         "lr": optimizer.param_groups[0]["lr"], "elapsed": round(train_seconds, 3),
                         "images_per_s": round(seen / max(epoch_seconds, 1e-9), 1)}
            log.write(train_rec)
            val_rec = None
            if len(data.val_x):
                t_eval = time.perf_counter()
                val = evaluate(model, data.val_x, data.val_y, cfg.train.eval_batch_size, device,
                               loss_fn=loss_fn, bf16=bf16)
                val_rec = {"event": "epoch", "epoch": epoch + 1, "step": global_step, "split": "val",
                           **_metrics(val), "lr": train_rec["lr"], "elapsed": round(train_seconds, 3),
                           "eval_seconds": round(time.perf_counter() - t_eval, 3)}
                log.write(val_rec)
            summary["final"] = {"train": _metrics(train_rec), "val": _metrics(val_rec)}
            summary["epochs_completed"] = epoch + 1
            summary["train_seconds"] = train_seconds
            improved = is_better(val_rec or train_rec, best)
            if improved:
                best = {"epoch": epoch + 1,
                        "val_accuracy": val_rec.get("accuracy") if val_rec else None,
                        "val_loss": val_rec["loss"] if val_rec else None,
                        "loss": (val_rec or train_rec)["loss"]}
            state = checkpoint(epoch + 1, 0, shuffle.get_state())
            runs.save_checkpoint(run_dir / "checkpoints" / "last.pt", state)
            if improved:
                runs.save_checkpoint(run_dir / "checkpoints" / "best.pt", state)
            summary["best"] = best
            runs.write_json(run_dir / "summary.json", summary)
            reporter.epoch(train_rec, val_rec)
    except KeyboardInterrupt:
        # the epoch in progress resumes from this very batch: same permutation, same RNG
        done = global_step - epoch * steps_per_epoch
        try:
            runs.save_checkpoint(run_dir / "checkpoints" / "last.pt",
                                 checkpoint(epoch, done, epoch_state))
        except DiskError as e:
            finish("failed", e.message())
            raise
        finish("interrupted", "interrupted by a signal (Ctrl-C or SIGTERM); continue with "
               f"'mnistlab train --resume {run_dir}'")
        raise RunInterrupted(run_dir) from None
    except Diverged as e:
        finish("failed", str(e))
        raise
    except BaseException as e:
        finish("failed", e.message() if isinstance(e, MnistlabError) else f"{type(e).__name__}: {e}")
        raise

    try:
        if len(data.test_x):
            test = evaluate(model, data.test_x, data.test_y, cfg.train.eval_batch_size, device,
                            loss_fn=loss_fn, bf16=bf16)
            log.write({"event": "final", "epoch": cfg.train.epochs, "step": global_step,
                       "split": "test", **_metrics(test), "elapsed": round(train_seconds, 3)})
            summary["final"]["test"] = _metrics(test)
        summary["result"] = final_result(cfg, task)
    except DiskError as e:
        finish("failed", e.message())
        raise
    return finish("completed")


def yaml_comment(lines: list[str]) -> str:
    """Lines as YAML comments; a line break or control character the user typed is escaped."""
    return "".join("# " + re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]",
                                 lambda m: repr(m.group())[1:-1], line) + "\n" for line in lines)


def check_divergence(cfg: Config, loss: float, first_loss: float, epoch: int, step: int) -> None:
    """A NaN or infinite loss, or one grown a million-fold, ends the run as failed."""
    if math.isfinite(loss) and loss <= 1e6 * max(first_loss, 1e-6):
        return  # the common case, on every step: no message built
    where = f"at epoch {epoch + 1}, step {step + 1} (optim.lr={cfg.optim.lr:g})"
    if not math.isfinite(loss):
        what = f"the training loss became {loss} {where}"
    else:
        what = f"the training loss grew from {first_loss:.4g} to {loss:.4g} {where}"
    raise Diverged(f"{what}: the run diverged and stopped as failed. Try a lower learning rate, "
                   f"e.g. optim.lr={cfg.optim.lr / 10:g}.")


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
