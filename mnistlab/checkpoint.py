"""The torch training state and its checkpoint: one dict saved, verified and loaded whole; older checkpoints upgraded here."""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path

import torch

from . import tasks
from .config import Config, config_from_dict, to_dict
from .errors import CheckpointError, ConfigError
from .files import digest_ok, save_verified
from .run import Progress

CHECKPOINT_FORMAT = "mnistlab-checkpoint"


# torch's words (2.x) for a global it refused to import
_REFUSED = re.compile(r"GLOBAL \S+|Can only (build|create)")


_CODE_OPS = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"}


def _calls_code(path: Path) -> bool:
    """Does a complete pickle in the file import or call something? Read with pickletools, never run."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        else:
            data = path.read_bytes()
    except Exception:  # damaged bytes fail zipfile in many ways (even UnicodeDecodeError): no pickle
        return False
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):  # the legacy format holds several pickles in a row
            if any(op.name in _CODE_OPS for op, _, _ in pickletools.genops(stream)):
                return True
    except Exception:  # the rest is damaged, or raw tensor bytes: not a pickle
        pass
    return False


# the checkpoint's fields and their types; checked in one place so a crafted file fails here
CHECKPOINT_FIELDS = {
    "model": dict, "optimizer": dict, "scheduler": (dict, type(None)), "config": dict, "data": dict,
}


# the training state: train.TrainState's state_dict, or, in checkpoints written before it, fields
STATE_FIELDS = {"epoch": int, "step": int, "global_step": int, "seconds": (int, float),
                "epoch_seconds": (int, float), "best": (dict, type(None)), "shuffle": "tensor",
                "rng": dict, "sums": dict, "window": dict}


LEGACY_STATE_FIELDS = {"step": int, "shuffle_state": "tensor", "rng_state": "tensor",
                       "best": (dict, type(None)), "train_seconds": (int, float)}


# what eval and predict read of a classifier's data description
CLASSIFY_DATA_FIELDS = {"dataset": str, "mean": (int, float), "std": (int, float),
                        "image_shape": (list, tuple), "num_classes": int, "class_names": (list, tuple)}


def _schema_problems(ckpt: dict) -> list[str]:
    def check(mapping: dict, fields: dict, prefix: str = "") -> None:
        for key, kind in fields.items():
            value = mapping.get(key)
            if key not in mapping:
                problems.append(f"no {prefix}{key}")
            elif kind == "tensor":
                if not (isinstance(value, torch.Tensor) and value.dtype == torch.uint8):
                    problems.append(f"{prefix}{key} is a {type(value).__name__}, not a byte tensor")
            elif isinstance(value, bool) or not isinstance(value, kind):
                problems.append(f"{prefix}{key} is a {type(value).__name__}")

    problems: list[str] = []
    check(ckpt, CHECKPOINT_FIELDS)
    if isinstance(ckpt.get("state"), dict):
        state = ckpt["state"]
        check(state, STATE_FIELDS, "state.")
        if isinstance(state.get("rng"), dict):
            check(state["rng"], {"cpu": "tensor", "cuda": list}, "state.rng.")
    else:
        check(ckpt, {"epoch": int, **LEGACY_STATE_FIELDS})
    if isinstance(ckpt.get("model"), dict) and not all(
            isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        problems.append("model is not a dict of tensors")
    where = ckpt.get("state") if isinstance(ckpt.get("state"), dict) else ckpt
    for key in ("epoch", "step"):
        if isinstance(where.get(key), int) and where[key] < 0:
            problems.append(f"{key} is negative")
    config = ckpt.get("config")
    if isinstance(config, dict) and tasks.get(config.get("task")).has_classes and isinstance(
            ckpt.get("data"), dict):
        data = ckpt["data"]
        for key, kind in CLASSIFY_DATA_FIELDS.items():
            if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
                problems.append(f"data.{key} is missing or a {type(data.get(key)).__name__}")
        shape, names, n = data.get("image_shape"), data.get("class_names"), data.get("num_classes")
        if isinstance(shape, (list, tuple)) and (
                len(shape) != 3 or not all(isinstance(d, int) and 0 < d <= 4096 for d in shape)):
            problems.append("data.image_shape is not three positive sizes")
        if isinstance(names, (list, tuple)) and isinstance(n, int) and (
                len(names) != n or not all(isinstance(c, str) for c in names)):
            problems.append("data.class_names does not name num_classes classes")
    return problems


def load_checkpoint(path: Path) -> dict:
    """Load a mnistlab checkpoint without running any code it may hold, checked whole.

    Refused with a CheckpointError: damaged bytes, content that no longer matches its digest,
    objects that would run code, and a file that lacks a field or has one of the wrong type.
    """
    path = Path(path)
    fix = ("Point at a run directory or at checkpoints/last.pt or best.pt of a run made by "
           "'mnistlab train'.")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint. {fix}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols of foreign files
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _REFUSED.search(str(e)) or _calls_code(path):
            raise CheckpointError(
                f"{path}: refused: it holds objects other than tensors and plain data, so "
                f"loading it would run code; mnistlab checkpoints never do. Do not load it "
                f"elsewhere either unless you trust its source. {fix}") from None
        raise CheckpointError(f"{path}: is truncated or corrupt, not a readable PyTorch "
                              f"file. {fix}") from None
    except Exception as e:  # torch reports damaged files through many exception classes
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: is truncated or corrupt, not a readable PyTorch file "
                              f"({detail}). {fix}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: is a PyTorch file but not a mnistlab checkpoint "
                              f"(it has no mnistlab format marker). {fix}")
    if not digest_ok(ckpt):
        raise CheckpointError(
            f"{path}: its content no longer matches the digest written with it: the file was "
            "damaged (bit flips, a bad copy) or edited after it was saved, so it is not used. "
            "Use the run's other checkpoint (--ckpt best or last), or train the run again.")
    problems = _schema_problems(ckpt)
    if not problems:
        try:
            config_from_dict(ckpt["config"])
        except ConfigError as e:
            problems.append(f"its config is not valid ({e.problems[0]})")
    if problems:
        raise CheckpointError(
            f"{path}: is marked as a mnistlab checkpoint but is not a complete one: "
            f"{'; '.join(problems[:4])}. It was written by another program or version, or "
            "crafted. Use checkpoints/last.pt or best.pt of a run made by this version.")
    return ckpt

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


class TrainState(Progress):
    """All a torch resume needs besides model, optimizer and schedule: the progress, the shuffle
    and every RNG, and the partial sums of the epoch in progress."""

    def __init__(self, seed: int):
        super().__init__()
        self.shuffle = torch.Generator().manual_seed(seed)
        self.epoch_shuffle = self.shuffle.get_state()  # at the current epoch's start: redraws its order
        self.sums = Sums()  # of the current epoch
        self.window = Sums()  # since the last step record

    def next_epoch(self) -> None:
        """The sums start again and the shuffle's state is the new epoch's."""
        self.sums, self.window = Sums(), Sums()
        self.epoch_shuffle = self.shuffle.get_state()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "shuffle": self.epoch_shuffle, "rng": rng_states(),
                "sums": self.sums.state_dict(), "window": self.window.state_dict()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        super().load_state_dict(state)
        self.epoch_shuffle = state["shuffle"]
        self.shuffle.set_state(state["shuffle"])
        set_rng_states(state["rng"])
        self.sums.load_state_dict(state["sums"], device)
        self.window.load_state_dict(state["window"], device)


def upgrade(ckpt: dict, steps_per_epoch: int) -> dict:
    """The state of a checkpoint in today's form: a checkpoint written before TrainState kept its
    counters beside the weights (and not its partial sums)."""
    if ckpt.get("state"):
        return ckpt["state"]
    empty = {"values": {}, "seen": 0}
    return {"epoch": ckpt["epoch"], "step": ckpt["step"],
            "global_step": ckpt["epoch"] * steps_per_epoch + ckpt["step"],
            "seconds": ckpt.get("train_seconds", 0.0), "epoch_seconds": 0.0, "first_loss": None,
            "best": ckpt.get("best"), "shuffle": ckpt["shuffle_state"],
            "rng": {"cpu": ckpt["rng_state"], "cuda": []}, "sums": empty, "window": empty}


def epoch_of(ckpt: dict) -> int:
    """The epochs a loaded checkpoint had completed, in either form."""
    return ckpt["state"]["epoch"] if ckpt.get("state") else ckpt["epoch"]


def save(path: Path, cfg: Config, model, optimizer, scheduler, state: TrainState, info: dict,
         precision: str) -> None:
    """One checkpoint: weights, optimizer, schedule, the whole TrainState, the resolved config and
    what eval and predict need of the data; its content digest inside."""
    write(path, {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "state": state.state_dict(), "config": to_dict(cfg), "data": info, "precision": precision})


def write(path: Path, ckpt: dict) -> None:
    """A checkpoint dict saved with its format marker and the digest of its content."""
    save_verified(path, {"format": CHECKPOINT_FORMAT, **ckpt})


def restore(path: Path, model, optimizer, scheduler, state: TrainState, device: torch.device,
            steps_per_epoch: int) -> dict:
    """Load a checkpoint whole into model, optimizer, schedule and state; return it."""
    ckpt = load_checkpoint(path)
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler"):
            scheduler.load_state_dict(ckpt["scheduler"])
        state.load_state_dict(upgrade(ckpt, steps_per_epoch), device)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: its saved state does not fit the model and optimizer "
                              f"its config describes ({first}); the file was edited or mixed "
                              "up, so the run cannot be resumed. Train it again.") from None
    return ckpt
