"""TensorFlow 2: the training step written out under tf.GradientTape inside a tf.function, the
traced graph that is the modern form of TF1's declarative style (its op count and op types go into
summary.json as "graph" and are shown when the run starts).

The network is the Keras one of platforms/keras.py (Keras is TensorFlow's layers API), started
from the same PyTorch-initialised values; Y = AX + B and the point x are plain tf.Variables; the
loss is tf.nn.softmax_cross_entropy_with_logits, the slides' op; the optimizers are Keras's (and
manual: x.assign_sub(lr * grad) written out). Checkpoints: last-eN.npz beside last.json, holding
the model's weights and the optimizer's variables as numpy arrays (np.load reads them anywhere).
"""

from __future__ import annotations

import collections

import numpy as np
import torch

from .. import rundir
from ..config import Config
from ..models import count_parameters
from ..run import LOADING, Progress, Session
from ..tasks import build_task
from ..tasks import get as task_class
from . import frameworks, loop, saved
from . import keras as kerasplatform

NAME = "tensorflow"
SUFFIX = ".npz"


def problems(cfg: Config) -> list[str]:
    """What the TensorFlow loop cannot honour of the config, found without importing it."""
    out = frameworks.extra_problems("platform", ["tensorflow", "keras"], "tensorflow")
    out += frameworks.keras_backend_problem("tensorflow", "platform")
    out += kerasplatform.shared_problems(cfg, "the TensorFlow loop", optimizers=False)
    if cfg.optim.name == "manual" and task_class(cfg.task).learns == "network":
        out.append("optim.name: manual is the exercises' hand-written gradient descent; train "
                   "a network with optim.name=sgd (the same update) or another optimizer")
    return out


def facts() -> dict:
    import tensorflow as tf

    return {"name": NAME, "version": tf.__version__, "backend": None}


class Learner:
    """What the step trains: its variables, its forward pass and its loss, for the task's kind."""

    def __init__(self, tf, keras, cfg: Config, task, bf16: bool, stage=None):
        self.tf, self.learns = tf, task.learns
        self.smoothing = cfg.train.label_smoothing
        if self.learns == "network":
            from ..models import fit_whitening

            if len(task.data.train_x):  # a checkpoint's model gets its fitted values from the file
                fit_whitening(task.model, task.data.train_x, stage)
            self.model = kerasplatform.network(keras, cfg, task.info, task.model, bf16)
            self.classes = task.info["num_classes"]
            self.variables = self.model.trainable_variables
            self.all = self.model.weights
        elif self.learns == "linear":
            self.w = tf.Variable(task.model.weight.detach().T.numpy(), name="A")  # [in, out]
            self.b = tf.Variable(task.model.bias.detach().numpy(), name="B")
            self.variables = self.all = [self.w, self.b]
        else:
            self.x = tf.Variable(task.model.x.detach().numpy(), name="x")
            self.variables = self.all = [self.x]

    def forward(self, x, training: bool):
        tf = self.tf
        if self.learns == "network":
            return self.model(x, training=training)
        if self.learns == "linear":
            return tf.matmul(x, self.w) + self.b
        return tf.reduce_sum(self.x ** 2)  # f(x) = sum(x^2); the input is ignored

    def loss(self, out, y):
        tf = self.tf
        if self.learns == "network":
            labels = tf.one_hot(y, self.classes) * (1 - self.smoothing) + self.smoothing / self.classes
            return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels, tf.cast(out, tf.float32)))
        if self.learns == "linear":
            return tf.reduce_mean(tf.square(out - y))
        return out

    def correct(self, out, y):
        tf = self.tf
        if self.learns != "network":
            return tf.constant(0, tf.int64)
        return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(out, 1), y), tf.int64))

    def write_back(self, task) -> None:
        """The trained values into the task's torch model, whose result() reports them."""
        with torch.no_grad():
            if self.learns == "linear":
                task.model.weight.copy_(torch.from_numpy(self.w.numpy().T.copy()))
                task.model.bias.copy_(torch.from_numpy(self.b.numpy()))
            elif self.learns == "point":
                task.model.x.copy_(torch.from_numpy(self.x.numpy()))

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = self.forward(self.tf.constant(kerasplatform.nhwc(x)), training=False)
        return np.asarray(out, dtype=np.float32)


