"""Your own nn.Module (model.kind: module): found, digested, imported, built and tried on one batch.

A run's model code is imported only from the file it records when that file still has the recorded
sha256 or differs from the run's own copy (RUN/model_source.py) only in comments and whitespace,
or from that copy when the user passes --trust-run-code.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import io
import os
import sys
import tokenize
import traceback
import types
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import ConfigError, ModelCodeError

if TYPE_CHECKING:
    from .config import ModelConfig

RUN_COPY = "model_source.py"
FROM_DATA = ("num_classes", "image_shape")  # passed by mnistlab when the constructor names them
HOW = ("write it as FILE.py:Class (the file relative to the config file) or package.module:Class, "
       "e.g. model.module=models/lenet.py:Net")


def split_reference(ref: str) -> tuple[str, str]:
    """'models/lenet.py:Net' -> ('models/lenet.py', 'Net')."""
    where, sep, name = ref.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ConfigError([f"model.module: {ref!r} does not name a class; {HOW}"])
    return where, name


def is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source_file(ref: str) -> Path:
    """The Python file a reference names; a package module is located, not run."""
    where, _ = split_reference(ref)
    if is_file(where):
        return Path(where)
    try:
        spec = importlib.util.find_spec(where)
    except Exception:  # a parent package that is missing or fails to import
        spec = None
    if spec is None or not (spec.origin or "").endswith(".py"):
        raise ConfigError([f"model.module: {where!r} is not an importable Python module here "
                           f"(the current directory is {Path.cwd()}); {HOW}"])
    return Path(spec.origin)


def resolve(model: ModelConfig, base_dir: Path) -> ModelConfig:
    """The reference made absolute (a file is relative to base_dir), with its source's sha256."""
    where, name = split_reference(model.module)
    if is_file(where):
        path = (Path(base_dir) / Path(where).expanduser()).resolve()
        ref = f"{path}:{name}"
    else:
        path, ref = source_file(model.module), model.module
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError([f"model.module: {path}: {e.strerror or 'cannot be read'}; a file path "
                           f"is taken relative to {Path(base_dir).resolve()} (the config file's "
                           "directory, or the working directory for a command-line value); "
                           f"{HOW}"]) from None
    return dataclasses.replace(model, module=ref, source_digest=digest(data))


def run_code(run_dir: Path | None, trust_run_code: bool) -> tuple[Path | None, Path | None]:
    """What a run's own model class is built from, for eval as for train --resume: (the run's copy
    of the code when the user trusts it, else None: the recorded file; the run's copy as the
    reference against which an edit of the recorded file's comments or whitespace is accepted)."""
    reference = None if run_dir is None else Path(run_dir) / RUN_COPY
    if not trust_run_code:
        return None, reference
    if run_dir is None:
        raise ModelCodeError("--trust-run-code runs the copy of the model code that a run directory "
                             "keeps; give the run directory, or a checkpoint inside its checkpoints/.")
    return reference, reference


def statements(data: bytes) -> list[tuple[tuple, int, str]] | None:
    """Each logical line of a source as (its tokens without comments, blank lines or the width of
    indentation, its line number, its first physical line); None when it does not tokenize."""
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.ENCODING)
    blank = (tokenize.INDENT, tokenize.DEDENT, tokenize.NEWLINE)  # their kind matters, not their text
    out, key, first = [], [], None
    try:
        for tok in tokenize.tokenize(io.BytesIO(data).readline):
            if tok.type in skip:
                continue
            key.append((tok.type, "" if tok.type in blank else tok.string))
            if first is None and tok.type not in blank:
                first = tok
            if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                line = first.line.splitlines()[0].strip() if first is not None and first.line else ""
                out.append((tuple(key), first.start[0] if first is not None else tok.start[0], line))
                key, first = [], None
    except (tokenize.TokenError, SyntaxError, IndexError):
        return None
    return out


