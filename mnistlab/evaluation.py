"""Evaluate a trained run: rebuild the model from its checkpoint's own config and score one split."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from . import checkpoint, files, rundir, tasks
from .compute import evaluate, is_conv, resolve_device
from .config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    flatten,
    to_dict,
)
from .data import load_data
from .errors import CheckpointError, DataError, DiskError
from .models import build_model
from .precision import for_eval

# settings that change how a model is evaluated, never what was trained
EVAL_KEYS = ("data.name", "data.root", "data.download", "data.mirror", "data.train_samples",
             "data.test_samples", "train.eval_batch_size", "train.device", "train.threads")
SPLITS = ("test", "val", "train")
CKPTS = ("best", "last")
RUN_FIX = "Give a run directory made by 'mnistlab train' (list them with 'mnistlab runs')."


def find_checkpoint(target: Path, which: str | None) -> tuple[Path, Path | None]:
    """(checkpoint file, its run directory or None) for a run directory or a checkpoint file: a
    torch run's .pt, or a Keras, TensorFlow or JAX run's .json (or the weights file it names)."""
    target = Path(target)
    if target.is_dir():
        which = which or "last"
        for suffix in (".pt", ".json"):
            path = target / "checkpoints" / f"{which}{suffix}"
            if path.is_file():
                return path, target
        if not (target / "summary.json").is_file():
            raise CheckpointError(f"{target}: is not a run directory (it has no summary.json "
                                  f"and no checkpoints/). {RUN_FIX}")
        raise CheckpointError(f"{target}: the run has no checkpoints/{which}.pt; it probably "
                              "stopped before its first epoch ended. Train it again, or continue "
                              f"it with 'mnistlab train --resume {target}'.")
    if not target.exists():
        raise CheckpointError(f"{target}: no such run directory or checkpoint file. {RUN_FIX}")
    if which is not None:
        raise CheckpointError(f"{target}: --ckpt chooses a checkpoint inside a run directory; "
                              "you gave a checkpoint file, so drop --ckpt or give the run directory.")
    if target.suffix not in (".pt", ".json") and re.fullmatch(r"(best|last)-e\d+", target.stem):
        target = target.parent / f"{target.stem.split('-e')[0]}.json"  # a weights file: its checkpoint
    run_dir = target.parent.parent
    if target.parent.name != "checkpoints" or not (run_dir / "summary.json").is_file():
        run_dir = None
    return target, run_dir


def load_model(path: Path, trust_run_code: bool = False) -> tuple[nn.Module, dict, Config]:
    """The model of a checkpoint, rebuilt from the config stored in it, in eval mode.

    trust_run_code: a model.kind=module run imports the copy of the code in its run directory.
    """
    path = Path(path)
    if path.suffix == ".json":  # a Keras, TensorFlow or JAX run's
        from . import platforms
        from .platforms import saved

        ckpt = saved.load(path)  # checked whole: digest, fields, config, the weights' sha256
        cfg = config_from_dict(ckpt["config"])
        _has_classes(path, cfg)
        model = platforms.get(cfg.platform).predictor(ckpt, cfg)
        model.eval()
        return model, ckpt, cfg
    ckpt = checkpoint.load_checkpoint(path)  # checked whole: fields, types, digest, config
    cfg = config_from_dict(ckpt["config"])
    _has_classes(path, cfg)
    info = ckpt["data"]
    model_source = reference = None
    if cfg.model.kind == "module":
        from .usermodel import run_code

        in_run = path.parent.name == "checkpoints"
        model_source, reference = run_code(path.parent.parent if in_run else None, trust_run_code)
    try:
        model = build_model(cfg.model, tuple(info["image_shape"]), int(info["num_classes"]),
                            model_source, reference)
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: its weights do not match the model its config "
                              f"describes ({first}); the file was edited or mixed up. "
                              "Use another checkpoint, or train the model again.") from None
    model.eval()
    return model, ckpt, cfg


def _has_classes(path: Path, cfg: Config) -> None:
    if not tasks.get(cfg.task).has_classes:
        raise CheckpointError(f"{path}: is a task={cfg.task} run; eval and predict work on "
                              "classifiers of the MNIST family. Its loss curve: mnistlab plot RUN_DIR.")


def eval_config(cfg: Config, overrides: list[str]) -> Config:
    """The checkpoint's config with evaluation-only overrides; a training setting is refused."""
    known = flatten(to_dict(cfg))
    raw, given = apply_overrides(to_dict(cfg), overrides)
    refused = sorted(key for key in given if key in known and key not in EVAL_KEYS)
    if refused:
        raise ConfigError([f"{key}: is a training setting; eval rebuilds the model exactly as it "
                           f"was trained, so it cannot change. Settings eval accepts: "
                           f"{', '.join(EVAL_KEYS)}" for key in refused])
    if "train.device" not in given:
        raw["train"]["device"] = "auto"  # a model trained on a GPU is still evaluated on a CPU-only machine
    if "train.threads" not in given:
        raw["train"]["threads"] = 0
    return config_from_dict(raw, given)


