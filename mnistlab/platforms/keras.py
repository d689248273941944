"""Keras 3: Sequential, compile, fit, evaluate and predict as Keras users write them, on the
tensorflow (the course's), torch or jax backend; one callback forwards fit's batches to the run.

Initialisation: the network is built by PyTorch from the seed exactly as a torch run builds it
(weights and biases uniform in +-1/sqrt(fan_in), a whitened first conv fitted to the images) and
its values are copied into the Keras layers, so every platform starts from the same weights.
Each epoch's order is np.random.default_rng([seed, epoch]), passed to fit with shuffle=False, so
a resume from an epoch's checkpoint (a .keras file with the optimizer's state) is exact.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch

from .. import precision, rundir
from ..config import Config, optimizer_settings
from ..models import count_parameters
from ..run import LOADING, Progress, Session
from ..tasks import build_task
from ..tasks import get as task_class
from . import frameworks, loop, saved

NAME = "keras"
SUFFIX = ".keras"
BACKEND_MODULES = {"tensorflow": ["tensorflow"], "torch": [], "jax": ["jax"]}


def problems(cfg: Config) -> list[str]:
    """What Keras cannot honour of the config, found without importing it."""
    out = frameworks.extra_problems("platform", ["keras"] + BACKEND_MODULES[cfg.keras.backend], "keras")
    out += frameworks.keras_backend_problem(cfg.keras.backend, "keras.backend")
    learns = task_class(cfg.task).learns
    if learns == "point":
        out.append(f"task: {cfg.task} is gradient descent on a point x with the platform's "
                   "autograd, and Keras's fit trains models on data; use platform=tensorflow "
                   "(tf.GradientTape), platform=jax (jax.grad) or platform=torch")
    out += shared_problems(cfg, "Keras", optimizers=True)
    return out


def shared_problems(cfg: Config, who: str, optimizers: bool) -> list[str]:
    """Settings neither Keras nor the TensorFlow loop (which uses Keras's layers and optimizers)
    can honour."""
    out = []
    learns = task_class(cfg.task).learns
    m, o = cfg.model, cfg.optim
    if learns == "network" and m.kind == "module":
        out.append(f"model.kind: module is a PyTorch nn.Module class, which {who} cannot run; "
                   "use model.kind=dense or conv, or platform=torch")
    if optimizers and o.name == "manual":
        out.append(f"optim.name: manual writes x <- x - lr * grad by hand, which {who}'s fit does "
                   "not; use optim.name=sgd (the same update with no momentum), or "
                   "platform=tensorflow or jax")
    if cfg.train.device == "cuda":
        out.append(f"train.device: cuda, but {who} trains on the CPU in mnistlab (tensorflow-cpu); "
                   "use train.device=cpu or auto, or platform=torch for a GPU")
    if learns != "network" and cfg.train.precision == "bf16":
        out.append(f"train.precision: bf16, but {who} trains task={cfg.task} in fp32 (there is "
                   "nothing to gain on so small a model); use train.precision=fp32 or auto")
    return out


def facts() -> dict:
    import keras

    return {"name": NAME, "version": keras.__version__, "backend": keras.backend.backend()}


def choose_precision(cfg: Config, learns: str, backend: str) -> tuple[str, str]:
    """fp32 or bf16 (Keras's mixed_bfloat16: bf16 compute, float32 weights, logits and loss)."""
    p = cfg.train.precision
    if learns != "network":
        return "fp32", "the exercises train in fp32"
    if p != "auto":
        return p, "asked for (train.precision)"
    flags = precision.cpu_bf16_flags()
    if not flags:
        return "fp32", (f"auto: {precision.cpu_model()} has no native bf16 (no AMX, no "
                        "AVX512-BF16), so bf16 would be emulated and slower")
    if backend == "jax":
        return "fp32", ("auto: Keras on JAX measured no faster in mixed_bfloat16 than in fp32 "
                        f"on this CPU ({', '.join(flags)}), so fp32")
    return "bf16", (f"auto: this {precision.cpu_model()} computes bf16 natively "
                    f"({', '.join(flags)}): mixed_bfloat16, logits and loss in float32")


# ---- what the TensorFlow platform shares: the network, optimizers and schedules, in Keras ----

def network(keras, cfg: Config, info: dict, torch_model: torch.nn.Module, bf16: bool):
    """The config's dense or conv net as a Keras Sequential, NHWC, with the torch model's values."""
    m, L = cfg.model, keras.layers
    channels, height, width = info["image_shape"]
    policy = "mixed_bfloat16" if bf16 else "float32"
    layers = [keras.Input((height, width, channels))]
    if m.kind == "dense":
        layers.append(L.Flatten())
        for i, size in enumerate(m.hidden):
            layers.append(L.Dense(size, activation=m.activation, dtype=policy))
            if m.dropout:
                layers.append(L.Dropout(m.dropout, seed=cfg.train.seed + i))
    else:
        pool = {"max": L.MaxPooling2D, "avg": L.AveragePooling2D, "none": None}[m.pool]
        for i, (c_out, stride) in enumerate(zip(m.channels, m.stride)):
            whitened = i == 0 and m.first_conv == "whitened"  # fitted, frozen, without a bias
            if stride > 1:  # PyTorch's symmetric padding (TensorFlow's "same" pads one side more)
                layers.append(L.ZeroPadding2D(m.kernel_size // 2, dtype=policy))
            layers.append(L.Conv2D(c_out, m.kernel_size, strides=stride,
                                   padding="valid" if stride > 1 else "same",
                                   use_bias=not (m.batch_norm or whitened), dtype=policy,
                                   trainable=not whitened))
            if m.batch_norm:  # PyTorch's momentum and epsilon
                layers.append(L.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype=policy))
            layers.append(L.Activation(m.activation, dtype=policy))
            if pool is not None and stride == 1:
                layers.append(pool(2, dtype=policy))
        layers.append(L.Flatten())
        if m.dropout:
            layers.append(L.Dropout(m.dropout, seed=cfg.train.seed))
    layers.append(L.Dense(info["num_classes"], dtype="float32"))  # logits in float32
    model = keras.Sequential(layers)
    copy_weights(torch_model, model)
    return model


def copy_weights(torch_model: torch.nn.Module, model) -> None:
    """The torch model's values into the Keras model, layer by layer (NCHW to NHWC)."""
    ours = [mod for mod in torch_model.modules()
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear))]
    theirs = [layer for layer in model.layers if layer.weights]
    assert len(ours) == len(theirs), (ours, theirs)
    channels = None  # of the last conv: the flattened map's layout differs
    for mod, layer in zip(ours, theirs):
        t = {k: v.detach().float().cpu() for k, v in mod.state_dict().items()}
        if isinstance(mod, torch.nn.Conv2d):
            values = [t["weight"].permute(2, 3, 1, 0)] + ([t["bias"]] if "bias" in t else [])
            channels = mod.out_channels
        elif isinstance(mod, torch.nn.BatchNorm2d):
            values = [t["weight"], t["bias"], t["running_mean"], t["running_var"]]
        else:
            w = t["weight"]
            if channels is not None:  # in features (C, H, W) -> (H, W, C)
                w = w.reshape(len(w), channels, -1).permute(0, 2, 1).reshape(len(w), -1)
                channels = None
            values = [w.T, t["bias"]]
        layer.set_weights([v.numpy() for v in values])


def linear(keras, torch_linear: torch.nn.Linear):
    """Y = AX + B as one Dense layer, from the torch layer's values."""
    out_dim, in_dim = torch_linear.weight.shape
    model = keras.Sequential([keras.Input((in_dim,)), keras.layers.Dense(out_dim)])
    model.layers[-1].set_weights([torch_linear.weight.detach().T.numpy(),
                                  torch_linear.bias.detach().numpy()])
    return model


@functools.cache
def _with_l2(keras, base):
    """An optimizer class with PyTorch's weight_decay for sgd, adam, rmsprop and adadelta:
    weight_decay * w added to the gradient (Keras's own weight_decay is decoupled, as AdamW's)."""

    @keras.saving.register_keras_serializable(package="mnistlab", name=f"{base.__name__}L2")
    class WithL2(base):
        def __init__(self, l2: float = 0.0, **kwargs):
            super().__init__(**kwargs)
            self.l2 = l2

        def apply(self, grads, trainable_variables=None):
            if self.l2:
                variables = (self._trainable_variables if trainable_variables is None
                             else list(trainable_variables))
                grads = [g if g is None else g + self.l2 * keras.ops.convert_to_tensor(v)
                         for g, v in zip(grads, variables)]
            return super().apply(grads, trainable_variables)

        def get_config(self):
            return {**super().get_config(), "l2": self.l2}

    return WithL2


@functools.cache
def _one_cycle(keras):
    """PyTorch's OneCycleLR as a Keras schedule of the optimizer's step (loop.one_cycle_at in
    keras.ops, so that it runs inside fit's traced step on every backend)."""

    @keras.saving.register_keras_serializable(package="mnistlab", name="OneCycle")
    class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, start: float, peak: float, end: float, total_steps: int):
            self.start, self.peak, self.end, self.total_steps = start, peak, end, total_steps

        def __call__(self, step):
            ops = keras.ops
            up_end = float(loop.PCT_START * self.total_steps) - 1
            step = ops.cast(step, "float32")
            up = ops.less_equal(step, up_end)
            pct = ops.where(up, step / up_end, (step - up_end) / (self.total_steps - 1 - up_end))
            a = ops.where(up, self.start, self.peak)
            b = ops.where(up, self.peak, self.end)
            return b + (a - b) / 2.0 * (ops.cos(math.pi * pct) + 1)

        def get_config(self):
            return {"start": self.start, "peak": self.peak, "end": self.end,
                    "total_steps": self.total_steps}

    return OneCycle


