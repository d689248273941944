"""A config from a YAML file and key=value overrides: safe YAML, the override grammar, paths made absolute."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..files import defaults_path
from .schema import Config, config_from_dict, flatten

_KEY = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*$")


# a config holds a few hundred values; aliases that expand beyond this are a "billion laughs" file
MAX_YAML_VALUES = 100_000
# brackets nested deeper than this are no config; PyYAML's scanner takes seconds over a few hundred
MAX_YAML_DEPTH = 100


def _bracket_depth(text: str) -> int:
    """How deep [ and { nest outside quotes: a bound checked before YAML reads the text."""
    depth = deepest = 0
    quote = None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(depth - 1, 0)
    return deepest


def _expanded_size(node: yaml.Node, memo: dict, active: set) -> int:
    """How many values the node becomes once every alias is expanded (counted, never expanded)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise ValueError("an alias refers to itself")
    active.add(key)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(c, memo, active) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo, active) + _expanded_size(v, memo, active)
                       for k, v in node.value)
    else:
        size = 1
    active.discard(key)
    memo[key] = size
    return size


class Loader(yaml.SafeLoader):
    """yaml.SafeLoader for configs: a key given twice in a mapping is an error naming both lines;
    a date stays the text it is written as, and tags of values JSON cannot hold (!!binary,
    !!timestamp, !!set) are refused, so that what is read is plain data, as overrides and the
    config hash expect."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # keys merged in with <<: *alias may be given again: that is their use
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # a list or mapping as a key: SafeLoader names the problem
                    continue
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} is given twice in one mapping (first on line "
                        f"{first.start_mark.line + 1}); keep one of them", key_node.start_mark)
        return super().construct_mapping(node, deep)

    def refuse_tag(self, node):
        raise yaml.constructor.ConstructorError(
            None, None, f"the tag {node.tag.replace('tag:yaml.org,2002:', '!!')} makes a value "
            "a config cannot hold; write plain numbers, text, lists and mappings", node.start_mark)


Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _tag in ("timestamp", "binary", "set"):
    Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", Loader.refuse_tag)


def safe_yaml(text: str, where: str) -> Any:
    """Read YAML with Loader, but a document whose aliases expand past MAX_YAML_VALUES is refused unread."""
    if _bracket_depth(text) > MAX_YAML_DEPTH:
        raise ConfigError([f"{where}: refused: lists or mappings nested more than {MAX_YAML_DEPTH} "
                           "deep, too deeply to be a config"])
    loader = Loader(text)
    try:
        try:
            node = loader.get_single_node()
            size = 0 if node is None else _expanded_size(node, {}, set())
        except ValueError as e:
            raise ConfigError([f"{where}: refused: {e}; write the values out instead"]) from None
        except RecursionError:
            raise ConfigError([f"{where}: refused: lists or mappings nested too deeply to be "
                               "a config"]) from None
        if size > MAX_YAML_VALUES:
            raise ConfigError([
                f"{where}: refused: its aliases (&name / *name) expand to {size:,} values, more "
                f"than the {MAX_YAML_VALUES:,} a config can hold (a 'billion laughs' file?); "
                "write the values out instead of aliasing them"])
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=1e-3' -> ('optim.lr', '1e-3' read as a YAML scalar)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise ConfigError([
            f"{text!r}: an override is key=value with a dotted key, e.g. optim.lr=0.01 "
            "or model.channels=[16,32]"])
    try:
        parsed = safe_yaml(value, repr(text)) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError([f"{text!r}: the value is not valid YAML ({_yaml_problem(e)})"]) from None
    return key, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> tuple[dict, set[str]]:
    """Return a copy of raw with each key=value set (later ones win), and the keys set."""
    out = json.loads(json.dumps(raw))  # deep copy of plain YAML data
    problems, keys = [], set()
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ConfigError as e:
            problems += e.problems
            continue
        node, parts = out, key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(
                    f"{text!r}: {'.'.join(parts[:i + 1])} is a value, not a section, "
                    "so it has no sub-keys")
                break
            node = child
        else:
            node[parts[-1]] = value
            keys.add(key)
    if problems:
        raise ConfigError(problems)
    return out, keys


def _yaml_problem(e: yaml.YAMLError) -> str:
    return str(getattr(e, "problem", None) or e).strip()


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; errors name the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file; give the path of a YAML config, "
                           "e.g. configs/cnn.yaml"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot be read as a YAML config ({e.__class__.__name__}: "
                           f"{getattr(e, 'strerror', None) or e.reason})"]) from None
    except ValueError:  # a NUL byte in the path
        raise ConfigError([f"{path!r}: is not a file name; give the path of a YAML config"]) from None
    try:
        raw = safe_yaml(text, str(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError([f"{where}: invalid YAML: {_yaml_problem(e)}"]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections "
                           f"(model:, optim:, train:, data:), got {type(raw).__name__}"])
    return raw


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """YAML file, then overrides (the command line wins), then validation."""
    raw = read_yaml(path)
    if "base" in raw and ("grid" in raw or "random" in raw):
        raise ConfigError([f"{path}: is a sweep file (it has base: and grid:/random:), not a "
                           f"config; run it with: mnistlab sweep {path}"])
    raw, keys = apply_overrides(raw, list(overrides))
    return config_from_file_dict(raw, keys, path)


def user_defaults() -> dict:
    """The defaults file's settings (e.g. data: {name: fashion-mnist}), its paths made absolute
    against its own directory; {} when there is none."""
    path = defaults_path()
    if not path.is_file():
        return {}
    raw = read_yaml(path)
    from ..errors import did_you_mean
    from .schema import ALL_KEYS

    unknown = [key for key in flatten(raw) if key not in ALL_KEYS and not key.startswith("model.args.")]
    if unknown:
        example = "the defaults file holds config keys, e.g. data: {name: fashion-mnist}"
        raise ConfigError([f"{path}: {key}: not a config key; {did_you_mean(key, ALL_KEYS, example)}"
                           for key in unknown])
    _absolute_paths(raw, set(), path.parent)
    return raw


def beneath(defaults: dict, raw: dict) -> dict:
    """raw with the defaults filled in beneath it: a key raw names (even as null) keeps raw's value."""
    out = dict(raw)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = beneath(value, out[key])
    return out


