"""The identity of a config: a short hash of the settings that can change what is learned, as the run reads them."""

from __future__ import annotations

import hashlib
import json

from ..tasks import DEFAULT as TASKS_DEFAULT
from ..tasks import TASKS
from .schema import (
    OPTIMIZER_SETTINGS,
    UNSET,
    Config,
    flatten,
    optimizer_settings,
    to_dict,
)

# settings that cannot change what is learned
NOT_LEARNED = ("name", "runs_dir", "train.threads", "train.device", "train.eval_batch_size", "log",
               "data.root", "data.download", "data.mirror")


# settings a choice leaves unread: choice key -> value -> keys (or sections) it ignores
UNREAD = {
    "platform": {"torch": ("keras",), "tensorflow": ("keras",), "jax": ("keras",)},
    "task": {name: task.unread for name, task in TASKS.items()},
    "model.kind": {"dense": ("model.channels", "model.kernel_size", "model.pool", "model.batch_norm",
                             "model.stride", "model.first_conv", "model.module", "model.args", "model.source_digest"),
                   "conv": ("model.hidden", "model.module", "model.args", "model.source_digest"),
                   # your own class: its file's digest is in, so changed code is a new experiment
                   "module": ("model.hidden", "model.activation", "model.dropout", "model.channels",
                              "model.kernel_size", "model.pool", "model.batch_norm",
                              "model.stride", "model.first_conv")},
    "optim.schedule": {"none": ("optim.step_size", "optim.gamma"),
                       "cosine": ("optim.step_size", "optim.gamma"),
                       "onecycle": ("optim.step_size", "optim.gamma")},
}


# settings added after hash_version 2: left out of the hash at their default, so that runs made
# before they existed keep their hash (and sweeps their trials)
ADDED_LATER = {"model.stride": [1, 1], "model.first_conv": "learned", "platform": "torch"}


HASH_VERSION = 2  # 1: every setting but name and runs_dir entered the hash


def config_hash(cfg: Config) -> str:
    """Short stable hash of the settings that can change what is learned, as the run reads them."""
    flat = flatten(to_dict(cfg))
    flat.update({f"optim.{k}": v for k, v in optimizer_settings(cfg.optim).items()})
    drop = list(NOT_LEARNED) + unread_keys(flat)
    drop += [key for key, default in ADDED_LATER.items() if flat.get(key) == default]
    kept = {k: v for k, v in flat.items() if not covers(drop, k)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]



def unread_keys(flat: dict) -> list[str]:
    """The keys and sections a flat config never reads: its task's, its model kind's, its
    optimizer's and schedule's (a run's config.yaml read back, or a resolved config)."""
    name = flat.get("optim.name")
    drop = [f"optim.{k}" for k in UNSET if name in OPTIMIZER_SETTINGS and k not in OPTIMIZER_SETTINGS[name]]
    for choice, by_value in UNREAD.items():
        value = flat.get(choice, TASKS_DEFAULT if choice == "task" else None)
        drop += by_value.get(value, ()) if isinstance(value, str) else ()
    return drop


def covers(prefixes, key: str) -> bool:
    """Whether key is one of the dotted keys or sections named."""
    return any(key == d or key.startswith(d + ".") for d in prefixes)
