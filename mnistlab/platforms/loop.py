"""What the Keras, TensorFlow and JAX platforms record around their own steps, as the torch loop
does: step records every train.log_every batches, the live display, the divergence check, the
epoch's end (val scores, checkpoints last and best) and the test scores. Each platform keeps its
own idiom for the step itself (fit, a tf.function, jax.grad)."""

from __future__ import annotations

import math
import time

import torch

from ..compute import evaluate
from ..config import Config, optimizer_settings
from ..run import Run, Session, check_divergence, scores
from . import saved

CPU = torch.device("cpu")


class Steps:
    """Sums of the epoch and of the window since the last step record, from each batch's mean
    loss (and correct answers), as Python floats."""

    def __init__(self, s: Session, run: Run, steps_per_epoch: int, classes: bool):
        self.s, self.run, self.cfg = s, run, s.cfg
        self.steps_per_epoch, self.classes = steps_per_epoch, classes
        self.losses: list[tuple[int, int, float]] = []
        self.begin_epoch(run.progress.epoch)

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sums, self.seen = {"loss": 0.0, "accuracy": 0.0}, 0
        self.window, self.window_seen = {"loss": 0.0, "accuracy": 0.0}, 0
        self.t_epoch = self.t_window = time.perf_counter()

    def logs(self, step: int) -> bool:
        """Whether batch `step` (0-based, of the epoch) ends with a step record."""
        every = self.cfg.train.log_every
        return bool(every) and (step + 1) % every == 0

    def means(self, sums: dict, seen: int) -> dict:
        out = {"loss": sums["loss"] / max(seen, 1)}
        if self.classes:
            out["accuracy"] = sums["accuracy"] / max(seen, 1)
        return out

    def add(self, step: int, n: int, loss: float, correct: float, lr: float,
            extras: dict | None = None) -> None:
        """One batch of n samples done: its mean loss and its count of correct answers."""
        p = self.run.progress
        for sums in (self.sums, self.window):
            sums["loss"] += loss * n
            sums["accuracy"] += correct
        self.seen += n
        self.window_seen += n
        p.step, p.global_step = step + 1, p.global_step + 1
        self.losses.append((self.epoch, step, loss))
        if self.logs(step):
            self.check()
            now = time.perf_counter()
            self.run.step({"epoch": self.epoch + 1, "step": p.global_step,
                           **self.means(self.window, self.window_seen), "lr": lr,
                           "elapsed": round(p.seconds + now - self.t_epoch, 3),
                           "images_per_s": round(self.window_seen / max(now - self.t_window, 1e-9), 1),
                           **(extras or {})})
            self.window, self.window_seen, self.t_window = {"loss": 0.0, "accuracy": 0.0}, 0, now
        if getattr(self.s.reporter, "shows_steps", False) and (
                step % 10 == 0 or step == self.steps_per_epoch - 1):
            means = self.means(self.sums, self.seen)
            self.s.reporter.step(self.epoch + 1, step + 1, self.steps_per_epoch, means["loss"],
                                 means.get("accuracy"), self.seen / max(self.seconds(), 1e-9))

    def check(self) -> None:
        """The divergence check on the losses since the last one."""
        losses, self.losses = self.losses, []
        check_divergence(self.cfg, self.run.progress, losses, self.steps_per_epoch)

    def seconds(self) -> float:
        return time.perf_counter() - self.t_epoch

    def train_record(self, lr: float, seconds: float) -> dict:
        return {**self.means(self.sums, self.seen), "lr": lr,
                "images_per_s": round(self.seen / max(seconds, 1e-9), 1)}


def score(cfg: Config, task, model, x, y) -> dict | None:
    """Loss and the task's metrics of a split, through the same code as the torch platform and eval."""
    if not len(x):
        return None
    return evaluate(model, task, x, y, cfg.train.eval_batch_size, CPU)


