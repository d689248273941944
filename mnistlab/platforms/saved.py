"""The checkpoint of a Keras, TensorFlow or JAX run: the framework's own weights file beside a JSON
file (checkpoints/last.json, best.json) that names it with its sha256 and holds what a resume,
eval and predict need: platform facts, Progress, the resolved config, task.info, precision.

The weights file is named after the epoch it holds (last-e3.keras), written whole before the JSON
that points at it, and the file the JSON named before is deleted after: a kill at any moment
leaves a JSON and a weights file that agree. Both are verified on load.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import files
from ..config import Config, config_from_dict, to_dict
from ..errors import CheckpointError, ConfigError
from ..run import Progress

FORMAT = "mnistlab-platform-checkpoint"
FIX = ("Resume or evaluate from the run's other checkpoint (--ckpt best or last), or train the "
       "run again.")


def path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / "checkpoints" / f"{name}.json"


def sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digest(body: dict) -> str:
    """Of the JSON as it is read back."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save(run_dir: Path, name: str, suffix: str, write_weights: Callable[[Path], None], cfg: Config,
         facts: dict, progress: Progress, info: dict, precision: str, extra: dict | None = None) -> None:
    """checkpoints/<name>.json and the weights file write_weights(path) writes beside it."""
    folder = Path(run_dir) / "checkpoints"
    weights = folder / f"{name}-e{progress.epoch}{suffix}"
    json_path = folder / f"{name}.json"
    before = _referenced(json_path)
    if before == weights.name:  # already saved at this epoch: never rewrite the file it names
        return
    with files.writing(weights):
        write_weights(weights)
    body = {"format": FORMAT, "platform": facts, "weights": weights.name,
            "weights_sha256": sha256(weights), "progress": progress.state_dict(),
            "config": to_dict(cfg), "data": info, "precision": precision, "extra": extra or {}}
    body = json.loads(json.dumps(body, default=str))
    files.write_json(json_path, {**body, "digest": _digest(body)})
    if before and before != weights.name:
        (folder / before).unlink(missing_ok=True)


def copy(run_dir: Path, source: str, name: str) -> None:
    """checkpoints/<name>.json as a copy of <source>.json and its weights (best from last)."""
    folder = Path(run_dir) / "checkpoints"
    ckpt = load(folder / f"{source}.json")
    weights = folder / ckpt["weights"].replace(source, name, 1)
    before = _referenced(folder / f"{name}.json")
    if before == weights.name:
        return
    files.atomic_write_bytes(weights, (folder / ckpt["weights"]).read_bytes())
    body = {k: v for k, v in ckpt.items() if k not in ("digest", "weights_path", "state")}
    body["weights"] = weights.name
    files.write_json(folder / f"{name}.json", {**body, "digest": _digest(body)})
    if before:
        (folder / before).unlink(missing_ok=True)


def _referenced(json_path: Path) -> str | None:
    try:
        ckpt = files.read_json(json_path)
        return ckpt["weights"] if isinstance(ckpt, dict) and isinstance(ckpt.get("weights"), str) else None
    except (OSError, ValueError):
        return None


FIELDS = {"platform": dict, "weights": str, "weights_sha256": str, "progress": dict,
          "config": dict, "data": dict, "precision": str, "extra": dict}


def load(json_path: Path) -> dict:
    """The checkpoint's JSON, verified: its own digest, its fields, its config and the sha256 of
    the weights file it names; ckpt["weights_path"] is that file."""
    json_path = Path(json_path)
    if not json_path.is_file():
        raise CheckpointError(f"{json_path}: no such checkpoint. Point at a run directory or at "
                              "checkpoints/last.json or best.json of a run made by 'mnistlab train'.")
    try:
        ckpt = json.loads(json_path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{json_path}: is truncated or corrupt, not readable JSON. {FIX}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{json_path}: is not a mnistlab checkpoint (it has no mnistlab "
                              f"format marker). {FIX}")
    body = {k: v for k, v in ckpt.items() if k != "digest"}
    if ckpt.get("digest") != _digest(body):
        raise CheckpointError(
            f"{json_path}: its content no longer matches the digest written with it: the file was "
            f"damaged or edited after it was saved, so it is not used. {FIX}")
    problems = [f"{key} is missing or a {type(ckpt.get(key)).__name__}"
                for key, kind in FIELDS.items() if not isinstance(ckpt.get(key), kind)]
    if not problems:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", ckpt["weights"]) or ckpt["weights"].startswith("."):
            problems.append("weights is not a file name in its folder")
        if set(ckpt["progress"]) != set(Progress.KEYS):
            problems.append("progress does not hold the run's counters")
        try:
            config_from_dict(ckpt["config"])
        except ConfigError as e:
            problems.append(f"its config is not valid ({e.problems[0]})")
    if problems:
        raise CheckpointError(f"{json_path}: is marked as a mnistlab checkpoint but is not a "
                              f"complete one: {'; '.join(problems[:4])}. {FIX}")
    weights = json_path.parent / ckpt["weights"]
    if not weights.is_file():
        raise CheckpointError(f"{json_path}: the weights file it names, {weights.name}, is missing "
                              f"from {json_path.parent}. {FIX}")
    if sha256(weights) != ckpt["weights_sha256"]:
        raise CheckpointError(
            f"{weights}: does not match the sha256 recorded in {json_path.name}: the weights file "
            f"was damaged, truncated, edited or swapped after it was saved, so it is not used. {FIX}")
    ckpt["weights_path"] = weights
    ckpt["state"] = ckpt["progress"]  # what checkpoint.epoch_of reads
    return ckpt


def write_npz(path: Path, arrays: dict) -> None:
    """Named arrays as one .npz weights file, written atomically (the TensorFlow and JAX format)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    files.atomic_write_bytes(path, buffer.getvalue())


def read_npz(ckpt: dict) -> dict:
    """The named arrays of a verified checkpoint's .npz weights file."""
    try:
        with np.load(ckpt["weights_path"], allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt['weights_path']}: numpy cannot read it ({e}). {FIX}") from None


def progress_of(ckpt: dict) -> Progress:
    progress = Progress()
    progress.load_state_dict(ckpt["progress"])
    return progress


def config_of(ckpt: dict) -> Config:
    return config_from_dict(ckpt["config"])


class Predictor(nn.Module):
    """A Keras, TensorFlow or JAX model seen as a torch module: NCHW (or [N, in]) float32 tensors
    in, its outputs out. Training and eval score through it with compute.evaluate, so a run's
    test accuracy and 'mnistlab eval' on it are the same computation."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray]):
        super().__init__()
        self.predict = predict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.predict(x.detach().cpu().float().numpy())
        return torch.from_numpy(np.array(out, dtype=np.float32)).to(x.device)  # a writable copy


def arrays(task) -> dict:
    """The task's splits as float32/int64 numpy arrays (images stay NCHW here)."""
    d = task.data
    return {k: getattr(d, k).cpu().numpy() for k in
            ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}


def permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of an epoch's samples: a function of seed and epoch only, so a resume is exact."""
    return np.random.default_rng([seed, epoch]).permutation(n)
