"""PyTorch: the training loop written out once (for epoch, for batch: forward, loss, backward,
step, log), the optimizers and schedules, and the first stage computed once."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
import types
from pathlib import Path

import torch

from .. import checkpoint, precision, rundir, usermodel
from ..compute import as_input, evaluate, is_conv, resolve_device
from ..config import Config, OptimConfig, optimizer_settings
from ..models import count_parameters, fit_whitening, frozen_head
from ..run import LOADING, Run, Session, check_divergence, scores
from ..tasks import TASKS, Task, build_task
from . import loop

NAME = "torch"
SUFFIX = ".pt"


def problems(cfg: Config) -> list[str]:
    """PyTorch trains every setting of the config."""
    return []


def facts() -> dict:
    """The platform as summary.json records it."""
    return {"name": NAME, "version": torch.__version__, "backend": None}


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


class EagerDynamo(types.ModuleType):
    """torch._dynamo, loaded only when something compiles: torch.optim without a 1.6 s import.

    An optimizer imports torch._dynamo the first time add_param_group, zero_grad, state_dict or
    step runs, only to keep those methods out of torch.compile (disable) and to break its graph
    around step (graph_break); run eagerly, both do nothing, and so do these two. The import
    (sympy, torch.distributed, torch.fx) was half of `mnistlab train configs/quadratic.yaml`.
    Anything else asked of it (torch.compile, torch.export) runs the real module's code in this
    very module object, as a lazy import does, and the methods handed out are forgotten.
    """

    def __init__(self) -> None:
        super().__init__("torch._dynamo")
        spec = importlib.util.find_spec("torch._dynamo")
        self.__spec__, self.__loader__, self.__file__ = spec, spec.loader, spec.origin
        self.__path__ = spec.submodule_search_locations  # its submodules import as usual
        self.__dict__["_eager"] = []  # the functions disable() returned as they are

    def graph_break(self, msg: str = "") -> None:
        pass

    def disable(self, fn=None, recursive: bool = True, *, reason=None, wrapping: bool = True):
        if fn is None:
            return lambda f: self.disable(f, recursive, reason=reason, wrapping=wrapping)
        self._eager.append(fn)  # torch caches what this returns on fn: forgotten when loaded
        return fn

    def __getattr__(self, name: str):
        if name.startswith("__") or any(os.path.exists(os.path.join(d, n)) for d in self.__path__
                                        for n in (name + ".py", name)):
            if name.startswith("__"):
                raise AttributeError(name)
            return importlib.import_module(f"torch._dynamo.{name}")  # a submodule, as import would
        eager = self.__dict__.pop("_eager", None)
        if eager is None:  # loaded already (or loading): a name it does not have
            raise AttributeError(f"module 'torch._dynamo' has no attribute {name!r}")
        for fn in eager:
            fn.__dict__.pop("__dynamo_disable", None)
        self.__spec__.loader.exec_module(self)  # the real torch._dynamo, in this module object
        return getattr(self, name)


def eager_optimizers() -> None:
    """torch.optim without importing torch._dynamo, unless something imported it already."""
    if "torch._dynamo" not in sys.modules:
        sys.modules["torch._dynamo"] = torch._dynamo = EagerDynamo()


def build_optimizer(cfg: OptimConfig, params) -> torch.optim.Optimizer:
    eager_optimizers()
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
        # PyTorch's defaults (loop.py names them for the other platforms)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=total,
                                                   cycle_momentum=loop.cycles_momentum(cfg))
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


FEATURE_CACHE_BYTES = 2**30  # the most a first stage's output over the training set may take


def fits_cache(first: torch.Tensor, n_train: int) -> bool:
    """Whether a first stage's output over n_train images fits FEATURE_CACHE_BYTES (first: its
    output for one batch), so that training_inputs can run it once instead of in every step."""
    return n_train * first[0].numel() * first.element_size() <= FEATURE_CACHE_BYTES


@torch.no_grad()
def training_inputs(model: torch.nn.Module, x: torch.Tensor, batch_size: int, device: torch.device,
                    bf16: bool, stage=None) -> tuple[torch.Tensor, torch.nn.Module]:
    """What the training steps feed to which layers: the training images to the whole model, or,
    where the model starts with a fitted first stage (a whitened conv, its pooling and activation),
    that stage's output for every image, computed once, to the layers above it. The same numbers
    either way, without running that stage in every step; at most FEATURE_CACHE_BYTES of them.
    stage(text, done, total) is told the images done before each batch (and may raise to stop)."""
    count = frozen_head(model)
    if not count:
        return x, model
    head, out = model[:count], None
    for i in range(0, len(x), batch_size):  # training-sized batches: they stay in the CPU's caches
        if stage is not None:
            stage("computing the frozen first stage", i, len(x))
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


def setup(cfg: Config, resume: Path | None = None, trust_run_code: bool = False, stage=None):
    """Threads, device and seed; the task (data on the device), optimizer, schedule and precision.

    A model.kind=module network meets one training batch here, before anything is written.
    stage(text, done=0, total=None): told what is being done (Session.stage: shown, and a stop
    request ends it there).
    """
    stage = stage or (lambda *args: None)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    if cfg.log.tensorboard:
        rundir.tensorboard_class()  # a missing package is reported before anything is written
    own_model = cfg.model.kind == "module" and TASKS[cfg.task].builds_model
    stage(LOADING)
    task = build_task(cfg, *usermodel.run_code(resume, trust_run_code) if own_model else ())
    if resume is None:  # a resumed run's fitted layers come from its checkpoint
        fit_whitening(task.model, task.data.train_x, stage)
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
    if cfg.train.precision == "auto" and task.learns != "network":
        # bf16 keeps about 3 significant digits: a linear regression would stop 1e-2 short of
        # least squares, and timing noise would decide whether it does
        chosen = precision.Choice(False, "auto: the exercises train in fp32, the precision "
                                         "their answers are checked against")
    else:
        if cfg.train.precision == "auto":
            stage("choosing the precision (train.precision: auto)")
        chosen = precision.choose(cfg.train.precision, device, body, x, task.data.train_y[:n],
                                  task.loss)
    stage(None)  # set up: a stop request now ends the run before anything is written
    return device, task, optimizer, scheduler, chosen


def train(s: Session) -> None:
    """Train the session's config up to session.until; on a stop request, save and raise
    KeyboardInterrupt (the driver restores the caller's thread count)."""
    cfg = s.cfg
    device, task, optimizer, scheduler, chosen = setup(cfg, s.resume, s.trust_run_code, s.stage)
    model, data = task.model, task.data
    batch, n_train = cfg.train.batch_size, len(data.train_x)
    steps_per_epoch = math.ceil(n_train / batch)
    state = checkpoint.TrainState(cfg.train.seed)
    if s.resume is None:
        own_code = cfg.model.kind == "module" and task.builds_model
        run = s.open({"platform": facts(), "params": count_parameters(model),
                      "params_learned": count_parameters(model, learned_only=True),
                      "device": str(device), "precision": chosen.name,
                      "precision_reason": chosen.reason, "steps_per_epoch": steps_per_epoch,
                      "train_samples": n_train, "val_samples": len(data.val_x),
                      "test_samples": len(data.test_x)},
                     state, rundir.environment(device, cfg.train.seed),
                     (lambda d: usermodel.save_copy(cfg.model, d)) if own_code else None)
    else:
        checkpoint.restore(Path(s.resume) / "checkpoints" / "last.pt", model, optimizer, scheduler,
                           state, device, steps_per_epoch)
        run = s.reopen(state)
    bf16 = run.summary.get("precision", chosen.name) == "bf16"  # a resumed run keeps its own
    s.reporter.start({"run_dir": str(run.dir), "params": run.summary["params"], "device": str(device),
                      "threads": torch.get_num_threads(), "describe": task.describe(),
                      "rate_unit": task.rate_unit, "epochs": cfg.train.epochs, "task": cfg.task,
                      "steps_per_epoch": steps_per_epoch, "start_epoch": state.epoch,
                      "resumed": s.resume is not None, "start_step": state.step,
                      "global_step": state.global_step})
    s.model = model
    channels_last = is_conv(model)
    body, train_x = model, None  # the first epoch may find a fitted first stage to run once
    losses: list[tuple[int, int, torch.Tensor]] = []  # (epoch, step, loss) not yet checked
    model.train()
    t_epoch = time.perf_counter()
    try:
        for epoch in range(state.epoch, s.until):
            state.epoch_shuffle = state.shuffle.get_state()
            perm = torch.randperm(n_train, generator=state.shuffle).to(device)
            t_epoch = t_window = time.perf_counter()
            if train_x is None:  # inside the epoch's time: it is part of what training costs
                train_x, body = training_inputs(model, data.train_x, batch, device, bf16, s.stage)
            for step in range(state.step, steps_per_epoch):
                if s.stop.is_set():
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
                    check_losses(cfg, state, losses, steps_per_epoch)
                    now = time.perf_counter()
                    run.step({"epoch": epoch + 1, "step": state.global_step, **state.window.means(),
                              "lr": optimizer.param_groups[0]["lr"],
                              "elapsed": round(state.seconds + state.epoch_seconds + now - t_epoch, 3),
                              "images_per_s": round(state.window.seen / max(now - t_window, 1e-9), 1),
                              **extras})
                    state.window = checkpoint.Sums()
                    t_window = now
                if getattr(s.reporter, "shows_steps", False) and (step % 10 == 0 or step == steps_per_epoch - 1):
                    seconds = state.epoch_seconds + time.perf_counter() - t_epoch
                    means = state.sums.means()
                    s.reporter.step(epoch + 1, step + 1, steps_per_epoch, means["loss"],
                                    means.get("accuracy"), state.sums.seen / max(seconds, 1e-9))
            check_losses(cfg, state, losses, steps_per_epoch)
            end_epoch(cfg, task, state, run, optimizer, scheduler, device, bf16,
                      state.epoch_seconds + time.perf_counter() - t_epoch)
    except KeyboardInterrupt:
        check_losses(cfg, state, losses, steps_per_epoch)  # a diverged run is failed, not resumable
        # the epoch in progress resumes from this very batch: same permutation, same RNG
        state.epoch_seconds += time.perf_counter() - t_epoch
        save(run, "last", cfg, task, optimizer, scheduler, state)
        raise
    if s.until < cfg.train.epochs:
        return  # paused: last.pt is this epoch's, the schedule goes on from it
    if len(data.test_x):
        run.test(evaluate(model, task, data.test_x, data.test_y, cfg.train.eval_batch_size, device,
                          bf16=bf16))
    run.summary["result"] = task.result()


def check_losses(cfg: Config, state: checkpoint.TrainState, losses: list,
                 steps_per_epoch: int) -> None:
    """The divergence check on the losses logged since the last one, read in one transfer."""
    if not losses:
        return
    values = torch.stack([loss.float() for _, _, loss in losses]).tolist()
    checked = [(epoch, step, value) for (epoch, step, _), value in zip(losses, values)]
    losses.clear()
    check_divergence(cfg, state, checked, steps_per_epoch)


def end_epoch(cfg: Config, task: Task, state: checkpoint.TrainState, run: Run, optimizer, scheduler,
              device: torch.device, bf16: bool, epoch_seconds: float) -> None:
    """Log the epoch's train and val records, then checkpoint (last, and best when it improved)."""
    data = task.data
    train = {**state.sums.means(), "lr": optimizer.param_groups[0]["lr"],
             "images_per_s": round(state.sums.seen / max(epoch_seconds, 1e-9), 1)}
    val = None
    if len(data.val_x):
        t_eval = time.perf_counter()
        val = scores(evaluate(task.model, task, data.val_x, data.val_y, cfg.train.eval_batch_size,
                              device, bf16=bf16))
        val["eval_seconds"] = round(time.perf_counter() - t_eval, 3)
    improved = run.epoch_end(train, val, epoch_seconds)
    state.next_epoch()
    save(run, "last", cfg, task, optimizer, scheduler, state)
    if improved:
        save(run, "best", cfg, task, optimizer, scheduler, state)
    run.epoch_saved()


def save(run: Run, name: str, cfg: Config, task: Task, optimizer, scheduler,
         state: checkpoint.TrainState) -> None:
    """checkpoints/<name>.pt of the run."""
    checkpoint.save(run.dir / "checkpoints" / f"{name}{SUFFIX}", cfg, task.model, optimizer,
                    scheduler, state, task.info, run.summary["precision"])