def make_step(tf, learner: Learner, optimizer, cfg: Config):
    """The training step, traced once into a graph by tf.function."""
    manual = cfg.optim.name == "manual"

    def step(x, y, lr):
        with tf.GradientTape() as tape:
            out = learner.forward(x, training=True)
            loss = learner.loss(out, y)
        grads = tape.gradient(loss, learner.variables)
        if manual:  # the course's gradient descent, written out
            for v, g in zip(learner.variables, grads):
                v.assign_sub(lr * g)
        else:
            optimizer.apply_gradients(zip(grads, learner.variables))
        return loss, learner.correct(out, y), grads[0]

    return tf.function(step)


def graph_of(traced) -> dict:
    """The op count and op types of a traced step's graph."""
    ops = traced.graph.get_operations()
    types = collections.Counter(op.type for op in ops)
    return {"ops": len(ops), "types": dict(types.most_common())}


def train(s: Session) -> None:
    cfg = s.cfg
    tf = frameworks.tensorflow(cfg.train.threads)
    keras = frameworks.keras("tensorflow", cfg.train.threads, "tensorflow")
    if cfg.log.tensorboard:
        rundir.tensorboard_class()
    frameworks.seed_all(cfg.train.seed, "tensorflow")
    torch.manual_seed(cfg.train.seed)  # the torch model whose values start every platform
    s.stage(LOADING)
    task = build_task(cfg)
    arr = saved.arrays(task)
    x_train = tf.constant(kerasplatform.nhwc(arr["train_x"]))
    y_train = tf.constant(arr["train_y"])
    n_train = len(arr["train_x"])
    steps_per_epoch = loop.steps_per_epoch(cfg, n_train)
    chosen = kerasplatform.choose_precision(cfg, task.learns, "tensorflow")
    learner = Learner(tf, keras, cfg, task, chosen[0] == "bf16", s.stage)
    optimizer = None if cfg.optim.name == "manual" else kerasplatform.optimizer(keras, cfg, steps_per_epoch)
    if optimizer is not None:
        optimizer.build(learner.variables)
    step = make_step(tf, learner, optimizer, cfg)
    traced = step.get_concrete_function(
        tf.TensorSpec([None, *x_train.shape[1:]], x_train.dtype),
        tf.TensorSpec([None, *y_train.shape[1:]], y_train.dtype), tf.TensorSpec([], tf.float32))
    graph = graph_of(traced)
    threads = tf.config.threading.get_intra_op_parallelism_threads() or frameworks.cpus()
    s.stage(None)
    if s.resume is None:
        # parameters as PyTorch counts them (BatchNorm's moving statistics are not), of the same net
        params, learned = count_parameters(task.model), count_parameters(task.model, learned_only=True)
        env = {**rundir.environment("cpu", cfg.train.seed), "threads": threads, "framework": facts()}
        run = s.open({**loop.summary_facts(facts(), params, learned, chosen, steps_per_epoch, task),
                      "graph": graph}, Progress(), env)
        save_checkpoint(run, cfg, task, learner, optimizer)  # epoch 0
    else:
        ckpt = saved.load(saved.path(s.resume, "last"))
        restore(ckpt, learner, optimizer)
        run = s.reopen(saved.progress_of(ckpt))
    predictor = saved.Predictor(learner.predict)
    top = ", ".join(f"{t} x{n}" for t, n in list(graph["types"].items())[:6])
    s.reporter.start(loop.start_info(
        s, run, task, threads, steps_per_epoch,
        f"{task.describe()}; TensorFlow {tf.__version__}, the traced step is a graph of "
        f"{graph['ops']} ops ({top}, ...)"))
    s.model = getattr(learner, "model", None)  # a network's Keras model; variables otherwise
    steps = loop.Steps(s, run, steps_per_epoch, task.learns == "network")
    checkpointed = run.progress.state_dict()
    batch = cfg.train.batch_size
    for epoch in range(run.progress.epoch, s.until):
        order = tf.constant(saved.permutation(cfg.train.seed, epoch, n_train))
        steps.begin_epoch(epoch)
        for i in range(steps_per_epoch):
            if s.stop.is_set():  # resumed from the last epoch's checkpoint
                run.progress.load_state_dict(checkpointed)
                raise KeyboardInterrupt
            idx = order[i * batch:(i + 1) * batch]
            lr = loop.lr_at(cfg, run.progress.global_step, steps_per_epoch)
            logs = steps.logs(i)
            extras = {}
            if logs and task.learns == "point":  # x and autograd's gradient before the step
                x_before = learner.x.numpy()
            loss, correct, grad = step(tf.gather(x_train, idx), tf.gather(y_train, idx),
                                       tf.constant(lr, tf.float32))
            if logs and task.learns == "point":
                g = grad.numpy()
                extras = {"x": x_before.tolist(), "grad": g.tolist(),
                          "grad_error": float(np.abs(g - 2 * x_before).max())}
            steps.add(i, len(idx), float(loss), float(correct),
                      loop.lr_at(cfg, run.progress.global_step + 1, steps_per_epoch), extras)
        seconds = steps.seconds()
        steps.check()
        train = steps.train_record(loop.lr_at(cfg, run.progress.global_step, steps_per_epoch), seconds)
        loop.end_epoch(s, run, task, predictor, train, seconds,
                       lambda: save_checkpoint(run, cfg, task, learner, optimizer))
        checkpointed = run.progress.state_dict()
    if s.until < cfg.train.epochs:
        return
    loop.test(s, run, task, predictor)
    learner.write_back(task)
    run.summary["result"] = task.result()