def defaults_used(raw: dict) -> tuple[list[str], list[str]]:
    """The dotted keys of the defaults file that a config mapping (file and command line) leaves
    to it, and those it sets itself (the file's or command line's value wins)."""
    used, overruled = [], []
    for key, value in flatten(user_defaults()).items():
        node = raw
        for part in key.split("."):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        (used if node is _MISSING else overruled).append(f"{key}={json.dumps(value)}")
    return used, overruled


_MISSING = object()


def config_from_file_dict(raw: dict, keys: set[str] | dict[str, str], path: str | Path) -> Config:
    """The end of load_config: the mapping read from path, overrides applied (their keys), the
    user's defaults beneath them, validated."""
    raw = beneath(user_defaults(), raw)
    if raw.get("name") is None:
        raw["name"] = Path(path).stem
    _absolute_paths(raw, keys, Path(path).parent)
    return resolve_module(config_from_dict(raw, keys, machine=True), Path(path).parent, keys)


def resolve_module(cfg: Config, config_dir: Path, cli_keys: set[str]) -> Config:
    """model.kind=module: the class's file made absolute and its source's sha256 recorded."""
    if cfg.model.kind == "module":
        from ..usermodel import resolve

        # a file path is relative as those above are: to the config file, or the working directory
        base = Path.cwd() if "model.module" in cli_keys else Path(config_dir)
        cfg.model = resolve(cfg.model, base)
    return cfg


# file paths in a config: stored absolute, so a run's config.yaml works from any directory
PATH_KEYS = ("data.root", "linreg.csv")


def _absolute_paths(raw: dict, cli_keys: set[str], config_dir: Path) -> None:
    """Relative paths become absolute: against the config file's directory, or the working
    directory for those given on the command line."""
    for key in PATH_KEYS:
        section, name = key.split(".")
        node = raw.get(section)
        if not isinstance(node, dict) or not isinstance(node.get(name), str) or not node[name]:
            continue
        value = Path(node[name]).expanduser()
        if not value.is_absolute():
            value = (Path.cwd() if key in cli_keys else config_dir) / value
        node[name] = os.path.abspath(value)