@functools.cache
def _as_torch(keras, base):
    """An optimizer class that updates as PyTorch's does where Keras's differs: sgd and rmsprop
    apply the lr to the whole momentum buffer (Keras folds each step's lr into its velocity, the
    same only while the lr is constant) and rmsprop adds eps after the square root; with
    cycle_steps, onecycle's momentum (beta1 for Adam) follows the lr's cycle, as OneCycleLR sets
    it before each of PyTorch's steps. PyTorch's L2 weight_decay as in _with_l2."""
    k = keras.optimizers

    @keras.saving.register_keras_serializable(package="mnistlab", name=f"{base.__name__}AsTorch")
    class AsTorch(_with_l2(keras, base)):
        def __init__(self, cycle_steps: int = 0, **kwargs):
            super().__init__(**kwargs)
            self.cycle_steps, self.mu = cycle_steps, None
            self.cycle = (_one_cycle(keras)(loop.MAX_MOMENTUM, loop.BASE_MOMENTUM,
                                            loop.MAX_MOMENTUM, cycle_steps)
                          if cycle_steps else None)

        def _backend_update_step(self, grads, trainable_variables, learning_rate):
            # this step's momentum, once for all the variables
            self.mu = None if self.cycle is None else self.cycle(self.iterations)
            try:
                super()._backend_update_step(grads, trainable_variables, learning_rate)
            finally:
                self.mu = None

        def momentum_now(self, fixed):
            return fixed if self.mu is None else self.mu

        def update_step(self, gradient, variable, learning_rate):
            ops = keras.ops
            lr = ops.cast(learning_rate, variable.dtype)
            g = ops.cast(gradient, variable.dtype)
            i = self._get_variable_index(variable)
            if base is k.SGD:
                if self.momentum != 0:
                    mu = ops.cast(self.momentum_now(self.momentum), variable.dtype)
                    buf = self.momentums[i]
                    self.assign(buf, ops.add(ops.multiply(buf, mu), g))
                    g = ops.add(g, ops.multiply(buf, mu)) if self.nesterov else buf
                self.assign_sub(variable, ops.multiply(g, lr))
            elif base is k.RMSprop:
                square_avg = self._velocities[i]
                self.assign(square_avg, ops.add(ops.multiply(square_avg, self.rho),
                                                ops.multiply(ops.square(g), 1 - self.rho)))
                g = ops.divide(g, ops.add(ops.sqrt(square_avg), self.epsilon))
                if self.momentum > 0:
                    mu = ops.cast(self.momentum_now(self.momentum), variable.dtype)
                    buf = self._momentums[i]
                    self.assign(buf, ops.add(ops.multiply(buf, mu), g))
                    g = buf
                self.assign_sub(variable, ops.multiply(g, lr))
            elif self.mu is not None:  # Adam, AdamW: Keras's update with this step's beta1
                fixed, self.beta_1 = self.beta_1, self.momentum_now(self.beta_1)
                try:
                    super().update_step(gradient, variable, learning_rate)
                finally:
                    self.beta_1 = fixed
            else:
                super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            return {**super().get_config(), "cycle_steps": self.cycle_steps}

    return AsTorch