def save_checkpoint(run, cfg: Config, task, learner: Learner, optimizer) -> None:
    def write(path):
        arrays = {f"model/{i}": np.asarray(v.numpy()) for i, v in enumerate(learner.all)}
        if optimizer is not None:
            arrays.update({f"optimizer/{i}": np.asarray(v.numpy())
                           for i, v in enumerate(optimizer.variables)})
        saved.write_npz(path, arrays)

    saved.save(run.dir, "last", SUFFIX, write, cfg, facts(), run.progress, task.info,
               run.summary["precision"])


def restore(ckpt: dict, learner: Learner, optimizer) -> None:
    from ..errors import CheckpointError

    arrays = saved.read_npz(ckpt)
    try:
        for i, v in enumerate(learner.all):
            v.assign(arrays[f"model/{i}"])
        if optimizer is not None:
            for i, v in enumerate(optimizer.variables):
                v.assign(arrays[f"optimizer/{i}"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{ckpt['weights_path']}: its arrays do not fit the model and "
                              f"optimizer its config describes ({e}). {saved.FIX}") from None


def predictor(ckpt: dict, cfg: Config) -> saved.Predictor:
    """The model of a checkpoint, for eval and predict."""
    tf = frameworks.tensorflow(0)
    keras = frameworks.keras("tensorflow", 0, "tensorflow")
    torch.manual_seed(cfg.train.seed)
    task = _shape_only_task(cfg, ckpt)
    learner = Learner(tf, keras, cfg, task, ckpt["precision"] == "bf16")
    restore(ckpt, learner, None)
    return saved.Predictor(learner.predict)


def _shape_only_task(cfg: Config, ckpt: dict):
    """A stand-in for the task with the torch model of the right shape and no data."""
    from types import SimpleNamespace

    from ..models import build_model

    info = ckpt["data"]
    model = build_model(cfg.model, tuple(info["image_shape"]), int(info["num_classes"]))
    empty = SimpleNamespace(train_x=torch.zeros(0, *info["image_shape"]))
    return SimpleNamespace(learns="network", model=model, info=info, data=empty)