def _eval_name(split: str, label: str, trained: Config, used: Config) -> str:
    """evals/<split>-<ckpt>, plus what differs when the data differs from training."""
    name = f"{split}-{label}"
    old, new = flatten(to_dict(trained.data)), flatten(to_dict(used.data))
    for key in ("name", "root", "train_samples", "test_samples"):
        if old[key] != new[key]:
            value = Path(str(new[key])).name if key == "root" else new[key]
            name += f"-{key.replace('_', '-')}-{rundir.slug(str(value))}"
    return name


def most_confused(confusion: list[list[int]], class_names: list[str], top: int = 5) -> list[dict]:
    """The largest off-diagonal cells: which true class is most often taken for which."""
    cells = []
    for t, row in enumerate(confusion):
        n = sum(row)
        for p, count in enumerate(row):
            if t != p and count:
                cells.append({"true": t, "true_name": class_names[t], "predicted": p,
                              "predicted_name": class_names[p], "count": count,
                              "share": count / n})
    cells.sort(key=lambda c: (-c["count"], c["true"], c["predicted"]))
    return cells[:top]


def evaluate_run(target: Path, which: str | None = None, split: str = "test",
                 overrides: list[str] = (), save: bool = True, trust_run_code: bool = False) -> dict:
    """Score a run's checkpoint on one split; the result is saved under the run's evals/."""
    if split not in SPLITS:
        raise ConfigError([f"--split: {split!r} is not a split; choose one of: {', '.join(SPLITS)}"])
    path, run_dir = find_checkpoint(target, which)
    model, ckpt, cfg = load_model(path, trust_run_code)
    ecfg = eval_config(cfg, list(overrides))
    if ecfg.train.threads:
        torch.set_num_threads(ecfg.train.threads)
    device = resolve_device(ecfg.train.device)
    info = ckpt["data"]
    num_classes, class_names = int(info["num_classes"]), list(info["class_names"])
    data = load_data(ecfg.data, ecfg.train.val_split, ecfg.train.seed,
                     stats=(info["mean"], info["std"]), test_only=split == "test")
    if tuple(data.image_shape) != tuple(info["image_shape"]):
        raise DataError(f"{data.source}: its images are {tuple(data.image_shape)} (C, H, W) but "
                        f"the model was trained on {tuple(info['image_shape'])}; evaluate it on "
                        "a data set with images of the same size.")
    x, y = data.split(split)
    if len(x) == 0:
        raise DataError(f"the {split} split is empty: the run was trained with "
                        f"train.val_split={ecfg.train.val_split}; use --split test or train.")
    if int(y.max()) >= num_classes:
        raise DataError(f"{data.source}: its labels go up to {int(y.max())} but the model knows "
                        f"only {num_classes} classes; evaluate it on a data set with the same classes.")
    res = evaluate(model.to(device), tasks.get(cfg.task), x, y, ecfg.train.eval_batch_size,
                   device, num_classes,
                   bf16=for_eval(ecfg.train.precision, ckpt.get("precision"), is_conv(model)))
    confusion = res["confusion"]
    per_class = []
    for c, row in enumerate(confusion):
        n = sum(row)
        per_class.append({"class": c, "name": class_names[c], "n": n, "correct": row[c],
                          "accuracy": row[c] / n if n else None})
    label = path.stem
    result = {
        "format": "mnistlab-eval", "run_dir": str(run_dir) if run_dir else None,
        "checkpoint": str(path), "ckpt": label, "epoch": checkpoint.epoch_of(ckpt), "split": split,
        "dataset": ecfg.data.name, "data_source": data.source, "overrides": list(overrides),
        "n": res["n"], "loss": res["loss"], "accuracy": res["accuracy"],
        "class_names": class_names, "per_class": per_class, "confusion": confusion,
        "most_confused": most_confused(confusion, class_names),
        "evaluated": datetime.now().isoformat(timespec="seconds"), "saved": None,
    }
    if save and run_dir is not None:
        out = run_dir / "evals" / f"{_eval_name(split, label, cfg, ecfg)}.json"
        try:
            with files.writing(out.parent):
                out.parent.mkdir(exist_ok=True)
            files.write_json(out, {**result, "saved": str(out)})
            result["saved"] = str(out)
        except DiskError as e:  # a read-only run can still be scored; the score is just not kept
            result["not_saved"] = e.message()
    return result


def saved_or_evaluate(run_dir: Path, which: str, trust_run_code: bool = False) -> dict:
    """The run's test eval of a checkpoint: the saved one if newer than the checkpoint, else anew
    (trust_run_code: for a model.kind=module run, import the run's own copy of the code)."""
    saved = run_dir / "evals" / f"test-{which}.json"
    weights = run_dir / "checkpoints" / f"{which}.pt"
    if not weights.is_file():  # a Keras, TensorFlow or JAX run's
        weights = weights.with_suffix(".json")
    if saved.is_file() and weights.is_file() and saved.stat().st_mtime >= weights.stat().st_mtime:
        try:
            return files.read_json(saved)
        except (OSError, ValueError):
            pass
    return evaluate_run(run_dir, which, "test", trust_run_code=trust_run_code)