def what_changed(old: bytes, new: bytes, lines: int = 8) -> str:
    """The first statements that differ between the run's copy and the file, comments and
    whitespace aside: '-' the copy's (RUN/model_source.py), '+' the file's, with line numbers."""
    a, b = statements(old) or [], statements(new) or []
    shown = []
    matcher = difflib.SequenceMatcher(None, [s[0] for s in a], [s[0] for s in b], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            shown += [f"- line {n}: {text}" for _, n, text in a[i1:i2]]
            shown += [f"+ line {n}: {text}" for _, n, text in b[j1:j2]]
    return "\n".join(shown[:lines] + (["..."] if len(shown) > lines else []))


def _same_program(model: ModelConfig, reference: Path | None, data: bytes) -> tuple[bool, bytes | None]:
    """Whether data differs from the run's verified copy (reference) only in comments and
    whitespace; and that copy, when there is one."""
    try:
        old = Path(reference).read_bytes() if reference is not None else None
    except OSError:
        old = None
    if old is None or digest(old) != model.source_digest:
        return False, None
    same = statements(old)
    return same is not None and [s[0] for s in same] == [s[0] for s in statements(data) or []], old


def _verified_source(model: ModelConfig, source: Path | None,
                     reference: Path | None = None) -> tuple[Path, bytes]:
    """The bytes to run: the recorded file with the recorded digest (or, compared with the run's
    copy at reference, with only comments and whitespace changed), or the trusted copy."""
    path = Path(source) if source is not None else source_file(model.module)
    try:
        data = path.read_bytes()
    except OSError:
        data = None
    old = None
    if source is None and data is not None and model.source_digest and \
            digest(data) != model.source_digest:
        same, old = _same_program(model, reference, data)
        if same:  # the same tokens: the same program, only comments or whitespace edited
            return path, data
    if source is not None and (data is None or digest(data) != model.source_digest):
        what = "is missing" if data is None else "does not have the sha256 the run recorded"
        raise ModelCodeError(f"{path}: the run's copy of its model code {what}; the run directory "
                             "is incomplete or was edited, so its weights and code may not belong "
                             "together. Train the model again.")
    if data is None or (model.source_digest and digest(data) != model.source_digest):
        what = ("is missing" if data is None else
                f"has changed since the run was trained (sha256 {digest(data)[:12]}, "
                f"recorded {model.source_digest[:12]})")
        changed = (f"\nWhat changed, beyond comments and whitespace (- RUN/{RUN_COPY}, + the file):"
                   f"\n{what_changed(old, data)}" if old is not None else "")
        raise ModelCodeError(
            f"{path}: the model code of this run {what}. mnistlab imports a run's model code only "
            f"from the file it recorded, unchanged but for comments and whitespace. Put the file "
            f"back as it was (e.g. from version control); or, if you trust the run directory, add "
            f"--trust-run-code to run the copy it keeps (RUN/{RUN_COPY}): that executes the Python "
            f"code in that copy.{changed}")
    return path, data


def _run_file(path: Path, data: bytes) -> types.ModuleType:
    """Execute exactly the verified bytes as a module named after their digest."""
    name = f"mnistlab_user_{digest(data)[:16]}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # dataclasses and pickle look a class's module up by name
    try:
        exec(compile(data, str(path), "exec"), module.__dict__)
    except Exception as e:
        del sys.modules[name]
        raise code_error(path, f"importing {path.name}", e) from None
    return module


def load_class(model: ModelConfig, source: Path | None = None,
               reference: Path | None = None) -> tuple[type, Path]:
    """The nn.Module class the reference names, and the file it came from (reference: the run's
    copy, against which an edit of comments or whitespace only is accepted)."""
    where, name = split_reference(model.module)
    path, data = _verified_source(model, source, reference)
    if is_file(where) or source is not None:
        module = _run_file(path, data)
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise code_error(path, f"importing {where}", e) from None
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        found = [k for k, v in vars(module).items()
                 if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == module.__name__]
        what = "is not an nn.Module class" if cls is not None else "does not exist"
        raise ConfigError([f"model.module: {name} in {path} {what}; the nn.Module classes defined "
                           f"there: {', '.join(found) or 'none'}. Name one of them after the colon, "
                           f"e.g. {where}:{found[0] if found else 'Net'}"])
    return cls, path


def constructor_args(cls: type, path: Path, model: ModelConfig, image_shape: tuple,
                     num_classes: int) -> dict:
    """model.args, plus num_classes and image_shape when the constructor has such parameters."""
    taken = [k for k in model.args if k in FROM_DATA]
    if taken:
        raise ConfigError([f"model.args.{k}: comes from the data set (num_classes {num_classes}, "
                           f"image_shape {tuple(image_shape)}) whenever the constructor has such a "
                           "parameter; remove it from model.args" for k in taken])
    params = inspect.signature(cls).parameters
    given = {"num_classes": num_classes, "image_shape": tuple(image_shape)}
    kwargs = {**model.args, **{k: v for k, v in given.items() if k in params}}
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        names = ", ".join(p for p in params if p not in ("self", "args", "kwargs")) or "none"
        raise ConfigError([f"model.args: {cls.__name__} in {path} rejects "
                           f"{kwargs}: {e}. Its parameters: {names} (num_classes and image_shape "
                           "are given by mnistlab); set model.args to match"]) from None
    return kwargs


def build(model: ModelConfig, image_shape: tuple, num_classes: int,
          source: Path | None = None, reference: Path | None = None) -> nn.Module:
    """Import the class (from the recorded file, or from source: a run's trusted copy) and build it."""
    cls, path = load_class(model, source, reference)
    kwargs = constructor_args(cls, path, model, image_shape, num_classes)
    try:
        net = cls(**kwargs)
    except Exception as e:
        raise code_error(path, f"{cls.__name__}(**{kwargs})", e) from None
    return net


def probe(net: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """One batch through the model as training feeds it; weights and RNG are left as they were."""
    path = Path(sys.modules[type(net).__module__].__file__)
    state, rng = copy.deepcopy(net.state_dict()), torch.get_rng_state()
    try:
        with torch.no_grad():
            out = net(x)
    except Exception as e:
        error = code_error(path, f"{type(net).__name__}.forward on a batch of shape "
                                 f"{tuple(x.shape)}", e)
        if "view size is not compatible" in str(e):  # the course's x.view(-1, n) meets channels-last
            error = ModelCodeError(f"{error}\nmnistlab feeds conv nets channels-last batches (faster "
                                   "on CPUs); flatten with torch.flatten(x, 1) or x.reshape, not x.view.")
        raise error from None
    finally:
        net.load_state_dict(state)
        torch.set_rng_state(rng)
    expected = (len(x), num_classes)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != expected:
        raise ModelCodeError(
            f"{path}: {type(net).__name__}.forward returns {shape} for a batch of shape "
            f"{tuple(x.shape)}, but a classifier of this data set must return a tensor of "
            f"{expected}: one score per class for each image. Make its last layer give "
            "num_classes outputs (a constructor parameter named num_classes receives it).")


def save_copy(model: ModelConfig, run_dir: Path) -> None:
    """RUN/model_source.py: the very source the run was trained with."""
    from .files import atomic_write_bytes

    _, data = _verified_source(model, None)
    atomic_write_bytes(Path(run_dir) / RUN_COPY, data)


def code_error(path: Path, what: str, e: BaseException) -> ModelCodeError:
    """The error with the traceback frames of the user's file only."""
    target = os.path.realpath(path)
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if os.path.realpath(f.filename) == target]
    lines = traceback.format_list(frames) + traceback.format_exception_only(type(e), e)
    return ModelCodeError(f"{path}: {what} raised {type(e).__name__} in your code; fix it there "
                          "and run again.\nTraceback (your file's frames only):\n"
                          + "".join(lines).rstrip())
