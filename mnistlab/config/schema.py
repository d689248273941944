"""The config schema: typed sections with every default in one place, validated all at once."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import ConfigError, closest, did_you_mean
from ..tasks import DEFAULT, TASKS

TaskName = Literal[tuple(TASKS)]

def bounds(lo: float | None = None, hi: float | None = None, hi_open: bool = False) -> dict:
    """Field metadata: allowed numeric range (lo inclusive; hi inclusive unless hi_open)."""
    return {"lo": lo, "hi": hi, "hi_open": hi_open}


@dataclass
class ModelConfig:
    kind: Literal["dense", "conv", "module"] = "conv"
    # dense: sizes of the hidden layers; one hidden layer is the course's 2-layer network
    hidden: list[int] = field(default_factory=lambda: [256])
    activation: Literal["relu", "gelu", "tanh", "sigmoid"] = "relu"
    dropout: float = field(default=0.0, metadata=bounds(0, 1, hi_open=True))
    # conv: two conv layers (channels of each), then one dense layer to the classes
    channels: list[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = field(default=3, metadata=bounds(1, 15))
    pool: Literal["max", "avg", "none"] = "max"
    # each conv layer's stride: 2 halves the image in the conv itself (no pooling after that
    # layer), 1 keeps it and the pooling above halves it
    stride: list[int] = field(default_factory=lambda: [1, 1])
    batch_norm: bool = True
    # learned: trained like every layer; whitened: the first conv's filters are fitted to the
    # training images' patches (principal directions at unit variance, each with its negative)
    # and then frozen, so nothing is backpropagated below the second conv (bench/speed.py: 1.1x
    # to 1.3x faster per epoch than learned at the same channels)
    first_conv: Literal["learned", "whitened"] = "learned"
    # module: your own nn.Module class, FILE.py:Class (relative to the config file) or package.module:Class
    module: str | None = None
    args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of its constructor
    source_digest: str | None = None  # sha256 of the module's source, filled in when the config is loaded


# The optimizers, one entry each: what it reads besides lr, with its own default for a setting
# left null (PyTorch's). Each platform maps a name to its own class (platforms/pytorch.py,
# platforms/keras.py); optim.name's choices are this table's names.
OPTIMIZER_SETTINGS = {
    "sgd": {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    "adam": {"weight_decay": 0.0},
    "adamw": {"weight_decay": 0.0},
    "adadelta": {"weight_decay": 0.0},
    "rmsprop": {"momentum": 0.0, "weight_decay": 0.0},
    "manual": {},  # x <- x - lr * x.grad written out by hand (the course's gradient descent)
}
OptimizerName = Literal[tuple(OPTIMIZER_SETTINGS)]


@dataclass
class OptimConfig:
    name: OptimizerName = "adamw"  # one of OPTIMIZER_SETTINGS
    lr: float = field(default=3e-3, metadata=bounds(0, None))
    # null: the optimizer's own default (PyTorch's); only sgd and rmsprop have a momentum
    momentum: float | None = field(default=None, metadata=bounds(0, 1, hi_open=True))
    nesterov: bool = False  # sgd only, with a momentum
    weight_decay: float = field(default=0.0, metadata=bounds(0, None))
    schedule: Literal["none", "step", "cosine", "onecycle"] = "onecycle"
    step_size: int = field(default=1, metadata=bounds(1, None))  # epochs between decays (step)
    gamma: float = field(default=0.7, metadata=bounds(0, 1))  # decay factor (step)


@dataclass
class TrainConfig:
    epochs: int = field(default=3, metadata=bounds(1, None))
    batch_size: int = field(default=128, metadata=bounds(1, None))
    eval_batch_size: int = field(default=1000, metadata=bounds(1, None))
    seed: int = field(default=0, metadata=bounds(0, 2**63 - 1))  # what torch's generators take
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast for conv nets on CPUs with native bf16 (AMX, AVX512-BF16), else fp32
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    threads: int = field(default=0, metadata=bounds(0, 1024))  # 0: all cores
    val_split: float = field(default=0.1, metadata=bounds(0, 1, hi_open=True))
    label_smoothing: float = field(default=0.0, metadata=bounds(0, 1, hi_open=True))
    log_every: int = field(default=100, metadata=bounds(0, None))  # steps; 0: epochs only


@dataclass
class DataConfig:
    name: Literal["mnist", "fashion-mnist", "kmnist", "idx"] = "mnist"
    root: str | None = None  # None: ~/.cache/mnistlab, and Debian's dataset packages
    download: bool = True
    mirror: str | None = None  # base URL tried before torchvision's mirrors
    train_samples: int = field(default=0, metadata=bounds(0, None))  # 0: all
    test_samples: int = field(default=0, metadata=bounds(0, None))  # 0: all


@dataclass
class LogConfig:
    tensorboard: bool = False  # also write TensorBoard event files into RUN/tensorboard


@dataclass
class QuadraticConfig:
    x0: list[float] = field(default_factory=lambda: [3.0, -2.0])  # start point, any dimension


@dataclass
class LinregConfig:
    in_dim: int = field(default=10, metadata=bounds(1, 100_000))
    out_dim: int = field(default=3, metadata=bounds(1, 100_000))
    n: int = field(default=1000, metadata=bounds(2, 100_000_000))  # synthetic samples
    noise: float = field(default=0.1, metadata=bounds(0, None))  # std of the Gaussian noise
    csv: str | None = None  # a CSV file with a header row instead of synthetic data
    x_columns: list[str] = field(default_factory=list)
    y_columns: list[str] = field(default_factory=list)


@dataclass
class KerasConfig:
    # the backend Keras 3 computes with; tensorflow is the course's
    backend: Literal["tensorflow", "torch", "jax"] = "tensorflow"


@dataclass
class Config:
    name: str | None = None  # run name; default: the config file's stem
    runs_dir: str = "runs"
    # what trains it: torch (the loop written out), keras (compile/fit), tensorflow (a
    # GradientTape step in a tf.function) or jax (jax.grad); docs/platforms.md compares them
    platform: Literal["torch", "keras", "tensorflow", "jax"] = "torch"
    # what is learned, one of tasks.TASKS: classify (the MNIST family), quadratic (minimise
    # sum(x^2)) or linreg (fit Y = AX + B)
    task: TaskName = DEFAULT
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    log: LogConfig = field(default_factory=LogConfig)
    quadratic: QuadraticConfig = field(default_factory=QuadraticConfig)
    linreg: LinregConfig = field(default_factory=LinregConfig)
    keras: KerasConfig = field(default_factory=KerasConfig)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})" if value is not None else "null"


# what a list-valued setting looks like, for the error that asks for a list
LIST_EXAMPLES = {"model.hidden": "[256]", "model.channels": "[32, 64]", "model.stride": "[2, 1]",
                 "quadratic.x0": "[3.0, -2.0]", "linreg.x_columns": "[x1, x2]",
                 "linreg.y_columns": "[y]"}


def _convert(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Check one value against a type hint; return it converted, or record a problem."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path, problems)
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        allowed = ", ".join(str(a) for a in args)
        hint = ""
        if isinstance(value, str):  # ReLU -> relu too
            hint = did_you_mean(value.lower() if value.lower() in args else value, args, cutoff=0.5)
            hint = f"; {hint}" if hint else ""
        problems.append(f"{path}: {_describe(value)} is not allowed; choose one of: {allowed}{hint}")
        return None
    if tp is Any:
        return value
    if origin is dict:
        key_tp, value_tp = args
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, e.g. {{c1: 6, c2: 16}}, got {_describe(value)}")
            return None
        return {_convert(key_tp, k, path, problems): _convert(value_tp, v, _join(path, str(k)), problems)
                for k, v in value.items()}
    if origin is list:
        (inner,) = args
        if value is not None and not isinstance(value, (list, dict, bool)):
            value = [value]  # a scalar where a list is expected: quadratic.x0=5 is [5]
        if not isinstance(value, list):
            example = next((ex for key, ex in LIST_EXAMPLES.items() if path.endswith(key)), "[1, 2]")
            problems.append(f"{path}: expected a list, e.g. {example}, got {_describe(value)}")
            return None
        return [_convert(inner, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{path}: expected true or false, got {_describe(value)}")
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        problems.append(f"{path}: expected an integer, got {_describe(value)}")
        return None
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if not isinstance(value, int) or abs(value) < 2 ** 1023 else math.inf
        elif isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            problems.append(f"{path}: expected a number, got {_describe(value)}")
        elif not math.isfinite(number):
            problems.append(f"{path}: {value} is not a finite number; give an ordinary number")
            number = None
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{path}: expected a string, got {_describe(value)}")
        return None
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def _check_bounds(f: dataclasses.Field, value: Any, path: str, problems: list[str]) -> None:
    if "lo" not in f.metadata or not isinstance(value, (int, float)):
        return
    lo, hi, hi_open = f.metadata["lo"], f.metadata["hi"], f.metadata["hi_open"]
    if (lo is not None and value < lo) or (
        hi is not None and (value >= hi if hi_open else value > hi)
    ):
        high = "" if hi is None else (f" and below {hi}" if hi_open else f" and at most {hi}")
        problems.append(f"{path}: {value!r} is out of range; allowed: at least {lo}{high}")


@functools.cache
def _hints(cls: type) -> dict:
    """The field types of a config class, resolved once (a sweep builds thousands of configs)."""
    return typing.get_type_hints(cls)


def _build(cls: type, raw: Any, path: str, problems: list[str], cli_keys: dict[str, str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{path or 'config'}: expected a mapping of keys, got {_describe(raw)}")
        return cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    for key in raw:
        if key in fields:
            continue
        full = _join(path, str(key))
        close = closest(key, fields)
        elsewhere = [k for k in ALL_KEYS if k.rsplit(".", 1)[-1] == str(key)]
        if close:
            hint = f"did you mean {_join(path, close)}?"
        elif len(elsewhere) == 1:
            hint = f"did you mean {elsewhere[0]}?"
        else:
            hint = "valid keys here: " + ", ".join(fields)
        where = f" (from {cli_keys[full]})" if full in cli_keys else ""
        problems.append(f"{full}: unknown key{where}, {hint}")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        full = _join(path, name)
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, raw[name], full, problems, cli_keys)
            continue
        value = _convert(tp, raw[name], full, problems)
        if value is not None:
            _check_bounds(f, value, full, problems)
            values[name] = value
        elif raw[name] is None and type(None) in typing.get_args(tp):
            values[name] = None
    return cls(**values)


# sizes that can be allocated on an ordinary machine; beyond them PyTorch fails or the OOM killer acts
MAX_HIDDEN, MAX_LAYERS, MAX_CHANNELS = 16384, 64, 2048




# runs never go here
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/sbin",
               "/sys", "/usr")


def _check_consistency(cfg: Config, problems: list[str]) -> None:
    m = cfg.model
    if len(m.channels) != 2 or any(c is not None and not 1 <= c <= MAX_CHANNELS for c in m.channels):
        problems.append(
            f"model.channels: the conv network has exactly two conv layers, so give two "
            f"channel counts from 1 to {MAX_CHANNELS} such as [32, 64]; got {m.channels!r}")
    if len(m.hidden) > MAX_LAYERS or any(h is not None and not 1 <= h <= MAX_HIDDEN for h in m.hidden):
        problems.append(f"model.hidden: give at most {MAX_LAYERS} hidden layer sizes, each from 1 "
                        f"to {MAX_HIDDEN}, such as [256]; got {m.hidden!r}")
    split = cfg.train.val_split
    if cfg.data.train_samples and cfg.data.train_samples - round(cfg.data.train_samples * split) < 1:
        problems.append(f"data.train_samples: {cfg.data.train_samples} samples with train.val_split="
                        f"{split:g} leave no training sample; use more samples or a lower val_split")
    where = Path(os.path.abspath(Path(cfg.runs_dir).expanduser()))
    if where == Path("/") or any(where == Path(d) or Path(d) in where.parents for d in SYSTEM_DIRS):
        problems.append(f"runs_dir: {where} is a system directory; runs belong in a directory of "
                        "your own, e.g. runs_dir=runs or runs_dir=~/mnistlab-runs")
    if len(m.stride) != 2 or any(st is not None and st not in (1, 2) for st in m.stride):
        problems.append(f"model.stride: give the stride of each of the two conv layers, 1 or 2, "
                        f"such as [2, 1]; got {m.stride!r}")
    if m.kind == "conv" and m.first_conv == "whitened" and m.channels and m.channels[0] is not None \
            and (m.channels[0] % 2 or m.channels[0] > 2 * m.kernel_size ** 2):
        most = 2 * m.kernel_size ** 2
        problems.append(
            f"model.channels: a whitened first conv has one filter per direction of a "
            f"{m.kernel_size}x{m.kernel_size} patch and one per its negative, so an even number "
            f"of at most {most}; got {m.channels[0]}. Use e.g. model.channels=[{most}, "
            f"{m.channels[1] if len(m.channels) > 1 else 64}] or model.first_conv=learned")
    if m.kernel_size % 2 == 0:
        problems.append(
            f"model.kernel_size: {m.kernel_size} is even; use an odd size (3, 5, 7) so the "
            "image keeps its size before pooling")
    if m.kind == "module" and not m.module:
        problems.append("model.module: model.kind is module, so name your class, e.g. "
                        "model.module=models/lenet.py:Net (a file relative to the config file)")
    problems += TASKS[cfg.task].check(cfg)


# the values that mean "not set" for settings an optimizer may not read, as typed
UNSET = {"momentum": (None, "null"), "nesterov": (False, "false"), "weight_decay": (0.0, "0")}


def optimizer_settings(cfg: OptimConfig) -> dict:
    """The settings the chosen optimizer reads, a null replaced by its default."""
    return {key: default if getattr(cfg, key) is None else getattr(cfg, key)
            for key, default in OPTIMIZER_SETTINGS[cfg.name].items()}


def _check_unused(cfg: Config, problems: list[str], cli_keys: set[str]) -> None:
    """A setting the optimizer does not read is refused when typed on the command line, and
    dropped when it comes from a file: one base config serves a sweep over optimizers, and
    configs written before optim.momentum became null list momentum: 0.9 for every optimizer."""
    o = cfg.optim
    used = OPTIMIZER_SETTINGS[o.name]
    for key, (unset, typed) in UNSET.items():
        if key in used or not getattr(o, key):  # 0 and false mean none: harmless anywhere
            continue
        if f"optim.{key}" not in cli_keys:
            setattr(o, key, unset)
            continue
        readers = [name for name, keys in OPTIMIZER_SETTINGS.items() if key in keys]
        problems.append(f"optim.{key}: {o.name} does not use it ({key} is read by "
                        f"{', '.join(readers)}); drop optim.{key}={getattr(o, key)} (or give "
                        f"optim.{key}={typed}), or choose one of those optimizers")
    if o.name == "sgd" and o.nesterov and not o.momentum:
        problems.append("optim.nesterov: Nesterov momentum needs a momentum; set "
                        "optim.momentum, e.g. optim.momentum=0.9")


def _check_machine(cfg: Config, problems: list[str]) -> None:
    """What this machine must offer to train the config (not checked for a stored run's config)."""
    if cfg.train.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            problems.append("train.device: cuda, but PyTorch sees no CUDA GPU on this machine; "
                            "use train.device=cpu (or auto, which picks the GPU when there is one)")


def config_from_dict(raw: Any, cli_keys: set[str] | dict[str, str] = frozenset(),
                     machine: bool = False) -> Config:
    """Validate a plain mapping into a Config, raising ConfigError with every problem.

    cli_keys: the keys set on the command line (or, as a mapping, each key and where it was set:
    a sweep's swept keys come from its file or the command line);
    machine: also check that this machine can train it (a CUDA GPU for train.device=cuda).
    """
    problems: list[str] = []
    origins = cli_keys if isinstance(cli_keys, dict) else dict.fromkeys(cli_keys, "the command line")
    cfg = _build(Config, raw, "", problems, origins)
    _check_consistency(cfg, problems)
    _check_unused(cfg, problems, set(cli_keys))
    if machine:
        _check_machine(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config class, sections included."""
    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        out.append(prefix + f.name)
        if dataclasses.is_dataclass(tp):
            out += _all_keys(tp, f"{prefix}{f.name}.")
    return out


ALL_KEYS = tuple(_all_keys(Config))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class _Dumper(yaml.SafeDumper):
    """Sections as blocks, lists inline: channels: [32, 64]."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))


def to_yaml(cfg: Config, leave_out: list[str] = ()) -> str:
    """The config as YAML; leave_out: dotted keys and sections not written."""
    raw = to_dict(cfg)
    for key in leave_out:
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return yaml.dump(raw, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
