"""Configs as data: dataclasses loaded from YAML, validated key by key.

`load_config(cls, path)` reads a YAML mapping into the dataclass `cls`. An unknown key, a
missing required key or a value of the wrong type is a `ValueError` that names the key
(with its dotted path inside the file) and the file. A float key also takes a string that
spells a finite decimal number (`lr: 1e-4`, which PyYAML's YAML 1.1 rules leave a string). Nested dataclasses, lists, optionals
and `Literal` choices are supported; nothing else is needed by our configs.

The file is read by `clipcond.yaml_reading.read_yaml`: text YAML cannot read is a `NotYaml`
naming the file, the line and the column; a key given twice, a key that is a list or a mapping
and a value that holds itself are ValueErrors naming the file. Errors quote a value through
`clipcond.quoting.quoted` (at most about 200 characters of it).

A string under a key named in `PATH_KEYS` (``output_dir``, ``text_encoder``, ``suites``, ...)
is a file or folder path, or a Hugging Face hub id, which has a path's shape. One the operating
system could never open (`path_problem`: a NUL byte, a name over `NAME_MAX` bytes, ...) is a
`ValueError` naming the key, before any command looks at it. A new config key that holds a path
belongs in `PATH_KEYS`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

from clipcond.quoting import QUOTE_LIMIT, quoted
from clipcond.yaml_reading import NotYaml, read_yaml

T = TypeVar("T")

# The config keys whose string values (or list items: `suites`) name a file or folder.
PATH_KEYS = frozenset(
    {
        # train-diffusion, train-clip, train-t5 (and their data section)
        "text_encoder",
        "t5_encoder",
        "init_from",
        "vae",
        "model",
        "manifest",
        "embeddings",
        "latents",
        "output_dir",
        # experiment
        "suites",
        "pipeline",
        "clip_score_model",
        "creates",
        # conditioner configs
        "path",
        "subfolder",
        "tokenizer",
        "tokenizer_subfolder",
        "cache_dir",
    }
)


def _path_limit(name: str, linux: int) -> int:
    """`os.pathconf` of the root file system for `name`, or Linux's value where there is none."""
    try:
        return os.pathconf("/", name)
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows), or no such limit
        return linux


NAME_MAX = _path_limit("PC_NAME_MAX", 255)  # bytes in one file or folder name
PATH_MAX = _path_limit("PC_PATH_MAX", 4096) - 1  # bytes in a whole path; the limit counts a final NUL