def custom_objects(keras) -> dict:
    bases = (keras.optimizers.SGD, keras.optimizers.Adam, keras.optimizers.RMSprop,
             keras.optimizers.Adadelta, keras.optimizers.AdamW)
    out = {f"mnistlab>{b.__name__}L2": _with_l2(keras, b) for b in bases}
    out.update({f"mnistlab>{b.__name__}AsTorch": _as_torch(keras, b) for b in bases})
    return {**out, "mnistlab>OneCycle": _one_cycle(keras)}


def schedule(keras, cfg: Config, steps_per_epoch: int):
    """PyTorch's schedules, stepped every batch, as Keras schedules of the optimizer's step."""
    o = cfg.optim
    total = cfg.train.epochs * steps_per_epoch
    if o.schedule == "step":
        return keras.optimizers.schedules.ExponentialDecay(
            o.lr, o.step_size * steps_per_epoch, o.gamma, staircase=True)
    if o.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(o.lr, total)
    if o.schedule == "onecycle":
        return _one_cycle(keras)(*loop.one_cycle(o, total)["lr"], total)
    return o.lr


def optimizer(keras, cfg: Config, steps_per_epoch: int):
    """The config's optimizer with PyTorch's defaults (eps, rho) where Keras's differ; sgd and
    rmsprop (and any optimizer under onecycle) through _as_torch."""
    o = cfg.optim
    lr, s = schedule(keras, cfg, steps_per_epoch), optimizer_settings(o)
    k = keras.optimizers
    cycle_steps = (cfg.train.epochs * steps_per_epoch
                   if o.schedule == "onecycle" and loop.cycles_momentum(o) else 0)
    if o.name == "adamw":
        kwargs = {"weight_decay": s["weight_decay"], "epsilon": 1e-8}
        if cycle_steps:
            return _as_torch(keras, k.AdamW)(cycle_steps=cycle_steps, learning_rate=lr, **kwargs)
        return k.AdamW(lr, **kwargs)
    base, kwargs = {
        "sgd": (k.SGD, {"momentum": s.get("momentum", 0.0), "nesterov": s.get("nesterov", False)}),
        "adam": (k.Adam, {"epsilon": 1e-8}),
        "rmsprop": (k.RMSprop, {"rho": 0.99, "momentum": s.get("momentum", 0.0), "epsilon": 1e-8}),
        "adadelta": (k.Adadelta, {"rho": 0.9, "epsilon": 1e-6}),
    }[o.name]
    if base in (k.SGD, k.RMSprop) or cycle_steps:
        return _as_torch(keras, base)(cycle_steps=cycle_steps, l2=s.get("weight_decay", 0.0),
                                      learning_rate=lr, **kwargs)
    if s.get("weight_decay"):
        return _with_l2(keras, base)(l2=s["weight_decay"], learning_rate=lr, **kwargs)
    return base(lr, **kwargs)


