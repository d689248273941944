"""JAX for the first exercises: gradient descent on x^2 and linear regression with jax.grad, the
update written out (sgd with PyTorch's momentum, nesterov and weight_decay; manual), jitted.

Networks are refused: Keras on the jax backend (platform=keras keras.backend=jax) trains them.
Checkpoints: last-eN.npz beside last.json (the parameters and the momentum buffers).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import rundir
from ..config import Config, optimizer_settings
from ..errors import CheckpointError
from ..run import LOADING, Progress, Session
from ..tasks import build_task
from ..tasks import get as task_class
from . import frameworks, loop, saved

NAME = "jax"
SUFFIX = ".npz"


def problems(cfg: Config) -> list[str]:
    """What the JAX exercises cannot honour of the config, found without importing JAX."""
    out = frameworks.extra_problems("platform", ["jax"], "jax")
    if task_class(cfg.task).learns == "network":
        out.append(f"platform: jax runs the first exercises (gradient descent on x^2, linear "
                   f"regression) with jax.grad, not task={cfg.task}'s network; train it on JAX "
                   "with platform=keras keras.backend=jax (Keras's layers, fit and optimizers on "
                   "JAX), or with platform=torch, keras or tensorflow")
        return out
    o = cfg.optim
    if o.name not in ("sgd", "manual"):
        out.append(f"optim.name: {o.name}, but the jax platform writes out sgd (with momentum, "
                   "nesterov and weight_decay) and manual only; use optim.name=sgd or manual, "
                   "or platform=tensorflow or torch")
    if o.schedule == "onecycle":
        out.append("optim.schedule: onecycle is not written out on the jax platform; use "
                   "optim.schedule=cosine, step or none (or platform=torch)")
    if cfg.train.device == "cuda":
        out.append("train.device: cuda, but the jax platform trains on the CPU; use "
                   "train.device=cpu or auto, or platform=torch")
    if cfg.train.precision == "bf16":
        out.append("train.precision: bf16, but the jax platform trains the exercises in fp32; "
                   "use train.precision=fp32 or auto")
    return out


def facts() -> dict:
    import jax

    return {"name": NAME, "version": jax.__version__, "backend": jax.default_backend()}


class Learner:
    """The parameters, loss and written-out update of the task's kind."""

    def __init__(self, jax, cfg: Config, task, steps_per_epoch: int):
        jnp = jax.numpy
        self.jax, self.jnp, self.learns = jax, jnp, task.learns
        if self.learns == "linear":
            self.params = {"A": jnp.asarray(task.model.weight.detach().T.numpy()),  # [in, out]
                           "B": jnp.asarray(task.model.bias.detach().numpy())}
        else:
            self.params = {"x": jnp.asarray(task.model.x.detach().numpy())}
        s = optimizer_settings(cfg.optim)
        self.momentum, self.nesterov = s.get("momentum", 0.0), s.get("nesterov", False)
        self.decay = s.get("weight_decay", 0.0)
        self.buffers = {k: jnp.zeros_like(v) for k, v in self.params.items()}

        def loss(params, x, y):
            if self.learns == "linear":
                return jnp.mean((x @ params["A"] + params["B"] - y) ** 2)
            return jnp.sum(params["x"] ** 2)  # f(x) = sum(x^2); the input is ignored

        def update(params, buffers, x, y, lr):
            value, grads = jax.value_and_grad(loss)(params, x, y)
            new_params, new_buffers = {}, {}
            for k, p in params.items():
                g = grads[k] + self.decay * p  # PyTorch's weight_decay: added to the gradient
                buf = buffers[k]
                if self.momentum:  # PyTorch's: from a zero buffer, the first is the gradient
                    buf = self.momentum * buf + g
                    g = g + self.momentum * buf if self.nesterov else buf
                new_params[k], new_buffers[k] = p - lr * g, buf
            return value, grads, new_params, new_buffers

        self.loss = jax.jit(loss)
        self.update = jax.jit(update)

    def step(self, x, y, lr: float):
        value, grads, self.params, self.buffers = self.update(self.params, self.buffers, x, y, lr)
        return value, grads

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The outputs for x: AX + B, or f(x) of the point (its input ignored)."""
        if self.learns == "linear":
            return x @ np.asarray(self.params["A"]) + np.asarray(self.params["B"])
        return np.sum(np.asarray(self.params["x"]) ** 2)

    def write_back(self, task) -> None:
        with torch.no_grad():
            if self.learns == "linear":
                task.model.weight.copy_(torch.from_numpy(np.asarray(self.params["A"]).T.copy()))
                task.model.bias.copy_(torch.from_numpy(np.asarray(self.params["B"]).copy()))
            else:
                task.model.x.copy_(torch.from_numpy(np.asarray(self.params["x"]).copy()))

    def arrays(self) -> dict:
        return {**{f"params/{k}": np.asarray(v) for k, v in self.params.items()},
                **{f"buffers/{k}": np.asarray(v) for k, v in self.buffers.items()}}

    def load_arrays(self, arrays: dict, where) -> None:
        jnp = self.jnp
        try:
            params = {k: jnp.asarray(arrays[f"params/{k}"]) for k in self.params}
            buffers = {k: jnp.asarray(arrays[f"buffers/{k}"]) for k in self.buffers}
        except KeyError as e:
            raise CheckpointError(f"{where}: it lacks the array {e}. {saved.FIX}") from None
        for k in params:
            if params[k].shape != self.params[k].shape or buffers[k].shape != self.params[k].shape:
                raise CheckpointError(f"{where}: its arrays do not fit the parameters its config "
                                      f"describes. {saved.FIX}")
        self.params, self.buffers = params, buffers


def train(session: Session) -> None:
    cfg = session.cfg
    jax = frameworks.jax(cfg.train.threads)
    if cfg.log.tensorboard:
        rundir.tensorboard_class()
    frameworks.seed_all(cfg.train.seed, "jax")
    torch.manual_seed(cfg.train.seed)  # the torch model whose values start every platform
    session.stage(LOADING)
    task = build_task(cfg)
    arr = saved.arrays(task)
    n_train = len(arr["train_x"])
    steps_per_epoch = loop.steps_per_epoch(cfg, n_train)
    learner = Learner(jax, cfg, task, steps_per_epoch)
    chosen = ("fp32", "the exercises train in fp32")
    s = session
    s.stage(None)
    if s.resume is None:
        params = sum(int(np.prod(v.shape)) for v in learner.params.values())
        env = {**rundir.environment("cpu", cfg.train.seed),
               "threads": cfg.train.threads or frameworks.cpus(), "framework": facts()}
        run = s.open(loop.summary_facts(facts(), params, params, chosen, steps_per_epoch, task),
                     Progress(), env)
        save_checkpoint(run, cfg, task, learner)  # epoch 0
    else:
        ckpt = saved.load(saved.path(s.resume, "last"))
        learner.load_arrays(saved.read_npz(ckpt), ckpt["weights_path"])
        run = s.reopen(saved.progress_of(ckpt))
    predictor = saved.Predictor(learner.predict)
    s.reporter.start(loop.start_info(s, run, task, cfg.train.threads or frameworks.cpus(),
                                     steps_per_epoch, f"{task.describe()}; JAX {jax.__version__}"))
    steps = loop.Steps(s, run, steps_per_epoch, False)
    checkpointed = run.progress.state_dict()
    batch = cfg.train.batch_size
    for epoch in range(run.progress.epoch, s.until):
        order = saved.permutation(cfg.train.seed, epoch, n_train)
        steps.begin_epoch(epoch)
        for i in range(steps_per_epoch):
            if s.stop.is_set():
                run.progress.load_state_dict(checkpointed)
                raise KeyboardInterrupt
            idx = order[i * batch:(i + 1) * batch]
            lr = loop.lr_at(cfg, run.progress.global_step, steps_per_epoch)
            x_before = np.asarray(learner.params["x"]) if task.learns == "point" else None
            loss, grads = learner.step(arr["train_x"][idx], arr["train_y"][idx], lr)
            extras = {}
            if steps.logs(i) and task.learns == "point":  # jax.grad's gradient against 2x
                g = np.asarray(grads["x"])
                extras = {"x": x_before.tolist(), "grad": g.tolist(),
                          "grad_error": float(np.abs(g - 2 * x_before).max())}
            steps.add(i, len(idx), float(loss), 0.0,
                      loop.lr_at(cfg, run.progress.global_step + 1, steps_per_epoch), extras)
        seconds = steps.seconds()
        steps.check()
        train_rec = steps.train_record(loop.lr_at(cfg, run.progress.global_step, steps_per_epoch),
                                       seconds)
        loop.end_epoch(s, run, task, predictor, train_rec, seconds,
                       lambda: save_checkpoint(run, cfg, task, learner))
        checkpointed = run.progress.state_dict()
    s.model = learner.params  # replaced by every step: the trained ones are the last
    if s.until < cfg.train.epochs:
        return
    loop.test(s, run, task, predictor)
    learner.write_back(task)
    run.summary["result"] = task.result()


def save_checkpoint(run, cfg: Config, task, learner: Learner) -> None:
    saved.save(run.dir, "last", SUFFIX, lambda path: saved.write_npz(path, learner.arrays()), cfg,
               facts(), run.progress, task.info, run.summary["precision"])