def load_config(cls: type[T], path: str | Path) -> T:
    """Load the YAML file at `path` into the dataclass `cls`, validating every key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = read_yaml(path.read_bytes(), str(path))
    if data is None:
        data = {}
    return config_from_dict(cls, data, source=str(path))


def config_from_dict(cls: type[T], data: Any, source: str = "<dict>") -> T:
    """Build the dataclass `cls` from a plain mapping, validating as `load_config` does."""
    return _convert(cls, data, key="", source=source)


def _fail(key: str, source: str, message: str) -> ValueError:
    if len(key) > QUOTE_LIMIT:
        key = key[:QUOTE_LIMIT] + "..."
    where = f"key `{key}`" if key else "top level"
    return ValueError(f"{source}: {where}: {message}")


def _convert(tp: Any, value: Any, key: str, source: str) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build_dataclass(tp, value, key, source)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        options = [option for option in args if option is not type(None)]
        if len(options) == 1:
            # an optional section: its own error (naming the inner key) is the useful one
            return _convert(options[0], value, key, source)
        for option in options:
            try:
                return _convert(option, value, key, source)
            except ValueError:
                continue  # the union's own message below names every option
        raise _fail(key, source, f"expected {_type_name(tp)}, got {quoted(value)}")
    if origin is typing.Literal:
        if value not in args:
            raise _fail(key, source, f"expected one of {list(args)}, got {quoted(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(key, source, f"expected a list, got {type(value).__name__} {quoted(value)}")
        item_type = args[0] if args else Any
        items = [_convert(item_type, item, f"{key}[{i}]", source) for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(key, source, f"expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is float:
        if isinstance(value, str) and _DECIMAL.fullmatch(value):
            number = float(value)
            if not math.isfinite(number):
                raise _fail(key, source, f"expected a finite number, got {quoted(value)}")
            return number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(key, source, f"expected a number, got {quoted(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(key, source, f"expected an integer, got {quoted(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(key, source, f"expected true or false, got {quoted(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _fail(key, source, f"expected a string, got {quoted(value)}")
        problem = path_problem(value) if _leaf(key) in PATH_KEYS else None
        if problem:
            raise _fail(key, source, f"{problem}: {quoted(value)}")
        return value
    raise TypeError(f"config type {tp!r} at key `{key}` is not supported by clipcond.config")


def _leaf(key: str) -> str:
    """The last name of the dotted `key`, without list indexes: ``setups[0].pipeline`` ->
    ``pipeline``, ``suites[2]`` -> ``suites``."""
    return re.sub(r"(\[\d+\])+$", "", key).rpartition(".")[2]


def path_problem(path: str) -> str | None:
    """Why no file system call could take the file or folder path `path`, or None.

    The reasons: a NUL byte, text the file system encoding cannot hold (a lone surrogate), a
    name between separators over `NAME_MAX` bytes, or over `PATH_MAX` bytes in all. Opening or
    making such a path raises OSError or ValueError, and Python's `Path.exists()` raises
    OSError for the last two instead of saying False. The reason does not quote `path`: the
    caller does, through `quoted` (a path may be megabytes).
    """
    if "\0" in path:
        return "a path cannot hold a NUL byte"
    try:
        encoded = os.fsencode(path)
    except UnicodeEncodeError as error:
        return f"a path cannot hold {quoted(error.object[error.start])}"
    names = encoded.replace(os.sep.encode(), b"/").split(b"/")  # Windows: "\\" too
    longest = max(len(name) for name in names)
    if longest > NAME_MAX:
        return f"a file or folder name is at most {NAME_MAX} bytes, and this path has one of {longest:,}"
    if len(encoded) > PATH_MAX:
        return f"a path is at most {PATH_MAX} bytes, and this one has {len(encoded):,}"
    return None


# A decimal number as YAML 1.2 and JSON write it. PyYAML follows YAML 1.1, whose floats need a
# dot and a signed exponent, so it reads `1e-3` and `1.0e3` as strings: a float key takes such
# a string as the number it spells (never "nan", "inf" or "1_000").
_DECIMAL = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def _build_dataclass(cls: type, value: Any, key: str, source: str) -> Any:
    if not isinstance(value, dict):
        raise _fail(key, source, f"expected a mapping for {cls.__name__}, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields), key=str)  # YAML keys may be numbers, not only strings
    if unknown:
        name = f"{key}.{unknown[0]}" if key else str(unknown[0])
        raise _fail(name, source, f"unknown key for {cls.__name__}; known keys: {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        child = f"{key}.{name}" if key else name
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], child, source)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise _fail(child, source, f"required key is missing for {cls.__name__}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        # a section's own check may name the section already ("text.vocab_size ...", "text: ...",
        # "vision.resnet (pool): ..."); at the top level, a check naming its key ("key `name`: ...")
        # says where without the class's name
        words = str(error)
        where = key or cls.__name__
        named = words.startswith((f"{key}.", f"{key}:", f"{key} ")) if key else words.startswith("key `")
        raise ValueError(f"{source}: {words}" if named else f"{source}: {where}: {words}") from error


def _type_name(tp: Any) -> str:
    """`tp` as a config's reader would write it: ``int | str | None`` for a union however it is
    spelled (``typing.Union[int, str]`` is named only "Union" on Python 3.11)."""
    if tp is type(None):
        return "None"
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(option) for option in typing.get_args(tp))
    if typing.get_origin(tp) is None and isinstance(getattr(tp, "__name__", None), str):
        return tp.__name__  # a class: `int`, not "<class 'int'>"
    return str(tp).replace("typing.", "")  # `list[str]`, `Literal['auto']`


def apply_overrides(config: T, assignments: list[str], source: str = "--set") -> T:
    """A copy of the dataclass `config` with ``KEY=VALUE`` assignments applied and re-validated.

    KEY may be dotted for nested sections (``data.split=heldout``); VALUE is read as YAML
    (``true``, ``0.5``, ``[a, b]``, ``null``, or a plain string). An unknown key of a section
    (a dataclass) or a value of the wrong type is a `ValueError` naming the key, as when loading
    a file. A free-form mapping (a field typed ``dict``, such as train-diffusion's ``unet``)
    takes new keys (``unet.norm_num_groups=4``); the config's own checks judge them.
    """
    data = dataclasses.asdict(config)
    for assignment in assignments:
        key, separator, text = assignment.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"{source}: expected KEY=VALUE, got {quoted(assignment)}")
        *parents, leaf = key.strip().split(".")
        target, section_type = data, type(config)
        for depth, part in enumerate(parents):
            if not isinstance(target.get(part), dict):
                raise _fail(".".join(parents[: depth + 1]), source, "is not a section of this config")
            target, section_type = target[part], _child_type(section_type, part)
        if leaf not in target and _is_section(section_type):
            raise _fail(key.strip(), source, f"unknown key; expected one of {sorted(target)}")
        try:
            target[leaf] = read_yaml(text, f"{source} {key.strip()}") if text.strip() else ""
        except NotYaml as error:
            detail = str(error).removeprefix(f"{source} {key.strip()}: not valid YAML: ")
            raise _fail(key.strip(), source, f"cannot read {quoted(text)} as YAML: {detail}") from error
    return config_from_dict(type(config), data, source=source)


def _unwrapped(tp: Any) -> Any:
    """`tp` without ``| None`` (an optional section is the section)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        options = [option for option in typing.get_args(tp) if option is not type(None)]
        if len(options) == 1:
            return options[0]
    return tp


def _child_type(tp: Any, name: str) -> Any:
    """The type of the entry `name` inside a value of type `tp`: a dataclass field's type, else
    `Any` (a ``dict`` field is free-form at every depth: `_convert` keeps its values as read)."""
    tp = _unwrapped(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return typing.get_type_hints(tp)[name]  # `name` is a field: `apply_overrides` walks `asdict`'s keys
    return Any


def _is_section(tp: Any) -> bool:
    """Whether a value of type `tp` is a dataclass section, whose keys are fixed (a ``dict`` or
    `Any` mapping is free-form: it takes new keys)."""
    tp = _unwrapped(tp)
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)