def current_lr(keras, opt) -> float:
    return float(keras.ops.convert_to_numpy(opt.learning_rate))


def nhwc(x: np.ndarray) -> np.ndarray:
    """NCHW images (as the tasks hold them) to Keras's NHWC; other inputs as they are."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else x


def set_threads(backend: str, threads: int) -> None:
    """train.threads for the torch backend (TensorFlow's and JAX's are set at import); the driver
    restores the caller's count."""
    if backend == "torch" and threads:
        torch.set_num_threads(threads)


def threads_in_use(backend: str, threads: int) -> int:
    if backend == "torch":
        return torch.get_num_threads()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.config.threading.get_intra_op_parallelism_threads() or (threads or frameworks.cpus())
    return threads or frameworks.cpus()


# ---- training ----

def train(s: Session) -> None:
    cfg = s.cfg
    set_threads(cfg.keras.backend, cfg.train.threads)
    backend = cfg.keras.backend
    keras = frameworks.keras(backend, cfg.train.threads)
    if cfg.log.tensorboard:
        rundir.tensorboard_class()
    frameworks.seed_all(cfg.train.seed, backend)
    torch.manual_seed(cfg.train.seed)  # the torch model whose values start every platform
    s.stage(LOADING)
    task = build_task(cfg)
    learns = task.learns
    arr = saved.arrays(task)
    x_train = nhwc(arr["train_x"])
    if learns == "network":
        classes = task.info["num_classes"]
        y_train = np.eye(classes, dtype=np.float32)[arr["train_y"]]  # one-hot, as the slides' loss takes
    else:
        y_train = arr["train_y"]
    n_train = len(x_train)
    steps_per_epoch = loop.steps_per_epoch(cfg, n_train)
    chosen = choose_precision(cfg, learns, backend)
    if s.resume is None:
        if learns == "network":
            from ..models import fit_whitening

            fit_whitening(task.model, task.data.train_x, s.stage)
            model = network(keras, cfg, task.info, task.model, chosen[0] == "bf16")
            loss = keras.losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=cfg.train.label_smoothing)
            metrics = ["categorical_accuracy"]
        else:
            model = linear(keras, task.model)
            loss, metrics = "mse", []
        model.compile(optimizer=optimizer(keras, cfg, steps_per_epoch), loss=loss, metrics=metrics)
        # parameters as PyTorch counts them (BatchNorm's moving statistics are not), of the same net
        params, learned = count_parameters(task.model), count_parameters(task.model, learned_only=True)
        env = {**rundir.environment("cpu", cfg.train.seed),
               "threads": threads_in_use(backend, cfg.train.threads), "framework": facts()}
        s.stage(None)
        run = s.open(loop.summary_facts(facts(), params, learned, chosen,
                                        steps_per_epoch, task), Progress(), env)
        save_checkpoint(run, cfg, task, model)  # epoch 0: a stop in the first epoch resumes from here
    else:
        s.stage(None)
        ckpt = saved.load(saved.path(s.resume, "last"))
        model = load(keras, ckpt["weights_path"], compile=True)
        run = s.reopen(saved.progress_of(ckpt))
    predictor = saved.Predictor(lambda x: model.predict_on_batch(nhwc(x)))
    s.reporter.start(loop.start_info(s, run, task, threads_in_use(backend, cfg.train.threads),
                                     steps_per_epoch,
                                     f"{task.describe()}; Keras {keras.__version__} on {backend}"))
    s.model = model
    steps = loop.Steps(s, run, steps_per_epoch, learns == "network")
    checkpointed = run.progress.state_dict()
    forward = ToRun.make(keras)(steps, s, keras, n_train, cfg.train.batch_size)
    for epoch in range(run.progress.epoch, s.until):
        order = saved.permutation(cfg.train.seed, epoch, n_train)
        steps.begin_epoch(epoch)
        model.fit(x_train[order], y_train[order], batch_size=cfg.train.batch_size,
                  epochs=epoch + 1, initial_epoch=epoch, shuffle=False, verbose=0,
                  callbacks=[forward])
        seconds = steps.seconds()
        steps.check()
        if s.stop.is_set():  # fit stopped within the epoch: the last checkpoint is the last epoch's
            run.progress.load_state_dict(checkpointed)
            raise KeyboardInterrupt
        train = steps.train_record(current_lr(keras, model.optimizer), seconds)
        loop.end_epoch(s, run, task, predictor, train, seconds,
                       lambda: save_checkpoint(run, cfg, task, model))
        checkpointed = run.progress.state_dict()
    if s.until < cfg.train.epochs:
        return
    loop.test(s, run, task, predictor)
    if learns != "network":
        kernel, bias = model.layers[-1].get_weights()
        with torch.no_grad():
            task.model.weight.copy_(torch.from_numpy(kernel.T.copy()))
            task.model.bias.copy_(torch.from_numpy(bias))
    run.summary["result"] = task.result()