def end_epoch(s: Session, run: Run, task, predictor, train: dict, epoch_seconds: float,
              save_last) -> None:
    """Val scores, the epoch's records, checkpoints last (and best when it improved)."""
    val = None
    if len(task.data.val_x):
        t_eval = time.perf_counter()
        val = scores(score(s.cfg, task, predictor, task.data.val_x, task.data.val_y))
        val["eval_seconds"] = round(time.perf_counter() - t_eval, 3)
    improved = run.epoch_end(train, val, epoch_seconds)
    save_last()
    if improved:
        saved.copy(run.dir, "last", "best")
    run.epoch_saved()


def test(s: Session, run: Run, task, predictor) -> None:
    """The test split's scores at the end of training (for tasks with a test split)."""
    if len(task.data.test_x):
        run.test(score(s.cfg, task, predictor, task.data.test_x, task.data.test_y))


def steps_per_epoch(cfg: Config, n_train: int) -> int:
    return math.ceil(n_train / cfg.train.batch_size)


# PyTorch's OneCycleLR defaults, which the torch platform's onecycle schedule uses
PCT_START, DIV_FACTOR, FINAL_DIV_FACTOR = 0.3, 25.0, 1e4
BASE_MOMENTUM, MAX_MOMENTUM = 0.85, 0.95


def cycles_momentum(o) -> bool:
    """Whether onecycle also cycles the momentum (beta1 for Adam): only where there is one, so
    that plain SGD never becomes momentum SGD."""
    return o.name in ("adam", "adamw") or optimizer_settings(o).get("momentum", 0) > 0


def one_cycle(o, total: int) -> dict:
    """The lr's and the momentum's (start, peak, end) of OneCycleLR for the optimizer's config."""
    start = o.lr / DIV_FACTOR
    return {"lr": (start, o.lr, start / FINAL_DIV_FACTOR),
            "momentum": (MAX_MOMENTUM, BASE_MOMENTUM, MAX_MOMENTUM), "total": total}


def one_cycle_at(step: int, total: int, start: float, peak: float, end: float) -> float:
    """OneCycleLR's value after `step` updates (two phases, cosine annealing), as PyTorch
    computes it: start to peak until step 0.3 * total - 1, then peak to end at step total - 1."""
    up_end = float(PCT_START * total) - 1
    if step <= up_end:
        pct, a, b = step / up_end, start, peak
    else:
        pct, a, b = (step - up_end) / (total - 1 - up_end), peak, end
    return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)


def lr_at(cfg: Config, steps_done: int, steps_per_epoch: int) -> float:
    """The learning rate of the next update after steps_done updates: PyTorch's none, step,
    cosine and onecycle schedules, as closed forms."""
    o = cfg.optim
    total = cfg.train.epochs * steps_per_epoch
    if o.schedule == "step":
        return o.lr * o.gamma ** (steps_done // (o.step_size * steps_per_epoch))
    if o.schedule == "cosine":
        return o.lr * 0.5 * (1 + math.cos(math.pi * min(steps_done, total) / total))
    if o.schedule == "onecycle":
        return one_cycle_at(steps_done, total, *one_cycle(o, total)["lr"])
    return o.lr


def start_info(s: Session, run: Run, task, threads: int, steps_per_epoch: int,
               describe: str | None = None) -> dict:
    return {"run_dir": str(run.dir), "params": run.summary["params"], "device": "cpu",
            "threads": threads, "describe": describe or task.describe(),
            "rate_unit": task.rate_unit, "epochs": s.cfg.train.epochs, "task": s.cfg.task,
            "steps_per_epoch": steps_per_epoch, "start_epoch": run.progress.epoch,
            "resumed": s.resume is not None, "start_step": run.progress.step,
            "global_step": run.progress.global_step}


def summary_facts(platform: dict, params: int, learned: int, chosen: tuple[str, str],
                  steps_per_epoch: int, task) -> dict:
    d = task.data
    return {"platform": platform, "params": params, "params_learned": learned, "device": "cpu",
            "precision": chosen[0], "precision_reason": chosen[1],
            "steps_per_epoch": steps_per_epoch, "train_samples": len(d.train_x),
            "val_samples": len(d.val_x), "test_samples": len(d.test_x)}