class ToRun:
    """The one callback: fit's batches become the run's step records and display; a stop request
    (Ctrl-C, SIGTERM) sets model.stop_training."""

    @staticmethod
    @functools.cache
    def make(keras):
        class Forward(keras.callbacks.Callback):
            def __init__(self, steps: loop.Steps, s: Session, k, n_train: int, batch: int):
                super().__init__()
                self.steps, self.s, self.k, self.n, self.batch = steps, s, k, n_train, batch
                self.before = (0.0, 0.0)

            def on_epoch_begin(self, epoch, logs=None):
                self.before = (0.0, 0.0)

            def on_train_batch_end(self, batch, logs=None):
                # fit's logs are the epoch's running means: the batch's own values are differences
                seen = min((batch + 1) * self.batch, self.n)
                n = seen - min(batch * self.batch, self.n)
                loss_sum = float(logs["loss"]) * seen
                correct_sum = float(logs.get("categorical_accuracy", 0.0)) * seen
                loss = (loss_sum - self.before[0]) / n
                correct = correct_sum - self.before[1]
                self.before = (loss_sum, correct_sum)
                lr = current_lr(self.k, self.model.optimizer) if self.steps.logs(batch) else None
                self.steps.add(batch, n, loss, round(correct), lr)
                if self.s.stop.is_set():
                    self.model.stop_training = True

        return Forward


def save_checkpoint(run, cfg: Config, task, model) -> None:
    saved.save(run.dir, "last", SUFFIX, lambda p: model.save(p), cfg, facts(), run.progress,
               task.info, run.summary["precision"])


def load(keras, path: Path, compile: bool):
    try:
        return keras.saving.load_model(path, custom_objects=custom_objects(keras), compile=compile)
    except Exception as e:  # Keras reports a file it cannot read through many exception classes
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        from ..errors import CheckpointError

        raise CheckpointError(f"{path}: Keras cannot load it ({detail}), though its sha256 "
                              f"matches its checkpoint's; it was written by another Keras "
                              f"version or backend. {saved.FIX}") from None


def predictor(ckpt: dict, cfg: Config) -> saved.Predictor:
    """The model of a checkpoint, for eval and predict."""
    keras = frameworks.keras(cfg.keras.backend, 0)
    model = load(keras, ckpt["weights_path"], compile=False)
    return saved.Predictor(lambda x: model.predict_on_batch(nhwc(x)))

